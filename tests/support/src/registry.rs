//! Real `docker-registry` processes (Docker Distribution 2.8.2) on loopback.
//!
//! Owns: [`Registry`] (one child process per instance, its config, storage,
//! htpasswd file, copies of its TLS material and its log, all in a private
//! `TempDir`), [`RegistryOptions`], [`TokenAuthConfig`] and the access-log
//! reader ([`AccessLogEntry`], [`Registry::count_requests`]).
//!
//! Every instance listens on `127.0.0.1:<free port>` and nowhere else; the
//! Debian service (`:5000` on every interface) is never started. The binary
//! is `/usr/bin/docker-registry`, or `$TESTKIT_REGISTRY_BIN` when set.
//!
//! Everything is blocking and safe to call from parallel `#[test]` threads,
//! and also from inside a tokio runtime (blocking work then moves to a scoped
//! helper thread, so reqwest's blocking client does not panic).

use std::collections::HashSet;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::certs::CertPair;

/// `auth.token` settings for a registry that trusts a token server.
#[derive(Clone, Debug)]
pub struct TokenAuthConfig {
    /// Token endpoint URL, sent to clients in the bearer challenge.
    pub realm: String,
    /// Value of the `service` parameter and the JWT audience.
    pub service: String,
    /// JWT issuer the registry expects.
    pub issuer: String,
    /// PEM bundle with the certificate whose key signs the tokens.
    pub rootcertbundle: PathBuf,
}

/// How to configure one registry instance. `Default` is plain HTTP, no
/// auth, deletes enabled.
///
/// `htpasswd` and `token` are mutually exclusive (Distribution takes one
/// auth method); [`Registry::start_with`] panics when both are set.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// One `(user, password)` written as a bcrypt (`$2a$`, cost 4) htpasswd
    /// entry; the registry then answers 401 with a Basic challenge
    /// (realm `testkit`) to requests without those credentials.
    pub htpasswd: Option<(String, String)>,
    /// Serve HTTPS (HTTP/2 via ALPN) with this certificate and key.
    pub tls: Option<CertPair>,
    /// Require client certificates signed by the CA in this PEM file
    /// (`http.tls.clientcas`). Only meaningful together with `tls`.
    pub client_ca: Option<PathBuf>,
    /// Trust bearer tokens from a token server (`auth.token`).
    pub token: Option<TokenAuthConfig>,
    /// `storage.delete.enabled`; when false, DELETE answers 405.
    pub delete_enabled: bool,
    /// `compatibility.schema1.enabled`: accept Docker schema1 manifest
    /// pushes (2.8.2 rejects them otherwise).
    pub schema1: bool,
    /// `validation.manifests.urls.allow: [^https?://]`: accept manifests
    /// with foreign layers that carry `urls` (2.8.2 otherwise looks for
    /// the layer in its store and answers `MANIFEST_BLOB_UNKNOWN`).
    pub foreign_urls: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            htpasswd: None,
            tls: None,
            client_ca: None,
            token: None,
            delete_enabled: true,
            schema1: false,
            foreign_urls: false,
        }
    }
}

/// One line of the registry's access log (Apache combined format, e.g.
/// `127.0.0.1 - - [04/Dec/2026:15:54:27 +0000] "HEAD /v2/foo/manifests/latest HTTP/1.1" 404 96 "" "curl/7.88.1"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// `GET`, `HEAD`, `PUT`, ...
    pub method: String,
    /// Request URI as logged: path plus query, e.g.
    /// `/v2/foo/blobs/uploads/<uuid>?_state=...&digest=sha256%3A...`.
    pub uri: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// Response status code.
    pub status: u16,
    /// The client's `User-Agent`.
    pub user_agent: String,
}

/// User agent of the start-up readiness probe; its requests are left out of
/// [`Registry::requests`] and [`Registry::count_requests`].
pub const PROBE_USER_AGENT: &str = "testkit-readiness-probe";

const HTTP_SECRET: &str = "testkit-fixed-http-secret-do-not-use-elsewhere";
const START_TIMEOUT: Duration = Duration::from_secs(10);
const BIND_ATTEMPTS: usize = 5;

/// A running `docker-registry serve` child process. Dropping it kills the
/// process (SIGKILL by PID), reaps it, and deletes its storage and files.
///
/// Do not keep one in a `static`: statics are never dropped, so the process
/// would outlive the test binary.
pub struct Registry {
    child: Child,
    dir: TempDir,
    port: u16,
    tls: bool,
    log_path: PathBuf,
    root_dir: PathBuf,
    config_path: PathBuf,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("base_url", &self.base_url())
            .field("pid", &self.child.id())
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Ports handed to registries by this test process, so two registries
/// started at the same moment never get the same one.
fn reserved_ports() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

fn pick_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        drop(listener);
        if reserved_ports().lock().unwrap().insert(port) {
            return port;
        }
    }
}

fn registry_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TESTKIT_REGISTRY_BIN") {
        return PathBuf::from(bin);
    }
    let debian = Path::new("/usr/bin/docker-registry");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("docker-registry")
    }
}

/// Run `f` where reqwest's blocking client may be used: directly on a plain
/// thread, or on a scoped helper thread when called from inside a tokio
/// runtime (where the blocking client would panic). Panics propagate.
pub(crate) fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| match s.spawn(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    } else {
        f()
    }
}

/// Quote a string as a YAML double-quoted scalar (JSON strings are valid).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("quote string")
}

fn path_str(p: &Path) -> String {
    yaml_str(p.to_str().expect("temp paths are UTF-8"))
}

enum StartError {
    AddrInUse,
    Failed(String),
}

impl Registry {
    /// Start a plain-HTTP registry without auth. See [`Registry::start_with`].
    pub fn start() -> Registry {
        Registry::start_with(RegistryOptions::default())
    }

    /// Write a config for `opts`, spawn `docker-registry serve CONFIG` with
    /// stdout and stderr to a log file, and return once it listens on
    /// `127.0.0.1:PORT` and `GET /v2/` answers 200 or 401 (with client
    /// certificates required: once it listens and accepts TCP). Retries with
    /// another port (up to 5 times) if the port was taken in the meantime.
    /// Panics, with the log, if it has not come up within ~10 s or exits.
    ///
    /// Certificate, CA and token bundle files are copied into the instance's
    /// own directory, so the originals may go away after this returns.
    pub fn start_with(opts: RegistryOptions) -> Registry {
        off_runtime(move || Registry::start_blocking(opts))
    }

    fn start_blocking(opts: RegistryOptions) -> Registry {
        assert!(
            !(opts.htpasswd.is_some() && opts.token.is_some()),
            "RegistryOptions: htpasswd and token auth are mutually exclusive"
        );
        assert!(
            opts.client_ca.is_none() || opts.tls.is_some(),
            "RegistryOptions: client_ca needs tls"
        );
        let dir = tempfile::Builder::new()
            .prefix("testkit-registry-")
            .tempdir()
            .expect("create registry temp dir");
        let root_dir = dir.path().join("storage");
        fs::create_dir_all(&root_dir).expect("create storage dir");
        let copy = |src: &Path, name: &str| -> PathBuf {
            let dst = dir.path().join(name);
            fs::copy(src, &dst)
                .unwrap_or_else(|e| panic!("copy {} for the registry: {e}", src.display()));
            dst
        };

        let tls = opts.tls.as_ref().map(|pair| {
            (
                copy(&pair.cert_path, "tls-cert.pem"),
                copy(&pair.key_path, "tls-key.pem"),
            )
        });
        let client_ca = opts.client_ca.as_ref().map(|p| copy(p, "client-ca.pem"));
        let token_bundle = opts
            .token
            .as_ref()
            .map(|t| copy(&t.rootcertbundle, "token-bundle.pem"));
        let htpasswd_path = opts.htpasswd.as_ref().map(|(user, pass)| {
            assert!(
                !user.contains(':') && !user.contains('\n'),
                "htpasswd user must not contain ':' or newlines"
            );
            // Cost 4 (the minimum): the registry checks the hash on every
            // request, and cost 12 would add ~0.2 s to each.
            let hash = bcrypt::hash_with_result(pass, 4)
                .expect("bcrypt hash")
                .format_for_version(bcrypt::Version::TwoA);
            let path = dir.path().join("htpasswd");
            fs::write(&path, format!("{user}:{hash}\n")).expect("write htpasswd");
            path
        });

        let log_path = dir.path().join("registry.log");
        let config_path = dir.path().join("config.yml");
        let mut last_failure = String::new();
        for _attempt in 0..BIND_ATTEMPTS {
            let port = pick_port();
            let mut cfg = String::new();
            cfg.push_str("version: 0.1\n");
            cfg.push_str(
                "log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n",
            );
            cfg.push_str("storage:\n  filesystem:\n");
            cfg.push_str(&format!("    rootdirectory: {}\n", path_str(&root_dir)));
            cfg.push_str(&format!(
                "  delete:\n    enabled: {}\n",
                opts.delete_enabled
            ));
            if opts.foreign_urls {
                cfg.push_str(
                    "validation:\n  manifests:\n    urls:\n      allow:\n        - '^https?://'\n",
                );
            }
            if opts.schema1 {
                cfg.push_str("compatibility:\n  schema1:\n    enabled: true\n");
            }
            cfg.push_str("http:\n");
            cfg.push_str(&format!("  addr: 127.0.0.1:{port}\n"));
            cfg.push_str(&format!("  secret: {}\n", yaml_str(HTTP_SECRET)));
            if let Some((cert, key)) = &tls {
                cfg.push_str("  tls:\n");
                cfg.push_str(&format!("    certificate: {}\n", path_str(cert)));
                cfg.push_str(&format!("    key: {}\n", path_str(key)));
                if let Some(ca) = &client_ca {
                    cfg.push_str(&format!("    clientcas:\n      - {}\n", path_str(ca)));
                }
            }
            if let Some(path) = &htpasswd_path {
                cfg.push_str("auth:\n  htpasswd:\n    realm: testkit\n");
                cfg.push_str(&format!("    path: {}\n", path_str(path)));
            }
            if let (Some(token), Some(bundle)) = (&opts.token, &token_bundle) {
                cfg.push_str("auth:\n  token:\n");
                cfg.push_str(&format!("    realm: {}\n", yaml_str(&token.realm)));
                cfg.push_str(&format!("    service: {}\n", yaml_str(&token.service)));
                cfg.push_str(&format!("    issuer: {}\n", yaml_str(&token.issuer)));
                cfg.push_str(&format!("    rootcertbundle: {}\n", path_str(bundle)));
            }
            fs::write(&config_path, &cfg).expect("write registry config");

            let log = File::create(&log_path).expect("create registry log");
            let log_err = log.try_clone().expect("clone log handle");
            let bin = registry_bin();
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(&config_path)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {}: {e} (install Debian's docker-registry, \
                         without letting its service start)",
                        bin.display()
                    )
                });
            match wait_ready(
                &mut child,
                port,
                tls.is_some(),
                client_ca.is_some(),
                &log_path,
            ) {
                Ok(()) => {
                    return Registry {
                        child,
                        dir,
                        port,
                        tls: tls.is_some(),
                        log_path,
                        root_dir,
                        config_path,
                    };
                }
                Err(err) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    match err {
                        StartError::AddrInUse => {
                            last_failure = format!("port {port} already in use\n{log}");
                            continue;
                        }
                        StartError::Failed(why) => panic!(
                            "docker-registry did not start: {why}\nconfig:\n{cfg}\nlog:\n{log}"
                        ),
                    }
                }
            }
        }
        panic!(
            "docker-registry could not bind a port after {BIND_ATTEMPTS} attempts: {last_failure}"
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Everything the process printed so far (stdout and stderr: logrus
    /// lines and access-log lines), lossily decoded.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `storage.filesystem.rootdirectory` (holds `docker/registry/v2/...`).
    pub fn root_dir(&self) -> &Path {
        &self.root_dir
    }

    /// The config file it was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// PID of the child process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Parsed access-log lines so far, oldest first, without the readiness
    /// probe's. The registry writes a line just after it finishes a
    /// response, so this waits until the log has been still for ~30 ms
    /// (at most 1 s) before reading: requests the caller has seen answered
    /// are in it.
    pub fn requests(&self) -> Vec<AccessLogEntry> {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut last_len = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        loop {
            std::thread::sleep(Duration::from_millis(30));
            let len = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
            if len == last_len || Instant::now() > deadline {
                break;
            }
            last_len = len;
        }
        parse_access_log(&self.log())
            .into_iter()
            .filter(|e| e.user_agent != PROBE_USER_AGENT)
            .collect()
    }

    /// Number of access-log lines whose method equals `method` exactly
    /// (e.g. `"PUT"`) and whose request URI (path and query, as logged)
    /// contains `path_substring`; `""` matches every URI. Readiness-probe
    /// requests are not counted. Waits for the log to settle as
    /// [`Registry::requests`] does.
    pub fn count_requests(&self, method: &str, path_substring: &str) -> usize {
        self.requests()
            .iter()
            .filter(|e| e.method == method && e.uri.contains(path_substring))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // `Child::kill` sends SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parse the Apache-combined-format lines out of a registry log, skipping
/// logrus lines (`time=...`).
pub fn parse_access_log(log: &str) -> Vec<AccessLogEntry> {
    log.lines().filter_map(parse_access_line).collect()
}

fn parse_access_line(line: &str) -> Option<AccessLogEntry> {
    if line.starts_with("time=") {
        return None;
    }
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let close = rest.find('"')?;
    let mut request = rest[..close].split(' ');
    let method = request.next()?.to_string();
    let uri = request.next()?.to_string();
    let protocol = request.next().unwrap_or("").to_string();
    let after = rest[close + 1..].trim_start();
    let status = after.split(' ').next()?.parse().ok()?;
    // The user agent is the last quoted field.
    let user_agent = line
        .strip_suffix('"')
        .and_then(|l| l.rfind('"').map(|i| l[i + 1..].to_string()))
        .unwrap_or_default();
    Some(AccessLogEntry {
        method,
        uri,
        protocol,
        status,
        user_agent,
    })
}

fn wait_ready(
    child: &mut Child,
    port: u16,
    tls: bool,
    mtls: bool,
    log_path: &Path,
) -> Result<(), StartError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let listening = format!("listening on 127.0.0.1:{port}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}/v2/");
    let probe = reqwest::blocking::Client::builder()
        .user_agent(PROBE_USER_AGENT)
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("build probe client");
    let mut last = String::from("no answer yet");
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| StartError::Failed(e.to_string()))?
        {
            let log = fs::read_to_string(log_path).unwrap_or_default();
            if log.contains("address already in use") {
                return Err(StartError::AddrInUse);
            }
            return Err(StartError::Failed(format!("process exited with {status}")));
        }
        let log = fs::read_to_string(log_path).unwrap_or_default();
        // The line is printed after the listener is bound, so whatever
        // answers on the port from now on is this child.
        if log.contains(&listening) {
            if mtls {
                if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                    return Ok(());
                }
            } else {
                match probe.get(&url).send() {
                    Ok(resp) if resp.status() == 200 || resp.status() == 401 => return Ok(()),
                    Ok(resp) => last = format!("GET /v2/ answered {}", resp.status()),
                    Err(e) => last = format!("GET /v2/ failed: {e}"),
                }
            }
        }
        if Instant::now() > deadline {
            return Err(StartError::Failed(format!(
                "not ready after {START_TIMEOUT:?} ({last})"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_lines() {
        let log = r#"time="2026-12-04T15:54:27Z" level=info msg="response completed" http.request.method=GET http.request.uri=/v2/
127.0.0.1 - - [04/Dec/2026:15:54:27 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
127.0.0.1 - - [04/Dec/2026:15:54:27 +0000] "HEAD /v2/foo/manifests/latest HTTP/2.0" 404 96 "" "testkit-readiness-probe"
"#;
        let entries = parse_access_log(log);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].method, "GET");
        assert_eq!(entries[0].uri, "/v2/");
        assert_eq!(entries[0].status, 200);
        assert_eq!(entries[0].user_agent, "curl/7.88.1");
        assert_eq!(entries[1].protocol, "HTTP/2.0");
        assert_eq!(entries[1].user_agent, PROBE_USER_AGENT);
    }
}
