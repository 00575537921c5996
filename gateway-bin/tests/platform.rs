//! Platform mode end to end: the real `gateway` binary runs `config/platform.toml` (ports
//! moved to free ones, data in a temporary folder) with the user service in-process, and a
//! client walks the account lifecycle through the gateway's `/api`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

struct Running {
    child: Child,
    log: std::path::PathBuf,
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
fn start(dir: &Path) -> (Running, String) {
    start_with(dir, None)
}

fn start_with(dir: &Path, bootstrap_admin: Option<&str>) -> (Running, String) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/platform.toml");
    let mut text = std::fs::read_to_string(shipped).expect("config/platform.toml");
    let edge = free_port();
    for fixed in ["8080", "9090", "3001", "3002", "3003", "3004"] {
        let port = if fixed == "8080" { edge } else { free_port() };
        text = text.replace(&format!("127.0.0.1:{fixed}"), &format!("127.0.0.1:{port}"));
    }
    if let Some(email) = bootstrap_admin {
        text = text.replace(
            "# bootstrap_admin = \"you@example.com\"",
            &format!("bootstrap_admin = {email:?}"),
        );
    }
    let config = dir.join("platform.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.join("gateway.log");
    let child = Command::new(GATEWAY)
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the gateway");
    (Running { child, log }, format!("http://127.0.0.1:{edge}"))
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
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

struct Client {
    c: reqwest::Client,
    base: String,
}

impl Client {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.c
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn login(&self, password: &str) -> Value {
        self.login_as("ann@example.com", password).await
    }

    async fn login_as(&self, email: &str, password: &str) -> Value {
        let r = self
            .post(
                "/api/auth/login",
                json!({ "email": email, "password": password }),
            )
            .await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn refresh(&self, pair: &Value) -> reqwest::Response {
        self.post(
            "/api/auth/refresh",
            json!({ "refresh_token": pair["refresh_token"] }),
        )
        .await
    }

    /// A request with the pair's access token.
    fn with(&self, method: reqwest::Method, path: &str, pair: &Value) -> reqwest::RequestBuilder {
        self.c
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(pair["access_token"].as_str().unwrap())
    }

    /// `GET /api/users/me` with the pair's access token (or none).
    async fn me(&self, pair: Option<&Value>) -> reqwest::Response {
        let mut req = self.c.get(format!("{}/api/users/me", self.base));
        if let Some(p) = pair {
            req = req.bearer_auth(p["access_token"].as_str().unwrap());
        }
        req.send().await.unwrap()
    }
}

#[tokio::test]
async fn register_login_me_refresh_reuse_and_logout_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, base) = start(dir.path());
    let c = Client {
        c: reqwest::Client::builder().no_proxy().build().unwrap(),
        base,
    };
    wait_ready(&c.c, &c.base).await;
    let password = "correct horse battery staple";

    let r = c
        .post(
            "/api/users",
            json!({ "email": "ann@example.com", "password": password }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let first = c.login(password).await;
    let me = c.me(Some(&first)).await;
    assert_eq!(me.status(), 200);
    assert_eq!(
        me.json::<Value>().await.unwrap()["email"],
        "ann@example.com"
    );
    assert_eq!(
        c.me(None).await.status(),
        401,
        "the edge refuses a missing token"
    );

    let r = c.refresh(&first).await;
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.unwrap();
    assert_eq!(c.me(Some(&second)).await.status(), 200);

    // The old refresh token again: refused, and the session is dead.
    assert_eq!(c.refresh(&first).await.status(), 401);
    assert_eq!(
        c.me(Some(&second)).await.status(),
        401,
        "the session ended with the reuse"
    );

    // A new login, then logout ends it.
    let third = c.login(password).await;
    let r =
        c.c.post(format!("{}/api/auth/logout", c.base))
            .bearer_auth(third["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(c.me(Some(&third)).await.status(), 401);
    assert_eq!(c.refresh(&third).await.status(), 401);

    // The service wrote its SQLite file and key under the working directory's data/.
    assert!(dir.path().join("data/user.db").exists());
    assert!(dir.path().join("data/user-signing-key.pem").exists());
}

/// The money path through the gateway: an admin creates a product with stock; a customer
/// registers, logs in, adds a card and places an order, which the saga confirms; the stock
/// went down, the payment was captured and the ledger balances.
#[tokio::test]
async fn an_order_placed_through_the_gateway_is_confirmed_paid_and_booked() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let password = "correct horse battery staple";
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // The first admin: register, then restart with the bootstrap setting naming them.
    {
        let (_gateway, base) = start(dir.path());
        let c = Client {
            c: http.clone(),
            base,
        };
        wait_ready(&c.c, &c.base).await;
        let r = c
            .post(
                "/api/users",
                json!({ "email": "admin@example.com", "password": password }),
            )
            .await;
        assert_eq!(r.status(), 201);
    }
    let (_gateway, base) = start_with(dir.path(), Some("admin@example.com"));
    let c = Client { c: http, base };
    wait_ready(&c.c, &c.base).await;
    let admin = c.login_as("admin@example.com", password).await;

    let r = c
        .with(Method::POST, "/api/products", &admin)
        .json(&json!({
            "sku": "MUG-1", "name": "Mug", "category": "kitchen",
            "price": { "amount": 1250, "currency": "EUR" }, "initial_stock": 3
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r =
        c.c.get(format!("{}/api/products?q=mug", c.base))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200, "the catalog is public");

    let r = c
        .post(
            "/api/users",
            json!({ "email": "ann@example.com", "password": password }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let ann = c.login(password).await;
    let r = c
        .with(Method::POST, "/api/payment-methods", &ann)
        .header("idempotency-key", "card-1")
        .json(&json!({
            "card_number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2040,
            "cvc": "123", "billing_country": "US"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let card: Value = r.json().await.unwrap();

    let r = c
        .with(Method::POST, "/api/orders", &ann)
        .header("idempotency-key", "order-1")
        .json(&json!({ "items": [{ "sku": "MUG-1", "qty": 2 }], "payment_method_id": card["id"] }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let order: Value = r.json().await.unwrap();
    let id = order["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let order = loop {
        let o: Value = c
            .with(Method::GET, &format!("/api/orders/{id}"), &ann)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if o["status"] == "confirmed" || o["status"] == "cancelled" {
            break o;
        }
        assert!(Instant::now() < deadline, "the order did not settle: {o}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(order["status"], "confirmed", "{order}");

    let stock: Value = c
        .with(Method::GET, "/api/inventory/MUG-1", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(1), Some(0)),
        "{stock}"
    );
    let intents: Value = c
        .with(
            Method::GET,
            &format!("/api/payment-intents?order_id={id}"),
            &admin,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let intent = &intents["items"][0];
    assert_eq!(intent["status"], "succeeded", "{intents}");
    assert_eq!(intent["amount_captured"], 2500, "{intents}");
    let ledger: Value = c
        .with(Method::GET, "/api/ledger/balance", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ledger["sum"], 0, "{ledger}");
}
