//! Token server for registries under `auth: token`, and the fake docker
//! credential helper's location.
//!
//! This module owns [`TokenServer`]: a plain-HTTP token endpoint on
//! `127.0.0.1:<random port>` (`/token`) implementing the Docker registry
//! token protocol. It signs ES256 JWTs (raw r||s signatures) that Docker
//! Distribution 2.8.2 accepts: the signing key and a self-signed
//! certificate for it are written to a temporary directory whose PEM file is
//! the registry's `rootcertbundle` ([`TokenServer::auth_config`]). Every
//! token request is recorded ([`TokenServer::requests`]) so tests can check
//! exactly which scopes a client asked for. Passwords and tokens are never
//! logged or recorded.
//!
//! It also owns [`credential_helper_dir`], which finds (building it once if
//! needed) the `docker-credential-fake` binary from `src/bin/`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};

use crate::proxy::{
    bind_loopback, parse_query, simple_response, spawn_servers, BoxError, Handler, HandlerError,
    ProxyBody, ServerThread,
};
use crate::registry::TokenAuthConfig;

/// Docker Distribution 2.8 accepts a token up to 60 s after its `exp`
/// (and 60 s before its `nbf`) to allow for clock skew. The server takes it
/// off `exp` so a token really stops working after its lifetime.
pub const REGISTRY_CLOCK_LEEWAY_SECS: u64 = 60;

/// What the token protocol says a client must assume when `expires_in` is
/// left out of the reply; also the real lifetime of such tokens.
pub const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 60;

/// One entry of a token's `access` claim, or one parsed `scope`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `repository`, `registry`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// `a/b`, `catalog`, ...
    pub name: String,
    /// `pull`, `push`, `delete`, `*`, ...
    pub actions: Vec<String>,
}

/// Parses one scope `TYPE:NAME:ACTIONS` (e.g. `repository:a/b:pull,push`,
/// `registry:catalog:*`). The name is everything between the first and the
/// last `:` (so `repository:localhost:5000/x:pull` has name
/// `localhost:5000/x`). Returns `None` for anything else.
pub fn parse_scope(scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    let actions = actions
        .split(',')
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    Some(Access {
        kind: kind.to_string(),
        name: name.to_string(),
        actions,
    })
}

/// `f(account, requested)` for [`Grant::Custom`]: the actions granted.
pub type GrantFn = Arc<dyn Fn(&str, &Access) -> Vec<String> + Send + Sync>;

/// What an authenticated user is granted.
#[derive(Clone, Default)]
pub enum Grant {
    /// Exactly the actions asked for, for every resource asked for.
    #[default]
    AsRequested,
    /// Only `pull` on the repositories asked for (asked with `pull` or `*`).
    PullOnly,
    /// An empty `access` claim (the registry then answers 401/403).
    Nothing,
    /// `f(account, requested)` returns the actions granted on that resource
    /// (an empty list drops the entry).
    Custom(GrantFn),
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grant::AsRequested => f.write_str("AsRequested"),
            Grant::PullOnly => f.write_str("PullOnly"),
            Grant::Nothing => f.write_str("Nothing"),
            Grant::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// How the JWT header names the signing key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyReference {
    /// `x5c`: the signing certificate itself (chains to the rootcertbundle).
    #[default]
    X5c,
    /// `kid`: the libtrust key ID of the certificate's public key.
    LibtrustKid,
}

/// Settings for [`TokenServer::start`].
#[derive(Clone)]
pub struct TokenOptions {
    /// `(user, password)` pairs accepted with HTTP Basic auth (GET) or the
    /// OAuth2 password grant (POST).
    pub users: Vec<(String, String)>,
    /// `(user, refresh token)` pairs accepted with the OAuth2
    /// `refresh_token` grant (POST), as docker's `identitytoken` is sent.
    /// Each user must also be listed in `users`.
    pub refresh_tokens: Vec<(String, String)>,
    /// Requests without credentials get `pull` on the repositories they ask
    /// for (nothing else). When false they get 401.
    pub anonymous_pull: bool,
    /// `expires_in` of the reply, and the tokens' real lifetime; `None`
    /// leaves `expires_in` out of the reply and the tokens then last
    /// [`DEFAULT_TOKEN_LIFETIME_SECS`]. Default `Some(300)`.
    pub expires_in: Option<u64>,
    /// What authenticated users get. Default: exactly what they ask for.
    pub grant: Grant,
    /// Expected `service` (the registry's `auth.token.service`). Tokens use
    /// the request's `service` parameter as `aud` (like real token servers),
    /// this value only when the request names none.
    pub service: String,
    /// `iss` of the tokens (the registry's `auth.token.issuer`).
    pub issuer: String,
    /// How the JWT header identifies the key. Default `x5c`.
    pub key_reference: KeyReference,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            users: Vec::new(),
            refresh_tokens: Vec::new(),
            anonymous_pull: false,
            expires_in: Some(300),
            grant: Grant::AsRequested,
            service: "testkit-registry".to_string(),
            issuer: "testkit-token-issuer".to_string(),
            key_reference: KeyReference::X5c,
        }
    }
}

impl std::fmt::Debug for TokenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: Vec<(&str, &str)> = self
            .users
            .iter()
            .map(|(u, _)| (u.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("TokenOptions")
            .field("users", &users)
            .field("refresh_tokens", &self.refresh_tokens.len())
            .field("anonymous_pull", &self.anonymous_pull)
            .field("expires_in", &self.expires_in)
            .field("grant", &self.grant)
            .field("service", &self.service)
            .field("issuer", &self.issuer)
            .field("key_reference", &self.key_reference)
            .finish()
    }
}

/// One request the token server received. Holds no password and no token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` (Basic auth) or `POST` (OAuth2 form).
    pub method: String,
    /// The user the credentials named (whether or not they were right);
    /// `None` for an anonymous request.
    pub account: Option<String>,
    /// The `account` query/form parameter, as sent.
    pub account_param: Option<String>,
    /// Every scope asked for, in order, as sent (a parameter holding
    /// several space-separated scopes counts as several).
    pub scopes: Vec<String>,
    /// The `service` parameter, as sent.
    pub service: Option<String>,
    /// Status of the answer (200, 400, 401).
    pub status: u16,
    /// The `access` claim of the issued token (empty unless 200).
    pub granted: Vec<Access>,
}

/// A token endpoint on `127.0.0.1:<random port>` signing ES256 JWTs; stops
/// on drop.
pub struct TokenServer {
    url: String,
    shared: Arc<TokenShared>,
    cert_path: PathBuf,
    _dir: tempfile::TempDir,
    _server: ServerThread,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("url", &self.url)
            .field("cert", &self.cert_path)
            .finish()
    }
}

struct TokenShared {
    opts: TokenOptions,
    expires_in: Mutex<Option<u64>>,
    lifetime_override: Mutex<Option<u64>>,
    key: EcdsaKeyPair,
    rng: SystemRandom,
    cert_der: Vec<u8>,
    kid: String,
    requests: Mutex<Vec<TokenRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TokenServer {
    /// Generates a P-256 key and a self-signed certificate (CN = issuer)
    /// into a new temporary directory (`token-cert.pem`, `token-key.pem`)
    /// and starts serving `http://127.0.0.1:PORT/token`.
    pub fn start(opts: TokenOptions) -> TokenServer {
        let dir = tempfile::Builder::new()
            .prefix("testkit-token-")
            .tempdir()
            .expect("tempdir");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let mut params =
            rcgen::CertificateParams::new(vec![opts.issuer.clone()]).expect("cert params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, opts.issuer.clone());
        let cert = params.self_signed(&key).expect("self-signed cert");
        let cert_path = dir.path().join("token-cert.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write token cert");
        std::fs::write(dir.path().join("token-key.pem"), key.serialize_pem())
            .expect("write token key");
        let rng = SystemRandom::new();
        let signing =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
                .expect("ring accepts the P-256 key");
        let kid = libtrust_key_id(&key.public_key_der());
        let (listener, host) = bind_loopback();
        let shared = Arc::new(TokenShared {
            expires_in: Mutex::new(opts.expires_in),
            lifetime_override: Mutex::new(None),
            opts,
            key: signing,
            rng,
            cert_der: cert.der().to_vec(),
            kid,
            requests: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let handler: Handler = Arc::new(move |req| {
            let s = s.clone();
            Box::pin(async move { handle_token(s, req).await.map_err(HandlerError::from_box) })
        });
        let server = spawn_servers("testkit-token-server", vec![(listener, handler)]);
        TokenServer {
            url: format!("http://{host}/token"),
            shared,
            cert_path,
            _dir: dir,
            _server: server,
        }
    }

    /// The token endpoint, `http://127.0.0.1:PORT/token` (the realm).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// `auth.token` settings for a registry that trusts this server.
    pub fn auth_config(&self) -> TokenAuthConfig {
        TokenAuthConfig {
            realm: self.url.clone(),
            service: self.shared.opts.service.clone(),
            issuer: self.shared.opts.issuer.clone(),
            rootcertbundle: self.cert_path.clone(),
        }
    }

    /// PEM file with the signing certificate (the `rootcertbundle`).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The libtrust key ID of the signing key (what `kid` carries with
    /// [`KeyReference::LibtrustKid`]).
    pub fn key_id(&self) -> String {
        self.shared.kid.clone()
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Changes `expires_in` (and, unless [`TokenServer::set_token_lifetime`]
    /// overrides it, the real lifetime) of the tokens issued from now on.
    /// `None` leaves `expires_in` out of replies.
    pub fn set_expires_in(&self, expires_in: Option<u64>) {
        *lock(&self.shared.expires_in) = expires_in;
    }

    /// Makes tokens issued from now on stop working at the registry after
    /// `secs` seconds (whole seconds, so between `secs - 1` and `secs`),
    /// whatever `expires_in` the reply states; `None` goes back to
    /// following `expires_in`. With `Some(1)` and a reply still saying 300,
    /// a client that trusts `expires_in` meets a 401 mid-run.
    pub fn set_token_lifetime(&self, secs: Option<u64>) {
        *lock(&self.shared.lifetime_override) = secs;
    }
}

fn libtrust_key_id(spki_der: &[u8]) -> String {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(spki_der);
    let b32 = base32_no_pad(&sum[..30]);
    let chunks: Vec<String> = b32
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    chunks.join(":")
}

fn base32_no_pad(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buf: u64 = 0;
    let mut bits = 0;
    for &b in data {
        buf = (buf << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time.
fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<ProxyBody> {
    simple_response(
        status,
        "application/json",
        serde_json::to_vec(&v).unwrap_or_default(),
    )
}

fn unauthorized(message: &str) -> Response<ProxyBody> {
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": message, "detail": null}]}),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"testkit token server\""),
    );
    r
}

/// Parsed request, before authorization.
struct Asked {
    user: Option<String>,
    password: Option<String>,
    malformed_auth: bool,
    account_param: Option<String>,
    scopes: Vec<String>,
    service: Option<String>,
    grant_type: Option<String>,
    refresh_token: Option<String>,
}

fn basic_credentials(v: &HeaderValue) -> Option<(String, String)> {
    let v = v.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let s = String::from_utf8(decoded).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

async fn handle_token(
    sh: Arc<TokenShared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, BoxError> {
    let (parts, body) = req.into_parts();
    if parts.uri.path() != "/token" {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found"}),
        ));
    }
    let pairs = match parts.method {
        Method::GET => parts.uri.query().map(parse_query).unwrap_or_default(),
        Method::POST => {
            let bytes = body.collect().await?.to_bytes();
            parse_query(&String::from_utf8_lossy(&bytes))
        }
        _ => {
            return Ok(json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method_not_allowed"}),
            ))
        }
    };
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let mut asked = Asked {
        user: None,
        password: None,
        malformed_auth: false,
        account_param: get("account"),
        scopes,
        service: get("service"),
        grant_type: get("grant_type"),
        refresh_token: get("refresh_token"),
    };
    if parts.method == Method::POST && asked.grant_type.as_deref() == Some("refresh_token") {
        // A refresh token stands for its user's password: look the user up
        // and authenticate as that user with the matching password slot.
        let user = asked.refresh_token.as_ref().and_then(|t| {
            sh.opts
                .refresh_tokens
                .iter()
                .find(|(_, token)| token == t)
                .map(|(user, _)| user.clone())
        });
        // An unknown refresh token is answered 400 `invalid_grant` below.
        if let Some(user) = user {
            asked.password = sh
                .opts
                .users
                .iter()
                .find(|(u, _)| *u == user)
                .map(|(_, p)| p.clone());
            asked.user = Some(user);
        }
    } else if parts.method == Method::POST {
        asked.user = get("username");
        asked.password = get("password");
    } else if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
        match basic_credentials(v) {
            Some((u, p)) => {
                asked.user = Some(u);
                asked.password = Some(p);
            }
            None => asked.malformed_auth = true,
        }
    }
    let (resp, status, granted) = answer(&sh, &parts.method, &asked);
    lock(&sh.requests).push(TokenRequest {
        method: parts.method.to_string(),
        account: asked.user.clone(),
        account_param: asked.account_param.clone(),
        scopes: asked.scopes.clone(),
        service: asked.service.clone(),
        status,
        granted,
    });
    Ok(resp)
}

fn answer(
    sh: &TokenShared,
    method: &Method,
    asked: &Asked,
) -> (Response<ProxyBody>, u16, Vec<Access>) {
    let grant_ok = matches!(
        asked.grant_type.as_deref(),
        Some("password") | Some("refresh_token")
    );
    if *method == Method::POST
        && asked.grant_type.as_deref() == Some("refresh_token")
        && asked.user.is_none()
    {
        let r = json_response(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "invalid_grant", "error_description": "unknown refresh token"}),
        );
        return (r, 400, Vec::new());
    }
    if *method == Method::POST && !grant_ok {
        let r = json_response(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "unsupported_grant_type", "error_description": "only grant_type=password and refresh_token are supported"}),
        );
        return (r, 400, Vec::new());
    }
    // Parse and merge the scopes.
    let mut requested: Vec<Access> = Vec::new();
    for s in &asked.scopes {
        let Some(a) = parse_scope(s) else {
            let r = json_response(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"errors": [{"code": "DENIED", "message": format!("invalid scope {s:?}")}]}),
            );
            return (r, 400, Vec::new());
        };
        match requested
            .iter_mut()
            .find(|r| r.kind == a.kind && r.name == a.name)
        {
            Some(existing) => {
                for act in a.actions {
                    if !existing.actions.contains(&act) {
                        existing.actions.push(act);
                    }
                }
            }
            None => requested.push(a),
        }
    }
    // Authenticate.
    if asked.malformed_auth {
        return (
            unauthorized("malformed Authorization header"),
            401,
            Vec::new(),
        );
    }
    let granted: Vec<Access> = match (&asked.user, &asked.password) {
        (Some(u), Some(p)) => {
            let ok = sh.opts.users.iter().any(|(uu, pp)| uu == u && pp == p);
            if !ok {
                return (
                    unauthorized("invalid username or password"),
                    401,
                    Vec::new(),
                );
            }
            match &sh.opts.grant {
                Grant::AsRequested => requested.clone(),
                Grant::PullOnly => pull_only(&requested),
                Grant::Nothing => Vec::new(),
                Grant::Custom(f) => requested
                    .iter()
                    .filter_map(|a| {
                        let actions = f(u, a);
                        (!actions.is_empty()).then(|| Access {
                            actions,
                            ..a.clone()
                        })
                    })
                    .collect(),
            }
        }
        (Some(_), None) | (None, Some(_)) => {
            return (
                unauthorized("username and password are both required"),
                401,
                Vec::new(),
            );
        }
        (None, None) => {
            if !sh.opts.anonymous_pull {
                return (unauthorized("authentication required"), 401, Vec::new());
            }
            pull_only(&requested)
        }
    };
    let service = asked
        .service
        .clone()
        .unwrap_or_else(|| sh.opts.service.clone());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let expires_in = *lock(&sh.expires_in);
    let lifetime =
        lock(&sh.lifetime_override).unwrap_or(expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME_SECS));
    // Signed integer: a short lifetime puts `exp` before `iat`, which the
    // registry accepts (it only compares `exp + leeway` with its clock).
    let exp = now as i64 + lifetime as i64 - REGISTRY_CLOCK_LEEWAY_SECS as i64;
    let mut jti = [0u8; 16];
    let _ = sh.rng.fill(&mut jti);
    let claims = serde_json::json!({
        "iss": sh.opts.issuer,
        "sub": asked.user.clone().unwrap_or_default(),
        "aud": service,
        "exp": exp,
        "nbf": now,
        "iat": now,
        "jti": hex::encode(jti),
        "access": granted,
    });
    let token = match sign_jwt(sh, &claims) {
        Ok(t) => t,
        Err(e) => {
            let r = json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": e.to_string()}),
            );
            return (r, 500, Vec::new());
        }
    };
    let mut reply = serde_json::json!({
        "token": token,
        "access_token": token,
        "issued_at": rfc3339(now),
    });
    if let Some(e) = expires_in {
        reply["expires_in"] = serde_json::json!(e);
    }
    (json_response(StatusCode::OK, reply), 200, granted)
}

fn pull_only(requested: &[Access]) -> Vec<Access> {
    requested
        .iter()
        .filter(|a| a.kind == "repository" && a.actions.iter().any(|x| x == "pull" || x == "*"))
        .map(|a| Access {
            actions: vec!["pull".to_string()],
            ..a.clone()
        })
        .collect()
}

fn sign_jwt(sh: &TokenShared, claims: &serde_json::Value) -> Result<String, BoxError> {
    let header = match sh.opts.key_reference {
        KeyReference::X5c => {
            serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&sh.cert_der)]})
        }
        KeyReference::LibtrustKid => {
            serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": sh.kid})
        }
    };
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
    );
    let sig = sh
        .key
        .sign(&sh.rng, signing_input.as_bytes())
        .map_err(|_| "ES256 signing failed")?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(sig.as_ref())
    ))
}

// ---------------------------------------------------------------------------
// Fake docker credential helper
// ---------------------------------------------------------------------------

/// Name of the fake helper binary; a client configured with
/// `credHelpers: {"host": "fake"}` / `credsStore: "fake"` runs it.
pub const CREDENTIAL_HELPER_BIN: &str = "docker-credential-fake";

/// The folder holding the built `docker-credential-fake` binary (put it
/// first on `PATH` of the process under test). Builds it once per process
/// with `cargo build -p testkit --bin docker-credential-fake` when it is
/// missing (`cargo test -p testkit` builds it anyway; a dependent crate's
/// tests do not).
///
/// The folder is the profile directory of the running test binary
/// (`<target>/debug` when the test runs from `<target>/debug/deps`), else
/// `$CARGO_TARGET_DIR/debug`.
///
/// The binary reads its store from the JSON file named by
/// `FAKE_CREDENTIALS_FILE` (`{"<server URL>": {"Username": "...",
/// "Secret": "..."}}`, keys matched exactly against what arrives on stdin)
/// and appends one JSON line per call (`{"action":..,"server_url":..}`,
/// never the secret) to `FAKE_CREDENTIALS_LOG` when set.
///
/// # Panics
/// If the build fails or the binary cannot be found afterwards.
pub fn credential_helper_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let (profile_dir, target_dir, profile) = locate_profile_dir();
        let bin = profile_dir.join(format!(
            "{CREDENTIAL_HELPER_BIN}{}",
            std::env::consts::EXE_SUFFIX
        ));
        if !bin.is_file() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "testkit",
                "--bin",
                CREDENTIAL_HELPER_BIN,
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
            match profile.as_str() {
                "debug" => {}
                "release" => {
                    cmd.arg("--release");
                }
                other => {
                    cmd.args(["--profile", other]);
                }
            }
            let out = cmd
                .output()
                .expect("run cargo build for docker-credential-fake");
            assert!(
                out.status.success(),
                "building {CREDENTIAL_HELPER_BIN} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(bin.is_file(), "{} missing after cargo build", bin.display());
        }
        profile_dir
    })
    .clone()
}

/// `(profile dir, target dir, profile name)` for the running executable.
fn locate_profile_dir() -> (PathBuf, PathBuf, String) {
    if let Ok(exe) = std::env::current_exe() {
        let parent = exe.parent().map(Path::to_path_buf);
        // Test binaries live in <target>/<profile>/deps.
        let profile_dir = match parent {
            Some(p) if p.file_name().is_some_and(|n| n == "deps") => {
                p.parent().map(Path::to_path_buf)
            }
            Some(p) if p.parent().is_some_and(|t| t.join("CACHEDIR.TAG").is_file()) => Some(p),
            _ => None,
        };
        if let Some(pd) = profile_dir {
            if let Some(target) = pd.parent() {
                let name = pd
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let profile = if name == "debug" {
                    "debug".to_string()
                } else {
                    name
                };
                return (pd.clone(), target.to_path_buf(), profile);
            }
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let target = if target.is_relative() {
        std::env::current_dir()
            .map(|d| d.join(&target))
            .unwrap_or(target)
    } else {
        target
    };
    (target.join("debug"), target, "debug".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scopes() {
        assert_eq!(
            parse_scope("repository:a/b:pull,push"),
            Some(Access {
                kind: "repository".into(),
                name: "a/b".into(),
                actions: vec!["pull".into(), "push".into()]
            })
        );
        assert_eq!(
            parse_scope("registry:catalog:*"),
            Some(Access {
                kind: "registry".into(),
                name: "catalog".into(),
                actions: vec!["*".into()]
            })
        );
        assert_eq!(
            parse_scope("repository:localhost:5000/x:pull")
                .unwrap()
                .name,
            "localhost:5000/x"
        );
        assert_eq!(parse_scope("nonsense"), None);
        assert_eq!(parse_scope("repository::pull"), None);
    }

    #[test]
    fn formats_times_and_key_ids() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(base32_no_pad(b"foobar"), "MZXW6YTBOI");
        let kid = libtrust_key_id(b"anything");
        assert_eq!(kid.len(), 48 + 11);
        assert_eq!(kid.split(':').count(), 12);
    }
}
