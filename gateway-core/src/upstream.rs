//! Upstream pools: backends, how one is picked, their health, and the peer Pingora connects to.
//!
//! Selection is `pingora-load-balancing` (round robin, weighted round robin, Ketama consistent
//! hashing) plus least-request by power of two random choices over the healthy backends. Health
//! lives in the pool's `Backends`, so a pool that a reload keeps (same config) keeps its health;
//! [`crate::snapshot`] does that by reusing the `Arc<Upstream>`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use http::HeaderName;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, Backends, HealthRegistry, LoadBalancer};
use smallvec::SmallVec;

use crate::config::{Balance, HealthCheckConfig, HealthCheckKind, Timeouts, UpstreamConfig};
use crate::outlier::{BudgetToken, Outcome, Outliers, RetryBudget, Transition};
use crate::tls::UpstreamTls;

/// The value of the cookie `name` in `req`'s `Cookie` fields.
fn cookie<'a>(req: &'a pingora_http::RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// What a `consistent_hash` pool hashes to pick a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP (after trusted-proxy resolution).
    ClientIp,
    /// The normalized request path.
    Path,
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
}

impl HashKey {
    /// Parse `client_ip`, `path`, `header:NAME` or `cookie:NAME`.
    pub fn parse(text: &str) -> Result<HashKey, String> {
        let bad = || {
            format!("{text:?} is not a hash key: use client_ip, path, \"header:NAME\" or \"cookie:NAME\"")
        };
        match text.split_once(':') {
            None if text == "client_ip" => Ok(HashKey::ClientIp),
            None if text == "path" => Ok(HashKey::Path),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| bad()),
            Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_string())),
            _ => Err(bad()),
        }
    }

    /// What a request hashes to under this key: the client's address, its normalized
    /// `path`, a header's or a cookie's value (empty when the request has none).
    pub fn input(
        &self,
        req: &pingora_http::RequestHeader,
        client: Option<std::net::IpAddr>,
        path: &str,
    ) -> Vec<u8> {
        match self {
            HashKey::ClientIp => client
                .map(|ip| ip.to_string().into_bytes())
                .unwrap_or_default(),
            HashKey::Path => path.as_bytes().to_vec(),
            HashKey::Header(name) => req
                .headers
                .get(name)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default(),
            HashKey::Cookie(name) => cookie(req, name)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default(),
        }
    }
}

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Ketama(LoadBalancer<Consistent>),
}

impl Selector {
    fn backends(&self) -> &Backends {
        match self {
            Selector::RoundRobin(lb) => lb.backends(),
            Selector::Ketama(lb) => lb.backends(),
        }
    }
}

/// A named pool of backends with its selection state and health.
pub struct Upstream {
    name: Arc<str>,
    config: UpstreamConfig,
    selector: Selector,
    /// Requests in flight per backend, in the order of `addrs` (least-request reads these).
    in_flight: Vec<AtomicUsize>,
    addrs: Vec<SocketAddr>,
    /// The configured weight of each of `addrs`.
    weights: Vec<usize>,
    /// The same backends as Pingora knows them (health is keyed by these).
    members: Vec<Backend>,
    hash_key: Option<HashKey>,
    /// TLS to the backends, when the pool says `tls`.
    tls: Option<UpstreamTls>,
    /// Passive ejection of failing backends, when the pool asks for it.
    outliers: Option<Outliers>,
    /// The backends' health, kept by Pingora; shared with the pool this one replaced when
    /// they are checked the same way, so a backend that stays keeps its health.
    health: Arc<HealthRegistry>,
    /// Requests and retries in flight to the pool.
    budget: Arc<RetryBudget>,
    last_check: Mutex<Option<Instant>>,
    checking: AtomicBool,
    /// This pool's `gatehouse_upstream_duration_seconds` series, resolved on first use.
    pub(crate) duration_metric: std::sync::OnceLock<prometheus::Histogram>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("backends", &self.addrs)
            .finish()
    }
}

/// Default timeouts when neither the route nor the upstream sets one.
pub const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    connect: Some(Duration::from_secs(5)),
    read: Some(Duration::from_secs(60)),
    write: Some(Duration::from_secs(60)),
    idle: Some(Duration::from_secs(60)),
};

/// Ketama may need to walk past unhealthy points; bounded so a dead pool costs little.
const MAX_SELECT_ITERATIONS: usize = 256;

impl Upstream {
    /// Build a pool from a validated config, with its TLS material when it has `tls`. What
    /// `previous` (the pool of that name before a reload) knew of the backends both have,
    /// their ejections, carries over.
    ///
    /// `backends` are the pool's addresses with their weights (a name's addresses resolved,
    /// see [`crate::resolve`]). The health of the backends both have carries over from
    /// `previous` too when the way it is checked did not change: they share its health
    /// registry, and its schedule.
    pub fn new(
        config: &UpstreamConfig,
        backends: &[(SocketAddr, usize)],
        tls: Option<UpstreamTls>,
        previous: Option<&Upstream>,
    ) -> Result<Upstream, String> {
        let mut set = BTreeSet::new();
        let mut addrs = Vec::new();
        let mut members = Vec::new();
        let weights: Vec<usize> = backends.iter().map(|(_, w)| *w).collect();
        for &(addr, weight) in backends {
            let weight = match config.balance {
                Balance::RoundRobin | Balance::LeastRequest => 1,
                Balance::Weighted | Balance::ConsistentHash => weight,
            };
            let backend = Backend::new_with_weight(&addr.to_string(), weight)
                .map_err(|e| format!("backend {addr}: {e}"))?;
            addrs.push(addr);
            members.push(backend.clone());
            set.insert(backend);
        }
        let same_checks = previous
            .filter(|p| p.config.health_check == config.health_check && p.config.tls == config.tls);
        let health = match same_checks {
            Some(p) => Arc::clone(&p.health),
            None => {
                let registry = HealthRegistry::new();
                if let Some(hc) = &config.health_check {
                    registry.set_health_check(health_check(hc, tls.as_ref()));
                }
                Arc::new(registry)
            }
        };
        let last_check =
            same_checks.and_then(|p| *p.last_check.lock().unwrap_or_else(|e| e.into_inner()));
        let backends = Backends::new_with_health_registry(Static::new(set), Arc::clone(&health));
        let selector = match config.balance {
            Balance::ConsistentHash => Selector::Ketama(build_lb(backends)?),
            _ => Selector::RoundRobin(build_lb(backends)?),
        };
        let hash_key = config.hash_key.as_deref().map(HashKey::parse).transpose()?;
        let outliers = config.outlier_detection.as_ref().map(|o| {
            let mut outliers = Outliers::new(o, addrs.len());
            if let Some((old, old_addrs)) =
                previous.and_then(|p| Some((p.outliers.as_ref()?, &p.addrs)))
            {
                outliers.carry_over(&addrs, old, old_addrs);
            }
            outliers
        });
        Ok(Upstream {
            outliers,
            budget: Arc::new(RetryBudget::new(&config.retry_budget)),
            name: Arc::from(config.name.as_str()),
            in_flight: addrs.iter().map(|_| AtomicUsize::new(0)).collect(),
            weights,
            addrs,
            members,
            config: config.clone(),
            selector,
            hash_key,
            tls,
            health,
            last_check: Mutex::new(last_check),
            checking: AtomicBool::new(false),
            duration_metric: Default::default(),
        })
    }

    /// The pool's addresses with their configured weights, as it was built from.
    pub fn backends(&self) -> Vec<(SocketAddr, usize)> {
        self.addrs
            .iter()
            .copied()
            .zip(self.weights.iter().copied())
            .collect()
    }

    /// The pool's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The config this pool was built from (a reload reuses the pool when it is unchanged).
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// The pool's TLS to its backends, if it uses TLS.
    pub fn tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_ref()
    }

    /// What consistent hashing hashes, if this pool hashes.
    pub fn hash_key(&self) -> Option<&HashKey> {
        self.hash_key.as_ref()
    }

    /// Number of backends in the pool.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether the pool has no backends (validation does not allow that).
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The upstream's own timeouts over the defaults.
    pub fn timeouts(&self) -> Timeouts {
        self.config.timeouts.or(DEFAULT_TIMEOUTS)
    }

    /// Pick a healthy backend not in `exclude` (the ones a retry already tried).
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<SocketAddr> {
        if let [only] = self.addrs[..] {
            // Every policy picks the only backend: skip the selector's walk, which builds a
            // hash set of the backends it visits on each call.
            return (self.ready(0) && !exclude.contains(&only)).then_some(only);
        }
        let now = self.outliers.as_ref().map(|_| Instant::now());
        let accept = |b: &Backend, healthy: bool| {
            let addr = inet(b);
            healthy
                && !exclude.contains(&addr)
                && now.is_none_or(|now| !self.ejected(self.index(addr), now))
        };
        let picked = match (&self.selector, self.config.balance) {
            (Selector::RoundRobin(_), Balance::LeastRequest) => return self.least_request(exclude),
            (Selector::RoundRobin(lb), _) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            (Selector::Ketama(lb), _) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
        };
        picked.map(|b| inet(&b))
    }

    fn least_request(&self, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        let candidates: Vec<usize> = (0..self.addrs.len())
            .filter(|&i| !exclude.contains(&self.addrs[i]))
            .filter(|&i| self.ready(i))
            .collect();
        let pick = match candidates.len() {
            0 => return None,
            1 => candidates[0],
            n => {
                let a = candidates[rand::random_range(0..n)];
                let mut b = candidates[rand::random_range(0..n - 1)];
                if b == a {
                    b = candidates[n - 1];
                }
                let load = |i: usize| self.in_flight[i].load(Ordering::Relaxed);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        };
        Some(self.addrs[pick])
    }

    /// Whether the `i`th backend may be picked: healthy, and not ejected. Without a health
    /// check nothing ever marks a backend down (Gatehouse does not disable backends by hand),
    /// so the lookup, which hashes the backend, is skipped.
    fn ready(&self, i: usize) -> bool {
        (self.config.health_check.is_none() || self.selector.backends().ready(&self.members[i]))
            && (self.outliers.is_none() || !self.ejected(i, Instant::now()))
    }

    fn index(&self, addr: SocketAddr) -> usize {
        self.addrs.iter().position(|a| *a == addr).unwrap_or(0)
    }

    fn ejected(&self, i: usize, now: Instant) -> bool {
        let Some(outliers) = &self.outliers else {
            return false;
        };
        let (out, transition) = outliers.is_ejected(i, now);
        if transition == Some(Transition::Returned) {
            tracing::info!(upstream = %self.name, backend = %self.addrs[i], "backend back in service after its ejection");
        }
        out
    }

    /// Record how an attempt on `addr` went, for outlier ejection (nothing to do unless the
    /// pool has `outlier_detection`).
    pub fn observe(&self, addr: SocketAddr, outcome: Outcome) {
        let Some(outliers) = &self.outliers else {
            return;
        };
        let i = self.index(addr);
        if let Some(Transition::Ejected(time)) = outliers.record(i, outcome, Instant::now()) {
            tracing::warn!(upstream = %self.name, backend = %addr, ejected_for = ?time, "backend ejected after consecutive failures");
        }
    }

    /// Each backend's ejection: how much longer it is out (if it is) and how often it has
    /// been ejected, in pool order; `None` without outlier detection.
    pub fn ejections(&self) -> Option<Vec<(SocketAddr, Option<Duration>, u64)>> {
        let outliers = self.outliers.as_ref()?;
        let now = Instant::now();
        Some(
            (0..self.addrs.len())
                .map(|i| {
                    (
                        self.addrs[i],
                        outliers.ejected_for(i, now),
                        outliers.ejections(i),
                    )
                })
                .collect(),
        )
    }

    /// Ejections and returns per backend not yet published as metrics.
    pub fn unpublished_ejections(&self) -> Vec<(SocketAddr, u64, u64)> {
        let Some(outliers) = &self.outliers else {
            return Vec::new();
        };
        (0..self.addrs.len())
            .map(|i| {
                let (ejections, returns) = outliers.unpublished(i);
                (self.addrs[i], ejections, returns)
            })
            .collect()
    }

    /// Count a request in flight to this pool for its retry budget (once per request).
    pub fn enter(&self) -> BudgetToken {
        self.budget.enter()
    }

    /// Whether the request holding `token` may be retried within the pool's budget.
    pub fn allow_retry(&self, token: &mut BudgetToken) -> bool {
        self.budget.allow_retry(token)
    }

    /// Count a request in flight on `addr` until the guard is dropped; only least-request
    /// reads the counts, so other policies skip them (`None`).
    pub fn track(self: &Arc<Self>, addr: SocketAddr) -> Option<InFlight> {
        if self.config.balance != Balance::LeastRequest || self.addrs.len() < 2 {
            return None;
        }
        let index = self.addrs.iter().position(|a| *a == addr)?;
        self.in_flight[index].fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            upstream: Arc::clone(self),
            index,
        })
    }

    /// Whether at least one backend is healthy.
    pub fn any_healthy(&self) -> bool {
        self.health().iter().any(|(_, up)| *up)
    }

    /// Each backend with its current health.
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        let backends = self.selector.backends();
        backends
            .get_backend()
            .iter()
            .map(|b| (inet(b), backends.ready(b)))
            .collect()
    }

    /// Claim this pool's next health-check pass if it checks health, its interval has passed
    /// and no pass is running; the caller then runs [`Upstream::run_health_check`].
    pub fn claim_health_check(&self, now: Instant) -> bool {
        let Some(hc) = &self.config.health_check else {
            return false;
        };
        let mut last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < hc.interval) {
            return false;
        }
        if self.checking.swap(true, Ordering::AcqRel) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Run one health-check pass over every backend, in parallel (after a successful claim).
    pub async fn run_health_check(&self) {
        self.selector.backends().run_health_check(true).await;
        self.checking.store(false, Ordering::Release);
    }

    /// Build the peer for one attempt. Deterministic for the same backend and route settings,
    /// so Pingora's connection pool reuses upstream connections.
    pub fn peer(&self, addr: SocketAddr, timeouts: &Timeouts) -> HttpPeer {
        let mut peer = match &self.tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some(tls) => tls.peer(addr),
        };
        peer.options.connection_timeout = timeouts.connect;
        peer.options.read_timeout = timeouts.read;
        peer.options.write_timeout = timeouts.write;
        peer.options.idle_timeout = timeouts.idle;
        peer
    }
}

/// A request counted in flight on one backend (least-request reads the count).
pub struct InFlight {
    upstream: Arc<Upstream>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.in_flight[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request's attempts at its pool: the backends tried (a retry picks another), its place
/// in the pool's retry budget, and the backend it is on now.
#[derive(Default)]
pub struct Attempts {
    /// Inline: nearly every request makes one attempt, and this saves it an allocation.
    tried: SmallVec<[SocketAddr; 2]>,
    budget: Option<BudgetToken>,
    over_budget: bool,
    in_flight: Option<InFlight>,
    started: Option<Instant>,
}

impl Attempts {
    /// Pick a backend of `upstream` not tried yet (by `key` for hashing pools) and start an
    /// attempt on it; `None` when no healthy one is left.
    pub fn start(&mut self, upstream: &Arc<Upstream>, key: &[u8]) -> Option<SocketAddr> {
        let addr = upstream.select(key, &self.tried)?;
        self.tried.push(addr);
        if self.budget.is_none() {
            self.budget = Some(upstream.enter());
        }
        self.started = Some(Instant::now());
        self.in_flight = upstream.track(addr);
        Some(addr)
    }

    /// Whether another attempt may be made: fewer than `limit` made, a backend left to try,
    /// and room in the pool's retry budget (a refusal is remembered for [`Attempts::finish`]).
    pub fn may_retry(&mut self, upstream: &Upstream, limit: usize) -> bool {
        if self.tried.len() >= limit.min(upstream.len()) {
            return false;
        }
        let allowed = self
            .budget
            .as_mut()
            .is_some_and(|token| upstream.allow_retry(token));
        self.over_budget |= !allowed;
        allowed
    }

    /// Tell the pool how the current attempt went (for outlier ejection).
    pub fn observe(&self, upstream: &Upstream, outcome: Outcome) {
        if let Some(addr) = self.tried.last() {
            upstream.observe(*addr, outcome);
        }
    }

    /// The backend of the current (last) attempt.
    pub fn last(&self) -> Option<SocketAddr> {
        self.tried.last().copied()
    }

    /// How many attempts were made.
    pub fn count(&self) -> usize {
        self.tried.len()
    }

    /// When the current attempt's backend was picked.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    /// The request is over: it leaves the pool's in-flight counts. Whether a retry was
    /// refused for the budget.
    pub fn finish(&mut self) -> bool {
        self.in_flight = None;
        self.budget = None;
        self.over_budget
    }
}

fn inet(b: &Backend) -> SocketAddr {
    match b.addr {
        pingora_core::protocols::l4::socket::SocketAddr::Inet(a) => a,
        // Only `ip:port` backends are accepted by validation.
        #[allow(unreachable_patterns)]
        _ => SocketAddr::from(([0, 0, 0, 0], 0)),
    }
}

fn build_lb<S>(backends: Backends) -> Result<LoadBalancer<S>, String>
where
    S: pingora_load_balancing::selection::BackendSelection + 'static,
    S::Iter: pingora_load_balancing::selection::BackendIter,
{
    let lb = LoadBalancer::<S>::from_backends(backends);
    lb.update()
        .now_or_never()
        .ok_or("static discovery blocked")?
        .map_err(|e| e.to_string())?;
    Ok(lb)
}

/// The pool's health check; over TLS when the pool is (a TCP check then completes the
/// handshake, so a backend with a certificate the gateway rejects counts as down).
fn health_check(
    cfg: &HealthCheckConfig,
    tls: Option<&UpstreamTls>,
) -> Box<dyn pingora_load_balancing::health_check::HealthCheck + Send + Sync> {
    match cfg.kind {
        HealthCheckKind::Tcp => {
            let mut check = match tls {
                None => TcpHealthCheck::new(),
                Some(tls) => {
                    let mut check = TcpHealthCheck::new();
                    tls.apply_options(
                        &mut check.peer_template.sni,
                        &mut check.peer_template.options,
                    );
                    check
                }
            };
            check.consecutive_failure = cfg.unhealthy_after;
            check.consecutive_success = cfg.healthy_after;
            check.peer_template.options.connection_timeout = Some(cfg.timeout);
            check
        }
        HealthCheckKind::Http => {
            let host = cfg.host.as_deref().unwrap_or("localhost");
            let mut check = HttpHealthCheck::new(host, tls.is_some());
            if let Some(tls) = tls {
                tls.apply(&mut check.peer_template);
            }
            check.consecutive_failure = cfg.unhealthy_after;
            check.consecutive_success = cfg.healthy_after;
            check.peer_template.options.connection_timeout = Some(cfg.timeout);
            check.peer_template.options.read_timeout = Some(cfg.timeout);
            if let Ok(mut req) =
                pingora_http::RequestHeader::build("GET", cfg.path.as_bytes(), None)
            {
                let _ = req.insert_header("Host", host);
                let _ = req.insert_header("User-Agent", "gatehouse-health-check");
                check.req = req;
            }
            check.validator = Some(Box::new(|resp| {
                if resp.status.is_success() {
                    Ok(())
                } else {
                    pingora_error::Error::e_explain(
                        pingora_error::ErrorType::HTTPStatus(resp.status.as_u16()),
                        "health check answered non-2xx",
                    )
                }
            }));
            Box::new(check)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_parse() {
        assert_eq!(HashKey::parse("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(HashKey::parse("path"), Ok(HashKey::Path));
        assert_eq!(
            HashKey::parse("cookie:sid"),
            Ok(HashKey::Cookie("sid".into()))
        );
        assert!(matches!(
            HashKey::parse("header:x-user"),
            Ok(HashKey::Header(_))
        ));
        assert!(HashKey::parse("header:bad header").is_err());
        assert!(HashKey::parse("ip").is_err());
    }
}
