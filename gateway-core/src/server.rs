//! `Gateway`: build one from a config, then `run()` it (blocking, for binaries) or `spawn()` it
//! (background threads, for tests and embedders) and stop it through its handle.
//!
//! Under the hood it is one Pingora `Server` with four services: the proxy, the admin
//! listener, the reload watcher and the health checker.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pingora_core::apps::http_app::HttpServer;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::{Config, Source as ConfigSource};
use crate::downstream::Downstream;
use crate::drain::{Drain, DrainService, Source, Watch};
use crate::error::{ConfigError, GatewayError};
use crate::filter::{Filter, FilterRegistry, FilterSpec};
use crate::observe::{AccessLog, Metrics};
use crate::proxy::GatewayProxy;
use crate::reload::{ConfigStore, DnsService, HealthService, ReloadService};
use crate::resolve::{Names, Resolve};
use crate::snapshot::Snapshot;

enum ConfigInput {
    File(PathBuf),
    Text(String),
}

/// Builds a [`Gateway`]. Start with [`Gateway::builder`].
#[must_use]
pub struct GatewayBuilder {
    input: Option<ConfigInput>,
    registry: FilterRegistry,
    watch_file: bool,
    sighup: bool,
    resolver: Option<Arc<dyn Resolve>>,
}

impl GatewayBuilder {
    /// Serve this config file; it is watched and reloaded when it changes.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.input = Some(ConfigInput::File(path.into()));
        self
    }

    /// Serve config given as TOML text (no file, so no file reloads).
    pub fn config_toml(mut self, text: impl Into<String>) -> Self {
        self.input = Some(ConfigInput::Text(text.into()));
        self
    }

    /// Serve a config built in code.
    pub fn config(mut self, config: &Config) -> Self {
        self.input = Some(ConfigInput::Text(
            toml::to_string(config).unwrap_or_default(),
        ));
        self
    }

    /// Watch the config file and reload on change (default: on).
    pub fn watch_config(mut self, on: bool) -> Self {
        self.watch_file = on;
        self
    }

    /// Reload the config file on SIGHUP (default: off; a process-wide signal is the binary's
    /// business, not a library's).
    pub fn reload_on_sighup(mut self, on: bool) -> Self {
        self.sighup = on;
        self
    }

    /// Register a filter kind of your own; `[filters.NAME] kind = "KIND"` then builds it with
    /// `factory`, exactly like a built-in kind (same name replaces a built-in).
    pub fn filter_kind<F>(mut self, kind: &str, factory: F) -> Self
    where
        F: Fn(&FilterSpec<'_>) -> Result<Arc<dyn Filter>, String> + Send + Sync + 'static,
    {
        self.registry.register(kind, Arc::new(factory));
        self
    }

    /// Look backend names up with `resolver` instead of the system's (one that reports TTLs,
    /// service discovery of your own, a table in a test).
    pub fn resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Load and validate the config and build the first snapshot. Binds nothing yet.
    pub fn build(self) -> Result<Gateway, GatewayError> {
        let (source, path) = match self.input {
            Some(ConfigInput::File(path)) => (ConfigSource::read(&path)?, Some(path)),
            Some(ConfigInput::Text(text)) => (ConfigSource::inline(text), None),
            None => return Err(GatewayError::Start("no configuration given".into())),
        };
        let names = match self.resolver {
            Some(resolver) => Arc::new(Names::new(resolver)),
            None => Names::system(),
        };
        let snapshot = Snapshot::from_source_with(&source, 1, None, &self.registry, names)?;
        let config = Arc::clone(&snapshot.config);
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(ConfigStore::new(
            snapshot,
            path,
            Arc::clone(&metrics),
            self.registry,
        ));
        store.remember_source(source);
        Ok(Gateway {
            config,
            store,
            metrics,
            watch_file: self.watch_file,
            sighup: self.sighup,
        })
    }
}

/// A gateway ready to start.
pub struct Gateway {
    /// The config it started with (listeners and threads come from here).
    config: Arc<Config>,
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    watch_file: bool,
    sighup: bool,
}

impl Gateway {
    /// Start building a gateway.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            input: None,
            registry: FilterRegistry::builtin(),
            watch_file: true,
            sighup: false,
            resolver: None,
        }
    }

    /// The store holding the serving snapshot.
    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// Serve until SIGTERM or SIGQUIT (graceful: see [`crate::drain`]) or SIGINT (fast).
    /// Blocks the calling thread; returns once the gateway has drained.
    pub fn run(self) -> Result<(), GatewayError> {
        let mut handle = self.start(Source::Signals, None)?;
        handle.wait_until_stopped();
        Ok(())
    }

    /// Serve on background threads; returns once every listener accepts connections.
    pub fn spawn(self) -> Result<GatewayHandle, GatewayError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let source = Source::Handle(tokio::sync::Mutex::new(Some(rx)));
        self.start(source, Some(tx))
    }

    fn start(
        self,
        source: Source,
        stop: Option<tokio::sync::oneshot::Sender<ShutdownSignal>>,
    ) -> Result<GatewayHandle, GatewayError> {
        let store = Arc::clone(&self.store);
        let metrics = Arc::clone(&self.metrics);
        let drain = Arc::new(Drain::default());
        let watch = Watch {
            source,
            drain: Arc::clone(&drain),
            grace: self.config.server.grace_period,
        };
        let (server, addrs) = self.into_server(&drain)?;
        let thread = std::thread::Builder::new()
            .name("gatehouse".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(watch),
                })
            })
            .map_err(|e| GatewayError::Start(format!("cannot start the server thread: {e}")))?;
        let mut handle = GatewayHandle {
            listen: addrs.listen,
            tls: addrs.tls,
            admin: addrs.admin,
            store,
            metrics,
            drain,
            stop,
            thread: Some(thread),
        };
        let all: Vec<SocketAddr> = (handle.listen.iter().chain(&handle.tls))
            .copied()
            .chain(handle.admin)
            .collect();
        for addr in all {
            if let Err(e) = wait_until_accepting(addr, Duration::from_secs(10)) {
                handle.stop_with(ShutdownSignal::FastShutdown);
                return Err(e);
            }
        }
        Ok(handle)
    }

    fn into_server(self, drain: &Arc<Drain>) -> Result<(Server, BoundAddrs), GatewayError> {
        let addrs = BoundAddrs::resolve(&self.config)?;
        let server_cfg = &self.config.server;
        let conf = ServerConf {
            threads: server_cfg.threads,
            max_retries: server_cfg.max_retries,
            // Pingora's fixed wait between closing the listeners and dropping every task: the
            // upper bound of the drain, which usually ends sooner (`DrainService`).
            grace_period_seconds: Some(server_cfg.shutdown_timeout.as_secs_f64().ceil() as u64),
            // Then how long blocking work (a reload being built) gets.
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();

        let access_log = match self.config.observability.access_log.as_str() {
            "" => None,
            target => Some(
                AccessLog::open(target, self.metrics.access_log_dropped.clone()).map_err(|e| {
                    GatewayError::Start(format!("cannot open the access log {target:?}: {e}"))
                })?,
            ),
        };
        let proxy = GatewayProxy::new(
            Arc::clone(&self.store),
            Arc::clone(&self.metrics),
            access_log,
        )
        .with_https_port(addrs.tls.first().map(SocketAddr::port))
        .with_drain(Arc::clone(drain));
        let mut http = pingora_proxy::http_proxy(&server.configuration, proxy);
        let mut options = HttpServerOptions::default();
        options.h2c = server_cfg.h2c;
        http.server_options = Some(options);
        let app = Downstream::new(
            http,
            server_cfg.header_timeout,
            server_cfg.max_connections,
            self.metrics.connections.clone(),
        );
        let mut proxy_service = Service::new("gatehouse proxy".into(), app);
        for addr in &addrs.listen {
            proxy_service.add_tcp(&addr.to_string());
        }
        for addr in &addrs.tls {
            let settings = crate::tls::listener_settings(&self.store)
                .map_err(|e| GatewayError::Start(format!("cannot set up TLS on {addr}: {e}")))?;
            proxy_service.add_tls_with_settings(&addr.to_string(), None, settings);
        }
        server.add_service(proxy_service);

        if let Some(admin) = addrs.admin {
            let app = AdminApp::new(Arc::clone(&self.store), Arc::clone(&self.metrics))
                .with_drain(Arc::clone(drain));
            let mut admin_service =
                Service::new("gatehouse admin".into(), HttpServer::new_app(app));
            admin_service.add_tcp(&admin.to_string());
            admin_service.threads = Some(1);
            server.add_service(admin_service);
        }
        server.add_service(background_service(
            "gatehouse reload",
            ReloadService::new(Arc::clone(&self.store), self.watch_file, self.sighup),
        ));
        server.add_service(background_service(
            "gatehouse drain",
            DrainService {
                drain: Arc::clone(drain),
                metrics: Arc::clone(&self.metrics),
                timeout: server_cfg.shutdown_timeout,
            },
        ));
        server.add_service(background_service(
            "gatehouse health",
            HealthService {
                store: Arc::clone(&self.store),
                metrics: Arc::clone(&self.metrics),
            },
        ));
        server.add_service(background_service(
            "gatehouse dns",
            DnsService {
                store: Arc::clone(&self.store),
            },
        ));
        Ok((server, addrs))
    }
}

/// Listener addresses with every port 0 replaced by a free port.
struct BoundAddrs {
    listen: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
}

impl BoundAddrs {
    fn resolve(config: &Config) -> Result<BoundAddrs, GatewayError> {
        let listen = config
            .server
            .listen
            .iter()
            .map(|a| reserve(a, "server.listen"))
            .collect::<Result<_, _>>()?;
        let tls = config
            .server
            .tls
            .iter()
            .flat_map(|t| &t.listen)
            .map(|a| reserve(a, "server.tls.listen"))
            .collect::<Result<_, _>>()?;
        let admin = match config.admin.listen.as_str() {
            "" => None,
            a => Some(reserve(a, "admin.listen")?),
        };
        Ok(BoundAddrs { listen, tls, admin })
    }
}

/// Check that `addr` can be bound, and pick a port when it says 0. Pingora binds by address
/// text and does not report the port it got, so the choice is made here.
fn reserve(addr: &str, field: &str) -> Result<SocketAddr, GatewayError> {
    let parsed: SocketAddr = addr.parse().map_err(|_| ConfigError::Build {
        path: PathBuf::from(field),
        message: format!("{addr:?} is not an ip:port address"),
    })?;
    let probe = TcpListener::bind(parsed)
        .map_err(|e| GatewayError::Start(format!("cannot listen on {parsed} ({field}): {e}")))?;
    probe
        .local_addr()
        .map_err(|e| GatewayError::Start(format!("cannot listen on {parsed} ({field}): {e}")))
}

fn wait_until_accepting(addr: SocketAddr, limit: Duration) -> Result<(), GatewayError> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(GatewayError::Start(format!(
        "{addr} did not start listening within {limit:?}"
    )))
}

/// A running gateway. Dropping it stops the gateway at once; [`GatewayHandle::shutdown`]
/// stops it gracefully.
pub struct GatewayHandle {
    listen: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    drain: Arc<Drain>,
    stop: Option<tokio::sync::oneshot::Sender<ShutdownSignal>>,
    thread: Option<JoinHandle<()>>,
}

impl GatewayHandle {
    /// The first plain proxy listener's address (the first HTTPS one when there is none).
    pub fn local_addr(&self) -> SocketAddr {
        self.listen
            .first()
            .or(self.tls.first())
            .copied()
            .unwrap_or_else(|| {
                // Validation asks for at least one listener.
                SocketAddr::from(([127, 0, 0, 1], 0))
            })
    }

    /// Every proxy listener's address.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// Every HTTPS listener's address (`[server.tls] listen`).
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls
    }

    /// The admin listener's address, unless disabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The store holding the serving snapshot (reload it, read its generation).
    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Terminate gracefully (see [`crate::drain`]): drain for `server.grace_period`, stop
    /// accepting, and return once no request is in flight (at most `server.shutdown_timeout`
    /// later). The listeners are closed by then; the runtimes wind down in the background.
    pub fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(ShutdownSignal::GracefulTerminate);
        }
        self.wait_until_stopped();
    }

    /// Where the gateway is in a shutdown (draining, drained).
    pub fn drain(&self) -> &Arc<Drain> {
        &self.drain
    }

    /// Block until the gateway has drained after a graceful terminate, or its server thread
    /// has ended (a fast shutdown).
    fn wait_until_stopped(&mut self) {
        while !self.drain.is_drained() && !self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // A thread still running has only Pingora's fixed grace period left to sleep out
        // before it drops its (idle) runtimes: it is left to finish on its own.
        if let Some(thread) = self.thread.take() {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }

    fn stop_with(&mut self, signal: ShutdownSignal) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(signal);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.stop_with(ShutdownSignal::FastShutdown);
    }
}
