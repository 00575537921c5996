//! The harness: a payment service on port 0 over a fresh database, tokens minted with a
//! test signing key, and client shorthands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use kit::identity::{AccessClaims, LocalKeys, SigningKey};
use kit::testing::{spawn_app, TestApp, TestDb};
use kit::Verifier;
use payment_service::cards::CardNumber;
use payment_service::processor::{Authorization, Authorize, ProcessorError, Tokenized};
use payment_service::{
    router, AppState, AuthorizationState, Processor, SecretSource, Settings, SimulatedProcessor,
};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

pub const VISA: &str = "4242424242424242";
pub const DECLINE: &str = "4000000000000002";
pub const REVIEW: &str = "4000000000009235";
pub const TIMEOUT: &str = "4000000000000119";
pub const BRAZIL: &str = "4000000760000002";

pub struct TestPay {
    pub app: TestApp,
    pub state: AppState,
    pub db: TestDb,
    pub key: SigningKey,
    pub processor: Arc<SimulatedProcessor>,
    pub next_key: std::sync::atomic::AtomicU64,
}

pub fn settings() -> Settings {
    let dir = std::env::temp_dir();
    let mut s = Settings::new(&dir);
    s.fingerprint_key = SecretSource::Inline("test fingerprint key, 32 chars..".into());
    s.processor_deadline = Duration::from_millis(300);
    s
}

pub async fn spawn(db: TestDb) -> TestPay {
    spawn_with(db, |_| {}).await
}

pub async fn spawn_with(db: TestDb, tweak: impl FnOnce(&mut Settings)) -> TestPay {
    spawn_wrapped(db, tweak, |p| p).await
}

/// [`spawn_with`] whose service talks to the simulator through `wrap` (a processor that
/// fails on purpose); `TestPay::processor` is still the simulator itself.
pub async fn spawn_wrapped(
    db: TestDb,
    tweak: impl FnOnce(&mut Settings),
    wrap: impl FnOnce(Arc<SimulatedProcessor>) -> Arc<dyn payment_service::Processor>,
) -> TestPay {
    let mut s = settings();
    tweak(&mut s);
    let key = SigningKey::generate();
    let verifier = Verifier::local(
        LocalKeys::new(JwkSet {
            keys: vec![key.public_jwk()],
        }),
        "gatehouse-user",
        "gatehouse",
    );
    let processor = Arc::new(SimulatedProcessor::new(Duration::from_secs(30)));
    let state = AppState::build_with(
        db.db.clone(),
        s,
        Arc::new(verifier),
        wrap(processor.clone()),
    )
    .await
    .expect("payment service state");
    let app = spawn_app(router(state.clone())).await;
    TestPay {
        app,
        state,
        db,
        key,
        processor,
        next_key: Default::default(),
    }
}

impl TestPay {
    /// The service started again over the same database and processor (the state a
    /// restarted process builds; its recovery task is what tests then run).
    pub async fn restarted(&self) -> AppState {
        let verifier = Verifier::local(
            LocalKeys::new(JwkSet {
                keys: vec![self.key.public_jwk()],
            }),
            "gatehouse-user",
            "gatehouse",
        );
        AppState::build_with(
            self.db.db.clone(),
            settings(),
            Arc::new(verifier),
            self.processor.clone(),
        )
        .await
        .expect("payment service state after a restart")
    }

    pub fn label(&self) -> &'static str {
        self.db.label()
    }

    pub fn token(&self, sub: &str, roles: &[&str], perms: &[&str]) -> String {
        let now = kit::db::now_ms() / 1000;
        self.key.sign(&AccessClaims {
            sub: sub.into(),
            iss: "gatehouse-user".into(),
            aud: "gatehouse".into(),
            exp: now + 900,
            iat: now,
            jti: kit::db::new_id(),
            sid: "s1".into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            perms: perms.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// A customer's token.
    pub fn customer(&self, sub: &str) -> String {
        self.token(sub, &["customer"], &["payments:write"])
    }

    /// The order service's token.
    pub fn service(&self) -> String {
        self.token(
            "service:order",
            &["service"],
            &["payments:charge", "payments:refund"],
        )
    }

    pub fn admin(&self) -> String {
        self.token("admin-1", &["admin"], &[])
    }

    pub fn fresh_key(&self) -> String {
        let n = self
            .next_key
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        format!("key-{n}-{}", kit::db::new_id())
    }

    /// POST with a fresh Idempotency-Key.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.post_keyed(path, token, &self.fresh_key(), body).await
    }

    pub async fn post_keyed(&self, path: &str, token: &str, key: &str, body: Value) -> Response {
        self.app
            .client
            .post(self.app.url(path))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.app
            .client
            .get(self.app.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Saves `number` for the customer whose token this is; returns the method's id.
    pub async fn card(&self, token: &str, number: &str) -> String {
        self.card_in(token, number, "US").await
    }

    pub async fn card_in(&self, token: &str, number: &str, billing_country: &str) -> String {
        let r = self
            .post(
                "/payment-methods",
                token,
                json!({ "card_number": number, "exp_month": 12, "exp_year": 2030,
                        "cvc": if number.starts_with("37") { "1234" } else { "123" },
                        "billing_country": billing_country }),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}: save card",
            self.label()
        );
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Creates an intent for `customer` with the service token; returns the intent.
    pub async fn intent(&self, customer: &str, method: &str, amount: i64) -> Value {
        let r = self
            .post(
                "/payment-intents",
                &self.service(),
                json!({ "customer_id": customer, "payment_method_id": method,
                        "amount": amount, "currency": "EUR", "capture_method": "manual" }),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}: create intent",
            self.label()
        );
        r.json().await.unwrap()
    }

    /// POST `/payment-intents/{id}/{action}` with the service token; status and body.
    pub async fn act(&self, id: &str, action: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .post(
                &format!("/payment-intents/{id}/{action}"),
                &self.service(),
                body,
            )
            .await;
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    /// A customer `sub` with a card `number`, and an authorized intent of `amount`.
    pub async fn authorized(&self, sub: &str, number: &str, amount: i64) -> Value {
        let method = self.card(&self.customer(sub), number).await;
        let intent = self.intent(sub, &method, amount).await;
        let (status, body) = self
            .act(intent["id"].as_str().unwrap(), "confirm", json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{}: confirm {body}", self.label());
        assert_eq!(
            body["status"],
            "requires_capture",
            "{}: {body}",
            self.label()
        );
        body
    }

    pub async fn ledger(&self) -> Value {
        let r = self.get("/ledger/balance", &self.admin()).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// Balance of `account` in the ledger answer (0 when absent).
    pub fn account(ledger: &Value, account: &str) -> i64 {
        ledger["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["account"] == account)
            .map(|a| a["balance"].as_i64().unwrap())
            .sum()
    }
}

pub async fn problem(r: Response) -> Value {
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "errors are problem+json"
    );
    r.json().await.unwrap()
}

/// A processor call, as [`Faulty`] names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Authorize,
    Capture,
    Void,
    Refund,
}

/// How a [`Faulty`] processor fails its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The simulator does it and the answer is lost (the connection reset on the way back).
    Lost,
    /// The simulator does it, then the request's task dies before anything is recorded:
    /// what a crash of the service between the processor's answer and the finalizing
    /// commit leaves behind.
    Crash,
    /// The processor refuses.
    Refused,
}

/// The simulator, with one kind of call failing as told while armed.
pub struct Faulty {
    pub inner: Arc<SimulatedProcessor>,
    pub call: Call,
    pub fault: Fault,
    pub armed: AtomicBool,
}

impl Faulty {
    pub fn new(inner: Arc<SimulatedProcessor>, call: Call, fault: Fault) -> Faulty {
        Faulty {
            inner,
            call,
            fault,
            armed: AtomicBool::new(true),
        }
    }

    async fn run<T>(
        &self,
        call: Call,
        done: impl std::future::Future<Output = Result<T, ProcessorError>>,
    ) -> Result<T, ProcessorError> {
        if call != self.call || !self.armed.load(Ordering::SeqCst) {
            return done.await;
        }
        match self.fault {
            Fault::Refused => Err(ProcessorError::Declined("refused_in_test".into())),
            Fault::Lost => {
                done.await?;
                Err(ProcessorError::Unavailable("connection reset".into()))
            }
            Fault::Crash => {
                done.await?;
                panic!("the service stops between the processor's answer and its commit");
            }
        }
    }
}

#[async_trait::async_trait]
impl Processor for Faulty {
    async fn tokenize(&self, n: &CardNumber) -> Result<Tokenized, ProcessorError> {
        self.inner.tokenize(n).await
    }
    async fn authorize(&self, r: Authorize<'_>) -> Result<Authorization, ProcessorError> {
        self.run(Call::Authorize, self.inner.authorize(r)).await
    }
    async fn capture(&self, reference: &str, amount: i64) -> Result<(), ProcessorError> {
        self.run(Call::Capture, self.inner.capture(reference, amount))
            .await
    }
    async fn void(&self, reference: &str) -> Result<(), ProcessorError> {
        self.run(Call::Void, self.inner.void(reference)).await
    }
    async fn refund(&self, reference: &str, id: &str, amount: i64) -> Result<(), ProcessorError> {
        self.run(Call::Refund, self.inner.refund(reference, id, amount))
            .await
    }
    async fn lookup(&self, reference: &str) -> Result<AuthorizationState, ProcessorError> {
        self.inner.lookup(reference).await
    }
    async fn refund_status(&self, id: &str) -> Result<Option<i64>, ProcessorError> {
        self.inner.refund_status(id).await
    }
}

/// A service whose `call` fails with `fault` (armed), and the simulator behind it.
pub async fn spawn_faulty(db: TestDb, call: Call, fault: Fault) -> (TestPay, Arc<Faulty>) {
    let mut faulty = None;
    let t = spawn_wrapped(
        db,
        |_| {},
        |sim| {
            let f = Arc::new(Faulty::new(sim, call, fault));
            faulty = Some(f.clone());
            f
        },
    )
    .await;
    (t, faulty.expect("wrapped"))
}
