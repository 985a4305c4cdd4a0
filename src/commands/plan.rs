//! `syncer plan`: print what apply would do.

use super::{load_rules, registries, Exit};
use crate::cli::{PlanArgs, PlanFormat};
use crate::plan::{build_plan, render, Plan, PlanOptions};
use crate::registry::Registries;
use crate::rules::Rules;

pub async fn run(args: &PlanArgs) -> anyhow::Result<Exit> {
    let rules = match load_rules(&args.rules.rules) {
        Ok(rules) => rules,
        Err(exit) => return Ok(exit),
    };
    let registries = registries(&rules);
    let plan = match make_plan(&rules, &registries, args.jobs.into()).await {
        Ok(plan) => plan,
        Err(exit) => return Ok(exit),
    };
    match args.format {
        PlanFormat::Text => print!("{}", render::text(&plan)),
        PlanFormat::Json => print!("{}", render::json(&plan)),
    }
    if args.detailed_exitcode && plan.has_changes() {
        return Ok(Exit::Changes);
    }
    Ok(Exit::Success)
}

/// Builds the plan, printing every planning error on stderr on failure.
pub(super) async fn make_plan(
    rules: &Rules,
    registries: &Registries,
    jobs: usize,
) -> Result<Plan, Exit> {
    build_plan(rules, registries, &PlanOptions { jobs })
        .await
        .map_err(|errors| {
            for error in &errors {
                eprintln!("error: {error}");
            }
            eprintln!(
                "Error: planning failed with {} error{}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            Exit::Failure
        })
}
