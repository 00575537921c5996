//! Passive health: backends that keep failing real requests are ejected for a while, and
//! retries to a pool are held to a budget.
//!
//! **Outlier ejection** (Envoy's outlier detection, consecutive-failure flavour): a backend
//! whose last `consecutive_failures` attempts all failed (a connect failure, a broken or
//! timed-out exchange, or a 5xx answer) is left out of selection for `base_ejection_time`
//! times the number of times it has been ejected (capped by `max_ejection_time`). At most
//! `max_ejection_percent` of a pool is out at once (always at least one backend of a pool of
//! two or more, never the last one in service), so a pool-wide failure does not empty it. A backend comes back when its
//! time is up; each period after that without an ejection takes one off its count.
//!
//! **Retry budget** (Envoy's retry budgets): retries in flight to a pool may be at most
//! `percent` of the requests in flight to it, and never fewer than `min_concurrency`, so a
//! failing pool is not hit with a storm of retries on top of its load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{OutlierConfig, RetryBudgetConfig};

/// One backend's record.
#[derive(Debug, Default)]
struct Record {
    consecutive: AtomicU32,
    /// Times ejected, decayed by one per ejection period without one.
    times: AtomicU32,
    /// Ejected until this many ms after the pool's epoch; 0 when in service.
    until_ms: AtomicU64,
    /// When it last came back or last had its count decayed (ms after the epoch).
    settled_ms: AtomicU64,
    /// Ejections and returns so far, and how many of each the metrics have been told of.
    ejections: AtomicU64,
    returns: AtomicU64,
    published: [AtomicU64; 2],
}

/// What happened to an attempt, as far as outlier detection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered below 500.
    Success,
    /// A 5xx answer, or no answer (connect failure, reset, timeout).
    Failure,
}

/// A change outlier detection made, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The backend was taken out for this long.
    Ejected(Duration),
    /// The backend's time was up and it is back in service.
    Returned,
}

/// The ejection state of one pool's backends, in the pool's order.
#[derive(Debug)]
pub struct Outliers {
    config: OutlierConfig,
    epoch: Instant,
    records: Vec<Record>,
}

impl Outliers {
    /// Fresh records for `n` backends.
    pub fn new(config: &OutlierConfig, n: usize) -> Outliers {
        Outliers {
            config: config.clone(),
            epoch: Instant::now(),
            records: (0..n).map(|_| Record::default()).collect(),
        }
    }

    /// Carry `previous`'s records over for the backends both pools have (a reload that
    /// changed the pool keeps what it knew of the unchanged backends).
    pub fn carry_over(&mut self, addrs: &[SocketAddr], previous: &Outliers, old: &[SocketAddr]) {
        let shift = self.ms(Instant::now()) as i64 - previous.ms(Instant::now()) as i64;
        for (i, addr) in addrs.iter().enumerate() {
            let Some(j) = old.iter().position(|a| a == addr) else {
                continue;
            };
            let (from, to) = (&previous.records[j], &self.records[i]);
            let moved = |ms: u64| {
                if ms == 0 {
                    0
                } else {
                    (ms as i64 - shift).max(1) as u64
                }
            };
            to.consecutive
                .store(from.consecutive.load(Ordering::Relaxed), Ordering::Relaxed);
            to.times
                .store(from.times.load(Ordering::Relaxed), Ordering::Relaxed);
            to.until_ms.store(
                moved(from.until_ms.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            to.settled_ms.store(
                moved(from.settled_ms.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            for (a, b) in [
                (&from.ejections, &to.ejections),
                (&from.returns, &to.returns),
                (&from.published[0], &to.published[0]),
                (&from.published[1], &to.published[1]),
            ] {
                b.store(a.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        // Never 0, which means "not ejected".
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// Whether backend `i` is ejected now. A backend whose time is up is returned here
    /// (reported once, by whichever caller sees it first).
    pub fn is_ejected(&self, i: usize, now: Instant) -> (bool, Option<Transition>) {
        let record = &self.records[i];
        let until = record.until_ms.load(Ordering::Acquire);
        if until == 0 {
            return (false, None);
        }
        let now_ms = self.ms(now);
        if now_ms < until {
            return (true, None);
        }
        if record
            .until_ms
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            record.consecutive.store(0, Ordering::Relaxed);
            record.settled_ms.store(now_ms, Ordering::Relaxed);
            record.returns.fetch_add(1, Ordering::Relaxed);
            return (false, Some(Transition::Returned));
        }
        (false, None)
    }

    /// Backend `i`'s ejections and returns since the last call (for the metrics).
    pub fn unpublished(&self, i: usize) -> (u64, u64) {
        let r = &self.records[i];
        let delta = |total: &AtomicU64, published: &AtomicU64| {
            let total = total.load(Ordering::Relaxed);
            total.saturating_sub(published.swap(total, Ordering::Relaxed))
        };
        (
            delta(&r.ejections, &r.published[0]),
            delta(&r.returns, &r.published[1]),
        )
    }

    /// Backend `i`'s ejections so far.
    pub fn ejections(&self, i: usize) -> u64 {
        self.records[i].ejections.load(Ordering::Relaxed)
    }

    /// When backend `i`'s ejection ends, if it is ejected.
    pub fn ejected_for(&self, i: usize, now: Instant) -> Option<Duration> {
        let until = self.records[i].until_ms.load(Ordering::Acquire);
        let now_ms = self.ms(now);
        (until > now_ms).then(|| Duration::from_millis(until - now_ms))
    }

    /// Record an attempt's outcome on backend `i`; may eject it.
    pub fn record(&self, i: usize, outcome: Outcome, now: Instant) -> Option<Transition> {
        let record = &self.records[i];
        match outcome {
            Outcome::Success => {
                if record.consecutive.load(Ordering::Relaxed) != 0 {
                    record.consecutive.store(0, Ordering::Relaxed);
                }
                self.decay(record, now);
                None
            }
            Outcome::Failure => {
                let failures = record.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                if failures < self.config.consecutive_failures {
                    return None;
                }
                self.eject(i, now)
            }
        }
    }

    /// One ejection period in service takes one off the count of times ejected.
    fn decay(&self, record: &Record, now: Instant) {
        let times = record.times.load(Ordering::Relaxed);
        if times == 0 {
            return;
        }
        let now_ms = self.ms(now);
        let settled = record.settled_ms.load(Ordering::Relaxed);
        let period = self.config.base_ejection_time.as_millis() as u64;
        if record.until_ms.load(Ordering::Relaxed) == 0 && now_ms >= settled + period {
            record.settled_ms.store(now_ms, Ordering::Relaxed);
            let _ = record.times.compare_exchange(
                times,
                times - 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    fn eject(&self, i: usize, now: Instant) -> Option<Transition> {
        let now_ms = self.ms(now);
        let out = (0..self.records.len())
            .filter(|&j| self.records[j].until_ms.load(Ordering::Acquire) > now_ms)
            .count();
        let n = self.records.len();
        // At least one of two or more may go; the last one in service never does.
        let allowed = (n * self.config.max_ejection_percent as usize / 100)
            .max(usize::from(n > 1))
            .min(n.saturating_sub(1));
        if out >= allowed {
            return None;
        }
        let record = &self.records[i];
        let current = record.until_ms.load(Ordering::Acquire);
        if current > now_ms {
            return None; // already out
        }
        let times = record.times.load(Ordering::Relaxed) + 1;
        let time = (self.config.base_ejection_time * times).min(self.config.max_ejection_time);
        let until = now_ms + time.as_millis() as u64;
        if record
            .until_ms
            .compare_exchange(current, until, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        record.times.store(times, Ordering::Relaxed);
        record.consecutive.store(0, Ordering::Relaxed);
        record.ejections.fetch_add(1, Ordering::Relaxed);
        Some(Transition::Ejected(time))
    }
}

/// Requests and retries in flight to one pool, and the budget retries are held to.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    active: AtomicUsize,
    retries: AtomicUsize,
}

impl RetryBudget {
    /// A budget with nothing in flight.
    pub fn new(config: &RetryBudgetConfig) -> RetryBudget {
        RetryBudget {
            config: *config,
            active: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
        }
    }

    /// Count a request in flight to the pool until the token is dropped.
    pub fn enter(self: &Arc<Self>) -> BudgetToken {
        self.active.fetch_add(1, Ordering::Relaxed);
        BudgetToken {
            budget: Arc::clone(self),
            retrying: false,
        }
    }

    /// Whether the request holding `token` may be retried now; if so it counts as a retry
    /// in flight until it ends.
    pub fn allow_retry(&self, token: &mut BudgetToken) -> bool {
        if token.retrying {
            return true;
        }
        let active = self.active.load(Ordering::Relaxed);
        let cap = (active * self.config.percent as usize / 100).max(self.config.min_concurrency);
        let mut retries = self.retries.load(Ordering::Relaxed);
        loop {
            if retries >= cap {
                return false;
            }
            match self.retries.compare_exchange_weak(
                retries,
                retries + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    token.retrying = true;
                    return true;
                }
                Err(now) => retries = now,
            }
        }
    }
}

/// A request counted in flight to a pool (and, once retried, as a retry).
#[derive(Debug)]
pub struct BudgetToken {
    budget: Arc<RetryBudget>,
    retrying: bool,
}

impl Drop for BudgetToken {
    fn drop(&mut self) {
        self.budget.active.fetch_sub(1, Ordering::Relaxed);
        if self.retrying {
            self.budget.retries.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(failures: u32, percent: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: failures,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: percent,
        }
    }

    #[test]
    fn consecutive_failures_eject_for_a_time_that_grows_and_a_success_resets_the_count() {
        let o = Outliers::new(&config(3, 50), 2);
        let t0 = Instant::now();
        assert_eq!(o.record(0, Outcome::Failure, t0), None);
        assert_eq!(o.record(0, Outcome::Failure, t0), None);
        assert_eq!(o.record(0, Outcome::Success, t0), None);
        assert_eq!(o.record(0, Outcome::Failure, t0), None);
        assert_eq!(o.record(0, Outcome::Failure, t0), None);
        let ejected = o.record(0, Outcome::Failure, t0);
        assert_eq!(ejected, Some(Transition::Ejected(Duration::from_secs(10))));
        assert_eq!(o.is_ejected(0, t0 + Duration::from_secs(9)), (true, None));
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(o.is_ejected(0, t1), (false, Some(Transition::Returned)));
        assert_eq!(o.is_ejected(0, t1), (false, None), "returned once");
        for _ in 0..2 {
            o.record(0, Outcome::Failure, t1);
        }
        // Ejected a second time: twice as long; a third: capped at 25 s.
        let second = o.record(0, Outcome::Failure, t1);
        assert_eq!(second, Some(Transition::Ejected(Duration::from_secs(20))));
        let t2 = t1 + Duration::from_secs(21);
        assert!(!o.is_ejected(0, t2).0);
        for _ in 0..2 {
            o.record(0, Outcome::Failure, t2);
        }
        let third = o.record(0, Outcome::Failure, t2);
        assert_eq!(third, Some(Transition::Ejected(Duration::from_secs(25))));
    }

    #[test]
    fn no_more_than_the_share_is_ejected_but_one_of_two_always_may_be() {
        let o = Outliers::new(&config(1, 10), 2);
        let now = Instant::now();
        assert!(matches!(
            o.record(0, Outcome::Failure, now),
            Some(Transition::Ejected(_))
        ));
        assert_eq!(
            o.record(1, Outcome::Failure, now),
            None,
            "the last backend stays"
        );
        let single = Outliers::new(&config(1, 100), 1);
        assert_eq!(
            single.record(0, Outcome::Failure, now),
            None,
            "a pool of one"
        );
    }

    #[test]
    fn records_carry_over_for_unchanged_backends() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let old = Outliers::new(&config(1, 50), 2);
        let now = Instant::now();
        assert!(old.record(1, Outcome::Failure, now).is_some());
        let mut new = Outliers::new(&config(1, 50), 2);
        new.carry_over(&[b, c], &old, &[a, b]);
        assert!(new.is_ejected(0, Instant::now()).0, "b stays out");
        assert!(!new.is_ejected(1, Instant::now()).0);
    }

    #[test]
    fn retries_in_flight_stay_within_the_budget() {
        let budget = Arc::new(RetryBudget::new(&RetryBudgetConfig {
            percent: 20,
            min_concurrency: 2,
        }));
        let mut tokens: Vec<_> = (0..20).map(|_| budget.enter()).collect();
        // 20 % of 20 in flight is 4.
        let allowed = tokens
            .iter_mut()
            .map(|t| budget.allow_retry(t))
            .filter(|&ok| ok)
            .count();
        assert_eq!(allowed, 4);
        drop(tokens);
        let mut few: Vec<_> = (0..3).map(|_| budget.enter()).collect();
        let allowed = few
            .iter_mut()
            .map(|t| budget.allow_retry(t))
            .filter(|&ok| ok)
            .count();
        assert_eq!(allowed, 2, "the minimum applies when little is in flight");
    }
}
