//! Fault-injecting reverse proxy in front of a real registry.
//!
//! This module owns [`FaultProxy`]: a plain-HTTP/1.1 reverse proxy on
//! `127.0.0.1:<random port>` that forwards every request to one upstream
//! registry (plain `http://` only) and injects the misbehaviours listed in
//! [`Faults`]: 429 with `Retry-After`, transient 5xx, connections dropped in
//! the middle of a blob, a flipped byte in a blob, stripped headers, blob
//! GETs redirected to a second "storage" listener with a signed-looking
//! query, relative `Location` headers, paginated tag lists, and lost replies
//! to upload PATCH requests.
//!
//! It also owns the small background-server plumbing ([`ServerThread`],
//! [`spawn_servers`]) that the token server reuses: each server runs on its
//! own thread with its own current-thread tokio runtime and stops when its
//! handle is dropped, so the public API is usable from plain blocking
//! `#[test]` functions running in parallel.
//!
//! Bodies are streamed in both directions; only a tag list that is being
//! paginated and a PATCH reply that is about to be lost are read whole.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

// ---------------------------------------------------------------------------
// Background server plumbing (shared with token.rs)
// ---------------------------------------------------------------------------

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of every response the fixtures' servers send, and of every
/// request the proxy sends upstream.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
pub(crate) type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, HandlerError>> + Send>>;

/// Error of a request handler: hyper closes the connection without a reply.
#[derive(Debug)]
pub(crate) struct HandlerError(pub String);

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerError {}

impl HandlerError {
    pub(crate) fn from_box(e: BoxError) -> Self {
        HandlerError(e.to_string())
    }
}
/// A request handler. Returning `Err` closes the connection without writing
/// a response (that is how the proxy "loses" a reply).
pub(crate) type Handler = Arc<dyn Fn(Request<Incoming>) -> HandlerFuture + Send + Sync>;

/// Handle on a background thread serving one or more listeners. Dropping it
/// stops the accept loops, drops every open connection and joins the thread.
pub(crate) struct ServerThread {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `127.0.0.1:0`, returning the listener and its `127.0.0.1:PORT`.
pub(crate) fn bind_loopback() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = l.local_addr().expect("local_addr");
    (l, format!("127.0.0.1:{}", addr.port()))
}

/// Serves each listener with its handler (HTTP/1.1, keep-alive) on a new
/// thread with its own current-thread tokio runtime.
pub(crate) fn spawn_servers(
    name: &str,
    listeners: Vec<(std::net::TcpListener, Handler)>,
) -> ServerThread {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for (l, h) in listeners {
                    l.set_nonblocking(true).expect("set_nonblocking");
                    let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
                    tasks.push(tokio::spawn(accept_loop(l, h)));
                }
                let _ = rx.await;
                for t in tasks {
                    t.abort();
                }
            });
            // Dropping the runtime here drops every connection task.
        })
        .expect("spawn server thread");
    ServerThread {
        shutdown: Some(tx),
        thread: Some(thread),
    }
}

async fn accept_loop(l: tokio::net::TcpListener, h: Handler) {
    loop {
        let stream = match l.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let h = h.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| (h)(req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub(crate) fn full_body(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn empty_body() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn incoming_body(b: Incoming) -> ProxyBody {
    b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()
}

pub(crate) fn simple_response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let body: Bytes = body.into();
    let mut resp = Response::new(full_body(body.clone()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("content type"),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    resp
}

/// Reads and discards a request body (up to 1 GiB) so that an early answer
/// does not turn into a broken pipe on the client's side.
pub(crate) async fn drain(mut body: Incoming) {
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    seen += d.len() as u64;
                    if seen > (1 << 30) {
                        return;
                    }
                }
            }
            Err(_) => return,
        }
    }
}

/// Decodes `%XX` escapes and `+` (as a space) of one query component.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|v| v as u8)
}

/// Splits a query string (without `?`) into decoded `(key, value)` pairs, in order.
pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// Value of the `Retry-After` header on injected 429 answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// No `Retry-After` header at all.
    Absent,
    /// `Retry-After: <seconds>`.
    Seconds(u64),
    /// `Retry-After: <HTTP date>`, computed when each 429 is sent so that
    /// the date lies at least this far in the future (HTTP dates have whole
    /// seconds: the date is rounded up, so a client waits between the
    /// duration and the duration plus one second).
    DateIn(Duration),
    /// The header value exactly as given (for malformed-value tests).
    Raw(String),
}

impl Default for RetryAfter {
    fn default() -> Self {
        RetryAfter::Seconds(1)
    }
}

/// Which faults the proxy injects. Everything defaults to off
/// (`Faults::default()` is a transparent proxy). Faults combine freely;
/// each counted fault fires a bounded number of times so a retrying client
/// converges.
///
/// Order in which a request meets them: `too_many_requests`, then
/// `server_error_every`, then (blob GETs) `redirect_blob_get`, then
/// `paginate_tags` (tag lists), then the request is forwarded and
/// `reset_blob_get`/`flip_byte_blob_get` (successful blob GETs: one fault
/// per GET, a reset before a flip), `lose_patch_reply` (upload PATCH),
/// `strip_response_headers` and the `Location` rewrite apply to the reply.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The first N requests (that match `fault_path_contains`) get
    /// `429 Too Many Requests` with a `text/plain` body and the
    /// `retry_after` header, without reaching upstream.
    pub too_many_requests: u32,
    /// `Retry-After` on the injected 429 answers (default `Seconds(1)`).
    pub retry_after: RetryAfter,
    /// Requests that got past the 429 fault (and match
    /// `fault_path_contains`) are numbered 1, 2, 3, ...; every one whose
    /// number is a multiple of N is answered 500, 502, 503, 504 (rotating,
    /// in that order) without reaching upstream. `Some(1)` fails everything.
    pub server_error_every: Option<u32>,
    /// Upper bound on how many 5xx answers `server_error_every` injects in
    /// total (`None`: no bound).
    pub server_error_limit: Option<u32>,
    /// When set, `too_many_requests` and `server_error_every` only consider
    /// requests whose path contains this string (e.g. `"/manifests/"`).
    pub fault_path_contains: Option<String>,
    /// The first N successful blob GETs (`GET /v2/<name>/blobs/<alg>:<hex>`,
    /// status 200 or 206, or the storage server's GETs when redirecting)
    /// send the status, the headers (with the full `Content-Length`) and
    /// the first half of the body, then the connection is dropped.
    pub reset_blob_get: u32,
    /// The first N successful blob GETs (after those used up by
    /// `reset_blob_get`) get the byte in the middle of the body XORed with
    /// 0xff; the length and all headers stay unchanged.
    pub flip_byte_blob_get: u32,
    /// The first N successful blob GETs (after resets and flips) send the
    /// first half of the body, then pause for `stall_for` before the rest,
    /// as a source that stalls mid-transfer does.
    pub stall_blob_get: u32,
    /// Length of each `stall_blob_get` pause.
    pub stall_for: Duration,
    /// Response headers removed from every reply from upstream, matched
    /// case-insensitively (e.g. `"Docker-Content-Digest"`).
    pub strip_response_headers: Vec<String>,
    /// Every blob GET whose blob upstream has (a HEAD with the client's
    /// credentials answers 2xx) is answered `307 Temporary Redirect` to the
    /// storage listener ([`FaultProxy::storage_host`]) at a URL carrying a
    /// signed-looking query ([`STORAGE_QUERY`] plus a ticket). Otherwise
    /// upstream's own answer (401, 404, ...) is passed through. See
    /// [`FaultProxy::storage_requests`] for what the storage listener
    /// checks.
    pub redirect_blob_get: bool,
    /// Rewrite `Location` headers from upstream to relative references
    /// (`/v2/...`) instead of absolute URLs pointing at the proxy.
    pub relative_location: bool,
    /// Rewrite successful `GET /v2/<name>/tags/list` answers into pages of
    /// N tags (sorted by byte order, after the `last` query parameter) with
    /// `Link: </v2/<name>/tags/list?n=N&last=X&extra=1>; rel="next"` while
    /// more remain. Every page is cut from the full upstream list (the
    /// upstream request carries no query); the client's `n` is ignored.
    pub paginate_tags: Option<usize>,
    /// The first N upload PATCH requests (`PATCH /v2/<name>/blobs/uploads/...`)
    /// are forwarded (so the chunk lands and upstream moves its upload
    /// state on), upstream's reply is read, and then the client's
    /// connection is closed without any reply.
    pub lose_patch_reply: u32,
    /// Every request to the proxy listener waits this long before any
    /// other fault or upstream receives it, so that concurrent requests
    /// overlap and [`FaultProxy::in_flight_at_arrival`] can count them.
    pub delay: Option<Duration>,
}

/// Which fault, if any, shaped the answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answered 429 by `too_many_requests`.
    TooManyRequests,
    /// Answered with this 5xx status by `server_error_every`.
    ServerError(u16),
    /// Answered 307 to the storage listener by `redirect_blob_get`.
    Redirected,
    /// Connection dropped part-way through the body by `reset_blob_get`.
    ResetMidBody,
    /// One body byte flipped by `flip_byte_blob_get`.
    FlippedByte,
    /// Body paused half-way by `stall_blob_get`.
    StalledMidBody,
    /// A tag list cut into a page by `paginate_tags`.
    PaginatedTags,
    /// Reply dropped after upstream handled the PATCH (`lose_patch_reply`).
    LostReply,
    /// Upstream could not be reached; the proxy answered 502 itself.
    UpstreamUnreachable,
}

/// One request the proxy received, recorded when the answer's status was
/// decided (so in order of answers, not of arrival).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `HEAD`, `PUT`, ...
    pub method: String,
    /// Path and query exactly as received (`/v2/a/b/tags/list?n=2`).
    pub path_and_query: String,
    /// Status the client got, or, for [`FaultKind::LostReply`], the status
    /// upstream answered and the client never saw.
    pub status: u16,
    /// Whether the request carried an `Authorization` header.
    pub had_authorization: bool,
    /// The fault that shaped the answer, if any.
    pub fault: Option<FaultKind>,
}

/// One request the storage listener received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageRequest {
    pub method: String,
    /// Path and query exactly as received.
    pub path_and_query: String,
    /// Whether an `Authorization` header arrived (it must not: the storage
    /// server is another host:port than the registry).
    pub had_authorization: bool,
    /// Whether the query was byte-for-byte the one the redirect carried.
    pub query_matched: bool,
    /// Status the storage listener answered.
    pub status: u16,
    /// The blob fault applied to this answer (`ResetMidBody`, `FlippedByte`).
    pub fault: Option<FaultKind>,
}

/// The fixed signed-looking part of every storage URL's query. It carries
/// escapes (`%2F`, `%2B`, `%3D`) that a client must not decode or re-encode.
pub const STORAGE_QUERY: &str = "X-Sig=a%2Fb%2Bc%3D%3D&exp=123";

/// A reverse proxy with fault injection in front of one registry, plus a
/// "storage" listener for redirected blob GETs. Both listen on
/// `127.0.0.1:<random port>` on a background thread and stop on drop.
pub struct FaultProxy {
    host: String,
    storage_host: String,
    shared: Arc<Shared>,
    _server: ServerThread,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("host", &self.host)
            .field("storage_host", &self.storage_host)
            .field("upstream", &self.shared.upstream_base)
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy forwarding to `upstream_base_url` (`http://HOST:PORT`,
    /// optionally with a trailing `/`; `https` upstreams are not supported).
    /// Upstream sees `Host: <upstream host:port>`; absolute `Location`
    /// headers pointing at upstream are rewritten to point at the proxy (or
    /// made relative, see [`Faults::relative_location`]).
    ///
    /// # Panics
    /// If the URL is not `http://host:port` or the listeners cannot bind.
    pub fn start(upstream_base_url: &str, faults: Faults) -> FaultProxy {
        let base = upstream_base_url.trim_end_matches('/');
        let authority = base.strip_prefix("http://").unwrap_or_else(|| {
            panic!("FaultProxy upstream must be http://HOST:PORT, got {upstream_base_url}")
        });
        assert!(
            !authority.is_empty() && !authority.contains('/'),
            "FaultProxy upstream must be http://HOST:PORT without a path, got {upstream_base_url}"
        );
        let (proxy_listener, host) = bind_loopback();
        let (storage_listener, storage_host) = bind_loopback();
        let shared = Arc::new(Shared {
            upstream_base: base.to_string(),
            upstream_authority: authority.to_string(),
            host: host.clone(),
            storage_host: storage_host.clone(),
            faults: Mutex::new(faults),
            counters: Mutex::new(Counters::default()),
            records: Mutex::new(Vec::new()),
            storage_records: Mutex::new(Vec::new()),
            tickets: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            arrivals: Mutex::new(Vec::new()),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(HttpConnector::new()),
        });
        let s1 = shared.clone();
        let proxy_handler: Handler = Arc::new(move |req| {
            let s = s1.clone();
            Box::pin(async move {
                let _counted = InFlight::enter(&s);
                if let Some(delay) = s.faults().delay {
                    tokio::time::sleep(delay).await;
                }
                handle_proxy(s, req).await.map_err(HandlerError::from_box)
            })
        });
        let s2 = shared.clone();
        let storage_handler: Handler = Arc::new(move |req| {
            let s = s2.clone();
            Box::pin(async move { handle_storage(s, req).await.map_err(HandlerError::from_box) })
        });
        let server = spawn_servers(
            "testkit-fault-proxy",
            vec![
                (proxy_listener, proxy_handler),
                (storage_listener, storage_handler),
            ],
        );
        FaultProxy {
            host,
            storage_host,
            shared,
            _server: server,
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.host)
    }

    /// `127.0.0.1:PORT` of the storage listener that redirected blob GETs go to.
    pub fn storage_host(&self) -> String {
        self.storage_host.clone()
    }

    /// The upstream base URL as given to [`FaultProxy::start`] (no trailing `/`).
    pub fn upstream_base_url(&self) -> String {
        self.shared.upstream_base.clone()
    }

    /// Every request the proxy answered (or dropped) so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.records).clone()
    }

    /// Every request the storage listener received so far. The storage
    /// listener answers 404 for an unknown ticket, 403
    /// `SignatureDoesNotMatch` when the query is not byte-exact the one
    /// the redirect carried, 400 `InvalidArgument` when an `Authorization`
    /// header arrived (as S3 does for a presigned URL), and otherwise serves
    /// the blob (honouring `Range`) by fetching it from upstream with the
    /// `Authorization` the proxy saw on the redirected request.
    pub fn storage_requests(&self) -> Vec<StorageRequest> {
        lock(&self.shared.storage_records).clone()
    }

    /// Returns how many requests the proxy listener was handling as each
    /// request arrived (itself included), in order of arrival. A request
    /// counts from its arrival until its answer's status and headers are
    /// ready, so a streamed upload counts until upstream has read its body.
    pub fn in_flight_at_arrival(&self) -> Vec<usize> {
        lock(&self.shared.arrivals).clone()
    }

    /// Forgets the recorded requests (both listeners).
    pub fn clear_requests(&self) {
        lock(&self.shared.records).clear();
        lock(&self.shared.storage_records).clear();
        lock(&self.shared.arrivals).clear();
    }

    /// Replaces the faults and resets every fault counter (so the first N
    /// requests from now on get the 429s, and so on).
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
        *lock(&self.shared.counters) = Counters::default();
    }
}

// ---------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------

struct Shared {
    upstream_base: String,
    upstream_authority: String,
    host: String,
    storage_host: String,
    faults: Mutex<Faults>,
    counters: Mutex<Counters>,
    records: Mutex<Vec<RequestRecord>>,
    storage_records: Mutex<Vec<StorageRequest>>,
    tickets: Mutex<HashMap<u64, Ticket>>,
    client: Client<HttpConnector, ProxyBody>,
    /// Requests to the proxy listener whose response has not started yet.
    in_flight: AtomicUsize,
    /// `in_flight` as each request arrived (itself included), in order.
    arrivals: Mutex<Vec<usize>>,
}

/// Guard that counts one request as in flight until its response head is ready.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        let mut arrivals = lock(&shared.arrivals);
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        arrivals.push(now);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Counters {
    sent_429: u32,
    numbered: u64,
    sent_5xx: u32,
    resets: u32,
    flips: u32,
    stalls: u32,
    lost_patches: u32,
    next_ticket: u64,
}

struct Ticket {
    upstream_path_and_query: String,
    authorization: Option<HeaderValue>,
    query: String,
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    BlobGet,
    TagsList(String),
    UploadPatch,
    Other,
}

fn classify(method: &Method, path: &str) -> Kind {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Kind::Other;
    };
    if *method == Method::GET {
        if let Some(name) = rest.strip_suffix("/tags/list") {
            if !name.is_empty() {
                return Kind::TagsList(name.to_string());
            }
        }
        if let Some(idx) = rest.rfind("/blobs/") {
            let digest = &rest[idx + "/blobs/".len()..];
            if idx > 0 && !digest.contains('/') && digest.contains(':') {
                return Kind::BlobGet;
            }
        }
    }
    if *method == Method::PATCH && rest.contains("/blobs/uploads/") {
        return Kind::UploadPatch;
    }
    Kind::Other
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

impl Shared {
    fn record(
        &self,
        method: &Method,
        pq: &str,
        status: u16,
        had_auth: bool,
        fault: Option<FaultKind>,
    ) {
        lock(&self.records).push(RequestRecord {
            method: method.to_string(),
            path_and_query: pq.to_string(),
            status,
            had_authorization: had_auth,
            fault,
        });
    }

    fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    /// Builds a request to upstream carrying the client's end-to-end headers.
    fn upstream_request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: ProxyBody,
    ) -> Result<Request<ProxyBody>, BoxError> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.upstream_base, path_and_query));
        for (k, v) in headers {
            if !is_hop_by_hop(k) && k != header::HOST {
                b = b.header(k, v);
            }
        }
        b = b.header(header::HOST, self.upstream_authority.as_str());
        Ok(b.body(body)?)
    }

    /// Copies upstream's response headers for the client: drops hop-by-hop
    /// and stripped headers, rewrites `Location`.
    fn client_headers(&self, upstream: &HeaderMap, faults: &Faults) -> HeaderMap {
        let mut out = HeaderMap::new();
        for (k, v) in upstream {
            if is_hop_by_hop(k)
                || faults
                    .strip_response_headers
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(k.as_str()))
            {
                continue;
            }
            if k == header::LOCATION {
                if let Ok(loc) = v.to_str() {
                    let rewritten = self.rewrite_location(loc, faults.relative_location);
                    if let Ok(hv) = HeaderValue::from_str(&rewritten) {
                        out.append(k.clone(), hv);
                        continue;
                    }
                }
            }
            out.append(k.clone(), v.clone());
        }
        out
    }

    fn rewrite_location(&self, loc: &str, relative: bool) -> String {
        let rest = loc
            .strip_prefix(&format!("http://{}", self.upstream_authority))
            .or_else(|| loc.strip_prefix(&format!("http://{}", self.host)));
        match rest {
            Some(rest) if rest.is_empty() || rest.starts_with('/') || rest.starts_with('?') => {
                let rest = if rest.is_empty() { "/" } else { rest };
                if relative {
                    rest.to_string()
                } else {
                    format!("http://{}{}", self.host, rest)
                }
            }
            _ => loc.to_string(),
        }
    }

    /// Decides the blob fault for a successful blob GET, consuming budget.
    fn take_blob_fault(&self, faults: &Faults) -> Option<FaultKind> {
        let mut c = lock(&self.counters);
        if c.resets < faults.reset_blob_get {
            c.resets += 1;
            Some(FaultKind::ResetMidBody)
        } else if c.flips < faults.flip_byte_blob_get {
            c.flips += 1;
            Some(FaultKind::FlippedByte)
        } else if c.stalls < faults.stall_blob_get {
            c.stalls += 1;
            Some(FaultKind::StalledMidBody)
        } else {
            None
        }
    }
}

fn retry_after_value(r: &RetryAfter) -> Option<String> {
    match r {
        RetryAfter::Absent => None,
        RetryAfter::Seconds(s) => Some(s.to_string()),
        RetryAfter::DateIn(d) => {
            let now = SystemTime::now();
            let at = now + *d + Duration::from_secs(1);
            Some(httpdate::fmt_http_date(at))
        }
        RetryAfter::Raw(s) => Some(s.clone()),
    }
}

async fn handle_proxy(
    sh: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, BoxError> {
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let path = parts.uri.path().to_string();
    let had_auth = parts.headers.contains_key(header::AUTHORIZATION);
    let faults = sh.faults();
    let counted = match faults.fault_path_contains.as_deref() {
        Some(s) => path.contains(s),
        None => true,
    };

    // 429 and 5xx never reach upstream.
    if counted {
        let injected = {
            let mut c = lock(&sh.counters);
            if c.sent_429 < faults.too_many_requests {
                c.sent_429 += 1;
                Some(FaultKind::TooManyRequests)
            } else if let Some(n) = faults.server_error_every.filter(|n| *n > 0) {
                c.numbered += 1;
                let under_limit = !matches!(faults.server_error_limit, Some(l) if c.sent_5xx >= l);
                if c.numbered.checked_rem(u64::from(n)) == Some(0) && under_limit {
                    let status = [500u16, 502, 503, 504][(c.sent_5xx % 4) as usize];
                    c.sent_5xx += 1;
                    Some(FaultKind::ServerError(status))
                } else {
                    None
                }
            } else {
                None
            }
        };
        if let Some(kind) = injected {
            drain(body).await;
            let resp = match &kind {
                FaultKind::TooManyRequests => {
                    let mut r = simple_response(
                        StatusCode::TOO_MANY_REQUESTS,
                        "text/plain; charset=utf-8",
                        "429 Too Many Requests: rate limit exceeded, slow down\n",
                    );
                    if let Some(v) = retry_after_value(&faults.retry_after) {
                        r.headers_mut().insert(
                            header::RETRY_AFTER,
                            HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("1")),
                        );
                    }
                    r
                }
                FaultKind::ServerError(code) => {
                    let status = StatusCode::from_u16(*code).expect("5xx status");
                    simple_response(
                        status,
                        "text/plain; charset=utf-8",
                        format!(
                            "{} {} (injected by testkit)\n",
                            code,
                            status.canonical_reason().unwrap_or("")
                        ),
                    )
                }
                _ => unreachable!(),
            };
            sh.record(&method, &pq, resp.status().as_u16(), had_auth, Some(kind));
            return Ok(resp);
        }
    }

    let kind = classify(&method, &path);

    if kind == Kind::BlobGet && faults.redirect_blob_get {
        return redirect_blob(sh, parts, pq, had_auth, &faults).await;
    }
    if let (Kind::TagsList(name), Some(page)) = (&kind, faults.paginate_tags) {
        return paginate_tags(sh, parts, pq, name.clone(), page.max(1), had_auth, &faults).await;
    }

    let upstream_req =
        sh.upstream_request(method.clone(), &pq, &parts.headers, incoming_body(body))?;
    let upstream = match sh.client.request(upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            let resp = simple_response(
                StatusCode::BAD_GATEWAY,
                "text/plain; charset=utf-8",
                format!("testkit proxy: upstream unreachable: {e}\n"),
            );
            sh.record(
                &method,
                &pq,
                502,
                had_auth,
                Some(FaultKind::UpstreamUnreachable),
            );
            return Ok(resp);
        }
    };
    let (uparts, ubody) = upstream.into_parts();
    let status = uparts.status;

    if kind == Kind::UploadPatch {
        let lose = {
            let mut c = lock(&sh.counters);
            if c.lost_patches < faults.lose_patch_reply {
                c.lost_patches += 1;
                true
            } else {
                false
            }
        };
        if lose {
            // Let upstream finish its reply, then hang up on the client.
            let _ = ubody.collect().await;
            sh.record(
                &method,
                &pq,
                status.as_u16(),
                had_auth,
                Some(FaultKind::LostReply),
            );
            return Err("testkit proxy: reply to PATCH deliberately lost".into());
        }
    }

    let headers = sh.client_headers(&uparts.headers, &faults);
    let mut fault = None;
    let body = if kind == Kind::BlobGet && status.is_success() {
        fault = sh.take_blob_fault(&faults);
        wrap_blob_body(ubody, &uparts.headers, fault.as_ref(), faults.stall_for)
    } else {
        incoming_body(ubody)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    sh.record(&method, &pq, status.as_u16(), had_auth, fault);
    Ok(resp)
}

fn wrap_blob_body(
    body: Incoming,
    headers: &HeaderMap,
    fault: Option<&FaultKind>,
    stall_for: Duration,
) -> ProxyBody {
    let len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let fault = match fault {
        Some(FaultKind::ResetMidBody) => BodyFault::Cut(len.map_or(0, |l| l / 2)),
        Some(FaultKind::FlippedByte) => BodyFault::Flip(len.map_or(0, |l| l / 2)),
        Some(FaultKind::StalledMidBody) => BodyFault::Stall(len.map_or(0, |l| l / 2), stall_for),
        _ => return incoming_body(body),
    };
    FaultBody {
        inner: body,
        fault,
        pos: 0,
        cutting: None,
        after_stall: None,
        done: false,
    }
    .boxed_unsync()
}

async fn redirect_blob(
    sh: Arc<Shared>,
    parts: hyper::http::request::Parts,
    pq: String,
    had_auth: bool,
    faults: &Faults,
) -> Result<Response<ProxyBody>, BoxError> {
    // Check (with the client's credentials) that upstream would serve it.
    let head = sh.upstream_request(Method::HEAD, &pq, &parts.headers, empty_body())?;
    let ok = match sh.client.request(head).await {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    };
    if !ok {
        // Pass upstream's real answer (with its error body) through.
        let get = sh.upstream_request(Method::GET, &pq, &parts.headers, empty_body())?;
        let resp = match sh.client.request(get).await {
            Ok(r) => {
                let (uparts, ubody) = r.into_parts();
                let mut resp = Response::new(incoming_body(ubody));
                *resp.status_mut() = uparts.status;
                *resp.headers_mut() = sh.client_headers(&uparts.headers, faults);
                resp
            }
            Err(e) => simple_response(
                StatusCode::BAD_GATEWAY,
                "text/plain; charset=utf-8",
                format!("testkit proxy: upstream unreachable: {e}\n"),
            ),
        };
        sh.record(&parts.method, &pq, resp.status().as_u16(), had_auth, None);
        return Ok(resp);
    }
    let id = {
        let mut c = lock(&sh.counters);
        c.next_ticket += 1;
        c.next_ticket
    };
    let query = format!("{STORAGE_QUERY}&ticket={id}");
    let digest = parts
        .uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or("blob")
        .to_string();
    lock(&sh.tickets).insert(
        id,
        Ticket {
            upstream_path_and_query: pq.clone(),
            authorization: parts.headers.get(header::AUTHORIZATION).cloned(),
            query: query.clone(),
        },
    );
    let location = format!("http://{}/storage/{id}/{digest}?{query}", sh.storage_host);
    let mut resp = simple_response(
        StatusCode::TEMPORARY_REDIRECT,
        "text/html; charset=utf-8",
        format!("<a href=\"{location}\">Temporary Redirect</a>.\n"),
    );
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&location)?);
    sh.record(
        &parts.method,
        &pq,
        307,
        had_auth,
        Some(FaultKind::Redirected),
    );
    Ok(resp)
}

async fn handle_storage(
    sh: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, BoxError> {
    let (parts, _body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let had_auth = parts.headers.contains_key(header::AUTHORIZATION);
    let faults = sh.faults();
    let id = parts
        .uri
        .path()
        .strip_prefix("/storage/")
        .and_then(|r| r.split('/').next())
        .and_then(|s| s.parse::<u64>().ok());
    let ticket = id.and_then(|id| {
        lock(&sh.tickets).get(&id).map(|t| {
            (
                t.upstream_path_and_query.clone(),
                t.authorization.clone(),
                t.query.clone(),
            )
        })
    });
    let record = |status: u16, matched: bool, fault: Option<FaultKind>| {
        lock(&sh.storage_records).push(StorageRequest {
            method: parts.method.to_string(),
            path_and_query: pq.clone(),
            had_authorization: had_auth,
            query_matched: matched,
            status,
            fault,
        });
    };
    let xml = "application/xml";
    let Some((upstream_pq, auth, query)) = ticket else {
        record(404, false, None);
        return Ok(simple_response(
            StatusCode::NOT_FOUND,
            xml,
            "<Error><Code>NoSuchKey</Code><Message>unknown storage ticket</Message></Error>\n",
        ));
    };
    let matched = parts.uri.query() == Some(query.as_str());
    if !matched {
        record(403, false, None);
        return Ok(simple_response(
            StatusCode::FORBIDDEN,
            xml,
            "<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided (query altered).</Message></Error>\n",
        ));
    }
    if had_auth {
        record(400, true, None);
        return Ok(simple_response(
            StatusCode::BAD_REQUEST,
            xml,
            "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified</Message></Error>\n",
        ));
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        record(405, true, None);
        return Ok(simple_response(
            StatusCode::METHOD_NOT_ALLOWED,
            xml,
            "<Error><Code>MethodNotAllowed</Code></Error>\n",
        ));
    }
    let mut headers = HeaderMap::new();
    if let Some(a) = auth {
        headers.insert(header::AUTHORIZATION, a);
    }
    for h in [
        header::RANGE,
        header::IF_NONE_MATCH,
        header::IF_MATCH,
        header::ACCEPT,
    ] {
        if let Some(v) = parts.headers.get(&h) {
            headers.insert(h, v.clone());
        }
    }
    let upstream_req =
        sh.upstream_request(parts.method.clone(), &upstream_pq, &headers, empty_body())?;
    let upstream = match sh.client.request(upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            record(502, true, None);
            return Ok(simple_response(
                StatusCode::BAD_GATEWAY,
                "text/plain",
                format!("storage: upstream unreachable: {e}\n"),
            ));
        }
    };
    let (uparts, ubody) = upstream.into_parts();
    let mut out = HeaderMap::new();
    for (k, v) in &uparts.headers {
        let n = k.as_str();
        if is_hop_by_hop(k)
            || n.starts_with("docker-")
            || n == "www-authenticate"
            || faults
                .strip_response_headers
                .iter()
                .any(|s| s.eq_ignore_ascii_case(n))
        {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    let mut fault = None;
    let body = if parts.method == Method::GET && uparts.status.is_success() {
        fault = sh.take_blob_fault(&faults);
        wrap_blob_body(ubody, &uparts.headers, fault.as_ref(), faults.stall_for)
    } else {
        incoming_body(ubody)
    };
    record(uparts.status.as_u16(), true, fault);
    let mut resp = Response::new(body);
    *resp.status_mut() = uparts.status;
    *resp.headers_mut() = out;
    Ok(resp)
}

#[allow(clippy::too_many_arguments)]
async fn paginate_tags(
    sh: Arc<Shared>,
    parts: hyper::http::request::Parts,
    pq: String,
    name: String,
    page: usize,
    had_auth: bool,
    faults: &Faults,
) -> Result<Response<ProxyBody>, BoxError> {
    let upstream_pq = format!("/v2/{name}/tags/list");
    let req = sh.upstream_request(Method::GET, &upstream_pq, &parts.headers, empty_body())?;
    let upstream = match sh.client.request(req).await {
        Ok(r) => r,
        Err(e) => {
            sh.record(
                &parts.method,
                &pq,
                502,
                had_auth,
                Some(FaultKind::UpstreamUnreachable),
            );
            return Ok(simple_response(
                StatusCode::BAD_GATEWAY,
                "text/plain",
                format!("upstream unreachable: {e}\n"),
            ));
        }
    };
    let (uparts, ubody) = upstream.into_parts();
    let bytes = ubody.collect().await?.to_bytes();
    let mut headers = sh.client_headers(&uparts.headers, faults);
    headers.remove(header::CONTENT_LENGTH);
    let parsed: Option<(String, Vec<String>)> = if uparts.status == StatusCode::OK {
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                let n = v.get("name")?.as_str()?.to_string();
                let tags = v
                    .get("tags")?
                    .as_array()?
                    .iter()
                    .map(|t| t.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()?;
                Some((n, tags))
            })
    } else {
        None
    };
    let Some((repo, mut tags)) = parsed else {
        // Error or `"tags": null`: pass upstream's answer through unchanged.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        let mut resp = Response::new(full_body(bytes));
        *resp.status_mut() = uparts.status;
        *resp.headers_mut() = headers;
        sh.record(&parts.method, &pq, uparts.status.as_u16(), had_auth, None);
        return Ok(resp);
    };
    tags.sort();
    let last = parts
        .uri
        .query()
        .map(parse_query)
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == "last")
        .map(|(_, v)| v);
    let remaining: Vec<String> = match &last {
        Some(l) => tags
            .into_iter()
            .filter(|t| t.as_str() > l.as_str())
            .collect(),
        None => tags,
    };
    let this_page: Vec<String> = remaining.iter().take(page).cloned().collect();
    if remaining.len() > page {
        let last_tag = this_page.last().cloned().unwrap_or_default();
        let link = format!("</v2/{name}/tags/list?n={page}&last={last_tag}&extra=1>; rel=\"next\"");
        headers.insert(header::LINK, HeaderValue::from_str(&link)?);
    }
    let body = serde_json::to_vec(&serde_json::json!({ "name": repo, "tags": this_page }))?;
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let mut resp = Response::new(full_body(body));
    *resp.headers_mut() = headers;
    sh.record(
        &parts.method,
        &pq,
        200,
        had_auth,
        Some(FaultKind::PaginatedTags),
    );
    Ok(resp)
}

enum BodyFault {
    /// Drop the connection once this many bytes went out.
    Cut(u64),
    /// XOR the byte at this offset with 0xff.
    Flip(u64),
    /// Pause this long once this many bytes went out, then go on.
    Stall(u64, Duration),
}

/// A blob body with one fault applied while streaming.
struct FaultBody {
    inner: Incoming,
    fault: BodyFault,
    pos: u64,
    /// After the cut: a short pause so hyper flushes what was sent, then an
    /// error that makes hyper abort the connection.
    cutting: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes kept back until a stall ends.
    after_stall: Option<Bytes>,
    done: bool,
}

impl Body for FaultBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let BodyFault::Cut(at) = this.fault {
            if this.pos >= at && this.cutting.is_none() {
                this.cutting = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
            }
        }
        if let BodyFault::Stall(at, pause) = this.fault {
            if this.pos >= at {
                let sleep = this
                    .cutting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
                ready!(sleep.as_mut().poll(cx));
                // Once paused, the rest of the body flows unchanged.
                this.fault = BodyFault::Stall(u64::MAX, pause);
                this.cutting = None;
            }
        }
        if let Some(sleep) = this.cutting.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.done = true;
            return Poll::Ready(Some(Err(
                "testkit proxy: connection dropped mid-blob (injected)".into(),
            )));
        }
        if let Some(rest) = this.after_stall.take() {
            this.pos += rest.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(rest))));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => {
                this.done = true;
                Poll::Ready(None)
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            Some(Ok(frame)) => {
                let data = match frame.into_data() {
                    Ok(d) => d,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                };
                let start = this.pos;
                let end = start + data.len() as u64;
                let data = match this.fault {
                    BodyFault::Stall(at, _) if start < at && end > at => {
                        // Send up to the pause point now, the rest after it.
                        let keep = (at - start) as usize;
                        this.pos = at;
                        this.after_stall = Some(data.slice(keep..));
                        data.slice(0..keep)
                    }
                    BodyFault::Cut(at) if end > at => {
                        let keep = (at - start) as usize;
                        this.pos = at;
                        this.cutting =
                            Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                        data.slice(0..keep)
                    }
                    BodyFault::Flip(at) if start <= at && at < end => {
                        let mut v = data.to_vec();
                        v[(at - start) as usize] ^= 0xff;
                        this.pos = end;
                        Bytes::from(v)
                    }
                    _ => {
                        this.pos = end;
                        data
                    }
                };
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_registry_paths() {
        assert_eq!(
            classify(&Method::GET, "/v2/a/b/blobs/sha256:abc"),
            Kind::BlobGet
        );
        assert_eq!(
            classify(&Method::GET, "/v2/a/blobs/sha512:abc"),
            Kind::BlobGet
        );
        assert_eq!(
            classify(&Method::HEAD, "/v2/a/blobs/sha256:abc"),
            Kind::Other
        );
        assert_eq!(
            classify(&Method::GET, "/v2/a/blobs/uploads/uuid"),
            Kind::Other
        );
        assert_eq!(
            classify(&Method::PATCH, "/v2/a/blobs/uploads/uuid"),
            Kind::UploadPatch
        );
        assert_eq!(
            classify(&Method::GET, "/v2/a/b/tags/list"),
            Kind::TagsList("a/b".into())
        );
        assert_eq!(classify(&Method::GET, "/v2/_catalog"), Kind::Other);
    }

    #[test]
    fn decodes_queries() {
        assert_eq!(
            parse_query("n=2&last=a%2Fb&x"),
            vec![
                ("n".into(), "2".into()),
                ("last".into(), "a/b".into()),
                ("x".into(), "".into())
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
