//! A `Snapshot` is one immutable, fully built configuration: the route table, the upstream
//! pools and the settings the proxy reads per request. The proxy loads one `Arc<Snapshot>` per
//! request and never re-reads it, so a reload never changes a request half-way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::{Config, Source};
use crate::error::ConfigError;
use crate::routing::{Route, Router};
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
}

/// SHA-256 of a config's text, as lower-case hex.
pub fn content_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Snapshot {
    /// Parse, validate and build a snapshot from config text.
    ///
    /// Pools whose config equals one in `previous` are reused as they are, so their health
    /// (and connection state) carries over a reload.
    pub fn from_source(
        source: &Source,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigError> {
        let config = Config::load(source)?;
        Snapshot::build(config, content_hash(&source.text), generation, previous).map_err(
            |message| ConfigError::Build {
                path: source.path.clone(),
                message,
            },
        )
    }

    /// Build from an already validated config.
    pub fn build(
        config: Config,
        content_hash: String,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, String> {
        let mut upstreams = BTreeMap::new();
        for cfg in &config.upstreams {
            let reused = previous
                .and_then(|p| p.upstreams.get(&cfg.name))
                .filter(|u| u.config() == cfg)
                .cloned();
            let pool = match reused {
                Some(pool) => pool,
                None => Arc::new(
                    Upstream::new(cfg).map_err(|e| format!("upstream {:?}: {e}", cfg.name))?,
                ),
            };
            upstreams.insert(cfg.name.clone(), pool);
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, cfg) in config.routes.iter().enumerate() {
            let upstream = upstreams.get(&cfg.upstream).cloned().ok_or_else(|| {
                format!("routes[{i}].upstream: no upstream named {:?}", cfg.upstream)
            })?;
            routes.push(Route::compile(i, cfg, upstream).map_err(|e| format!("routes[{i}]: {e}"))?);
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
            config: Arc::new(config),
        })
    }

    /// Whether a peer at `ip` may set `X-Forwarded-*` for its clients.
    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}
