//! Gatehouse embedded in a tokio application.
//!
//! The application serves its own axum API on a loopback port and puts the gateway in front of
//! it, in the same process: the gateway's routes, upstreams and a custom filter kind
//! (`tenant`, which admits only configured tenants and tells the API which one called) come
//! from TOML. The application then changes the gateway's config at run time through the
//! handle's `ConfigStore` — no file, no restart — and reads the gateway's metrics.
//!
//! ```sh
//! cargo run --example embed            # runs the demo requests, prints them, exits
//! cargo run --example embed -- --serve # keeps serving until Ctrl-C
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use gatehouse::config::Source;
use gatehouse::{Decision, Filter, FilterSpec, FilterState, Gateway, Reply, RequestInfo};
use http::StatusCode;
use serde::Deserialize;

/// Admits requests whose `x-tenant` header names a configured tenant, and forwards the tenant
/// as `x-tenant-id` (a client-sent `x-tenant-id` is never trusted).
struct Tenant {
    tenants: HashSet<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantConfig {
    tenants: Vec<String>,
}

#[async_trait]
impl Filter for Tenant {
    async fn on_request(&self, req: &mut RequestInfo<'_>, _state: &mut FilterState) -> Decision {
        req.header.remove_header("x-tenant-id");
        let tenant = req
            .header
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .filter(|t| self.tenants.contains(*t))
            .map(str::to_string);
        match tenant {
            Some(t) => {
                let _ = req.header.insert_header("x-tenant-id", t);
                Decision::Continue
            }
            None => Decision::Respond(Reply::problem(
                StatusCode::FORBIDDEN,
                "unknown tenant",
                "unknown_tenant",
            )),
        }
    }
}

fn tenant_kind(spec: &FilterSpec<'_>) -> Result<Arc<dyn Filter>, String> {
    let cfg: TenantConfig = spec.parse()?;
    if cfg.tenants.is_empty() {
        return Err("tenants: list at least one tenant".into());
    }
    Ok(Arc::new(Tenant {
        tenants: cfg.tenants.into_iter().collect(),
    }))
}

fn gateway_config(api: std::net::SocketAddr, tenants: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[admin]
listen = "127.0.0.1:0"

[filters.tenant]
kind = "tenant"
tenants = [{tenants}]

[[upstreams]]
name = "api"
backends = ["{api}"]

[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
upstream = "api"
strip_prefix = "/api"
filters = ["tenant"]
"#
    )
}

/// The application's own API.
fn api() -> axum::Router {
    axum::Router::new().route(
        "/orders",
        axum::routing::get(|headers: http::HeaderMap| async move {
            let tenant = headers
                .get("x-tenant-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            format!("orders of {tenant}\n")
        }),
    )
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, api()).await;
    });

    let config = gateway_config(api_addr, r#""acme""#);
    let gateway = tokio::task::spawn_blocking(move || {
        Gateway::builder()
            .config_toml(config)
            .filter_kind("tenant", tenant_kind)
            .build()?
            .spawn()
    })
    .await??;
    let base = format!("http://{}", gateway.local_addr());
    println!("gateway on {base}, admin on {:?}", gateway.admin_addr());

    let client = reqwest::Client::new();
    let get = |tenant: &'static str| {
        client
            .get(format!("{base}/api/orders"))
            .header("x-tenant", tenant)
            .send()
    };
    let acme = get("acme").await?;
    let acme_status = acme.status();
    let acme_body = acme.text().await?;
    println!("acme    -> {acme_status}: {}", acme_body.trim());
    let globex = get("globex").await?.status();
    println!("globex  -> {globex}");

    // Admit a second tenant at run time: build, validate, swap — in-flight requests finish on
    // the config they started with.
    let store = Arc::clone(gateway.store());
    let new_config = gateway_config(api_addr, r#""acme", "globex""#);
    let outcome =
        tokio::task::spawn_blocking(move || store.apply(&Source::inline(new_config))).await??;
    println!("reconfigured: {outcome:?}");
    let globex_after = get("globex").await?;
    let globex_after_status = globex_after.status();
    let globex_body = globex_after.text().await?;
    println!("globex  -> {globex_after_status}: {}", globex_body.trim());

    let metrics = String::from_utf8(gateway.metrics().render())?;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("gatehouse_filter_decisions_total") && l.contains("unknown_tenant"))
        .unwrap_or("(none)")
        .to_string();
    println!("metrics: {refused}");

    if serve {
        println!("serving; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    tokio::task::spawn_blocking(move || gateway.shutdown()).await?;

    let ok = acme_status == 200
        && acme_body.contains("orders of acme")
        && globex == 403
        && globex_after_status == 200
        && globex_body.contains("orders of globex")
        && refused.ends_with(" 1");
    if !ok {
        return Err("the embedded gateway did not behave as configured".into());
    }
    println!("embedding works");
    Ok(())
}
