//! The order service against the REAL product and payment services, in-process, each on a
//! fresh database of its own (all three on the same kind: SQLite, or PostgreSQL), every
//! token signed by one test key that all three verifiers trust. Outcomes are checked by
//! asking the other services' APIs, never by reading their databases.

use kit::Service as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kit::db::DbKind;
use kit::testing::{spawn_app, TestApp, TestDb};
use kit::EventBus;
use order_service::saga::SagaSettings;
use payment_service::{Processor, SimulatedProcessor};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{fast_saga, keyed, Orders};

/// Approved at once.
pub const APPROVE: &str = "4242424242424242";
/// Declined `card_declined`.
pub const DECLINE: &str = "4000000000000002";
/// The processor never answers: the payment service's deadline cuts it off.
pub const TIMEOUT: &str = "4000000000000119";

/// A fresh database of the same kind as `like`.
async fn fresh_like(like: &TestDb) -> TestDb {
    match like.db.kind() {
        DbKind::Sqlite => kit::testing::sqlite().await,
        DbKind::Postgres => kit::testing::postgres()
            .await
            .expect("TEST_DATABASE_URL gave the first database"),
    }
}

/// Payment settings for tests: an inline fingerprint key (nothing written to disk) and a
/// processor deadline short enough for the timeout card to fail within a test, long
/// enough for healthy authorizations on a loaded machine.
pub fn payment_settings() -> payment_service::Settings {
    let mut s = payment_service::Settings::new(Path::new("."));
    s.fingerprint_key =
        payment_service::SecretSource::Inline("test fingerprint key, 32 chars..".into());
    s.processor_deadline = Duration::from_millis(1500);
    s.simulator_hang = Duration::from_secs(60);
    s
}

/// The order service (via `Deref`, every shorthand of [`Orders`]) with the real product
/// and payment services behind it.
pub struct RealWorld {
    pub orders: Orders,
    /// Kept running (relay, sweeper) as long as the world lives.
    _products: product_service::Service,
    pub product_app: TestApp,
    /// Each service's own database, dropped (and removed) with the world.
    _product_db: TestDb,
    pub payments: payment_service::Service,
    /// `None` while the payment service is unreachable (see [`RealWorld::payments_down`]).
    pub payment_app: Option<TestApp>,
    _payment_db: TestDb,
}

impl std::ops::Deref for RealWorld {
    type Target = Orders;
    fn deref(&self) -> &Orders {
        &self.orders
    }
}

impl std::ops::DerefMut for RealWorld {
    fn deref_mut(&mut self) -> &mut Orders {
        &mut self.orders
    }
}

impl RealWorld {
    pub async fn new(db: TestDb) -> RealWorld {
        RealWorld::with(db, payment_settings(), fast_saga()).await
    }

    /// Product service with default settings, payment service with `payment` (and the
    /// simulated processor), the order service on `db` with `saga`.
    pub async fn with(
        db: TestDb,
        payment: payment_service::Settings,
        saga: SagaSettings,
    ) -> RealWorld {
        let processor = Arc::new(SimulatedProcessor::new(payment.simulator_hang));
        RealWorld::with_processor(db, payment, processor, saga).await
    }

    /// [`RealWorld::with`] with the payment service's card processor given.
    pub async fn with_processor(
        db: TestDb,
        payment: payment_service::Settings,
        processor: Arc<dyn Processor>,
        saga: SagaSettings,
    ) -> RealWorld {
        let (key, verifier) = keyed();
        let bus: Arc<dyn EventBus> = kit::testing::bus().await;
        let product_db = fresh_like(&db).await;
        let products = product_service::Service::start(
            product_db.db.clone(),
            product_service::Settings::default(),
            verifier.clone(),
            bus.clone(),
        )
        .await
        .expect("product service");
        let product_app = spawn_app(products.router()).await;
        let payment_db = fresh_like(&db).await;
        let state = payment_service::AppState::build_with(
            payment_db.db.clone(),
            payment,
            verifier.clone(),
            processor,
        )
        .await
        .expect("payment service");
        let payments = payment_service::Service::run(state, bus);
        let payment_app = spawn_app(payments.router()).await;
        let orders = Orders::start(
            db,
            key,
            verifier,
            product_app.url(""),
            payment_app.url(""),
            saga,
        )
        .await;
        RealWorld {
            orders,
            _products: products,
            product_app,
            _product_db: product_db,
            payments,
            payment_app: Some(payment_app),
            _payment_db: payment_db,
        }
    }

    /// Stops serving the payment service: its port refuses connections.
    pub fn payments_down(&mut self) {
        self.payment_app = None;
    }

    /// Serves the payment service again, on a new port, which the order service learns at
    /// its next [`Orders::restart`].
    pub async fn payments_up(&mut self) {
        let app = spawn_app(self.payments.router()).await;
        self.orders.payment_url = app.url("");
        self.payment_app = Some(app);
    }

    fn payment_app(&self) -> &TestApp {
        self.payment_app.as_ref().expect("payment service serving")
    }

    /// Creates `sku` at the product service with `price` (EUR cents) and `stock` on hand.
    pub async fn product(&self, sku: &str, price: i64, stock: i64) {
        let r = self
            .product_app
            .client
            .post(self.product_app.url("/products"))
            .bearer_auth(self.admin())
            .json(&json!({
                "sku": sku, "name": format!("Product {sku}"), "category": "things",
                "price": {"amount": price, "currency": "EUR"}, "initial_stock": stock,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}: create {sku}",
            self.label()
        );
    }

    /// A customer `sub` who saved the card `number`: their token and payment method id.
    pub async fn shopper(&self, sub: &str, number: &str) -> (String, String) {
        let token = self.token(
            sub,
            &["customer"],
            &["orders:read", "orders:write", "payments:write"],
        );
        let r = self
            .payment_app()
            .client
            .post(self.payment_app().url("/payment-methods"))
            .bearer_auth(&token)
            .header("idempotency-key", kit::db::new_id())
            .json(
                &json!({"card_number": number, "exp_month": 12, "exp_year": 2040,
                          "cvc": "123", "billing_country": "US"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}: save card",
            self.label()
        );
        let pm = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        (token, pm)
    }

    async fn ask(&self, app: &TestApp, path: &str) -> Response {
        app.client
            .get(app.url(path))
            .bearer_auth(self.admin())
            .send()
            .await
            .unwrap()
    }

    /// `(on_hand, reserved)` of `sku`, from `GET /inventory/{sku}`.
    pub async fn stock(&self, sku: &str) -> (i64, i64) {
        let r = self
            .ask(&self.product_app, &format!("/inventory/{sku}"))
            .await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "{}: stock of {sku}",
            self.label()
        );
        let v: Value = r.json().await.unwrap();
        (
            v["on_hand"].as_i64().unwrap(),
            v["reserved"].as_i64().unwrap(),
        )
    }

    /// The order's reservation, or `None` when the product service has none (404).
    pub async fn reservation(&self, order_id: &str) -> Option<Value> {
        let path = format!("/inventory/reservations/{order_id}");
        let r = self.ask(&self.product_app, &path).await;
        if r.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(r.status(), StatusCode::OK, "{}: {path}", self.label());
        Some(r.json().await.unwrap())
    }

    /// The order's payment intents, from `GET /payment-intents?order_id=`.
    pub async fn intents(&self, order_id: &str) -> Vec<Value> {
        let path = format!("/payment-intents?order_id={order_id}&limit=100");
        let r = self.ask(self.payment_app(), &path).await;
        assert_eq!(r.status(), StatusCode::OK, "{}: {path}", self.label());
        let v: Value = r.json().await.unwrap();
        v["items"].as_array().unwrap().clone()
    }

    /// `GET /ledger/balance` of the payment service.
    pub async fn ledger(&self) -> Value {
        let r = self.ask(self.payment_app(), "/ledger/balance").await;
        assert_eq!(r.status(), StatusCode::OK, "{}: ledger", self.label());
        r.json().await.unwrap()
    }

    /// The ledger balances to zero overall and in every transaction.
    pub async fn assert_ledger_balances(&self) {
        let v = self.ledger().await;
        assert_eq!(v["sum"], 0, "{}: ledger {v}", self.label());
        assert_eq!(
            v["unbalanced_transactions"],
            0,
            "{}: ledger {v}",
            self.label()
        );
    }

    /// Nothing reserved or held for a cancelled order, as the other services tell it: no
    /// reservation, or one released or expired; every intent canceled with nothing
    /// captured.
    pub async fn assert_nothing_left(&self, order_id: &str) {
        let label = self.label();
        if let Some(r) = self.reservation(order_id).await {
            assert!(
                r["status"] == "released" || r["status"] == "expired",
                "{label}: reservation of {order_id} still holds stock: {r}"
            );
        }
        for i in self.intents(order_id).await {
            assert_eq!(
                i["status"], "canceled",
                "{label}: intent of {order_id}: {i}"
            );
            assert_eq!(
                i["amount_captured"], 0,
                "{label}: intent of {order_id}: {i}"
            );
        }
    }
}
