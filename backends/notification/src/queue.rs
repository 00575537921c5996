//! The outgoing queue: one `deliveries` row per (event, channel, recipient).
//!
//! A worker [`claim`]s a due row with a conditional `UPDATE` that also sets a lease: of two
//! workers racing for one row (two replicas on one PostgreSQL database), the second one's
//! `WHERE` no longer matches, so a row is only ever sending in one place. A worker that dies
//! mid-send leaves the row `sending` with a lease in the past, which makes it due again: the
//! next attempt sends it (email carries the same `Message-ID`, so a receiver can tell).
//!
//! Retries back off exponentially with "equal jitter": the wait before attempt n+1 is
//! between half and all of `base · 2^(n-1)` (capped), so waits grow from one attempt to the
//! next while replicas that failed together spread out.

use std::time::Duration;

use kit::db::DbKind;
use kit::db::{new_id, now_ms};
use kit::{Db, DbError};
use rand::Rng;
use serde_json::Value;
use sqlx::{Any, Row, Transaction};

use crate::catalog::{Category, Channel, Kind};

/// How deliveries are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts before a delivery is dead-lettered.
    pub max_attempts: i64,
    /// The wait after the first failure (before jitter).
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
    /// How long a claimed delivery is held before another worker may take it.
    pub lease: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_secs(2),
            max: Duration::from_secs(15 * 60),
            lease: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `attempts`-th failed attempt: in `[d/2, d]` for
    /// `d = min(base · 2^(attempts-1), max)`.
    pub fn backoff(&self, attempts: i64) -> Duration {
        let doubling = attempts.clamp(1, 32) as u32 - 1;
        let full = self
            .base
            .saturating_mul(1 << doubling.min(30))
            .min(self.max);
        let half = full / 2;
        half + rand::rng().random_range(Duration::ZERO..=full - half)
    }
}

/// A delivery to make.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its id (the email's `Message-ID` is made from it).
    pub id: String,
    /// The event it tells of.
    pub event_id: String,
    /// How it goes out.
    pub channel: Channel,
    /// The address: an email address for [`Channel::EMAIL`], a subscription id for
    /// [`Channel::PUSH`], what its sender's `recipients` gave for another channel.
    pub recipient: String,
    /// The user it is for, if any (for their preferences and unsubscribe link).
    pub user_id: Option<String>,
    /// Its category.
    pub category: Category,
    /// Its kind's name.
    pub kind: String,
    /// The template context.
    pub data: Value,
    /// This attempt's number, from 1.
    pub attempt: i64,
}

/// Enqueues `kind` to `recipient` on `channel` for the event `event_id`, inside the
/// consumer's transaction; a second enqueue of the same (event, channel, recipient) is a
/// no-op.
pub async fn enqueue(
    tx: &mut Transaction<'static, Any>,
    event_id: &str,
    channel: &Channel,
    recipient: &str,
    user_id: Option<&str>,
    kind: &Kind,
    data: &Value,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO deliveries (id, event_id, channel, recipient, user_id, category, kind, data, \
         state, attempts, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', 0, $9, $9, $9) \
         ON CONFLICT (event_id, channel, recipient) DO NOTHING",
    )
    .bind(new_id())
    .bind(event_id)
    .bind(channel.as_str())
    .bind(recipient)
    .bind(user_id)
    .bind(kind.category.as_str())
    .bind(kind.name)
    .bind(data.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const DUE: &str = "((state IN ('queued', 'failed') AND next_attempt_at <= $2) \
                   OR (state = 'sending' AND lease_until <= $2))";

/// Takes the most overdue delivery, leasing it for `lease`; `None` when nothing is due.
/// On PostgreSQL the pick skips rows another worker is claiming (`SKIP LOCKED`), so
/// replicas take different rows instead of queueing on one; SQLite has one writer anyway.
pub async fn claim(db: &Db, lease: Duration) -> Result<Option<Delivery>, DbError> {
    let now = now_ms();
    let skip = match db.kind() {
        DbKind::Postgres => "FOR UPDATE SKIP LOCKED",
        DbKind::Sqlite => "",
    };
    let sql = format!(
        "UPDATE deliveries SET state = 'sending', lease_until = $1, attempts = attempts + 1, \
         updated_at = $2 \
         WHERE id = (SELECT id FROM deliveries WHERE {DUE} ORDER BY next_attempt_at, id \
         LIMIT 1 {skip}) \
         AND {DUE} \
         RETURNING id, event_id, channel, recipient, user_id, category, kind, data, attempts"
    );
    let Some(row) = sqlx::query(&sql)
        .bind(now + lease.as_millis() as i64)
        .bind(now)
        .fetch_optional(db.pool())
        .await?
    else {
        return Ok(None);
    };
    let channel: String = row.try_get("channel")?;
    let category: String = row.try_get("category")?;
    let data: String = row.try_get("data")?;
    let broken = |what: &str| DbError::Other(sqlx::Error::Protocol(format!("delivery {what}")));
    Ok(Some(Delivery {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        channel: Channel::named(&channel),
        recipient: row.try_get("recipient")?,
        user_id: row.try_get("user_id")?,
        category: Category::parse(&category).ok_or_else(|| broken("category"))?,
        kind: row.try_get("kind")?,
        data: serde_json::from_str(&data).map_err(|_| broken("data"))?,
        attempt: row.try_get("attempts")?,
    }))
}

/// What became of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handed over (the SMTP server accepted it).
    Sent,
    /// Failed; worth another attempt.
    Retry(String),
    /// Failed for good (a recipient the server refuses): dead at once.
    Permanent(String),
    /// Not sent on purpose (the recipient opted out, no template…).
    Dropped(String),
}

/// Records `outcome` of the attempt on `d`, if this worker still holds it. Returns the
/// state the row is in now.
pub async fn settle(
    db: &Db,
    d: &Delivery,
    outcome: &Outcome,
    policy: &RetryPolicy,
) -> Result<&'static str, DbError> {
    let now = now_ms();
    let (state, next, error) = match outcome {
        Outcome::Sent => ("sent", now, None),
        Outcome::Dropped(why) => ("dropped", now, Some(why.as_str())),
        Outcome::Permanent(why) => ("dead", now, Some(why.as_str())),
        Outcome::Retry(why) if d.attempt >= policy.max_attempts => {
            ("dead", now, Some(why.as_str()))
        }
        Outcome::Retry(why) => (
            "failed",
            now + policy.backoff(d.attempt).as_millis() as i64,
            Some(why.as_str()),
        ),
    };
    sqlx::query(
        "UPDATE deliveries SET state = $1, next_attempt_at = $2, last_error = $3, \
         lease_until = NULL, updated_at = $4, \
         sent_at = CASE WHEN $1 = 'sent' THEN $4 ELSE sent_at END \
         WHERE id = $5 AND state = 'sending' AND attempts = $6",
    )
    .bind(state)
    .bind(next)
    .bind(error)
    .bind(now)
    .bind(&d.id)
    .bind(d.attempt)
    .execute(db.pool())
    .await?;
    Ok(state)
}

/// When the next delivery falls due (Unix ms), if any is waiting.
pub async fn next_due(db: &Db) -> Result<Option<i64>, DbError> {
    let due: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(CASE WHEN state = 'sending' THEN lease_until ELSE next_attempt_at END) \
         FROM deliveries WHERE state IN ('queued', 'failed', 'sending')",
    )
    .fetch_one(db.pool())
    .await?;
    Ok(due)
}

/// A delivery as the admin endpoints show it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "01a246f2-56e8-723b-acc4-a093d87e711f", "event_id": "01a246f2-5000-7000-8000-000000000001",
    "channel": "email", "recipient": "ann@example.com", "kind": "order_confirmed",
    "state": "dead", "attempts": 8, "last_error": "connection refused",
    "created_at": 1796486616808_i64, "updated_at": 1796486916808_i64
}))]
pub struct DeliveryView {
    /// Its id.
    pub id: String,
    /// The event that caused it.
    pub event_id: String,
    /// `email`, `push` or an embedder's channel.
    pub channel: String,
    /// The address (a subscription id for push).
    pub recipient: String,
    /// The notification kind.
    pub kind: String,
    /// `queued`, `sending`, `sent`, `failed`, `dead` or `dropped`.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// Why the last attempt failed, or why it was dropped.
    pub last_error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

/// Dead deliveries, oldest first, after the position `after` (`updated_at:id`).
pub async fn dead(
    db: &Db,
    after: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<DeliveryView>, DbError> {
    let (at, id) = after.unwrap_or((-1, String::new()));
    let rows = sqlx::query(
        "SELECT id, event_id, channel, recipient, kind, state, attempts, last_error, \
         created_at, updated_at FROM deliveries WHERE state = 'dead' \
         AND (updated_at > $1 OR (updated_at = $1 AND id > $2)) \
         ORDER BY updated_at, id LIMIT $3",
    )
    .bind(at)
    .bind(id)
    .bind(limit + 1)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeliveryView {
                id: r.try_get("id")?,
                event_id: r.try_get("event_id")?,
                channel: r.try_get("channel")?,
                recipient: r.try_get("recipient")?,
                kind: r.try_get("kind")?,
                state: r.try_get("state")?,
                attempts: r.try_get("attempts")?,
                last_error: r.try_get("last_error")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(DbError::from)
}

/// Puts a dead delivery back in the queue with its attempts reset; `false` when `id` is not
/// a dead delivery.
pub async fn requeue(db: &Db, id: &str) -> Result<bool, DbError> {
    let now = now_ms();
    let done = sqlx::query(
        "UPDATE deliveries SET state = 'queued', attempts = 0, next_attempt_at = $1, \
         updated_at = $1 WHERE id = $2 AND state = 'dead'",
    )
    .bind(now)
    .bind(id)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deliveries per state, for metrics.
pub async fn depth(db: &Db) -> Result<Vec<(String, i64)>, DbError> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state")
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(DbError::from)
}

/// When the oldest delivery that is due now (queued, or failed and past its backoff) was
/// due (Unix ms), if one is.
pub async fn oldest_due(db: &Db, now_ms: i64) -> Result<Option<i64>, DbError> {
    let (oldest,): (Option<i64>,) = sqlx::query_as(
        "SELECT MIN(next_attempt_at) FROM deliveries \
         WHERE state IN ('queued', 'failed') AND next_attempt_at <= $1",
    )
    .bind(now_ms)
    .fetch_one(db.pool())
    .await?;
    Ok(oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_its_jitter_and_stops_at_the_cap() {
        let p = RetryPolicy {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        for _ in 0..200 {
            let waits: Vec<Duration> = (1..=8).map(|n| p.backoff(n)).collect();
            for (n, w) in waits.iter().enumerate() {
                let full = Duration::from_secs(2 << n).min(Duration::from_secs(60));
                assert!(*w >= full / 2 && *w <= full, "attempt {}: {w:?}", n + 1);
            }
            for pair in waits.windows(2).take(4) {
                assert!(pair[1] >= pair[0], "waits grow: {waits:?}");
            }
        }
    }
}
