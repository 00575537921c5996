//! Test harness: echo upstreams, a spawned gateway, clients.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gatehouse::{Gateway, GatewayHandle};
use serde_json::{json, Value};

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    pub headers: BTreeMap<String, Vec<String>>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

#[derive(Clone)]
struct UpstreamState {
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// An in-process upstream that answers every request with JSON describing it:
/// `{"upstream": name, "method": .., "uri": .., "headers": {..}}`. `/health` answers 200,
/// `/ws` echoes WebSocket messages.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    /// Start on a free port.
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Start on a given address (to bring a stopped upstream back on its old port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Upstream {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = UpstreamState {
            name: name.to_string(),
            seen: Arc::clone(&seen),
        };
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/ws", get(ws_echo))
            .fallback(echo)
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Upstream {
            addr,
            name: name.to_string(),
            seen,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stop accepting and close (connections in flight are dropped with the task).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn echo(State(state): State<UpstreamState>, req: Request) -> Json<Value> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let seen = Seen {
        method: req.method().to_string(),
        uri: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: headers.clone(),
    };
    state.seen.lock().unwrap().push(seen.clone());
    Json(json!({
        "upstream": state.name,
        "method": seen.method,
        "uri": seen.uri,
        "headers": headers,
    }))
}

async fn ws_echo(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(t),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
    .into_response()
}

/// Spawn a gateway from TOML text. `[server] listen` and `[admin] listen` default to port 0
/// when the text does not set them. Runs the blocking spawn off the async runtime.
pub async fn gateway(toml: &str) -> GatewayHandle {
    let toml = with_test_listeners(toml);
    tokio::task::spawn_blocking(move || {
        Gateway::builder()
            .config_toml(toml)
            .build()
            .expect("config is valid")
            .spawn()
            .expect("gateway starts")
    })
    .await
    .unwrap()
}

/// Spawn a gateway serving a config file (watched for changes).
pub async fn gateway_from_file(path: std::path::PathBuf) -> GatewayHandle {
    tokio::task::spawn_blocking(move || {
        Gateway::builder()
            .config_file(path)
            .build()
            .expect("config is valid")
            .spawn()
            .expect("gateway starts")
    })
    .await
    .unwrap()
}

/// Stop a gateway without blocking the async runtime.
pub async fn stop(handle: GatewayHandle) {
    tokio::task::spawn_blocking(move || handle.shutdown())
        .await
        .unwrap();
}

/// Prepend test listeners (port 0, 2 threads, no grace period) unless the text has a [server]/[admin] table.
pub fn with_test_listeners(toml: &str) -> String {
    let mut out = String::new();
    if !toml.contains("[server]") {
        out.push_str(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nthreads = 2\nshutdown_timeout = \"1s\"\n\n",
        );
    }
    if !toml.contains("[admin]") {
        out.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n\n");
    }
    out.push_str(toml);
    out
}

/// A client that does not pool connections across tests and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `http://ADDR`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}
