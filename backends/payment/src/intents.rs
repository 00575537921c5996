//! Payment intents, with Stripe's state machine (manual capture):
//!
//! ```text
//! requires_confirmation ──confirm──▶ processing ──approved──▶ requires_capture ──capture──▶ capturing ──▶ succeeded
//!        │                               │                          │
//!        └──cancel──▶ canceled ◀──declined / blocked / timeout      └──cancel──▶ canceling ──void──▶ canceled
//! ```
//!
//! `processing`, `capturing` and `canceling` are committed before the processor is asked
//! and left by a second transaction that records its answer, so no processor call holds a
//! database transaction open. A refusal of a capture or void puts the intent back to
//! `requires_capture`; a lost answer leaves it where it is (502), a retried request resumes
//! it, and [`recover_interrupted`] settles it from the processor's own record.
//!
//! Every transition is one conditional `UPDATE … WHERE id = $1 AND status = $from RETURNING *`:
//! of concurrent requests for the same transition exactly one gets the row back, and the
//! others answer from the state it left. The ledger entries and the outbox event of a
//! transition are written in the same database transaction.
//!
//! Answers of `confirm`: 200 with the intent whatever the outcome — `requires_capture`
//! (approved, maybe with `fraud.decision` = `review`), or `canceled` with `failure_reason`
//! `card_declined` / `insufficient_funds` / … (the issuer's code), `fraud_blocked`,
//! `processor_timeout` (no answer within the deadline; a late hold is voided), or
//! `processor_error`. Confirming an intent already authorized or captured answers it as it
//! is (no second authorization); a canceled or still-processing one is 409.
//! `capture` of a captured intent and `cancel` of a canceled one answer 200 as they are;
//! `cancel` after capture is 409 (refund instead).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kit::db::{new_id, now_ms};
use kit::openapi::ProblemBody;
use kit::Query;
use kit::{Identity, Json};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use utoipa::{IntoParams, ToSchema};

use crate::error::{Error, FieldError};
use crate::fraud::{self, Decision, Facts, Outcome};
use crate::processor::{AuthorizationState, Authorize, ProcessorError, Risk};
use kit::page::Page;

use crate::{cards, doc, events, ledger, metrics, AppState};

/// Waiting for `confirm`.
pub const REQUIRES_CONFIRMATION: &str = "requires_confirmation";
/// The processor is being asked.
pub const PROCESSING: &str = "processing";
/// Authorized: a hold is on the card.
pub const REQUIRES_CAPTURE: &str = "requires_capture";
/// The processor is being asked to capture (`amount_captured` is what was asked).
pub const CAPTURING: &str = "capturing";
/// The processor is being asked to release the hold.
pub const CANCELING: &str = "canceling";
/// Captured (refunds keep it `succeeded`).
pub const SUCCEEDED: &str = "succeeded";
/// Canceled, declined, blocked or voided: see `failure_reason`.
pub const CANCELED: &str = "canceled";

/// The largest amount of one intent, minor units.
pub const MAX_AMOUNT: i64 = 100_000_000_000;

/// The fraud decision on an intent.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
#[schema(example = json!({"decision": "review", "rule": "amount_review"}))]
pub struct FraudVerdict {
    /// `allow`, `review` or `block`.
    pub decision: String,
    /// The rule that decided, `null` when none matched.
    pub rule: Option<String>,
}

/// A payment intent as answered.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5f2-9e10-7c5d-b2c3-d4e5f6071829",
    "customer_id": "0193a5f1-0a1b-7c2d-8e3f-4a5b6c7d8e9f",
    "payment_method_id": "0193a5f2-7c1e-7a4b-9c2d-3e4f5a6b7c8d",
    "order_id": "0193a5f2-8d00-7b4c-a1b2-c3d4e5f60718",
    "amount": 2500, "currency": "EUR", "capture_method": "manual",
    "status": "requires_capture", "amount_authorized": 2500, "amount_captured": 0,
    "amount_refunded": 0, "fraud": {"decision": "allow", "rule": null},
    "failure_reason": null, "created_at": 1733400000000_i64, "updated_at": 1733400001000_i64
}))]
pub struct Intent {
    /// Its id.
    pub id: String,
    /// Whose money.
    pub customer_id: String,
    /// The card.
    pub payment_method_id: String,
    /// The order it pays for.
    pub order_id: Option<String>,
    /// Minor units asked for.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// Always `manual`.
    pub capture_method: String,
    /// `requires_confirmation`, `processing` (the processor is authorizing),
    /// `requires_capture` (authorized), `capturing` / `canceling` (the processor's answer to
    /// a capture or void is awaited; a retry of the request, or the service in the
    /// background, settles it), `succeeded` (captured) or `canceled` (see
    /// `failure_reason`).
    pub status: String,
    /// The hold placed on the card (0 before authorization and after capture or void:
    /// it is what the hold was).
    pub amount_authorized: i64,
    /// What was captured.
    pub amount_captured: i64,
    /// What was refunded of it.
    pub amount_refunded: i64,
    /// The fraud decision, `null` until confirmed.
    pub fraud: Option<FraudVerdict>,
    /// Why it was canceled: `canceled`, `voided`, `fraud_blocked`, the issuer's decline
    /// code (`card_declined`, `insufficient_funds`…), `processor_error`,
    /// `processor_timeout` or `processor_interrupted`; `null` otherwise.
    pub failure_reason: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

impl Intent {
    /// From a `payment_intents` row.
    pub fn from_row(r: &AnyRow) -> Result<Intent, sqlx::Error> {
        let decision: Option<String> = r.try_get("fraud_decision")?;
        Ok(Intent {
            id: r.try_get("id")?,
            customer_id: r.try_get("customer_id")?,
            payment_method_id: r.try_get("payment_method_id")?,
            order_id: r.try_get("order_id")?,
            amount: r.try_get("amount")?,
            currency: r.try_get("currency")?,
            capture_method: r.try_get("capture_method")?,
            status: r.try_get("status")?,
            amount_authorized: r.try_get("amount_authorized")?,
            amount_captured: r.try_get("amount_captured")?,
            amount_refunded: r.try_get("amount_refunded")?,
            fraud: match decision {
                Some(decision) => Some(FraudVerdict {
                    decision,
                    rule: r.try_get("fraud_rule")?,
                }),
                None => None,
            },
            failure_reason: r.try_get("failure_reason")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

/// Whether the caller may act on anyone's intents (create, confirm, capture, void).
pub fn may_charge(id: &Identity) -> bool {
    id.has_role("admin") || id.has_permission("payments:charge")
}

/// Whether the caller may refund.
pub fn may_refund(id: &Identity) -> bool {
    id.has_role("admin") || id.has_permission("payments:refund")
}

/// Whether the caller may read anyone's intents.
pub fn may_read_all(id: &Identity) -> bool {
    may_charge(id) || may_refund(id)
}

/// Loads an intent, `None` when there is none.
pub async fn load(db: &kit::Db, intent_id: &str) -> Result<Option<Intent>, Error> {
    let row = sqlx::query("SELECT * FROM payment_intents WHERE id = $1")
        .bind(intent_id)
        .fetch_optional(db.pool())
        .await?;
    Ok(row.as_ref().map(Intent::from_row).transpose()?)
}

/// [`load`] inside `tx`.
pub async fn load_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    intent_id: &str,
) -> Result<Option<Intent>, Error> {
    let row = sqlx::query("SELECT * FROM payment_intents WHERE id = $1")
        .bind(intent_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.as_ref().map(Intent::from_row).transpose()?)
}

/// Loads an intent the caller may see: its owner's, or anyone's for staff; otherwise 404
/// (whether someone else's intent exists is not the caller's business).
async fn load_visible(state: &AppState, id: &Identity, intent_id: &str) -> Result<Intent, Error> {
    match load(&state.db, intent_id).await? {
        Some(i) if i.customer_id == id.user_id || may_read_all(id) => Ok(i),
        _ => Err(Error::NotFound("no such payment intent")),
    }
}

/// Moves `intent_id` from `from` with `set` (SQL assignments using `$3`… for `binds`);
/// `None` when it was not in `from` any more (another request won).
async fn transition(
    tx: &mut Transaction<'static, Any>,
    intent_id: &str,
    from: &str,
    set: &str,
    binds: &[Bind<'_>],
) -> Result<Option<Intent>, Error> {
    let sql = format!(
        "UPDATE payment_intents SET {set}, updated_at = $2 WHERE id = $1 AND status = '{from}' \
         RETURNING *"
    );
    let mut q = sqlx::query(&sql).bind(intent_id).bind(now_ms());
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(*s),
            Bind::OptText(s) => q.bind(*s),
            Bind::Int(n) => q.bind(*n),
        };
    }
    let row = q.fetch_optional(&mut **tx).await?;
    Ok(row.as_ref().map(Intent::from_row).transpose()?)
}

/// A value bound in [`transition`].
enum Bind<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
}

/// `POST /payment-intents`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "payment_method_id": "0193a5f2-7c1e-7a4b-9c2d-3e4f5a6b7c8d", "amount": 2500,
    "currency": "EUR", "order_id": "0193a5f2-8d00-7b4c-a1b2-c3d4e5f60718",
    "capture_method": "manual"
}))]
pub struct NewIntent {
    /// Whose money; defaults to the caller. Another customer needs `payments:charge`.
    #[serde(default)]
    customer_id: Option<String>,
    /// One of that customer's saved cards (`POST /payment-methods`).
    payment_method_id: String,
    /// Minor units, 1 to 100 000 000 000.
    #[schema(minimum = 1, maximum = 100_000_000_000_i64)]
    amount: i64,
    /// A three-letter ISO 4217 code (upper-cased).
    currency: String,
    /// The order it pays for, 1 to 255 characters.
    #[serde(default)]
    order_id: Option<String>,
    /// Only `manual` (the default): capture is a separate step.
    #[serde(default)]
    capture_method: Option<String>,
}

impl NewIntent {
    fn validate(&self) -> Result<String, Error> {
        let mut errors = Vec::new();
        let mut bad = |field, message: &str| errors.push(FieldError::new(field, message));
        if !(1..=MAX_AMOUNT).contains(&self.amount) {
            bad("amount", &format!("must be 1 to {MAX_AMOUNT} minor units"));
        }
        let currency = self.currency.trim().to_ascii_uppercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            bad("currency", "must be a three-letter ISO 4217 code");
        }
        if self
            .capture_method
            .as_deref()
            .is_some_and(|m| m != "manual")
        {
            bad("capture_method", "only \"manual\" is supported");
        }
        if self
            .order_id
            .as_deref()
            .is_some_and(|o| o.is_empty() || o.len() > 255)
        {
            bad("order_id", "must be 1 to 255 characters");
        }
        if errors.is_empty() {
            Ok(currency)
        } else {
            Err(Error::Invalid(errors))
        }
    }
}

/// `POST /payment-intents`: a new intent in `requires_confirmation`.
///
/// Customers create intents for themselves; `payments:charge` (or admin) for anyone. Needs
/// an `Idempotency-Key` header, as every POST of this service.
#[utoipa::path(post, path = "/payment-intents", operation_id = "createPaymentIntent", tag = "intents",
    summary = "Create a payment intent (requires_confirmation)",
    security(("bearer" = [])),
    params(kit::openapi::IdempotencyKey),
    request_body = NewIntent,
    responses(
        (status = 201, description = "Created (a retry with the same key gets this answer again)", body = Intent),
        (status = 400, description = doc::BAD_KEY_OR_JSON, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "`customer_id` names another customer and the caller lacks `payments:charge`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = doc::TOO_LARGE, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A field failed validation (`errors` names each; a `payment_method_id` that is not the customer's card is one), or the `Idempotency-Key` was used with a different request", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = doc::KEYS_UNAVAILABLE, body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    id: Identity,
    Json(body): Json<NewIntent>,
) -> Result<impl IntoResponse, Error> {
    let customer_id = body.customer_id.clone().unwrap_or(id.user_id.clone());
    if customer_id != id.user_id && !may_charge(&id) {
        return Err(Error::Forbidden(
            "creating payment intents for another customer requires \"payments:charge\"".into(),
        ));
    }
    let currency = body.validate()?;
    let method = cards::facts(&state.db, &body.payment_method_id)
        .await?
        .filter(|m| m.customer_id == customer_id)
        .ok_or_else(|| {
            Error::field(
                "payment_method_id",
                "is not a payment method of this customer",
            )
        })?;
    let now = now_ms();
    let intent_id = new_id();
    let row = sqlx::query(
        "INSERT INTO payment_intents (id, customer_id, payment_method_id, card_fingerprint, \
         order_id, amount, currency, capture_method, status, amount_authorized, amount_captured, \
         amount_refunded, created_by, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'manual', $8, 0, 0, 0, $9, $10, $10) RETURNING *",
    )
    .bind(&intent_id)
    .bind(&customer_id)
    .bind(&body.payment_method_id)
    .bind(&method.fingerprint)
    .bind(body.order_id.as_deref())
    .bind(body.amount)
    .bind(&currency)
    .bind(REQUIRES_CONFIRMATION)
    .bind(&id.user_id)
    .bind(now)
    .fetch_one(state.db.pool())
    .await?;
    Ok((StatusCode::CREATED, Json(Intent::from_row(&row)?)))
}

/// The answer to `confirm` for an intent that is no longer waiting for it.
fn confirmed_already(intent: Intent) -> Result<Json<Intent>, Error> {
    match intent.status.as_str() {
        REQUIRES_CAPTURE | CAPTURING | SUCCEEDED => Ok(Json(intent)),
        CANCELED | CANCELING => Err(Error::State("the payment intent is canceled".into())),
        PROCESSING => Err(Error::State(
            "the payment intent is being confirmed; read it again later".into(),
        )),
        _ => Err(Error::State(
            "the payment intent cannot be confirmed".into(),
        )),
    }
}

/// `POST /payment-intents/{id}/confirm`: fraud rules, then authorization.
///
/// Answers 200 with the intent whatever the outcome: `requires_capture` when approved
/// (`fraud.decision` may be `review`), else `canceled` with `failure_reason` (the issuer's
/// decline code, `fraud_blocked`, `processor_error` or `processor_timeout`). An intent
/// already authorized or captured is answered as it is. No body. Needs an
/// `Idempotency-Key` header, as every POST of this service.
#[utoipa::path(post, path = "/payment-intents/{id}/confirm", operation_id = "confirmPaymentIntent", tag = "intents",
    summary = "Confirm a payment intent: fraud rules, then authorization",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The payment intent's id"),
        kit::openapi::IdempotencyKey,
    ),
    responses(
        (status = 200, description = "The outcome, approved or not: read `status` and `failure_reason`", body = Intent),
        (status = 400, description = doc::BAD_KEY, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Another customer's intent, and the caller lacks `payments:charge`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such payment intent (or another customer's), or its payment method is gone", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The intent is canceled or still being confirmed, or a request with this `Idempotency-Key` is still being processed (`Retry-After`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = doc::TOO_LARGE, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The `Idempotency-Key` was used with a different request", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = doc::KEYS_UNAVAILABLE, body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn confirm(
    State(state): State<AppState>,
    id: Identity,
    Path(intent_id): Path<String>,
) -> Result<Json<Intent>, Error> {
    let intent = load_visible(&state, &id, &intent_id).await?;
    if intent.customer_id != id.user_id && !may_charge(&id) {
        return Err(Error::Forbidden(
            "confirming another customer's payment requires \"payments:charge\"".into(),
        ));
    }
    if intent.status != REQUIRES_CONFIRMATION {
        return confirmed_already(intent);
    }
    let method = cards::facts(&state.db, &intent.payment_method_id)
        .await?
        .ok_or(Error::NotFound("the payment method is gone"))?;
    let outcome = assess(&state, &intent, &method).await?;
    let decision = outcome.decision.as_str();
    let mut tx = state.db.begin().await?;
    if outcome.decision == Decision::Block {
        let set = "status = 'canceled', failure_reason = 'fraud_blocked', fraud_decision = $3, \
                   fraud_rule = $4";
        let binds = [Bind::Text(decision), Bind::OptText(outcome.rule)];
        let Some(blocked) =
            transition(&mut tx, &intent_id, REQUIRES_CONFIRMATION, set, &binds).await?
        else {
            return confirmed_already(reload(&state, &intent_id).await?);
        };
        events::record(&mut tx, "failed", &blocked, blocked.amount, None).await?;
        tx.commit().await?;
        state.outbox.wake();
        metrics::not_authorized("fraud_blocked");
        tracing::info!(payment_intent = %intent_id, rule = ?outcome.rule, "payment blocked by fraud rules");
        return Ok(Json(blocked));
    }
    let set = "status = 'processing', fraud_decision = $3, fraud_rule = $4";
    let binds = [Bind::Text(decision), Bind::OptText(outcome.rule)];
    let Some(processing) =
        transition(&mut tx, &intent_id, REQUIRES_CONFIRMATION, set, &binds).await?
    else {
        return confirmed_already(reload(&state, &intent_id).await?);
    };
    tx.commit().await?;
    let asked = tokio::time::timeout(
        state.settings.processor_deadline,
        state.processor.authorize(Authorize {
            reference: &processing.id,
            token: &method.processor_token,
            amount: processing.amount,
            currency: &processing.currency,
        }),
    )
    .await;
    let result = match asked {
        Ok(Ok(auth)) => {
            let outcome = match (outcome.decision, auth.risk) {
                (Decision::Allow, Risk::Elevated) => Outcome {
                    decision: Decision::Review,
                    rule: Some("processor_elevated_risk"),
                },
                _ => outcome,
            };
            authorized(&state, &processing, &auth.auth_code, outcome).await
        }
        Ok(Err(ProcessorError::Declined(code))) => failed(&state, &processing, &code).await,
        Ok(Err(ProcessorError::Unavailable(why))) => {
            tracing::warn!(payment_intent = %intent_id, %why, "the processor failed to authorize");
            unanswered(&state, &processing, "processor_error").await
        }
        Err(_elapsed) => {
            tracing::warn!(payment_intent = %intent_id, "the processor did not answer in time");
            unanswered(&state, &processing, "processor_timeout").await
        }
    };
    result.map(Json)
}

/// Ends an authorization without a usable answer as `canceled` with `reason`, after
/// voiding at the processor: the processor may have placed a hold that the answer lost (or
/// may place it late), and it must not stay on the card. When the void is not confirmed
/// either, the intent stays `processing` (502) and [`recover_interrupted`] settles it.
async fn unanswered(state: &AppState, intent: &Intent, reason: &str) -> Result<Intent, Error> {
    bounded(state, state.processor.void(&intent.id)).await?;
    failed(state, intent, reason).await
}

/// Settles intents left mid-call for longer than `older_than` — the process asking the
/// processor died, or its answer was lost (a live request waits at most
/// `processor_deadline`). For each it asks the processor what it did with the reference
/// and records that:
///
/// - `processing`: a hold the processor placed makes it `requires_capture`; otherwise it
///   is voided at the processor (a late hold must not stay on the card) and `canceled`
///   with `processor_interrupted`;
/// - `capturing` / `canceling`: what the processor did is recorded; when it did nothing
///   yet (or cannot say) the capture or void is asked again, which its reference makes
///   safe.
///
/// Returns how many it settled.
pub async fn recover_interrupted(state: &AppState, older_than: Duration) -> Result<u64, Error> {
    let cutoff = now_ms() - older_than.as_millis() as i64;
    let rows = sqlx::query(
        "SELECT * FROM payment_intents WHERE status IN ('processing', 'capturing', 'canceling') \
         AND updated_at < $1 ORDER BY updated_at LIMIT 100",
    )
    .bind(cutoff)
    .fetch_all(state.db.pool())
    .await?;
    let mut settled = 0;
    for row in rows {
        let intent = Intent::from_row(&row)?;
        let looked = tokio::time::timeout(
            state.settings.processor_deadline,
            state.processor.lookup(&intent.id),
        )
        .await;
        let known = match looked {
            Ok(Ok(s)) => Some(s),
            other => {
                tracing::debug!(payment_intent = %intent.id, ?other, "the processor could not say what it did");
                None
            }
        };
        let done = match intent.status.as_str() {
            PROCESSING => recover_authorization(state, &intent, known).await,
            CAPTURING => match known {
                Some(AuthorizationState::Captured { .. }) => captured(state, &intent.id).await,
                Some(AuthorizationState::Voided) => voided_from(state, &intent.id, CAPTURING).await,
                _ => settle_capture(state, &intent).await,
            },
            _ => match known {
                Some(AuthorizationState::Voided) => voided(state, &intent.id).await,
                _ => settle_void(state, &intent).await,
            },
        };
        match done {
            Ok(after) => {
                settled += 1;
                tracing::warn!(payment_intent = %intent.id, from = intent.status, to = after.status, "settled a payment intent left mid-call");
            }
            Err(Error::State(_)) => {} // someone finished it meanwhile
            Err(Error::Processor(e)) => {
                tracing::warn!(payment_intent = %intent.id, error = %e, "settling an interrupted payment intent failed; trying again later");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(settled)
}

/// Ends an authorization whose answer was lost, from what the processor `known`.
async fn recover_authorization(
    state: &AppState,
    intent: &Intent,
    known: Option<AuthorizationState>,
) -> Result<Intent, Error> {
    if let Some(AuthorizationState::Held { auth_code, .. }) = known {
        let set = "status = 'requires_capture', amount_authorized = amount, auth_code = $3";
        return authorized_with(state, intent, set, &[Bind::Text(&auth_code)]).await;
    }
    unanswered(state, intent, "processor_interrupted").await
}

async fn reload(state: &AppState, intent_id: &str) -> Result<Intent, Error> {
    load(&state.db, intent_id)
        .await?
        .ok_or(Error::NotFound("no such payment intent"))
}

/// The fraud rules' outcome for confirming `intent`.
async fn assess(
    state: &AppState,
    intent: &Intent,
    method: &cards::MethodFacts,
) -> Result<Outcome, Error> {
    let since = now_ms() - 3_600_000;
    let count = |column: &'static str, value: String| {
        let db = state.db.clone();
        async move {
            let sql = format!(
                "SELECT COUNT(*) AS n FROM payment_intents WHERE {column} = $1 AND created_at >= $2"
            );
            let n: i64 = sqlx::query(&sql)
                .bind(value)
                .bind(since)
                .fetch_one(db.pool())
                .await?
                .try_get("n")?;
            Ok::<i64, Error>(n)
        }
    };
    let customer_last_hour = count("customer_id", intent.customer_id.clone()).await?;
    let card_last_hour = count("card_fingerprint", method.fingerprint.clone()).await?;
    Ok(fraud::evaluate(
        &state.settings.fraud,
        &Facts {
            customer_id: &intent.customer_id,
            amount: intent.amount,
            customer_last_hour,
            card_last_hour,
            card_country: &method.country,
            billing_country: &method.billing_country,
        },
    ))
}

/// `processing` → `requires_capture`, the hold in the ledger, `payment.authorized`.
async fn authorized(
    state: &AppState,
    intent: &Intent,
    auth_code: &str,
    outcome: Outcome,
) -> Result<Intent, Error> {
    let set = "status = 'requires_capture', amount_authorized = amount, auth_code = $3, \
               fraud_decision = $4, fraud_rule = $5";
    let binds = [
        Bind::Text(auth_code),
        Bind::Text(outcome.decision.as_str()),
        Bind::OptText(outcome.rule),
    ];
    authorized_with(state, intent, set, &binds).await
}

/// `processing` → `requires_capture` with `set`.
async fn authorized_with(
    state: &AppState,
    intent: &Intent,
    set: &str,
    binds: &[Bind<'_>],
) -> Result<Intent, Error> {
    let mut tx = state.db.begin().await?;
    let done = transition(&mut tx, &intent.id, PROCESSING, set, binds)
        .await?
        .ok_or_else(|| Error::State("the payment intent changed while authorizing".into()))?;
    ledger::post(
        &mut tx,
        "authorize",
        &done.id,
        &done.currency,
        &ledger::hold(done.amount_authorized),
    )
    .await?;
    events::record(&mut tx, "authorized", &done, done.amount_authorized, None).await?;
    tx.commit().await?;
    state.outbox.wake();
    metrics::AUTHORIZATIONS
        .with_label_values(&["approved"])
        .inc();
    Ok(done)
}

/// `processing` → `canceled` with `reason`, `payment.failed`.
async fn failed(state: &AppState, intent: &Intent, reason: &str) -> Result<Intent, Error> {
    let mut tx = state.db.begin().await?;
    let set = "status = 'canceled', failure_reason = $3";
    let done = transition(&mut tx, &intent.id, PROCESSING, set, &[Bind::Text(reason)])
        .await?
        .ok_or_else(|| Error::State("the payment intent changed while authorizing".into()))?;
    events::record(&mut tx, "failed", &done, done.amount, None).await?;
    tx.commit().await?;
    state.outbox.wake();
    metrics::not_authorized(reason);
    Ok(done)
}

/// `POST /payment-intents/{id}/capture` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"amount": 2000}))]
pub struct Capture {
    /// Minor units, 1 to the authorized amount; defaults to the whole hold. The rest of
    /// the hold is released.
    #[schema(minimum = 1)]
    #[serde(default)]
    pub amount: Option<i64>,
}

/// Parses an optional JSON body (an empty body, or `null`, is `T::default()`: the
/// OpenAPI document describes an optional body as "null or T").
pub fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, Error> {
    Ok(kit::problem::optional_body(body)?)
}

/// `POST /payment-intents/{id}/capture`: `requires_capture` → `succeeded`.
///
/// Only `payments:charge` (or admin) captures. The body is optional (empty = the whole
/// hold). Capturing a captured intent answers it as it is. Needs an `Idempotency-Key`
/// header, as every POST of this service.
#[utoipa::path(post, path = "/payment-intents/{id}/capture", operation_id = "capturePaymentIntent", tag = "intents",
    summary = "Capture an authorized payment intent (payments:charge or admin)",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The payment intent's id"),
        kit::openapi::IdempotencyKey,
    ),
    request_body(content = Option<Capture>, description = "Optional; an empty body captures the whole hold"),
    responses(
        (status = 200, description = "Captured (now or before): status `succeeded`", body = Intent),
        (status = 400, description = doc::BAD_KEY, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The caller lacks `payments:charge`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such payment intent", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The intent is canceled or not authorized yet, or a request with this `Idempotency-Key` is still being processed (`Retry-After`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = doc::TOO_LARGE, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The body is not a valid capture (not JSON, an unknown field, an `amount` that is not 1 to the authorized amount), or the `Idempotency-Key` was used with a different request", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = doc::PROCESSOR, body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = doc::KEYS_UNAVAILABLE, body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn capture(
    State(state): State<AppState>,
    id: Identity,
    Path(intent_id): Path<String>,
    body: Bytes,
) -> Result<Json<Intent>, Error> {
    if !may_charge(&id) {
        return Err(Error::Forbidden(
            "capturing requires \"payments:charge\"".into(),
        ));
    }
    let body: Capture = optional_body(&body)?;
    let intent = load_visible(&state, &id, &intent_id).await?;
    let capturing = match intent.status.as_str() {
        REQUIRES_CAPTURE => start_capture(&state, intent, body.amount).await?,
        // A request whose answer was lost started it: resume what it recorded.
        CAPTURING => intent,
        _ => return captured_already(intent),
    };
    if capturing.status != CAPTURING {
        return captured_already(capturing);
    }
    settle_capture(&state, &capturing).await.map(Json)
}

/// `requires_capture` → `capturing` with the amount to capture (default: the whole hold),
/// committed; or the intent as a rival request left it.
async fn start_capture(
    state: &AppState,
    intent: Intent,
    amount: Option<i64>,
) -> Result<Intent, Error> {
    let amount = amount.unwrap_or(intent.amount_authorized);
    if !(1..=intent.amount_authorized).contains(&amount) {
        return Err(Error::field(
            "amount",
            format!(
                "must be 1 to {} (the authorized amount)",
                intent.amount_authorized
            ),
        ));
    }
    let mut tx = state.db.begin().await?;
    let set = "status = 'capturing', amount_captured = $3";
    match transition(
        &mut tx,
        &intent.id,
        REQUIRES_CAPTURE,
        set,
        &[Bind::Int(amount)],
    )
    .await?
    {
        Some(c) => {
            tx.commit().await?;
            Ok(c)
        }
        None => {
            drop(tx);
            reload(state, &intent.id).await
        }
    }
}

/// Asks the processor to capture what `intent` (`capturing`) recorded, and records the
/// answer: `succeeded` when it captured, back to `requires_capture` when it refused (502
/// either way with nothing changed); no answer leaves it `capturing` (502) for a retry or
/// the recovery task.
async fn settle_capture(state: &AppState, intent: &Intent) -> Result<Intent, Error> {
    let asked = bounded(
        state,
        state.processor.capture(&intent.id, intent.amount_captured),
    )
    .await;
    unless_refused(state, intent, "amount_captured = 0", asked).await?;
    captured(state, &intent.id).await
}

/// The processor's answer to the capture or void `intent` is in, passed on: a refusal puts
/// the intent back to `requires_capture` (`undo` resets what the call had set), a lost
/// answer leaves it where it is for a retry or the recovery task.
async fn unless_refused(
    state: &AppState,
    intent: &Intent,
    undo_set: &str,
    asked: Result<(), Error>,
) -> Result<(), Error> {
    match asked {
        Ok(()) => Ok(()),
        Err(Error::Processor(ProcessorError::Declined(code))) => {
            let mut tx = state.db.begin().await?;
            let set = format!("status = 'requires_capture', {undo_set}");
            transition(&mut tx, &intent.id, &intent.status, &set, &[]).await?;
            tx.commit().await?;
            Err(ProcessorError::Declined(code).into())
        }
        Err(e) => {
            tracing::warn!(payment_intent = %intent.id, status = intent.status, error = %e, "the processor did not confirm the call: the intent stays where it is");
            Err(e)
        }
    }
}

/// `capturing` → `succeeded`: the hold released, the captured amount owed by the customer
/// to the merchant, `payment.captured`. A rival that finished first is answered as it left
/// the intent.
async fn captured(state: &AppState, intent_id: &str) -> Result<Intent, Error> {
    let mut tx = state.db.begin().await?;
    let Some(done) = transition(&mut tx, intent_id, CAPTURING, "status = 'succeeded'", &[]).await?
    else {
        drop(tx);
        return captured_already(reload(state, intent_id).await?).map(|j| j.0);
    };
    let amount = done.amount_captured;
    let mut entries = ledger::release(done.amount_authorized).to_vec();
    entries.extend([
        (ledger::CUSTOMER_RECEIVABLE, amount),
        (ledger::MERCHANT_REVENUE, -amount),
    ]);
    ledger::post(&mut tx, "capture", &done.id, &done.currency, &entries).await?;
    events::record(&mut tx, "captured", &done, amount, None).await?;
    tx.commit().await?;
    state.outbox.wake();
    metrics::add(&metrics::CAPTURED, &done.currency, amount);
    Ok(done)
}

fn captured_already(intent: Intent) -> Result<Json<Intent>, Error> {
    match intent.status.as_str() {
        SUCCEEDED => Ok(Json(intent)),
        CANCELED | CANCELING => Err(Error::State("the payment intent is canceled".into())),
        _ => Err(Error::State(
            "the payment intent is not authorized; confirm it first".into(),
        )),
    }
}

/// A processor call bounded by the deadline (a timeout is a processor failure: 502).
async fn bounded(
    state: &AppState,
    call: impl std::future::Future<Output = Result<(), ProcessorError>>,
) -> Result<(), Error> {
    let deadline: Duration = state.settings.processor_deadline;
    match tokio::time::timeout(deadline, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ProcessorError::Unavailable("no answer within the deadline".into()).into()),
    }
}

/// `POST /payment-intents/{id}/cancel`: voids a hold, or cancels an unconfirmed intent.
///
/// Canceling a canceled intent answers it as it is; a captured one is refunded instead.
/// No body. Needs an `Idempotency-Key` header, as every POST of this service.
#[utoipa::path(post, path = "/payment-intents/{id}/cancel", operation_id = "cancelPaymentIntent", tag = "intents",
    summary = "Cancel a payment intent, voiding its hold",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The payment intent's id"),
        kit::openapi::IdempotencyKey,
    ),
    responses(
        (status = 200, description = "Canceled (now or before): status `canceled`", body = Intent),
        (status = 400, description = doc::BAD_KEY, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Another customer's intent, and the caller lacks `payments:charge`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such payment intent (or another customer's)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The intent was captured (refund it instead) or is being confirmed, or a request with this `Idempotency-Key` is still being processed (`Retry-After`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = doc::TOO_LARGE, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The `Idempotency-Key` was used with a different request", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = doc::PROCESSOR, body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = doc::KEYS_UNAVAILABLE, body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    id: Identity,
    Path(intent_id): Path<String>,
) -> Result<Json<Intent>, Error> {
    let intent = load_visible(&state, &id, &intent_id).await?;
    if intent.customer_id != id.user_id && !may_charge(&id) {
        return Err(Error::Forbidden(
            "canceling another customer's payment requires \"payments:charge\"".into(),
        ));
    }
    let canceling = match intent.status.as_str() {
        REQUIRES_CONFIRMATION => {
            // Nothing was asked of the processor yet: one transaction ends it.
            let mut tx = state.db.begin().await?;
            let set = "status = 'canceled', failure_reason = 'canceled'";
            let Some(done) =
                transition(&mut tx, &intent_id, REQUIRES_CONFIRMATION, set, &[]).await?
            else {
                drop(tx);
                return canceled_already(reload(&state, &intent_id).await?);
            };
            events::record(&mut tx, "voided", &done, 0, None).await?;
            tx.commit().await?;
            state.outbox.wake();
            return Ok(Json(done));
        }
        REQUIRES_CAPTURE => {
            let mut tx = state.db.begin().await?;
            let set = "status = 'canceling'";
            match transition(&mut tx, &intent_id, REQUIRES_CAPTURE, set, &[]).await? {
                Some(c) => {
                    tx.commit().await?;
                    c
                }
                None => {
                    drop(tx);
                    reload(&state, &intent_id).await?
                }
            }
        }
        _ => intent,
    };
    if canceling.status != CANCELING {
        return canceled_already(canceling);
    }
    settle_void(&state, &canceling).await.map(Json)
}

/// Asks the processor to release the hold of `intent` (`canceling`) and records the
/// answer, as [`settle_capture`] does for a capture.
async fn settle_void(state: &AppState, intent: &Intent) -> Result<Intent, Error> {
    let asked = bounded(state, state.processor.void(&intent.id)).await;
    unless_refused(state, intent, "failure_reason = NULL", asked).await?;
    voided(state, &intent.id).await
}

/// `canceling` → `canceled` (`voided`): the hold released in the ledger, `payment.voided`.
async fn voided(state: &AppState, intent_id: &str) -> Result<Intent, Error> {
    voided_from(state, intent_id, CANCELING).await
}

/// `from` → `canceled` (`voided`), as [`voided`]; also for a capture the processor
/// answered by releasing the hold instead.
async fn voided_from(state: &AppState, intent_id: &str, from: &str) -> Result<Intent, Error> {
    let mut tx = state.db.begin().await?;
    let set = "status = 'canceled', failure_reason = 'voided', amount_captured = 0";
    let Some(done) = transition(&mut tx, intent_id, from, set, &[]).await? else {
        drop(tx);
        return canceled_already(reload(state, intent_id).await?).map(|j| j.0);
    };
    let entries = ledger::release(done.amount_authorized);
    ledger::post(&mut tx, "void", &done.id, &done.currency, &entries).await?;
    events::record(&mut tx, "voided", &done, done.amount_authorized, None).await?;
    tx.commit().await?;
    state.outbox.wake();
    Ok(done)
}

fn canceled_already(intent: Intent) -> Result<Json<Intent>, Error> {
    match intent.status.as_str() {
        CANCELED => Ok(Json(intent)),
        SUCCEEDED | CAPTURING => Err(Error::State(
            "the payment intent was captured; refund it instead".into(),
        )),
        _ => Err(Error::State(
            "the payment intent is being confirmed; try again".into(),
        )),
    }
}

/// `GET /payment-intents/{id}`.
#[utoipa::path(get, path = "/payment-intents/{id}", operation_id = "getPaymentIntent", tag = "intents",
    summary = "Read a payment intent (one's own; staff any)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The payment intent's id")),
    responses(
        (status = 200, description = "The intent", body = Intent),
        (status = 404, description = "No such payment intent (or another customer's)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = doc::KEYS_UNAVAILABLE, body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    id: Identity,
    Path(intent_id): Path<String>,
) -> Result<Json<Intent>, Error> {
    Ok(Json(load_visible(&state, &id, &intent_id).await?))
}

/// `GET /payment-intents` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this order's intents.
    pub order_id: Option<String>,
    /// Only this customer's (staff only; customers always see only their own).
    pub customer_id: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Where the previous page ended: its `next_cursor`.
    pub cursor: Option<String>,
}

/// `GET /payment-intents?order_id=&customer_id=`: staff see any, customers their own.
#[utoipa::path(get, path = "/payment-intents", operation_id = "listPaymentIntents", tag = "intents",
    summary = "List payment intents, newest first, a page at a time (customers: their own)",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = Page<Intent>),
        (status = 400, description = "The query does not parse (e.g. a `limit` that is not a number)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "`limit` is not 1 to 100, or `cursor` is not one this API issued", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = doc::KEYS_UNAVAILABLE, body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    id: Identity,
    query: Query<ListQuery>,
) -> Result<Json<Page<Intent>>, Error> {
    let Query(q) = query;
    let limit = kit::page::limit(q.limit)?;
    let after = kit::page::decode_cursor(q.cursor.as_deref())?;
    let customer = if may_read_all(&id) {
        q.customer_id.unwrap_or_default()
    } else {
        id.user_id.clone()
    };
    let rows = sqlx::query(
        "SELECT * FROM payment_intents WHERE ($1 = '' OR order_id = $1) \
         AND ($2 = '' OR customer_id = $2) AND ($3 = '' OR id < $3) ORDER BY id DESC LIMIT $4",
    )
    .bind(q.order_id.unwrap_or_default())
    .bind(customer)
    .bind(after.unwrap_or_default())
    .bind(limit + 1)
    .fetch_all(state.db.pool())
    .await?;
    let items = rows
        .iter()
        .map(Intent::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(items, limit, |i| i.id.clone())))
}
