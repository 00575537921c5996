//! A custom filter kind, configured in TOML exactly like a built-in one.
//!
//! `maintenance` answers 503 with `Retry-After` on the routes it is listed on, except for
//! clients that send the configured bypass header; every response of those routes says the
//! window is on with an `x-maintenance` header.
//!
//! ```sh
//! cargo run --example custom_filter
//! ```
//!
//! It starts a tiny upstream and the gateway on free ports, sends a few requests, prints what
//! came back and exits non-zero if anything was not as expected (a test runs it).

use std::sync::Arc;

use async_trait::async_trait;
use gatehouse::{Decision, Filter, FilterSpec, FilterState, Gateway, Reply, RequestInfo};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

/// The filter: immutable settings, built once per declaration (a reload that leaves the
/// declaration alone keeps this very instance).
struct Maintenance {
    bypass_header: HeaderName,
    bypass_value: HeaderValue,
    retry_after_secs: u64,
}

/// `[filters.NAME] kind = "maintenance"` settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceConfig {
    /// Requests carrying this header with `bypass_value` go through (operators testing).
    bypass_header: String,
    bypass_value: String,
    /// What `Retry-After` says.
    #[serde(default = "default_retry_after")]
    retry_after_secs: u64,
}

fn default_retry_after() -> u64 {
    120
}

#[async_trait]
impl Filter for Maintenance {
    async fn on_request(&self, req: &mut RequestInfo<'_>, _state: &mut FilterState) -> Decision {
        if req.header.headers.get(&self.bypass_header) == Some(&self.bypass_value) {
            // Operators get through; the upstream never sees the bypass secret.
            req.header.remove_header(&self.bypass_header);
            return Decision::Continue;
        }
        Decision::Respond(
            Reply::problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "down for maintenance",
                "maintenance",
            )
            .with_header(
                http::header::RETRY_AFTER,
                HeaderValue::from(self.retry_after_secs),
            ),
        )
    }

    fn on_response(&self, resp: &mut gatehouse::filter::ResponseHeader, _state: &mut FilterState) {
        let _ = resp.insert_header("x-maintenance", "on");
    }
}

/// The factory the gateway calls for each `[filters.*]` table of this kind. Errors are
/// reported as `filters.NAME: …` and reject the config, like a built-in kind's.
fn maintenance(spec: &FilterSpec<'_>) -> Result<Arc<dyn Filter>, String> {
    let cfg: MaintenanceConfig = spec.parse()?;
    Ok(Arc::new(Maintenance {
        bypass_header: HeaderName::try_from(cfg.bypass_header.as_str())
            .map_err(|e| format!("bypass_header: {e}"))?,
        bypass_value: HeaderValue::try_from(cfg.bypass_value.as_str())
            .map_err(|e| format!("bypass_value: {e}"))?,
        retry_after_secs: cfg.retry_after_secs,
    }))
}

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[admin]
listen = ""

[filters.window]
kind = "maintenance"
bypass_header = "x-ops-bypass"
bypass_value = "let-me-in"
retry_after_secs = 300

[[upstreams]]
name = "app"
backends = ["UPSTREAM"]

[[routes]]
name = "shop"
match = { path_prefix = "/shop" }
upstream = "app"
filters = ["window"]

[[routes]]
name = "status"
match = { path = "/status" }
upstream = "app"
"#;

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
            format!(
                "hello from the upstream (bypass header seen: {})\n",
                headers.contains_key("x-ops-bypass")
            )
        });
        let _ = axum::serve(upstream, app).await;
    });

    let config = CONFIG.replace("UPSTREAM", &upstream_addr.to_string());
    let gateway = tokio::task::spawn_blocking(move || {
        Gateway::builder()
            .config_toml(config)
            .filter_kind("maintenance", maintenance)
            .build()?
            .spawn()
    })
    .await??;
    let base = format!("http://{}", gateway.local_addr());
    let client = reqwest::Client::new();

    let blocked = client.get(format!("{base}/shop/cart")).send().await?;
    let status = blocked.status();
    let retry_after = blocked.headers().get("retry-after").cloned();
    println!("GET /shop/cart -> {status}, Retry-After {retry_after:?}");
    println!("  {}", blocked.text().await?);

    let bypass = client
        .get(format!("{base}/shop/cart"))
        .header("x-ops-bypass", "let-me-in")
        .send()
        .await?;
    let bypass_status = bypass.status();
    let flagged = bypass.headers().get("x-maintenance").cloned();
    let bypass_body = bypass.text().await?;
    println!(
        "GET /shop/cart with bypass -> {bypass_status}, x-maintenance {flagged:?}: {bypass_body}"
    );

    let open = client.get(format!("{base}/status")).send().await?;
    let open_status = open.status();
    println!("GET /status -> {open_status}");

    tokio::task::spawn_blocking(move || gateway.shutdown()).await?;

    let ok = status == 503
        && retry_after.as_ref().is_some_and(|v| v == "300")
        && bypass_status == 200
        && flagged.as_ref().is_some_and(|v| v == "on")
        && bypass_body.contains("bypass header seen: false")
        && open_status == 200;
    if !ok {
        return Err("the maintenance filter did not behave as configured".into());
    }
    println!("custom filter works");
    Ok(())
}
