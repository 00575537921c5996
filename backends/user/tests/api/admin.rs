use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn put_roles(u: &TestUser, access: &str, user_id: &str, roles: Value) -> reqwest::Response {
    u.put(
        &format!("/admin/users/{user_id}/roles"),
        access,
        json!({ "roles": roles }),
    )
    .await
}

#[tokio::test]
async fn only_admins_set_roles_and_the_first_admin_comes_from_the_bootstrap_setting() {
    for db in kit::testing::databases().await {
        let url = db.url.clone();
        let u = spawn(db).await;
        let ann = u.account("ann@example.com").await;
        let bob = u.account("bob@example.com").await;
        let bob_id = u
            .get("/users/me", &bob.access)
            .await
            .json::<Value>()
            .await
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = put_roles(&u, &ann.access, &bob_id, json!(["admin"])).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{}", u.label());

        // Restart with the bootstrap setting naming Ann: she becomes admin.
        let db2 = kit::Db::connect(&url).await.unwrap();
        let mut s = settings(u.dir.path());
        s.bootstrap_admin = Some("Ann@Example.com".into());
        let state = user_service::AppState::build(db2, s).await.unwrap();
        let app = kit::testing::spawn_app(user_service::router(state)).await;
        let r = app
            .client
            .post(app.url("/auth/login"))
            .json(&json!({ "email": "ann@example.com", "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        let admin = tokens(r).await;
        let r = put_roles(&u, &admin.access, &bob_id, json!(["customer", "admin"])).await;
        assert_eq!(r.status(), StatusCode::OK, "{}", u.label());
        assert_eq!(
            r.json::<Value>().await.unwrap()["roles"],
            json!(["admin", "customer"])
        );

        let r = put_roles(&u, &admin.access, &bob_id, json!(["emperor"])).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let r = put_roles(&u, &admin.access, "no-such-user", json!(["customer"])).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);

        // Bob's next token carries the new role.
        let bob2 = u.login("bob@example.com").await;
        let me: Value = u.get("/users/me", &bob2.access).await.json().await.unwrap();
        assert_eq!(me["roles"], json!(["admin", "customer"]));
    }
}

#[tokio::test]
async fn a_rotated_key_stays_published_so_tokens_it_signed_keep_working() {
    let u = spawn(kit::testing::sqlite().await).await;
    let ann = u.account("ann@example.com").await;
    let r = put_roles(&u, &ann.access, "x", json!(["admin"])).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let jwks: Value = u
        .app
        .client
        .get(u.app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    let old_kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();

    user_service::accounts::bootstrap_admin(&u.state, "ann@example.com")
        .await
        .unwrap();
    let admin = u.login("ann@example.com").await;
    let r = u.post_auth("/admin/keys/rotate", &admin.access).await;
    assert_eq!(r.status(), StatusCode::OK);
    let new_kid = r.json::<Value>().await.unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_kid, old_kid);

    let jwks: Value = u
        .app
        .client
        .get(u.app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [new_kid.as_str(), old_kid.as_str()]);
    assert_eq!(
        u.get("/users/me", &ann.access).await.status(),
        StatusCode::OK,
        "old-key token"
    );
    let fresh = u.login("ann@example.com").await;
    assert_eq!(
        jsonwebtoken::decode_header(&fresh.access)
            .unwrap()
            .kid
            .as_deref(),
        Some(new_kid.as_str())
    );

    // The new key was written to the key file: a restart signs with it.
    let pem = std::fs::read_to_string(u.dir.path().join("key.pem")).unwrap();
    assert_eq!(
        kit::identity::SigningKey::from_pem(&pem).unwrap().kid(),
        new_kid
    );
}
