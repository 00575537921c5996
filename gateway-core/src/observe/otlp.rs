//! OTLP/HTTP export of the per-request spans (cargo feature `otlp`).
//!
//! Each request's `tracing` span (see [`crate::proxy`]) becomes an OpenTelemetry span in the
//! W3C trace the request continues: its parent is the client's `traceparent` parent id, and its
//! own span id is the parent id the upstream receives, so a collector stitches client, gateway
//! and upstream into one trace.
//!
//! Spans leave in batches from the SDK's own thread, as protobuf over HTTP (`POST
//! {endpoint}/v1/traces`), sent with the `reqwest` client the library already uses for JWKS.
//! The SDK drives exports with a plain executor while reqwest needs tokio's reactor and timer,
//! so the exporter owns a one-thread tokio runtime that runs the HTTP requests.
//! [`OtlpExporter::shutdown`] flushes what is queued.

use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::TraceContext;

/// How long one export request may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exporting spans could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The thread that sends the export requests could not start.
    #[error("cannot start the OTLP export thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// The HTTP client could not be built.
    #[error("cannot build the OTLP HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The endpoint or the exporter's settings were refused.
    #[error("cannot export spans to {endpoint:?}: {source}")]
    Exporter {
        /// The configured `otlp_endpoint`.
        endpoint: String,
        /// What the exporter said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// Queued spans could not be flushed at shutdown.
    #[error("flushing spans to the OTLP collector failed: {0}")]
    Flush(#[source] opentelemetry_sdk::error::OTelSdkError),
}

/// A running span exporter: the tracer provider and the runtime its HTTP client uses.
/// Dropping it flushes like [`OtlpExporter::shutdown`], ignoring errors.
pub struct OtlpExporter {
    provider: SdkTracerProvider,
    /// `None` once stopped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl OtlpExporter {
    /// Start exporting to the OTLP/HTTP receiver at `endpoint` (a base URL such as
    /// `http://127.0.0.1:4318`; spans go to `/v1/traces` under it), naming this process
    /// `service_name` in the exported resource.
    pub fn start(endpoint: &str, service_name: &str) -> Result<OtlpExporter, OtlpError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gatehouse-otlp")
            .enable_all()
            .build()
            .map_err(OtlpError::Runtime)?;
        let client = OnRuntime {
            client: reqwest::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(OtlpError::Client)?,
            runtime: runtime.handle().clone(),
        };
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(client)
            .build()
            .map_err(|source| OtlpError::Exporter {
                endpoint: endpoint.to_string(),
                source,
            })?;
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
            runtime: Some(runtime),
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
        let Some(runtime) = self.runtime.take() else {
            return Ok(());
        };
        let flushed = self.provider.shutdown().map_err(OtlpError::Flush);
        // Nothing runs on it any more: the provider's shutdown waited for the last export.
        runtime.shutdown_background();
        flushed
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Sends the exporter's requests with reqwest on the exporter's runtime, whatever thread asks.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request)?;
        self.runtime.spawn(send(client, request)).await?
    }
}

async fn send(
    client: reqwest::Client,
    request: reqwest::Request,
) -> Result<Response<Bytes>, HttpError> {
    let response = client.execute(request).await?;
    let mut answer = Response::builder().status(response.status());
    if let Some(headers) = answer.headers_mut() {
        *headers = response.headers().clone();
    }
    Ok(answer.body(response.bytes().await?)?)
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
