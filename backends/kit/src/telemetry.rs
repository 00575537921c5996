//! What operators see of a service: `/health` (liveness), `/ready` (database and bus
//! reachable), `/metrics` (Prometheus text), per-request metrics, and a tracing span per
//! request that continues the caller's W3C `traceparent`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use tracing::Instrument;

use crate::problem::Problem;

/// Something `/ready` checks: the database, the event bus.
#[async_trait::async_trait]
pub trait ReadyCheck: Send + Sync {
    /// A short name for the answer (`database`, `bus`).
    fn name(&self) -> &'static str;
    /// Whether it is reachable now.
    async fn ready(&self) -> bool;
}

#[async_trait::async_trait]
impl ReadyCheck for crate::db::Db {
    fn name(&self) -> &'static str {
        "database"
    }
    async fn ready(&self) -> bool {
        self.ping().await
    }
}

/// A service's metrics registry and its HTTP request metrics.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    service: &'static str,
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    checks: Vec<Arc<dyn ReadyCheck>>,
    /// `service_dependency_up{dependency}`, set by every `/ready` and scrape.
    dependency_up: IntGaugeVec,
    /// A service's own measurements, taken at each scrape (see [`Telemetry::on_scrape`]).
    scrape_hooks: std::sync::Mutex<Vec<ScrapeHook>>,
}

/// A measurement a service takes when `/metrics` is scraped.
type ScrapeHook =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync + 'static>;

impl Telemetry {
    /// [`Telemetry::new`] with the checks every service's `/ready` makes: its database,
    /// and the event bus when it has one.
    pub fn for_service(
        service: &'static str,
        db: &crate::Db,
        bus: Option<&Arc<dyn crate::EventBus>>,
    ) -> Telemetry {
        let mut checks: Vec<Arc<dyn ReadyCheck>> = vec![Arc::new(db.clone())];
        if let Some(bus) = bus {
            checks.push(Arc::new(crate::bus::BusReady(bus.clone())));
        }
        let telemetry = Telemetry::new(service, checks);
        telemetry.measure_outbox(service, db.clone());
        telemetry
    }

    /// Measure `db`'s outbox at each scrape: how many events wait for the relay, and how old
    /// the oldest is (0 when none waits): the relay's lag. A scrape that cannot read the
    /// table (a service without one) leaves the gauges as they were.
    fn measure_outbox(&self, service: &'static str, db: crate::Db) {
        let pending = prometheus::IntGauge::with_opts(
            Opts::new(
                "outbox_pending",
                "Events recorded in the outbox and not yet published to the bus",
            )
            .const_label("service", service),
        )
        .expect("valid metric");
        let age = prometheus::Gauge::with_opts(
            Opts::new(
                "outbox_oldest_pending_age_seconds",
                "Age of the oldest event waiting in the outbox (0 when none waits): the relay's lag",
            )
            .const_label("service", service),
        )
        .expect("valid metric");
        for c in [
            Box::new(pending.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(age.clone()),
        ] {
            self.inner.registry.register(c).expect("registered once");
        }
        self.on_scrape(move || {
            let (db, pending, age) = (db.clone(), pending.clone(), age.clone());
            async move {
                let found = sqlx::query_as::<_, (i64, Option<i64>)>(
                    "SELECT COUNT(*), MIN(created_at) FROM kit_outbox WHERE sent_at IS NULL",
                )
                .fetch_one(db.pool())
                .await;
                if let Ok((waiting, oldest)) = found {
                    pending.set(waiting);
                    let age_ms = oldest.map_or(0, |t| (crate::db::now_ms() - t).max(0));
                    age.set(age_ms as f64 / 1000.0);
                }
            }
        });
    }

    pub fn new(service: &'static str, checks: Vec<Arc<dyn ReadyCheck>>) -> Telemetry {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by route and status",
            )
            .const_label("service", service),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from request to response head, by route",
            )
            .const_label("service", service)
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route"],
        )
        .expect("valid metric");
        let dependency_up = IntGaugeVec::new(
            Opts::new(
                "service_dependency_up",
                "Whether a dependency /ready checks (database, bus) answered at the last /ready or scrape: 1 or 0",
            )
            .const_label("service", service),
            &["dependency"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(dependency_up.clone()))
            .expect("registered once");
        registry
            .register(Box::new(requests.clone()))
            .expect("registered once");
        registry
            .register(Box::new(duration.clone()))
            .expect("registered once");
        Telemetry {
            inner: Arc::new(Inner {
                service,
                registry,
                requests,
                duration,
                checks,
                dependency_up,
                scrape_hooks: std::sync::Mutex::default(),
            }),
        }
    }

    /// Run `hook` at every scrape, before the metrics are read: for a gauge that must be
    /// current even when the code that would set it is stuck (a queue's age, say). Each run
    /// is bounded to 1 s.
    pub fn on_scrape<F, Fut>(&self, hook: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let hook: ScrapeHook = Arc::new(move || Box::pin(hook()));
        self.inner
            .scrape_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// The registry, for a service's own metrics.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Wraps `app` with the per-request span and metrics, and adds `/health`, `/ready` and
    /// `/metrics` (outside the metrics, so scrapes don't count themselves).
    pub fn wrap(&self, app: Router) -> Router {
        let ops = Router::new()
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .with_state(self.clone());
        app.layer(axum::middleware::from_fn_with_state(self.clone(), observe))
            .merge(ops)
    }
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

impl Telemetry {
    /// Run every readiness check, publish each outcome as `service_dependency_up`, and name
    /// the ones that failed.
    async fn check_dependencies(&self) -> Vec<&'static str> {
        // All at once, each bounded: a database that is gone makes a pool wait its whole
        // acquire timeout (10 s), and a probe gives up long before (2 s in deploy/k8s); the
        // answer must be a 503 that says why, in time.
        let outcomes =
            futures_util::future::join_all(self.inner.checks.iter().map(|c| async move {
                tokio::time::timeout(READY_CHECK_TIMEOUT, c.ready())
                    .await
                    .unwrap_or(false)
            }))
            .await;
        let mut failed = Vec::new();
        for (c, up) in self.inner.checks.iter().zip(outcomes) {
            self.inner
                .dependency_up
                .with_label_values(&[c.name()])
                .set(i64::from(up));
            if !up {
                failed.push(c.name());
            }
        }
        failed
    }
}

/// How long one `/ready` check may take before it counts as down.
const READY_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

async fn ready(State(t): State<Telemetry>) -> Response {
    let failed = t.check_dependencies().await;
    if failed.is_empty() {
        axum::Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        Problem::unavailable(format!("not reachable: {}", failed.join(", ")))
            .with("failed", &failed)
            .into_response()
    }
}

async fn metrics(State(t): State<Telemetry>) -> Response {
    // Scrapes see the dependencies as they are now, not as the last probe found them.
    t.check_dependencies().await;
    let hooks = t
        .inner
        .scrape_hooks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for hook in hooks {
        let _ = tokio::time::timeout(READY_CHECK_TIMEOUT, hook()).await;
    }
    let mut buf = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if encoder
        .encode(&t.inner.registry.gather(), &mut buf)
        .is_err()
    {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        buf,
    )
        .into_response()
}

/// The trace context of the request being served: the caller's trace id (or a new one) and
/// this service's span id. Handlers that call other services send [`TraceContext::header`].
#[derive(Debug, Clone)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// This service's span: 16 lowercase hex digits.
    pub span_id: String,
    /// The caller's span, when a valid `traceparent` came in.
    pub parent_id: Option<String>,
    /// The caller's sampled flag (`01`) or ours.
    pub flags: String,
}

impl TraceContext {
    /// Continues a W3C `traceparent` (version 00, or a later one read as 00), or starts a
    /// trace when it is absent or malformed.
    pub fn continue_from(traceparent: Option<&str>) -> TraceContext {
        let span_id = random_hex(8);
        if let Some((trace_id, parent, flags)) = traceparent.and_then(parse_traceparent) {
            return TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent),
                flags,
            };
        }
        TraceContext {
            trace_id: random_hex(16),
            span_id,
            parent_id: None,
            flags: "01".into(),
        }
    }

    /// The `traceparent` to send on a call this request makes.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `version-traceid-parentid-flags`, as W3C Trace Context (and the gateway) read it: a
/// version other than `00` is parsed as `00` and may carry more fields after the flags
/// (ignored); version `ff`, upper-case hex and all-zero ids are invalid.
fn parse_traceparent(v: &str) -> Option<(String, String, String)> {
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let ok = is_hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && is_hex(trace, 32)
        && is_hex(parent, 16)
        && is_hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    ok.then(|| (trace.to_owned(), parent.to_owned(), flags.to_owned()))
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    crate::hex(&buf)
}

async fn observe(State(t): State<Telemetry>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let trace = TraceContext::continue_from(
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let span = tracing::info_span!(
        "request",
        service = t.inner.service,
        %method,
        route = %route,
        trace_id = %trace.trace_id,
        span_id = %trace.span_id,
        parent_id = trace.parent_id.as_deref().unwrap_or(""),
    );
    req.extensions_mut().insert(trace);
    let resp = next.run(req).instrument(span).await;
    let status = resp.status();
    t.inner
        .requests
        .with_label_values(&[method.as_str(), route.as_str(), status.as_str()])
        .inc();
    t.inner
        .duration
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// W3C Trace Context §3.2.4: a higher version is parsed as version 00, and the fields it
    /// may add after the flags are ignored. The gateway does the same, so a trace crosses
    /// both.
    #[test]
    fn a_higher_version_is_read_as_version_00() {
        for future in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        ] {
            let t = TraceContext::continue_from(Some(future));
            assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{future}");
            assert_eq!(t.parent_id.as_deref(), Some("00f067aa0ba902b7"));
            assert_eq!(t.flags, "01");
            assert!(
                t.header().starts_with("00-"),
                "we send the version we speak"
            );
        }
    }

    #[test]
    fn a_valid_traceparent_is_continued_and_a_bad_one_starts_a_trace() {
        let t = TraceContext::continue_from(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert!(t
            .header()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let t = TraceContext::continue_from(Some(bad));
            assert!(t.parent_id.is_none(), "{bad}");
            assert!(is_hex(&t.trace_id, 32));
        }
    }
}
