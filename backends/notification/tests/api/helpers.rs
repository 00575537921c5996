//! The harness: a notification service on port 0 over a fresh database and an embedded bus,
//! its mail in a temporary folder (or at an SMTP server), tokens from a test key.

use std::sync::Arc;
use std::time::Duration;

use kit::testing::{spawn_app, TestApp, TestDb, TestKeys};
use kit::{Event, EventBus, Service as _};
use notification_service::{ChannelSender, Service, Settings};
use reqwest::Response;
use serde_json::Value;
use sqlx::Row;

/// Generous: CI machines are slow, and polling returns as soon as the condition holds.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct TestNotify {
    pub app: TestApp,
    pub db: TestDb,
    pub bus: Arc<dyn EventBus>,
    pub keys: TestKeys,
    pub mail: tempfile::TempDir,
    pub settings: Settings,
    pub senders: Vec<Arc<dyn ChannelSender>>,
    pub service: Option<Service>,
}

/// The service on `db` with mail to files, adjusted by `tweak`.
pub async fn start(db: TestDb, tweak: impl FnOnce(&mut Settings)) -> TestNotify {
    start_on(db, kit::testing::bus().await, tweak).await
}

/// [`start`] on `bus`.
pub async fn start_on(
    db: TestDb,
    bus: Arc<dyn EventBus>,
    tweak: impl FnOnce(&mut Settings),
) -> TestNotify {
    start_with(db, bus, Vec::new(), tweak).await
}

/// [`start_on`] with the embedder's `senders`.
pub async fn start_with(
    db: TestDb,
    bus: Arc<dyn EventBus>,
    senders: Vec<Arc<dyn ChannelSender>>,
    tweak: impl FnOnce(&mut Settings),
) -> TestNotify {
    let mail = tempfile::tempdir().unwrap();
    let mut settings = Settings::to_files(mail.path().to_owned());
    settings.poll_interval = Duration::from_millis(100);
    tweak(&mut settings);
    let keys = TestKeys::default();
    let service = Service::start(
        db.db.clone(),
        settings.clone(),
        keys.verifier.clone(),
        bus.clone(),
        senders.clone(),
    )
    .await
    .expect("notification service");
    let app = spawn_app(service.router()).await;
    TestNotify {
        app,
        db,
        bus,
        keys,
        mail,
        settings,
        senders,
        service: Some(service),
    }
}

impl TestNotify {
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

    /// Publishes `topic` with `payload` as the producing service's relay would; its id.
    pub async fn publish(&self, topic: &str, payload: Value) -> Event {
        let event = Event {
            id: kit::db::new_id(),
            topic: topic.into(),
            occurred_at: kit::db::now_ms(),
            payload,
            traceparent: None,
        };
        self.bus.publish(&event).await.expect("publish");
        event
    }

    pub async fn registered(&self, user: &str, email: &str) {
        self.publish(
            "user.registered",
            serde_json::json!({"user_id": user, "email": email, "name": null, "at": 1}),
        )
        .await;
    }

    pub async fn confirmed(&self, user: &str, order: &str) -> Event {
        self.publish(
            "order.confirmed",
            serde_json::json!({"order_id": order, "customer_id": user, "total": 2500,
                               "currency": "EUR", "payment_intent_id": "pi-1"}),
        )
        .await
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

    pub async fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> Response {
        let mut req = self.app.client.post(self.app.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.app
            .client
            .delete(self.app.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Response {
        self.app
            .client
            .put(self.app.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The caller's notifications (first page).
    pub async fn inbox(&self, token: &str) -> Vec<Value> {
        let r = self.get("/notifications", token).await;
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        page["items"].as_array().unwrap().clone()
    }

    /// (recipient, kind, state, attempts, last_error) of every delivery, oldest first.
    pub async fn deliveries(&self) -> Vec<(String, String, String, i64, Option<String>)> {
        sqlx::query(
            "SELECT recipient, kind, state, attempts, last_error FROM deliveries \
             ORDER BY created_at, id",
        )
        .fetch_all(self.db.db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get("recipient"),
                r.get("kind"),
                r.get("state"),
                r.get("attempts"),
                r.get("last_error"),
            )
        })
        .collect()
    }

    /// The `.eml` files written so far, as text.
    pub fn mail_files(&self) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(self.mail.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    /// Queues `kind` for ann on `channel` to `recipient` as event `event_id`, then claims
    /// it the way a worker that dies before settling would (leased for 1 s).
    pub async fn claimed_by_a_dead_worker(
        &self,
        event_id: &str,
        channel: &notification_service::catalog::Channel,
        recipient: &str,
        kind: &str,
        data: Value,
    ) {
        let kind = notification_service::catalog::kind(kind).unwrap();
        let mut tx = self.db.db.begin().await.unwrap();
        notification_service::queue::enqueue(
            &mut tx,
            event_id,
            channel,
            recipient,
            Some("ann"),
            kind,
            &data,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let claimed = notification_service::queue::claim(&self.db.db, Duration::from_secs(1))
            .await
            .unwrap()
            .expect("claimed");
        assert_eq!(claimed.attempt, 1);
    }

    /// Stops the consumer and the worker (the HTTP surface keeps serving).
    pub async fn stop(&mut self) {
        if let Some(s) = self.service.take() {
            s.shutdown().await;
        }
    }

    /// Starts the service again on the same database and bus.
    pub async fn restart(&mut self) {
        self.stop().await;
        let service = Service::start(
            self.db.db.clone(),
            self.settings.clone(),
            self.keys.verifier.clone(),
            self.bus.clone(),
            self.senders.clone(),
        )
        .await
        .expect("notification service");
        self.service = Some(service);
    }
}

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`].
pub async fn eventually<T, Fut>(what: &str, check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    kit::testing::eventually(what, DEADLINE, check).await
}

/// A message's headers unfolded (RFC 5322 §2.2.3), for searching.
pub fn unfolded(message: &str) -> String {
    message.replace("\r\n ", " ").replace("\r\n\t", " ")
}

/// The value of `header` in `message`.
pub fn header(message: &str, name: &str) -> Option<String> {
    let head = message.split("\r\n\r\n").next()?;
    unfolded(head).lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}
