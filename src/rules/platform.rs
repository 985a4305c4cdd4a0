//! `platforms:` entries such as `linux/amd64` or `linux/arm64/v8`, and how
//! they match the platform of an index child or an image config.

use std::fmt;

use crate::oci::Platform;

/// Operating systems an image may name: Go's `GOOS` values, the names
/// image configs use, and `unknown`, which BuildKit gives attestation
/// manifests.
const KNOWN_OS: [&str; 16] = [
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "illumos",
    "ios",
    "js",
    "linux",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "unknown",
    "wasip1",
    "windows",
];

/// Architectures an image may name: Go's `GOARCH` values, and `unknown`.
const KNOWN_ARCHITECTURES: [&str; 15] = [
    "386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64",
    "ppc64le", "riscv64", "s390x", "unknown", "wasm",
];

/// One platform a rule copies: `os/architecture[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    /// When absent, every variant of the architecture matches.
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// Parses `os/architecture` or `os/architecture/variant`, each part
    /// lowercase letters, digits and `_`, `.` or `-`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |part: &str| {
            !part.is_empty()
                && part.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')
                })
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid(p)) {
            return Err(format!("invalid platform {text:?}; expected os/architecture or os/architecture/variant in lowercase, such as linux/amd64 or linux/arm64/v8"));
        }
        // A misspelt name (`amd46`) would match no image and skip them all.
        if !KNOWN_OS.contains(&parts[0]) {
            return Err(format!(
                "unknown os {:?} in platform {text:?}; known: {}",
                parts[0],
                KNOWN_OS.join(", ")
            ));
        }
        if !KNOWN_ARCHITECTURES.contains(&parts[1]) {
            return Err(format!(
                "unknown architecture {:?} in platform {text:?}; known: {}",
                parts[1],
                KNOWN_ARCHITECTURES.join(", ")
            ));
        }
        Ok(PlatformSpec {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    /// Whether `platform` is this one. An arm64 platform without a variant
    /// counts as `v8`, the only arm64 variant in use, as container runtimes
    /// treat it.
    pub fn matches(&self, platform: &Platform) -> bool {
        if self.os != platform.os || self.architecture != platform.architecture {
            return false;
        }
        let Some(wanted) = &self.variant else {
            return true;
        };
        let variant = platform
            .variant
            .as_deref()
            .or((platform.architecture == "arm64").then_some("v8"));
        variant == Some(wanted.as_str())
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// Formats a platform read from a manifest, such as `linux/arm/v7`.
pub fn describe(platform: &Platform) -> String {
    match &platform.variant {
        Some(variant) => format!("{}/{}/{variant}", platform.os, platform.architecture),
        None => format!("{}/{}", platform.os, platform.architecture),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_platform_is_rejected() {
        let error = PlatformSpec::parse("linux/amd46").unwrap_err();
        assert!(error.contains("unknown architecture \"amd46\""), "{error}");
        let error = PlatformSpec::parse("lunix/amd64").unwrap_err();
        assert!(error.contains("unknown os \"lunix\""), "{error}");
        assert!(PlatformSpec::parse("windows/amd64").is_ok());
        assert!(PlatformSpec::parse("linux/arm/v7").is_ok());
    }

    fn platform(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn parses_two_and_three_parts() {
        let spec = PlatformSpec::parse("linux/arm64/v8").unwrap();
        assert_eq!(spec.variant.as_deref(), Some("v8"));
        assert_eq!(spec.to_string(), "linux/arm64/v8");
        assert!(PlatformSpec::parse("linux").is_err());
        assert!(PlatformSpec::parse("Linux/amd64").is_err());
        assert!(PlatformSpec::parse("linux//v8").is_err());
        assert!(PlatformSpec::parse("a/b/c/d").is_err());
    }

    #[test]
    fn arm64_without_variant_is_v8() {
        let spec = PlatformSpec::parse("linux/arm64/v8").unwrap();
        assert!(spec.matches(&platform("linux", "arm64", None)));
        assert!(spec.matches(&platform("linux", "arm64", Some("v8"))));
        assert!(!spec.matches(&platform("linux", "arm64", Some("v9"))));
    }

    #[test]
    fn missing_variant_matches_any() {
        let spec = PlatformSpec::parse("linux/arm").unwrap();
        assert!(spec.matches(&platform("linux", "arm", Some("v7"))));
        assert!(!spec.matches(&platform("windows", "arm", None)));
    }
}
