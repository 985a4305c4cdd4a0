//! Loading a rules file or folder into the validated model, collecting
//! every problem, each with its file, line and column, instead of stopping
//! at the first.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use globset::GlobBuilder;

use super::conflicts::{find_conflicts, Conflict};
use super::locate::{Locations, NestingTooDeep, YamlPath, MAX_NESTING};
use super::parse::{parse, ParsedFile};
use super::raw::{RawDefaults, RawRegistry};
use super::settings::connection_settings;
use super::validate::{validate_defaults, validate_rule, RuleContext};
use super::{env, Diagnostic, Rules, RulesError, Source};
use crate::oci::{
    check_registry_host, redact_userinfo, split_registry, split_target, Repository, Target,
};

/// Characters that make a source path a glob.
const GLOB_CHARS: [char; 4] = ['*', '?', '[', '{'];

/// Keys of a `registries:` entry, used to point a settings error at its key.
const REGISTRY_KEYS: [&str; 11] = [
    "tls",
    "ca_file",
    "cert_file",
    "key_file",
    "username",
    "password",
    "max_concurrency",
    "requests_per_second",
    "connect_timeout",
    "read_timeout",
    "retries",
];

/// Loads `path`, a rules file or a folder whose `*.yaml` and `*.yml` files,
/// in any letter case, are read in name order. Touches no network. Rules
/// that contain no rule load as empty, so callers decide whether that is
/// an error.
pub fn load(path: &Path) -> Result<Rules, RulesError> {
    let files = rule_files(path).map_err(|diagnostics| RulesError { diagnostics })?;
    let mut loader = Loader::default();
    for file in &files {
        loader.load_file(file);
    }
    loader.report_conflicts();
    if loader.diagnostics.is_empty() {
        warn_unused_registries(&loader.rules);
        Ok(loader.rules)
    } else {
        Err(RulesError {
            diagnostics: loader.diagnostics,
        })
    }
}

/// Warns about each `registries:` entry that no source or destination
/// names: it is most likely a misspelt host, whose settings (`tls:`, say)
/// then silently do not apply.
fn warn_unused_registries(rules: &Rules) {
    let used: HashSet<&str> = rules
        .rules
        .iter()
        .flat_map(|rule| {
            std::iter::once(rule.source.registry())
                .chain(rule.destinations.iter().map(|d| d.registry.as_str()))
        })
        .collect();
    for host in rules.registries.keys() {
        if !used.contains(host.as_str()) {
            tracing::warn!(
                registry = %host,
                "registry is configured but no rule uses it; its host must be spelt exactly as in sources and destinations"
            );
        }
    }
}

fn rule_files(path: &Path) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    let metadata = std::fs::metadata(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "; give a rules file or folder as the RULES argument (the default is `rules` in the current folder)"
        } else {
            ""
        };
        vec![Diagnostic::new(
            path,
            None,
            format!("cannot read rules: {e}{hint}"),
        )]
    })?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| {
        vec![Diagnostic::new(
            path,
            None,
            format!("cannot list rules folder: {e}"),
        )]
    })?;
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for entry in entries {
        let file = match entry {
            Ok(entry) => entry.path(),
            Err(e) => {
                let message = format!("cannot list rules folder: {e}");
                problems.push(Diagnostic::new(path, None, message));
                continue;
            }
        };
        if !has_rules_extension(&file) {
            continue;
        }
        match check_rules_file(&file) {
            Ok(()) => files.push(file),
            Err(message) => problems.push(Diagnostic::new(&file, None, message)),
        }
    }
    if !problems.is_empty() {
        problems.sort_by(|a, b| a.file.cmp(&b.file));
        return Err(problems);
    }
    files.sort();
    if files.is_empty() {
        return Err(vec![Diagnostic::new(
            path,
            None,
            "no *.yaml or *.yml rules files in this folder",
        )]);
    }
    Ok(files)
}

/// Returns whether `file` ends in `.yaml` or `.yml`, in any letter case.
fn has_rules_extension(file: &Path) -> bool {
    file.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Checks that a rules file of a folder can be read, following symbolic
/// links, so that a broken link fails the load instead of dropping rules.
fn check_rules_file(file: &Path) -> Result<(), String> {
    match std::fs::metadata(file) {
        Ok(metadata) if metadata.is_file() => Ok(()),
        Ok(_) => Err("not a regular file; a rules folder may contain only rules files under *.yaml and *.yml names".into()),
        Err(e) => match std::fs::read_link(file) {
            Ok(target) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "cannot read rules file: it is a symbolic link to {}, which does not exist; fix or remove the link",
                target.display()
            )),
            _ => Err(format!("cannot read rules file: {e}")),
        },
    }
}

/// One file being loaded, with the positions of its values.
pub(super) struct FileContext {
    pub file: PathBuf,
    pub locations: Locations,
}

impl FileContext {
    /// Builds a diagnostic for the value at `path`; `label` follows the
    /// path, such as the rule's name.
    pub fn diagnostic(&self, path: &YamlPath, label: &str, message: String) -> Diagnostic {
        let shown = path.to_string();
        Diagnostic {
            file: self.file.clone(),
            location: self.locations.find(path),
            path: (!shown.is_empty()).then(|| format!("{shown}{label}")),
            message,
        }
    }

    /// `file:line:col` of the value at `path`, for messages naming a place.
    pub fn place(&self, path: &YamlPath) -> String {
        match self.locations.find(path) {
            Some((line, column)) => format!("{}:{line}:{column}", self.file.display()),
            None => self.file.display().to_string(),
        }
    }
}

/// Returns a file's name without its extension, used in default rule names.
fn file_stem(file: &Path) -> String {
    file.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("rules")
        .to_string()
}

/// Positions of a loaded rule's destinations, for conflict messages.
pub(super) struct RuleSite {
    /// `file:line:col` of each destination entry, in order.
    pub destinations: Vec<(String, Diagnostic)>,
}

#[derive(Default)]
struct Loader {
    rules: Rules,
    diagnostics: Vec<Diagnostic>,
    /// Each registry entry as written, with the place that first defined it.
    registry_origins: HashMap<String, (RawRegistry, String)>,
    /// Each rule name given, with the place that first used it.
    names: HashMap<String, String>,
    /// Parallel to `rules.rules`.
    sites: Vec<RuleSite>,
}

impl Loader {
    fn load_file(&mut self, file: &Path) {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                let message = format!("cannot read file: {e}");
                return self.diagnostics.push(Diagnostic::new(file, None, message));
            }
        };
        let locations = match Locations::parse(&text) {
            Ok(locations) => locations,
            Err(NestingTooDeep { line, column }) => {
                let message = format!("invalid YAML: nested deeper than {MAX_NESTING} levels; valid rules nest at most 5 levels, so look here for a long run of `- `, `[` or indented keys");
                let mut diagnostic = Diagnostic::new(file, None, message);
                diagnostic.location = Some((line, column));
                return self.diagnostics.push(diagnostic);
            }
        };
        let context = FileContext {
            file: file.to_path_buf(),
            locations,
        };
        let first = self.diagnostics.len();
        let (raw, errors) = parse(&text);
        for error in errors {
            // The label names the rule as validation errors do: its
            // `name:`, else `<file stem>[<index>]`.
            let label = match &error.rule {
                Some((_, Some(name))) => format!(" ({name})"),
                Some((index, None)) => format!(" ({}[{index}])", file_stem(file)),
                None => String::new(),
            };
            let mut diagnostic = context.diagnostic(&error.path, &label, error.message);
            if error.location.is_some() {
                diagnostic.location = error.location;
            }
            self.diagnostics.push(diagnostic);
        }
        self.load_parsed(&context, raw);
        // Report a file's problems in the order they appear in it.
        self.diagnostics[first..].sort_by_key(|d| d.location.unwrap_or((usize::MAX, 0)));
    }

    fn load_parsed(&mut self, context: &FileContext, raw: ParsedFile) {
        let root = YamlPath::root();
        for (host, registry) in &raw.registries {
            self.add_registry(context, &root.key("registries").key(host), host, registry);
        }
        let defaults_ok = self.check_defaults(context, &raw.defaults);
        let stem = file_stem(&context.file);
        for (index, rule) in &raw.rules {
            let path = root.key("rules").index(*index);
            if let Some(name) = &rule.name {
                self.check_name(context, &path, name);
            }
            let rule_context = RuleContext {
                file: context,
                path: &path,
                default_name: format!("{stem}[{index}]"),
                defaults: &raw.defaults,
                defaults_ok,
            };
            let (validated, diagnostics) = validate_rule(&rule_context, rule);
            self.diagnostics.extend(diagnostics);
            if let Some((rule, site)) = validated {
                self.rules.rules.push(rule);
                self.sites.push(site);
            }
        }
    }

    fn check_defaults(&mut self, context: &FileContext, defaults: &RawDefaults) -> bool {
        let diagnostics = validate_defaults(context, defaults);
        let ok = diagnostics.is_empty();
        self.diagnostics.extend(diagnostics);
        ok
    }

    fn check_name(&mut self, context: &FileContext, path: &YamlPath, name: &str) {
        let name_path = path.key("name");
        let place = context.place(&name_path);
        // Names reach terminals, logs and pull-request comments as written.
        let allowed = |c: char| c.is_alphanumeric() || " -_.:/".contains(c);
        if name.is_empty() || !name.chars().all(allowed) {
            let message =
                format!("invalid rule name {name:?}; use letters, digits, spaces and - _ . : /");
            self.diagnostics
                .push(context.diagnostic(&name_path, "", message));
            return;
        }
        if let Some(first) = self.names.get(name) {
            let message = format!("duplicate rule name {name:?}, first used at {first}; rule names must be unique across all files");
            self.diagnostics
                .push(context.diagnostic(&name_path, "", message));
        } else {
            self.names.insert(name.to_string(), place);
        }
    }

    fn add_registry(
        &mut self,
        context: &FileContext,
        path: &YamlPath,
        host: &str,
        raw: &RawRegistry,
    ) {
        if let Err(reason) = check_registry_host(host) {
            // The path names the key, so it is rebuilt with any password hidden.
            let mut diagnostic =
                context.diagnostic(path, "", format!("invalid registry host: {reason}"));
            diagnostic.path = Some(
                YamlPath::root()
                    .key("registries")
                    .key(&redact_userinfo(host))
                    .to_string(),
            );
            self.diagnostics.push(diagnostic);
            return;
        }
        if let Some((first, origin)) = self.registry_origins.get(host) {
            if first != raw {
                let message = format!("settings of {host} differ from those at {origin}; a registry must be configured the same way in every file");
                self.diagnostics.push(context.diagnostic(path, "", message));
            }
            return;
        }
        self.registry_origins
            .insert(host.to_string(), (raw.clone(), context.place(path)));
        match connection_settings(&context.file, raw) {
            Ok(settings) => {
                self.rules.registries.insert(host.to_string(), settings);
            }
            Err(messages) => {
                for message in messages {
                    let (field_path, message) = registry_field(path, message);
                    self.diagnostics
                        .push(context.diagnostic(&field_path, "", message));
                }
            }
        }
    }

    /// Reports pairs of rules that the patterns alone show to write the
    /// same destination reference. Others are found at plan time.
    fn report_conflicts(&mut self) {
        for Conflict {
            first,
            second,
            message,
        } in find_conflicts(&self.rules.rules)
        {
            let (first_place, _) = &self.sites[first.0].destinations[first.1];
            let (_, diagnostic) = &self.sites[second.0].destinations[second.1];
            let mut diagnostic = diagnostic.clone();
            diagnostic.message = format!("{message}; the other destination is at {first_place}");
            self.diagnostics.push(diagnostic);
        }
    }
}

/// Splits `field: message` from connection settings into the field's path
/// and the message.
fn registry_field(path: &YamlPath, message: String) -> (YamlPath, String) {
    if let Some((field, rest)) = message.split_once(": ") {
        if REGISTRY_KEYS.contains(&field) {
            return (path.key(field), rest.to_string());
        }
    }
    (path.clone(), message)
}

/// Expands `${VAR}` in a rules value, naming every unset variable.
pub(super) fn expand_value(text: &str) -> Result<String, String> {
    env::expand(text, |name| std::env::var(name).ok()).map_err(|missing| {
        let names = missing.join(", ");
        format!("environment variable {names} is not set; set it or write $${{ for a literal ${{")
    })
}

/// Expands `${VAR}` in a connection setting, pushing `field: message` for
/// every unset variable.
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
pub(super) fn parse_source(text: &str) -> Result<Source, String> {
    if !text.contains('/') {
        return Err(format!("source {text:?} needs a registry host and a repository path, such as `127.0.0.1:5001/team/app`"));
    }
    let (registry, rest) = split_registry(text);
    check_registry_host(&registry).map_err(|reason| {
        format!(
            "source {:?} has an invalid registry host: {reason}",
            redact_userinfo(text)
        )
    })?;
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
    fn source_host_error_hides_password() {
        let error = parse_source("127.0.0.1:65536/ns/app").unwrap_err();
        assert!(error.contains("port \"65536\""), "{error}");
        let error = parse_source("alice:s3cret@127.0.0.1:5001/ns/**").unwrap_err();
        assert!(error.contains("***@127.0.0.1:5001/ns/**"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn glob_star_does_not_cross_slash() {
        let Ok(Source::Glob { matcher, .. }) = parse_source("127.0.0.1:5001/ns2/*") else {
            panic!("expected a glob");
        };
        assert!(matcher.is_match("ns2/a"));
        assert!(!matcher.is_match("ns2/a/b"));
    }

    #[test]
    fn deep_nesting_is_a_located_error() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("deep.yaml");
        let text = format!("rules:\n  {}x\n", "- ".repeat(2800));
        std::fs::write(&file, text).unwrap();

        let error = load(&file).expect_err("2800 nested sequences are invalid");

        assert_eq!(error.diagnostics.len(), 1, "{:?}", error.diagnostics);
        let diagnostic = &error.diagnostics[0];
        assert!(
            diagnostic.message.contains("nested deeper than 64 levels"),
            "{}",
            diagnostic.message
        );
        assert_eq!(diagnostic.location, Some((2, 129)));
    }
}
