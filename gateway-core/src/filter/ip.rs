//! `ip`: allow or deny clients by address.
//!
//! ```toml
//! [filters.office-only]
//! kind = "ip"
//! allow = ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]  # empty or absent: everyone
//! deny = ["10.6.6.0/24"]                                 # wins over allow
//! ```
//!
//! Entries are CIDRs or bare addresses. The address checked is
//! [`RequestInfo::client_ip`](super::RequestInfo): the peer's, or, when the peer is one of
//! `[server] trusted_proxies`, the nearest untrusted hop of `X-Forwarded-For` — so a client can
//! only claim an address through a proxy the operator trusts. IPv4-mapped IPv6 addresses
//! (`::ffff:10.1.2.3`) are checked as the IPv4 address they carry.
//!
//! | client address | `allow` | `deny` | answer |
//! |---|---|---|---|
//! | in `deny` | any | matches | 403 |
//! | not in `deny` | empty | — | forwarded |
//! | in `allow`, not in `deny` | matches | — | forwarded |
//! | not in `allow` | non-empty | — | 403 |
//! | unknown (not an IP socket) | non-empty | — | 403 |
//! | unknown | empty | — | forwarded |
//!
//! A refusal is `403 application/problem+json` with reason `ip_denied`; the detail does not
//! echo the address.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::StatusCode;
use ipnet::IpNet;
use serde::Deserialize;

use super::{Decision, Filter, FilterSpec, FilterState, Reply, RequestInfo};

/// Settings of an `ip` filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpConfig {
    /// CIDRs or addresses let through; empty lets everyone through who is not denied.
    #[serde(default)]
    pub allow: Vec<String>,
    /// CIDRs or addresses always refused, even when also allowed.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Builds an `ip` filter; every bad entry is reported at once.
pub fn factory(spec: &FilterSpec<'_>) -> Result<Arc<dyn Filter>, String> {
    let cfg: IpConfig = spec.parse()?;
    Ok(Arc::new(IpFilter::new(&cfg)?))
}

/// A compiled allow/deny list.
#[derive(Debug)]
pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpFilter {
    /// Compile the lists; `Err` names every entry that is not a CIDR or an address.
    pub fn new(cfg: &IpConfig) -> Result<IpFilter, String> {
        let mut errors = Vec::new();
        if cfg.allow.is_empty() && cfg.deny.is_empty() {
            errors
                .push("set `allow`, `deny` or both: this filter would let everyone through".into());
        }
        let allow = parse_list("allow", &cfg.allow, &mut errors);
        let deny = parse_list("deny", &cfg.deny, &mut errors);
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(IpFilter { allow, deny })
    }

    /// Whether a client at `ip` may pass.
    pub fn admits(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip.map(|ip| ip.to_canonical()) else {
            return self.allow.is_empty();
        };
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip))
    }
}

fn parse_list(field: &str, list: &[String], errors: &mut Vec<String>) -> Vec<IpNet> {
    let mut nets = Vec::with_capacity(list.len());
    for (i, text) in list.iter().enumerate() {
        match crate::config::parse_cidr(text.trim()) {
            Some(net) => nets.push(net.trunc()),
            None => errors.push(format!(
                "{field}[{i}]: {text:?} is not a CIDR (\"10.0.0.0/8\") or an address"
            )),
        }
    }
    nets
}

#[async_trait]
impl Filter for IpFilter {
    async fn on_request(&self, req: &mut RequestInfo<'_>, _state: &mut FilterState) -> Decision {
        if self.admits(req.client_ip) {
            return Decision::Continue;
        }
        Decision::Respond(Reply::problem(
            StatusCode::FORBIDDEN,
            "the client address is not allowed on this route",
            "ip_denied",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> Result<IpFilter, String> {
        IpFilter::new(&IpConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("test address"))
    }

    #[test]
    fn decisions_table() {
        let office = filter(
            &["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"],
            &["10.6.6.0/24"],
        )
        .expect("valid");
        let open = filter(&[], &["203.0.113.0/24"]).expect("valid");
        let cases = [
            (&office, ip("10.1.2.3"), true),
            (&office, ip("10.6.6.9"), false),
            (&office, ip("192.168.1.7"), true),
            (&office, ip("192.168.1.8"), false),
            (&office, ip("2001:db8::1"), true),
            (&office, ip("2001:db9::1"), false),
            (&office, ip("::ffff:10.1.2.3"), true),
            (&office, ip("::ffff:10.6.6.1"), false),
            (&office, None, false),
            (&open, ip("8.8.8.8"), true),
            (&open, ip("203.0.113.5"), false),
            (&open, None, true),
        ];
        for (i, (f, addr, admitted)) in cases.into_iter().enumerate() {
            assert_eq!(f.admits(addr), admitted, "case {i}: {addr:?}");
        }
    }

    #[test]
    fn bad_entries_are_all_reported() {
        let err = filter(&["10.0.0.0/33", "ok?"], &["300.1.1.1"]).expect_err("invalid");
        assert!(err.contains("allow[0]"), "{err}");
        assert!(err.contains("allow[1]"), "{err}");
        assert!(err.contains("deny[0]"), "{err}");
        assert!(filter(&[], &[]).is_err(), "an empty filter is a mistake");
    }

    #[test]
    fn unknown_settings_are_refused() {
        let table: toml::Table =
            toml::from_str("allow = []\nallowed = [\"10.0.0.0/8\"]").expect("toml");
        let spec = FilterSpec {
            name: "ip",
            settings: &table,
        };
        let err = factory(&spec).err().expect("unknown field");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[tokio::test]
    async fn refusal_is_a_problem_403() {
        let f = filter(&["10.0.0.0/8"], &[]).expect("valid");
        let mut req = pingora_http::RequestHeader::build("GET", b"/", None).expect("request");
        let mut info = RequestInfo {
            header: &mut req,
            client_ip: ip("127.0.0.1"),
            route: "r",
            request_id: "id",
        };
        match f.on_request(&mut info, &mut FilterState::default()).await {
            Decision::Respond(reply) => {
                assert_eq!(reply.status, StatusCode::FORBIDDEN);
                assert_eq!(reply.reason, "ip_denied");
                assert!(matches!(reply.body, super::super::ReplyBody::Problem(_)));
            }
            Decision::Continue => panic!("127.0.0.1 is outside 10.0.0.0/8"),
        }
    }
}
