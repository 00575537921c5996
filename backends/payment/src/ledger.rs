//! The double-entry ledger: every financial transaction appends entries that sum to zero,
//! in the same database transaction as the intent's state change (so a change without its
//! entries, or entries without their change, never commit). Positive amounts are debits,
//! negative ones credits; entries are never updated or deleted.
//!
//! | transaction | entries |
//! |---|---|
//! | `authorize` A | `authorized_holds` +A, `customer_funds_on_hold` −A |
//! | `capture` c of A | the hold released (`authorized_holds` −A, `customer_funds_on_hold` +A), `customer_receivable` +c, `merchant_revenue` −c |
//! | `void` of A | the hold released |
//! | `refund` r | `merchant_revenue` +r, `customer_receivable` −r |
//!
//! So at any time `authorized_holds` is the sum of the holds of intents in
//! `requires_capture`, `customer_receivable` is Σ (captured − refunded), and
//! `merchant_revenue` its negative.

use axum::extract::State;
use kit::db::{new_id, now_ms};
use kit::openapi::ProblemBody;
use kit::{Identity, Json};
use serde::Serialize;
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;

use crate::error::Error;
use crate::{doc, AppState};

/// Debited by an authorization.
pub const AUTHORIZED_HOLDS: &str = "authorized_holds";
/// Credited by an authorization.
pub const CUSTOMER_FUNDS_ON_HOLD: &str = "customer_funds_on_hold";
/// Debited by a capture.
pub const CUSTOMER_RECEIVABLE: &str = "customer_receivable";
/// Credited by a capture.
pub const MERCHANT_REVENUE: &str = "merchant_revenue";

/// Appends one transaction of `kind` for `intent_id`: the `entries` (account, signed
/// amount) must sum to zero, or nothing is written and the caller's transaction fails.
pub async fn post(
    tx: &mut Transaction<'static, Any>,
    kind: &str,
    intent_id: &str,
    currency: &str,
    entries: &[(&str, i64)],
) -> Result<String, Error> {
    let sum: i64 = entries.iter().map(|(_, a)| a).sum();
    if sum != 0 {
        return Err(Error::Db(kit::DbError::Other(sqlx::Error::Protocol(
            format!("unbalanced ledger transaction {kind}: sums to {sum}"),
        ))));
    }
    let txn_id = new_id();
    let now = now_ms();
    for (account, amount) in entries.iter().filter(|(_, a)| *a != 0) {
        sqlx::query(
            "INSERT INTO ledger_entries (id, txn_id, kind, payment_intent_id, account, amount, \
             currency, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(new_id())
        .bind(&txn_id)
        .bind(kind)
        .bind(intent_id)
        .bind(*account)
        .bind(*amount)
        .bind(currency)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(txn_id)
}

/// The entries that place a hold of `amount`.
pub fn hold(amount: i64) -> [(&'static str, i64); 2] {
    [
        (AUTHORIZED_HOLDS, amount),
        (CUSTOMER_FUNDS_ON_HOLD, -amount),
    ]
}

/// The entries that release a hold of `amount`.
pub fn release(amount: i64) -> [(&'static str, i64); 2] {
    [
        (AUTHORIZED_HOLDS, -amount),
        (CUSTOMER_FUNDS_ON_HOLD, amount),
    ]
}

/// One account's balance in one currency.
#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
#[schema(example = json!({"account": "customer_receivable", "currency": "EUR", "balance": 2000}))]
pub struct AccountBalance {
    /// The account: `authorized_holds`, `customer_funds_on_hold`, `customer_receivable` or
    /// `merchant_revenue`.
    pub account: String,
    /// ISO 4217.
    pub currency: String,
    /// Σ of its entries (debits positive).
    pub balance: i64,
}

/// `GET /ledger/balance`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "accounts": [
        {"account": "authorized_holds", "currency": "EUR", "balance": 2500},
        {"account": "customer_funds_on_hold", "currency": "EUR", "balance": -2500},
        {"account": "customer_receivable", "currency": "EUR", "balance": 2000},
        {"account": "merchant_revenue", "currency": "EUR", "balance": -2000}
    ],
    "sum": 0, "unbalanced_transactions": 0
}))]
pub struct Balance {
    /// Every account's balance per currency.
    pub accounts: Vec<AccountBalance>,
    /// Σ of every entry: 0 unless the ledger is broken.
    pub sum: i64,
    /// Transactions whose entries do not sum to zero: 0 unless the ledger is broken.
    pub unbalanced_transactions: i64,
}

/// Reads the balances (also for tests).
pub async fn balance(db: &kit::Db) -> Result<Balance, Error> {
    let rows = sqlx::query(
        "SELECT account, currency, CAST(SUM(amount) AS BIGINT) AS balance FROM ledger_entries \
         GROUP BY account, currency ORDER BY account, currency",
    )
    .fetch_all(db.pool())
    .await?;
    let accounts = rows
        .iter()
        .map(|r| {
            Ok(AccountBalance {
                account: r.try_get("account")?,
                currency: r.try_get("currency")?,
                balance: r.try_get("balance")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let unbalanced: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM (SELECT txn_id FROM ledger_entries GROUP BY txn_id \
         HAVING SUM(amount) <> 0) AS t",
    )
    .fetch_one(db.pool())
    .await?
    .try_get("n")?;
    Ok(Balance {
        sum: accounts.iter().map(|a| a.balance).sum(),
        accounts,
        unbalanced_transactions: unbalanced,
    })
}

/// `GET /ledger/balance` (admin).
#[utoipa::path(get, path = "/ledger/balance", operation_id = "getLedgerBalance", tag = "ledger",
    summary = "Read every ledger account's balance per currency (admin)",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The balances; `sum` and `unbalanced_transactions` are 0 unless the ledger is broken", body = Balance),
        (status = 403, description = "The caller is not an admin", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = doc::KEYS_UNAVAILABLE, body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get_balance(
    State(state): State<AppState>,
    id: Identity,
) -> Result<Json<Balance>, Error> {
    id.require_role("admin")?;
    Ok(Json(balance(&state.db).await?))
}
