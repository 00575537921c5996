//! The platform as the tests run it: the real `gateway` binary on the shipped
//! `config/platform.toml` (ports moved to free ones, data in a temporary folder), and a
//! client for its `/api`. Shared by `platform.rs` and `otlp.rs`; each uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

pub struct Running {
    pub child: Child,
    pub log: std::path::PathBuf,
    /// The shipped config's ports ("8080", "9090", "3001", …) to the free ones used.
    pub ports: std::collections::HashMap<String, u16>,
}

impl Running {
    /// Stops it as an operator would (SIGTERM): services finish and release their outbox
    /// leases, so the next start relays at once (after a SIGKILL it waits for them to
    /// expire).
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Starts `gateway run` on the shipped platform config with every port replaced (and the
/// bootstrap admin set, when given).
pub fn start(dir: &Path) -> (Running, String) {
    start_with(dir, None, &[], &[])
}

/// `databases` gives a service's `database_url` (`("order", "postgres://…")`); the others
/// keep the default SQLite file under `data/`. `env` is set on the process.
pub fn start_with(
    dir: &Path,
    bootstrap_admin: Option<&str>,
    databases: &[(&str, String)],
    env: &[(&str, &str)],
) -> (Running, String) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/platform.toml");
    let mut text = std::fs::read_to_string(shipped).expect("config/platform.toml");
    let (moved, ports) = kit::testing::rebind_ports(
        &text,
        &[
            "8080", "9090", "3001", "3002", "3003", "3004", "3005", "3006", "3009",
        ],
    );
    text = moved;
    let edge = ports["8080"];
    // These tests log in many accounts from one address within a second: lift the per-IP
    // limit on the auth endpoints so they measure the services, not the limiter.
    let limited = "rate = \"10/s\"\nburst = 20";
    assert!(text.contains(limited), "the auth-endpoints limit moved");
    text = text.replace(limited, "rate = \"1000/s\"\nburst = 1000");
    if let Some(email) = bootstrap_admin {
        text = text.replace(
            "# bootstrap_admin = \"you@example.com\"",
            &format!("bootstrap_admin = {email:?}"),
        );
    }
    for (service, url) in databases {
        let header = format!("[platform.{service}]\n");
        assert!(text.contains(&header), "no {header}");
        text = text.replace(&header, &format!("{header}database_url = {url:?}\n"));
    }
    let config = dir.join("platform.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.join("gateway.log");
    let child = Command::new(GATEWAY)
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the gateway");
    let ports = ports.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    (
        Running { child, log, ports },
        format!("http://127.0.0.1:{edge}"),
    )
}

pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The JWKS route goes through the gateway to the user service: both are up.
        if let Ok(r) = client
            .get(format!("{base}/.well-known/jwks.json"))
            .send()
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the platform did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct Client {
    pub c: reqwest::Client,
    pub base: String,
}

impl Client {
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.c
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, password: &str) -> Value {
        self.login_as("ann@example.com", password).await
    }

    pub async fn login_as(&self, email: &str, password: &str) -> Value {
        let r = self
            .post(
                "/api/auth/login",
                json!({ "email": email, "password": password }),
            )
            .await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    pub async fn refresh(&self, pair: &Value) -> reqwest::Response {
        self.post(
            "/api/auth/refresh",
            json!({ "refresh_token": pair["refresh_token"] }),
        )
        .await
    }

    /// A request with the pair's access token.
    pub fn with(
        &self,
        method: reqwest::Method,
        path: &str,
        pair: &Value,
    ) -> reqwest::RequestBuilder {
        self.c
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(pair["access_token"].as_str().unwrap())
    }

    /// `GET /api/users/me` with the pair's access token (or none).
    pub async fn me(&self, pair: Option<&Value>) -> reqwest::Response {
        let mut req = self.c.get(format!("{}/api/users/me", self.base));
        if let Some(p) = pair {
            req = req.bearer_auth(p["access_token"].as_str().unwrap());
        }
        req.send().await.unwrap()
    }
}

pub const PASSWORD: &str = "correct horse battery staple";

/// A platform whose first admin is `admin@example.com` (registered, then the platform is
/// restarted with the bootstrap setting naming it), and that admin's tokens.
pub async fn platform_with_admin(
    dir: &Path,
    databases: &[(&str, String)],
) -> (Running, Client, Value) {
    platform_with_admin_and(dir, databases, &[]).await
}

/// [`platform_with_admin`] with `env` set on the process that serves.
pub async fn platform_with_admin_and(
    dir: &Path,
    databases: &[(&str, String)],
    env: &[(&str, &str)],
) -> (Running, Client, Value) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    {
        let (gateway, base) = start_with(dir, None, databases, &[]);
        let c = Client {
            c: http.clone(),
            base,
        };
        wait_ready(&c.c, &c.base).await;
        c.register("admin@example.com").await;
        gateway.terminate();
    }
    let (gateway, base) = start_with(dir, Some("admin@example.com"), databases, env);
    let c = Client { c: http, base };
    wait_ready(&c.c, &c.base).await;
    let admin = c.login_as("admin@example.com", PASSWORD).await;
    (gateway, c, admin)
}

impl Client {
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Value {
        let r = req.send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{status}: {body}");
        body
    }

    pub async fn stock(&self, admin: &Value, sku: &str, on_hand: i64) {
        let body = json!({
            "sku": sku, "name": "Mug", "category": "kitchen",
            "price": { "amount": 1250, "currency": "EUR" }, "initial_stock": on_hand
        });
        self.send(
            self.with(reqwest::Method::POST, "/api/products", admin)
                .json(&body),
        )
        .await;
    }

    /// Registers `email` with [`PASSWORD`].
    pub async fn register(&self, email: &str) {
        let r = self
            .post(
                "/api/users",
                json!({ "email": email, "password": PASSWORD }),
            )
            .await;
        assert_eq!(r.status(), 201, "registering {email}");
    }

    /// Waits until `pair`'s inbox holds a notification of `kind`, and returns the inbox page.
    pub async fn notified(&self, pair: &Value, kind: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let page = self
                .send(self.with(reqwest::Method::GET, "/api/notifications", pair))
                .await;
            let items = page["items"].as_array();
            if items.is_some_and(|items| items.iter().any(|n| n["kind"] == kind)) {
                return page;
            }
            assert!(Instant::now() < deadline, "no {kind} notification: {page}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A registered, logged-in customer with a card: (tokens, payment method id).
    pub async fn customer(&self, email: &str, card: &str) -> (Value, String) {
        self.register(email).await;
        let pair = self.login_as(email, PASSWORD).await;
        let body = json!({
            "card_number": card, "exp_month": 12, "exp_year": 2040,
            "cvc": "123", "billing_country": "US"
        });
        let pm = self
            .send(
                self.with(reqwest::Method::POST, "/api/payment-methods", &pair)
                    .header("idempotency-key", format!("card-{email}"))
                    .json(&body),
            )
            .await;
        (pair, pm["id"].as_str().unwrap().to_owned())
    }

    /// Places an order for `qty` of `sku` and waits until it is confirmed or cancelled.
    pub async fn order(&self, pair: &Value, pm: &str, sku: &str, qty: i64) -> Value {
        use reqwest::Method;
        let body = json!({ "items": [{ "sku": sku, "qty": qty }], "payment_method_id": pm });
        let placed = self
            .send(
                self.with(Method::POST, "/api/orders", pair)
                    .header("idempotency-key", format!("order-{sku}-{qty}"))
                    .json(&body),
            )
            .await;
        self.settled(pair, placed["id"].as_str().unwrap()).await
    }

    /// Waits until order `id` is confirmed or cancelled, and returns it.
    pub async fn settled(&self, pair: &Value, id: &str) -> Value {
        let path = format!("/api/orders/{id}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = self
                .send(self.with(reqwest::Method::GET, &path, pair))
                .await;
            if o["status"] == "confirmed" || o["status"] == "cancelled" {
                return o;
            }
            assert!(Instant::now() < deadline, "the order did not settle: {o}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn intents_of(&self, admin: &Value, order_id: &str) -> Vec<Value> {
        let path = format!("/api/payment-intents?order_id={order_id}");
        let page = self
            .send(self.with(reqwest::Method::GET, &path, admin))
            .await;
        page["items"].as_array().cloned().unwrap_or_default()
    }
}
