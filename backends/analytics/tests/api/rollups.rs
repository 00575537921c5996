//! Incremental == recompute: a random stream of events — shuffled, duplicated, conflicting,
//! some late within the lateness and some beyond, with facts from the bus (each delivered
//! twice) among them — goes through ingest in random batches, and the rollups kept on the
//! way equal a recompute from the raw events that were accepted, on SQLite and PostgreSQL.

use analytics_service::domain::{Facts, CONSUMER};
use analytics_service::ingest::{Outcome, Sender, TrackEvent};
use analytics_service::rollup;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;
use sqlx::Row;

use crate::helpers::{start, TestAnalytics};

const T0: i64 = 1_773_100_800_000; // 2026-03-10T00:00:00Z
const MINUTE: i64 = 60_000;

/// One event as it really happened.
#[derive(Debug, Clone)]
struct Spec {
    /// Minutes after T0 (the watermark ends near 240: events before ~180 can be late).
    minute: i64,
    /// Seconds into the minute.
    second: i64,
    /// Which of four names.
    name: usize,
    /// How far off the client's clock is, in seconds.
    skew: i64,
    /// A value for facts.
    value: i64,
}

fn spec() -> impl Strategy<Value = Spec> {
    (0i64..240, 0i64..60, 0usize..4, -7200i64..7200, 1i64..10_000).prop_map(
        |(minute, second, name, skew, value)| Spec {
            minute,
            second,
            name,
            skew,
            value,
        },
    )
}

/// What to send.
#[derive(Debug, Clone)]
enum Item {
    /// The original event `i`.
    Event(usize),
    /// A retry of event `i` (same content).
    Retry(usize),
    /// Event `i`'s message id with other content.
    Conflict(usize),
    /// An order confirmed at event `i`'s time, delivered twice.
    Fact(usize),
}

#[derive(Debug, Clone)]
struct Stream {
    specs: Vec<Spec>,
    items: Vec<Item>,
    batch_sizes: Vec<usize>,
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        prop::collection::vec(spec(), 1..60),
        prop::collection::vec((0u8..3, any::<Index>()), 0..30),
        prop::collection::vec(1usize..30, 1..8),
        any::<u64>(),
    )
        .prop_map(|(specs, extras, batch_sizes, seed)| {
            let mut items: Vec<Item> = (0..specs.len()).map(Item::Event).collect();
            for (kind, at) in extras {
                let i = at.index(specs.len());
                items.push(match kind {
                    0 => Item::Retry(i),
                    1 => Item::Conflict(i),
                    _ => Item::Fact(i),
                });
            }
            items.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            Stream {
                specs,
                items,
                batch_sizes,
            }
        })
}

const NAMES: [&str; 4] = [
    "Page Viewed",
    "Product Clicked",
    "Signup Started",
    "Cart Viewed",
];

fn track(spec: &Spec, i: usize, name: &str, sent_at: i64) -> TrackEvent {
    let happened = T0 + spec.minute * MINUTE + spec.second * 1000;
    let iso = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap().to_string();
    serde_json::from_value(json!({
        "event": name,
        "message_id": format!("m-{i}"),
        "timestamp": iso(happened + spec.skew * 1000),
        "sent_at": iso(sent_at + spec.skew * 1000),
        "properties": {"n": i},
    }))
    .unwrap()
}

async fn reset(a: &TestAnalytics) {
    for sql in [
        "DELETE FROM events",
        "DELETE FROM seen",
        "DELETE FROM rollups",
        "DELETE FROM ingest_counts",
        "DELETE FROM sessions",
        "DELETE FROM kit_inbox",
        "UPDATE watermark SET at = 0",
    ] {
        sqlx::query(sql).execute(a.db.db.pool()).await.unwrap();
    }
}

/// Sends `s` and checks the rollups; panics (a proptest failure) on a mismatch.
async fn check(a: &TestAnalytics, s: Stream) {
    reset(a).await;
    let label = a.label();
    let ingest = &a.service.state.ingest;
    let sender = Sender {
        source: "src:test".into(),
        user: None,
        ip: Some("192.0.2.1".into()),
        agent: Some("Mozilla/5.0 Firefox/133.0".into()),
    };
    let facts = Facts {
        metrics: Default::default(),
        changed: std::sync::Arc::new(|| {}),
    };
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut sent_events = 0usize;
    let mut items = s.items.iter().peekable();
    let mut batch = 0i64;
    let mut sizes = s.batch_sizes.iter().cycle();
    while items.peek().is_some() {
        let now = T0 + 250 * MINUTE + batch * 5_000;
        batch += 1;
        let size = *sizes.next().unwrap();
        let mut events = Vec::new();
        for item in items.by_ref().take(size) {
            match item {
                Item::Event(i) | Item::Retry(i) => {
                    let spec = &s.specs[*i];
                    events.push(Ok(track(spec, *i, NAMES[spec.name], now)));
                }
                Item::Conflict(i) => {
                    let spec = &s.specs[*i];
                    events.push(Ok(track(spec, *i, "Conflicting", now)));
                }
                Item::Fact(i) => {
                    let spec = &s.specs[*i];
                    let currency = ["EUR", "USD"][spec.name % 2];
                    let event = kit::Event {
                        id: kit::db::new_id(),
                        topic: "order.confirmed".into(),
                        occurred_at: T0 + spec.minute * MINUTE + spec.second * 1000,
                        payload: json!({"order_id": format!("o-{i}"), "customer_id": "c",
                            "total": spec.value, "currency": currency,
                            "items": [{"sku": NAMES[spec.name], "qty": 1, "unit_price": spec.value}]}),
                        traceparent: None,
                    };
                    for _ in 0..2 {
                        kit::inbox::process(&a.db.db, CONSUMER, &facts, &event)
                            .await
                            .unwrap();
                    }
                }
            }
        }
        sent_events += events.len();
        if !events.is_empty() {
            let report = ingest.accept(&sender, None, events, now).await.unwrap();
            outcomes.extend(report.results.iter().map(|r| r.status));
        }
    }
    assert_eq!(outcomes.len(), sent_events, "{label}");

    // Incremental == recompute, and == a rebuild.
    let incremental = rollup::read_all(&a.db.db).await.unwrap();
    let mut tx = a.db.db.begin().await.unwrap();
    let recomputed = rollup::recompute(&mut tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(incremental, recomputed, "{label}: incremental != recompute");
    rollup::rebuild(&a.db.db).await.unwrap();
    assert_eq!(
        rollup::read_all(&a.db.db).await.unwrap(),
        incremental,
        "{label}: rebuild"
    );

    // Counted once: every accepted client event is one raw row with its own message id,
    // and the `events` minute rows equal a count of those rows by name and minute.
    let accepted = outcomes.iter().filter(|o| **o == Outcome::Accepted).count() as i64;
    let (rows, ids): (i64, i64) = {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, COUNT(DISTINCT message_id) AS ids FROM events \
             WHERE source <> 'bus'",
        )
        .fetch_one(a.db.db.pool())
        .await
        .unwrap();
        (r.get("n"), r.get("ids"))
    };
    assert_eq!((rows, ids), (accepted, accepted), "{label}");
    let by_sql: Vec<(String, i64, i64)> = sqlx::query(
        "SELECT name, occurred_at - occurred_at % 60000 AS minute, COUNT(*) AS n FROM events \
         WHERE source <> 'bus' GROUP BY name, occurred_at - occurred_at % 60000 \
         ORDER BY name, minute",
    )
    .fetch_all(a.db.db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("name"), r.get("minute"), r.get("n")))
    .collect();
    let by_rollup: Vec<(String, i64, i64)> = sqlx::query(
        "SELECT dim_value, bucket, count FROM rollups WHERE metric = 'events' \
         AND granularity = 'minute' AND dim = 'name' ORDER BY dim_value, bucket",
    )
    .fetch_all(a.db.db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("dim_value"), r.get("bucket"), r.get("count")))
    .collect();
    assert_eq!(by_rollup, by_sql, "{label}");
    // Facts: each confirmed order once, however often delivered.
    let orders = s
        .items
        .iter()
        .filter(|i| matches!(i, Item::Fact(_)))
        .count() as i64;
    let confirmed: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM rollups WHERE metric = 'orders.confirmed' \
         AND granularity = 'day' AND dim = ''",
    )
    .fetch_one(a.db.db.pool())
    .await
    .unwrap();
    assert_eq!(confirmed, orders, "{label}");
}

#[test]
fn incremental_rollups_equal_a_recompute_from_the_accepted_raw_events() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for db in rt.block_on(kit::testing::databases()) {
        let a = rt.block_on(start(db));
        let mut runner = TestRunner::new(Config {
            cases: 24,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&stream(), |s| {
                rt.block_on(check(&a, s));
                Ok(())
            })
            .unwrap();
    }
}
