//! Refunds of captured intents, full or partial. What is refunded never exceeds what was
//! captured, even under concurrent requests: the amount is added by one conditional
//! `UPDATE … SET amount_refunded = amount_refunded + $a WHERE … amount_refunded + $a <=
//! amount_captured`, so of two refunds that together exceed the capture one updates a row
//! and the other updates none (409).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kit::db::{new_id, now_ms};
use kit::openapi::ProblemBody;
use kit::{Identity, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::intents::{self, optional_body, Intent, SUCCEEDED};
use crate::{doc, events, ledger, AppState};

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
    /// Always `succeeded` (the simulated processor refunds at once).
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
        (status = 400, description = doc::BAD_KEY, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The caller lacks `payments:refund`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such payment intent", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The intent is not captured; or the refund exceeds what is left to refund (`type` https://gatehouse.dev/problems/refund-exceeds-captured, with `refundable`: what is left, minor units); or a request with this `Idempotency-Key` is still being processed (`Retry-After`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = doc::TOO_LARGE, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The body is not a valid refund (not JSON, an unknown field, an `amount` below 1, a `reason` over 500 characters), or the `Idempotency-Key` was used with a different request", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = doc::PROCESSOR, body = ProblemBody, content_type = "application/problem+json"),
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
    let refund = Refund {
        id: new_id(),
        payment_intent_id: intent_id.clone(),
        amount,
        currency: after.currency.clone(),
        status: "succeeded",
        reason: body.reason,
        amount_refunded: after.amount_refunded,
        created_at: now_ms(),
    };
    sqlx::query(
        "INSERT INTO refunds (id, payment_intent_id, amount, currency, reason, created_by, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
    let entries = [
        (ledger::MERCHANT_REVENUE, amount),
        (ledger::CUSTOMER_RECEIVABLE, -amount),
    ];
    ledger::post(&mut tx, "refund", &intent_id, &after.currency, &entries).await?;
    events::record(&mut tx, "refunded", &after, amount, Some(&refund.id)).await?;
    let deadline = state.settings.processor_deadline;
    match tokio::time::timeout(
        deadline,
        state.processor.refund(&intent_id, &refund.id, amount),
    )
    .await
    {
        Ok(r) => r?,
        Err(_) => {
            return Err(crate::processor::ProcessorError::Unavailable(
                "no answer within the deadline".into(),
            )
            .into())
        }
    }
    tx.commit().await?;
    state.outbox.wake();
    Ok((StatusCode::CREATED, Json(refund)))
}
