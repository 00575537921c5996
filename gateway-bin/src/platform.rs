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

use std::sync::Arc;

use anyhow::{anyhow, Context};
use futures::future::BoxFuture;
use kit::identity::TokenSource;
use kit::Verifier;
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
    /// The product service (catalog, inventory, reservations).
    #[serde(default)]
    pub product: Option<ServiceConfig>,
    /// The payment service (cards, intents, refunds, ledger).
    #[serde(default)]
    pub payment: Option<ServiceConfig>,
    /// The order service (orders and their placement saga); needs the other three.
    #[serde(default)]
    pub order: Option<ServiceConfig>,
}

impl PlatformConfig {
    fn services(&self) -> [(&'static str, Option<&ServiceConfig>); 4] {
        [
            ("user", self.user.as_ref()),
            ("product", self.product.as_ref()),
            ("payment", self.payment.as_ref()),
            ("order", self.order.as_ref()),
        ]
    }
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
    for (name, c) in p.services() {
        let Some(c) = c else { continue };
        if let Some(url) = &c.database_url {
            let ok = ["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|s| url.starts_with(s));
            if !ok {
                return Err(format!(
                    "{name}.database_url: {url:?} must start with sqlite:// or postgres://"
                ));
            }
        }
        if c.bootstrap_admin.is_some() && name != "user" {
            return Err(format!(
                "{name}.bootstrap_admin: only the user service has accounts"
            ));
        }
    }
    if p.order.is_some() && (p.product.is_none() || p.payment.is_none() || p.user.is_none()) {
        return Err("order: the order service needs [platform.user], [platform.product] and [platform.payment] in the same process".into());
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

type Shutdown = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

struct Running {
    name: &'static str,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Stops the service's background work (relay, sweepers, sagas) after serving stopped.
    shutdown: Shutdown,
}

/// Starts every service the section names, user first and order last; returns once each is
/// listening. Services verify tokens with the user service's key set in-process; the order
/// service gets its service token from the user service by client credentials (a secret
/// made for this process).
pub fn start(config: &PlatformConfig) -> anyhow::Result<Platform> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("platform")
        .enable_all()
        .build()
        .context("starting the platform runtime")?;
    let running = rt.block_on(start_all(config))?;
    Ok(Platform { rt, running })
}

async fn open(name: &str, data_dir: &Path, c: &ServiceConfig) -> anyhow::Result<kit::Db> {
    let url = c
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/{name}.db", data_dir.display()));
    kit::Db::connect(&url).await.with_context(|| {
        format!(
            "platform.{name}: opening the database {}",
            kit::db::redact_url(&url)
        )
    })
}

async fn serve(
    name: &'static str,
    c: &ServiceConfig,
    app: axum::Router,
    shutdown: Shutdown,
) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .with_context(|| format!("platform.{name}.listen: cannot bind {}", c.listen))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(kit::serve::serve(listener, app, async {
        let _ = stopped.await;
    }));
    tracing::info!(service = name, addr = %c.listen, "platform: service listening");
    Ok(Running {
        name,
        stop,
        task,
        shutdown,
    })
}

async fn start_all(config: &PlatformConfig) -> anyhow::Result<Vec<Running>> {
    let bus = kit::bus::from_config(config.nats_url.as_deref())
        .await
        .context("platform.nats_url: connecting to the event bus")?;
    let data_dir = &config.data_dir;
    let mut running = Vec::new();
    let mut verifier: Option<Arc<Verifier>> = None;
    let mut order_secret: Option<String> = None;
    if let Some(c) = &config.user {
        let db = open("user", data_dir, c).await?;
        let mut settings = user_service::Settings::from_env(data_dir)
            .map_err(|e| anyhow!("platform.user: {e}"))?;
        if c.bootstrap_admin.is_some() {
            settings.bootstrap_admin = c.bootstrap_admin.clone();
        }
        if config.order.is_some() {
            let secret = random_secret();
            settings.service_clients.push(user_service::ServiceClient {
                id: "order".into(),
                secret_sha256: sha256_hex(&secret),
                permissions: order_service::SERVICE_PERMISSIONS
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
            });
            order_secret = Some(secret);
        }
        let (issuer, audience) = (settings.issuer.clone(), settings.audience.clone());
        let service = user_service::Service::start(db, settings, bus.clone())
            .await
            .context("platform.user: starting the user service")?;
        verifier = Some(Arc::new(Verifier::local(
            service.state.keys.published(),
            &issuer,
            &audience,
        )));
        let app = service.router();
        running.push(
            serve(
                "user",
                c,
                app,
                Box::new(move || Box::pin(service.shutdown())),
            )
            .await?,
        );
    }
    if let Some(c) = &config.product {
        let db = open("product", data_dir, c).await?;
        let kit_config = kit::ServiceConfig::from_env("product", c.listen.port())?;
        let settings = product_service::Settings::from_env(&kit_config)?;
        let v = verifier
            .clone()
            .unwrap_or_else(|| Arc::new(settings.verifier()));
        let service = product_service::Service::start(db, settings, v, bus.clone())
            .await
            .context("platform.product: starting the product service")?;
        let app = service.router();
        running.push(
            serve(
                "product",
                c,
                app,
                Box::new(move || Box::pin(service.shutdown())),
            )
            .await?,
        );
    }
    if let Some(c) = &config.payment {
        let db = open("payment", data_dir, c).await?;
        let settings = payment_service::Settings::from_env(data_dir)?;
        let v = verifier
            .clone()
            .unwrap_or_else(|| Arc::new(settings.verifier()));
        let service = payment_service::Service::start(db, settings, v, bus.clone())
            .await
            .context("platform.payment: starting the payment service")?;
        let app = service.router();
        running.push(
            serve(
                "payment",
                c,
                app,
                Box::new(move || Box::pin(service.shutdown())),
            )
            .await?,
        );
    }
    if let (Some(c), Some(user), Some(product), Some(payment)) = (
        &config.order,
        &config.user,
        &config.product,
        &config.payment,
    ) {
        let db = open("order", data_dir, c).await?;
        let settings = order_service::Settings {
            product_url: format!("http://{}", product.listen),
            payment_url: format!("http://{}", payment.listen),
            ..order_service::Settings::default()
        };
        let tokens = TokenSource::client_credentials(
            &format!("http://{}/auth/token", user.listen),
            "order",
            order_secret.as_deref().unwrap_or_default(),
        );
        let v = verifier.clone().context("platform.order: no verifier")?;
        let service = order_service::Service::start(db, settings, bus.clone(), v, tokens)
            .await
            .context("platform.order: starting the order service")?;
        let app = service.router();
        running.push(
            serve(
                "order",
                c,
                app,
                Box::new(move || Box::pin(service.shutdown())),
            )
            .await?,
        );
    }
    Ok(running)
}

fn random_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Platform {
    /// Stops every service, last started first, letting requests in flight finish (up to
    /// 10 s each), then their background work.
    pub fn stop(self) {
        let Platform { rt, running } = self;
        rt.block_on(async {
            for r in running.into_iter().rev() {
                let _ = r.stop.send(());
                match tokio::time::timeout(std::time::Duration::from_secs(10), r.task).await {
                    Ok(Ok(Ok(()))) => tracing::info!(service = r.name, "platform: stopped"),
                    Ok(Ok(Err(e))) => {
                        tracing::warn!(service = r.name, error = %e, "platform: stopped with an error")
                    }
                    _ => tracing::warn!(service = r.name, "platform: did not stop in time"),
                }
                (r.shutdown)().await;
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
