//! SIGTERM to the real binary under load: requests in flight finish, `/ready` answers 503
//! while the gateway drains, and the process exits once drained rather than after its
//! timeout.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

/// Kills and reaps the gateway child however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An upstream whose every answer takes `delay`.
async fn slow_upstream(delay: Duration) -> SocketAddr {
    let app = axum::Router::new().fallback(move || async move {
        tokio::time::sleep(delay).await;
        "slow hello"
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

struct Running {
    child: ChildGuard,
    proxy: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.0.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Wait for the process to exit; how long it took.
    fn wait_exit(&mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                assert!(status.success(), "exit {status}\n{}", self.log());
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "still running {limit:?} after SIGTERM\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

async fn start(upstream: SocketAddr, server: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let (proxy_port, admin_port) = (kit::testing::unused_port(), kit::testing::unused_port());
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = ["127.0.0.1:{proxy_port}"]
threads = 2
{server}

[admin]
listen = "127.0.0.1:{admin_port}"

[[upstreams]]
name = "slow"
backends = ["{upstream}"]

[[routes]]
name = "all"
upstream = "slow"
retry = {{ attempts = 1 }}
"#
        ),
    )
    .unwrap();
    let log = dir.path().join("gateway.log");
    let child = ChildGuard(
        Command::new(GATEWAY)
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start gateway run"),
    );
    let running = Running {
        child,
        proxy: ([127, 0, 0, 1], proxy_port).into(),
        admin: ([127, 0, 0, 1], admin_port).into(),
        _dir: dir,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("http://{}/ready", running.admin))
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(Instant::now() < deadline, "not ready\n{}", running.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_sigterm_finish_and_the_process_exits_once_drained() {
    let upstream = slow_upstream(Duration::from_millis(1500)).await;
    let mut gateway = start(upstream, "shutdown_timeout = \"20s\"").await;
    // 40 requests, each on a kept-alive connection of its own, all waiting on the upstream.
    let client = reqwest::Client::new();
    let requests: Vec<_> = (0..40)
        .map(|i| {
            let (client, url) = (client.clone(), format!("http://{}/r{i}", gateway.proxy));
            tokio::spawn(async move {
                let response = client.get(url).send().await?;
                let status = response.status();
                let body = response.text().await?;
                Ok::<_, reqwest::Error>((status, body))
            })
        })
        .collect();
    // All 40 are waiting on the upstream by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway.terminate();
    let exit = tokio::task::spawn_blocking(move || {
        let took = gateway.wait_exit(Duration::from_secs(15));
        (took, gateway)
    });
    let mut served = 0;
    for r in requests {
        let (status, body) = r.await.unwrap().expect("an accepted request failed");
        assert_eq!(status, 200);
        assert_eq!(body, "slow hello");
        served += 1;
    }
    assert_eq!(served, 40);
    let (took, gateway) = exit.await.unwrap();
    // The requests needed about a second more; the process did not wait out its 20 s timeout.
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(8),
        "exited {took:?} after SIGTERM\n{}",
        gateway.log()
    );
    // The listener is closed.
    assert!(std::net::TcpStream::connect(gateway.proxy).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_ready_flips_to_503_first_and_no_accepted_request_fails() {
    let upstream = slow_upstream(Duration::from_millis(100)).await;
    let gateway = start(
        upstream,
        "grace_period = \"1s\"\nshutdown_timeout = \"20s\"",
    )
    .await;
    // A load balancer's view: keep sending while /ready says 200.
    let sending = Arc::new(AtomicBool::new(true));
    let (ok, failed, refused) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let client = reqwest::Client::new();
    let load: Vec<_> = (0..32)
        .map(|i| {
            let (client, url) = (client.clone(), format!("http://{}/load{i}", gateway.proxy));
            let (sending, ok, failed, refused) =
                (sending.clone(), ok.clone(), failed.clone(), refused.clone());
            tokio::spawn(async move {
                let mut errors = Vec::new();
                while sending.load(Ordering::Relaxed) {
                    let outcome = match client.get(&url).send().await {
                        Ok(r) => {
                            let status = r.status();
                            r.text().await.map(|body| (status, body))
                        }
                        Err(e) => Err(e),
                    };
                    match outcome {
                        Ok((status, body)) if status == 200 && body == "slow hello" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.is_connect() => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("{other:?}"));
                        }
                    }
                }
                errors
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ok.load(Ordering::Relaxed);
    assert!(before > 0, "the load runs");
    gateway.terminate();
    let sigterm = Instant::now();
    // /ready answers 503 while the proxy still serves.
    let http = reqwest::Client::new();
    loop {
        let ready = http
            .get(format!("http://{}/ready", gateway.admin))
            .send()
            .await
            .expect("the admin listener stays up while draining");
        if ready.status() == 503 {
            break;
        }
        assert!(
            sigterm.elapsed() < Duration::from_millis(500),
            "/ready never said 503"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let flipped = sigterm.elapsed();
    let served_while_draining = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        ok.load(Ordering::Relaxed) > served_while_draining,
        "the proxy kept serving during the grace period"
    );
    // The load balancer stops sending; what is in flight must finish.
    sending.store(false, Ordering::Relaxed);
    let mut errors = Vec::new();
    for task in load {
        errors.extend(task.await.unwrap());
    }
    let mut gateway = gateway;
    let took = tokio::task::spawn_blocking(move || {
        let took = gateway.wait_exit(Duration::from_secs(15));
        (took, gateway.log())
    })
    .await
    .unwrap();
    eprintln!(
        "{} served, {} failed, {} refused; /ready said 503 {flipped:?} after SIGTERM; exited {:?} after it",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        took.0
    );
    assert!(
        errors.is_empty(),
        "accepted requests failed: {errors:#?}\n{}",
        took.1
    );
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "connections refused before /ready said 503"
    );
    assert!(took.0 < Duration::from_secs(5), "{}", took.1);
}
