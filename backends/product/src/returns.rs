//! Returns: stock given back after a reservation was committed, for the lines of an order
//! that was refunded or cancelled after it shipped.
//!
//! `POST /inventory/reservations/{order_id}/returns` names the return with the caller's
//! `return_id`: the same return again answers the stored one and adds nothing, so a caller
//! that lost the answer can repeat it. What is returned of a sku never exceeds what the
//! reservation committed: the reservation's row is written first, which serializes the
//! returns of one order on both databases (SQLite's write lock, PostgreSQL's row lock),
//! and the sum is checked after that. Each sku's `on_hand` grows in sku order, and each
//! change is an `inventory.adjusted` event whose `reason` names the order and the return.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kit::db::now_ms;
use kit::openapi::ProblemBody;
use kit::{Identity, Json};
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;

use crate::error::{Error, Fields};
use crate::reservations::{Item, MAX_ITEMS};
use crate::{inventory, require, AppState, RESERVE};

/// `POST /inventory/reservations/{order_id}/returns` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "return_id": "0193a5f9-0a1b-7c2d-8e3f-405162738495",
    "items": [{"sku": "MUG-001", "qty": 1}], "reason": "refunded"
}))]
pub struct NewReturn {
    /// The caller's id for this return, 1 to 200 characters: returning it again answers
    /// the stored return.
    pub return_id: String,
    /// 1 to 100 lines, one per sku, each a sku of the reservation.
    pub items: Vec<Item>,
    /// Why, at most 200 characters (default `returned`); kept in the events.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A return as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "order_id": "0193a5f2-8d00-7b4c-a1b2-c3d4e5f60718",
    "return_id": "0193a5f9-0a1b-7c2d-8e3f-405162738495",
    "items": [{"sku": "MUG-001", "qty": 1}], "reason": "refunded",
    "created_at": 1733403600000_i64
}))]
pub struct Return {
    /// The order whose committed stock came back.
    pub order_id: String,
    /// The caller's id for it.
    pub return_id: String,
    /// Lines in sku order.
    pub items: Vec<Item>,
    /// Why.
    pub reason: String,
    /// Unix ms.
    pub created_at: i64,
}

fn check(req: &NewReturn) -> Result<(Vec<Item>, String), Error> {
    let mut f = Fields::default();
    if req.return_id.trim().is_empty() || req.return_id.len() > 200 {
        f.push("return_id", "must be 1 to 200 characters");
    }
    if req.items.is_empty() || req.items.len() > MAX_ITEMS {
        f.push("items", format!("must have 1 to {MAX_ITEMS} lines"));
    }
    if req.items.iter().any(|i| i.qty < 1 || i.qty > 1_000_000) {
        f.push("items.qty", "must be 1 to 1000000");
    }
    let reason = req.reason.as_deref().unwrap_or("returned").trim();
    if reason.is_empty() || reason.chars().count() > 200 {
        f.push("reason", "must be 1 to 200 characters");
    }
    let mut items = req.items.clone();
    items.sort_by(|a, b| a.sku.cmp(&b.sku));
    if items.windows(2).any(|w| w[0].sku == w[1].sku) {
        f.push("items", "each sku may appear once");
    }
    f.finish()?;
    Ok((items, reason.to_owned()))
}

/// `POST /inventory/reservations/{order_id}/returns` (`inventory:reserve` or admin).
#[utoipa::path(post, path = "/inventory/reservations/{order_id}/returns", operation_id = "returnStock", tag = "inventory",
    summary = "Give committed stock back: lines of a refunded order (inventory:reserve or admin)",
    security(("bearer" = [])),
    params(("order_id" = String, Path, description = "The order whose reservation was committed")),
    request_body = NewReturn,
    responses(
        (status = 201, description = "Returned: each sku's on_hand grew by its qty", body = Return),
        (status = 200, description = "This `return_id` was returned before with the same items: nothing more is added", body = Return),
        (status = 404, description = "No reservation for this order", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The reservation is not committed; or the return would give back more of a sku than was committed; or this `return_id` was used with other items", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A field failed validation, or a sku is not in the reservation", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(s): State<AppState>,
    id: Identity,
    Path(order_id): Path<String>,
    Json(req): Json<NewReturn>,
) -> Result<impl IntoResponse, Error> {
    require(&id, RESERVE)?;
    let (items, reason) = check(&req)?;
    let now = now_ms();
    let mut tx = s.db.begin().await?;
    // Writing the reservation's row first serializes the returns of one order.
    let status: Option<String> = sqlx::query_scalar(
        "UPDATE reservations SET updated_at = $2 WHERE order_id = $1 RETURNING status",
    )
    .bind(&order_id)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(status) = status else {
        return Err(Error::NotFound("no such reservation"));
    };
    if let Some(before) = stored(&mut tx, &order_id, &req.return_id).await? {
        return if before.items == items {
            Ok((StatusCode::OK, Json(before)))
        } else {
            Err(Error::Conflict(
                "this return_id was used with other items".into(),
            ))
        };
    }
    if status != "committed" {
        return Err(Error::Conflict(format!(
            "the reservation is {status}: only committed stock is returned"
        )));
    }
    for item in &items {
        let row = sqlx::query(
            "SELECT qty, (SELECT COALESCE(CAST(SUM(r.qty) AS BIGINT), 0) FROM stock_returns r \
             WHERE r.order_id = $1 AND r.sku = $2) AS returned \
             FROM reservation_items WHERE order_id = $1 AND sku = $2",
        )
        .bind(&order_id)
        .bind(&item.sku)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(Error::Invalid(vec![kit::problem::FieldError::new(
                "items.sku",
                format!("{} is not in this reservation", item.sku),
            )]));
        };
        let (committed, returned): (i64, i64) = (row.try_get("qty")?, row.try_get("returned")?);
        if returned + item.qty > committed {
            return Err(Error::Conflict(format!(
                "{} of {} were committed and {} returned: {} more would exceed it",
                committed, item.sku, returned, item.qty
            )));
        }
    }
    let why = format!("return {} of order {order_id}: {reason}", req.return_id);
    for item in &items {
        sqlx::query(
            "INSERT INTO stock_returns (order_id, return_id, sku, qty, reason, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&order_id)
        .bind(&req.return_id)
        .bind(&item.sku)
        .bind(item.qty)
        .bind(&reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE inventory SET on_hand = on_hand + $1, updated_at = $2 WHERE sku = $3")
            .bind(item.qty)
            .bind(now)
            .bind(&item.sku)
            .execute(&mut *tx)
            .await?;
        inventory::adjusted(&mut tx, &item.sku, item.qty, &why, now).await?;
    }
    tx.commit().await?;
    s.outbox.wake();
    let done = Return {
        order_id,
        return_id: req.return_id,
        items,
        reason,
        created_at: now,
    };
    Ok((StatusCode::CREATED, Json(done)))
}

/// The return `return_id` of `order_id`, if it was made.
async fn stored(
    tx: &mut Transaction<'static, Any>,
    order_id: &str,
    return_id: &str,
) -> Result<Option<Return>, Error> {
    let rows = sqlx::query(
        "SELECT sku, qty, reason, created_at FROM stock_returns \
         WHERE order_id = $1 AND return_id = $2 ORDER BY sku",
    )
    .bind(order_id)
    .bind(return_id)
    .fetch_all(&mut **tx)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let items = rows
        .iter()
        .map(Item::from_row)
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(Return {
        order_id: order_id.to_owned(),
        return_id: return_id.to_owned(),
        items,
        reason: first.try_get("reason")?,
        created_at: first.try_get("created_at")?,
    }))
}
