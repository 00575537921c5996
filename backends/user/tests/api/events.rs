use kit::Service as _;
use std::sync::Arc;
use std::time::Duration;

use kit::EventBus;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// With the relay running, a registration and a password change reach a bus subscriber as
/// `user.registered` and `user.password_changed`, and the outbox rows are marked sent.
#[tokio::test]
async fn account_events_are_published_to_the_bus_after_commit() {
    for db in kit::testing::databases().await {
        let label = db.label();
        let bus: Arc<dyn EventBus> = kit::testing::bus().await;
        let mut sub = bus.subscribe("test", "user.>").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let service = user_service::Service::start(db.db.clone(), settings(dir.path()), bus)
            .await
            .unwrap();
        let app = kit::testing::spawn_app(service.router()).await;
        let r = app
            .client
            .post(app.url("/users"))
            .json(&json!({ "email": "ann@example.com", "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let user_id = r.json::<serde_json::Value>().await.unwrap()["id"].clone();
        let pair = tokens(
            app.client
                .post(app.url("/auth/login"))
                .json(&json!({ "email": "ann@example.com", "password": PASSWORD }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let r = app
            .client
            .put(app.url("/users/me/password"))
            .bearer_auth(&pair.access)
            .json(
                &json!({ "current_password": PASSWORD, "new_password": "another long passphrase" }),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        // A second session, ended by its owner; then the first one's refresh token
        // presented twice (as by a thief), which ends that session.
        let login = |password: &'static str| {
            let app = &app;
            async move {
                tokens(
                    app.client
                        .post(app.url("/auth/login"))
                        .json(&json!({ "email": "ann@example.com", "password": password }))
                        .send()
                        .await
                        .unwrap(),
                )
                .await
            }
        };
        let first = login("another long passphrase").await;
        let _second = login("another long passphrase").await;
        let sessions: serde_json::Value = app
            .client
            .get(app.url("/users/me/sessions"))
            .bearer_auth(&first.access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let other = sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["current"] == false)
            .unwrap_or_else(|| panic!("{label}: {sessions}"))["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = app
            .client
            .delete(app.url(&format!("/users/me/sessions/{other}")))
            .bearer_auth(&first.access)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{label}");
        for expected in [StatusCode::OK, StatusCode::UNAUTHORIZED] {
            let r = app
                .client
                .post(app.url("/auth/refresh"))
                .json(&json!({ "refresh_token": first.refresh }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), expected, "{label}");
        }

        let mut seen = Vec::new();
        let mut reasons = Vec::new();
        for _ in 0..4 {
            let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap_or_else(|_| panic!("{label}: no event within 10 s"))
                .unwrap()
                .unwrap();
            assert_eq!(d.event.payload["user_id"], user_id, "{label}");
            seen.push(d.event.topic.clone());
            if let Some(r) = d.event.payload["reason"].as_str() {
                reasons.push(r.to_owned());
            }
            d.ack().await.unwrap();
        }
        assert_eq!(
            seen,
            [
                "user.registered",
                "user.password_changed",
                "user.session_revoked",
                "user.session_revoked"
            ],
            "{label}"
        );
        assert_eq!(
            reasons,
            ["revoked_by_owner", "refresh_token_reused"],
            "{label}"
        );
        assert!(!serde_json::to_string(&seen).unwrap().contains(PASSWORD));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while kit::outbox::pending(&db.db).await.unwrap() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{label}: rows stay pending"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(app);
        service.shutdown().await;
    }
}
