//! `syncer schema`: print the JSON Schema of the rules file on stdout.

use super::Exit;

pub fn run() -> anyhow::Result<Exit> {
    print!("{}", crate::rules::schema_json());
    Ok(Exit::Success)
}
