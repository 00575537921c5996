//! The response fields of a limited route.
//!
//! `RateLimit-Policy` and `RateLimit` follow draft-ietf-httpapi-ratelimit-headers-10 (same
//! syntax in -09 and -11): Structured-Field Lists whose items are the policy name as an
//! `sf-string` with integer parameters.
//!
//! ```text
//! RateLimit-Policy: "per-client";q=5;w=1          q requests per w seconds (the configured rate,
//!                                                 or burst per fill time when burst > rate)
//! RateLimit: "per-client";r=3;t=1                 r requests left now; t seconds (see below)
//! X-RateLimit-Limit: 5                            = q
//! X-RateLimit-Remaining: 3                        = r
//! X-RateLimit-Reset: 1                            seconds until the bucket is full again
//! Retry-After: 1                                  on a 429 only
//! ```
//!
//! All seconds are whole and rounded up. On an admitted request `t` is the time until the
//! bucket is full again (as `X-RateLimit-Reset`); on a 429 `t` equals `Retry-After`, as the
//! draft asks that `Retry-After` not point before the end of the effective window. A
//! `concurrency_limit` advertises `q=MAX;qu="concurrent-requests"` and `r` without `t`.
//! Several limits on one route each add their own item (a List split over field lines).

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::Verdict;

pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub(crate) const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub(crate) const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A policy name as a Structured-Field String: printable ASCII, `"` and `\` escaped, anything
/// else replaced by `_`.
pub(crate) fn sf_string(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

fn value(text: String) -> HeaderValue {
    // Built from an sf-string and digits only: always a valid value.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Most values kept ready per field (beyond, values are formatted per request).
const CACHE: u64 = 1024;

/// The fields of one rate-limit filter. The values a request can get are few (`r` is below
/// the burst, the seconds below the bucket's fill time), so they are built once and cloned (a
/// reference count), not formatted per request.
#[derive(Debug, Clone)]
pub(crate) struct RateHeaders {
    name: String,
    policy: HeaderValue,
    limit: HeaderValue,
    /// `X-RateLimit-Remaining` by `r`.
    remaining: Vec<HeaderValue>,
    /// `X-RateLimit-Reset` by seconds.
    seconds: Vec<HeaderValue>,
    /// `RateLimit` by `r × (max_t + 1) + t`, when that table is small.
    ratelimit: Vec<HeaderValue>,
    max_t: u64,
}

impl RateHeaders {
    /// For the filter `name` admitting `q` requests per `w` seconds, a full bucket of `burst`
    /// refilling in `fill` (the longest `t` there can be).
    ///
    /// The remaining count is measured against the bucket, so the stated quota is never
    /// below it: with `burst > q` the policy is the bucket itself, `burst` requests per
    /// `fill` (rounded up to the second), which keeps the sustained rate and never shows
    /// `r` above `q` (`rate = "10/s"`, `burst = 20` states `q=20;w=2`).
    pub(crate) fn new(name: &str, q: u32, w: u64, burst: u32, fill: Duration) -> RateHeaders {
        let (q, w) = if burst > q {
            (burst, ceil_secs(fill).max(1))
        } else {
            (q, w)
        };
        let name = sf_string(name);
        let max_r = u64::from(burst).min(CACHE);
        let max_t = ceil_secs(fill).clamp(1, CACHE);
        let ratelimit = if (max_r + 1) * (max_t + 1) <= 4 * CACHE {
            (0..=max_r)
                .flat_map(|r| (0..=max_t).map(move |t| (r, t)))
                .map(|(r, t)| value(format!("{name};r={r};t={t}")))
                .collect()
        } else {
            Vec::new()
        };
        RateHeaders {
            policy: value(format!("{name};q={q};w={w}")),
            limit: HeaderValue::from(q),
            remaining: (0..=max_r).map(HeaderValue::from).collect(),
            seconds: (0..=max_t).map(HeaderValue::from).collect(),
            ratelimit,
            max_t,
            name,
        }
    }

    /// The fields for one decision.
    pub(crate) fn for_verdict(&self, v: &Verdict) -> [(HeaderName, HeaderValue); 5] {
        let reset = ceil_secs(v.reset);
        let t = if v.allowed {
            reset
        } else {
            ceil_secs(v.retry_after).max(1)
        };
        let r = u64::from(v.remaining);
        let ratelimit = match self.ratelimit.get((r * (self.max_t + 1) + t) as usize) {
            Some(cached) if t <= self.max_t => cached.clone(),
            _ => item(&self.name, r, Some(t)),
        };
        [
            (RATELIMIT_POLICY, self.policy.clone()),
            (RATELIMIT, ratelimit),
            (X_LIMIT, self.limit.clone()),
            (X_REMAINING, cached(&self.remaining, r)),
            (X_RESET, cached(&self.seconds, reset)),
        ]
    }

    /// The fields when the store could not say (fail-open on a Redis error): the policy only.
    pub(crate) fn policy_only(&self) -> [(HeaderName, HeaderValue); 2] {
        [
            (RATELIMIT_POLICY, self.policy.clone()),
            (X_LIMIT, self.limit.clone()),
        ]
    }
}

/// `NAME;r=R;t=T` (or without `;t=`), written without `fmt`: a limit whose values lie beyond
/// the prebuilt tables formats one per request.
fn item(name: &str, r: u64, t: Option<u64>) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let mut out = Vec::with_capacity(name.len() + 48);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b";r=");
    out.extend_from_slice(digits.format(r).as_bytes());
    if let Some(t) = t {
        out.extend_from_slice(b";t=");
        out.extend_from_slice(digits.format(t).as_bytes());
    }
    // An sf-string and digits: always a valid value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(out))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `table[n]`, or `n` formatted.
fn cached(table: &[HeaderValue], n: u64) -> HeaderValue {
    match table.get(n as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(n),
    }
}

/// The fields of one concurrency-limit filter, built once.
#[derive(Debug, Clone)]
pub(crate) struct ConcurrencyHeaders {
    name: String,
    policy: HeaderValue,
    /// `RateLimit` by `r`.
    ratelimit: Vec<HeaderValue>,
}

impl ConcurrencyHeaders {
    pub(crate) fn new(name: &str, max: u32) -> ConcurrencyHeaders {
        let name = sf_string(name);
        ConcurrencyHeaders {
            policy: value(format!("{name};q={max};qu=\"concurrent-requests\"")),
            ratelimit: (0..=u64::from(max).min(CACHE))
                .map(|r| value(format!("{name};r={r}")))
                .collect(),
            name,
        }
    }

    /// The fields with `remaining` slots left for the key.
    pub(crate) fn with_remaining(&self, remaining: u32) -> [(HeaderName, HeaderValue); 2] {
        let ratelimit = match self.ratelimit.get(remaining as usize) {
            Some(v) => v.clone(),
            None => item(&self.name, u64::from(remaining), None),
        };
        [
            (RATELIMIT_POLICY, self.policy.clone()),
            (RATELIMIT, ratelimit),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn names_are_structured_field_strings() {
        assert_eq!(sf_string("per-client"), "\"per-client\"");
        assert_eq!(sf_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(sf_string("é\n"), "\"__\"");
    }

    #[test]
    fn fields_for_admitted_and_refused_requests() {
        let h = RateHeaders::new("default", 5, 1, 5, Duration::from_secs(1));
        let ok = h.for_verdict(&Verdict::allowed(3, Duration::from_millis(400)));
        let text: Vec<String> = ok
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        assert_eq!(
            text,
            [
                "ratelimit-policy: \"default\";q=5;w=1",
                "ratelimit: \"default\";r=3;t=1",
                "x-ratelimit-limit: 5",
                "x-ratelimit-remaining: 3",
                "x-ratelimit-reset: 1",
            ]
        );
        let no = h.for_verdict(&Verdict::denied(
            Duration::from_millis(2100),
            Duration::from_millis(2900),
        ));
        assert_eq!(no[1].1, "\"default\";r=0;t=3", "beyond the cached values");
        assert_eq!(no[4].1, "3");
        // Every cached value is the formatted one.
        for r in 0..=5 {
            for ms in [1, 999, 1000, 1001] {
                let v = h.for_verdict(&Verdict::allowed(r, Duration::from_millis(ms)));
                let t = ms.div_ceil(1000);
                assert_eq!(v[1].1, format!("\"default\";r={r};t={t}").as_str());
                assert_eq!(v[3].1, r.to_string().as_str());
                assert_eq!(v[4].1, t.to_string().as_str());
            }
        }
        let c = ConcurrencyHeaders::new("slots", 2).with_remaining(1);
        assert_eq!(c[0].1, "\"slots\";q=2;qu=\"concurrent-requests\"");
        assert_eq!(c[1].1, "\"slots\";r=1");
    }

    #[test]
    fn with_a_burst_above_the_rate_the_policy_is_the_bucket_and_remaining_stays_within_it() {
        // 10/s with a burst of 20: the bucket holds 20 and refills in 2 s.
        let h = RateHeaders::new("auth", 10, 1, 20, Duration::from_secs(2));
        let full = h.for_verdict(&Verdict::allowed(19, Duration::from_millis(100)));
        assert_eq!(full[0].1, "\"auth\";q=20;w=2");
        assert_eq!(full[2].1, "20", "X-RateLimit-Limit states the same quota");
        assert_eq!(full[3].1, "19");
        // A fill time that is not whole seconds is rounded up: the stated rate is never
        // above the real one.
        let h = RateHeaders::new("odd", 10, 1, 15, Duration::from_millis(1500));
        assert_eq!(h.policy_only()[0].1, "\"odd\";q=15;w=2");
        // A burst at or below the rate keeps the configured rate.
        let h = RateHeaders::new("small", 10, 1, 4, Duration::from_millis(400));
        assert_eq!(h.policy_only()[0].1, "\"small\";q=10;w=1");
        assert_eq!(h.policy_only()[1].1, "10");
    }

    #[test]
    fn concurrency_fields() {
        let c = ConcurrencyHeaders::new("slots", 2).with_remaining(1);
        assert_eq!(c[0].1, "\"slots\";q=2;qu=\"concurrent-requests\"");
        assert_eq!(c[1].1, "\"slots\";r=1");
    }
}
