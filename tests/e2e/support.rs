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
    spawn(Gateway::builder().config_toml(with_test_listeners(toml))).await
}

/// Spawn a gateway serving a config file (watched for changes).
pub async fn gateway_from_file(path: std::path::PathBuf) -> GatewayHandle {
    spawn(Gateway::builder().config_file(path)).await
}

/// Build and spawn off the async runtime (building reads files and resolves names).
pub async fn spawn(builder: gatehouse::GatewayBuilder) -> GatewayHandle {
    tokio::task::spawn_blocking(move || {
        builder
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

/// The text with test listeners: `[server] listen` and `[admin] listen` set to port 0 where
/// the text leaves them out, 2 threads and a 1 s grace period unless it sets them. A test
/// never binds a fixed port (the platform of the README's first command may be serving on
/// 8080 and 9090 while the tests run): a listen address with a port other than 0 panics.
/// Text that is not TOML (a test of a rejected file) gets the tables prepended as text.
pub fn with_test_listeners(toml: &str) -> String {
    let Ok(mut table) = toml.parse::<toml::Table>() else {
        return prepend_test_listeners(toml);
    };
    let server = section(&mut table, "server");
    server
        .entry("listen")
        .or_insert_with(|| toml::Value::Array(vec!["127.0.0.1:0".into()]));
    server.entry("threads").or_insert(toml::Value::Integer(2));
    server
        .entry("shutdown_timeout")
        .or_insert_with(|| "1s".into());
    let mut listens: Vec<String> = match &server["listen"] {
        toml::Value::Array(items) => items.iter().map(listen_text).collect(),
        other => vec![listen_text(other)],
    };
    if let Some(toml::Value::Array(items)) = server
        .get("tls")
        .and_then(|t| t.as_table())
        .and_then(|t| t.get("listen"))
    {
        listens.extend(items.iter().map(listen_text));
    }
    let admin = section(&mut table, "admin");
    admin
        .entry("listen")
        .or_insert_with(|| "127.0.0.1:0".into());
    for listen in listens.iter().chain([&listen_text(&admin["listen"])]) {
        assert!(
            listen.ends_with(":0"),
            "a test may not bind the fixed address {listen}: use port 0"
        );
    }
    table.to_string()
}

fn section<'a>(table: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    let entry = table
        .entry(name)
        .or_insert_with(|| toml::Value::Table(Default::default()));
    entry
        .as_table_mut()
        .unwrap_or_else(|| panic!("[{name}] must be a table"))
}

fn listen_text(v: &toml::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn prepend_test_listeners(toml: &str) -> String {
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

/// An upstream that answers every request but `/health` with `{"upstream": name}` after
/// `delay` (`/health` answers at once). Requests are counted on arrival, before the delay.
pub struct SlowUpstream {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowUpstream {
    /// Start on a free port.
    pub async fn start(name: &str, delay: std::time::Duration) -> SlowUpstream {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let reply = name.to_string();
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .fallback(move || {
                let counter = Arc::clone(&counter);
                let reply = reply.clone();
                async move {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    Json(json!({ "upstream": reply }))
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SlowUpstream {
            addr,
            name: name.to_string(),
            hits,
            task,
        }
    }

    /// Requests received so far (answered or still waiting).
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SlowUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Spawn a gateway serving a config file that is NOT watched (reloads only via
/// `POST /admin/reload` or the store).
pub async fn gateway_from_file_unwatched(path: std::path::PathBuf) -> GatewayHandle {
    spawn(Gateway::builder().config_file(path).watch_config(false)).await
}

/// Value of one Prometheus sample in `/metrics` text: the line of `name` whose labels
/// include every `(label, value)` pair given.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `GET http://ADMIN/metrics` as text.
pub async fn admin_metrics(client: &reqwest::Client, admin: SocketAddr) -> String {
    client
        .get(url(admin, "/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics body")
}

/// `GET http://ADMIN/admin/config` as JSON.
pub async fn admin_config(client: &reqwest::Client, admin: SocketAddr) -> Value {
    client
        .get(url(admin, "/admin/config"))
        .send()
        .await
        .expect("admin/config answers")
        .json()
        .await
        .expect("admin/config is JSON")
}

/// A backend's health in an `/admin/config` answer, if the upstream lists that backend.
pub fn backend_healthy(config: &Value, upstream: &str, addr: SocketAddr) -> Option<bool> {
    config["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["name"] == upstream)?["backends"]
        .as_array()?
        .iter()
        .find(|b| b["addr"] == addr.to_string().as_str())?["healthy"]
        .as_bool()
}
