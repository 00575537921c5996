//! The state one request carries through the proxy's phases, and what is read off it when the
//! request ends (its span, its access-log record, `Server-Timing`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::HeaderValue;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use crate::filter::{FilterState, Reply};
use crate::forwarding::ClientAddr;
use crate::observe::request_id::{request_ids, trace_fields, RequestId};
use crate::observe::{AccessRecord, TraceContext};
use crate::routing::{raw_host, Route};
use crate::snapshot::Snapshot;
use crate::upstream::Attempts;

/// Per-request state, carried through Pingora's phases.
pub struct RequestCtx {
    pub(super) started: Instant,
    pub(super) counted: bool,
    /// The snapshot this request is served by, loaded once at its start.
    pub(super) snapshot: Option<Arc<Snapshot>>,
    /// The route it took.
    pub(super) route: Option<Arc<Route>>,
    /// Sent upstream and echoed to the client.
    pub(super) request_id: RequestId,
    /// Path and query to send upstream (after normalization, strip_prefix and rewrite) when
    /// that is not `path` itself, as it is for a query-less request the route does not rewrite.
    pub(super) upstream_path: Option<String>,
    /// The normalized request path (what routing and path hashing see) when normalizing
    /// changed it; `None` when it is the request's own path (no copy made).
    pub(super) path: Option<String>,
    /// Who connected, and the client behind it as far as we trust.
    pub(super) addr: ClientAddr,
    /// The backends tried, the retry budget, the backend in use.
    pub(super) attempts: Attempts,
    /// State the route's filters share (claims, response headers to add).
    pub(super) filters: FilterState,
    /// A filter's answer decided while the body streams, written by `fail_to_proxy`.
    pub(super) pending_reply: Option<Reply>,
    /// The W3C trace this request belongs to and the gateway's span id in it.
    pub(super) trace: Option<TraceContext>,
    /// That trace as the `traceparent` value sent upstream.
    pub(super) traceparent: Option<HeaderValue>,
    /// A debug-level span for the request (disabled, and nearly free, unless enabled).
    pub(super) span: tracing::Span,
    /// How long the backend took to send its response header.
    pub(super) upstream_elapsed: Option<Duration>,
    /// The upstream's response header already carries the request id.
    pub(super) id_in_response: bool,
    /// `Strict-Transport-Security` to add (HTTPS connections, when configured).
    pub(super) hsts: Option<HeaderValue>,
}

impl RequestCtx {
    pub(super) fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            counted: false,
            snapshot: None,
            route: None,
            request_id: RequestId::NONE,
            upstream_path: None,
            path: None,
            addr: ClientAddr::default(),
            attempts: Attempts::default(),
            filters: FilterState::default(),
            pending_reply: None,
            trace: None,
            traceparent: None,
            span: tracing::Span::none(),
            upstream_elapsed: None,
            id_in_response: false,
            hsts: None,
        }
    }

    /// The normalized request path of `req`, this context's request.
    pub(super) fn path<'a>(&'a self, req: &'a RequestHeader) -> &'a str {
        self.path.as_deref().unwrap_or_else(|| req.uri.path())
    }

    /// Path and query to send upstream, once a route is chosen; `req` is the request as the
    /// client sent it.
    pub(super) fn upstream_target<'a>(&'a self, req: &'a RequestHeader) -> Option<&'a str> {
        self.route.as_ref()?;
        Some(
            self.upstream_path
                .as_deref()
                .unwrap_or_else(|| self.path(req)),
        )
    }

    /// Whether another attempt may be made: attempts left on the route, and room in the
    /// pool's retry budget.
    pub(super) fn may_retry(&mut self) -> bool {
        self.route
            .as_ref()
            .is_some_and(|route| self.attempts.may_retry(&route.upstream, route.attempts))
    }

    /// Tell the pool how the current attempt went (for outlier ejection).
    pub(super) fn observe_attempt(&self, outcome: crate::outlier::Outcome) {
        if let Some(route) = &self.route {
            self.attempts.observe(&route.upstream, outcome);
        }
    }

    /// Gives the request its id and trace (the client's usable ones, or new ones) and its
    /// debug span.
    pub(super) fn identify(&mut self, req: &RequestHeader) {
        let (given_trace, given_id) = trace_fields(&req.headers);
        let trace = TraceContext::from_header(given_trace.map(|v| v.as_bytes()));
        self.span = tracing::debug_span!(
            "request",
            request_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            method = %req.method,
            route = tracing::field::Empty,
            upstream = tracing::field::Empty,
            status = tracing::field::Empty,
            duration_us = tracing::field::Empty,
            upstream_us = tracing::field::Empty,
        );
        #[cfg(feature = "otlp")]
        let trace = crate::observe::otlp::join_trace(&self.span, trace);
        let (request_id, traceparent) = request_ids(given_id, &trace);
        self.request_id = request_id;
        if !self.span.is_disabled() {
            self.span.record("request_id", self.request_id.as_str());
            self.span.record("trace_id", trace.trace_id_hex());
        }
        self.trace = Some(trace);
        self.traceparent = Some(traceparent);
    }

    /// `Server-Timing` of a response: the upstream's time to header and the gateway's own
    /// share.
    pub(super) fn server_timing(&self) -> HeaderValue {
        let total = self.started.elapsed().as_secs_f64() * 1000.0;
        let text = match self.upstream_elapsed {
            Some(up) => {
                let up = up.as_secs_f64() * 1000.0;
                format!(
                    "upstream;dur={up:.3}, gateway;dur={:.3}",
                    (total - up).max(0.0)
                )
            }
            None => format!("gateway;dur={total:.3}"),
        };
        HeaderValue::try_from(text).expect("digits and ASCII punctuation")
    }

    /// Fill in and emit the request's debug span once it is answered.
    pub(super) fn record_span(&self, status: u16, elapsed: Duration) {
        let span = &self.span;
        if let Some(route) = &self.route {
            span.record("route", &*route.name);
        }
        if let Some(addr) = self.attempts.last() {
            span.record("upstream", tracing::field::display(addr));
        }
        span.record("status", status);
        span.record("duration_us", elapsed.as_micros() as u64);
        if let Some(up) = self.upstream_elapsed {
            span.record("upstream_us", up.as_micros() as u64);
        }
        tracing::debug!(parent: span, "request finished");
    }

    /// The request's access-log record once it is answered.
    pub(super) fn access_record(
        &self,
        session: &Session,
        status: u16,
        elapsed: Duration,
    ) -> AccessRecord {
        let req = session.req_header();
        AccessRecord {
            time: SystemTime::now() - elapsed,
            request_id: self.request_id.as_str().to_string(),
            trace_id: self.trace.map(|t| t.trace_id_hex()).unwrap_or_default(),
            client_ip: self.addr.client,
            method: req.method.to_string(),
            host: raw_host(&req.uri, &req.headers).map(str::to_string),
            path: self.path(req).to_string(),
            route: self.route.as_ref().map(|r| r.name.to_string()),
            upstream: self.attempts.last(),
            attempts: self.attempts.count(),
            status,
            duration_us: elapsed.as_micros() as u64,
            upstream_us: self.upstream_elapsed.map(|d| d.as_micros() as u64),
        }
    }
}
