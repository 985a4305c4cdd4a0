//! Offline comparison of two rules files or folders. Each rule is read as
//! YAML and normalised (defaults merged, keys sorted) without expanding
//! `${VAR}`, so that no secret is needed and none is printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};
use sha2::{Digest, Sha256};

/// Keys of a registry entry whose values are never shown.
const HIDDEN_REGISTRY_KEYS: [&str; 2] = ["username", "password"];

/// Rules of one side, normalised, keyed by rule name.
#[derive(Debug, Default)]
pub struct NormalisedRules {
    pub rules: BTreeMap<String, Mapping>,
    /// Registry settings by host, with credentials hidden.
    pub registries: BTreeMap<String, Value>,
    /// SHA-256 of each registry's settings as written, credentials
    /// included, so that a changed credential counts as a change without
    /// being shown. Never printed.
    registry_fingerprints: BTreeMap<String, String>,
}

/// Error reading one side of the comparison.
#[derive(Debug, thiserror::Error)]
pub enum RulesReadError {
    #[error("{path}: cannot read rules: {cause}")]
    Io {
        path: PathBuf,
        /// Not `source`, so that an error chain shows it only once.
        cause: std::io::Error,
    },
    #[error("{path}: invalid YAML: {cause}")]
    Yaml {
        path: PathBuf,
        /// Not `source`, so that an error chain shows it only once.
        cause: serde_yaml::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// One rule that differs between the sides.
#[derive(Debug, PartialEq, Eq)]
pub enum RuleChange {
    Added(String),
    Removed(String),
    Changed {
        name: String,
        destinations_added: Vec<String>,
        destinations_removed: Vec<String>,
        /// Other changed keys, such as `source` or `tags`.
        fields: Vec<String>,
    },
}

/// Differences between two sides, rule by rule.
#[derive(Debug)]
pub struct RulesChanges {
    pub changes: Vec<RuleChange>,
    pub unchanged: usize,
    /// Hosts whose settings were added, removed or changed.
    pub registries_changed: Vec<String>,
    /// Unified diff of the normalised rules; empty when they are equal.
    pub unified_diff: String,
}

impl NormalisedRules {
    /// Reads a rules file, or a folder's `*.yaml` and `*.yml` files in name
    /// order, naming unnamed rules `<file stem>[<index>]` as `load` does.
    pub fn read(path: &Path) -> Result<Self, RulesReadError> {
        let mut normalised = NormalisedRules::default();
        for file in rule_files(path)? {
            normalised.add_file(&file)?;
        }
        Ok(normalised)
    }

    fn add_file(&mut self, file: &Path) -> Result<(), RulesReadError> {
        let text = std::fs::read_to_string(file).map_err(|source| RulesReadError::Io {
            path: file.to_path_buf(),
            cause: source,
        })?;
        let document: Value =
            serde_yaml::from_str(&text).map_err(|source| RulesReadError::Yaml {
                path: file.to_path_buf(),
                cause: source,
            })?;
        let invalid = |message: String| RulesReadError::Invalid {
            path: file.to_path_buf(),
            message,
        };
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("rules");
        let default_tags = document
            .get("defaults")
            .and_then(|d| d.get("tags"))
            .and_then(Value::as_mapping);
        let rules = document.get("rules").and_then(Value::as_sequence);
        for (index, rule) in rules.into_iter().flatten().enumerate() {
            let Some(rule) = rule.as_mapping() else {
                return Err(invalid(format!("rules[{index}]: expected a mapping")));
            };
            let name = match rule.get("name").and_then(Value::as_str) {
                Some(name) => name.to_string(),
                None => format!("{stem}[{index}]"),
            };
            let normalised = normalise_rule(&name, rule, default_tags);
            if self.rules.insert(name.clone(), normalised).is_some() {
                return Err(invalid(format!("rule name {name:?} is used twice")));
            }
        }
        let registries = document.get("registries").and_then(Value::as_mapping);
        for (host, settings) in registries.into_iter().flatten() {
            let host = host.as_str().unwrap_or_default().to_string();
            let written = serde_yaml::to_string(&sort_keys(settings)).unwrap_or_default();
            let fingerprint = hex::encode(Sha256::digest(written.as_bytes()));
            self.registry_fingerprints.insert(host.clone(), fingerprint);
            self.registries.insert(host, hide_credentials(settings));
        }
        Ok(())
    }

    /// Renders the normalised rules as YAML, rules in name order.
    pub fn to_yaml(&self) -> String {
        let mut document = Mapping::new();
        let registries: Mapping = self
            .registries
            .iter()
            .map(|(host, settings)| (Value::from(host.as_str()), settings.clone()))
            .collect();
        if !registries.is_empty() {
            document.insert("registries".into(), Value::Mapping(registries));
        }
        let rules: Vec<Value> = self.rules.values().cloned().map(Value::Mapping).collect();
        document.insert("rules".into(), Value::Sequence(rules));
        serde_yaml::to_string(&document).expect("YAML values serialise")
    }
}

/// Compares two sides rule by rule, by name.
pub fn compare_rules(
    old: &NormalisedRules,
    new: &NormalisedRules,
    labels: (&str, &str),
) -> RulesChanges {
    let mut changes = Vec::new();
    let mut unchanged = 0;
    for (name, old_rule) in &old.rules {
        match new.rules.get(name) {
            None => changes.push(RuleChange::Removed(name.clone())),
            Some(new_rule) if new_rule == old_rule => unchanged += 1,
            Some(new_rule) => changes.push(rule_change(name, old_rule, new_rule)),
        }
    }
    for name in new.rules.keys() {
        if !old.rules.contains_key(name) {
            changes.push(RuleChange::Added(name.clone()));
        }
    }
    let mut hosts: Vec<String> = old
        .registries
        .keys()
        .chain(new.registries.keys())
        .cloned()
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts.retain(|host| old.registry_fingerprints.get(host) != new.registry_fingerprints.get(host));
    let (old_text, new_text) = (old.to_yaml(), new.to_yaml());
    let unified_diff = if old_text == new_text {
        String::new()
    } else {
        similar::TextDiff::from_lines(&old_text, &new_text)
            .unified_diff()
            .context_radius(3)
            .header(labels.0, labels.1)
            .to_string()
    };
    RulesChanges {
        changes,
        unchanged,
        registries_changed: hosts,
        unified_diff,
    }
}

fn rule_change(name: &str, old: &Mapping, new: &Mapping) -> RuleChange {
    let old_destinations = destinations(old);
    let new_destinations = destinations(new);
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter_map(Value::as_str)
        .filter(|key| *key != "destinations")
        .map(str::to_string)
        .collect();
    keys.sort();
    keys.dedup();
    keys.retain(|key| old.get(key.as_str()) != new.get(key.as_str()));
    RuleChange::Changed {
        name: name.to_string(),
        destinations_added: difference(&new_destinations, &old_destinations),
        destinations_removed: difference(&old_destinations, &new_destinations),
        fields: keys,
    }
}

fn destinations(rule: &Mapping) -> Vec<String> {
    let listed = rule.get("destinations").and_then(Value::as_sequence);
    listed
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Items of `left` missing from `right`, in `left`'s order.
fn difference(left: &[String], right: &[String]) -> Vec<String> {
    left.iter()
        .filter(|item| !right.contains(item))
        .cloned()
        .collect()
}

/// Puts `name`, `source` and `destinations` first and the other keys in
/// name order, with the file's default tag filters merged field by field
/// under the rule's own.
fn normalise_rule(name: &str, rule: &Mapping, default_tags: Option<&Mapping>) -> Mapping {
    let mut out = Mapping::new();
    out.insert("name".into(), name.into());
    for key in ["source", "destinations"] {
        if let Some(value) = rule.get(key) {
            out.insert(key.into(), value.clone());
        }
    }
    let mut rest: BTreeMap<String, Value> = rule
        .iter()
        .filter_map(|(key, value)| Some((key.as_str()?.to_string(), sort_keys(value))))
        .filter(|(key, _)| !matches!(key.as_str(), "name" | "source" | "destinations"))
        .collect();
    if let Some(tags) = merge_tags(default_tags, rest.get("tags").and_then(Value::as_mapping)) {
        rest.insert("tags".into(), sort_keys(&Value::Mapping(tags)));
    }
    for (key, value) in rest {
        out.insert(key.into(), value);
    }
    out
}

/// Rule filters override the defaults field by field; an empty list or a
/// null counts as unset, as in the loader.
fn merge_tags(defaults: Option<&Mapping>, rule: Option<&Mapping>) -> Option<Mapping> {
    let mut merged = defaults.cloned().unwrap_or_default();
    for (key, value) in rule.into_iter().flatten() {
        let unset = value.is_null() || value.as_sequence().is_some_and(Vec::is_empty);
        if !unset {
            merged.insert(key.clone(), value.clone());
        }
    }
    (!merged.is_empty()).then_some(merged)
}

fn sort_keys(value: &Value) -> Value {
    match value {
        Value::Mapping(mapping) => {
            let mut entries: Vec<(Value, Value)> = mapping
                .iter()
                .map(|(key, value)| (key.clone(), sort_keys(value)))
                .collect();
            entries.sort_by(|a, b| a.0.as_str().cmp(&b.0.as_str()));
            Value::Mapping(entries.into_iter().collect())
        }
        Value::Sequence(items) => Value::Sequence(items.iter().map(sort_keys).collect()),
        other => other.clone(),
    }
}

/// Replaces credential values, set or not, with `(hidden)`.
/// Replaces credential values, except a whole `${VAR}` reference, which
/// names a variable and contains no secret. Reviewers can then tell which
/// credentials are written in plain text, and which variable a rule reads.
fn hide_credentials(settings: &Value) -> Value {
    let mut settings = sort_keys(settings);
    if let Some(mapping) = settings.as_mapping_mut() {
        for key in HIDDEN_REGISTRY_KEYS {
            if let Some(value) = mapping.get_mut(key) {
                if !value.as_str().is_some_and(is_variable_reference) {
                    *value = "(plain text, hidden)".into();
                }
            }
        }
    }
    settings
}

/// Returns whether `text` is exactly one `${NAME}` reference.
fn is_variable_reference(text: &str) -> bool {
    text.strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .is_some_and(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn rule_files(path: &Path) -> Result<Vec<PathBuf>, RulesReadError> {
    let io_error = |source| RulesReadError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    if !std::fs::metadata(path).map_err(io_error)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io_error)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> NormalisedRules {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("prod.yaml");
        std::fs::write(&path, text).unwrap();
        NormalisedRules::read(&path).unwrap()
    }

    #[test]
    fn defaults_merge_under_rule_tags() {
        let rules = read(
            "defaults:\n  tags:\n    semver: '>=1'\n    latest: 3\nrules:\n  - source: a/b\n    destinations: [c/d]\n    tags:\n      latest: 5\n",
        );
        let rule = &rules.rules["prod[0]"];
        let tags = rule.get("tags").unwrap();
        assert_eq!(tags.get("latest"), Some(&Value::from(5)));
        assert_eq!(tags.get("semver"), Some(&Value::from(">=1")));
    }

    #[test]
    fn credentials_never_in_yaml() {
        let rules = read(
            "registries:\n  r.example:\n    username: bob\n    password: hunter2\nrules: []\n",
        );
        let yaml = rules.to_yaml();
        assert!(!yaml.contains("hunter2"), "{yaml}");
        assert!(!yaml.contains("bob"), "{yaml}");
    }

    #[test]
    fn credential_change_lists_registry() {
        let old = read(
            "registries:\n  r.example:\n    username: alice\n    password: ${PASS}\nrules: []\n",
        );
        let user = read(
            "registries:\n  r.example:\n    username: bob\n    password: ${PASS}\nrules: []\n",
        );
        let plain =
            read("registries:\n  r.example:\n    username: alice\n    password: pw1\nrules: []\n");

        let renamed = compare_rules(&old, &user, ("old", "new"));
        assert_eq!(renamed.registries_changed, vec!["r.example".to_string()]);
        assert!(
            !renamed.unified_diff.contains("bob"),
            "{}",
            renamed.unified_diff
        );

        let inlined = compare_rules(&old, &plain, ("old", "new"));
        assert_eq!(inlined.registries_changed, vec!["r.example".to_string()]);
        // A variable reference is shown, a plain-text password only as such.
        let diff = &inlined.unified_diff;
        assert!(diff.contains("-    password: ${PASS}"), "{diff}");
        assert!(
            diff.contains("+    password: (plain text, hidden)"),
            "{diff}"
        );
        assert!(!diff.contains("pw1"), "{diff}");

        let same = compare_rules(&old, &old, ("old", "new"));
        assert!(same.registries_changed.is_empty());
    }

    #[test]
    fn changed_rule_names_destinations_and_fields() {
        let old = read("rules:\n  - name: x\n    source: a/b\n    destinations: [c/d, e/f]\n");
        let new = read("rules:\n  - name: x\n    source: a/b\n    destinations: [c/d, g/h]\n    tags:\n      latest: 1\n");
        let changes = compare_rules(&old, &new, ("old", "new"));
        assert_eq!(
            changes.changes,
            vec![RuleChange::Changed {
                name: "x".into(),
                destinations_added: vec!["g/h".into()],
                destinations_removed: vec!["e/f".into()],
                fields: vec!["tags".into()],
            }]
        );
        assert!(
            changes.unified_diff.contains("+  - g/h"),
            "{}",
            changes.unified_diff
        );
    }
}
