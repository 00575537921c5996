//! The transactional outbox: a service records the event it wants to publish in the same
//! transaction as the state change it describes, so the event exists if and only if the
//! change committed. The [`crate::relay::Relay`] publishes committed rows later.
//!
//! ```ignore
//! let mut tx = db.begin().await?;
//! sqlx::query("INSERT INTO users …").execute(&mut *tx).await?;
//! outbox::record(&mut tx, "user.registered", &UserRegistered { id, email }).await?;
//! tx.commit().await?;
//! state.outbox.wake(); // publish now instead of at the next poll
//! ```

use serde::Serialize;
use sqlx::{Any, Transaction};

use crate::db::{new_id, now_ms, Db, DbError};
use crate::event::validate_topic;

/// Writes an event for `topic` with `payload` (serialized to JSON) into the outbox inside
/// `tx`, with the current trace context ([`crate::trace::current`]), and returns its id. Nothing is published until `tx` commits and the relay runs; a
/// rolled-back transaction leaves no row and so never publishes.
///
/// Fails with [`DbError::Other`] (an encode error) when the topic is not a valid topic name
/// (see [`crate::event`]) or the payload does not serialize to JSON.
pub async fn record(
    tx: &mut Transaction<'_, Any>,
    topic: &str,
    payload: &impl Serialize,
) -> Result<String, DbError> {
    validate_topic(topic).map_err(|e| DbError::Other(sqlx::Error::Encode(Box::new(e))))?;
    let payload = serde_json::to_string(payload)
        .map_err(|e| DbError::Other(sqlx::Error::Encode(e.into())))?;
    let id = new_id();
    sqlx::query(
        "INSERT INTO kit_outbox (id, topic, payload, created_at, attempts, traceparent) \
         VALUES ($1, $2, $3, $4, 0, $5)",
    )
    .bind(&id)
    .bind(topic)
    .bind(payload)
    .bind(now_ms())
    .bind(crate::trace::current_traceparent())
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// Deletes rows that were sent before `sent_before_ms` (Unix ms) and returns how many. The
/// relay never deletes: a service calls this from a periodic task to bound the table.
pub async fn purge_sent(db: &Db, sent_before_ms: i64) -> Result<u64, DbError> {
    let done = sqlx::query("DELETE FROM kit_outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
        .bind(sent_before_ms)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

/// How many committed rows wait to be published (for metrics and tests).
pub async fn pending(db: &Db) -> Result<i64, DbError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM kit_outbox WHERE sent_at IS NULL")
        .fetch_one(db.pool())
        .await?;
    Ok(n)
}
