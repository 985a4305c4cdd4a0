//! `syncer apply`: take the lock, plan (or load a saved plan and check it
//! is still current), confirm, copy, report.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use tracing::{info, warn};

use super::lock::{self, ApplyLock, LockError};
use super::plan::{make_plan, print_errors};
use super::{load_rules, registries, Exit};
use crate::apply::{execute, ApplyOptions, Progress, ProgressMode, Report};
use crate::cli::ApplyArgs;
use crate::plan::saved::{check_against_rules, find_moved, Moved, SavedPlan};
use crate::plan::{render, Plan};
use crate::registry::Registries;
use crate::rules::Rules;

/// Rules path used when none is given.
const DEFAULT_RULES: &str = "rules";

/// Attempts per blob copy, the first included.
const BLOB_ATTEMPTS: u32 = 3;

pub async fn run(args: &ApplyArgs) -> anyhow::Result<Exit> {
    let (exit, report) = match apply(args).await {
        Ok(done) => done,
        Err(error) => {
            // The report still records that this run failed, so
            // it never shows an older run's numbers.
            write_report(args, &Report::not_applied(format!("{error:#}")))?;
            return Err(error);
        }
    };
    write_report(args, &report)?;
    Ok(exit)
}

fn write_report(args: &ApplyArgs, report: &Report) -> anyhow::Result<()> {
    let Some(path) = &args.report else {
        return Ok(());
    };
    let json = serde_json::to_string_pretty(report).context("serialising the apply report")?;
    std::fs::write(path, json + "\n")
        .with_context(|| format!("writing the apply report to {}", path.display()))
}

/// Runs apply and returns its exit code with the report to write. A run
/// that stops before copying returns a report with the reason.
async fn apply(args: &ApplyArgs) -> anyhow::Result<(Exit, Report)> {
    let not_applied = |exit: Exit, reason: &str| Ok((exit, Report::not_applied(reason.into())));
    let interactive = std::io::stdin().is_terminal();
    // A saved plan was reviewed when it was made, so it needs no prompt.
    let needs_approval = !args.auto_approve && args.plan.is_none();
    if needs_approval && !interactive {
        eprintln!("Error: apply needs confirmation, but stdin is not a terminal. Review the plan with `syncer plan`, then run `syncer apply --auto-approve`.");
        return not_applied(
            Exit::Failure,
            "not approved: stdin is not a terminal and --auto-approve was not given",
        );
    }
    let saved = match &args.plan {
        Some(path) => Some((path, SavedPlan::read(path)?)),
        None => None,
    };
    if let (Some((path, saved)), Some(shard)) = (&saved, args.shard) {
        if saved
            .shard
            .as_ref()
            .is_some_and(|planned| *planned != shard.to_string())
        {
            let planned = saved.shard.as_deref().unwrap_or_default();
            eprintln!(
                "Error: the saved plan {} covers shard {planned}, not --shard {shard}. Apply it with --shard {planned}, or make a plan for shard {shard}.",
                path.display()
            );
            return not_applied(Exit::Failure, "the saved plan covers another shard");
        }
    }
    // Like `terraform apply PLANFILE`, a saved plan needs no rules argument:
    // it names the rules it was made from, whose registry settings apply.
    let rules_path = match (&args.rules, &saved) {
        (Some(path), _) => path.clone(),
        (None, Some((_, saved))) => PathBuf::from(&saved.rules),
        (None, None) => PathBuf::from(DEFAULT_RULES),
    };
    let rules = match load_rules(&rules_path) {
        Ok(rules) => rules,
        Err(exit) => return not_applied(exit, "invalid rules"),
    };

    let _lock = match take_lock(args, &rules_path)? {
        Ok(lock) => lock,
        Err(exit) => return not_applied(exit, "another apply of these rules holds the lock"),
    };

    let registries = registries(&rules);
    let plan = match saved {
        Some((path, saved)) => {
            load_saved_plan(path, saved, &rules_path, &rules, args, &registries).await?
        }
        None => make_plan(&rules, &registries, args.jobs.into(), args.shard).await,
    };
    let plan = match plan {
        Ok(plan) => plan,
        Err(exit) => return not_applied(exit, "planning failed or the saved plan is stale"),
    };

    print!("{}", render::text(&plan));
    if !plan.has_changes() {
        // As after any apply, the summary line closes the output, so cron
        // logs and alerting read the same line every night.
        let report = Report {
            unchanged: plan.summary.unchanged,
            ..Report::default()
        };
        return Ok(finish(report, &plan));
    }
    if needs_approval && !confirm()? {
        println!("Apply cancelled.");
        return not_applied(Exit::Failure, "cancelled at the prompt");
    }

    let options = ApplyOptions {
        jobs: args.jobs.into(),
        blob_attempts: BLOB_ATTEMPTS,
    };
    let mut progress = Progress::new(ProgressMode::detect());
    let report = execute(&plan, &registries, &options, &progress).await;
    progress.finish();
    Ok(finish(report, &plan))
}

/// Counts the copies the plan left out as failures, prints the summary and
/// returns the exit code with the report.
fn finish(mut report: Report, plan: &Plan) -> (Exit, Report) {
    report.add_not_planned(&plan.failures);
    println!();
    print!("{}", report.text());
    let exit = if report.has_failures() {
        Exit::Failure
    } else {
        Exit::Success
    };
    (exit, report)
}

/// Takes the lock for the rules and shard, or returns [`Exit::Locked`]
/// after printing who holds it.
fn take_lock(args: &ApplyArgs, rules: &Path) -> anyhow::Result<Result<ApplyLock, Exit>> {
    let path = match &args.lock_file {
        Some(path) => path.clone(),
        None => lock::default_path(rules, args.shard)?,
    };
    match lock::acquire(&path) {
        Ok(lock) => {
            info!(path = %path.display(), "took the apply lock");
            Ok(Ok(lock))
        }
        Err(error @ LockError::Held { .. }) => {
            eprintln!("Error: {error}. Not starting; wait for that run to finish.");
            Ok(Err(Exit::Locked))
        }
        Err(error) => Err(error.into()),
    }
}

/// Reads a saved plan, keeps the operations of `--shard` if given, and
/// HEADs every digest it recorded again. Any digest that moved rejects the
/// whole plan before anything is written.
async fn load_saved_plan(
    path: &Path,
    saved: SavedPlan,
    rules_path: &Path,
    rules: &Rules,
    args: &ApplyArgs,
    registries: &Registries,
) -> anyhow::Result<Result<Plan, Exit>> {
    let canonical = std::fs::canonicalize(rules_path).unwrap_or_else(|_| rules_path.to_path_buf());
    if saved.rules != canonical.display().to_string() {
        warn!(
            planned_with = %saved.rules,
            applying_with = %canonical.display(),
            "the saved plan was made from other rules; applying its operations with these rules' registry settings"
        );
    }
    let saved_plan = saved.plan;
    let operations = saved_plan
        .operations
        .into_iter()
        .filter(|op| {
            args.shard
                .is_none_or(|shard| shard.contains(&op.destination))
        })
        .collect();
    // The summary is counted again from the operations, never trusted.
    let mut plan = Plan::new(operations, saved_plan.warnings, saved_plan.cache);
    plan.failures = saved_plan.failures;
    if let Err(problems) = check_against_rules(&plan, rules, registries, args.jobs.into()).await {
        eprintln!(
            "Error: the saved plan {} does not match the rules, so nothing was applied. Make a new plan.",
            path.display()
        );
        for problem in problems {
            eprintln!("  {problem}");
        }
        return Ok(Err(Exit::Failure));
    }
    let moved = match find_moved(&plan, registries, args.jobs.into()).await {
        Ok(moved) => moved,
        Err(errors) => {
            print_errors("checking the saved plan failed", &errors);
            return Ok(Err(Exit::Failure));
        }
    };
    if !moved.is_empty() {
        print_moved(path, &moved);
        return Ok(Err(Exit::Failure));
    }
    info!(path = %path.display(), "every digest in the saved plan is current");
    Ok(Ok(plan))
}

fn print_moved(path: &Path, moved: &[Moved]) {
    eprintln!(
        "Error: the saved plan {} is stale: {} reference{} moved since it was made, so nothing was applied. Make a new plan.",
        path.display(),
        moved.len(),
        if moved.len() == 1 { "" } else { "s" }
    );
    for item in moved {
        let show = |digest: &Option<crate::oci::Digest>| {
            digest
                .as_ref()
                .map_or("(absent)".to_string(), ToString::to_string)
        };
        eprintln!(
            "  {}: planned {}, now {}",
            item.reference,
            show(&item.planned),
            show(&item.current)
        );
    }
}

/// Asks on the terminal; only `yes` approves.
fn confirm() -> anyhow::Result<bool> {
    print!("\nDo you want to perform these operations?\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}
