//! Diffing: HEAD every source and destination once, then turn each desired
//! copy into an operation with its blob counts.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::{stream, StreamExt};

use super::platforms::{select, Selection};
use super::prune::plan_prune;
use super::tree::{fetch_tree, TreeCache};
use super::{resolve_all, Action, BlobCounts, Desired, Operation, Plan, ResolveError, Shard};
use crate::oci::{Digest, Reference, Repository};
use crate::registry::{Access, ManifestHead, Registries, RegistryError};
use crate::rules::{PlatformSpec, Rules};

/// Knobs for planning.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Registry requests in flight at once across the run.
    pub jobs: usize,
    /// Plan only the destinations of this shard; `None` plans them all.
    pub shard: Option<Shard>,
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("{reference}: {source}")]
    Registry {
        reference: String,
        source: RegistryError,
    },
    #[error("{reference}: manifest not found")]
    SourceMissing { reference: Reference },
}

/// Resolves `rules` and compares every source with its destinations.
pub async fn build_plan(
    rules: &Rules,
    registries: &Registries,
    options: &PlanOptions,
) -> Result<Plan, Vec<PlanError>> {
    let jobs = options.jobs.max(1);
    let mut resolved = resolve_all(rules, registries, jobs)
        .await
        .map_err(|errors| errors.into_iter().map(PlanError::from).collect::<Vec<_>>())?;
    // Before any HEAD request, so a worker touches only its own shard.
    if let Some(shard) = options.shard {
        resolved
            .desired
            .retain(|item| shard.contains(&item.destination));
        resolved
            .prune
            .retain(|scope| shard.contains_repository(&scope.registry, &scope.repository));
    }
    let (desired, mut warnings) = (resolved.desired, resolved.warnings);
    let (heads, failed) = head_all(&desired, registries, jobs).await;
    let mut operations = Vec::new();
    let mut desired_items = Vec::new();
    let mut errors = Vec::new();
    // A registry that fails its HEAD requests costs only the copies that
    // touch it; the others are planned and applied as usual.
    let mut failures = Vec::new();
    for item in &desired {
        if let Some(error) = failed
            .get(&item.source)
            .or_else(|| failed.get(&item.destination))
        {
            failures.push(format!(
                "{} from {}: not planned: {error}",
                item.destination, item.source
            ));
            continue;
        }
        match heads.get(&item.source).cloned().flatten() {
            Some(source) => {
                let destination = heads.get(&item.destination).cloned().flatten();
                operations.push(operation(item, &source, destination));
                desired_items.push(item);
            }
            // A tag listed a moment ago and gone now was deleted meanwhile.
            None if item.source.tag().is_some() && !is_exact(rules, &item.rule) => {
                warnings.push(format!(
                    "{}: listed but no longer found, skipped",
                    item.source
                ));
            }
            None => errors.push(PlanError::SourceMissing {
                reference: item.source.clone(),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let cache = Arc::new(TreeCache::default());
    select_platforms(&mut operations, &desired_items, registries, &cache, jobs).await?;
    for (op, item) in operations.iter_mut().zip(&desired_items) {
        decide(op, item.overwrite);
    }
    // Deletions are planned only when every copy was: a repository whose
    // copies failed to plan could otherwise lose tags they would produce.
    if failures.is_empty() {
        let deletions =
            plan_prune(&resolved.prune, &desired, &operations, registries, jobs).await?;
        operations.extend(deletions);
    } else if !resolved.prune.is_empty() {
        warnings.push("prune skipped: some copies could not be planned".to_string());
    }
    warnings.extend(fill_trees(&mut operations, registries, &cache, jobs).await?);
    check_blobs(&operations, registries, &cache, jobs).await?;
    let mut plan = Plan::new(operations, warnings, cache);
    plan.failures = failures;
    count_blobs(&mut plan);
    Ok(plan)
}

/// Whether the rule named `rule` names one exact tag, whose absence is an
/// error rather than a race with a deletion.
fn is_exact(rules: &Rules, rule: &str) -> bool {
    rules
        .rules
        .iter()
        .any(|r| r.name == rule && matches!(r.source, crate::rules::Source::Image { .. }))
}

fn operation(
    item: &Desired,
    source: &ManifestHead,
    destination: Option<ManifestHead>,
) -> Operation {
    let action = match &destination {
        None => Action::Create,
        Some(dest) if dest.digest == source.digest => Action::Unchanged,
        Some(_) => Action::Update,
    };
    let platforms = item.platforms.iter().map(ToString::to_string).collect();
    let kind = if source.media_type.is_index() {
        "index"
    } else {
        "image"
    };
    Operation {
        action,
        rule: item.rule.clone(),
        source: item.source.clone(),
        destination: item.destination.clone(),
        source_digest: Some(source.digest.clone()),
        destination_digest: destination.map(|d| d.digest),
        kind: Some(kind.to_string()),
        blobs: BlobCounts::default(),
        note: None,
        rewritten_digest: None,
        platforms,
    }
}

/// Sets the action from the digest the destination would hold: the
/// rewritten index when platforms were selected, else the source's. With
/// `overwrite: false`, a tag holding another digest is skipped.
fn decide(op: &mut Operation, overwrite: bool) {
    if op.action == Action::Skip {
        return;
    }
    let Some(content) = op.content_digest().cloned() else {
        return;
    };
    op.action = match &op.destination_digest {
        None => Action::Create,
        Some(current) if *current == content => Action::Unchanged,
        Some(current) if !overwrite => {
            op.note = Some(format!(
                "destination holds {current}, source is {content}; overwrite: false keeps the destination"
            ));
            Action::Skip
        }
        Some(_) => Action::Update,
    };
}

/// Applies each rule's `platforms:` to its operations: a partly matching
/// index becomes a rewritten index with a digest of its own, and a source
/// with no matching platform is skipped with a note.
async fn select_platforms(
    operations: &mut [Operation],
    desired_items: &[&Desired],
    registries: &Registries,
    cache: &TreeCache,
    jobs: usize,
) -> Result<(), Vec<PlanError>> {
    // One selection per source and platform list, whatever the number of
    // destinations.
    let mut sources: BTreeMap<(Reference, String), (Digest, Vec<PlatformSpec>)> = BTreeMap::new();
    for (op, item) in operations.iter().zip(desired_items) {
        if let (false, Some(digest)) = (item.platforms.is_empty(), &op.source_digest) {
            sources
                .entry((op.source.clone(), op.platforms.join(",")))
                .or_insert_with(|| (digest.clone(), item.platforms.clone()));
        }
    }
    let results: Vec<_> = stream::iter(sources)
        .map(|(key, (digest, platforms))| async move {
            let source = &key.0;
            let selection = async {
                let client = registries.client(&source.registry)?;
                select(&client, &source.repository, &digest, &platforms, cache).await
            }
            .await;
            match selection {
                Ok(selection) => Ok((key, selection)),
                Err(e) => Err(PlanError::Registry {
                    reference: format!("{}@{digest}", key.0.repository_name()),
                    source: e,
                }),
            }
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    let selections: HashMap<_, _> = collect_results(results.into_iter())?.into_iter().collect();
    for op in operations.iter_mut() {
        let key = (op.source.clone(), op.platforms.join(","));
        match selections.get(&key) {
            None | Some(Selection::Whole) => {}
            Some(Selection::Skip(note)) => {
                op.action = Action::Skip;
                op.note = Some(note.clone());
            }
            Some(Selection::Rewritten { tree, kept, total }) => {
                op.rewritten_digest = Some(tree.root.digest.clone());
                op.note = Some(format!(
                    "index rewritten to {} of {total} platforms ({}), so its digest differs from the source",
                    kept.len(),
                    kept.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// HEADs every distinct reference once: a source fanned out to several
/// destinations costs one request.
/// HEADs every source and destination once. Returns the heads, and the
/// error of each reference whose request failed.
async fn head_all(
    desired: &[Desired],
    registries: &Registries,
    jobs: usize,
) -> (
    HashMap<Reference, Option<ManifestHead>>,
    HashMap<Reference, RegistryError>,
) {
    // Destinations ask for push access from the first request, so a token
    // server hands out one token per destination repository, not two.
    let mut references = BTreeMap::new();
    for item in desired {
        references
            .entry(item.source.clone())
            .or_insert(Access::Pull);
        references.insert(item.destination.clone(), Access::Push);
    }
    let results: Vec<_> = stream::iter(references)
        .map(|(reference, access)| async move {
            let client = registries.client(&reference.registry);
            let head = match client {
                Ok(client) => {
                    client
                        .head_manifest_as(&reference.repository, &reference.target, access)
                        .await
                }
                Err(e) => Err(e),
            };
            (reference, head)
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    let mut heads = HashMap::new();
    let mut failed = HashMap::new();
    for (reference, head) in results {
        match head {
            Ok(head) => {
                heads.insert(reference, head);
            }
            Err(error) => {
                failed.insert(reference, error);
            }
        }
    }
    (heads, failed)
}

/// Fetches the content tree of every changed operation's source.
async fn fill_trees(
    operations: &mut [Operation],
    registries: &Registries,
    cache: &TreeCache,
    jobs: usize,
) -> Result<Vec<String>, Vec<PlanError>> {
    let mut wanted: BTreeSet<(String, Repository, Digest)> = BTreeSet::new();
    for op in operations.iter().filter(|op| op.action.is_change()) {
        if let Some(digest) = op.content_digest() {
            wanted.insert((
                op.source.registry.clone(),
                op.source.repository.clone(),
                digest.clone(),
            ));
        }
    }
    let results: Vec<_> = stream::iter(wanted)
        .map(|(registry, repository, digest)| async move {
            let tree = async {
                fetch_tree(&*registries.client(&registry)?, &repository, &digest, cache).await
            }
            .await;
            match tree {
                Ok(_) => Ok(None),
                // Content this tool cannot copy, such as a manifest of an
                // unknown media type or an index nested too deep, is
                // skipped with a note. The rest of the plan goes on.
                Err(RegistryError::Manifest(error)) => {
                    Ok(Some(((registry, repository, digest), error.to_string())))
                }
                Err(source) => Err(PlanError::Registry {
                    reference: format!("{registry}/{repository}@{digest}"),
                    source,
                }),
            }
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    let uncopyable: HashMap<(String, Repository, Digest), String> =
        collect_results(results.into_iter())?
            .into_iter()
            .flatten()
            .collect();
    let mut warnings = Vec::new();
    for op in operations.iter_mut().filter(|op| op.action.is_change()) {
        let Some(digest) = op.content_digest().cloned() else {
            continue;
        };
        let key = (
            op.source.registry.clone(),
            op.source.repository.clone(),
            digest,
        );
        if let Some(reason) = uncopyable.get(&key) {
            warnings.push(format!(
                "{} from {}: cannot be copied: {reason}",
                op.destination, op.source
            ));
            op.action = Action::Skip;
            op.note = Some(format!("cannot be copied: {reason}"));
        }
    }
    Ok(warnings)
}

/// HEADs each blob of each changed operation at its destination repository.
async fn check_blobs(
    operations: &[Operation],
    registries: &Registries,
    cache: &TreeCache,
    jobs: usize,
) -> Result<(), Vec<PlanError>> {
    let mut wanted: HashSet<(String, Repository, Digest)> = HashSet::new();
    for op in operations.iter().filter(|op| op.action.is_change()) {
        let Some(tree) = op
            .content_digest()
            .and_then(|d| cache.tree(&op.source.registry, d))
        else {
            continue;
        };
        for blob in &tree.blobs {
            wanted.insert((
                op.destination.registry.clone(),
                op.destination.repository.clone(),
                blob.digest.clone(),
            ));
        }
    }
    let results: Vec<_> = stream::iter(wanted)
        .map(|(registry, repository, digest)| async move {
            let present = async {
                registries
                    .client(&registry)?
                    .blob_exists_as(&repository, &digest, Access::Push)
                    .await
            }
            .await;
            match present {
                Ok(present) => {
                    cache.set_blob_present(&registry, &repository, &digest, present);
                    Ok(())
                }
                Err(source) => Err(PlanError::Registry {
                    reference: format!("{registry}/{repository}@{digest}"),
                    source,
                }),
            }
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    collect_results(results.into_iter()).map(|_| ())
}

/// Counts blobs to copy, mount and keep, in plan order. A blob goes to each
/// destination registry once; later repositories of that registry mount it.
fn count_blobs(plan: &mut Plan) {
    let mut in_registry: HashSet<(String, Digest)> = HashSet::new();
    for op in plan.operations.iter().filter(|op| op.action.is_change()) {
        let Some(tree) = op
            .content_digest()
            .and_then(|d| plan.cache.tree(&op.source.registry, d))
        else {
            continue;
        };
        for blob in &tree.blobs {
            let dest = &op.destination;
            if plan
                .cache
                .blob_present(&dest.registry, &dest.repository, &blob.digest)
                == Some(true)
            {
                in_registry.insert((dest.registry.clone(), blob.digest.clone()));
            }
        }
    }
    let cache = plan.cache.clone();
    let mut in_repository: HashSet<(String, Repository, Digest)> = HashSet::new();
    for op in plan
        .operations
        .iter_mut()
        .filter(|op| op.action.is_change())
    {
        let Some(tree) = op
            .content_digest()
            .and_then(|d| cache.tree(&op.source.registry, d))
        else {
            continue;
        };
        let dest = &op.destination;
        let mut counts = BlobCounts::default();
        for blob in &tree.blobs {
            let key = (dest.registry.clone(), blob.digest.clone());
            let planned = !in_repository.insert((
                dest.registry.clone(),
                dest.repository.clone(),
                blob.digest.clone(),
            ));
            // A blob an earlier operation brings into this repository is
            // there by the time this one needs it.
            if planned
                || cache.blob_present(&dest.registry, &dest.repository, &blob.digest) == Some(true)
            {
                counts.present += 1;
            } else if in_registry.contains(&key) {
                counts.mount += 1;
            } else {
                counts.copy += 1;
                counts.bytes += blob.size;
                in_registry.insert(key);
            }
        }
        op.kind = Some(tree.kind().to_string());
        op.blobs = counts;
    }
}

pub(super) fn collect_results<T>(
    results: impl Iterator<Item = Result<T, PlanError>>,
) -> Result<Vec<T>, Vec<PlanError>> {
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(value) => values.push(value),
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}
