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

        let mut seen = Vec::new();
        for _ in 0..2 {
            let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap_or_else(|_| panic!("{label}: no event within 10 s"))
                .unwrap()
                .unwrap();
            assert_eq!(d.event.payload["user_id"], user_id, "{label}");
            seen.push(d.event.topic.clone());
            d.ack().await.unwrap();
        }
        assert_eq!(
            seen,
            ["user.registered", "user.password_changed"],
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
