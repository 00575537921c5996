//! The facts this service publishes, written to the kit's outbox in the same transaction
//! as the change they describe: `user.registered`, `user.password_changed`.

use kit::db::{new_id, now_ms};
use sqlx::{Any, Transaction};

use crate::error::Error;

/// Records `topic` with `payload` in the outbox, inside `tx`.
pub async fn record(
    tx: &mut Transaction<'static, Any>,
    topic: &str,
    payload: serde_json::Value,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO kit_outbox (id, topic, payload, created_at) VALUES ($1, $2, $3, $4)")
        .bind(new_id())
        .bind(topic)
        .bind(payload.to_string())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
