//! The settings of the `rate_limit` and `concurrency_limit` kinds as operators write them, and
//! their checked forms (a parsed rate, parsed key parts, durations).

use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

/// `[filters.NAME] kind = "rate_limit"`: a GCRA limit per key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The sustained rate: `"N/s"`, `"N/m"` or `"N/h"` (N requests per second, minute, hour).
    pub rate: String,
    /// Requests a key may send at once from a full bucket; defaults to N of `rate`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// What identifies a bucket: any of `client_ip`, `route`, `"header:NAME"`,
    /// `"claim:NAME"`, combined in order. Defaults to `["client_ip"]`; `[]` is one bucket for
    /// every request through the filter.
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    /// What a request missing a key part (no such header, no such claim, no client IP) gets.
    #[serde(default)]
    pub on_missing_key: OnMissingKey,
    /// Where buckets live: this process (`local`, the default) or a Redis shared by replicas.
    #[serde(default)]
    pub store: StoreKind,
    /// Local store: most keys held at once (default 1 000 000); see the memory bound in the
    /// module docs. Beyond it new keys share one overflow bucket until a cleanup frees room.
    #[serde(default)]
    pub max_keys: Option<usize>,
    /// Local store: how often idle buckets are dropped and the table shrunk (default `"10s"`).
    #[serde(default)]
    pub cleanup_interval: Option<String>,
    /// Redis store: `redis://[user:pass@]host:port[/db]` (or `rediss://`, `unix://`).
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Redis store: prefix of every bucket key (default `"gatehouse:rl:"`); the filter name and
    /// a digest of the key follow it.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Redis store: the most one limit check may wait for Redis (default `"50ms"`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Redis store: what to do when Redis cannot answer in time (default `allow`).
    #[serde(default)]
    pub on_store_error: Option<OnStoreError>,
}

/// `[filters.NAME] kind = "concurrency_limit"`: a cap on requests in flight per key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimitConfig {
    /// Requests of one key that may be in flight at once.
    pub max: u32,
    /// Same syntax as the rate limit's `key`; defaults to `["client_ip"]`.
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    /// What a request missing a key part gets.
    #[serde(default)]
    pub on_missing_key: OnMissingKey,
    /// Status of the refusal: 429 (default: the key exceeded its share) or 503 (for a cap that
    /// protects a backend's capacity, e.g. `key = ["route"]`).
    #[serde(default = "default_concurrency_status")]
    pub status: u16,
}

impl RateLimitConfig {
    /// A local limit of `rate` per client IP, every other setting at its default.
    pub fn new(rate: &str) -> RateLimitConfig {
        RateLimitConfig {
            rate: rate.to_string(),
            burst: None,
            key: default_key(),
            on_missing_key: OnMissingKey::default(),
            store: StoreKind::default(),
            max_keys: None,
            cleanup_interval: None,
            redis_url: None,
            key_prefix: None,
            timeout: None,
            on_store_error: None,
        }
    }
}

impl ConcurrencyLimitConfig {
    /// At most `max` requests in flight per client IP, every other setting at its default.
    pub fn new(max: u32) -> ConcurrencyLimitConfig {
        ConcurrencyLimitConfig {
            max,
            key: default_key(),
            on_missing_key: OnMissingKey::default(),
            status: default_concurrency_status(),
        }
    }
}

fn default_key() -> Vec<String> {
    vec!["client_ip".to_string()]
}

fn default_concurrency_status() -> u16 {
    429
}

/// What a request gets when a key part is missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingKey {
    /// The part is the empty string: every such request shares that part's bucket.
    #[default]
    Empty,
    /// The request is not limited by this filter (and gets none of its headers).
    Skip,
    /// The request is answered 400 (`problem+json`, reason `missing_key`).
    Reject,
}

/// Where a rate limit keeps its buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this process (governor, a DashMap of buckets).
    #[default]
    Local,
    /// In Redis, so several gateway replicas share one limit.
    Redis,
}

/// What a Redis-backed limit does when Redis cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Fail open: let the request through unlimited.
    #[default]
    Allow,
    /// Fail closed: answer 503 (`problem+json`, reason `store_unavailable`).
    Deny,
}

/// A parsed `rate`: `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period.
    pub count: u32,
    /// One second, minute or hour.
    pub period: Duration,
}

impl Rate {
    /// Parse `"N/s"`, `"N/m"` or `"N/h"`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || format!("invalid rate {text:?}; write N/s, N/m or N/h, e.g. \"5/s\"");
        let (count, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("invalid rate {text:?}: N must be at least 1"));
        }
        let rate = Rate { count, period };
        if rate.emission_interval() < Duration::from_micros(1) {
            return Err(format!(
                "invalid rate {text:?}: at most one request per microsecond"
            ));
        }
        Ok(rate)
    }

    /// Time between two admitted requests at the sustained rate (GCRA's `T`).
    pub fn emission_interval(&self) -> Duration {
        self.period / self.count
    }

    /// The period in whole seconds (the `w` of `RateLimit-Policy`).
    pub fn window_secs(&self) -> u64 {
        self.period.as_secs()
    }
}

/// One part of a composite key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client IP (the nearest untrusted hop behind `server.trusted_proxies`).
    ClientIp,
    /// The route name.
    Route,
    /// Every value of a request header, in order.
    Header(HeaderName),
    /// A claim of the token verified by an earlier auth filter ([`crate::VerifiedClaims`]).
    Claim(String),
}

impl KeyPart {
    /// Parse one entry of `key`.
    pub fn parse(text: &str) -> Result<KeyPart, String> {
        match text {
            "client_ip" => return Ok(KeyPart::ClientIp),
            "route" => return Ok(KeyPart::Route),
            _ => {}
        }
        if let Some(name) = text.strip_prefix("header:") {
            return HeaderName::from_bytes(name.trim().as_bytes())
                .map(KeyPart::Header)
                .map_err(|_| format!("key {text:?}: {name:?} is not a header name"));
        }
        if let Some(name) = text.strip_prefix("claim:") {
            let name = name.trim();
            if name.is_empty() {
                return Err(format!("key {text:?}: the claim name is empty"));
            }
            return Ok(KeyPart::Claim(name.to_string()));
        }
        Err(format!(
            "unknown key part {text:?}; use client_ip, route, \"header:NAME\" or \"claim:NAME\""
        ))
    }

    /// Parse a whole `key` list.
    pub fn parse_all(parts: &[String]) -> Result<Vec<KeyPart>, String> {
        parts.iter().map(|p| KeyPart::parse(p)).collect()
    }
}

/// Parse an operator duration (`"50ms"`, `"10s"`) for the field `field`.
pub(crate) fn duration(field: &str, text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{field}: invalid duration {text:?} ({e}); write e.g. \"50ms\""))?;
    if d.is_zero() {
        return Err(format!("{field}: must be more than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_reject_nonsense() {
        let r = Rate::parse("5/s").unwrap();
        assert_eq!(r.count, 5);
        assert_eq!(r.emission_interval(), Duration::from_millis(200));
        assert_eq!(Rate::parse("120/m").unwrap().window_secs(), 60);
        assert_eq!(
            Rate::parse(" 3 / h ").unwrap().period,
            Duration::from_secs(3600)
        );
        for bad in ["5", "5/d", "0/s", "-1/s", "x/s", "", "/s", "2000000/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn key_parts_parse() {
        assert_eq!(KeyPart::parse("client_ip").unwrap(), KeyPart::ClientIp);
        assert_eq!(KeyPart::parse("route").unwrap(), KeyPart::Route);
        assert_eq!(
            KeyPart::parse("header:X-Client").unwrap(),
            KeyPart::Header(HeaderName::from_static("x-client"))
        );
        assert_eq!(
            KeyPart::parse("claim:sub").unwrap(),
            KeyPart::Claim("sub".into())
        );
        for bad in ["ip", "header:", "header:a b", "claim:", "Client_IP"] {
            assert!(KeyPart::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
