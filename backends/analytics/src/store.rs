//! Accepted events into the database: the raw rows, their rollups and the watermark, in
//! the caller's transaction (ingest's batch, or the consumer's with its inbox record).

use kit::DbError;
use sqlx::{Any, Row, Transaction};

use crate::rollup::{self, placeholders, Rollup};

/// An accepted event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    /// UUIDv7.
    pub id: String,
    /// Who sent it: a write key's source id, `user:<id>` for a user's token, `bus` for
    /// domain facts.
    pub source: String,
    /// The sender's id of it, unique per source.
    pub message_id: String,
    /// What happened (`Product Clicked`, `order.confirmed`).
    pub name: String,
    /// When it happened, corrected for the client's clock (Unix ms).
    pub occurred_at: i64,
    /// When it arrived (Unix ms).
    pub received_at: i64,
    /// The signed-in user, if any.
    pub user_id: Option<String>,
    /// The client's own id of an anonymous visitor, if it sent one.
    pub anonymous_id: Option<String>,
    /// The salted visitor hash, if an IP or user agent was seen.
    pub visitor: Option<String>,
    /// What the client sent as `properties` (for facts, the fields analytics uses).
    pub properties: serde_json::Value,
}

const COLUMNS: usize = 10;
const ROWS_PER_STATEMENT: usize = 1_000;

/// Stores `events`, adds them to the rollups and moves the watermark.
pub async fn append(
    tx: &mut Transaction<'static, Any>,
    events: &[RawEvent],
) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO events (id, source, message_id, name, occurred_at, received_at, user_id, \
             anonymous_id, visitor, properties) VALUES {}",
            placeholders(chunk.len(), COLUMNS)
        );
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(e.id.as_str())
                .bind(e.source.as_str())
                .bind(e.message_id.as_str())
                .bind(e.name.as_str())
                .bind(e.occurred_at)
                .bind(e.received_at)
                .bind(e.user_id.as_deref())
                .bind(e.anonymous_id.as_deref())
                .bind(e.visitor.as_deref())
                .bind(e.properties.to_string());
        }
        q.execute(&mut **tx).await?;
    }
    let mut r = Rollup::default();
    for e in events {
        r.add_event(&e.source, &e.name, &e.properties, e.occurred_at);
    }
    rollup::upsert(tx, &r).await?;
    let latest = events.iter().map(|e| e.occurred_at).max().unwrap_or(0);
    advance_watermark(tx, latest).await
}

/// The watermark: the latest `occurred_at` accepted, to the second (Unix ms).
pub async fn watermark(tx: &mut Transaction<'static, Any>) -> Result<i64, DbError> {
    let row = sqlx::query("SELECT at FROM watermark WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?;
    Ok(row.try_get("at")?)
}

/// Moves the watermark up to `at` (floored to the second, so a busy second updates the row
/// once, not per batch); never down.
async fn advance_watermark(tx: &mut Transaction<'static, Any>, at: i64) -> Result<(), DbError> {
    let at = at.div_euclid(1000) * 1000;
    sqlx::query("UPDATE watermark SET at = $1 WHERE id = 1 AND at < $1")
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What ingest did with events, by outcome.
#[derive(
    Debug,
    Default,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct Counts {
    /// Stored and rolled up.
    pub accepted: i64,
    /// A message id seen before with the same content (a retry).
    pub duplicate: i64,
    /// A message id seen before with other content (the first one was kept).
    pub conflict: i64,
    /// Older than the watermark minus the allowed lateness.
    pub late: i64,
    /// From a crawler's or headless browser's user agent.
    pub bot: i64,
    /// Not a valid event (each one's reason is in the answer).
    pub invalid: i64,
}

impl Counts {
    /// (outcome, count) pairs.
    pub fn pairs(&self) -> [(&'static str, i64); 6] {
        [
            ("accepted", self.accepted),
            ("duplicate", self.duplicate),
            ("conflict", self.conflict),
            ("late", self.late),
            ("bot", self.bot),
            ("invalid", self.invalid),
        ]
    }
}

/// Adds `counts` to the minute of `received_at`.
pub async fn count(
    tx: &mut Transaction<'static, Any>,
    received_at: i64,
    counts: &Counts,
) -> Result<(), DbError> {
    let minute = rollup::Granularity::Minute.bucket(received_at);
    for (outcome, n) in counts.pairs() {
        if n == 0 {
            continue;
        }
        sqlx::query(
            "INSERT INTO ingest_counts (minute, outcome, count) VALUES ($1, $2, $3) \
             ON CONFLICT (minute, outcome) DO UPDATE SET count = ingest_counts.count + excluded.count",
        )
        .bind(minute)
        .bind(outcome)
        .bind(n)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
