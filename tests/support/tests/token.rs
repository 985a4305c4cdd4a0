//! The token server with a real `docker-registry` under `auth: token`.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use testkit::image::sample_image;
use testkit::proxy::{FaultProxy, Faults};
use testkit::registry::{Registry, RegistryOptions};
use testkit::token::{Access, Grant, KeyReference, TokenOptions, TokenRequest, TokenServer};

const SERVICE: &str = "testkit-registry";

fn alice() -> TokenOptions {
    TokenOptions {
        users: vec![("alice".into(), "s3cret".into())],
        ..TokenOptions::default()
    }
}

fn start(opts: TokenOptions) -> (TokenServer, Registry) {
    let ts = TokenServer::start(opts);
    let reg = Registry::start_with(RegistryOptions {
        token: Some(ts.auth_config()),
        ..RegistryOptions::default()
    });
    (ts, reg)
}

/// GET realm?service=..&scope=.. (one `scope` parameter each); returns status and JSON.
fn fetch(
    ts: &TokenServer,
    user: Option<(&str, &str)>,
    scopes: &[&str],
) -> (u16, serde_json::Value) {
    let mut url = format!("{}?service={SERVICE}", ts.url());
    for s in scopes {
        url.push_str("&scope=");
        url.push_str(
            &s.replace(':', "%3A")
                .replace(',', "%2C")
                .replace('/', "%2F"),
        );
    }
    let mut req = client().get(url);
    if let Some((u, p)) = user {
        req = req.basic_auth(u, Some(p));
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(serde_json::Value::Null))
}

fn token_of(v: &serde_json::Value) -> String {
    v["token"].as_str().expect("token in reply").to_string()
}

fn jwt_part(token: &str, i: usize) -> serde_json::Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[test]
fn registry_challenges_with_the_token_server_realm() {
    let (ts, reg) = start(alice());
    let r = client()
        .get(format!("{}/v2/", reg.base_url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = header(&r, "www-authenticate").unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("realm=\"{}\"", ts.url())),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!("service=\"{SERVICE}\"")),
        "{challenge}"
    );
}

#[test]
fn push_and_pull_with_a_fetched_token_and_exact_scopes_recorded() {
    let (ts, reg) = start(alice());
    let (status, reply) = fetch(
        &ts,
        Some(("alice", "s3cret")),
        &["repository:team/app:pull,push"],
    );
    assert_eq!(status, 200, "{reply}");
    let token = token_of(&reply);
    assert_eq!(reply["access_token"].as_str(), Some(token.as_str()));
    assert_eq!(reply["expires_in"], 300);
    assert!(reply["issued_at"].as_str().unwrap().ends_with('Z'));

    // The JWT is what the registry expects.
    let head = jwt_part(&token, 0);
    assert_eq!(head["alg"], "ES256");
    assert_eq!(head["x5c"].as_array().unwrap().len(), 1);
    let claims = jwt_part(&token, 1);
    assert_eq!(claims["iss"], "testkit-token-issuer");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], SERVICE);
    for k in ["exp", "nbf", "iat", "jti"] {
        assert!(!claims[k].is_null(), "{k} missing: {claims}");
    }
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}])
    );
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(token.split('.').nth(2).unwrap())
            .unwrap()
            .len(),
        64
    );

    let c = client();
    let base = reg.base_url();
    let image = sample_image("token-push");
    for blob in image.blobs() {
        assert_eq!(
            push_blob(&c, &base, "team/app", &blob.bytes, Some(&token)),
            201
        );
    }
    assert_eq!(
        push_manifest(
            &c,
            &base,
            "team/app",
            "v1",
            &image.media_type,
            &image.manifest,
            Some(&token)
        ),
        201
    );
    let r = get_manifest(&c, &base, "team/app", "v1", Some(&token));
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), image.manifest.as_slice());
    // The token is scoped: another repository is refused.
    assert_eq!(
        get_manifest(&c, &base, "other/repo", "v1", Some(&token)).status(),
        401
    );

    assert_eq!(
        ts.requests(),
        vec![TokenRequest {
            method: "GET".into(),
            account: Some("alice".into()),
            account_param: None,
            scopes: vec!["repository:team/app:pull,push".into()],
            service: Some(SERVICE.into()),
            status: 200,
            granted: vec![Access {
                kind: "repository".into(),
                name: "team/app".into(),
                actions: vec!["pull".into(), "push".into()],
            }],
        }]
    );
}

#[test]
fn a_pull_only_token_cannot_push() {
    let (ts, reg) = start(alice());
    let (_, reply) = fetch(&ts, Some(("alice", "s3cret")), &["repository:ro:pull"]);
    let token = token_of(&reply);
    let c = client();
    let r = c
        .post(format!("{}/v2/ro/blobs/uploads/", reg.base_url()))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = header(&r, "www-authenticate").unwrap();
    // The registry lists the actions it needs in no fixed order.
    assert!(
        challenge.contains("scope=\"repository:ro:pull,push\"")
            || challenge.contains("scope=\"repository:ro:push,pull\""),
        "{challenge}"
    );
}

#[test]
fn catalog_needs_registry_catalog_scope() {
    let (ts, reg) = start(alice());
    let c = client();
    let base = reg.base_url();
    let (_, reply) = fetch(
        &ts,
        Some(("alice", "s3cret")),
        &["repository:cat/one:pull,push"],
    );
    let push_token = token_of(&reply);
    assert_eq!(
        push_blob(&c, &base, "cat/one", b"catalog blob", Some(&push_token)),
        201
    );
    let image = sample_image("catalog");
    for blob in image.blobs() {
        push_blob(&c, &base, "cat/one", &blob.bytes, Some(&push_token));
    }
    assert_eq!(
        push_manifest(
            &c,
            &base,
            "cat/one",
            "v1",
            &image.media_type,
            &image.manifest,
            Some(&push_token)
        ),
        201
    );

    let r = c
        .get(format!("{base}/v2/_catalog"))
        .bearer_auth(&push_token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(header(&r, "www-authenticate")
        .unwrap()
        .contains("scope=\"registry:catalog:*\""));

    let (status, reply) = fetch(&ts, Some(("alice", "s3cret")), &["registry:catalog:*"]);
    assert_eq!(status, 200);
    let r = c
        .get(format!("{base}/v2/_catalog"))
        .bearer_auth(token_of(&reply))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["cat/one"]));
    assert_eq!(
        ts.requests().last().unwrap().scopes,
        vec!["registry:catalog:*".to_string()]
    );
}

#[test]
fn several_scopes_in_one_request_are_all_granted_and_recorded() {
    let (ts, _reg) = start(alice());
    // Two `scope` parameters, one of them holding two space-separated scopes.
    let url = format!(
        "{}?service={SERVICE}&scope=repository%3Aa%2Fb%3Apull&scope=repository%3Ac%3Apull%2Cpush+registry%3Acatalog%3A%2A&account=alice",
        ts.url()
    );
    let r = client()
        .get(url)
        .basic_auth("alice", Some("s3cret"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    let claims = jwt_part(&token_of(&v), 1);
    assert_eq!(
        claims["access"],
        serde_json::json!([
            {"type": "repository", "name": "a/b", "actions": ["pull"]},
            {"type": "repository", "name": "c", "actions": ["pull", "push"]},
            {"type": "registry", "name": "catalog", "actions": ["*"]},
        ])
    );
    let rec = ts.requests().pop().unwrap();
    assert_eq!(
        rec.scopes,
        vec![
            "repository:a/b:pull",
            "repository:c:pull,push",
            "registry:catalog:*"
        ]
    );
    assert_eq!(rec.account_param.as_deref(), Some("alice"));
}

#[test]
fn bad_credentials_get_401_and_anonymous_rules_apply() {
    let ts = TokenServer::start(alice());
    let (status, _) = fetch(&ts, Some(("alice", "wrong")), &["repository:x:pull"]);
    assert_eq!(status, 401);
    let (status, _) = fetch(&ts, Some(("mallory", "s3cret")), &["repository:x:pull"]);
    assert_eq!(status, 401);
    let (status, _) = fetch(&ts, None, &["repository:x:pull"]);
    assert_eq!(status, 401, "anonymous_pull is off");
    let recs = ts.requests();
    assert_eq!(
        recs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![401, 401, 401]
    );
    assert_eq!(recs[0].account.as_deref(), Some("alice"));
    assert!(recs.iter().all(|r| r.granted.is_empty()));
    // Nothing recorded holds a password.
    assert!(!format!("{recs:?}").contains("s3cret") && !format!("{recs:?}").contains("wrong"));
    assert!(!format!("{:?}", alice()).contains("s3cret"));
}

#[test]
fn anonymous_pull_grants_pull_only() {
    let (ts, reg) = start(TokenOptions {
        anonymous_pull: true,
        ..alice()
    });
    let c = client();
    let base = reg.base_url();
    let (_, reply) = fetch(
        &ts,
        Some(("alice", "s3cret")),
        &["repository:pub/img:pull,push"],
    );
    let push = token_of(&reply);
    let image = sample_image("anon");
    for blob in image.blobs() {
        push_blob(&c, &base, "pub/img", &blob.bytes, Some(&push));
    }
    assert_eq!(
        push_manifest(
            &c,
            &base,
            "pub/img",
            "v1",
            &image.media_type,
            &image.manifest,
            Some(&push)
        ),
        201
    );

    let (status, reply) = fetch(
        &ts,
        None,
        &["repository:pub/img:pull,push", "registry:catalog:*"],
    );
    assert_eq!(status, 200);
    let anon = token_of(&reply);
    assert_eq!(
        jwt_part(&anon, 1)["access"],
        serde_json::json!([{"type": "repository", "name": "pub/img", "actions": ["pull"]}])
    );
    assert_eq!(jwt_part(&anon, 1)["sub"], "");
    assert_eq!(
        get_manifest(&c, &base, "pub/img", "v1", Some(&anon)).status(),
        200
    );
    assert_eq!(push_blob(&c, &base, "pub/img", b"nope", Some(&anon)), 401);
    assert_eq!(ts.requests().last().unwrap().account, None);
}

#[test]
fn grant_policies_for_authenticated_users() {
    let ts = TokenServer::start(TokenOptions {
        grant: Grant::PullOnly,
        ..alice()
    });
    let (_, v) = fetch(
        &ts,
        Some(("alice", "s3cret")),
        &["repository:r:pull,push", "registry:catalog:*"],
    );
    assert_eq!(
        jwt_part(&token_of(&v), 1)["access"],
        serde_json::json!([{"type": "repository", "name": "r", "actions": ["pull"]}])
    );

    let ts = TokenServer::start(TokenOptions {
        grant: Grant::Nothing,
        ..alice()
    });
    let (_, v) = fetch(&ts, Some(("alice", "s3cret")), &["repository:r:pull,push"]);
    assert_eq!(jwt_part(&token_of(&v), 1)["access"], serde_json::json!([]));

    let ts = TokenServer::start(TokenOptions {
        grant: Grant::Custom(std::sync::Arc::new(|user: &str, a: &Access| {
            assert_eq!(user, "alice");
            if a.name.starts_with("mine/") {
                a.actions.clone()
            } else {
                vec![]
            }
        })),
        ..alice()
    });
    let (_, v) = fetch(
        &ts,
        Some(("alice", "s3cret")),
        &["repository:mine/x:pull,push", "repository:theirs/y:pull"],
    );
    assert_eq!(
        jwt_part(&token_of(&v), 1)["access"],
        serde_json::json!([{"type": "repository", "name": "mine/x", "actions": ["pull", "push"]}])
    );
}

#[test]
fn expires_in_can_be_left_out_and_libtrust_kid_is_accepted() {
    let (ts, reg) = start(TokenOptions {
        expires_in: None,
        key_reference: KeyReference::LibtrustKid,
        ..alice()
    });
    let (status, reply) = fetch(
        &ts,
        Some(("alice", "s3cret")),
        &["repository:k/id:pull,push"],
    );
    assert_eq!(status, 200);
    assert!(reply.get("expires_in").is_none(), "{reply}");
    let token = token_of(&reply);
    let head = jwt_part(&token, 0);
    assert_eq!(head["kid"].as_str(), Some(ts.key_id().as_str()));
    assert!(head.get("x5c").is_none());
    assert_eq!(
        push_blob(
            &client(),
            &reg.base_url(),
            "k/id",
            b"kid blob",
            Some(&token)
        ),
        201
    );
}

#[test]
fn oauth_password_grant_over_post() {
    let (ts, reg) = start(alice());
    let r = client()
        .post(ts.url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=password&username=alice&password=s3cret&service={SERVICE}&client_id=syncer&scope=repository%3Apost%2Fit%3Apull%2Cpush"
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    let token = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        push_blob(
            &client(),
            &reg.base_url(),
            "post/it",
            b"posted",
            Some(&token)
        ),
        201
    );
    let rec = ts.requests().pop().unwrap();
    assert_eq!(
        (rec.method.as_str(), rec.account.as_deref()),
        ("POST", Some("alice"))
    );
    let r = client()
        .post(ts.url())
        .body("grant_type=refresh_token&refresh_token=x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[test]
fn short_lifetime_makes_the_registry_refuse_a_token_mid_run() {
    let (ts, reg) = start(alice());
    let c = client();
    let base = reg.base_url();
    ts.set_token_lifetime(Some(2));
    let (_, reply) = fetch(
        &ts,
        Some(("alice", "s3cret")),
        &["repository:exp/ire:pull,push"],
    );
    assert_eq!(reply["expires_in"], 300, "the reply still promises 300 s");
    let token = token_of(&reply);
    assert_eq!(
        push_blob(&c, &base, "exp/ire", b"before expiry", Some(&token)),
        201
    );
    std::thread::sleep(Duration::from_millis(3100));
    let r = c
        .post(format!("{base}/v2/exp/ire/blobs/uploads/"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "the token should have expired");

    // Back to normal lifetimes: a fresh token works again.
    ts.set_token_lifetime(None);
    ts.set_expires_in(Some(120));
    let (_, reply) = fetch(
        &ts,
        Some(("alice", "s3cret")),
        &["repository:exp/ire:pull,push"],
    );
    assert_eq!(reply["expires_in"], 120);
    assert_eq!(
        push_blob(
            &c,
            &base,
            "exp/ire",
            b"after expiry",
            Some(&token_of(&reply))
        ),
        201
    );
}

#[test]
fn redirect_through_the_proxy_with_a_bearer_token() {
    let (ts, reg) = start(alice());
    let c = client();
    let (_, reply) = fetch(
        &ts,
        Some(("alice", "s3cret")),
        &["repository:via/proxy:pull,push"],
    );
    let token = token_of(&reply);
    let blob = b"served from storage".to_vec();
    assert_eq!(
        push_blob(&c, &reg.base_url(), "via/proxy", &blob, Some(&token)),
        201
    );
    let proxy = FaultProxy::start(
        &reg.base_url(),
        Faults {
            redirect_blob_get: true,
            ..Faults::default()
        },
    );
    let r = c
        .get(format!(
            "{}/v2/via/proxy/blobs/{}",
            proxy.base_url(),
            sha256(&blob)
        ))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 307);
    let r = c.get(header(&r, "location").unwrap()).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), blob.as_slice());
}

#[test]
fn server_stops_on_drop() {
    let ts = TokenServer::start(alice());
    let host = ts
        .url()
        .trim_start_matches("http://")
        .trim_end_matches("/token")
        .to_string();
    let bundle = ts.auth_config().rootcertbundle;
    assert!(bundle.is_file());
    // An open connection is closed when the server goes (checking that the
    // port refuses connections would race with other tests binding ports).
    let mut conn = std::net::TcpStream::connect(&host).unwrap();
    drop(ts);
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    match std::io::Read::read(&mut conn, &mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("unexpected {n} bytes after drop"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "connection still open after drop"
        ),
    }
    assert!(!bundle.exists(), "the temp dir goes with the server");
}
