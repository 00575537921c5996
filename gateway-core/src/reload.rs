//! Hot reload: the `ConfigStore` that holds the serving snapshot, and the sources that ask it
//! to reload (a file watch, SIGHUP, the admin API).
//!
//! A reload builds and validates the whole new snapshot off the request path, then swaps it in
//! with one atomic store. A config that fails is logged and counted and the last good snapshot
//! keeps serving. Requests hold the `Arc<Snapshot>` they started with until they end.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::Source;
use crate::error::ConfigError;
use crate::filter::FilterRegistry;
use crate::observe::Metrics;
use crate::resolve::Lookup;
use crate::snapshot::{content_hash, hex, Prepared, Snapshot};

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new snapshot is serving.
    Applied {
        /// Its generation.
        generation: u64,
    },
    /// The text is the same as the serving config's; nothing changed.
    Unchanged {
        /// The generation still serving.
        generation: u64,
    },
}

/// Holds the snapshot in service and swaps in new ones.
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    /// The file reloads read, if the config came from one.
    path: Option<PathBuf>,
    /// Serializes reloads so two sources cannot race on the generation or the carry-over.
    reload_lock: Mutex<()>,
    metrics: Arc<Metrics>,
    /// The filter kinds reloads build with (built-ins plus the embedder's).
    registry: FilterRegistry,
    /// The config text serving now: a change of backend addresses rebuilds from it.
    source: Mutex<Option<Source>>,
}

impl ConfigStore {
    /// Start with an initial snapshot.
    pub fn new(
        initial: Snapshot,
        path: Option<PathBuf>,
        metrics: Arc<Metrics>,
        registry: FilterRegistry,
    ) -> ConfigStore {
        metrics.generation.set(initial.generation as i64);
        log_warnings(&initial);
        ConfigStore {
            current: ArcSwap::from_pointee(initial),
            path,
            reload_lock: Mutex::new(()),
            metrics,
            registry,
            source: Mutex::new(None),
        }
    }

    /// The text the initial snapshot was built from (a change of backend addresses rebuilds
    /// from it until a reload replaces it).
    pub fn remember_source(&self, source: Source) {
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// The snapshot serving now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The config file this store reloads from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Re-read the config file and apply it. Without a file there is nothing to reload.
    pub fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        let Some(path) = &self.path else {
            return Ok(ReloadOutcome::Unchanged {
                generation: self.load().generation,
            });
        };
        let source = Source::read(path).inspect_err(|_| self.metrics.reload("failed"))?;
        self.apply(&source)
    }

    /// Apply config text: build it completely, then swap. On error the old snapshot stays.
    pub fn apply(&self, source: &Source) -> Result<ReloadOutcome, ConfigError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.load();
        if source.text.trim().is_empty() {
            // A file caught between truncate and write would otherwise drop every route.
            self.metrics.reload("failed");
            return Err(ConfigError::Invalid {
                path: source.path.clone(),
                issues: vec![crate::config::ConfigIssue {
                    field: "(file)".into(),
                    message: "the file is empty; keeping the serving configuration".into(),
                }],
            });
        }
        let prepared = Prepared::read(source).inspect_err(|_| self.metrics.reload("failed"))?;
        if prepared.content_hash == old.content_hash {
            self.metrics.reload("unchanged");
            return Ok(ReloadOutcome::Unchanged {
                generation: old.generation,
            });
        }
        let next = match Snapshot::build(prepared, old.generation + 1, Some(&old), &self.registry) {
            Ok(next) => next,
            Err(issues) => {
                self.metrics.reload("failed");
                return Err(ConfigError::Invalid {
                    path: source.path.clone(),
                    issues,
                });
            }
        };
        warn_restart_only_changes(&old, &next);
        log_warnings(&next);
        let generation = self.install(next);
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source.clone());
        self.metrics.reload("applied");
        Ok(ReloadOutcome::Applied { generation })
    }

    /// Serve `next` from now on; its generation.
    fn install(&self, next: Snapshot) -> u64 {
        let generation = next.generation;
        let next = Arc::new(next);
        self.current.store(Arc::clone(&next));
        self.metrics.generation.set(generation as i64);
        // Drop the series of removed pools, and republish the kept ones at once: a pool that
        // survives the reload keeps its health, so its gauge must not vanish until its next check.
        self.metrics.reset_health();
        for pool in next.upstreams.values() {
            if pool.config().health_check.is_some() {
                self.metrics.record_health(pool);
            }
        }
        generation
    }

    /// Look the serving config's backend names up again where due and, when one's addresses
    /// changed, rebuild the snapshot from the same config so its pools use them (the health
    /// and ejections of addresses that stay carry over). Not a reload: the config did not
    /// change, and `gatehouse_dns_lookups_total` counts it instead. Blocks on lookups: run it
    /// off the async runtime.
    pub fn refresh_names(&self) {
        let current = self.load();
        if current.dns_names.is_empty() {
            return;
        }
        let made = current
            .names
            .refresh(&current.dns_names, std::time::Instant::now());
        let mut changed = false;
        for (name, lookup) in &made {
            self.metrics.dns_lookup(name, *lookup);
            changed |= *lookup == Lookup::Changed;
        }
        if !changed {
            return;
        }
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let source = self
            .source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(source) = source else { return };
        let old = self.load();
        let built = Prepared::read(&source).and_then(|prepared| {
            Snapshot::build(prepared, old.generation + 1, Some(&old), &self.registry).map_err(
                |issues| ConfigError::Invalid {
                    path: source.path.clone(),
                    issues,
                },
            )
        });
        match built {
            Ok(next) => {
                let generation = self.install(next);
                tracing::info!(generation, "backend addresses changed; pools rebuilt");
            }
            Err(e) => {
                tracing::error!(error = %e, "backend addresses changed but the config no longer builds; the previous pools keep serving")
            }
        }
    }

    /// Reload from the file and log what happened (for the watch and signal sources).
    pub fn reload_logged(&self, cause: &str) {
        log_outcome(cause, self.reload());
    }

    /// The periodic check behind the file watch: apply the file if what it holds (with the
    /// files it names) differs from the serving config. Quiet when nothing changed, and a
    /// rejected content is reported once, not at every check (`rejected` remembers it).
    pub(crate) fn check(&self, rejected: &mut Option<String>) {
        let Some(path) = &self.path else { return };
        let Ok(source) = Source::read(path) else {
            // Caught mid-swap, or gone: the watch or the next check sees the outcome.
            return;
        };
        // Cheap first: the same text and the same bytes in the files the serving config
        // names hash to its content hash, and then nothing changed (no parse at all).
        let serving = self.load();
        let read: Option<Vec<(PathBuf, Vec<u8>)>> = serving
            .files
            .iter()
            .map(|p| std::fs::read(p).ok().map(|bytes| (p.clone(), bytes)))
            .collect();
        if let Some(read) = read {
            let files = read.iter().map(|(p, b)| (p.as_path(), b.as_slice()));
            if content_hash(&source.text, files) == serving.content_hash {
                *rejected = None;
                return;
            }
        }
        let text = hex(&Sha256::digest(source.text.as_bytes()));
        match Prepared::read(&source) {
            Ok(p) if p.content_hash == self.load().content_hash => {
                *rejected = None;
                return;
            }
            Err(_) if rejected.as_deref() == Some(&text) => return,
            _ => {}
        }
        let outcome = self.apply(&source);
        *rejected = outcome.is_err().then_some(text);
        log_outcome(PERIODIC, outcome);
    }
}

/// What a reload from `cause` came to, in the log.
fn log_outcome(cause: &str, outcome: Result<ReloadOutcome, ConfigError>) {
    {
        match outcome {
            Ok(ReloadOutcome::Applied { generation }) => {
                tracing::info!(cause, generation, "configuration reloaded")
            }
            Ok(ReloadOutcome::Unchanged { .. }) => {
                tracing::debug!(cause, "configuration unchanged")
            }
            Err(e) => {
                tracing::error!(cause, error = %e, "configuration rejected; the previous one keeps serving")
            }
        }
    }
}

/// The cause of a reload the periodic check made: the watch missed the change.
const PERIODIC: &str = "periodic check";

fn log_warnings(snapshot: &Snapshot) {
    for warning in &snapshot.warnings {
        tracing::warn!(field = %warning.field, "{}", warning.message);
    }
}

fn warn_restart_only_changes(old: &Snapshot, next: &Snapshot) {
    // Certificates reload; only the rest of `[server]` waits for a restart.
    let restart_only = |s: &Snapshot| {
        let mut server = s.config.server.clone();
        if let Some(tls) = server.tls.as_mut() {
            tls.certificates.clear();
            tls.redirect_plain = false;
            tls.hsts.clear();
        }
        server
    };
    if restart_only(old) != restart_only(next) {
        tracing::warn!(
            "[server] changed: listeners, threads and shutdown settings apply after a restart"
        );
    }
    if old.config.admin != next.config.admin {
        tracing::warn!("[admin] changed: the admin listener applies after a restart");
    }
}

/// Background service: reloads when the config file, or a file it names (a certificate, a
/// key), changes, and on SIGHUP when asked to.
pub(crate) struct ReloadService {
    store: Arc<ConfigStore>,
    sighup: bool,
    /// File-change notifications; taken by `start`.
    changes: Mutex<Option<UnboundedReceiver<()>>>,
    /// Kept alive for as long as the service: dropping it stops the watch.
    watch: Mutex<Option<FileWatch>>,
}

impl ReloadService {
    /// Set up the file watch now, so that a change made right after the gateway started is
    /// not missed.
    pub fn new(store: Arc<ConfigStore>, watch_file: bool, sighup: bool) -> ReloadService {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watch = match (watch_file, store.path()) {
            (true, Some(path)) => match FileWatch::new(tx) {
                Ok(mut w) => {
                    w.follow(path);
                    for file in &store.load().files {
                        w.follow(file);
                    }
                    Some(w)
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP or POST /admin/reload");
                    None
                }
            },
            _ => None,
        };
        ReloadService {
            store,
            sighup,
            changes: Mutex::new(Some(rx)),
            watch: Mutex::new(watch),
        }
    }

    /// Whether the config file is watched (then the periodic check backs the watch up).
    fn watching(&self) -> bool {
        self.watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Watch the files the serving config names (a reload may have named new ones).
    fn follow_files(&self) {
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(watch) = watch.as_mut() {
            for file in &self.store.load().files {
                watch.follow(file);
            }
        }
    }
}
/// Editors save in bursts (truncate + write, or write temp + rename): a reload waits until
/// the file has been quiet this long, but never longer than [`DEBOUNCE_MAX`].
const DEBOUNCE: Duration = Duration::from_millis(75);
const DEBOUNCE_MAX: Duration = Duration::from_millis(750);

/// Wait until no change arrived for one [`DEBOUNCE`] period (bounded by [`DEBOUNCE_MAX`]).
async fn settle(rx: &mut UnboundedReceiver<()>) {
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(DEBOUNCE).await;
        let mut more = false;
        while rx.try_recv().is_ok() {
            more = true;
        }
        if !more || started.elapsed() >= DEBOUNCE_MAX {
            return;
        }
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self
            .changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut rx) = taken else { return };
        let mut hangup = if self.sighup {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
        } else {
            None
        };
        // The watch's back-up: a change it cannot see (a file reached through a link to
        // another directory, a network file system) is found by its content hash.
        let period = self.store.load().config.server.config_check_interval;
        let mut check = (self.watching() && !period.is_zero()).then(|| {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        let mut rejected = None;
        loop {
            let cause = tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = rx.recv() => {
                    settle(&mut rx).await;
                    "file change"
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                _ = async { match check.as_mut() { Some(t) => t.tick().await, None => std::future::pending().await } } => PERIODIC,
            };
            let store = Arc::clone(&self.store);
            if cause == PERIODIC {
                let mut last = rejected.take();
                rejected = tokio::task::spawn_blocking(move || {
                    store.check(&mut last);
                    last
                })
                .await
                .unwrap_or_default();
            } else {
                let _ = tokio::task::spawn_blocking(move || store.reload_logged(cause)).await;
            }
            self.follow_files();
        }
    }
}

/// Watches the directories of the files a config depends on: editors, `cp` and certificate
/// renewers replace files by rename, which a watch on the file itself would lose. An event for
/// any watched name asks for a reload; one that changed nothing is a cheap no-op (same hash).
struct FileWatch {
    watcher: notify::RecommendedWatcher,
    dirs: std::collections::HashSet<PathBuf>,
    names: Arc<Mutex<std::collections::HashSet<std::ffi::OsString>>>,
}

impl FileWatch {
    fn new(tx: tokio::sync::mpsc::UnboundedSender<()>) -> notify::Result<FileWatch> {
        let names: Arc<Mutex<std::collections::HashSet<std::ffi::OsString>>> = Arc::default();
        let watched = Arc::clone(&names);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let watched = watched.lock().unwrap_or_else(|e| e.into_inner());
            let ours = event.paths.is_empty()
                || event
                    .paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| watched.contains(n)));
            if ours {
                let _ = tx.send(());
            }
        })?;
        Ok(FileWatch {
            watcher,
            dirs: Default::default(),
            names,
        })
    }

    /// Also reload when `path` changes, or a link it is reached through in its directory:
    /// Kubernetes mounts a ConfigMap's `gateway.toml` as a link to `..data/gateway.toml` and
    /// updates it by renaming a new `..data` link over the old one, so only `..data` changes.
    fn follow(&mut self, path: &Path) {
        let Some(name) = path.file_name() else { return };
        let via =
            std::fs::read_link(path)
                .ok()
                .and_then(|target| match target.components().next() {
                    Some(std::path::Component::Normal(first))
                        if target.components().count() > 1 =>
                    {
                        Some(first.to_os_string())
                    }
                    _ => None,
                });
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.insert(name.to_os_string());
        names.extend(via);
        drop(names);
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if self.dirs.contains(&dir) {
            return;
        }
        match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.dirs.insert(dir);
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot watch a directory of the configuration's files; reload with SIGHUP or POST /admin/reload")
            }
        }
    }
}

/// Background service: looks backend names up again when their answers expire (see
/// [`ConfigStore::refresh_names`]).
pub(crate) struct DnsService {
    pub store: Arc<ConfigStore>,
}

/// How often expired names are looked for; each name's own TTL and bounds decide when it is
/// looked up.
const DNS_TICK: Duration = Duration::from_millis(250);

#[async_trait]
impl BackgroundService for DnsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        every(DNS_TICK, &mut shutdown, || {
            let store = Arc::clone(&self.store);
            async move {
                if !store.load().dns_names.is_empty() {
                    let _ = tokio::task::spawn_blocking(move || store.refresh_names()).await;
                }
            }
        })
        .await;
    }
}

/// Run `pass` every `period` until `shutdown` (a pass that overruns delays the next one).
async fn every<F, Fut>(period: Duration, shutdown: &mut ShutdownWatch, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        pass().await;
    }
}

/// Background service: runs each pool's active health checks when they are due, including
/// pools a reload adds, and publishes backend health as metrics.
pub(crate) struct HealthService {
    pub store: Arc<ConfigStore>,
    pub metrics: Arc<Metrics>,
}

/// How often due checks are looked for; a pool's own interval decides when it is checked.
const HEALTH_TICK: Duration = Duration::from_millis(50);

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        every(HEALTH_TICK, &mut shutdown, || {
            let snapshot = self.store.load();
            let now = std::time::Instant::now();
            for pool in snapshot.upstreams.values() {
                if !pool.claim_health_check(now) {
                    continue;
                }
                let pool = Arc::clone(pool);
                let metrics = Arc::clone(&self.metrics);
                tokio::spawn(async move {
                    pool.run_health_check().await;
                    metrics.record_health(&pool);
                });
            }
            std::future::ready(())
        })
        .await;
    }
}
