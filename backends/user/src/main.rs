//! `user-service`: the user service on its own. Settings come from the environment (see
//! `kit::config` and `user_service::Settings::from_env`); `--bootstrap-admin EMAIL` makes
//! an existing account admin at start-up.

use anyhow::Context;
use kit::{Db, ServiceConfig};
use user_service::{Service, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = ServiceConfig::from_env("user", 3001)?;
    let mut settings = Settings::from_env(&config.data_dir).map_err(anyhow::Error::msg)?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bootstrap-admin" => {
                settings.bootstrap_admin =
                    Some(args.next().context("--bootstrap-admin needs an email")?)
            }
            "-h" | "--help" => {
                println!("user-service [--bootstrap-admin EMAIL]\n\nSettings from the environment: BIND, DATA_DIR, DATABASE_URL, NATS_URL, TOKEN_ISSUER, TOKEN_AUDIENCE, SIGNING_KEY, SIGNING_KEY_FILE, BOOTSTRAP_ADMIN (each may be prefixed USER_).");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
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
    let service = Service::start(db.clone(), settings, bus)
        .await
        .context("starting the user service")?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding {}", config.bind))?;
    tracing::info!(addr = %config.bind, "user service listening");
    kit::serve::serve(listener, service.router(), kit::serve::shutdown_signal()).await?;
    service.shutdown().await;
    db.close().await;
    Ok(())
}
