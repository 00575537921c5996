//! `gatehouse_rate_limit_keys{filter}`: buckets held by each local rate limit, read when
//! `/metrics` is scraped (so the request path never touches it).
//!
//! Factories get no handle on a gateway's metrics, so live limiters are listed process-wide
//! (weakly: a limiter dropped by a reload disappears from the list) and every gateway's registry
//! holds a [`RateLimitKeys`] collector reading that list. Limiters of the same filter name (two
//! gateways in one process, or a replaced instance still serving its last requests) are summed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

/// Something holding keys.
pub(crate) trait KeyCount: Send + Sync {
    fn keys(&self) -> usize;
}

impl<C: governor::clock::Clock + Send + Sync + 'static> KeyCount for super::local::LocalLimiter<C> {
    fn keys(&self) -> usize {
        self.len()
    }
}

type Live = Vec<(Arc<str>, Weak<dyn KeyCount>)>;

static LIVE: Mutex<Live> = Mutex::new(Vec::new());

/// List a limiter under its filter name for as long as it lives.
pub(crate) fn track(filter: &str, limiter: Weak<dyn KeyCount>) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|(_, w)| w.strong_count() > 0);
    live.push((Arc::from(filter), limiter));
}

/// The Prometheus collector of `gatehouse_rate_limit_keys{filter}`; register one per registry.
pub struct RateLimitKeys {
    gauge: IntGaugeVec,
    /// Serializes scrapes: each one resets and refills the gauge.
    scrape: Mutex<()>,
}

impl RateLimitKeys {
    /// A collector over every live local rate limit of the process.
    pub fn new() -> RateLimitKeys {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "gatehouse_rate_limit_keys",
                "Buckets held by a local rate_limit filter (bounded by its max_keys).",
            ),
            &["filter"],
        )
        .expect("valid metric");
        RateLimitKeys {
            gauge,
            scrape: Mutex::new(()),
        }
    }
}

impl Default for RateLimitKeys {
    fn default() -> Self {
        RateLimitKeys::new()
    }
}

impl Collector for RateLimitKeys {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let mut sums: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        {
            let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            live.retain(|(_, w)| w.strong_count() > 0);
            for (name, limiter) in live.iter() {
                if let Some(l) = limiter.upgrade() {
                    *sums.entry(Arc::clone(name)).or_default() += l.keys();
                }
            }
        }
        self.gauge.reset();
        for (name, keys) in sums {
            self.gauge
                .with_label_values(&[&*name])
                .set(i64::try_from(keys).unwrap_or(i64::MAX));
        }
        self.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(usize);
    impl KeyCount for Fixed {
        fn keys(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn live_limiters_are_reported_and_dropped_ones_forgotten() {
        let a: Arc<dyn KeyCount> = Arc::new(Fixed(3));
        let b: Arc<dyn KeyCount> = Arc::new(Fixed(4));
        track("gauge-test-a", Arc::downgrade(&a));
        track("gauge-test-b", Arc::downgrade(&b));
        let registry = prometheus::Registry::new();
        registry.register(Box::new(RateLimitKeys::new())).unwrap();
        let text = |r: &prometheus::Registry| {
            let mut out = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        let first = text(&registry);
        assert!(
            first.contains("gatehouse_rate_limit_keys{filter=\"gauge-test-a\"} 3"),
            "{first}"
        );
        assert!(
            first.contains("gatehouse_rate_limit_keys{filter=\"gauge-test-b\"} 4"),
            "{first}"
        );
        drop(b);
        let second = text(&registry);
        assert!(!second.contains("gauge-test-b"), "{second}");
        drop(a);
    }
}
