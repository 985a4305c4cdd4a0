//! Command-line entry point: parse arguments, set up logging, run the
//! command, and turn its result into an exit code.

use std::process::ExitCode;

use clap::Parser;

use syncer::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    syncer::cli::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(syncer::commands::run(cli.command)) {
        Ok(code) => code.into(),
        Err(error) => {
            eprintln!("Error: {error:#}");
            ExitCode::from(1)
        }
    }
}
