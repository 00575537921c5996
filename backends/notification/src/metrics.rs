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
        ] {
            if let Err(e) = registry.register(c) {
                tracing::warn!(error = %e, "notification metrics not registered");
            }
        }
    }
}
