//! `payment-service`: the payment service on its own. Settings come from the environment
//! (see `kit::config` and `payment_service::Settings::from_env`).

use std::sync::Arc;

use anyhow::Context;
use kit::{Db, ServiceConfig};
use payment_service::{Service, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if std::env::args().skip(1).any(|a| a == "-h" || a == "--help") {
        println!("payment-service\n\nSettings from the environment: BIND, DATA_DIR, DATABASE_URL, NATS_URL, JWKS_URL, TOKEN_ISSUER, TOKEN_AUDIENCE, CARD_FINGERPRINT_KEY, CARD_FINGERPRINT_KEY_FILE, PROCESSOR_DEADLINE_MS, FRAUD_* (each may be prefixed PAYMENT_).");
        return Ok(());
    }
    let config = ServiceConfig::from_env("payment", 3004)?;
    let mut settings = Settings::from_env(&config.data_dir)?;
    if let Some(url) = &config.jwks_url {
        settings.jwks_url = url.clone();
    }
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
        .context("starting the payment service")?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding {}", config.bind))?;
    tracing::info!(addr = %config.bind, "payment service listening");
    kit::serve::serve(listener, service.router(), kit::serve::shutdown_signal()).await?;
    service.shutdown().await;
    db.close().await;
    Ok(())
}
