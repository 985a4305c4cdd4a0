//! Reading one rules file into raw structs, entry by entry, so that every
//! entry with a wrong key or type is reported in one run and not only the
//! first one serde meets.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::locate::YamlPath;
use super::raw::{RawDefaults, RawRegistry, RawRule, RawTags};

/// Top-level keys of a rules file.
const TOP_LEVEL_KEYS: [&str; 3] = ["registries", "defaults", "rules"];

/// A problem found while reading: where, and what.
#[derive(Debug)]
pub struct ParseError {
    pub path: YamlPath,
    /// Line and column given by serde_yaml, for YAML syntax errors.
    pub location: Option<(usize, usize)>,
    pub message: String,
    /// Index and `name:` of the rule the error is in, if any.
    pub rule: Option<(usize, Option<String>)>,
}

/// The entries of one file that read cleanly.
#[derive(Debug, Default)]
pub struct ParsedFile {
    pub registries: BTreeMap<String, RawRegistry>,
    pub defaults: RawDefaults,
    /// Rules with their index in the file.
    pub rules: Vec<(usize, RawRule)>,
}

/// Parses `text`, keeping every entry that reads cleanly and one error for
/// each entry that does not.
pub fn parse(text: &str) -> (ParsedFile, Vec<ParseError>) {
    let mut errors = Vec::new();
    let mut raw = ParsedFile::default();
    let root = YamlPath::root();
    let value: Value = match serde_yaml::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            errors.push(ParseError {
                path: root,
                location: e.location().map(|l| (l.line(), l.column())),
                message: format!("invalid YAML: {}", yaml_message(&e)),
                rule: None,
            });
            return (raw, errors);
        }
    };
    let mapping = match value {
        Value::Null => return (raw, errors),
        Value::Mapping(mapping) => mapping,
        other => {
            errors.push(error_at(
                root,
                format!(
                    "expected a mapping with the keys {}, found {}",
                    TOP_LEVEL_KEYS.join(", "),
                    kind(&other)
                ),
            ));
            return (raw, errors);
        }
    };
    for (key, value) in mapping {
        let Some(name) = key.as_str() else {
            errors.push(error_at(root.clone(), "top-level keys must be strings"));
            continue;
        };
        let path = root.key(name);
        match name {
            "registries" => raw.registries = registries(value, &path, &mut errors),
            "defaults" => {
                if let Some(defaults) = entry::<RawDefaults>(value, &path, &mut errors) {
                    raw.defaults = defaults;
                }
            }
            "rules" => raw.rules = rules(value, &path, &mut errors),
            other => errors.push(error_at(
                path,
                format!(
                    "unknown key {other:?}; allowed: {}",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            )),
        }
    }
    (raw, errors)
}

fn registries(
    value: Value,
    path: &YamlPath,
    errors: &mut Vec<ParseError>,
) -> BTreeMap<String, RawRegistry> {
    let mut registries = BTreeMap::new();
    let mapping = match value {
        Value::Null => return registries,
        Value::Mapping(mapping) => mapping,
        other => {
            errors.push(error_at(
                path.clone(),
                format!(
                    "expected a mapping from registry host to settings, found {}",
                    kind(&other)
                ),
            ));
            return registries;
        }
    };
    for (key, value) in mapping {
        let host = match key {
            Value::String(host) => host,
            Value::Number(n) => n.to_string(),
            other => {
                errors.push(error_at(
                    path.clone(),
                    format!("registry hosts must be strings, found {}", kind(&other)),
                ));
                continue;
            }
        };
        let entry_path = path.key(&host);
        // `host:` with nothing below it means default settings.
        let value = if value.is_null() {
            Value::Mapping(Mapping::new())
        } else {
            value
        };
        if let Some(registry) = entry::<RawRegistry>(value, &entry_path, errors) {
            registries.insert(host, registry);
        }
    }
    registries
}

fn rules(value: Value, path: &YamlPath, errors: &mut Vec<ParseError>) -> Vec<(usize, RawRule)> {
    let items = match value {
        Value::Null => return Vec::new(),
        Value::Sequence(items) => items,
        other => {
            errors.push(error_at(
                path.clone(),
                format!("expected a list of rules, found {}", kind(&other)),
            ));
            return Vec::new();
        }
    };
    let mut rules = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let name = item.get("name").and_then(Value::as_str).map(str::to_string);
        let before = errors.len();
        if let Some(rule) = entry::<RawRule>(item, &path.index(index), errors) {
            rules.push((index, rule));
        }
        for error in &mut errors[before..] {
            error.rule = Some((index, name.clone()));
        }
    }
    rules
}

/// Deserializes one entry. On failure, finds the field at fault where it
/// can, so the error points at that field's line.
fn entry<T: DeserializeOwned + Probe>(
    value: Value,
    path: &YamlPath,
    errors: &mut Vec<ParseError>,
) -> Option<T> {
    match serde_yaml::from_value::<T>(value.clone()) {
        Ok(entry) => Some(entry),
        Err(e) => {
            let message = yaml_message(&e);
            let field_path = field_at_fault(&message, &value, path, T::probe);
            errors.push(error_at(field_path, message));
            None
        }
    }
}

/// Raw structs whose fields can be deserialized one at a time, to find the
/// field at fault in an entry that failed as a whole.
pub trait Probe {
    /// Tries to read `value` as the field `key`; an unknown key is `Ok`.
    fn probe(key: &str, value: &Value) -> Result<(), serde_yaml::Error>;
}

fn field_at_fault(
    message: &str,
    value: &Value,
    path: &YamlPath,
    probe: fn(&str, &Value) -> Result<(), serde_yaml::Error>,
) -> YamlPath {
    let Value::Mapping(mapping) = value else {
        return path.clone();
    };
    if let Some(field) = quoted_after(message, "unknown field `") {
        if mapping.contains_key(field.as_str()) {
            return path.key(&field);
        }
    }
    for (key, value) in mapping {
        let Some(key) = key.as_str() else { continue };
        if probe(key, value).is_err() {
            // A `tags:` block is one level deeper: find its field too.
            if key == "tags" {
                return field_at_fault(message, value, &path.key(key), probe_tags);
            }
            return path.key(key);
        }
    }
    path.clone()
}

fn probe_tags(key: &str, value: &Value) -> Result<(), serde_yaml::Error> {
    match key {
        "include" | "exclude" => check::<Vec<String>>(value),
        "regex" | "semver" => check::<Option<String>>(value),
        "latest" => check::<Option<usize>>(value),
        _ => Ok(()),
    }
}

fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let start = message.find(prefix)? + prefix.len();
    let end = message[start..].find('`')?;
    Some(message[start..start + end].to_string())
}

fn check<T: DeserializeOwned>(value: &Value) -> Result<(), serde_yaml::Error> {
    serde_yaml::from_value::<T>(value.clone()).map(|_| ())
}

impl Probe for RawRule {
    fn probe(key: &str, value: &Value) -> Result<(), serde_yaml::Error> {
        match key {
            "name" => check::<Option<String>>(value),
            "source" => check::<String>(value),
            "destinations" => check::<Vec<String>>(value),
            "tags" => check::<Option<RawTags>>(value),
            "platforms" | "protect" => check::<Option<Vec<String>>>(value),
            "overwrite" | "prune" => check::<Option<bool>>(value),
            _ => Ok(()),
        }
    }
}

impl Probe for RawDefaults {
    fn probe(key: &str, value: &Value) -> Result<(), serde_yaml::Error> {
        RawRule::probe(key, value)
    }
}

impl Probe for RawRegistry {
    fn probe(key: &str, value: &Value) -> Result<(), serde_yaml::Error> {
        match key {
            "max_concurrency" => check::<Option<usize>>(value),
            "requests_per_second" => check::<Option<f64>>(value),
            "retries" => check::<Option<u32>>(value),
            "connect_timeout" | "read_timeout" => {
                super::raw::duration_text(value.clone()).map(|_| ())
            }
            _ => check::<Option<String>>(value),
        }
    }
}

fn error_at(path: YamlPath, message: impl Into<String>) -> ParseError {
    ParseError {
        path,
        location: None,
        message: message.into(),
        rule: None,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// serde_yaml's message without its own ` at line X column Y` suffix, since
/// the location is printed in front.
pub fn yaml_message(error: &serde_yaml::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    // Name Rust's number types the way a YAML author thinks of them.
    let mut text = text;
    for (rust, plain) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
    ] {
        text = text.replace(rust, plain);
    }
    text
}
