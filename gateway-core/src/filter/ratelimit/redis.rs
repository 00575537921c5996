//! The shared rate limit: GCRA in one Lua script run atomically by Redis, so every gateway
//! replica pointed at the same Redis admits a key's quota once between them.
//!
//! The script reads the bucket's theoretical arrival time (TAT, in µs), decides with Redis'
//! own clock (`TIME`, so replicas' clocks need not agree) and writes the new TAT with an expiry
//! equal to the time the bucket needs to be full again (a full bucket is no bucket). It is sent
//! with `EVALSHA` and loaded again when Redis answers `NOSCRIPT` (after a restart or `SCRIPT
//! FLUSH`).
//!
//! Every call is bounded by `timeout`. After a failure (error or timeout) Redis is not asked
//! again for [`RETRY_AFTER_FAILURE`]: those requests get `on_store_error` at once instead of
//! each waiting out the timeout. The connection is made on the first request (never at build
//! time, which may run outside an async runtime) and re-made in the background when it drops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::config::Rate;
use super::Verdict;

/// How long a failed Redis stays unasked.
pub(crate) const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Least time between two warnings about the store.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// GCRA, atomically. KEYS[1]: the bucket. ARGV[1]: T in µs. ARGV[2]: burst.
/// Returns {admitted (0|1), remaining, µs until full, µs until the next admission}.
const GCRA_LUA: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = tonumber(ARGV[1])
local tau = t * (tonumber(ARGV[2]) - 1)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat - tau
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
local new_tat = tat + t
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now + tau + t - new_tat) / t), new_tat - now, 0}
"#;

/// Why the store could not decide.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A failure less than [`RETRY_AFTER_FAILURE`] ago.
    #[error("redis failed recently; not asked")]
    Resting,
    /// The script answered something else than four integers.
    #[error("unexpected script answer {0:?}")]
    Answer(Vec<i64>),
}

/// A GCRA limit kept in Redis.
pub(crate) struct RedisLimiter {
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    script: redis::Script,
    /// `key_prefix` + filter name + `:`.
    prefix: String,
    timeout: Duration,
    interval_us: u64,
    burst: u32,
    epoch: Instant,
    /// Milliseconds after `epoch` before which Redis is not asked.
    resting_until_ms: AtomicU64,
    last_warn_ms: AtomicU64,
}

impl RedisLimiter {
    /// Parse the URL; nothing connects yet.
    pub(crate) fn new(
        url: &str,
        prefix: String,
        timeout: Duration,
        rate: Rate,
        burst: u32,
    ) -> Result<RedisLimiter, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis_url: {e}"))?;
        Ok(RedisLimiter {
            client,
            conn: OnceLock::new(),
            script: redis::Script::new(GCRA_LUA),
            prefix,
            timeout,
            interval_us: rate.emission_interval().as_micros().max(1) as u64,
            burst,
            epoch: Instant::now(),
            resting_until_ms: AtomicU64::new(0),
            last_warn_ms: AtomicU64::new(u64::MAX),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The connection, made lazily inside the async runtime serving requests.
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(RETRY_AFTER_FAILURE);
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.conn.get_or_init(|| made).clone())
    }

    /// Count one request against the bucket `digest`.
    pub(crate) async fn check(&self, digest: &str) -> Result<Verdict, StoreError> {
        if self.now_ms() < self.resting_until_ms.load(Ordering::Relaxed) {
            return Err(StoreError::Resting);
        }
        let result = self.eval(digest).await;
        if result.is_err() {
            self.resting_until_ms.store(
                self.now_ms() + RETRY_AFTER_FAILURE.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        result
    }

    async fn eval(&self, digest: &str) -> Result<Verdict, StoreError> {
        let mut conn = self.connection()?;
        let key = format!("{}{digest}", self.prefix);
        let mut call = self.script.key(key);
        call.arg(self.interval_us).arg(self.burst);
        let answer: Vec<i64> = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??;
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        match answer[..] {
            [1, remaining, reset, _] => Ok(Verdict::allowed(
                u32::try_from(remaining).unwrap_or(0),
                us(reset),
            )),
            [0, _, reset, retry] => Ok(Verdict::denied(us(retry), us(reset))),
            _ => Err(StoreError::Answer(answer)),
        }
    }

    /// Log a store failure, at most once per [`WARN_EVERY`] (never per request).
    pub(crate) fn warn(&self, filter: &str, error: &StoreError, fail_open: bool) {
        if matches!(error, StoreError::Resting) {
            return;
        }
        let now = self.now_ms();
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < WARN_EVERY.as_millis() as u64 {
            return;
        }
        if self
            .last_warn_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let action = if fail_open { "allowing" } else { "refusing" };
            tracing::warn!(filter, %error, "rate-limit store unavailable; {action} requests (on_store_error)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_url() -> Option<String> {
        let url = std::env::var("TEST_REDIS_URL").ok();
        if url.is_none() {
            eprintln!(
                "skipping: set TEST_REDIS_URL (e.g. redis://127.0.0.1:6379) to run this test"
            );
        }
        url
    }

    fn unique_prefix() -> String {
        use std::hash::{BuildHasher, RandomState};
        let salt = RandomState::new().hash_one(std::time::SystemTime::now());
        format!("gatehouse-test:{salt:x}:")
    }

    #[tokio::test]
    async fn the_script_admits_the_burst_once_and_times_the_retry() {
        let Some(url) = redis_url() else { return };
        let rate = Rate::parse("5/s").unwrap();
        let limiter =
            RedisLimiter::new(&url, unique_prefix(), Duration::from_secs(2), rate, 5).unwrap();
        let mut verdicts = Vec::new();
        for _ in 0..20 {
            verdicts.push(limiter.check("k").await.expect("redis answers"));
        }
        let remaining: Vec<u32> = verdicts
            .iter()
            .filter(|v| v.allowed)
            .map(|v| v.remaining)
            .collect();
        assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
        let refused = verdicts.iter().find(|v| !v.allowed).unwrap();
        assert!(
            refused.retry_after > Duration::ZERO
                && refused.retry_after <= Duration::from_millis(200),
            "{:?}",
            refused.retry_after
        );
        assert!(refused.reset <= Duration::from_secs(1));
        // Another key has its own bucket.
        assert!(limiter.check("other").await.unwrap().allowed);
        tokio::time::sleep(refused.retry_after + Duration::from_millis(20)).await;
        assert!(limiter.check("k").await.unwrap().allowed);
    }

    #[tokio::test]
    async fn a_closed_port_fails_fast_then_rests() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let rate = Rate::parse("5/s").unwrap();
        let url = format!("redis://127.0.0.1:{port}");
        let limiter =
            RedisLimiter::new(&url, unique_prefix(), Duration::from_millis(50), rate, 5).unwrap();
        let started = Instant::now();
        assert!(limiter.check("k").await.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(limiter.check("k").await, Err(StoreError::Resting)));
    }

    #[test]
    fn bad_urls_are_config_errors() {
        let rate = Rate::parse("5/s").unwrap();
        assert!(RedisLimiter::new(
            "http://x",
            String::new(),
            Duration::from_millis(50),
            rate,
            5
        )
        .is_err());
    }
}
