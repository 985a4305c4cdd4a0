//! `syncer plan`: print what apply would do, and optionally save it.

use tracing::{info, warn};

use super::{load_rules, registries, Exit};
use crate::cli::{PlanArgs, PlanFormat};
use crate::plan::saved::SavedPlan;
use crate::plan::{build_plan, render, Plan, PlanOptions, Shard};
use crate::registry::Registries;
use crate::rules::Rules;

pub async fn run(args: &PlanArgs) -> anyhow::Result<Exit> {
    let rules = match load_rules(&args.rules.rules) {
        Ok(rules) => rules,
        Err(exit) => return Ok(exit),
    };
    let registries = registries(&rules);
    let plan = match make_plan(&rules, &registries, args.jobs.into(), args.shard).await {
        Ok(plan) => plan,
        Err(exit) => return Ok(exit),
    };
    match args.format {
        PlanFormat::Text => print!("{}", render::text(&plan)),
        PlanFormat::Json => print!("{}", render::json(&plan)),
        PlanFormat::Markdown => print!("{}", render::markdown(&plan)),
    }
    let has_changes = plan.has_changes();
    let failures = plan.failures.len();
    if failures > 0 {
        print_errors("planning failed for some copies", &plan.failures);
    }
    if let Some(path) = &args.out {
        let saved = SavedPlan::new(plan, &args.rules.rules, args.shard.map(|s| s.to_string()));
        saved.write(path)?;
        info!(path = %path.display(), "saved the plan");
    }
    // A plan missing copies is a failure, even though the rest of it is
    // printed (and saved) for review.
    if failures > 0 {
        return Ok(Exit::Failure);
    }
    if args.detailed_exitcode && has_changes {
        return Ok(Exit::Changes);
    }
    Ok(Exit::Success)
}

/// Builds the plan, printing every planning error on stderr on failure.
pub(super) async fn make_plan(
    rules: &Rules,
    registries: &Registries,
    jobs: usize,
    shard: Option<Shard>,
) -> Result<Plan, Exit> {
    if let Some(shard) = shard {
        info!(%shard, "planning one shard of the destination repositories");
    }
    let plan = build_plan(rules, registries, &PlanOptions { jobs, shard })
        .await
        .map_err(|errors| {
            print_errors("planning failed", &errors);
            Exit::Failure
        })?;
    // The plan shows its warnings too, but logs are what cron jobs keep and
    // alerting reads, so each one also goes out at WARN level.
    for warning in &plan.warnings {
        warn!(warning = ?warning, "plan warning");
    }
    Ok(plan)
}

/// Prints each error, then a count with `what` in front of it.
pub(super) fn print_errors(what: &str, errors: &[impl std::fmt::Display]) {
    for error in errors {
        eprintln!("error: {error}");
    }
    eprintln!(
        "Error: {what} with {} error{}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
}
