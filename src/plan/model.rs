//! The plan model. Its JSON form is a public interface: fields are added,
//! never renamed or removed.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::tree::TreeCache;
use crate::oci::{Digest, Reference};

/// Change an operation makes to its destination tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The destination tag does not exist yet.
    Create,
    /// The destination tag points at another digest.
    Update,
    /// The destination already matches the source.
    Unchanged,
    /// The destination tag is removed.
    Delete,
    /// Left alone on purpose, for the reason in the operation's `note`.
    Skip,
}

impl Action {
    /// Symbol shown in front of the operation in text plans.
    pub fn symbol(self) -> char {
        match self {
            Action::Create => '+',
            Action::Update => '~',
            Action::Unchanged => ' ',
            Action::Delete => '-',
            Action::Skip => '!',
        }
    }

    /// Whether the operation writes or deletes something.
    pub fn is_change(self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Delete)
    }
}

/// Blobs an operation needs at its destination, and the bytes to copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobCounts {
    /// Blobs read from the source and uploaded.
    pub copy: usize,
    /// Blobs linked from another repository of the destination registry.
    pub mount: usize,
    /// Blobs the destination repository already holds.
    pub present: usize,
    /// Bytes of the blobs to copy.
    pub bytes: u64,
}

/// One destination tag and what happens to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub action: Action,
    /// Name of the rule that produced the operation.
    pub rule: String,
    pub source: Reference,
    pub destination: Reference,
    pub source_digest: Option<Digest>,
    pub destination_digest: Option<Digest>,
    /// `index` for a multi-platform index, `image` for a single manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub blobs: BlobCounts,
    /// Reason the operation is skipped, or what is special about it, such
    /// as an index reduced to some platforms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Digest of the rewritten index the destination receives when a rule
    /// selects platforms; it differs from `source_digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewritten_digest: Option<Digest>,
    /// Platforms the rule selects, as written in the rules; empty for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
}

impl Operation {
    /// Digest of the manifest the destination contains once the operation is
    /// applied: the rewritten index when there is one, else the source's.
    pub fn content_digest(&self) -> Option<&Digest> {
        self.rewritten_digest
            .as_ref()
            .or(self.source_digest.as_ref())
    }
}

/// Count of operations by action; the summary line prints these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub unchanged: usize,
    pub delete: usize,
    /// Operations skipped on purpose: `overwrite: false`, a platform that
    /// does not match, or a tag that prune cannot delete. Left out of the
    /// JSON when zero, so plans without skips read as before.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skip: usize,
}

fn is_zero(count: &usize) -> bool {
    *count == 0
}

/// Everything a run would do, in a stable order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Plan {
    pub operations: Vec<Operation>,
    pub summary: Summary,
    /// Problems that did not stop planning, such as skipped tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Copies that could not be planned because a registry failed, each
    /// with its error. The rest of the plan is kept; a run that has any
    /// exits 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// Manifests and blob checks fetched while planning, so an apply in the
    /// same process does not fetch them again.
    #[serde(skip)]
    pub cache: Arc<TreeCache>,
}

impl Plan {
    /// Builds a plan from operations in rules order: rule by rule, source
    /// by source, destinations as listed. That order does not depend on
    /// registry ports or on which request returned first.
    pub fn new(operations: Vec<Operation>, warnings: Vec<String>, cache: Arc<TreeCache>) -> Self {
        let mut summary = Summary::default();
        for op in &operations {
            match op.action {
                Action::Create => summary.create += 1,
                Action::Update => summary.update += 1,
                Action::Unchanged => summary.unchanged += 1,
                Action::Delete => summary.delete += 1,
                Action::Skip => summary.skip += 1,
            }
        }
        Plan {
            operations,
            summary,
            warnings,
            failures: Vec::new(),
            cache,
        }
    }

    pub fn has_changes(&self) -> bool {
        self.operations.iter().any(|op| op.action.is_change())
    }

    /// Operations that write or delete something.
    pub fn changes(&self) -> impl Iterator<Item = &Operation> {
        self.operations.iter().filter(|op| op.action.is_change())
    }
}
