//! The event store: `order_events` plus the `orders` projection, written together.
//!
//! An append names the `seq` it expects to follow (the version it decided on). Two writers
//! that decided on the same version both insert the same `(order_id, seq)`; the primary key
//! refuses the second, which reloads, re-decides on the new state and appends again
//! ([`EventStore::decide`]), so no decision is lost and none is taken on a stale state.
//!
//! The events `order.placed`, `order.confirmed`, `order.cancelled` and `order.refunded` go
//! to the outbox in the same transaction as the events that cause them.

use kit::db::now_ms;
use kit::{Db, DbError, OutboxWaker};
use serde_json::json;
use sqlx::Row;

use crate::order::{FoldError, Order, OrderEvent, Recorded};

/// Why an append or a load failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended first; reload and decide again.
    #[error("order {0}: another writer appended first")]
    Conflict(String),
    /// The stored history does not fold.
    #[error(transparent)]
    Fold(#[from] FoldError),
    /// A stored payload is not an event.
    #[error("order {order_id}: event {seq} does not decode")]
    Decode {
        /// The order.
        order_id: String,
        /// The event's position.
        seq: i64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::Db(e.into())
    }
}

/// How many times [`EventStore::decide`] reloads after a conflict before giving up. Only
/// the saga runner and a customer's cancel write one order, so two rounds almost always do.
const DECIDE_ATTEMPTS: usize = 32;

/// Appends and loads order histories.
#[derive(Clone)]
pub struct EventStore {
    db: Db,
    outbox: OutboxWaker,
}

impl EventStore {
    /// A store over `db`, waking `outbox` after commits that recorded events.
    pub fn new(db: Db, outbox: OutboxWaker) -> EventStore {
        EventStore { db, outbox }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Every event of `order_id`, in order.
    pub async fn events(&self, order_id: &str) -> Result<Vec<Recorded>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, payload, recorded_at FROM order_events WHERE order_id = $1 ORDER BY seq",
        )
        .bind(order_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq")?;
                let payload: String = row.try_get("payload")?;
                let event =
                    serde_json::from_str(&payload).map_err(|source| StoreError::Decode {
                        order_id: order_id.to_owned(),
                        seq,
                        source,
                    })?;
                Ok(Recorded {
                    seq,
                    recorded_at: row.try_get("recorded_at")?,
                    event,
                })
            })
            .collect()
    }

    /// The order as the fold of its events; `None` when it has none.
    pub async fn load(&self, order_id: &str) -> Result<Option<Order>, StoreError> {
        let events = self.events(order_id).await?;
        Ok(Order::replay(order_id, &events)?)
    }

    /// Starts a new order's history with `placed` (an `OrderPlaced`).
    pub async fn create(&self, order_id: &str, placed: OrderEvent) -> Result<Order, StoreError> {
        self.append(order_id, None, vec![placed]).await
    }

    /// Appends `events` after `current` (the state they were decided on; `None` for a new
    /// order) and returns the new state. [`StoreError::Conflict`] when another writer
    /// appended since.
    pub async fn append(
        &self,
        order_id: &str,
        current: Option<&Order>,
        events: Vec<OrderEvent>,
    ) -> Result<Order, StoreError> {
        let expected = current.map_or(0, |o| o.version);
        let now = now_ms();
        let mut order = current.cloned();
        let mut appended = Vec::with_capacity(events.len());
        let mut tx = self.db.begin().await?;
        for (i, event) in events.into_iter().enumerate() {
            let seq = expected + 1 + i as i64;
            let payload = serde_json::to_string(&event)
                .map_err(|e| StoreError::Db(DbError::Other(sqlx::Error::Encode(Box::new(e)))))?;
            let inserted = sqlx::query(
                "INSERT INTO order_events (order_id, seq, type, payload, recorded_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(order_id)
            .bind(seq)
            .bind(event.name())
            .bind(payload)
            .bind(now)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(e) if kit::db::is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(order_id.to_owned()))
                }
                Err(e) => return Err(e.into()),
            }
            let r = Recorded {
                seq,
                recorded_at: now,
                event,
            };
            order = Some(Order::step(order_id, order, &r)?);
            appended.push(r);
        }
        let Some(order) = order else {
            return Err(StoreError::Conflict(order_id.to_owned()));
        };
        project(&mut tx, &order, expected).await?;
        let published = publish(&mut tx, &order, &appended).await?;
        tx.commit().await?;
        if published {
            self.outbox.wake();
        }
        Ok(order)
    }

    /// Loads the order, asks `decide` what to append, and appends it; on a conflict it
    /// reloads and asks again. Returns the state after, and `decide`'s error as is.
    /// An order that does not exist is `Ok(None)`.
    pub async fn decide<E>(
        &self,
        order_id: &str,
        mut decide: impl FnMut(&Order) -> Result<Vec<OrderEvent>, E>,
    ) -> Result<Option<Order>, E>
    where
        E: From<StoreError>,
    {
        for attempt in 0..DECIDE_ATTEMPTS {
            let Some(order) = self.load(order_id).await? else {
                return Ok(None);
            };
            let events = decide(&order)?;
            if events.is_empty() {
                return Ok(Some(order));
            }
            match self.append(order_id, Some(&order), events).await {
                Ok(order) => return Ok(Some(order)),
                Err(StoreError::Conflict(_)) => {
                    tracing::debug!(order_id, attempt, "append conflict; deciding again");
                    // A short, growing pause lets the other writer finish its round.
                    tokio::time::sleep(std::time::Duration::from_millis(2 << attempt.min(6))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(order_id.to_owned()).into())
    }
}

/// Writes the `orders` row for `order` (inserting it on the first append), guarded by the
/// version it replaces.
async fn project(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    order: &Order,
    expected: i64,
) -> Result<(), StoreError> {
    let done = if expected == 0 {
        sqlx::query(
            "INSERT INTO orders (id, customer_id, status, seq, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(&order.id)
        .bind(&order.customer_id)
        .bind(order.status.as_str())
        .bind(order.version)
        .bind(order.updated_at)
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            if kit::db::is_unique_violation(&e) {
                StoreError::Conflict(order.id.clone())
            } else {
                e.into()
            }
        })?
    } else {
        sqlx::query(
            "UPDATE orders SET status = $2, seq = $3, updated_at = $4 WHERE id = $1 AND seq = $5",
        )
        .bind(&order.id)
        .bind(order.status.as_str())
        .bind(order.version)
        .bind(order.updated_at)
        .bind(expected)
        .execute(&mut **tx)
        .await?
    };
    if done.rows_affected() != 1 {
        return Err(StoreError::Conflict(order.id.clone()));
    }
    Ok(())
}

/// Records the public events the new `events` amount to; whether any was recorded.
async fn publish(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    order: &Order,
    events: &[Recorded],
) -> Result<bool, StoreError> {
    let mut any = false;
    for r in events {
        if let OrderEvent::RefundCompleted { refund_id } = &r.event {
            for (topic, payload) in refunded(order, refund_id) {
                kit::outbox::record(tx, topic, &payload).await?;
                any = true;
            }
            continue;
        }
        let (topic, payload) = match &r.event {
            OrderEvent::OrderPlaced { .. } => (
                "order.placed",
                json!({
                    "order_id": order.id,
                    "customer_id": order.customer_id,
                    "items": order.items,
                    "total": order.total,
                    "currency": order.currency,
                }),
            ),
            OrderEvent::OrderConfirmed => (
                "order.confirmed",
                json!({
                    "order_id": order.id,
                    "customer_id": order.customer_id,
                    "items": order.items,
                    "total": order.total,
                    "currency": order.currency,
                    "payment_intent_id": order.payment_intent_id,
                }),
            ),
            OrderEvent::OrderCancelled { reason } => (
                "order.cancelled",
                json!({
                    "order_id": order.id,
                    "customer_id": order.customer_id,
                    "reason": reason,
                }),
            ),
            _ => continue,
        };
        kit::outbox::record(tx, topic, &payload).await?;
        any = true;
    }
    Ok(any)
}

/// The public events of a completed refund: `order.refunded` with its lines and amounts,
/// and `order.cancelled` as well when it cancelled a confirmed order.
fn refunded(order: &Order, refund_id: &str) -> Vec<(&'static str, serde_json::Value)> {
    let Some(refund) = order.refund(refund_id) else {
        return Vec::new();
    };
    let items: Vec<_> = refund
        .items
        .iter()
        .map(|i| {
            let unit_price = order
                .items
                .iter()
                .find(|l| l.sku == i.sku)
                .map_or(0, |l| l.unit_price);
            json!({"sku": i.sku, "qty": i.qty, "unit_price": unit_price})
        })
        .collect();
    let mut out = vec![(
        "order.refunded",
        json!({
            "order_id": order.id,
            "customer_id": order.customer_id,
            "refund_id": refund.id,
            "items": items,
            "amount": refund.amount,
            "currency": order.currency,
            "reason": refund.reason,
            "cancel": refund.cancel,
            "amount_refunded": order.amount_refunded,
            "total": order.total,
            "status": order.status.as_str(),
        }),
    )];
    if refund.cancel {
        out.push((
            "order.cancelled",
            json!({
                "order_id": order.id,
                "customer_id": order.customer_id,
                "reason": refund.reason,
                "after_confirmation": true,
                "amount_refunded": refund.amount,
                "currency": order.currency,
            }),
        ));
    }
    out
}
