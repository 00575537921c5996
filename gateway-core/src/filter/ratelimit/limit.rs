//! `rate_limit`: the filter, choosing between the local and the Redis store.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

use super::config::{duration, KeyPart, OnStoreError, Rate, RateLimitConfig, StoreKind};
use super::gauge;
use super::headers::{ceil_secs, RateHeaders};
use super::key::{HashSecret, KeyOutcome, KeySpec, Sha, SipSink};
use super::local::LocalLimiter;
use super::redis::RedisLimiter;
use super::{missing_key_reply, Verdict};
use crate::filter::{Decision, Filter, FilterSpec, FilterState, Reply, RequestInfo};

/// Default `max_keys` of the local store.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// Default `cleanup_interval` of the local store.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(10);
/// Default `timeout` of Redis calls.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// The longest a bucket may take to fill (`burst × period / N`).
const MAX_FILL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default `key_prefix` of Redis buckets.
pub const DEFAULT_KEY_PREFIX: &str = "gatehouse:rl:";

/// The `rate_limit` filter.
pub struct RateLimit {
    name: Arc<str>,
    key: KeySpec,
    store: Store,
    headers: RateHeaders,
}

enum Store {
    Local {
        limiter: Arc<LocalLimiter>,
        hashing: HashSecret,
    },
    Redis {
        limiter: Box<RedisLimiter>,
        on_error: OnStoreError,
    },
}

impl RateLimit {
    /// Build from settings; errors name the offending setting. Connects to nothing.
    pub fn new(name: &str, config: RateLimitConfig) -> Result<RateLimit, String> {
        let rate = Rate::parse(&config.rate).map_err(|e| format!("rate: {e}"))?;
        let burst = match config.burst {
            None => rate.count,
            Some(0) => return Err("burst: must be at least 1".into()),
            Some(b) => b,
        };
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        // Keeps every time sum (now + fill, in ns locally and µs in Redis' Lua) far from overflow.
        let fill = rate.emission_interval().checked_mul(burst.get());
        if fill.is_none_or(|fill| fill > MAX_FILL) {
            return Err(format!(
                "burst: {burst} at {} fills in more than a year; lower it",
                config.rate
            ));
        }
        let key = KeySpec {
            parts: KeyPart::parse_all(&config.key).map_err(|e| format!("key: {e}"))?,
            on_missing: config.on_missing_key,
        };
        let store = match config.store {
            StoreKind::Local => local_store(name, &config, rate, burst)?,
            StoreKind::Redis => redis_store(name, &config, rate, burst)?,
        };
        Ok(RateLimit {
            name: Arc::from(name),
            key,
            store,
            headers: RateHeaders::new(
                name,
                rate.count,
                rate.window_secs(),
                burst.get(),
                rate.emission_interval() * burst.get(),
            ),
        })
    }

    /// The factory registered as `rate_limit`.
    pub fn factory(spec: &FilterSpec<'_>) -> Result<Arc<dyn Filter>, String> {
        Ok(Arc::new(RateLimit::new(spec.name, spec.parse()?)?))
    }

    /// Buckets the local store holds now (0 for Redis).
    pub fn key_count(&self) -> usize {
        match &self.store {
            Store::Local { limiter, .. } => limiter.len(),
            Store::Redis { .. } => 0,
        }
    }

    /// Bytes the local bucket table takes now (0 for Redis); at most
    /// [`super::MAX_BYTES_PER_KEY`] per key.
    pub fn table_bytes(&self) -> usize {
        match &self.store {
            Store::Local { limiter, .. } => limiter.table_bytes(),
            Store::Redis { .. } => 0,
        }
    }

    /// Drop idle buckets now (the request path also does this by itself).
    pub fn cleanup(&self) {
        if let Store::Local { limiter, .. } = &self.store {
            limiter.cleanup();
        }
    }

    /// Headers for the verdict, and the 429 when it refuses.
    fn decide(&self, verdict: Verdict, state: &mut FilterState) -> Decision {
        state
            .response_headers
            .extend(self.headers.for_verdict(&verdict));
        if verdict.allowed {
            return Decision::Continue;
        }
        let secs = ceil_secs(verdict.retry_after).max(1);
        let detail = format!("rate limit exceeded; retry in {secs} s");
        Decision::Respond(
            Reply::problem(StatusCode::TOO_MANY_REQUESTS, detail, "rate_limited")
                .with_header(http::header::RETRY_AFTER, HeaderValue::from(secs)),
        )
    }
}

fn local_store(
    name: &str,
    config: &RateLimitConfig,
    rate: Rate,
    burst: NonZeroU32,
) -> Result<Store, String> {
    for (set, field) in [
        (config.redis_url.is_some(), "redis_url"),
        (config.key_prefix.is_some(), "key_prefix"),
        (config.timeout.is_some(), "timeout"),
        (config.on_store_error.is_some(), "on_store_error"),
    ] {
        if set {
            return Err(format!("{field}: only for store = \"redis\""));
        }
    }
    let max_keys = config.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
    if max_keys == 0 {
        return Err("max_keys: must be at least 1".into());
    }
    let cleanup = match &config.cleanup_interval {
        Some(text) => duration("cleanup_interval", text)?,
        None => DEFAULT_CLEANUP_INTERVAL,
    };
    let limiter = Arc::new(LocalLimiter::new(rate, burst, max_keys, cleanup));
    let weak: std::sync::Weak<LocalLimiter> = Arc::downgrade(&limiter);
    gauge::track(name, weak);
    Ok(Store::Local {
        limiter,
        hashing: HashSecret::new(),
    })
}

fn redis_store(
    name: &str,
    config: &RateLimitConfig,
    rate: Rate,
    burst: NonZeroU32,
) -> Result<Store, String> {
    for (set, field) in [
        (config.max_keys.is_some(), "max_keys"),
        (config.cleanup_interval.is_some(), "cleanup_interval"),
    ] {
        if set {
            return Err(format!("{field}: only for store = \"local\""));
        }
    }
    let url = config
        .redis_url
        .as_deref()
        .ok_or("redis_url: required with store = \"redis\"")?;
    let timeout = match &config.timeout {
        Some(text) => duration("timeout", text)?,
        None => DEFAULT_REDIS_TIMEOUT,
    };
    let prefix = format!(
        "{}{name}:",
        config.key_prefix.as_deref().unwrap_or(DEFAULT_KEY_PREFIX)
    );
    Ok(Store::Redis {
        limiter: Box::new(RedisLimiter::new(url, prefix, timeout, rate, burst.get())?),
        on_error: config.on_store_error.unwrap_or_default(),
    })
}

#[async_trait]
impl Filter for RateLimit {
    /// A local limit never waits: it decides here; a Redis one waits for the store.
    fn decide_now(&self, req: &mut RequestInfo<'_>, state: &mut FilterState) -> Option<Decision> {
        let Store::Local { limiter, hashing } = &self.store else {
            return None;
        };
        let mut sink = SipSink::new(hashing);
        let verdict = match self.key.write(req, state, &mut sink) {
            KeyOutcome::Limit => limiter.check_and_tend(&sink.finish()),
            KeyOutcome::Skip => return Some(Decision::Continue),
            KeyOutcome::Reject => return Some(Decision::Respond(missing_key_reply(&self.key))),
        };
        Some(self.decide(verdict, state))
    }

    async fn on_request(&self, req: &mut RequestInfo<'_>, state: &mut FilterState) -> Decision {
        if let Some(decided) = self.decide_now(req, state) {
            return decided;
        }
        let Store::Redis { limiter, on_error } = &self.store else {
            unreachable!("decide_now answers for a local store");
        };
        let mut sink = Sha(Sha256::new());
        match self.key.write(req, state, &mut sink) {
            KeyOutcome::Limit => {}
            KeyOutcome::Skip => return Decision::Continue,
            KeyOutcome::Reject => return Decision::Respond(missing_key_reply(&self.key)),
        }
        let verdict = match limiter.check(&sink.hex()).await {
            Ok(verdict) => verdict,
            Err(e) => {
                let open = *on_error == OnStoreError::Allow;
                limiter.warn(&self.name, &e, open);
                crate::observe::metrics::shared::RATE_LIMIT_STORE_ERRORS
                    .with_label_values(&[&*self.name, if open { "allowed" } else { "denied" }])
                    .inc();
                state.response_headers.extend(self.headers.policy_only());
                if open {
                    return Decision::Continue;
                }
                return Decision::Respond(Reply::problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the rate-limit store is unavailable",
                    "store_unavailable",
                ));
            }
        };
        self.decide(verdict, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::ratelimit::key::tests::request;

    fn build(text: &str) -> Result<RateLimit, String> {
        let config: RateLimitConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        RateLimit::new("per-client", config)
    }

    async fn hit(f: &RateLimit, client: &str) -> (Decision, FilterState) {
        let mut header = request(&[("x-client", client)]);
        let mut info = RequestInfo {
            header: &mut header,
            client_ip: Some("192.0.2.1".parse().unwrap()),
            route: "r",
            request_id: "id",
        };
        let mut state = FilterState::default();
        let d = f.on_request(&mut info, &mut state).await;
        (d, state)
    }

    fn header<'a>(state: &'a FilterState, name: &str) -> &'a str {
        state
            .response_headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn ratelimit_filter_answers_429_with_headers_and_keys_apart() {
        let f = build("rate = \"5/s\"\nkey = [\"header:x-client\"]").unwrap();
        let mut admitted = 0;
        for _ in 0..20 {
            let (d, s) = hit(&f, "a").await;
            assert_eq!(header(&s, "ratelimit-policy"), "\"per-client\";q=5;w=1");
            match d {
                Decision::Continue => admitted += 1,
                Decision::Respond(r) => {
                    assert_eq!(r.status, 429);
                    assert_eq!(r.reason, "rate_limited");
                    assert_eq!(r.headers[0].1, "1", "Retry-After rounds 200 ms up");
                    assert_eq!(header(&s, "ratelimit"), "\"per-client\";r=0;t=1");
                    assert_eq!(header(&s, "x-ratelimit-remaining"), "0");
                }
            }
        }
        assert_eq!(admitted, 5, "burst defaults to N");
        assert!(matches!(hit(&f, "b").await.0, Decision::Continue));
        assert_eq!(f.key_count(), 2);
    }

    #[test]
    fn settings_are_checked() {
        let err = |t: &str| build(t).err().unwrap_or_default();
        assert!(err("rate = \"5/d\"").starts_with("rate:"));
        assert!(err("rate = \"5/s\"\nburst = 0").starts_with("burst:"));
        assert!(err("rate = \"1/h\"\nburst = 4000000000").starts_with("burst:"));
        assert!(
            build("rate = \"1/h\"\nburst = 8760").is_ok(),
            "a year exactly"
        );
        assert!(err("rate = \"5/s\"\nkey = [\"cookie:x\"]").starts_with("key:"));
        assert!(err("rate = \"5/s\"\nstore = \"redis\"").starts_with("redis_url:"));
        assert!(err("rate = \"5/s\"\nredis_url = \"redis://x\"").starts_with("redis_url:"));
        assert!(
            err("rate = \"5/s\"\nstore = \"redis\"\nredis_url = \"redis://x\"\nmax_keys = 5")
                .starts_with("max_keys:")
        );
        assert!(err("rate = \"5/s\"\ncleanup_interval = \"soon\"").starts_with("cleanup_interval:"));
        assert!(err("rate = \"5/s\"\nratee = 1").contains("unknown field"));
        assert!(err("rate = \"5/s\"\non_store_error = \"maybe\"").contains("unknown variant"));
        // Building a Redis limit connects to nothing (it may run outside a runtime).
        assert!(
            build("rate = \"5/s\"\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"").is_ok()
        );
    }

    /// The documented memory bound, as a number: a million distinct keys (the default cap)
    /// hold at most `MAX_BYTES_PER_KEY` bytes of table each. (The process RSS is measured in
    /// `tests/ratelimit_memory.rs`, alone in its binary.)
    #[test]
    fn ratelimit_a_million_keys_stay_within_the_documented_bound() {
        let limiter = LocalLimiter::new(
            Rate::parse("5/s").unwrap(),
            NonZeroU32::new(5).unwrap(),
            DEFAULT_MAX_KEYS,
            DEFAULT_CLEANUP_INTERVAL,
        );
        for i in 0..1_000_000u64 {
            limiter.check(&super::super::key::BucketKey(
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                i,
            ));
        }
        assert_eq!(limiter.len(), 1_000_000);
        let bytes = limiter.table_bytes();
        assert!(
            bytes <= super::super::MAX_BYTES_PER_KEY * 1_000_000,
            "{bytes} bytes for a million keys"
        );
        eprintln!(
            "a million keys: {bytes} bytes of table, {} per key",
            bytes / 1_000_000
        );
        // One more key finds the table full and shares the overflow bucket.
        limiter.check(&super::super::key::BucketKey(7, 7));
        assert_eq!(limiter.len(), 1_000_001);
        limiter.check(&super::super::key::BucketKey(8, 8));
        assert_eq!(limiter.len(), 1_000_001, "the cap holds");
    }
}
