//! `civic-operator`: parse arguments, set up logging, hand over to the library.

use std::process::ExitCode;

use civic_operator::cli::{self, Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match civic_operator::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("civic-operator: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Inject(args) => civic_operator::inject::command::main(*args),
        Command::Issuer(args) => civic_operator::issuer::main(*args),
        Command::Check(args) => civic_operator::check::main(*args),
        Command::Run(args) => {
            if let Err(e) = civic_operator::telemetry::init(&args.log, args.log_format) {
                eprintln!("civic-operator: {e}");
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("civic-operator: tokio runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(cli::run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(category = e.category(), error = %e, "civic-operator failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
