//! The service's own metrics, on its `/metrics` beside the kit's HTTP ones.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Queue depth and send attempts.
#[derive(Clone)]
pub struct Metrics {
    /// Deliveries per state (`queued`, `sending`, `sent`, `failed`, `dead`, `dropped`),
    /// refreshed by the worker at most once a second.
    pub deliveries: IntGaugeVec,
    /// Attempts per channel and outcome (`sent`, `retry`, `dead`, `dropped`).
    pub attempts: IntCounterVec,
    /// WebSocket connections open now.
    pub websocket_clients: IntGauge,
    /// How long the oldest delivery that is due has waited (0 when none is due), measured
    /// at each scrape: it grows when the workers stop, which nothing they set would show.
    pub oldest_due_age: prometheus::Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            deliveries: IntGaugeVec::new(
                Opts::new(
                    "notification_deliveries",
                    "Deliveries in the queue, by state",
                ),
                &["state"],
            )
            .expect("a valid gauge"),
            attempts: IntCounterVec::new(
                Opts::new(
                    "notification_send_attempts_total",
                    "Send attempts, by channel and outcome",
                ),
                &["channel", "outcome"],
            )
            .expect("a valid counter"),
            websocket_clients: IntGauge::new(
                "notification_websocket_clients",
                "WebSocket connections open now",
            )
            .expect("a valid gauge"),
            oldest_due_age: prometheus::Gauge::new(
                "notification_oldest_due_age_seconds",
                "How long the oldest delivery due to be sent has waited (0 when none is due)",
            )
            .expect("a valid gauge"),
        }
    }
}

impl Metrics {
    /// Adds them to `registry` (a service's `/metrics`).
    pub fn register(&self, registry: &Registry) {
        for c in [
            Box::new(self.deliveries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.attempts.clone()),
            Box::new(self.websocket_clients.clone()),
            Box::new(self.oldest_due_age.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::warn!(error = %e, "notification metrics not registered");
            }
        }
    }
}
