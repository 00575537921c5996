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

/// Starts `gateway run` on the shipped platform config with every port replaced.
fn start(dir: &Path) -> (Running, String) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/platform.toml");
    let (edge, admin, user) = (free_port(), free_port(), free_port());
    let text = std::fs::read_to_string(shipped)
        .expect("config/platform.toml")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{edge}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:3001", &format!("127.0.0.1:{user}"));
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
        let r = self
            .post(
                "/api/auth/login",
                json!({ "email": "ann@example.com", "password": password }),
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
