//! `cors`: Cross-Origin Resource Sharing answered at the edge, per the Fetch standard's CORS
//! protocol (<https://fetch.spec.whatwg.org/#http-cors-protocol>).
//!
//! ```toml
//! [filters.cors]
//! kind = "cors"
//! allow_origins = ["https://app.example.com", "https://*.example.com"]  # or ["*"]
//! allow_methods = ["GET", "HEAD", "POST", "PUT"]    # default GET, HEAD, POST; ["*"]: any
//! allow_headers = ["content-type", "authorization"] # default none; ["*"]: any requested
//! expose_headers = ["x-request-id"]                 # default none
//! allow_credentials = false                         # default false
//! max_age = "10m"                                   # default 10m; whole seconds are sent
//! ```
//!
//! Origins are written `scheme://host[:port]` with no path, and compared ASCII
//! case-insensitively. A pattern `scheme://*.example.com[:port]` admits every subdomain of
//! `example.com` (one or more labels, same scheme and port) but not `example.com` itself; the
//! suffix needs at least two labels (`*.com` is refused). `"*"` admits every origin and is
//! answered with a literal `Access-Control-Allow-Origin: *`, so it cannot be combined with
//! `allow_credentials = true` (browsers ignore `*` on credentialed requests; list the origins).
//! `"null"` is refused: it is the origin of sandboxed frames and `file:` pages.
//!
//! A method is allowed when listed or when it is CORS-safelisted (`GET`, `HEAD`, `POST`:
//! browsers never preflight-check those). Requested headers are checked case-insensitively
//! against `allow_headers`; `"*"` reflects whatever was requested (so `Authorization`, which a
//! literal `*` never covers, works too). On a route with this filter the gateway owns the
//! `Access-Control-*` response headers: the upstream's are replaced or removed.
//!
//! | request | policy says | answer |
//! |---|---|---|
//! | `OPTIONS` + `Origin` + `Access-Control-Request-Method` (preflight) | origin, method and every requested header allowed | 204 from the gateway (never forwarded): `Access-Control-Allow-Origin` (the origin, or `*` for a wildcard policy), `-Allow-Methods`, `-Allow-Headers` (when any), `-Max-Age`, `-Allow-Credentials: true` (when on), `Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers` |
//! | preflight | origin, method or a requested header not allowed | 403 `problem+json` (reason `cors_preflight_denied`), no `Access-Control-*`, the same `Vary`; never forwarded |
//! | any other request with `Origin` | origin allowed | forwarded; the response gets `Access-Control-Allow-Origin`, `-Allow-Credentials: true` (when on), `-Expose-Headers` (when set), `Vary: Origin` |
//! | any other request with `Origin` | origin not allowed | forwarded; the response carries no `Access-Control-*` and gets `Vary: Origin` |
//! | no `Origin` | — | forwarded; no `Access-Control-*` added, only `Vary: Origin` |
//!
//! Why 403 for a refused preflight rather than a bare 204: the browser fails the CORS check
//! either way (no `Access-Control-Allow-Origin`), but a 403 shows up as a refusal in the
//! browser's network panel, in access logs and in `gatehouse_filter_decisions_total`, and a
//! non-browser client gets an explicit answer instead of a success it would misread.
//!
//! Why `Vary: Origin` on every answer, even without `Origin`: an HTTP cache that stored an
//! answer to a request without `Origin` (a navigation) would otherwise serve it, without
//! `Access-Control-Allow-Origin`, to a later cross-origin request (Fetch §3.2.5).
//!
//! The response headers also land on answers other filters write (401, 429, 413) because
//! their response phase runs for gateway answers too; list `cors` before those filters
//! (`jwt`, `rate_limit`, `ip`) so it sees the request first — a preflight carries no
//! credentials and must be answered before an auth filter refuses it.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use pingora_http::ResponseHeader;
use serde::Deserialize;

use super::{Decision, Filter, FilterSpec, FilterState, Reply, RequestInfo};

/// Settings of a `cors` filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to read responses: exact `scheme://host[:port]`, `scheme://*.suffix`
    /// patterns, or `"*"`.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for (`"*"`: any).
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for, case-insensitive (`"*"`: any).
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read beyond the CORS-safelisted ones.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Let browsers send cookies / `Authorization` and read the answer.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer (`"10m"`, `"1h"`).
    #[serde(default = "default_max_age")]
    pub max_age: String,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "POST".into()]
}

fn default_max_age() -> String {
    "10m".into()
}

/// Builds a `cors` filter; every setting problem is reported at once.
pub fn factory(spec: &FilterSpec<'_>) -> Result<Arc<dyn Filter>, String> {
    let cfg: CorsConfig = spec.parse()?;
    Ok(Arc::new(Cors::new(&cfg)?))
}

/// A compiled CORS policy.
#[derive(Debug)]
pub struct Cors {
    origins: Origins,
    methods: Methods,
    headers: HeaderList,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// What the request phase learnt, for the response phase.
#[derive(Debug, Clone)]
enum Outcome {
    /// A preflight: the reply carries everything.
    Preflight,
    /// An allowed origin; the value for `Access-Control-Allow-Origin`.
    Allowed(HeaderValue),
    /// An `Origin` the policy refuses (or one that is not even text).
    Denied,
    /// No `Origin`: not a CORS request.
    NoOrigin,
}

const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

impl Cors {
    /// Compile a policy; `Err` lists every problem, each prefixed with its field.
    pub fn new(cfg: &CorsConfig) -> Result<Cors, String> {
        let mut errors = Vec::new();
        let origins = Origins::parse(&cfg.allow_origins, &mut errors);
        if origins.any && cfg.allow_credentials {
            errors.push(
                "allow_origins: \"*\" cannot be combined with allow_credentials = true \
                 (browsers refuse a wildcard on credentialed requests); list the origins"
                    .to_string(),
            );
        }
        let methods = Methods::parse(&cfg.allow_methods, &mut errors);
        let headers = HeaderList::parse("allow_headers", &cfg.allow_headers, &mut errors);
        let expose = match HeaderList::parse("expose_headers", &cfg.expose_headers, &mut errors) {
            HeaderList::Any if cfg.allow_credentials => {
                errors.push(
                    "expose_headers: \"*\" is not a wildcard on credentialed requests; \
                     list the header names"
                        .to_string(),
                );
                None
            }
            HeaderList::Any => Some(HeaderValue::from_static("*")),
            HeaderList::List(_, value) => value,
        };
        let max_age = match humantime::parse_duration(&cfg.max_age) {
            Ok(d) => HeaderValue::from(d.as_secs()),
            Err(e) => {
                errors.push(format!(
                    "max_age: invalid duration {:?} ({e}); write e.g. \"10m\"",
                    cfg.max_age
                ));
                HeaderValue::from_static("0")
            }
        };
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(Cors {
            origins,
            methods,
            headers,
            expose,
            credentials: cfg.allow_credentials,
            max_age,
        })
    }

    /// `Access-Control-Allow-Origin` for an allowed origin.
    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.origins.any {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// The gateway's answer to a preflight.
    fn preflight(&self, origin: &HeaderValue, headers: &HeaderMap) -> Reply {
        let vary = HeaderValue::from_static(PREFLIGHT_VARY);
        let method = headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let requested = requested_headers(headers);
        let refused = if !origin.to_str().is_ok_and(|o| self.origins.allows(o)) {
            Some("origin")
        } else if !method.is_some_and(|m| self.methods.allows(m)) {
            Some("method")
        } else if !requested
            .as_ref()
            .is_some_and(|names| self.headers.allows_all(names))
        {
            Some("request headers")
        } else {
            None
        };
        if let Some(what) = refused {
            let detail = format!("CORS preflight refused: the {what} is not allowed on this route");
            return Reply::problem(StatusCode::FORBIDDEN, detail, "cors_preflight_denied")
                .with_header(VARY, vary);
        }
        let mut reply = Reply::empty(StatusCode::NO_CONTENT, "cors_preflight")
            .with_header(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
        if self.credentials {
            reply = reply.with_header(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(value) = method.and_then(|m| self.methods.header_value(m)) {
            reply = reply.with_header(ACCESS_CONTROL_ALLOW_METHODS, value);
        }
        let names = requested.unwrap_or_default();
        if let Some(value) = self.headers.header_value(&names) {
            reply = reply.with_header(ACCESS_CONTROL_ALLOW_HEADERS, value);
        }
        reply
            .with_header(ACCESS_CONTROL_MAX_AGE, self.max_age.clone())
            .with_header(VARY, vary)
    }
}

#[async_trait]
impl Filter for Cors {
    async fn on_request(&self, req: &mut RequestInfo<'_>, state: &mut FilterState) -> Decision {
        let headers = &req.header.headers;
        let Some(origin) = headers.get(ORIGIN) else {
            state.extensions.insert(Outcome::NoOrigin);
            return Decision::Continue;
        };
        if req.header.method == Method::OPTIONS
            && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            state.extensions.insert(Outcome::Preflight);
            return Decision::Respond(self.preflight(origin, headers));
        }
        let outcome = match origin.to_str() {
            Ok(o) if self.origins.allows(o) => Outcome::Allowed(self.allow_origin_value(origin)),
            _ => Outcome::Denied,
        };
        state.extensions.insert(outcome);
        Decision::Continue
    }

    fn on_response(&self, resp: &mut ResponseHeader, state: &mut FilterState) {
        let allow_origin = match state.extensions.get::<Outcome>() {
            None | Some(Outcome::Preflight) => return,
            Some(Outcome::NoOrigin) => None,
            Some(Outcome::Denied) => {
                remove_cors_headers(resp);
                None
            }
            Some(Outcome::Allowed(value)) => Some(value.clone()),
        };
        if let Some(value) = allow_origin {
            remove_cors_headers(resp);
            let _ = resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, value);
            if self.credentials {
                let _ = resp.insert_header(ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
            }
            if let Some(expose) = &self.expose {
                let _ = resp.insert_header(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
        add_vary_origin(resp);
    }
}

/// Drop the `Access-Control-*` response headers an upstream may have set: the gateway's
/// policy is the route's policy.
fn remove_cors_headers(resp: &mut ResponseHeader) {
    for name in [
        ACCESS_CONTROL_ALLOW_ORIGIN,
        ACCESS_CONTROL_ALLOW_CREDENTIALS,
        ACCESS_CONTROL_EXPOSE_HEADERS,
        ACCESS_CONTROL_ALLOW_METHODS,
        ACCESS_CONTROL_ALLOW_HEADERS,
        ACCESS_CONTROL_MAX_AGE,
    ] {
        resp.remove_header(&name);
    }
}

/// Add `Origin` to `Vary` unless it is there already (or `Vary: *` covers it).
fn add_vary_origin(resp: &mut ResponseHeader) {
    let covered = resp
        .headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.eq_ignore_ascii_case("origin"));
    if !covered {
        let _ = resp.append_header(VARY, "Origin");
    }
}

/// The names in `Access-Control-Request-Headers` (every line, comma-separated), lower case;
/// `None` when one is not a header name.
fn requested_headers(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for line in headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
        let line = line.to_str().ok()?;
        for token in line.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            names.push(HeaderName::from_bytes(token.as_bytes()).ok()?);
        }
    }
    Some(names)
}

/// The allowed origins.
#[derive(Debug, Default)]
struct Origins {
    any: bool,
    /// Lower case `scheme://host[:port]`.
    exact: HashSet<String>,
    suffixes: Vec<SuffixOrigin>,
}

/// `scheme://*.suffix[:port]`.
#[derive(Debug, PartialEq)]
struct SuffixOrigin {
    scheme: String,
    /// With its leading dot: `.example.com`.
    suffix: String,
    port: Option<String>,
}

impl Origins {
    fn parse(list: &[String], errors: &mut Vec<String>) -> Origins {
        let mut origins = Origins::default();
        if list.is_empty() {
            errors.push("allow_origins: list at least one origin (or \"*\")".to_string());
        }
        for (i, text) in list.iter().enumerate() {
            match parse_origin(text) {
                Ok(OriginRule::Any) => origins.any = true,
                Ok(OriginRule::Exact(o)) => {
                    origins.exact.insert(o);
                }
                Ok(OriginRule::Suffix(s)) => origins.suffixes.push(s),
                Err(e) => errors.push(format!("allow_origins[{i}]: {e}")),
            }
        }
        origins
    }

    fn allows(&self, origin: &str) -> bool {
        if self.any {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        self.exact.contains(&origin) || self.suffixes.iter().any(|s| s.matches(&origin))
    }
}

impl SuffixOrigin {
    /// `origin` is lower case.
    fn matches(&self, origin: &str) -> bool {
        let Some(rest) = origin
            .strip_prefix(self.scheme.as_str())
            .and_then(|r| r.strip_prefix("://"))
        else {
            return false;
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        if port != self.port.as_deref() {
            return false;
        }
        host.strip_suffix(self.suffix.as_str())
            .is_some_and(|sub| !sub.is_empty() && sub.split('.').all(is_dns_label))
    }
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

enum OriginRule {
    Any,
    Exact(String),
    Suffix(SuffixOrigin),
}

/// One `allow_origins` entry.
fn parse_origin(text: &str) -> Result<OriginRule, String> {
    if text == "*" {
        return Ok(OriginRule::Any);
    }
    let lower = text.trim().to_ascii_lowercase();
    if lower == "null" {
        return Err(
            "\"null\" is the origin of sandboxed frames and file: pages; \
                    it cannot be allowed"
                .to_string(),
        );
    }
    let hint = format!(
        "{text:?} is not an origin; write scheme://host[:port], e.g. \"https://app.example.com\""
    );
    let Some((scheme, rest)) = lower.split_once("://") else {
        return Err(hint);
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b));
    if !scheme_ok || rest.is_empty() {
        return Err(hint);
    }
    if rest.contains('/') {
        return Err(format!(
            "{text:?}: an origin has no path (drop the trailing \"/\")"
        ));
    }
    if rest
        .bytes()
        .any(|b| b"?#@ \t".contains(&b) || !b.is_ascii_graphic())
    {
        return Err(hint);
    }
    let (host, port) = split_port(rest).ok_or_else(|| hint.clone())?;
    if port.is_some_and(|p| {
        p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err()
    }) {
        return Err(format!("{text:?}: the port is not a number"));
    }
    if host.is_empty() {
        return Err(hint);
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        let labels: Vec<&str> = suffix.split('.').collect();
        if labels.len() < 2 || !labels.iter().all(|l| is_dns_label(l)) {
            return Err(format!(
                "{text:?}: a pattern needs a domain of at least two labels after \"*.\" \
                 (e.g. \"https://*.example.com\")"
            ));
        }
        return Ok(OriginRule::Suffix(SuffixOrigin {
            scheme: scheme.to_string(),
            suffix: format!(".{suffix}"),
            port: port.map(str::to_string),
        }));
    }
    if host.contains('*') {
        return Err(format!(
            "{text:?}: \"*\" may only stand for the leftmost labels (\"https://*.example.com\")"
        ));
    }
    Ok(OriginRule::Exact(lower))
}

/// `host[:port]` or `[v6]:port` into host and port text.
fn split_port(rest: &str) -> Option<(&str, Option<&str>)> {
    if rest.starts_with('[') {
        let end = rest.find(']')? + 1;
        let (host, after) = rest.split_at(end);
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    Some(match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    })
}

/// The methods a preflight may ask for.
#[derive(Debug)]
enum Methods {
    Any,
    List(Vec<String>, HeaderValue),
}

impl Methods {
    fn parse(list: &[String], errors: &mut Vec<String>) -> Methods {
        if list.iter().any(|m| m == "*") {
            return Methods::Any;
        }
        let mut methods: Vec<String> = Vec::new();
        for (i, m) in list.iter().enumerate() {
            match Method::from_bytes(m.as_bytes()) {
                Ok(_) => {
                    let m = normalize_method(m);
                    if !methods.contains(&m) {
                        methods.push(m);
                    }
                }
                Err(_) => errors.push(format!("allow_methods[{i}]: {m:?} is not a method")),
            }
        }
        match HeaderValue::from_str(&methods.join(", ")) {
            Ok(value) => Methods::List(methods, value),
            Err(_) => Methods::List(Vec::new(), HeaderValue::from_static("")),
        }
    }

    fn allows(&self, method: &str) -> bool {
        match self {
            Methods::Any => Method::from_bytes(method.as_bytes()).is_ok(),
            Methods::List(list, _) => {
                matches!(method, "GET" | "HEAD" | "POST") || list.iter().any(|m| m == method)
            }
        }
    }

    /// `Access-Control-Allow-Methods` for a preflight asking for `requested`.
    fn header_value(&self, requested: &str) -> Option<HeaderValue> {
        match self {
            Methods::Any => HeaderValue::from_str(requested).ok(),
            Methods::List(list, _) if list.is_empty() => None,
            Methods::List(_, value) => Some(value.clone()),
        }
    }
}

/// Fetch normalizes these six methods to upper case; every other method is case-sensitive.
fn normalize_method(m: &str) -> String {
    const NORMALIZED: [&str; 6] = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"];
    match NORMALIZED.iter().find(|n| n.eq_ignore_ascii_case(m)) {
        Some(n) => (*n).to_string(),
        None => m.to_string(),
    }
}

/// A list of header names, or `*`.
#[derive(Debug)]
enum HeaderList {
    Any,
    /// The names and their comma-joined value (`None` when the list is empty).
    List(HashSet<HeaderName>, Option<HeaderValue>),
}

impl HeaderList {
    fn parse(field: &str, list: &[String], errors: &mut Vec<String>) -> HeaderList {
        if list.iter().any(|h| h == "*") {
            return HeaderList::Any;
        }
        let mut names = Vec::new();
        for (i, h) in list.iter().enumerate() {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) if !names.contains(&name) => names.push(name),
                Ok(_) => {}
                Err(_) => errors.push(format!("{field}[{i}]: {h:?} is not a header name")),
            }
        }
        let joined: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
        let value = if joined.is_empty() {
            None
        } else {
            HeaderValue::from_str(&joined.join(", ")).ok()
        };
        HeaderList::List(names.into_iter().collect(), value)
    }

    fn allows_all(&self, requested: &[HeaderName]) -> bool {
        match self {
            HeaderList::Any => true,
            HeaderList::List(set, _) => requested.iter().all(|n| set.contains(n)),
        }
    }

    /// `Access-Control-Allow-Headers` for a preflight that asked for `requested`.
    fn header_value(&self, requested: &[HeaderName]) -> Option<HeaderValue> {
        match self {
            HeaderList::Any if requested.is_empty() => None,
            HeaderList::Any => {
                let joined: Vec<&str> = requested.iter().map(HeaderName::as_str).collect();
                HeaderValue::from_str(&joined.join(", ")).ok()
            }
            HeaderList::List(_, value) => value.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::RequestHeader;

    fn policy(extra: &str) -> Result<Cors, String> {
        let text = format!(
            "allow_origins = [\"https://app.example.com\", \"https://*.example.org\"]\n{extra}"
        );
        let table: toml::Table = toml::from_str(&text).map_err(|e| e.to_string())?;
        let spec = FilterSpec {
            name: "cors",
            settings: &table,
        };
        Cors::new(&spec.parse::<CorsConfig>()?)
    }

    fn config_error(text: &str) -> String {
        let table: toml::Table = toml::from_str(text).expect("toml");
        let spec = FilterSpec {
            name: "cors",
            settings: &table,
        };
        match factory(&spec) {
            Ok(_) => panic!("{text} should be refused"),
            Err(e) => e,
        }
    }

    async fn run(
        cors: &Cors,
        method: &str,
        headers: &[(&str, &str)],
    ) -> (Option<Reply>, ResponseHeader) {
        let mut req = RequestHeader::build(method, b"/x", None).expect("request");
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("header");
        }
        let mut state = FilterState::default();
        let mut info = RequestInfo {
            header: &mut req,
            client_ip: None,
            route: "r",
            request_id: "id",
        };
        let decision = cors.on_request(&mut info, &mut state).await;
        let mut resp = ResponseHeader::build(200, None).expect("response");
        let reply = match decision {
            Decision::Respond(reply) => Some(reply),
            Decision::Continue => None,
        };
        cors.on_response(&mut resp, &mut state);
        (reply, resp)
    }

    fn reply_header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    fn resp_header<'a>(resp: &'a ResponseHeader, name: &str) -> Option<&'a str> {
        resp.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn origin_matching_table() {
        let cors = policy("").expect("valid");
        let cases = [
            ("https://app.example.com", true),
            ("HTTPS://APP.EXAMPLE.COM", true),
            ("https://app.example.com:443", false),
            ("http://app.example.com", false),
            ("https://app.example.com.evil.com", false),
            ("https://a.example.org", true),
            ("https://a.b.example.org", true),
            ("https://example.org", false),
            ("https://evilexample.org", false),
            ("https://a.example.org.evil.com", false),
            ("https://a.example.org:8443", false),
            ("http://a.example.org", false),
            ("https://a..example.org", false),
            ("https://a_b.example.org", false),
            ("null", false),
            ("", false),
        ];
        for (origin, allowed) in cases {
            assert_eq!(cors.origins.allows(origin), allowed, "{origin:?}");
        }
    }

    #[test]
    fn configuration_errors_table() {
        let cases = [
            ("allow_origins = []", "list at least one origin"),
            (
                "allow_origins = [\"*\"]\nallow_credentials = true",
                "cannot be combined with allow_credentials",
            ),
            ("allow_origins = [\"https://a.com/\"]", "has no path"),
            ("allow_origins = [\"a.com\"]", "is not an origin"),
            ("allow_origins = [\"null\"]", "sandboxed"),
            ("allow_origins = [\"https://*.com\"]", "at least two labels"),
            ("allow_origins = [\"https://a.*.com\"]", "leftmost labels"),
            ("allow_origins = [\"https://a.com:x\"]", "port is not a number"),
            (
                "allow_origins = [\"https://a.com\"]\nallow_headers = [\"bad header\"]",
                "allow_headers[0]",
            ),
            (
                "allow_origins = [\"https://a.com\"]\nallow_methods = [\"GE T\"]",
                "allow_methods[0]",
            ),
            (
                "allow_origins = [\"https://a.com\"]\nmax_age = \"soon\"",
                "max_age: invalid duration",
            ),
            (
                "allow_origins = [\"https://a.com\"]\nexpose_headers = [\"*\"]\nallow_credentials = true",
                "expose_headers",
            ),
            ("allow_origins = [\"https://a.com\"]\nallow_origin = []", "unknown field"),
        ];
        for (text, expected) in cases {
            let err = config_error(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err =
            config_error("allow_origins = [\"x\", \"https://a.com/\"]\nallow_headers = [\"a b\"]");
        assert!(err.contains("allow_origins[0]"), "{err}");
        assert!(err.contains("allow_origins[1]"), "{err}");
        assert!(err.contains("allow_headers[0]"), "{err}");
    }

    #[tokio::test]
    async fn preflight_allowed() {
        let cors = policy(
            "allow_methods = [\"get\", \"PUT\"]\nallow_headers = [\"Content-Type\", \"x-trace\"]\n\
             allow_credentials = true\nmax_age = \"1h\"",
        )
        .expect("valid");
        let (reply, _) = run(
            &cors,
            "OPTIONS",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "X-Trace, content-type"),
            ],
        )
        .await;
        let reply = reply.expect("answered at the gateway");
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        let h = |n| reply_header(&reply, n);
        assert_eq!(
            h("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(h("access-control-allow-credentials"), Some("true"));
        assert_eq!(h("access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(
            h("access-control-allow-headers"),
            Some("content-type, x-trace")
        );
        assert_eq!(h("access-control-max-age"), Some("3600"));
        assert_eq!(h("vary"), Some(PREFLIGHT_VARY));
    }

    #[tokio::test]
    async fn preflight_refusals_table() {
        let cors = policy("allow_methods = [\"PUT\"]\nallow_headers = [\"x-ok\"]").expect("valid");
        let cases: [(&str, &[(&str, &str)]); 6] = [
            (
                "other origin",
                &[
                    ("origin", "https://evil.com"),
                    ("access-control-request-method", "PUT"),
                ],
            ),
            (
                "method not listed",
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "DELETE"),
                ],
            ),
            (
                "method case matters",
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "put"),
                ],
            ),
            (
                "header not listed",
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "PUT"),
                    ("access-control-request-headers", "x-ok, x-no"),
                ],
            ),
            (
                "malformed header list",
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "PUT"),
                    ("access-control-request-headers", "x ok"),
                ],
            ),
            (
                "null origin",
                &[("origin", "null"), ("access-control-request-method", "GET")],
            ),
        ];
        for (case, headers) in cases {
            let (reply, resp) = run(&cors, "OPTIONS", headers).await;
            let reply = reply.unwrap_or_else(|| panic!("{case}: a preflight is never forwarded"));
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{case}");
            assert_eq!(reply.reason, "cors_preflight_denied", "{case}");
            assert!(
                reply
                    .headers
                    .iter()
                    .all(|(n, _)| !n.as_str().starts_with("access-control-")),
                "{case}: {:?}",
                reply.headers
            );
            assert_eq!(reply_header(&reply, "vary"), Some(PREFLIGHT_VARY), "{case}");
            assert!(
                resp.headers.get("vary").is_none(),
                "{case}: response phase adds nothing"
            );
        }
        // A safelisted method and a case-insensitive header name pass.
        let (reply, _) = run(
            &cors,
            "OPTIONS",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "X-OK"),
            ],
        )
        .await;
        assert_eq!(reply.expect("answered").status, StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn wildcards_reflect_what_was_asked() {
        let cors = Cors::new(&CorsConfig {
            allow_origins: vec!["*".into()],
            allow_methods: vec!["*".into()],
            allow_headers: vec!["*".into()],
            expose_headers: vec![],
            allow_credentials: false,
            max_age: "0s".into(),
        })
        .expect("valid");
        let (reply, _) = run(
            &cors,
            "OPTIONS",
            &[
                ("origin", "https://anyone.net"),
                ("access-control-request-method", "PATCH"),
                ("access-control-request-headers", "Authorization,X-A"),
            ],
        )
        .await;
        let reply = reply.expect("answered");
        let h = |n| reply_header(&reply, n);
        assert_eq!(h("access-control-allow-origin"), Some("*"));
        assert_eq!(h("access-control-allow-methods"), Some("PATCH"));
        assert_eq!(
            h("access-control-allow-headers"),
            Some("authorization, x-a")
        );
        assert_eq!(h("access-control-allow-credentials"), None);
        assert_eq!(h("access-control-max-age"), Some("0"));
    }

    #[tokio::test]
    async fn actual_requests() {
        let cors =
            policy("allow_credentials = true\nexpose_headers = [\"X-Request-Id\"]").expect("valid");
        let (reply, resp) = run(&cors, "GET", &[("origin", "https://a.example.org")]).await;
        assert!(reply.is_none(), "forwarded");
        assert_eq!(
            resp_header(&resp, "access-control-allow-origin"),
            Some("https://a.example.org")
        );
        assert_eq!(
            resp_header(&resp, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            resp_header(&resp, "access-control-expose-headers"),
            Some("x-request-id")
        );
        assert_eq!(resp_header(&resp, "vary"), Some("Origin"));

        let (reply, resp) = run(&cors, "GET", &[("origin", "https://evil.com")]).await;
        assert!(reply.is_none(), "forwarded");
        assert_eq!(resp_header(&resp, "access-control-allow-origin"), None);
        assert_eq!(resp_header(&resp, "vary"), Some("Origin"));

        // OPTIONS without Access-Control-Request-Method is an ordinary request.
        let (reply, resp) = run(&cors, "OPTIONS", &[("origin", "https://app.example.com")]).await;
        assert!(reply.is_none(), "forwarded");
        assert!(resp.headers.contains_key("access-control-allow-origin"));

        let (reply, resp) = run(&cors, "GET", &[]).await;
        assert!(reply.is_none());
        assert!(resp
            .headers
            .keys()
            .all(|n| !n.as_str().starts_with("access-control-")));
        assert_eq!(resp_header(&resp, "vary"), Some("Origin"));
    }

    #[test]
    fn upstream_cors_headers_are_replaced_and_vary_is_merged() {
        let cors = policy("").expect("valid");
        let mut state = FilterState::default();
        state.extensions.insert(Outcome::Denied);
        let mut resp = ResponseHeader::build(200, None).expect("response");
        resp.insert_header("access-control-allow-origin", "*")
            .expect("h");
        resp.insert_header("vary", "Accept-Encoding, origin")
            .expect("h");
        cors.on_response(&mut resp, &mut state);
        assert!(!resp.headers.contains_key("access-control-allow-origin"));
        assert_eq!(
            resp.headers.get_all("vary").iter().count(),
            1,
            "origin already listed"
        );

        let mut state = FilterState::default();
        state
            .extensions
            .insert(Outcome::Allowed(HeaderValue::from_static(
                "https://app.example.com",
            )));
        let mut resp = ResponseHeader::build(200, None).expect("response");
        resp.insert_header("access-control-allow-origin", "*")
            .expect("h");
        resp.insert_header("vary", "Accept-Encoding").expect("h");
        cors.on_response(&mut resp, &mut state);
        let acao: Vec<_> = resp
            .headers
            .get_all("access-control-allow-origin")
            .iter()
            .collect();
        assert_eq!(acao, ["https://app.example.com"]);
        let vary: Vec<_> = resp.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);
    }
}
