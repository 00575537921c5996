//! The HTTP handlers: place, read, list and cancel orders.
//!
//! `POST /orders` answers **202 Accepted** with the order as placed (`status: "pending"`)
//! and a `Location`; the saga runs in the background and the client polls
//! `GET /orders/{id}` until `confirmed` or `cancelled`. Waiting for the saga inside the
//! request would tie the answer to the slowest of three services (and to the idempotency
//! lease); the order is durable once the 202 is sent.
//!
//! `POST /orders/{id}/cancel` before the saga's pivot (statuses `pending`, `reserved`,
//! `authorized`): 202 with `status: "cancelling"`, compensation runs in the background
//! (again 202 for an order already cancelling). Cancelling a cancelled order answers 200
//! with it as it is. While `confirming` it is 409 (try again once confirmed).
//!
//! After confirmation a cancel is a refund of every line not refunded yet: by the customer
//! within the cancellation window (`ORDER_CANCEL_WINDOW`, counted from confirmation), by
//! an admin at any time. `POST /orders/{id}/refunds` (staff, `Idempotency-Key`) refunds
//! some lines. Either records a `RefundRequested` decided on the order's current state
//! (an append with the expected version, re-decided on a conflict), so racing cancels and
//! refunds never refund a unit twice; the saga then pays it back at the payment service
//! and returns the stock at the product service, both keyed by the refund's id, and the
//! order ends `refunded` when nothing is left to refund (else `confirmed` again).

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kit::db::{new_id, now_ms};
use kit::openapi::ProblemBody;
use kit::page::{Page, PageQuery};
use kit::Query;
use kit::{Identity, Json};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::clients::StepError;
use crate::error::{Error, FieldError};
use crate::order::{
    reasons, Line, Order, OrderEvent, OrderRefund, RefundLine, RefundStatus, Status,
};
use crate::AppState;

/// The most lines an order may have.
pub const MAX_LINES: usize = 100;
/// The most of one SKU an order may ask for.
pub const MAX_QTY: i64 = 1000;

/// `POST /orders` body.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "items": [{"sku": "MUG-001", "qty": 2}, {"sku": "TEA-042", "qty": 1}],
    "payment_method_id": "0193a5e8-4f00-7d1e-9a2b-3c4d5e6f7a8b"
}))]
pub struct PlaceOrder {
    /// What to buy: 1 to 100 lines, each SKU at most once, every product priced in the
    /// same currency; prices come from the product service.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<ItemRequest>,
    /// The caller's payment method at the payment service (not blank).
    #[schema(min_length = 1)]
    pub payment_method_id: String,
}

/// One line of a [`PlaceOrder`]: a product and how many.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"sku": "MUG-001", "qty": 2}))]
pub struct ItemRequest {
    /// The product's SKU: 1 to 100 characters, not blank, a product that exists.
    #[schema(min_length = 1, max_length = 100)]
    pub sku: String,
    /// How many: 1 to 1000 ([`MAX_QTY`]).
    #[schema(minimum = 1, maximum = 1000)]
    pub qty: i64,
}

/// Whether the caller may see (and cancel) `order`: its owner, or an admin.
fn may_see(id: &Identity, order: &Order) -> bool {
    id.user_id == order.customer_id || is_staff(id)
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
#[utoipa::path(post, path = "/orders", operation_id = "placeOrder", tag = "orders",
    summary = "Place an order (orders:write); the saga then reserves, charges and confirms it",
    security(("bearer" = [])),
    params(kit::openapi::IdempotencyKey),
    request_body = PlaceOrder,
    responses(
        (status = 202, description = "Placed (`status: pending`); poll the `Location` until \
            `confirmed` or `cancelled`. A replay of the same key and request answers the same.",
            body = Order,
            headers(
                ("Location" = String, description = "`/orders/{id}` of the order"),
                ("Idempotency-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with the key")),
            example = json!({
                "id": "0193a5f2-8d00-7b4c-a1b2-c3d4e5f60718",
                "customer_id": "0193a5e0-1a2b-7c3d-8e4f-5a6b7c8d9e0f",
                "status": "pending",
                "items": [{"sku": "MUG-001", "qty": 2, "unit_price": 1250}],
                "currency": "EUR", "total": 2500,
                "payment_method_id": "0193a5e8-4f00-7d1e-9a2b-3c4d5e6f7a8b",
                "payment_intent_id": null, "inventory": "none", "payment": "none",
                "cancel_reason": null, "placed_at": 1733400000000_i64,
                "updated_at": 1733400000000_i64, "version": 1
            })),
        (status = 400, description = "No Idempotency-Key, a malformed or repeated one, or a body that is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is still being processed (`Retry-After`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 1 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A field failed validation, a SKU names no product, the lines are priced in different currencies, the total overflows, or the Idempotency-Key was used with another request", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The product service cannot quote prices right now, or access tokens cannot be verified right now", body = ProblemBody, content_type = "application/problem+json"),
    ))]
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
    located(status, order, &order.id)
}

/// `body` answered with `status` and the `Location` of the order `order_id`.
fn located(status: StatusCode, body: &impl serde::Serialize, order_id: &str) -> Response {
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/orders/{order_id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `GET /orders/{id}`: the fold of the order's events (owner or admin; others get 404).
#[utoipa::path(get, path = "/orders/{id}", operation_id = "getOrder", tag = "orders",
    summary = "Read an order (its owner or an admin)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order as its events leave it", body = Order),
        (status = 404, description = "No such order, or not the caller's", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Access tokens cannot be verified right now", body = ProblemBody, content_type = "application/problem+json"),
    ))]
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

/// `GET /orders`: the caller's orders, newest first. A query that does not parse is 400
/// (as a problem, like every other answer).
#[utoipa::path(get, path = "/orders", operation_id = "listOrders", tag = "orders",
    summary = "List the caller's orders, newest first, a page at a time",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "One page", body = Page<Order>),
        (status = 400, description = "The query does not parse (e.g. a `limit` that is not a number)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "`limit` is not 1 to 100, or `cursor` is not one this API issued", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Access tokens cannot be verified right now", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    id: Identity,
    query: Query<PageQuery>,
) -> Result<Json<Page<Order>>, Error> {
    let Query(q) = query;
    let limit = q.limit()?;
    let before = q.after()?;
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

/// Whether the caller acts for the shop (admin role or `orders:admin`).
fn is_staff(id: &Identity) -> bool {
    id.has_role("admin") || id.has_permission("orders:admin")
}

/// `POST /orders/{id}/cancel` (owner or admin).
#[utoipa::path(post, path = "/orders/{id}/cancel", operation_id = "cancelOrder", tag = "orders",
    summary = "Cancel an order: before confirmation nothing is charged; after it, everything is refunded and the stock returned (its owner within the cancellation window, or an admin)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order's id")),
    responses(
        (status = 202, description = "Cancelling (`status: cancelling`: compensation runs in the background, poll the `Location` until `cancelled`) or, for a confirmed order, refunding (`status: refunding`, a refund of every line not refunded yet in `refunds`; poll until `refunded`); also when this was asked before and is still running",
            body = Order,
            headers(("Location" = String, description = "`/orders/{id}` of the order"))),
        (status = 200, description = "Cancelled or refunded before: the order as it is", body = Order,
            headers(("Location" = String, description = "`/orders/{id}` of the order"))),
        (status = 404, description = "No such order, or not the caller's", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The order is being confirmed (try again once it is confirmed); or it is confirmed and the customer's cancellation window has closed (an admin can still cancel it); or it kept changing while this was decided (try again)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Access tokens cannot be verified right now", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    id: Identity,
    Path(order_id): Path<String>,
) -> Result<Response, Error> {
    match state.store.load(&order_id).await? {
        Some(order) if may_see(&id, &order) => {}
        _ => return Err(Error::NotFound),
    }
    let staff = is_staff(&id);
    let window = state.cancel_window;
    let refund_id = new_id();
    let order = state
        .store
        .decide(&order_id, |o| match o.status {
            Status::Pending | Status::Reserved | Status::Authorized => {
                Ok(vec![OrderEvent::CompensationStarted {
                    reason: reasons::CANCELLED_BY_CUSTOMER.to_owned(),
                }])
            }
            Status::Cancelling | Status::Cancelled => Ok(vec![]),
            Status::Confirming => Err(Error::Conflict(
                "the order is being confirmed; cancel it again once it is confirmed".into(),
            )),
            Status::Confirmed | Status::Refunding | Status::Refunded => {
                let cancelled = o
                    .refunds
                    .iter()
                    .any(|f| f.cancel && f.status != RefundStatus::Failed);
                let left = o.refundable();
                if cancelled || left.is_empty() {
                    return Ok(vec![]);
                }
                let since = o.confirmed_at.unwrap_or(o.placed_at);
                if !staff && now_ms() > since.saturating_add(window.as_millis() as i64) {
                    return Err(Error::Conflict(format!(
                        "the order was confirmed more than {} ago: only the shop can cancel it now",
                        humantime::format_duration(window)
                    )));
                }
                let amount = o
                    .price_of(&left)
                    .ok_or_else(|| Error::Conflict("the order's lines do not add up".into()))?;
                let reason = if staff {
                    reasons::CANCELLED_BY_ADMIN
                } else {
                    reasons::CANCELLED_AFTER_CONFIRMATION
                };
                Ok(vec![OrderEvent::RefundRequested {
                    refund_id: refund_id.clone(),
                    items: left,
                    amount,
                    reason: reason.to_owned(),
                    cancel: true,
                    requested_by: id.user_id.clone(),
                }])
            }
        })
        .await?
        .ok_or(Error::NotFound)?;
    if matches!(order.status, Status::Cancelled | Status::Refunded) {
        return Ok(with_location(StatusCode::OK, &order));
    }
    state.saga.start(order_id);
    Ok(with_location(StatusCode::ACCEPTED, &order))
}

/// `POST /orders/{id}/refunds` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"items": [{"sku": "MUG-001", "qty": 1}], "reason": "one mug arrived broken"}))]
pub struct NewOrderRefund {
    /// 1 to 100 lines of the order, each SKU once, each `qty` at least 1 and at most what
    /// is left of that line.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<RefundLine>,
    /// Why, at most 500 characters (default `refunded by the shop`).
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// The problem `type` of a refund larger than what is left of the order.
pub const REFUND_EXCEEDS: &str = "https://gatehouse.dev/problems/refund-exceeds-order";

fn check_refund(order: &Order, body: &NewOrderRefund) -> Result<String, Error> {
    let mut errors = Vec::new();
    if body.items.is_empty() || body.items.len() > MAX_LINES {
        errors.push(FieldError::new("items", "a refund has 1 to 100 lines"));
    }
    let mut seen = HashSet::new();
    for (i, item) in body.items.iter().enumerate() {
        if !order.items.iter().any(|l| l.sku == item.sku) {
            errors.push(FieldError::new(
                format!("items[{i}].sku"),
                "not a line of this order",
            ));
        } else if !seen.insert(item.sku.as_str()) {
            errors.push(FieldError::new(
                format!("items[{i}].sku"),
                "each SKU may appear once",
            ));
        }
        if item.qty < 1 {
            errors.push(FieldError::new(format!("items[{i}].qty"), "at least 1"));
        }
    }
    let reason = body
        .reason
        .as_deref()
        .map(str::trim)
        .unwrap_or("refunded by the shop");
    if reason.is_empty() || reason.chars().count() > 500 {
        errors.push(FieldError::new("reason", "1 to 500 characters"));
    }
    if errors.is_empty() {
        Ok(reason.to_owned())
    } else {
        Err(Error::Invalid(errors))
    }
}

/// `POST /orders/{id}/refunds` (admin or `orders:admin`; `Idempotency-Key` required).
#[utoipa::path(post, path = "/orders/{id}/refunds", operation_id = "refundOrder", tag = "orders",
    summary = "Refund lines of a confirmed order and return their stock (admin or orders:admin)",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The order's id"),
        kit::openapi::IdempotencyKey,
    ),
    request_body = NewOrderRefund,
    responses(
        (status = 202, description = "Decided: the refund (`status: pending`) is paid back and its stock returned in the background; poll the `Location` until the refund in `refunds` is `completed`. A replay of the same key and request answers the same.",
            body = OrderRefund,
            headers(("Location" = String, description = "`/orders/{id}` of the order"))),
        (status = 400, description = "No Idempotency-Key, a malformed one, or a body that is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The caller is not staff", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The order is not confirmed; or a line would be refunded beyond what is left of it (`type` https://gatehouse.dev/problems/refund-exceeds-order, with `refundable`: what is left of each line); or a request with this Idempotency-Key is still being processed (`Retry-After`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 1 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A field failed validation (a SKU not in the order, a quantity below 1, a reason too long), or the Idempotency-Key was used with another request", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Access tokens cannot be verified right now", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn refund(
    State(state): State<AppState>,
    id: Identity,
    Path(order_id): Path<String>,
    Json(body): Json<NewOrderRefund>,
) -> Result<Response, Error> {
    if !is_staff(&id) {
        return Err(Error::Problem(kit::Problem::forbidden(
            "refunding an order requires the admin role or \"orders:admin\"",
        )));
    }
    let order = state.store.load(&order_id).await?.ok_or(Error::NotFound)?;
    let reason = check_refund(&order, &body)?;
    let refund_id = new_id();
    let order = state
        .store
        .decide(&order_id, |o| {
            if !matches!(o.status, Status::Confirmed | Status::Refunding) {
                return Err(Error::Conflict(format!(
                    "the order is {}: only a confirmed order is refunded",
                    o.status.as_str()
                )));
            }
            let left = o.refundable();
            let exceeds = body.items.iter().any(|want| {
                let have = left.iter().find(|l| l.sku == want.sku).map_or(0, |l| l.qty);
                want.qty > have
            });
            if exceeds {
                return Err(Error::Problem(
                    kit::Problem::conflict("the refund exceeds what is left of the order")
                        .kind(REFUND_EXCEEDS)
                        .with("refundable", &left),
                ));
            }
            let amount = o
                .price_of(&body.items)
                .ok_or_else(|| Error::field("items", "the amount is too large"))?;
            Ok(vec![OrderEvent::RefundRequested {
                refund_id: refund_id.clone(),
                items: body.items.clone(),
                amount,
                reason: reason.clone(),
                cancel: false,
                requested_by: id.user_id.clone(),
            }])
        })
        .await?
        .ok_or(Error::NotFound)?;
    let refund = order
        .refund(&refund_id)
        .cloned()
        .ok_or_else(|| Error::Conflict("the refund was not recorded; try again".into()))?;
    state.saga.start(order_id);
    Ok(located(StatusCode::ACCEPTED, &refund, &order.id))
}
