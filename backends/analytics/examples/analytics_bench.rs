//! Measures the analytics service (run by `benches/analytics.sh`; release builds).
//!
//! - **ingest**: `--clients` concurrent senders post batches of `--batch` track events
//!   (about 250 bytes each, 20 names, fresh message ids) over HTTP to the service for
//!   `--seconds`, with rollups kept current in the same transaction. Baseline, in the same
//!   run on the same database: the same batches to a handler that only parses them and
//!   inserts the raw rows (no dedup, no watermark, no rollups, no visitor hash), so the ratio
//!   is what analytics adds to a plain write.
//! - **reports**: `--events` raw events spread over 90 days are loaded (through the same
//!   append as ingest, in large transactions), then `GET /analytics/reports` is timed over
//!   HTTP: a day of minute buckets, 90 days of day buckets, and 90 days by name.
//!
//! SQLite always; PostgreSQL too when `TEST_DATABASE_URL` is set (a fresh schema).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use analytics_service::store::{self, RawEvent};
use analytics_service::{Service, Settings};
use axum::body::Bytes;
use axum::extract::State;
use clap::Parser;
use kit::testing::{spawn_app, TestDb, TestKeys};
use kit::Service as _;
use serde_json::json;

#[derive(Parser)]
#[command(about = "Measures the analytics service: ingest throughput and report latency")]
struct Args {
    /// What to measure.
    #[arg(long, value_delimiter = ',', default_value = "ingest,reports")]
    run: Vec<String>,
    /// Seconds of ingest per database and path.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent senders.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Raw events loaded for the report timings.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Timed requests per report.
    #[arg(long, default_value_t = 100)]
    requests: usize,
}

const NAMES: [&str; 20] = [
    "Page Viewed",
    "Product Viewed",
    "Product Clicked",
    "Product Added",
    "Cart Viewed",
    "Checkout Started",
    "Checkout Step Viewed",
    "Payment Info Entered",
    "Order Completed",
    "Coupon Applied",
    "Signed Up",
    "Signed In",
    "Signed Out",
    "Search",
    "Filter Applied",
    "Wishlist Added",
    "Review Written",
    "Share Clicked",
    "Video Played",
    "Newsletter Joined",
];

fn batch(next: &AtomicU64, size: usize) -> Bytes {
    let now = jiff::Timestamp::now().to_string();
    let events: Vec<_> = (0..size)
        .map(|_| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            json!({"type": "track", "event": NAMES[(n % 20) as usize],
                   "message_id": format!("bench-{n:012}"), "timestamp": now,
                   "anonymous_id": format!("anon-{}", n % 5000),
                   "properties": {"path": "/products/mug-001", "referrer": "https://search.example/",
                                  "sku": "MUG-001", "price": 1250, "currency": "EUR"}})
        })
        .collect();
    Bytes::from(json!({ "batch": events, "sent_at": now }).to_string())
}

/// (events/s, batch p50 ms, batch p99 ms) of posting batches to `url` for `seconds`.
async fn drive(url: &str, token: &str, args: &Args) -> (f64, f64, f64) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, next, url, token) = (
            client.clone(),
            next.clone(),
            url.to_owned(),
            token.to_owned(),
        );
        let size = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sent = 0usize;
            while Instant::now() < until {
                let body = batch(&next, size);
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .header(
                        "user-agent",
                        "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
                    )
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                let _ = r.bytes().await.unwrap();
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                sent += size;
            }
            (sent, latencies)
        }));
    }
    let mut sent = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (n, l) = t.await.unwrap();
        sent += n;
        latencies.extend(l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    (
        sent as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The baseline: parse the batch, insert the raw rows, nothing else.
async fn plain_write(State(db): State<kit::Db>, body: Bytes) -> axum::http::StatusCode {
    #[derive(serde::Deserialize)]
    struct Batch {
        batch: Vec<serde_json::Value>,
    }
    let b: Batch = serde_json::from_slice(&body).unwrap();
    let mut tx = db.begin().await.unwrap();
    let sql = format!(
        "INSERT INTO bench_raw (id, message_id, name, properties) VALUES {}",
        analytics_service::rollup::placeholders(b.batch.len(), 4)
    );
    let mut q = sqlx::query(&sql);
    for e in &b.batch {
        q = q
            .bind(kit::db::new_id())
            .bind(e["message_id"].as_str().unwrap_or_default().to_owned())
            .bind(e["event"].as_str().unwrap_or_default().to_owned())
            .bind(e["properties"].to_string());
    }
    q.execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    axum::http::StatusCode::ACCEPTED
}

/// The service on `db` with its default settings, and keys for its tokens.
async fn service(db: &TestDb) -> (TestKeys, Service) {
    let keys = TestKeys::default();
    let service = Service::start(
        db.db.clone(),
        Settings::default(),
        keys.verifier.clone(),
        kit::testing::bus().await,
    )
    .await
    .unwrap();
    (keys, service)
}

async fn ingest(label: &str, db: TestDb, args: &Args) {
    let (keys, service) = service(&db).await;
    let app = spawn_app(service.router()).await;
    let token = keys.token("bench-user", &["customer"], &[]);
    let (rate, p50, p99) = drive(&app.url("/analytics/events"), &token, args).await;
    let accepted: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(db.db.pool())
        .await
        .unwrap();
    let rolled: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM rollups WHERE metric = 'events' \
         AND granularity = 'day' AND dim = ''",
    )
    .fetch_one(db.db.pool())
    .await
    .unwrap();
    assert_eq!(accepted, rolled, "the rollups are current");

    sqlx::query(
        "CREATE TABLE bench_raw (id TEXT PRIMARY KEY, message_id TEXT NOT NULL, \
         name TEXT NOT NULL, properties TEXT NOT NULL)",
    )
    .execute(db.db.pool())
    .await
    .unwrap();
    let plain = axum::Router::new()
        .route("/plain", axum::routing::post(plain_write))
        .with_state(db.db.clone());
    let plain_app = spawn_app(plain).await;
    let (base, b50, b99) = drive(&plain_app.url("/plain"), &token, args).await;
    println!(
        "ingest {label}: {rate:.0} events/s (batch p50 {p50:.1} ms, p99 {p99:.1} ms; {accepted} \
         stored, rollups current) | plain write {base:.0} events/s (p50 {b50:.1} ms, p99 \
         {b99:.1} ms) | ratio {:.2}",
        rate / base
    );
    kit::Service::shutdown(service).await;
}

async fn reports(label: &str, db: TestDb, args: &Args) {
    let (keys, service) = service(&db).await;
    let day_ms = 86_400_000i64;
    let end = jiff::Timestamp::now().as_millisecond().div_euclid(day_ms) * day_ms;
    let start = end - 90 * day_ms;
    let load = Instant::now();
    let chunk = 10_000;
    let mut done = 0;
    while done < args.events {
        let n = chunk.min(args.events - done);
        let events: Vec<RawEvent> = (done..done + n)
            .map(|i| {
                // Spread evenly over the 90 days, with a daily swing.
                let at = start + (i as i64 * 90 * day_ms) / args.events as i64;
                RawEvent {
                    id: kit::db::new_id(),
                    source: "bench".into(),
                    message_id: format!("m-{i}"),
                    name: NAMES[i % 20].into(),
                    occurred_at: at,
                    received_at: at,
                    user_id: None,
                    anonymous_id: None,
                    visitor: None,
                    properties: json!({"n": i}),
                }
            })
            .collect();
        let mut tx = db.db.begin().await.unwrap();
        store::append(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
        done += n;
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rollups")
        .fetch_one(db.db.pool())
        .await
        .unwrap();
    println!(
        "reports {label}: loaded {} raw events over 90 days in {:.0} s ({rows} rollup rows)",
        args.events,
        load.elapsed().as_secs_f64()
    );
    let app = spawn_app(service.router()).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let admin = keys.token("admin", &["admin"], &[]);
    let iso = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap().to_string();
    let day = end - 30 * day_ms;
    for (what, query) in [
        (
            "a day of minute buckets",
            format!(
                "metric=events&granularity=minute&from={}&to={}",
                iso(day),
                iso(day + day_ms)
            ),
        ),
        (
            "90 days of day buckets",
            format!(
                "metric=events&granularity=day&from={}&to={}",
                iso(start),
                iso(end)
            ),
        ),
        (
            "90 days of day buckets by name",
            format!(
                "metric=events&granularity=day&group_by=name&from={}&to={}",
                iso(start),
                iso(end)
            ),
        ),
        (
            "90 days in Europe/Paris days (from hour buckets)",
            format!(
                "metric=events&granularity=day&tz=Europe/Paris&from={}&to={}",
                iso(start),
                iso(end)
            ),
        ),
    ] {
        let url = app.url(&format!("/analytics/reports?{query}"));
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..args.requests {
            let t = Instant::now();
            let r = client.get(&url).bearer_auth(&admin).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let body: serde_json::Value = r.json().await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            rows = body["rows"].as_array().map_or(0, Vec::len);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "report {label}, {what}: p50 {:.1} ms, p95 {:.1} ms ({rows} rows, {} requests)",
            percentile(&times, 0.5),
            percentile(&times, 0.95),
            args.requests
        );
    }
    kit::Service::shutdown(service).await;
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    for (label, pg) in [("sqlite", false), ("postgres", true)] {
        for what in &args.run {
            let db = if pg {
                match kit::testing::postgres().await {
                    Some(db) => db,
                    None => {
                        println!("{what} postgres: skipped (TEST_DATABASE_URL is not set)");
                        continue;
                    }
                }
            } else {
                kit::testing::sqlite().await
            };
            match what.as_str() {
                "ingest" => ingest(label, db, &args).await,
                "reports" => reports(label, db, &args).await,
                other => panic!("unknown measurement {other:?}: ingest or reports"),
            }
        }
    }
}
