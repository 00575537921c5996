//! The gateway's Prometheus metrics, in a registry of its own (several gateways can live in
//! one process, as tests and embedders do).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::upstream::Upstream;

/// Series counted where no gateway's [`Metrics`] reach (filters are built by factories that
/// get no handle on them): process-wide, and registered in every gateway's registry.
pub(crate) mod shared {
    use std::sync::LazyLock;

    use prometheus::{GaugeVec, IntCounterVec, Opts};

    /// `gatehouse_jwks_refreshes_total{filter,result}`: JWKS fetches, `ok` or `failed`.
    pub static JWKS_REFRESHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
        IntCounterVec::new(
            Opts::new(
                "gatehouse_jwks_refreshes_total",
                "JWKS fetches by jwt filter and result: ok (keys installed or unchanged), failed (the last keys keep serving).",
            ),
            &["filter", "result"],
        )
        .expect("valid metric")
    });

    /// `gatehouse_jwks_last_success_timestamp_seconds{filter}`.
    pub static JWKS_LAST_SUCCESS: LazyLock<GaugeVec> = LazyLock::new(|| {
        GaugeVec::new(
            Opts::new(
                "gatehouse_jwks_last_success_timestamp_seconds",
                "When a jwt filter last fetched its JWKS successfully (Unix time).",
            ),
            &["filter"],
        )
        .expect("valid metric")
    });

    /// `gatehouse_rate_limit_store_errors_total{filter,outcome}`.
    pub static RATE_LIMIT_STORE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
        IntCounterVec::new(
            Opts::new(
                "gatehouse_rate_limit_store_errors_total",
                "Rate-limit store (Redis) errors and timeouts by filter, and what on_store_error made of the request: allowed or denied.",
            ),
            &["filter", "outcome"],
        )
        .expect("valid metric")
    });
}

/// Every metric the gateway exports.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `gatehouse_requests_total{route,method,status}`.
    requests: IntCounterVec,
    /// `gatehouse_request_duration_seconds{route}`: from request start to the end of logging.
    duration: HistogramVec,
    /// `gatehouse_requests_in_flight`.
    pub in_flight: IntGauge,
    /// `gatehouse_upstream_backend_healthy{upstream,backend}`: 1 healthy, 0 not.
    upstream_healthy: IntGaugeVec,
    /// `gatehouse_config_generation`: generation of the snapshot serving now.
    pub generation: IntGauge,
    /// `gatehouse_config_reloads_total{result}`: applied, unchanged, failed.
    reloads: IntCounterVec,
    /// `gatehouse_dns_lookups_total{name,result}`: background lookups of backend names.
    dns_lookups: IntCounterVec,
    /// `gatehouse_filter_decisions_total{filter,decision,reason}`.
    filter_decisions: IntCounterVec,
    /// `gatehouse_upstream_duration_seconds{upstream}`: from picking a backend to its response header.
    upstream_duration: HistogramVec,
    /// `gatehouse_access_log_dropped_total`: records the access-log writer could not keep up with.
    pub access_log_dropped: prometheus::IntCounter,
    /// `gatehouse_upstream_ejections_total{upstream,backend}` and
    /// `gatehouse_upstream_ejection_returns_total{upstream,backend}` (outlier detection).
    ejections: IntCounterVec,
    returns: IntCounterVec,
    /// `gatehouse_retries_over_budget_total{upstream}`: retries not made for the budget.
    over_budget: IntCounterVec,
    /// `gatehouse_connections_open` and `gatehouse_connections_refused_total`.
    pub connections: crate::downstream::ConnectionMetrics,
}

/// Methods get their own label value; anything else is `OTHER` so clients cannot grow the
/// label set.
fn method_label(method: &http::Method) -> &'static str {
    METHOD_LABELS[method_index(method)]
}

const METHOD_LABELS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "OTHER",
];

fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::PATCH => 4,
        http::Method::HEAD => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

/// Series handles a route resolves on first use, so its common requests skip the label
/// lookup (hashing three labels, a lock and a map probe): its duration histogram, and its
/// request counters for status 200 by method. A route belongs to one gateway's snapshots, as
/// the [`Metrics`] that fill these do.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    duration: std::sync::OnceLock<prometheus::Histogram>,
    ok: [std::sync::OnceLock<prometheus::IntCounter>; 8],
}

impl Metrics {
    /// Create and register the metric set.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gatehouse_requests_total",
                "Requests answered, by route, method and status.",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_request_duration_seconds",
                "Time from request head to the end of the response, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new("gatehouse_requests_in_flight", "Requests being served now.")
            .expect("valid metric");
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "gatehouse_upstream_backend_healthy",
                "1 when the backend passes its health check.",
            ),
            &["upstream", "backend"],
        )
        .expect("valid metric");
        let generation = IntGauge::new(
            "gatehouse_config_generation",
            "Generation of the configuration snapshot now serving.",
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "gatehouse_config_reloads_total",
                "Configuration reloads, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let filter_decisions = IntCounterVec::new(
            Opts::new(
                "gatehouse_filter_decisions_total",
                "Filter decisions: continue, or respond with a reason (invalid_token, rate_limited, …).",
            ),
            &["filter", "decision", "reason"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_upstream_duration_seconds",
                "Time from picking a backend to its response header, by upstream.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["upstream"],
        )
        .expect("valid metric");
        let access_log_dropped = prometheus::IntCounter::new(
            "gatehouse_access_log_dropped_total",
            "Access-log records dropped because the writer could not keep up.",
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let ejections = counter(
            "gatehouse_upstream_ejections_total",
            "Backends taken out of selection after consecutive failures (outlier detection).",
            &["upstream", "backend"],
        );
        let returns = counter(
            "gatehouse_upstream_ejection_returns_total",
            "Ejected backends back in service after their ejection time.",
            &["upstream", "backend"],
        );
        let dns_lookups = counter(
            "gatehouse_dns_lookups_total",
            "Background lookups of backend names (host:port), by result: unchanged, changed, failed (the last addresses kept).",
            &["name", "result"],
        );
        let over_budget = counter(
            "gatehouse_retries_over_budget_total",
            "Retries not made because the pool's retry budget was spent.",
            &["upstream"],
        );
        let connections = crate::downstream::ConnectionMetrics {
            open: IntGauge::new("gatehouse_connections_open", "Client connections open now.")
                .expect("valid metric"),
            refused: prometheus::IntCounter::new(
                "gatehouse_connections_refused_total",
                "Client connections closed at once because server.max_connections were open.",
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(filter_decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connections.open.clone()),
            Box::new(connections.refused.clone()),
            Box::new(ejections.clone()),
            Box::new(returns.clone()),
            Box::new(over_budget.clone()),
            Box::new(dns_lookups.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(upstream_healthy.clone()),
            Box::new(generation.clone()),
            Box::new(reloads.clone()),
            Box::new(shared::JWKS_REFRESHES.clone()),
            Box::new(shared::JWKS_LAST_SUCCESS.clone()),
            Box::new(shared::RATE_LIMIT_STORE_ERRORS.clone()),
            // `gatehouse_rate_limit_keys{filter}`, read from the live limiters at scrape time.
            Box::new(crate::filter::ratelimit::RateLimitKeys::new()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for result in ["applied", "unchanged", "failed"] {
            reloads.with_label_values(&[result]);
        }
        Metrics {
            registry,
            dns_lookups,
            requests,
            duration,
            in_flight,
            upstream_healthy,
            generation,
            reloads,
            filter_decisions,
            upstream_duration,
            access_log_dropped,
            ejections,
            returns,
            over_budget,
            connections,
        }
    }

    /// Publish the ejections and returns the pools counted since the last call.
    pub fn publish_ejections(&self, snapshot: &crate::snapshot::Snapshot) {
        for pool in snapshot.upstreams.values() {
            for (addr, ejected, returned) in pool.unpublished_ejections() {
                let backend = addr.to_string();
                let labels = [&**pool.name(), backend.as_str()];
                if ejected > 0 {
                    self.ejections.with_label_values(&labels).inc_by(ejected);
                }
                if returned > 0 {
                    self.returns.with_label_values(&labels).inc_by(returned);
                }
            }
        }
    }

    /// Count a retry the pool's budget did not allow.
    pub fn retry_over_budget(&self, upstream: &str) {
        self.over_budget.with_label_values(&[upstream]).inc();
    }

    /// Record how long an upstream took to answer with its header. The pool keeps its series'
    /// handle, so this is a lookup on the pool's first request only; a pool belongs to one
    /// gateway's snapshots, as these metrics do.
    pub fn observe_upstream(&self, upstream: &Upstream, seconds: f64) {
        upstream
            .duration_metric
            .get_or_init(|| {
                self.upstream_duration
                    .with_label_values(&[&**upstream.name()])
            })
            .observe(seconds);
    }

    /// Count a filter's decision (the rare path: answers, errors).
    pub fn filter_decision(&self, filter: &str, decision: &str, reason: &str) {
        self.filter_decisions
            .with_label_values(&[filter, decision, reason])
            .inc();
    }

    /// Count a filter letting a request through, with the label handle resolved once.
    pub fn filter_continued(&self, f: &crate::filter::NamedFilter) {
        f.continued
            .get_or_init(|| {
                self.filter_decisions
                    .with_label_values(&[&*f.name, "continue", ""])
            })
            .inc();
    }

    /// Record one finished request.
    pub fn observe_request(
        &self,
        route: Option<(&str, &RouteMetrics)>,
        method: &http::Method,
        status: u16,
        seconds: f64,
    ) {
        let name = route.map_or("(none)", |(name, _)| name);
        // The labels are only formatted when a series is looked up, not on a cached one.
        let counter = || {
            let mut status_text = itoa::Buffer::new();
            self.requests.with_label_values(&[
                name,
                method_label(method),
                status_text.format(status),
            ])
        };
        match route.filter(|_| status == 200) {
            Some((_, series)) => series.ok[method_index(method)].get_or_init(counter).inc(),
            None => counter().inc(),
        }
        match route {
            Some((_, series)) => series
                .duration
                .get_or_init(|| self.duration.with_label_values(&[name]))
                .observe(seconds),
            None => self.duration.with_label_values(&[name]).observe(seconds),
        }
    }

    /// Count a background lookup of a backend name.
    pub fn dns_lookup(&self, name: &str, lookup: crate::resolve::Lookup) {
        self.dns_lookups
            .with_label_values(&[name, lookup.label()])
            .inc();
    }

    /// Record a reload's result: `applied`, `unchanged` or `failed`.
    pub fn reload(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// How many reloads ended with `result`.
    pub fn reload_count(&self, result: &str) -> u64 {
        self.reloads.with_label_values(&[result]).get()
    }

    /// Publish the current health of a pool's backends.
    pub fn record_health(&self, upstream: &Upstream) {
        for (addr, healthy) in upstream.health() {
            self.upstream_healthy
                .with_label_values(&[&**upstream.name(), addr.to_string().as_str()])
                .set(i64::from(healthy));
        }
    }

    /// Forget health series (after a reload removed pools).
    pub fn reset_health(&self) {
        self.upstream_healthy.reset();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
