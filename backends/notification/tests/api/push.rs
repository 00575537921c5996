//! Web push end to end: subscriptions over the API, pushes a real push service (on a socket)
//! accepts only when the VAPID token checks out and decrypts to the expected JSON, a gone
//! subscription deleted, and each message sent once when the bus delivers an event twice or
//! a worker dies between claiming and sending.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kit::bus::{Acker, DeliverySource, InProcessOptions};
use kit::{BusError, Delivery, Event, EventBus, Subscription};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::{eventually, start, start_on, TestNotify};
use crate::pushserver::PushServer;
use crate::smtp::{free_port, SmtpSink};

async fn push_server(t: &TestNotify) -> PushServer {
    let key: Value = t
        .app
        .client
        .get(t.app.url("/notifications/push-key"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(key["public_key"], t.settings.push.key.public_key());
    PushServer::start(key["public_key"].as_str().unwrap()).await
}

async fn subscribe(t: &TestNotify, token: &str, sub: &Value) -> (StatusCode, Value) {
    let r = t
        .post(
            "/notifications/push-subscriptions",
            Some(token),
            Some(sub.clone()),
        )
        .await;
    (r.status(), r.json().await.unwrap())
}

/// (subscription, state, last error) of every push delivery, oldest first.
async fn push_states(t: &TestNotify) -> Vec<(String, String, Option<String>)> {
    sqlx::query(
        "SELECT recipient, state, last_error FROM deliveries WHERE channel = 'push' \
         ORDER BY created_at, id",
    )
    .fetch_all(t.db.db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("recipient"), r.get("state"), r.get("last_error")))
    .collect()
}

#[tokio::test]
async fn each_browser_gets_a_signed_encrypted_push_and_a_gone_one_is_deleted() {
    for db in kit::testing::databases().await {
        let t = start(db, |s| s.push.allow_http = true).await;
        let label = t.label();
        let server = push_server(&t).await;
        let (ann, bob) = (t.user("ann"), t.user("bob"));

        // Two browsers for ann, one for bob; posting one again updates it.
        let (status, laptop) = subscribe(&t, &ann, &server.browser("ann-laptop")).await;
        assert_eq!(status, StatusCode::CREATED, "{label}: {laptop}");
        let phone_sub = server.browser("ann-phone");
        assert_eq!(subscribe(&t, &ann, &phone_sub).await.0, StatusCode::CREATED);
        let (again, phone) = subscribe(&t, &ann, &phone_sub).await;
        assert_eq!(again, StatusCode::OK, "{label}: the same browser again");
        assert_eq!(
            subscribe(&t, &bob, &server.browser("bob-laptop")).await.0,
            StatusCode::CREATED
        );
        let mine: Vec<Value> = t
            .get("/notifications/push-subscriptions", &ann)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(mine.len(), 2, "{label}: {mine:?}");

        // What a browser could not use is refused with the field at fault.
        let mut bad = server.browser("broken");
        bad["keys"]["auth"] = json!("c2hvcnQ");
        let (status, problem) = subscribe(&t, &ann, &bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{label}");
        assert_eq!(problem["errors"][0]["field"], "keys.auth", "{problem}");
        bad = server.browser("broken");
        bad["endpoint"] = json!("ftp://push.example/x");
        assert_eq!(
            subscribe(&t, &ann, &bad).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );

        // An order: each of ann's browsers gets it, checked and decrypted; bob's gets nothing.
        t.confirmed("ann", "o-1").await;
        let got = eventually("both of ann's browsers got the push", || async {
            let (l, p) = (server.received("ann-laptop"), server.received("ann-phone"));
            (l.len() == 1 && p.len() == 1).then_some((l, p))
        })
        .await;
        let inbox = t.inbox(&ann).await;
        let expected = json!({
            "id": inbox[0]["id"], "kind": "order_confirmed", "category": "orders",
            "title": inbox[0]["title"], "body": inbox[0]["body"],
        });
        assert_eq!(got.0[0], expected, "{label}");
        assert_eq!(got.1[0], expected, "{label}");
        assert_eq!(
            server.requests("bob-laptop"),
            0,
            "{label}: only the recipient"
        );

        // The phone's subscription is gone at the push service: the next push deletes it.
        server.answer("ann-phone", 410);
        t.confirmed("ann", "o-2").await;
        eventually("the laptop got the second push", || async {
            (server.received("ann-laptop").len() == 2).then_some(())
        })
        .await;
        let gone = eventually("the phone's delivery is dropped", || async {
            push_states(&t)
                .await
                .into_iter()
                .find(|d| d.0 == phone["id"].as_str().unwrap() && d.1 == "dropped")
        })
        .await;
        assert!(
            gone.2.unwrap().contains("410"),
            "{label}: the reason says why"
        );
        let mine: Vec<Value> = t
            .get("/notifications/push-subscriptions", &ann)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(mine.len(), 1, "{label}: {mine:?}");
        assert_eq!(mine[0]["id"], laptop["id"]);

        // Turned off for orders on push: the next order is not pushed (a security notice is).
        let r = t
            .put(
                "/notifications/preferences",
                &ann,
                json!([{"category": "orders", "channel": "push", "enabled": false}]),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        t.confirmed("ann", "o-3").await;
        t.publish("user.password_changed", json!({"user_id": "ann", "at": 1}))
            .await;
        let security = eventually("the security notice is pushed", || async {
            let l = server.received("ann-laptop");
            (l.len() == 3).then_some(l)
        })
        .await;
        assert_eq!(security[2]["category"], "security", "{label}");
        let states = push_states(&t).await;
        assert!(
            states.iter().any(
                |d| d.1 == "dropped" && d.2.as_deref() == Some("the recipient turned this off")
            ),
            "{label}: {states:?}"
        );

        // A browser unsubscribes.
        let path = format!(
            "/notifications/push-subscriptions/{}",
            laptop["id"].as_str().unwrap()
        );
        assert_eq!(t.delete(&path, &bob).await.status(), StatusCode::NOT_FOUND);
        assert_eq!(t.delete(&path, &ann).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(t.delete(&path, &ann).await.status(), StatusCode::NOT_FOUND);
    }
}

/// The embedded bus, but the first ack of every event is lost, as when a process dies
/// between committing what an event did and acking it: the bus hands the event out again
/// after its ack wait, to the same durable consumer.
struct LosesFirstAcks {
    inner: Arc<dyn EventBus>,
    handed_out: Arc<Mutex<HashMap<String, u64>>>,
}

#[async_trait::async_trait]
impl EventBus for LosesFirstAcks {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        self.inner.publish(event).await
    }
    async fn subscribe(&self, consumer: &str, pattern: &str) -> Result<Subscription, BusError> {
        let inner = self.inner.subscribe(consumer, pattern).await?;
        Ok(Subscription::new(Box::new(Lossy {
            inner,
            handed_out: self.handed_out.clone(),
        })))
    }
    async fn backlog(&self, consumer: &str) -> Result<kit::bus::Backlog, BusError> {
        self.inner.backlog(consumer).await
    }
    async fn ready(&self) -> bool {
        self.inner.ready().await
    }
}

struct Lossy {
    inner: Subscription,
    handed_out: Arc<Mutex<HashMap<String, u64>>>,
}

#[async_trait::async_trait]
impl DeliverySource for Lossy {
    async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        let d = match self.inner.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        *self
            .handed_out
            .lock()
            .unwrap()
            .entry(d.event.id.clone())
            .or_default() += 1;
        let (event, attempt) = (d.event.clone(), d.attempt);
        Some(Ok(Delivery::new(event, attempt, Box::new(LostAck(d)))))
    }
}

struct LostAck(Delivery);

#[async_trait::async_trait]
impl Acker for LostAck {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        if self.0.attempt == 1 {
            return Ok(()); // never reaches the bus
        }
        self.0.ack().await
    }
    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.0.nack(delay).await
    }
}

/// How many pushes of `kind` the laptop received (the welcome may be pushed too: the
/// browser can subscribe before the registration event is handled).
fn pushed(server: &PushServer, kind: &str) -> usize {
    server
        .received("ann-laptop")
        .iter()
        .filter(|p| p["kind"] == kind)
        .count()
}

#[tokio::test]
async fn an_event_the_bus_delivers_twice_and_a_worker_that_dies_mid_send_still_send_once() {
    for db in kit::testing::databases().await {
        let Some(sink) = SmtpSink::start_on(free_port()) else {
            return;
        };
        let handed_out = Arc::new(Mutex::new(HashMap::new()));
        let bus = Arc::new(LosesFirstAcks {
            inner: kit::testing::bus_with(InProcessOptions {
                ack_wait: Duration::from_millis(300),
                ..InProcessOptions::default()
            })
            .await,
            handed_out: handed_out.clone(),
        });
        let url = sink.url();
        let mut t = start_on(db, bus, |s| {
            s.push.allow_http = true;
            s.retry.lease = Duration::from_secs(1);
            s.mail = notification_service::email::MailTarget::Smtp {
                url,
                credentials: None,
            };
        })
        .await;
        let server = push_server(&t).await;
        let ann = t.user("ann");
        t.registered("ann", "ann@example.com").await;
        let (status, laptop) = subscribe(&t, &ann, &server.browser("ann-laptop")).await;
        assert_eq!(status, StatusCode::CREATED);

        // The bus hands the confirmation out twice; the mail and the push go once.
        let event = t.confirmed("ann", "o-1").await;
        eventually("the bus delivered the event a second time", || async {
            (handed_out.lock().unwrap().get(&event.id) >= Some(&2)).then_some(())
        })
        .await;
        eventually("mail and push went out", || async {
            let mails = sink.messages();
            let confirmations = mails
                .iter()
                .filter(|m| m.contains("Your order is confirmed"));
            (confirmations.count() == 1 && pushed(&server, "order_confirmed") == 1).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let mails = sink.messages();
        assert_eq!(
            mails
                .iter()
                .filter(|m| m.contains("Your order is confirmed"))
                .count(),
            1,
            "one confirmation mail"
        );
        assert_eq!(pushed(&server, "order_confirmed"), 1, "one push");
        assert_eq!(
            t.inbox(&ann).await.len(),
            2,
            "welcome and confirmation, once each"
        );

        // A push claimed by a worker that died before sending: sent once, after the lease.
        t.stop().await;
        t.claimed_by_a_dead_worker(
            "event-2",
            &notification_service::catalog::Channel::PUSH,
            laptop["id"].as_str().unwrap(),
            "order_cancelled",
            json!({"order_id": "o-2", "reason": "an item ran out"}),
        )
        .await;
        t.restart().await;
        eventually("pushed after the lease", || async {
            (pushed(&server, "order_cancelled") == 1).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(pushed(&server, "order_cancelled"), 1, "once");
        let attempts: i64 =
            sqlx::query_scalar("SELECT attempts FROM deliveries WHERE event_id = 'event-2'")
                .fetch_one(t.db.db.pool())
                .await
                .unwrap();
        assert_eq!(attempts, 2, "the second attempt sent it");
    }
}
