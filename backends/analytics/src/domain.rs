//! Domain facts from the bus into raw events: one durable consumer through the kit's inbox,
//! so a redelivered fact is counted once. Only the fields analytics measures are kept (an
//! order's lines and total, a payment's amount): no email, name or address from the
//! payloads.
//!
//! Facts are never dropped as late: a confirmed order is revenue however late the bus
//! brings it (after an outage, say). They land in the bucket of when they occurred.

use std::sync::Arc;

use kit::db::{new_id, now_ms};
use kit::{Event, Handler};
use serde_json::{json, Value};
use sqlx::{Any, Transaction};

use crate::measure::BUS;
use crate::metrics::Metrics;
use crate::store::{self, RawEvent};

/// The durable consumer's name.
pub const CONSUMER: &str = "analytics";

/// The consumer takes every topic (one cursor) and keeps the ones below.
pub const PATTERN: &str = ">";

/// The consumer's handler.
pub struct Facts {
    /// Counts facts and the consumer's lag.
    pub metrics: Metrics,
    /// Called after a fact is committed (the live dashboard).
    pub changed: Arc<dyn Fn() + Send + Sync>,
}

/// The part of `event` analytics keeps, and whose it is; `None` for topics it ignores.
pub fn project(event: &Event) -> Option<(Value, Option<String>)> {
    let p = &event.payload;
    let customer = p["customer_id"].as_str().map(str::to_owned);
    let lines = || {
        Value::Array(
            p["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|l| json!({"sku": l["sku"], "qty": l["qty"], "unit_price": l["unit_price"]}))
                        .collect()
                })
                .unwrap_or_default(),
        )
    };
    let kept = match event.topic.as_str() {
        "order.placed" | "order.confirmed" => (
            json!({"order_id": p["order_id"], "total": p["total"], "currency": p["currency"],
                   "items": lines()}),
            customer,
        ),
        "order.cancelled" => (json!({"order_id": p["order_id"]}), customer),
        "order.refunded" => (
            json!({"order_id": p["order_id"], "refund_id": p["refund_id"],
                   "amount": p["amount"], "currency": p["currency"], "items": lines()}),
            customer,
        ),
        "payment.captured" | "payment.refunded" => (
            json!({"payment_intent_id": p["payment_intent_id"], "order_id": p["order_id"],
                   "amount": p["amount"], "currency": p["currency"]}),
            customer,
        ),
        "user.registered" => (json!({}), p["user_id"].as_str().map(str::to_owned)),
        "product.viewed" => (json!({"product": p["product"], "views": p["views"]}), None),
        _ => return None,
    };
    Some(kept)
}

#[async_trait::async_trait]
impl Handler for Facts {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &Event,
    ) -> Result<(), kit::bus::BoxError> {
        let Some((properties, user_id)) = project(event) else {
            return Ok(());
        };
        let now = now_ms();
        let raw = RawEvent {
            id: new_id(),
            source: BUS.into(),
            message_id: event.id.clone(),
            name: event.topic.clone(),
            occurred_at: event.occurred_at.min(now),
            received_at: now,
            user_id,
            anonymous_id: None,
            visitor: None,
            properties,
        };
        store::append(tx, &[raw]).await?;
        Ok(())
    }

    async fn committed(&self, event: &Event) {
        if project(event).is_some() {
            self.metrics.facts.inc();
            self.metrics
                .rollup_lag_ms
                .set((now_ms() - event.occurred_at).max(0));
            (self.changed)();
        }
    }
}
