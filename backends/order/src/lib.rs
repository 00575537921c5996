//! The order service: event-sourced orders and the saga that places them across the
//! product and payment services.
//!
//! - [`order`]: the events of an order and the order as their fold (`GET /orders/{id}`
//!   answers exactly the fold);
//! - [`store`]: the event store (`order_events`, appended with an expected `seq`; a
//!   conflicting append reloads and decides again) with the `orders` projection and the
//!   `order.placed|confirmed|cancelled` outbox events written in the same transaction;
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
pub mod order;
pub mod saga;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::Router;
use kit::bus::BusReady;
use kit::idempotency::IdempotencyScope;
use kit::identity::TokenSource;
use kit::relay::RelayOptions;
use kit::telemetry::ReadyCheck;
use kit::{Db, EventBus, IdempotencyLayer, Problem, Relay, Telemetry, Verifier};
use sqlx::migrate::Migrator;
use tokio::sync::watch;

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
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            product_url: "http://127.0.0.1:3002".into(),
            payment_url: "http://127.0.0.1:3004".into(),
            request_timeout: Duration::from_secs(5),
            saga: SagaSettings::default(),
        }
    }
}

impl Settings {
    /// Reads overrides from the environment (`ORDER_`-prefixed or bare): `PRODUCT_URL`,
    /// `PAYMENT_URL`, `REQUEST_TIMEOUT`, `SAGA_STEP_DEADLINE`, `SAGA_LEASE`,
    /// `SAGA_RESUME_INTERVAL` (durations like `5s`, `500ms`).
    pub fn from_env() -> Result<Settings, String> {
        let get = |name: &str| {
            std::env::var(format!("ORDER_{name}"))
                .or_else(|_| std::env::var(name))
                .ok()
                .filter(|v| !v.trim().is_empty())
        };
        let duration = |name: &str, into: &mut Duration| -> Result<(), String> {
            if let Some(v) = get(name) {
                *into = humantime::parse_duration(v.trim())
                    .map_err(|e| format!("{name}: {v:?}: {e}"))?;
            }
            Ok(())
        };
        let mut s = Settings::default();
        if let Some(v) = get("PRODUCT_URL") {
            s.product_url = v;
        }
        if let Some(v) = get("PAYMENT_URL") {
            s.payment_url = v;
        }
        duration("REQUEST_TIMEOUT", &mut s.request_timeout)?;
        duration("SAGA_STEP_DEADLINE", &mut s.saga.step_deadline)?;
        duration("SAGA_LEASE", &mut s.saga.lease)?;
        duration("SAGA_RESUME_INTERVAL", &mut s.saga.resume_interval)?;
        Ok(s)
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
        };
        Ok(Service {
            state,
            relay,
            stop,
            resumer,
        })
    }

    /// The HTTP surface.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Stops the saga runners where they are (their leases expire and another process,
    /// or the next start, resumes them), then the relay.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.resumer.await;
        self.relay.shutdown().await;
    }
}

/// Keys of `POST /orders` belong to the verified caller.
struct CallerScope(Arc<Verifier>);

#[async_trait::async_trait]
impl IdempotencyScope for CallerScope {
    async fn scope(&self, parts: &mut Parts) -> Result<String, Problem> {
        let id = self.0.verify_headers(&parts.headers).await?;
        Ok(id.user_id)
    }
}

/// The HTTP surface, with `/health`, `/ready` and `/metrics`.
pub fn router(state: AppState) -> Router {
    let mut checks: Vec<Arc<dyn ReadyCheck>> = vec![Arc::new(state.db.clone())];
    if let Some(bus) = &state.bus {
        checks.push(Arc::new(BusReady(bus.clone())));
    }
    let telemetry = Telemetry::new("order", checks);
    let keys = IdempotencyLayer::new(state.db.clone())
        .scope(CallerScope(state.verifier.clone()))
        .required(true);
    let api = Router::new()
        .route("/orders", post(api::place).layer(keys).get(api::list))
        .route("/orders/{id}", get(api::get))
        .route("/orders/{id}/cancel", post(api::cancel))
        .with_state(state);
    telemetry.wrap(api)
}
