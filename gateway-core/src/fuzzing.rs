//! Entry points of the fuzz targets (`fuzz/`, run with `cargo +nightly fuzz run NAME`) and of
//! the corpus replay that `cargo test` does on stable (`gateway-core/tests/fuzz_corpus.rs`):
//! each takes arbitrary bytes, runs code that reads what a client or an operator controls,
//! and panics only when an invariant breaks. Not part of the API.

use std::sync::OnceLock;

use crate::config::{Config, Source};
use crate::filter::FilterRegistry;
use crate::observe::request_id::{request_ids, RequestId};
use crate::observe::TraceContext;
use crate::routing::{normalize_path, RoutedRequest};
use crate::snapshot::Snapshot;

/// A target's entry point.
pub type Target = fn(&[u8]);

/// Every target by name, as the fuzz crate and the corpus replay call them.
pub const TARGETS: [(&str, Target); 6] = [
    ("config", config),
    ("route", route),
    ("trace_context", trace_context),
    ("forwarded_for", forwarded_for),
    ("jwt_token", jwt_token),
    ("rate_limit_key", rate_limit_key),
];

/// Config text: parsed, validated, checked for warnings; a valid one without filters or
/// files is built into a snapshot (routes compiled, pools made), as a reload would, and
/// survives the TOML round trip `GatewayBuilder::config` relies on.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source::inline(text);
    let Ok(config) = Config::parse(&source) else {
        return;
    };
    let valid = config.validate().is_empty();
    let _ = config.warnings();
    let plain = config.filters.is_empty()
        && config.platform.is_none()
        && config.server.tls.is_none()
        && config.upstreams.iter().all(|u| u.tls.is_none());
    if !(valid && plain) {
        return;
    }
    let again = toml::to_string(&config).expect("a parsed config serializes");
    let reparsed = Config::parse(&Source::inline(again.clone()))
        .unwrap_or_else(|e| panic!("a serialized config does not parse: {e}\n{again}"));
    assert_eq!(reparsed, config, "the TOML round trip changed the config");
    let _ = Snapshot::from_source(&source, 1, None, &FilterRegistry::builtin());
}

/// A route table of every matcher kind, built once.
fn routes() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let text = r#"
[[upstreams]]
name = "u"
backends = ["127.0.0.1:1"]

[[routes]]
name = "exact"
match = { path = "/a/b", methods = ["GET"] }
upstream = "u"

[[routes]]
name = "prefix"
match = { path_prefix = "/api" }
upstream = "u"
strip_prefix = "/api"
rewrite = { regex = "^/v1/(.*)$", replace = "/$1" }

[[routes]]
name = "regex"
match = { path_regex = "^/items/[0-9]+$" }
upstream = "u"

[[routes]]
name = "alternatives"
match = { path_regex = "^/(x|yy)/" }
upstream = "u"

[[routes]]
name = "unanchored"
match = { path_regex = "z+$" }
upstream = "u"

[[routes]]
name = "wildcard-host"
match = { host = "*.example.com", path_prefix = "/", headers = { x-canary = "1" } }
upstream = "u"

[[routes]]
name = "host"
match = { host = "api.example.com" }
upstream = "u"
"#;
        Snapshot::from_source(&Source::inline(text), 1, None, &FilterRegistry::builtin())
            .expect("the fuzz route table builds")
    })
}

/// Line 1 a method, line 2 a request target (origin or absolute form), the rest
/// `name: value` headers: routed as the proxy routes; and line 2 normalized on its own,
/// which must be idempotent.
pub fn route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let method = lines.next().unwrap_or("GET");
    let target = lines.next().unwrap_or("/");
    if let Ok(once) = normalize_path(target) {
        let twice = normalize_path(&once).expect("a normalized path normalizes");
        assert_eq!(twice, once, "normalizing is not idempotent for {target:?}");
    }
    let (Ok(method), Ok(uri)) = (
        http::Method::from_bytes(method.as_bytes()),
        target.parse::<http::Uri>(),
    ) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.trim().as_bytes()),
            http::HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    let snapshot = routes();
    let hosts = snapshot.router.matches_hosts();
    let Ok(routed) = RoutedRequest::new(&method, &uri, &headers, hosts) else {
        return;
    };
    let view = routed.view();
    let found = snapshot.router.find(&view);
    let explained = snapshot.router.explain(&view);
    assert_eq!(
        found.map(|r| r.name.to_string()),
        explained.matched,
        "find and explain disagree"
    );
    if let Some(route) = found {
        let upstream = route.upstream_path(&routed.path);
        assert!(upstream.starts_with('/'), "upstream path {upstream:?}");
    }
}

/// A `traceparent` and an `x-request-id` as a client sends them: a usable traceparent is
/// continued with the same trace id, and the ids sent on are valid header values.
pub fn trace_context(data: &[u8]) {
    let trace = TraceContext::from_header(Some(data));
    let again = TraceContext::from_header(Some(&trace.header_bytes()));
    assert_eq!(
        again.trace_id_hex(),
        trace.trace_id_hex(),
        "a traceparent the gateway wrote does not parse back"
    );
    let given = http::HeaderValue::from_bytes(data).ok();
    if let Some(id) = RequestId::given(given.as_ref()) {
        assert!(http::HeaderValue::from_str(id.as_str()).is_ok());
    }
    let (id, traceparent) = request_ids(given.as_ref(), &trace);
    assert!(!id.is_empty());
    assert!(traceparent.to_str().is_ok());
}

/// Line 1 the peer's address, the rest `X-Forwarded-For` lines: the walk through trusted
/// proxies (10.0.0.0/8, ::1) always names a client, and one that is the peer or a hop.
pub fn forwarded_for(data: &[u8]) {
    static TRUSTING: OnceLock<Snapshot> = OnceLock::new();
    let snapshot = TRUSTING.get_or_init(|| {
        let text = "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n";
        Snapshot::from_source(&Source::inline(text), 1, None, &FilterRegistry::builtin())
            .expect("the fuzz snapshot builds")
    });
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let peer: std::net::IpAddr = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or([10, 0, 0, 1].into());
    let Ok(mut req) = pingora_http::RequestHeader::build("GET", b"/", None) else {
        return;
    };
    for line in lines {
        let _ = req.append_header("x-forwarded-for", line);
    }
    let trusted = snapshot.is_trusted_proxy(peer);
    let client = crate::forwarding::resolve_client_ip(snapshot, Some(peer), trusted, &req)
        .expect("a peer always gives a client");
    if !trusted {
        assert_eq!(client, peer, "an untrusted peer's forwarding was believed");
    }
    let hops: Vec<std::net::IpAddr> = text
        .lines()
        .skip(1)
        .flat_map(|l| l.split(','))
        .filter_map(|h| h.trim().parse().ok())
        .collect();
    assert!(
        client == peer || hops.contains(&client),
        "the client {client} is neither the peer nor a hop"
    );
}

/// See the JWT filter's `fuzz`.
pub fn jwt_token(data: &[u8]) {
    crate::filter::auth::fuzz_token(data)
}

/// See the rate limiter's key `fuzz`.
pub fn rate_limit_key(data: &[u8]) {
    crate::filter::ratelimit::fuzz_key(data)
}
