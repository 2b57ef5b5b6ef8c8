//! The course's command line. With no arguments it trains the copy task and shows the model
//! copying; see `--help` for `train`, `generate`, `bench`, `inspect`, `config` and `tour`.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
