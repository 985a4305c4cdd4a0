//! Online comparison: both sides resolved against the registries into
//! destination references, each with the source it is copied from.

use std::collections::BTreeMap;

use crate::oci::Reference;
use crate::plan::Desired;

/// One destination reference that a rules change affects.
#[derive(Debug, PartialEq, Eq)]
pub enum ReferenceChange {
    /// Copied under the new rules only.
    Added {
        destination: Reference,
        source: Reference,
    },
    /// Copied under the old rules only.
    Removed {
        destination: Reference,
        source: Reference,
    },
    /// Copied under both, from another source under the new rules.
    Source {
        destination: Reference,
        old: Reference,
        new: Reference,
    },
}

/// Destination references that differ, sorted by destination.
#[derive(Debug, Default)]
pub struct ReferenceChanges {
    pub changes: Vec<ReferenceChange>,
    /// Destinations copied from the same source on both sides.
    pub unchanged: usize,
}

impl ReferenceChanges {
    /// Counts of added, removed and re-pointed destinations.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for change in &self.changes {
            match change {
                ReferenceChange::Added { .. } => counts.0 += 1,
                ReferenceChange::Removed { .. } => counts.1 += 1,
                ReferenceChange::Source { .. } => counts.2 += 1,
            }
        }
        counts
    }
}

/// Compares the desired copies of the old and new rules by destination.
pub fn compare_references(old: &[Desired], new: &[Desired]) -> ReferenceChanges {
    let by_destination = |desired: &[Desired]| -> BTreeMap<Reference, Reference> {
        desired
            .iter()
            .map(|d| (d.destination.clone(), d.source.clone()))
            .collect()
    };
    let (old, new) = (by_destination(old), by_destination(new));
    let mut result = ReferenceChanges::default();
    for (destination, old_source) in &old {
        match new.get(destination) {
            None => result.changes.push(ReferenceChange::Removed {
                destination: destination.clone(),
                source: old_source.clone(),
            }),
            Some(new_source) if new_source == old_source => result.unchanged += 1,
            Some(new_source) => result.changes.push(ReferenceChange::Source {
                destination: destination.clone(),
                old: old_source.clone(),
                new: new_source.clone(),
            }),
        }
    }
    for (destination, source) in &new {
        if !old.contains_key(destination) {
            result.changes.push(ReferenceChange::Added {
                destination: destination.clone(),
                source: source.clone(),
            });
        }
    }
    result
        .changes
        .sort_by(|a, b| destination(a).cmp(destination(b)));
    result
}

fn destination(change: &ReferenceChange) -> &Reference {
    match change {
        ReferenceChange::Added { destination, .. }
        | ReferenceChange::Removed { destination, .. }
        | ReferenceChange::Source { destination, .. } => destination,
    }
}
