//! Distributed tracing across the services: W3C Trace Context in and out, and the spans a
//! service exports over OTLP/HTTP.
//!
//! - **In.** Every request continues the caller's `traceparent` (the gateway's span, when it
//!   came through the gateway) in a server span ([`crate::Telemetry::wrap`]), named and
//!   attributed after OpenTelemetry's HTTP conventions (`http.request.method`, `http.route`,
//!   `http.response.status_code`).
//! - **Out.** While a request (or an event, below) is handled, its context is the task's
//!   [`current`] one. A call to another service sent through [`send`] is a client span, child
//!   of it, and carries that span as the callee's parent. Work that outlives the request (the
//!   order saga) takes the context along with [`Current::scope`].
//! - **Events.** [`crate::outbox::record`] stores the current context with the event, the
//!   relay puts it on the envelope ([`crate::Event::traceparent`]), and a consumer handles
//!   the event in a consumer span that continues it ([`crate::inbox::Consumer`]).
//!
//! Contexts travel whether or not this process exports, so a trace crosses a service that
//! records nothing. Spans are exported only by a build with the `otlp` feature and after
//! [`install`] was given an endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, read by
//! [`install_from_env`]); each service is its own `service.name`, also when platform mode
//! runs them all in one process. A trace the caller marked not sampled (flags `00`) is
//! propagated and not exported.
//!
//! Spans are built here, with the ids this module drew, and handed to the OpenTelemetry
//! SDK's batch processor when they end: the ids a service sends on and the ids it exports
//! are the same by construction.

use std::sync::Arc;
use std::time::SystemTime;

/// The trace context of the work being done: the trace, this span, and its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// This span: 16 lowercase hex digits.
    pub span_id: String,
    /// The caller's span, when a valid `traceparent` came in.
    pub parent_id: Option<String>,
    /// The caller's flags (`01` = sampled), or `01` for a trace started here.
    pub flags: String,
}

impl TraceContext {
    /// Continues a W3C `traceparent` (version 00, or a later one read as 00) in a new span,
    /// or starts a trace when it is absent or malformed.
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

    /// The span a `traceparent` names, as it is (not a child of it): for work that goes on
    /// in a span recorded earlier, such as a saga resumed from the `traceparent` its order
    /// kept. `None` when the header is malformed.
    pub fn resume(traceparent: &str) -> Option<TraceContext> {
        let (trace_id, span_id, flags) = parse_traceparent(traceparent)?;
        Some(TraceContext {
            trace_id,
            span_id,
            parent_id: None,
            flags,
        })
    }

    /// A new span in this trace whose parent is this one.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id.clone(),
            span_id: random_hex(8),
            parent_id: Some(self.span_id.clone()),
            flags: self.flags.clone(),
        }
    }

    /// The `traceparent` that makes this span the parent of the receiver's.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }

    /// Whether the trace is sampled (flag bit 0): only then are its spans exported.
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.flags, 16).is_ok_and(|f| f & 1 == 1)
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

// ---------------------------------------------------------------------------------------
// Spans
// ---------------------------------------------------------------------------------------

/// What a span stands for, as OpenTelemetry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A request this service answered.
    Server,
    /// A request this service sent.
    Client,
    /// An event this service handled.
    Consumer,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

/// A span as it ended.
#[derive(Debug, Clone)]
pub struct Span {
    /// `GET /orders/{id}`, `order.confirmed process`…
    pub name: String,
    /// Server, client or consumer.
    pub kind: SpanKind,
    /// Its ids and its parent's.
    pub context: TraceContext,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes, by OpenTelemetry semantic convention names.
    pub attributes: Vec<(&'static str, Value)>,
    /// Why it failed, when it did (the span's status is then Error).
    pub error: Option<String>,
}

/// Where a service's spans go: nowhere, or the OTLP exporter [`install`] set up, under the
/// service's own name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tracer {
    sink: Option<Arc<dyn Sink>>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("exporting", &self.sink.is_some())
            .finish()
    }
}

/// Something that takes ended spans.
trait Sink: Send + Sync {
    fn record(&self, span: Span);
}

impl Tracer {
    /// The tracer of `service`: exporting under that name when [`install`] set up an
    /// exporter, recording nothing otherwise.
    pub fn for_service(service: &'static str) -> Tracer {
        Tracer {
            sink: export::sink(service),
        }
    }

    /// A tracer that records nothing (contexts still propagate).
    pub fn disabled() -> Tracer {
        Tracer::default()
    }

    /// Whether spans go anywhere.
    pub fn exporting(&self) -> bool {
        self.sink.is_some()
    }

    /// Hands an ended span to the exporter, unless its trace is not sampled.
    pub fn record(&self, span: Span) {
        if let Some(sink) = &self.sink {
            if span.context.sampled() {
                sink.record(span);
            }
        }
    }
}

/// Export spans of every service in this process to the OTLP/HTTP receiver at `endpoint`
/// (a base URL: spans go to `{endpoint}/v1/traces`). Call it once, before the services
/// start (a [`Tracer`] made before does not export); a second call is ignored. Without the
/// `otlp` feature it only warns that spans are not exported.
pub fn install(endpoint: &str) {
    export::install(endpoint, None);
}

/// [`install`] with `OTEL_EXPORTER_OTLP_ENDPOINT`, when it is set and not empty, for a
/// process that runs one service: `OTEL_SERVICE_NAME`, when set, names it in the exported
/// spans instead of the service's own name.
pub fn install_from_env() {
    let var = |name| {
        std::env::var(name)
            .ok()
            .filter(|v: &String| !v.trim().is_empty())
    };
    if let Some(endpoint) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        export::install(endpoint.trim(), var("OTEL_SERVICE_NAME"));
    }
}

/// Sends every queued span and stops exporting; spans ended later are dropped. Call it when
/// the process stops, after the services did.
pub fn shutdown() {
    export::shutdown();
}

// ---------------------------------------------------------------------------------------
// The current context
// ---------------------------------------------------------------------------------------

tokio::task_local! {
    static CURRENT: Current;
}

/// The span a task works in, and the tracer of the service doing the work.
#[derive(Debug, Clone)]
pub struct Current {
    /// The span's context: what outgoing calls and recorded events continue.
    pub trace: TraceContext,
    /// Where the spans started under it go.
    pub tracer: Tracer,
}

impl Current {
    /// Runs `work` with this as its current context (for work that outlives the request that
    /// started it, such as a saga spawned by a handler).
    pub async fn scope<F: std::future::Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }
}

/// `tokio::spawn` that keeps the current context: what the task calls and records continues
/// the trace of the work that spawned it.
pub fn spawn<F>(work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current() {
        Some(current) => tokio::spawn(current.scope(work)),
        None => tokio::spawn(work),
    }
}

/// The context of the request or event this task is handling, if any.
pub fn current() -> Option<Current> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The `traceparent` to record with an event or send on a call: the current span's.
pub fn current_traceparent() -> Option<String> {
    CURRENT.try_with(|c| c.trace.header()).ok()
}

/// Sends `request` as a client span, child of the current one, with the `traceparent` that
/// makes it the callee's parent; without a current context it is sent as it is. The span has
/// OpenTelemetry's HTTP client attributes (`http.request.method`, `server.address`,
/// `server.port`, `url.full`, `http.response.status_code`) and fails on a transport error
/// or a 5xx.
pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
    let Some(current) = current() else {
        return request.send().await;
    };
    let (client, built) = request.build_split();
    let mut built = built?;
    let context = current.trace.child();
    if let Ok(value) = http::HeaderValue::from_str(&context.header()) {
        built.headers_mut().insert("traceparent", value);
    }
    let method = built.method().as_str().to_owned();
    let url = built.url();
    let mut attributes: Vec<(&'static str, Value)> = vec![
        ("http.request.method", method.as_str().into()),
        ("url.full", url.as_str().into()),
    ];
    if let Some(host) = url.host_str() {
        attributes.push(("server.address", host.into()));
    }
    if let Some(port) = url.port_or_known_default() {
        attributes.push(("server.port", i64::from(port).into()));
    }
    let start = SystemTime::now();
    let answer = client.execute(built).await;
    let error = match &answer {
        Ok(r) => {
            attributes.push((
                "http.response.status_code",
                i64::from(r.status().as_u16()).into(),
            ));
            r.status()
                .is_server_error()
                .then(|| r.status().as_str().to_owned())
        }
        Err(e) => Some(crate::problem::error_chain(e)),
    };
    if let Some(e) = &error {
        attributes.push(("error.type", e.clone().into()));
    }
    current.tracer.record(Span {
        name: method,
        kind: SpanKind::Client,
        context,
        start,
        end: SystemTime::now(),
        attributes,
        error,
    });
    answer
}

// ---------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------

#[cfg(not(feature = "otlp"))]
mod export {
    use std::sync::Arc;

    pub(super) fn install(endpoint: &str, _name: Option<String>) {
        tracing::warn!(
            endpoint,
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but this build has no OTLP export \
             (cargo feature `otlp`): spans are not exported"
        );
    }

    pub(super) fn sink(_service: &'static str) -> Option<Arc<dyn super::Sink>> {
        None
    }

    pub(super) fn shutdown() {}
}

#[cfg(feature = "otlp")]
mod export {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use gatehouse_otlp::Pipeline;
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{InstrumentationScope, KeyValue};
    use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanProcessor};
    use opentelemetry_sdk::Resource;

    use super::{Sink, Span, Value};

    /// The process's exporter: one pipeline, one batch processor per service name.
    struct Export {
        endpoint: String,
        /// `OTEL_SERVICE_NAME` of a process that runs one service.
        name: Option<String>,
        pipeline: Mutex<Pipeline>,
        services: Mutex<HashMap<&'static str, Arc<Service>>>,
    }

    static EXPORT: OnceLock<Export> = OnceLock::new();

    pub(super) fn install(endpoint: &str, name: Option<String>) {
        match Pipeline::start() {
            Ok(pipeline) => {
                let fresh = EXPORT
                    .set(Export {
                        endpoint: endpoint.to_owned(),
                        name,
                        pipeline: Mutex::new(pipeline),
                        services: Mutex::default(),
                    })
                    .is_ok();
                if fresh {
                    tracing::info!(endpoint, "exporting spans over OTLP/HTTP");
                }
            }
            Err(e) => tracing::error!(error = %e, "spans are not exported"),
        }
    }

    pub(super) fn sink(service: &'static str) -> Option<Arc<dyn Sink>> {
        let export = EXPORT.get()?;
        let mut services = export.services.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = services.get(service) {
            return Some(s.clone());
        }
        let pipeline = export.pipeline.lock().unwrap_or_else(|e| e.into_inner());
        let exporter = match pipeline.exporter(&export.endpoint) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(service, error = %e, "spans are not exported");
                return None;
            }
        };
        let mut processor = BatchSpanProcessor::builder(exporter).build();
        let name = export.name.clone().unwrap_or_else(|| service.to_owned());
        processor.set_resource(&Resource::builder().with_service_name(name).build());
        let s = Arc::new(Service {
            processor,
            scope: InstrumentationScope::builder("gatehouse-kit").build(),
        });
        services.insert(service, s.clone());
        Some(s)
    }

    pub(super) fn shutdown() {
        let Some(export) = EXPORT.get() else {
            return;
        };
        let services: Vec<_> = export
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (name, s) in services {
            if let Err(e) = s.processor.shutdown() {
                tracing::warn!(service = name, error = %e, "flushing spans failed");
            }
        }
        export
            .pipeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop();
    }

    struct Service {
        processor: BatchSpanProcessor,
        scope: InstrumentationScope,
    }

    fn span_id(hex: &str) -> SpanId {
        SpanId::from_hex(hex).unwrap_or(SpanId::INVALID)
    }

    impl Sink for Service {
        fn record(&self, span: Span) {
            let c = &span.context;
            let flags = u8::from_str_radix(&c.flags, 16).unwrap_or(1);
            let context = SpanContext::new(
                TraceId::from_hex(&c.trace_id).unwrap_or(TraceId::INVALID),
                span_id(&c.span_id),
                TraceFlags::new(flags),
                false,
                TraceState::default(),
            );
            let attributes = span
                .attributes
                .into_iter()
                .map(|(k, v)| match v {
                    Value::Str(s) => KeyValue::new(k, s),
                    Value::Int(i) => KeyValue::new(k, i),
                })
                .collect();
            self.processor.on_end(SpanData {
                span_context: context,
                parent_span_id: c.parent_id.as_deref().map_or(SpanId::INVALID, span_id),
                parent_span_is_remote: true,
                span_kind: match span.kind {
                    super::SpanKind::Server => SpanKind::Server,
                    super::SpanKind::Client => SpanKind::Client,
                    super::SpanKind::Consumer => SpanKind::Consumer,
                },
                name: span.name.into(),
                start_time: span.start,
                end_time: span.end,
                attributes,
                dropped_attributes_count: 0,
                events: Default::default(),
                links: Default::default(),
                status: match span.error {
                    Some(e) => Status::error(e),
                    None => Status::Unset,
                },
                instrumentation_scope: self.scope.clone(),
            });
        }
    }
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

    #[test]
    fn a_resumed_span_is_the_one_the_header_names() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = TraceContext::resume(header).expect("valid");
        assert_eq!(span.header(), header);
        assert_eq!(span.child().parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(TraceContext::resume("garbage"), None);
    }

    #[test]
    fn a_child_continues_the_trace_under_its_parent_and_keeps_the_sampled_flag() {
        let parent = TraceContext::continue_from(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.parent_id.as_deref(), Some(parent.span_id.as_str()));
        assert_ne!(child.span_id, parent.span_id);
        assert!(!child.sampled(), "not sampled upstream: not sampled here");
        assert!(TraceContext::continue_from(None).sampled());
    }

    /// A call made while a request is handled carries a child of the request's span; one
    /// made outside any request carries nothing of ours.
    #[tokio::test]
    async fn a_call_inside_a_request_carries_a_child_of_its_span() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|h: axum::http::HeaderMap| async move {
                h.get("traceparent")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/");

        let outside = send(client.get(&url)).await.unwrap().text().await.unwrap();
        assert_eq!(outside, "", "no context, no header");

        let request = TraceContext::continue_from(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let current = Current {
            trace: request.clone(),
            tracer: Tracer::disabled(),
        };
        let seen = current
            .scope(async { send(client.get(&url)).await.unwrap().text().await.unwrap() })
            .await;
        let parts: Vec<&str> = seen.split('-').collect();
        assert_eq!(parts[1], request.trace_id, "{seen}");
        assert_ne!(
            parts[2], request.span_id,
            "the client span is the parent: {seen}"
        );
        assert_eq!(parts[3], "01");
    }
}
