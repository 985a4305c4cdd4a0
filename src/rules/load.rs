//! Loading a rules file or folder into the validated model, collecting
//! every problem instead of stopping at the first.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use globset::GlobBuilder;

use super::raw::{RawFile, RawRegistry, RawRule, RawTags};
use super::settings::connection_settings;
use super::{env, Destination, Diagnostic, Rule, Rules, RulesError, Source, TagFilter};
use crate::oci::{split_registry, split_target, Repository, Target};

/// Characters that make a source path a glob.
const GLOB_CHARS: [char; 4] = ['*', '?', '[', '{'];

/// Loads `path`, a rules file or a folder whose `*.yaml` and `*.yml` files
/// are read in name order. Touches no network.
pub fn load(path: &Path) -> Result<Rules, RulesError> {
    let files = rule_files(path).map_err(|d| RulesError {
        diagnostics: vec![d],
    })?;
    let mut loader = Loader::default();
    for file in &files {
        loader.load_file(file);
    }
    if loader.diagnostics.is_empty() {
        Ok(loader.rules)
    } else {
        Err(RulesError {
            diagnostics: loader.diagnostics,
        })
    }
}

fn rule_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let metadata = std::fs::metadata(path)
        .map_err(|e| Diagnostic::new(path, None, format!("cannot read rules: {e}")))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| Diagnostic::new(path, None, format!("cannot list rules folder: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Diagnostic::new(
            path,
            None,
            "no *.yaml or *.yml rules files in this folder",
        ));
    }
    Ok(files)
}

#[derive(Default)]
struct Loader {
    rules: Rules,
    diagnostics: Vec<Diagnostic>,
    /// Each registry entry as written, with the file that first defined it.
    registry_origins: HashMap<String, (RawRegistry, PathBuf)>,
    names: HashMap<String, PathBuf>,
}

impl Loader {
    fn load_file(&mut self, file: &Path) {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => return self.error(file, None, format!("cannot read file: {e}")),
        };
        let raw: RawFile = match serde_yaml::from_str(&text) {
            Ok(raw) => raw,
            Err(e) => return self.yaml_error(file, &e),
        };
        for (host, registry) in &raw.registries {
            self.add_registry(file, host, registry);
        }
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("rules")
            .to_string();
        for (index, rule) in raw.rules.iter().enumerate() {
            let path = format!("rules[{index}]");
            let default_name = format!("{stem}[{index}]");
            if let Some(rule) =
                self.validate_rule(file, &path, rule, &raw.defaults.tags, default_name)
            {
                self.rules.rules.push(rule);
            }
        }
    }

    fn error(&mut self, file: &Path, path: Option<String>, message: String) {
        self.diagnostics.push(Diagnostic::new(file, path, message));
    }

    fn yaml_error(&mut self, file: &Path, error: &serde_yaml::Error) {
        let mut diagnostic = Diagnostic::new(file, None, yaml_message(error));
        diagnostic.location = error.location().map(|l| (l.line(), l.column()));
        self.diagnostics.push(diagnostic);
    }

    fn add_registry(&mut self, file: &Path, host: &str, raw: &RawRegistry) {
        let path = Some(format!("registries.{host:?}"));
        if let Some((first, origin)) = self.registry_origins.get(host) {
            if first != raw {
                let message = format!("settings differ from those in {}; a registry must be configured the same way in every file", origin.display());
                self.error(file, path, message);
            }
            return;
        }
        self.registry_origins
            .insert(host.to_string(), (raw.clone(), file.to_path_buf()));
        match connection_settings(file, raw) {
            Ok(settings) => {
                self.rules.registries.insert(host.to_string(), settings);
            }
            Err(messages) => {
                for message in messages {
                    self.error(file, path.clone(), message);
                }
            }
        }
    }

    fn validate_rule(
        &mut self,
        file: &Path,
        path: &str,
        raw: &RawRule,
        defaults: &Option<RawTags>,
        default_name: String,
    ) -> Option<Rule> {
        let mut errors = Vec::new();
        let name = raw.name.clone().unwrap_or(default_name);
        if raw.name.is_some() {
            if let Some(first) = self.names.insert(name.clone(), file.to_path_buf()) {
                errors.push(format!(
                    "duplicate rule name {name:?}, also used in {}",
                    first.display()
                ));
            }
        }
        let source = expand(&raw.source, "source", &mut errors)
            .and_then(|s| parse_source(&s).map_err(|e| errors.push(e)).ok());
        if raw.destinations.is_empty() {
            errors.push("destinations: at least one destination is required".to_string());
        }
        let destinations = self.destinations(raw, source.as_ref(), &mut errors);
        let tags = merge_tags(defaults.as_ref(), raw.tags.as_ref());
        let tags = TagFilter::compile(&tags).map_err(|e| errors.extend(e)).ok();
        let label = format!("{path} ({name})");
        for message in errors {
            self.error(file, Some(label.clone()), message);
        }
        Some(Rule {
            name,
            file: file.to_path_buf(),
            source: source?,
            destinations: destinations?,
            tags: tags?,
        })
    }

    fn destinations(
        &self,
        raw: &RawRule,
        source: Option<&Source>,
        errors: &mut Vec<String>,
    ) -> Option<Vec<Destination>> {
        let before = errors.len();
        let mut seen = HashSet::new();
        let mut destinations = Vec::new();
        for text in &raw.destinations {
            let Some(text) = expand(text, "destinations", errors) else {
                continue;
            };
            if !seen.insert(text.clone()) {
                errors.push(format!("destination {text:?} is listed twice"));
                continue;
            }
            match Destination::parse(&text) {
                Ok(d)
                    if d.tag.is_some() && !matches!(source, Some(Source::Image { .. }) | None) =>
                {
                    errors.push(format!("destination {text:?} has a tag, but only a single-image source (`repo:tag` or `repo@digest`) can be written under another tag"));
                }
                Ok(d) => destinations.push(d),
                Err(e) => errors.push(e),
            }
        }
        (errors.len() == before).then_some(destinations)
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

pub(super) fn expand(text: &str, field: &str, errors: &mut Vec<String>) -> Option<String> {
    env::expand(text, |name| std::env::var(name).ok())
        .map_err(|missing| {
            for name in missing {
                errors.push(format!("{field}: environment variable {name} is not set"));
            }
        })
        .ok()
}

/// Parses a rule source: `host/repo`, `host/repo:tag`, `host/repo@digest`
/// or `host/glob`.
fn parse_source(text: &str) -> Result<Source, String> {
    if !text.contains('/') {
        return Err(format!("source {text:?} needs a registry host and a repository path, such as `127.0.0.1:5001/team/app`"));
    }
    let (registry, rest) = split_registry(text);
    if rest.contains(GLOB_CHARS) {
        return parse_glob(registry, &rest, text);
    }
    let (path, target) = split_target(&rest);
    let repository = Repository::parse(path).map_err(|e| format!("source {text:?}: {e}"))?;
    match target {
        None => Ok(Source::Repository {
            registry,
            repository,
        }),
        Some(target) => {
            let target = Target::parse(target).map_err(|e| format!("source {text:?}: {e}"))?;
            Ok(Source::Image {
                registry,
                repository,
                target,
            })
        }
    }
}

fn parse_glob(registry: String, pattern: &str, text: &str) -> Result<Source, String> {
    if pattern.contains(':') || pattern.contains('@') {
        return Err(format!("source {text:?}: a glob source selects repositories and cannot carry a tag or digest; use `tags:` filters"));
    }
    let glob = GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("source {text:?}: invalid glob: {e}"))?;
    let fixed: Vec<&str> = pattern
        .split('/')
        .take_while(|segment| !segment.contains(GLOB_CHARS))
        .collect();
    Ok(Source::Glob {
        registry,
        pattern: pattern.to_string(),
        matcher: glob.compile_matcher(),
        fixed: fixed.join("/"),
    })
}

/// serde_yaml's message without its own ` at line X column Y` suffix, since
/// the location is printed in front.
fn yaml_message(error: &serde_yaml::Error) -> String {
    let text = error.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_kinds() {
        assert!(matches!(
            parse_source("127.0.0.1:5001/ns1/repo1"),
            Ok(Source::Repository { .. })
        ));
        assert!(matches!(
            parse_source("127.0.0.1:5001/ns3/repo4:v3"),
            Ok(Source::Image { .. })
        ));
        let Ok(Source::Glob { fixed, .. }) = parse_source("127.0.0.1:5001/ns2/**") else {
            panic!("expected a glob");
        };
        assert_eq!(fixed, "ns2");
    }

    #[test]
    fn glob_star_does_not_cross_slash() {
        let Ok(Source::Glob { matcher, .. }) = parse_source("127.0.0.1:5001/ns2/*") else {
            panic!("expected a glob");
        };
        assert!(matcher.is_match("ns2/a"));
        assert!(!matcher.is_match("ns2/a/b"));
    }
}
