//! Stock per sku: `on_hand` (in the warehouse), `reserved` (held for orders not yet
//! committed) and `available = on_hand - reserved`. Always read from the database, never
//! from the cache. Every write is a conditional `UPDATE` whose `WHERE` keeps
//! `0 <= reserved <= on_hand`, checked by rows affected, so concurrent writers cannot
//! oversell or go negative on either database.

use axum::extract::{Path, State};
use kit::db::now_ms;
use kit::openapi::ProblemBody;
use kit::{Identity, Json};
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;

use crate::error::{Error, Fields};
use crate::{events, require, AppState, WRITE_PRODUCTS};

/// A sku's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"sku": "MUG-001", "on_hand": 50, "reserved": 2, "available": 48}))]
pub struct Stock {
    /// The sku.
    pub sku: String,
    /// Units in the warehouse.
    pub on_hand: i64,
    /// Units held by open reservations.
    pub reserved: i64,
    /// `on_hand - reserved`: what a new reservation may take.
    pub available: i64,
}

/// `POST /inventory/{sku}/adjustments`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"delta": 24, "reason": "delivery"}))]
pub struct Adjustment {
    /// Units to add (positive) or remove (negative) from on_hand.
    delta: i64,
    /// Why (stocktake, delivery, damage…), kept in the `inventory.adjusted` event.
    reason: String,
}

/// The stock of `sku` and its product's low-stock threshold, as `tx` sees it.
async fn read(
    tx: &mut Transaction<'static, Any>,
    sku: &str,
) -> Result<Option<(Stock, i64)>, Error> {
    let row = sqlx::query(
        "SELECT i.on_hand, i.reserved, p.low_stock_threshold FROM inventory i \
         JOIN products p ON p.sku = i.sku WHERE i.sku = $1",
    )
    .bind(sku)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let on_hand: i64 = row.try_get("on_hand")?;
    let reserved: i64 = row.try_get("reserved")?;
    let stock = Stock {
        sku: sku.to_owned(),
        on_hand,
        reserved,
        available: on_hand - reserved,
    };
    Ok(Some((stock, row.try_get("low_stock_threshold")?)))
}

/// After `taken` units of `sku` stopped being available inside `tx`: records
/// `inventory.low_stock` when that took available from at or above the product's threshold
/// to below it (once per crossing, not on every sale below it).
pub(crate) async fn note_taken(
    tx: &mut Transaction<'static, Any>,
    sku: &str,
    taken: i64,
    now: i64,
) -> Result<Option<Stock>, Error> {
    let Some((stock, threshold)) = read(tx, sku).await? else {
        return Ok(None);
    };
    if taken > 0 && stock.available < threshold && stock.available + taken >= threshold {
        let fact = events::LowStock {
            sku,
            available: stock.available,
            threshold,
            at: now,
        };
        events::record(tx, "inventory.low_stock", &fact).await?;
    }
    Ok(Some(stock))
}

/// Records that `sku`'s on_hand changed by `delta` for `reason` (already written in `tx`):
/// the `inventory.adjusted` event with the counts after it (and a low-stock one when it
/// crossed the threshold); the stock after it.
pub(crate) async fn adjusted(
    tx: &mut Transaction<'static, Any>,
    sku: &str,
    delta: i64,
    reason: &str,
    now: i64,
) -> Result<Stock, Error> {
    let stock = note_taken(tx, sku, -delta, now)
        .await?
        .ok_or(Error::NotFound("no such sku"))?;
    let fact = events::InventoryAdjusted {
        sku,
        delta,
        reason,
        on_hand: stock.on_hand,
        reserved: stock.reserved,
        available: stock.available,
        at: now,
    };
    events::record(tx, "inventory.adjusted", &fact).await?;
    Ok(stock)
}

/// `GET /inventory/{sku}` (any signed-in caller) → the stock, from the database.
#[utoipa::path(get, path = "/inventory/{sku}", operation_id = "getStock", tag = "inventory",
    summary = "Read a sku's stock (any signed-in caller)",
    security(("bearer" = [])),
    params(("sku" = String, Path, description = "The product's sku")),
    responses((status = 200, description = "The stock", body = Stock)))]
pub async fn get(
    State(s): State<AppState>,
    _id: Identity,
    Path(sku): Path<String>,
) -> Result<Json<Stock>, Error> {
    let row = sqlx::query("SELECT on_hand, reserved FROM inventory WHERE sku = $1")
        .bind(&sku)
        .fetch_optional(s.db.pool())
        .await?
        .ok_or(Error::NotFound("no such sku"))?;
    let on_hand: i64 = row.try_get("on_hand")?;
    let reserved: i64 = row.try_get("reserved")?;
    Ok(Json(Stock {
        sku,
        on_hand,
        reserved,
        available: on_hand - reserved,
    }))
}

/// `POST /inventory/{sku}/adjustments` {delta, reason} (admin or `products:write`) → the
/// stock after it. A delta that would leave on_hand below reserved (or below 0) is 409 and
/// changes nothing.
#[utoipa::path(post, path = "/inventory/{sku}/adjustments", operation_id = "adjustStock", tag = "inventory",
    summary = "Add or remove stock (admin or products:write)",
    security(("bearer" = [])),
    params(("sku" = String, Path, description = "The product's sku")),
    request_body = Adjustment,
    responses(
        (status = 200, description = "The stock after it", body = Stock),
        (status = 409, description = "It would leave on_hand below reserved or below 0", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn adjust(
    State(s): State<AppState>,
    id: Identity,
    Path(sku): Path<String>,
    Json(req): Json<Adjustment>,
) -> Result<Json<Stock>, Error> {
    require(&id, WRITE_PRODUCTS)?;
    let mut f = Fields::default();
    if req.delta == 0 {
        f.push("delta", "must not be 0");
    }
    let reason = req.reason.trim();
    if reason.is_empty() || reason.chars().count() > 200 {
        f.push("reason", "must be 1 to 200 characters");
    }
    f.finish()?;
    let now = now_ms();
    let mut tx = s.db.begin().await?;
    let changed = sqlx::query(
        "UPDATE inventory SET on_hand = on_hand + $1, updated_at = $2 \
         WHERE sku = $3 AND on_hand + $1 >= reserved AND on_hand + $1 >= 0",
    )
    .bind(req.delta)
    .bind(now)
    .bind(&sku)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed != 1 {
        let known = sqlx::query("SELECT sku FROM inventory WHERE sku = $1")
            .bind(&sku)
            .fetch_optional(&mut *tx)
            .await?;
        return Err(match known {
            None => Error::NotFound("no such sku"),
            Some(_) => Error::Conflict(format!(
                "an adjustment of {} would leave on_hand below the units reserved",
                req.delta
            )),
        });
    }
    let stock = adjusted(&mut tx, &sku, req.delta, reason, now).await?;
    tx.commit().await?;
    s.outbox.wake();
    Ok(Json(stock))
}
