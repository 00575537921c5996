//! Rate limits: `rate_limit` (GCRA per key, in this process or in Redis) and
//! `concurrency_limit` (requests in flight per key).
//!
//! # `rate_limit`
//!
//! ```toml
//! [filters.per-client]
//! kind = "rate_limit"
//! rate = "5/s"                # N/s, N/m or N/h: the sustained rate
//! burst = 5                   # requests at once from a full bucket (default: N)
//! key = ["client_ip"]         # any of client_ip, route, "header:NAME", "claim:NAME" (default ["client_ip"])
//! on_missing_key = "empty"    # empty (the part is ""), skip (not limited), reject (400)
//! store = "local"             # local (default) or redis
//! max_keys = 1000000          # local: most buckets held (default 1 000 000)
//! cleanup_interval = "10s"    # local: how often idle buckets are dropped
//! # store = "redis"
//! # redis_url = "redis://127.0.0.1:6379"
//! # key_prefix = "gatehouse:rl:"   # + filter name + ":" + digest of the key
//! # timeout = "50ms"               # the most a check waits for Redis
//! # on_store_error = "allow"       # allow (fail open) or deny (503, reason store_unavailable)
//! ```
//!
//! The algorithm is GCRA (governor locally, a Lua script in Redis): with `T = period / N` and
//! a full bucket of `burst`, a key is admitted at most `burst` requests at once and one more
//! every `T`. Key parts are combined in order, each framed as a tag, a value count and
//! length-prefixed values, so different requests never make the same key (`["a:b", "c"]` is
//! not `["a", "b:c"]`); `client_ip` honours `server.trusted_proxies`, `claim:NAME` reads the
//! claims an earlier auth filter on the route verified (`VerifiedClaims`), `header:NAME` takes
//! every value of the header in order.
//!
//! ## Response fields
//!
//! Every response of a limited route (proxied or answered by the gateway) carries:
//!
//! ```text
//! RateLimit-Policy: "per-client";q=5;w=1   q requests per w seconds: the configured rate,
//!                                          or the bucket (burst per fill time) when burst > rate
//! RateLimit: "per-client";r=3;t=1          r requests left now; t seconds (below)
//! X-RateLimit-Limit: 5                     = q
//! X-RateLimit-Remaining: 3                 = r
//! X-RateLimit-Reset: 1                     seconds until the bucket is full again
//! ```
//!
//! `RateLimit-Policy` and `RateLimit` follow draft-ietf-httpapi-ratelimit-headers-10 (the same
//! syntax as -09 and -11): Structured-Field Lists whose items are the policy (the filter name,
//! as an `sf-string`) with integer parameters; several limits on a route each add their item.
//! Seconds are whole and rounded up. On an admitted request `t` is the time until the bucket
//! is full again; on a refusal `t` equals `Retry-After`, as the draft asks that `Retry-After`
//! not point before the end of the effective window. A refusal is a 429 `problem+json` with
//! `Retry-After`, counted as `gatehouse_filter_decisions_total{reason="rate_limited"}`.
//!
//! ## Error bounds
//!
//! * Admission is exact GCRA: within any span `d`, a key is admitted at most
//!   `burst + ⌊d / T⌋` requests (tested to the request, and as a sustained rate within ±10 %).
//! * `Retry-After` is the exact wait until the next admission, rounded up to the second.
//! * Locally, `X-RateLimit-Reset` and `t` on an admitted request are `(burst − remaining) × T`
//!   rounded up: they overstate the time until the bucket is full by less than one `T`
//!   (governor reports the burst left, not the fill time). Redis reports it exactly.
//! * Locally, buckets are per process: N replicas each admit the full quota. Use
//!   `store = "redis"` for one limit across replicas (one round trip per request).
//! * Two different keys share a bucket only if their 128-bit hashes collide: probability
//!   about n²/2¹²⁹ for n keys, nil in practice.
//! * Local state survives a reload that leaves the filter's declaration unchanged (the same
//!   filter instance is kept); changing the declaration starts with empty buckets.
//!
//! ## Memory bound (local store)
//!
//! A bucket costs at most [`MAX_BYTES_PER_KEY`] = 64 bytes of table, whatever the request
//! sends (keys are hashed, never stored), and at most `max_keys` (+1) buckets are held: at most
//! 64 MB at the default cap (measured: ~52 bytes per key at a million keys). Keys arriving while
//! the table is full share one overflow bucket (limited together) until a cleanup makes room.
//! Cleanups drop buckets that are full again every `cleanup_interval` of traffic (at most once a
//! second while the table is full) and shrink the table; they run from the request path (every
//! 256th check looks at the clock) on tokio's blocking pool. `gatehouse_rate_limit_keys{filter}`
//! reports the buckets held. The 64 bytes: an entry is 24 bytes (a 16-byte key hash and
//! governor's 8-byte state) plus a control byte, in hashbrown tables filled to between 7/16
//! and 7/8, so at most `25 × 16/7 ≈ 57` bytes per key; while one DashMap shard doubles, that
//! shard (1/shards of the table) briefly needs half again as much.
//!
//! ## Redis store
//!
//! One atomic Lua script (`EVALSHA`, reloaded on `NOSCRIPT`) per request, timed by Redis'
//! clock, so replicas share one limit without agreeing on time. Each call is bounded by
//! `timeout`; on an error or timeout `on_store_error` decides (`allow`: the request passes with
//! only `RateLimit-Policy`/`X-RateLimit-Limit`; `deny`: 503 `problem+json`, reason
//! `store_unavailable`), and Redis is left alone for a second so an outage does not cost every
//! request the timeout. Failures are logged at most every 10 s. A bucket is the Redis key
//! `key_prefix` + filter name + `:` + 128 bits of SHA-256 of the framed key (the same on every
//! replica), holding the theoretical arrival time and expiring when the bucket is full again.
//!
//! # `concurrency_limit`
//!
//! ```toml
//! [filters.slots]
//! kind = "concurrency_limit"
//! max = 10                    # requests of one key in flight at once
//! key = ["client_ip"]         # same syntax as rate_limit
//! on_missing_key = "empty"
//! status = 429                # or 503 for a capacity guard (e.g. key = ["route"])
//! ```
//!
//! See [`ConcurrencyLimit`] for why 429 is the default.

mod concurrency;
mod config;
mod gauge;
mod headers;
mod key;
mod limit;
mod local;
mod redis;
mod store;

use std::time::Duration;

use http::StatusCode;

pub use concurrency::ConcurrencyLimit;
pub use config::{
    ConcurrencyLimitConfig, KeyPart, OnMissingKey, OnStoreError, Rate, RateLimitConfig, StoreKind,
};
pub use gauge::RateLimitKeys;
pub(crate) use key::fuzz as fuzz_key;
pub use limit::{
    RateLimit, DEFAULT_CLEANUP_INTERVAL, DEFAULT_KEY_PREFIX, DEFAULT_MAX_KEYS,
    DEFAULT_REDIS_TIMEOUT,
};
pub use store::MAX_BYTES_PER_KEY;

use crate::filter::Reply;

/// One limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Admitted or refused.
    pub(crate) allowed: bool,
    /// Requests the key may still send at once (0 when refused).
    pub(crate) remaining: u32,
    /// Until the bucket is full again.
    pub(crate) reset: Duration,
    /// Until the next request would be admitted (zero when admitted).
    pub(crate) retry_after: Duration,
}

impl Verdict {
    pub(crate) fn allowed(remaining: u32, reset: Duration) -> Verdict {
        Verdict {
            allowed: true,
            remaining,
            reset,
            retry_after: Duration::ZERO,
        }
    }

    pub(crate) fn denied(retry_after: Duration, reset: Duration) -> Verdict {
        Verdict {
            allowed: false,
            remaining: 0,
            reset,
            retry_after,
        }
    }
}

/// The 400 for a request missing a key part under `on_missing_key = "reject"`.
fn missing_key_reply(key: &key::KeySpec) -> Reply {
    Reply::problem(
        StatusCode::BAD_REQUEST,
        format!(
            "this route is limited per {}; the request lacks a part of it",
            key.describe()
        ),
        "missing_key",
    )
}
