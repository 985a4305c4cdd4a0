//! Prune planning: destination tags that no rule produces become delete
//! operations, unless protected or unless deleting them would also remove
//! a tag that is kept.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::{stream, StreamExt};

use super::diff::{collect_results, PlanError};
use super::resolve::PruneScope;
use super::{Action, BlobCounts, Desired, Operation};
use crate::oci::{is_valid_tag, Digest, Reference, Target};
use crate::registry::{Access, Registries};

/// Plans the deletions of every prune scope, in scope order and tag order
/// within a scope.
pub async fn plan_prune(
    scopes: &[PruneScope],
    desired: &[Desired],
    copies: &[Operation],
    registries: &Registries,
    jobs: usize,
) -> Result<Vec<Operation>, Vec<PlanError>> {
    // Digests the run leaves tagged in each repository. Deleting one of
    // them would untag what the same run pushes.
    let mut pushed: HashMap<(String, String), Vec<(String, Digest)>> = HashMap::new();
    for op in copies {
        let stays = matches!(
            op.action,
            Action::Create | Action::Update | Action::Unchanged
        );
        let (Some(tag), Some(digest)) = (op.destination.tag(), op.content_digest()) else {
            continue;
        };
        if stays {
            pushed
                .entry((
                    op.destination.registry.clone(),
                    op.destination.repository.to_string(),
                ))
                .or_default()
                .push((tag.to_string(), digest.clone()));
        }
    }
    let produced: HashSet<(String, String, String)> = desired
        .iter()
        .filter_map(|d| {
            let tag = d.destination.tag()?;
            Some((
                d.destination.registry.clone(),
                d.destination.repository.to_string(),
                tag.to_string(),
            ))
        })
        .collect();
    let results: Vec<_> = stream::iter(scopes)
        .map(|scope| {
            let produced = &produced;
            let key = (scope.registry.clone(), scope.repository.to_string());
            let pushed = pushed.get(&key).map_or(&[][..], Vec::as_slice);
            async move { prune_scope(scope, produced, pushed, registries, jobs).await }
        })
        .buffered(jobs.max(1))
        .collect()
        .await;
    let lists = collect_results(results.into_iter())?;
    Ok(lists.into_iter().flatten().collect())
}

async fn prune_scope(
    scope: &PruneScope,
    produced: &HashSet<(String, String, String)>,
    pushed: &[(String, Digest)],
    registries: &Registries,
    jobs: usize,
) -> Result<Vec<Operation>, PlanError> {
    let repository_name = format!("{}/{}", scope.registry, scope.repository);
    let registry_error = |source| PlanError::Registry {
        reference: repository_name.clone(),
        source,
    };
    let client = registries.client(&scope.registry).map_err(registry_error)?;
    let tags = match client.tags_as(&scope.repository, Access::Push).await {
        Ok(tags) => tags,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(registry_error(e)),
    };
    let is_produced = |tag: &str| {
        produced.contains(&(
            scope.registry.clone(),
            scope.repository.to_string(),
            tag.to_string(),
        ))
    };
    let candidates: HashSet<&String> = tags
        .iter()
        .filter(|t| is_valid_tag(t) && !is_produced(t) && !scope.protect.is_protected(t))
        .collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let digests = head_tags(&client, scope, &tags, jobs).await?;
    // Deleting is by digest: a digest that a kept tag points at stays.
    let mut kept: BTreeMap<&Digest, &str> = BTreeMap::new();
    for (tag, digest) in &digests {
        if !candidates.contains(tag) {
            kept.entry(digest).or_insert(tag.as_str());
        }
    }
    for (tag, digest) in pushed {
        kept.entry(digest).or_insert(tag.as_str());
    }
    let mut operations = Vec::new();
    for (tag, digest) in &digests {
        if candidates.contains(tag) {
            operations.push(deletion(scope, tag, digest, kept.get(digest).copied()));
        }
    }
    Ok(operations)
}

/// HEADs every tag of the scope's repository, in tag order. A tag deleted
/// meanwhile is left out.
async fn head_tags(
    client: &crate::registry::RegistryClient,
    scope: &PruneScope,
    tags: &[String],
    jobs: usize,
) -> Result<Vec<(String, Digest)>, PlanError> {
    let mut sorted: Vec<&String> = tags.iter().filter(|t| is_valid_tag(t)).collect();
    sorted.sort();
    let heads: Vec<_> = stream::iter(sorted)
        .map(|tag| async move {
            let head = client
                .head_manifest_as(&scope.repository, &Target::Tag(tag.clone()), Access::Push)
                .await;
            (tag, head)
        })
        .buffered(jobs.max(1))
        .collect()
        .await;
    let mut digests = Vec::new();
    for (tag, head) in heads {
        match head {
            Ok(Some(head)) => digests.push((tag.clone(), head.digest)),
            Ok(None) => {}
            Err(source) => {
                return Err(PlanError::Registry {
                    reference: format!("{}/{}:{tag}", scope.registry, scope.repository),
                    source,
                })
            }
        }
    }
    Ok(digests)
}

fn deletion(scope: &PruneScope, tag: &str, digest: &Digest, kept_tag: Option<&str>) -> Operation {
    let reference = Reference::new(
        &scope.registry,
        scope.repository.clone(),
        Target::Tag(tag.to_string()),
    );
    let (action, note) = match kept_tag {
        Some(kept) => (
            Action::Skip,
            Some(format!("not deletable: registries delete by digest, and {} is also tagged {kept}, which is kept", digest.short())),
        ),
        None => (Action::Delete, Some("not produced by any rule".to_string())),
    };
    Operation {
        action,
        rule: scope.rule.clone(),
        // A deletion has no source, so the destination is repeated there.
        source: reference.clone(),
        destination: reference,
        source_digest: None,
        destination_digest: Some(digest.clone()),
        kind: None,
        blobs: BlobCounts::default(),
        note,
        rewritten_digest: None,
        platforms: Vec::new(),
    }
}
