//! Filters: the per-route request/response logic (auth, limits, CORS, headers, …) and the
//! registry of filter *kinds* that builds them from config.
//!
//! A filter is declared once under `[filters.NAME]` with a `kind` and its settings, and listed
//! by name on routes (`filters = ["auth", "per-client"]`) or in `default_filters` for every
//! route. A kind is a named [`FilterFactory`]; the built-ins are registered by
//! [`FilterRegistry::builtin`] and embedders add their own with
//! [`crate::GatewayBuilder::filter_kind`], so a custom filter is configured in TOML exactly
//! like a built-in one.
//!
//! A filter whose declaration did not change is carried over a reload as the same
//! `Arc<dyn Filter>`, so its state (limiter buckets, key caches) survives.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
/// The request and response header types filters work on (re-exported so embedders need no
/// direct Pingora dependency).
pub use pingora_http::{RequestHeader, ResponseHeader};

pub mod auth;
pub mod cors;
pub mod headers;
pub mod ip;
pub mod limits;
pub mod ratelimit;

/// What a filter decided about a request.
#[derive(Debug)]
pub enum Decision {
    /// Go on to the next filter, then the upstream.
    Continue,
    /// Answer the client now; later filters and the upstream are skipped.
    Respond(Reply),
}

/// An answer written by the gateway on a filter's behalf.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status of the answer.
    pub status: StatusCode,
    /// Extra headers (`WWW-Authenticate`, `Retry-After`, CORS headers, …).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: ReplyBody,
    /// Short, bounded label for `gatehouse_filter_decisions_total{reason}` (`invalid_token`,
    /// `rate_limited`, …). Never put client-controlled text here.
    pub reason: &'static str,
}

/// Body of a [`Reply`].
#[derive(Debug, Clone)]
pub enum ReplyBody {
    /// No body.
    Empty,
    /// An `application/problem+json` body with this detail and the request id.
    Problem(String),
    /// A body of the given content type.
    Raw {
        /// `Content-Type` of the body.
        content_type: HeaderValue,
        /// The bytes.
        bytes: Bytes,
    },
}

impl ReplyBody {
    /// The header and body of an answer of `status` with this body (a problem body carries
    /// `request_id`).
    pub fn render(self, status: StatusCode, request_id: &str) -> (ResponseHeader, Bytes) {
        match self {
            ReplyBody::Problem(detail) => {
                crate::problem::render(status.as_u16(), &detail, request_id)
            }
            ReplyBody::Raw {
                content_type,
                bytes,
            } => {
                let mut h = ResponseHeader::build(status, Some(4)).expect("valid status");
                let _ = h.insert_header(http::header::CONTENT_TYPE, content_type);
                let _ = h.insert_header(http::header::CONTENT_LENGTH, bytes.len());
                (h, bytes)
            }
            ReplyBody::Empty => {
                let mut h = ResponseHeader::build(status, Some(2)).expect("valid status");
                // RFC 9110 §8.6: no Content-Length on a 1xx or 204 (a CORS preflight's answer).
                if !(status.is_informational() || status == StatusCode::NO_CONTENT) {
                    let _ = h.insert_header(http::header::CONTENT_LENGTH, 0);
                }
                (h, Bytes::new())
            }
        }
    }
}

impl Reply {
    /// A `problem+json` answer.
    pub fn problem(status: StatusCode, detail: impl Into<String>, reason: &'static str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Problem(detail.into()),
            reason,
        }
    }

    /// An answer without a body (e.g. a CORS preflight's 204).
    pub fn empty(status: StatusCode, reason: &'static str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Empty,
            reason,
        }
    }

    /// Add a header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// Per-request state shared by the filters of one request.
#[derive(Debug, Default)]
pub struct FilterState {
    /// Typed values one filter leaves for later ones (the jwt filter's verified claims, read by
    /// a rate limit keyed on a claim).
    pub extensions: http::Extensions,
    /// Headers to add to the response the client gets, whatever it is (rate-limit headers,
    /// CORS headers on a proxied response).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// The claims of the token an auth filter of this route verified (the `jwt` filter sets
    /// it; read it through [`FilterState::claims`]). A field of its own rather than an
    /// extension: filing it in `extensions` cost three allocations per request.
    pub verified_claims: Option<VerifiedClaims>,
}

impl FilterState {
    /// The verified claims: [`FilterState::verified_claims`], or a [`VerifiedClaims`] a custom
    /// auth filter left in `extensions`.
    pub fn claims(&self) -> Option<&VerifiedClaims> {
        self.verified_claims
            .as_ref()
            .or_else(|| self.extensions.get::<VerifiedClaims>())
    }
}

/// The claims of a verified token, left in [`FilterState::verified_claims`] (or, by a custom
/// auth filter, in [`FilterState::extensions`]) for later filters (a rate limit keyed on
/// `claim:sub`, a role check).
#[derive(Debug, Clone)]
pub struct VerifiedClaims(pub Arc<serde_json::Map<String, serde_json::Value>>);

impl VerifiedClaims {
    /// A claim as text: strings as they are, numbers and booleans printed, others `None`.
    pub fn text(&self, name: &str) -> Option<String> {
        self.as_text(name).map(std::borrow::Cow::into_owned)
    }

    /// As [`VerifiedClaims::text`], borrowing a string claim instead of copying it.
    pub fn as_text(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        match self.0.get(name)? {
            serde_json::Value::String(s) => Some(s.as_str().into()),
            serde_json::Value::Number(n) => Some(n.to_string().into()),
            serde_json::Value::Bool(b) => Some(b.to_string().into()),
            _ => None,
        }
    }
}

/// What a filter sees of a request in the request phase.
pub struct RequestInfo<'a> {
    /// The request header; changes are what the upstream receives.
    pub header: &'a mut RequestHeader,
    /// The client's IP: the peer's, or, behind `server.trusted_proxies`, the nearest untrusted
    /// hop of `X-Forwarded-For`.
    pub client_ip: Option<IpAddr>,
    /// The name of the route the request took.
    pub route: &'a str,
    /// The request's `x-request-id`.
    pub request_id: &'a str,
}

impl RequestInfo<'_> {
    /// Set `name` to `value` on the request the upstream receives, replacing any value the
    /// client sent. Prefer it to `header.insert_header`: unless `server.preserve_header_case`
    /// is on, it skips Pingora's second map of name spellings (see the gateway's docs on
    /// header case), at a fraction of the cost.
    pub fn set_header(&mut self, name: &HeaderName, value: HeaderValue) {
        crate::fields::edit_request(self.header, true, 1, |f| f.insert(name, value));
    }

    /// Remove every value of `name` from the request the upstream receives; as
    /// [`RequestInfo::set_header`], and nearly free when the client did not send it.
    pub fn remove_header(&mut self, name: &HeaderName) {
        if self.header.headers.contains_key(name) {
            crate::fields::edit_request(self.header, true, 0, |f| f.remove(name));
        }
    }
}

/// A request/response filter. Every method has a no-op default: implement the phases you need.
#[async_trait]
pub trait Filter: Send + Sync + 'static {
    /// After routing, before an upstream is picked. Return [`Decision::Respond`] to answer now.
    async fn on_request(&self, _req: &mut RequestInfo<'_>, _state: &mut FilterState) -> Decision {
        Decision::Continue
    }

    /// The request phase without waiting, for a filter that can decide so: `Some` is the
    /// phase's decision and [`Filter::on_request`] is not called; `None` (the default) means
    /// "call `on_request`". Each `on_request` call allocates the future `async_trait` boxes;
    /// a filter that usually decides at once (a local rate limit, a cached token) answers here
    /// and spares every request that allocation.
    fn decide_now(&self, _req: &mut RequestInfo<'_>, _state: &mut FilterState) -> Option<Decision> {
        None
    }

    /// For each chunk of the request body before it is forwarded (`end` on the last one).
    /// An `Err` answers the client with that reply when it still can, and stops forwarding.
    fn on_request_body(
        &self,
        _chunk: Option<&Bytes>,
        _end: bool,
        _state: &mut FilterState,
    ) -> Result<(), Reply> {
        Ok(())
    }

    /// Before the response header goes to the client (proxied answers and gateway answers alike).
    fn on_response(&self, _resp: &mut ResponseHeader, _state: &mut FilterState) {}

    /// Why the filter cannot do its work yet (a JWT filter whose key set was never fetched),
    /// or `None` when it can. The gateway's `/ready` answers 503 while any filter says so, so
    /// an orchestrator sends it no traffic it would only refuse. Asked on every `/ready`: it
    /// may start what it is waiting for, but must not block.
    fn not_ready(&self) -> Option<String> {
        None
    }
}

/// What a factory gets to build one filter.
pub struct FilterSpec<'a> {
    /// The filter's name (`[filters.NAME]`).
    pub name: &'a str,
    /// Its settings: the table without `kind`. Deserialize it with `settings.clone().try_into()`.
    pub settings: &'a toml::Table,
}

impl FilterSpec<'_> {
    /// Deserialize the settings into a serde type; unknown keys are errors when the type says
    /// `#[serde(deny_unknown_fields)]`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        self.settings
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())
    }
}

/// Builds a filter of one kind from its settings; an `Err` is reported at the filter's
/// config path and rejects the config.
pub type FilterFactory =
    Arc<dyn Fn(&FilterSpec<'_>) -> Result<Arc<dyn Filter>, String> + Send + Sync>;

/// The filter kinds a gateway knows.
#[derive(Clone, Default)]
pub struct FilterRegistry {
    kinds: HashMap<String, FilterFactory>,
}

impl fmt::Debug for FilterRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kinds: Vec<&String> = self.kinds.keys().collect();
        kinds.sort();
        f.debug_struct("FilterRegistry")
            .field("kinds", &kinds)
            .finish()
    }
}

impl FilterRegistry {
    /// A registry with no kinds at all.
    pub fn empty() -> FilterRegistry {
        FilterRegistry::default()
    }

    /// The built-in kinds.
    pub fn builtin() -> FilterRegistry {
        #[allow(unused_mut)] // each built-in kind registers itself below
        let mut registry = FilterRegistry::empty();
        registry.register("api_key", auth::api_key_factory());
        registry.register("jwt", auth::jwt_factory());
        registry.register("cors", Arc::new(cors::factory));
        registry.register("headers", Arc::new(headers::factory));
        registry.register("ip", Arc::new(ip::factory));
        registry.register("limits", Arc::new(limits::factory));
        registry.register("rate_limit", Arc::new(ratelimit::RateLimit::factory));
        registry.register(
            "concurrency_limit",
            Arc::new(ratelimit::ConcurrencyLimit::factory),
        );
        registry
    }

    /// Add or replace a kind.
    pub fn register(&mut self, kind: impl Into<String>, factory: FilterFactory) {
        self.kinds.insert(kind.into(), factory);
    }

    /// The factory of a kind.
    pub fn get(&self, kind: &str) -> Option<&FilterFactory> {
        self.kinds.get(kind)
    }

    /// Every known kind, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self.kinds.keys().map(String::as_str).collect();
        kinds.sort_unstable();
        kinds
    }
}

/// A built filter with the name it was declared under, as a route holds it.
#[derive(Clone)]
pub struct NamedFilter {
    /// `[filters.NAME]`: the metrics label and log name.
    pub name: Arc<str>,
    /// The filter.
    pub filter: Arc<dyn Filter>,
    /// `gatehouse_filter_decisions_total{filter=NAME,decision="continue",reason=""}`, resolved
    /// on first use so the hot path does no label lookup.
    pub(crate) continued: Arc<std::sync::OnceLock<prometheus::IntCounter>>,
}

impl NamedFilter {
    /// Wrap a built filter.
    pub fn new(name: &str, filter: Arc<dyn Filter>) -> NamedFilter {
        NamedFilter {
            name: Arc::from(name),
            filter,
            continued: Arc::default(),
        }
    }
}

impl fmt::Debug for NamedFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedFilter")
            .field("name", &self.name)
            .finish()
    }
}
