//! The facts this service publishes, written to the kit's outbox in the same transaction as
//! the change they describe (the relay started by [`crate::Service`] publishes them after
//! commit):
//!
//! | topic | payload |
//! |---|---|
//! | `product.created`, `product.updated` | the product as `GET /products/{id}` shows it |
//! | `product.deleted` | `{id, sku, at}` |
//! | `inventory.reserved` | `{order_id, items, expires_at, at}` |
//! | `inventory.committed` | `{order_id, items, at}` |
//! | `inventory.released` | `{order_id, items, reason: "released"\|"expired", at}` |
//! | `inventory.adjusted` | `{sku, delta, reason, on_hand, reserved, available, at}` |
//! | `inventory.low_stock` | `{sku, available, threshold, at}`, when available drops below the product's threshold |
//!
//! Every `product.*` payload carries the product's `id`: the cache [`crate::cache::Invalidator`]
//! evicts by it.

use serde::Serialize;
use sqlx::{Any, Transaction};

use crate::error::Error;
use crate::reservations::Item;

/// `product.deleted`.
#[derive(Debug, Serialize)]
pub struct ProductDeleted<'a> {
    /// The product's id.
    pub id: &'a str,
    /// Its sku.
    pub sku: &'a str,
    /// Unix ms.
    pub at: i64,
}

/// `inventory.reserved`, `inventory.committed`, `inventory.released`.
#[derive(Debug, Serialize)]
pub struct ReservationChanged<'a> {
    /// The order the stock is for.
    pub order_id: &'a str,
    /// What was reserved.
    pub items: &'a [Item],
    /// When an unconfirmed reservation expires (on `inventory.reserved`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Why stock was released (`released` by the caller, `expired` by the sweeper).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// Unix ms.
    pub at: i64,
}

/// `inventory.adjusted`.
#[derive(Debug, Serialize)]
pub struct InventoryAdjusted<'a> {
    /// The sku.
    pub sku: &'a str,
    /// The change to on_hand.
    pub delta: i64,
    /// Why, as the admin said.
    pub reason: &'a str,
    /// Counts after the change.
    pub on_hand: i64,
    /// Counts after the change.
    pub reserved: i64,
    /// `on_hand - reserved` after the change.
    pub available: i64,
    /// Unix ms.
    pub at: i64,
}

/// `inventory.low_stock`.
#[derive(Debug, Serialize)]
pub struct LowStock<'a> {
    /// The sku.
    pub sku: &'a str,
    /// `on_hand - reserved` now.
    pub available: i64,
    /// The product's threshold it dropped below.
    pub threshold: i64,
    /// Unix ms.
    pub at: i64,
}

/// Records `topic` with `payload` in the outbox, inside `tx`.
pub async fn record(
    tx: &mut Transaction<'static, Any>,
    topic: &str,
    payload: &impl Serialize,
) -> Result<(), Error> {
    kit::outbox::record(tx, topic, payload).await?;
    Ok(())
}
