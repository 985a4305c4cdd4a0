//! Raw serde structs: the rules file exactly as written, before validation.
//! The JSON Schema that `syncer schema` prints is derived from them, so the
//! doc comments here are what editors show as field help.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

/// A syncer rules file.
// The loader reads a file entry by entry (see parse.rs), so only the
// schema derivation uses this struct whole.
#[allow(dead_code)]
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "syncer rules file")]
pub struct RawFile {
    /// Connection settings, keyed by registry host and port as written in
    /// sources and destinations, such as `127.0.0.1:5001`.
    #[serde(default)]
    pub registries: BTreeMap<String, RawRegistry>,
    /// Settings every rule inherits unless it sets them itself.
    #[serde(default)]
    pub defaults: RawDefaults,
    /// Copy rules, applied in order.
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

/// Connection settings of one registry.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// `enabled` (default), `insecure` (TLS without certificate checks) or
    /// `disabled` (plain HTTP).
    #[schemars(regex(pattern = r"^(enabled|insecure|disabled)$"))]
    pub tls: Option<String>,
    /// PEM file of the CA that signed the registry's certificate, relative
    /// to the rules file.
    pub ca_file: Option<String>,
    /// PEM client certificate for mutual TLS; needs `key_file`.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<String>,
    /// User name for basic auth or token auth; needs `password`.
    pub username: Option<String>,
    /// Password; write `${VARIABLE}` to read it from the environment.
    pub password: Option<String>,
    /// Requests in flight at once to this registry, from 1 to 1024.
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrency: Option<usize>,
    /// Request rate limit per second, from 0.01 to 10000.
    #[schemars(range(min = 0.01, max = 10000))]
    pub requests_per_second: Option<f64>,
    /// Connect timeout, such as `10s` or `500ms`; a bare number is seconds.
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationSchema>")]
    pub connect_timeout: Option<String>,
    /// Read timeout, such as `30s` or `5m`; a bare number is seconds.
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationSchema>")]
    pub read_timeout: Option<String>,
    /// Retries of a failed request after the first attempt.
    pub retries: Option<u32>,
}

/// Settings every rule inherits; a rule's own value replaces them field by
/// field.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub tags: Option<RawTags>,
    /// Platforms to copy, such as `linux/amd64` or `linux/arm64/v8`.
    pub platforms: Option<Vec<String>>,
    /// Whether a destination tag holding another digest is moved (default true).
    pub overwrite: Option<bool>,
    /// Whether destination tags the rule does not produce are deleted (default false).
    pub prune: Option<bool>,
    /// Tag globs that prune never deletes.
    pub protect: Option<Vec<String>>,
}

/// Tag filters; every filter given must pass.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTags {
    /// Globs, any of which may match; default every tag.
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs, none of which may match.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Regular expression the tag must match.
    pub regex: Option<String>,
    /// Semver range such as `>=1.2, <2`; a leading `v` on tags is accepted.
    pub semver: Option<String>,
    /// Keep only the newest N release versions by semver order.
    #[schemars(range(min = 1))]
    pub latest: Option<usize>,
}

/// One copy rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Name used in plans and errors; default `<file stem>[<index>]`.
    pub name: Option<String>,
    /// `host/repo` (every tag), `host/repo:tag`, `host/repo@digest`, or a
    /// repository glob such as `host/team/**`.
    pub source: String,
    /// `host/path` repositories, prefixes or templates with `{repo}`,
    /// `{path}` and `{name}`; `host/path:tag` for a single-image source.
    pub destinations: Vec<String>,
    pub tags: Option<RawTags>,
    /// Platforms to copy, such as `linux/amd64` or `linux/arm64/v8`.
    pub platforms: Option<Vec<String>>,
    /// Whether a destination tag holding another digest is moved (default true).
    pub overwrite: Option<bool>,
    /// Whether destination tags the rule does not produce are deleted (default false).
    pub prune: Option<bool>,
    /// Tag globs that prune never deletes; default `sha256-*`, `*.sig`,
    /// `*.att`, `*.sbom`.
    pub protect: Option<Vec<String>>,
}

/// Schema of a duration: text such as `30s`, or a whole number of seconds.
// Only the schema derivation reads this type.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "Duration")]
enum DurationSchema {
    Text(String),
    Seconds(u64),
}

/// Reads a duration written as text (`30s`) or as a whole number of
/// seconds (`30`), keeping it as text for the settings parser.
pub fn duration_text<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    struct Text;

    impl serde::de::Visitor<'_> for Text {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as \"30s\", or a whole number of seconds")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Some(text.to_string()))
        }

        fn visit_u64<E: serde::de::Error>(self, seconds: u64) -> Result<Self::Value, E> {
            Ok(Some(seconds.to_string()))
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    deserializer.deserialize_any(Text)
}
