//! `order-service`: the order service on its own. Settings come from the environment (see
//! `kit::config` and `order_service::Settings::from_env`), plus where the service token
//! comes from:
//!
//! - `SERVICE_CLIENT_SECRET` (with `SERVICE_CLIENT_ID`, default `order`, and
//!   `SERVICE_TOKEN_URL`, default `http://127.0.0.1:3001/auth/token`): client credentials
//!   at the user service;
//! - or `SERVICE_SIGNING_KEY_FILE`: a PEM Ed25519 key the verifiers trust, to mint tokens
//!   locally (`TOKEN_ISSUER`, `TOKEN_AUDIENCE` default `gatehouse-user` / `gatehouse`).
//!
//! Callers' tokens are verified against `JWKS_URL` (default the user service's
//! `http://127.0.0.1:3001/.well-known/jwks.json`).

use std::sync::Arc;

use anyhow::Context;
use kit::identity::{SigningKey, TokenSource};
use kit::{Db, ServiceConfig, Verifier};
use order_service::{Service, Settings, SERVICE_PERMISSIONS};

fn env(name: &str) -> Option<String> {
    std::env::var(format!("ORDER_{name}"))
        .or_else(|_| std::env::var(name))
        .ok()
        .filter(|v| !v.trim().is_empty())
}

fn token_source(issuer: &str, audience: &str) -> anyhow::Result<TokenSource> {
    if let Some(secret) = env("SERVICE_CLIENT_SECRET") {
        let url =
            env("SERVICE_TOKEN_URL").unwrap_or_else(|| "http://127.0.0.1:3001/auth/token".into());
        let id = env("SERVICE_CLIENT_ID").unwrap_or_else(|| "order".into());
        return Ok(TokenSource::client_credentials(&url, &id, &secret));
    }
    if let Some(file) = env("SERVICE_SIGNING_KEY_FILE") {
        let pem = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
        let key = SigningKey::from_pem(&pem).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        return Ok(TokenSource::signing(
            key,
            issuer,
            audience,
            "service:order",
            SERVICE_PERMISSIONS,
        ));
    }
    anyhow::bail!("set SERVICE_CLIENT_SECRET (client credentials at the user service) or SERVICE_SIGNING_KEY_FILE (mint service tokens locally)")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a == "-h" || a == "--help")
    {
        println!("order-service\n\nSettings from the environment: BIND, DATA_DIR, DATABASE_URL, NATS_URL, JWKS_URL, TOKEN_ISSUER, TOKEN_AUDIENCE, PRODUCT_URL, PAYMENT_URL, REQUEST_TIMEOUT, SAGA_STEP_DEADLINE, SAGA_LEASE, SAGA_RESUME_INTERVAL, SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET, SERVICE_TOKEN_URL, SERVICE_SIGNING_KEY_FILE (each may be prefixed ORDER_).");
        return Ok(());
    }
    let config = ServiceConfig::from_env("order", 3003)?;
    let settings = Settings::from_env().map_err(anyhow::Error::msg)?;
    let issuer = env("TOKEN_ISSUER").unwrap_or_else(|| "gatehouse-user".into());
    let audience = env("TOKEN_AUDIENCE").unwrap_or_else(|| "gatehouse".into());
    let jwks = config
        .jwks_url
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:3001/.well-known/jwks.json".into());
    let verifier = Arc::new(Verifier::remote(&jwks, &issuer, &audience));
    let tokens = token_source(&issuer, &audience)?;
    let db = Db::connect(&config.database_url).await.with_context(|| {
        format!(
            "opening the database {}",
            kit::db::redact_url(&config.database_url)
        )
    })?;
    let bus = kit::bus::from_config(config.nats_url.as_deref())
        .await
        .context("connecting to the event bus (NATS_URL)")?;
    let service = Service::start(db.clone(), settings, bus, verifier, tokens)
        .await
        .context("starting the order service")?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding {}", config.bind))?;
    tracing::info!(addr = %config.bind, "order service listening");
    kit::serve::serve(listener, service.router(), kit::serve::shutdown_signal()).await?;
    service.shutdown().await;
    db.close().await;
    Ok(())
}
