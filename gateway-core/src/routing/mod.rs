//! The route table: compiled matchers, the order they are tried in, and `explain`.
//!
//! Routes are ranked once at build time by explicit `priority` (higher first), then by
//! specificity (a host beats no host, an exact host beats a wildcard, an exact path beats a
//! prefix, a longer prefix beats a shorter one, a regex comes after literal paths, more header
//! and method conditions beat fewer), then by file order. A request takes the first route in
//! that order whose every condition holds.
//!
//! Matching does not scan the whole table: routes whose paths start with a literal first
//! segment are indexed by it — literal paths (`/api/...`) and regexes anchored at the start
//! whose alternatives all begin with a whole literal segment (`^/orders/[0-9]+$`) — so a
//! request only looks at routes that share its first segment plus the few that cannot be
//! indexed (other regexes, `/`, host-only routes).

mod path;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;

pub use path::{has_segment_prefix, normalize_path, PathError};

use crate::config::{RouteConfig, Timeouts};
use crate::filter::NamedFilter;
use crate::observe::RouteMetrics;
use crate::upstream::Upstream;

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// Exactly this host (lower case, no port).
    Exact(String),
    /// Any subdomain of this suffix; stored with its leading dot (`.example.com`).
    Suffix(String),
}

impl HostMatch {
    /// Parse `api.example.com` or `*.example.com`.
    pub fn parse(text: &str) -> Result<HostMatch, String> {
        let lower = text.trim().to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(format!(
                "{text:?} is not a host name or a wildcard like \"*.example.com\""
            ));
        }
        Ok(if wild {
            HostMatch::Suffix(format!(".{name}"))
        } else {
            HostMatch::Exact(name.to_string())
        })
    }

    fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostMatch::Any, _) => true,
            (_, None) => false,
            (HostMatch::Exact(h), Some(req)) => h == req,
            (HostMatch::Suffix(s), Some(req)) => req.len() > s.len() && req.ends_with(s.as_str()),
        }
    }

    fn rank(&self) -> (u8, usize) {
        match self {
            HostMatch::Any => (0, 0),
            HostMatch::Suffix(s) => (1, s.len()),
            HostMatch::Exact(h) => (2, h.len()),
        }
    }
}

/// How a route matches the normalized path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Any path.
    Any,
    /// Exactly this path.
    Exact(String),
    /// This path or anything below it at a segment boundary.
    Prefix(String),
    /// A regular expression over the normalized path.
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => has_segment_prefix(path, p),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    fn rank(&self) -> (u8, usize) {
        match self {
            PathMatch::Any => (0, 0),
            PathMatch::Regex(_) => (1, 0),
            PathMatch::Prefix(p) => (2, p.len()),
            PathMatch::Exact(p) => (3, p.len()),
        }
    }

    /// The literal first segments every matching path starts with (one of them), if the
    /// match says: a literal path's own, or those of a regex anchored at the start whose
    /// every alternative begins with a whole literal segment (`^/orders/[0-9]+$` → `orders`).
    /// `None` when a matching path may start with anything.
    fn index_keys(&self) -> Option<Vec<String>> {
        let literal = match self {
            PathMatch::Exact(p) => p.as_str(),
            PathMatch::Prefix(p) => p.as_str(),
            PathMatch::Regex(r) => return regex_first_segments(r.as_str()),
            PathMatch::Any => return None,
        };
        let rest = &literal[1..];
        match rest.find('/') {
            Some(end) => Some(vec![rest[..end].to_owned()]),
            // `/api` as a prefix also takes `/api/x`: the first segment is still `api`.
            None if !rest.is_empty() => Some(vec![rest.to_owned()]),
            None => None,
        }
    }
}

/// What the router needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The request method.
    pub method: &'a Method,
    /// Lower-case host without port, if the request named one.
    pub host: Option<&'a str>,
    /// The path after [`normalize_path`].
    pub path: &'a str,
    /// All request headers.
    pub headers: &'a HeaderMap,
}

/// A request as routing reads it from its parts — the host it names, lower case without a
/// port, and its path normalized — made the same way for the proxy and `gateway explain`.
/// Borrowed from the request where nothing needed changing.
#[derive(Debug, Clone)]
pub struct RoutedRequest<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The host for matching, when the request named one (and the table matches hosts).
    pub host: Option<std::borrow::Cow<'a, str>>,
    /// The path after [`normalize_path`].
    pub path: std::borrow::Cow<'a, str>,
    /// All request headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RoutedRequest<'a> {
    /// Of a request's parts. `hosts`: whether the host is wanted (a table with no host
    /// conditions does not need it, and the proxy skips reading it). A path that cannot be
    /// normalized is refused.
    pub fn new(
        method: &'a Method,
        uri: &'a http::Uri,
        headers: &'a HeaderMap,
        hosts: bool,
    ) -> Result<RoutedRequest<'a>, PathError> {
        let path = normalize_path(uri.path())?;
        let host = if hosts {
            raw_host(uri, headers).and_then(request_host)
        } else {
            None
        };
        Ok(RoutedRequest {
            method,
            host,
            path,
            headers,
        })
    }

    /// What the router matches on.
    pub fn view(&self) -> RequestView<'_> {
        RequestView {
            method: self.method,
            host: self.host.as_deref(),
            path: &self.path,
            headers: self.headers,
        }
    }
}

/// The host a request names, as sent: `:authority` (HTTP/2, or an absolute-form target),
/// else `Host`.
pub fn raw_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority().map(|a| a.as_str()).or_else(|| {
        headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// The route's name from the config (metrics label, logs, explain).
    pub name: Arc<str>,
    /// Position in the config file (the last tie-breaker).
    pub index: usize,
    /// Explicit priority from the config.
    pub priority: i32,
    host: HostMatch,
    path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Where matching requests go.
    pub upstream: Arc<Upstream>,
    strip_prefix: Option<String>,
    rewrite: Option<(Regex, String)>,
    /// Timeouts after merging route, upstream and defaults.
    pub timeouts: Timeouts,
    /// Total attempts allowed when an attempt fails in a retry-safe way.
    pub attempts: usize,
    /// The filter chain: `default_filters` then the route's own, in order.
    pub filters: Vec<NamedFilter>,
    /// This route's metric series, resolved on first use.
    pub(crate) metrics: RouteMetrics,
}

impl Route {
    /// Compile a validated route config against its upstream.
    pub fn compile(
        index: usize,
        cfg: &RouteConfig,
        upstream: Arc<Upstream>,
        filters: Vec<NamedFilter>,
    ) -> Result<Route, String> {
        let m = &cfg.matcher;
        let path = match (&m.path, &m.path_prefix, &m.path_regex) {
            (Some(p), _, _) => PathMatch::Exact(p.clone()),
            (_, Some(p), _) if p == "/" => PathMatch::Any,
            (_, Some(p), _) => PathMatch::Prefix(p.clone()),
            (_, _, Some(r)) => PathMatch::Regex(Regex::new(r).map_err(|e| e.to_string())?),
            _ => PathMatch::Any,
        };
        let host = match &m.host {
            Some(h) => HostMatch::parse(h)?,
            None => HostMatch::Any,
        };
        let methods = m
            .methods
            .iter()
            .map(|s| {
                Method::from_bytes(s.to_ascii_uppercase().as_bytes()).map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let headers = m
            .headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
                let value = match v.as_str() {
                    "*" => None,
                    v => Some(HeaderValue::from_str(v).map_err(|e| e.to_string())?),
                };
                Ok((name, value))
            })
            .collect::<Result<_, String>>()?;
        let rewrite = match &cfg.rewrite {
            Some(rw) => Some((
                Regex::new(&rw.regex).map_err(|e| e.to_string())?,
                rw.replace.clone(),
            )),
            None => None,
        };
        Ok(Route {
            name: Arc::from(cfg.name.as_str()),
            index,
            priority: cfg.priority,
            host,
            path,
            methods,
            headers,
            timeouts: cfg.timeouts.or(upstream.timeouts()),
            upstream,
            strip_prefix: cfg.strip_prefix.clone(),
            rewrite,
            attempts: cfg.retry.attempts,
            filters,
            metrics: Default::default(),
        })
    }

    fn specificity(&self) -> impl Ord {
        (
            self.host.rank(),
            self.path.rank(),
            self.headers.len(),
            !self.methods.is_empty(),
        )
    }

    /// Each condition this request fails, in words; empty when the route matches.
    pub fn mismatches(&self, req: &RequestView<'_>) -> Vec<String> {
        let mut why = Vec::new();
        if !self.host.matches(req.host) {
            why.push(format!(
                "host {:?} is not {}",
                req.host.unwrap_or(""),
                self.host
            ));
        }
        if !self.path.matches(req.path) {
            why.push(format!("path {:?} is not {}", req.path, self.path));
        }
        if !self.methods_match(req.method) {
            why.push(format!(
                "method {} is not one of {:?}",
                req.method, self.methods
            ));
        }
        for (name, want) in &self.headers {
            if !header_matches(req.headers, name, want.as_ref()) {
                why.push(match want {
                    Some(v) => format!("header {name} is not {v:?}"),
                    None => format!("header {name} is absent"),
                });
            }
        }
        why
    }

    fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path.matches(req.path)
            && self.host.matches(req.host)
            && self.methods_match(req.method)
            && self
                .headers
                .iter()
                .all(|(n, v)| header_matches(req.headers, n, v.as_ref()))
    }

    fn methods_match(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }

    /// Path and query to send upstream for a request to `path` (normalized) with `query`, or
    /// `None` when that is `path` itself: no query and nothing rewritten, as for most
    /// requests, which then copy nothing.
    pub fn upstream_target(&self, path: &str, query: Option<&str>) -> Option<String> {
        let target = self.upstream_path(path);
        let Some(query) = query else {
            return (target != path).then(|| target.into_owned());
        };
        let mut out = String::with_capacity(target.len() + 1 + query.len());
        out.push_str(&target);
        out.push('?');
        out.push_str(query);
        Some(out)
    }

    /// The path to send upstream: `strip_prefix`, then `rewrite`, applied to the normalized path.
    pub fn upstream_path<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        use std::borrow::Cow;
        let mut out: Cow<'p, str> = Cow::Borrowed(path);
        if let Some(prefix) = &self.strip_prefix {
            let prefix = prefix.trim_end_matches('/');
            if has_segment_prefix(path, prefix) {
                let rest = &path[prefix.len()..];
                out = if rest.is_empty() {
                    Cow::Borrowed("/")
                } else {
                    Cow::Borrowed(rest)
                };
            }
        }
        if let Some((re, replace)) = &self.rewrite {
            if let Cow::Owned(s) = re.replace(&out, replace.as_str()) {
                out = Cow::Owned(if s.starts_with('/') {
                    s
                } else {
                    format!("/{s}")
                });
            }
        }
        out
    }
}

fn header_matches(headers: &HeaderMap, name: &HeaderName, want: Option<&HeaderValue>) -> bool {
    match want {
        None => headers.contains_key(name),
        Some(v) => headers.get_all(name).iter().any(|h| h == v),
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Any => f.write_str("any host"),
            HostMatch::Exact(h) => write!(f, "{h:?}"),
            HostMatch::Suffix(s) => write!(f, "\"*{s}\""),
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Any => f.write_str("any path"),
            PathMatch::Exact(p) => write!(f, "exactly {p:?}"),
            PathMatch::Prefix(p) => write!(f, "under prefix {p:?}"),
            PathMatch::Regex(r) => write!(f, "matched by /{}/", r.as_str()),
        }
    }
}

/// The whole first segments a regex's matches start with, when it is anchored at the start
/// and each of its literal prefixes holds a complete segment (`/name/`, or all of an exact
/// `^/name$`); `None` otherwise.
/// Paths are normalized before matching and regexes run on them as they are, so a match's
/// first segment is exactly one of these.
fn regex_first_segments(pattern: &str) -> Option<Vec<String>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    use regex_syntax::hir::Look;
    let hir = regex_syntax::parse(pattern).ok()?;
    if !hir.properties().look_set_prefix().contains(Look::Start) {
        return None;
    }
    // Anchored at the end too, an exact literal is the whole path.
    let whole = hir.properties().look_set_suffix().contains(Look::End);
    let prefixes = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    let literals = prefixes.literals()?;
    if literals.is_empty() {
        return None;
    }
    let mut keys = Vec::with_capacity(literals.len());
    for literal in literals {
        let text = std::str::from_utf8(literal.as_bytes()).ok()?;
        let rest = text.strip_prefix('/')?;
        // An exact literal of a pattern anchored at both ends is the whole path
        // (`^/health$`): its rest is the segment.
        let end = rest
            .find('/')
            .or_else(|| (whole && literal.is_exact()).then_some(rest.len()))
            .filter(|&end| end > 0)?;
        keys.push(rest[..end].to_owned());
    }
    keys.sort();
    keys.dedup();
    Some(keys)
}

/// The compiled, ranked route table of one snapshot.
#[derive(Debug, Default)]
pub struct Router {
    /// Routes in rank order: the first one that matches wins.
    routes: Vec<Arc<Route>>,
    /// Rank positions of the routes whose paths start with a given literal first segment.
    by_first_segment: HashMap<Box<str>, Vec<usize>>,
    /// Rank positions of the routes without such a segment; always considered.
    unindexed: Vec<usize>,
    /// Whether any route matches on the host (if none does, the proxy need not look it up).
    matches_hosts: bool,
}

impl Router {
    /// Rank and index compiled routes.
    pub fn new(mut routes: Vec<Route>) -> Router {
        routes.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| b.specificity().cmp(&a.specificity()))
                .then_with(|| a.index.cmp(&b.index))
        });
        let mut router = Router::default();
        for (rank, route) in routes.into_iter().enumerate() {
            match route.path.index_keys() {
                Some(keys) => {
                    for key in keys {
                        router
                            .by_first_segment
                            .entry(key.into())
                            .or_default()
                            .push(rank);
                    }
                }
                None => router.unindexed.push(rank),
            }
            router.matches_hosts |= !matches!(route.host, HostMatch::Any);
            router.routes.push(Arc::new(route));
        }
        router
    }

    /// Whether any route matches on the request's host: when none does, a request's host
    /// cannot change which route it takes.
    pub fn matches_hosts(&self) -> bool {
        self.matches_hosts
    }

    /// All routes in rank order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route this request takes, if any.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Arc<Route>> {
        let first = first_segment(req.path);
        let indexed: &[usize] = self
            .by_first_segment
            .get(first)
            .map_or(&[], |v| v.as_slice());
        let (mut a, mut b) = (indexed.iter().peekable(), self.unindexed.iter().peekable());
        // Both lists are in rank order: walk them as one merged list.
        loop {
            let rank = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => return None,
            };
            let route = &self.routes[*rank.expect("peeked")];
            if route.matches(req) {
                return Some(route);
            }
        }
    }

    /// Why this request takes the route it takes, or why it takes none.
    pub fn explain(&self, req: &RequestView<'_>) -> Explanation {
        let mut checked = Vec::new();
        let mut matched = None;
        for route in &self.routes {
            let mismatches = route.mismatches(req);
            let hit = mismatches.is_empty();
            checked.push(RouteCheck {
                route: route.name.to_string(),
                priority: route.priority,
                mismatches,
            });
            if hit {
                matched = Some(route.name.to_string());
                break;
            }
        }
        Explanation {
            method: req.method.to_string(),
            host: req.host.map(str::to_string),
            path: req.path.to_string(),
            matched,
            checked,
        }
    }
}

fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').next().unwrap_or("")
}

/// The result of [`Router::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The request's method.
    pub method: String,
    /// The host used for matching.
    pub host: Option<String>,
    /// The normalized path used for matching.
    pub path: String,
    /// The winning route, if any.
    pub matched: Option<String>,
    /// Routes tried, in rank order, up to and including the winner.
    pub checked: Vec<RouteCheck>,
}

/// One route considered by `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCheck {
    /// Route name.
    pub route: String,
    /// Its priority.
    pub priority: i32,
    /// Why it did not match (empty for the winner).
    pub mismatches: Vec<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "request: {} host={} path={}",
            self.method,
            self.host.as_deref().unwrap_or("-"),
            self.path
        )?;
        for c in &self.checked {
            if c.mismatches.is_empty() {
                writeln!(f, "  route {:?} (priority {}): MATCH", c.route, c.priority)?;
            } else {
                writeln!(
                    f,
                    "  route {:?} (priority {}): no, {}",
                    c.route,
                    c.priority,
                    c.mismatches.join("; ")
                )?;
            }
        }
        match &self.matched {
            Some(r) => write!(f, "=> route {r:?}"),
            None => write!(f, "=> no route matches (the gateway answers 404)"),
        }
    }
}

/// The host of a request, lower case, without port or trailing dot.
pub fn request_host(authority: &str) -> Option<std::borrow::Cow<'_, str>> {
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    let host = host.trim_end_matches('.');
    if host.is_empty() {
        None
    } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(host.to_ascii_lowercase().into())
    } else {
        Some(host.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchored_regexes_with_whole_literal_first_segments_are_indexed() {
        let keys = |p: &str| regex_first_segments(p);
        assert_eq!(keys("^/orders/[0-9]+$"), Some(vec!["orders".into()]));
        assert_eq!(keys("^/health$"), Some(vec!["health".into()]));
        assert_eq!(
            keys("^/(v1|v2)/items"),
            Some(vec!["v1".into(), "v2".into()])
        );
        // Not anchored, no whole segment, or no literal start: a path may start otherwise.
        for open in [
            "/orders/[0-9]+$",
            "^/orders",
            "^/ord.*/x",
            "^/[a-z]+/x",
            r"\.php$",
            "(?m)^/orders/",
            "^//x/",
        ] {
            assert_eq!(keys(open), None, "{open}");
        }
    }

    fn router(routes: &str) -> crate::snapshot::Snapshot {
        let text = format!("[[upstreams]]\nname = \"u\"\nbackends = [\"127.0.0.1:9\"]\n{routes}");
        crate::snapshot::Snapshot::from_source(
            &crate::config::Source::inline(text),
            1,
            None,
            &crate::filter::FilterRegistry::builtin(),
        )
        .expect("routes build")
    }

    fn found(router: &Router, path: &str) -> Option<String> {
        let headers = HeaderMap::new();
        let view = RequestView {
            method: &Method::GET,
            host: None,
            path,
            headers: &headers,
        };
        router.find(&view).map(|r| r.name.to_string())
    }

    /// Indexing a regex under its first segment keeps the table's order: a regex still
    /// loses to a literal path of its segment and beats it with a higher priority, and a
    /// regex that cannot be indexed is still tried for every path.
    #[test]
    fn indexed_regexes_keep_their_rank() {
        let snapshot = router(
            "[[routes]]\nname = \"re\"\nupstream = \"u\"\nmatch = { path_regex = '^/orders/[0-9]+$' }\n\
             [[routes]]\nname = \"prefix\"\nupstream = \"u\"\nmatch = { path_prefix = \"/orders\" }\n\
             [[routes]]\nname = \"php\"\nupstream = \"u\"\nmatch = { path_regex = '\\.php$' }\n\
             [[routes]]\nname = \"first\"\nupstream = \"u\"\npriority = 10\nmatch = { path_regex = '^/first/[a-z]+$' }\n\
             [[routes]]\nname = \"first-prefix\"\nupstream = \"u\"\nmatch = { path_prefix = \"/first\" }\n",
        );
        let r = &snapshot.router;
        assert_eq!(found(r, "/orders/42").as_deref(), Some("prefix"));
        assert_eq!(found(r, "/first/abc").as_deref(), Some("first"));
        assert_eq!(found(r, "/first/123").as_deref(), Some("first-prefix"));
        assert_eq!(found(r, "/orders/x.php").as_deref(), Some("prefix"));
        assert_eq!(found(r, "/shop/index.php").as_deref(), Some("php"));
        assert_eq!(found(r, "/shop/index.html"), None);
    }
}
