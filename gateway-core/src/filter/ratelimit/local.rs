//! The in-process rate limit: governor's keyed GCRA over a [`CappedStore`], with cleanups
//! driven from the request path.
//!
//! Filters may be built where no async runtime runs (`gateway check`), so nothing is spawned
//! at build time: every [`CHECK_EVERY`]th check looks at the clock, and when `cleanup_interval`
//! has passed (or the table filled up, at most once a second) one cleanup runs on tokio's
//! blocking pool, or inline when there is no runtime.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, QuantaClock};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::{Quota, RateLimiter};

use super::config::Rate;
use super::key::BucketKey;
use super::store::CappedStore;
use super::Verdict;

/// Checks between two looks at the clock for a due cleanup.
pub(crate) const CHECK_EVERY: u64 = 256;

/// Least time between two cleanups forced by a full table.
const FULL_CLEANUP_SPACING: Duration = Duration::from_secs(1);

type Gcra<C> = RateLimiter<BucketKey, CappedStore, C, StateInformationMiddleware>;

/// A keyed GCRA limit held in this process.
pub(crate) struct LocalLimiter<C: Clock = QuantaClock> {
    gcra: Gcra<C>,
    /// The table the limiter owns, shared to count and measure it.
    store: CappedStore,
    /// GCRA's `T`: time between admitted requests at the sustained rate.
    interval: Duration,
    burst: u32,
    cleanup_interval: Duration,
    checks: AtomicU64,
    epoch: Instant,
    /// Milliseconds after `epoch` when the last cleanup started.
    last_cleanup_ms: AtomicU64,
    cleaning: AtomicBool,
}

impl LocalLimiter<QuantaClock> {
    pub(crate) fn new(
        rate: Rate,
        burst: NonZeroU32,
        max_keys: usize,
        cleanup_interval: Duration,
    ) -> LocalLimiter {
        LocalLimiter::with_clock(
            rate,
            burst,
            max_keys,
            cleanup_interval,
            QuantaClock::default(),
        )
    }
}

impl<C: Clock + Send + Sync + 'static> LocalLimiter<C> {
    pub(crate) fn with_clock(
        rate: Rate,
        burst: NonZeroU32,
        max_keys: usize,
        cleanup_interval: Duration,
        clock: C,
    ) -> LocalLimiter<C> {
        let interval = rate.emission_interval();
        // `Rate::parse` guarantees an interval of at least 1 µs, so the quota always exists.
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let store = CappedStore::new(max_keys);
        LocalLimiter {
            gcra: RateLimiter::<_, _, _, NoOpMiddleware<C::Instant>>::new(
                quota,
                store.clone(),
                clock,
            )
            .with_middleware(),
            store,
            interval,
            burst: burst.get(),
            cleanup_interval,
            checks: AtomicU64::new(0),
            epoch: Instant::now(),
            last_cleanup_ms: AtomicU64::new(0),
            cleaning: AtomicBool::new(false),
        }
    }

    /// Count one request against `key`.
    ///
    /// On admission governor reports the burst left (`remaining`) but not the bucket's exact
    /// fill time, so `reset` is the upper bound `(burst − remaining) × T`, which overstates the
    /// true time to a full bucket by less than one `T`. A refusal's `retry_after` is exact.
    pub(crate) fn check(&self, key: &BucketKey) -> Verdict {
        match self.gcra.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Verdict::allowed(
                    remaining,
                    self.interval * self.burst.saturating_sub(remaining),
                )
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.gcra.clock().now());
                Verdict::denied(wait, wait + self.interval * (self.burst - 1))
            }
        }
    }

    /// [`LocalLimiter::check`], then start a cleanup when one is due.
    pub(crate) fn check_and_tend(self: &Arc<Self>, key: &BucketKey) -> Verdict {
        let verdict = self.check(key);
        if self.checks.fetch_add(1, Ordering::Relaxed) % CHECK_EVERY == CHECK_EVERY - 1 {
            self.maybe_cleanup();
        }
        verdict
    }

    /// Buckets held now (the overflow bucket included).
    pub(crate) fn len(&self) -> usize {
        self.store.len()
    }

    /// Bytes the bucket table takes now.
    pub(crate) fn table_bytes(&self) -> usize {
        self.store.table_bytes()
    }

    /// Drop buckets that are full again (no different from absent ones) and give their room
    /// back.
    pub(crate) fn cleanup(&self) {
        self.gcra.retain_recent();
        self.gcra.shrink_to_fit();
    }

    fn maybe_cleanup(self: &Arc<Self>) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let since = Duration::from_millis(
            now_ms.saturating_sub(self.last_cleanup_ms.load(Ordering::Relaxed)),
        );
        let due = since >= self.cleanup_interval
            || (self.store.is_full() && since >= FULL_CLEANUP_SPACING);
        if !due || self.cleaning.swap(true, Ordering::Acquire) {
            return;
        }
        self.last_cleanup_ms.store(now_ms, Ordering::Relaxed);
        // The flag is cleared when the job ends, panics, or is dropped unrun (a runtime
        // shutting down), so cleanups never stop for good.
        let turn = CleanupTurn(Arc::clone(self));
        let run = move || turn.0.cleanup();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(run)),
            Err(_) => run(),
        }
    }
}

/// The right to run the one cleanup in progress; gives it back when dropped.
struct CleanupTurn<C: Clock>(Arc<LocalLimiter<C>>);

impl<C: Clock> Drop for CleanupTurn<C> {
    fn drop(&mut self) {
        self.0.cleaning.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(
        rate: &str,
        burst: u32,
        max_keys: usize,
    ) -> (LocalLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let l = LocalLimiter::with_clock(
            Rate::parse(rate).unwrap(),
            NonZeroU32::new(burst).unwrap(),
            max_keys,
            Duration::from_secs(10),
            clock.clone(),
        );
        (l, clock)
    }

    const K: BucketKey = BucketKey(1, 2);

    #[test]
    fn a_burst_of_20_admits_exactly_5_then_retry_after_is_exact() {
        let (l, clock) = limiter("5/s", 5, 100);
        let verdicts: Vec<Verdict> = (0..20).map(|_| l.check(&K)).collect();
        let admitted: Vec<u32> = verdicts
            .iter()
            .filter(|v| v.allowed)
            .map(|v| v.remaining)
            .collect();
        assert_eq!(admitted, vec![4, 3, 2, 1, 0]);
        let refused = &verdicts[5];
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(200));
        assert_eq!(refused.reset, Duration::from_secs(1));
        // Just before the retry time: still refused; at it: admitted.
        clock.advance(Duration::from_millis(199));
        assert!(!l.check(&K).allowed);
        clock.advance(Duration::from_millis(1));
        assert!(l.check(&K).allowed);
        // A whole second later the bucket is full again.
        clock.advance(Duration::from_secs(1));
        let again: usize = (0..20).filter(|_| l.check(&K).allowed).count();
        assert_eq!(again, 5);
    }

    #[test]
    fn reset_on_admission_overstates_by_less_than_one_interval() {
        let (l, clock) = limiter("5/s", 5, 100);
        let t = Duration::from_millis(200);
        // Spend 3, then let 50 ms pass: the true time to full is 3 × 200 − 50 = 550 ms.
        for _ in 0..3 {
            l.check(&K);
        }
        clock.advance(Duration::from_millis(50));
        let v = l.check(&K);
        let truth = Duration::from_millis(4 * 200 - 50);
        assert!(v.allowed);
        assert_eq!(v.remaining, 1);
        assert!(v.reset >= truth && v.reset < truth + t, "{:?}", v.reset);
    }

    /// River-style bound: over 10 s at twice the rate, admissions stay within ±10 % of
    /// `burst + rate × 10 s`.
    #[test]
    fn the_sustained_rate_is_held_within_ten_percent() {
        let (l, clock) = limiter("50/s", 10, 100);
        let mut admitted = 0u32;
        for _ in 0..1000 {
            if l.check(&K).allowed {
                admitted += 1;
            }
            clock.advance(Duration::from_millis(10)); // 100 requests/s offered
        }
        let expected = 10.0 + 50.0 * 10.0;
        let error = (f64::from(admitted) - expected).abs() / expected;
        assert!(error <= 0.10, "admitted {admitted}, expected ~{expected}");
        // GCRA is exact here: one admission per 20 ms plus the burst.
        assert!((admitted as i64 - 509).abs() <= 1, "{admitted}");
    }

    #[test]
    fn cleanup_drops_full_buckets_only() {
        let (l, clock) = limiter("1/s", 2, 100);
        for i in 0..50u64 {
            l.check(&BucketKey(i + 10, i)); // full again at t = 1 s
        }
        clock.advance(Duration::from_secs(1));
        l.check(&K);
        l.check(&K); // full again at t = 3 s
        assert_eq!(l.len(), 51);
        clock.advance(Duration::from_millis(1500));
        l.cleanup();
        // governor keeps a bucket until one interval after it is full: only K's is left.
        assert_eq!(l.len(), 1);
        assert_eq!(l.check(&K).remaining, 0, "K kept its state");
        assert_eq!(
            l.check(&BucketKey(10, 0)).remaining,
            1,
            "a dropped key starts full"
        );
    }

    #[test]
    fn cleanups_run_from_the_request_path_without_a_runtime() {
        let clock = FakeRelativeClock::default();
        let l = Arc::new(LocalLimiter::with_clock(
            Rate::parse("1/s").unwrap(),
            NonZeroU32::MIN,
            1000,
            Duration::from_millis(1),
            clock.clone(),
        ));
        for i in 0..100u64 {
            l.check_and_tend(&BucketKey(i + 10, i));
        }
        clock.advance(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(5));
        for _ in 0..CHECK_EVERY {
            l.check_and_tend(&K);
        }
        assert_eq!(l.len(), 1, "the 100 refilled buckets were dropped");
    }
}
