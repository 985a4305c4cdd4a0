//! Per-registry connection settings and the pool of clients built from them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{credentials, Credentials, RegistryClient, RegistryError};

/// How to speak TLS to a registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// HTTPS with certificate verification.
    #[default]
    Enabled,
    /// HTTPS without certificate verification.
    Insecure,
    /// Plain HTTP.
    Disabled,
}

/// Everything needed to connect to one registry.
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    pub tls: TlsMode,
    /// Extra trusted CA certificates, PEM.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Credentials from the rules file; `None` falls back to docker's config.
    pub credentials: Option<Credentials>,
    /// Origin of `credentials`, for messages: the rules file unless
    /// docker's config supplied them.
    pub credentials_from: &'static str,
    /// Requests in flight to this registry at once.
    pub max_concurrency: usize,
    /// Request rate cap; `None` means unlimited.
    pub requests_per_second: Option<f64>,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
    /// Maximum time one attempt of a request other than a blob transfer
    /// may take, from connecting until its body is read. Set it with
    /// [`ConnectionSettings::set_read_timeout`].
    pub request_deadline: Duration,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            tls: TlsMode::Enabled,
            ca_file: None,
            client_cert: None,
            credentials: None,
            credentials_from: "the rules file",
            max_concurrency: 16,
            requests_per_second: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            request_deadline: request_deadline(Duration::from_secs(60)),
            max_attempts: 5,
        }
    }
}

impl ConnectionSettings {
    /// Sets `read_timeout` and the request deadline derived from it.
    pub fn set_read_timeout(&mut self, read_timeout: Duration) {
        self.read_timeout = read_timeout;
        self.request_deadline = request_deadline(read_timeout);
    }
}

/// Returns the deadline of small requests: 5 × `read_timeout`, at least 5
/// minutes. Manifests, list pages and tokens are small, so a reply that
/// takes longer is stalling one byte at a time, which `read_timeout` alone
/// never catches. Blob transfers may legitimately take hours and get none.
fn request_deadline(read_timeout: Duration) -> Duration {
    read_timeout
        .saturating_mul(5)
        .max(Duration::from_secs(5 * 60))
}

/// Clients for every registry a run talks to, created on first use.
pub struct Registries {
    settings: HashMap<String, ConnectionSettings>,
    clients: Mutex<HashMap<String, Arc<RegistryClient>>>,
}

impl Registries {
    /// Creates a pool; hosts missing from `settings` get the defaults.
    pub fn new(settings: HashMap<String, ConnectionSettings>) -> Self {
        Registries {
            settings,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the client for `host`, building it on first use.
    pub fn client(&self, host: &str) -> Result<Arc<RegistryClient>, RegistryError> {
        let mut clients = self.clients.lock().expect("registry pool lock poisoned");
        if let Some(client) = clients.get(host) {
            return Ok(client.clone());
        }
        let mut settings = self.settings.get(host).cloned().unwrap_or_default();
        if settings.credentials.is_none() {
            settings.credentials = credentials::from_docker_config(host)?;
            settings.credentials_from = "docker's config.json";
        }
        let client = Arc::new(RegistryClient::new(host, settings)?);
        clients.insert(host.to_string(), client.clone());
        Ok(client)
    }
}
