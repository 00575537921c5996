//! The HTTP handlers: place, read, list and cancel orders.
//!
//! `POST /orders` answers **202 Accepted** with the order as placed (`status: "pending"`)
//! and a `Location`; the saga runs in the background and the client polls
//! `GET /orders/{id}` until `confirmed` or `cancelled`. Waiting for the saga inside the
//! request would tie the answer to the slowest of three services (and to the idempotency
//! lease); the order is durable once the 202 is sent.
//!
//! `POST /orders/{id}/cancel` is accepted before the saga's pivot (statuses `pending`,
//! `reserved`, `authorized`): 202 with `status: "cancelling"`, compensation runs in the
//! background (again 202 for an order already cancelling). Cancelling a cancelled order
//! answers 200 with it as it is.
//! From `confirming` on the order is past cancelling: 409 (a refund is an admin's matter
//! at the payment service).

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kit::db::{new_id, now_ms};
use kit::page::Page;
use kit::{Identity, Json};
use serde::Deserialize;

use crate::clients::StepError;
use crate::error::{Error, FieldError};
use crate::order::{reasons, Line, Order, OrderEvent, Status};
use crate::AppState;

/// The most lines an order may have.
pub const MAX_LINES: usize = 100;
/// The most of one SKU an order may ask for.
pub const MAX_QTY: i64 = 1000;

/// `POST /orders` body.
#[derive(Debug, Deserialize)]
pub struct PlaceOrder {
    /// What to buy; prices come from the product service.
    pub items: Vec<ItemRequest>,
    /// The caller's payment method at the payment service.
    pub payment_method_id: String,
}

/// One line of a [`PlaceOrder`].
#[derive(Debug, Deserialize)]
pub struct ItemRequest {
    /// The product's SKU.
    pub sku: String,
    /// How many (1 to [`MAX_QTY`]).
    pub qty: i64,
}

/// Whether the caller may see (and cancel) `order`: its owner, or an admin.
fn may_see(id: &Identity, order: &Order) -> bool {
    id.user_id == order.customer_id || id.has_role("admin") || id.has_permission("orders:admin")
}

fn validate(body: &PlaceOrder) -> Result<(), Error> {
    let mut errors = Vec::new();
    let mut push = |field: String, message: &str| errors.push(FieldError::new(field, message));
    if body.items.is_empty() {
        push("items".into(), "an order needs at least one item");
    }
    if body.items.len() > MAX_LINES {
        push("items".into(), "an order has at most 100 items");
    }
    let mut seen = HashSet::new();
    for (i, item) in body.items.iter().enumerate() {
        if item.sku.trim().is_empty() || item.sku.len() > 100 {
            push(format!("items[{i}].sku"), "a SKU is 1 to 100 characters");
        } else if !seen.insert(item.sku.as_str()) {
            push(format!("items[{i}].sku"), "each SKU may appear once");
        }
        if !(1..=MAX_QTY).contains(&item.qty) {
            push(format!("items[{i}].qty"), "a quantity is 1 to 1000");
        }
    }
    if body.payment_method_id.trim().is_empty() {
        push("payment_method_id".into(), "required");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(errors))
    }
}

/// Prices every line at the product service's current prices.
async fn price(state: &AppState, body: &PlaceOrder) -> Result<(Vec<Line>, String, i64), Error> {
    let skus: Vec<String> = body.items.iter().map(|i| i.sku.clone()).collect();
    let prices: HashMap<_, _> = state.inventory.prices(&skus).await.map_err(|e| match e {
        StepError::Transient(why) | StepError::Rejected { detail: why, .. } => {
            tracing::warn!(why, "pricing an order failed");
            Error::Unavailable("the product service cannot quote prices right now".into())
        }
    })?;
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    let mut currency: Option<String> = None;
    for (i, item) in body.items.iter().enumerate() {
        let Some(p) = prices.get(&item.sku) else {
            errors.push(FieldError::new(
                format!("items[{i}].sku"),
                "no such product",
            ));
            continue;
        };
        match &currency {
            Some(c) if c != &p.currency => errors.push(FieldError::new(
                format!("items[{i}].sku"),
                format!("priced in {}, the order in {c}", p.currency),
            )),
            _ => currency = Some(p.currency.clone()),
        }
        lines.push(Line {
            sku: item.sku.clone(),
            qty: item.qty,
            unit_price: p.amount,
        });
    }
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    let total = lines
        .iter()
        .try_fold(0i64, |sum, l| {
            sum.checked_add(l.qty.checked_mul(l.unit_price)?)
        })
        .ok_or_else(|| Error::field("items", "the total is too large"))?;
    Ok((lines, currency.unwrap_or_default(), total))
}

/// `POST /orders` (permission `orders:write`; `Idempotency-Key` required).
pub async fn place(
    State(state): State<AppState>,
    id: Identity,
    Json(body): Json<PlaceOrder>,
) -> Result<Response, Error> {
    id.require_permission("orders:write")?;
    validate(&body)?;
    let (items, currency, total) = price(&state, &body).await?;
    let order_id = new_id();
    let placed = OrderEvent::OrderPlaced {
        customer_id: id.user_id.clone(),
        items,
        currency,
        total,
        payment_method_id: body.payment_method_id.trim().to_owned(),
        placed_at: now_ms(),
    };
    let order = state.store.create(&order_id, placed).await?;
    state.saga.start(order_id.clone());
    Ok(with_location(StatusCode::ACCEPTED, &order))
}

fn with_location(status: StatusCode, order: &Order) -> Response {
    let mut resp = (status, Json(order)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/orders/{}", order.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `GET /orders/{id}`: the fold of the order's events (owner or admin; others get 404).
pub async fn get(
    State(state): State<AppState>,
    id: Identity,
    Path(order_id): Path<String>,
) -> Result<Json<Order>, Error> {
    match state.store.load(&order_id).await? {
        Some(order) if may_see(&id, &order) => Ok(Json(order)),
        _ => Err(Error::NotFound),
    }
}

/// `GET /orders` query.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<i64>,
    /// Where the previous page ended (opaque).
    pub cursor: Option<String>,
}

/// `GET /orders`: the caller's orders, newest first.
pub async fn list(
    State(state): State<AppState>,
    id: Identity,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<Order>>, Error> {
    let limit = kit::page::limit(q.limit)?;
    let before = kit::page::decode_cursor(q.cursor.as_deref())?;
    // One more than asked tells whether there is a next page. UUIDv7 ids sort by time.
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE customer_id = $1 AND ($2 IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3",
    )
    .bind(&id.user_id)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(state.db.pool())
    .await
    .map_err(kit::DbError::from)?;
    let more = ids.len() as i64 > limit;
    let mut items = Vec::with_capacity(ids.len());
    for order_id in ids.iter().take(limit as usize) {
        if let Some(order) = state.store.load(order_id).await? {
            items.push(order);
        }
    }
    let next_cursor = more
        .then(|| items.last().map(|o| kit::page::encode_cursor(&o.id)))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// `POST /orders/{id}/cancel` (owner or admin).
pub async fn cancel(
    State(state): State<AppState>,
    id: Identity,
    Path(order_id): Path<String>,
) -> Result<Response, Error> {
    match state.store.load(&order_id).await? {
        Some(order) if may_see(&id, &order) => {}
        _ => return Err(Error::NotFound),
    }
    let order = state
        .store
        .decide(&order_id, |o| match o.status {
            Status::Pending | Status::Reserved | Status::Authorized => {
                Ok(vec![OrderEvent::CompensationStarted {
                    reason: reasons::CANCELLED_BY_CUSTOMER.to_owned(),
                }])
            }
            Status::Cancelling | Status::Cancelled => Ok(vec![]),
            Status::Confirming | Status::Confirmed => Err(Error::Conflict(format!(
                "the order is {}; it can no longer be cancelled",
                o.status.as_str()
            ))),
        })
        .await?
        .ok_or(Error::NotFound)?;
    if order.status == Status::Cancelled {
        return Ok(with_location(StatusCode::OK, &order));
    }
    state.saga.start(order_id);
    Ok(with_location(StatusCode::ACCEPTED, &order))
}
