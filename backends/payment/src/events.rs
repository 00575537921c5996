//! The facts this service publishes, written to the kit's outbox in the same transaction
//! as the change they describe: `payment.authorized`, `payment.captured`, `payment.voided`,
//! `payment.refunded`, `payment.failed`. The relay started by [`crate::Service`] publishes
//! them to the event bus after commit.

use serde::Serialize;
use sqlx::{Any, Transaction};

use crate::error::Error;
use crate::intents::Intent;

/// The payload of every `payment.*` event: the intent as it is after the change, plus what
/// the change was about.
#[derive(Debug, Serialize)]
pub struct PaymentEvent<'a> {
    /// The intent after the change.
    pub payment_intent_id: &'a str,
    /// Whose payment.
    pub customer_id: &'a str,
    /// The order it pays for, if any.
    pub order_id: Option<&'a str>,
    /// The status after the change.
    pub status: &'a str,
    /// The amount this event is about (authorized, captured, released or refunded).
    pub amount: i64,
    /// ISO 4217.
    pub currency: &'a str,
    /// Why it failed (`payment.failed`) or was canceled.
    pub reason: Option<&'a str>,
    /// The refund (`payment.refunded`).
    pub refund_id: Option<&'a str>,
    /// Unix ms.
    pub at: i64,
}

/// Records `payment.{kind}` about `intent` inside `tx`.
pub async fn record(
    tx: &mut Transaction<'static, Any>,
    kind: &str,
    intent: &Intent,
    amount: i64,
    refund_id: Option<&str>,
) -> Result<(), Error> {
    let event = PaymentEvent {
        payment_intent_id: &intent.id,
        customer_id: &intent.customer_id,
        order_id: intent.order_id.as_deref(),
        status: &intent.status,
        amount,
        currency: &intent.currency,
        reason: intent.failure_reason.as_deref(),
        refund_id,
        at: kit::db::now_ms(),
    };
    kit::outbox::record(tx, &format!("payment.{kind}"), &event).await?;
    Ok(())
}
