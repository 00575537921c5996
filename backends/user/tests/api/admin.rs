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

/// A registered admin, logged in.
async fn admin_of(u: &TestUser) -> Tokens {
    assert_eq!(
        u.register("root@example.com").await.status(),
        StatusCode::CREATED
    );
    user_service::accounts::bootstrap_admin(&u.state, "root@example.com")
        .await
        .unwrap();
    u.login("root@example.com").await
}

async fn id_of(u: &TestUser, t: &Tokens) -> String {
    u.get("/users/me", &t.access)
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn admins_find_accounts_by_email_prefix_role_and_status_in_pages() {
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        let label = u.label();
        let admin = admin_of(&u).await;
        for e in [
            "alice@example.com",
            "alina@example.com",
            "al_x@example.com",
            "bob@example.com",
        ] {
            assert_eq!(u.register(e).await.status(), StatusCode::CREATED);
        }
        let emails = |v: &Value| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["email"].as_str().unwrap().to_owned())
                .collect()
        };
        let page = |q: &'static str| {
            let u = &u;
            let admin = &admin;
            async move {
                let r = u.get(&format!("/admin/users?{q}"), &admin.access).await;
                assert_eq!(r.status(), StatusCode::OK, "{label}: {q}");
                r.json::<Value>().await.unwrap()
            }
        };
        let mut found = emails(&page("email=AL").await);
        found.sort();
        assert_eq!(
            found,
            ["al_x@example.com", "alice@example.com", "alina@example.com"],
            "{label}"
        );
        // `_` is a character, not a wildcard.
        assert_eq!(
            emails(&page("email=al_").await),
            ["al_x@example.com"],
            "{label}"
        );
        assert_eq!(
            emails(&page("role=admin").await),
            ["root@example.com"],
            "{label}"
        );

        // Cursor pages: 5 accounts, 2 per page, each once.
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let r = u
                .get(
                    &format!("/admin/users?limit=2&cursor={cursor}"),
                    &admin.access,
                )
                .await;
            let v: Value = r.json().await.unwrap();
            seen.extend(emails(&v));
            match v["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => break,
            }
        }
        seen.sort();
        assert_eq!(seen.len(), 5, "{label}: {seen:?}");
        seen.dedup();
        assert_eq!(seen.len(), 5, "{label}");

        let bob = u.login("bob@example.com").await;
        let r = u.get("/admin/users", &bob.access).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{label}");
        let r = u.get("/admin/users?role=emperor", &admin.access).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{label}");
    }
}

#[tokio::test]
async fn a_disabled_account_loses_its_sessions_at_once_and_cannot_log_in_until_enabled() {
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        let label = u.label();
        let admin = admin_of(&u).await;
        let ann = u.account("ann@example.com").await;
        let ann_laptop = u.login("ann@example.com").await;
        let ann_id = id_of(&u, &ann).await;

        let r = u
            .post_json_auth(
                &format!("/admin/users/{ann_id}/disable"),
                &admin.access,
                json!({"reason": "chargeback fraud"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{label}");
        let detail: Value = r.json().await.unwrap();
        assert_eq!(detail["status"], "disabled", "{label}");
        assert_eq!(detail["disabled_reason"], "chargeback fraud", "{label}");
        let sessions = detail["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 2, "{label}");
        assert!(
            sessions
                .iter()
                .all(|s| s["active"] == false && s["revoked_reason"] == "account disabled"),
            "{label}: {sessions:?}"
        );

        // Her next request at the service, her refresh tokens, her login.
        for t in [&ann, &ann_laptop] {
            assert_eq!(
                u.get("/users/me", &t.access).await.status(),
                StatusCode::UNAUTHORIZED,
                "{label}"
            );
            assert_eq!(
                u.refresh(&t.refresh).await.status(),
                StatusCode::UNAUTHORIZED,
                "{label}"
            );
        }
        let r = u.login_with("ann@example.com", PASSWORD).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{label}");
        assert!(problem(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("disabled"));
        // A wrong password reveals nothing more than for any account.
        let wrong = problem(
            u.login_with("ann@example.com", "not her password at all")
                .await,
        )
        .await;
        let unknown = problem(
            u.login_with("nobody@example.com", "not her password at all")
                .await,
        )
        .await;
        assert_eq!(wrong, unknown, "{label}");
        assert_eq!(wrong["status"], 401, "{label}");

        // Idempotent; not on oneself.
        let again = u
            .post_json_auth(
                &format!("/admin/users/{ann_id}/disable"),
                &admin.access,
                json!({}),
            )
            .await;
        assert_eq!(again.status(), StatusCode::OK, "{label}");
        assert_eq!(
            again.json::<Value>().await.unwrap()["disabled_reason"],
            "chargeback fraud"
        );
        let root_id = id_of(&u, &admin).await;
        let r = u
            .post_json_auth(
                &format!("/admin/users/{root_id}/disable"),
                &admin.access,
                json!({}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{label}");
        let r = u
            .post_json_auth("/admin/users/nobody/disable", &admin.access, json!({}))
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{label}");

        let r = u
            .post_json_auth(
                &format!("/admin/users/{ann_id}/enable"),
                &admin.access,
                json!(null),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{label}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["status"],
            "active",
            "{label}"
        );
        let back = u.login("ann@example.com").await;
        assert_eq!(
            u.get("/users/me", &back.access).await.status(),
            StatusCode::OK,
            "{label}"
        );
        assert_eq!(
            u.refresh(&ann.refresh).await.status(),
            StatusCode::UNAUTHORIZED,
            "{label}: the sessions ended by the disable stay ended"
        );
        let listed = u.get("/admin/users?status=disabled", &admin.access).await;
        assert_eq!(
            listed.json::<Value>().await.unwrap()["items"],
            json!([]),
            "{label}"
        );
    }
}

/// Logins racing a disable: whichever commits first, no session of the account is open
/// after the disable returned and every later login is refused.
#[tokio::test]
async fn logins_racing_a_disable_leave_no_open_session() {
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        let label = u.label();
        let admin = admin_of(&u).await;
        let ann = u.account("ann@example.com").await;
        let ann_id = id_of(&u, &ann).await;
        let logins = (0..6).map(|_| u.login_with("ann@example.com", PASSWORD));
        let path = format!("/admin/users/{ann_id}/disable");
        let disable = u.post_json_auth(&path, &admin.access, json!({}));
        let (statuses, disabled) = tokio::join!(futures::future::join_all(logins), disable);
        assert_eq!(disabled.status(), StatusCode::OK, "{label}");
        for r in &statuses {
            assert!(
                [StatusCode::OK, StatusCode::FORBIDDEN].contains(&r.status()),
                "{label}: {}",
                r.status()
            );
        }
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(&ann_id)
        .fetch_one(u.db.db.pool())
        .await
        .unwrap();
        assert_eq!(open, 0, "{label}");
    }
}
