//! The admin listener: `/health`, `/ready`, `/metrics`, `GET /admin/config`,
//! `GET /admin/health` and `POST /admin/reload`. It listens on its own address (loopback by default) because it can
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

    /// The platform's health: the gateway's own readiness, and each pool with each backend's
    /// active health, ejection and own `/ready` answer (asked now, 1 s at most; a service's
    /// `/ready` names the dependency it lacks: its database, its event bus). A pool is
    /// healthy when every backend is up, degraded when some are, unhealthy when none is; the
    /// whole is as bad as its worst part. Always 200: the status is in the body.
    async fn health(&self) -> Response<Vec<u8>> {
        let s = self.store.load();
        let mut gateway_reasons: Vec<String> = Vec::new();
        if self.drain.is_draining() {
            gateway_reasons.push("draining".into());
        }
        for (name, (_, f)) in &s.filters {
            if let Some(why) = f.filter.not_ready() {
                gateway_reasons.push(format!("filter {name}: {why}"));
            }
        }
        for (name, _, failing) in s.names.known() {
            if failing {
                gateway_reasons.push(format!(
                    "backend name {name} does not resolve (its last addresses serve)"
                ));
            }
        }
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(1))
            .build()
            .unwrap_or_default();
        let mut pools = Vec::new();
        let mut worst = if gateway_reasons.is_empty() {
            Health::Healthy
        } else {
            Health::Unhealthy
        };
        for pool in s.upstreams.values() {
            let ejections = pool.ejections();
            let asks = pool.health().into_iter().map(|(addr, healthy)| {
                let ejected = ejections
                    .iter()
                    .flatten()
                    .any(|(a, out_for, _)| *a == addr && out_for.is_some());
                let ask = (pool.tls().is_none()).then(|| client.get(format!("http://{addr}/ready")).send());
                async move {
                    let ready = match ask {
                        None => None,
                        Some(ask) => Some(match ask.await {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let body = r.json::<serde_json::Value>().await.unwrap_or(serde_json::Value::Null);
                                (status, body)
                            }
                            Err(e) => (0, json!(e.to_string())),
                        }),
                    };
                    let reason = if !healthy {
                        Some("failing its health check".to_string())
                    } else if ejected {
                        Some("ejected after consecutive failures".to_string())
                    } else {
                        match &ready {
                            Some((200, _)) | Some((404, _)) | None => None,
                            Some((0, e)) => Some(format!("/ready unreachable: {}", e.as_str().unwrap_or_default())),
                            Some((status, body)) => Some(format!("/ready answered {status}: {body}")),
                        }
                    };
                    json!({
                        "addr": addr.to_string(),
                        "up": reason.is_none(),
                        "reason": reason,
                        "ready": ready.map(|(status, body)| json!({"status": status, "body": body})),
                    })
                }
            });
            let backends = futures::future::join_all(asks).await;
            let up = backends.iter().filter(|b| b["up"] == true).count();
            let health = match up {
                n if n == backends.len() && n > 0 => Health::Healthy,
                0 => Health::Unhealthy,
                _ => Health::Degraded,
            };
            worst = worst.max(health);
            pools.push(json!({
                "name": &**pool.name(),
                "status": health.label(),
                "reason": match health {
                    Health::Healthy => None,
                    _ => Some(format!("{up} of {} backends up", backends.len())),
                },
                "backends": backends,
            }));
        }
        json_response(
            StatusCode::OK,
            &json!({
                "status": worst.label(),
                "gateway": {
                    "status": if gateway_reasons.is_empty() { "healthy" } else { "unhealthy" },
                    "reasons": gateway_reasons,
                },
                "upstreams": pools,
            }),
        )
    }

    /// 200 when every filter can do its work; 503 naming the ones that cannot yet (a JWT
    /// filter with no keys would refuse every token).
    fn ready(&self) -> Response<Vec<u8>> {
        let s = self.store.load();
        let waiting: Vec<_> = s
            .filters
            .iter()
            .filter_map(|(name, (_, f))| {
                Some(json!({"filter": name, "reason": f.filter.not_ready()?}))
            })
            .collect();
        if waiting.is_empty() {
            json_response(
                StatusCode::OK,
                &json!({"status": "ready", "generation": s.generation}),
            )
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready", "generation": s.generation, "waiting": waiting}),
            )
        }
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

/// A part of the platform, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Health {
    fn label(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
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
            "/ready" if get => self.ready(),
            "/metrics" if get => {
                self.metrics.publish_ejections(&self.store.load());
                response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(),
                )
            }
            "/admin/config" if get => json_response(StatusCode::OK, &self.config_info()),
            "/admin/health" if get => self.health().await,
            "/admin/reload" if method == Method::POST => self.reload().await,
            "/health" | "/ready" | "/metrics" | "/admin/config" | "/admin/health" => {
                not_allowed("GET")
            }
            "/admin/reload" => not_allowed("POST"),
            _ => problem_response(
                StatusCode::NOT_FOUND,
                &json!({"type": "about:blank", "title": "Not Found", "status": 404, "detail": format!("no admin endpoint {path}")}),
            ),
        }
    }
}
