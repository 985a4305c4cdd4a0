//! Saved plans: the plan file `syncer plan --out` writes and
//! `syncer apply --plan` reads, and the check that nothing it observed has
//! moved since.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use futures::{stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::{resolve_all, Action, Plan, PlanError};
use crate::oci::{Digest, Reference};
use crate::registry::{Access, Registries};
use crate::rules::Rules;

/// Version of the plan file layout. A reader rejects any other version.
pub const FORMAT_VERSION: u32 = 1;

/// A plan file. It stores registry hosts but never their connection
/// settings or credentials: apply reads those from the rules again.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format_version: u32,
    /// Canonical path of the rules the plan was made from.
    pub rules: String,
    /// `I/N` when the plan covers one shard only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Every registry host the plan reads from or writes to, sorted.
    pub registries: Vec<String>,
    pub plan: Plan,
}

/// Error reading or writing a plan file.
#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("cannot read plan file {path}: {cause}")]
    Read {
        path: String,
        /// Not `source`, so that an error chain shows it only once.
        cause: std::io::Error,
    },
    #[error("cannot write plan file {path}: {cause}")]
    Write {
        path: String,
        /// Not `source`, so that an error chain shows it only once.
        cause: std::io::Error,
    },
    #[error("invalid plan file {path}: {cause}")]
    Invalid {
        path: String,
        /// Not `source`, so that an error chain shows it only once.
        cause: serde_json::Error,
    },
    #[error("plan file {path} has format_version {found}, but this syncer reads version {FORMAT_VERSION} only; make the plan again with this version")]
    Version { path: String, found: String },
}

impl SavedPlan {
    pub fn new(plan: Plan, rules: &Path, shard: Option<String>) -> Self {
        let rules = std::fs::canonicalize(rules).unwrap_or_else(|_| rules.to_path_buf());
        let mut hosts = BTreeSet::new();
        for op in &plan.operations {
            hosts.insert(op.source.registry.clone());
            hosts.insert(op.destination.registry.clone());
        }
        SavedPlan {
            format_version: FORMAT_VERSION,
            rules: rules.display().to_string(),
            shard,
            registries: hosts.into_iter().collect(),
            plan,
        }
    }

    /// Writes the plan as pretty-printed JSON.
    pub fn write(&self, path: &Path) -> Result<(), SavedPlanError> {
        let mut text = serde_json::to_string_pretty(self).expect("plan serialises to JSON");
        text.push('\n');
        std::fs::write(path, text).map_err(|source| SavedPlanError::Write {
            path: path.display().to_string(),
            cause: source,
        })
    }

    /// Reads a plan file, checking its format version before anything else
    /// so that a file from another release gets a clear message.
    pub fn read(path: &Path) -> Result<Self, SavedPlanError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SavedPlanError::Read {
            path: shown.clone(),
            cause: source,
        })?;
        let invalid = |source| SavedPlanError::Invalid {
            path: shown.clone(),
            cause: source,
        };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(invalid)?;
        let version = &value["format_version"];
        if version.as_u64() != Some(u64::from(FORMAT_VERSION)) {
            return Err(SavedPlanError::Version {
                path: shown.clone(),
                found: version.to_string(),
            });
        }
        serde_json::from_value(value).map_err(invalid)
    }
}

/// A reference whose manifest digest differs from the one the plan saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub reference: Reference,
    /// Digest the plan recorded; `None` when the tag did not exist.
    pub planned: Option<Digest>,
    /// Digest found now; `None` when the tag no longer exists.
    pub current: Option<Digest>,
}

/// HEADs every source and destination of `plan` again, each reference once,
/// and lists those whose digest moved since the plan was made. Sources whose
/// digest the plan did not record are not checked.
pub async fn find_moved(
    plan: &Plan,
    registries: &Registries,
    jobs: usize,
) -> Result<Vec<Moved>, Vec<PlanError>> {
    // Destinations are checked with the push access that apply requests next,
    // so a token server receives the same scopes as during the run.
    let mut expected: BTreeMap<Reference, (Option<Digest>, Access)> = BTreeMap::new();
    for op in &plan.operations {
        if let Some(digest) = &op.source_digest {
            expected
                .entry(op.source.clone())
                .or_insert((Some(digest.clone()), Access::Pull));
        }
        expected
            .entry(op.destination.clone())
            .and_modify(|(_, access)| *access = Access::Push)
            .or_insert((op.destination_digest.clone(), Access::Push));
    }
    let results: Vec<_> = stream::iter(expected)
        .map(|(reference, (planned, access))| async move {
            let head = async {
                registries
                    .client(&reference.registry)?
                    .head_manifest_as(&reference.repository, &reference.target, access)
                    .await
            }
            .await;
            match head {
                Ok(head) => Ok(Moved {
                    reference,
                    planned,
                    current: head.map(|h| h.digest),
                }),
                Err(source) => Err(PlanError::Registry {
                    reference: reference.to_string(),
                    source,
                }),
            }
        })
        .buffered(jobs.max(1))
        .collect()
        .await;
    let mut moved = Vec::new();
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(check) if check.planned != check.current => moved.push(check),
            Ok(_) => {}
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        Ok(moved)
    } else {
        Err(errors)
    }
}

/// Checks that every write and delete of a saved plan is one the rules
/// produce now: a plan file is data anyone with write access to it could
/// edit, and apply runs it without a prompt. Returns one message per
/// operation the rules do not produce.
pub async fn check_against_rules(
    plan: &Plan,
    rules: &Rules,
    registries: &Registries,
    jobs: usize,
) -> Result<(), Vec<String>> {
    let resolved = resolve_all(rules, registries, jobs)
        .await
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let copies: HashSet<(&str, &Reference, &Reference)> = resolved
        .desired
        .iter()
        .map(|d| (d.rule.as_str(), &d.source, &d.destination))
        .collect();
    let produced: HashSet<&Reference> = resolved.desired.iter().map(|d| &d.destination).collect();
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for op in &plan.operations {
        if !op.action.is_change() {
            continue;
        }
        if !seen.insert(&op.destination) {
            problems.push(format!("{} appears more than once", op.destination));
            continue;
        }
        let allowed = match op.action {
            Action::Delete => {
                let scope = resolved.prune.iter().find(|scope| {
                    scope.rule == op.rule
                        && scope.registry == op.destination.registry
                        && scope.repository == op.destination.repository
                });
                match (scope, op.destination.tag()) {
                    (Some(scope), Some(tag)) => {
                        !produced.contains(&op.destination) && !scope.protect.is_protected(tag)
                    }
                    _ => false,
                }
            }
            _ => copies.contains(&(op.rule.as_str(), &op.source, &op.destination)),
        };
        if !allowed {
            problems.push(format!(
                "{} {} (rule {:?}) is not an operation these rules produce",
                op.action.symbol(),
                op.destination,
                op.rule
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
