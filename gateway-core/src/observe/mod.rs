//! Observability: the Prometheus metric set, W3C trace context, and the JSON access log.

pub mod access_log;
mod metrics;
pub mod trace;

pub use access_log::{AccessLog, AccessRecord};
pub use metrics::Metrics;
pub use trace::TraceContext;
