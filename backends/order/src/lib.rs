//! The order service: event-sourced orders and the saga that places them across the
//! product and payment services.
//!
//! - [`order`]: the events of an order and the order as their fold (`GET /orders/{id}`
//!   answers exactly the fold);
//! - [`store`]: the event store (`order_events`, appended with an expected `seq`; a
//!   conflicting append reloads and decides again) with the `orders` projection and the
//!   `order.placed|confirmed|cancelled|refunded` outbox events written in the same
//!   transaction;
//! - [`saga`]: the runner that drives an order from its stored state, one idempotent step
//!   at a time, compensating in reverse on failure, resumed after a crash by the resumer;
//! - [`lease`]: one runner per order, across processes;
//! - [`clients`]: the product ([`clients::Inventory`]) and payment ([`clients::Payments`])
//!   services as traits, and their HTTP implementations;
//! - [`api`]: the HTTP handlers.
//!
//! `router(state)` is the whole HTTP surface; `main.rs` only reads settings and serves it.

pub mod api;
pub mod clients;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod order;
pub mod saga;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::Router;
use kit::config::{ConfigError, Setting};
use kit::idempotency::CallerScope;
use kit::identity::{SigningKey, TokenSource};
use kit::relay::RelayOptions;
use kit::{Db, Env, EventBus, IdempotencyLayer, Relay, ServiceConfig, Telemetry, Verifier};
use sqlx::migrate::Migrator;
use tokio::sync::watch;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use clients::{HttpInventory, HttpPayments, Inventory, Payments};
pub use error::Error;
use saga::{Saga, SagaSettings};
use store::EventStore;

/// The service's migrations (versions from 1000; the kit's run with them).
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Runs the kit's and the service's migrations.
pub async fn migrate(db: &Db) -> Result<(), kit::DbError> {
    db.migrate(&MIGRATIONS).await
}

/// The permissions the order service's token needs at the other services.
pub const SERVICE_PERMISSIONS: &[&str] =
    &["inventory:reserve", "payments:charge", "payments:refund"];

/// How the service behaves; defaults are the production values.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The product service's base URL.
    pub product_url: String,
    /// The payment service's base URL.
    pub payment_url: String,
    /// The longest a single call to another service may take.
    pub request_timeout: Duration,
    /// Deadlines, pauses and leases of the saga.
    pub saga: SagaSettings,
    /// How long after confirmation a customer may still cancel an order (a full refund);
    /// an admin may at any time.
    pub cancel_window: Duration,
}

/// The default cancellation window: a day after confirmation.
pub const CANCEL_WINDOW: Duration = Duration::from_secs(24 * 3600);

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            product_url: "http://127.0.0.1:3002".into(),
            payment_url: "http://127.0.0.1:3004".into(),
            request_timeout: Duration::from_secs(5),
            saga: SagaSettings::default(),
            cancel_window: CANCEL_WINDOW,
        }
    }
}

impl Settings {
    /// The defaults with what `env` sets (see [`SETTINGS`]).
    pub fn read(env: &Env) -> Result<Settings, ConfigError> {
        let d = Settings::default();
        Ok(Settings {
            product_url: env.string("PRODUCT_URL").unwrap_or(d.product_url),
            payment_url: env.string("PAYMENT_URL").unwrap_or(d.payment_url),
            request_timeout: env
                .duration("REQUEST_TIMEOUT")?
                .unwrap_or(d.request_timeout),
            saga: SagaSettings {
                step_deadline: env
                    .duration("SAGA_STEP_DEADLINE")?
                    .unwrap_or(d.saga.step_deadline),
                lease: env.duration("SAGA_LEASE")?.unwrap_or(d.saga.lease),
                resume_interval: env
                    .duration("SAGA_RESUME_INTERVAL")?
                    .unwrap_or(d.saga.resume_interval),
                ..d.saga
            },
            cancel_window: env
                .duration("ORDER_CANCEL_WINDOW")?
                .unwrap_or(d.cancel_window),
        })
    }
}

/// The settings the order service reads beyond the kit's.
pub const SETTINGS: &[Setting] = &[
    Setting::flag("PRODUCT_URL", "the product service (http://127.0.0.1:3002)"),
    Setting::flag("PAYMENT_URL", "the payment service (http://127.0.0.1:3004)"),
    Setting::env(
        "REQUEST_TIMEOUT",
        "the longest one call to another service may take (5s)",
    ),
    Setting::env("SAGA_STEP_DEADLINE", "the longest one saga step may take"),
    Setting::env("SAGA_LEASE", "how long a process owns a saga it runs"),
    Setting::env(
        "SAGA_RESUME_INTERVAL",
        "how often unfinished sagas are looked for",
    ),
    Setting::env(
        "ORDER_CANCEL_WINDOW",
        "how long after confirmation a customer may cancel an order for a full refund (24h)",
    ),
    Setting::env(
        "SERVICE_CLIENT_ID",
        "its client id at the user service (order)",
    ),
    Setting::env(
        "SERVICE_CLIENT_SECRET",
        "its client secret: service tokens by client credentials",
    ),
    Setting::env(
        "SERVICE_TOKEN_URL",
        "where to get them (http://127.0.0.1:3001/auth/token)",
    ),
    Setting::env(
        "SERVICE_SIGNING_KEY_FILE",
        "or a PEM Ed25519 key the verifiers trust, to mint service tokens locally",
    ),
];

/// Where the service token comes from: client credentials at the user service
/// (`SERVICE_CLIENT_SECRET`), or a key the verifiers trust (`SERVICE_SIGNING_KEY_FILE`).
/// Locally minted tokens carry `config`'s issuer and audience.
pub fn token_source(env: &Env, config: &ServiceConfig) -> Result<TokenSource, ConfigError> {
    if let Some(secret) = env.string("SERVICE_CLIENT_SECRET") {
        let url = env
            .string("SERVICE_TOKEN_URL")
            .unwrap_or_else(|| "http://127.0.0.1:3001/auth/token".into());
        let id = env
            .string("SERVICE_CLIENT_ID")
            .unwrap_or_else(|| "order".into());
        return Ok(TokenSource::client_credentials(&url, &id, &secret));
    }
    let key = env.parse(
        "SERVICE_SIGNING_KEY_FILE",
        "a readable PEM file of an Ed25519 key",
        |file| {
            let pem = std::fs::read_to_string(file).ok()?;
            SigningKey::from_pem(&pem).ok()
        },
    )?;
    match key {
        Some(key) => Ok(TokenSource::signing(
            key,
            &config.issuer,
            &config.audience,
            "service:order",
            SERVICE_PERMISSIONS,
        )),
        None => Err(ConfigError {
            variable: "SERVICE_CLIENT_SECRET".into(),
            reason: "set it (client credentials at the user service) or SERVICE_SIGNING_KEY_FILE (mint service tokens locally)".into(),
        }),
    }
}

/// The order service's settings and where its service token comes from.
pub struct Config {
    /// How it behaves.
    pub settings: Settings,
    /// Its service token for the product and payment services.
    pub tokens: TokenSource,
}

impl kit::Service for Service {
    const NAME: &'static str = "order";
    const PORT: u16 = 3003;
    const ABOUT: &'static str =
        "Gatehouse order service: event-sourced orders placed by a persisted saga";
    const SETTINGS: &'static [Setting] = SETTINGS;
    const NEEDS: &'static [&'static str] = &["user", "product", "payment"];
    const CLIENT_PERMISSIONS: &'static [&'static str] = SERVICE_PERMISSIONS;
    type Settings = Config;

    fn settings(env: &Env, config: &ServiceConfig) -> Result<Config, ConfigError> {
        Ok(Config {
            settings: Settings::read(env)?,
            tokens: token_source(env, config)?,
        })
    }

    async fn start(ctx: kit::service::Start, c: Config) -> anyhow::Result<Service> {
        let verifier = ctx.verifier();
        Ok(Service::start(ctx.db, c.settings, ctx.bus, verifier, c.tokens).await?)
    }

    fn router(&self) -> Router {
        router(self.state.clone())
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        openapi()
    }

    /// Stops the saga runners where they are (their leases expire and another process,
    /// or the next start, resumes them), then the relay.
    async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.resumer.await;
        self.relay.shutdown().await;
    }
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Order histories.
    pub store: EventStore,
    /// Starts saga runners.
    pub saga: Saga,
    /// The product service (prices at placement).
    pub inventory: Arc<dyn Inventory>,
    /// Verifies callers' access tokens.
    pub verifier: Arc<Verifier>,
    /// The event bus the relay publishes to (checked by `/ready`).
    pub bus: Option<Arc<dyn EventBus>>,
    /// How long after confirmation a customer may cancel.
    pub cancel_window: Duration,
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(s: &AppState) -> Arc<Verifier> {
        s.verifier.clone()
    }
}

/// The order service running: its state, the outbox relay and the saga resumer.
pub struct Service {
    /// What the router serves.
    pub state: AppState,
    relay: Relay,
    stop: watch::Sender<bool>,
    resumer: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Migrates `db`, starts the outbox relay on `bus`, and resumes unfinished sagas; the
    /// saga calls the services at `settings`' URLs with tokens from `tokens` (which needs
    /// [`SERVICE_PERMISSIONS`]); callers are verified by `verifier`.
    pub async fn start(
        db: Db,
        settings: Settings,
        bus: Arc<dyn EventBus>,
        verifier: Arc<Verifier>,
        tokens: TokenSource,
    ) -> Result<Service, Error> {
        let inventory = HttpInventory::new(
            &settings.product_url,
            settings.request_timeout,
            tokens.clone(),
        );
        let payments = HttpPayments::new(&settings.payment_url, settings.request_timeout, tokens);
        Service::start_with(
            db,
            settings.saga,
            settings.cancel_window,
            bus,
            verifier,
            Arc::new(inventory),
            Arc::new(payments),
        )
        .await
    }

    /// [`Service::start`] with the other services given as implementations (fakes in
    /// tests, or other transports).
    pub async fn start_with(
        db: Db,
        saga: SagaSettings,
        cancel_window: Duration,
        bus: Arc<dyn EventBus>,
        verifier: Arc<Verifier>,
        inventory: Arc<dyn Inventory>,
        payments: Arc<dyn Payments>,
    ) -> Result<Service, Error> {
        migrate(&db).await?;
        let relay = Relay::spawn(db.clone(), bus.clone(), RelayOptions::default());
        let store = EventStore::new(db.clone(), relay.waker());
        let (stop, stopped) = watch::channel(false);
        let saga = Saga::new(store.clone(), inventory.clone(), payments, saga, stopped);
        let resumer = saga.spawn_resumer();
        let state = AppState {
            db,
            store,
            saga,
            inventory,
            verifier,
            bus: Some(bus),
            cancel_window,
        };
        Ok(Service {
            state,
            relay,
            stop,
            resumer,
        })
    }
}

/// The HTTP surface, with `/health`, `/ready` and `/metrics`.
pub fn router(state: AppState) -> Router {
    let telemetry = Telemetry::for_service("order", &state.db, state.bus.as_ref());
    metrics::register(&telemetry, &state.db);
    let keys = IdempotencyLayer::new(state.db.clone())
        .scope(CallerScope(state.verifier.clone()))
        .required(true);
    let (api, doc) = api(Some(keys)).split_for_parts();
    let api = api
        .with_state(state)
        .merge(kit::openapi::serve(&finish(doc)));
    telemetry.wrap(api)
}

/// The routes, each with its part of the OpenAPI document. `keys` guards `POST /orders`
/// and `POST /orders/{id}/refunds` (the layer passes `GET /orders` untouched); the
/// document does not depend on it.
fn api(keys: Option<IdempotencyLayer>) -> OpenApiRouter<AppState> {
    let orders = routes!(api::place, api::list);
    let refunds = routes!(api::refund);
    let (orders, refunds) = match keys {
        Some(keys) => (orders.layer(keys.clone()), refunds.layer(keys)),
        None => (orders, refunds),
    };
    OpenApiRouter::new()
        .routes(orders)
        .routes(routes!(api::get))
        .routes(routes!(api::cancel))
        .routes(refunds)
}

fn finish(doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    kit::openapi::finish(doc, "order", <Service as kit::Service>::ABOUT)
}

/// The service's OpenAPI document, as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    finish(api(None).into_openapi())
}
