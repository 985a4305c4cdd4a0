//! `syncer apply`: plan, confirm, copy, report.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;

use super::plan::make_plan;
use super::{load_rules, registries, Exit};
use crate::apply::{execute, ApplyOptions, Progress, ProgressMode};
use crate::cli::ApplyArgs;
use crate::plan::render;

/// Attempts per blob copy, the first included.
const BLOB_ATTEMPTS: u32 = 3;

pub async fn run(args: &ApplyArgs) -> anyhow::Result<Exit> {
    let interactive = std::io::stdin().is_terminal();
    if !args.auto_approve && !interactive {
        eprintln!("Error: apply needs confirmation, but stdin is not a terminal. Review the plan with `syncer plan`, then run `syncer apply --auto-approve`.");
        return Ok(Exit::Failure);
    }
    let rules = match load_rules(&args.rules.rules) {
        Ok(rules) => rules,
        Err(exit) => return Ok(exit),
    };
    let registries = registries(&rules);
    let plan = match make_plan(&rules, &registries, args.jobs.into()).await {
        Ok(plan) => plan,
        Err(exit) => return Ok(exit),
    };
    print!("{}", render::text(&plan));
    if !plan.has_changes() {
        return Ok(Exit::Success);
    }
    if !args.auto_approve && !confirm()? {
        println!("Apply cancelled.");
        return Ok(Exit::Failure);
    }
    let options = ApplyOptions {
        jobs: args.jobs.into(),
        blob_attempts: BLOB_ATTEMPTS,
    };
    let mut progress = Progress::new(ProgressMode::detect());
    let report = execute(&plan, &registries, &options, &progress).await;
    progress.finish();
    println!();
    print!("{}", report.text());
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report).context("serialising the apply report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the apply report to {}", path.display()))?;
    }
    Ok(if report.has_failures() {
        Exit::Failure
    } else {
        Exit::Success
    })
}

/// Asks on the terminal; only `yes` approves.
fn confirm() -> anyhow::Result<bool> {
    print!("\nDo you want to perform these operations?\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}
