//! Shared helpers for syncer's integration tests: running the real binary
//! with a clean environment, and making its output stable for snapshots.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

/// The built `syncer` binary, run with no docker config and no proxy, so
/// that only the registries a test starts are ever contacted.
pub struct Syncer {
    docker_config: TempDir,
    env: Vec<(String, String)>,
}

impl Syncer {
    pub fn new() -> Self {
        Syncer {
            docker_config: TempDir::new().expect("temp dir"),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for every run.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Folder used as `DOCKER_CONFIG`.
    pub fn docker_config_dir(&self) -> &Path {
        self.docker_config.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_syncer"));
        command
            .args(args)
            .stdin(Stdio::null())
            .env("DOCKER_CONFIG", self.docker_config.path())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env_remove("RUST_LOG");
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            command.env_remove(var);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Runs syncer and returns its output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().expect("syncer binary runs");
        Run::from(output)
    }
}

/// Output of one syncer run, decoded.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Replaces each `(text, name)` pair, so registry ports and temp paths do
/// not make snapshots differ between runs.
pub fn redact(text: &str, replacements: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in replacements {
        out = out.replace(from, to);
    }
    out
}

/// insta settings that store snapshots in the top-level `snapshots/` folder.
pub fn snapshot_settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings
}

/// One request as [`HttpServer`] received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub authorization: Option<String>,
}

/// Reply that [`HttpServer`] sends.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn not_found() -> Self {
        let body = serde_json::json!({"errors": [{"code": "NAME_UNKNOWN", "message": "scripted"}]});
        Reply::json(404, body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Scripted HTTP/1.1 server on loopback that records every request, with
/// its `Authorization` header, and closes each connection after one reply.
pub struct HttpServer {
    pub host: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl HttpServer {
    pub fn start(respond: impl Fn(&Received) -> Reply + Send + 'static) -> Self {
        use std::io::{BufRead, BufReader, Write};

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut authorization = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("authorization") {
                            authorization = Some(value.trim().to_string());
                        }
                    }
                }
                let mut parts = request_line.split_whitespace();
                let request = Received {
                    method: parts.next().unwrap_or("").to_string(),
                    target: parts.next().unwrap_or("").to_string(),
                    authorization,
                };
                log.lock().unwrap().push(request.clone());
                let reply = respond(&request);
                let mut head = format!(
                    "HTTP/1.1 {} X\r\nConnection: close\r\nContent-Length: {}\r\n",
                    reply.status,
                    reply.body.len()
                );
                for (name, value) in &reply.headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                if request.method != "HEAD" {
                    let _ = stream.write_all(&reply.body);
                }
            }
        });
        HttpServer { host, received }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}
