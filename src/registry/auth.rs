//! Authentication layer: answers `WWW-Authenticate` challenges with basic
//! credentials or bearer tokens, and caches tokens by realm, service and
//! scope until shortly before they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::HeaderValue;
use serde::Deserialize;
use tracing::debug;

use super::error::{error_chain, format_size};
use super::transport::read_capped;
use super::{Credentials, RegistryError, Secret};

/// Lifetime assumed for a token whose reply has no `expires_in`, as the
/// distribution token specification prescribes.
const DEFAULT_TOKEN_LIFETIME: u64 = 60;

/// Maximum token server reply size read. Replies are a few KiB of JSON: a
/// token, its lifetime and maybe a refresh token.
const MAX_TOKEN_REPLY_BYTES: usize = 1024 * 1024;

/// Access a request needs, as token-server scope strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope(Vec<String>);

impl Scope {
    /// Pull access to `repository`.
    pub fn pull(repository: &str) -> Self {
        Scope(vec![format!("repository:{repository}:pull")])
    }

    /// Pull and push access to `repository`; a registry needs both to push.
    pub fn push(repository: &str) -> Self {
        Scope(vec![format!("repository:{repository}:pull,push")])
    }

    /// Push access to `repository` plus pull access to `from`, for mounts.
    pub fn mount(repository: &str, from: &str) -> Self {
        let mut scope = Scope::push(repository);
        scope.0.push(format!("repository:{from}:pull"));
        scope
    }

    /// Listing the registry's catalog.
    pub fn catalog() -> Self {
        Scope(vec!["registry:catalog:*".to_string()])
    }

    fn key(&self) -> String {
        let mut items = self.0.clone();
        items.sort();
        items.join(" ")
    }
}

/// Challenge a registry sent in `WWW-Authenticate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// Parses `Basic realm="..."` or `Bearer realm="...",service="...",...`.
    pub fn parse(header: &str) -> Option<Self> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(params);
        Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
        })
    }
}

/// Splits `key="value", key=value` pairs; quoted values may hold commas.
fn parse_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        params.insert(key, value.to_string());
        rest = remainder.trim_start_matches(',').trim();
    }
    params
}

struct CachedToken {
    value: Secret,
    refresh_at: Instant,
}

#[derive(Deserialize)]
struct TokenReply {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Per-registry authentication state.
pub struct Authenticator {
    registry: String,
    credentials: Option<Credentials>,
    http: reqwest::Client,
    /// Maximum time one token request may take, its reply included.
    request_deadline: Duration,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, CachedToken>>,
    /// Serialises token fetches so concurrent requests share one token.
    fetch_lock: tokio::sync::Mutex<()>,
}

impl Authenticator {
    pub fn new(
        registry: &str,
        credentials: Option<Credentials>,
        http: reqwest::Client,
        request_deadline: Duration,
    ) -> Self {
        Authenticator {
            registry: registry.to_string(),
            credentials,
            http,
            request_deadline,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            fetch_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Returns the `Authorization` value for a request with `scope`, once a
    /// challenge is known, fetching a token when none is cached.
    pub async fn header(&self, scope: &Scope) -> Result<Option<HeaderValue>, RegistryError> {
        let challenge = self.challenge.lock().expect("auth lock poisoned").clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.basic_header()),
            Some(Challenge::Bearer { realm, service }) => {
                self.bearer_header(&realm, service.as_deref(), scope, None)
                    .await
            }
        }
    }

    /// Records the challenge of a 401 and returns the header to replay the
    /// request with, or `None` when there is nothing new to try.
    pub async fn on_unauthorized(
        &self,
        www_authenticate: Option<&HeaderValue>,
        scope: &Scope,
        sent: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let challenge = www_authenticate
            .and_then(|h| h.to_str().ok())
            .and_then(Challenge::parse);
        let Some(challenge) = challenge else {
            return Ok(None);
        };
        *self.challenge.lock().expect("auth lock poisoned") = Some(challenge.clone());
        let header = match challenge {
            Challenge::Basic => self.basic_header(),
            Challenge::Bearer { realm, service } => {
                debug!(registry = %self.registry, %realm, "token rejected or missing, fetching a new one");
                // A 401 to a request without a token only names the
                // challenge, so a cached token may still be used.
                self.bearer_header(&realm, service.as_deref(), scope, sent)
                    .await?
            }
        };
        Ok(header.filter(|h| Some(h) != sent))
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let (username, password) = match self.credentials.as_ref()? {
            Credentials::Basic { username, password } => (username, password),
            Credentials::IdentityToken { .. } => return None,
        };
        let raw = format!("{username}:{}", password.expose());
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        sensitive_header(&format!("Basic {encoded}"))
    }

    /// Returns a bearer header for `scope`. `rejected` is the header a
    /// registry just answered 401 to: it is never returned again, and a
    /// token fetched meanwhile by a concurrent request is reused, so one
    /// expiry costs one token request.
    async fn bearer_header(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &Scope,
        rejected: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let key = format!("{realm}|{}|{}", service.unwrap_or(""), scope.key());
        if let Some(header) = self.cached_header(&key, rejected) {
            return Ok(Some(header));
        }
        let _guard = self.fetch_lock.lock().await;
        if let Some(header) = self.cached_header(&key, rejected) {
            return Ok(Some(header));
        }
        let token = self.fetch_token(realm, service, scope).await?;
        let header = bearer(&token.value);
        self.tokens
            .lock()
            .expect("auth lock poisoned")
            .insert(key, token);
        Ok(header)
    }

    fn cached_header(&self, key: &str, rejected: Option<&HeaderValue>) -> Option<HeaderValue> {
        let header = bearer(&self.cached(key)?)?;
        (Some(&header) != rejected).then_some(header)
    }

    fn cached(&self, key: &str) -> Option<Secret> {
        let tokens = self.tokens.lock().expect("auth lock poisoned");
        let token = tokens.get(key)?;
        (Instant::now() < token.refresh_at).then(|| token.value.clone())
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &Scope,
    ) -> Result<CachedToken, RegistryError> {
        let request = self
            .token_request(realm, service, scope)
            .timeout(self.request_deadline);
        let started = Instant::now();
        let failed = |step: &str, error: reqwest::Error| {
            let reason = if error.is_timeout() && started.elapsed() >= self.request_deadline {
                format!(
                    "{step} {realm} timed out after {}s, the limit for token requests (5 × read_timeout, at least 5 minutes)",
                    self.request_deadline.as_secs()
                )
            } else {
                format!("{step} {realm} failed: {}", error_chain(&error))
            };
            self.auth_error(reason)
        };
        let mut response = request
            .send()
            .await
            .map_err(|e| failed("token request to", e))?;
        let status = response.status();
        let body = read_capped(&mut response, MAX_TOKEN_REPLY_BYTES)
            .await
            .map_err(|e| failed("token reply from", e))?;
        if body.truncated && status.is_success() {
            return Err(self.auth_error(format!(
                "token reply from {realm} is larger than {}, the limit syncer reads; check the token server",
                format_size(MAX_TOKEN_REPLY_BYTES as u64)
            )));
        }
        let body = body.bytes;
        if !status.is_success() {
            let detail = super::error::ErrorBody::parse(&body);
            return Err(
                self.auth_error(format!("token server {realm} returned {status}: {detail}"))
            );
        }
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| {
            self.auth_error(format!("token server {realm} returned invalid JSON: {e}"))
        })?;
        let value = reply
            .token
            .or(reply.access_token)
            .ok_or_else(|| self.auth_error(format!("token server {realm} returned no token")))?;
        let lifetime = reply.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME).max(1);
        // Refresh a fifth of the lifetime early, at most 30 s, so a token
        // does not expire between this check and the registry's.
        let margin = (lifetime / 5).min(30);
        debug!(registry = %self.registry, scope = %scope.key(), lifetime, "fetched token");
        Ok(CachedToken {
            value: Secret::new(value),
            refresh_at: Instant::now() + Duration::from_secs(lifetime - margin),
        })
    }

    fn token_request(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &Scope,
    ) -> reqwest::RequestBuilder {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(service) = service {
            query.push(("service", service));
        }
        for item in &scope.0 {
            query.push(("scope", item));
        }
        match &self.credentials {
            Some(Credentials::IdentityToken { token, .. }) => {
                let scopes = scope.0.join(" ");
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("client_id", "syncer"),
                    ("refresh_token", token.expose()),
                    ("scope", scopes.as_str()),
                ];
                if let Some(service) = service {
                    form.push(("service", service));
                }
                self.http.post(realm).form(&form)
            }
            Some(Credentials::Basic { username, password }) => self
                .http
                .get(realm)
                .query(&query)
                .basic_auth(username, Some(password.expose())),
            None => self.http.get(realm).query(&query),
        }
    }

    fn auth_error(&self, reason: String) -> RegistryError {
        RegistryError::Auth {
            registry: self.registry.clone(),
            reason,
        }
    }
}

fn bearer(token: &Secret) -> Option<HeaderValue> {
    sensitive_header(&format!("Bearer {}", token.expose()))
}

/// Builds a header value marked sensitive, so HTTP-level logs hide it.
fn sensitive_header(text: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let header = r#"Bearer realm="https://127.0.0.1:1/token",service="reg,istry",scope="repository:a:pull",error="invalid_token""#;
        let challenge = Challenge::parse(header).unwrap();
        assert_eq!(
            challenge,
            Challenge::Bearer {
                realm: "https://127.0.0.1:1/token".into(),
                service: Some("reg,istry".into()),
            }
        );
    }

    #[test]
    fn parses_basic_challenge() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
    }

    #[test]
    fn scope_key_ignores_order() {
        let a = Scope(vec!["b".into(), "a".into()]);
        let b = Scope(vec!["a".into(), "b".into()]);
        assert_eq!(a.key(), b.key());
    }
}
