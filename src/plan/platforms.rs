//! Platform selection: which children of an index a rule copies, the
//! rewritten index that holds only those, and the platform of a single
//! image read from its config.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::Value;

use super::tree::{fetch_tree, ImageTree, TreeCache};
use crate::oci::{Descriptor, Digest, Manifest, Platform, Repository, Target};
use crate::registry::{RegistryClient, RegistryError};
use crate::rules::{describe_platform, PlatformSpec};

/// Largest image config read to find an image's platform. Configs are a
/// few KiB; the limit only guards against a registry serving a huge blob.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Outcome of platform selection for one source manifest.
#[derive(Debug)]
pub enum Selection {
    /// Copied as it is: an image of a wanted platform, or an index whose
    /// children all match.
    Whole,
    /// An index reduced to the matching children; the tree's root is the
    /// rewritten index, which is in the cache under its own digest.
    Rewritten {
        tree: Arc<ImageTree>,
        /// Platforms of the kept children, in index order.
        kept: Vec<String>,
        /// Number of children in the source index.
        total: usize,
    },
    /// No platform matches. The note lists what the source contains.
    Skip(String),
}

/// Applies `platforms` to the source manifest `digest`.
pub async fn select(
    client: &RegistryClient,
    repository: &Repository,
    digest: &Digest,
    platforms: &[PlatformSpec],
    cache: &TreeCache,
) -> Result<Selection, RegistryError> {
    let manifest = client
        .get_manifest(repository, &Target::Digest(digest.clone()))
        .await?;
    if !manifest.media_type.is_index() {
        return select_image(client, repository, &manifest, platforms).await;
    }
    let children = manifest.children()?;
    let kept: Vec<&Descriptor> = children
        .iter()
        .filter(|child| is_selected(child, platforms))
        .collect();
    if kept.is_empty() {
        let found: Vec<String> = children.iter().map(child_platform).collect();
        return Ok(Selection::Skip(format!(
            "no child matches platforms {}; the index has {}",
            list(platforms),
            found.join(", ")
        )));
    }
    if kept.len() == children.len() {
        return Ok(Selection::Whole);
    }
    let kept_names: Vec<String> = kept.iter().map(|c| child_platform(c)).collect();
    let tree = rewritten_tree(client, repository, &manifest, platforms, cache).await?;
    Ok(Selection::Rewritten {
        tree,
        kept: kept_names,
        total: children.len(),
    })
}

/// Builds (or takes from the cache) the tree of the rewritten index: the
/// source index holding only the children that match `platforms`.
pub async fn rewritten_tree(
    client: &RegistryClient,
    repository: &Repository,
    source: &Manifest,
    platforms: &[PlatformSpec],
    cache: &TreeCache,
) -> Result<Arc<ImageTree>, RegistryError> {
    let bytes = rewrite_index(&source.bytes, platforms).map_err(|reason| {
        RegistryError::Manifest(crate::oci::ManifestError::Unsupported(reason))
    })?;
    let digest = Digest::compute(source.digest.algorithm(), &bytes);
    if let Some(tree) = cache.tree(client.host(), &digest) {
        return Ok(tree);
    }
    let root = Manifest::new(Bytes::from(bytes), Some(source.media_type.as_str()), digest);
    let mut tree = ImageTree {
        root: root.clone(),
        children: Vec::new(),
        blobs: Vec::new(),
        foreign: Vec::new(),
    };
    for child in root.children()? {
        let child_tree = fetch_tree(client, repository, &child.digest, cache).await?;
        merge_child(&mut tree, &child_tree);
    }
    let tree = Arc::new(tree);
    cache.insert_tree(client.host(), tree.clone());
    Ok(tree)
}

/// Adds a child's manifests and blobs after those already in `tree`,
/// each manifest and blob once, children before the index that lists them.
fn merge_child(tree: &mut ImageTree, child: &ImageTree) {
    for manifest in child.children.iter().chain([&child.root]) {
        if !tree.children.iter().any(|m| m.digest == manifest.digest) {
            tree.children.push(manifest.clone());
        }
    }
    for blob in &child.blobs {
        if !tree.blobs.iter().any(|b| b.digest == blob.digest) {
            tree.blobs.push(blob.clone());
        }
    }
    tree.foreign.extend(child.foreign.iter().cloned());
}

/// Rewrites index JSON to keep only the `manifests` entries that match
/// `platforms`. Every other key keeps its value and its order, so the
/// same source index always gives the same bytes and the same digest.
pub fn rewrite_index(bytes: &[u8], platforms: &[PlatformSpec]) -> Result<Vec<u8>, String> {
    let mut document: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("index is not valid JSON: {e}"))?;
    let Some(manifests) = document.get_mut("manifests").and_then(Value::as_array_mut) else {
        return Err("index has no `manifests` list".into());
    };
    manifests.retain(|entry| {
        serde_json::from_value::<Descriptor>(entry.clone())
            .map(|child| is_selected(&child, platforms))
            .unwrap_or(false)
    });
    serde_json::to_vec(&document).map_err(|e| format!("cannot write index: {e}"))
}

fn is_selected(child: &Descriptor, platforms: &[PlatformSpec]) -> bool {
    child
        .platform
        .as_ref()
        .is_some_and(|platform| platforms.iter().any(|p| p.matches(platform)))
}

fn child_platform(child: &Descriptor) -> String {
    child
        .platform
        .as_ref()
        .map_or_else(|| "no platform".to_string(), describe_platform)
}

fn list(platforms: &[PlatformSpec]) -> String {
    let names: Vec<String> = platforms.iter().map(ToString::to_string).collect();
    names.join(", ")
}

/// Fields of an image config that name its platform.
#[derive(Deserialize)]
struct ConfigPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

async fn select_image(
    client: &RegistryClient,
    repository: &Repository,
    manifest: &Manifest,
    platforms: &[PlatformSpec],
) -> Result<Selection, RegistryError> {
    if let Some(platform) = manifest.schema1_platform() {
        return Ok(match_platform(&platform, platforms));
    }
    let Some(config) = manifest.blobs()?.into_iter().next() else {
        return Ok(Selection::Whole);
    };
    if config.size > MAX_CONFIG_BYTES {
        return Ok(Selection::Skip(format!(
            "image config {} is {} bytes, too large to read its platform",
            config.digest, config.size
        )));
    }
    let bytes: Vec<Bytes> = client
        .get_blob(repository, &config)
        .await?
        .try_collect()
        .await?;
    let parsed: Result<ConfigPlatform, _> = serde_json::from_slice(&bytes.concat());
    let platform = match parsed {
        Ok(c) => Platform {
            os: c.os,
            architecture: c.architecture,
            variant: c.variant,
        },
        Err(_) => {
            return Ok(Selection::Skip(format!(
                "image config {} is not JSON, so its platform is unknown",
                config.digest
            )))
        }
    };
    Ok(match_platform(&platform, platforms))
}

fn match_platform(platform: &Platform, platforms: &[PlatformSpec]) -> Selection {
    if platforms.iter().any(|p| p.matches(platform)) {
        Selection::Whole
    } else {
        Selection::Skip(format!(
            "image is {}, not one of platforms {}",
            describe_platform(platform),
            list(platforms)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1, "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111", "platform": {"architecture": "amd64", "os": "linux"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 2, "digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222", "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 3, "digest": "sha256:3333333333333333333333333333333333333333333333333333333333333333", "platform": {"architecture": "s390x", "os": "linux"}}
  ],
  "annotations": {"z": "<&>", "a": "1"}
}"#;

    fn specs(list: &[&str]) -> Vec<PlatformSpec> {
        list.iter()
            .map(|p| PlatformSpec::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn rewrite_keeps_matching_children_and_key_order() {
        let bytes =
            rewrite_index(INDEX.as_bytes(), &specs(&["linux/amd64", "linux/arm64/v8"])).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with(r#"{"schemaVersion":2,"mediaType":"#));
        assert!(text.contains("sha256:1111"));
        assert!(text.contains("sha256:2222"));
        assert!(!text.contains("sha256:3333"));
        assert!(text.ends_with(r#""annotations":{"z":"<&>","a":"1"}}"#));
        let child_keys =
            r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"#;
        assert!(text.contains(child_keys));
    }

    #[test]
    fn rewrite_is_deterministic() {
        let platforms = specs(&["linux/amd64"]);
        let first = rewrite_index(INDEX.as_bytes(), &platforms).unwrap();
        let second = rewrite_index(INDEX.as_bytes(), &platforms).unwrap();
        assert_eq!(first, second);
    }

    fn leaf(hex_digit: char) -> Manifest {
        let digest = format!("sha256:{}", hex_digit.to_string().repeat(64));
        Manifest::new(
            Bytes::from_static(b"{}"),
            Some(crate::oci::MediaType::OCI_MANIFEST),
            digest.parse().unwrap(),
        )
    }

    fn tree_of(root: Manifest, children: Vec<Manifest>) -> ImageTree {
        ImageTree {
            root,
            children,
            blobs: Vec::new(),
            foreign: Vec::new(),
        }
    }

    #[test]
    fn merge_child_keeps_each_manifest_once() {
        let mut merged = tree_of(leaf('0'), Vec::new());
        let first = tree_of(leaf('1'), vec![leaf('3')]);
        let second = tree_of(leaf('2'), vec![leaf('3')]);

        merge_child(&mut merged, &first);
        merge_child(&mut merged, &second);
        merge_child(&mut merged, &second);

        let digits: Vec<char> = merged
            .children
            .iter()
            .map(|m| m.digest.to_string().chars().last().unwrap())
            .collect();
        assert_eq!(digits, ['3', '1', '2']);
    }
}
