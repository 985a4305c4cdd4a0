//! Property test: random YAML, structured like rules files or not, never
//! makes the rules loader panic. It either loads or returns diagnostics,
//! each naming the file.

use std::path::Path;

use proptest::prelude::*;
use serde_yaml::{Mapping, Value};

/// Scalars that reach the interesting validation paths.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::String("127.0.0.1:9/team/app".into())),
        Just(Value::String("127.0.0.1:9/team/**".into())),
        Just(Value::String("127.0.0.1:9/mirror/{repo}".into())),
        Just(Value::String("127.0.0.1:9/a/b:v1".into())),
        Just(Value::String("127.0.0.1:9/a@sha256:00".into())),
        Just(Value::String("linux/arm64/v8".into())),
        Just(Value::String(">=1.2, <2".into())),
        Just(Value::String("v*".into())),
        Just(Value::String("[".into())),
        Just(Value::String("${UNSET_FUZZ_VARIABLE}".into())),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|n| Value::Number(n.into())),
        "\\PC{0,24}".prop_map(Value::String),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "registries",
            "defaults",
            "rules",
            "name",
            "source",
            "destinations",
            "tags",
            "include",
            "exclude",
            "regex",
            "semver",
            "latest",
            "platforms",
            "overwrite",
            "prune",
            "protect",
            "tls",
            "username",
            "password",
            "max_concurrency",
            "read_timeout",
            "127.0.0.1:9",
        ])
        .prop_map(String::from),
        "[a-z_]{1,10}",
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Sequence),
            prop::collection::vec((key(), inner), 0..6).prop_map(|pairs| {
                let mut mapping = Mapping::new();
                for (k, v) in pairs {
                    mapping.insert(Value::String(k), v);
                }
                Value::Mapping(mapping)
            }),
        ]
    })
}

fn load_text(dir: &Path, text: &str) {
    let path = dir.join("fuzz.yaml");
    std::fs::write(&path, text).unwrap();
    if let Err(error) = syncer::rules::load(&path) {
        assert!(!error.diagnostics.is_empty());
        for diagnostic in &error.diagnostics {
            assert_eq!(diagnostic.file, path);
            assert!(!diagnostic.message.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn structured_yaml_never_panics(document in value()) {
        let dir = tempfile::TempDir::new().unwrap();
        let text = serde_yaml::to_string(&document).unwrap();
        load_text(dir.path(), &text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let dir = tempfile::TempDir::new().unwrap();
        load_text(dir.path(), &text);
    }

    #[test]
    fn mutated_rules_file_never_panics(cut in 0usize..400, insert in "[\\[\\]{}:,\\-'\"\t\n #&*!|>]{0,4}") {
        let dir = tempfile::TempDir::new().unwrap();
        let original = "registries:\n  127.0.0.1:9:\n    tls: disabled\ndefaults:\n  tags: {include: [\"v*\"], latest: 2}\nrules:\n  - name: a\n    source: 127.0.0.1:9/team/app\n    destinations: [127.0.0.1:9/mirror/app]\n    platforms: [linux/amd64]\n    prune: true\n";
        let at = original.char_indices().map(|(i, _)| i).nth(cut % original.len()).unwrap_or(0);
        let text = format!("{}{insert}{}", &original[..at], &original[at..]);
        load_text(dir.path(), &text);
    }
}
