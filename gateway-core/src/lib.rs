//! # gateway-core
//!
//! The library behind Gatehouse: a reverse proxy on Cloudflare's Pingora with a route table,
//! upstream pools with health checks, and a configuration that reloads without a restart.
//!
//! How a request travels:
//!
//! ```text
//! client ─► Pingora listener ─► GatewayProxy (ProxyHttp)
//!   request_filter           snapshot = store.load()  (one Arc per request, never re-read)
//!                            path normalized, route = snapshot.router.find(host, method, path, headers)
//!   upstream_peer            route.upstream.select(key, already tried)  (LB + health)
//!   upstream_request_filter  rewritten path, X-Forwarded-*, x-request-id
//!   response_filter          x-request-id echoed
//!   logging                  metrics
//! ```
//!
//! Modules, one noun each: [`config`] (the TOML model and `validate()`), [`routing`] (the
//! compiled route table and path normalization), [`upstream`] (pools, selection, health),
//! [`snapshot`] (one built config), [`reload`] (the `ConfigStore` and its sources),
//! [`observe`] (metrics, request ids, traces, the access log), [`forwarding`] (client
//! address, `X-Forwarded-*`, hop-by-hop fields), [`problem`] (the gateway's own error answers),
//! [`proxy`] (the Pingora glue, wiring only), [`admin`] (the admin listener) and `server`
//! ([`Gateway`], [`GatewayHandle`]).
//!
//! ```no_run
//! let handle = gateway_core::Gateway::builder()
//!     .config_file("config/gateway.toml")
//!     .build()?
//!     .spawn()?;
//! println!("proxy on {}", handle.local_addr());
//! handle.shutdown();
//! # Ok::<(), gateway_core::GatewayError>(())
//! ```

pub mod admin;
pub mod config;
pub mod downstream;
pub mod drain;
pub mod error;
mod fields;
pub mod filter;
pub mod forwarding;
mod framing;
#[doc(hidden)]
pub mod fuzzing;
mod keyed;
pub mod observe;
pub mod outlier;
pub mod problem;
pub mod proxy;
pub mod reload;
pub mod resolve;
pub mod routing;
mod secrets;
pub mod snapshot;
pub mod tls;
pub mod upstream;

mod server;

pub use config::Config;
pub use error::{ConfigError, GatewayError};
pub use filter::{
    Decision, Filter, FilterRegistry, FilterSpec, FilterState, Reply, RequestInfo, VerifiedClaims,
};
pub use reload::{ConfigStore, ReloadOutcome};
pub use server::{Gateway, GatewayBuilder, GatewayHandle};
pub use snapshot::Snapshot;
