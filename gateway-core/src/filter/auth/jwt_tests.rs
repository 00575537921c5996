//! The `jwt` filter driven directly with real tokens (no sockets): the attack table, scopes,
//! forwarded claims and the cache.

use std::path::PathBuf;

use http::StatusCode;
use jsonwebtoken::{encode, EncodingKey, Header};
use pingora_http::RequestHeader;
use serde_json::json;

use super::*;
use crate::filter::Reply;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/jwt")
        .join(name)
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

fn filter(settings: &str) -> Result<JwtFilter, String> {
    let table: toml::Table = settings.parse().map_err(|e| format!("{e}"))?;
    JwtFilter::from_spec(&FilterSpec {
        name: "auth",
        settings: &table,
    })
}

fn rs256_filter(extra: &str) -> JwtFilter {
    filter(&format!(
        r#"public_key_file = {:?}
algorithms = ["RS256"]
issuer = "gatehouse"
audience = "gatehouse-api"
forward_claims = {{ "x-user-id" = "sub", "x-user-roles" = "roles" }}
{extra}"#,
        fixture("rsa.pub.pem")
    ))
    .expect("filter builds")
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "sub": "user-1",
        "iss": "gatehouse",
        "aud": "gatehouse-api",
        "exp": now_secs() + 300,
        "roles": ["admin", "ops"],
    });
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
    }
    c
}

fn rs256(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&pem("rsa.key.pem")).unwrap();
    encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
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

struct Outcome {
    reply: Option<Reply>,
    header: RequestHeader,
    state: FilterState,
}

async fn run(f: &JwtFilter, authorization: Option<&str>, extra: &[(&str, &str)]) -> Outcome {
    let mut header = RequestHeader::build("GET", b"/", None).unwrap();
    if let Some(a) = authorization {
        header.append_header("authorization", a).unwrap();
    }
    for (k, v) in extra {
        header.append_header(k.to_string(), *v).unwrap();
    }
    let mut state = FilterState::default();
    let mut info = RequestInfo {
        header: &mut header,
        client_ip: None,
        route: "r",
        request_id: "id",
    };
    let reply = match f.on_request(&mut info, &mut state).await {
        Decision::Continue => None,
        Decision::Respond(r) => Some(r),
    };
    Outcome {
        reply,
        header,
        state,
    }
}

async fn refused(f: &JwtFilter, token: &str) -> Reply {
    run(f, Some(&format!("Bearer {token}")), &[])
        .await
        .reply
        .expect("refused")
}

#[tokio::test]
async fn the_attack_table_is_refused_with_401() {
    let f = rs256_filter("leeway = \"30s\"");
    let now = now_secs();
    let valid = rs256(&claims(json!({})));
    let parts: Vec<&str> = valid.split('.').collect();
    let hs_with_public_key = encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(&pem("rsa.pub.pem")),
    )
    .unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(json!({})).to_string().as_bytes())
    );
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims(json!({"sub": "admin"})).to_string().as_bytes()),
        parts[2]
    );
    let huge = rs256(&claims(json!({ "pad": "x".repeat(100 * 1024) })));
    let mut crit_header = Header::new(Algorithm::RS256);
    crit_header.crit = Some(vec!["x-unknown".into()]);
    let crit = encode(
        &crit_header,
        &claims(json!({})),
        &EncodingKey::from_rsa_pem(&pem("rsa.key.pem")).unwrap(),
    )
    .unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", alg_none, "malformed_token"),
        (
            "HS256 keyed with the RSA public key",
            hs_with_public_key,
            "bad_algorithm",
        ),
        (
            "expired beyond leeway",
            rs256(&claims(json!({"exp": now - 31 - 5}))),
            "expired",
        ),
        (
            "nbf in the future",
            rs256(&claims(json!({"nbf": now + 600}))),
            "not_yet_valid",
        ),
        (
            "wrong iss",
            rs256(&claims(json!({"iss": "evil"}))),
            "bad_issuer",
        ),
        (
            "wrong aud",
            rs256(&claims(json!({"aud": "other-api"}))),
            "bad_audience",
        ),
        (
            "no aud",
            rs256(&claims(json!({"aud": null}))),
            "missing_claim",
        ),
        (
            "no iss",
            rs256(&claims(json!({"iss": null}))),
            "missing_claim",
        ),
        (
            "no exp",
            rs256(&claims(json!({"exp": null}))),
            "missing_claim",
        ),
        ("tampered payload", tampered, "bad_signature"),
        ("100 KB token", huge, "token_too_large"),
        ("garbage", "not-a-token".into(), "malformed_token"),
        ("unknown crit extension", crit, "invalid_token"),
        (
            "two parts",
            format!("{}.{}", parts[0], parts[1]),
            "malformed_token",
        ),
    ];
    for (name, token, reason) in cases {
        let reply = refused(&f, &token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(reply.reason, reason, "{name}");
        let challenge = reply
            .headers
            .iter()
            .find(|(n, _)| n == http::header::WWW_AUTHENTICATE)
            .map(|(_, v)| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{name}: {challenge}"
        );
    }
    assert!(run(&f, Some(&format!("Bearer {valid}")), &[])
        .await
        .reply
        .is_none());
}

#[tokio::test]
async fn within_the_leeway_a_token_still_passes() {
    let f = rs256_filter("leeway = \"30s\"");
    let now = now_secs();
    let token = rs256(&claims(json!({"exp": now - 10, "nbf": now + 10})));
    assert!(run(&f, Some(&format!("Bearer {token}")), &[])
        .await
        .reply
        .is_none());
}

#[tokio::test]
async fn missing_or_foreign_credentials_get_a_bare_challenge() {
    let f = rs256_filter("");
    for auth in [
        None,
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer "),
        Some("Bearer"),
    ] {
        let reply = run(&f, auth, &[]).await.reply.expect("refused");
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(reply.reason, "missing_token", "{auth:?}");
        assert!(reply.headers.iter().any(
            |(n, v)| n == http::header::WWW_AUTHENTICATE && v == r#"Bearer realm="gatehouse""#
        ));
    }
}

#[tokio::test]
async fn a_valid_token_forwards_claims_and_strips_client_copies() {
    let f = rs256_filter("");
    let token = rs256(&claims(json!({})));
    let out = run(
        &f,
        Some(&format!("bearer {token}")),
        &[("x-user-id", "evil"), ("X-User-Id", "evil2")],
    )
    .await;
    assert!(out.reply.is_none());
    let ids: Vec<_> = out.header.headers.get_all("x-user-id").iter().collect();
    assert_eq!(ids, vec!["user-1"]);
    assert_eq!(out.header.headers["x-user-roles"], "admin,ops");
    let claims = out.state.claims().expect("claims left");
    assert_eq!(claims.text("sub").as_deref(), Some("user-1"));

    // A token without the claim: the client's copy is still gone.
    let no_roles = rs256(&claims_without("roles"));
    let out = run(
        &f,
        Some(&format!("Bearer {no_roles}")),
        &[("x-user-roles", "admin")],
    )
    .await;
    assert!(out.reply.is_none());
    assert!(!out.header.headers.contains_key("x-user-roles"));

    // A refused request: stripped as well.
    let out = run(&f, Some("Bearer x.y.z"), &[("x-user-id", "evil")]).await;
    assert!(out.reply.is_some());
    assert!(!out.header.headers.contains_key("x-user-id"));
}

fn claims_without(name: &str) -> Value {
    let mut c = claims(json!({}));
    if let Some(map) = c.as_object_mut() {
        map.remove(name);
    }
    c
}

#[tokio::test]
async fn missing_roles_or_permissions_are_403() {
    let f = rs256_filter(
        r#"require_roles = ["admin"]
require_permissions = ["orders:read"]
permissions_claim = "scope""#,
    );
    let ok = rs256(&claims(json!({"scope": "orders:read orders:write"})));
    assert!(run(&f, Some(&format!("Bearer {ok}")), &[])
        .await
        .reply
        .is_none());
    for (name, token) in [
        (
            "no role",
            rs256(&claims(json!({"roles": ["user"], "scope": "orders:read"}))),
        ),
        (
            "no permission",
            rs256(&claims(json!({"scope": "orders:write"}))),
        ),
        ("no claims at all", rs256(&claims(json!({"roles": null})))),
    ] {
        let reply = refused(&f, &token).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{name}");
        assert_eq!(reply.reason, "insufficient_scope", "{name}");
    }
}

#[tokio::test]
async fn every_asymmetric_family_and_hmac_verifies() {
    let cases = [
        (
            "ES256",
            "ec256",
            EncodingKey::from_ec_pem(&pem("ec256.key.pem")).unwrap(),
        ),
        (
            "EdDSA",
            "ed25519",
            EncodingKey::from_ed_pem(&pem("ed25519.key.pem")).unwrap(),
        ),
        (
            "PS256",
            "rsa",
            EncodingKey::from_rsa_pem(&pem("rsa.key.pem")).unwrap(),
        ),
    ];
    for (alg, file, key) in cases {
        let f = filter(&format!(
            "public_key_file = {:?}\nalgorithms = [{alg:?}]",
            fixture(&format!("{file}.pub.pem"))
        ))
        .unwrap();
        let token = encode(&Header::new(alg.parse().unwrap()), &claims(json!({})), &key).unwrap();
        assert!(
            run(&f, Some(&format!("Bearer {token}")), &[])
                .await
                .reply
                .is_none(),
            "{alg}"
        );
    }
    let f = filter(&format!("secret = {SECRET:?}\nalgorithms = [\"HS256\"]")).unwrap();
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert!(run(&f, Some(&format!("Bearer {token}")), &[])
        .await
        .reply
        .is_none());
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes"),
    )
    .unwrap();
    assert_eq!(refused(&f, &forged).await.reason, "bad_signature");
}

#[tokio::test]
async fn hot_tokens_come_from_the_cache_until_they_expire() {
    let f = rs256_filter("leeway = \"0s\"\ncache_entries = 4");
    let token = rs256(&claims(json!({"exp": now_secs() + 1})));
    assert!(run(&f, Some(&format!("Bearer {token}")), &[])
        .await
        .reply
        .is_none());
    assert_eq!(f.cached_tokens(), 1);
    let again = run(&f, Some(&format!("Bearer {token}")), &[]).await;
    assert!(again.reply.is_none());
    assert_eq!(
        again.header.headers["x-user-id"], "user-1",
        "a cache hit forwards claims too"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(refused(&f, &token).await.reason, "expired");
    assert_eq!(f.cached_tokens(), 0);
    for i in 0..20 {
        let t = rs256(&claims(json!({"sub": format!("u{i}")})));
        assert!(run(&f, Some(&format!("Bearer {t}")), &[])
            .await
            .reply
            .is_none());
    }
    assert!(f.cached_tokens() <= 4);
}

#[test]
fn config_errors_are_reported() {
    let err = |s: &str| filter(s).err().unwrap_or_default();
    assert!(err("algorithms = [\"RS256\"]").contains("exactly one"));
    assert!(err(&format!("secret = {SECRET:?}\nalgorithms = [\"RS256\"]")).contains("HS256"));
    assert!(err(&format!("secret = {SECRET:?}\nalgorithms = []")).contains("at least one"));
    assert!(err(&format!(
        "secret = {SECRET:?}\nalgorithms = [\"HS256\"]\nmax_token_bytes = 0"
    ))
    .contains("max_token_bytes"));
    assert!(err("jwks_url = \"http://x/\"\nalgorithms = [\"EdDSA\"]\njwks_refresh = \"1s\"\njwks_min_refresh = \"5s\"").contains("jwks_refresh"));
    assert!(err(&format!(
        "secret = {SECRET:?}\nalgorithms = [\"HS256\"]\nsecrets = 1"
    ))
    .contains("unknown field"));
}

/// The proxy's order: `decide_now`, then `on_request` when it had no answer.
async fn run_as_proxy(f: &JwtFilter, authorization: &str) -> (Option<Decision>, Outcome) {
    let mut header = RequestHeader::build("GET", b"/", None).unwrap();
    header
        .append_header("authorization", authorization)
        .unwrap();
    header.append_header("x-user-id", "evil").unwrap();
    let mut state = FilterState::default();
    let mut info = RequestInfo {
        header: &mut header,
        client_ip: None,
        route: "r",
        request_id: "id",
    };
    let now = f.decide_now(&mut info, &mut state);
    let decision = match &now {
        Some(Decision::Continue) => Decision::Continue,
        Some(Decision::Respond(r)) => Decision::Respond(r.clone()),
        None => f.on_request(&mut info, &mut state).await,
    };
    let reply = match decision {
        Decision::Continue => None,
        Decision::Respond(r) => Some(r),
    };
    (
        now,
        Outcome {
            reply,
            header,
            state,
        },
    )
}

#[tokio::test]
async fn only_a_token_that_needs_its_signature_checked_waits() {
    let f = rs256_filter("");
    let token = rs256(&claims(json!({})));
    let bearer = format!("Bearer {token}");

    // First sight: not cached, so `decide_now` defers; `on_request` verifies and caches.
    let (now, first) = run_as_proxy(&f, &bearer).await;
    assert!(now.is_none(), "an uncached token is not decided at once");
    assert!(first.reply.is_none());
    // Again: decided at once, with the same effect (claims forwarded, client copy gone).
    let (now, again) = run_as_proxy(&f, &bearer).await;
    assert!(matches!(now, Some(Decision::Continue)));
    for out in [&first, &again] {
        let ids: Vec<_> = out.header.headers.get_all("x-user-id").iter().collect();
        assert_eq!(ids, vec!["user-1"]);
        assert_eq!(
            out.state.claims().and_then(|c| c.text("sub")).as_deref(),
            Some("user-1")
        );
    }
    // A request that cannot carry a valid token is refused at once, stripped as well.
    for bad in [
        "Basic abc",
        "Bearer ",
        &format!("Bearer {}", "a".repeat(100_000)),
    ] {
        let (now, out) = run_as_proxy(&f, bad).await;
        assert!(matches!(now, Some(Decision::Respond(_))), "{:.20}", bad);
        assert_eq!(out.reply.map(|r| r.status.as_u16()), Some(401));
        assert!(!out.header.headers.contains_key("x-user-id"));
    }
}

#[tokio::test]
async fn a_websocket_handshake_may_carry_its_token_as_a_subprotocol_when_enabled() {
    let token = rs256(&claims(json!({})));
    let handshake = |protocols: String| {
        vec![
            ("upgrade".to_owned(), "websocket".to_owned()),
            ("connection".to_owned(), "Upgrade".to_owned()),
            ("sec-websocket-protocol".to_owned(), protocols),
        ]
    };
    let offered = handshake(format!("notifications.v1, bearer.{token}"));
    let offered: Vec<(&str, &str)> = offered
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let off = rs256_filter("");
    let reply = run(&off, None, &offered)
        .await
        .reply
        .expect("not read when off");
    assert_eq!(reply.reason, "missing_token");

    let on = rs256_filter("websocket_protocol = true");
    let admitted = run(&on, None, &offered).await;
    assert!(admitted.reply.is_none(), "admitted");
    assert_eq!(
        admitted.header.headers.get("x-user-id").unwrap(),
        "user-1",
        "claims forwarded as for a header token"
    );
    // Not a handshake, a forged token, two tokens: refused as such.
    let plain = [("sec-websocket-protocol", offered[2].1)];
    assert_eq!(
        run(&on, None, &plain).await.reply.unwrap().reason,
        "missing_token"
    );
    let forged = handshake(format!("bearer.{token}x"));
    let forged: Vec<(&str, &str)> = forged
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        run(&on, None, &forged).await.reply.unwrap().status,
        StatusCode::UNAUTHORIZED
    );
    let two = handshake(format!("bearer.{token}, bearer.{token}"));
    let two: Vec<(&str, &str)> = two.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        run(&on, None, &two).await.reply.unwrap().reason,
        "malformed_token"
    );
    // An Authorization header wins, even a bad one: one token per request.
    let reply = run(&on, Some("Bearer nope"), &offered)
        .await
        .reply
        .expect("refused");
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}
