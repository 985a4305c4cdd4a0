//! Credentials for registries: from the rules file, else docker's
//! `config.json` (`auths`, `credHelpers`, `credsStore`), else anonymous.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use serde::Deserialize;

use super::RegistryError;

/// A secret string whose `Debug` and `Display` never show its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Returns the secret value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Credentials for one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: Secret,
    },
    /// An OAuth2 refresh token that docker stores as `identitytoken`.
    IdentityToken {
        username: String,
        token: Secret,
    },
}

impl Credentials {
    /// Returns the user name, which is safe to show in messages.
    pub fn username(&self) -> &str {
        match self {
            Credentials::Basic { username, .. } | Credentials::IdentityToken { username, .. } => {
                username
            }
        }
    }
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Key under which docker stores Docker Hub's credentials.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// Looks up credentials for `registry` in docker's `config.json`. A missing
/// file means anonymous access; an unreadable one is an error.
pub fn from_docker_config(registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let Some(path) = config_path() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(settings_error(
                registry,
                format!("cannot read {}: {e}", path.display()),
            ))
        }
    };
    let config: DockerConfig = serde_json::from_str(&text)
        .map_err(|e| settings_error(registry, format!("invalid {}: {e}", path.display())))?;
    lookup(&config, registry)
}

fn lookup(config: &DockerConfig, registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let key = config_key(registry);
    if let Some(helper) = config.cred_helpers.get(&key) {
        return run_helper(helper, &key, registry);
    }
    let entry = config
        .auths
        .iter()
        .find(|(k, _)| normalize_key(k) == normalize_key(&key));
    if let Some((_, entry)) = entry {
        return entry_credentials(entry, registry).map(Some);
    }
    match &config.creds_store {
        Some(store) => run_helper(store, &key, registry),
        None => Ok(None),
    }
}

/// Docker keys Docker Hub by its v1 index URL and others by host.
fn config_key(registry: &str) -> String {
    if registry == crate::oci::DOCKER_HUB {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// Strips a scheme and path so `https://host:5000/v1/` matches `host:5000`.
fn normalize_key(key: &str) -> &str {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    without_scheme.split('/').next().unwrap_or(without_scheme)
}

fn entry_credentials(entry: &AuthEntry, registry: &str) -> Result<Credentials, RegistryError> {
    let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                settings_error(
                    registry,
                    "docker config `auth` is not base64 of `user:password`".into(),
                )
            })?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| settings_error(registry, "docker config `auth` has no `:`".into()))?;
        username = Some(user.to_string());
        password = Some(pass.to_string());
    }
    if let Some(token) = &entry.identitytoken {
        return Ok(Credentials::IdentityToken {
            username: username.unwrap_or_default(),
            token: Secret::new(token.clone()),
        });
    }
    match (username, password) {
        (Some(username), Some(password)) => Ok(Credentials::Basic {
            username,
            password: Secret::new(password),
        }),
        _ => Err(settings_error(
            registry,
            "docker config entry has neither `auth` nor username and password".into(),
        )),
    }
}

/// Runs `docker-credential-<helper> get` with the server on stdin.
fn run_helper(
    helper: &str,
    key: &str,
    registry: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            settings_error(
                registry,
                format!("cannot run credential helper {program}: {e}"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(key.as_bytes());
    }
    let output = child.wait_with_output().map_err(|e| {
        settings_error(registry, format!("credential helper {program} failed: {e}"))
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        return Err(settings_error(
            registry,
            format!("credential helper {program} exited with {}", output.status),
        ));
    }
    let reply: HelperReply = serde_json::from_str(&stdout).map_err(|e| {
        settings_error(
            registry,
            format!("credential helper {program} returned invalid JSON: {e}"),
        )
    })?;
    // Docker's helpers return the username `<token>` for identity tokens.
    if reply.username == "<token>" {
        return Ok(Some(Credentials::IdentityToken {
            username: String::new(),
            token: Secret::new(reply.secret),
        }));
    }
    Ok(Some(Credentials::Basic {
        username: reply.username,
        password: Secret::new(reply.secret),
    }))
}

fn settings_error(registry: &str, reason: String) -> RegistryError {
    RegistryError::Settings {
        registry: registry.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let creds = Credentials::Basic {
            username: "u".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{creds:?}").contains("hunter2"));
    }

    #[test]
    fn auths_entry_decodes_base64() {
        let config: DockerConfig = serde_json::from_str(
            r#"{"auths":{"https://127.0.0.1:5000/v1/":{"auth":"dXNlcjpwYXNz"}}}"#,
        )
        .unwrap();
        let creds = lookup(&config, "127.0.0.1:5000").unwrap().unwrap();
        let Credentials::Basic { username, password } = creds else {
            panic!("expected basic credentials");
        };
        assert_eq!(username, "user");
        assert_eq!(password.expose(), "pass");
    }

    #[test]
    fn docker_hub_uses_index_key() {
        assert_eq!(config_key("docker.io"), DOCKER_HUB_KEY);
    }
}
