//! `concurrency_limit`: at most `max` requests of one key in flight at once.
//!
//! An admitted request holds a permit in [`FilterState::extensions`]; the request context is
//! dropped when the request ends (answered, failed or abandoned by the client), and the permit
//! with it. A key's counter exists only while it has requests in flight, so the table is bounded
//! by the requests in flight, whatever the keys.

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use http::StatusCode;

use super::config::{ConcurrencyLimitConfig, KeyPart};
use super::headers::ConcurrencyHeaders;
use super::key::{BucketKey, HashSecret, KeyOutcome, KeySpec, SipSink};
use super::missing_key_reply;
use super::store::PassThrough;
use crate::filter::{Decision, Filter, FilterSpec, FilterState, Reply, RequestInfo};

/// The `concurrency_limit` filter: at most `max` requests of one key in flight at once.
///
/// Over the cap the answer is a `problem+json` **429** by default (reason `concurrency`): the key
/// (a client, a user) exceeded its share, and the fix is on its side (wait for its own requests
/// to finish); the draft RateLimit fields describe exactly this quota
/// (`qu="concurrent-requests"`). A 5xx would count against the gateway's error budget and can
/// make a CDN or load balancer in front of it mark the origin unhealthy. `status = 503` is there
/// for caps that protect a backend's capacity rather than divide it among clients
/// (`key = ["route"]`). No `Retry-After`: when a slot frees depends on other requests.
pub struct ConcurrencyLimit {
    max: u32,
    status: StatusCode,
    key: KeySpec,
    hashing: HashSecret,
    slots: Arc<Slots>,
    headers: ConcurrencyHeaders,
}

/// In-flight counts per key; a key is present only while it has requests in flight.
struct Slots {
    in_flight: DashMap<BucketKey, u32, PassThrough>,
}

impl Slots {
    /// Take a slot for `key` unless it has `max` already; the count after taking it.
    fn acquire(&self, key: BucketKey, max: u32) -> Option<u32> {
        let mut count = self.in_flight.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(*count)
    }

    fn release(&self, key: BucketKey) {
        if let Entry::Occupied(mut e) = self.in_flight.entry(key) {
            *e.get_mut() = e.get().saturating_sub(1);
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// One admitted request's slot; given back when dropped.
struct Permit {
    slots: Arc<Slots>,
    key: BucketKey,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.slots.release(self.key);
    }
}

/// The permits a request holds (one per concurrency filter on its route). Clones share them;
/// the slots are given back when the last clone goes.
#[derive(Clone, Default)]
struct HeldPermits(Vec<Arc<Permit>>);

impl ConcurrencyLimit {
    /// Build from settings; errors name the offending setting.
    pub fn new(name: &str, config: ConcurrencyLimitConfig) -> Result<ConcurrencyLimit, String> {
        if config.max == 0 {
            return Err("max: must be at least 1".into());
        }
        let status = match config.status {
            429 => StatusCode::TOO_MANY_REQUESTS,
            503 => StatusCode::SERVICE_UNAVAILABLE,
            other => return Err(format!("status: {other} is not 429 or 503")),
        };
        Ok(ConcurrencyLimit {
            max: config.max,
            status,
            key: KeySpec {
                parts: KeyPart::parse_all(&config.key)?,
                on_missing: config.on_missing_key,
            },
            hashing: HashSecret::new(),
            slots: Arc::new(Slots {
                in_flight: DashMap::with_hasher(PassThrough),
            }),
            headers: ConcurrencyHeaders::new(name, config.max),
        })
    }

    /// The factory registered as `concurrency_limit`.
    pub fn factory(spec: &FilterSpec<'_>) -> Result<Arc<dyn Filter>, String> {
        Ok(Arc::new(ConcurrencyLimit::new(spec.name, spec.parse()?)?))
    }

    /// Keys with requests in flight now.
    pub fn keys_in_flight(&self) -> usize {
        self.slots.in_flight.len()
    }
}

#[async_trait]
impl Filter for ConcurrencyLimit {
    async fn on_request(&self, req: &mut RequestInfo<'_>, state: &mut FilterState) -> Decision {
        let mut sink = SipSink::new(&self.hashing);
        match self.key.write(req, state, &mut sink) {
            KeyOutcome::Limit => {}
            KeyOutcome::Skip => return Decision::Continue,
            KeyOutcome::Reject => return Decision::Respond(missing_key_reply(&self.key)),
        }
        let key = sink.finish();
        let Some(count) = self.slots.acquire(key, self.max) else {
            state
                .response_headers
                .extend(self.headers.with_remaining(0));
            let detail = format!(
                "too many requests in flight for this client (at most {})",
                self.max
            );
            return Decision::Respond(Reply::problem(self.status, detail, "concurrency"));
        };
        let permit = Arc::new(Permit {
            slots: Arc::clone(&self.slots),
            key,
        });
        match state.extensions.get_mut::<HeldPermits>() {
            Some(held) => held.0.push(permit),
            None => {
                state.extensions.insert(HeldPermits(vec![permit]));
            }
        }
        state
            .response_headers
            .extend(self.headers.with_remaining(self.max - count));
        Decision::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::ratelimit::key::tests::request;

    fn limit(max: u32) -> ConcurrencyLimit {
        let config: ConcurrencyLimitConfig =
            toml::from_str(&format!("max = {max}\nkey = [\"header:x-client\"]")).unwrap();
        ConcurrencyLimit::new("slots", config).unwrap()
    }

    async fn run(f: &ConcurrencyLimit, client: &str) -> (Decision, FilterState) {
        let mut header = request(&[("x-client", client)]);
        let mut info = RequestInfo {
            header: &mut header,
            client_ip: None,
            route: "r",
            request_id: "id",
        };
        let mut state = FilterState::default();
        let d = f.on_request(&mut info, &mut state).await;
        (d, state)
    }

    #[tokio::test]
    async fn permits_are_held_by_the_request_state_and_given_back_on_drop() {
        let f = limit(2);
        let (d1, s1) = run(&f, "a").await;
        let (d2, s2) = run(&f, "a").await;
        assert!(matches!(d1, Decision::Continue));
        assert!(matches!(d2, Decision::Continue));
        assert_eq!(s2.response_headers[1].1, "\"slots\";r=0");
        let (d3, s3) = run(&f, "a").await;
        match d3 {
            Decision::Respond(r) => {
                assert_eq!(r.status, 429);
                assert_eq!(r.reason, "concurrency");
            }
            Decision::Continue => panic!("a third request in flight must be refused"),
        }
        drop(s3);
        // Another key has its own slots.
        let (d4, s4) = run(&f, "b").await;
        assert!(matches!(d4, Decision::Continue));
        assert_eq!(f.keys_in_flight(), 2);
        drop(s1);
        let (d5, _s5) = run(&f, "a").await;
        assert!(
            matches!(d5, Decision::Continue),
            "a finished request frees its slot"
        );
        drop((s2, s4, _s5));
        assert_eq!(f.keys_in_flight(), 0, "no key outlives its requests");
    }

    #[test]
    fn settings_are_checked() {
        let bad = |text: &str| {
            let config: ConcurrencyLimitConfig = toml::from_str(text).unwrap();
            ConcurrencyLimit::new("c", config).err().unwrap()
        };
        assert!(bad("max = 0").contains("max"));
        assert!(bad("max = 1\nstatus = 500").contains("status"));
        assert!(bad("max = 1\nkey = [\"nope\"]").contains("nope"));
        assert!(toml::from_str::<ConcurrencyLimitConfig>("max = 1\nburst = 2").is_err());
    }
}
