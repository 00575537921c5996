//! The product and payment services as the saga sees them: two traits, so the saga can
//! be driven against fakes, and their HTTP implementations following the commerce
//! contract.
//!
//! Every command is retry-safe: reservations are idempotent by order id at the product
//! service, and every payment POST carries `Idempotency-Key: {order_id}:{step}`, so a
//! retried or resumed step never acts twice.
//!
//! Errors are sorted into the two kinds the saga treats differently: [`StepError::Transient`]
//! (network, timeout, 5xx, 429, an idempotency key still in flight, a refused token: the
//! step is retried until its deadline) and [`StepError::Rejected`] (the other service said
//! no for good: out of stock, declined card: the order is compensated at once).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::order::reasons;
use kit::identity::TokenSource;

/// Why a call to another service did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// It may work if tried again (the other service is down, slow, or busy).
    #[error("transient: {0}")]
    Transient(String),
    /// It will not work: `reason` is the order's cancel reason.
    #[error("rejected ({reason}): {detail}")]
    Rejected {
        /// A reason from [`reasons`] (with its suffix).
        reason: String,
        /// What the other service said.
        detail: String,
    },
}

/// A product's price as the product service quotes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Price {
    /// Minor units.
    pub amount: i64,
    /// ISO-4217.
    pub currency: String,
}

/// A SKU and how many.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Item {
    /// The product's SKU.
    pub sku: String,
    /// How many.
    pub qty: i64,
}

/// The product service: prices and stock reservations.
#[async_trait]
pub trait Inventory: Send + Sync + 'static {
    /// The current price of each SKU that exists; unknown SKUs are left out.
    async fn prices(&self, skus: &[String]) -> Result<HashMap<String, Price>, StepError>;
    /// Holds `items` for `order_id`, all or nothing; the reservation's expiry (Unix ms).
    async fn reserve(&self, order_id: &str, items: &[Item]) -> Result<i64, StepError>;
    /// Takes the reserved stock out of inventory.
    async fn commit(&self, order_id: &str) -> Result<(), StepError>;
    /// Gives the reserved stock back; a reservation that never existed is released too.
    async fn release(&self, order_id: &str) -> Result<(), StepError>;
    /// Gives `items` of the committed stock of `order_id` back to inventory, once per
    /// `return_id` (repeating it adds nothing more).
    async fn return_stock(
        &self,
        order_id: &str,
        return_id: &str,
        items: &[Item],
        reason: &str,
    ) -> Result<(), StepError>;
}

/// A payment intent as the saga needs it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Intent {
    /// Its id.
    pub id: String,
    /// `requires_confirmation`, `requires_capture`, `processing`, `succeeded`, `canceled`…
    pub status: String,
    /// Minor units authorized.
    #[serde(default)]
    pub amount: i64,
    /// Minor units captured.
    #[serde(default)]
    pub amount_captured: i64,
    /// Minor units refunded.
    #[serde(default)]
    pub amount_refunded: i64,
    /// Why it was canceled by the processor or the fraud rules.
    #[serde(default)]
    pub failure_reason: Option<String>,
}

/// What the saga asks the payment service to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewIntent {
    /// The order (also the idempotency key's prefix).
    pub order_id: String,
    /// Who pays.
    pub customer_id: String,
    /// With what.
    pub payment_method_id: String,
    /// Minor units.
    pub amount: i64,
    /// ISO-4217.
    pub currency: String,
}

/// The payment service: authorize, capture, void, refund, and look.
#[async_trait]
pub trait Payments: Send + Sync + 'static {
    /// Creates the order's intent (manual capture).
    async fn create(&self, intent: &NewIntent) -> Result<Intent, StepError>;
    /// Authorizes it; whatever the processor answered.
    async fn confirm(&self, order_id: &str, intent_id: &str) -> Result<Intent, StepError>;
    /// Captures `amount`.
    async fn capture(
        &self,
        order_id: &str,
        intent_id: &str,
        amount: i64,
    ) -> Result<Intent, StepError>;
    /// Voids the authorization.
    async fn void(&self, order_id: &str, intent_id: &str) -> Result<Intent, StepError>;
    /// Refunds `amount` of a captured intent, once per `key` (the idempotency key is
    /// `{order_id}:{key}`).
    async fn refund(
        &self,
        order_id: &str,
        intent_id: &str,
        key: &str,
        amount: i64,
    ) -> Result<(), StepError>;
    /// Every intent created for `order_id`.
    async fn for_order(&self, order_id: &str) -> Result<Vec<Intent>, StepError>;
}

/// What both HTTP clients share: a base URL, a client with a per-request timeout, and the
/// service token.
#[derive(Clone)]
struct Http {
    base: String,
    client: reqwest::Client,
    token: TokenSource,
}

impl Http {
    fn new(base: &str, timeout: Duration, token: TokenSource) -> Http {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .unwrap_or_default();
        Http {
            base: base.trim_end_matches('/').to_owned(),
            client,
            token,
        }
    }

    async fn request(&self, method: Method, path: &str) -> Result<RequestBuilder, StepError> {
        let token = self
            .token
            .bearer()
            .await
            .map_err(|e| StepError::Transient(format!("no service token: {e}")))?;
        Ok(self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token))
    }

    /// Sends (a client span in the current trace: [`kit::trace::send`]) and sorts the
    /// failure: transport errors, 5xx, 408, 429, 401, 403 and an
    /// idempotency key in flight are transient; other answers are handed back.
    async fn send(&self, req: RequestBuilder, what: &str) -> Result<Response, StepError> {
        let resp = kit::trace::send(req)
            .await
            .map_err(|e| StepError::Transient(format!("{what}: {e}")))?;
        let s = resp.status();
        let transient = s.is_server_error()
            || matches!(
                s,
                StatusCode::REQUEST_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::UNAUTHORIZED
                    | StatusCode::FORBIDDEN
            );
        if transient {
            let body = resp.text().await.unwrap_or_default();
            return Err(StepError::Transient(format!("{what}: {s} {body}")));
        }
        Ok(resp)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        resp: Response,
        what: &str,
    ) -> Result<T, StepError> {
        resp.json::<T>()
            .await
            .map_err(|e| StepError::Transient(format!("{what}: unexpected answer: {e}")))
    }
}

/// A problem body's members, for sorting 4xx answers.
async fn problem(resp: Response) -> (StatusCode, Value) {
    let s = resp.status();
    (s, resp.json::<Value>().await.unwrap_or(Value::Null))
}

fn rejected(reason: String, status: StatusCode, body: &Value) -> StepError {
    let detail = body
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or(""));
    StepError::Rejected {
        reason,
        detail: format!("{status}: {detail}"),
    }
}

/// A 409 of the kit's idempotency layer: the same key is still being served.
fn key_in_flight(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::CONFLICT
        && body.get("title").and_then(Value::as_str) == Some("Idempotency-Key in use")
}

/// The product service over HTTP.
#[derive(Clone)]
pub struct HttpInventory(Http);

impl HttpInventory {
    /// Talks to `base` (e.g. `http://127.0.0.1:3002`) with `token`, each request bounded by
    /// `timeout`.
    pub fn new(base: &str, timeout: Duration, token: TokenSource) -> HttpInventory {
        HttpInventory(Http::new(base, timeout, token))
    }
}

/// The problem `type` of the product service's out-of-stock 409.
pub const OUT_OF_STOCK_TYPE: &str = "https://gatehouse.dev/problems/out-of-stock";

#[async_trait]
impl Inventory for HttpInventory {
    async fn prices(&self, skus: &[String]) -> Result<HashMap<String, Price>, StepError> {
        #[derive(Deserialize)]
        struct Product {
            sku: String,
            price: Price,
        }
        #[derive(Deserialize)]
        struct Page {
            items: Vec<Product>,
        }
        let mut out = HashMap::new();
        for sku in skus {
            let req = self
                .0
                .request(Method::GET, "/products")
                .await?
                .query(&[("sku", sku.as_str()), ("limit", "1")]);
            let resp = self.0.send(req, "GET /products").await?;
            if !resp.status().is_success() {
                let (s, body) = problem(resp).await;
                return Err(StepError::Transient(format!("GET /products: {s} {body}")));
            }
            let page: Page = Http::json(resp, "GET /products").await?;
            if let Some(p) = page.items.into_iter().find(|p| &p.sku == sku) {
                out.insert(p.sku, p.price);
            }
        }
        Ok(out)
    }

    async fn reserve(&self, order_id: &str, items: &[Item]) -> Result<i64, StepError> {
        #[derive(Deserialize)]
        struct Reservation {
            status: String,
            expires_at: i64,
        }
        let what = "POST /inventory/reservations";
        let req = self
            .0
            .request(Method::POST, "/inventory/reservations")
            .await?
            .json(&json!({ "order_id": order_id, "items": items }));
        let resp = self.0.send(req, what).await?;
        if resp.status().is_success() {
            let r: Reservation = Http::json(resp, what).await?;
            return match r.status.as_str() {
                "reserved" | "committed" => Ok(r.expires_at),
                other => Err(StepError::Rejected {
                    reason: format!("{}:reservation_{other}", reasons::REJECTED),
                    detail: format!("the reservation is {other}"),
                }),
            };
        }
        let (s, body) = problem(resp).await;
        if body.get("type").and_then(Value::as_str) == Some(OUT_OF_STOCK_TYPE) {
            return Err(rejected(reasons::OUT_OF_STOCK.to_owned(), s, &body));
        }
        if key_in_flight(s, &body) {
            return Err(StepError::Transient(format!("{what}: {s}")));
        }
        Err(rejected(format!("{}:reserve", reasons::REJECTED), s, &body))
    }

    async fn commit(&self, order_id: &str) -> Result<(), StepError> {
        let path = format!("/inventory/reservations/{order_id}/commit");
        let req = self.0.request(Method::POST, &path).await?;
        let resp = self.0.send(req, &path).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        let (s, body) = problem(resp).await;
        if key_in_flight(s, &body) {
            return Err(StepError::Transient(format!("{path}: {s}")));
        }
        Err(rejected(format!("{}:commit", reasons::REJECTED), s, &body))
    }

    async fn release(&self, order_id: &str) -> Result<(), StepError> {
        let path = format!("/inventory/reservations/{order_id}");
        let req = self.0.request(Method::DELETE, &path).await?;
        let resp = self.0.send(req, &path).await?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        let (s, body) = problem(resp).await;
        Err(rejected(format!("{}:release", reasons::REJECTED), s, &body))
    }

    async fn return_stock(
        &self,
        order_id: &str,
        return_id: &str,
        items: &[Item],
        reason: &str,
    ) -> Result<(), StepError> {
        let path = format!("/inventory/reservations/{order_id}/returns");
        let body = json!({ "return_id": return_id, "items": items, "reason": reason });
        let req = self.0.request(Method::POST, &path).await?.json(&body);
        let resp = self.0.send(req, &path).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        let (s, body) = problem(resp).await;
        Err(rejected(
            format!("{}:return_stock", reasons::REJECTED),
            s,
            &body,
        ))
    }
}

/// The payment service over HTTP.
#[derive(Clone)]
pub struct HttpPayments(Http);

impl HttpPayments {
    /// Talks to `base` (e.g. `http://127.0.0.1:3004`) with `token`, each request bounded by
    /// `timeout`.
    pub fn new(base: &str, timeout: Duration, token: TokenSource) -> HttpPayments {
        HttpPayments(Http::new(base, timeout, token))
    }

    /// POSTs `body` to `path` with the key `{order_id}:{step}` and reads the intent.
    async fn command(
        &self,
        path: &str,
        order_id: &str,
        step: &str,
        body: Value,
    ) -> Result<Intent, StepError> {
        let req = self
            .0
            .request(Method::POST, path)
            .await?
            .header("idempotency-key", format!("{order_id}:{step}"))
            .json(&body);
        let resp = self.0.send(req, path).await?;
        if resp.status().is_success() {
            return Http::json(resp, path).await;
        }
        let (s, body) = problem(resp).await;
        if key_in_flight(s, &body) {
            return Err(StepError::Transient(format!("{path}: {s}")));
        }
        let reason = match step {
            "create" | "authorize" => {
                let why = body
                    .get("failure_reason")
                    .or_else(|| body.get("code"))
                    .and_then(Value::as_str)
                    .unwrap_or("refused");
                format!("{}:{why}", reasons::PAYMENT_FAILED)
            }
            _ => format!("{}:{step}", reasons::REJECTED),
        };
        Err(rejected(reason, s, &body))
    }
}

#[async_trait]
impl Payments for HttpPayments {
    async fn create(&self, i: &NewIntent) -> Result<Intent, StepError> {
        let body = json!({
            "customer_id": i.customer_id,
            "payment_method_id": i.payment_method_id,
            "amount": i.amount,
            "currency": i.currency,
            "order_id": i.order_id,
            "capture_method": "manual",
        });
        self.command("/payment-intents", &i.order_id, "create", body)
            .await
    }

    async fn confirm(&self, order_id: &str, intent_id: &str) -> Result<Intent, StepError> {
        let path = format!("/payment-intents/{intent_id}/confirm");
        self.command(&path, order_id, "authorize", json!({})).await
    }

    async fn capture(
        &self,
        order_id: &str,
        intent_id: &str,
        amount: i64,
    ) -> Result<Intent, StepError> {
        let path = format!("/payment-intents/{intent_id}/capture");
        self.command(&path, order_id, "capture", json!({ "amount": amount }))
            .await
    }

    async fn void(&self, order_id: &str, intent_id: &str) -> Result<Intent, StepError> {
        let path = format!("/payment-intents/{intent_id}/cancel");
        self.command(&path, order_id, "void", json!({})).await
    }

    async fn refund(
        &self,
        order_id: &str,
        intent_id: &str,
        key: &str,
        amount: i64,
    ) -> Result<(), StepError> {
        let path = format!("/payment-intents/{intent_id}/refunds");
        let req = self
            .0
            .request(Method::POST, &path)
            .await?
            .header("idempotency-key", format!("{order_id}:{key}"))
            .json(&json!({ "amount": amount }));
        let resp = self.0.send(req, &path).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        let (s, body) = problem(resp).await;
        if key_in_flight(s, &body) {
            return Err(StepError::Transient(format!("{path}: {s}")));
        }
        Err(rejected(format!("{}:refund", reasons::REJECTED), s, &body))
    }

    async fn for_order(&self, order_id: &str) -> Result<Vec<Intent>, StepError> {
        #[derive(Deserialize)]
        struct Page {
            items: Vec<Intent>,
        }
        let what = "GET /payment-intents";
        let req = self
            .0
            .request(Method::GET, "/payment-intents")
            .await?
            .query(&[("order_id", order_id), ("limit", "100")]);
        let resp = self.0.send(req, what).await?;
        if !resp.status().is_success() {
            let (s, body) = problem(resp).await;
            return Err(StepError::Transient(format!("{what}: {s} {body}")));
        }
        Ok(Http::json::<Page>(resp, what).await?.items)
    }
}
