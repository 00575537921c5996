//! The `jwt` filter against a JWKS endpoint the test controls: rotation, outage, cold start
//! with the endpoint down, a filter dropped by a reload, and one a reload keeps with its keys.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use super::{challenge, claims, ed_key, sign};
use crate::support::{self, Upstream};

/// A JWKS endpoint whose keys and availability the test controls.
struct JwksServer {
    addr: SocketAddr,
    keys: Arc<Mutex<Vec<Value>>>,
    down: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct JwksState {
    keys: Arc<Mutex<Vec<Value>>>,
    down: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn serve_jwks(State(s): State<JwksState>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys = s.keys.lock().unwrap().clone();
    Json(json!({ "keys": keys })).into_response()
}

impl JwksServer {
    async fn start(keys: Vec<Value>, down: bool) -> JwksServer {
        let state = JwksState {
            keys: Arc::new(Mutex::new(keys)),
            down: Arc::new(AtomicBool::new(down)),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new()
            .route("/.well-known/jwks.json", get(serve_jwks))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            addr,
            keys: state.keys,
            down: state.down,
            hits: state.hits,
            task,
        }
    }

    fn set_keys(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The public JWK of an Ed25519 private key fixture, under `kid`.
fn jwk(private_pem: &str, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(&ed_key(private_pem), Algorithm::EdDSA).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    serde_json::to_value(jwk).unwrap()
}

fn jwks_config(jwks: SocketAddr, up: SocketAddr, refresh: &str) -> String {
    format!(
        r#"
[filters.auth]
kind = "jwt"
jwks_url = "http://{jwks}/.well-known/jwks.json"
jwks_refresh = "{refresh}"
jwks_min_refresh = "200ms"
algorithms = ["EdDSA"]
issuer = "gatehouse"
audience = "gatehouse-api"
forward_claims = {{ "x-user-id" = "sub" }}

[[upstreams]]
name = "users"
backends = ["{up}"]

[[routes]]
name = "users"
match = {{ path_prefix = "/api/users" }}
upstream = "users"
filters = ["auth"]
"#
    )
}

async fn get_with(client: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
    client.get(url).bearer_auth(token).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_is_picked_up_and_an_outage_keeps_the_cached_keys() {
    let jwks = JwksServer::start(vec![jwk("ed25519.key.pem", "a")], false).await;
    let up = Upstream::start("users").await;
    let gw = support::gateway(&jwks_config(jwks.addr, up.addr, "1s")).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/api/users/me");
    let key_a = ed_key("ed25519.key.pem");
    let key_b = ed_key("ed25519-b.key.pem");
    let token_a = sign(
        Algorithm::EdDSA,
        &key_a,
        Some("a"),
        &claims(json!({"sub": "alice"})),
    );

    let resp = get_with(&client, &url, &token_a).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().header("x-user-id"), Some("alice"));

    // Unknown kids, a path-like kid included, and a known kid with the wrong key: all 401.
    tokio::time::sleep(Duration::from_millis(250)).await;
    for (name, kid, key) in [
        ("unknown kid", "zzz", &key_a),
        ("path traversal kid", "../../etc/passwd", &key_a),
        ("kid a signed by key b", "a", &key_b),
    ] {
        let token = sign(Algorithm::EdDSA, key, Some(kid), &claims(json!({})));
        let resp = get_with(&client, &url, &token).await;
        assert_eq!(resp.status(), 401, "{name}");
        assert!(
            challenge(&resp).contains(r#"error="invalid_token""#),
            "{name}"
        );
    }

    // Rotate: the endpoint now serves only key b.
    jwks.set_keys(vec![jwk("ed25519-b.key.pem", "b")]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let token_b = sign(
        Algorithm::EdDSA,
        &key_b,
        Some("b"),
        &claims(json!({"sub": "bob"})),
    );
    let resp = get_with(&client, &url, &token_b).await;
    assert_eq!(resp.status(), 200, "the new kid works without a restart");
    assert_eq!(up.last().header("x-user-id"), Some("bob"));
    let resp = get_with(&client, &url, &token_a).await;
    assert_eq!(
        resp.status(),
        401,
        "a removed key stops working, even for a token verified (and cached) before"
    );

    // The endpoint goes down: a scheduled refresh fails, the cached key set keeps serving.
    jwks.down.store(true, Ordering::SeqCst);
    let hits = jwks.hits();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(jwks.hits() > hits, "a refresh was attempted while down");
    let fresh = sign(
        Algorithm::EdDSA,
        &key_b,
        Some("b"),
        &claims(json!({"sub": "carol"})),
    );
    let resp = get_with(&client, &url, &fresh).await;
    assert_eq!(resp.status(), 200, "last good keys serve during the outage");
    assert_eq!(up.last().header("x-user-id"), Some("carol"));
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_with_the_jwks_endpoint_down_is_503_not_401_until_it_comes_up() {
    let jwks = JwksServer::start(vec![jwk("ed25519.key.pem", "a")], true).await;
    let up = Upstream::start("users").await;
    let gw = support::gateway(&jwks_config(jwks.addr, up.addr, "5m")).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/api/users/me");
    let token = sign(
        Algorithm::EdDSA,
        &ed_key("ed25519.key.pem"),
        Some("a"),
        &claims(json!({})),
    );

    let resp = get_with(&client, &url, &token).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(resp.headers().contains_key("retry-after"));
    assert!(!resp.headers().contains_key("www-authenticate"));
    assert!(up.requests().is_empty());
    let metrics = support::admin_metrics(&client, gw.admin_addr().unwrap()).await;
    assert_eq!(
        support::metric_value(
            &metrics,
            "gatehouse_filter_decisions_total",
            &[("filter", "auth"), ("reason", "no_keys")]
        ),
        Some(1.0)
    );

    jwks.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = get_with(&client, &url, &token).await;
    assert_eq!(
        resp.status(),
        200,
        "keys are fetched once the endpoint is back"
    );
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_filter_dropped_by_a_reload_stops_refreshing() {
    let jwks = JwksServer::start(vec![jwk("ed25519.key.pem", "a")], false).await;
    let up = Upstream::start("users").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        support::with_test_listeners(&jwks_config(jwks.addr, up.addr, "200ms")),
    )
    .unwrap();
    let gw = support::gateway_from_file_unwatched(path.clone()).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/api/users/me");
    let token = sign(
        Algorithm::EdDSA,
        &ed_key("ed25519.key.pem"),
        Some("a"),
        &claims(json!({})),
    );
    assert_eq!(get_with(&client, &url, &token).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(jwks.hits() >= 3, "the refresher runs ({})", jwks.hits());

    // The same route without the filter: the old filter (and its refresher) goes away.
    let open = format!(
        "[[upstreams]]\nname = \"users\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"users\"\n\
         match = {{ path_prefix = \"/api/users\" }}\nupstream = \"users\"\n",
        up.addr
    );
    std::fs::write(&path, support::with_test_listeners(&open)).unwrap();
    let store = Arc::clone(gw.store());
    let outcome = tokio::task::spawn_blocking(move || store.reload())
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = jwks.hits();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        jwks.hits(),
        after,
        "no refresh after the filter was dropped"
    );
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_jwt_filter_keeps_its_key_set_over_a_reload() {
    let jwks = JwksServer::start(vec![jwk("ed25519.key.pem", "a")], false).await;
    let up = Upstream::start("users").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let route_b = |prefix: &str| {
        format!(
            "\n[[routes]]\nname = \"open\"\nmatch = {{ path_prefix = \"{prefix}\" }}\n\
             upstream = \"users\"\n"
        )
    };
    // Refresh far away: any fetch during the test is one the reload caused.
    let auth = jwks_config(jwks.addr, up.addr, "5m");
    let write = |prefix: &str| {
        let text = support::with_test_listeners(&format!("{auth}{}", route_b(prefix)));
        std::fs::write(&path, text).unwrap();
    };
    write("/open/v1");
    let gw = support::gateway_from_file_unwatched(path.clone()).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/api/users/me");
    let key = ed_key("ed25519.key.pem");
    let token = |sub: &str| {
        sign(
            Algorithm::EdDSA,
            &key,
            Some("a"),
            &claims(json!({"sub": sub})),
        )
    };

    assert_eq!(get_with(&client, &url, &token("alice")).await.status(), 200);
    assert_eq!(jwks.hits(), 1, "the key set is fetched once");

    // The endpoint goes down, then a reload changes only the other route. A rebuilt filter
    // would have to fetch (and, with the endpoint down, answer 503 `no_keys`).
    jwks.down.store(true, Ordering::SeqCst);
    write("/open/v2");
    let store = Arc::clone(gw.store());
    let outcome = tokio::task::spawn_blocking(move || store.reload())
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    let open = |p: &str| support::url(gw.local_addr(), p);
    assert_eq!(
        client.get(open("/open/v2")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client.get(open("/open/v1")).send().await.unwrap().status(),
        404,
        "the reload was applied"
    );

    // A token never seen before (so not in the verified-token cache) needs the key set.
    let resp = get_with(&client, &url, &token("bob")).await;
    assert_eq!(resp.status(), 200, "the carried-over key set verifies it");
    assert_eq!(up.last().header("x-user-id"), Some("bob"));
    assert_eq!(jwks.hits(), 1, "no fetch after the reload");
    support::stop(gw).await;
}

/// `/ready` is 503 while a JWT filter has never obtained keys (it would refuse every token)
/// and turns 200 once the JWKS endpoint answers: the probes themselves fetch the keys, before
/// any request came. `/admin/health` says why meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_key_set_and_fetches_it_itself() {
    let jwks = JwksServer::start(vec![jwk("ed25519.key.pem", "a")], true).await;
    let up = Upstream::start("users").await;
    let gw = support::gateway(&jwks_config(jwks.addr, up.addr, "5m")).await;
    let client = support::client();
    let admin = gw.admin_addr().unwrap();
    let ready = format!("http://{admin}/ready");

    let resp = client.get(&ready).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["waiting"][0]["filter"], "auth");
    let health: Value = client
        .get(format!("http://{admin}/admin/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "unhealthy", "{health}");
    assert!(
        health["gateway"]["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("filter auth: no keys from"),
        "{health}"
    );

    jwks.down.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while client.get(&ready).send().await.unwrap().status() != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The failed fetches and the good one are counted, and when it came.
    let metrics = support::admin_metrics(&client, admin).await;
    let refreshes = |result: &str| {
        support::metric_value(
            &metrics,
            "gatehouse_jwks_refreshes_total",
            &[("filter", "auth"), ("result", result)],
        )
    };
    assert!(refreshes("failed") >= Some(1.0), "{metrics}");
    assert!(refreshes("ok") >= Some(1.0), "{metrics}");
    let last = support::metric_value(
        &metrics,
        "gatehouse_jwks_last_success_timestamp_seconds",
        &[("filter", "auth")],
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 60.0, "{last} vs {now}");
    // No request reached the route (the upstream only saw /admin/health asking its /ready).
    assert!(
        up.requests().iter().all(|r| r.uri == "/ready"),
        "no request was needed"
    );
    support::stop(gw).await;
}
