//! Typed registry errors: which registry, request and status failed, and the
//! registry's own `errors` envelope.

use std::fmt;

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::oci::{Digest, ManifestError};

/// One entry of the distribution API's `{"errors": [...]}` body.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ErrorInfo {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Envelope {
    errors: Vec<ErrorInfo>,
}

/// Request identity for error messages: method and URL without the query
/// string, because a redirected storage URL carries signatures there.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub method: Method,
    pub url: String,
}

impl RequestInfo {
    pub fn new(method: &Method, url: &url::Url) -> Self {
        let mut shown = url.clone();
        shown.set_query(None);
        RequestInfo {
            method: method.clone(),
            url: shown.to_string(),
        }
    }
}

impl fmt::Display for RequestInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.url)
    }
}

/// Body of an error response: the registry's envelope, or text when the
/// body is not one.
#[derive(Clone, Debug)]
pub enum ErrorBody {
    Envelope(Vec<ErrorInfo>),
    Text(String),
    Empty,
}

impl ErrorBody {
    /// Reads an error body, keeping at most 512 characters of plain text.
    pub fn parse(bytes: &[u8]) -> Self {
        if let Ok(envelope) = serde_json::from_slice::<Envelope>(bytes) {
            return ErrorBody::Envelope(envelope.errors);
        }
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        if text.is_empty() {
            return ErrorBody::Empty;
        }
        ErrorBody::Text(text.chars().take(512).collect())
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorBody::Envelope(errors) => {
                let parts: Vec<String> = errors.iter().map(format_info).collect();
                write!(f, "{}", parts.join("; "))
            }
            ErrorBody::Text(text) => write!(f, "{text:?}"),
            ErrorBody::Empty => write!(f, "empty body"),
        }
    }
}

fn format_info(info: &ErrorInfo) -> String {
    match &info.detail {
        Some(detail) if !detail.is_null() => {
            format!("{}: {} (detail: {})", info.code, info.message, detail)
        }
        _ => format!("{}: {}", info.code, info.message),
    }
}

/// Failure of a registry operation.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{request} returned {status}: {body}{}", attempts_suffix(*attempts))]
    Status {
        request: RequestInfo,
        status: StatusCode,
        body: ErrorBody,
        attempts: u32,
    },
    #[error("{request} failed: {}{}{}", error_chain(source), attempts_suffix(*attempts), transport_hint(source))]
    Transport {
        request: RequestInfo,
        source: reqwest::Error,
        attempts: u32,
    },
    /// A 401 reply to a streamed request. A new token was fetched, so the
    /// next attempt of the whole upload can succeed.
    #[error("{request} returned 401 Unauthorized; a new token was fetched for the next attempt")]
    Unauthorized { request: RequestInfo },
    /// A 401 that a fresh token or the configured credentials did not
    /// fix, with the credentials that were sent.
    #[error("{source}; sent {credentials}")]
    Rejected {
        source: Box<RegistryError>,
        credentials: String,
    },
    #[error("authentication with {registry} failed: {reason}")]
    Auth { registry: String, reason: String },
    #[error("digest mismatch for {expected}: received content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for {digest}: expected {expected} bytes, received {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    /// A reply body over the size syncer reads for its kind, so that a
    /// registry cannot exhaust memory with an endless body.
    #[error("{request}: {body_kind} is larger than {}, the limit syncer reads; check what the registry serves", format_size(*limit))]
    TooLarge {
        request: RequestInfo,
        body_kind: &'static str,
        limit: u64,
    },
    /// A request other than a blob transfer that did not finish, body
    /// included, within its deadline.
    #[error("{request} timed out after {}s, the limit for requests other than blob transfers (5 × read_timeout, at least 5 minutes): the registry is sending too slowly{}", limit.as_secs(), attempts_suffix(*attempts))]
    DeadlineExceeded {
        request: RequestInfo,
        limit: std::time::Duration,
        attempts: u32,
    },
    #[error("{request}: {reason}")]
    Protocol {
        request: RequestInfo,
        reason: String,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A blob copy that failed on every whole-blob attempt, each with a
    /// new upload session.
    #[error("{last} (blob copy failed {attempts} times)")]
    BlobAttempts {
        last: std::sync::Arc<RegistryError>,
        attempts: u32,
    },
    /// A failed push of a Docker schema1 manifest. Registries often
    /// reject schema1 (Docker Distribution unless
    /// `compatibility.schema1.enabled` is set), so the message names that cause.
    #[error("{source}; the destination may not accept Docker schema1 manifests (Docker Distribution needs `compatibility.schema1.enabled: true`)")]
    Schema1Refused { source: Box<RegistryError> },
    #[error("invalid settings for registry {registry}: {reason}")]
    Settings { registry: String, reason: String },
}

/// Formats a byte count as whole MiB or KiB where it is one.
pub fn format_size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

fn attempts_suffix(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}

/// TLS handshake failures that no retry can fix, by the text rustls gives
/// them, with what to change in the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsFailure {
    /// The server replied in plain HTTP to a TLS handshake.
    PlainHttp,
    /// The server's certificate was not trusted or not valid for the host.
    Certificate,
}

fn tls_failure(error: &reqwest::Error) -> Option<TlsFailure> {
    let chain = error_chain(error);
    if chain.contains("InvalidContentType") {
        Some(TlsFailure::PlainHttp)
    } else if chain.contains("invalid peer certificate") {
        Some(TlsFailure::Certificate)
    } else {
        None
    }
}

/// Returns what a transport failure means for the rules: a TLS setting to
/// change, or the timeout that expired.
fn transport_hint(error: &reqwest::Error) -> &'static str {
    if error.is_connect() && error_chain(error).contains("deadline has elapsed") {
        return "; no connection within connect_timeout: check that the registry is reachable, or raise connect_timeout";
    }
    if error.is_timeout() {
        return "; no data within read_timeout: the registry stalled, or read_timeout is too short";
    }
    match tls_failure(error) {
        Some(TlsFailure::PlainHttp) => {
            "; the registry replied in plain HTTP: set `tls: disabled` for it in the rules"
        }
        Some(TlsFailure::Certificate) => {
            "; the registry's certificate is not trusted: give its CA with `ca_file`, or set `tls: insecure` to skip verification"
        }
        None => "",
    }
}

/// Joins an error with its sources, since reqwest's top-level message
/// alone ("error sending request") hides the cause.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl RegistryError {
    /// Returns the HTTP status of a failed request, if the registry replied.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            RegistryError::Status { status, .. } => Some(*status),
            RegistryError::Rejected { source, .. } => source.status(),
            _ => None,
        }
    }

    /// Whether the registry reported that the name or content does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// Whether the registry's envelope holds an error with `code`.
    pub fn has_code(&self, code: &str) -> bool {
        match self {
            RegistryError::Status {
                body: ErrorBody::Envelope(errors),
                ..
            } => errors.iter().any(|e| e.code == code),
            RegistryError::Rejected { source, .. } => source.has_code(code),
            _ => false,
        }
    }

    /// Whether trying the same operation again may succeed: connection
    /// failures, timeouts and missed deadlines, 408, 429 and 5xx gateway
    /// errors, and content that arrived corrupt or short.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Status { status, .. } => is_transient_status(*status),
            RegistryError::Transport { source, .. } => {
                !source.is_builder() && tls_failure(source).is_none()
            }
            RegistryError::DigestMismatch { .. }
            | RegistryError::SizeMismatch { .. }
            | RegistryError::DeadlineExceeded { .. }
            | RegistryError::Unauthorized { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn set_attempts(mut self, count: u32) -> Self {
        match &mut self {
            RegistryError::Status { attempts, .. }
            | RegistryError::Transport { attempts, .. }
            | RegistryError::DeadlineExceeded { attempts, .. } => *attempts = count,
            _ => {}
        }
        self
    }
}

/// Statuses worth retrying: 408, 429, 500, 502, 503 and 504.
pub fn is_transient_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}
