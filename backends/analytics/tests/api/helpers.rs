//! The harness: an analytics service on port 0 over a fresh database and an embedded bus,
//! tokens from a test key.

use std::sync::Arc;
use std::time::Duration;

use analytics_service::{Service, Settings};
use kit::testing::{spawn_app, TestApp, TestDb, TestKeys};
use kit::{Event, EventBus, Service as _};
use reqwest::Response;
use serde_json::{json, Value};
use sqlx::Row;

/// Generous: CI machines are slow, and polling returns as soon as the condition holds.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct TestAnalytics {
    pub app: TestApp,
    pub db: TestDb,
    pub bus: Arc<dyn EventBus>,
    pub keys: TestKeys,
    pub service: Service,
}

/// The service on `db` with default settings.
pub async fn start(db: TestDb) -> TestAnalytics {
    let keys = TestKeys::default();
    let bus = kit::testing::bus().await;
    let service = Service::start(
        db.db.clone(),
        // Tests that set the clock (midnight, a stream in 2026-03) must not meet the
        // housekeeping, which runs on the real one.
        Settings {
            housekeeping: Duration::from_secs(3600),
            ..Settings::default()
        },
        keys.verifier.clone(),
        bus.clone(),
    )
    .await
    .expect("analytics service");
    let app = spawn_app(service.router()).await;
    TestAnalytics {
        app,
        db,
        bus,
        keys,
        service,
    }
}

impl TestAnalytics {
    pub fn label(&self) -> &'static str {
        self.db.label()
    }

    /// A customer's token.
    pub fn user(&self, id: &str) -> String {
        self.keys.token(id, &["customer"], &[])
    }

    pub fn admin(&self) -> String {
        self.keys.token("admin-1", &["admin"], &[])
    }

    /// Posts `body` to `/analytics/events` with `auth` as the whole Authorization value.
    pub async fn send(&self, auth: &str, body: &Value, agent: &str) -> Response {
        self.app
            .client
            .post(self.app.url("/analytics/events"))
            .header("authorization", auth)
            .header("user-agent", agent)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Posts `events` as `token`'s user; the answer, which must be 202.
    pub async fn track(&self, token: &str, events: Value) -> Value {
        let r = self
            .send(
                &format!("Bearer {token}"),
                &json!({ "batch": events }),
                BROWSER,
            )
            .await;
        assert_eq!(r.status(), 202, "{}", self.label());
        r.json().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.app
            .client
            .get(self.app.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// `GET path` as `token`: its JSON body, which must come with 200.
    pub async fn json(&self, path: &str, token: &str) -> Value {
        let r = self.get(path, token).await;
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    /// `GET path` as `token` with `Accept: text/csv`: the body.
    pub async fn csv(&self, path: &str, token: &str) -> String {
        let r = self
            .app
            .client
            .get(self.app.url(path))
            .bearer_auth(token)
            .header("accept", "text/csv")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.text().await.unwrap()
    }

    /// Publishes `topic` with `payload` as the producing service's relay would.
    pub async fn publish(&self, topic: &str, payload: Value, occurred_at: i64) -> Event {
        let event = Event {
            id: kit::db::new_id(),
            topic: topic.into(),
            occurred_at,
            payload,
            traceparent: None,
        };
        self.bus.publish(&event).await.expect("publish");
        event
    }

    /// (count, sum) of `metric` in the `granularity` bucket holding `at`, total row,
    /// `currency` ("" for none).
    pub async fn rollup(
        &self,
        metric: &str,
        granularity: &str,
        at: i64,
        currency: &str,
    ) -> (i64, i64) {
        let ms = match granularity {
            "minute" => 60_000,
            "hour" => 3_600_000,
            _ => 86_400_000,
        };
        let bucket = at.div_euclid(ms) * ms;
        sqlx::query(
            "SELECT count, sum FROM rollups WHERE metric = $1 AND granularity = $2 AND dim = '' \
             AND bucket = $3 AND currency = $4",
        )
        .bind(metric)
        .bind(granularity)
        .bind(bucket)
        .bind(currency)
        .fetch_optional(self.db.db.pool())
        .await
        .unwrap()
        .map(|r| (r.get("count"), r.get("sum")))
        .unwrap_or((0, 0))
    }

    /// Raw events stored.
    pub async fn stored(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(self.db.db.pool())
            .await
            .unwrap()
    }
}

/// A desktop browser's user agent.
pub const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";

/// One track event.
pub fn event(message_id: &str, name: &str) -> Value {
    json!({"type": "track", "event": name, "message_id": message_id,
           "properties": {"path": "/products/mug"}})
}
