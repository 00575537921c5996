//! The admin listener: `/health`, `/ready`, `/metrics`, `GET /admin/config` and
//! `POST /admin/reload`. It listens on its own address (loopback by default) because it can
//! change what the gateway serves.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;

use crate::drain::Drain;
use crate::observe::Metrics;
use crate::reload::{ConfigStore, ReloadOutcome};

/// The admin HTTP app.
pub struct AdminApp {
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    drain: Arc<Drain>,
}

impl AdminApp {
    /// An admin app over a gateway's store and metrics.
    pub fn new(store: Arc<ConfigStore>, metrics: Arc<Metrics>) -> AdminApp {
        AdminApp {
            store,
            metrics,
            drain: Arc::default(),
        }
    }

    /// Answer `/ready` with 503 once `drain` says the gateway is terminating.
    pub fn with_drain(mut self, drain: Arc<Drain>) -> AdminApp {
        self.drain = drain;
        self
    }

    fn config_info(&self) -> serde_json::Value {
        let s = self.store.load();
        let upstreams: Vec<_> = s
            .upstreams
            .values()
            .map(|u| {
                let ejections = u.ejections();
                let backends: Vec<_> = u
                    .health()
                    .into_iter()
                    .map(|(addr, healthy)| {
                        let mut backend = json!({"addr": addr.to_string(), "healthy": healthy});
                        let ejection = ejections.iter().flatten().find(|(a, ..)| *a == addr);
                        if let Some((_, out_for, times)) = ejection {
                            backend["ejected"] = json!(out_for.is_some());
                            backend["ejected_for_ms"] =
                                json!(out_for.map(|d| d.as_millis() as u64));
                            backend["ejections"] = json!(times);
                        }
                        backend
                    })
                    .collect();
                json!({"name": &**u.name(), "backends": backends, "tls": u.tls().is_some()})
            })
            .collect();
        json!({
            "generation": s.generation,
            "content_hash": s.content_hash,
            "loaded_at": humantime::format_rfc3339_seconds(s.loaded_at).to_string(),
            "path": self.store.path().map(|p| p.display().to_string()),
            "routes": s.router.routes().len(),
            "upstreams": upstreams,
            "certificates": s.certificates.as_ref().map(|c| c.info()),
            "names": s.names.known().into_iter().map(|(name, addrs, failing)| json!({
                "name": name,
                "addrs": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "failing": failing,
            })).collect::<Vec<_>>(),
        })
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        let store = Arc::clone(&self.store);
        let result = tokio::task::spawn_blocking(move || store.reload()).await;
        match result {
            Ok(Ok(ReloadOutcome::Applied { generation })) => {
                tracing::info!(generation, "configuration reloaded via admin API");
                json_response(
                    StatusCode::OK,
                    &json!({"result": "applied", "generation": generation}),
                )
            }
            Ok(Ok(ReloadOutcome::Unchanged { generation })) => json_response(
                StatusCode::OK,
                &json!({"result": "unchanged", "generation": generation}),
            ),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "configuration rejected via admin API; the previous one keeps serving");
                let body = json!({
                    "type": "about:blank",
                    "title": "Unprocessable Content",
                    "status": 422,
                    "detail": "the configuration was rejected; the previous one keeps serving",
                    "errors": e.lines(),
                    "generation": self.store.load().generation,
                });
                problem_response(StatusCode::UNPROCESSABLE_ENTITY, &body)
            }
            Err(_) => problem_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"type": "about:blank", "title": "Internal Server Error", "status": 500, "detail": "reload task failed"}),
            ),
        }
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Vec<u8>> {
    response(
        status,
        "application/json",
        serde_json::to_vec(body).unwrap_or_default(),
    )
}

fn problem_response(status: StatusCode, body: &serde_json::Value) -> Response<Vec<u8>> {
    response(
        status,
        "application/problem+json",
        serde_json::to_vec(body).unwrap_or_default(),
    )
}

fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(Vec::new());
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    *resp.body_mut() = body;
    resp
}

fn not_allowed(allow: &'static str) -> Response<Vec<u8>> {
    let mut resp = problem_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"type": "about:blank", "title": "Method Not Allowed", "status": 405, "detail": format!("use {allow}")}),
    );
    resp.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    resp
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let get = method == Method::GET || method == Method::HEAD;
        match path.as_str() {
            "/health" if get => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/ready" if get && self.drain.is_draining() => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "draining", "generation": self.store.load().generation}),
            ),
            "/ready" if get => json_response(
                StatusCode::OK,
                &json!({"status": "ready", "generation": self.store.load().generation}),
            ),
            "/metrics" if get => {
                self.metrics.publish_ejections(&self.store.load());
                response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(),
                )
            }
            "/admin/config" if get => json_response(StatusCode::OK, &self.config_info()),
            "/admin/reload" if method == Method::POST => self.reload().await,
            "/health" | "/ready" | "/metrics" | "/admin/config" => not_allowed("GET"),
            "/admin/reload" => not_allowed("POST"),
            _ => problem_response(
                StatusCode::NOT_FOUND,
                &json!({"type": "about:blank", "title": "Not Found", "status": 404, "detail": format!("no admin endpoint {path}")}),
            ),
        }
    }
}
