//! The one shape of a service. A service declares its name, default port, settings,
//! start-up (migrations, background tasks), router and shutdown once, as a [`Service`];
//! the kit runs it the same way as its own binary ([`main`], through [`service_main!`])
//! and inside the gateway's platform mode ([`Launcher`]):
//!
//! - the command line (clap): `--help` listing every setting with its variable,
//!   `--version`, a flag for each setting declared as one, `--config FILE`;
//! - settings through one [`Env`] (flags, then the environment, then the file);
//! - logs: text by default, JSON lines with `LOG_FORMAT=json`, filtered by `RUST_LOG`;
//! - the database (migrated by the service's `start`), the bus (NATS when `NATS_URL` is
//!   set, else the embedded one, or the one platform mode shares), the listener;
//! - graceful shutdown on SIGTERM or Ctrl-C: requests in flight finish, then the service
//!   stops its background work, then the database closes.
//!
//! `/health`, `/ready` and `/metrics` come with the router through [`crate::Telemetry`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use crate::config::{ConfigError, Env, Setting, COMMON_SETTINGS};
use crate::{Db, EventBus, ServiceConfig, Verifier};

/// What a service is, declared once; the kit does the rest (see the module docs).
pub trait Service: Sized + Send + 'static {
    /// Its name: the prefix of its variables (`USER_…`), its metric label, its database file.
    const NAME: &'static str;
    /// The port it listens on by default (on 127.0.0.1).
    const PORT: u16;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// The settings it reads beyond [`COMMON_SETTINGS`], for `--help`, the flags and the
    /// check of the settings file.
    const SETTINGS: &'static [Setting];
    /// Services that must run in the same process for platform mode to start this one.
    const NEEDS: &'static [&'static str] = &[];
    /// The permissions of the service token it gets by client credentials at the user
    /// service; empty = it calls no other service. Platform mode makes it a client.
    const CLIENT_PERMISSIONS: &'static [&'static str] = &[];

    /// Its own settings.
    type Settings: Send + 'static;

    /// Reads its settings; an error names the variable.
    fn settings(env: &Env, config: &ServiceConfig) -> Result<Self::Settings, ConfigError>;

    /// Migrates, starts its background work, and is ready to serve.
    fn start(
        ctx: Start,
        settings: Self::Settings,
    ) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// The HTTP surface, with `/health`, `/ready` and `/metrics`.
    fn router(&self) -> Router;

    /// Its OpenAPI document, as its router serves it at `/openapi.json`.
    fn openapi() -> utoipa::openapi::OpenApi;

    /// Stops its background work, after serving stopped.
    fn shutdown(self) -> impl Future<Output = ()> + Send;

    /// A verifier of the access tokens this service issues, for the other services in the
    /// same process (the user service offers its key set; others have none).
    fn token_verifier(&self) -> Option<Arc<Verifier>> {
        None
    }
}

/// What the kit hands a service to start with.
pub struct Start {
    /// Its database, connected (not yet migrated).
    pub db: Db,
    /// The event bus its relay publishes to and its consumers read.
    pub bus: Arc<dyn EventBus>,
    /// The settings every service has.
    pub config: ServiceConfig,
    /// The in-process verifier of the user service's tokens, in platform mode.
    pub verifier: Option<Arc<Verifier>>,
}

impl Start {
    /// The verifier platform mode shares, or one of the JWKS at `JWKS_URL` when the service
    /// runs alone ([`ServiceConfig::verifier`]).
    pub fn verifier(&self) -> Arc<Verifier> {
        self.verifier
            .clone()
            .unwrap_or_else(|| Arc::new(self.config.verifier()))
    }
}

/// A service serving on its listener.
pub struct Running {
    /// Its name.
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its verifier for the other services of the process (see
    /// [`Service::token_verifier`]).
    pub verifier: Option<Arc<Verifier>>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}

impl Running {
    /// Serves `router` on `bind` under `name`; stopping it runs `shutdown` after serving
    /// stopped.
    pub async fn serve(
        name: &'static str,
        bind: SocketAddr,
        router: Router,
        verifier: Option<Arc<Verifier>>,
        shutdown: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
    ) -> anyhow::Result<Running> {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("{name}: cannot bind {bind}"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::serve::serve(listener, router, async {
            let _ = stopped.await;
        }));
        tracing::info!(service = name, %addr, "listening");
        Ok(Running {
            name,
            addr,
            verifier,
            stop,
            task,
            shutdown,
        })
    }

    /// Serves `router` on `bind` under `name`, with nothing to do after serving stopped.
    pub async fn serve_router(
        name: &'static str,
        bind: SocketAddr,
        router: Router,
    ) -> anyhow::Result<Running> {
        Running::serve(name, bind, router, None, Box::new(|| Box::pin(async {}))).await
    }

    /// Stops accepting, lets requests in flight finish (up to `grace`), then stops the
    /// service's background work and closes its database.
    pub async fn stop(self, grace: std::time::Duration) {
        let _ = self.stop.send(());
        match tokio::time::timeout(grace, self.task).await {
            Ok(Ok(Ok(()))) => tracing::info!(service = self.name, "stopped serving"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(service = self.name, error = %e, "stopped serving with an error")
            }
            _ => tracing::warn!(
                service = self.name,
                "requests still in flight after the grace period"
            ),
        }
        (self.shutdown)().await;
    }
}

/// A [`Service`] with its type erased, so platform mode can start a list of them in a loop.
#[derive(Clone, Copy)]
pub struct Launcher {
    /// [`Service::NAME`].
    pub name: &'static str,
    /// [`Service::PORT`].
    pub port: u16,
    /// [`Service::NEEDS`].
    pub needs: &'static [&'static str],
    /// [`Service::CLIENT_PERMISSIONS`].
    pub client_permissions: &'static [&'static str],
    /// [`Service::openapi`].
    pub openapi: fn() -> utoipa::openapi::OpenApi,
    launch: fn(Launch) -> BoxFuture<'static, anyhow::Result<Running>>,
}

/// What a launch is given beyond the settings: the shared bus and verifier of platform
/// mode, if any.
pub struct Launch {
    /// The service's settings.
    pub env: Env,
    /// A bus shared with other services in the process; `None` = from `NATS_URL`.
    pub bus: Option<Arc<dyn EventBus>>,
    /// The user service's verifier when it runs in the same process.
    pub verifier: Option<Arc<Verifier>>,
}

impl Launcher {
    /// The launcher of `S`.
    pub const fn of<S: Service>() -> Launcher {
        Launcher {
            name: S::NAME,
            port: S::PORT,
            needs: S::NEEDS,
            client_permissions: S::CLIENT_PERMISSIONS,
            openapi: S::openapi,
            launch: |l| Box::pin(launch::<S>(l)),
        }
    }

    /// Reads the settings, connects the database (and the bus, unless given), starts the
    /// service and serves it on its `BIND` address.
    pub async fn launch(&self, launch: Launch) -> anyhow::Result<Running> {
        (self.launch)(launch).await
    }
}

async fn launch<S: Service>(l: Launch) -> anyhow::Result<Running> {
    let name = S::NAME;
    l.env.check_file(S::SETTINGS)?;
    let config = ServiceConfig::read(&l.env, S::PORT)?;
    let settings = S::settings(&l.env, &config)?;
    let db = Db::connect(&config.database_url).await.with_context(|| {
        format!(
            "{name}: opening the database {}",
            crate::db::redact_url(&config.database_url)
        )
    })?;
    let bus = match l.bus {
        Some(bus) => bus,
        None => crate::bus::from_config(
            config.nats_url.as_deref(),
            &config.data_dir.join(format!("{name}.bus.db")),
        )
        .await
        .with_context(|| format!("{name}: connecting to the event bus"))?,
    };
    let bind = config.bind;
    let ctx = Start {
        db: db.clone(),
        bus,
        config,
        verifier: l.verifier,
    };
    let service = S::start(ctx, settings)
        .await
        .with_context(|| format!("starting the {name} service"))?;
    Running::serve(
        name,
        bind,
        service.router(),
        service.token_verifier(),
        Box::new(move || {
            Box::pin(async move {
                service.shutdown().await;
                db.close().await;
            })
        }),
    )
    .await
}

/// The command line of `S`: `--help`, `--version`, `--config FILE` and a flag per setting
/// declared as one.
pub fn command<S: Service>(version: &'static str) -> clap::Command {
    let mut help = String::from("Settings (environment variables, each may be prefixed ");
    help.push_str(&S::NAME.to_ascii_uppercase());
    help.push_str("_; flags win over them, they win over the --config file):\n");
    for s in COMMON_SETTINGS.iter().chain(S::SETTINGS) {
        help.push_str(&format!("  {:<28} {}\n", s.name, s.help));
    }
    let mut cmd = clap::Command::new(format!("{}-service", S::NAME))
        .about(S::ABOUT)
        .version(version)
        .after_help(help)
        .arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("FILE")
                .help("a TOML file of settings (lower-case names: bind = \"127.0.0.1:3001\")"),
        );
    for s in COMMON_SETTINGS.iter().chain(S::SETTINGS).filter(|s| s.flag) {
        cmd = cmd.arg(
            clap::Arg::new(s.name)
                .long(s.long())
                .value_name("VALUE")
                .help(format!("{} [{}]", s.help, s.name)),
        );
    }
    cmd
}

/// `S`'s settings from its command line and the process environment.
pub fn env_from_args<S: Service>(
    version: &'static str,
    args: impl IntoIterator<Item = String>,
) -> Result<Env, clap::Error> {
    let matches = command::<S>(version).try_get_matches_from(args)?;
    let mut env = Env::from_lookup(S::NAME, |k| std::env::var(k).ok());
    if let Some(file) = matches.get_one::<String>("config") {
        env = env.set("CONFIG_FILE", file.clone());
    }
    for s in COMMON_SETTINGS.iter().chain(S::SETTINGS).filter(|s| s.flag) {
        if let Some(v) = matches.get_one::<String>(s.name) {
            env = env.set(s.name, v.clone());
        }
    }
    Ok(env)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`): text, or one JSON object per
/// line with `LOG_FORMAT=json`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// The whole `main` of a service binary: the command line, logs, settings, start, serve
/// until SIGTERM or Ctrl-C, stop gracefully. Use it through [`service_main!`].
pub fn main<S: Service>(version: &'static str) -> std::process::ExitCode {
    let env = match env_from_args::<S>(version, std::env::args()) {
        Ok(env) => env,
        Err(e) => e.exit(),
    };
    init_logging();
    crate::trace::install_from_env();
    let run = async {
        let env = env.with_file_from_env()?;
        let running = Launcher::of::<S>()
            .launch(Launch {
                env,
                bus: None,
                verifier: None,
            })
            .await?;
        crate::serve::shutdown_signal().await;
        running.stop(std::time::Duration::from_secs(30)).await;
        anyhow::Ok(())
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run));
    crate::trace::shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `fn main` of a service binary: `kit::service_main!(user_service::Service);`
#[macro_export]
macro_rules! service_main {
    ($service:ty) => {
        fn main() -> std::process::ExitCode {
            $crate::service::main::<$service>(env!("CARGO_PKG_VERSION"))
        }
    };
}
