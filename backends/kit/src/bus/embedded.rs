//! The embedded event bus: a log in a SQLite file of its own, with durable consumer cursors
//! and the deliveries not acked yet. It keeps what a JetStream stream with durable pull
//! consumers keeps, so a service behaves the same on either bus, across restarts too.
//!
//! Guarantees, **across crashes and restarts** (every publish, delivery and ack is a
//! committed SQLite transaction with `synchronous = FULL`):
//! - a publish returns once the event is on disk; publishing an event id that is already in
//!   the log is a no-op (the relay may publish a row twice after a crash), as JetStream's
//!   duplicate window does;
//! - every event is handed to every consumer whose pattern matches it and that existed (had
//!   subscribed once) before the event was deleted, in publish order;
//! - a delivery not acked within `ack_wait`, or nacked, is handed out again (ahead of new
//!   events) until it is acked; deliveries that were out when the process stopped are
//!   handed out again at once after the restart.
//!
//! An event is deleted only once every consumer the log knows has settled it (acked it, or
//! passed it because its pattern does not match) and it is older than `keep_settled`, which
//! is how long a consumer subscribing for the first time can still read history. A consumer
//! that is away, however long, keeps every event it has not settled.
//!
//! One process owns the file: it is opened in SQLite's exclusive locking mode, so a second
//! process (two platforms on one data folder) is refused instead of splitting the log.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteLockingMode, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use super::{Acker, Backlog, BusError, DeliverySource, EventBus, Subscription};
use crate::db::now_ms;
use crate::event::{matches, validate_consumer, validate_pattern, Event};
use crate::telemetry::ReadyCheck;

/// How long the embedded bus waits for an ack and keeps settled events.
#[derive(Debug, Clone)]
pub struct InProcessOptions {
    /// How long a delivery may stay unacked before it is handed out again.
    pub ack_wait: Duration,
    /// How long an event every consumer has settled is kept, for consumers that subscribe
    /// for the first time later (JetStream's `max_age` plays this part there).
    pub keep_settled: Duration,
}

impl Default for InProcessOptions {
    fn default() -> Self {
        InProcessOptions {
            ack_wait: Duration::from_secs(30),
            keep_settled: Duration::from_secs(24 * 3600),
        }
    }
}

/// The embedded event bus. Cheap to clone; clones share the log.
#[derive(Clone)]
pub struct InProcessBus {
    shared: Arc<Shared>,
}

struct Shared {
    options: InProcessOptions,
    /// One connection: every operation is a short transaction, and SQLite serializes
    /// writers anyway.
    conn: Mutex<SqliteConnection>,
    /// Per consumer subscribed in this process: its pattern and what wakes its waiting
    /// subscriptions (publish, nack, ack).
    wakers: SyncMutex<HashMap<String, (String, Arc<Notify>)>>,
    acks: AtomicU64,
}

/// Acks between two deletions of settled events.
const PRUNE_EVERY: u64 = 256;
/// Log rows read per step while a consumer's cursor passes events it does not match.
const SCAN_BATCH: i64 = 256;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bus_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    event TEXT NOT NULL,
    stored_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bus_consumers (
    name TEXT PRIMARY KEY,
    pattern TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    delivered INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bus_pending (
    consumer TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer, seq)
);
";

/// `e`, saying what a "database is locked" most likely means here.
fn locked_hint(e: sqlx::Error) -> String {
    let code = e.as_database_error().and_then(|d| d.code());
    if matches!(code.as_deref(), Some("5" | "6")) {
        format!("{e} (another process holds it: is another platform using this data folder?)")
    } else {
        e.to_string()
    }
}

fn store(op: &'static str) -> impl FnOnce(sqlx::Error) -> BusError {
    move |e| BusError::transport(op, e)
}

impl InProcessBus {
    /// Opens (creating it and its folder if needed) the bus log at `path`. Deliveries that
    /// were out when the previous process stopped are due again at once.
    pub async fn open(path: &Path, options: InProcessOptions) -> Result<InProcessBus, BusError> {
        let refused = |e: &dyn std::fmt::Display| {
            BusError::Config(format!("cannot open the bus log {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| refused(&e))?;
        }
        let conn = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .locking_mode(SqliteLockingMode::Exclusive)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| refused(&locked_hint(e)))?;
        Self::start(conn, options).await.map_err(|e| match e {
            BusError::Transport { source, .. } => refused(&source),
            e => e,
        })
    }

    /// A bus whose log lives in memory only: the same code as [`InProcessBus::open`] without
    /// the file, for tests and throwaway runs.
    pub async fn in_memory(options: InProcessOptions) -> Result<InProcessBus, BusError> {
        let conn = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(store("open"))?
            .connect()
            .await
            .map_err(store("open"))?;
        Self::start(conn, options).await
    }

    /// Boxed: sqlx's executor futures are not `Send` for every lifetime the callers'
    /// futures would otherwise have to prove (rust-lang/rust#96865).
    fn start(
        mut conn: SqliteConnection,
        options: InProcessOptions,
    ) -> BoxFuture<'static, Result<InProcessBus, BusError>> {
        Box::pin(async move {
            for statement in SCHEMA.split(';').filter(|s| !s.trim().is_empty()) {
                sqlx::query(statement)
                    .execute(&mut conn)
                    .await
                    .map_err(store("open"))?;
            }
            // Whoever held these deliveries is gone with the previous process.
            sqlx::query("UPDATE bus_pending SET due_ms = 0")
                .execute(&mut conn)
                .await
                .map_err(store("open"))?;
            let shared = Arc::new(Shared {
                options,
                conn: Mutex::new(conn),
                wakers: SyncMutex::new(HashMap::new()),
                acks: AtomicU64::new(0),
            });
            shared.prune().await?;
            Ok(InProcessBus { shared })
        })
    }
}

/// What a consumer gets next.
enum Next {
    Delivery(Event, i64, i64),
    /// Nothing now; look again at this time (Unix ms) or when woken (`None`: only then).
    Wait(Option<i64>),
}

impl Shared {
    fn wakers(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Arc<Notify>)>> {
        // Every update is one insert; a panic while held cannot leave it half-done.
        self.wakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, consumer: &str) {
        if let Some((_, notify)) = self.wakers().get(consumer) {
            notify.notify_waiters();
        }
    }

    /// The next delivery for `consumer`: a due redelivery first, then the next matching
    /// event past its cursor.
    async fn take(&self, consumer: &str) -> Result<Next, BusError> {
        let mut conn = self.conn.lock().await;
        let mut tx = conn.begin().await.map_err(store("receive"))?;
        let now = now_ms();
        let due = now.saturating_add(self.options.ack_wait.as_millis() as i64);
        let redeliver: Option<(i64, i64)> = sqlx::query_as(
            "SELECT seq, attempt FROM bus_pending WHERE consumer = ? AND due_ms <= ? \
             ORDER BY due_ms, seq LIMIT 1",
        )
        .bind(consumer)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store("receive"))?;
        if let Some((seq, attempt)) = redeliver {
            sqlx::query(
                "UPDATE bus_pending SET attempt = attempt + 1, due_ms = ? \
                 WHERE consumer = ? AND seq = ?",
            )
            .bind(due)
            .bind(consumer)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(store("receive"))?;
            sqlx::query("UPDATE bus_consumers SET delivered = delivered + 1 WHERE name = ?")
                .bind(consumer)
                .execute(&mut *tx)
                .await
                .map_err(store("receive"))?;
            let event = load(&mut tx, seq).await?;
            tx.commit().await.map_err(store("receive"))?;
            return Ok(Next::Delivery(event, seq, attempt + 1));
        }
        let Some((pattern, start)): Option<(String, i64)> =
            sqlx::query_as("SELECT pattern, cursor FROM bus_consumers WHERE name = ?")
                .bind(consumer)
                .fetch_optional(&mut *tx)
                .await
                .map_err(store("receive"))?
        else {
            return Ok(Next::Wait(None));
        };
        let mut cursor = start;
        loop {
            let rows: Vec<(i64, String)> = sqlx::query_as(
                "SELECT seq, topic FROM bus_events WHERE seq > ? ORDER BY seq LIMIT ?",
            )
            .bind(cursor)
            .bind(SCAN_BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(store("receive"))?;
            if rows.is_empty() {
                break;
            }
            for (seq, topic) in rows {
                cursor = seq;
                if !matches(&pattern, &topic) {
                    continue;
                }
                let event = load(&mut tx, seq).await;
                sqlx::query(
                    "UPDATE bus_consumers SET cursor = ?, delivered = delivered + ? WHERE name = ?",
                )
                .bind(cursor)
                .bind(i64::from(event.is_ok()))
                .bind(consumer)
                .execute(&mut *tx)
                .await
                .map_err(store("receive"))?;
                if event.is_ok() {
                    sqlx::query(
                        "INSERT INTO bus_pending (consumer, seq, attempt, due_ms) VALUES (?, ?, 1, ?)",
                    )
                    .bind(consumer)
                    .bind(seq)
                    .bind(due)
                    .execute(&mut *tx)
                    .await
                    .map_err(store("receive"))?;
                }
                // An event that no longer reads as one is passed, not handed out forever.
                tx.commit().await.map_err(store("receive"))?;
                return event.map(|e| Next::Delivery(e, seq, 1));
            }
        }
        if cursor != start {
            sqlx::query("UPDATE bus_consumers SET cursor = ? WHERE name = ?")
                .bind(cursor)
                .bind(consumer)
                .execute(&mut *tx)
                .await
                .map_err(store("receive"))?;
        }
        let next_due: Option<i64> =
            sqlx::query_scalar("SELECT MIN(due_ms) FROM bus_pending WHERE consumer = ?")
                .bind(consumer)
                .fetch_one(&mut *tx)
                .await
                .map_err(store("receive"))?;
        tx.commit().await.map_err(store("receive"))?;
        Ok(Next::Wait(next_due))
    }

    async fn settle(
        &self,
        consumer: &str,
        seq: i64,
        redeliver_in: Option<Duration>,
    ) -> Result<(), BusError> {
        {
            let mut conn = self.conn.lock().await;
            match redeliver_in {
                None => sqlx::query("DELETE FROM bus_pending WHERE consumer = ? AND seq = ?")
                    .bind(consumer)
                    .bind(seq)
                    .execute(&mut *conn)
                    .await
                    .map_err(store("ack"))?,
                Some(delay) => {
                    sqlx::query("UPDATE bus_pending SET due_ms = ? WHERE consumer = ? AND seq = ?")
                        .bind(now_ms().saturating_add(delay.as_millis() as i64))
                        .bind(consumer)
                        .bind(seq)
                        .execute(&mut *conn)
                        .await
                        .map_err(store("nack"))?
                }
            };
        }
        self.wake(consumer);
        if redeliver_in.is_none()
            && self
                .acks
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(PRUNE_EVERY)
        {
            self.prune().await?;
        }
        Ok(())
    }

    /// Deletes the events every known consumer has settled that are older than
    /// `keep_settled`; with no consumer at all, every event older than that.
    async fn prune(&self) -> Result<(), BusError> {
        let before = now_ms().saturating_sub(self.options.keep_settled.as_millis() as i64);
        let mut conn = self.conn.lock().await;
        sqlx::query(
            "DELETE FROM bus_events WHERE stored_ms <= ? \
             AND seq <= COALESCE((SELECT MIN(cursor) FROM bus_consumers), seq) \
             AND seq NOT IN (SELECT seq FROM bus_pending)",
        )
        .bind(before)
        .execute(&mut *conn)
        .await
        .map_err(store("prune"))?;
        Ok(())
    }
}

async fn load(conn: &mut SqliteConnection, seq: i64) -> Result<Event, BusError> {
    let text: String = sqlx::query_scalar("SELECT event FROM bus_events WHERE seq = ?")
        .bind(seq)
        .fetch_one(conn)
        .await
        .map_err(store("receive"))?;
    serde_json::from_str(&text).map_err(BusError::Malformed)
}

#[async_trait::async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let text = serde_json::to_string(event).map_err(BusError::Malformed)?;
        {
            let mut conn = self.shared.conn.lock().await;
            sqlx::query(
                "INSERT INTO bus_events (id, topic, event, stored_ms) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&event.id)
            .bind(&event.topic)
            .bind(&text)
            .bind(now_ms())
            .execute(&mut *conn)
            .await
            .map_err(store("publish"))?;
        }
        for (pattern, notify) in self.shared.wakers().values() {
            if matches(pattern, &event.topic) {
                notify.notify_waiters();
            }
        }
        Ok(())
    }

    async fn subscribe(&self, consumer: &str, pattern: &str) -> Result<Subscription, BusError> {
        validate_consumer(consumer)?;
        validate_pattern(pattern)?;
        {
            let mut conn = self.shared.conn.lock().await;
            // A new consumer starts at the oldest event still in the log.
            sqlx::query(
                "INSERT INTO bus_consumers (name, pattern, cursor, delivered) VALUES (?, ?, 0, 0) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(consumer)
            .bind(pattern)
            .execute(&mut *conn)
            .await
            .map_err(store("subscribe"))?;
            let existing: String =
                sqlx::query_scalar("SELECT pattern FROM bus_consumers WHERE name = ?")
                    .bind(consumer)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(store("subscribe"))?;
            if existing != pattern {
                return Err(BusError::Config(format!(
                    "consumer {consumer:?} exists with pattern {existing:?}, not {pattern:?}"
                )));
            }
        }
        let notify = self
            .shared
            .wakers()
            .entry(consumer.to_owned())
            .or_insert_with(|| (pattern.to_owned(), Arc::new(Notify::new())))
            .1
            .clone();
        Ok(Subscription::new(Box::new(EmbeddedSource {
            shared: self.shared.clone(),
            consumer: consumer.to_owned(),
            notify,
        })))
    }

    async fn backlog(&self, consumer: &str) -> Result<Backlog, BusError> {
        let mut conn = self.shared.conn.lock().await;
        let Some((pattern, cursor, delivered)): Option<(String, i64, i64)> =
            sqlx::query_as("SELECT pattern, cursor, delivered FROM bus_consumers WHERE name = ?")
                .bind(consumer)
                .fetch_optional(&mut *conn)
                .await
                .map_err(store("backlog"))?
        else {
            return Err(BusError::Config(format!("no consumer {consumer:?}")));
        };
        let topics: Vec<String> = sqlx::query_scalar("SELECT topic FROM bus_events WHERE seq > ?")
            .bind(cursor)
            .fetch_all(&mut *conn)
            .await
            .map_err(store("backlog"))?;
        let unacked: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM bus_pending WHERE consumer = ?")
                .bind(consumer)
                .fetch_one(&mut *conn)
                .await
                .map_err(store("backlog"))?;
        Ok(Backlog {
            undelivered: topics.iter().filter(|t| matches(&pattern, t)).count() as u64,
            unacked: unacked as u64,
            delivered: delivered as u64,
        })
    }

    async fn ready(&self) -> bool {
        true
    }
}

#[async_trait::async_trait]
impl ReadyCheck for InProcessBus {
    fn name(&self) -> &'static str {
        "bus"
    }
    async fn ready(&self) -> bool {
        true
    }
}

struct EmbeddedSource {
    shared: Arc<Shared>,
    consumer: String,
    notify: Arc<Notify>,
}

#[async_trait::async_trait]
impl DeliverySource for EmbeddedSource {
    async fn next(&mut self) -> Option<Result<super::Delivery, BusError>> {
        loop {
            // Register for a wake-up before looking, so a publish in between is not missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.shared.take(&self.consumer).await {
                Err(e) => return Some(Err(e)),
                Ok(Next::Delivery(event, seq, attempt)) => {
                    let acker = EmbeddedAcker {
                        shared: self.shared.clone(),
                        consumer: self.consumer.clone(),
                        seq,
                    };
                    return Some(Ok(super::Delivery::new(
                        event,
                        attempt as u64,
                        Box::new(acker),
                    )));
                }
                Ok(Next::Wait(Some(due))) => {
                    let wait = Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64);
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(Instant::now() + wait) => {}
                    }
                }
                Ok(Next::Wait(None)) => notified.await,
            }
        }
    }
}

struct EmbeddedAcker {
    shared: Arc<Shared>,
    consumer: String,
    seq: i64,
}

#[async_trait::async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.shared.settle(&self.consumer, self.seq, None).await
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.shared
            .settle(&self.consumer, self.seq, Some(delay))
            .await
    }
}
