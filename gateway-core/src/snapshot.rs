//! A `Snapshot` is one immutable, fully built configuration: the route table, the upstream
//! pools and the settings the proxy reads per request. The proxy loads one `Arc<Snapshot>` per
//! request and never re-reads it, so a reload never changes a request half-way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigIssue, DnsConfig, FilterConfig, Source};
use crate::error::ConfigError;
use crate::filter::{FilterRegistry, FilterSpec, NamedFilter};
use crate::resolve::Names;
use crate::routing::{Route, Router};
use crate::tls::{Certificates, Files, UpstreamTls};
use crate::upstream::Upstream;

/// One built configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every applied reload (the first config is 1).
    pub generation: u64,
    /// SHA-256 of the config text, hex; equal text means nothing to reload.
    pub content_hash: String,
    /// When this snapshot was built.
    pub loaded_at: SystemTime,
    /// The config it was built from.
    pub config: Arc<Config>,
    /// The ranked route table.
    pub router: Router,
    /// Pools by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Built filters by name, with the declaration each was built from (for carry-over).
    pub filters: BTreeMap<String, (FilterConfig, NamedFilter)>,
    /// The edge certificates, when `[server.tls]` declares HTTPS listeners.
    pub certificates: Option<Certificates>,
    /// `Strict-Transport-Security` for HTTPS responses, when configured.
    pub hsts: Option<http::HeaderValue>,
    /// The files the config names (certificates, keys, CAs), which a reload also watches.
    pub files: Vec<std::path::PathBuf>,
    /// The gateway's resolved backend names, shared by its snapshots.
    pub names: Arc<Names>,
    /// The names this snapshot's pools use, with their refresh bounds (the background
    /// refresh looks these up again).
    pub dns_names: Vec<(String, u16, DnsConfig)>,
    /// What serves but deserves a look: the config's own warnings, and backend names that
    /// did not resolve.
    pub warnings: Vec<ConfigIssue>,
}

/// A config parsed and validated, with every file it names read: what a snapshot is built
/// from. Its hash covers those files too, so changing a certificate is a change to reload.
#[derive(Debug)]
pub struct Prepared {
    /// The validated config.
    pub config: Config,
    /// The files it names, read.
    pub files: Files,
    /// Directory that relative file names in the config start from.
    pub base: std::path::PathBuf,
    /// SHA-256 (hex) of the config text and of every file it names.
    pub content_hash: String,
}

impl Prepared {
    /// Parse and validate `source`, and read the files it names (relative to its directory).
    pub fn read(source: &Source) -> Result<Prepared, ConfigError> {
        let config = Config::load(source)?;
        let base = source
            .path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let invalid = |issues| ConfigError::Invalid {
            path: source.path.clone(),
            issues,
        };
        let mut config = config;
        let mut files = Files::read(&config, &base).map_err(invalid)?;
        let issues = crate::secrets::resolve(config.filters.iter_mut(), &base, &mut files);
        if !issues.is_empty() {
            return Err(invalid(issues));
        }
        let content_hash = content_hash(&source.text, files.iter());
        Ok(Prepared {
            config,
            files,
            base,
            content_hash,
        })
    }
}

/// SHA-256 (hex) of a config's text and of the files it names, in path order.
pub(crate) fn content_hash<'a>(
    text: &str,
    files: impl Iterator<Item = (&'a std::path::Path, &'a [u8])>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    for (path, bytes) in files {
        hasher.update(b"\0");
        hasher.update(path.as_os_str().as_encoded_bytes());
        hasher.update(b"\0");
        hasher.update(bytes);
    }
    hex(&hasher.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Snapshot {
    /// Parse, validate and build a snapshot from config text.
    ///
    /// Pools and filters whose config equals one in `previous` are reused as they are, so
    /// their state (health, limiter buckets, key caches) carries over a reload.
    /// Backend names are resolved by the system's resolver, or as `previous` resolved them.
    pub fn from_source(
        source: &Source,
        generation: u64,
        previous: Option<&Snapshot>,
        registry: &FilterRegistry,
    ) -> Result<Snapshot, ConfigError> {
        let names = previous.map_or_else(Names::system, |p| Arc::clone(&p.names));
        Snapshot::from_source_with(source, generation, previous, registry, names)
    }

    /// [`Snapshot::from_source`] with backend names resolved through `names`.
    pub fn from_source_with(
        source: &Source,
        generation: u64,
        previous: Option<&Snapshot>,
        registry: &FilterRegistry,
        names: Arc<Names>,
    ) -> Result<Snapshot, ConfigError> {
        let prepared = Prepared::read(source)?;
        Snapshot::build_with(prepared, generation, previous, registry, names).map_err(|issues| {
            ConfigError::Invalid {
                path: source.path.clone(),
                issues,
            }
        })
    }

    /// Build from a prepared config; every problem found is returned at once. Backend names
    /// are resolved as `previous` resolved them (or by the system's resolver).
    pub fn build(
        prepared: Prepared,
        generation: u64,
        previous: Option<&Snapshot>,
        registry: &FilterRegistry,
    ) -> Result<Snapshot, Vec<ConfigIssue>> {
        let names = previous.map_or_else(Names::system, |p| Arc::clone(&p.names));
        Snapshot::build_with(prepared, generation, previous, registry, names)
    }

    /// [`Snapshot::build`] with backend names resolved through `names`.
    pub fn build_with(
        prepared: Prepared,
        generation: u64,
        previous: Option<&Snapshot>,
        registry: &FilterRegistry,
        names: Arc<Names>,
    ) -> Result<Snapshot, Vec<ConfigIssue>> {
        let Prepared {
            config,
            files,
            base,
            content_hash,
        } = prepared;
        let mut issues = Vec::new();
        let certificates = match &config.server.tls {
            None => None,
            Some(tls) => match Certificates::build(tls, &files, &base) {
                Ok(c) => Some(c),
                Err(found) => {
                    issues.extend(found);
                    None
                }
            },
        };
        let mut upstreams = BTreeMap::new();
        let mut warnings = config.warnings();
        let mut dns_names = Vec::new();
        for (i, cfg) in config.upstreams.iter().enumerate() {
            let tls = match cfg
                .tls
                .as_ref()
                .map(|t| UpstreamTls::build(t, &files, &base))
            {
                None => None,
                Some(Ok(tls)) => Some(tls),
                Some(Err((field, e))) => {
                    issues.push(issue(format!("upstreams[{i}].tls.{field}"), e));
                    continue;
                }
            };
            let backends = expand_backends(i, cfg, &names, &mut dns_names, &mut warnings);
            let before = previous.and_then(|p| p.upstreams.get(&cfg.name));
            let reused = before
                .filter(|u| {
                    u.config() == cfg && u.tls() == tls.as_ref() && u.backends() == backends
                })
                .cloned();
            let built = reused.map(Ok).unwrap_or_else(|| {
                Upstream::new(cfg, &backends, tls, before.map(|b| &**b)).map(Arc::new)
            });
            match built {
                Ok(pool) => {
                    upstreams.insert(cfg.name.clone(), pool);
                }
                Err(e) => issues.push(issue(format!("upstreams[{i}]"), e)),
            }
        }
        let filters = build_filters(&config, previous, registry, &mut issues);
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, cfg) in config.routes.iter().enumerate() {
            let Some(upstream) = upstreams.get(&cfg.upstream).cloned() else {
                issues.push(issue(
                    format!("routes[{i}].upstream"),
                    format!("no upstream named {:?}", cfg.upstream),
                ));
                continue;
            };
            let defaults = if cfg.skip_default_filters {
                &[][..]
            } else {
                &config.default_filters[..]
            };
            let mut chain: Vec<NamedFilter> = Vec::new();
            for name in defaults.iter().chain(&cfg.filters) {
                if let Some((_, f)) = filters.get(name) {
                    if !chain.iter().any(|c| &*c.name == name.as_str()) {
                        chain.push(f.clone());
                    }
                }
            }
            match Route::compile(i, cfg, upstream, chain) {
                Ok(route) => routes.push(route),
                Err(e) => issues.push(issue(format!("routes[{i}]"), e)),
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|c| crate::config::parse_cidr(c))
            .collect();
        Ok(Snapshot {
            generation,
            content_hash,
            loaded_at: SystemTime::now(),
            router: Router::new(routes),
            upstreams,
            trusted_proxies,
            filters,
            hsts: (config.server.tls.as_ref())
                .filter(|t| !t.hsts.is_empty())
                .and_then(|t| http::HeaderValue::from_str(&t.hsts).ok()),
            certificates,
            files: files.paths().map(std::path::Path::to_path_buf).collect(),
            config: Arc::new(config),
            names,
            dns_names,
            warnings,
        })
    }

    /// Whether a peer at `ip` may set `X-Forwarded-*` for its clients.
    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// The addresses of pool `cfg` (the `i`th) with their weights: its `ip:port` backends, and
/// every address of its named ones. A name that has no address yet is a warning (and the
/// pool serves with the others, or answers 503 until it resolves); the names used are
/// added to `dns_names`.
fn expand_backends(
    i: usize,
    cfg: &crate::config::UpstreamConfig,
    names: &Names,
    dns_names: &mut Vec<(String, u16, DnsConfig)>,
    warnings: &mut Vec<ConfigIssue>,
) -> Vec<(SocketAddr, usize)> {
    let mut out: Vec<(SocketAddr, usize)> = Vec::with_capacity(cfg.backends.len());
    for (j, b) in cfg.backends.iter().enumerate() {
        let found = match b.addr().parse::<SocketAddr>() {
            Ok(addr) => vec![addr],
            Err(_) => {
                // Validation let only ip:port and host:port through.
                let Some((host, port)) = crate::resolve::split_name(b.addr()) else {
                    continue;
                };
                dns_names.push((host.to_string(), port, cfg.dns.clone()));
                match names.addrs(host, port, &cfg.dns) {
                    Ok(addrs) => addrs,
                    Err(e) => {
                        warnings.push(issue(
                            format!("upstreams[{i}].backends[{j}]"),
                            format!(
                                "{:?} does not resolve yet ({e}); it is looked up again every {:?}",
                                b.addr(),
                                cfg.dns.min_refresh
                            ),
                        ));
                        Vec::new()
                    }
                }
            }
        };
        for addr in found {
            // An address reached two ways (a name and a literal) is one backend.
            if !out.iter().any(|(a, _)| *a == addr) {
                out.push((addr, b.weight()));
            }
        }
    }
    out
}

fn issue(field: String, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        field,
        message: message.into(),
    }
}

/// Build every declared filter, reusing the previous snapshot's instance when its declaration
/// is unchanged.
fn build_filters(
    config: &Config,
    previous: Option<&Snapshot>,
    registry: &FilterRegistry,
    issues: &mut Vec<ConfigIssue>,
) -> BTreeMap<String, (FilterConfig, NamedFilter)> {
    let mut built = BTreeMap::new();
    for (name, decl) in &config.filters {
        if let Some((old_decl, old)) = previous.and_then(|p| p.filters.get(name)) {
            if old_decl == decl {
                built.insert(name.clone(), (decl.clone(), old.clone()));
                continue;
            }
        }
        let Some(factory) = registry.get(&decl.kind) else {
            issues.push(issue(
                format!("filters.{name}.kind"),
                format!(
                    "no filter kind {:?}; known kinds: {}",
                    decl.kind,
                    registry.kinds().join(", ")
                ),
            ));
            continue;
        };
        let spec = FilterSpec {
            name,
            settings: &decl.settings,
        };
        match factory(&spec) {
            Ok(filter) => {
                built.insert(name.clone(), (decl.clone(), NamedFilter::new(name, filter)));
            }
            Err(e) => issues.push(issue(format!("filters.{name}"), e)),
        }
    }
    built
}
