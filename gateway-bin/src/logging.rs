//! The process's `tracing` subscriber: console lines on stderr filtered by `RUST_LOG`
//! (default `info`), text or, with `LOG_FORMAT=json` as the services read it, one JSON object
//! per line (platform mode's services log through this subscriber too), plus, with the `otlp`
//! feature and an endpoint (`[observability] otlp_endpoint`, or else
//! `OTEL_EXPORTER_OTLP_ENDPOINT`), OTLP export of each request's span and of the spans of the
//! services platform mode runs in the process (each under its own `service.name`).

use gateway_core::config::ObservabilityConfig;

/// Keeps span export running; [`Telemetry::shutdown`] (or dropping it) flushes what is queued.
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    exporter: Option<gateway_core::observe::otlp::OtlpExporter>,
}

impl Telemetry {
    /// Flush queued spans to the collector and stop exporting.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(exporter) = self.exporter {
            if let Err(e) = exporter.shutdown() {
                tracing::warn!(error = %e, "span export did not finish");
            }
            kit::trace::shutdown();
        }
    }
}

fn console_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// The console layer: text, or JSON lines with `LOG_FORMAT=json`.
fn console_layer<S>() -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        layer.json().flatten_event(true).boxed()
    } else {
        layer.boxed()
    }
}

/// Console logging only (`check`, `explain`, or a config that does not load).
pub fn init_console() -> Telemetry {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    tracing_subscriber::registry()
        .with(console_layer().with_filter(console_filter()))
        .init();
    Telemetry {
        #[cfg(feature = "otlp")]
        exporter: None,
    }
}

/// Where spans go and under which `service.name`: the config's `otlp_endpoint` and
/// `otlp_service_name`, or else `OTEL_EXPORTER_OTLP_ENDPOINT` and (when set)
/// `OTEL_SERVICE_NAME`, as every OpenTelemetry SDK reads them.
fn export_target(observability: &ObservabilityConfig) -> Option<(String, String)> {
    let var = |name| {
        std::env::var(name)
            .ok()
            .filter(|v: &String| !v.trim().is_empty())
    };
    if !observability.otlp_endpoint.is_empty() {
        return Some((
            observability.otlp_endpoint.clone(),
            observability.otlp_service_name.clone(),
        ));
    }
    let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    let name = var("OTEL_SERVICE_NAME").unwrap_or_else(|| observability.otlp_service_name.clone());
    Some((endpoint.trim().to_owned(), name))
}

/// Console logging, plus span export when `observability` asks for it. `Config::validate`
/// refuses an `otlp_endpoint` in a build without the `otlp` feature, so a validated config
/// never reaches here asking for what this build lacks; the environment variable only gets
/// a warning.
#[cfg(not(feature = "otlp"))]
pub fn init(observability: &ObservabilityConfig) -> anyhow::Result<Telemetry> {
    let telemetry = init_console();
    if let Some((endpoint, _)) = export_target(observability) {
        tracing::warn!(
            endpoint,
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but this gateway was built without OTLP \
             export (cargo feature `otlp`): spans are not exported"
        );
    }
    Ok(telemetry)
}

/// Console logging, plus span export when `observability.otlp_endpoint` is set. The export
/// layer has its own filter (`gateway_core` at DEBUG, for the per-request span), so the console
/// stays at `RUST_LOG`/INFO with no line per request.
#[cfg(feature = "otlp")]
pub fn init(observability: &ObservabilityConfig) -> anyhow::Result<Telemetry> {
    use anyhow::Context;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let Some((endpoint, name)) = export_target(observability) else {
        return Ok(init_console());
    };
    let exporter = gateway_core::observe::otlp::OtlpExporter::start(&endpoint, &name)
        .context("cannot start OTLP span export")?;
    let console = console_layer().with_filter(console_filter());
    tracing_subscriber::registry()
        .with(console)
        .with(exporter.layer())
        .init();
    // The services platform mode starts in this process export to the same place.
    kit::trace::install(&endpoint);
    Ok(Telemetry {
        exporter: Some(exporter),
    })
}
