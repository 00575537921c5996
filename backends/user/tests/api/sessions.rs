use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn the_owner_lists_open_sessions_and_ends_one_of_them() {
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        let a = u.account("ann@example.com").await;
        let b = u.login("ann@example.com").await;
        let other = u.account("bob@example.com").await;

        let list: Value = u
            .get("/users/me/sessions", &a.access)
            .await
            .json()
            .await
            .unwrap();
        let sessions = list["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 2, "{}", u.label());
        assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
        let b_id = sessions.iter().find(|s| s["current"] == false).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();

        // Bob cannot end Ann's session: it is not his (404, nothing revealed).
        let r = u
            .delete(&format!("/users/me/sessions/{b_id}"), &other.access)
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{}", u.label());
        assert_eq!(u.get("/users/me", &b.access).await.status(), StatusCode::OK);

        let r = u
            .delete(&format!("/users/me/sessions/{b_id}"), &a.access)
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            u.get("/users/me", &b.access).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            u.refresh(&b.refresh).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let list: Value = u
            .get("/users/me/sessions", &a.access)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list["sessions"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn protected_endpoints_refuse_callers_without_a_valid_token_and_ignore_identity_headers() {
    let u = spawn(kit::testing::sqlite().await).await;
    let t = u.account("ann@example.com").await;
    let me: Value = u.get("/users/me", &t.access).await.json().await.unwrap();
    let user_id = me["id"].as_str().unwrap();
    for (method, path) in [
        ("GET", "/users/me"),
        ("GET", "/users/me/sessions"),
        ("POST", "/auth/logout"),
        ("PUT", "/users/me/password"),
        ("POST", "/admin/keys/rotate"),
    ] {
        let r = u
            .app
            .client
            .request(method.parse().unwrap(), u.app.url(path))
            .header("x-user-id", user_id)
            .header("x-user-roles", "admin")
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        assert!(
            r.headers().contains_key("www-authenticate"),
            "{method} {path}"
        );
    }
    // A token signed by some other key is refused too.
    let forged = kit::identity::SigningKey::generate().sign(&kit::identity::AccessClaims {
        sub: user_id.into(),
        iss: "gatehouse-user".into(),
        aud: "gatehouse".into(),
        exp: kit::db::now_ms() / 1000 + 600,
        iat: kit::db::now_ms() / 1000,
        jti: "x".into(),
        sid: "x".into(),
        roles: vec!["admin".into()],
        perms: vec![],
    });
    assert_eq!(
        u.get("/users/me", &forged).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
