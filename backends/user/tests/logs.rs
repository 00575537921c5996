//! No password, token or hash appears in the logs (captured at TRACE while accounts are
//! registered, logged into, refreshed and changed) or in `Debug` output.

use serde_json::{json, Value};
use sqlx::Row;
use user_service::keys::KeySource;
use user_service::{router, AppState, Settings};

const PASSWORD: &str = "correct horse battery staple";
const NEW_PASSWORD: &str = "a different long passphrase";

#[tokio::test]
async fn secrets_never_reach_the_logs_or_debug_output() {
    let logs = kit::testing::CapturedLogs::install();

    let db = kit::testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(dir.path());
    settings.signing_key = KeySource::File(dir.path().join("key.pem"));
    let state = AppState::build(db.db.clone(), settings).await.unwrap();
    let app = kit::testing::spawn_app(router(state.clone())).await;
    let post = |path: &str, body: Value| app.client.post(app.url(path)).json(&body).send();
    let r = post(
        "/users",
        json!({ "email": "ann@example.com", "password": PASSWORD }),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let r = post(
        "/auth/login",
        json!({ "email": "ann@example.com", "password": "wrong password here" }),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let r = post(
        "/auth/login",
        json!({ "email": "ann@example.com", "password": PASSWORD }),
    )
    .await
    .unwrap();
    let pair: Value = r.json().await.unwrap();
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let refresh = pair["refresh_token"].as_str().unwrap().to_owned();
    let r = post("/auth/refresh", json!({ "refresh_token": refresh }))
        .await
        .unwrap();
    let pair2: Value = r.json().await.unwrap();
    let r = post("/auth/refresh", json!({ "refresh_token": refresh }))
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "reuse is logged as a warning");
    let r = app
        .client
        .put(app.url("/users/me/password"))
        .bearer_auth(pair2["access_token"].as_str().unwrap())
        .json(&json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD }))
        .send()
        .await
        .unwrap();
    // The session was revoked by the reuse above: refused, and that is logged too.
    assert_eq!(r.status(), 401);
    let hash: String = sqlx::query("SELECT password_hash FROM users")
        .fetch_one(db.db.pool())
        .await
        .unwrap()
        .get("password_hash");

    let text = logs.text();
    assert!(text.contains("logged in"), "the capture works: {text}");
    assert!(text.contains("refresh token was presented again"));
    let secrets = [
        PASSWORD,
        NEW_PASSWORD,
        "wrong password here",
        &access,
        &refresh,
        pair2["refresh_token"].as_str().unwrap(),
        &hash,
        &hash[hash.len() - 20..],
    ];
    for s in secrets {
        assert!(!text.contains(s), "a secret leaked into the logs: {s:.12}…");
    }

    // Debug output of what carries secrets.
    let login: user_service::auth::Login =
        serde_json::from_value(json!({ "email": "a@b.co", "password": PASSWORD })).unwrap();
    let register: user_service::accounts::Register =
        serde_json::from_value(json!({ "email": "a@b.co", "password": PASSWORD })).unwrap();
    let refresh_req: user_service::auth::Refresh =
        serde_json::from_value(json!({ "refresh_token": refresh })).unwrap();
    let change: user_service::accounts::ChangePassword = serde_json::from_value(
        json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD }),
    )
    .unwrap();
    let key = state.keys.active();
    let debug = format!(
        "{login:?} {register:?} {refresh_req:?} {change:?} {key:?} {:?} {:?}",
        state.keys, state.passwords
    );
    for s in [
        PASSWORD,
        NEW_PASSWORD,
        refresh.as_str(),
        &key.to_pem()[28..80],
    ] {
        assert!(!debug.contains(s), "Debug shows a secret: {debug}");
    }
    assert!(
        debug.contains("a@b.co"),
        "Debug still shows what is not secret"
    );
}
