//! Which saga runner drives an order: a lease in the order's `orders` row, so that across
//! processes (and within one) exactly one runner issues an order's commands at a time.
//!
//! A runner claims the lease with a conditional `UPDATE` (free, expired, or its own), renews
//! it while it works, and gives it back when the order is finished. A runner that dies
//! leaves its lease to expire; the resumer then finds the order and a new runner takes over.
//! Runners on hosts whose clocks disagree by more than a lease can overlap; every command
//! they send is idempotent and every event they append is checked against the version it
//! was decided on, so an overlap costs duplicate calls, never a wrong state.

use std::time::Duration;

use kit::db::now_ms;
use kit::{Db, DbError};

use crate::order::Status;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// Takes the lease of `order_id` for `owner` when it is free or expired (or already
/// `owner`'s) and the order is unfinished; whether it did.
pub async fn claim(db: &Db, order_id: &str, owner: &str, lease: Duration) -> Result<bool, DbError> {
    let now = now_ms();
    let sql = format!(
        "UPDATE orders SET saga_owner = $2, saga_lease_until = $3 \
         WHERE id = $1 AND status NOT IN {} AND (saga_lease_until < $4 OR saga_owner = $2)",
        Status::TERMINAL_SQL
    );
    let done = sqlx::query(&sql)
        .bind(order_id)
        .bind(owner)
        .bind(now + ms(lease))
        .bind(now)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Extends `owner`'s lease; `false` when another runner holds it now.
pub async fn renew(db: &Db, order_id: &str, owner: &str, lease: Duration) -> Result<bool, DbError> {
    let done =
        sqlx::query("UPDATE orders SET saga_lease_until = $3 WHERE id = $1 AND saga_owner = $2")
            .bind(order_id)
            .bind(owner)
            .bind(now_ms() + ms(lease))
            .execute(db.pool())
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives `owner`'s lease back, so another runner may start at once.
pub async fn release(db: &Db, order_id: &str, owner: &str) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE orders SET saga_owner = NULL, saga_lease_until = 0 \
         WHERE id = $1 AND saga_owner = $2",
    )
    .bind(order_id)
    .bind(owner)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Unfinished orders nobody drives (no lease or an expired one), oldest first.
pub async fn orphans(db: &Db, limit: i64) -> Result<Vec<String>, DbError> {
    let sql = format!(
        "SELECT id FROM orders WHERE status NOT IN {} AND saga_lease_until < $1 \
         ORDER BY id LIMIT $2",
        Status::TERMINAL_SQL
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(now_ms())
        .bind(limit)
        .fetch_all(db.pool())
        .await?)
}
