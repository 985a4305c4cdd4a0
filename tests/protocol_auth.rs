//! Authentication against real registries: the bearer flow through the
//! testkit token server (scopes, cache, expiry, anonymous tokens), every
//! credential source (rules file, docker `config.json` `auths`,
//! `credHelpers`, `credsStore`), and no secret in trace-level output.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{HttpServer, Received, Reply, Run, Syncer};
use tempfile::TempDir;
use testkit::image::{oci_image, random_layer, sample_image, Platform, Pusher};
use testkit::proxy::{FaultProxy, Faults};
use testkit::registry::{Registry, RegistryOptions};
use testkit::token::{credential_helper_dir, TokenOptions, TokenServer};

const USER: &str = "robot";
const PASSWORD: &str = "auth-test-Pa55word";
const REFRESH_TOKEN: &str = "refresh-4b1d-not-a-password";

fn token_server(anonymous_pull: bool) -> TokenServer {
    TokenServer::start(TokenOptions {
        users: vec![(USER.into(), PASSWORD.into())],
        refresh_tokens: vec![(USER.into(), REFRESH_TOKEN.into())],
        anonymous_pull,
        ..TokenOptions::default()
    })
}

fn token_registry(server: &TokenServer) -> Registry {
    Registry::start_with(RegistryOptions {
        token: Some(server.auth_config()),
        ..RegistryOptions::default()
    })
}

fn write_rules(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn apply(syncer: &Syncer, rules: &Path) -> Run {
    syncer.run(&["apply", "--auto-approve", rules.to_str().unwrap()])
}

/// Collects every scope requested from the token server since its last clear.
fn requested_scopes(server: &TokenServer) -> BTreeSet<String> {
    server
        .requests()
        .into_iter()
        .flat_map(|r| r.scopes)
        .collect()
}

#[test]
fn token_scopes_for_catalog_pull_push_mount() {
    let server = token_server(false);
    let source = token_registry(&server);
    let destination = token_registry(&server);
    let pusher = Pusher::new(&source).basic_auth(USER, PASSWORD);
    pusher.push_image("app/one", "v1", &sample_image("scopes"));
    server.clear_requests();
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        &format!(
            r#"registries:
  {src}: {{tls: disabled, username: {USER}, password: "${{AUTH_PASSWORD}}"}}
  {dst}: {{tls: disabled, username: {USER}, password: "${{AUTH_PASSWORD}}"}}
rules:
  - source: {src}/**
    destinations: ["{dst}/first/{{repo}}", "{dst}/second/{{repo}}"]
"#,
            src = source.host(),
            dst = destination.host()
        ),
    );
    let syncer = Syncer::new().env("AUTH_PASSWORD", PASSWORD);
    let saved = dir.path().join("plan.json");
    let saved = saved.to_str().unwrap();

    // A saved plan covers both paths: planning, then the staleness check
    // and the copy. Apply gets no rules argument, so it must read the rules
    // the plan names (the working folder's `rules/` would fail).
    syncer
        .run(&["plan", "--out", saved, rules.to_str().unwrap()])
        .expect_code(0);
    syncer
        .run(&["apply", "--auto-approve", "--plan", saved])
        .expect_code(0);

    let requested = requested_scopes(&server);
    let allowed: BTreeSet<String> = [
        "registry:catalog:*",
        "repository:app/one:pull",
        "repository:first/app/one:pull",
        "repository:first/app/one:pull,push",
        "repository:second/app/one:pull",
        "repository:second/app/one:pull,push",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert!(requested.contains("registry:catalog:*"), "{requested:?}");
    assert!(
        requested.contains("repository:app/one:pull"),
        "{requested:?}"
    );
    assert!(
        requested.contains("repository:first/app/one:pull,push"),
        "{requested:?}"
    );
    assert!(
        requested.contains("repository:second/app/one:pull,push"),
        "{requested:?}"
    );
    let unexpected: Vec<&String> = requested.difference(&allowed).collect();
    assert!(unexpected.is_empty(), "unexpected scopes {unexpected:?}");
    // A destination repository is only ever read alongside a write, so a
    // lone pull scope for one means a second, needless token.
    for request in server.requests() {
        if let [scope] = request.scopes.as_slice() {
            let destination =
                scope.starts_with("repository:first/") || scope.starts_with("repository:second/");
            assert!(
                !destination || scope.ends_with(":pull,push"),
                "destination asked for {scope}"
            );
        }
    }
    let mount_requests: Vec<Vec<String>> = server
        .requests()
        .into_iter()
        .map(|r| r.scopes)
        .filter(|scopes| scopes.len() == 2)
        .collect();
    assert!(
        !mount_requests.is_empty(),
        "no token requested for a mount (push on one repository, pull on the other)"
    );
    for scopes in &mount_requests {
        assert!(
            scopes.iter().any(|s| s.ends_with(":pull,push")),
            "{scopes:?}"
        );
        assert!(scopes.iter().any(|s| s.ends_with(":pull")), "{scopes:?}");
    }
    let check = Pusher::new(&destination).basic_auth(USER, PASSWORD);
    let want = pusher.manifest_digest("app/one", "v1");
    assert_eq!(check.manifest_digest("first/app/one", "v1"), want);
    assert_eq!(check.manifest_digest("second/app/one", "v1"), want);
}

#[test]
fn token_cache_reuses_tokens() {
    let server = token_server(false);
    let source = token_registry(&server);
    let destination = Registry::start();
    let pusher = Pusher::new(&source).basic_auth(USER, PASSWORD);
    let layers = (0..4).map(|i| random_layer(2048, 100 + i)).collect();
    pusher.push_image(
        "cache/app",
        "v1",
        &oci_image(layers, Platform::linux("amd64")),
    );
    server.clear_requests();
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}: {{tls: disabled, username: {USER}, password: {PASSWORD}}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/cache/app\n    destinations: [{dst}/cache/app]\n",
            src = source.host(),
            dst = destination.host()
        ),
    );

    apply(&Syncer::new(), &rules).expect_code(0);

    // Every request of the run needs the same pull scope at the source.
    let pulls = server
        .requests()
        .iter()
        .filter(|r| r.scopes == ["repository:cache/app:pull"])
        .count();
    assert_eq!(
        pulls, 1,
        "{pulls} token requests for one scope; the cache should reuse the token"
    );
}

#[test]
fn expired_token_is_fetched_again_once() {
    let server = token_server(false);
    let destination = token_registry(&server);
    let proxy = FaultProxy::start(&destination.base_url(), Faults::default());
    let source = Registry::start();
    let layers = (0..8).map(|i| random_layer(4096, 200 + i)).collect();
    let image = oci_image(layers, Platform::linux("amd64"));
    Pusher::new(&source).push_image("long/push", "v1", &image);
    // Replies still state `expires_in: 300`, but each token stops working
    // after about two seconds, so a run of several seconds meets a 401 mid-run.
    server.set_token_lifetime(Some(2));
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled, username: {USER}, password: {PASSWORD}, max_concurrency: 1, requests_per_second: 4}}\nrules:\n  - source: {src}/long/push\n    destinations: [{dst}/long/push]\n",
            src = source.host(),
            dst = proxy.host()
        ),
    );

    apply(&Syncer::new(), &rules).expect_code(0);

    let records = proxy.requests();
    let rejected: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == 401 && r.had_authorization)
        .map(|(i, _)| i)
        .collect();
    assert!(
        !rejected.is_empty(),
        "no token expired during the run, the test proves nothing"
    );
    for &i in &rejected {
        let failed = &records[i];
        // The proxy may record other requests (another blob's PUT, say)
        // between a rejected request and its retry, so search forward.
        let later = &records[i + 1..];
        // A streamed blob PUT cannot be sent again; the blob is retried
        // whole, starting with a new upload session.
        if failed.method == "PUT" && failed.path_and_query.contains("/blobs/uploads/") {
            let digest = query_param(&failed.path_and_query, "digest");
            // Under load a retry can meet the next expiry too, so look for
            // the upload that finally succeeded.
            let put = later
                .iter()
                .position(|r| {
                    r.method == "PUT"
                        && r.status == 201
                        && query_param(&r.path_and_query, "digest") == digest
                })
                .unwrap_or_else(|| panic!("blob of {failed:?} was never uploaded again"));
            let retry = &later[put];
            assert_eq!(retry.status, 201, "{retry:?}");
            assert!(retry.had_authorization, "{retry:?}");
            assert_ne!(
                session_of(&retry.path_and_query),
                session_of(&failed.path_and_query),
                "the retry reused the rejected upload session"
            );
            assert!(
                later[..put].iter().any(|r| r.method == "POST"
                    && r.path_and_query.contains("/blobs/uploads/")
                    && r.had_authorization
                    && r.status == 202),
                "no new upload session was opened before {retry:?}"
            );
            continue;
        }
        let replay = later
            .iter()
            .find(|r| {
                r.method == failed.method
                    && r.path_and_query == failed.path_and_query
                    && r.status != 401
            })
            .unwrap_or_else(|| panic!("no successful replay after {failed:?}"));
        assert!(replay.had_authorization, "{replay:?}");
        assert_ne!(
            replay.status, 401,
            "replay of {} failed: {replay:?}",
            failed.path_and_query
        );
    }
    // One token per scope at first, then one more per rejected token.
    let requested = server.requests();
    let distinct_scopes: BTreeSet<Vec<String>> =
        requested.iter().map(|r| r.scopes.clone()).collect();
    assert_eq!(
        requested.len(),
        distinct_scopes.len() + rejected.len(),
        "token requests: one per scope, then one per rejected token; \
         rejected {} of {:?}",
        rejected.len(),
        distinct_scopes
    );
    assert_eq!(
        Pusher::new(&destination)
            .basic_auth(USER, PASSWORD)
            .manifest_digest("long/push", "v1"),
        Some(image.digest.clone())
    );
}

#[test]
fn token_refreshed_before_expiry() {
    let server = token_server(false);
    let destination = token_registry(&server);
    let proxy = FaultProxy::start(&destination.base_url(), Faults::default());
    let source = Registry::start();
    let layers = (0..10).map(|i| random_layer(4096, 400 + i)).collect();
    let image = oci_image(layers, Platform::linux("amd64"));
    Pusher::new(&source).push_image("fresh/app", "v1", &image);
    // Tokens really last five seconds, as the reply states, and the run
    // is paced to take longer than that.
    server.set_expires_in(Some(5));
    server.set_token_lifetime(Some(5));
    server.clear_requests();
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled, username: {USER}, password: {PASSWORD}, max_concurrency: 1, requests_per_second: 4}}\nrules:\n  - source: {src}/fresh/app\n    destinations: [{dst}/fresh/app]\n",
            src = source.host(),
            dst = proxy.host()
        ),
    );
    let started = std::time::Instant::now();

    apply(&Syncer::new(), &rules).expect_code(0);

    let elapsed = started.elapsed();
    assert!(
        elapsed > std::time::Duration::from_secs(6),
        "the run ({elapsed:?}) did not outlast a token"
    );
    let rejected: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.status == 401 && r.had_authorization)
        .collect();
    assert!(
        rejected.is_empty(),
        "a token was used until it expired: {rejected:?}"
    );
    let push_scope = "repository:fresh/app:pull,push";
    let fetched = server
        .requests()
        .iter()
        .filter(|r| r.scopes.iter().any(|s| s == push_scope))
        .count();
    assert!(
        fetched >= 2,
        "{fetched} tokens for {push_scope}: never refreshed"
    );
}

#[test]
fn anonymous_token_pulls_source() {
    let server = token_server(true);
    let source = token_registry(&server);
    let destination = Registry::start();
    Pusher::new(&source).basic_auth(USER, PASSWORD).push_image(
        "open/app",
        "v1",
        &sample_image("anonymous"),
    );
    server.clear_requests();
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/open/app\n    destinations: [{dst}/open/app]\n",
            src = source.host(),
            dst = destination.host()
        ),
    );

    apply(&Syncer::new(), &rules).expect_code(0);

    let requests = server.requests();
    assert!(!requests.is_empty(), "no token was requested");
    for request in &requests {
        assert_eq!(request.account, None, "{request:?}");
        assert_eq!(request.status, 200, "{request:?}");
        assert_eq!(request.scopes, ["repository:open/app:pull"]);
    }
    assert!(Pusher::new(&destination)
        .manifest_digest("open/app", "v1")
        .is_some());
}

/// One way of giving syncer credentials through docker's configuration.
struct DockerCredentials {
    name: &'static str,
    config: serde_json::Value,
    /// Contents of the fake helper's store, when a helper is used.
    helper_store: Option<serde_json::Value>,
    /// Whether the token server must see the OAuth2 refresh-token grant.
    expect_post: bool,
}

fn docker_credential_cases(host: &str) -> Vec<DockerCredentials> {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let store = serde_json::json!({ host: {"Username": USER, "Secret": PASSWORD} });
    vec![
        DockerCredentials {
            name: "auths-auth",
            config: serde_json::json!({"auths": {format!("http://{host}/v1/"): {"auth": encoded}}}),
            helper_store: None,
            expect_post: false,
        },
        DockerCredentials {
            name: "auths-username-password",
            config: serde_json::json!({"auths": {host: {"username": USER, "password": PASSWORD}}}),
            helper_store: None,
            expect_post: false,
        },
        DockerCredentials {
            name: "auths-identitytoken",
            config: serde_json::json!({"auths": {host: {"username": USER, "identitytoken": REFRESH_TOKEN}}}),
            helper_store: None,
            expect_post: true,
        },
        DockerCredentials {
            name: "credhelpers",
            config: serde_json::json!({"credHelpers": {host: "fake"}}),
            helper_store: Some(store.clone()),
            expect_post: false,
        },
        DockerCredentials {
            name: "credsstore",
            config: serde_json::json!({"auths": {}, "credsStore": "fake"}),
            helper_store: Some(store),
            expect_post: false,
        },
    ]
}

#[test]
fn docker_config_credentials_every_source() {
    let server = token_server(false);
    let registry = token_registry(&server);
    let source = Registry::start();
    Pusher::new(&source).push_image("creds/app", "v1", &sample_image("creds"));
    let dir = TempDir::new().unwrap();
    let path = format!(
        "{}:{}",
        credential_helper_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let check = Pusher::new(&registry).basic_auth(USER, PASSWORD);

    for case in docker_credential_cases(&registry.host()) {
        let case_dir = dir.path().join(case.name);
        std::fs::create_dir_all(&case_dir).unwrap();
        let rules = write_rules(
            &case_dir,
            &format!(
                "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/creds/app\n    destinations: [{dst}/{name}/app]\n",
                src = source.host(),
                dst = registry.host(),
                name = case.name
            ),
        );
        let store_path = case_dir.join("store.json");
        let log_path = case_dir.join("helper.log");
        let mut syncer = Syncer::new()
            .env("PATH", &path)
            .env("FAKE_CREDENTIALS_LOG", log_path.to_str().unwrap());
        if let Some(store) = &case.helper_store {
            std::fs::write(&store_path, store.to_string()).unwrap();
            syncer = syncer.env("FAKE_CREDENTIALS_FILE", store_path.to_str().unwrap());
        }
        std::fs::write(
            syncer.docker_config_dir().join("config.json"),
            case.config.to_string(),
        )
        .unwrap();
        server.clear_requests();

        let run = apply(&syncer, &rules);

        assert_eq!(run.code, 0, "{}: {}", case.name, run.stderr);
        let requests = server.requests();
        assert!(!requests.is_empty(), "{}: no token requested", case.name);
        for request in &requests {
            assert_eq!(request.account.as_deref(), Some(USER), "{}", case.name);
            assert_eq!(request.status, 200, "{}: {request:?}", case.name);
            let method = if case.expect_post { "POST" } else { "GET" };
            assert_eq!(request.method, method, "{}", case.name);
        }
        if case.helper_store.is_some() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            assert!(
                log.contains("\"get\"") && log.contains(&registry.host()),
                "{}: helper not requested for {}: {log}",
                case.name,
                registry.host()
            );
        }
        assert!(
            check
                .manifest_digest(&format!("{}/app", case.name), "v1")
                .is_some(),
            "{}: image not copied",
            case.name
        );
        assert!(!run.stderr.contains(PASSWORD), "{}", case.name);
        assert!(!run.stderr.contains(REFRESH_TOKEN), "{}", case.name);
    }
}

#[test]
fn rules_credentials_override_docker_config() {
    let registry = Registry::start_with(RegistryOptions {
        htpasswd: Some((USER.into(), PASSWORD.into())),
        ..RegistryOptions::default()
    });
    let source = Registry::start();
    Pusher::new(&source).push_image("order/app", "v1", &sample_image("order"));
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled, username: {USER}, password: {PASSWORD}}}\nrules:\n  - source: {src}/order/app\n    destinations: [{dst}/order/app]\n",
            src = source.host(),
            dst = registry.host()
        ),
    );
    let syncer = Syncer::new();
    let wrong =
        serde_json::json!({"auths": {registry.host(): {"username": USER, "password": "wrong"}}});
    std::fs::write(
        syncer.docker_config_dir().join("config.json"),
        wrong.to_string(),
    )
    .unwrap();

    apply(&syncer, &rules).expect_code(0);

    let check = Pusher::new(&registry).basic_auth(USER, PASSWORD);
    assert!(check.manifest_digest("order/app", "v1").is_some());
}

#[test]
fn wrong_password_fails_clearly() {
    let registry = Registry::start_with(RegistryOptions {
        htpasswd: Some((USER.into(), PASSWORD.into())),
        ..RegistryOptions::default()
    });
    Pusher::new(&registry)
        .basic_auth(USER, PASSWORD)
        .push_image("locked/app", "v1", &sample_image("locked"));
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}: {{tls: disabled, username: {USER}, password: not-{PASSWORD}}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/locked/app\n    destinations: [{dst}/locked/app]\n",
            src = registry.host(),
            dst = destination.host()
        ),
    );

    let run = Syncer::new().run(&["plan", rules.to_str().unwrap()]);

    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("401"), "{}", run.stderr);
    assert!(run.stderr.contains("locked/app"), "{}", run.stderr);
    let sent = format!("sent user {USER} from the rules file");
    assert!(run.stderr.contains(&sent), "{}", run.stderr);
    assert!(
        !run.stderr.contains("attempts"),
        "a 401 after a refresh must not be retried: {}",
        run.stderr
    );
    assert!(!run.stderr.contains(PASSWORD), "{}", run.stderr);
}

/// Runs syncer at trace level against a basic-auth registry and a
/// token-auth registry and checks that no secret reaches its output.
#[test]
fn trace_output_contains_no_secret() {
    use base64::Engine;
    let server = token_server(false);
    let token_dest = token_registry(&server);
    let basic_source = Registry::start_with(RegistryOptions {
        htpasswd: Some((USER.into(), PASSWORD.into())),
        ..RegistryOptions::default()
    });
    Pusher::new(&basic_source)
        .basic_auth(USER, PASSWORD)
        .push_image("secret/app", "v1", &sample_image("secrets"));
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}: {{tls: disabled, username: {USER}, password: {PASSWORD}}}\n  {dst}: {{tls: disabled, username: {USER}, password: {PASSWORD}}}\nrules:\n  - source: {src}/secret/app\n    destinations: [{dst}/secret/app]\n",
            src = basic_source.host(),
            dst = token_dest.host()
        ),
    );
    let syncer = Syncer::new().env("RUST_LOG", "trace");

    let run = syncer.run(&["-vvv", "apply", "--auto-approve", rules.to_str().unwrap()]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("TRACE"),
        "trace logging is not on, the test proves nothing"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        assert!(!text.contains(PASSWORD), "password in {name}");
        assert!(!text.contains(&basic), "basic credentials in {name}");
        assert!(!text.contains("eyJ"), "a JWT in {name}");
    }
}

/// Returns the raw (still percent-encoded) value of `name` in a query.
fn query_param<'a>(path_and_query: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path_and_query.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Strips the query, leaving the upload session's path.
fn session_of(path_and_query: &str) -> &str {
    path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path)
}

/// Replies to a request without `Authorization` with a basic-auth
/// challenge, and to every other request with `reply`.
fn basic_auth_required(request: &Received, reply: impl FnOnce() -> Reply) -> Reply {
    if request.authorization.is_none() {
        return Reply::json(
            401,
            serde_json::json!({"errors": [{"code": "UNAUTHORIZED"}]}),
        )
        .header("WWW-Authenticate", "Basic realm=\"scripted\"");
    }
    reply()
}

#[test]
fn next_page_link_to_other_host_is_rejected() {
    let other = HttpServer::start(|_| Reply::not_found());
    let link = format!(
        "<http://{}/v2/ns/app/tags/list?page=2>; rel=\"next\"",
        other.host
    );
    let registry = HttpServer::start(move |request| {
        basic_auth_required(request, || {
            if request.target.starts_with("/v2/ns/app/tags/list") {
                let tags = serde_json::json!({"name": "ns/app", "tags": ["v1"]});
                Reply::json(200, tags).header("Link", &link)
            } else {
                Reply::not_found()
            }
        })
    });
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {host}: {{tls: disabled, username: {USER}, password: {PASSWORD}}}\nrules:\n  - source: {host}/ns/app\n    destinations: [{host}/mirror/app]\n",
            host = registry.host
        ),
    );

    let run = Syncer::new().run(&["plan", rules.to_str().unwrap()]);

    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("next-page Link"), "{}", run.stderr);
    assert!(run.stderr.contains(&other.host), "{}", run.stderr);
    assert!(run.stderr.contains(&registry.host), "{}", run.stderr);
    assert!(
        registry
            .received()
            .iter()
            .any(|r| r.authorization.is_some()),
        "the registry never received credentials, so the test proves nothing"
    );
    assert!(
        other.received().is_empty(),
        "the other host received {:?}",
        other.received()
    );
}

#[test]
fn upload_location_on_other_host_is_rejected() {
    let source = Registry::start();
    Pusher::new(&source).push_image("up/app", "v1", &sample_image("upload-origin"));
    let other = HttpServer::start(|_| Reply::not_found());
    let location = format!("http://{}/v2/up/app/blobs/uploads/session-1", other.host);
    let destination = HttpServer::start(move |request| {
        basic_auth_required(request, || {
            if request.method == "POST" && request.target.starts_with("/v2/up/app/blobs/uploads/") {
                Reply::json(202, serde_json::json!({})).header("Location", &location)
            } else {
                Reply::not_found()
            }
        })
    });
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled, username: {USER}, password: {PASSWORD}}}\nrules:\n  - source: {src}/up/app\n    destinations: [{dst}/up/app]\n",
            src = source.host(),
            dst = destination.host
        ),
    );

    let run = apply(&Syncer::new(), &rules);

    assert_eq!(run.code, 1, "{}", run.stdout);
    let output = format!("{}{}", run.stdout, run.stderr);
    assert!(output.contains("upload Location"), "{output}");
    assert!(output.contains(&other.host), "{output}");
    assert!(output.contains(&destination.host), "{output}");
    assert!(
        destination
            .received()
            .iter()
            .any(|r| r.method == "POST" && r.authorization.is_some()),
        "no authorised upload was started, so the test proves nothing: {:?}",
        destination.received()
    );
    assert!(
        other.received().is_empty(),
        "the other host received {:?}",
        other.received()
    );
}
