//! Destinations of a rule and how a source repository maps onto them.

use crate::oci::{check_registry_host, is_valid_tag, redact_userinfo, split_registry, Repository};

use super::Source;

/// Placeholders a destination template may use.
const PLACEHOLDERS: [&str; 3] = ["{repo}", "{path}", "{name}"];

/// One destination of a rule: a repository, a prefix or a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub registry: String,
    /// Repository path, prefix or template, as written.
    pub path: String,
    /// Tag to write instead of the source tag (single-image sources only).
    pub tag: Option<String>,
}

impl Destination {
    /// Parses `host/path[:tag]`, where path may hold `{repo}`, `{path}` and
    /// `{name}`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.contains('/') {
            return Err(format!("destination {text:?} needs a registry host and a repository path, such as `127.0.0.1:5002/mirror/app`"));
        }
        let (registry, rest) = split_registry(text);
        check_registry_host(&registry).map_err(|reason| {
            format!(
                "destination {:?} has an invalid registry host: {reason}",
                redact_userinfo(text)
            )
        })?;
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                rest[..last_slash + i].to_string(),
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest.clone(), None),
        };
        if let Some(tag) = &tag {
            if !is_valid_tag(tag) {
                return Err(format!("destination {text:?} has an invalid tag {tag:?}: a tag is 1 to 128 letters, digits, `_`, `.` and `-`"));
            }
        }
        let destination = Destination {
            registry,
            path,
            tag,
        };
        destination.check_path(text)?;
        Ok(destination)
    }

    pub fn is_template(&self) -> bool {
        self.path.contains('{')
    }

    fn check_path(&self, text: &str) -> Result<(), String> {
        let sample = self
            .path
            .replace("{repo}", "a/b")
            .replace("{path}", "b")
            .replace("{name}", "b");
        if sample.contains('{') || sample.contains('}') {
            return Err(format!(
                "destination {text:?} has an unknown placeholder: use {}",
                PLACEHOLDERS.join(", ")
            ));
        }
        Repository::parse(&sample).map_err(|e| format!("destination {text:?}: {e}"))?;
        Ok(())
    }

    /// Maps a source repository onto this destination's repository. A
    /// template fills its placeholders. For a glob source, the path below
    /// the glob's fixed part is appended to the prefix. Otherwise the
    /// destination is the repository itself.
    pub fn repository_for(
        &self,
        source: &Source,
        repository: &Repository,
    ) -> Result<Repository, String> {
        let full = repository.as_str();
        let below = below_fixed(full, source.fixed());
        let path = if self.is_template() {
            self.path
                .replace("{repo}", full)
                .replace("{path}", below)
                .replace("{name}", repository.name())
        } else if matches!(source, Source::Glob { .. }) {
            join_path(&self.path, below)
        } else {
            self.path.clone()
        };
        Repository::parse(&path)
            .map_err(|e| format!("mapping {full} to {}/{}: {e}", self.registry, self.path))
    }
}

/// Returns the path below `fixed`, or the whole path when `fixed` is empty.
fn below_fixed<'a>(path: &'a str, fixed: &str) -> &'a str {
    if fixed.is_empty() {
        return path;
    }
    path.strip_prefix(fixed)
        .map(|rest| rest.trim_start_matches('/'))
        .filter(|rest| !rest.is_empty())
        .unwrap_or(path)
}

fn join_path(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}/{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use globset::Glob;

    fn glob(pattern: &str, fixed: &str) -> Source {
        Source::Glob {
            registry: "r".into(),
            pattern: pattern.into(),
            matcher: Glob::new(pattern).unwrap().compile_matcher(),
            fixed: fixed.into(),
        }
    }

    fn repo(path: &str) -> Repository {
        Repository::parse(path).unwrap()
    }

    #[test]
    fn glob_prefix_appends_path_below_fixed() {
        let d = Destination::parse("127.0.0.1:5002/mirror/ns2").unwrap();
        let mapped = d
            .repository_for(&glob("ns2/**", "ns2"), &repo("ns2/a/b"))
            .unwrap();
        assert_eq!(mapped.as_str(), "mirror/ns2/a/b");
    }

    #[test]
    fn template_placeholders() {
        let d = Destination::parse("127.0.0.1:5002/all/{repo}").unwrap();
        let mapped = d
            .repository_for(&glob("**", ""), &repo("ns1/repo1"))
            .unwrap();
        assert_eq!(mapped.as_str(), "all/ns1/repo1");
        let d = Destination::parse("127.0.0.1:5002/flat/{name}").unwrap();
        assert_eq!(
            d.repository_for(&glob("**", ""), &repo("x/y"))
                .unwrap()
                .as_str(),
            "flat/y"
        );
    }

    #[test]
    fn destination_tag_is_parsed() {
        let d = Destination::parse("127.0.0.1:5002/pinned/repo4:stable").unwrap();
        assert_eq!(d.registry, "127.0.0.1:5002");
        assert_eq!(d.path, "pinned/repo4");
        assert_eq!(d.tag.as_deref(), Some("stable"));
    }

    #[test]
    fn invalid_destinations() {
        assert!(Destination::parse("127.0.0.1:5002/Upper").is_err());
        assert!(Destination::parse("127.0.0.1:70000/x").is_err());
        let error = Destination::parse("u:pw@127.0.0.1:5002/x").unwrap_err();
        assert!(!error.contains("pw"), "{error}");
        assert!(Destination::parse("127.0.0.1:5002/x/{bogus}").is_err());
        assert!(Destination::parse("nohost").is_err());
    }
}
