use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::*;

#[tokio::test]
async fn registering_returns_the_account_and_stores_an_argon2id_hash_and_an_event() {
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        let r = u.register("  Ann@Example.com ").await;
        assert_eq!(r.status(), StatusCode::CREATED, "{}", u.label());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["email"], "ann@example.com");
        assert_eq!(body["roles"], json!(["customer"]));
        assert!(body.get("password_hash").is_none());

        let row = sqlx::query("SELECT password_hash FROM users WHERE email = $1")
            .bind("ann@example.com")
            .fetch_one(u.state.db.pool())
            .await
            .unwrap();
        let hash: String = row.get("password_hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{}: {hash}",
            u.label()
        );
        let events: Vec<String> = sqlx::query("SELECT topic FROM kit_outbox ORDER BY id")
            .fetch_all(u.state.db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("topic"))
            .collect();
        assert_eq!(events, ["user.registered"], "{}", u.label());
    }
}

#[tokio::test]
async fn a_duplicate_email_is_409_and_writes_nothing() {
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        assert_eq!(
            u.register("ann@example.com").await.status(),
            StatusCode::CREATED
        );
        let r = u.register("ANN@example.com").await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{}", u.label());
        let p = problem(r).await;
        assert_eq!(p["status"], 409);
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM kit_outbox")
            .fetch_one(u.state.db.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(
            n,
            1,
            "{}: the refused registration left no event",
            u.label()
        );
    }
}

#[tokio::test]
async fn two_parallel_registrations_of_one_email_give_one_201_and_one_409() {
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        for round in 0..3 {
            let email = format!("race{round}@example.com");
            let (a, b) = tokio::join!(u.register(&email), u.register(&email));
            let mut codes = [a.status().as_u16(), b.status().as_u16()];
            codes.sort();
            assert_eq!(codes, [201, 409], "{}: round {round}", u.label());
        }
    }
}

#[tokio::test]
async fn bad_registrations_are_422_naming_each_field_and_bad_json_is_4xx() {
    let u = spawn(kit::testing::sqlite().await).await;
    let r = u
        .post(
            "/users",
            json!({ "email": "not-an-email", "password": "short" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p = problem(r).await;
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "password"]);

    let r = u
        .post(
            "/users",
            json!({ "email": "ann@example.com", "password": "ann@example.com" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(problem(r).await["detail"]
        .as_str()
        .unwrap()
        .contains("must not be the email"));

    let r = u
        .app
        .client
        .post(u.app.url("/users"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    problem(r).await;
    let r = u
        .app
        .client
        .post(u.app.url("/users"))
        .body("email=a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = u
        .post("/users", json!({ "email": "ann@example.com" }))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing password"
    );
}

#[tokio::test]
async fn changing_the_password_ends_the_other_sessions_and_keeps_this_one() {
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        let first = u.account("ann@example.com").await;
        let second = u.login("ann@example.com").await;
        let r = u.put("/users/me/password", &first.access, json!({ "current_password": "wrong password!!", "new_password": "another long passphrase" })).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{}", u.label());
        let r = u
            .put(
                "/users/me/password",
                &first.access,
                json!({ "current_password": PASSWORD, "new_password": "another long passphrase" }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{}", u.label());
        assert_eq!(
            u.get("/users/me", &first.access).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            u.get("/users/me", &second.access).await.status(),
            StatusCode::UNAUTHORIZED,
            "{}: the other session ended",
            u.label()
        );
        assert_eq!(
            u.refresh(&second.refresh).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            u.login_with("ann@example.com", PASSWORD).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            u.login_with("ann@example.com", "another long passphrase")
                .await
                .status(),
            StatusCode::OK
        );
        let topics: Vec<String> = sqlx::query("SELECT topic FROM kit_outbox ORDER BY id")
            .fetch_all(u.state.db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("topic"))
            .collect();
        assert_eq!(topics, ["user.registered", "user.password_changed"]);
    }
}

#[tokio::test]
async fn a_stale_hash_is_rehashed_with_the_current_parameters_on_login() {
    let db = kit::testing::sqlite().await;
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().to_owned();
    let weak = spawn_with(db, dir, |s| {
        s.hash = user_service::password::HashParams {
            m_kib: 8 * 1024,
            t: 1,
            p: 1,
        }
    })
    .await;
    assert_eq!(
        weak.register("ann@example.com").await.status(),
        StatusCode::CREATED
    );
    drop(weak.app);
    let db2 = kit::Db::connect(&url).await.unwrap();
    let state = user_service::AppState::build(db2.clone(), settings(&key_dir))
        .await
        .unwrap();
    let app = kit::testing::spawn_app(user_service::router(state)).await;
    let r = app
        .client
        .post(app.url("/auth/login"))
        .json(&json!({ "email": "ann@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let hash: String = sqlx::query("SELECT password_hash FROM users")
        .fetch_one(db2.pool())
        .await
        .unwrap()
        .get("password_hash");
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
}
