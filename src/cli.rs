//! Command-line arguments and logging set-up.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::plan::Shard;

/// Keep container images in sync between registries, with a reviewed plan.
#[derive(Debug, Parser)]
#[command(name = "syncer", version, about, long_about = None)]
pub struct Cli {
    /// More log output on stderr: -v info, -vv debug, -vvv trace. RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check rules files without contacting any registry.
    Validate(RulesArg),
    /// Show what apply would copy, comparing digests with HEAD requests.
    Plan(PlanArgs),
    /// Plan, ask for confirmation, then copy only what is missing.
    Apply(ApplyArgs),
    /// Show what a change of rules would copy: compare OLD rules with NEW.
    Diff(DiffArgs),
    /// Print the JSON Schema of the rules file, for editors and checks.
    Schema,
}

#[derive(Debug, Args)]
pub struct RulesArg {
    /// Rules file, or folder whose *.yaml and *.yml files are read in name order.
    #[arg(default_value = "rules")]
    pub rules: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    /// A summary line and a table, for a pull request comment.
    Markdown,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub rules: RulesArg,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    /// Exit 2 when the plan has changes, 0 when it has none, 1 on errors.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Registry requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Also save the plan, with every digest it observed, to this file for `apply --plan`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Plan only shard I of N (counted from 0), split by destination repository.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Rules file, or folder whose *.yaml and *.yml files are read in name order
    /// [default: the rules a saved `--plan` was made from, else `rules`].
    #[arg(value_name = "RULES")]
    pub rules: Option<PathBuf>,
    /// Apply without asking for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub auto_approve: bool,
    /// Blob copies and registry requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Also write the apply report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Apply this saved plan (from `plan --out`) without asking, unless a digest moved since.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Apply only shard I of N (counted from 0), split by destination repository.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Lock file that keeps a second apply of the same rules and shard from starting
    /// [default: derived from the rules path, in $XDG_RUNTIME_DIR or a private syncer-<uid> folder in the temp folder].
    #[arg(long, value_name = "PATH")]
    pub lock_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    Text,
    Markdown,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Rules before the change: a file or a folder.
    pub old: PathBuf,
    /// Rules after the change: a file or a folder.
    pub new: PathBuf,
    /// Compare the rules only, without contacting any registry.
    #[arg(long)]
    pub offline: bool,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
    pub format: DiffFormat,
    /// Registry requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
}

/// Sends logs to stderr, filtered by RUST_LOG or by -v and -q.
pub fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("syncer={level},warn")));
    // Colour codes only help on a terminal; in a cron log they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
