//! Destinations that two rules would both write, found from the rules
//! alone where their patterns show it: exact sources mapped to the same
//! destination repository with tag sets that overlap. Glob sources and
//! filtered tag sets are checked at plan time, against real tag lists.

use super::{Rule, Source};
use crate::oci::{Repository, Target};

/// Two rules writing the same destination reference.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict {
    /// Rule index and destination index of the earlier rule.
    pub first: (usize, usize),
    /// Rule index and destination index of the later rule.
    pub second: (usize, usize),
    pub message: String,
}

/// One destination of an exact-source rule, with the target it writes.
struct Write<'a> {
    rule: usize,
    destination: usize,
    registry: &'a str,
    repository: Repository,
    /// The one target written, for a single-image rule.
    target: Option<Target>,
    /// The source, as `host/repo[:tag|@digest]`.
    source: String,
}

/// Finds every pair of rules that would write the same destination
/// reference, judging only what the rules show without the network.
pub fn find_conflicts(rules: &[Rule]) -> Vec<Conflict> {
    let writes: Vec<Write> = rules
        .iter()
        .enumerate()
        .flat_map(|(index, rule)| writes(index, rule))
        .collect();
    let mut conflicts = Vec::new();
    for (i, second) in writes.iter().enumerate() {
        for first in &writes[..i] {
            if first.rule == second.rule
                || first.registry != second.registry
                || first.repository != second.repository
            {
                continue;
            }
            if let Some(written) = overlap(first, second, rules) {
                conflicts.push(Conflict {
                    first: (first.rule, first.destination),
                    second: (second.rule, second.destination),
                    message: format!(
                        "rules {:?} and {:?} both write {written} (from {} and {})",
                        rules[first.rule].name,
                        rules[second.rule].name,
                        first.source,
                        second.source
                    ),
                });
                break;
            }
        }
    }
    conflicts
}

fn writes(index: usize, rule: &Rule) -> Vec<Write<'_>> {
    let (repository, target) = match &rule.source {
        Source::Repository { repository, .. } => (repository, None),
        Source::Image {
            repository, target, ..
        } => (repository, Some(target)),
        Source::Glob { .. } => return Vec::new(),
    };
    let source = match target {
        None => format!("{}/{repository}", rule.source.registry()),
        Some(Target::Tag(tag)) => format!("{}/{repository}:{tag}", rule.source.registry()),
        Some(Target::Digest(digest)) => {
            format!("{}/{repository}@{digest}", rule.source.registry())
        }
    };
    rule.destinations
        .iter()
        .enumerate()
        .filter_map(|(destination_index, destination)| {
            let mapped = destination.repository_for(&rule.source, repository).ok()?;
            let written = match (&destination.tag, target) {
                (Some(tag), _) => Some(Target::Tag(tag.clone())),
                (None, target) => target.cloned(),
            };
            Some(Write {
                rule: index,
                destination: destination_index,
                registry: &destination.registry,
                repository: mapped,
                target: written,
                source: source.clone(),
            })
        })
        .collect()
}

/// The reference both writes produce, when the rules alone show one.
fn overlap(first: &Write, second: &Write, rules: &[Rule]) -> Option<String> {
    let reference = |target: &Target| match target {
        Target::Tag(tag) => format!("{}/{}:{tag}", first.registry, first.repository),
        Target::Digest(digest) => format!("{}/{}@{digest}", first.registry, first.repository),
    };
    match (&first.target, &second.target) {
        (Some(a), Some(b)) if a == b => {
            let same_content = first.source == second.source
                && rules[first.rule].platforms == rules[second.rule].platforms;
            (!same_content).then(|| reference(a))
        }
        (Some(Target::Tag(tag)), None) => {
            selected_by(tag, second, first, rules).then(|| reference(&Target::Tag(tag.clone())))
        }
        (None, Some(Target::Tag(tag))) => {
            selected_by(tag, first, second, rules).then(|| reference(&Target::Tag(tag.clone())))
        }
        (None, None) => {
            let every = rules[first.rule].tags.selects_every_tag()
                && rules[second.rule].tags.selects_every_tag();
            (every && first.source != second.source).then(|| {
                format!(
                    "every tag of {}/{} that both sources have",
                    first.registry, first.repository
                )
            })
        }
        _ => None,
    }
}

/// Whether the repository rule of `whole` always selects `tag`, which the
/// single-image rule of `image` writes from another source.
fn selected_by(tag: &str, whole: &Write, image: &Write, rules: &[Rule]) -> bool {
    let same_source = image.source == format!("{}:{tag}", whole.source);
    !same_source && rules[whole.rule].tags.always_selects(tag)
}
