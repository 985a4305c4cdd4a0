//! HTTP transport for one registry: TLS set-up, timeouts, concurrency and
//! rate limits, redirects, authentication and the single retry policy.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use rand::Rng;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, trace, warn};
use url::Url;

use super::auth::{Authenticator, Scope};
use super::error::{is_transient_status, ErrorBody, RequestInfo};
use super::{ConnectionSettings, RegistryError, TlsMode};

/// Longest wait between two attempts, whatever `Retry-After` requests.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Redirect hops followed for one GET or HEAD.
const MAX_REDIRECTS: usize = 10;
/// Bytes of an error reply read for its message. Registries send a short
/// JSON envelope, and the rest of a longer body is never read.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// A request that can be sent again: its body is held in memory.
pub struct Req {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    pub scope: Scope,
    /// Whether this is a blob download, which only `read_timeout` limits
    /// because a large blob may take hours. Other requests also get the
    /// registry's request deadline.
    pub blob_transfer: bool,
}

impl Req {
    pub fn new(method: Method, url: Url, scope: Scope) -> Self {
        Req {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            scope,
            blob_transfer: false,
        }
    }

    /// Marks a blob download, which gets no request deadline.
    pub fn blob_transfer(mut self) -> Self {
        self.blob_transfer = true;
        self
    }

    pub fn header(mut self, name: reqwest::header::HeaderName, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.insert(name, value);
        }
        self
    }

    pub fn body(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }
}

/// A successful response with the concurrency permit it holds until dropped,
/// so a streamed body counts against the registry's limit while it flows.
pub struct Reply {
    pub response: Response,
    pub permit: OwnedSemaphorePermit,
    /// The deadline that also bounds reading the body, if any.
    pub deadline: Option<Deadline>,
}

/// The end of one attempt of a request other than a blob transfer.
/// reqwest enforces it, from connecting until the body is read. This copy
/// lets errors distinguish a missed deadline from `read_timeout`.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
    limit: Duration,
}

impl Deadline {
    fn start(limit: Duration) -> Self {
        Deadline {
            at: Instant::now() + limit,
            limit,
        }
    }

    fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    fn expired(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// Outcome of one attempt, before the retry decision.
enum Attempt {
    Done(Reply),
    Failed(RegistryError, Option<Duration>),
}

pub struct Transport {
    pub registry: String,
    pub base: Url,
    http: reqwest::Client,
    auth: Authenticator,
    limit: Arc<Semaphore>,
    throttle: Throttle,
    rate: Option<RateLimiter>,
    max_attempts: u32,
    request_deadline: Duration,
    /// The credentials sent, for 401 errors, such as `user alice from the
    /// rules file`.
    credentials_note: String,
}

impl Transport {
    pub fn new(registry: &str, settings: &ConnectionSettings) -> Result<Self, RegistryError> {
        let http = build_http(registry, settings)?;
        let scheme = if settings.tls == TlsMode::Disabled {
            "http"
        } else {
            "https"
        };
        let base = Url::parse(&format!("{scheme}://{}/", api_host(registry))).map_err(|e| {
            RegistryError::Settings {
                registry: registry.to_string(),
                reason: format!("invalid host: {e}"),
            }
        })?;
        Ok(Transport {
            registry: registry.to_string(),
            base,
            auth: Authenticator::new(
                registry,
                settings.credentials.clone(),
                http.clone(),
                settings.request_deadline,
            ),
            http,
            limit: Arc::new(Semaphore::new(settings.max_concurrency.max(1))),
            throttle: Throttle::new(settings.max_concurrency.max(1)),
            rate: settings.requests_per_second.map(RateLimiter::new),
            max_attempts: settings.max_attempts.max(1),
            request_deadline: settings.request_deadline,
            credentials_note: match &settings.credentials {
                Some(credentials) => format!(
                    "user {} from {}",
                    credentials.username(),
                    settings.credentials_from
                ),
                None => "no credentials: none in the rules file or docker's config.json".into(),
            },
        })
    }

    /// Sends a replayable request, retrying transient failures with
    /// exponential backoff and jitter. Only a 2xx response is `Ok`.
    pub async fn send(&self, req: &Req) -> Result<Reply, RegistryError> {
        let mut attempt = 1;
        loop {
            let (error, wait) = match self.attempt(req).await {
                Attempt::Done(reply) => {
                    self.throttle.on_success(&self.limit);
                    return Ok(reply);
                }
                Attempt::Failed(error, wait) => (error, wait),
            };
            if error.status() == Some(StatusCode::TOO_MANY_REQUESTS) {
                self.throttle
                    .on_too_many_requests(&self.limit, &self.registry);
            }
            if !error.is_transient() || attempt >= self.max_attempts {
                return Err(self.note_credentials(error.set_attempts(attempt)));
            }
            let delay = wait.unwrap_or_else(|| backoff(attempt)).min(MAX_BACKOFF);
            warn!(registry = %self.registry, error = %error, attempt, "retrying in {:.1}s", delay.as_secs_f64());
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Sends a request whose body streams and cannot be replayed: one
    /// attempt. A 401 refreshes the token and returns the transient
    /// `Unauthorized`, so the caller's next try uses the new token.
    pub async fn send_once(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: reqwest::Body,
        scope: &Scope,
    ) -> Result<Reply, RegistryError> {
        let info = RequestInfo::new(&method, &url);
        // Callers check upload URLs already. This check keeps a streamed body
        // and the credentials from leaving the registry whatever the caller.
        self.check_own_origin(&info, &url, "request URL")?;
        let permit = self.acquire().await;
        self.pace().await;
        let mut builder = self.http.request(method, url).headers(headers).body(body);
        let sent = self.auth.header(scope).await?;
        if let Some(auth) = &sent {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        let response = builder
            .send()
            .await
            .map_err(|source| transport_error(&info, source, None))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let challenge = response.headers().get(WWW_AUTHENTICATE).cloned();
            let refreshed = self
                .auth
                .on_unauthorized(challenge.as_ref(), scope, sent.as_ref())
                .await?;
            // The body is gone, so the caller retries the whole operation
            // with the new token instead of this layer replaying it.
            if refreshed.is_some() {
                return Err(RegistryError::Unauthorized { request: info });
            }
        }
        if response.status().is_success() {
            return Ok(Reply {
                response,
                permit,
                deadline: None,
            });
        }
        let (error, _) = status_error(info, response).await;
        Err(self.note_credentials(error))
    }

    /// Adds the credentials sent to an error whose status is still 401.
    fn note_credentials(&self, error: RegistryError) -> RegistryError {
        if error.status() != Some(StatusCode::UNAUTHORIZED) {
            return error;
        }
        RegistryError::Rejected {
            source: Box::new(error),
            credentials: self.credentials_note.clone(),
        }
    }

    /// Waits for the next slot of `requests_per_second`, if set. Callers
    /// wait before taking a token from the cache, so a token never ages in
    /// the queue past its refresh time.
    async fn pace(&self) {
        if let Some(rate) = &self.rate {
            rate.wait().await;
        }
    }

    async fn attempt(&self, req: &Req) -> Attempt {
        let permit = self.acquire().await;
        self.pace().await;
        let mut auth = match self.auth.header(&req.scope).await {
            Ok(auth) => auth,
            Err(error) => return Attempt::Failed(error, None),
        };
        let mut replayed = false;
        loop {
            let (response, deadline) = match self.follow(req, auth.as_ref()).await {
                Ok(sent) => sent,
                Err(error) => return Attempt::Failed(error, None),
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !replayed {
                let challenge = response.headers().get(WWW_AUTHENTICATE).cloned();
                match self
                    .auth
                    .on_unauthorized(challenge.as_ref(), &req.scope, auth.as_ref())
                    .await
                {
                    Ok(Some(next)) => {
                        auth = Some(next);
                        replayed = true;
                        self.pace().await;
                        continue;
                    }
                    Ok(None) => {}
                    Err(error) => return Attempt::Failed(error, None),
                }
            }
            if status.is_success() {
                return Attempt::Done(Reply {
                    response,
                    permit,
                    deadline,
                });
            }
            let info = RequestInfo::new(&req.method, &req.url);
            let (error, wait) = status_error(info, response).await;
            return Attempt::Failed(error, wait);
        }
    }

    /// Sends `req`, following redirects for GET and HEAD, and returns the
    /// response with the deadline that still bounds its body. The deadline
    /// covers every hop. `Authorization` goes only to the registry's own
    /// scheme, host and port (its base URL), even when `req.url` is on
    /// another origin. A redirect to a storage backend carries its own
    /// signature in the query.
    async fn follow(
        &self,
        req: &Req,
        auth: Option<&HeaderValue>,
    ) -> Result<(Response, Option<Deadline>), RegistryError> {
        let deadline = (!req.blob_transfer).then(|| Deadline::start(self.request_deadline));
        let mut url = req.url.clone();
        let follows = req.method == Method::GET || req.method == Method::HEAD;
        // Only the first hop goes to the registry; `requests_per_second`
        // was applied to it by the caller, and redirects go to storage.
        for _ in 0..=MAX_REDIRECTS {
            let info = RequestInfo::new(&req.method, &url);
            let mut builder = self
                .http
                .request(req.method.clone(), url.clone())
                .headers(req.headers.clone());
            if same_origin(&url, &self.base) {
                if let Some(auth) = auth {
                    builder = builder.header(AUTHORIZATION, auth.clone());
                }
            }
            if let Some(body) = &req.body {
                builder = builder.body(body.clone());
            }
            if let Some(deadline) = &deadline {
                builder = builder.timeout(deadline.remaining());
            }
            trace!(registry = %self.registry, request = %info, "sending");
            let response = builder
                .send()
                .await
                .map_err(|source| transport_error(&info, source, deadline))?;
            trace!(registry = %self.registry, request = %info, status = %response.status(), "received");
            if !(follows && response.status().is_redirection()) {
                return Ok((response, deadline));
            }
            let next = redirect_target(&url, &response).ok_or_else(|| RegistryError::Protocol {
                request: info.clone(),
                reason: format!(
                    "redirect {} without a valid Location header",
                    response.status()
                ),
            })?;
            debug!(registry = %self.registry, from = %info, "following redirect");
            url = next;
        }
        Err(RegistryError::Protocol {
            request: RequestInfo::new(&req.method, &req.url),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    async fn acquire(&self) -> OwnedSemaphorePermit {
        loop {
            let permit = self
                .limit
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            if !self.throttle.take_owed() {
                return permit;
            }
            permit.forget();
        }
    }

    /// Returns an error unless `url` has the registry's own scheme, host and
    /// port. `label` names the URL in the message, such as "upload Location".
    pub fn check_own_origin(
        &self,
        request: &RequestInfo,
        url: &Url,
        label: &str,
    ) -> Result<(), RegistryError> {
        if same_origin(url, &self.base) {
            return Ok(());
        }
        Err(RegistryError::Protocol {
            request: request.clone(),
            reason: format!(
                "the {label} points at {}, but the registry is {}; rejected so that \
                 credentials and image data go only to the registry. If the registry \
                 is behind a proxy, configure its external URL to match the rules \
                 (Docker Distribution: `http.host`)",
                origin(url),
                origin(&self.base)
            ),
        })
    }

    /// Resolves a path or a `Location` value against the registry's base URL.
    pub fn url(&self, path: &str) -> Url {
        self.base
            .join(path)
            .expect("registry paths are valid URL references")
    }
}

fn build_http(
    registry: &str,
    settings: &ConnectionSettings,
) -> Result<reqwest::Client, RegistryError> {
    let invalid = |reason: String| RegistryError::Settings {
        registry: registry.to_string(),
        reason,
    };
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.connect_timeout)
        .read_timeout(settings.read_timeout)
        .user_agent(concat!("syncer/", env!("CARGO_PKG_VERSION")));
    if settings.tls == TlsMode::Insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    // Unit tests talk to their own loopback servers, never to a proxy that
    // the environment names.
    if cfg!(test) {
        builder = builder.no_proxy();
    }
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| invalid(format!("cannot read ca_file {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            invalid(format!(
                "ca_file {} is not PEM certificates: {e}",
                path.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(invalid(format!(
                "ca_file {} contains no PEM certificate (no BEGIN CERTIFICATE block)",
                path.display()
            )));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &settings.client_cert {
        let mut pem = std::fs::read(cert)
            .map_err(|e| invalid(format!("cannot read cert_file {}: {e}", cert.display())))?;
        pem.extend(
            std::fs::read(key)
                .map_err(|e| invalid(format!("cannot read key_file {}: {e}", key.display())))?,
        );
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| invalid(format!("invalid client certificate or key: {e}")))?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| invalid(format!("cannot build HTTP client: {e}")))
}

/// Docker Hub's API lives on another host than its name.
fn api_host(registry: &str) -> &str {
    if registry == crate::oci::DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        registry
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Formats the scheme, host and port of `url`, leaving out any user name,
/// password, path and query.
fn origin(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// Resolves `Location` against the request URL, keeping its query
/// byte-exact because storage backends sign it.
pub fn redirect_target(base: &Url, response: &Response) -> Option<Url> {
    let location = response.headers().get(LOCATION)?.to_str().ok()?;
    base.join(location).ok()
}

/// Wraps a reqwest failure of `info`, as a missed deadline when it is a
/// timeout and `deadline` has passed.
pub fn transport_error(
    info: &RequestInfo,
    source: reqwest::Error,
    deadline: Option<Deadline>,
) -> RegistryError {
    match deadline {
        Some(deadline) if source.is_timeout() && deadline.expired() => {
            RegistryError::DeadlineExceeded {
                request: info.clone(),
                limit: deadline.limit,
                attempts: 1,
            }
        }
        _ => RegistryError::Transport {
            request: info.clone(),
            source,
            attempts: 1,
        },
    }
}

/// A body read up to a limit.
pub struct CappedBody {
    /// The body's first bytes, at most the limit.
    pub bytes: Bytes,
    /// Whether the body went on past the limit. Reading stopped there.
    pub truncated: bool,
}

/// Reads a body up to `limit` bytes, so a registry's endless body costs at
/// most `limit` bytes of memory.
pub async fn read_capped(
    response: &mut Response,
    limit: usize,
) -> Result<CappedBody, reqwest::Error> {
    let mut bytes = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(CappedBody {
                bytes: bytes.freeze(),
                truncated: true,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(CappedBody {
        bytes: bytes.freeze(),
        truncated: false,
    })
}

/// Turns a non-2xx response into an error, with the wait that `Retry-After`
/// requests on a transient status. Only the first
/// [`MAX_ERROR_BODY_BYTES`] of the body are read.
async fn status_error(
    info: RequestInfo,
    mut response: Response,
) -> (RegistryError, Option<Duration>) {
    let status = response.status();
    let wait = if is_transient_status(status) {
        response
            .headers()
            .get(RETRY_AFTER)
            .and_then(parse_retry_after)
    } else {
        None
    };
    // A body that fails to arrive, or misses the deadline that reqwest
    // applies to it, leaves the status with an empty body.
    let body = read_capped(&mut response, MAX_ERROR_BODY_BYTES)
        .await
        .map(|body| ErrorBody::parse(&body.bytes))
        .unwrap_or(ErrorBody::Empty);
    let error = RegistryError::Status {
        request: info,
        status,
        body,
        attempts: 1,
    };
    (error, wait)
}

/// Reads `Retry-After` as delta seconds or an HTTP date.
fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Exponential backoff from 200 ms, doubled per attempt, with the upper
/// half jittered so parallel workers spread out.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(1 << attempt.min(8)) / 2;
    let capped = base.min(MAX_BACKOFF);
    let half = capped / 2;
    half + half.mul_f64(rand::thread_rng().gen::<f64>())
}

/// Lowers a registry's concurrency while it returns 429. Each 429 withholds
/// one permit (never the last), and every 20 successes give one back. A
/// withheld permit that is in use when the 429 arrives is owed, and the
/// next request to acquire one gives it up instead of sending.
struct Throttle {
    /// Permits the semaphore was created with.
    capacity: usize,
    state: Mutex<ThrottleState>,
}

#[derive(Default)]
struct ThrottleState {
    /// Permits taken out of use, both forgotten and owed.
    withheld: usize,
    /// Withheld permits still in use, to forget when they are next acquired.
    owed: usize,
    /// Successes since the last 429 or the last permit returned.
    successes: u32,
}

/// Successes needed before one withheld permit is returned.
const SUCCESSES_PER_PERMIT: u32 = 20;

impl Throttle {
    fn new(capacity: usize) -> Self {
        Throttle {
            capacity,
            state: Mutex::new(ThrottleState::default()),
        }
    }

    fn on_too_many_requests(&self, limit: &Semaphore, registry: &str) {
        let mut state = self.state.lock().expect("throttle lock poisoned");
        state.successes = 0;
        if state.withheld + 1 >= self.capacity {
            return;
        }
        state.withheld += 1;
        if limit.forget_permits(1) == 0 {
            state.owed += 1;
        }
        debug!(
            registry,
            withheld = state.withheld,
            "registry returned 429, lowering concurrency"
        );
    }

    fn on_success(&self, limit: &Semaphore) {
        let mut state = self.state.lock().expect("throttle lock poisoned");
        if state.withheld == 0 {
            return;
        }
        state.successes += 1;
        if state.successes < SUCCESSES_PER_PERMIT {
            return;
        }
        state.successes = 0;
        state.withheld -= 1;
        if state.owed > 0 {
            state.owed -= 1;
        } else {
            limit.add_permits(1);
        }
    }

    /// Takes one owed permit, if any: the caller then forgets the permit
    /// it just acquired.
    fn take_owed(&self) -> bool {
        let mut state = self.state.lock().expect("throttle lock poisoned");
        if state.owed == 0 {
            return false;
        }
        state.owed -= 1;
        true
    }
}

/// Spaces requests so no more than `per_second` start each second.
struct RateLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    fn new(per_second: f64) -> Self {
        RateLimiter {
            interval: Duration::from_secs_f64(1.0 / per_second.max(0.001)),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().expect("rate limiter lock poisoned");
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_date() {
        let seconds = HeaderValue::from_static("2");
        assert_eq!(parse_retry_after(&seconds), Some(Duration::from_secs(2)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let date = HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap();
        let wait = parse_retry_after(&date).unwrap();
        assert!(wait > Duration::from_secs(100), "{wait:?}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(200));
        assert!(backoff(4) >= Duration::from_millis(800));
        assert!(backoff(30) <= MAX_BACKOFF);
    }
}
