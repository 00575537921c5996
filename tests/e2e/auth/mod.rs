//! `jwt` and `api_key` filters over real sockets with real tokens: the JWT attack table, claims
//! forwarded upstream, roles, API keys; `jwks` serves a JWKS we rotate, take down and bring back.

mod jwks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::{self, Upstream};

const SECRET: &str = "an-e2e-secret-of-at-least-32-bytes!!";

/// `printf %s partner-key-1 | sha256sum`: operators configure digests, never keys.
const PARTNER_KEY_DIGEST: &str =
    "sha256:d1cf9c5cffcb718f754b7ecb1ed23efdb5a654b4b20c2fc42759db5903209f76";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Valid claims for the `gatehouse` issuer and `gatehouse-api` audience, with `changes` applied
/// (a `null` removes a claim).
fn claims(changes: Value) -> Value {
    let mut c = json!({
        "sub": "user-1",
        "iss": "gatehouse",
        "aud": "gatehouse-api",
        "iat": now(),
        "exp": now() + 300,
        "roles": ["customer"],
    });
    if let (Some(map), Value::Object(changes)) = (c.as_object_mut(), changes) {
        for (k, v) in changes {
            if v.is_null() {
                map.remove(&k);
            } else {
                map.insert(k, v);
            }
        }
    }
    c
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).unwrap()
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read("rsa.key.pem")).unwrap()
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, &rsa_key(), None, claims)
}

fn ed_key(name: &str) -> EncodingKey {
    EncodingKey::from_ed_pem(&read(name)).unwrap()
}

fn b64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn challenge(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn static_keys_config(up: SocketAddr) -> String {
    let rs = fixture("rsa.pub.pem");
    let es = fixture("ec256.pub.pem");
    let ed = fixture("ed25519.pub.pem");
    let key_digest = "sha256:0a2c9a9e5ae1b7ab17d1c6c4b1e8f7b7bf5a2c8c1e2f3a4b5c6d7e8f9a0b1c2d";
    format!(
        r#"
[filters.rs]
kind = "jwt"
public_key_file = {rs:?}
algorithms = ["RS256"]
issuer = "gatehouse"
audience = "gatehouse-api"
leeway = "30s"
forward_claims = {{ "x-user-id" = "sub", "x-user-roles" = "roles" }}

[filters.admin]
kind = "jwt"
public_key_file = {rs:?}
algorithms = ["RS256"]
issuer = "gatehouse"
audience = "gatehouse-api"
require_roles = ["admin"]

[filters.es]
kind = "jwt"
public_key_file = {es:?}
algorithms = ["ES256"]
forward_claims = {{ "x-user-id" = "sub" }}

[filters.ed]
kind = "jwt"
public_key_file = {ed:?}
algorithms = ["EdDSA"]
forward_claims = {{ "x-user-id" = "sub" }}

[filters.hs]
kind = "jwt"
secret = "{SECRET}"
algorithms = ["HS256"]
forward_claims = {{ "x-user-id" = "sub" }}

[filters.partner]
kind = "api_key"
keys = ["{PARTNER_KEY_DIGEST}", "{key_digest}"]

[[upstreams]]
name = "app"
backends = ["{up}"]

[[routes]]
name = "rs"
match = {{ path_prefix = "/rs" }}
upstream = "app"
filters = ["rs"]

[[routes]]
name = "admin"
match = {{ path_prefix = "/admin" }}
upstream = "app"
filters = ["admin"]

[[routes]]
name = "es"
match = {{ path_prefix = "/es" }}
upstream = "app"
filters = ["es"]

[[routes]]
name = "ed"
match = {{ path_prefix = "/ed" }}
upstream = "app"
filters = ["ed"]

[[routes]]
name = "hs"
match = {{ path_prefix = "/hs" }}
upstream = "app"
filters = ["hs"]

[[routes]]
name = "partner"
match = {{ path_prefix = "/partner" }}
upstream = "app"
filters = ["partner"]
"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_attack_table_is_answered_401_and_never_reaches_the_upstream() {
    let up = Upstream::start("app").await;
    let gw = support::gateway(&static_keys_config(up.addr)).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/rs/orders");

    let valid = rs256(&claims(json!({})));
    let parts: Vec<&str> = valid.split('.').collect();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(claims(json!({})).to_string().as_bytes())
            ),
            "malformed_token",
        ),
        (
            "HS256 signed with the RS256 public key as HMAC secret",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&read("rsa.pub.pem")),
                None,
                &claims(json!({})),
            ),
            "bad_algorithm",
        ),
        (
            "expired beyond the leeway",
            rs256(&claims(json!({"exp": now() - 120}))),
            "expired",
        ),
        (
            "nbf in the future",
            rs256(&claims(json!({"nbf": now() + 600}))),
            "not_yet_valid",
        ),
        (
            "wrong iss",
            rs256(&claims(json!({"iss": "someone-else"}))),
            "bad_issuer",
        ),
        (
            "wrong aud",
            rs256(&claims(json!({"aud": "another-api"}))),
            "bad_audience",
        ),
        (
            "no aud when one is required",
            rs256(&claims(json!({"aud": null}))),
            "missing_claim",
        ),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(claims(json!({"sub": "admin", "roles": ["admin"]}))
                    .to_string()
                    .as_bytes()),
                parts[2]
            ),
            "bad_signature",
        ),
        (
            "a 100 KB token (validly signed)",
            rs256(&claims(json!({"pad": "x".repeat(100 * 1024)}))),
            "token_too_large",
        ),
    ];
    for (name, token, reason) in &cases {
        let resp = client
            .get(&url)
            .bearer_auth(token)
            .header("x-user-id", "attacker")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{name}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
        let ch = challenge(&resp);
        assert!(
            ch.starts_with(
                r#"Bearer realm="gatehouse", error="invalid_token", error_description=""#
            ),
            "{name}: {ch}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], 401, "{name}");
        let metrics = support::admin_metrics(&client, gw.admin_addr().unwrap()).await;
        let count = support::metric_value(
            &metrics,
            "gatehouse_filter_decisions_total",
            &[
                ("filter", "rs"),
                ("decision", "respond"),
                ("reason", reason),
            ],
        );
        assert!(count.is_some_and(|n| n >= 1.0), "{name}: reason {reason}");
    }
    assert!(
        up.requests().is_empty(),
        "no refused request reached the upstream"
    );

    // No token at all: a bare challenge (RFC 6750 §3.1), still 401.
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(challenge(&resp), r#"Bearer realm="gatehouse""#);

    // The valid token passes.
    let resp = client.get(&url).bearer_auth(&valid).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_pass_with_claims_forwarded_and_client_copies_stripped() {
    let up = Upstream::start("app").await;
    let gw = support::gateway(&static_keys_config(up.addr)).await;
    let client = support::client();
    let base = support::url(gw.local_addr(), "");

    let token = rs256(&claims(json!({"roles": ["customer", "beta"]})));
    for _ in 0..2 {
        // The second request is served from the verified-token cache: same outcome.
        let resp = client
            .get(format!("{base}/rs/me"))
            .bearer_auth(&token)
            .header("x-user-id", "admin")
            .header("x-user-roles", "admin")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = up.last();
        assert_eq!(seen.headers["x-user-id"], vec!["user-1".to_string()]);
        assert_eq!(
            seen.headers["x-user-roles"],
            vec!["customer,beta".to_string()]
        );
        assert!(
            seen.header("authorization").is_some(),
            "backends verify again"
        );
    }

    // A valid token without the forwarded claim: the client's copy is still removed.
    let no_roles = rs256(&claims(json!({"roles": null})));
    let resp = client
        .get(format!("{base}/rs/me"))
        .bearer_auth(&no_roles)
        .header("x-user-roles", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(up.last().header("x-user-roles").is_none());

    // Every algorithm family.
    let tokens = [
        (
            "es",
            sign(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(&read("ec256.key.pem")).unwrap(),
                None,
                &claims(json!({"sub": "es-user"})),
            ),
        ),
        (
            "ed",
            sign(
                Algorithm::EdDSA,
                &ed_key("ed25519.key.pem"),
                None,
                &claims(json!({"sub": "ed-user"})),
            ),
        ),
        (
            "hs",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                None,
                &claims(json!({"sub": "hs-user"})),
            ),
        ),
    ];
    for (route, token) in tokens {
        let resp = client
            .get(format!("{base}/{route}/x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{route}");
        assert_eq!(
            up.last().header("x-user-id"),
            Some(format!("{route}-user").as_str())
        );
    }
    // A token for one key is refused by a route verifying with another.
    let ed_token = sign(
        Algorithm::EdDSA,
        &ed_key("ed25519-b.key.pem"),
        None,
        &claims(json!({})),
    );
    let resp = client
        .get(format!("{base}/ed/x"))
        .bearer_auth(&ed_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_roles_are_403_insufficient_scope() {
    let up = Upstream::start("app").await;
    let gw = support::gateway(&static_keys_config(up.addr)).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/admin/users");

    let customer = rs256(&claims(json!({"roles": ["customer"]})));
    let resp = client
        .get(&url)
        .bearer_auth(&customer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(challenge(&resp).contains(r#"error="insufficient_scope""#));
    assert!(up.requests().is_empty());

    let admin = rs256(&claims(json!({"roles": ["customer", "admin"]})));
    let resp = client.get(&url).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_checked_and_not_forwarded() {
    let up = Upstream::start("app").await;
    let gw = support::gateway(&static_keys_config(up.addr)).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/partner/feed");

    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(challenge(&resp).contains(r#"header="x-api-key""#));
    let resp = client
        .get(&url)
        .header("x-api-key", "partner-key-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(up.requests().is_empty());

    let resp = client
        .get(&url)
        .header("x-api-key", "partner-key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        up.last().header("x-api-key").is_none(),
        "the key stays at the edge"
    );
    let metrics = support::admin_metrics(&client, gw.admin_addr().unwrap()).await;
    for reason in ["missing_key", "invalid_key"] {
        assert_eq!(
            support::metric_value(
                &metrics,
                "gatehouse_filter_decisions_total",
                &[("filter", "partner"), ("reason", reason)]
            ),
            Some(1.0),
            "{reason}"
        );
    }
    support::stop(gw).await;
}

/// The HS256 secret given by reference to a file, rotated by rename (as a renewer does):
/// rotating the file reloads the filter, and tokens signed with the old secret are refused
/// from then on, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_read_from_a_file_is_used_and_rotating_the_file_reloads_it() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let old = "the-first-secret-of-at-least-32-bytes";
    let new = "the-second-secret-of-at-least-32-bytes";
    std::fs::write(dir.path().join("hs.secret"), format!("{old}\n")).unwrap();
    let text = format!(
        r#"
[filters.hs]
kind = "jwt"
secret = {{ from_file = "hs.secret" }}
algorithms = ["HS256"]

[[upstreams]]
name = "app"
backends = ["{}"]

[[routes]]
name = "hs"
match = {{ path_prefix = "/" }}
upstream = "app"
filters = ["hs"]
"#,
        up.addr
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, support::with_test_listeners(&text)).unwrap();
    let gw = support::gateway_from_file(path).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/x");
    let token = |secret: &str| {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(secret.as_bytes()),
            None,
            &claims(json!({})),
        )
    };
    let status = |token: String| {
        let request = client.get(&url).bearer_auth(token).send();
        async move { request.await.unwrap().status().as_u16() }
    };
    // The file's line break is not part of the secret.
    assert_eq!(status(token(old)).await, 200);
    assert_eq!(status(token(new)).await, 401);

    let tmp = dir.path().join("hs.secret.tmp");
    std::fs::write(&tmp, new).unwrap();
    std::fs::rename(&tmp, dir.path().join("hs.secret")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while status(token(new)).await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new secret is not in use"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status(token(old)).await, 401);
    support::stop(gw).await;
}

#[test]
fn a_secret_reference_that_cannot_be_resolved_is_refused_naming_the_field() {
    let text = r#"
[filters.hs]
kind = "jwt"
secret = { from_env = "GATEHOUSE_E2E_NEVER_SET" }
algorithms = ["HS256"]
"#;
    let err = gatehouse::Gateway::builder()
        .config_toml(support::with_test_listeners(text))
        .build()
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("filters.hs.secret.from_env: GATEHOUSE_E2E_NEVER_SET"),
        "{err}"
    );
}
