//! `docker-credential-fake`: a docker credential helper for tests.
//!
//! Implements the credential-helper protocol (`get`, `store`, `erase`,
//! `list`, `version`) over a JSON file instead of a keychain:
//!
//! - `FAKE_CREDENTIALS_FILE`: the store, `{"<server URL>": {"Username":
//!   "...", "Secret": "..."}, ...}`. A missing variable or file is an empty
//!   store. Server URLs are matched exactly against stdin (trimmed).
//! - `FAKE_CREDENTIALS_LOG`: if set, one JSON line per call is appended:
//!   `{"action": "get", "server_url": "..."}` (`store` adds `username`; a
//!   secret is never written).
//!
//! `get` prints `{"ServerURL": ..., "Username": ..., "Secret": ...}`; an
//! unknown server prints `credentials not found in native keychain` on
//! stdout and exits 1, like the real helpers.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

const NOT_FOUND: &str = "credentials not found in native keychain";

#[derive(Clone, Serialize, Deserialize)]
struct Entry {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

#[derive(Deserialize)]
struct StoreInput {
    #[serde(rename = "ServerURL")]
    server_url: String,
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

fn load() -> Result<BTreeMap<String, Entry>, String> {
    let Some(path) = std::env::var_os("FAKE_CREDENTIALS_FILE") else {
        return Ok(BTreeMap::new());
    };
    match std::fs::read(&path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(BTreeMap::new()),
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("bad FAKE_CREDENTIALS_FILE: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("cannot read FAKE_CREDENTIALS_FILE: {e}")),
    }
}

fn save(store: &BTreeMap<String, Entry>) -> Result<(), String> {
    let path =
        std::env::var_os("FAKE_CREDENTIALS_FILE").ok_or("FAKE_CREDENTIALS_FILE is not set")?;
    let bytes = serde_json::to_vec_pretty(store).map_err(|e| e.to_string())?;
    std::fs::write(path, bytes).map_err(|e| format!("cannot write FAKE_CREDENTIALS_FILE: {e}"))
}

fn log(entry: serde_json::Value) {
    let Some(path) = std::env::var_os("FAKE_CREDENTIALS_LOG") else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{entry}");
    }
}

fn fail(msg: &str) -> ExitCode {
    println!("{msg}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let action = std::env::args().nth(1).unwrap_or_default();
    let mut input = String::new();
    if matches!(action.as_str(), "get" | "store" | "erase") {
        if let Err(e) = std::io::stdin().read_to_string(&mut input) {
            return fail(&format!("cannot read stdin: {e}"));
        }
    }
    let server = input.trim().to_string();
    let mut store = match load() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    match action.as_str() {
        "get" => {
            log(serde_json::json!({"action": "get", "server_url": server}));
            if server.is_empty() {
                return fail("no credentials server URL");
            }
            match store.get(&server) {
                Some(e) => {
                    let out = serde_json::json!({"ServerURL": server, "Username": e.username, "Secret": e.secret});
                    println!("{out}");
                    ExitCode::SUCCESS
                }
                None => fail(NOT_FOUND),
            }
        }
        "store" => {
            let parsed: StoreInput = match serde_json::from_str(&input) {
                Ok(p) => p,
                Err(e) => {
                    log(serde_json::json!({"action": "store", "server_url": null}));
                    return fail(&format!("bad store input: {e}"));
                }
            };
            log(
                serde_json::json!({"action": "store", "server_url": parsed.server_url, "username": parsed.username}),
            );
            store.insert(
                parsed.server_url,
                Entry {
                    username: parsed.username,
                    secret: parsed.secret,
                },
            );
            match save(&store) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        "erase" => {
            log(serde_json::json!({"action": "erase", "server_url": server}));
            if store.remove(&server).is_none() {
                return fail(NOT_FOUND);
            }
            match save(&store) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        "list" => {
            log(serde_json::json!({"action": "list"}));
            let list: BTreeMap<&String, &String> =
                store.iter().map(|(k, v)| (k, &v.username)).collect();
            println!(
                "{}",
                serde_json::to_string(&list).unwrap_or_else(|_| "{}".into())
            );
            ExitCode::SUCCESS
        }
        "version" => {
            println!("docker-credential-fake (testkit) 0.0.0");
            ExitCode::SUCCESS
        }
        other => {
            log(serde_json::json!({"action": other}));
            fail(&format!("unknown credential action `{other}`"))
        }
    }
}
