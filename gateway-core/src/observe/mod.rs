//! Observability: the Prometheus metric set, W3C trace context, the JSON access log, and
//! (feature `otlp`) OTLP export of the per-request spans.

pub mod access_log;
pub(crate) mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod request_id;
pub mod trace;

pub use access_log::{AccessLog, AccessRecord};
pub use metrics::{Metrics, RouteMetrics};
pub use trace::TraceContext;
