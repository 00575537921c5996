//! All-in-one mode: the `[platform]` section of a gateway config names the backend services
//! to run inside the `gateway` process, each on its own loopback listener, so that
//! `gateway run --config config/platform.toml` is the whole platform on one machine with
//! SQLite files under `data_dir`. The gateway's routes reach the services over those
//! listeners exactly as they would reach separate processes.
//!
//! ```toml
//! [platform]
//! data_dir = "data"
//! # nats_url = "nats://127.0.0.1:4222"  (default: the embedded bus, <data_dir>/bus.db)
//!
//! [platform.user]
//! listen = "127.0.0.1:3001"
//! # database_url = "postgres://…"      (default: sqlite://<data_dir>/user.db)
//! # bootstrap_admin = "you@example.com"
//!
//! [platform.docs]                      # /api/docs: every service's operations
//! listen = "127.0.0.1:3009"
//! ```
//!
//! Services start before the proxy (so the gateway's first JWKS fetch finds the user
//! service) and stop after it, finishing their requests in flight. The section is read at
//! start only: changing it needs a restart (the rest of the file still hot-reloads).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::{anyhow, Context};
use kit::service::{Launch, Launcher, Running};
use kit::{Env, Verifier};
use serde::Deserialize;

/// `[platform]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// Where services keep SQLite files and generated keys (relative to the working
    /// directory).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// NATS JetStream for events between services; absent = the embedded bus, a log in
    /// `<data_dir>/bus.db` that keeps every event until each consumer has handled it.
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
    /// The notification service (inbox, email from the others' events).
    #[serde(default)]
    pub notification: Option<ServiceConfig>,
    /// The analytics service (event ingest, rollups, reports, from the others' events).
    #[serde(default)]
    pub analytics: Option<ServiceConfig>,
    /// The docs page (`/api/docs`) of the services above.
    #[serde(default)]
    pub docs: Option<DocsConfig>,
}

/// `[platform.docs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocsConfig {
    /// Its listener; the gateway routes `/api/docs` here.
    pub listen: SocketAddr,
}

/// The services platform mode can run, in the order they start (a service starts after
/// those it needs) and stop in reverse.
pub const SERVICES: [Launcher; 6] = [
    Launcher::of::<user_service::Service>(),
    Launcher::of::<product_service::Service>(),
    Launcher::of::<payment_service::Service>(),
    Launcher::of::<order_service::Service>(),
    Launcher::of::<notification_service::Service>(),
    Launcher::of::<analytics_service::Service>(),
];

impl PlatformConfig {
    /// The section of the service `name`, if the file has one.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        match name {
            "user" => self.user.as_ref(),
            "product" => self.product.as_ref(),
            "payment" => self.payment.as_ref(),
            "order" => self.order.as_ref(),
            "notification" => self.notification.as_ref(),
            "analytics" => self.analytics.as_ref(),
            _ => None,
        }
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
    for launcher in &SERVICES {
        let name = launcher.name;
        let Some(c) = p.service(name) else { continue };
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
        let missing: Vec<String> = launcher
            .needs
            .iter()
            .filter(|n| p.service(n).is_none())
            .map(|n| format!("[platform.{n}]"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{name}: the {name} service needs {} in the same process",
                missing.join(", ")
            ));
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

/// Starts every service the section names, in [`SERVICES`] order; returns once each is
/// listening. They share one event bus; services verify tokens with the user service's key
/// set in-process; a service that calls others gets its service token from the user service
/// by client credentials, with a secret made for this process.
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

async fn start_all(config: &PlatformConfig) -> anyhow::Result<Vec<Running>> {
    let bus = kit::bus::from_config(config.nats_url.as_deref(), &config.data_dir.join("bus.db"))
        .await
        .context("platform.nats_url: connecting to the event bus")?;
    let wiring = Wiring::new(config);
    let mut verifier: Option<Arc<Verifier>> = None;
    let mut running = Vec::new();
    for launcher in &SERVICES {
        let name = launcher.name;
        let Some(c) = config.service(name) else {
            continue;
        };
        let env = wiring
            .env(name, c)
            .with_context(|| format!("platform.{name}"))?;
        let service = launcher
            .launch(Launch {
                env,
                bus: Some(bus.clone()),
                verifier: verifier.clone(),
            })
            .await
            .with_context(|| format!("platform.{name}"))?;
        verifier = verifier.or_else(|| service.verifier.clone());
        running.push(service);
    }
    if let Some(docs) = &config.docs {
        let present: Vec<&Launcher> = SERVICES
            .iter()
            .filter(|l| config.service(l.name).is_some())
            .collect();
        let doc = crate::docs::document(&present).map_err(|e| anyhow!("platform.docs: {e}"))?;
        let page = crate::docs::router(&doc);
        running.push(
            Running::serve_router("docs", docs.listen, page)
                .await
                .context("platform.docs")?,
        );
    }
    Ok(running)
}

/// What platform mode sets on each service's settings, over the environment: its
/// listener, data folder and database from the section; every other service's address as
/// `<NAME>_URL`; and, for a service that calls others, client credentials at the user
/// service made for this process.
struct Wiring {
    data_dir: String,
    urls: Vec<(String, String)>,
    /// (service, secret) of every service that gets service tokens.
    clients: Vec<(&'static str, String)>,
    user_url: Option<String>,
}

impl Wiring {
    fn new(config: &PlatformConfig) -> Wiring {
        let present = || SERVICES.iter().filter(|l| config.service(l.name).is_some());
        let url = |name: &str| config.service(name).map(|c| format!("http://{}", c.listen));
        Wiring {
            data_dir: config.data_dir.display().to_string(),
            urls: present()
                .filter_map(|l| {
                    Some((format!("{}_URL", l.name.to_ascii_uppercase()), url(l.name)?))
                })
                .collect(),
            clients: present()
                .filter(|l| !l.client_permissions.is_empty())
                .map(|l| (l.name, random_secret()))
                .collect(),
            user_url: url("user"),
        }
    }

    fn env(&self, name: &'static str, c: &ServiceConfig) -> anyhow::Result<Env> {
        let mut env = Env::process(name)?
            .set("BIND", c.listen.to_string())
            .set("DATA_DIR", self.data_dir.clone());
        if let Some(url) = &c.database_url {
            env = env.set("DATABASE_URL", url.clone());
        }
        if let Some(email) = &c.bootstrap_admin {
            env = env.set("BOOTSTRAP_ADMIN", email.clone());
        }
        for (variable, url) in &self.urls {
            env = env.set(variable, url.clone());
        }
        if name == "user" && !self.clients.is_empty() {
            let clients = self.service_clients(&env)?;
            env = env.set("SERVICE_CLIENTS", clients);
        }
        if let (Some((_, secret)), Some(user)) = (
            self.clients.iter().find(|(client, _)| *client == name),
            &self.user_url,
        ) {
            env = env
                .set("SERVICE_CLIENT_ID", name)
                .set("SERVICE_CLIENT_SECRET", secret.clone())
                .set("SERVICE_TOKEN_URL", format!("{user}/auth/token"));
        }
        Ok(env)
    }

    /// The user service's `SERVICE_CLIENTS`: those the environment declares, plus this
    /// process's.
    fn service_clients(&self, env: &Env) -> anyhow::Result<String> {
        let mut clients: Vec<serde_json::Value> = match env.lookup("SERVICE_CLIENTS") {
            Some((variable, v)) => serde_json::from_str(&v)
                .with_context(|| format!("{variable}: not a JSON list of clients"))?,
            None => Vec::new(),
        };
        for (client, secret) in &self.clients {
            let permissions = SERVICES
                .iter()
                .find(|l| l.name == *client)
                .map_or(&[][..], |l| l.client_permissions);
            clients.push(serde_json::json!({
                "id": client,
                "secret_sha256": sha256_hex(secret),
                "permissions": permissions,
            }));
        }
        Ok(serde_json::Value::from(clients).to_string())
    }
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
            for service in running.into_iter().rev() {
                service.stop(std::time::Duration::from_secs(10)).await;
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
