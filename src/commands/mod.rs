//! One module per subcommand, each wiring the library parts together.

mod apply;
mod diff;
mod lock;
mod plan;
mod schema;
mod validate;

use std::path::Path;

use crate::cli::Command;
use crate::registry::Registries;
use crate::rules::{Diagnostic, Rules};

/// Process exit codes, part of the command-line interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success; under `--detailed-exitcode`, also "no changes".
    Success = 0,
    /// Invalid rules, an unreachable registry or any failed operation.
    Failure = 1,
    /// Under `--detailed-exitcode` only: the plan has changes.
    Changes = 2,
    /// Another `apply` of the same rules and shard holds the lock.
    Locked = 3,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

/// Runs one subcommand.
pub async fn run(command: Command) -> anyhow::Result<Exit> {
    match command {
        Command::Validate(args) => validate::run(&args.rules),
        Command::Plan(args) => plan::run(&args).await,
        Command::Apply(args) => apply::run(&args).await,
        Command::Diff(args) => diff::run(&args).await,
        Command::Schema => schema::run(),
    }
}

/// Loads rules for `validate`, `plan` and `apply`, printing every diagnostic
/// on stderr when they are invalid. Rules without a single rule are an
/// error, because a job whose rules file lost its content would otherwise
/// report success while copying nothing.
fn load_rules(path: &Path) -> Result<Rules, Exit> {
    let rules = load_rules_allowing_empty(path)?;
    if rules.rules.is_empty() {
        let location = if path.is_dir() {
            "the rules files in this folder contain"
        } else {
            "the file contains"
        };
        let message =
            format!("no rules: {location} no entry under `rules:`; add at least one rule");
        print_diagnostics(path, &[Diagnostic::new(path, None, message)]);
        return Err(Exit::Failure);
    }
    Ok(rules)
}

/// Loads rules that may contain no rule, such as one side of `diff`,
/// printing every diagnostic on stderr when they are invalid.
fn load_rules_allowing_empty(path: &Path) -> Result<Rules, Exit> {
    crate::rules::load(path).map_err(|error| {
        print_diagnostics(path, &error.diagnostics);
        Exit::Failure
    })
}

fn print_diagnostics(path: &Path, diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics {
        eprintln!("error: {diagnostic}");
    }
    let count = diagnostics.len();
    eprintln!(
        "Error: {} has {count} error{}",
        path.display(),
        if count == 1 { "" } else { "s" }
    );
}

fn registries(rules: &Rules) -> Registries {
    Registries::new(rules.registries.clone())
}
