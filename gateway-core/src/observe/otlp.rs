//! OTLP/HTTP export of the per-request spans (cargo feature `otlp`).
//!
//! Each request's `tracing` span (see [`crate::proxy`]) becomes an OpenTelemetry span in the
//! W3C trace the request continues: its parent is the client's `traceparent` parent id, and its
//! own span id is the parent id the upstream receives, so a collector stitches client, gateway
//! and upstream into one trace.
//!
//! Spans leave in batches through [`gatehouse_otlp::Pipeline`] (protobuf over HTTP, sent
//! from a thread of its own). [`OtlpExporter::shutdown`] flushes what is queued.

pub use gatehouse_otlp::OtlpError;
use gatehouse_otlp::Pipeline;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::TraceContext;

/// A running span exporter: the tracer provider and the pipeline its HTTP client runs on.
/// Dropping it flushes like [`OtlpExporter::shutdown`], ignoring errors.
pub struct OtlpExporter {
    provider: SdkTracerProvider,
    pipeline: Pipeline,
    stopped: bool,
}

impl OtlpExporter {
    /// Start exporting to the OTLP/HTTP receiver at `endpoint` (a base URL such as
    /// `http://127.0.0.1:4318`; spans go to `/v1/traces` under it), naming this process
    /// `service_name` in the exported resource.
    pub fn start(endpoint: &str, service_name: &str) -> Result<OtlpExporter, OtlpError> {
        let pipeline = Pipeline::start()?;
        let exporter = pipeline.exporter(endpoint)?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_string())
                    .build(),
            )
            .build();
        Ok(OtlpExporter {
            provider,
            pipeline,
            stopped: false,
        })
    }

    /// The `tracing` layer that turns spans into exported ones. It has its own filter — the
    /// library's spans down to DEBUG, where the per-request span lives, and no events — so it
    /// can be stacked next to a console layer that keeps its INFO filter.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        let spans = filter_fn(|meta| {
            meta.is_span()
                && *meta.level() <= Level::DEBUG
                && meta.target().split("::").next() == Some("gateway_core")
        })
        .with_max_level_hint(LevelFilter::DEBUG);
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("gatehouse"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(spans)
    }

    /// Send every queued span and stop exporting.
    pub fn shutdown(mut self) -> Result<(), OtlpError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), OtlpError> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        let flushed = self.provider.shutdown().map_err(OtlpError::Flush);
        // Nothing runs on it any more: the provider's shutdown waited for the last export.
        self.pipeline.stop();
        flushed
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Put the request's `span` in the trace `trace` continues, and return the trace context to
/// forward with the exported span's ids in it.
///
/// The client's parent id (remote, with its sampled flag) becomes the span's OpenTelemetry
/// parent. The OpenTelemetry SDK picks the span's id itself, so that id — not the one
/// [`TraceContext::from_header`] drew — is what the upstream must see as its parent; for a
/// new trace the SDK's trace id replaces ours the same way. When no exporting layer records
/// the span, `trace` comes back unchanged.
pub fn join_trace(span: &tracing::Span, trace: TraceContext) -> TraceContext {
    if span.is_disabled() {
        return trace;
    }
    if let Some(parent) = trace.parent_id {
        let remote = SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent),
            TraceFlags::new(trace.flags),
            true,
            TraceState::default(),
        );
        let parent = opentelemetry::Context::new().with_remote_span_context(remote);
        if span.set_parent(parent).is_err() {
            return trace; // no exporting layer on this span
        }
    }
    let cx = span.context();
    let exported = cx.span().span_context().clone();
    if !exported.is_valid() {
        return trace;
    }
    TraceContext {
        trace_id: exported.trace_id().to_bytes(),
        span_id: exported.span_id().to_bytes(),
        ..trace
    }
}
