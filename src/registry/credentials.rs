//! Credentials for registries: from the rules file, else docker's
//! `config.json` (`auths`, `credHelpers`, `credsStore`), else anonymous.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// Maximum time a docker credential helper may run. Without it, a helper
/// that waits for a keychain to be unlocked, or for input, would block
/// the run forever.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

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
    let output = run_program(&program, key, HELPER_TIMEOUT)
        .map_err(|reason| settings_error(registry, reason))?;
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

/// Runs `program get` with `key` on stdin and returns its exit status and
/// output. A helper still running after `timeout`, or still holding its
/// output open, is killed, and only that process: a child it started may
/// live on.
fn run_program(program: &str, key: &str, timeout: Duration) -> Result<Output, String> {
    let deadline = Instant::now() + timeout;
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run credential helper {program}: {e}"))?;

    // The key is far smaller than a pipe's buffer, so this write returns
    // even when the helper never reads it.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(key.as_bytes());
    }
    let output = child.stdout.take().map(read_in_background);

    let timed_out = |child: &mut Child| {
        stop(child);
        format!(
            "credential helper {program} timed out after {}s and was stopped; check that `{program} get` returns at once in a shell, or remove it from docker's config.json",
            timeout.as_secs()
        )
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    let stdout = match output.map(|receiver| receiver.recv_timeout(remaining)) {
        None => Vec::new(),
        Some(Ok(Ok(bytes))) => bytes,
        Some(Ok(Err(e))) => {
            stop(&mut child);
            return Err(format!(
                "cannot read the output of credential helper {program}: {e}"
            ));
        }
        Some(Err(_)) => return Err(timed_out(&mut child)),
    };

    loop {
        let status = child
            .try_wait()
            .map_err(|e| format!("credential helper {program} failed: {e}"))?;
        if let Some(status) = status {
            return Ok(Output {
                status,
                stdout,
                stderr: Vec::new(),
            });
        }
        if Instant::now() >= deadline {
            return Err(timed_out(&mut child));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `stdout` to its end on a thread of its own, so a helper that
/// never closes it cannot block the caller past its deadline.
fn read_in_background(mut stdout: ChildStdout) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let read = stdout.read_to_end(&mut bytes).map(|_| bytes);
        let _ = sender.send(read);
    });
    receiver
}

/// Kills a helper by its handle and reaps it.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
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

    /// Writes an executable shell script, to stand in for a helper.
    fn script(dir: &std::path::Path, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;

        let path = dir.join("docker-credential-test");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_string()
    }

    #[test]
    fn helper_output_is_returned() {
        let dir = tempfile::TempDir::new().unwrap();
        let program = script(
            dir.path(),
            r#"read server; echo "{\"Username\":\"u\",\"Secret\":\"$server\"}""#,
        );

        let output = run_program(&program, "127.0.0.1:5000\n", Duration::from_secs(10)).unwrap();

        assert!(output.status.success());
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            stdout.trim(),
            r#"{"Username":"u","Secret":"127.0.0.1:5000"}"#
        );
    }

    #[test]
    fn hanging_helper_is_killed() {
        let dir = tempfile::TempDir::new().unwrap();
        let program = script(dir.path(), "exec sleep 60");
        let started = Instant::now();

        let error = run_program(&program, "127.0.0.1:5000", Duration::from_secs(1)).unwrap_err();

        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(error.contains("timed out after 1s"), "{error}");
    }

    #[test]
    fn helper_grandchild_is_not_awaited() {
        let dir = tempfile::TempDir::new().unwrap();
        // The shell waits for `sleep`, which keeps stdout open after the
        // shell itself is killed.
        let program = script(dir.path(), "sleep 8; true");
        let started = Instant::now();

        let error = run_program(&program, "127.0.0.1:5000", Duration::from_secs(1)).unwrap_err();

        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(error.contains("timed out after 1s"), "{error}");
    }
}
