//! What every Gatehouse backend shares.
//!
//! A backend is a lib with `router(state) -> axum::Router` plus a thin `main`. The kit gives
//! it the same plumbing everywhere:
//!
//! - [`db`]: one sqlx pool, SQLite (embedded default) or PostgreSQL, one SQL dialect, the
//!   kit's migrations run with the service's, unique violations mapped to one `Conflict`;
//! - [`problem`]: `application/problem+json` errors and a JSON extractor that rejects with them;
//! - [`identity`]: the bearer-token [`Identity`] extractor (EdDSA, JWKS URL or in-process
//!   keys) with role/permission guards, and the [`identity::SigningKey`] that issues tokens;
//! - [`idempotency`]: the `Idempotency-Key` layer (Stripe semantics) for POST and PATCH;
//! - [`service`]: the one shape of a service — name, settings, start, router, shutdown —
//!   run the same way as its own binary (CLI, logs, signals) and in platform mode;
//! - [`config`]: settings from flags, the environment and a file, with embedded defaults;
//! - [`telemetry`]: `/health`, `/ready`, `/metrics`, a span per request continuing `traceparent`;
//! - [`serve`]: serving with graceful shutdown;
//! - events, at least once from a committed transaction to every consumer:
//!   [`outbox::record`] writes an [`Event`] in the producer's transaction, the [`Relay`]
//!   publishes committed rows to an [`EventBus`] ([`InProcessBus`] embedded,
//!   [`NatsBus`] for JetStream), and a [`Consumer`] applies each delivery once through the
//!   [`inbox`] in its own transaction before acking it;
//! - `testing` (feature `testing`): a fresh database per test, on SQLite always and on
//!   PostgreSQL when `TEST_DATABASE_URL` is set, and an app served on port 0.

pub mod bus;
pub mod config;
pub mod db;
pub mod event;
pub mod idempotency;
pub mod identity;
pub mod inbox;
mod migrations;
pub mod openapi;
pub mod outbox;
pub mod page;
pub mod problem;
pub mod relay;
pub mod secret;
pub mod serve;
pub mod service;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;

pub use bus::{BusError, Delivery, EventBus, InProcessBus, NatsBus, Subscription};
pub use config::{Env, ServiceConfig};
pub use db::{Db, DbError, DbKind};
pub use event::Event;
pub use idempotency::IdempotencyLayer;
pub use identity::{Identity, Verifier};
pub use inbox::{Consumer, Handler};
pub use problem::{Json, Problem, Query};
pub use relay::{OutboxWaker, Relay};
pub use service::Service;
pub use telemetry::Telemetry;
pub use trace::TraceContext;

/// Lower-case hex of `bytes` (digests, keys and ids the services store or show as text).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
