//! The course's command line. With no arguments it trains the copy task and shows the model
//! copying; see `--help` for `train`, `generate`, `bench`, `inspect`, `config` and `tour`.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod learn;
mod learn_cli;
mod run_dir;

fn main() -> ExitCode {
    run_dir::quiet_broken_pipe();
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(transformer_course::graph::error::CourseError::Interrupted(_)) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
