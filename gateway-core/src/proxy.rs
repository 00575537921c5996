//! The `ProxyHttp` implementation: wiring only. Each of Pingora's phases below, in the
//! order a request meets them, takes the snapshot's router and pools, the forwarding fields
//! ([`crate::forwarding`]), the request's id and trace ([`crate::observe::request_id`]) and
//! the problem answers ([`crate::problem`]) and puts them together; what they do lives there.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::HeaderName;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::drain::Drain;
use crate::fields;
use crate::filter::{Decision, Reply, RequestInfo};
use crate::forwarding::{self, ClientAddr, FORWARDING_FIELDS};
use crate::framing;
use crate::observe::request_id::{self, RequestId};
use crate::observe::{AccessLog, Metrics};
use crate::outlier::Outcome;
use crate::problem;
use crate::reload::ConfigStore;
use crate::routing::{Route, RoutedRequest};
use crate::snapshot::Snapshot;

mod ctx;

pub use ctx::RequestCtx;

const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// The gateway's proxy logic; one instance serves every request of a [`crate::Gateway`].
pub struct GatewayProxy {
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    access_log: Option<AccessLog>,
    /// The first HTTPS listener's port, for `redirect_plain`.
    https_port: Option<u16>,
    /// Shutdown state: while draining, every answer closes its connection.
    drain: Arc<Drain>,
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
            https_port: None,
            drain: Arc::default(),
        }
    }

    /// Close each connection after its answer once `drain` says the gateway is terminating.
    pub fn with_drain(mut self, drain: Arc<Drain>) -> GatewayProxy {
        self.drain = drain;
        self
    }

    /// The port plain requests are redirected to when `[server.tls] redirect_plain` is on.
    pub fn with_https_port(mut self, port: Option<u16>) -> GatewayProxy {
        self.https_port = port;
        self
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
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
        // RFC 9112 §9.3.2: a client may send its next request before reading this answer;
        // it is served after this one (Pingora would otherwise close and drop it). Once on, a
        // reused connection keeps it on.
        if !session.as_downstream().pipelining_enabled() {
            session.as_downstream_mut().set_pipelining_enabled(true);
        }
        // The idle limit between this request and the next on a kept-alive connection (not
        // on one the client or HTTP/1.0 closes).
        if session.as_downstream().get_keepalive().is_some() {
            if self.drain.is_draining() {
                session.set_keepalive(None);
            } else {
                let idle = snapshot.config.server.keepalive_timeout;
                session.set_keepalive(Some(idle.as_secs() + u64::from(idle.subsec_nanos() > 0)));
            }
        }
        ctx.addr = ClientAddr::of(session, &snapshot, session.req_header());
        ctx.identify(session.req_header());
        if ctx.addr.secure {
            ctx.hsts.clone_from(&snapshot.hsts);
        } else if let Some(port) = self.redirect_port(&snapshot) {
            self.redirect_to_https(session, ctx, port).await?;
            return Ok(true);
        }
        if let Err(refused) = framing::check(session, snapshot.config.server.header_underscores) {
            if refused.close {
                session.set_keepalive(None);
            }
            self.respond_problem(session, ctx, 400, refused.detail)
                .await?;
            return Ok(true);
        }
        let req = session.req_header();
        let hosts = snapshot.router.matches_hosts();
        let routed = match RoutedRequest::new(&req.method, &req.uri, &req.headers, hosts) {
            Ok(routed) => routed,
            Err(e) => {
                let detail = e.to_string();
                self.respond_problem(session, ctx, 400, &detail).await?;
                return Ok(true);
            }
        };
        let Some(route) = snapshot.router.find(&routed.view()).cloned() else {
            let detail = format!("no route matches {} {}", req.method, routed.path);
            self.respond_problem(session, ctx, 404, &detail).await?;
            return Ok(true);
        };
        ctx.upstream_path = route.upstream_target(&routed.path, req.uri.query());
        if let Cow::Owned(normalized) = routed.path {
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
        let req = session.req_header();
        let key = upstream
            .hash_key()
            .map_or_else(Vec::new, |k| k.input(req, ctx.addr.client, ctx.path(req)));
        let Some(addr) = ctx.attempts.start(upstream, &key) else {
            return Error::e_explain(
                ErrorType::HTTPStatus(503),
                format!("no healthy backend in upstream {:?}", upstream.name()),
            );
        };
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
        let host = forwarding::host_value(session.req_header());
        fields::edit_request(
            upstream_request,
            preserve_case(ctx.snapshot.as_deref()),
            FORWARDING_FIELDS,
            |f| {
                let traceparent = ctx.traceparent.as_ref();
                forwarding::set_forwarding(f, &ctx.addr, host, &ctx.request_id, traceparent)
            },
        );
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(started), Some(route)) = (ctx.attempts.started(), &ctx.route) {
            let elapsed = started.elapsed();
            ctx.upstream_elapsed = Some(elapsed);
            self.metrics
                .observe_upstream(&route.upstream, elapsed.as_secs_f64());
        }
        ctx.observe_attempt(if upstream_response.status.is_server_error() {
            Outcome::Failure
        } else {
            Outcome::Success
        });
        // One edit of the upstream's fields: its hop-by-hop ones out (not on a protocol switch,
        // which needs them), then the request id and what the request phase queued (rate-limit
        // fields), before the filters' response phase; room for all of them is made at once.
        let strip = upstream_response.status != http::StatusCode::SWITCHING_PROTOCOLS;
        let preserve = preserve_case(ctx.snapshot.as_deref());
        let queued = &mut ctx.filters.response_headers;
        let request_id = &ctx.request_id;
        fields::edit_response(upstream_response, preserve, 1 + queued.len(), |f| {
            if strip {
                forwarding::strip_response_hop_by_hop(f);
            }
            request_id::stamp(f, request_id);
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
        ctx.observe_attempt(Outcome::Failure);
        // Nothing reached the backend: any method may go to another one.
        e.set_retry(ctx.may_retry());
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
        if e.esource() == &ErrorSource::Upstream {
            ctx.observe_attempt(Outcome::Failure);
        }
        let safe = session.req_header().method.is_idempotent()
            && !framing::has_body(session.req_header())
            && !session.as_ref().retry_buffer_truncated();
        if safe && ctx.may_retry() {
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
        let (status, detail) = problem::for_failure(e);
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
                    self.finish_gateway_answer(ctx, route, &mut header);
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
        self.metrics.in_flight.dec();
        if ctx.attempts.finish() {
            if let Some(route) = &ctx.route {
                self.metrics.retry_over_budget(route.upstream.name());
            }
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| e.map(|e| problem::for_failure(e).0))
            .unwrap_or(0);
        let elapsed = ctx.started.elapsed();
        self.metrics.observe_request(
            ctx.route.as_deref().map(|r| (&*r.name, &r.metrics)),
            &session.req_header().method,
            status,
            elapsed.as_secs_f64(),
        );
        if !ctx.span.is_disabled() {
            ctx.record_span(status, elapsed);
        }
        if let Some(log) = &self.access_log {
            log.log(ctx.access_record(session, status, elapsed));
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
            client_ip: ctx.addr.client,
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
        let (mut header, body) = reply.body.render(reply.status, ctx.request_id.as_str());
        for (name, value) in reply.headers {
            let _ = header.append_header(name, value);
        }
        self.finish_gateway_answer(ctx, Some(route), &mut header);
        (header, body)
    }

    /// Every filter's response phase (once a route is chosen) and the response fields, on an
    /// answer the gateway writes itself (a filter's reply, a failure, no route), as on a
    /// proxied one.
    fn finish_gateway_answer(
        &self,
        ctx: &mut RequestCtx,
        route: Option<&Route>,
        header: &mut ResponseHeader,
    ) {
        for f in route.iter().flat_map(|r| &r.filters) {
            f.filter.on_response(header, &mut ctx.filters);
        }
        // A header of the gateway's own: whatever the upstream's had, this one needs the id.
        ctx.id_in_response = false;
        self.add_response_fields(ctx, header);
    }

    /// What every response gets after the filters' response phase: the fields they queued,
    /// the request id (unless the upstream's response already has it: proxied responses get
    /// it in `upstream_response_filter`'s one edit) and, when configured, `Server-Timing`.
    /// Nothing to add costs nothing.
    fn add_response_fields(&self, ctx: &mut RequestCtx, header: &mut ResponseHeader) {
        let snapshot = ctx.snapshot.as_deref();
        let timing = snapshot
            .is_some_and(|s| s.config.observability.server_timing)
            .then(|| ctx.server_timing());
        let id = !std::mem::take(&mut ctx.id_in_response);
        // Exactly what is added: a parsed response's map often has room for one more field,
        // and reserving beyond it would regrow it for nothing.
        let extra = ctx.filters.response_headers.len()
            + usize::from(id)
            + usize::from(timing.is_some())
            + usize::from(ctx.hsts.is_some());
        if extra == 0 {
            return;
        }
        fields::edit_response(header, preserve_case(snapshot), extra, |f| {
            for (name, value) in ctx.filters.response_headers.drain(..) {
                f.append(&name, value);
            }
            if id {
                request_id::stamp(f, &ctx.request_id);
            }
            if let Some(timing) = timing {
                f.insert(&SERVER_TIMING, timing);
            }
            if let Some(hsts) = ctx.hsts.take() {
                f.insert(&http::header::STRICT_TRANSPORT_SECURITY, hsts);
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

    /// The HTTPS port plain requests go to, when `redirect_plain` is on.
    fn redirect_port(&self, snapshot: &Snapshot) -> Option<u16> {
        let tls = snapshot.config.server.tls.as_ref()?;
        tls.redirect_plain.then_some(self.https_port).flatten()
    }

    /// Answers a plain request with a redirect to the same URL over HTTPS.
    async fn redirect_to_https(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        port: u16,
    ) -> Result<()> {
        let Some(mut header) = forwarding::https_redirect(session.req_header(), port) else {
            let detail = "the request names no host to redirect to over HTTPS";
            return self.respond_problem(session, ctx, 400, detail).await;
        };
        self.finish_gateway_answer(ctx, None, &mut header);
        session.write_response_header(Box::new(header), true).await
    }

    /// Answers with a problem of the gateway's own before a route is chosen (a path that
    /// does not normalize, no route).
    async fn respond_problem(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        detail: &str,
    ) -> Result<()> {
        let (mut header, body) = problem::render(status, detail, ctx.request_id.as_str());
        self.finish_gateway_answer(ctx, None, &mut header);
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await
    }
}

/// Whether header names keep the peer's spelling (`server.preserve_header_case`).
fn preserve_case(snapshot: Option<&Snapshot>) -> bool {
    snapshot.is_some_and(|s| s.config.server.preserve_header_case)
}
