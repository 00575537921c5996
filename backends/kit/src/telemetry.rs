//! What operators see of a service: `/health` (liveness), `/ready` (database and bus
//! reachable), `/metrics` (Prometheus text), per-request metrics, and a span per request
//! that continues the caller's W3C `traceparent` (see [`crate::trace`]).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

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
use crate::trace::{Current, SpanKind, TraceContext, Tracer};

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
    /// Where the request spans go.
    tracer: Tracer,
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
                tracer: Tracer::for_service(service),
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

async fn observe(State(t): State<Telemetry>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let start = SystemTime::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let label = route.as_deref().unwrap_or("unmatched");
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
        route = label,
        trace_id = %trace.trace_id,
        span_id = %trace.span_id,
        parent_id = trace.parent_id.as_deref().unwrap_or(""),
    );
    let current = Current {
        trace,
        tracer: t.inner.tracer.clone(),
    };
    // What the server span needs beyond the answer, kept only when spans are exported.
    let exported = t
        .inner
        .tracer
        .exporting()
        .then(|| (current.clone(), req.uri().path().to_owned()));
    let resp = current.scope(next.run(req).instrument(span)).await;
    let status = resp.status();
    t.inner
        .requests
        .with_label_values(&[method.as_str(), label, status.as_str()])
        .inc();
    t.inner
        .duration
        .with_label_values(&[method.as_str(), label])
        .observe(started.elapsed().as_secs_f64());
    if let Some((current, path)) = exported {
        server_span(current, start, &method, route, path, status);
    }
    resp
}

/// Records a request's server span after OpenTelemetry's HTTP server conventions: named
/// `{method} {route}`, failed on a 5xx.
fn server_span(
    current: Current,
    start: SystemTime,
    method: &axum::http::Method,
    route: Option<String>,
    path: String,
    status: StatusCode,
) {
    use crate::trace::Value;
    let mut attributes: Vec<(&'static str, Value)> = vec![
        ("http.request.method", method.as_str().into()),
        ("url.path", path.into()),
        ("url.scheme", "http".into()),
        (
            "http.response.status_code",
            i64::from(status.as_u16()).into(),
        ),
    ];
    let name = match &route {
        Some(r) => format!("{method} {r}"),
        None => method.to_string(),
    };
    if let Some(r) = route {
        attributes.push(("http.route", r.into()));
    }
    let error = status.is_server_error().then(|| status.as_str().to_owned());
    if let Some(e) = &error {
        attributes.push(("error.type", e.clone().into()));
    }
    current.tracer.record(crate::trace::Span {
        name,
        kind: SpanKind::Server,
        context: current.trace,
        start,
        end: SystemTime::now(),
        attributes,
        error,
    });
}
