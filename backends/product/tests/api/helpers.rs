//! The harness: a product service on port 0 over a fresh database, tokens minted by a test
//! key, and client shorthands.

use kit::Service as _;
use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use kit::identity::{AccessClaims, LocalKeys, SigningKey};
use kit::testing::{spawn_app, TestApp, TestDb};
use kit::{EventBus, Verifier};
use product_service::{router, AppState, Service, Settings};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

pub struct TestProduct {
    pub app: TestApp,
    pub state: AppState,
    pub db: TestDb,
    pub admin: String,
    pub customer: String,
    /// The order service's token: `inventory:reserve` only.
    pub service: String,
    /// The running service (relay, invalidator, sweeper) when spawned with [`start`].
    pub running: Option<Service>,
    key: SigningKey,
}

fn token(key: &SigningKey, sub: &str, roles: &[&str], perms: &[&str]) -> String {
    let now = kit::db::now_ms() / 1000;
    key.sign(&AccessClaims {
        sub: sub.into(),
        iss: "gatehouse-user".into(),
        aud: "gatehouse".into(),
        exp: now + 600,
        iat: now,
        jti: kit::db::new_id(),
        sid: "s".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        perms: perms.iter().map(|p| p.to_string()).collect(),
    })
}

fn keyed() -> (SigningKey, Arc<Verifier>) {
    let key = SigningKey::generate();
    let keys = LocalKeys::new(JwkSet {
        keys: vec![key.public_jwk()],
    });
    let verifier = Verifier::local(keys, "gatehouse-user", "gatehouse");
    (key, Arc::new(verifier))
}

fn with_tokens(key: &SigningKey, db: TestDb, state: AppState, app: TestApp) -> TestProduct {
    TestProduct {
        app,
        state,
        db,
        admin: token(key, "admin-1", &["admin"], &[]),
        customer: token(key, "cust-1", &["customer"], &["products:read"]),
        service: token(key, "service:order", &["service"], &["inventory:reserve"]),
        running: None,
        key: key.clone(),
    }
}

/// The router over `AppState::build` alone: no relay, invalidator or sweeper.
pub async fn spawn(db: TestDb) -> TestProduct {
    spawn_with(db, |_| {}).await
}

pub async fn spawn_with(db: TestDb, tweak: impl FnOnce(&mut Settings)) -> TestProduct {
    let (key, verifier) = keyed();
    let mut s = Settings::default();
    tweak(&mut s);
    let state = AppState::build(db.db.clone(), s, verifier)
        .await
        .expect("product service state");
    let app = spawn_app(router(state.clone())).await;
    with_tokens(&key, db, state, app)
}

/// `Service::start` on an in-process bus: events flow, the cache is evicted, the sweeper runs.
pub async fn start(db: TestDb, tweak: impl FnOnce(&mut Settings)) -> TestProduct {
    let (key, verifier) = keyed();
    let mut s = Settings::default();
    tweak(&mut s);
    let bus: Arc<dyn EventBus> = kit::testing::bus().await;
    let service = Service::start(db.db.clone(), s, verifier, bus)
        .await
        .expect("product service");
    let app = spawn_app(service.router()).await;
    let mut t = with_tokens(&key, db, service.state.clone(), app);
    t.running = Some(service);
    t
}

impl TestProduct {
    /// A token with exactly `roles` and `perms`.
    pub fn token(&self, roles: &[&str], perms: &[&str]) -> String {
        token(&self.key, "someone", roles, perms)
    }

    /// Polls `GET path` (public) until `done` says yes about (status, body); panics after 5 s.
    pub async fn eventually(
        &self,
        path: &str,
        what: &str,
        done: impl Fn(StatusCode, &Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let r = self.get(path).await;
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if done(status, &body) {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: {what} did not happen within 5 s (last: {status} {body})",
                self.label()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn label(&self) -> &'static str {
        self.db.label()
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.app.client.request(method, self.app.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send(Method::GET, path, None, None).await
    }

    pub async fn get_as(&self, path: &str, token: &str) -> Response {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn post_as(&self, path: &str, token: &str, body: Value) -> Response {
        self.send(Method::POST, path, Some(token), Some(body)).await
    }

    /// Creates a product as admin and returns it.
    pub async fn create(&self, sku: &str, stock: i64) -> Value {
        let r = self
            .post_as("/products", &self.admin, product_body(sku, stock))
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}: create {sku}",
            self.label()
        );
        r.json().await.unwrap()
    }

    /// `(on_hand, reserved, available)` of `sku`.
    pub async fn stock(&self, sku: &str) -> (i64, i64, i64) {
        let r = self.get_as(&format!("/inventory/{sku}"), &self.admin).await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "{}: stock of {sku}",
            self.label()
        );
        let v: Value = r.json().await.unwrap();
        let n = |k: &str| v[k].as_i64().unwrap();
        (n("on_hand"), n("reserved"), n("available"))
    }

    pub async fn reserve(&self, order_id: &str, items: Value) -> Response {
        self.post_as(
            "/inventory/reservations",
            &self.service,
            json!({ "order_id": order_id, "items": items }),
        )
        .await
    }

    /// The topics recorded in the outbox, oldest first.
    pub async fn topics(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT topic FROM kit_outbox ORDER BY id")
            .fetch_all(self.db.db.pool())
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.running.take() {
            s.shutdown().await;
        }
    }
}

pub fn product_body(sku: &str, stock: i64) -> Value {
    json!({
        "sku": sku,
        "name": format!("Product {sku}"),
        "description": "A thing",
        "category": "things",
        "price": { "amount": 1999, "currency": "EUR" },
        "initial_stock": stock,
    })
}

pub async fn problem(r: Response) -> Value {
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "errors are problem+json"
    );
    r.json().await.unwrap()
}
