//! Validation of one rule, and of the `defaults:` block it inherits, into
//! the model the planner uses: parsed references, compiled filters and
//! platforms. Every error points at the value at fault.

use std::collections::HashSet;

use globset::GlobSetBuilder;

use super::filter::compile_globs;
use super::load::{expand_value, parse_source, FileContext, RuleSite};
use super::locate::YamlPath;
use super::raw::{RawDefaults, RawRule, RawTags};
use super::{Destination, Diagnostic, FilterError, PlatformSpec, Protect, Rule, Source, TagFilter};
use crate::oci::{redact_userinfo, Repository, Target};

/// Tags prune leaves alone unless a rule sets `protect:`: cosign's
/// signature, attestation and SBOM tags and other `sha256-<hex>` tags that
/// belong to an image by digest.
pub const DEFAULT_PROTECT: [&str; 4] = ["sha256-*", "*.sig", "*.att", "*.sbom"];

/// Inputs that one rule is validated against.
pub(super) struct RuleContext<'a> {
    pub file: &'a FileContext,
    /// Path of the rule, such as `rules[2]`.
    pub path: &'a YamlPath,
    pub default_name: String,
    pub defaults: &'a RawDefaults,
    /// Whether the defaults validated; if not, their errors are already
    /// reported and rules inheriting them are not checked again.
    pub defaults_ok: bool,
}

/// Checks the `defaults:` block on its own, so that its errors are
/// reported once, at its own lines.
pub(super) fn validate_defaults(file: &FileContext, defaults: &RawDefaults) -> Vec<Diagnostic> {
    let path = YamlPath::root().key("defaults");
    let mut errors = Errors::default();
    if let Some(tags) = &defaults.tags {
        check_tags(tags, &path.key("tags"), &mut errors);
    }
    if let Some(platforms) = &defaults.platforms {
        parse_platforms(platforms, &path.key("platforms"), &mut errors);
    }
    if let Some(protect) = &defaults.protect {
        compile_protect(protect, &path.key("protect"), &mut errors);
    }
    errors.into_diagnostics(file, "")
}

/// Validates one rule. Returns the rule when it is valid, and one
/// diagnostic per problem.
pub(super) fn validate_rule(
    context: &RuleContext,
    raw: &RawRule,
) -> (Option<(Rule, RuleSite)>, Vec<Diagnostic>) {
    let path = context.path;
    let name = raw.name.clone().unwrap_or(context.default_name.clone());
    let label = format!(" ({name})");
    let mut errors = Errors::default();
    let source = match expand_value(&raw.source)
        .and_then(|expanded| glob_from_variable(&raw.source, &expanded).map(|()| expanded))
        .and_then(|s| parse_source(&s))
    {
        Ok(source) => Some(source),
        Err(message) => {
            errors.push(path.key("source"), message);
            None
        }
    };
    let destinations = destinations(raw, source.as_ref(), path, &mut errors);
    let tags = rule_tags(context, raw, &mut errors);
    // Errors in inherited defaults are reported once, by validate_defaults.
    let mut inherited_errors = Errors::default();
    let platforms = match (&raw.platforms, &context.defaults.platforms) {
        (Some(own), _) => parse_platforms(own, &path.key("platforms"), &mut errors),
        (None, Some(default)) => parse_platforms(default, path, &mut inherited_errors),
        (None, None) => Vec::new(),
    };
    let protect = match (&raw.protect, &context.defaults.protect) {
        (Some(own), _) => compile_protect(own, &path.key("protect"), &mut errors),
        (None, Some(default)) => compile_protect(default, path, &mut inherited_errors),
        (None, None) => {
            let defaults: Vec<String> = DEFAULT_PROTECT.iter().map(|s| s.to_string()).collect();
            compile_protect(&defaults, path, &mut errors)
        }
    };
    if let (Some(Source::Image { target, .. }), Some(destinations)) = (&source, &destinations) {
        check_digest_platforms(target, destinations, &platforms, path, &mut errors);
    }
    let site = RuleSite {
        destinations: (0..raw.destinations.len())
            .map(|i| {
                let at = path.key("destinations").index(i);
                let diagnostic = context.file.diagnostic(&at, &label, String::new());
                (context.file.place(&at), diagnostic)
            })
            .collect(),
    };
    let diagnostics = errors.into_diagnostics(context.file, &label);
    let overwrite = raw.overwrite.or(context.defaults.overwrite).unwrap_or(true);
    let prune = raw.prune.or(context.defaults.prune).unwrap_or(false);
    let valid = diagnostics.is_empty() && inherited_errors.len() == 0;
    let rule = match (source, destinations, tags, protect) {
        (Some(source), Some(destinations), Some(tags), Some(protect)) if valid => Some(Rule {
            name,
            file: context.file.file.clone(),
            source,
            destinations,
            tags,
            platforms,
            overwrite,
            prune,
            protect,
        }),
        _ => None,
    };
    (rule.map(|rule| (rule, site)), diagnostics)
}

/// Messages collected for one rule or block, each at a path.
#[derive(Default)]
struct Errors(Vec<(YamlPath, String)>);

impl Errors {
    fn push(&mut self, path: YamlPath, message: String) {
        self.0.push((path, message));
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn into_diagnostics(self, file: &FileContext, label: &str) -> Vec<Diagnostic> {
        self.0
            .into_iter()
            .map(|(path, message)| file.diagnostic(&path, label, message))
            .collect()
    }
}

fn destinations(
    raw: &RawRule,
    source: Option<&Source>,
    path: &YamlPath,
    errors: &mut Errors,
) -> Option<Vec<Destination>> {
    let before = errors.len();
    let list_path = path.key("destinations");
    if raw.destinations.is_empty() {
        errors.push(
            list_path.clone(),
            "at least one destination is required, such as `127.0.0.1:5002/mirror/app`".into(),
        );
    }
    let mut seen = HashSet::new();
    let mut destinations = Vec::new();
    for (index, text) in raw.destinations.iter().enumerate() {
        let at = list_path.index(index);
        let text = match expand_value(text) {
            Ok(text) => text,
            Err(message) => {
                errors.push(at, message);
                continue;
            }
        };
        if !seen.insert(text.clone()) {
            let redacted = redact_userinfo(&text);
            errors.push(at, format!("destination {redacted:?} is listed twice"));
            continue;
        }
        match Destination::parse(&text) {
            Ok(d) if d.tag.is_some() && !matches!(source, Some(Source::Image { .. }) | None) => {
                errors.push(at, format!("destination {text:?} has a tag, but only a single-image source (`repo:tag` or `repo@digest`) can be written under another tag"));
            }
            Ok(d) => match source.and_then(|source| overlap(source, &d)) {
                Some(message) => errors.push(at, format!("destination {text:?} {message}")),
                None => destinations.push(d),
            },
            Err(e) => errors.push(at, e),
        }
    }
    (errors.len() == before).then_some(destinations)
}

/// Rejects a source whose glob characters come from a `${VAR}` value: a
/// variable must not turn an exact source into a glob over a catalog.
fn glob_from_variable(written: &str, expanded: &str) -> Result<(), String> {
    let mut literal = String::new();
    let mut rest = written;
    while let Some(start) = rest.find("${") {
        literal.push_str(&rest[..start]);
        rest = match rest[start..].find('}') {
            Some(end) => &rest[start + end + 1..],
            None => "",
        };
    }
    literal.push_str(rest);
    let is_glob = |text: &str| text.contains(['*', '?', '[', '{']);
    if is_glob(expanded) && !is_glob(&literal) {
        return Err(format!(
            "source {written:?} expands to the glob {expanded:?}; write glob characters in the rules file itself, not in a variable"
        ));
    }
    Ok(())
}

/// Explains why `destination` writes into its own source, if it does. Such
/// a rule would rewrite source indexes for `platforms:`, let `prune:`
/// delete source tags, or, for a glob, copy its own copies again on every
/// run.
fn overlap(source: &Source, destination: &Destination) -> Option<String> {
    if destination.registry != source.registry() {
        return None;
    }
    match source {
        Source::Repository { repository, .. } => {
            let mapped = destination.repository_for(source, repository).ok()?;
            (mapped == *repository).then(|| "is the source repository itself".to_string())
        }
        Source::Image {
            repository, target, ..
        } => {
            let mapped = destination.repository_for(source, repository).ok()?;
            let same_tag = match (&destination.tag, target) {
                (None, _) => true,
                (Some(tag), Target::Tag(source_tag)) => tag == source_tag,
                (Some(_), Target::Digest(_)) => false,
            };
            (mapped == *repository && same_tag).then(|| "is the source image itself".to_string())
        }
        Source::Glob { matcher, fixed, .. } => {
            // Probe with paths the glob may match: a destination that maps
            // one of them to a path the glob matches too is inside it.
            let prefix = if fixed.is_empty() {
                String::new()
            } else {
                format!("{fixed}/")
            };
            let inside = ["probe", "probe/name"].iter().any(|probe| {
                let Ok(sample) = Repository::parse(&format!("{prefix}{probe}")) else {
                    return false;
                };
                if !matcher.is_match(sample.as_str()) {
                    return false;
                }
                destination
                    .repository_for(source, &sample)
                    .is_ok_and(|mapped| matcher.is_match(mapped.as_str()))
            });
            let identity = destination.path == "{repo}";
            (inside || identity).then(|| {
                "lies inside the source glob, so each run would copy its own copies again (and prune could delete source tags); write to another registry or a path the glob does not match".to_string()
            })
        }
    }
}

/// Compiles the rule's tag filters merged over the defaults. The rule's
/// own entries are checked alone first, so errors point at its lines.
fn rule_tags(context: &RuleContext, raw: &RawRule, errors: &mut Errors) -> Option<TagFilter> {
    if let Some(tags) = &raw.tags {
        if !check_tags(tags, &context.path.key("tags"), errors) {
            return None;
        }
    }
    if !context.defaults_ok {
        return None;
    }
    let merged = merge_tags(context.defaults.tags.as_ref(), raw.tags.as_ref());
    TagFilter::compile(&merged).ok()
}

/// Compiles `tags` alone, pushing its errors at `path`. Returns whether it
/// is valid.
fn check_tags(tags: &RawTags, path: &YamlPath, errors: &mut Errors) -> bool {
    match TagFilter::compile(tags) {
        Ok(_) => true,
        Err(list) => {
            for FilterError {
                field,
                index,
                message,
            } in list
            {
                let mut at = path.key(field);
                if let Some(index) = index {
                    at = at.index(index);
                }
                errors.push(at, message);
            }
            false
        }
    }
}

/// Rule filters override the defaults field by field.
fn merge_tags(defaults: Option<&RawTags>, rule: Option<&RawTags>) -> RawTags {
    let base = defaults.cloned().unwrap_or_default();
    let Some(rule) = rule else { return base };
    RawTags {
        include: if rule.include.is_empty() {
            base.include
        } else {
            rule.include.clone()
        },
        exclude: if rule.exclude.is_empty() {
            base.exclude
        } else {
            rule.exclude.clone()
        },
        regex: rule.regex.clone().or(base.regex),
        semver: rule.semver.clone().or(base.semver),
        latest: rule.latest.or(base.latest),
    }
}

fn parse_platforms(list: &[String], path: &YamlPath, errors: &mut Errors) -> Vec<PlatformSpec> {
    if list.is_empty() {
        errors.push(
            path.clone(),
            "an empty list would copy nothing; list platforms such as linux/amd64, or remove the key to copy all".into(),
        );
    }
    let mut platforms = Vec::new();
    for (index, text) in list.iter().enumerate() {
        match PlatformSpec::parse(text) {
            Ok(platform) if platforms.contains(&platform) => errors.push(
                path.index(index),
                format!("platform {text:?} is listed twice"),
            ),
            Ok(platform) => platforms.push(platform),
            Err(message) => errors.push(path.index(index), message),
        }
    }
    platforms
}

fn compile_protect(list: &[String], path: &YamlPath, errors: &mut Errors) -> Option<Protect> {
    let mut filter_errors = Vec::new();
    compile_globs("protect", list, &mut filter_errors);
    for error in &filter_errors {
        let at = path.index(error.index.unwrap_or_default());
        errors.push(at, error.message.clone());
    }
    if !filter_errors.is_empty() {
        return None;
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in list {
        builder.add(globset::Glob::new(pattern).ok()?);
    }
    Some(Protect {
        patterns: list.to_vec(),
        matcher: builder.build().ok()?,
    })
}

/// A rewritten index has a digest of its own, so it cannot be written
/// under the source's digest: such a destination needs a tag.
fn check_digest_platforms(
    target: &Target,
    destinations: &[Destination],
    platforms: &[PlatformSpec],
    path: &YamlPath,
    errors: &mut Errors,
) {
    if platforms.is_empty() || !matches!(target, Target::Digest(_)) {
        return;
    }
    for (index, destination) in destinations.iter().enumerate() {
        if destination.tag.is_none() {
            errors.push(
                path.key("destinations").index(index),
                "a digest source with `platforms:` needs a tag on each destination, such as `host/repo:tag`, because selecting platforms rewrites the index and changes its digest".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_from_variable;

    #[test]
    fn variable_cannot_add_glob() {
        assert!(glob_from_variable("h:1/team/${APP}", "h:1/team/*").is_err());
        assert!(glob_from_variable("h:1/${NS}/**", "h:1/team/**").is_ok());
        assert!(glob_from_variable("h:1/team/${APP}", "h:1/team/app").is_ok());
        assert!(glob_from_variable("h:1/team/app", "h:1/team/app").is_ok());
    }
}
