//! Events from a committed transaction to a consumer, at least once and applied once: the
//! outbox, the relay, both buses and the inbox, on SQLite and PostgreSQL
//! (`TEST_DATABASE_URL`) and over real NATS JetStream (`TEST_NATS_URL`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kit::bus::{Backlog, BusError, EventBus, InProcessOptions, Subscription};
use kit::inbox::{self, ConsumerOptions};
use kit::relay::RelayOptions;
use kit::testing::{databases, TestNats};
use kit::{outbox, Consumer, Db, Delivery, Event, Handler, Relay};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use sqlx::{Any, Row, Transaction};

static MIGRATIONS: Migrator = sqlx::migrate!("./tests/migrations");

/// Generous: CI machines are slow, and polling returns as soon as the condition holds.
const DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Added {
    amount: i64,
}

/// A relay that notices failures and new rows quickly.
fn fast_relay() -> RelayOptions {
    RelayOptions {
        batch_size: 4,
        poll_interval: Duration::from_millis(50),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..RelayOptions::default()
    }
}

/// The buses to run a test on: in-process always, NATS JetStream when `TEST_NATS_URL` is
/// set (the guard deletes its stream).
async fn buses(ack_wait: Duration) -> Vec<(&'static str, Arc<dyn EventBus>, Option<TestNats>)> {
    let mut all: Vec<(&'static str, Arc<dyn EventBus>, Option<TestNats>)> = vec![(
        "in-process",
        kit::testing::bus_with(InProcessOptions {
            ack_wait,
            ..InProcessOptions::default()
        })
        .await,
        None,
    )];
    if let Some(nats) = kit::testing::nats_with(|o| o.ack_wait = ack_wait).await {
        all.push(("nats", Arc::new(nats.bus.clone()), Some(nats)));
    }
    all
}

async fn migrated(db: &Db) {
    db.migrate(&MIGRATIONS).await.expect("migrate");
}

/// Records each of `amounts` as an `account.added` event, one transaction each.
async fn commit_events(db: &Db, amounts: impl IntoIterator<Item = i64>) -> Vec<String> {
    let mut ids = Vec::new();
    for amount in amounts {
        let mut tx = db.begin().await.expect("begin");
        ids.push(
            outbox::record(&mut tx, "account.added", &Added { amount })
                .await
                .expect("record"),
        );
        tx.commit().await.expect("commit");
    }
    ids
}

async fn next_delivery(sub: &mut Subscription, what: &str) -> Delivery {
    match tokio::time::timeout(DEADLINE, sub.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("{what}: subscription error {e:?}"),
        Ok(None) => panic!("{what}: subscription ended"),
        Err(_) => panic!("{what}: nothing delivered within {DEADLINE:?}"),
    }
}

/// Receives and acks `n` events, returning their ids in delivery order.
async fn receive_ids(sub: &mut Subscription, n: usize, what: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let d = next_delivery(sub, what).await;
        ids.push(d.event.id.clone());
        d.ack().await.expect("ack");
    }
    ids
}

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`].
async fn eventually<T, Fut>(what: &str, check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    kit::testing::eventually(what, DEADLINE, check).await
}

async fn outbox_rows(db: &Db) -> Vec<(String, i64, Option<String>, Option<i64>)> {
    sqlx::query("SELECT id, attempts, last_error, sent_at FROM kit_outbox ORDER BY id")
        .fetch_all(db.pool())
        .await
        .expect("outbox rows")
        .iter()
        .map(|r| {
            (
                r.get("id"),
                r.get::<i64, _>("attempts"),
                r.get("last_error"),
                r.get("sent_at"),
            )
        })
        .collect()
}

#[tokio::test]
async fn committed_rows_are_published_in_commit_order_and_marked_sent() {
    for t in databases().await {
        migrated(&t.db).await;
        for (bus_name, bus, _guard) in buses(Duration::from_secs(30)).await {
            let what = format!("{} on {bus_name}", t.label());
            let mut probe = bus
                .subscribe("probe", "account.*")
                .await
                .expect("subscribe");
            let mut ids = commit_events(&t.db, 0..10).await;
            // Two events in one transaction keep their order too.
            let mut tx = t.db.begin().await.unwrap();
            for amount in [10, 11] {
                ids.push(
                    outbox::record(&mut tx, "account.added", &Added { amount })
                        .await
                        .unwrap(),
                );
            }
            tx.commit().await.unwrap();
            let relay = Relay::spawn(t.db.clone(), bus.clone(), fast_relay());
            relay.wake();
            let first = next_delivery(&mut probe, &what).await;
            assert_eq!(first.event.topic, "account.added", "{what}");
            assert_eq!(first.event.decode::<Added>().unwrap(), Added { amount: 0 });
            let mut got = vec![first.event.id.clone()];
            first.ack().await.unwrap();
            got.extend(receive_ids(&mut probe, ids.len() - 1, &what).await);
            assert_eq!(got, ids, "{what}: published in commit order");
            eventually(&what, || async {
                (outbox::pending(&t.db).await.unwrap() == 0).then_some(())
            })
            .await;
            let rows = outbox_rows(&t.db).await;
            assert!(
                rows.iter().all(|r| r.3.is_some() && r.1 == 0),
                "{what}: {rows:?}"
            );
            relay.shutdown().await;
            sqlx::query("DELETE FROM kit_outbox")
                .execute(t.db.pool())
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn a_row_recorded_in_a_rolled_back_transaction_is_never_published() {
    for t in databases().await {
        migrated(&t.db).await;
        for (bus_name, bus, _guard) in buses(Duration::from_secs(30)).await {
            let what = format!("{} on {bus_name}", t.label());
            let mut probe = bus.subscribe("probe", ">").await.unwrap();
            let mut tx = t.db.begin().await.unwrap();
            outbox::record(&mut tx, "account.added", &Added { amount: 666 })
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            let relay = Relay::spawn(t.db.clone(), bus.clone(), fast_relay());
            let kept = commit_events(&t.db, [1]).await;
            relay.wake();
            // Publication keeps id order, so the rolled-back row would have come first.
            let d = next_delivery(&mut probe, &what).await;
            assert_eq!(d.event.id, kept[0], "{what}");
            assert_eq!(d.event.decode::<Added>().unwrap().amount, 1);
            d.ack().await.unwrap();
            assert_eq!(outbox_rows(&t.db).await.len(), 1, "{what}");
            relay.shutdown().await;
            let backlog = bus.backlog("probe").await.unwrap();
            assert_eq!(backlog.undelivered, 0, "{what}: {backlog:?}");
            sqlx::query("DELETE FROM kit_outbox")
                .execute(t.db.pool())
                .await
                .unwrap();
        }
    }
}

/// A bus whose publish fails while it is down, as when NATS is unreachable.
struct FlakyBus {
    inner: Arc<dyn EventBus>,
    up: AtomicBool,
}

#[async_trait::async_trait]
impl EventBus for FlakyBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        if !self.up.load(Ordering::SeqCst) {
            return Err(BusError::Transport {
                op: "publish",
                source: "bus is down".into(),
            });
        }
        self.inner.publish(event).await
    }
    async fn subscribe(&self, consumer: &str, pattern: &str) -> Result<Subscription, BusError> {
        self.inner.subscribe(consumer, pattern).await
    }
    async fn backlog(&self, consumer: &str) -> Result<Backlog, BusError> {
        self.inner.backlog(consumer).await
    }
    async fn ready(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn rows_committed_while_the_bus_is_down_are_published_in_order_when_it_comes_back() {
    for t in databases().await {
        migrated(&t.db).await;
        for (bus_name, inner, _guard) in buses(Duration::from_secs(30)).await {
            let what = format!("{} on {bus_name}", t.label());
            let bus = Arc::new(FlakyBus {
                inner,
                up: AtomicBool::new(false),
            });
            let mut probe = bus.subscribe("probe", ">").await.unwrap();
            let relay = Relay::spawn(t.db.clone(), bus.clone(), fast_relay());
            let ids = commit_events(&t.db, [1, 2, 3]).await;
            relay.wake();
            // The relay keeps retrying the oldest row and never moves past it.
            let rows = eventually(&what, || async {
                let rows = outbox_rows(&t.db).await;
                (rows[0].1 >= 3).then_some(rows)
            })
            .await;
            assert!(
                rows[0].2.as_deref().unwrap_or("").contains("bus is down"),
                "{what}: last_error {rows:?}"
            );
            assert!(rows.iter().all(|r| r.3.is_none()), "{what}: {rows:?}");
            assert_eq!(rows[1].1, 0, "{what}: later rows wait their turn");
            assert_eq!(bus.backlog("probe").await.unwrap().undelivered, 0);

            bus.up.store(true, Ordering::SeqCst);
            let got = receive_ids(&mut probe, 3, &what).await;
            assert_eq!(got, ids, "{what}");
            eventually(&what, || async {
                (outbox::pending(&t.db).await.unwrap() == 0).then_some(())
            })
            .await;
            relay.shutdown().await;
            sqlx::query("DELETE FROM kit_outbox")
                .execute(t.db.pool())
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn two_relays_on_one_database_publish_each_row_once_and_hand_over_on_shutdown() {
    for t in databases().await {
        migrated(&t.db).await;
        let what = t.label();
        let bus: Arc<dyn EventBus> = kit::testing::bus().await;
        let mut probe = bus.subscribe("probe", ">").await.unwrap();
        let first = Relay::spawn(t.db.clone(), bus.clone(), fast_relay());
        let ids = commit_events(&t.db, [0]).await;
        first.wake();
        assert_eq!(receive_ids(&mut probe, 1, what).await, ids);
        // The first relay holds the lease now; the second must stay out of its way.
        let second = Relay::spawn(t.db.clone(), bus.clone(), fast_relay());
        let ids = commit_events(&t.db, 1..=10).await;
        first.wake();
        second.wake();
        assert_eq!(receive_ids(&mut probe, 10, what).await, ids);
        eventually(what, || async {
            (outbox::pending(&t.db).await.unwrap() == 0).then_some(())
        })
        .await;
        let backlog = bus.backlog("probe").await.unwrap();
        assert_eq!(
            (backlog.undelivered, backlog.delivered),
            (0, 11),
            "{what}: no row published twice"
        );

        first.shutdown().await;
        let ids = commit_events(&t.db, [11, 12]).await;
        second.wake();
        assert_eq!(
            receive_ids(&mut probe, 2, what).await,
            ids,
            "{what}: the second relay took over"
        );
        second.shutdown().await;
    }
}

/// Adds each event's amount to the `total` counter, and counts its calls.
struct AddToTotal {
    calls: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Handler for AddToTotal {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &Event,
    ) -> Result<(), kit::bus::BoxError> {
        let added: Added = event.decode()?;
        sqlx::query("UPDATE counters SET value = value + $1 WHERE name = 'total'")
            .bind(added.amount)
            .execute(&mut **tx)
            .await?;
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn total(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT value FROM counters WHERE name = 'total'")
        .fetch_one(db.pool())
        .await
        .expect("total")
}

async fn reset_total(db: &Db) {
    sqlx::query("DELETE FROM counters")
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO counters (name, value) VALUES ('total', 0)")
        .execute(db.pool())
        .await
        .unwrap();
}

fn event(amount: i64) -> Event {
    Event {
        id: kit::db::new_id(),
        topic: "account.added".into(),
        occurred_at: kit::db::now_ms(),
        payload: serde_json::json!({ "amount": amount }),
        traceparent: None,
    }
}

#[tokio::test]
async fn apply_once_is_true_once_per_consumer_and_event_and_only_when_committed() {
    for t in databases().await {
        migrated(&t.db).await;
        let what = t.label();
        let mut tx = t.db.begin().await.unwrap();
        assert!(
            inbox::apply_once(&mut tx, "a", "e1").await.unwrap(),
            "{what}"
        );
        tx.rollback().await.unwrap();
        let mut tx = t.db.begin().await.unwrap();
        assert!(
            inbox::apply_once(&mut tx, "a", "e1").await.unwrap(),
            "{what}: a rolled-back apply does not count"
        );
        tx.commit().await.unwrap();
        let mut tx = t.db.begin().await.unwrap();
        assert!(
            !inbox::apply_once(&mut tx, "a", "e1").await.unwrap(),
            "{what}"
        );
        assert!(
            inbox::apply_once(&mut tx, "b", "e1").await.unwrap(),
            "{what}: another consumer applies it too"
        );
        assert!(
            inbox::apply_once(&mut tx, "a", "e2").await.unwrap(),
            "{what}"
        );
        tx.commit().await.unwrap();
    }
}

/// [`AddToTotal`] that, told an event committed, reads the total from outside the
/// transaction.
struct ReadsAfterCommit {
    add: AddToTotal,
    db: Db,
    seen: Arc<std::sync::Mutex<Vec<i64>>>,
}

#[async_trait::async_trait]
impl Handler for ReadsAfterCommit {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &Event,
    ) -> Result<(), kit::bus::BoxError> {
        self.add.handle(tx, event).await
    }

    async fn committed(&self, _event: &Event) {
        let now = total(&self.db).await;
        self.seen.lock().unwrap().push(now);
    }
}

#[tokio::test]
async fn committed_is_told_after_the_commit_and_not_for_an_event_seen_before() {
    for t in databases().await {
        migrated(&t.db).await;
        reset_total(&t.db).await;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler = ReadsAfterCommit {
            add: AddToTotal {
                calls: Arc::default(),
            },
            db: t.db.clone(),
            seen: seen.clone(),
        };
        let five = event(5);
        assert!(inbox::process(&t.db, "totals", &handler, &five)
            .await
            .unwrap());
        assert!(!inbox::process(&t.db, "totals", &handler, &five)
            .await
            .unwrap());
        assert!(inbox::process(&t.db, "totals", &handler, &event(2))
            .await
            .unwrap());
        assert_eq!(*seen.lock().unwrap(), [5, 7], "{}", t.label());
    }
}

#[tokio::test]
async fn a_redelivered_event_is_applied_once_through_the_inbox() {
    for t in databases().await {
        migrated(&t.db).await;
        for (bus_name, bus, _guard) in buses(Duration::from_secs(30)).await {
            let what = format!("{} on {bus_name}", t.label());
            reset_total(&t.db).await;
            let calls = Arc::new(AtomicU64::new(0));
            let handler = AddToTotal {
                calls: calls.clone(),
            };
            // A delivery of `seen` was applied and committed, but its ack was lost.
            let seen = event(1);
            assert!(inbox::process(&t.db, "totals", &handler, &seen)
                .await
                .unwrap());
            let consumer = Consumer::spawn(
                t.db.clone(),
                bus.clone(),
                "totals",
                "account.*",
                handler,
                ConsumerOptions::default(),
            )
            .await
            .unwrap();
            bus.publish(&seen).await.unwrap();
            let fresh = event(10);
            bus.publish(&fresh).await.unwrap();
            // The in-process bus has no duplicate window: the same event twice reaches the
            // consumer, and the inbox drops it.
            if bus_name == "in-process" {
                bus.publish(&fresh).await.unwrap();
            }
            eventually(&what, || async {
                let b = bus.backlog("totals").await.unwrap();
                (b.undelivered == 0 && b.unacked == 0 && b.delivered >= 2).then_some(())
            })
            .await;
            assert_eq!(total(&t.db).await, 11, "{what}");
            assert_eq!(
                calls.load(Ordering::SeqCst),
                2,
                "{what}: one call per event"
            );
            let inbox_rows: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM kit_inbox WHERE consumer = 'totals'")
                    .fetch_one(t.db.pool())
                    .await
                    .unwrap();
            assert_eq!(inbox_rows, 2, "{what}");
            consumer.shutdown().await;
            sqlx::query("DELETE FROM kit_inbox")
                .execute(t.db.pool())
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn an_unacked_delivery_is_redelivered_and_an_acked_one_is_not() {
    let ack_wait = Duration::from_secs(1);
    for (bus_name, bus, _guard) in buses(ack_wait).await {
        let mut sub = bus.subscribe("worker", "account.*").await.unwrap();
        let e = event(5);
        bus.publish(&e).await.unwrap();
        let first = next_delivery(&mut sub, bus_name).await;
        assert_eq!((first.event.id.as_str(), first.attempt), (e.id.as_str(), 1));
        drop(first); // the consumer died before acking

        let again = next_delivery(&mut sub, bus_name).await;
        assert_eq!(
            (again.event.id.as_str(), again.attempt),
            (e.id.as_str(), 2),
            "{bus_name}"
        );
        again.nack(Duration::ZERO).await.unwrap(); // handled badly: give it back now

        let third = next_delivery(&mut sub, bus_name).await;
        assert_eq!(
            (third.event.id.as_str(), third.attempt),
            (e.id.as_str(), 3),
            "{bus_name}"
        );
        third.ack().await.unwrap();
        eventually(bus_name, || async {
            (bus.backlog("worker").await.unwrap().unacked == 0).then_some(())
        })
        .await;
        // Nothing comes back once acked, even after several ack waits.
        let quiet = tokio::time::timeout(ack_wait * 3, sub.next()).await;
        assert!(quiet.is_err(), "{bus_name}: redelivered after ack");
        assert_eq!(bus.backlog("worker").await.unwrap().delivered, 3);
    }
}

#[tokio::test]
async fn end_to_end_over_nats_record_relay_consume_ack_and_no_redelivery() {
    let ack_wait = Duration::from_secs(1);
    for t in databases().await {
        migrated(&t.db).await;
        reset_total(&t.db).await;
        let Some(nats) = kit::testing::nats_with(|o| o.ack_wait = ack_wait).await else {
            eprintln!("skipping the NATS end-to-end test: set TEST_NATS_URL");
            return;
        };
        let what = t.label();
        let bus: Arc<dyn EventBus> = Arc::new(nats.bus.clone());
        let calls = Arc::new(AtomicU64::new(0));
        let consumer = Consumer::spawn(
            t.db.clone(),
            bus.clone(),
            "totals",
            "account.>",
            AddToTotal {
                calls: calls.clone(),
            },
            ConsumerOptions::default(),
        )
        .await
        .unwrap();
        let relay = Relay::spawn(t.db.clone(), bus.clone(), fast_relay());
        let waker = relay.waker();
        let mut tx = t.db.begin().await.unwrap();
        outbox::record(&mut tx, "account.added", &Added { amount: 42 })
            .await
            .unwrap();
        tx.commit().await.unwrap();
        waker.wake();

        eventually(what, || async { (total(&t.db).await == 42).then_some(()) }).await;
        eventually(what, || async {
            let b = bus.backlog("totals").await.unwrap();
            (b.undelivered == 0 && b.unacked == 0).then_some(())
        })
        .await;
        let rows = outbox_rows(&t.db).await;
        assert!(rows[0].3.is_some(), "{what}: marked sent: {rows:?}");
        // Past several ack waits JetStream has delivered it once, and the handler ran once.
        tokio::time::sleep(ack_wait * 3).await;
        assert_eq!(bus.backlog("totals").await.unwrap().delivered, 1, "{what}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{what}");
        relay.shutdown().await;
        consumer.shutdown().await;
    }
}

#[tokio::test]
async fn an_invalid_topic_is_refused_at_record_time() {
    let t = kit::testing::sqlite().await;
    migrated(&t.db).await;
    let mut tx = t.db.begin().await.unwrap();
    for bad in ["user registered", "user.*", "", "user..x"] {
        let err = outbox::record(&mut tx, bad, &Added { amount: 1 })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("topic"), "{bad:?}: {err}");
    }
}

#[tokio::test]
async fn ready_answers_for_the_bus() {
    for (bus_name, bus, _guard) in buses(Duration::from_secs(30)).await {
        let telemetry = kit::Telemetry::new("test", vec![Arc::new(kit::bus::BusReady(bus))]);
        let app = kit::testing::spawn_app(telemetry.wrap(axum::Router::new())).await;
        let resp = app.client.get(app.url("/ready")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{bus_name}");
    }
    let down = Arc::new(FlakyBus {
        inner: kit::testing::bus().await,
        up: AtomicBool::new(false),
    });
    let telemetry = kit::Telemetry::new("test", vec![Arc::new(kit::bus::BusReady(down))]);
    let app = kit::testing::spawn_app(telemetry.wrap(axum::Router::new())).await;
    let resp = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["failed"], serde_json::json!(["bus"]));
}

#[tokio::test]
async fn an_unreachable_nats_server_is_a_connect_error() {
    let err = match kit::NatsBus::connect(kit::bus::NatsOptions::new("nats://127.0.0.1:1")).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e,
    };
    assert!(
        matches!(err, BusError::Transport { op: "connect", .. }),
        "{err:?}"
    );
}

/// A scrape of `/metrics` measures the outbox: how many events wait for the relay and how old
/// the oldest is (the relay's lag, which an alert watches); both fall to 0 once relayed.
#[tokio::test]
async fn the_outbox_backlog_and_its_age_are_on_metrics() {
    for test_db in databases().await {
        let db = &test_db.db;
        migrated(db).await;
        commit_events(db, [1, 2]).await;
        let telemetry = kit::Telemetry::for_service("ledger", db, None);
        let app = kit::testing::spawn_app(telemetry.wrap(axum::Router::new())).await;
        let scrape = || async {
            reqwest::get(app.url("/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        };
        let value = |text: &str, name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}{{")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let text = scrape().await;
        assert_eq!(value(&text, "outbox_pending"), 2.0, "{}", test_db.label());
        assert!(
            value(&text, "outbox_oldest_pending_age_seconds") > 0.0,
            "{text}"
        );

        let bus = kit::testing::bus().await;
        let relay = Relay::spawn(db.clone(), bus, fast_relay());
        eventually("the outbox relayed", || async {
            let text = scrape().await;
            (value(&text, "outbox_pending") == 0.0
                && value(&text, "outbox_oldest_pending_age_seconds") == 0.0)
                .then_some(())
        })
        .await;
        relay.shutdown().await;
    }
}

/// Each event id with the trace context it was handled in.
type Handled = Vec<(String, Option<kit::TraceContext>)>;

/// Remembers the trace context each event was handled in.
struct TraceSeen(Arc<std::sync::Mutex<Handled>>);

#[async_trait::async_trait]
impl Handler for TraceSeen {
    async fn handle(
        &self,
        _tx: &mut Transaction<'static, Any>,
        event: &Event,
    ) -> Result<(), kit::bus::BoxError> {
        let current = kit::trace::current().map(|c| c.trace);
        self.0.lock().unwrap().push((event.id.clone(), current));
        Ok(())
    }
}

/// An event recorded while a request is traced is handled in that trace, as a child of the
/// span that recorded it, over both buses; one recorded outside any trace starts its own.
#[tokio::test]
async fn an_event_recorded_in_a_trace_is_handled_in_that_trace() {
    use kit::trace::{Current, Tracer};
    for (bus_name, bus, _nats) in buses(Duration::from_secs(5)).await {
        let t = kit::testing::sqlite().await;
        migrated(&t.db).await;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let consumer = Consumer::spawn(
            t.db.clone(),
            bus.clone(),
            "traced",
            "traced.>",
            TraceSeen(seen.clone()),
            ConsumerOptions::default(),
        )
        .await
        .unwrap();
        let request = kit::TraceContext::continue_from(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let record = |topic: &'static str| {
            let db = t.db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                let id = outbox::record(&mut tx, topic, &Added { amount: 1 })
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                id
            }
        };
        let traced = Current {
            trace: request.clone(),
            tracer: Tracer::disabled(),
        }
        .scope(record("traced.inside"))
        .await;
        let untraced = record("traced.outside").await;
        let relay = Relay::spawn(t.db.clone(), bus.clone(), fast_relay());
        let handled = eventually(bus_name, || async {
            let seen = seen.lock().unwrap().clone();
            (seen.len() == 2).then_some(seen)
        })
        .await;
        let context_of = |id: &str| {
            handled
                .iter()
                .find(|(e, _)| e == id)
                .and_then(|(_, c)| c.clone())
                .unwrap_or_else(|| panic!("{bus_name}: {id} handled without a context"))
        };
        let inside = context_of(&traced);
        assert_eq!(inside.trace_id, request.trace_id, "{bus_name}");
        assert_eq!(
            inside.parent_id.as_deref(),
            Some(request.span_id.as_str()),
            "{bus_name}: a child of the span that recorded it"
        );
        assert_ne!(inside.span_id, request.span_id, "{bus_name}");
        let outside = context_of(&untraced);
        assert_ne!(outside.trace_id, request.trace_id, "{bus_name}");
        assert_eq!(outside.parent_id, None, "{bus_name}: a trace of its own");
        relay.shutdown().await;
        consumer.shutdown().await;
    }
}
