//! `Config::validate`: every problem of a parsed config, each with its field path, in one pass.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

use super::{Balance, Config, HealthCheckKind, MatchConfig, RouteConfig, Timeouts, UpstreamConfig};

/// One problem found by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Where in the file: `routes[3].upstream`.
    pub field: String,
    /// What is wrong and, where we can tell, what was meant.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Collects issues with their field path.
#[derive(Default)]
struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            field: field.into(),
            message: message.into(),
        });
    }
}

impl Config {
    /// Every problem of this config, in file order; empty means it can be served.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Issues::default();
        self.validate_server(&mut issues);
        self.validate_observability(&mut issues);
        let mut names = HashSet::new();
        for (i, up) in self.upstreams.iter().enumerate() {
            let at = format!("upstreams[{i}]");
            if !names.insert(up.name.as_str()) {
                issues.add(
                    format!("{at}.name"),
                    format!("duplicate upstream name {:?}", up.name),
                );
            }
            validate_upstream(up, &at, &mut issues);
        }
        let upstream_names: Vec<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
        let filter_names: Vec<&str> = self.filters.keys().map(String::as_str).collect();
        for (name, f) in &self.filters {
            if f.kind.trim().is_empty() {
                issues.add(format!("filters.{name}.kind"), "must name a filter kind");
            }
        }
        for (j, name) in self.default_filters.iter().enumerate() {
            check_filter_ref(
                name,
                &format!("default_filters[{j}]"),
                &filter_names,
                &mut issues,
            );
        }
        let mut route_names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if !route_names.insert(route.name.as_str()) {
                issues.add(
                    format!("{at}.name"),
                    format!("duplicate route name {:?}", route.name),
                );
            }
            validate_route(route, &at, &upstream_names, &mut issues);
            for (j, name) in route.filters.iter().enumerate() {
                check_filter_ref(
                    name,
                    &format!("{at}.filters[{j}]"),
                    &filter_names,
                    &mut issues,
                );
            }
        }
        issues.0
    }

    /// What this config allows but an operator should know is risky (`gateway check` prints
    /// these as warnings; the gateway logs them at start and on reload).
    pub fn warnings(&self) -> Vec<ConfigIssue> {
        let mut warnings = Issues::default();
        for (i, up) in self.upstreams.iter().enumerate() {
            if up.tls.as_ref().is_some_and(|t| !t.verify) {
                warnings.add(
                    format!("upstreams[{i}].tls.verify"),
                    "is false: the backends' certificate is not checked, so anyone on the path can pose as them",
                );
            }
        }
        warnings.0
    }

    fn validate_server(&self, issues: &mut Issues) {
        let tls = self.server.tls.as_ref();
        if self.server.listen.is_empty() && tls.is_none_or(|t| t.listen.is_empty()) {
            issues.add("server.listen", "at least one listen address is needed");
        }
        // Port 0 picks a free port each time, so only fixed ports can collide.
        let mut bound: Vec<SocketAddr> = Vec::new();
        let plain = self.server.listen.iter().map(|a| ("server.listen", a));
        let secure = tls
            .iter()
            .flat_map(|t| &t.listen)
            .map(|a| ("server.tls.listen", a));
        let mut index = std::collections::HashMap::new();
        for (field, addr) in plain.chain(secure) {
            let i = index.entry(field).or_insert(0usize);
            let at = format!("{field}[{i}]");
            *i += 1;
            match addr.parse::<SocketAddr>() {
                Err(_) => issues.add(at, format!("{addr:?} is not an ip:port address")),
                Ok(a) if a.port() != 0 && bound.contains(&a) => {
                    issues.add(at, format!("{a} is listed twice"))
                }
                Ok(a) => bound.push(a),
            }
        }
        if let Some(tls) = tls {
            validate_server_tls(tls, !self.server.listen.is_empty(), issues);
        }
        if self.server.threads == 0 {
            issues.add("server.threads", "must be at least 1");
        }
        for (i, cidr) in self.server.trusted_proxies.iter().enumerate() {
            if parse_cidr(cidr).is_none() {
                issues.add(
                    format!("server.trusted_proxies[{i}]"),
                    format!("{cidr:?} is not an IP address or CIDR (e.g. \"10.0.0.0/8\")"),
                );
            }
        }
        let admin = &self.admin.listen;
        match admin.parse::<SocketAddr>() {
            _ if admin.is_empty() => {}
            Err(_) => issues.add(
                "admin.listen",
                format!("{admin:?} is not an ip:port address (use \"\" to disable)"),
            ),
            Ok(a) if a.port() != 0 && bound.contains(&a) => issues.add(
                "admin.listen",
                format!("{a} is also a proxy listen address (server.listen)"),
            ),
            Ok(_) => {}
        }
    }
}

fn validate_server_tls(tls: &super::ServerTlsConfig, has_plain: bool, issues: &mut Issues) {
    if tls.listen.is_empty() {
        issues.add(
            "server.tls.listen",
            "at least one HTTPS listen address is needed",
        );
    }
    if tls.certificates.is_empty() {
        issues.add(
            "server.tls.certificates",
            "at least one certificate is needed",
        );
    }
    if tls.certificates.iter().filter(|c| c.default).count() > 1 {
        issues.add(
            "server.tls.certificates",
            "only one certificate can be the default",
        );
    }
    for (i, cert) in tls.certificates.iter().enumerate() {
        let at = format!("server.tls.certificates[{i}]");
        for (field, path) in [("cert", &cert.cert), ("key", &cert.key)] {
            if path.trim().is_empty() {
                issues.add(format!("{at}.{field}"), "must name a PEM file");
            }
        }
        for (j, name) in cert.names.iter().enumerate() {
            if let Err(e) = crate::tls::ServerName::parse(name) {
                issues.add(format!("{at}.names[{j}]"), e);
            }
        }
    }
    if tls.redirect_plain && !has_plain {
        issues.add(
            "server.tls.redirect_plain",
            "there is no plain listener to redirect (server.listen is empty)",
        );
    }
    if !tls.hsts.is_empty() && http::HeaderValue::from_str(&tls.hsts).is_err() {
        issues.add("server.tls.hsts", "is not a valid header value");
    }
}

fn validate_upstream_tls(tls: &super::UpstreamTlsConfig, at: &str, issues: &mut Issues) {
    if tls.verify && crate::tls::ServerName::parse(&tls.sni).is_err() {
        issues.add(
            format!("{at}.tls.sni"),
            format!(
                "{:?} is not a host name; the backends' certificate is checked against it",
                tls.sni
            ),
        );
    }
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        issues.add(
            format!("{at}.tls"),
            "client_cert and client_key go together (mTLS needs both)",
        );
    }
}

impl Config {
    fn validate_observability(&self, issues: &mut Issues) {
        let o = &self.observability;
        if o.otlp_endpoint.is_empty() {
            return;
        }
        if cfg!(not(feature = "otlp")) {
            issues.add(
                "observability.otlp_endpoint",
                "this gateway was built without OTLP export (cargo feature `otlp`); \
                 rebuild with `--features otlp` or set it to \"\"",
            );
        }
        let uri = o.otlp_endpoint.parse::<http::Uri>().ok();
        let web = |u: &http::Uri| matches!(u.scheme_str(), Some("http" | "https"));
        if !uri.is_some_and(|u| web(&u) && u.authority().is_some()) {
            issues.add(
                "observability.otlp_endpoint",
                format!(
                    "{:?} is not an http:// or https:// URL (e.g. \"http://127.0.0.1:4318\")",
                    o.otlp_endpoint
                ),
            );
        }
        if o.otlp_service_name.trim().is_empty() {
            issues.add("observability.otlp_service_name", "must not be empty");
        }
    }
}

/// An IP network from `10.0.0.0/8` or a bare address (a /32 or /128).
pub(crate) fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

fn validate_upstream(up: &UpstreamConfig, at: &str, issues: &mut Issues) {
    if up.name.trim().is_empty() {
        issues.add(format!("{at}.name"), "must not be empty");
    }
    if up.backends.is_empty() {
        issues.add(format!("{at}.backends"), "at least one backend is needed");
    }
    if let Some(tls) = &up.tls {
        validate_upstream_tls(tls, at, issues);
    }
    if let Some(o) = &up.outlier_detection {
        let at = format!("{at}.outlier_detection");
        if o.consecutive_failures == 0 {
            issues.add(format!("{at}.consecutive_failures"), "must be at least 1");
        }
        if o.base_ejection_time.is_zero() {
            issues.add(format!("{at}.base_ejection_time"), "must be longer than 0s");
        }
        if o.max_ejection_time < o.base_ejection_time {
            issues.add(
                format!("{at}.max_ejection_time"),
                "must be at least base_ejection_time",
            );
        }
        if o.max_ejection_percent > 100 {
            issues.add(
                format!("{at}.max_ejection_percent"),
                "is a percentage (0-100)",
            );
        }
    }
    if up.retry_budget.percent > 100 {
        issues.add(
            format!("{at}.retry_budget.percent"),
            "is a percentage (0-100)",
        );
    }
    let mut seen = HashSet::new();
    let mut seen_names = HashSet::new();
    if up.dns.min_refresh.is_zero() {
        issues.add(format!("{at}.dns.min_refresh"), "must be more than 0s");
    }
    if up.dns.max_refresh < up.dns.min_refresh {
        issues.add(
            format!("{at}.dns.max_refresh"),
            "must be at least min_refresh",
        );
    }
    for (j, b) in up.backends.iter().enumerate() {
        match b.addr().parse::<SocketAddr>() {
            Err(_) if crate::resolve::split_name(b.addr()).is_some() => {
                if !seen_names.insert(b.addr()) {
                    issues.add(
                        format!("{at}.backends[{j}]"),
                        format!("backend {} is listed twice", b.addr()),
                    );
                }
            }
            Err(_) => issues.add(
                format!("{at}.backends[{j}]"),
                format!("{:?} is not an ip:port or host:port address", b.addr()),
            ),
            Ok(addr) if !seen.insert(addr) => issues.add(
                format!("{at}.backends[{j}]"),
                format!("backend {addr} is listed twice"),
            ),
            Ok(_) => {}
        }
        if b.weight() == 0 {
            issues.add(format!("{at}.backends[{j}].weight"), "must be at least 1");
        }
    }
    match (&up.balance, &up.hash_key) {
        (Balance::ConsistentHash, None) => issues.add(
            format!("{at}.hash_key"),
            "consistent_hash needs a hash_key: client_ip, path, \"header:NAME\" or \"cookie:NAME\"",
        ),
        (Balance::ConsistentHash, Some(key)) => {
            if let Err(msg) = crate::upstream::HashKey::parse(key) {
                issues.add(format!("{at}.hash_key"), msg);
            }
        }
        (_, Some(_)) => issues.add(
            format!("{at}.hash_key"),
            "only used with balance = \"consistent_hash\"",
        ),
        (_, None) => {}
    }
    validate_timeouts(&up.timeouts, &format!("{at}.timeouts"), issues);
    if let Some(hc) = &up.health_check {
        let at = format!("{at}.health_check");
        if hc.kind == HealthCheckKind::Http && !hc.path.starts_with('/') {
            issues.add(format!("{at}.path"), "must start with '/'");
        }
        if hc.interval.is_zero() {
            issues.add(format!("{at}.interval"), "must be greater than zero");
        }
        if hc.timeout.is_zero() {
            issues.add(format!("{at}.timeout"), "must be greater than zero");
        }
        if hc.unhealthy_after == 0 {
            issues.add(format!("{at}.unhealthy_after"), "must be at least 1");
        }
        if hc.healthy_after == 0 {
            issues.add(format!("{at}.healthy_after"), "must be at least 1");
        }
    }
}

fn validate_route(route: &RouteConfig, at: &str, upstreams: &[&str], issues: &mut Issues) {
    if route.name.trim().is_empty() {
        issues.add(format!("{at}.name"), "must not be empty");
    }
    if !upstreams.contains(&route.upstream.as_str()) {
        let hint = did_you_mean(&route.upstream, upstreams)
            .map(|s| format!(" (did you mean {s:?}?)"))
            .unwrap_or_default();
        issues.add(
            format!("{at}.upstream"),
            format!("no upstream named {:?}{hint}", route.upstream),
        );
    }
    validate_match(&route.matcher, &format!("{at}.match"), issues);
    if let Some(prefix) = &route.strip_prefix {
        if !prefix.starts_with('/') {
            issues.add(format!("{at}.strip_prefix"), "must start with '/'");
        }
    }
    if let Some(rw) = &route.rewrite {
        if let Err(e) = regex::Regex::new(&rw.regex) {
            issues.add(format!("{at}.rewrite.regex"), regex_problem(&rw.regex, &e));
        }
    }
    validate_timeouts(&route.timeouts, &format!("{at}.timeouts"), issues);
    if route.retry.attempts == 0 {
        issues.add(
            format!("{at}.retry.attempts"),
            "must be at least 1 (1 = no retries)",
        );
    }
}

fn validate_timeouts(t: &Timeouts, at: &str, issues: &mut Issues) {
    for (field, value) in [
        ("connect", t.connect),
        ("read", t.read),
        ("write", t.write),
        ("idle", t.idle),
    ] {
        if value.is_some_and(|d| d.is_zero()) {
            issues.add(
                format!("{at}.{field}"),
                "must be greater than zero (leave it out for the default)",
            );
        }
    }
}

fn validate_match(m: &MatchConfig, at: &str, issues: &mut Issues) {
    let kinds = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        issues.add(
            at.to_string(),
            "give at most one of path, path_prefix and path_regex",
        );
    }
    for (field, value) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
        if let Some(p) = value {
            if !p.starts_with('/') {
                issues.add(format!("{at}.{field}"), "must start with '/'");
            } else if crate::routing::normalize_path(p).as_deref() != Ok(p.as_str()) {
                issues.add(
                    format!("{at}.{field}"),
                    format!(
                        "{p:?} is not in normalized form (no '.', '..', '//' or encoded unreserved \
                         characters), so no request could match it"
                    ),
                );
            }
        }
    }
    if let Some(re) = &m.path_regex {
        if let Err(e) = regex::Regex::new(re) {
            issues.add(format!("{at}.path_regex"), regex_problem(re, &e));
        }
    }
    if let Some(host) = &m.host {
        if let Err(msg) = crate::routing::HostMatch::parse(host) {
            issues.add(format!("{at}.host"), msg);
        }
    }
    for (j, method) in m.methods.iter().enumerate() {
        if http::Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
            issues.add(
                format!("{at}.methods[{j}]"),
                format!("{method:?} is not an HTTP method"),
            );
        }
    }
    for (name, value) in &m.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            issues.add(
                format!("{at}.headers.{name}"),
                "not a valid header name".to_string(),
            );
        }
        if value != "*" && http::HeaderValue::from_str(value).is_err() {
            issues.add(
                format!("{at}.headers.{name}"),
                format!("{value:?} is not a valid header value (no control characters)"),
            );
        }
    }
}

fn check_filter_ref(name: &str, at: &str, known: &[&str], issues: &mut Issues) {
    if !known.contains(&name) {
        let hint = did_you_mean(name, known)
            .map(|s| format!(" (did you mean {s:?}?)"))
            .unwrap_or_default();
        issues.add(
            at,
            format!("no filter named {name:?} under [filters]{hint}"),
        );
    }
}

/// The closest known name, if one is close enough to be a typo.
fn did_you_mean<'a>(wrong: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(wrong, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// `invalid regex "([": unclosed group`: the pattern and the last line of the regex error
/// (the multi-line form draws a caret under the pattern, which a one-line report cannot use).
fn regex_problem(pattern: &str, e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&text)
        .trim();
    let last = last.strip_prefix("error: ").unwrap_or(last);
    format!("invalid regex {pattern:?}: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    const BROKEN: &str = r#"
[server]
listen = ["nowhere"]
threads = 0
trusted_proxies = ["10.0.0.0/33"]

[[upstreams]]
name = "users"
backends = []

[[upstreams]]
name = "users"
backends = ["127.0.0.1:1", "127.0.0.1:1"]
balance = "consistent_hash"

[[routes]]
name = "a"
match = { path_prefix = "api", path_regex = "([" }
upstream = "userz"

[[routes]]
name = "a"
match = { host = "*.*.example.com", methods = ["GE T"], path = "/x/../y" }
upstream = "users"
rewrite = { regex = "(", replace = "" }
"#;

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let config = Config::parse(&Source::inline(BROKEN)).expect("parses");
        let issues = config.validate();
        let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
        for expected in [
            "server.listen[0]",
            "server.threads",
            "server.trusted_proxies[0]",
            "upstreams[0].backends",
            "upstreams[1].name",
            "upstreams[1].backends[1]",
            "upstreams[1].hash_key",
            "routes[0].upstream",
            "routes[0].match",
            "routes[0].match.path_prefix",
            "routes[0].match.path_regex",
            "routes[1].name",
            "routes[1].match.host",
            "routes[1].match.methods[0]",
            "routes[1].match.path",
            "routes[1].rewrite.regex",
        ] {
            assert!(
                fields.contains(&expected),
                "missing {expected} in {fields:?}"
            );
        }
        let unknown = issues
            .iter()
            .find(|i| i.field == "routes[0].upstream")
            .expect("unknown upstream");
        assert_eq!(
            unknown.to_string(),
            r#"routes[0].upstream: no upstream named "userz" (did you mean "users"?)"#
        );
    }

    #[test]
    fn what_would_fail_when_serving_is_reported_too() {
        let config = Config::parse(&Source::inline(
            r#"
[server]
listen = ["127.0.0.1:8080", "127.0.0.1:8080", "127.0.0.1:0", "127.0.0.1:0"]
[admin]
listen = "127.0.0.1:8080"
[[upstreams]]
name = "u"
backends = ["127.0.0.1:1"]
timeouts = { connect = "0s" }
[[routes]]
name = "r"
upstream = "u"
match = { path_regex = "^/(a", headers = { "x-a" = "bad\u0001value", "x-b" = "*" } }
timeouts = { read = "0ms" }
"#,
        ))
        .expect("parses");
        let lines: Vec<String> = config.validate().iter().map(|i| i.to_string()).collect();
        for expected in [
            "server.listen[1]: 127.0.0.1:8080 is listed twice",
            "admin.listen: 127.0.0.1:8080 is also a proxy listen address (server.listen)",
            "upstreams[0].timeouts.connect: must be greater than zero (leave it out for the default)",
            "routes[0].timeouts.read: must be greater than zero (leave it out for the default)",
            r#"routes[0].match.path_regex: invalid regex "^/(a": unclosed group"#,
            r#"routes[0].match.headers.x-a: "bad\u{1}value" is not a valid header value (no control characters)"#,
        ] {
            assert!(lines.iter().any(|l| l == expected), "missing {expected:?} in {lines:#?}");
        }
        assert_eq!(lines.len(), 6, "{lines:#?}");
    }

    #[test]
    fn cidrs_and_bare_addresses_parse() {
        assert!(parse_cidr("10.0.0.0/8").is_some());
        assert!(parse_cidr("::1").is_some());
        assert!(parse_cidr("192.168.1.7").is_some());
        assert!(parse_cidr("10.0.0.0/40").is_none());
    }

    fn observability_issues(section: &str) -> Vec<String> {
        let config =
            Config::parse(&Source::inline(format!("[observability]\n{section}"))).expect("parses");
        config.validate().iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn otlp_export_is_off_by_default_and_named_gatehouse() {
        let config = Config::parse(&Source::inline("")).expect("parses");
        assert_eq!(config.observability.otlp_endpoint, "");
        assert_eq!(config.observability.otlp_service_name, "gatehouse");
        assert!(observability_issues("otlp_endpoint = \"\"").is_empty());
    }

    #[test]
    fn an_otlp_endpoint_needs_the_feature_and_an_http_url() {
        let ok = observability_issues("otlp_endpoint = \"http://127.0.0.1:4318\"");
        let unbuilt = "observability.otlp_endpoint: this gateway was built without OTLP export \
                       (cargo feature `otlp`); rebuild with `--features otlp` or set it to \"\"";
        if cfg!(feature = "otlp") {
            assert!(ok.is_empty(), "{ok:#?}");
        } else {
            assert_eq!(ok, [unbuilt]);
        }
        for bad in ["127.0.0.1:4318", "grpc://collector:4317", "http://"] {
            let lines = observability_issues(&format!(
                "otlp_endpoint = {bad:?}\notlp_service_name = \" \""
            ));
            let url = format!(
                "observability.otlp_endpoint: {bad:?} is not an http:// or https:// URL \
                 (e.g. \"http://127.0.0.1:4318\")"
            );
            assert!(lines.contains(&url), "{bad}: {lines:#?}");
            assert!(
                lines.contains(&"observability.otlp_service_name: must not be empty".to_string()),
                "{lines:#?}"
            );
        }
    }
}
