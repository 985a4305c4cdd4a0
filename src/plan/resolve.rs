//! Resolution: rules against catalogs and tag lists, producing the desired
//! copies `source reference -> destination reference`.

use std::collections::{BTreeMap, HashMap};

use futures::{stream, StreamExt};
use tracing::{debug, warn};

use crate::oci::{is_valid_tag, Reference, Repository, Target};
use crate::registry::{Registries, RegistryError};
use crate::rules::{PlatformSpec, Protect, Rule, Rules, Source};

/// One copy the rules ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub rule: String,
    pub source: Reference,
    pub destination: Reference,
    /// Platforms to copy; empty for the source as it is.
    pub platforms: Vec<PlatformSpec>,
    /// Whether a destination tag holding another digest may be moved.
    pub overwrite: bool,
}

/// A destination repository of a rule with `prune: true`.
#[derive(Clone, Debug)]
pub struct PruneScope {
    pub rule: String,
    pub registry: String,
    pub repository: Repository,
    pub protect: Protect,
}

/// Everything resolution finds.
#[derive(Debug, Default)]
pub struct Resolved {
    pub desired: Vec<Desired>,
    pub warnings: Vec<String>,
    /// Destination repositories to prune, each once, in rules order.
    pub prune: Vec<PruneScope>,
}

/// Why rules could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("rule {rule:?}: {source}")]
    Registry { rule: String, source: RegistryError },
    #[error("rule {rule:?}: {message}")]
    Mapping { rule: String, message: String },
    #[error(
        "{} both write {destination} (from {first_source} and {second_source})",
        conflict_rules(first, second)
    )]
    Conflict {
        destination: Reference,
        first: String,
        first_source: Reference,
        second: String,
        second_source: Reference,
    },
    #[error("rule {rule:?}: source repository {repository} not found")]
    NotFound { rule: String, repository: String },
}

/// Names the rules of a conflict: one rule whose glob maps two source
/// repositories to one destination is named once.
fn conflict_rules(first: &str, second: &str) -> String {
    if first == second {
        format!("two source repositories of rule {first:?}")
    } else {
        format!("rules {first:?} and {second:?}")
    }
}

/// Resolves every rule, with at most `jobs` listings in flight.
pub async fn resolve(
    rules: &Rules,
    registries: &Registries,
    jobs: usize,
) -> Result<(Vec<Desired>, Vec<String>), Vec<ResolveError>> {
    resolve_all(rules, registries, jobs)
        .await
        .map(|resolved| (resolved.desired, resolved.warnings))
}

/// Resolves every rule, also returning the repositories to prune.
pub async fn resolve_all(
    rules: &Rules,
    registries: &Registries,
    jobs: usize,
) -> Result<Resolved, Vec<ResolveError>> {
    let mut warnings = Vec::new();
    let mut prune: Vec<PruneScope> = Vec::new();
    let catalogs = fetch_catalogs(rules, registries).await?;
    let mut sources: Vec<(&Rule, Repository)> = Vec::new();
    for rule in &rules.rules {
        sources.extend(
            source_repositories(rule, &catalogs)
                .into_iter()
                .map(|repo| (rule, repo)),
        );
    }
    let tag_lists = fetch_tags(&sources, registries, jobs).await?;
    let mut desired = Vec::new();
    let mut errors = Vec::new();
    for (rule, repository) in &sources {
        let key = (rule.source.registry().to_string(), repository.clone());
        let targets = match &rule.source {
            Source::Image { target, .. } => vec![target.clone()],
            _ => select_tags(
                rule,
                repository,
                tag_lists.get(&key).map_or(&[][..], Vec::as_slice),
                &mut warnings,
            ),
        };
        for target in targets {
            let source = Reference::new(rule.source.registry(), repository.clone(), target);
            for destination in &rule.destinations {
                match destination.repository_for(&rule.source, repository) {
                    Ok(dest_repo) => {
                        let dest_target = match (&destination.tag, &source.target) {
                            (Some(tag), _) => Target::Tag(tag.clone()),
                            (None, target) => target.clone(),
                        };
                        let destination =
                            Reference::new(&destination.registry, dest_repo, dest_target);
                        desired.push(Desired {
                            rule: rule.name.clone(),
                            source: source.clone(),
                            destination,
                            platforms: rule.platforms.clone(),
                            overwrite: rule.overwrite,
                        });
                    }
                    Err(message) => errors.push(ResolveError::Mapping {
                        rule: rule.name.clone(),
                        message,
                    }),
                }
            }
        }
    }
    // Every destination repository of a pruning rule is a target, even
    // one whose source has no selected tag left. A source repository that
    // lists no tags at all is more likely unreadable or half-deleted than
    // meant to empty its mirror, so its destinations are left alone.
    for (rule, repository) in &sources {
        let listed = tag_lists.get(&(rule.source.registry().to_string(), repository.clone()));
        let listed_nothing = !matches!(rule.source, Source::Image { .. })
            && listed.is_none_or(|tags| tags.is_empty());
        if rule.prune && listed_nothing {
            warnings.push(format!(
                "rule {:?}: not pruning the destinations of {}/{repository}, because it lists no tags (deleted, or not readable with these credentials); delete them by hand if that is intended",
                rule.name,
                rule.source.registry()
            ));
            continue;
        }
        for destination in &rule.destinations {
            if let Ok(dest_repo) = destination.repository_for(&rule.source, repository) {
                add_prune_scope(&mut prune, rule, &destination.registry, &dest_repo);
            }
        }
    }
    errors.extend(find_conflicts(&mut desired));
    if errors.is_empty() {
        Ok(Resolved {
            desired,
            warnings,
            prune,
        })
    } else {
        Err(errors)
    }
}

fn add_prune_scope(
    scopes: &mut Vec<PruneScope>,
    rule: &Rule,
    registry: &str,
    repository: &Repository,
) {
    if !rule.prune {
        return;
    }
    let known = scopes
        .iter()
        .any(|s| s.registry == registry && &s.repository == repository);
    if !known {
        scopes.push(PruneScope {
            rule: rule.name.clone(),
            registry: registry.to_string(),
            repository: repository.clone(),
            protect: rule.protect.clone(),
        });
    }
}

/// Lists the catalog of every registry a glob rule reads, once each.
async fn fetch_catalogs(
    rules: &Rules,
    registries: &Registries,
) -> Result<HashMap<String, Vec<String>>, Vec<ResolveError>> {
    let mut catalogs = HashMap::new();
    for rule in &rules.rules {
        let Source::Glob { registry, .. } = &rule.source else {
            continue;
        };
        if catalogs.contains_key(registry) {
            continue;
        }
        let listed = async { registries.client(registry)?.catalog().await }.await;
        let names = listed.map_err(|source| {
            vec![ResolveError::Registry {
                rule: rule.name.clone(),
                source,
            }]
        })?;
        debug!(registry = %registry, repositories = names.len(), "listed catalog");
        catalogs.insert(registry.clone(), names);
    }
    Ok(catalogs)
}

fn source_repositories(rule: &Rule, catalogs: &HashMap<String, Vec<String>>) -> Vec<Repository> {
    match &rule.source {
        Source::Repository { repository, .. } | Source::Image { repository, .. } => {
            vec![repository.clone()]
        }
        Source::Glob {
            registry, matcher, ..
        } => {
            let names = catalogs.get(registry).map_or(&[][..], Vec::as_slice);
            let mut matched: Vec<Repository> = names
                .iter()
                .filter(|name| matcher.is_match(name))
                .filter_map(|name| Repository::parse(name).ok())
                .collect();
            matched.sort();
            matched
        }
    }
}

type TagLists = HashMap<(String, Repository), Vec<String>>;

/// Lists tags of every source repository that needs them, concurrently.
async fn fetch_tags(
    sources: &[(&Rule, Repository)],
    registries: &Registries,
    jobs: usize,
) -> Result<TagLists, Vec<ResolveError>> {
    let mut wanted: BTreeMap<(String, Repository), (String, bool)> = BTreeMap::new();
    for (rule, repository) in sources {
        if matches!(rule.source, Source::Image { .. }) {
            continue;
        }
        let exact = matches!(rule.source, Source::Repository { .. });
        wanted
            .entry((rule.source.registry().to_string(), repository.clone()))
            .or_insert((rule.name.clone(), exact));
    }
    let results: Vec<_> = stream::iter(wanted)
        .map(|((registry, repository), (rule, exact))| async move {
            let client = registries
                .client(&registry)
                .map_err(|source| ResolveError::Registry {
                    rule: rule.clone(),
                    source,
                })?;
            match client.tags(&repository).await {
                Ok(tags) => Ok(((registry, repository), tags)),
                Err(e) if e.is_not_found() && exact => Err(ResolveError::NotFound {
                    rule,
                    repository: format!("{registry}/{repository}"),
                }),
                Err(e) if e.is_not_found() => Ok(((registry, repository), Vec::new())),
                Err(source) => Err(ResolveError::Registry { rule, source }),
            }
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await;
    let mut lists = HashMap::new();
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok((key, tags)) => {
                lists.insert(key, tags);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(lists)
    } else {
        Err(errors)
    }
}

fn select_tags(
    rule: &Rule,
    repository: &Repository,
    listed: &[String],
    warnings: &mut Vec<String>,
) -> Vec<Target> {
    let (valid, invalid): (Vec<String>, Vec<String>) =
        listed.iter().cloned().partition(|t| is_valid_tag(t));
    if !invalid.is_empty() {
        let message = format!(
            "{}/{repository}: skipped tags that are not valid tag names: {}",
            rule.source.registry(),
            invalid.join(", ")
        );
        warn!("{message}");
        warnings.push(message);
    }
    rule.tags
        .select(&valid)
        .into_iter()
        .map(Target::Tag)
        .collect()
}

/// Removes exact duplicates and reports destinations written by two
/// different sources.
fn find_conflicts(desired: &mut Vec<Desired>) -> Vec<ResolveError> {
    let mut by_destination: HashMap<Reference, &Desired> = HashMap::new();
    let mut errors = Vec::new();
    for item in desired.iter() {
        match by_destination.get(&item.destination) {
            Some(first) if first.source != item.source || first.platforms != item.platforms => {
                errors.push(ResolveError::Conflict {
                    destination: item.destination.clone(),
                    first: first.rule.clone(),
                    first_source: first.source.clone(),
                    second: item.rule.clone(),
                    second_source: item.source.clone(),
                })
            }
            Some(_) => {}
            None => {
                by_destination.insert(item.destination.clone(), item);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    desired.retain(|d| seen.insert(d.destination.clone()));
    errors
}
