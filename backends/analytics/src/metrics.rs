//! The service's own metrics, on its `/metrics` beside the kit's HTTP ones.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::store::Counts;

/// Ingest outcomes and how far behind the rollups are.
#[derive(Clone)]
pub struct Metrics {
    /// Client events by outcome (`accepted`, `duplicate`, `conflict`, `late`, `bot`,
    /// `invalid`) and domain facts (`fact`).
    pub events: IntCounterVec,
    /// `events` resolved per outcome once, in [`Counts::pairs`] order.
    outcomes: [IntCounter; 6],
    /// `events{outcome="fact"}`.
    pub facts: IntCounter,
    /// How long after it occurred the last domain fact reached the rollups (ms): the
    /// consumer's lag (client events are rolled up in the request that brings them).
    pub rollup_lag_ms: IntGauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let events = IntCounterVec::new(
            Opts::new("analytics_events_total", "Events received, by outcome"),
            &["outcome"],
        )
        .expect("a valid counter");
        Metrics {
            outcomes: Counts::default()
                .pairs()
                .map(|(outcome, _)| events.with_label_values(&[outcome])),
            facts: events.with_label_values(&["fact"]),
            events,
            rollup_lag_ms: IntGauge::new(
                "analytics_rollup_lag_milliseconds",
                "How long after it occurred the last domain fact reached the rollups",
            )
            .expect("a valid gauge"),
        }
    }
}

impl Metrics {
    /// Adds them to `registry` (a service's `/metrics`).
    pub fn register(&self, registry: &Registry) {
        for c in [
            Box::new(self.events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.rollup_lag_ms.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::warn!(error = %e, "analytics metrics not registered");
            }
        }
    }

    /// Counts a batch's outcomes.
    pub fn count(&self, counts: &Counts) {
        for (counter, (_, n)) in self.outcomes.iter().zip(counts.pairs()) {
            if n > 0 {
                counter.inc_by(n as u64);
            }
        }
    }
}
