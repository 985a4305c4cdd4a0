//! Real container images built from files, and a blocking client that pushes
//! them to (and reads them back from) a registry.
//!
//! Owns: [`Blob`], layer builders ([`layer_from_files`],
//! [`docker_layer_from_files`], [`random_layer`]), [`Image`] and [`Index`]
//! with their builders ([`oci_image`], [`docker_image`], [`oci_index`],
//! [`docker_list`]), the samples ([`sample_image`], [`sample_index`]) and
//! [`Pusher`].
//!
//! Determinism: the same inputs give the same bytes and digests, in every
//! build. Tar entries have mtime 0, uid/gid 0, empty user/group names and
//! fixed modes (0644 files, 0755 directories); gzip has no name and mtime 0;
//! JSON is compact, with a fixed key order (it does not depend on
//! serde_json's `preserve_order` feature).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use flate2::Compression;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, CONTENT_TYPE, LINK, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::certs::CertPair;
use crate::registry::{off_runtime, Registry};

/// `application/vnd.oci.image.manifest.v1+json`
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `application/vnd.oci.image.index.v1+json`
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// `application/vnd.oci.image.config.v1+json`
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// `application/vnd.oci.image.layer.v1.tar+gzip`
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// `application/vnd.docker.distribution.manifest.v2+json`
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// `application/vnd.docker.distribution.manifest.list.v2+json`
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// `application/vnd.docker.container.image.v1+json`
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// `application/vnd.docker.image.rootfs.diff.tar.gzip`
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The `Accept` value sent on every manifest HEAD and GET: all four
/// manifest types, so Distribution neither hides OCI content nor downgrades
/// schema2 to schema1 nor picks a list's amd64 child.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Some content-addressed bytes: a layer, a config, or anything else.
#[derive(Clone, PartialEq, Eq)]
pub struct Blob {
    /// Media type used in descriptors that point at this blob.
    pub media_type: String,
    /// `sha256:<hex>` from [`Blob::new`]; may be set by hand (e.g. a
    /// `sha512:` digest, or a deliberately wrong one) when built literally.
    pub digest: String,
    /// The content.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("media_type", &self.media_type)
            .field("digest", &self.digest)
            .field("size", &self.bytes.len())
            .finish()
    }
}

impl Blob {
    /// A blob with its sha256 digest computed from `bytes`.
    pub fn new(media_type: impl Into<String>, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.into(),
            digest: sha256_digest(&bytes),
            bytes,
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The uncompressed digest (an image config's `diff_id`): sha256 of the
    /// gunzipped bytes when they are gzip (magic `1f 8b` and a clean
    /// decompression), else sha256 of the bytes as they are.
    pub fn diff_id(&self) -> String {
        if self.bytes.starts_with(&[0x1f, 0x8b]) {
            let mut hasher = Sha256::new();
            let mut decoder = flate2::read::GzDecoder::new(&self.bytes[..]);
            let mut buf = vec![0u8; 1 << 16];
            let ok = loop {
                match decoder.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => hasher.update(&buf[..n]),
                    Err(_) => break false,
                }
            };
            if ok {
                return format!("sha256:{}", hex::encode(hasher.finalize()));
            }
        }
        sha256_digest(&self.bytes)
    }
}

fn tar_header(size: u64, dir: bool) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    header.set_mode(if dir { 0o755 } else { 0o644 });
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    let _ = header.set_username("");
    let _ = header.set_groupname("");
    header
}

/// Uncompressed tar of `files`: first every parent directory (sorted, once),
/// then the files in the order given. Leading `/` and `./` are stripped.
pub fn tar_from_files(files: &[(&str, &[u8])]) -> Vec<u8> {
    let clean = |p: &str| -> String {
        let mut p = p;
        loop {
            if let Some(rest) = p.strip_prefix("./") {
                p = rest;
            } else if let Some(rest) = p.strip_prefix('/') {
                p = rest;
            } else {
                break;
            }
        }
        assert!(!p.is_empty(), "empty file path in layer");
        p.to_string()
    };
    let mut dirs = BTreeSet::new();
    for (path, _) in files {
        let path = clean(path);
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            acc.push_str(part);
            acc.push('/');
            dirs.insert(acc.clone());
        }
    }
    let mut builder = tar::Builder::new(Vec::new());
    for dir in &dirs {
        let mut header = tar_header(0, true);
        builder
            .append_data(&mut header, dir, std::io::empty())
            .expect("tar directory entry");
    }
    for (path, data) in files {
        let path = clean(path);
        let mut header = tar_header(data.len() as u64, false);
        builder
            .append_data(&mut header, &path, *data)
            .expect("tar file entry");
    }
    builder.into_inner().expect("finish tar")
}

/// Gzip without file name and with mtime 0, at `level` (0-9).
pub fn gzip(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(bytes.len() / 2 + 64),
        Compression::new(level),
    );
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip finish")
}

/// Gzip framing around deflate *stored* blocks (no compression): header
/// with mtime 0, no name, OS 255; blocks of at most 65535 bytes; CRC32 and
/// size trailer. Byte-identical to nothing in particular, but deterministic
/// and much faster than running a compressor over incompressible data.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    const MAX: usize = 65535;
    let blocks = data.len().div_ceil(MAX).max(1);
    let mut out = Vec::with_capacity(data.len() + blocks * 5 + 18);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    let mut chunks = data.chunks(MAX).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = chunk.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// A real tar+gzip layer holding `files` (see [`tar_from_files`]), media
/// type `application/vnd.oci.image.layer.v1.tar+gzip`.
pub fn layer_from_files(files: &[(&str, &[u8])]) -> Blob {
    Blob::new(OCI_LAYER_GZIP, gzip(&tar_from_files(files), 6))
}

/// Same bytes as [`layer_from_files`], media type
/// `application/vnd.docker.image.rootfs.diff.tar.gzip`.
pub fn docker_layer_from_files(files: &[(&str, &[u8])]) -> Blob {
    Blob::new(DOCKER_LAYER_GZIP, gzip(&tar_from_files(files), 6))
}

/// `len` pseudo-random bytes from a seeded splitmix64 generator: the same
/// `seed` gives the same bytes, different seeds give unrelated bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    fill_random(&mut out, len, seed);
    out
}

fn fill_random(out: &mut Vec<u8>, len: usize, seed: u64) {
    let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut remaining = len;
    while remaining > 0 {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let bytes = z.to_le_bytes();
        let n = remaining.min(8);
        out.extend_from_slice(&bytes[..n]);
        remaining -= n;
    }
}

/// A real but incompressible tar+gzip layer (OCI media type) holding one
/// file `random/<seed>.bin` of `size` seeded pseudo-random bytes (see
/// [`random_bytes`]). The gzip holds stored (uncompressed) deflate blocks,
/// so building even hundreds of MiB is quick;
/// the blob is a little larger than `size` (tar header and padding, gzip
/// framing: at most 2.6 KiB plus 5 bytes per 64 KiB).
pub fn random_layer(size: usize, seed: u64) -> Blob {
    let name = format!("random/{seed}.bin");
    let mut tar = Vec::with_capacity(size + 4096);
    {
        let mut dir = tar_header(0, true);
        dir.set_path("random/").expect("tar path");
        dir.set_cksum();
        tar.extend_from_slice(dir.as_bytes());
        let mut file = tar_header(size as u64, false);
        file.set_path(&name).expect("tar path");
        file.set_cksum();
        tar.extend_from_slice(file.as_bytes());
    }
    fill_random(&mut tar, size, seed);
    let pad = (512 - size % 512) % 512;
    tar.resize(tar.len() + pad + 1024, 0);
    let gz = gzip_stored(&tar);
    drop(tar);
    Blob::new(OCI_LAYER_GZIP, gz)
}

/// An image's target platform.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, `v7`, ... if any.
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/<architecture>` without a variant.
    pub fn linux(architecture: &str) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// `linux/<architecture>/<variant>`.
    pub fn linux_variant(architecture: &str, variant: &str) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: Some(variant.into()),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

// ---- JSON shapes (field order is the serialized key order) ----

#[derive(Serialize)]
struct PlatformJson<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

#[derive(Serialize)]
struct DescriptorJson<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<PlatformJson<'a>>,
}

#[derive(Serialize)]
struct ManifestJson<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: DescriptorJson<'a>,
    layers: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
struct IndexJson<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
struct ConfigJson<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    config: RunConfigJson,
    rootfs: RootfsJson,
    history: Vec<HistoryJson>,
}

#[derive(Serialize)]
struct RunConfigJson {
    #[serde(rename = "Env")]
    env: Vec<String>,
    #[serde(rename = "Cmd")]
    cmd: Vec<String>,
}

#[derive(Serialize)]
struct RootfsJson {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct HistoryJson {
    created: &'static str,
    created_by: String,
}

fn descriptor(blob: &Blob) -> DescriptorJson<'_> {
    DescriptorJson {
        media_type: &blob.media_type,
        digest: &blob.digest,
        size: blob.size(),
        platform: None,
    }
}

/// A single-platform image: config and layers plus the manifest bytes that
/// reference them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The config blob.
    pub config: Blob,
    /// Layers in manifest order.
    pub layers: Vec<Blob>,
    /// The manifest's media type (its `Content-Type` when pushed).
    pub media_type: String,
    /// Exact manifest bytes.
    pub manifest: Vec<u8>,
    /// `sha256:` of `manifest`.
    pub digest: String,
}

impl Image {
    /// An image from hand-made parts (e.g. a pretty-printed manifest or one
    /// with foreign layers); `digest` is computed from `manifest`.
    pub fn new(config: Blob, layers: Vec<Blob>, media_type: &str, manifest: Vec<u8>) -> Image {
        Image {
            digest: sha256_digest(&manifest),
            config,
            layers,
            media_type: media_type.into(),
            manifest,
        }
    }

    /// Config followed by layers: every blob the manifest references.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    /// The platform read from the config's `os`/`architecture`/`variant`,
    /// if the config is JSON with those fields.
    pub fn platform(&self) -> Option<Platform> {
        let v: serde_json::Value = serde_json::from_slice(&self.config.bytes).ok()?;
        Some(Platform {
            os: v.get("os")?.as_str()?.to_string(),
            architecture: v.get("architecture")?.as_str()?.to_string(),
            variant: v
                .get("variant")
                .and_then(|x| x.as_str())
                .map(str::to_string),
        })
    }

    /// Size of the manifest in bytes.
    pub fn manifest_size(&self) -> u64 {
        self.manifest.len() as u64
    }
}

fn config_blob(layers: &[Blob], platform: &Platform, media_type: &str) -> Blob {
    let config = ConfigJson {
        created: "1970-01-01T00:00:00Z",
        architecture: &platform.architecture,
        os: &platform.os,
        variant: platform.variant.as_deref(),
        config: RunConfigJson {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: vec!["/bin/sh".into()],
        },
        rootfs: RootfsJson {
            kind: "layers",
            diff_ids: layers.iter().map(Blob::diff_id).collect(),
        },
        history: layers
            .iter()
            .enumerate()
            .map(|(i, l)| HistoryJson {
                created: "1970-01-01T00:00:00Z",
                created_by: format!("testkit layer {i} {}", l.digest),
            })
            .collect(),
    };
    Blob::new(
        media_type,
        serde_json::to_vec(&config).expect("config json"),
    )
}

fn build_image(
    layers: Vec<Blob>,
    platform: &Platform,
    manifest_type: &str,
    config_type: &str,
) -> Image {
    let config = config_blob(&layers, platform, config_type);
    let manifest = ManifestJson {
        schema_version: 2,
        media_type: manifest_type,
        config: descriptor(&config),
        layers: layers.iter().map(descriptor).collect(),
    };
    let manifest = serde_json::to_vec(&manifest).expect("manifest json");
    Image::new(config, layers, manifest_type, manifest)
}

/// An OCI image (`application/vnd.oci.image.manifest.v1+json`, config
/// `application/vnd.oci.image.config.v1+json`) with the real `diff_ids` of
/// `layers` (see [`Blob::diff_id`]) and the platform's os, architecture and
/// variant. Layers keep their own media types.
pub fn oci_image(layers: Vec<Blob>, platform: Platform) -> Image {
    build_image(layers, &platform, OCI_MANIFEST, OCI_CONFIG)
}

/// A Docker v2 schema2 image (`application/vnd.docker.distribution.manifest.v2+json`,
/// config `application/vnd.docker.container.image.v1+json`). Layers keep
/// their own media types (use [`docker_layer_from_files`] for Docker ones).
pub fn docker_image(layers: Vec<Blob>, platform: Platform) -> Image {
    build_image(layers, &platform, DOCKER_MANIFEST, DOCKER_CONFIG)
}

/// A multi-platform index or manifest list and its child images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// `application/vnd.oci.image.index.v1+json` or the Docker list type.
    pub media_type: String,
    /// Exact index bytes.
    pub manifest: Vec<u8>,
    /// `sha256:` of `manifest`.
    pub digest: String,
    /// The images the index lists, in order.
    pub children: Vec<Image>,
}

impl Index {
    /// An index from hand-made parts; `digest` is computed from `manifest`.
    pub fn new(media_type: &str, manifest: Vec<u8>, children: Vec<Image>) -> Index {
        Index {
            media_type: media_type.into(),
            digest: sha256_digest(&manifest),
            manifest,
            children,
        }
    }

    /// Every distinct blob of every child, first occurrence order.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut seen = HashSet::new();
        self.children
            .iter()
            .flat_map(|c| c.blobs())
            .filter(|b| seen.insert(b.digest.clone()))
            .collect()
    }
}

fn build_index(children: Vec<Image>, media_type: &str) -> Index {
    let platforms: Vec<Option<Platform>> = children.iter().map(Image::platform).collect();
    let index = IndexJson {
        schema_version: 2,
        media_type,
        manifests: children
            .iter()
            .zip(&platforms)
            .map(|(child, platform)| DescriptorJson {
                media_type: &child.media_type,
                digest: &child.digest,
                size: child.manifest_size(),
                platform: platform.as_ref().map(|p| PlatformJson {
                    architecture: &p.architecture,
                    os: &p.os,
                    variant: p.variant.as_deref(),
                }),
            })
            .collect(),
    };
    let manifest = serde_json::to_vec(&index).expect("index json");
    Index::new(media_type, manifest, children)
}

/// An OCI index (`application/vnd.oci.image.index.v1+json`); each child's
/// descriptor carries its media type, digest, size and the platform read
/// from its config.
pub fn oci_index(children: Vec<Image>) -> Index {
    build_index(children, OCI_INDEX)
}

/// A Docker manifest list (`application/vnd.docker.distribution.manifest.list.v2+json`),
/// descriptors as in [`oci_index`]. Give it [`docker_image`] children.
pub fn docker_list(children: Vec<Image>) -> Index {
    build_index(children, DOCKER_LIST)
}

fn sample_layers(name: &str, tag: &str) -> Vec<Blob> {
    let hello = format!("hello from {name} ({tag})\n");
    let meta = format!("name={name}\nplatform={tag}\n");
    let data = format!("{name} data for {tag}\n").repeat(16);
    vec![
        layer_from_files(&[
            ("etc/testkit/name", name.as_bytes()),
            ("hello.txt", hello.as_bytes()),
        ]),
        layer_from_files(&[
            ("app/meta.txt", meta.as_bytes()),
            ("app/data/data.txt", data.as_bytes()),
        ]),
    ]
}

/// An OCI linux/amd64 image with two small real layers whose files contain
/// `name`: different names give different digests, the same name the same.
pub fn sample_image(name: &str) -> Image {
    oci_image(sample_layers(name, "linux/amd64"), Platform::linux("amd64"))
}

/// An OCI index of two children, linux/amd64 and linux/arm64/v8, each with
/// two small real layers whose files contain `name` and the platform (the
/// amd64 child is not [`sample_image`]`(name)`).
pub fn sample_index(name: &str) -> Index {
    let platforms = [
        Platform::linux("amd64"),
        Platform::linux_variant("arm64", "v8"),
    ];
    oci_index(
        platforms
            .into_iter()
            .map(|p| {
                let layers = sample_layers(name, &format!("index {p}"));
                oci_image(layers, p)
            })
            .collect(),
    )
}

/// An HTTP answer other than the one expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    /// What was asked, e.g. `PUT /v2/foo/manifests/latest`.
    pub request: String,
    /// Status code (0 if the request failed without an answer).
    pub status: u16,
    /// Response body as text (or the transport error).
    pub body: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {}", self.request, self.status, self.body)
    }
}

impl std::error::Error for HttpError {}

/// A blocking registry client for setting up and checking test state.
///
/// Sends Basic credentials on every request when given; against a
/// token-auth registry it answers a `Bearer` challenge by fetching a token
/// from the realm (with the Basic credentials, if any), caches it per
/// repository, and replays the request once. Every method panics on an
/// unexpected answer (with the request, status and body), except the
/// `try_` ones. Safe to share between threads; usable inside a tokio runtime
/// too (requests then run on a helper thread).
pub struct Pusher {
    base_url: String,
    basic: Option<(String, String)>,
    ca: Option<Vec<u8>>,
    identity: Option<Vec<u8>>,
    client: OnceLock<Client>,
    tokens: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("base_url", &self.base_url)
            .finish()
    }
}

fn scope_key(repo: Option<&str>) -> String {
    repo.unwrap_or("").to_string()
}

/// Parse `Bearer realm="..",service="..",scope=".."` into its parameters.
fn parse_bearer(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.trim();
    let (scheme, params) = rest.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut out = HashMap::new();
    let mut chars = params.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() || chars.next().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    Some(out)
}

/// The `rel="next"` target of a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.replace(' ', "").contains("rel=\"next\"") {
            return None;
        }
        let target = target.trim();
        Some(target.strip_prefix('<')?.strip_suffix('>')?.to_string())
    })
}

impl Pusher {
    /// A client for `registry` (its base URL). Add `.ca(..)` for a TLS
    /// registry: the built-in roots do not know the test CA.
    pub fn new(registry: &Registry) -> Pusher {
        Pusher::for_url(&registry.base_url())
    }

    /// A client for any base URL, e.g. a fault proxy in front of a registry
    /// (`http://127.0.0.1:PORT`, no trailing slash needed).
    pub fn for_url(base_url: &str) -> Pusher {
        Pusher {
            base_url: base_url.trim_end_matches('/').to_string(),
            basic: None,
            ca: None,
            identity: None,
            client: OnceLock::new(),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Send these Basic credentials (to the registry and to a token realm).
    pub fn basic_auth(mut self, user: &str, pass: &str) -> Pusher {
        self.basic = Some((user.into(), pass.into()));
        self.client = OnceLock::new();
        self
    }

    /// Trust the CA certificate in this PEM file.
    pub fn ca(mut self, ca_pem: &Path) -> Pusher {
        self.ca = Some(
            std::fs::read(ca_pem).unwrap_or_else(|e| panic!("read CA {}: {e}", ca_pem.display())),
        );
        self.client = OnceLock::new();
        self
    }

    /// Present this client certificate (mutual TLS).
    pub fn client_cert(mut self, pair: &CertPair) -> Pusher {
        self.identity = Some(pair.identity_pem());
        self.client = OnceLock::new();
        self
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The underlying blocking client (CA and client certificate applied,
    /// no credentials). Must not be used directly inside a tokio runtime.
    pub fn client(&self) -> &Client {
        self.client.get_or_init(|| {
            let mut builder = Client::builder()
                .user_agent("testkit-pusher")
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(300));
            if let Some(ca) = &self.ca {
                let cert = reqwest::Certificate::from_pem(ca).expect("parse CA PEM");
                builder = builder.add_root_certificate(cert);
            }
            if let Some(identity) = &self.identity {
                let identity =
                    reqwest::Identity::from_pem(identity).expect("parse client identity");
                builder = builder.identity(identity);
            }
            builder.build().expect("build HTTP client")
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    fn apply_auth(&self, req: RequestBuilder, repo: Option<&str>) -> RequestBuilder {
        if let Some(token) = self.tokens.lock().unwrap().get(&scope_key(repo)) {
            return req.bearer_auth(token);
        }
        match &self.basic {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    fn fetch_token(&self, challenge: &HashMap<String, String>) -> Result<String, HttpError> {
        let realm = challenge.get("realm").ok_or_else(|| HttpError {
            request: "bearer challenge".into(),
            status: 401,
            body: "no realm in challenge".into(),
        })?;
        let mut url = Url::parse(realm).map_err(|e| HttpError {
            request: format!("GET {realm}"),
            status: 0,
            body: e.to_string(),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.get("service") {
                q.append_pair("service", service);
            }
            if let Some(scope) = challenge.get("scope") {
                for s in scope.split(' ').filter(|s| !s.is_empty()) {
                    q.append_pair("scope", s);
                }
            }
        }
        let mut req = self.client().get(url.clone());
        if let Some((u, p)) = &self.basic {
            req = req.basic_auth(u, Some(p));
        }
        let what = format!("GET {url}");
        let resp = req.send().map_err(|e| HttpError {
            request: what.clone(),
            status: 0,
            body: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let body = resp.text().unwrap_or_default();
        if status != 200 {
            return Err(HttpError {
                request: what,
                status,
                body,
            });
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| HttpError {
            request: what.clone(),
            status,
            body: format!("{e}: {body}"),
        })?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or(HttpError {
                request: what,
                status,
                body,
            })
    }

    /// Send a request built by `build` (called again for a replay), with
    /// credentials; on a Bearer challenge fetch a token and replay once.
    fn send(
        &self,
        repo: Option<&str>,
        what: &str,
        build: &dyn Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, HttpError> {
        let transport = |e: reqwest::Error| HttpError {
            request: what.to_string(),
            status: 0,
            body: e.to_string(),
        };
        let resp = self
            .apply_auth(build(self.client()), repo)
            .send()
            .map_err(transport)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(parse_bearer);
        let Some(challenge) = challenge else {
            return Ok(resp);
        };
        let token = self.fetch_token(&challenge)?;
        self.tokens
            .lock()
            .unwrap()
            .insert(scope_key(repo), token.clone());
        build(self.client())
            .bearer_auth(token)
            .send()
            .map_err(transport)
    }

    /// A request to `path` (e.g. `/v2/foo/tags/list`) relative to the base
    /// URL, sent with the credentials (and a bearer-challenge replay), for
    /// anything the methods here do not cover.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        build: &(dyn Fn(RequestBuilder) -> RequestBuilder + Sync),
    ) -> Result<Response, HttpError> {
        let repo = path
            .strip_prefix("/v2/")
            .and_then(|p| {
                ["/manifests/", "/blobs/", "/tags/", "/referrers/"]
                    .iter()
                    .find_map(|m| p.find(m).map(|i| &p[..i]))
            })
            .map(str::to_string);
        let url = self.url(path);
        let what = format!("{method} {path}");
        off_runtime(|| {
            self.send(repo.as_deref(), &what, &|c| {
                build(c.request(method.clone(), &url))
            })
        })
    }

    fn expect(resp: Response, what: &str, ok: &[u16]) -> Result<Response, HttpError> {
        let status = resp.status().as_u16();
        if ok.contains(&status) {
            Ok(resp)
        } else {
            Err(HttpError {
                request: what.to_string(),
                status,
                body: resp.text().unwrap_or_default(),
            })
        }
    }

    /// Upload a blob to `repo`: `POST /v2/<repo>/blobs/uploads/` (expects
    /// 202 and a `Location`), then one monolithic `PUT <location>&digest=<digest>`
    /// with the whole body (expects 201). Always uploads, even if the blob
    /// is there already. The digest sent is `blob.digest` as it is.
    pub fn try_push_blob(&self, repo: &str, blob: &Blob) -> Result<(), HttpError> {
        off_runtime(|| {
            let path = format!("/v2/{repo}/blobs/uploads/");
            let what = format!("POST {path}");
            let url = self.url(&path);
            let resp = self.send(Some(repo), &what, &|c| {
                c.post(&url).header(reqwest::header::CONTENT_LENGTH, "0")
            })?;
            let resp = Self::expect(resp, &what, &[202])?;
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|h| h.to_str().ok())
                .ok_or_else(|| HttpError {
                    request: what.clone(),
                    status: 202,
                    body: "no Location header".into(),
                })?
                .to_string();
            let mut put_url = Url::parse(&url)
                .and_then(|u| u.join(&location))
                .map_err(|e| HttpError {
                    request: what.clone(),
                    status: 202,
                    body: format!("bad Location {location}: {e}"),
                })?;
            put_url
                .query_pairs_mut()
                .append_pair("digest", &blob.digest);
            let what = format!("PUT {} (blob {})", put_url.path(), blob.digest);
            let resp = self.send(Some(repo), &what, &|c| {
                c.put(put_url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(blob.bytes.clone())
            })?;
            Self::expect(resp, &what, &[201]).map(|_| ())
        })
    }

    /// [`Pusher::try_push_blob`], panicking on failure.
    pub fn push_blob(&self, repo: &str, blob: &Blob) {
        self.try_push_blob(repo, blob)
            .unwrap_or_else(|e| panic!("push blob: {e}"));
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with these exact bytes and
    /// `Content-Type: media_type`; expects 201. Returns the registry's
    /// `Docker-Content-Digest` (sha256 of the bytes if absent).
    pub fn try_push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, HttpError> {
        off_runtime(|| {
            let path = format!("/v2/{repo}/manifests/{reference}");
            let what = format!("PUT {path}");
            let url = self.url(&path);
            let resp = self.send(Some(repo), &what, &|c| {
                c.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec())
            })?;
            let resp = Self::expect(resp, &what, &[201])?;
            Ok(resp
                .headers()
                .get("docker-content-digest")
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| sha256_digest(bytes)))
        })
    }

    /// [`Pusher::try_push_manifest`], panicking on failure.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        self.try_push_manifest(repo, reference, media_type, bytes)
            .unwrap_or_else(|e| panic!("push manifest: {e}"))
    }

    /// Push the image's distinct blobs (config first, then layers; each a
    /// POST and a PUT), then its manifest by `tag` (which may also be a
    /// digest). Returns the manifest digest.
    pub fn push_image(&self, repo: &str, tag: &str, image: &Image) -> String {
        let mut seen = HashSet::new();
        for blob in image.blobs() {
            if seen.insert(blob.digest.clone()) {
                self.push_blob(repo, blob);
            }
        }
        self.push_manifest(repo, tag, &image.media_type, &image.manifest)
    }

    /// Push every distinct blob of every child, then each child manifest by
    /// its digest, then the index by `tag`. Returns the index digest.
    pub fn push_index(&self, repo: &str, tag: &str, index: &Index) -> String {
        for blob in index.blobs() {
            self.push_blob(repo, blob);
        }
        for child in &index.children {
            self.push_manifest(repo, &child.digest, &child.media_type, &child.manifest);
        }
        self.push_manifest(repo, tag, &index.media_type, &index.manifest)
    }

    /// `DELETE /v2/<repo>/manifests/<digest>`; expects 202.
    pub fn try_delete_manifest(&self, repo: &str, digest: &str) -> Result<(), HttpError> {
        off_runtime(|| {
            let path = format!("/v2/{repo}/manifests/{digest}");
            let what = format!("DELETE {path}");
            let url = self.url(&path);
            let resp = self.send(Some(repo), &what, &|c| c.delete(&url))?;
            Self::expect(resp, &what, &[202]).map(|_| ())
        })
    }

    /// [`Pusher::try_delete_manifest`], panicking on failure.
    pub fn delete_manifest(&self, repo: &str, digest: &str) {
        self.try_delete_manifest(repo, digest)
            .unwrap_or_else(|e| panic!("delete manifest: {e}"))
    }

    /// `HEAD /v2/<repo>/manifests/<reference>` with all four manifest types
    /// in `Accept`: the `Docker-Content-Digest` on 200, `None` on 404.
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> Option<String> {
        off_runtime(|| {
            let path = format!("/v2/{repo}/manifests/{reference}");
            let what = format!("HEAD {path}");
            let url = self.url(&path);
            let resp = self
                .send(Some(repo), &what, &|c| {
                    c.head(&url).header(ACCEPT, MANIFEST_ACCEPT)
                })
                .unwrap_or_else(|e| panic!("{e}"));
            if resp.status() == StatusCode::NOT_FOUND {
                return None;
            }
            let resp = Self::expect(resp, &what, &[200]).unwrap_or_else(|e| panic!("{e}"));
            Some(
                resp.headers()
                    .get("docker-content-digest")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_else(|| panic!("{what}: no Docker-Content-Digest"))
                    .to_string(),
            )
        })
    }

    /// `GET /v2/<repo>/manifests/<reference>` with all four manifest types
    /// in `Accept`: the exact body and its `Content-Type` on 200, `None` on
    /// 404.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Option<(Vec<u8>, String)> {
        off_runtime(|| {
            let path = format!("/v2/{repo}/manifests/{reference}");
            let what = format!("GET {path}");
            let url = self.url(&path);
            let resp = self
                .send(Some(repo), &what, &|c| {
                    c.get(&url).header(ACCEPT, MANIFEST_ACCEPT)
                })
                .unwrap_or_else(|e| panic!("{e}"));
            if resp.status() == StatusCode::NOT_FOUND {
                return None;
            }
            let resp = Self::expect(resp, &what, &[200]).unwrap_or_else(|e| panic!("{e}"));
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp.bytes().unwrap_or_else(|e| panic!("{what}: {e}"));
            Some((body.to_vec(), content_type))
        })
    }

    /// Tags of `repo` from `GET /v2/<repo>/tags/list`, following
    /// `Link: <..>; rel="next"` pages; in the registry's order (2.8 does not
    /// sort). Empty when the repository is unknown (404) or `"tags": null`.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        self.paged_list(Some(repo), &format!("/v2/{repo}/tags/list"), "tags")
    }

    /// Repositories from `GET /v2/_catalog`, following `Link` pages.
    pub fn catalog(&self) -> Vec<String> {
        self.paged_list(None, "/v2/_catalog", "repositories")
    }

    fn paged_list(&self, repo: Option<&str>, path: &str, field: &str) -> Vec<String> {
        off_runtime(|| {
            let mut out = Vec::new();
            let mut url = Url::parse(&self.url(path)).expect("list URL");
            let mut visited = HashSet::new();
            loop {
                assert!(visited.insert(url.to_string()), "pagination loops at {url}");
                let what = format!("GET {url}");
                let resp = self
                    .send(repo, &what, &|c| c.get(url.clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                if resp.status() == StatusCode::NOT_FOUND {
                    return out;
                }
                let resp = Self::expect(resp, &what, &[200]).unwrap_or_else(|e| panic!("{e}"));
                let next = resp
                    .headers()
                    .get(LINK)
                    .and_then(|h| h.to_str().ok())
                    .and_then(next_link);
                let body: serde_json::Value = resp.json().unwrap_or_else(|e| panic!("{what}: {e}"));
                if let Some(items) = body.get(field).and_then(|t| t.as_array()) {
                    out.extend(items.iter().filter_map(|t| t.as_str()).map(str::to_string));
                }
                match next {
                    Some(next) => url = url.join(&next).expect("Link target"),
                    None => return out,
                }
            }
        })
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`: true on 200, false on 404 (also
    /// when the blob is stored but not linked into `repo`).
    pub fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        off_runtime(|| {
            let path = format!("/v2/{repo}/blobs/{digest}");
            let what = format!("HEAD {path}");
            let url = self.url(&path);
            let resp = self
                .send(Some(repo), &what, &|c| c.head(&url))
                .unwrap_or_else(|e| panic!("{e}"));
            match resp.status().as_u16() {
                200 => true,
                404 => false,
                _ => panic!("{}", Self::expect(resp, &what, &[]).unwrap_err()),
            }
        })
    }

    /// `GET /v2/<repo>/blobs/<digest>` (redirects followed): the bytes on
    /// 200, `None` on 404.
    pub fn get_blob(&self, repo: &str, digest: &str) -> Option<Vec<u8>> {
        off_runtime(|| {
            let path = format!("/v2/{repo}/blobs/{digest}");
            let what = format!("GET {path}");
            let url = self.url(&path);
            let resp = self
                .send(Some(repo), &what, &|c| c.get(&url))
                .unwrap_or_else(|e| panic!("{e}"));
            if resp.status() == StatusCode::NOT_FOUND {
                return None;
            }
            let resp = Self::expect(resp, &what, &[200]).unwrap_or_else(|e| panic!("{e}"));
            Some(
                resp.bytes()
                    .unwrap_or_else(|e| panic!("{what}: {e}"))
                    .to_vec(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_parses() {
        let c = parse_bearer(
            r#"Bearer realm="https://127.0.0.1:1/token",service="testkit",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c["realm"], "https://127.0.0.1:1/token");
        assert_eq!(c["service"], "testkit");
        assert_eq!(c["scope"], "repository:a/b:pull,push");
        assert!(parse_bearer(r#"Basic realm="x""#).is_none());
    }

    #[test]
    fn link_parses() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=b&n=100>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=100")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
    }
}
