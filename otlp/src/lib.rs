//! OTLP/HTTP span export, shared by the gateway (`gateway-core`'s `otlp` feature) and the
//! backends (`backend-kit`'s): spans leave in batches as protobuf over HTTP (`POST
//! {endpoint}/v1/traces`), sent with reqwest.
//!
//! The OpenTelemetry SDK drives exports from its own thread with a plain executor, while
//! reqwest needs tokio's reactor and timer, so a [`Pipeline`] owns a one-thread tokio runtime
//! that runs the HTTP requests of every exporter made from it.

use std::time::Duration;

use async_trait::async_trait;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};

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
        /// The configured endpoint.
        endpoint: String,
        /// What the exporter said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// Queued spans could not be flushed at shutdown.
    #[error("flushing spans to the OTLP collector failed: {0}")]
    Flush(#[source] opentelemetry_sdk::error::OTelSdkError),
}

/// The runtime and HTTP client that exporters send with. Stop it ([`Pipeline::stop`]) only
/// after the exporters made from it have flushed.
pub struct Pipeline {
    client: OnRuntime,
    /// `None` once stopped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Pipeline {
    /// Starts the export thread.
    pub fn start() -> Result<Pipeline, OtlpError> {
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
        Ok(Pipeline {
            client,
            runtime: Some(runtime),
        })
    }

    /// A span exporter to the OTLP/HTTP receiver at `endpoint`, a base URL such as
    /// `http://127.0.0.1:4318` (spans go to `/v1/traces` under it), as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` gives it.
    pub fn exporter(&self, endpoint: &str) -> Result<SpanExporter, OtlpError> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(self.client.clone())
            .build()
            .map_err(|source| OtlpError::Exporter {
                endpoint: endpoint.to_string(),
                source,
            })
    }

    /// Stops the export thread: call it after the exporters' last flush.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends the exporter's requests with reqwest on the pipeline's runtime, whatever thread asks.
#[derive(Debug, Clone)]
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
