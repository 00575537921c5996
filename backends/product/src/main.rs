//! `product-service`: the product service on its own. Settings come from the environment
//! (see `kit::config` and `product_service::Settings::from_env`).

use std::sync::Arc;

use anyhow::Context;
use kit::{Db, ServiceConfig};
use product_service::{Service, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if std::env::args().skip(1).any(|a| a == "-h" || a == "--help") {
        println!("product-service\n\nSettings from the environment: BIND, DATA_DIR, DATABASE_URL, NATS_URL, JWKS_URL, TOKEN_ISSUER, TOKEN_AUDIENCE, RESERVATION_TTL, SWEEP_INTERVAL, LOW_STOCK_THRESHOLD, REDIS_URL, CACHE_TTL, CACHE_CAPACITY, CACHE_KEY_PREFIX (each may be prefixed PRODUCT_).");
        return Ok(());
    }
    if let Some(arg) = std::env::args().nth(1) {
        anyhow::bail!("unknown argument {arg:?} (try --help)");
    }
    let config = ServiceConfig::from_env("product", 3002)?;
    let settings = Settings::from_env(&config)?;
    let db = Db::connect(&config.database_url).await.with_context(|| {
        format!(
            "opening the database {}",
            kit::db::redact_url(&config.database_url)
        )
    })?;
    let bus = kit::bus::from_config(config.nats_url.as_deref())
        .await
        .context("connecting to the event bus (NATS_URL)")?;
    let verifier = Arc::new(settings.verifier());
    let service = Service::start(db.clone(), settings, verifier, bus)
        .await
        .context("starting the product service")?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding {}", config.bind))?;
    tracing::info!(addr = %config.bind, "product service listening");
    kit::serve::serve(listener, service.router(), kit::serve::shutdown_signal()).await?;
    service.shutdown().await;
    db.close().await;
    Ok(())
}
