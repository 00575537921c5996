//! The analytics service: what the shop's visitors do and what its business adds up to.
//!
//! - [`ingest`]: batches of Segment-like `track` events from sites and servers (a user's
//!   token or a source's write key), each accepted or dropped with a reason: invalid, bot,
//!   late, duplicate or conflicting `message_id`; clock skew corrected from `sent_at`;
//! - [`domain`]: the other services' facts (orders, payments, accounts, product views)
//!   through the bus and the kit's inbox;
//! - [`store`] + [`rollup`]: accepted events are kept raw and rolled up in the same
//!   transaction into count/sum/min/max per minute, hour and day, per [`measure`]; a
//!   [`rollup::rebuild`] recomputes them from the raw events and gets the same rows;
//! - [`visitor`]: a visitor id from a daily-salted hash; no IP or user agent is stored;
//! - [`reports`]: a metric over time, top products, the funnel, as JSON or CSV.

pub mod api;
pub mod dashboard;
pub mod domain;
pub mod error;
pub mod ingest;
pub mod measure;
pub mod metrics;
pub mod reports;
pub mod rollup;
pub mod sources;
pub mod store;
pub mod visitor;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::routing::get;
use axum::Router;
use kit::config::{ConfigError, Setting};
use kit::inbox::ConsumerOptions;
use kit::{Consumer, Db, Env, EventBus, ServiceConfig, Telemetry, Verifier};
use sqlx::migrate::Migrator;
use tokio::sync::watch;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::Error;

use ingest::Ingest;
use visitor::Visitors;

/// The service's migrations (versions from 1000; the kit's run with them).
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Runs the kit's and the service's migrations.
pub async fn migrate(db: &Db) -> Result<(), kit::DbError> {
    db.migrate(&MIGRATIONS).await
}

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client events that occurred longer than this before the newest are dropped as late.
    pub lateness: Duration,
    /// How long a `message_id` is remembered (at least 24 h: Segment's clients retry for a
    /// day).
    pub dedup_window: Duration,
    /// How often old message ids, sessions and salts are cleared.
    pub housekeeping: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            lateness: Duration::from_secs(3600),
            dedup_window: Duration::from_secs(24 * 3600),
            housekeeping: Duration::from_secs(60),
        }
    }
}

impl Settings {
    /// The settings `env` gives.
    pub fn read(env: &Env) -> Result<Settings, ConfigError> {
        let d = Settings::default();
        let dedup_window = env.duration("DEDUP_WINDOW")?.unwrap_or(d.dedup_window);
        if dedup_window < Duration::from_secs(24 * 3600) {
            return Err(ConfigError {
                variable: "DEDUP_WINDOW".into(),
                reason: "must be at least 24h (clients retry for a day)".into(),
            });
        }
        Ok(Settings {
            lateness: env.duration("LATENESS")?.unwrap_or(d.lateness),
            dedup_window,
            housekeeping: d.housekeeping,
        })
    }
}

/// The settings the analytics service reads beyond the kit's.
pub const SETTINGS: &[Setting] = &[
    Setting::env(
        "LATENESS",
        "how long before the newest events a client event may have occurred and still count (1h)",
    ),
    Setting::env(
        "DEDUP_WINDOW",
        "how long a message_id is remembered, at least 24h (24h)",
    ),
];

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Verifies callers' access tokens.
    pub verifier: Arc<Verifier>,
    /// The bus, when the service runs (checked by `/ready`).
    pub bus: Option<Arc<dyn EventBus>>,
    /// Accepts batches.
    pub ingest: Arc<Ingest>,
    /// Ingest outcomes, on `/metrics`.
    pub metrics: metrics::Metrics,
    /// Bumped after every commit that changed the rollups (live views wait on it).
    pub changes: watch::Sender<u64>,
    /// The dashboard's latest snapshot, shared by its live streams.
    pub live: Arc<dashboard::Live>,
}

impl AppState {
    /// Tells live views the rollups changed.
    pub fn changed(&self) {
        bump(&self.changes);
    }
}

fn bump(changes: &watch::Sender<u64>) {
    changes.send_modify(|n| *n = n.wrapping_add(1));
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(s: &AppState) -> Arc<Verifier> {
        s.verifier.clone()
    }
}

/// The analytics service running: the facts consumer and the housekeeping.
pub struct Service {
    /// What the router serves.
    pub state: AppState,
    consumer: Consumer,
    housekeeping: tokio::task::JoinHandle<()>,
    live: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Migrates `db`, subscribes the facts consumer and starts the housekeeping.
    pub async fn start(
        db: Db,
        settings: Settings,
        verifier: Arc<Verifier>,
        bus: Arc<dyn EventBus>,
    ) -> anyhow::Result<Service> {
        migrate(&db).await?;
        let metrics = metrics::Metrics::default();
        let (changes, _) = watch::channel(0u64);
        let notify = changes.clone();
        let consumer = Consumer::spawn(
            db.clone(),
            bus.clone(),
            domain::CONSUMER,
            domain::PATTERN,
            domain::Facts {
                metrics: metrics.clone(),
                changed: Arc::new(move || bump(&notify)),
            },
            ConsumerOptions::for_service(<Self as kit::Service>::NAME),
        )
        .await?;
        let ingest = Arc::new(Ingest {
            db: db.clone(),
            visitors: Visitors::new(db.clone()),
            bots: isbot::Bots::default(),
            lateness_ms: settings.lateness.as_millis() as i64,
            dedup_window_ms: settings.dedup_window.as_millis() as i64,
            sqlite_writer: tokio::sync::Mutex::new(()),
        });
        let housekeeping = tokio::spawn(housekeeping(ingest.clone(), settings.housekeeping));
        let (live, live_task) = dashboard::Live::spawn(db.clone(), changes.subscribe());
        Ok(Service {
            state: AppState {
                db,
                verifier,
                bus: Some(bus),
                ingest,
                metrics,
                changes,
                live,
            },
            consumer,
            housekeeping,
            live: live_task,
        })
    }
}

/// Forgets message ids past the dedup window, sessions past 48 h and salts older than
/// yesterday's, every `every`.
async fn housekeeping(ingest: Arc<Ingest>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let now = kit::db::now_ms();
        let pruned = async {
            ingest.visitors.salts(now).await?;
            visitor::forget(&ingest.db, now).await?;
            sqlx::query("DELETE FROM seen WHERE seen_at < $1")
                .bind(now - ingest.dedup_window_ms)
                .execute(ingest.db.pool())
                .await?;
            Ok::<_, kit::DbError>(())
        };
        if let Err(e) = pruned.await {
            tracing::warn!(error = %kit::problem::error_chain(&e), "analytics housekeeping failed");
        }
    }
}

impl kit::Service for Service {
    const NAME: &'static str = "analytics";
    const PORT: u16 = 3006;
    const ABOUT: &'static str = "Gatehouse analytics service: event ingest with dedup and late \
        events, rollups per minute, hour and day, reports as JSON and CSV";
    const SETTINGS: &'static [Setting] = SETTINGS;
    type Settings = Settings;

    fn settings(env: &Env, _config: &ServiceConfig) -> Result<Settings, ConfigError> {
        Settings::read(env)
    }

    async fn start(ctx: kit::service::Start, settings: Settings) -> anyhow::Result<Service> {
        let verifier = ctx.verifier();
        Service::start(ctx.db, settings, verifier, ctx.bus).await
    }

    fn router(&self) -> Router {
        router(self.state.clone())
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        openapi()
    }

    /// Stops taking facts and the housekeeping.
    async fn shutdown(self) {
        self.consumer.shutdown().await;
        self.housekeeping.abort();
        self.live.abort();
    }
}

/// The HTTP surface, with `/health`, `/ready` and `/metrics`.
pub fn router(state: AppState) -> Router {
    let telemetry = Telemetry::for_service("analytics", &state.db, state.bus.as_ref());
    state.metrics.register(telemetry.registry());
    let (api, doc) = api().split_for_parts();
    // The page, its assets and its event stream are not API operations: they are left out
    // of the OpenAPI document (the snapshot operation describes the stream).
    let pages = Router::new()
        .route("/analytics/dashboard", get(dashboard::page))
        .route("/analytics/dashboard/assets/{file}", get(dashboard::asset))
        .route("/analytics/dashboard/live", get(dashboard::live));
    let api = api
        .merge(pages)
        .with_state(state)
        .merge(kit::openapi::serve(&finish(doc)));
    telemetry.wrap(api)
}

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(api::ingest))
        .routes(routes!(sources::create, sources::list))
        .routes(routes!(sources::delete))
        .routes(routes!(reports::get_report))
        .routes(routes!(reports::get_report_csv))
        .routes(routes!(reports::get_top_products))
        .routes(routes!(reports::get_funnel))
        .routes(routes!(api::rebuild))
        .routes(routes!(dashboard::get_snapshot))
}

fn finish(doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut doc = kit::openapi::finish(doc, "analytics", <Service as kit::Service>::ABOUT);
    if let Some(c) = doc.components.as_mut() {
        c.security_schemes.insert(
            "writeKey".into(),
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "A source's write key as the user name, no password \
                         (`POST /analytics/sources` makes one).",
                    ))
                    .build(),
            ),
        );
    }
    doc
}

/// The service's OpenAPI document, as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    finish(api().into_openapi())
}
