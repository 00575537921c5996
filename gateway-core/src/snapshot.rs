//! A `Snapshot` is one immutable, fully built configuration: the route table, the upstream
//! pools and the settings the proxy reads per request. The proxy loads one `Arc<Snapshot>` per
//! request and never re-reads it, so a reload never changes a request half-way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigIssue, FilterConfig, Source};
use crate::error::ConfigError;
use crate::filter::{FilterRegistry, FilterSpec, NamedFilter};
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
        let mut hasher = Sha256::new();
        hasher.update(source.text.as_bytes());
        for (path, bytes) in files.iter() {
            hasher.update(b"\0");
            hasher.update(path.as_os_str().as_encoded_bytes());
            hasher.update(b"\0");
            hasher.update(bytes);
        }
        Ok(Prepared {
            config,
            files,
            base,
            content_hash: hex(&hasher.finalize()),
        })
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Snapshot {
    /// Parse, validate and build a snapshot from config text.
    ///
    /// Pools and filters whose config equals one in `previous` are reused as they are, so
    /// their state (health, limiter buckets, key caches) carries over a reload.
    pub fn from_source(
        source: &Source,
        generation: u64,
        previous: Option<&Snapshot>,
        registry: &FilterRegistry,
    ) -> Result<Snapshot, ConfigError> {
        let prepared = Prepared::read(source)?;
        Snapshot::build(prepared, generation, previous, registry).map_err(|issues| {
            ConfigError::Invalid {
                path: source.path.clone(),
                issues,
            }
        })
    }

    /// Build from a prepared config; every problem found is returned at once.
    pub fn build(
        prepared: Prepared,
        generation: u64,
        previous: Option<&Snapshot>,
        registry: &FilterRegistry,
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
            let before = previous.and_then(|p| p.upstreams.get(&cfg.name));
            let reused = before
                .filter(|u| u.config() == cfg && u.tls() == tls.as_ref())
                .cloned();
            match reused
                .map(Ok)
                .unwrap_or_else(|| Upstream::new(cfg, tls, before.map(|b| &**b)).map(Arc::new))
            {
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
        })
    }

    /// Whether a peer at `ip` may set `X-Forwarded-*` for its clients.
    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
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
