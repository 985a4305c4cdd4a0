//! Helpers shared by the fault-proxy, token-server and credential-helper
//! tests: a plain blocking HTTP client and a few registry calls made the
//! way curl would make them.
#![allow(dead_code)]

use std::time::Duration;

use reqwest::blocking::{Client, Response};
use sha2::Digest;

/// A client that follows no redirects and keeps no cookies.
pub fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Resolves a `Location`/`Link` target against `base` (`http://host:port`).
pub fn resolve(base: &str, target: &str) -> String {
    if target.starts_with("http://") || target.starts_with("https://") {
        target.to_string()
    } else {
        format!("{}{}", base.trim_end_matches('/'), target)
    }
}

pub fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Adds `Authorization: Bearer` when a token is given.
pub fn auth(
    req: reqwest::blocking::RequestBuilder,
    token: Option<&str>,
) -> reqwest::blocking::RequestBuilder {
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

/// Monolithic blob upload (POST then PUT ?digest=); returns the PUT's status.
pub fn push_blob(c: &Client, base: &str, repo: &str, bytes: &[u8], token: Option<&str>) -> u16 {
    let r = auth(c.post(format!("{base}/v2/{repo}/blobs/uploads/")), token)
        .header("content-length", "0")
        .send()
        .expect("POST upload");
    if r.status().as_u16() != 202 {
        return r.status().as_u16();
    }
    let loc = header(&r, "location").expect("upload Location");
    let url = resolve(base, &loc);
    let sep = if url.contains('?') { '&' } else { '?' };
    let digest = sha256(bytes).replace(':', "%3A");
    let r = auth(c.put(format!("{url}{sep}digest={digest}")), token)
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .expect("PUT upload");
    r.status().as_u16()
}

/// PUT a manifest; returns the status.
pub fn push_manifest(
    c: &Client,
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
    token: Option<&str>,
) -> u16 {
    auth(
        c.put(format!("{base}/v2/{repo}/manifests/{reference}")),
        token,
    )
    .header("content-type", media_type)
    .body(bytes.to_vec())
    .send()
    .expect("PUT manifest")
    .status()
    .as_u16()
}

pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// GET a manifest with every manifest type in Accept.
pub fn get_manifest(
    c: &Client,
    base: &str,
    repo: &str,
    reference: &str,
    token: Option<&str>,
) -> Response {
    auth(
        c.get(format!("{base}/v2/{repo}/manifests/{reference}")),
        token,
    )
    .header("accept", MANIFEST_ACCEPT)
    .send()
    .expect("GET manifest")
}
