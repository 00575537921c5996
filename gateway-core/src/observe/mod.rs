//! Observability: the Prometheus metric set of one gateway.

mod metrics;

pub use metrics::Metrics;
