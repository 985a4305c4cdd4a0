//! Registry operations over the distribution API: catalog, tags, manifests
//! and blobs. Call sites never attach credentials; the transport does.

use std::collections::HashSet;
use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LINK, LOCATION,
};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tracing::debug;
use url::Url;

use super::auth::Scope;
use super::error::{format_size, RequestInfo};
use super::transport::{read_capped, transport_error, Reply, Req, Transport};
use super::{ConnectionSettings, RegistryError};
use crate::oci::{
    content_digest, Descriptor, Digest, DigestHasher, Manifest, MediaType, Repository, Target,
};

/// Limits of one catalog or tag list, so that a registry whose `next` links
/// never end, or whose pages never end, cannot hang syncer or exhaust its
/// memory. A catalog of 1000 names per page takes about 50 KiB per page.
const MAX_LIST_PAGES: usize = 10_000;
const MAX_LIST_ENTRIES: usize = 1_000_000;
const MAX_LIST_PAGE_BYTES: usize = 16 * 1024 * 1024;
const MAX_LIST_BYTES: usize = 256 * 1024 * 1024;

/// Maximum manifest size read. Docker Distribution rejects manifest pushes
/// over 4 MiB (`maxManifestBodySize` in registry/handlers/manifests.go), and
/// containerd reads at most 4 × 1048 × 1048 bytes (`MaxManifestSize`).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Largest catalog page Docker Distribution accepts. Above it, 2.8.2
/// returns 400 `PAGINATION_NUMBER_INVALID`.
const CATALOG_PAGE: usize = 1000;

/// Stream of blob bytes; its last item is an error when the content did not
/// match the expected digest or size.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>;

/// What a manifest HEAD reveals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: MediaType,
    pub size: u64,
}

/// Access a request needs to a repository: sources are read, while
/// destinations are read and written in the same run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
}

impl Access {
    fn scope(self, repository: &Repository) -> Scope {
        match self {
            Access::Pull => Scope::pull(repository.as_str()),
            Access::Push => Scope::push(repository.as_str()),
        }
    }
}

/// Result of opening a blob upload.
pub enum UploadStart {
    /// The registry linked the blob from another repository (201).
    Mounted,
    /// An upload session to send the bytes to.
    Session(Url),
}

#[derive(Deserialize)]
struct CatalogPage {
    #[serde(default)]
    repositories: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct TagsPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// A paginated list of the distribution API.
#[derive(Clone, Copy)]
enum List {
    Catalog,
    Tags,
}

impl List {
    fn name(self) -> &'static str {
        match self {
            List::Catalog => "catalog",
            List::Tags => "tag list",
        }
    }

    fn page_name(self) -> &'static str {
        match self {
            List::Catalog => "catalog page",
            List::Tags => "tag list page",
        }
    }

    /// Returns the entries of one page's JSON.
    fn entries(self, info: &RequestInfo, body: &[u8]) -> Result<Vec<String>, RegistryError> {
        let entries = match self {
            List::Catalog => parse_json::<CatalogPage>(info, body)?.repositories,
            List::Tags => parse_json::<TagsPage>(info, body)?.tags,
        };
        Ok(entries.unwrap_or_default())
    }
}

/// Client for one registry host.
pub struct RegistryClient {
    transport: Transport,
}

impl RegistryClient {
    pub fn new(host: &str, settings: ConnectionSettings) -> Result<Self, RegistryError> {
        Ok(RegistryClient {
            transport: Transport::new(host, &settings)?,
        })
    }

    pub fn host(&self) -> &str {
        &self.transport.registry
    }

    /// Lists every repository in the registry's catalog.
    pub async fn catalog(&self) -> Result<Vec<String>, RegistryError> {
        let first = self.transport.url(&format!("v2/_catalog?n={CATALOG_PAGE}"));
        match self.pages(List::Catalog, first, Scope::catalog()).await {
            Err(e) if e.has_code("PAGINATION_NUMBER_INVALID") => {
                let first = self.transport.url("v2/_catalog");
                self.pages(List::Catalog, first, Scope::catalog()).await
            }
            other => other,
        }
    }

    /// Lists the tags of `repository`; a repository whose tags were all
    /// deleted has none.
    pub async fn tags(&self, repository: &Repository) -> Result<Vec<String>, RegistryError> {
        self.tags_as(repository, Access::Pull).await
    }

    /// Like [`Self::tags`], asking for `access` to the repository.
    pub async fn tags_as(
        &self,
        repository: &Repository,
        access: Access,
    ) -> Result<Vec<String>, RegistryError> {
        let first = self.transport.url(&format!("v2/{repository}/tags/list"));
        self.pages(List::Tags, first, access.scope(repository))
            .await
    }

    /// Fetches every page of a list, following `Link: <...>; rel="next"`
    /// relative to each request URL, and returns the entries of all pages.
    /// A repeated URL is an error, not a loop, and so are a link to another
    /// origin than the registry's and a list over the `MAX_LIST_*` limits.
    async fn pages(
        &self,
        list: List,
        first: Url,
        scope: Scope,
    ) -> Result<Vec<String>, RegistryError> {
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        let mut bytes_read = 0;
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let info = RequestInfo::new(&Method::GET, &url);
            let over_limit = |limit: String| {
                RegistryError::Protocol {
                request: info.clone(),
                reason: format!(
                    "the {} has more than {limit}, the limit syncer reads; check the registry's pagination",
                    list.name()
                ),
            }
            };
            if !seen.insert(url.to_string()) {
                return Err(RegistryError::Protocol {
                    request: info,
                    reason: "pagination repeated a page URL".into(),
                });
            }
            if seen.len() > MAX_LIST_PAGES {
                return Err(over_limit(format!("{MAX_LIST_PAGES} pages")));
            }
            let reply = self
                .transport
                .send(&Req::new(Method::GET, url.clone(), scope.clone()))
                .await?;
            next = next_link(&url, reply.response.headers());
            if let Some(link) = &next {
                self.transport
                    .check_own_origin(&info, link, "next-page Link")?;
            }
            let body = read_body(&info, reply, list.page_name(), MAX_LIST_PAGE_BYTES).await?;
            bytes_read += body.len();
            if bytes_read > MAX_LIST_BYTES {
                return Err(over_limit(format_size(MAX_LIST_BYTES as u64)));
            }
            entries.extend(list.entries(&info, &body)?);
            if entries.len() > MAX_LIST_ENTRIES {
                return Err(over_limit(format!("{MAX_LIST_ENTRIES} entries")));
            }
        }
        Ok(entries)
    }

    /// Returns the digest and type of a manifest, or `None` if it does not
    /// exist. Without `Docker-Content-Digest` the manifest is fetched and
    /// hashed instead.
    pub async fn head_manifest(
        &self,
        repository: &Repository,
        target: &Target,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        self.head_manifest_as(repository, target, Access::Pull)
            .await
    }

    /// Like [`Self::head_manifest`], asking for `access` to the repository:
    /// a destination asks for push too, so one token serves the whole run.
    pub async fn head_manifest_as(
        &self,
        repository: &Repository,
        target: &Target,
        access: Access,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        let url = self.manifest_url(repository, target);
        let req = Req::new(Method::HEAD, url, access.scope(repository))
            .header(ACCEPT, MediaType::ACCEPT_MANIFESTS);
        let reply = match self.transport.send(&req).await {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?,
        };
        let headers = reply.response.headers();
        let digest =
            header_str(headers, "docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
        let media_type = header_str(headers, CONTENT_TYPE.as_str()).map(MediaType::new);
        let size = header_str(headers, CONTENT_LENGTH.as_str()).and_then(|s| s.parse().ok());
        match (digest, media_type, size) {
            (Some(digest), Some(media_type), Some(size))
                if media_type.as_str() != "application/json" =>
            {
                Ok(Some(ManifestHead {
                    digest,
                    media_type,
                    size,
                }))
            }
            _ => {
                debug!(registry = %self.host(), %repository, "manifest HEAD lacks digest or type, fetching it");
                let manifest = self.get_manifest(repository, target).await?;
                Ok(Some(ManifestHead {
                    size: manifest.bytes.len() as u64,
                    digest: manifest.digest,
                    media_type: manifest.media_type,
                }))
            }
        }
    }

    /// Fetches a manifest's exact bytes. A manifest fetched by digest must
    /// hash to it; one fetched by tag must match `Docker-Content-Digest`.
    /// A signed schema1 manifest is checked by its signed payload.
    pub async fn get_manifest(
        &self,
        repository: &Repository,
        target: &Target,
    ) -> Result<Manifest, RegistryError> {
        let url = self.manifest_url(repository, target);
        let info = RequestInfo::new(&Method::GET, &url);
        let req = Req::new(Method::GET, url, Scope::pull(repository.as_str()))
            .header(ACCEPT, MediaType::ACCEPT_MANIFESTS);
        let reply = self.transport.send(&req).await?;
        let headers = reply.response.headers().clone();
        let body = read_body(&info, reply, "manifest", MAX_MANIFEST_BYTES).await?;
        let expected = match target {
            Target::Digest(d) => Some(d.clone()),
            Target::Tag(_) => {
                header_str(&headers, "docker-content-digest").and_then(|d| d.parse().ok())
            }
        };
        let algorithm = expected
            .as_ref()
            .map_or(crate::oci::Algorithm::Sha256, |d| d.algorithm());
        let content_type = header_str(&headers, CONTENT_TYPE.as_str());
        let media_type = Manifest::media_type_of(&body, content_type);
        let actual = content_digest(&body, &media_type, algorithm)?;
        let manifest = Manifest::new(body, content_type, actual.clone());
        match expected {
            Some(expected) if expected != actual => {
                Err(RegistryError::DigestMismatch { expected, actual })
            }
            _ => Ok(manifest),
        }
    }

    /// Pushes `manifest` byte for byte with its media type, under `target`.
    pub async fn put_manifest(
        &self,
        repository: &Repository,
        target: &Target,
        manifest: &Manifest,
    ) -> Result<(), RegistryError> {
        let url = self.manifest_url(repository, target);
        let info = RequestInfo::new(&Method::PUT, &url);
        let req = Req::new(Method::PUT, url, Scope::push(repository.as_str()))
            .header(CONTENT_TYPE, manifest.media_type.as_str())
            .body(manifest.bytes.clone());
        let reply = match self.transport.send(&req).await {
            Ok(reply) => reply,
            // Docker Distribution 2.8.2 without schema1 support returns 500
            // UNKNOWN, which hides the cause, so the error names it.
            Err(error) if manifest.media_type.is_schema1() && error.status().is_some() => {
                return Err(RegistryError::Schema1Refused {
                    source: Box::new(error),
                })
            }
            Err(error) => return Err(error),
        };
        let stored = header_str(reply.response.headers(), "docker-content-digest")
            .and_then(|d| d.parse::<Digest>().ok());
        match stored {
            Some(stored)
                if stored.algorithm() == manifest.digest.algorithm()
                    && stored != manifest.digest =>
            {
                Err(RegistryError::Protocol {
                    request: info,
                    reason: format!(
                        "registry stored the manifest as {stored}, expected {}",
                        manifest.digest
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// Deletes the manifest `digest`, which removes every tag pointing at it.
    pub async fn delete_manifest(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        let url = self.manifest_url(repository, &Target::Digest(digest.clone()));
        self.transport
            .send(&Req::new(
                Method::DELETE,
                url,
                Scope::push(repository.as_str()),
            ))
            .await?;
        Ok(())
    }

    /// Whether `repository` links the blob. Docker Distribution 2.8.2
    /// returns 404 for a blob that is in its store but not linked here.
    pub async fn blob_exists(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        self.blob_exists_as(repository, digest, Access::Pull).await
    }

    /// Like [`Self::blob_exists`], asking for `access` to the repository.
    pub async fn blob_exists_as(
        &self,
        repository: &Repository,
        digest: &Digest,
        access: Access,
    ) -> Result<bool, RegistryError> {
        let url = self
            .transport
            .url(&format!("v2/{repository}/blobs/{digest}"));
        match self
            .transport
            .send(&Req::new(Method::HEAD, url, access.scope(repository)))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Returns a blob's size from a HEAD request's `Content-Length`, for
    /// manifests that do not record sizes (schema1).
    pub async fn blob_size(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<u64, RegistryError> {
        let url = self
            .transport
            .url(&format!("v2/{repository}/blobs/{digest}"));
        let info = RequestInfo::new(&Method::HEAD, &url);
        let reply = self
            .transport
            .send(&Req::new(
                Method::HEAD,
                url,
                Scope::pull(repository.as_str()),
            ))
            .await?;
        header_str(reply.response.headers(), CONTENT_LENGTH.as_str())
            .and_then(|length| length.parse().ok())
            .ok_or_else(|| RegistryError::Protocol {
                request: info,
                reason: format!("blob {digest} HEAD reply has no Content-Length"),
            })
    }

    /// Opens a streaming read of a blob that checks its size and digest,
    /// with the algorithm the descriptor names, as the bytes pass.
    pub async fn get_blob(
        &self,
        repository: &Repository,
        blob: &Descriptor,
    ) -> Result<BlobStream, RegistryError> {
        let url = self
            .transport
            .url(&format!("v2/{repository}/blobs/{}", blob.digest));
        let req = Req::new(Method::GET, url, Scope::pull(repository.as_str())).blob_transfer();
        let reply = self.transport.send(&req).await?;
        Ok(verified_stream(reply, blob.clone()))
    }

    /// Opens an upload session, first trying to mount from `mount_from`
    /// when given. Only 201 means mounted; a 202 is an ordinary session.
    pub async fn start_upload(
        &self,
        repository: &Repository,
        digest: &Digest,
        mount_from: Option<&Repository>,
    ) -> Result<UploadStart, RegistryError> {
        let (path, scope) = match mount_from {
            Some(from) => (
                format!("v2/{repository}/blobs/uploads/?mount={digest}&from={from}"),
                Scope::mount(repository.as_str(), from.as_str()),
            ),
            None => (
                format!("v2/{repository}/blobs/uploads/"),
                Scope::push(repository.as_str()),
            ),
        };
        let url = self.transport.url(&path);
        let info = RequestInfo::new(&Method::POST, &url);
        let req = Req::new(Method::POST, url.clone(), scope)
            .header(CONTENT_LENGTH, "0")
            .body(Bytes::new());
        let reply = self.transport.send(&req).await?;
        if reply.response.status() == StatusCode::CREATED && mount_from.is_some() {
            return Ok(UploadStart::Mounted);
        }
        let location = header_str(reply.response.headers(), LOCATION.as_str())
            .and_then(|l| url.join(l).ok())
            .ok_or_else(|| RegistryError::Protocol {
                request: info.clone(),
                reason: "upload session reply has no Location".into(),
            })?;
        self.transport
            .check_own_origin(&info, &location, "upload Location")?;
        Ok(UploadStart::Session(location))
    }

    /// Completes an upload session with one monolithic PUT of `body`.
    /// The registry checks `digest` itself, so a body cut short or altered
    /// never becomes a blob.
    pub async fn finish_upload(
        &self,
        repository: &Repository,
        session: Url,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<(), RegistryError> {
        let mut url = session;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
        self.transport
            .send_once(
                Method::PUT,
                url,
                headers,
                body,
                &Scope::push(repository.as_str()),
            )
            .await?;
        Ok(())
    }

    fn manifest_url(&self, repository: &Repository, target: &Target) -> Url {
        self.transport
            .url(&format!("v2/{repository}/manifests/{}", target.as_path()))
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Finds the `rel="next"` target of a `Link` header, resolved against `base`.
fn next_link(base: &Url, headers: &HeaderMap) -> Option<Url> {
    for value in headers.get_all(LINK) {
        for link in value.to_str().ok()?.split(',') {
            let (target, params) = link.split_once(';')?;
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            let is_next = params.split(';').any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next {
                return base.join(target).ok();
            }
        }
    }
    None
}

/// Reads a whole body of at most `limit` bytes. A larger one, named
/// `body_kind` in the error, is rejected by its `Content-Length` before reading, or once
/// `limit` is passed.
async fn read_body(
    info: &RequestInfo,
    reply: Reply,
    body_kind: &'static str,
    limit: usize,
) -> Result<Bytes, RegistryError> {
    let Reply {
        mut response,
        deadline,
        permit: _permit,
    } = reply;
    let too_large = || RegistryError::TooLarge {
        request: info.clone(),
        body_kind,
        limit: limit as u64,
    };
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large());
    }
    let body = read_capped(&mut response, limit)
        .await
        .map_err(|source| transport_error(info, source, deadline))?;
    if body.truncated {
        return Err(too_large());
    }
    Ok(body.bytes)
}

fn parse_json<T: for<'de> Deserialize<'de>>(
    info: &RequestInfo,
    body: &[u8],
) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::Protocol {
        request: info.clone(),
        reason: format!("invalid JSON reply: {e}"),
    })
}

/// Wraps a blob response so that the last item reports a digest or size
/// mismatch. The permit travels with the stream.
fn verified_stream(reply: Reply, blob: Descriptor) -> BlobStream {
    let info = RequestInfo::new(&Method::GET, reply.response.url());
    let permit = reply.permit;
    let state = (
        reply.response.bytes_stream(),
        DigestHasher::new(blob.digest.algorithm()),
        0u64,
        false,
    );
    let stream = futures::stream::unfold(state, move |(mut inner, mut hasher, mut count, done)| {
        let blob = blob.clone();
        let info = info.clone();
        async move {
            if done {
                return None;
            }
            match inner.next().await {
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    count += chunk.len() as u64;
                    // Stop at the first byte past the descriptor's size, so
                    // an endless body never reaches an upload.
                    if blob.size != 0 && count > blob.size {
                        let error = RegistryError::SizeMismatch {
                            digest: blob.digest.clone(),
                            expected: blob.size,
                            actual: count,
                        };
                        return Some((Err(error), (inner, hasher, count, true)));
                    }
                    Some((Ok(chunk), (inner, hasher, count, false)))
                }
                Some(Err(source)) => {
                    let error = RegistryError::Transport {
                        request: info,
                        source,
                        attempts: 1,
                    };
                    Some((Err(error), (inner, hasher, count, true)))
                }
                None => {
                    let result = check_content(&blob, hasher.finish(), count);
                    result.err().map(|e| {
                        (
                            Err(e),
                            (
                                inner,
                                DigestHasher::new(blob.digest.algorithm()),
                                count,
                                true,
                            ),
                        )
                    })
                }
            }
        }
    });
    let _ = &permit;
    Box::pin(HoldPermit {
        inner: Box::pin(stream),
        _permit: permit,
    })
}

fn check_content(blob: &Descriptor, actual: Digest, count: u64) -> Result<(), RegistryError> {
    if blob.size != 0 && count != blob.size {
        return Err(RegistryError::SizeMismatch {
            digest: blob.digest.clone(),
            expected: blob.size,
            actual: count,
        });
    }
    if actual != blob.digest {
        return Err(RegistryError::DigestMismatch {
            expected: blob.digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// Keeps a concurrency permit alive for as long as a stream is.
struct HoldPermit {
    inner: BlobStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Stream for HoldPermit {
    type Item = Result<Bytes, RegistryError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::test_server::{serve, Body, Reply};
    use super::super::TlsMode;
    use super::*;

    const MIB: usize = 1024 * 1024;

    /// Builds a client for a scripted server: plain HTTP, one attempt, and
    /// a read_timeout longer than [`within`] waits, so a read that waits
    /// for more of a stalled body fails the test.
    fn client(host: &str) -> RegistryClient {
        let settings = ConnectionSettings {
            tls: TlsMode::Disabled,
            max_attempts: 1,
            read_timeout: Duration::from_secs(60),
            ..ConnectionSettings::default()
        };
        RegistryClient::new(host, settings).unwrap()
    }

    fn repository() -> Repository {
        Repository::parse("team/app").unwrap()
    }

    fn tag() -> Target {
        Target::parse("v1").unwrap()
    }

    /// Awaits `future` for at most 20 s.
    async fn within<T>(future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), future)
            .await
            .expect("request finished within 20 s")
    }

    fn manifest_reply(body: Body) -> Reply {
        Reply::new(200, body).header("Content-Type", MediaType::OCI_MANIFEST)
    }

    #[tokio::test]
    async fn manifest_over_limit_is_rejected() {
        let host = serve(|_, _| manifest_reply(Body::Stalled(vec![b' '; 4 * MIB + 1])));

        let error = within(client(&host).get_manifest(&repository(), &tag()))
            .await
            .unwrap_err();

        let message = error.to_string();
        assert!(
            message.contains("manifest is larger than 4 MiB"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn manifest_claimed_length_is_checked_first() {
        let host = serve(|_, _| {
            manifest_reply(Body::Claimed {
                length: 1 << 40,
                bytes: b"{}".to_vec(),
            })
        });

        let error = within(client(&host).get_manifest(&repository(), &tag()))
            .await
            .unwrap_err();

        let message = error.to_string();
        assert!(
            message.contains("manifest is larger than 4 MiB"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn endless_manifest_stops_at_limit() {
        let host = serve(|_, _| {
            manifest_reply(Body::Endless {
                chunk: vec![b' '; 64 * 1024],
                interval: Duration::ZERO,
            })
        });

        let error = within(client(&host).get_manifest(&repository(), &tag()))
            .await
            .unwrap_err();

        let message = error.to_string();
        assert!(
            message.contains("manifest is larger than 4 MiB"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn error_body_is_read_up_to_limit() {
        let host = serve(|_, _| Reply::new(500, Body::Stalled(vec![b'x'; 256 * 1024])));

        let error = within(client(&host).get_manifest(&repository(), &tag()))
            .await
            .unwrap_err();

        assert_eq!(error.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(error.to_string().contains("xxxx"), "{error}");
    }

    #[tokio::test]
    async fn tag_page_over_limit_is_rejected() {
        let host = serve(|_, _| Reply::new(200, Body::Stalled(vec![b' '; 16 * MIB + 1])));

        let error = within(client(&host).tags(&repository())).await.unwrap_err();

        let message = error.to_string();
        assert!(
            message.contains("tag list page is larger than 16 MiB"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn endless_pagination_stops_at_page_limit() {
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let host = serve(move |_, _| {
            let page = counter.fetch_add(1, Ordering::SeqCst);
            let body = format!(r#"{{"name":"team/app","tags":["t{page}"]}}"#);
            let link = format!(r#"</v2/team/app/tags/list?last=t{page}>; rel="next""#);
            Reply::new(200, Body::Fixed(body.into_bytes())).header("Link", &link)
        });

        let error =
            tokio::time::timeout(Duration::from_secs(300), client(&host).tags(&repository()))
                .await
                .expect("pagination ended within 300 s")
                .unwrap_err();

        let message = error.to_string();
        assert!(message.contains("more than 10000 pages"), "{message}");
        assert_eq!(requests.load(Ordering::SeqCst), MAX_LIST_PAGES);
    }

    #[tokio::test]
    async fn tag_list_over_entry_limit_is_rejected() {
        let tags: Vec<String> = (0..=MAX_LIST_ENTRIES).map(|i| i.to_string()).collect();
        let body = serde_json::json!({"name": "team/app", "tags": tags}).to_string();
        let host = serve(move |_, _| Reply::new(200, Body::Fixed(body.clone().into_bytes())));

        let error = within(client(&host).tags(&repository())).await.unwrap_err();

        let message = error.to_string();
        assert!(message.contains("more than 1000000 entries"), "{message}");
    }

    #[tokio::test]
    async fn token_reply_over_limit_is_rejected() {
        let token_host = serve(|_, _| Reply::new(200, Body::Stalled(vec![b' '; MIB + 1])));
        let challenge = format!(r#"Bearer realm="http://{token_host}/token",service="test""#);
        let host = serve(move |_, _| {
            Reply::new(401, Body::Fixed(Vec::new())).header("WWW-Authenticate", &challenge)
        });

        let error = within(client(&host).get_manifest(&repository(), &tag()))
            .await
            .unwrap_err();

        let message = error.to_string();
        assert!(message.contains("token reply"), "{message}");
        assert!(message.contains("larger than 1 MiB"), "{message}");
    }

    /// Builds a client whose small requests must finish within 1 s, while
    /// a read_timeout of 5 s lets a slow body go on.
    fn client_with_short_deadline(host: &str) -> RegistryClient {
        let settings = ConnectionSettings {
            tls: TlsMode::Disabled,
            max_attempts: 1,
            read_timeout: Duration::from_secs(5),
            request_deadline: Duration::from_secs(1),
            ..ConnectionSettings::default()
        };
        RegistryClient::new(host, settings).unwrap()
    }

    fn trickle() -> Body {
        Body::Endless {
            chunk: b" ".to_vec(),
            interval: Duration::from_millis(100),
        }
    }

    #[tokio::test]
    async fn slow_manifest_misses_deadline() {
        let host = serve(|_, _| manifest_reply(trickle()));

        let error = within(client_with_short_deadline(&host).get_manifest(&repository(), &tag()))
            .await
            .unwrap_err();

        assert!(
            matches!(error, RegistryError::DeadlineExceeded { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("timed out after 1s"), "{message}");
    }

    #[tokio::test]
    async fn slow_tag_list_misses_deadline() {
        let host = serve(|_, _| Reply::new(200, trickle()));

        let error = within(client_with_short_deadline(&host).tags(&repository()))
            .await
            .unwrap_err();

        assert!(
            matches!(error, RegistryError::DeadlineExceeded { .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn slow_token_reply_misses_deadline() {
        let token_host = serve(|_, _| Reply::new(200, trickle()));
        let challenge = format!(r#"Bearer realm="http://{token_host}/token",service="test""#);
        let host = serve(move |_, _| {
            Reply::new(401, Body::Fixed(Vec::new())).header("WWW-Authenticate", &challenge)
        });

        let error = within(client_with_short_deadline(&host).get_manifest(&repository(), &tag()))
            .await
            .unwrap_err();

        let message = error.to_string();
        assert!(message.contains("token reply from"), "{message}");
        assert!(message.contains("timed out after 1s"), "{message}");
    }

    #[tokio::test]
    async fn slow_blob_is_not_cut_by_deadline() {
        let content = b"twenty bytes of blob".to_vec();
        let blob = Descriptor {
            media_type: MediaType::new("application/octet-stream"),
            digest: Digest::compute(crate::oci::Algorithm::Sha256, &content),
            size: content.len() as u64,
            platform: None,
            urls: Vec::new(),
        };
        let host = serve(move |_, _| {
            Reply::new(
                200,
                Body::Slow {
                    bytes: content.clone(),
                    interval: Duration::from_millis(100),
                },
            )
        });

        let client = client_with_short_deadline(&host);
        let received: Vec<Result<Bytes, RegistryError>> = within(async {
            let stream = client.get_blob(&repository(), &blob).await.unwrap();
            stream.collect().await
        })
        .await;

        let bytes: usize = received
            .iter()
            .map(|chunk| chunk.as_ref().unwrap().len())
            .sum();
        assert_eq!(bytes, 20);
    }

    #[test]
    fn next_link_resolves_relative() {
        let base = Url::parse("http://127.0.0.1:5000/v2/_catalog?n=1000").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            LINK,
            HeaderValue::from_static("</v2/_catalog?last=b&n=1000>; rel=\"next\""),
        );
        let next = next_link(&base, &headers).unwrap();
        assert_eq!(
            next.as_str(),
            "http://127.0.0.1:5000/v2/_catalog?last=b&n=1000"
        );
    }

    #[test]
    fn next_link_absent_without_rel_next() {
        let base = Url::parse("http://127.0.0.1:5000/v2/_catalog").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(LINK, HeaderValue::from_static("</x>; rel=\"prev\""));
        assert!(next_link(&base, &headers).is_none());
    }
}
