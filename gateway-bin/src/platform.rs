//! All-in-one mode: the `[platform]` section of a gateway config names the backend services
//! to run inside the `gateway` process, each on its own loopback listener, so that
//! `gateway run --config config/platform.toml` is the whole platform on one machine with
//! SQLite files under `data_dir`. The gateway's routes reach the services over those
//! listeners exactly as they would reach separate processes.
//!
//! ```toml
//! [platform]
//! data_dir = "data"
//! # nats_url = "nats://127.0.0.1:4222"  (default: the in-process event bus)
//!
//! [platform.user]
//! listen = "127.0.0.1:3001"
//! # database_url = "postgres://…"      (default: sqlite://<data_dir>/user.db)
//! # bootstrap_admin = "you@example.com"
//! ```
//!
//! Services start before the proxy (so the gateway's first JWKS fetch finds the user
//! service) and stop after it, finishing their requests in flight. The section is read at
//! start only: changing it needs a restart (the rest of the file still hot-reloads).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::Deserialize;
use tokio::sync::oneshot;

/// `[platform]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// Where services keep SQLite files and generated keys (relative to the working
    /// directory).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// NATS JetStream for events between services; absent = the in-process bus (events
    /// live while the process runs; the outbox keeps what was not yet published).
    #[serde(default)]
    pub nats_url: Option<String>,
    /// The user service (accounts, tokens, JWKS).
    #[serde(default)]
    pub user: Option<ServiceConfig>,
}

/// One in-process service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Its listener; the gateway's upstream for it points here.
    pub listen: SocketAddr,
    /// Its database: `sqlite://…` or `postgres://…` (default: a SQLite file in `data_dir`).
    #[serde(default)]
    pub database_url: Option<String>,
    /// User service only: an existing account's email to make admin at start.
    #[serde(default)]
    pub bootstrap_admin: Option<String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    platform: Option<PlatformConfig>,
}

/// Reads `[platform]` from the config text; an error names the file, line and column.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<Option<PlatformConfig>> {
    match toml::from_str::<File>(text) {
        Ok(f) => {
            if let Some(p) = &f.platform {
                validate(p).map_err(|e| anyhow!("{}: platform.{e}", path.display()))?;
            }
            Ok(f.platform)
        }
        Err(e) => {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            Err(anyhow!("{}:{line}:{col}: {}", path.display(), e.message()))
        }
    }
}

fn validate(p: &PlatformConfig) -> Result<(), String> {
    if let Some(u) = &p.user {
        if let Some(url) = &u.database_url {
            let ok = ["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|s| url.starts_with(s));
            if !ok {
                return Err(format!(
                    "user.database_url: {url:?} must start with sqlite:// or postgres://"
                ));
            }
        }
    }
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The running services.
pub struct Platform {
    rt: tokio::runtime::Runtime,
    running: Vec<Running>,
}

struct Running {
    name: &'static str,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    service: user_service::Service,
}

/// Starts every service the section names; returns once each is listening.
pub fn start(config: &PlatformConfig) -> anyhow::Result<Platform> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("platform")
        .enable_all()
        .build()
        .context("starting the platform runtime")?;
    let mut running = Vec::new();
    let bus = rt
        .block_on(kit::bus::from_config(config.nats_url.as_deref()))
        .context("platform.nats_url: connecting to the event bus")?;
    if let Some(user) = &config.user {
        running.push(rt.block_on(start_user(&config.data_dir, user, bus.clone()))?);
    }
    Ok(Platform { rt, running })
}

async fn start_user(
    data_dir: &Path,
    c: &ServiceConfig,
    bus: std::sync::Arc<dyn kit::EventBus>,
) -> anyhow::Result<Running> {
    let url = c
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/user.db", data_dir.display()));
    let db = kit::Db::connect(&url).await.with_context(|| {
        format!(
            "platform.user: opening the database {}",
            kit::db::redact_url(&url)
        )
    })?;
    let mut settings =
        user_service::Settings::from_env(data_dir).map_err(|e| anyhow!("platform.user: {e}"))?;
    if c.bootstrap_admin.is_some() {
        settings.bootstrap_admin = c.bootstrap_admin.clone();
    }
    let service = user_service::Service::start(db, settings, bus)
        .await
        .context("platform.user: starting the user service")?;
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .with_context(|| format!("platform.user.listen: cannot bind {}", c.listen))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let app = service.router();
    let task = tokio::spawn(kit::serve::serve(listener, app, async {
        let _ = stopped.await;
    }));
    tracing::info!(addr = %c.listen, "platform: user service listening");
    Ok(Running {
        name: "user",
        stop,
        task,
        service,
    })
}

impl Platform {
    /// Stops every service, letting requests in flight finish (up to 10 s each).
    pub fn stop(self) {
        let Platform { rt, running } = self;
        rt.block_on(async {
            for r in running {
                let _ = r.stop.send(());
                match tokio::time::timeout(std::time::Duration::from_secs(10), r.task).await {
                    Ok(Ok(Ok(()))) => tracing::info!(service = r.name, "platform: stopped"),
                    Ok(Ok(Err(e))) => tracing::warn!(service = r.name, error = %e, "platform: stopped with an error"),
                    _ => tracing::warn!(service = r.name, "platform: did not stop in time"),
                }
                r.service.shutdown().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_platform_section_names_file_line_and_field() {
        let text = "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[platform.user]\nlisten = \"nope\"\n";
        let e = parse(Path::new("p.toml"), text).unwrap_err().to_string();
        assert!(e.starts_with("p.toml:5:"), "{e}");
        let text = "[platform]\ndata_dir = \"d\"\nusers = 1\n";
        let e = parse(Path::new("p.toml"), text).unwrap_err().to_string();
        assert!(e.starts_with("p.toml:3:") && e.contains("users"), "{e}");
        let text = "[platform.user]\nlisten = \"127.0.0.1:3001\"\ndatabase_url = \"mysql://x\"\n";
        let e = parse(Path::new("p.toml"), text).unwrap_err().to_string();
        assert!(e.contains("platform.user.database_url"), "{e}");
        assert!(parse(Path::new("p.toml"), "[server]\n").unwrap().is_none());
    }
}
