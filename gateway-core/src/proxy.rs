//! The `ProxyHttp` implementation. Thin on purpose: it wires the snapshot's router and pools,
//! the forwarding headers and the error answers into Pingora's phases.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use smallvec::SmallVec;

use crate::fields::{self, Fields};
use crate::filter::{Decision, FilterState, Reply, ReplyBody, RequestInfo};
use crate::observe::{AccessLog, AccessRecord, Metrics, TraceContext};
use crate::problem;
use crate::reload::ConfigStore;
use crate::routing::{normalize_path, request_host, RequestView, Route};
use crate::snapshot::Snapshot;
use crate::upstream::{HashKey, InFlight};

/// The fields the gateway sets itself, parsed once.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// The only protocol the listeners speak (no TLS termination yet); static, so never copied.
const HTTP: HeaderValue = HeaderValue::from_static("http");

/// The gateway's proxy logic; one instance serves every request of a [`crate::Gateway`].
pub struct GatewayProxy {
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    access_log: Option<AccessLog>,
}

impl GatewayProxy {
    /// A proxy serving whatever snapshot `store` holds, logging requests to `access_log`.
    pub fn new(
        store: Arc<ConfigStore>,
        metrics: Arc<Metrics>,
        access_log: Option<AccessLog>,
    ) -> GatewayProxy {
        GatewayProxy {
            store,
            metrics,
            access_log,
        }
    }
}

impl GatewayProxy {
    /// Run the route's request filters in order; the first answer wins.
    async fn run_request_filters(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
    ) -> Option<Reply> {
        if route.filters.is_empty() {
            return None;
        }
        let mut info = RequestInfo {
            header: session.req_header_mut(),
            client_ip: ctx.client_ip,
            route: &route.name,
            request_id: ctx.request_id.as_str(),
        };
        for f in &route.filters {
            let decision = match f.filter.decide_now(&mut info, &mut ctx.filters) {
                Some(decision) => decision,
                None => f.filter.on_request(&mut info, &mut ctx.filters).await,
            };
            match decision {
                Decision::Continue => self.metrics.filter_continued(f),
                Decision::Respond(reply) => {
                    self.metrics
                        .filter_decision(&f.name, "respond", reply.reason);
                    return Some(reply);
                }
            }
        }
        None
    }

    /// The header and body of a filter's answer, after every filter's response phase.
    fn render_reply(
        &self,
        ctx: &mut RequestCtx,
        route: &Route,
        reply: Reply,
    ) -> (ResponseHeader, Bytes) {
        let (mut header, body) = match reply.body {
            ReplyBody::Problem(detail) => {
                problem::render(reply.status.as_u16(), &detail, ctx.request_id.as_str())
            }
            ReplyBody::Raw {
                content_type,
                bytes,
            } => {
                let mut h = ResponseHeader::build(reply.status, Some(4)).expect("valid status");
                let _ = h.insert_header(http::header::CONTENT_TYPE, content_type);
                let _ = h.insert_header(http::header::CONTENT_LENGTH, bytes.len());
                (h, bytes)
            }
            ReplyBody::Empty => {
                let mut h = ResponseHeader::build(reply.status, Some(2)).expect("valid status");
                // RFC 9110 §8.6: no Content-Length on a 1xx or 204 (a CORS preflight's answer).
                if !(reply.status.is_informational()
                    || reply.status == http::StatusCode::NO_CONTENT)
                {
                    let _ = h.insert_header(http::header::CONTENT_LENGTH, 0);
                }
                (h, Bytes::new())
            }
        };
        for (name, value) in reply.headers {
            let _ = header.append_header(name, value);
        }
        self.finish_gateway_answer(ctx, route, &mut header);
        (header, body)
    }

    /// Every filter's response phase and queued headers, on an answer the gateway writes
    /// itself (a filter's reply or a failure), as on a proxied one.
    fn finish_gateway_answer(
        &self,
        ctx: &mut RequestCtx,
        route: &Route,
        header: &mut ResponseHeader,
    ) {
        for f in &route.filters {
            f.filter.on_response(header, &mut ctx.filters);
        }
        // A header of the gateway's own: whatever the upstream's had, this one needs the id.
        ctx.id_in_response = false;
        self.add_response_fields(ctx, header);
    }

    /// What every response gets after the filters' response phase: the fields they queued,
    /// the request id (unless the upstream's response already has it) and, when configured,
    /// `Server-Timing`. Nothing to add costs nothing.
    fn add_response_fields(&self, ctx: &mut RequestCtx, header: &mut ResponseHeader) {
        let snapshot = ctx.snapshot.as_deref();
        let timing = snapshot
            .is_some_and(|s| s.config.observability.server_timing)
            .then(|| server_timing(ctx));
        let id = !std::mem::take(&mut ctx.id_in_response);
        // Exactly what is added: a parsed response's map often has room for one more field,
        // and reserving beyond it would regrow it for nothing.
        let extra =
            ctx.filters.response_headers.len() + usize::from(id) + usize::from(timing.is_some());
        if extra == 0 {
            return;
        }
        fields::edit_response(header, preserve_case(snapshot), extra, |f| {
            for (name, value) in ctx.filters.response_headers.drain(..) {
                f.append(&name, value);
            }
            if id {
                f.insert(&X_REQUEST_ID, ctx.request_id.header_value());
            }
            if let Some(timing) = timing {
                f.insert(&SERVER_TIMING, timing);
            }
        });
    }

    /// Answer with a filter's reply, keeping the connection open.
    async fn write_reply(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        reply: Reply,
    ) -> Result<()> {
        let (header, body) = self.render_reply(ctx, route, reply);
        let empty = body.is_empty();
        session
            .write_response_header(Box::new(header), empty)
            .await?;
        if !empty {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}

/// Per-request state, carried through Pingora's phases.
pub struct RequestCtx {
    started: Instant,
    counted: bool,
    /// The snapshot this request is served by, loaded once at its start.
    snapshot: Option<Arc<Snapshot>>,
    /// The route it took.
    route: Option<Arc<Route>>,
    /// Sent upstream and echoed to the client.
    request_id: RequestId,
    /// Path and query to send upstream (after normalization, strip_prefix and rewrite) when
    /// that is not `path` itself, as it is for a query-less request the route does not rewrite.
    upstream_path: Option<String>,
    /// The normalized request path (what routing and path hashing see) when normalizing
    /// changed it; `None` when it is the request's own path (no copy made).
    path: Option<String>,
    /// The address that connected to us.
    peer_ip: Option<IpAddr>,
    /// That address is a trusted proxy, whose forwarding fields are extended, not replaced.
    peer_trusted: bool,
    /// The client as far as we can trust: the peer, or, when the peer is a trusted proxy, the
    /// nearest untrusted hop of `X-Forwarded-For`.
    client_ip: Option<IpAddr>,
    /// Backends already tried by this request (a retry picks another). Inline: nearly every
    /// request makes one attempt, and this saves it an allocation.
    tried: SmallVec<[SocketAddr; 2]>,
    in_flight: Option<InFlight>,
    /// State the route's filters share (claims, response headers to add).
    filters: FilterState,
    /// A filter's answer decided while the body streams, written by `fail_to_proxy`.
    pending_reply: Option<Reply>,
    /// The W3C trace this request belongs to and the gateway's span id in it.
    trace: Option<TraceContext>,
    /// That trace as the `traceparent` value sent upstream.
    traceparent: Option<HeaderValue>,
    /// A debug-level span for the request (disabled, and nearly free, unless enabled).
    span: tracing::Span,
    /// When the current attempt's backend was picked.
    upstream_started: Option<Instant>,
    /// How long the backend took to send its response header.
    upstream_elapsed: Option<std::time::Duration>,
    /// The upstream's response header already carries the request id.
    id_in_response: bool,
}

impl RequestCtx {
    /// The normalized request path of `req`, this context's request.
    fn path<'a>(&'a self, req: &'a RequestHeader) -> &'a str {
        self.path.as_deref().unwrap_or_else(|| req.uri.path())
    }

    /// Path and query to send upstream, once a route is chosen; `req` is the request as the
    /// client sent it.
    fn upstream_target<'a>(&'a self, req: &'a RequestHeader) -> Option<&'a str> {
        self.route.as_ref()?;
        Some(
            self.upstream_path
                .as_deref()
                .unwrap_or_else(|| self.path(req)),
        )
    }

    fn attempts_left(&self) -> bool {
        self.route
            .as_ref()
            .is_some_and(|r| self.tried.len() < r.attempts.min(r.upstream.len()))
    }
}

/// A request's id, held as the header value it is sent as: echoing it upstream and to the
/// client clones a reference count instead of copying the text each time.
#[derive(Clone)]
struct RequestId(HeaderValue);

impl RequestId {
    /// No id yet (the request failed before `request_filter`).
    const NONE: RequestId = RequestId(HeaderValue::from_static(""));

    /// A client's own id, kept when it is short printable ASCII (else the gateway mints one).
    fn given(header: Option<&HeaderValue>) -> Option<RequestId> {
        header
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= 128
                    && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
            })
            .map(|id| RequestId(id.clone()))
    }

    /// A new random (v4) UUID.
    fn mint() -> RequestId {
        RequestId(shared_value(crate::observe::trace::uuid_text()))
    }

    fn as_str(&self) -> &str {
        // Only printable ASCII is ever stored, which `to_str` accepts.
        self.0.to_str().unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

/// The request's id (the client's usable one, or a new one) and the `traceparent` value to
/// send upstream; when both are new they share one allocation.
fn request_ids(given: Option<&HeaderValue>, trace: &TraceContext) -> (RequestId, HeaderValue) {
    if let Some(id) = RequestId::given(given) {
        return (id, shared_value(trace.header_bytes()));
    }
    let mut both = [0u8; 36 + 55];
    both[..36].copy_from_slice(&crate::observe::trace::uuid_text());
    both[36..].copy_from_slice(&trace.header_bytes());
    let both = Bytes::from_owner(both);
    (
        RequestId(own_value(both.slice(..36))),
        own_value(both.slice(36..)),
    )
}

/// The client's `traceparent` and `x-request-id` (the first of each, as `get` finds them). A
/// short header is read in one pass: comparing a handful of names costs less than two hashed
/// lookups of names `http` does not know. A long one is looked up.
fn trace_fields(fields: &http::HeaderMap) -> (Option<&HeaderValue>, Option<&HeaderValue>) {
    if fields.keys_len() > 8 {
        return (fields.get(&TRACEPARENT), fields.get(&X_REQUEST_ID));
    }
    let (mut trace, mut id) = (None, None);
    for (name, value) in fields {
        if *name == TRACEPARENT {
            trace = trace.or(Some(value));
        } else if *name == X_REQUEST_ID {
            id = id.or(Some(value));
        }
    }
    (trace, id)
}

/// A header value of bytes the gateway wrote itself (hex, digits, dashes). `from_owner` makes
/// one allocation that every clone shares, where a value copied from a slice is reallocated
/// as shared storage on its first clone.
fn shared_value<const N: usize>(ascii: [u8; N]) -> HeaderValue {
    own_value(Bytes::from_owner(ascii))
}

/// A header value of the gateway's own printable ASCII, shared as it is.
fn own_value(ascii: Bytes) -> HeaderValue {
    HeaderValue::from_maybe_shared(ascii).expect("the gateway's own ids are printable ASCII")
}

/// An address as text; IPv4 without `fmt`, which costs ~1k instructions on every request.
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
            out
        }
        IpAddr::V6(_) => ip.to_string(),
    }
}

/// An address as a header value. Consecutive requests on a worker thread mostly come from one
/// address (a keep-alive connection, or the load balancer in front of the gateway), so each
/// thread keeps the last one, shared by reference count, instead of formatting it again.
fn ip_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, value)) = &*last {
            if *cached == ip {
                return value.clone();
            }
        }
        let value = HeaderValue::from_maybe_shared(Bytes::from_owner(ip_text(ip)))
            .expect("an address's text is a valid value");
        *last = Some((ip, value.clone()));
        value
    })
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Walk `X-Forwarded-For` from the nearest hop outwards while the hops are trusted proxies;
/// the first untrusted hop is the client. A malformed hop ends the walk at the last trusted one.
/// `trusted`: the peer is a trusted proxy.
fn resolve_client_ip(
    snapshot: &Snapshot,
    peer: Option<IpAddr>,
    trusted: bool,
    req: &RequestHeader,
) -> Option<IpAddr> {
    let mut client = peer?;
    if !trusted {
        return Some(client);
    }
    let lines: Vec<&str> = req
        .headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for hop in lines.iter().rev().flat_map(|l| l.rsplit(',')) {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !snapshot.is_trusted_proxy(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

/// The host the client asked for, as sent (`:authority` for HTTP/2, else `Host`).
fn raw_host(req: &RequestHeader) -> Option<&str> {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(HOST).and_then(|h| h.to_str().ok()))
}

/// The host the client asked for as a header value: `Host` is shared rather than copied.
fn raw_host_value(req: &RequestHeader) -> Option<HeaderValue> {
    match req.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req
            .headers
            .get(HOST)
            .filter(|h| h.to_str().is_ok())
            .cloned(),
    }
}

/// The host for matching: lower case, no port.
fn host_of(req: &RequestHeader) -> Option<Cow<'_, str>> {
    raw_host(req).and_then(request_host)
}

fn path_and_query(path: &str, query: Option<&str>) -> String {
    let Some(query) = query else {
        return path.to_string();
    };
    let mut out = String::with_capacity(path.len() + 1 + query.len());
    out.push_str(path);
    out.push('?');
    out.push_str(query);
    out
}

fn has_body(req: &RequestHeader) -> bool {
    let length = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || req.headers.contains_key(http::header::TRANSFER_ENCODING)
}

/// Fields `set_forwarding` may add to a request.
const FORWARDING_FIELDS: usize = 5;

/// Whether header names keep the peer's spelling (`server.preserve_header_case`).
fn preserve_case(snapshot: Option<&Snapshot>) -> bool {
    snapshot.is_some_and(|s| s.config.server.preserve_header_case)
}

/// `X-Forwarded-For/-Proto/-Host`, `x-request-id` and `traceparent` on a request going up
/// (a trusted proxy's forwarding fields are extended, not replaced); `host` is the host the
/// client asked for.
fn set_forwarding(f: &mut dyn Fields, ctx: &RequestCtx, host: Option<HeaderValue>) {
    let trusted = ctx.peer_trusted;
    let client = ctx.peer_ip.map(ip_value);
    // Several X-Forwarded-For lines are one list (a proxy may add its own line rather than
    // extend the client's): keep every hop, in order.
    let prior: Option<Vec<&str>> = if trusted {
        f.map()
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|v| v.to_str().ok())
            .collect()
    } else {
        None
    };
    let forwarded_for = match (prior, client) {
        (Some(lines), client) if !lines.is_empty() => {
            let client = client.as_ref().and_then(|c| c.to_str().ok()).unwrap_or("");
            // Printable hops joined by ", ": always a valid value.
            HeaderValue::try_from(format!("{}, {client}", lines.join(", "))).ok()
        }
        (_, client) => client,
    };
    match forwarded_for {
        Some(value) => f.insert(&X_FORWARDED_FOR, value),
        None => f.remove(&X_FORWARDED_FOR),
    }
    if !(trusted && f.map().contains_key(&X_FORWARDED_PROTO)) {
        f.insert(&X_FORWARDED_PROTO, HTTP);
    }
    if !(trusted && f.map().contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(host) => f.insert(&X_FORWARDED_HOST, host),
            None => f.remove(&X_FORWARDED_HOST),
        }
    }
    f.insert(&X_REQUEST_ID, ctx.request_id.header_value());
    if let Some(traceparent) = &ctx.traceparent {
        f.insert(&TRACEPARENT, traceparent.clone());
    }
}

async fn respond_problem(
    session: &mut Session,
    status: u16,
    detail: &str,
    request_id: &str,
) -> Result<()> {
    let (header, body) = problem::render(status, detail, request_id);
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

fn hash_input(session: &Session, ctx: &RequestCtx, key: Option<&HashKey>) -> Vec<u8> {
    let req = session.req_header();
    match key {
        None => Vec::new(),
        Some(HashKey::ClientIp) => ctx
            .client_ip
            .map(|ip| ip.to_string().into_bytes())
            .unwrap_or_default(),
        Some(HashKey::Path) => ctx.path(req).as_bytes().to_vec(),
        Some(HashKey::Header(name)) => req
            .headers
            .get(name)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
        Some(HashKey::Cookie(name)) => cookie(req, name)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
    }
}

fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The status a failed request is answered with, and what to tell the client.
fn failure_status(e: &Error) -> (u16, &'static str) {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(503) => (503, "no healthy backend is available for this route"),
        HTTPStatus(code) => (*code, "the request could not be served"),
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            (504, "the upstream did not answer in time")
        }
        ConnectRefused | ConnectError | ConnectNoRoute | ConnectProxyFailure | SocketError => {
            (502, "the upstream could not be reached")
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "the upstream failed to answer"),
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => (0, ""),
                _ => (400, "the request could not be read"),
            },
            ErrorSource::Internal | ErrorSource::Unset => {
                (500, "the gateway failed to serve the request")
            }
        },
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            counted: false,
            snapshot: None,
            route: None,
            request_id: RequestId::NONE,
            upstream_path: None,
            path: None,
            peer_ip: None,
            peer_trusted: false,
            client_ip: None,
            tried: SmallVec::new(),
            in_flight: None,
            filters: FilterState::default(),
            pending_reply: None,
            trace: None,
            traceparent: None,
            span: tracing::Span::none(),
            upstream_started: None,
            upstream_elapsed: None,
            id_in_response: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Instant::now();
        ctx.counted = true;
        self.metrics.in_flight.inc();
        let snapshot = self.store.load();
        if !snapshot.config.server.preserve_header_case {
            // Spellings are not kept: forget them before anything edits or copies the request.
            fields::forget_request_case(session.req_header_mut());
        }
        ctx.peer_ip = peer_ip(session);
        let req = session.req_header();
        ctx.peer_trusted = ctx.peer_ip.is_some_and(|ip| snapshot.is_trusted_proxy(ip));
        ctx.client_ip = resolve_client_ip(&snapshot, ctx.peer_ip, ctx.peer_trusted, req);
        let (given_trace, given_id) = trace_fields(&req.headers);
        let trace = TraceContext::from_header(given_trace.map(|v| v.as_bytes()));
        ctx.span = tracing::debug_span!(
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
        let trace = crate::observe::otlp::join_trace(&ctx.span, trace);
        let (request_id, traceparent) = request_ids(given_id, &trace);
        ctx.request_id = request_id;
        if !ctx.span.is_disabled() {
            ctx.span.record("request_id", ctx.request_id.as_str());
            ctx.span.record("trace_id", trace.trace_id_hex());
        }
        ctx.trace = Some(trace);
        ctx.traceparent = Some(traceparent);
        let path = match normalize_path(req.uri.path()) {
            Ok(p) => p,
            Err(e) => {
                let id = ctx.request_id.clone();
                respond_problem(session, 400, &e.to_string(), id.as_str()).await?;
                return Ok(true);
            }
        };
        let host = if snapshot.router.matches_hosts() {
            host_of(req)
        } else {
            None
        };
        let view = RequestView {
            method: &req.method,
            host: host.as_deref(),
            path: &path,
            headers: &req.headers,
        };
        let Some(route) = snapshot.router.find(&view).cloned() else {
            let detail = format!("no route matches {} {}", req.method, path);
            let id = ctx.request_id.clone();
            respond_problem(session, 404, &detail, id.as_str()).await?;
            return Ok(true);
        };
        ctx.upstream_path = match (route.upstream_path(&path), req.uri.query()) {
            (Cow::Borrowed(same), None) if same == path => None,
            (target, query) => Some(path_and_query(&target, query)),
        };
        if let Cow::Owned(normalized) = path {
            ctx.path = Some(normalized);
        }
        ctx.snapshot = Some(snapshot);
        ctx.route = Some(Arc::clone(&route));
        if let Some(reply) = self.run_request_filters(session, ctx, &route).await {
            self.write_reply(session, ctx, &route, reply).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        for f in &route.filters {
            if let Err(reply) =
                f.filter
                    .on_request_body(body.as_ref(), end_of_stream, &mut ctx.filters)
            {
                self.metrics
                    .filter_decision(&f.name, "respond", reply.reason);
                let status = reply.status.as_u16();
                ctx.pending_reply = Some(reply);
                return Error::e_explain(ErrorType::HTTPStatus(status), "refused by a filter");
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let upstream = &route.upstream;
        let key = hash_input(session, ctx, upstream.hash_key());
        let Some(addr) = upstream.select(&key, &ctx.tried) else {
            return Error::e_explain(
                ErrorType::HTTPStatus(503),
                format!("no healthy backend in upstream {:?}", upstream.name()),
            );
        };
        ctx.tried.push(addr);
        ctx.upstream_started = Some(Instant::now());
        ctx.in_flight = upstream.track(addr);
        Ok(Box::new(upstream.peer(addr, &route.timeouts)))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Most requests go up as they came, with nothing to rebuild.
        if let Some(path) = ctx
            .upstream_target(session.req_header())
            .filter(|p| upstream_request.raw_path() != p.as_bytes())
        {
            let mut parts = upstream_request.uri.clone().into_parts();
            parts.path_and_query = Some(path.parse().map_err(|e| {
                Error::because(
                    ErrorType::InternalError,
                    "rewritten path is not a valid URI",
                    e,
                )
            })?);
            let uri = http::Uri::from_parts(parts).map_err(|e| {
                Error::because(ErrorType::InternalError, "rewritten URI is invalid", e)
            })?;
            upstream_request.set_uri(uri);
        }
        let host = raw_host_value(session.req_header());
        fields::edit_request(
            upstream_request,
            preserve_case(ctx.snapshot.as_deref()),
            FORWARDING_FIELDS,
            |f| set_forwarding(f, ctx, host),
        );
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(started), Some(route)) = (ctx.upstream_started, &ctx.route) {
            let elapsed = started.elapsed();
            ctx.upstream_elapsed = Some(elapsed);
            self.metrics
                .observe_upstream(&route.upstream, elapsed.as_secs_f64());
        }
        // One edit of the upstream's fields: its hop-by-hop ones out (not on a protocol switch,
        // which needs them), then the request id and what the request phase queued (rate-limit
        // fields), before the filters' response phase; room for all of them is made at once.
        let strip = upstream_response.status != http::StatusCode::SWITCHING_PROTOCOLS;
        let preserve = preserve_case(ctx.snapshot.as_deref());
        let queued = &mut ctx.filters.response_headers;
        let request_id = &ctx.request_id;
        fields::edit_response(upstream_response, preserve, 1 + queued.len(), |f| {
            if strip {
                strip_response_hop_by_hop(f);
            }
            f.insert(&X_REQUEST_ID, request_id.header_value());
            for (name, value) in queued.drain(..) {
                f.append(&name, value);
            }
        });
        ctx.id_in_response = true;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(route) = &ctx.route {
            for f in &route.filters {
                f.filter.on_response(upstream_response, &mut ctx.filters);
            }
        }
        self.add_response_fields(ctx, upstream_response);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the backend: any method may go to another one.
        e.set_retry(ctx.attempts_left());
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        // The backend may have acted on the request: only a bodiless idempotent request is
        // sent again, and never once its body is gone.
        let safe = session.req_header().method.is_idempotent()
            && !has_body(session.req_header())
            && !session.as_ref().retry_buffer_truncated();
        if safe && ctx.attempts_left() {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (status, detail) = failure_status(e);
        if status > 0 && session.response_written().is_none() {
            if ctx.request_id.is_empty() {
                ctx.request_id = RequestId::mint();
            }
            // A filter's refusal of the body (413) is written as the filter built it.
            let route = ctx.route.clone();
            let (header, body) = match (ctx.pending_reply.take(), route.as_deref()) {
                (Some(reply), Some(route)) => self.render_reply(ctx, route, reply),
                (_, route) => {
                    let (mut header, body) =
                        problem::render(status, detail, ctx.request_id.as_str());
                    if let Some(route) = route {
                        self.finish_gateway_answer(ctx, route, &mut header);
                    }
                    (header, body)
                }
            };
            let _ = session
                .as_downstream_mut()
                .write_error_response(header, body)
                .await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        // Answered-and-counted outcomes are not gateway faults to log per request: "no healthy
        // backend", a filter's refusal mid-body, and a client that hung up mid-request.
        matches!(e.etype(), ErrorType::HTTPStatus(_))
            || (e.esource() == &ErrorSource::Downstream
                && matches!(
                    e.etype(),
                    ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
                ))
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if !ctx.counted {
            return;
        }
        ctx.in_flight = None;
        self.metrics.in_flight.dec();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| e.map(|e| failure_status(e).0))
            .unwrap_or(0);
        let elapsed = ctx.started.elapsed();
        self.metrics.observe_request(
            ctx.route.as_deref(),
            &session.req_header().method,
            status,
            elapsed.as_secs_f64(),
        );
        if !ctx.span.is_disabled() {
            record_span(ctx, status, elapsed);
        }
        if let Some(log) = &self.access_log {
            log.log(access_record(session, ctx, status, elapsed));
        }
    }
}

/// `Server-Timing` of a response: the upstream's time to header and the gateway's own share.
fn server_timing(ctx: &RequestCtx) -> HeaderValue {
    let total = ctx.started.elapsed().as_secs_f64() * 1000.0;
    let text = match ctx.upstream_elapsed {
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

fn record_span(ctx: &RequestCtx, status: u16, elapsed: std::time::Duration) {
    let span = &ctx.span;
    if let Some(route) = &ctx.route {
        span.record("route", &*route.name);
    }
    if let Some(addr) = ctx.tried.last() {
        span.record("upstream", tracing::field::display(addr));
    }
    span.record("status", status);
    span.record("duration_us", elapsed.as_micros() as u64);
    if let Some(up) = ctx.upstream_elapsed {
        span.record("upstream_us", up.as_micros() as u64);
    }
    tracing::debug!(parent: span, "request finished");
}

fn access_record(
    session: &Session,
    ctx: &RequestCtx,
    status: u16,
    elapsed: std::time::Duration,
) -> AccessRecord {
    let req = session.req_header();
    AccessRecord {
        time: std::time::SystemTime::now() - elapsed,
        request_id: ctx.request_id.as_str().to_string(),
        trace_id: ctx.trace.map(|t| t.trace_id_hex()).unwrap_or_default(),
        client_ip: ctx.client_ip,
        method: req.method.to_string(),
        host: raw_host(req).map(str::to_string),
        path: ctx.path(req).to_string(),
        route: ctx.route.as_ref().map(|r| r.name.to_string()),
        upstream: ctx.tried.last().copied(),
        attempts: ctx.tried.len(),
        status,
        duration_us: elapsed.as_micros() as u64,
        upstream_us: ctx.upstream_elapsed.map(|d| d.as_micros() as u64),
    }
}

/// Hop-by-hop fields of a response (RFC 9110 §7.6.1) that must not be relayed: `Connection`
/// itself (Pingora writes its own for the client's connection), the fields it nominates, and
/// the fields that are hop-by-hop wherever they appear.
fn strip_response_hop_by_hop(f: &mut dyn Fields) {
    static ALWAYS: [HeaderName; 5] = [
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        http::header::TE,
        http::header::TRAILER,
        http::header::UPGRADE,
    ];
    // One pass over the names (a response has a handful), by length first, tells what there
    // is to do; a lookup per name would cost more than the pass.
    let mut present = [false; 5];
    let mut connection = false;
    for name in f.map().keys() {
        let found = match name.as_str() {
            "connection" => {
                connection = true;
                continue;
            }
            n if !matches!(n.len(), 2 | 7 | 10 | 16) => continue,
            "keep-alive" => 0,
            "proxy-connection" => 1,
            "te" => 2,
            "trailer" => 3,
            "upgrade" => 4,
            _ => continue,
        };
        present[found] = true;
    }
    // The usual value, one `Connection: keep-alive` or `close`, nominates nothing.
    let nominates = connection
        && f.map().get_all(http::header::CONNECTION).iter().any(|v| {
            let v = v.as_bytes();
            !(v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close"))
        });
    if nominates {
        let nominated: Vec<HeaderName> = f
            .map()
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("keep-alive")
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in &nominated {
            f.remove(name);
        }
    }
    if connection {
        // Pingora writes its own for the client's connection. Removing the upstream's first
        // also keeps the map from growing twice: the response reaches us in an exactly-sized
        // copy, and `http` grows a full map's index on any insert, even one that replaces
        // (Pingora's `Date`), so the request id taking that room would cost a second growth.
        f.remove(&http::header::CONNECTION);
    }
    for (name, _) in ALWAYS.iter().zip(present).filter(|(_, p)| *p) {
        f.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_or_minted() {
        let trace = TraceContext::from_header(None);
        let traceparent = trace.header_value();
        let kept = HeaderValue::from_static("abc-123");
        let (id, up) = request_ids(Some(&kept), &trace);
        assert_eq!(
            (id.as_str(), up.to_str().unwrap()),
            ("abc-123", &*traceparent)
        );
        let spaced = HeaderValue::from_static("a b");
        assert_ne!(request_ids(Some(&spaced), &trace).0.as_str(), "a b");
        let (minted, up) = request_ids(None, &trace);
        assert_eq!(up, &*traceparent);
        assert_eq!(minted.as_str().len(), 36);
        assert_eq!(minted.header_value(), minted.as_str());
        assert!(uuid::Uuid::parse_str(minted.as_str()).is_ok());
        assert_ne!(request_ids(None, &trace).0.as_str(), minted.as_str());
    }

    #[test]
    fn trace_fields_find_the_first_of_each_in_short_and_long_headers() {
        let mut fields = http::HeaderMap::new();
        fields.append(&X_REQUEST_ID, HeaderValue::from_static("first"));
        fields.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        fields.append(&TRACEPARENT, HeaderValue::from_static("tp"));
        let owned = |(t, i): (Option<&HeaderValue>, Option<&HeaderValue>)| (t.cloned(), i.cloned());
        let short = owned(trace_fields(&fields));
        assert_eq!(short.0.as_ref().unwrap(), "tp");
        assert_eq!(short.1.as_ref().unwrap(), "first");
        for i in 0..10 {
            fields.insert(
                format!("x-pad-{i}").parse::<HeaderName>().unwrap(),
                i.into(),
            );
        }
        assert!(fields.keys_len() > 8);
        assert_eq!(owned(trace_fields(&fields)), short);
        assert_eq!(trace_fields(&http::HeaderMap::new()), (None, None));
    }

    #[test]
    fn failures_map_to_statuses() {
        let timeout = Error::new(ErrorType::ConnectTimedout);
        assert_eq!(failure_status(&timeout).0, 504);
        let mut refused = Error::new(ErrorType::ConnectRefused);
        refused.esource = ErrorSource::Upstream;
        assert_eq!(failure_status(&refused).0, 502);
        let none = Error::new(ErrorType::HTTPStatus(503));
        assert_eq!(failure_status(&none).0, 503);
    }

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn response_hop_by_hop_fields_are_stripped() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (name, value) in [
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Upgrade", "h2c"),
            ("Content-Type", "text/plain"),
        ] {
            resp.append_header(name, value).unwrap();
        }
        strip_response_hop_by_hop(&mut resp);
        for gone in ["x-private", "keep-alive", "upgrade", "connection"] {
            assert!(!resp.headers.contains_key(gone), "{gone}");
        }
        assert!(resp.headers.contains_key("content-type"));
    }
}
