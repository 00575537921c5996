//! The `Identity` extractor over real sockets: a protected route behind a JWKS served on
//! port 0.

use std::sync::{Arc, RwLock};

use axum::extract::FromRef;
use axum::routing::get;
use axum::Router;
use jsonwebtoken::jwk::JwkSet;
use kit::identity::{AccessClaims, SigningKey};
use kit::testing::spawn_app;
use kit::{Identity, Verifier};

#[derive(Clone)]
struct State {
    verifier: Arc<Verifier>,
}

impl FromRef<State> for Arc<Verifier> {
    fn from_ref(s: &State) -> Arc<Verifier> {
        s.verifier.clone()
    }
}

async fn me(id: Identity) -> String {
    id.user_id
}

async fn admin_only(id: Identity) -> Result<&'static str, kit::Problem> {
    id.require_role("admin")?;
    Ok("welcome")
}

fn claims(sub: &str, roles: &[&str]) -> AccessClaims {
    let now = kit::db::now_ms() / 1000;
    AccessClaims {
        sub: sub.into(),
        iss: "gatehouse".into(),
        aud: "gatehouse-api".into(),
        exp: now + 300,
        iat: now,
        jti: kit::db::new_id(),
        sid: "s".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        perms: vec![],
    }
}

async fn jwks_server(keys: Arc<RwLock<JwkSet>>) -> kit::testing::TestApp {
    let app = Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let keys = keys.clone();
            async move { axum::Json(keys.read().unwrap().clone()) }
        }),
    );
    spawn_app(app).await
}

#[tokio::test]
async fn protected_routes_need_a_valid_token_and_never_trust_identity_headers() {
    let key = SigningKey::generate();
    let published = Arc::new(RwLock::new(JwkSet {
        keys: vec![key.public_jwk()],
    }));
    let jwks = jwks_server(published.clone()).await;
    let verifier = Verifier::remote(
        &jwks.url("/.well-known/jwks.json"),
        "gatehouse",
        "gatehouse-api",
    )
    .refetch_min_interval(std::time::Duration::ZERO);
    let app = Router::new()
        .route("/me", get(me))
        .route("/admin", get(admin_only))
        .with_state(State {
            verifier: Arc::new(verifier),
        });
    let app = spawn_app(app).await;
    let c = &app.client;

    let r = c
        .get(app.url("/me"))
        .header("x-user-id", "admin")
        .header("x-user-roles", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "identity headers from the network count for nothing"
    );
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    let r = c
        .get(app.url("/me"))
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let token = key.sign(&claims("alice", &["customer"]));
    let r = c
        .get(app.url("/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "alice");
    let r = c
        .get(app.url("/admin"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Rotation: a token from a key published after the first fetch is accepted (the
    // unknown kid makes the verifier fetch again).
    let next = SigningKey::generate();
    published.write().unwrap().keys.push(next.public_jwk());
    let admin = next.sign(&claims("root", &["admin"]));
    let r = c
        .get(app.url("/admin"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The key set endpoint goes away: the cached keys keep verifying.
    drop(jwks);
    let r = c
        .get(app.url("/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
