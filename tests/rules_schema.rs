//! `syncer schema`: the printed JSON Schema matches the committed
//! `schema/rules.schema.json`, every example in `rules/` validates against
//! it and points at it, and a file with an unknown key does not validate.

mod common;

use common::Syncer;
use serde_json::Value;

fn printed_schema() -> Value {
    let run = Syncer::new().run(&["schema"]).expect_code(0);
    serde_json::from_str(&run.stdout).expect("schema is JSON")
}

fn yaml_as_json(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    serde_json::to_value(yaml).unwrap()
}

fn examples() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir("rules")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn committed_schema_is_current() {
    let committed = std::fs::read_to_string("schema/rules.schema.json").unwrap();
    let committed: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(
        committed,
        printed_schema(),
        "run `syncer schema > schema/rules.schema.json`"
    );
}

#[test]
fn examples_validate_against_schema() {
    let validator = jsonschema::validator_for(&printed_schema()).unwrap();
    assert!(!examples().is_empty());
    for path in examples() {
        let errors: Vec<String> = validator
            .iter_errors(&yaml_as_json(&path))
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}

#[test]
fn examples_point_at_schema() {
    for path in examples() {
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            "# yaml-language-server: $schema=../schema/rules.schema.json",
            "{}",
            path.display()
        );
    }
}

#[test]
fn schema_rejects_unknown_keys_and_types() {
    let validator = jsonschema::validator_for(&printed_schema()).unwrap();
    for path in [
        "tests/rules/broken/03-unknown-rule-key.yaml",
        "tests/rules/broken/20-overwrite-wrong-type.yaml",
        "tests/rules/broken/09-latest-zero.yaml",
    ] {
        let instance = yaml_as_json(std::path::Path::new(path));
        assert!(!validator.is_valid(&instance), "{path} validated");
    }
}
