//! The user service: accounts, passwords (argon2id), EdDSA access tokens with rotating
//! refresh tokens, sessions, roles, and the JWKS every other part of Gatehouse verifies
//! access tokens against.
//!
//! `router(state)` is the whole HTTP surface; `main.rs` only reads settings and serves it,
//! and the gateway's platform mode mounts the same router in-process.
//!
//! Tokens: an access token is a 15-minute EdDSA JWT (`sub iss aud exp iat jti sid roles
//! perms`); a refresh token is 32 random bytes, stored as its SHA-256 and rotated on every
//! use. Presenting a refresh token that was already rotated ends its whole session (it
//! was stolen, or replayed), atomically: of two concurrent refreshes of one token exactly
//! one succeeds. Endpoints of this service also check that the access token's session is
//! still open, so logout takes effect here at once; elsewhere an access token lives until
//! it expires (at most 15 minutes).

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod error;
pub mod events;
pub mod keys;
pub mod password;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::Router;
use kit::config::{ConfigError, Setting};
use kit::relay::RelayOptions;
use kit::{Db, Env, EventBus, OutboxWaker, Relay, ServiceConfig, Telemetry, Verifier};
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::Error;
use keys::{KeyRing, KeySource};
use password::{HashParams, Passwords};

/// The service's migrations (versions from 1000; the kit's run with them).
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Runs the kit's and the service's migrations.
pub async fn migrate(db: &Db) -> Result<(), kit::DbError> {
    db.migrate(&MIGRATIONS).await
}

/// Roles and the permissions each grants. A caller's permissions are the union over its
/// roles.
pub const ROLES: &[(&str, &[&str])] = &[
    (
        "customer",
        &[
            "profile:read",
            "profile:write",
            "products:read",
            "orders:read",
            "orders:write",
            "payments:write",
        ],
    ),
    (
        "admin",
        &[
            "users:read",
            "users:write",
            "products:write",
            "inventory:write",
            "orders:admin",
            "payments:admin",
            "analytics:read",
            "keys:rotate",
        ],
    ),
];

/// The role every new account gets.
pub const DEFAULT_ROLE: &str = "customer";

/// The permissions `roles` grant, sorted and without duplicates.
pub fn permissions_of(roles: &[String]) -> Vec<String> {
    let mut perms: Vec<String> = ROLES
        .iter()
        .filter(|(r, _)| roles.iter().any(|x| x == r))
        .flat_map(|(_, p)| p.iter().map(|s| s.to_string()))
        .collect();
    perms.sort();
    perms.dedup();
    perms
}

/// How the service behaves; defaults are the production values.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `iss` of the access tokens.
    pub issuer: String,
    /// `aud` of the access tokens.
    pub audience: String,
    /// Access-token lifetime.
    pub access_ttl: Duration,
    /// How long a session lives without a login (refresh tokens stop working after it).
    pub session_ttl: Duration,
    /// argon2id parameters for new hashes.
    pub hash: HashParams,
    /// Failed logins allowed before back-off starts.
    pub free_failures: u32,
    /// The longest back-off after failed logins.
    pub max_lockout: Duration,
    /// Where the active signing key comes from.
    pub signing_key: KeySource,
    /// An existing account's email to make admin at start-up.
    pub bootstrap_admin: Option<String>,
    /// Services that may get tokens with the client credentials grant (`POST /auth/token`).
    pub service_clients: Vec<ServiceClient>,
}

/// A service allowed to get service tokens: `sub` = `service:<id>`, role `service`, and
/// exactly `permissions`.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceClient {
    /// The client id (`order`).
    pub id: String,
    /// SHA-256 (hex) of the client secret; the secret itself is never stored.
    pub secret_sha256: String,
    /// Permissions its tokens carry.
    pub permissions: Vec<String>,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("id", &self.id)
            .field("permissions", &self.permissions)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Production defaults with the key file under `data_dir`.
    pub fn new(data_dir: &std::path::Path) -> Settings {
        Settings {
            issuer: "gatehouse-user".into(),
            audience: "gatehouse".into(),
            access_ttl: Duration::from_secs(15 * 60),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            hash: HashParams::OWASP,
            free_failures: 5,
            max_lockout: Duration::from_secs(15 * 60),
            signing_key: KeySource::File(data_dir.join("user-signing-key.pem")),
            bootstrap_admin: None,
            service_clients: Vec::new(),
        }
    }

    /// The defaults with what `env` sets (see [`SETTINGS`]): the issuer and audience of
    /// `config`, the key file under its data folder unless `SIGNING_KEY` or
    /// `SIGNING_KEY_FILE` says otherwise.
    pub fn read(env: &Env, config: &ServiceConfig) -> Result<Settings, ConfigError> {
        let mut s = Settings::new(&config.data_dir);
        s.issuer = config.issuer.clone();
        s.audience = config.audience.clone();
        if let Some(v) = env.string("SIGNING_KEY_FILE") {
            s.signing_key = KeySource::File(v.into());
        }
        if let Some(v) = env.string("SIGNING_KEY") {
            s.signing_key = KeySource::Inline(v);
        }
        s.bootstrap_admin = env.string("BOOTSTRAP_ADMIN");
        if let Some(clients) = env.parse(
            "SERVICE_CLIENTS",
            "a JSON list like [{\"id\":\"order\",\"secret_sha256\":\"…\",\"permissions\":[…]}]",
            |v| serde_json::from_str(v).ok(),
        )? {
            s.service_clients = clients;
        }
        Ok(s)
    }
}

/// The settings the user service reads beyond the kit's.
pub const SETTINGS: &[Setting] = &[
    Setting::env("SIGNING_KEY", "the Ed25519 signing key as PEM text"),
    Setting::env(
        "SIGNING_KEY_FILE",
        "the signing key's PEM file (default <DATA_DIR>/user-signing-key.pem, made when missing)",
    ),
    Setting::flag(
        "BOOTSTRAP_ADMIN",
        "an existing account's email to make admin at start",
    ),
    Setting::env(
        "SERVICE_CLIENTS",
        "services allowed client credentials, JSON: [{\"id\",\"secret_sha256\",\"permissions\"}]",
    ),
];

impl kit::Service for Service {
    const NAME: &'static str = "user";
    const PORT: u16 = 3001;
    const ABOUT: &'static str =
        "Gatehouse user service: accounts, EdDSA access tokens, sessions, roles and the JWKS";
    const SETTINGS: &'static [Setting] = SETTINGS;
    type Settings = Settings;

    fn settings(env: &Env, config: &ServiceConfig) -> Result<Settings, ConfigError> {
        Settings::read(env, config)
    }

    async fn start(ctx: kit::service::Start, settings: Settings) -> anyhow::Result<Service> {
        Ok(Service::start(ctx.db, settings, ctx.bus).await?)
    }

    fn router(&self) -> Router {
        router(self.state.clone())
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        openapi()
    }

    /// Stops the relay (after serving has stopped), releasing its lease at once.
    async fn shutdown(self) {
        self.relay.shutdown().await;
    }

    fn token_verifier(&self) -> Option<Arc<Verifier>> {
        Some(self.state.verifier.clone())
    }
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Signing keys and the published JWKS.
    pub keys: KeyRing,
    /// Password hashing.
    pub passwords: Passwords,
    /// Verifies this service's own access tokens (in-process key set).
    pub verifier: Arc<Verifier>,
    /// Wakes the outbox relay after a commit that recorded events (a no-op without one).
    pub outbox: OutboxWaker,
    /// The event bus the relay publishes to, when one runs (checked by `/ready`).
    pub bus: Option<Arc<dyn EventBus>>,
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(s: &AppState) -> Arc<Verifier> {
        s.verifier.clone()
    }
}

impl AppState {
    /// Migrates `db`, loads the key ring, prepares hashing, and applies the bootstrap admin.
    pub async fn build(db: Db, settings: Settings) -> Result<AppState, Error> {
        migrate(&db).await?;
        let keys = KeyRing::load(settings.signing_key.clone(), &db).await?;
        let passwords = Passwords::new(settings.hash)?;
        let verifier = Verifier::local(keys.published(), &settings.issuer, &settings.audience);
        let state = AppState {
            db,
            settings: Arc::new(settings),
            keys,
            passwords,
            verifier: Arc::new(verifier),
            outbox: OutboxWaker::default(),
            bus: None,
        };
        if let Some(email) = state.settings.bootstrap_admin.clone() {
            accounts::bootstrap_admin(&state, &email).await?;
        }
        Ok(state)
    }
}

/// The user service running: its state plus the relay that publishes its outbox.
pub struct Service {
    /// What the router serves.
    pub state: AppState,
    relay: Relay,
}

impl Service {
    /// Builds the state (see [`AppState::build`]) and starts the outbox relay on `bus`.
    pub async fn start(
        db: Db,
        settings: Settings,
        bus: Arc<dyn EventBus>,
    ) -> Result<Service, Error> {
        let mut state = AppState::build(db.clone(), settings).await?;
        let relay = Relay::spawn(db, bus.clone(), RelayOptions::default());
        state.outbox = relay.waker();
        state.bus = Some(bus);
        Ok(Service { state, relay })
    }
}

/// The HTTP surface, with `/health`, `/ready` and `/metrics`.
pub fn router(state: AppState) -> Router {
    let telemetry = Telemetry::for_service("user", &state.db, state.bus.as_ref());
    let (api, doc) = api().split_for_parts();
    let api = api
        .with_state(state)
        .merge(kit::openapi::serve(&finish(doc)));
    telemetry.wrap(api)
}

/// The routes, each with its part of the OpenAPI document.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::me))
        .routes(routes!(accounts::change_password))
        .routes(routes!(auth::list_sessions))
        .routes(routes!(auth::revoke_session))
        .routes(routes!(accounts::set_roles))
        .routes(routes!(admin::list))
        .routes(routes!(admin::get))
        .routes(routes!(admin::disable))
        .routes(routes!(admin::enable))
        .routes(routes!(auth::rotate_keys))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::service_token))
        .routes(routes!(auth::jwks))
}

fn finish(doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    kit::openapi::finish(doc, "user", <Service as kit::Service>::ABOUT)
}

/// The service's OpenAPI document, as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    finish(api().into_openapi())
}
