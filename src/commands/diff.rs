//! `syncer diff`: show what a change from OLD rules to NEW rules would copy.

use std::path::Path;

use super::plan::print_errors;
use super::{load_rules_allowing_empty, registries, Exit};
use crate::cli::{DiffArgs, DiffFormat};
use crate::plan::{resolve, Desired};
use crate::review::{compare_references, compare_rules, render, NormalisedRules};

pub async fn run(args: &DiffArgs) -> anyhow::Result<Exit> {
    let old = NormalisedRules::read(&args.old)?;
    let new = NormalisedRules::read(&args.new)?;
    let labels = (
        args.old.display().to_string(),
        args.new.display().to_string(),
    );
    let rules = compare_rules(&old, &new, (&labels.0, &labels.1));
    let references = if args.offline {
        None
    } else {
        let jobs = args.jobs.into();
        let Some(old) = resolve_side(&args.old, jobs).await else {
            return Ok(Exit::Failure);
        };
        let Some(new) = resolve_side(&args.new, jobs).await else {
            return Ok(Exit::Failure);
        };
        Some(compare_references(&old, &new))
    };
    let output = match args.format {
        DiffFormat::Text => render::text(&rules, references.as_ref()),
        DiffFormat::Markdown => render::markdown(&rules, references.as_ref()),
    };
    print!("{output}");
    Ok(Exit::Success)
}

/// Loads and resolves one side, printing any error on stderr.
async fn resolve_side(path: &Path, jobs: usize) -> Option<Vec<Desired>> {
    let rules = load_rules_allowing_empty(path).ok()?;
    let registries = registries(&rules);
    match resolve(&rules, &registries, jobs).await {
        Ok((desired, warnings)) => {
            for warning in warnings {
                tracing::warn!("{}: {warning}", path.display());
            }
            Some(desired)
        }
        Err(errors) => {
            print_errors(&format!("resolving {} failed", path.display()), &errors);
            None
        }
    }
}
