//! The JSON Schema of a rules file, derived from the raw serde structs so
//! the schema and the parser accept the same keys.

use super::raw::RawFile;

/// Renders the JSON Schema of a rules file, pretty-printed with a trailing
/// newline.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(RawFile);
    let mut text = serde_json::to_string_pretty(&schema).expect("schema serialises to JSON");
    text.push('\n');
    text
}
