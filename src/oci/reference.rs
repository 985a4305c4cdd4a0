//! Image references (`registry/repository[:tag][@digest]`) and the
//! distribution grammar for repository names and tags.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Digest, DigestError};

/// Maximum length of a repository name in the distribution specification.
const MAX_REPOSITORY_LEN: usize = 255;
/// Maximum length of a tag in the distribution specification.
const MAX_TAG_LEN: usize = 128;
/// Registry that names without a host refer to, as in docker's CLI.
pub const DOCKER_HUB: &str = "docker.io";

/// A validated repository path such as `library/alpine`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository(String);

/// What a reference points at inside its repository.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Target {
    Tag(String),
    Digest(Digest),
}

/// A fully qualified reference: registry host, repository and a tag or digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    pub registry: String,
    pub repository: Repository,
    pub target: Target,
}

/// Reasons a string is not a valid reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid repository name {name:?}: {reason}")]
    Repository { name: String, reason: &'static str },
    #[error("invalid tag {0:?}: a tag is 1 to 128 characters of letters, digits, `_`, `.` and `-`, not starting with `.` or `-`")]
    Tag(String),
    #[error("invalid digest in reference: {0}")]
    Digest(#[from] DigestError),
    #[error("invalid reference {0:?}: expected `registry/repository[:tag][@digest]`")]
    Syntax(String),
}

impl Repository {
    /// Validates `name` against the distribution grammar: lowercase path
    /// components of `[a-z0-9]` joined by `.`, `_`, `__` or runs of `-`,
    /// separated by `/`, 255 characters at most.
    pub fn parse(name: &str) -> Result<Self, ReferenceError> {
        check_repository(name).map_err(|reason| ReferenceError::Repository {
            name: name.to_string(),
            reason,
        })?;
        Ok(Repository(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Last path component, e.g. `alpine` for `library/alpine`.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

/// Whether `name` is a valid repository path.
pub fn is_valid_repository(name: &str) -> bool {
    check_repository(name).is_ok()
}

fn check_repository(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.len() > MAX_REPOSITORY_LEN {
        return Err("longer than 255 characters");
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("repository names must be lowercase");
    }
    if name.split('/').all(is_valid_component) {
        Ok(())
    } else {
        Err("each `/`-separated component must be lowercase letters and digits, joined by `.`, `_`, `__` or dashes")
    }
}

fn is_valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let dashes = separator.bytes().all(|b| b == b'-');
        if !(separator == "." || separator == "_" || separator == "__" || dashes) {
            return false;
        }
    }
    true
}

/// Whether `tag` matches the tag grammar `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LEN
        && word(&bytes[0])
        && bytes.iter().all(|b| word(b) || *b == b'.' || *b == b'-')
}

impl Target {
    /// Parses a tag, or a digest when the text contains a colon.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        if text.contains(':') {
            return Ok(Target::Digest(text.parse()?));
        }
        if !is_valid_tag(text) {
            return Err(ReferenceError::Tag(text.to_string()));
        }
        Ok(Target::Tag(text.to_string()))
    }

    /// The string used in a manifest URL.
    pub fn as_path(&self) -> String {
        match self {
            Target::Tag(tag) => tag.clone(),
            Target::Digest(digest) => digest.to_string(),
        }
    }
}

impl Reference {
    pub fn new(registry: &str, repository: Repository, target: Target) -> Self {
        Reference {
            registry: registry.to_string(),
            repository,
            target,
        }
    }

    /// The repository without tag or digest, as `registry/repository`.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository.as_str())
    }

    pub fn tag(&self) -> Option<&str> {
        match &self.target {
            Target::Tag(tag) => Some(tag),
            Target::Digest(_) => None,
        }
    }
}

/// Splits `text` into its registry host and the rest. A first component
/// that contains `.` or `:`, or is `localhost`, is a host, as in docker's
/// CLI; anything else is a Docker Hub name, where one-component names live
/// under `library/`.
pub fn split_registry(text: &str) -> (String, String) {
    if let Some((first, rest)) = text.split_once('/') {
        if first.contains('.') || first.contains(':') || first == "localhost" {
            return (first.to_string(), rest.to_string());
        }
    }
    let path = if text.contains('/') {
        text.to_string()
    } else {
        format!("library/{text}")
    };
    (DOCKER_HUB.to_string(), path)
}

/// Checks that `host` is `host[:port]`: a host name, IPv4 address or
/// bracketed IPv6 address, then an optional port from 1 to 65535. Returns
/// the reason it is invalid, which never repeats a `user:password@` part.
pub fn check_registry_host(host: &str) -> Result<(), String> {
    if host.contains('@') {
        return Err("it contains `user:password@`; give credentials as `username` and `password` under `registries:`, never in a host".into());
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._:[]".contains(*c)))
    {
        return Err(format!(
            "it contains {c:?}; write `host[:port]`, such as `registry.example.com:5000`"
        ));
    }
    let (name, port) = split_port(host)?;
    if name.is_empty() {
        return Err("the host name is empty; write `host[:port]`".into());
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(number) if number > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(format!("port {port:?} is not a number from 1 to 65535")),
        }
        // Hosts are compared as written, so `:05000` would be another
        // registry than `:5000` and slip past the checks between rules.
        if port.starts_with('0') {
            return Err(format!(
                "port {port:?} has a leading zero; write it without"
            ));
        }
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "host {name:?} has uppercase letters; write it in lowercase, as hosts are compared as written"
        ));
    }
    Ok(())
}

/// Splits `host[:port]` at the port, keeping an IPv6 address in brackets.
fn split_port(host: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(inner) = host.strip_prefix('[') {
        let Some((address, rest)) = inner.split_once(']') else {
            return Err("an IPv6 address has `[` but no closing `]`".into());
        };
        let is_ipv6 = !address.is_empty()
            && address
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        if !is_ipv6 {
            return Err(format!("{address:?} in brackets is not an IPv6 address"));
        }
        return match rest {
            "" => Ok((address, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((address, Some(port))),
                None => Err(format!("{rest:?} after the IPv6 address is not `:port`")),
            },
        };
    }
    if host.contains(['[', ']']) {
        return Err("`[` and `]` may only enclose an IPv6 address at the start".into());
    }
    match host.split_once(':') {
        None => Ok((host, None)),
        Some((_, port)) if port.contains(':') => {
            Err("an IPv6 address needs brackets, such as `[::1]:5000`".into())
        }
        Some((name, port)) => Ok((name, Some(port))),
    }
}

/// Replaces a `user:password@` part at the start of `text`, a host or a
/// reference, with `***@`, so that messages can show the rest.
pub fn redact_userinfo(text: &str) -> String {
    let host_end = text.find('/').unwrap_or(text.len());
    match text[..host_end].rfind('@') {
        Some(at) => format!("***{}", &text[at..]),
        None => text.to_string(),
    }
}

/// Splits `path[:tag][@digest]` into the path and its target text.
pub fn split_target(path: &str) -> (&str, Option<&str>) {
    if let Some((name, digest)) = path.split_once('@') {
        return (name, Some(digest));
    }
    let last_slash = path.rfind('/').map_or(0, |i| i + 1);
    match path[last_slash..].rfind(':') {
        Some(i) => (&path[..last_slash + i], Some(&path[last_slash + i + 1..])),
        None => (path, None),
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    /// Parses `registry/repository:tag` or `registry/repository@digest`.
    /// A reference without tag or digest means the tag `latest`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (registry, rest) = split_registry(text);
        let (path, target) = split_target(&rest);
        if path.is_empty() {
            return Err(ReferenceError::Syntax(text.to_string()));
        }
        let repository = Repository::parse(path)?;
        let target = Target::parse(target.unwrap_or("latest"))?;
        Ok(Reference::new(&registry, repository, target))
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Tag(tag) => write!(f, "{}/{}:{}", self.registry, self.repository, tag),
            Target::Digest(d) => write!(f, "{}/{}@{}", self.registry, self.repository, d),
        }
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_with_port_and_tag() {
        let r: Reference = "127.0.0.1:5001/ns1/repo1:v1".parse().unwrap();
        assert_eq!(r.registry, "127.0.0.1:5001");
        assert_eq!(r.repository.as_str(), "ns1/repo1");
        assert_eq!(r.target, Target::Tag("v1".into()));
    }

    #[test]
    fn bare_name_maps_to_docker_hub_library() {
        let r: Reference = "alpine".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
    }

    #[test]
    fn reference_with_digest() {
        let text = format!("127.0.0.1:5001/a/b@sha256:{}", "0".repeat(64));
        let r: Reference = text.parse().unwrap();
        assert!(matches!(r.target, Target::Digest(_)));
        assert_eq!(r.to_string(), text);
    }

    #[test]
    fn repository_grammar() {
        for ok in ["a", "a/b", "a-b", "a--b", "a__b", "a.b/c_d", "0/1"] {
            assert!(is_valid_repository(ok), "{ok} rejected");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "-a", "a-", "a___b", "a..b", "a:b",
        ] {
            assert!(!is_valid_repository(bad), "{bad} accepted");
        }
        assert!(!is_valid_repository(&"a".repeat(256)));
        assert!(is_valid_repository(&"a".repeat(255)));
    }

    #[test]
    fn registry_hosts() {
        for ok in [
            "127.0.0.1:5000",
            "registry.example.com",
            "localhost:1",
            "my-registry_1.local:65535",
            "[::1]:5000",
            "[fe80::1]",
            DOCKER_HUB,
        ] {
            assert_eq!(check_registry_host(ok), Ok(()), "{ok}");
        }
        for (bad, reason) in [
            ("127.0.0.1:99999", "port \"99999\""),
            ("127.0.0.1:0", "port \"0\""),
            ("127.0.0.1:-1", "port \"-1\""),
            ("127.0.0.1:abc", "port \"abc\""),
            ("127.0.0.1:", "port \"\""),
            ("127.0.0.1:+80", "contains '+'"),
            ("127.0.0.1:5101#frag", "contains '#'"),
            ("127.0.0.1:5101?x=1", "contains '?'"),
            ("my host:5000", "contains ' '"),
            (":5000", "host name is empty"),
            ("::1", "needs brackets"),
            ("[::1", "no closing"),
            ("[::1]x", "is not `:port`"),
            ("[zz]:1", "not an IPv6 address"),
            ("a[b]", "only enclose"),
            ("127.0.0.1:05000", "leading zero"),
            ("Registry.example.com", "uppercase"),
        ] {
            let error = check_registry_host(bad).unwrap_err();
            assert!(error.contains(reason), "{bad}: {error}");
        }
    }

    #[test]
    fn userinfo_is_never_shown() {
        let error = check_registry_host("alice:s3cret@127.0.0.1:5000").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("user:password@"), "{error}");
        assert_eq!(
            redact_userinfo("alice:s3cret@127.0.0.1:5000/ns/app@sha256:1"),
            "***@127.0.0.1:5000/ns/app@sha256:1"
        );
        assert_eq!(redact_userinfo("a:b@host"), "***@host");
        assert_eq!(
            redact_userinfo("127.0.0.1:5000/ns/app@sha256:1"),
            "127.0.0.1:5000/ns/app@sha256:1"
        );
    }

    #[test]
    fn tag_grammar() {
        assert!(is_valid_tag("v1.2.3-rc_1"));
        assert!(is_valid_tag("_x"));
        assert!(!is_valid_tag(".x"));
        assert!(!is_valid_tag("-x"));
        assert!(!is_valid_tag("a/b"));
        assert!(!is_valid_tag(&"a".repeat(129)));
    }
}
