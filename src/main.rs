//! Command-line entry point: parse arguments, set up logging, run the
//! command, and turn its result into an exit code.

use std::process::ExitCode;

use clap::Parser;

use syncer::cli::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // clap exits 2 on a usage error, but 2 means "the plan has
            // changes" under --detailed-exitcode, so usage errors exit 1.
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 1 } else { 0 });
        }
    };
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
