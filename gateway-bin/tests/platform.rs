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

#[tokio::test]
async fn register_login_me_refresh_reuse_and_logout_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, base) = start(dir.path());
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_ready(&c, &base).await;
    let password = "correct horse battery staple";

    let r = c
        .post(format!("{base}/api/users"))
        .json(&json!({ "email": "ann@example.com", "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let r = c
        .post(format!("{base}/api/auth/login"))
        .json(&json!({ "email": "ann@example.com", "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first: Value = r.json().await.unwrap();
    let access = first["access_token"].as_str().unwrap();
    let refresh = first["refresh_token"].as_str().unwrap();

    let me = c
        .get(format!("{base}/api/users/me"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(
        me.json::<Value>().await.unwrap()["email"],
        "ann@example.com"
    );
    let r = c.get(format!("{base}/api/users/me")).send().await.unwrap();
    assert_eq!(r.status(), 401, "the edge refuses a missing token");

    let r = c
        .post(format!("{base}/api/auth/refresh"))
        .json(&json!({ "refresh_token": refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.unwrap();
    let access2 = second["access_token"].as_str().unwrap();
    assert_eq!(
        c.get(format!("{base}/api/users/me"))
            .bearer_auth(access2)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The old refresh token again: refused, and the session is dead.
    let r = c
        .post(format!("{base}/api/auth/refresh"))
        .json(&json!({ "refresh_token": refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{base}/api/users/me"))
        .bearer_auth(access2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the session ended with the reuse");

    // A new login, then logout ends it.
    let r = c
        .post(format!("{base}/api/auth/login"))
        .json(&json!({ "email": "ann@example.com", "password": password }))
        .send()
        .await
        .unwrap();
    let third: Value = r.json().await.unwrap();
    let access3 = third["access_token"].as_str().unwrap();
    let r = c
        .post(format!("{base}/api/auth/logout"))
        .bearer_auth(access3)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .get(format!("{base}/api/users/me"))
        .bearer_auth(access3)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{base}/api/auth/refresh"))
        .json(&json!({ "refresh_token": third["refresh_token"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The service wrote its SQLite file and key under the working directory's data/.
    assert!(dir.path().join("data/user.db").exists());
    assert!(dir.path().join("data/user-signing-key.pem").exists());
}
