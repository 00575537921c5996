//! Refunds of captured intents, full or partial. What is refunded never exceeds what was
//! captured, even under concurrent requests: the amount is added by one conditional
//! `UPDATE … SET amount_refunded = amount_refunded + $a WHERE … amount_refunded + $a <=
//! amount_captured`, so of two refunds that together exceed the capture one updates a row
//! and the other updates none (409).
//!
//! No processor call happens inside a transaction (a slow processor would hold SQLite's
//! write lock or a PostgreSQL row lock for its whole duration, and a crash between its yes
//! and the commit would lose the record of money moved):
//!
//! 1. one transaction reserves the amount and records the refund `pending`;
//! 2. the processor is asked, with the refund's id as its idempotency reference;
//! 3. a second transaction makes it `succeeded` (ledger entries, `payment.refunded`) or, on
//!    a decline, `failed` with the amount released. When the processor does not answer the
//!    refund stays `pending` (202) and [`settle_pending`] settles it later by asking the
//!    processor what it did (or repeating the idempotent call).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kit::db::{new_id, now_ms};
use kit::openapi::ProblemBody;
use kit::{Identity, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use sqlx::Row;

use crate::error::Error;
use crate::intents::{self, optional_body, Intent, SUCCEEDED};
use crate::processor::ProcessorError;
use crate::{doc, events, ledger, metrics, AppState};

/// `POST /payment-intents/{id}/refunds` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"amount": 500, "reason": "one mug arrived broken"}))]
pub struct NewRefund {
    /// Minor units, at least 1 and at most what is still refundable (captured − refunded);
    /// defaults to everything still refundable.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub amount: Option<i64>,
    /// Free text for the record (at most 500 characters).
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// A refund.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5f3-1b2c-7d3e-8f40-516273849506",
    "payment_intent_id": "0193a5f2-9e10-7c5d-b2c3-d4e5f6071829",
    "amount": 500, "currency": "EUR", "status": "succeeded",
    "reason": "one mug arrived broken", "amount_refunded": 500,
    "created_at": 1733403600000_i64
}))]
pub struct Refund {
    /// Its id.
    pub id: String,
    /// The intent refunded.
    pub payment_intent_id: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// `succeeded`; `pending` while the processor's answer is awaited (it is settled in the
    /// background); `failed` when the processor refused it (the amount is refundable again).
    pub status: &'static str,
    /// Why, as given.
    pub reason: Option<String>,
    /// The intent's total refunded after this one.
    pub amount_refunded: i64,
    /// Unix ms.
    pub created_at: i64,
}

/// `POST /payment-intents/{id}/refunds` (`payments:refund`).
///
/// Refunds all or part of a captured intent; what is refunded never exceeds what was
/// captured. The body is optional (empty = everything still refundable). Needs an
/// `Idempotency-Key` header, as every POST of this service.
#[utoipa::path(post, path = "/payment-intents/{id}/refunds", operation_id = "createRefund", tag = "refunds",
    summary = "Refund a captured payment intent, fully or partly (payments:refund or admin)",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The payment intent's id"),
        kit::openapi::IdempotencyKey,
    ),
    request_body(content = Option<NewRefund>, description = "Optional; an empty body refunds everything still refundable"),
    responses(
        (status = 201, description = "Refunded (a retry with the same key gets this answer again)", body = Refund),
        (status = 202, description = "The processor has not confirmed it yet: `status` is `pending`, its amount is no longer refundable, and the service settles it with the processor in the background", body = Refund),
        (status = 400, description = doc::BAD_KEY, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The caller lacks `payments:refund`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such payment intent", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The intent is not captured; or the refund exceeds what is left to refund (`type` https://gatehouse.dev/problems/refund-exceeds-captured, with `refundable`: what is left, minor units); or a request with this `Idempotency-Key` is still being processed (`Retry-After`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = doc::TOO_LARGE, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The body is not a valid refund (not JSON, an unknown field, an `amount` below 1, a `reason` over 500 characters), or the `Idempotency-Key` was used with a different request", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "The processor refused the refund: nothing was refunded and the amount is refundable again", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = doc::KEYS_UNAVAILABLE, body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    id: Identity,
    Path(intent_id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, Error> {
    if !intents::may_refund(&id) {
        return Err(Error::Forbidden(
            "refunds require \"payments:refund\"".into(),
        ));
    }
    let body: NewRefund = optional_body(&body)?;
    if body
        .reason
        .as_deref()
        .is_some_and(|r| r.chars().count() > 500)
    {
        return Err(Error::field("reason", "is longer than 500 characters"));
    }
    let intent = intents::load(&state.db, &intent_id)
        .await?
        .ok_or(Error::NotFound("no such payment intent"))?;
    if intent.status != SUCCEEDED {
        return Err(Error::State(
            "only a captured payment intent can be refunded".into(),
        ));
    }
    let refundable = intent.amount_captured - intent.amount_refunded;
    let amount = body.amount.unwrap_or(refundable);
    if amount < 1 {
        return match body.amount {
            Some(_) => Err(Error::field("amount", "must be at least 1")),
            None => Err(Error::RefundExceeds { refundable }),
        };
    }
    let mut tx = state.db.begin().await?;
    let row = sqlx::query(
        "UPDATE payment_intents SET amount_refunded = amount_refunded + $2, updated_at = $3 \
         WHERE id = $1 AND status = 'succeeded' AND amount_refunded + $2 <= amount_captured \
         RETURNING *",
    )
    .bind(&intent_id)
    .bind(amount)
    .bind(now_ms())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        drop(tx);
        let now = intents::load(&state.db, &intent_id).await?;
        let refundable = now.map_or(0, |i| i.amount_captured - i.amount_refunded);
        return Err(Error::RefundExceeds { refundable });
    };
    let after = Intent::from_row(&row)?;
    let mut refund = Refund {
        id: new_id(),
        payment_intent_id: intent_id.clone(),
        amount,
        currency: after.currency.clone(),
        status: PENDING,
        reason: body.reason,
        amount_refunded: after.amount_refunded,
        created_at: now_ms(),
    };
    sqlx::query(
        "INSERT INTO refunds (id, payment_intent_id, amount, currency, reason, created_by, \
         created_at, status) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')",
    )
    .bind(&refund.id)
    .bind(&refund.payment_intent_id)
    .bind(refund.amount)
    .bind(&refund.currency)
    .bind(refund.reason.as_deref())
    .bind(&id.user_id)
    .bind(refund.created_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let asked = tokio::time::timeout(
        state.settings.processor_deadline,
        state.processor.refund(&intent_id, &refund.id, amount),
    )
    .await;
    match asked {
        Ok(Ok(())) => {
            finish(&state, &refund.id, Settled::Refunded).await?;
            refund.status = SUCCEEDED;
            Ok((StatusCode::CREATED, Json(refund)))
        }
        Ok(Err(ProcessorError::Declined(code))) => {
            finish(&state, &refund.id, Settled::Refused).await?;
            Err(ProcessorError::Declined(code).into())
        }
        other => {
            tracing::warn!(refund = %refund.id, outcome = ?other.map(|r| r.err()), "the processor did not confirm a refund: it stays pending and is settled later");
            Ok((StatusCode::ACCEPTED, Json(refund)))
        }
    }
}

/// A refund that is `pending` until the processor's answer is recorded.
pub const PENDING: &str = "pending";

/// How a pending refund ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// The processor refunded: ledger entries and `payment.refunded`.
    Refunded,
    /// The processor refused: the amount is released.
    Refused,
}

/// Settles the pending refund `refund_id` in one transaction; whether this call did (a
/// concurrent one may have first).
async fn finish(state: &AppState, refund_id: &str, how: Settled) -> Result<bool, Error> {
    let mut tx = state.db.begin().await?;
    let status = match how {
        Settled::Refunded => SUCCEEDED,
        Settled::Refused => "failed",
    };
    let row = sqlx::query(
        "UPDATE refunds SET status = $2 WHERE id = $1 AND status = 'pending' \
         RETURNING payment_intent_id, amount",
    )
    .bind(refund_id)
    .bind(status)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let intent_id: String = row.try_get("payment_intent_id")?;
    let amount: i64 = row.try_get("amount")?;
    let mut refunded = None;
    match how {
        Settled::Refunded => {
            let intent = intents::load_tx(&mut tx, &intent_id)
                .await?
                .ok_or(Error::NotFound("no such payment intent"))?;
            let entries = [
                (ledger::MERCHANT_REVENUE, amount),
                (ledger::CUSTOMER_RECEIVABLE, -amount),
            ];
            ledger::post(&mut tx, "refund", &intent_id, &intent.currency, &entries).await?;
            events::record(&mut tx, "refunded", &intent, amount, Some(refund_id)).await?;
            refunded = Some(intent.currency);
        }
        Settled::Refused => {
            sqlx::query(
                "UPDATE payment_intents SET amount_refunded = amount_refunded - $2, \
                 updated_at = $3 WHERE id = $1",
            )
            .bind(&intent_id)
            .bind(amount)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    state.outbox.wake();
    if let Some(currency) = refunded {
        metrics::add(&metrics::REFUNDED, &currency, amount);
    }
    Ok(true)
}

/// Settles refunds left `pending` for longer than `older_than` (the processor did not
/// answer, or the service stopped between its answer and the record): asks the processor
/// what it did with each, or, when it cannot say, repeats the refund call, which its
/// idempotency reference makes safe. Returns how many it settled.
pub async fn settle_pending(
    state: &AppState,
    older_than: std::time::Duration,
) -> Result<u64, Error> {
    let cutoff = now_ms() - older_than.as_millis() as i64;
    let rows = sqlx::query(
        "SELECT id, payment_intent_id, amount FROM refunds WHERE status = 'pending' \
         AND created_at <= $1 ORDER BY created_at LIMIT 100",
    )
    .bind(cutoff)
    .fetch_all(state.db.pool())
    .await?;
    let deadline = state.settings.processor_deadline;
    let mut settled = 0;
    for r in rows {
        let (id, intent_id, amount): (String, String, i64) = (
            r.try_get("id")?,
            r.try_get("payment_intent_id")?,
            r.try_get("amount")?,
        );
        let looked = tokio::time::timeout(deadline, state.processor.refund_status(&id)).await;
        let how = match looked {
            Ok(Ok(Some(_))) => Some(Settled::Refunded),
            _ => {
                let again =
                    tokio::time::timeout(deadline, state.processor.refund(&intent_id, &id, amount))
                        .await;
                match again {
                    Ok(Ok(())) => Some(Settled::Refunded),
                    Ok(Err(ProcessorError::Declined(_))) => Some(Settled::Refused),
                    _ => None,
                }
            }
        };
        match how {
            Some(how) => {
                if finish(state, &id, how).await? {
                    settled += 1;
                    tracing::info!(refund = %id, ?how, "a pending refund was settled");
                }
            }
            None => tracing::warn!(refund = %id, "a pending refund could not be settled yet"),
        }
    }
    Ok(settled)
}
