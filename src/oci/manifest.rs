//! Manifests as received bytes, and the descriptors read out of them.
//!
//! A manifest is never re-serialised: its digest covers the exact bytes a
//! registry returned, so the bytes travel unchanged from source to
//! destination and the parsed view below is only read from.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Digest, MediaType};

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
    #[error("Docker schema1 manifests cannot be copied: destinations reject them unless schema1 is enabled, and their signed bytes change on every read")]
    Schema1,
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
        let media_type = match content_type {
            Some(t) if !t.is_empty() && t != "application/json" => MediaType::new(t),
            _ => sniff_media_type(&bytes),
        };
        Manifest {
            bytes,
            media_type,
            digest,
        }
    }

    /// Blob descriptors of an image manifest: config first, then layers.
    pub fn blobs(&self) -> Result<Vec<Descriptor>, ManifestError> {
        self.check_supported()?;
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

    fn check_supported(&self) -> Result<(), ManifestError> {
        if self.media_type.is_schema1() {
            return Err(ManifestError::Schema1);
        }
        if !self.media_type.is_image() && !self.media_type.is_index() {
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

    #[test]
    fn schema1_is_rejected_with_reason() {
        let m = manifest(r#"{"schemaVersion":1}"#, "application/json");
        assert!(m.media_type.is_schema1());
        assert!(matches!(m.blobs(), Err(ManifestError::Schema1)));
    }
}
