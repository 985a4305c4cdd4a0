//! Manifests as received bytes, and the descriptors read out of them.
//!
//! A manifest is never re-serialised: its digest covers the exact bytes a
//! registry returned, so the bytes travel unchanged from source to
//! destination and the parsed view below is only read from.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Algorithm, Digest, MediaType};

/// A manifest's exact bytes with the media type they were served as.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub bytes: Bytes,
    pub media_type: MediaType,
    pub digest: Digest,
}

/// Reference to content: what it is, its digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default = "unknown_media_type")]
    pub media_type: MediaType,
    pub digest: Digest,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Foreign-layer locations; such layers are not served by registries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// Platform of an index child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Reasons manifest bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON of its media type {media_type}: {source}")]
    Json {
        media_type: String,
        source: serde_json::Error,
    },
    #[error("unsupported manifest media type {0:?}")]
    Unsupported(String),
    #[error("invalid signed Docker schema1 manifest: {0}")]
    Schema1Signature(String),
    /// An index below `max` levels of indexes. Images in practice nest two
    /// or three levels, so a deeper chain comes from a broken or hostile
    /// registry.
    #[error("index {digest} is nested deeper than {max} levels of indexes, the limit syncer accepts; images nest two or three, so check what the source registry serves")]
    IndexTooDeep { digest: Digest, max: usize },
    /// An index listed again below itself.
    #[error("index {digest} lists itself through its children, a cycle; check what the source registry serves")]
    IndexCycle { digest: Digest },
}

#[derive(Deserialize)]
struct ImageFields {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct IndexFields {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// Fields of a Docker schema1 manifest. Its layers carry no size and its
/// image configuration is inline, so there is no config blob.
#[derive(Deserialize)]
struct Schema1Fields {
    #[serde(rename = "fsLayers", default)]
    fs_layers: Vec<Schema1Layer>,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    history: Vec<Schema1History>,
}

#[derive(Deserialize)]
struct Schema1History {
    /// The layer's image configuration, as a JSON string.
    #[serde(rename = "v1Compatibility", default)]
    v1_compatibility: String,
}

#[derive(Deserialize)]
struct Schema1Os {
    #[serde(default)]
    os: Option<String>,
}

#[derive(Deserialize)]
struct Schema1Layer {
    #[serde(rename = "blobSum")]
    blob_sum: Digest,
}

/// Signature fields of a signed schema1 manifest (a JSON Web Signature
/// in libtrust's layout).
#[derive(Deserialize)]
struct Schema1Signatures {
    #[serde(default)]
    signatures: Vec<Schema1Signature>,
}

#[derive(Deserialize)]
struct Schema1Signature {
    protected: String,
}

/// Decoded `protected` header: how to rebuild the signed payload.
#[derive(Deserialize)]
struct Schema1Protected {
    #[serde(rename = "formatLength")]
    format_length: usize,
    #[serde(rename = "formatTail")]
    format_tail: String,
}

#[derive(Deserialize)]
struct TypeField {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
}

fn unknown_media_type() -> MediaType {
    MediaType::new("application/octet-stream")
}

impl Manifest {
    /// Wraps received bytes. When the registry sent no usable
    /// `Content-Type`, the type comes from the manifest's `mediaType` field.
    pub fn new(bytes: Bytes, content_type: Option<&str>, digest: Digest) -> Self {
        let media_type = Self::media_type_of(&bytes, content_type);
        Manifest {
            bytes,
            media_type,
            digest,
        }
    }

    /// Returns the media type of manifest bytes served with `content_type`,
    /// read from the body when the registry sent no usable type.
    pub fn media_type_of(bytes: &[u8], content_type: Option<&str>) -> MediaType {
        match content_type {
            Some(t) if !t.is_empty() && t != "application/json" => MediaType::new(t),
            _ => sniff_media_type(bytes),
        }
    }

    /// Blob descriptors of an image manifest: config first, then layers.
    /// Schema1 layers come with size 0, meaning unknown, because schema1
    /// records no sizes.
    pub fn blobs(&self) -> Result<Vec<Descriptor>, ManifestError> {
        self.check_supported()?;
        if self.media_type.is_schema1() {
            let fields: Schema1Fields = self.parse()?;
            return Ok(fields
                .fs_layers
                .into_iter()
                .map(|layer| Descriptor {
                    media_type: MediaType::new(SCHEMA1_LAYER),
                    digest: layer.blob_sum,
                    size: 0,
                    platform: None,
                    urls: Vec::new(),
                })
                .collect());
        }
        if !self.media_type.is_image() {
            return Ok(Vec::new());
        }
        let fields: ImageFields = self.parse()?;
        let mut blobs = vec![fields.config];
        blobs.extend(fields.layers);
        Ok(blobs)
    }

    /// Child manifest descriptors of an index; empty for an image.
    pub fn children(&self) -> Result<Vec<Descriptor>, ManifestError> {
        self.check_supported()?;
        if !self.media_type.is_index() {
            return Ok(Vec::new());
        }
        Ok(self.parse::<IndexFields>()?.manifests)
    }

    /// Returns the platform of a schema1 manifest, `None` for every other
    /// kind. The OS comes from the newest history entry, Linux when absent.
    pub fn schema1_platform(&self) -> Option<Platform> {
        if !self.media_type.is_schema1() {
            return None;
        }
        let fields = self.parse::<Schema1Fields>().ok()?;
        let os = fields
            .history
            .first()
            .and_then(|h| serde_json::from_str::<Schema1Os>(&h.v1_compatibility).ok())
            .and_then(|c| c.os)
            .unwrap_or_else(|| "linux".to_string());
        Some(Platform {
            os,
            architecture: fields.architecture,
            variant: None,
        })
    }

    fn check_supported(&self) -> Result<(), ManifestError> {
        let media_type = &self.media_type;
        if !media_type.is_image() && !media_type.is_index() && !media_type.is_schema1() {
            return Err(ManifestError::Unsupported(self.media_type.to_string()));
        }
        Ok(())
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ManifestError> {
        serde_json::from_slice(&self.bytes).map_err(|source| ManifestError::Json {
            media_type: self.media_type.to_string(),
            source,
        })
    }
}

/// Layer media type given to schema1 layers, which name none.
const SCHEMA1_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Computes the digest registries give a manifest. For a signed schema1
/// manifest that is the digest of the signed payload, which leaves out the
/// `signatures` block, so it stays the same when the manifest is signed
/// again. For every other manifest it is the digest of the bytes.
pub fn content_digest(
    bytes: &[u8],
    media_type: &MediaType,
    algorithm: Algorithm,
) -> Result<Digest, ManifestError> {
    if media_type.essence() != MediaType::DOCKER_SCHEMA1_SIGNED {
        return Ok(Digest::compute(algorithm, bytes));
    }
    let payload = schema1_payload(bytes)?;
    Ok(Digest::compute(algorithm, &payload))
}

/// Rebuilds the payload a schema1 signature covers: the first
/// `formatLength` bytes followed by the decoded `formatTail`.
fn schema1_payload(bytes: &[u8]) -> Result<Vec<u8>, ManifestError> {
    let invalid = |reason: &str| ManifestError::Schema1Signature(reason.to_string());
    let signed: Schema1Signatures = serde_json::from_slice(bytes)
        .map_err(|e| ManifestError::Schema1Signature(e.to_string()))?;
    let first = signed
        .signatures
        .first()
        .ok_or_else(|| invalid("no signatures"))?;
    let protected = URL_SAFE_NO_PAD
        .decode(first.protected.trim_end_matches('='))
        .map_err(|_| invalid("protected header is not base64url"))?;
    let protected: Schema1Protected = serde_json::from_slice(&protected)
        .map_err(|e| ManifestError::Schema1Signature(format!("protected header: {e}")))?;
    let tail = URL_SAFE_NO_PAD
        .decode(protected.format_tail.trim_end_matches('='))
        .map_err(|_| invalid("formatTail is not base64url"))?;
    let head = bytes
        .get(..protected.format_length)
        .ok_or_else(|| invalid("formatLength is past the end of the manifest"))?;
    Ok([head, &tail[..]].concat())
}

/// Guesses a media type from the manifest body, for registries that send
/// `application/json` or nothing.
fn sniff_media_type(bytes: &[u8]) -> MediaType {
    let fields: Option<TypeField> = serde_json::from_slice(bytes).ok();
    match fields {
        Some(TypeField {
            media_type: Some(t),
            ..
        }) => MediaType::new(t),
        Some(TypeField {
            schema_version: Some(1),
            ..
        }) => MediaType::new(MediaType::DOCKER_SCHEMA1_SIGNED),
        _ => MediaType::new(MediaType::OCI_MANIFEST),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(json: &str, content_type: &str) -> Manifest {
        let bytes = Bytes::from(json.to_string());
        let digest = Digest::sha256(&bytes);
        Manifest::new(bytes, Some(content_type), digest)
    }

    #[test]
    fn image_blobs_config_first() {
        let d1 = Digest::sha256(b"config");
        let d2 = Digest::sha256(b"layer");
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{d1}","size":6}},
               "layers":[{{"mediaType":"l","digest":"{d2}","size":5}}]}}"#
        );
        let blobs = manifest(&json, MediaType::OCI_MANIFEST).blobs().unwrap();
        assert_eq!(blobs.len(), 2);
        assert_eq!(blobs[0].digest, d1);
        assert_eq!(blobs[1].size, 5);
    }

    #[test]
    fn index_children_with_platform() {
        let d = Digest::sha256(b"child");
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{d}","size":9,
               "platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            MediaType::OCI_MANIFEST
        );
        let children = manifest(&json, MediaType::OCI_INDEX).children().unwrap();
        let platform = children[0].platform.as_ref().unwrap();
        assert_eq!(platform.variant.as_deref(), Some("v8"));
    }

    /// Builds a schema1 manifest signed in libtrust's layout: the payload, then
    /// a `signatures` block spliced in before its closing brace.
    fn signed_schema1(payload: &str, signature: &str) -> Vec<u8> {
        let cut = payload.rfind('\n').unwrap();
        let tail = &payload[cut..];
        let protected = format!(
            r#"{{"formatLength":{cut},"formatTail":"{}","time":"2026-01-01T00:00:00Z"}}"#,
            URL_SAFE_NO_PAD.encode(tail)
        );
        let block = format!(
            r#",
   "signatures": [{{"header": {{"alg": "ES256"}}, "signature": "{signature}", "protected": "{}"}}]"#,
            URL_SAFE_NO_PAD.encode(protected)
        );
        format!("{}{block}{tail}", &payload[..cut]).into_bytes()
    }

    #[test]
    fn schema1_digest_ignores_signatures() {
        let layer = Digest::sha256(b"layer");
        let payload = format!(
            "{{\n   \"schemaVersion\": 1,\n   \"architecture\": \"arm64\",\n   \"fsLayers\": [{{\"blobSum\": \"{layer}\"}}, {{\"blobSum\": \"{layer}\"}}]\n}}"
        );
        let signed = MediaType::new(MediaType::DOCKER_SCHEMA1_SIGNED);
        let first = signed_schema1(&payload, "c2lnbmF0dXJlLTE");
        let second = signed_schema1(&payload, "b3RoZXItc2lnbmF0dXJl");
        assert_ne!(first, second);

        let expected = Digest::sha256(payload.as_bytes());
        let digest = content_digest(&first, &signed, Algorithm::Sha256).unwrap();
        assert_eq!(digest, expected);
        let again = content_digest(&second, &signed, Algorithm::Sha256).unwrap();
        assert_eq!(again, expected);

        let m = Manifest::new(
            Bytes::from(first),
            Some(MediaType::DOCKER_SCHEMA1_SIGNED),
            digest,
        );
        let blobs = m.blobs().unwrap();
        assert_eq!(blobs.len(), 2);
        assert_eq!(blobs[0].digest, layer);
        assert_eq!(blobs[0].size, 0);
        let platform = m.schema1_platform().unwrap();
        assert_eq!(platform.architecture, "arm64");
        assert_eq!(platform.os, "linux");
        assert!(m.children().unwrap().is_empty());
    }

    #[test]
    fn schema1_is_recognised_from_body() {
        let m = manifest(r#"{"schemaVersion":1}"#, "application/json");
        assert!(m.media_type.is_schema1());
    }

    #[test]
    fn schema1_without_signatures_is_invalid() {
        let signed = MediaType::new(MediaType::DOCKER_SCHEMA1_SIGNED);
        let error = content_digest(br#"{"schemaVersion":1}"#, &signed, Algorithm::Sha256);
        assert!(matches!(error, Err(ManifestError::Schema1Signature(_))));

        let unsigned = MediaType::new(MediaType::DOCKER_SCHEMA1);
        let bytes = br#"{"schemaVersion":1}"#;
        let digest = content_digest(bytes, &unsigned, Algorithm::Sha256).unwrap();
        assert_eq!(digest, Digest::sha256(bytes));
    }
}
