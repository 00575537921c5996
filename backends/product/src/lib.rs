//! The product service: the catalogue, stock per sku, and reservations that hold stock for
//! orders between "placed" and "paid".
//!
//! `router(state)` is the whole HTTP surface; `main.rs` only reads settings and serves it,
//! and the gateway's platform mode can mount the same router in-process through
//! [`Service::start`].
//!
//! - [`products`]: CRUD with soft delete, keyset-paginated listing with filters and search;
//!   reads are public and go through the [`cache`] (in-process, or Redis), which this
//!   service's own `product.*` events evict after commit.
//! - [`inventory`]: on_hand / reserved / available per sku, admin adjustments.
//! - [`reservations`]: all-or-nothing reservations idempotent per order, commit, release,
//!   and a TTL enforced by the [`reservations::Sweeper`].
//! - [`returns`]: committed stock given back (a refunded order's lines), idempotent per
//!   return id and never more than was committed.
//! - [`events`]: every change is recorded in the kit's outbox in its own transaction.
//!
//! Stock decisions never read a cache: every one is a conditional `UPDATE` checked by rows
//! affected, so no interleaving of requests oversells, on SQLite or PostgreSQL.

pub mod cache;
pub mod error;
pub mod events;
pub mod inventory;
pub mod products;
pub mod reservations;
pub mod returns;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::Router;
use kit::config::{ConfigError, Setting};
use kit::inbox::ConsumerOptions;
use kit::relay::RelayOptions;
use kit::{
    Consumer, Db, Env, EventBus, Identity, OutboxWaker, Problem, Relay, ServiceConfig, Telemetry,
    Verifier,
};
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use cache::{Cache, CacheSettings};
pub use error::Error;
use reservations::Sweeper;

/// The service's migrations (versions from 1000; the kit's run with them).
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Runs the kit's and the service's migrations.
pub async fn migrate(db: &Db) -> Result<(), kit::DbError> {
    db.migrate(&MIGRATIONS).await
}

/// The permission to create, change and delete products and adjust stock.
pub const WRITE_PRODUCTS: &str = "products:write";
/// The permission to create, read, commit and release reservations (the order service).
pub const RESERVE: &str = "inventory:reserve";

/// 403 unless the caller is an admin or holds `permission`.
pub fn require(id: &Identity, permission: &str) -> Result<(), Problem> {
    if id.has_role("admin") {
        Ok(())
    } else {
        id.require_permission(permission)
    }
}

/// How the service behaves; [`Settings::default`] is the production default.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a reservation holds stock without a commit.
    pub reservation_ttl: Duration,
    /// How often the sweeper looks for overdue reservations (the most an expired
    /// reservation keeps its stock past its TTL, unless a commit finds it first).
    pub sweep_interval: Duration,
    /// The low-stock threshold of a product created without one.
    pub low_stock_threshold: i64,
    /// The read cache.
    pub cache: CacheSettings,
    /// How often counted product views are told as `product.viewed` (see [`views`]).
    pub view_flush: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            reservation_ttl: Duration::from_secs(15 * 60),
            sweep_interval: Duration::from_secs(30),
            low_stock_threshold: 5,
            cache: CacheSettings::default(),
            view_flush: Duration::from_secs(10),
        }
    }
}

impl Settings {
    /// The defaults with what `env` sets (see [`SETTINGS`]).
    pub fn read(env: &Env) -> Result<Settings, ConfigError> {
        let d = Settings::default();
        Ok(Settings {
            reservation_ttl: env
                .duration("RESERVATION_TTL")?
                .unwrap_or(d.reservation_ttl),
            sweep_interval: env.duration("SWEEP_INTERVAL")?.unwrap_or(d.sweep_interval),
            low_stock_threshold: env
                .count("LOW_STOCK_THRESHOLD")?
                .unwrap_or(d.low_stock_threshold),
            cache: CacheSettings {
                redis_url: env.string("REDIS_URL"),
                key_prefix: env.string("CACHE_KEY_PREFIX").unwrap_or(d.cache.key_prefix),
                ttl: env.duration("CACHE_TTL")?.unwrap_or(d.cache.ttl),
                capacity: env
                    .count::<usize>("CACHE_CAPACITY")?
                    .unwrap_or(d.cache.capacity)
                    .max(1),
            },
            view_flush: env.duration("VIEW_FLUSH")?.unwrap_or(d.view_flush),
        })
    }
}

/// The settings the product service reads beyond the kit's.
pub const SETTINGS: &[Setting] = &[
    Setting::env(
        "RESERVATION_TTL",
        "how long a reservation holds stock without a commit (15m)",
    ),
    Setting::env(
        "SWEEP_INTERVAL",
        "how often overdue reservations are released (30s)",
    ),
    Setting::env(
        "VIEW_FLUSH",
        "how often product views are told as product.viewed events (10s)",
    ),
    Setting::env(
        "LOW_STOCK_THRESHOLD",
        "low-stock threshold of a product created without one (5)",
    ),
    Setting::flag(
        "REDIS_URL",
        "Redis for a read cache shared by replicas (default: in-process)",
    ),
    Setting::env("CACHE_TTL", "how long a cached read lives (60s)"),
    Setting::env(
        "CACHE_CAPACITY",
        "most entries of the in-process cache (10000)",
    ),
    Setting::env(
        "CACHE_KEY_PREFIX",
        "prefix of the Redis cache keys (gatehouse:product:)",
    ),
];

impl kit::Service for Service {
    const NAME: &'static str = "product";
    const PORT: u16 = 3002;
    const ABOUT: &'static str =
        "Gatehouse product service: catalogue, stock and reservations that never oversell";
    const SETTINGS: &'static [Setting] = SETTINGS;
    type Settings = Settings;

    fn settings(env: &Env, _: &ServiceConfig) -> Result<Settings, ConfigError> {
        Settings::read(env)
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

    /// Stops the background tasks (after serving has stopped).
    async fn shutdown(self) {
        self.views.shutdown().await;
        self.sweeper.shutdown().await;
        self.invalidator.shutdown().await;
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
    /// Verifies callers' access tokens.
    pub verifier: Arc<Verifier>,
    /// The product read cache.
    pub cache: Cache,
    /// Wakes the outbox relay after a commit that recorded events (a no-op without one).
    pub outbox: OutboxWaker,
    /// The event bus the relay publishes to, when one runs (checked by `/ready`).
    pub bus: Option<Arc<dyn EventBus>>,
    /// Product page views not yet told as `product.viewed`.
    pub views: Arc<views::Views>,
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(s: &AppState) -> Arc<Verifier> {
        s.verifier.clone()
    }
}

impl AppState {
    /// Migrates `db` and prepares the cache. Nothing runs in the background: without
    /// [`Service::start`] events stay in the outbox, the cache is never evicted (entries
    /// live their TTL) and overdue reservations wait for a commit to expire them.
    pub async fn build(
        db: Db,
        settings: Settings,
        verifier: Arc<Verifier>,
    ) -> Result<AppState, Error> {
        migrate(&db).await?;
        let cache = Cache::new(&settings.cache)?;
        Ok(AppState {
            db,
            settings: Arc::new(settings),
            verifier,
            cache,
            outbox: OutboxWaker::default(),
            bus: None,
            views: Arc::default(),
        })
    }
}

/// The product service running: its state plus the outbox relay, the cache invalidator and
/// the reservation sweeper.
pub struct Service {
    /// What the router serves.
    pub state: AppState,
    relay: Relay,
    invalidator: Consumer,
    sweeper: Sweeper,
    views: views::ViewFlusher,
}

impl Service {
    /// Builds the state (see [`AppState::build`]), starts the outbox relay on `bus`,
    /// subscribes the cache invalidator to `product.*`, and starts the sweeper.
    ///
    /// The invalidator is one durable consumer (`product-cache`) when the cache is Redis,
    /// shared by replicas; with the in-process cache every process needs every event, so
    /// its consumer is named per process (`product-cache-<id>`; on NATS such consumers
    /// outlive the process until JetStream's inactivity limits remove them).
    pub async fn start(
        db: Db,
        settings: Settings,
        verifier: Arc<Verifier>,
        bus: Arc<dyn EventBus>,
    ) -> Result<Service, Error> {
        let sweep_every = settings.sweep_interval;
        let view_flush = settings.view_flush;
        let mut state = AppState::build(db.clone(), settings, verifier).await?;
        let name = if state.cache.is_shared() {
            "product-cache".to_owned()
        } else {
            format!("product-cache-{}", kit::db::new_id())
        };
        let invalidator = Consumer::spawn(
            db.clone(),
            bus.clone(),
            &name,
            "product.*",
            cache::Invalidator {
                cache: state.cache.clone(),
            },
            ConsumerOptions::for_service(<Self as kit::Service>::NAME),
        )
        .await?;
        let relay = Relay::spawn(db.clone(), bus.clone(), RelayOptions::default());
        state.outbox = relay.waker();
        state.bus = Some(bus);
        let views = views::ViewFlusher::spawn(
            db.clone(),
            state.views.clone(),
            state.outbox.clone(),
            view_flush,
        );
        let sweeper = Sweeper::spawn(db, state.outbox.clone(), sweep_every);
        Ok(Service {
            state,
            relay,
            invalidator,
            sweeper,
            views,
        })
    }
}

/// The HTTP surface, with `/health`, `/ready` and `/metrics`.
pub fn router(state: AppState) -> Router {
    let telemetry = Telemetry::for_service("product", &state.db, state.bus.as_ref());
    let (api, doc) = api().split_for_parts();
    let api = api
        .with_state(state)
        .merge(kit::openapi::serve(&finish(doc)));
    telemetry.wrap(api)
}

/// The routes, each with its part of the OpenAPI document.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(products::create, products::list))
        .routes(routes!(products::get, products::update, products::delete))
        .routes(routes!(reservations::reserve))
        .routes(routes!(reservations::get, reservations::release))
        .routes(routes!(reservations::commit))
        .routes(routes!(returns::create))
        .routes(routes!(inventory::get))
        .routes(routes!(inventory::adjust))
}

fn finish(doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    kit::openapi::finish(doc, "product", <Service as kit::Service>::ABOUT)
}

/// The service's OpenAPI document, as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    finish(api().into_openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> Env {
        Env::from_lookup("product", move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    fn read(pairs: &'static [(&'static str, &'static str)]) -> Result<Settings, ConfigError> {
        Settings::read(&env(pairs))
    }

    #[test]
    fn settings_read_prefixed_names_first_and_name_bad_values() {
        let s = read(&[
            ("RESERVATION_TTL", "1m"),
            ("PRODUCT_RESERVATION_TTL", "90s"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("LOW_STOCK_THRESHOLD", "2"),
        ])
        .unwrap();
        assert_eq!(s.reservation_ttl, Duration::from_secs(90));
        assert_eq!(s.cache.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(s.low_stock_threshold, 2);
        assert_eq!(s.sweep_interval, Duration::from_secs(30));

        let e = read(&[("PRODUCT_SWEEP_INTERVAL", "soon")]).unwrap_err();
        assert_eq!(e.variable, "PRODUCT_SWEEP_INTERVAL");
        let e = read(&[("LOW_STOCK_THRESHOLD", "-1")]).unwrap_err();
        assert_eq!(e.variable, "LOW_STOCK_THRESHOLD");
    }
}
