//! Tag filters: include and exclude globs, a regex, a semver range, and the
//! newest N by semver order.

use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::Regex;
use semver::{Version, VersionReq};

use super::raw::RawTags;

/// Compiled tag filters of one rule. All filters given must pass.
#[derive(Clone, Debug, Default)]
pub struct TagFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    regex: Option<Regex>,
    semver: Option<VersionReq>,
    latest: Option<usize>,
}

impl TagFilter {
    /// Compiles `raw`, returning one error per invalid entry.
    pub fn compile(raw: &RawTags) -> Result<Self, Vec<FilterError>> {
        let mut errors = Vec::new();
        let include = compile_globs("include", &raw.include, &mut errors);
        let exclude = compile_globs("exclude", &raw.exclude, &mut errors);
        let regex = raw.regex.as_ref().and_then(|r| {
            Regex::new(r)
                .map_err(|e| {
                    errors.push(FilterError::new(
                        "regex",
                        None,
                        format!("invalid regex {r:?}: {}", one_line(&e.to_string())),
                    ))
                })
                .ok()
        });
        let semver = raw.semver.as_ref().and_then(|s| {
            VersionReq::parse(s)
                .map_err(|e| {
                    errors.push(FilterError::new(
                        "semver",
                        None,
                        format!(
                            "invalid range {s:?}: {e}; expected comparators such as \">=1.2, <2\""
                        ),
                    ))
                })
                .ok()
        });
        if raw.latest == Some(0) {
            errors.push(FilterError::new(
                "latest",
                None,
                "must be at least 1".to_string(),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(TagFilter {
            include,
            exclude,
            regex,
            semver,
            latest: raw.latest,
        })
    }

    /// Whether no filter is set, so every valid tag is selected.
    pub fn selects_every_tag(&self) -> bool {
        self.include.is_none()
            && self.exclude.is_none()
            && self.regex.is_none()
            && self.semver.is_none()
            && self.latest.is_none()
    }

    /// Whether `tag` is selected whenever the source lists it. False when
    /// `latest` is set, since then the result depends on the other tags.
    pub fn always_selects(&self, tag: &str) -> bool {
        self.latest.is_none() && self.matches(tag)
    }

    /// Selects the tags that pass every filter, in a stable order. With
    /// `latest: N`, tags that are not semver release versions (including
    /// pre-releases such as `1.2.0-rc.1`) are dropped and the N highest
    /// versions are kept.
    pub fn select(&self, tags: &[String]) -> Vec<String> {
        let mut passed: Vec<String> = tags.iter().filter(|t| self.matches(t)).cloned().collect();
        passed.sort();
        passed.dedup();
        let Some(count) = self.latest else {
            return passed;
        };
        let mut versions: Vec<(Version, String)> = passed
            .into_iter()
            .filter_map(|t| {
                parse_version(&t)
                    .filter(|v| v.pre.is_empty())
                    .map(|v| (v, t))
            })
            .collect();
        versions.sort();
        let keep = versions.len().saturating_sub(count);
        let mut newest: Vec<String> = versions.into_iter().skip(keep).map(|(_, t)| t).collect();
        newest.sort();
        newest
    }

    fn matches(&self, tag: &str) -> bool {
        if let Some(include) = &self.include {
            if !include.is_match(tag) {
                return false;
            }
        }
        if self.exclude.as_ref().is_some_and(|e| e.is_match(tag)) {
            return false;
        }
        if self.regex.as_ref().is_some_and(|r| !r.is_match(tag)) {
            return false;
        }
        match &self.semver {
            Some(range) => parse_version(tag).is_some_and(|v| range.matches(&v)),
            None => true,
        }
    }
}

/// Reads a tag as a semver version; a leading `v` is accepted.
pub fn parse_version(tag: &str) -> Option<Version> {
    Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// An invalid entry of a `tags:` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    /// Key below `tags`, such as `include`.
    pub field: &'static str,
    /// Position in the key's list, for `include` and `exclude`.
    pub index: Option<usize>,
    pub message: String,
}

impl FilterError {
    fn new(field: &'static str, index: Option<usize>, message: String) -> Self {
        FilterError {
            field,
            index,
            message,
        }
    }
}

/// Compiles glob patterns as the tag filters read them: `*` matches any
/// characters, `?` one, `[...]` a class and `{a,b}` alternatives.
pub fn compile_globs(
    field: &'static str,
    patterns: &[String],
    errors: &mut Vec<FilterError>,
) -> Option<GlobSet> {
    if patterns.is_empty() {
        return None;
    }
    let mut builder = GlobSetBuilder::new();
    for (index, pattern) in patterns.iter().enumerate() {
        match Glob::new(pattern) {
            Ok(glob) => {
                builder.add(glob);
            }
            Err(e) => errors.push(FilterError::new(
                field,
                Some(index),
                format!(
                    "invalid glob {pattern:?}: {}; use *, ?, [abc] and {{a,b}}",
                    glob_reason(&e)
                ),
            )),
        }
    }
    builder.build().ok()
}

/// globset's error without the pattern, which the message already quotes.
fn glob_reason(error: &globset::Error) -> String {
    error.kind().to_string()
}

/// The regex crate's multi-line error reduced to its last line, the reason.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .unwrap_or(text)
        .trim_start_matches("error: ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn filter(raw: RawTags) -> TagFilter {
        TagFilter::compile(&raw).unwrap()
    }

    #[test]
    fn include_and_exclude() {
        let f = filter(RawTags {
            include: tags(&["v*", "latest"]),
            exclude: tags(&["*-rc*"]),
            ..Default::default()
        });
        let selected = f.select(&tags(&["v1", "v2-rc1", "latest", "dev"]));
        assert_eq!(selected, tags(&["latest", "v1"]));
    }

    #[test]
    fn latest_orders_by_semver_not_text() {
        let f = filter(RawTags {
            latest: Some(2),
            ..Default::default()
        });
        let selected = f.select(&tags(&[
            "1.9.0",
            "1.10.0",
            "1.2.0",
            "nightly",
            "v1.10.1-rc.1",
        ]));
        assert_eq!(selected, tags(&["1.10.0", "1.9.0"]));
    }

    #[test]
    fn semver_range_accepts_v_prefix() {
        let f = filter(RawTags {
            semver: Some(">=1.2, <2".into()),
            ..Default::default()
        });
        let selected = f.select(&tags(&["v1.2.0", "1.1.9", "2.0.0", "v1.9.9", "latest"]));
        assert_eq!(selected, tags(&["v1.2.0", "v1.9.9"]));
    }

    #[test]
    fn invalid_entries_are_all_reported() {
        let raw = RawTags {
            include: tags(&["a[", "ok"]),
            regex: Some("(".into()),
            semver: Some("><1".into()),
            latest: Some(0),
            ..Default::default()
        };
        assert_eq!(TagFilter::compile(&raw).unwrap_err().len(), 4);
    }
}
