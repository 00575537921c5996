//! Errors of the library. Each says where it came from: the operator's config, or starting
//! the gateway. Client-facing failures are never errors here: they are answered as
//! `application/problem+json` by the proxy (see [`crate::problem`]).

pub use crate::config::ConfigError;

/// Starting or running the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is not servable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener or background thread could not start.
    #[error("cannot start the gateway: {0}")]
    Start(String),
}
