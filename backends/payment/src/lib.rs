//! The payment service: saved cards, payment intents that authorize, capture and void
//! through a card [`Processor`], refunds, a double-entry [`ledger`], and [`fraud`] rules.
//!
//! `router(state)` is the whole HTTP surface; `main.rs` only reads settings and serves it,
//! and the gateway's platform mode can mount the same router in-process.
//!
//! - **Cards** ([`cards`]): `POST /payment-methods` checks the number (Luhn, 12–19 digits),
//!   the expiry (not before this month) and the CVC (4 digits for amex, else 3), then keeps
//!   only brand, last four, expiry, countries, the processor's token and an HMAC
//!   fingerprint. The number and the CVC are neither stored nor logged.
//! - **Intents** ([`intents`]): Stripe's states with manual capture, each transition one
//!   conditional `UPDATE`, its ledger entries and its outbox event in one transaction.
//! - **Refunds** ([`refunds`]): Σ refunded ≤ captured, enforced by the `UPDATE` itself.
//! - **Ledger** ([`ledger`]): append-only entries summing to zero per transaction;
//!   `GET /ledger/balance` (admin).
//! - **Fraud** ([`fraud`]): allow list → block → review, evaluated at confirmation.
//! - **Processor** ([`processor`]): the deterministic [`SimulatedProcessor`] and its test
//!   cards. A processor that does not answer within `processor_deadline` leaves the intent
//!   `canceled` with `failure_reason` `processor_timeout` (answered 200 with the intent,
//!   like every other outcome of confirm: the caller reads `status`).
//! - **Events**: `payment.authorized|captured|voided|refunded|failed` via the kit's outbox.
//! - **OpenAPI**: `GET /openapi.json` serves the 3.1 document generated from the handlers'
//!   annotations ([`openapi`]); only annotated handlers are routed, so the two cannot drift.
//!
//! Who may do what: a customer creates, confirms, cancels and reads their own intents and
//! their own cards; `payments:charge` (the order service) acts on anyone's intents and is
//! the only one to capture; `payments:refund` refunds; the `admin` role may do everything
//! and reads the ledger. Someone else's intent is 404, someone else's card is 422. Every
//! POST needs an `Idempotency-Key`, scoped to the caller's verified `sub`
//! ([`kit::idempotency::CallerScope`]); a duplicate arriving while the first is still running gets 409 with
//! `Retry-After` (the kit's semantics) and its retry gets the stored answer.
//!
//! # Where the contract left the choice to us
//!
//! - `confirm` answers **200 with the intent** for every outcome it reached; the caller
//!   reads `status` (`requires_capture` is the only success). A processor that misses the
//!   deadline (`PROCESSOR_DEADLINE_MS`, 10 s) leaves the intent `canceled` with
//!   `failure_reason` `processor_timeout`, and a void is sent so a late hold does not stay
//!   on the card. 2xx answers are stored by the idempotency layer, so a retry replays them.
//! - Fraud rules run at **confirm**, not create (`fraud` is `null` before). `block` →
//!   `canceled`/`fraud_blocked` without asking the processor; `review` → authorized as
//!   usual and flagged (`fraud.decision` `review`), as Stripe Radar does.
//! - Authorizations **post to the ledger** as a hold pair (`authorized_holds` /
//!   `customer_funds_on_hold`), released by capture or void; see [`ledger`].
//! - A partial capture releases the rest of the hold. A refund larger than what is left is
//!   409 (`type` …/refund-exceeds-captured, `refundable`); `amount` may be omitted (all
//!   that is left).
//! - Only `payments:charge` (or admin) captures; customers create, confirm and cancel their
//!   own intents. `customer_id` defaults to the caller.
//! - **No processor call inside a database transaction.** Each call is recorded first
//!   (`processing`, `capturing`, `canceling`, or a `pending` refund, committed), the
//!   processor is asked with the intent's (or refund's) id as its idempotency reference,
//!   and a second transaction records the answer. A lost answer leaves the record where it
//!   was (502, or 202 for a refund); a retried request resumes it, and a recovery task
//!   settles what is left longer than twice the processor deadline by asking the processor
//!   what it did ([`Processor::lookup`], [`Processor::refund_status`]).

pub mod cards;
pub mod error;
pub mod events;
pub mod fraud;
pub mod intents;
pub mod ledger;
pub mod metrics;
pub mod processor;
pub mod refunds;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::Router;
use kit::config::{ConfigError, Setting};
use kit::idempotency::CallerScope;
use kit::relay::RelayOptions;
use kit::{
    Db, Env, EventBus, IdempotencyLayer, OutboxWaker, Relay, ServiceConfig, Telemetry, Verifier,
};
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::Error;
pub use processor::{AuthorizationState, Processor, SimulatedProcessor};

/// The service's migrations (versions from 1000; the kit's run with them).
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Runs the kit's and the service's migrations.
pub async fn migrate(db: &Db) -> Result<(), kit::DbError> {
    db.migrate(&MIGRATIONS).await
}

/// Where the card-fingerprint key comes from. `Debug` never shows an inline key.
#[derive(Clone)]
pub enum SecretSource {
    /// A file holding the key (created with 32 random bytes, hex, when missing).
    File(PathBuf),
    /// The key itself.
    Inline(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "File({})", p.display()),
            SecretSource::Inline(_) => f.write_str("Inline(…)"),
        }
    }
}

impl SecretSource {
    /// The key's bytes, creating the file when it is missing.
    pub fn load(&self) -> Result<Vec<u8>, Error> {
        match self {
            SecretSource::Inline(k) if k.len() >= 16 => Ok(k.as_bytes().to_vec()),
            SecretSource::Inline(_) => {
                Err(Error::Key("the key needs 16 characters at least".into()))
            }
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                Ok(k) if k.trim().len() >= 16 => Ok(k.trim().as_bytes().to_vec()),
                Ok(_) => Err(Error::Key(format!(
                    "{} holds too short a key",
                    path.display()
                ))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(path),
                Err(e) => Err(Error::Key(format!("{}: {e}", path.display()))),
            },
        }
    }
}

fn create_key(path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Write;
    let err = |e: std::io::Error| Error::Key(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let key = hex::encode(rand::random::<[u8; 32]>());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(err)?;
    file.write_all(key.as_bytes()).map_err(err)?;
    Ok(key.into_bytes())
}

/// How the service behaves; defaults are the production values.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The key of the card fingerprints (keep it: new keys make new fingerprints, and card
    /// velocity starts over).
    pub fingerprint_key: SecretSource,
    /// How long the processor may take to answer one call.
    pub processor_deadline: Duration,
    /// How long the simulator's timeout card (…0119) keeps the processor silent.
    pub simulator_hang: Duration,
    /// The fraud rules.
    pub fraud: fraud::Rules,
}

impl Settings {
    /// Production defaults: the user service's JWKS on its default port, the fingerprint
    /// key in `data_dir/payment-fingerprint.key`, a 10 s processor deadline.
    pub fn new(data_dir: &Path) -> Settings {
        Settings {
            fingerprint_key: SecretSource::File(data_dir.join("payment-fingerprint.key")),
            processor_deadline: Duration::from_secs(10),
            simulator_hang: Duration::from_secs(120),
            fraud: fraud::Rules::default(),
        }
    }

    /// The defaults with what `env` sets (see [`SETTINGS`]), the fingerprint key under
    /// `data_dir` unless `CARD_FINGERPRINT_KEY` or `CARD_FINGERPRINT_KEY_FILE` says otherwise.
    pub fn read(env: &Env, data_dir: &Path) -> Result<Settings, ConfigError> {
        let mut s = Settings::new(data_dir);
        if let Some(v) = env.string("CARD_FINGERPRINT_KEY_FILE") {
            s.fingerprint_key = SecretSource::File(v.into());
        }
        if let Some(v) = env.string("CARD_FINGERPRINT_KEY") {
            s.fingerprint_key = SecretSource::Inline(v);
        }
        if let Some(ms) = env.count::<u64>("PROCESSOR_DEADLINE_MS")? {
            s.processor_deadline = Duration::from_millis(ms);
        }
        if let Some(v) = env.string("FRAUD_ALLOW_CUSTOMERS") {
            s.fraud.allow_customers = v
                .split(',')
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect();
        }
        let f = &mut s.fraud;
        for (name, field) in [
            ("FRAUD_BLOCK_AMOUNT", &mut f.block_amount),
            ("FRAUD_REVIEW_AMOUNT", &mut f.review_amount),
            (
                "FRAUD_BLOCK_CUSTOMER_PER_HOUR",
                &mut f.block_customer_per_hour,
            ),
            (
                "FRAUD_REVIEW_CUSTOMER_PER_HOUR",
                &mut f.review_customer_per_hour,
            ),
            ("FRAUD_BLOCK_CARD_PER_HOUR", &mut f.block_card_per_hour),
            ("FRAUD_REVIEW_CARD_PER_HOUR", &mut f.review_card_per_hour),
        ] {
            if let Some(n) = env.count(name)? {
                *field = n;
            }
        }
        if let Some(d) = env.parse(
            "FRAUD_COUNTRY_MISMATCH",
            "one of allow, review, block",
            fraud::Decision::parse,
        )? {
            f.country_mismatch = d;
        }
        Ok(s)
    }
}

/// The settings the payment service reads beyond the kit's.
pub const SETTINGS: &[Setting] = &[
    Setting::env(
        "CARD_FINGERPRINT_KEY",
        "the key of card fingerprints (16 characters or more)",
    ),
    Setting::env(
        "CARD_FINGERPRINT_KEY_FILE",
        "its file (default <DATA_DIR>/payment-fingerprint.key, made when missing)",
    ),
    Setting::env(
        "PROCESSOR_DEADLINE_MS",
        "how long the card processor may take to answer (10000)",
    ),
    Setting::env(
        "FRAUD_ALLOW_CUSTOMERS",
        "customer ids the fraud rules never block, comma-separated",
    ),
    Setting::env("FRAUD_BLOCK_AMOUNT", "block intents above this amount"),
    Setting::env("FRAUD_REVIEW_AMOUNT", "flag intents above this amount"),
    Setting::env(
        "FRAUD_BLOCK_CUSTOMER_PER_HOUR",
        "block beyond this many intents per customer and hour",
    ),
    Setting::env(
        "FRAUD_REVIEW_CUSTOMER_PER_HOUR",
        "flag beyond this many intents per customer and hour",
    ),
    Setting::env(
        "FRAUD_BLOCK_CARD_PER_HOUR",
        "block beyond this many intents per card and hour",
    ),
    Setting::env(
        "FRAUD_REVIEW_CARD_PER_HOUR",
        "flag beyond this many intents per card and hour",
    ),
    Setting::env(
        "FRAUD_COUNTRY_MISMATCH",
        "card and billing country differ: allow, review or block",
    ),
];

impl kit::Service for Service {
    const NAME: &'static str = "payment";
    const PORT: u16 = 3004;
    const ABOUT: &'static str =
        "Gatehouse payment service: cards, payment intents, refunds, a double-entry ledger";
    const SETTINGS: &'static [Setting] = SETTINGS;
    type Settings = Settings;

    fn settings(env: &Env, config: &ServiceConfig) -> Result<Settings, ConfigError> {
        Settings::read(env, &config.data_dir)
    }

    async fn start(ctx: kit::service::Start, settings: Settings) -> anyhow::Result<Service> {
        let verifier = ctx.verifier();
        Ok(Service::start(ctx.db, settings, verifier, ctx.bus).await?)
    }

    fn router(&self) -> Router {
        router(self.state.clone())
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        openapi()
    }

    /// Stops the relay (after serving has stopped), releasing its lease at once.
    async fn shutdown(self) {
        self.recovery.abort();
        self.relay.shutdown().await;
    }
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Verifies access tokens.
    pub verifier: Arc<Verifier>,
    /// The card processor.
    pub processor: Arc<dyn Processor>,
    /// The key of card fingerprints.
    pub fingerprint_key: Arc<Vec<u8>>,
    /// Wakes the outbox relay after a commit that recorded events (a no-op without one).
    pub outbox: OutboxWaker,
    /// The event bus the relay publishes to, when one runs (checked by `/ready`).
    pub bus: Option<Arc<dyn EventBus>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("db", &self.db.kind())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(s: &AppState) -> Arc<Verifier> {
        s.verifier.clone()
    }
}

impl AppState {
    /// Migrates `db`, loads the fingerprint key, and runs a [`SimulatedProcessor`].
    pub async fn build(
        db: Db,
        settings: Settings,
        verifier: Arc<Verifier>,
    ) -> Result<AppState, Error> {
        let processor = Arc::new(SimulatedProcessor::new(settings.simulator_hang));
        AppState::build_with(db, settings, verifier, processor).await
    }

    /// [`AppState::build`] with another processor.
    pub async fn build_with(
        db: Db,
        settings: Settings,
        verifier: Arc<Verifier>,
        processor: Arc<dyn Processor>,
    ) -> Result<AppState, Error> {
        migrate(&db).await?;
        let fingerprint_key = Arc::new(settings.fingerprint_key.load()?);
        Ok(AppState {
            db,
            settings: Arc::new(settings),
            verifier,
            processor,
            fingerprint_key,
            outbox: OutboxWaker::default(),
            bus: None,
        })
    }
}

/// The payment service running: its state plus the relay that publishes its outbox.
pub struct Service {
    /// What the router serves.
    pub state: AppState,
    relay: Relay,
    recovery: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Builds the state (see [`AppState::build`]), starts the outbox relay on `bus` and the
    /// purger of old idempotency keys.
    pub async fn start(
        db: Db,
        settings: Settings,
        verifier: Arc<Verifier>,
        bus: Arc<dyn EventBus>,
    ) -> Result<Service, Error> {
        let state = AppState::build(db, settings, verifier).await?;
        Ok(Service::run(state, bus))
    }

    /// Starts the relay and the purger for a state already built (e.g. with
    /// [`AppState::build_with`]).
    pub fn run(mut state: AppState, bus: Arc<dyn EventBus>) -> Service {
        let relay = Relay::spawn(state.db.clone(), bus.clone(), RelayOptions::default());
        kit::idempotency::spawn_purger(state.db.clone(), Duration::from_secs(3600));
        state.outbox = relay.waker();
        state.bus = Some(bus);
        let recovery = tokio::spawn(recover_interrupted_forever(state.clone()));
        Service {
            state,
            relay,
            recovery,
        }
    }
}

/// At start and every 30 s: intents left `processing`, `capturing` or `canceling`, and
/// refunds left `pending`, for twice the processor deadline (their process died mid-call,
/// or the processor's answer was lost) are settled with the processor.
async fn recover_interrupted_forever(state: AppState) {
    let older_than = (state.settings.processor_deadline * 2).max(Duration::from_secs(5));
    loop {
        if let Err(e) = intents::recover_interrupted(&state, older_than).await {
            tracing::warn!(error = %e, "recovering interrupted payment intents failed");
        }
        if let Err(e) = refunds::settle_pending(&state, older_than).await {
            tracing::warn!(error = %e, "settling pending refunds failed");
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

/// The HTTP surface, with `/health`, `/ready` and `/metrics`.
pub fn router(state: AppState) -> Router {
    let telemetry = Telemetry::for_service("payment", &state.db, state.bus.as_ref());
    metrics::register(&telemetry);
    // Bodies carry card numbers: their stored fingerprints are keyed, never a bare hash.
    let idempotency = IdempotencyLayer::new(state.db.clone())
        .scope(CallerScope(state.verifier.clone()))
        .fingerprint_key(state.fingerprint_key.as_slice())
        .required(true);
    let (api, doc) = api().split_for_parts();
    let api = api
        .layer(idempotency)
        .with_state(state)
        .merge(kit::openapi::serve(&finish(doc)));
    telemetry.wrap(api)
}

/// The routes, each with its part of the OpenAPI document.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(cards::create, cards::list))
        .routes(routes!(intents::create, intents::list))
        .routes(routes!(intents::get))
        .routes(routes!(intents::confirm))
        .routes(routes!(intents::capture))
        .routes(routes!(intents::cancel))
        .routes(routes!(refunds::create))
        .routes(routes!(ledger::get_balance))
}

fn finish(doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    kit::openapi::finish(doc, "payment", <Service as kit::Service>::ABOUT)
}

/// The service's OpenAPI document, as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    finish(api().into_openapi())
}

/// What the handlers' OpenAPI annotations share.
pub(crate) mod doc {
    /// 400 of a POST whose body is read as JSON.
    pub const BAD_KEY_OR_JSON: &str = "No `Idempotency-Key` header, more than one, or a \
         malformed one; or a body that is not JSON.";
    /// 400 of a POST whose body is not parsed by the extractor.
    pub const BAD_KEY: &str = "No `Idempotency-Key` header, more than one, or a malformed one.";
    /// 413 of every POST (the idempotency layer buffers the body).
    pub const TOO_LARGE: &str =
        "The body is larger than 1 MiB, the most a request with an `Idempotency-Key` carries.";
    /// 502 of the operations that call the processor.
    pub const PROCESSOR: &str = "The card processor failed or did not answer within the \
         deadline; nothing was changed, try again.";
    /// 503 of every operation (they all verify a bearer token).
    pub const KEYS_UNAVAILABLE: &str = "The keys that verify access tokens cannot be had from \
         the user service right now; try again later.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_the_environment_name_their_bad_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            Env::from_lookup("payment", move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
        };
        let dir = Path::new("d");
        let s = Settings::read(
            &env(&[
                ("PAYMENT_PROCESSOR_DEADLINE_MS", "250"),
                ("FRAUD_ALLOW_CUSTOMERS", "a, b,"),
                ("FRAUD_COUNTRY_MISMATCH", "block"),
                ("FRAUD_BLOCK_AMOUNT", "5"),
            ]),
            dir,
        )
        .unwrap();
        assert_eq!(s.processor_deadline, Duration::from_millis(250));
        assert_eq!(s.fraud.allow_customers, ["a", "b"]);
        assert_eq!(s.fraud.country_mismatch, fraud::Decision::Block);
        assert_eq!(s.fraud.block_amount, 5);
        assert!(
            matches!(s.fingerprint_key, SecretSource::File(ref p) if p == &dir.join("payment-fingerprint.key"))
        );
        let e = Settings::read(&env(&[("PAYMENT_FRAUD_REVIEW_AMOUNT", "lots")]), dir).unwrap_err();
        assert_eq!(e.variable, "PAYMENT_FRAUD_REVIEW_AMOUNT");
        let e = Settings::read(&env(&[("FRAUD_COUNTRY_MISMATCH", "maybe")]), dir).unwrap_err();
        assert_eq!(e.variable, "FRAUD_COUNTRY_MISMATCH");
        let debug = format!(
            "{:?}",
            SecretSource::Inline("very secret key material".into())
        );
        assert!(!debug.contains("secret key"), "{debug}");
    }
}
