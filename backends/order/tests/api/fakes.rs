//! Small in-process product and payment services that follow the commerce contract for
//! what the order saga uses (prices, reservations, payment intents), with switches to
//! inject failures. They verify the bearer token and the permission like the real ones.
//!
//! Handlers answer early with a `Response` in `Err`: its size does not matter in a fake.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kit::{Identity, Verifier};
use serde::Deserialize;
use serde_json::{json, Value};

fn problem(status: StatusCode, detail: &str) -> Response {
    kit::Problem::new(status).detail(detail).into_response()
}

fn allowed(id: &Identity, perm: &str) -> Result<(), Response> {
    if id.has_permission(perm) || id.has_role("admin") {
        Ok(())
    } else {
        Err(problem(StatusCode::FORBIDDEN, perm))
    }
}

// ---------------------------------------------------------------- product service

#[derive(Clone, Debug)]
pub struct Stock {
    pub price: i64,
    pub currency: String,
    pub on_hand: i64,
    pub reserved: i64,
}

#[derive(Clone, Debug)]
pub struct Reservation {
    pub items: Vec<(String, i64)>,
    pub status: &'static str,
}

#[derive(Default)]
pub struct ProductState {
    pub stock: Mutex<HashMap<String, Stock>>,
    pub reservations: Mutex<HashMap<String, Reservation>>,
    /// Answer every commit with 409, as for an expired reservation.
    pub refuse_commit: AtomicBool,
    /// Answer every request with 503.
    pub down: AtomicBool,
}

#[derive(Clone)]
pub struct FakeProducts {
    pub state: Arc<ProductState>,
    verifier: Arc<Verifier>,
}

impl axum::extract::FromRef<FakeProducts> for Arc<Verifier> {
    fn from_ref(s: &FakeProducts) -> Arc<Verifier> {
        s.verifier.clone()
    }
}

impl FakeProducts {
    pub fn new(verifier: Arc<Verifier>) -> FakeProducts {
        FakeProducts {
            state: Arc::default(),
            verifier,
        }
    }

    pub fn add(&self, sku: &str, price: i64, on_hand: i64) {
        self.state.stock.lock().unwrap().insert(
            sku.to_owned(),
            Stock {
                price,
                currency: "EUR".into(),
                on_hand,
                reserved: 0,
            },
        );
    }

    pub fn stock(&self, sku: &str) -> Stock {
        self.state.stock.lock().unwrap()[sku].clone()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/products", get(products))
            .route("/inventory/reservations", post(reserve))
            .route(
                "/inventory/reservations/{order_id}",
                get(reservation).delete(release),
            )
            .route("/inventory/reservations/{order_id}/commit", post(commit))
            .route("/inventory/{sku}", get(inventory))
            .with_state(self.clone())
    }
}

fn down(s: &ProductState) -> Result<(), Response> {
    if s.down.load(Ordering::SeqCst) {
        Err(problem(StatusCode::SERVICE_UNAVAILABLE, "down"))
    } else {
        Ok(())
    }
}

#[derive(Deserialize)]
struct ProductQuery {
    sku: Option<String>,
}

async fn products(
    State(f): State<FakeProducts>,
    _id: Identity,
    Query(q): Query<ProductQuery>,
) -> Response {
    // `down` takes only the inventory endpoints away: pricing keeps answering, so a test can
    // place an order whose very first saga step meets the outage.
    let stock = f.state.stock.lock().unwrap();
    let items: Vec<Value> = stock
        .iter()
        .filter(|(sku, _)| q.sku.as_ref().is_none_or(|s| s == *sku))
        .map(|(sku, s)| json!({"sku": sku, "price": {"amount": s.price, "currency": s.currency}}))
        .collect();
    Json(json!({"items": items, "next_cursor": null})).into_response()
}

async fn inventory(State(f): State<FakeProducts>, Path(sku): Path<String>) -> Response {
    match f.state.stock.lock().unwrap().get(&sku) {
        Some(s) => Json(
            json!({"sku": sku, "on_hand": s.on_hand, "reserved": s.reserved,
            "available": s.on_hand - s.reserved}),
        )
        .into_response(),
        None => problem(StatusCode::NOT_FOUND, "no such sku"),
    }
}

#[derive(Deserialize)]
struct ReserveBody {
    order_id: String,
    items: Vec<ItemBody>,
}

#[derive(Deserialize)]
struct ItemBody {
    sku: String,
    qty: i64,
}

fn reservation_json(order_id: &str, r: &Reservation) -> Value {
    let items: Vec<Value> = r
        .items
        .iter()
        .map(|(sku, qty)| json!({"sku": sku, "qty": qty}))
        .collect();
    json!({"order_id": order_id, "status": r.status, "items": items,
        "expires_at": kit::db::now_ms() + 900_000})
}

async fn reserve(
    State(f): State<FakeProducts>,
    id: Identity,
    Json(b): Json<ReserveBody>,
) -> Response {
    if let Err(r) = down(&f.state).and_then(|()| allowed(&id, "inventory:reserve")) {
        return r;
    }
    let mut stock = f.state.stock.lock().unwrap();
    let mut reservations = f.state.reservations.lock().unwrap();
    if let Some(r) = reservations.get(&b.order_id) {
        return (StatusCode::OK, Json(reservation_json(&b.order_id, r))).into_response();
    }
    for item in &b.items {
        let Some(s) = stock.get(&item.sku) else {
            return problem(StatusCode::UNPROCESSABLE_ENTITY, "unknown sku");
        };
        if s.on_hand - s.reserved < item.qty {
            return kit::Problem::conflict("not enough stock")
                .kind("https://gatehouse.dev/problems/out-of-stock")
                .with("sku", &item.sku)
                .into_response();
        }
    }
    for item in &b.items {
        if let Some(s) = stock.get_mut(&item.sku) {
            s.reserved += item.qty;
        }
    }
    let r = Reservation {
        items: b.items.iter().map(|i| (i.sku.clone(), i.qty)).collect(),
        status: "reserved",
    };
    let body = reservation_json(&b.order_id, &r);
    reservations.insert(b.order_id, r);
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn reservation(State(f): State<FakeProducts>, Path(order_id): Path<String>) -> Response {
    match f.state.reservations.lock().unwrap().get(&order_id) {
        Some(r) => Json(reservation_json(&order_id, r)).into_response(),
        None => problem(StatusCode::NOT_FOUND, "no such reservation"),
    }
}

async fn commit(
    State(f): State<FakeProducts>,
    id: Identity,
    Path(order_id): Path<String>,
) -> Response {
    if let Err(r) = down(&f.state).and_then(|()| allowed(&id, "inventory:reserve")) {
        return r;
    }
    let mut stock = f.state.stock.lock().unwrap();
    let mut reservations = f.state.reservations.lock().unwrap();
    let Some(r) = reservations.get_mut(&order_id) else {
        return problem(StatusCode::NOT_FOUND, "no such reservation");
    };
    match r.status {
        "committed" => {}
        "reserved" if !f.state.refuse_commit.load(Ordering::SeqCst) => {
            for (sku, qty) in &r.items {
                if let Some(s) = stock.get_mut(sku) {
                    s.reserved -= qty;
                    s.on_hand -= qty;
                }
            }
            r.status = "committed";
        }
        _ => return problem(StatusCode::CONFLICT, "the reservation is not held"),
    }
    Json(reservation_json(&order_id, r)).into_response()
}

async fn release(
    State(f): State<FakeProducts>,
    id: Identity,
    Path(order_id): Path<String>,
) -> Response {
    if let Err(r) = down(&f.state).and_then(|()| allowed(&id, "inventory:reserve")) {
        return r;
    }
    let mut stock = f.state.stock.lock().unwrap();
    let mut reservations = f.state.reservations.lock().unwrap();
    let Some(r) = reservations.get_mut(&order_id) else {
        return problem(StatusCode::NOT_FOUND, "no such reservation");
    };
    match r.status {
        "committed" => return problem(StatusCode::CONFLICT, "committed"),
        "reserved" => {
            for (sku, qty) in &r.items {
                if let Some(s) = stock.get_mut(sku) {
                    s.reserved -= qty;
                }
            }
            r.status = "released";
        }
        _ => {}
    }
    Json(reservation_json(&order_id, r)).into_response()
}

// ---------------------------------------------------------------- payment service

/// Payment methods of the fake: how its processor answers a confirm.
pub const PM_APPROVE: &str = "pm_approve";
pub const PM_DECLINE: &str = "pm_decline";
/// The processor never answers (the confirm hangs).
pub const PM_TIMEOUT: &str = "pm_timeout";

#[derive(Clone, Debug)]
pub struct Intent {
    pub id: String,
    pub order_id: String,
    pub payment_method_id: String,
    pub status: &'static str,
    pub amount: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub failure_reason: Option<String>,
}

#[derive(Default)]
pub struct PaymentState {
    pub intents: Mutex<Vec<Intent>>,
    /// Idempotency keys of creates → intent id.
    keys: Mutex<HashMap<String, String>>,
    /// Hold every confirm until cleared (an outage between steps).
    pub hold_confirm: AtomicBool,
    pub confirms: AtomicUsize,
    /// The `traceparent` of each capture request (`None` when it had none).
    pub capture_traces: Mutex<Vec<Option<String>>>,
}

#[derive(Clone)]
pub struct FakePayments {
    pub state: Arc<PaymentState>,
    verifier: Arc<Verifier>,
}

impl axum::extract::FromRef<FakePayments> for Arc<Verifier> {
    fn from_ref(s: &FakePayments) -> Arc<Verifier> {
        s.verifier.clone()
    }
}

impl FakePayments {
    pub fn new(verifier: Arc<Verifier>) -> FakePayments {
        FakePayments {
            state: Arc::default(),
            verifier,
        }
    }

    pub fn intents_of(&self, order_id: &str) -> Vec<Intent> {
        let all = self.state.intents.lock().unwrap();
        all.iter()
            .filter(|i| i.order_id == order_id)
            .cloned()
            .collect()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/payment-intents", post(create).get(list))
            .route("/payment-intents/{id}/confirm", post(confirm))
            .route("/payment-intents/{id}/capture", post(capture))
            .route("/payment-intents/{id}/cancel", post(void))
            .route("/payment-intents/{id}/refunds", post(refund))
            .with_state(self.clone())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Intent) -> Result<(), Response>) -> Response {
        let mut all = self.state.intents.lock().unwrap();
        let Some(i) = all.iter_mut().find(|i| i.id == id) else {
            return problem(StatusCode::NOT_FOUND, "no such intent");
        };
        match f(i) {
            Ok(()) => Json(intent_json(i)).into_response(),
            Err(r) => r,
        }
    }
}

fn intent_json(i: &Intent) -> Value {
    json!({"id": i.id, "status": i.status, "amount": i.amount, "currency": "EUR",
        "amount_captured": i.amount_captured, "amount_refunded": i.amount_refunded,
        "failure_reason": i.failure_reason, "order_id": i.order_id})
}

#[derive(Deserialize)]
struct CreateBody {
    payment_method_id: String,
    amount: i64,
    order_id: String,
}

async fn create(
    State(f): State<FakePayments>,
    id: Identity,
    headers: HeaderMap,
    Json(b): Json<CreateBody>,
) -> Response {
    if let Err(r) = allowed(&id, "payments:charge") {
        return r;
    }
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return problem(StatusCode::BAD_REQUEST, "Idempotency-Key required");
    };
    let mut keys = f.state.keys.lock().unwrap();
    let mut all = f.state.intents.lock().unwrap();
    if let Some(existing) = keys
        .get(key)
        .and_then(|id| all.iter().find(|i| &i.id == id))
    {
        return (StatusCode::CREATED, Json(intent_json(existing))).into_response();
    }
    let intent = Intent {
        id: kit::db::new_id(),
        order_id: b.order_id,
        payment_method_id: b.payment_method_id,
        status: "requires_confirmation",
        amount: b.amount,
        amount_captured: 0,
        amount_refunded: 0,
        failure_reason: None,
    };
    keys.insert(key.to_owned(), intent.id.clone());
    let body = intent_json(&intent);
    all.push(intent);
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn confirm(
    State(f): State<FakePayments>,
    id: Identity,
    Path(intent): Path<String>,
) -> Response {
    if let Err(r) = allowed(&id, "payments:charge") {
        return r;
    }
    f.state.confirms.fetch_add(1, Ordering::SeqCst);
    let method = {
        let all = f.state.intents.lock().unwrap();
        all.iter()
            .find(|i| i.id == intent)
            .map(|i| i.payment_method_id.clone())
    };
    while f.state.hold_confirm.load(Ordering::SeqCst) || method.as_deref() == Some(PM_TIMEOUT) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.update(&intent, |i| {
        if i.status == "requires_confirmation" {
            if i.payment_method_id == PM_DECLINE {
                i.status = "canceled";
                i.failure_reason = Some("card_declined".into());
            } else {
                i.status = "requires_capture";
            }
        }
        Ok(())
    })
}

async fn capture(
    State(f): State<FakePayments>,
    id: Identity,
    headers: HeaderMap,
    Path(intent): Path<String>,
) -> Response {
    if let Err(r) = allowed(&id, "payments:charge") {
        return r;
    }
    let trace = headers.get("traceparent").and_then(|v| v.to_str().ok());
    f.state
        .capture_traces
        .lock()
        .unwrap()
        .push(trace.map(str::to_owned));
    f.update(&intent, |i| match i.status {
        "requires_capture" => {
            i.status = "succeeded";
            i.amount_captured = i.amount;
            Ok(())
        }
        "succeeded" => Ok(()),
        _ => Err(problem(StatusCode::CONFLICT, "not capturable")),
    })
}

async fn void(State(f): State<FakePayments>, id: Identity, Path(intent): Path<String>) -> Response {
    if let Err(r) = allowed(&id, "payments:charge") {
        return r;
    }
    f.update(&intent, |i| match i.status {
        "succeeded" => Err(problem(StatusCode::CONFLICT, "captured")),
        _ => {
            i.status = "canceled";
            Ok(())
        }
    })
}

#[derive(Deserialize)]
struct RefundBody {
    amount: i64,
}

async fn refund(
    State(f): State<FakePayments>,
    id: Identity,
    Path(intent): Path<String>,
    Json(b): Json<RefundBody>,
) -> Response {
    if let Err(r) = allowed(&id, "payments:refund") {
        return r;
    }
    f.update(&intent, |i| {
        if i.amount_refunded + b.amount > i.amount_captured {
            return Err(problem(StatusCode::CONFLICT, "more than captured"));
        }
        i.amount_refunded += b.amount;
        Ok(())
    })
}

#[derive(Deserialize)]
struct ListQuery {
    order_id: Option<String>,
}

async fn list(State(f): State<FakePayments>, id: Identity, Query(q): Query<ListQuery>) -> Response {
    if let Err(r) = allowed(&id, "payments:charge") {
        return r;
    }
    let all = f.state.intents.lock().unwrap();
    let items: Vec<Value> = all
        .iter()
        .filter(|i| q.order_id.as_ref().is_none_or(|o| &i.order_id == o))
        .map(intent_json)
        .collect();
    Json(json!({"items": items, "next_cursor": null})).into_response()
}
