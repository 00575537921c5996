//! The harness: fake product and payment services, an order service on port 0 over a fresh
//! database, tokens minted by a test key, and client shorthands.

use kit::Service as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use kit::identity::{AccessClaims, LocalKeys, SigningKey, TokenSource};
use kit::testing::{spawn_app, TestApp, TestDb};
use kit::{EventBus, Verifier};
use order_service::saga::SagaSettings;
use order_service::{Service, Settings, SERVICE_PERMISSIONS};
use reqwest::Response;
use serde_json::{json, Value};

use crate::fakes::{FakePayments, FakeProducts};

pub const ISSUER: &str = "gatehouse-user";
pub const AUDIENCE: &str = "gatehouse";

/// Quick deadlines so failure tests finish in seconds, yet long enough that a loaded CI
/// machine (2 cores, every test binary at once) does not miss them on healthy calls.
pub fn fast_saga() -> SagaSettings {
    SagaSettings {
        step_deadline: Duration::from_secs(4),
        max_backoff: Duration::from_millis(200),
        lease: Duration::from_secs(2),
        resume_interval: Duration::from_millis(200),
        crash: None,
    }
}

/// One signing key and a verifier that trusts it, shared by every service of a test.
pub fn keyed() -> (SigningKey, Arc<Verifier>) {
    let key = SigningKey::generate();
    let keys = LocalKeys::new(JwkSet {
        keys: vec![key.public_jwk()],
    });
    (key, Arc::new(Verifier::local(keys, ISSUER, AUDIENCE)))
}

/// The order service under test, over its own database, calling the product and payment
/// services at the given URLs; stoppable and restartable on the same database.
pub struct Orders {
    pub db: TestDb,
    pub key: SigningKey,
    pub verifier: Arc<Verifier>,
    pub bus: Arc<dyn EventBus>,
    pub product_url: String,
    pub payment_url: String,
    pub service: Option<Service>,
    pub app: Option<TestApp>,
    /// The cancellation window the next (re)start uses.
    pub cancel_window: Duration,
}

/// The order service against fakes of the other two.
pub struct World {
    pub orders: Orders,
    pub products: FakeProducts,
    pub payments: FakePayments,
    /// The fakes' servers, serving as long as the world lives.
    _product_app: TestApp,
    _payment_app: TestApp,
}

impl std::ops::Deref for World {
    type Target = Orders;
    fn deref(&self) -> &Orders {
        &self.orders
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut Orders {
        &mut self.orders
    }
}

impl Orders {
    /// Starts the order service on `db`.
    pub async fn start(
        db: TestDb,
        key: SigningKey,
        verifier: Arc<Verifier>,
        product_url: String,
        payment_url: String,
        saga: SagaSettings,
    ) -> Orders {
        let mut o = Orders {
            db,
            key,
            verifier,
            bus: kit::testing::bus().await,
            product_url,
            payment_url,
            service: None,
            app: None,
            cancel_window: order_service::CANCEL_WINDOW,
        };
        o.restart(saga).await;
        o
    }

    pub fn label(&self) -> &'static str {
        self.db.label()
    }

    pub fn settings(&self, saga: SagaSettings) -> Settings {
        Settings {
            product_url: self.product_url.clone(),
            payment_url: self.payment_url.clone(),
            request_timeout: Duration::from_secs(2),
            saga,
            cancel_window: self.cancel_window,
        }
    }

    /// Starts (or restarts) the order service on the same database.
    pub async fn restart(&mut self, saga: SagaSettings) {
        let tokens = TokenSource::signing(
            self.key.clone(),
            ISSUER,
            AUDIENCE,
            "service:order",
            SERVICE_PERMISSIONS,
        );
        let service = Service::start(
            self.db.db.clone(),
            self.settings(saga),
            self.bus.clone(),
            self.verifier.clone(),
            tokens,
        )
        .await
        .expect("order service");
        self.app = Some(spawn_app(service.router()).await);
        self.service = Some(service);
    }

    /// Stops the order service where its sagas are (as a crash would leave them).
    pub async fn stop(&mut self) {
        self.app = None;
        if let Some(s) = self.service.take() {
            s.shutdown().await;
        }
    }

    pub fn app(&self) -> &TestApp {
        self.app.as_ref().expect("order service running")
    }

    pub fn token(&self, sub: &str, roles: &[&str], perms: &[&str]) -> String {
        let now = kit::db::now_ms() / 1000;
        self.key.sign(&AccessClaims {
            sub: sub.into(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: now + 600,
            iat: now,
            jti: kit::db::new_id(),
            sid: "s".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            perms: perms.iter().map(|p| p.to_string()).collect(),
        })
    }

    pub fn customer(&self, sub: &str) -> String {
        self.token(sub, &["customer"], &["orders:read", "orders:write"])
    }

    pub fn admin(&self) -> String {
        self.token("admin-1", &["admin"], &["orders:admin"])
    }

    pub async fn place(&self, token: &str, key: &str, body: Value) -> Response {
        self.app()
            .client
            .post(self.app().url("/orders"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Places `qty` of `sku` paid with `pm`; the order's id.
    pub async fn order(&self, token: &str, sku: &str, qty: i64, pm: &str) -> String {
        let r = self
            .place(
                token,
                &kit::db::new_id(),
                json!({"items": [{"sku": sku, "qty": qty}], "payment_method_id": pm}),
            )
            .await;
        assert_eq!(r.status(), 202, "{}: place", self.label());
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn get(&self, token: &str, path: &str) -> Response {
        self.app()
            .client
            .get(self.app().url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, token: &str, path: &str) -> Response {
        self.app()
            .client
            .post(self.app().url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Polls the order until its status is terminal; the order.
    pub async fn settled(&self, order_id: &str, within: Duration) -> Value {
        self.until(order_id, within, |o| {
            o["status"] == "confirmed" || o["status"] == "cancelled"
        })
        .await
    }

    /// Polls the order until no refund of it is pending; the order.
    pub async fn refunds_done(&self, order_id: &str, within: Duration) -> Value {
        self.until(order_id, within, |o| o["status"] != "refunding")
            .await
    }

    /// Polls the order (as an admin) until `done` says yes; the order.
    pub async fn until(
        &self,
        order_id: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let admin = self.admin();
        let until = Instant::now() + within;
        loop {
            let v: Value = self
                .get(&admin, &format!("/orders/{order_id}"))
                .await
                .json()
                .await
                .unwrap();
            if done(&v) {
                return v;
            }
            assert!(
                Instant::now() < until,
                "{}: order {order_id} did not get there: {v}",
                self.label()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The order rebuilt from its stored events, as JSON.
    pub async fn replayed(&self, order_id: &str) -> Value {
        let store = &self.service.as_ref().unwrap().state.store;
        let events = store.events(order_id).await.unwrap();
        let order = order_service::order::Order::replay(order_id, &events)
            .unwrap()
            .unwrap();
        serde_json::to_value(order).unwrap()
    }
}

impl World {
    pub async fn new(db: TestDb) -> World {
        let (key, verifier) = keyed();
        let products = FakeProducts::new(verifier.clone());
        let payments = FakePayments::new(verifier.clone());
        let product_app = spawn_app(products.router()).await;
        let payment_app = spawn_app(payments.router()).await;
        let orders = Orders::start(
            db,
            key,
            verifier,
            product_app.url(""),
            payment_app.url(""),
            fast_saga(),
        )
        .await;
        World {
            orders,
            products,
            payments,
            _product_app: product_app,
            _payment_app: payment_app,
        }
    }

    /// Nothing reserved or held for a cancelled order, at the other services.
    pub fn assert_nothing_left(&self, order_id: &str) {
        let label = self.label();
        if let Some(r) = self
            .products
            .state
            .reservations
            .lock()
            .unwrap()
            .get(order_id)
        {
            assert_eq!(r.status, "released", "{label}: reservation of {order_id}");
        }
        for i in self.payments.intents_of(order_id) {
            assert!(
                i.status == "canceled" || i.amount_captured == i.amount_refunded,
                "{label}: money left on intent {i:?}"
            );
        }
    }
}

pub async fn problem(r: Response) -> Value {
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    r.json().await.unwrap()
}
