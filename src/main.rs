//! The course's command line. Until the training chapters land, the default job is a tour that
//! runs each finished chapter and prints its result.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("tour") => tour(),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("unknown command '{other}'\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "usage: transformer-course [tour]\n\n  tour   run each chapter's example and print what it computes (the default)";

fn tour() -> ExitCode {
    println!("transformer-course: a tour of the finished chapters\n");
    let mut failed = false;
    for (title, result) in transformer_course::tour() {
        println!("== {title}");
        match result {
            Ok(text) => println!("{text}\n"),
            Err(e) => {
                failed = true;
                println!("error: {e}\n");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
