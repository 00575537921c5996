//! Measures the notification service (run by `benches/notifications.sh`; release builds).
//!
//! - **latency**: the real `gateway` binary runs the shipped platform config (ports moved,
//!   SQLite and the embedded bus, as `cargo run … --config config/platform.toml` does).
//!   `--users` accounts hold `--clients` WebSockets between them. Each event is a real one:
//!   a user ends one of their sessions (`DELETE /api/users/me/sessions/{id}`; the user
//!   service commits `user.session_revoked` with the revocation) and the security notice
//!   reaches every socket of theirs. Latency = frame received − DELETE sent (an upper
//!   bound on commit → frame). The same run measures the sockets connected to the
//!   notification service directly, as the baseline: the ratio is the gateway's share.
//! - **memory**: `--idle` WebSockets through the gateway, idle; (RSS after − RSS before)
//!   of the platform process (gateway and services are one process) / connections.
//! - **email**: `--mails` messages through the durable queue (SQLite) to a local SMTP sink
//!   (aiosmtpd's discarding handler), `--concurrency` at a time, against lettre sending the
//!   same messages straight to the same sink as many at a time (the baseline: what the
//!   queue costs on top of SMTP itself).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use clap::Parser;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    about = "Measures the notification service: live latency, memory per socket, email throughput"
)]
struct Args {
    /// The release `gateway` binary.
    #[arg(long, default_value = "target/release/gateway")]
    gateway: PathBuf,
    /// A bare Pingora proxy (`cargo build --release --example bare_pingora`), put in front
    /// of the service as the baseline for the gateway's memory per socket; skipped when
    /// missing.
    #[arg(long, default_value = "target/release/examples/bare_pingora")]
    bare: PathBuf,
    /// The platform config to run (its ports are moved to free ones).
    #[arg(long, default_value = "config/platform.toml")]
    config: PathBuf,
    /// What to measure.
    #[arg(long, value_delimiter = ',', default_value = "latency,memory,email")]
    run: Vec<String>,
    /// Accounts sharing the sockets.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Connected WebSockets while events are timed.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Events per path (through the gateway, then direct).
    #[arg(long, default_value_t = 400)]
    events: usize,
    /// Events per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Idle WebSockets for the memory measurement.
    #[arg(long, default_value_t = 5000)]
    idle: usize,
    /// Accounts sharing them.
    #[arg(long, default_value_t = 10)]
    idle_users: usize,
    /// Messages for the email measurement.
    #[arg(long, default_value_t = 2000)]
    mails: usize,
    /// Messages in flight at once, for the queue (its SEND_CONCURRENCY) and the baseline.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wants = |what: &str| args.run.iter().any(|r| r == what);
    if wants("latency") {
        let platform = Platform::start(&args.gateway, &args.config, &[])?;
        let http = reqwest::Client::new();
        platform.ready(&http).await?;
        let users = register(&http, &platform.edge, args.users).await?;
        let via = latency(&http, &platform, &users, &args, Route::Gateway).await?;
        let direct = latency(&http, &platform, &users, &args, Route::Direct).await?;
        println!(
            "latency ratio gateway/direct: p50 {:.2}, p99 {:.2}",
            via.0 / direct.0,
            via.1 / direct.1
        );
    }
    if wants("memory") {
        // A fresh platform per route: memory freed by one run would be reused by the next.
        let mut per = Vec::new();
        let mut bare = None;
        for route in [Route::Direct, Route::Gateway] {
            // Logging in hashes each password with 19 MiB (argon2id); glibc keeps freed
            // blocks that size in its per-thread arenas once its mmap threshold has risen,
            // and the sockets would then reuse them unseen. A fixed threshold hands them
            // back to the system, so the RSS before the sockets is the platform's own.
            let fixed = [("MALLOC_MMAP_THRESHOLD_", "131072")];
            let platform = Platform::start(&args.gateway, &args.config, &fixed)?;
            let http = reqwest::Client::new();
            platform.ready(&http).await?;
            let users = register(&http, &platform.edge, args.idle_users).await?;
            per.push(memory(&platform, platform.child.id(), &users, args.idle, route).await?);
            if route == Route::Direct && args.bare.exists() {
                let port = kit::testing::unused_port();
                let mut proxy = Command::new(&args.bare)
                    .env("BARE_LISTEN", format!("127.0.0.1:{port}"))
                    .env(
                        "BARE_UPSTREAM",
                        platform.notification.trim_start_matches("http://"),
                    )
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
                let deadline = Instant::now() + Duration::from_secs(15);
                while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                    anyhow::ensure!(Instant::now() < deadline, "bare_pingora did not start");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let route = Route::Bare(port);
                bare = Some(memory(&platform, proxy.id(), &users, args.idle, route).await?);
                let _ = proxy.kill();
                let _ = proxy.wait();
            }
        }
        println!(
            "memory: the gateway's share {:.1} KiB per connection, the service's {:.1} KiB{}",
            per[1] - per[0],
            per[0],
            bare.map(|b| format!("; a bare Pingora proxy's {b:.1} KiB"))
                .unwrap_or_default()
        );
    }
    if wants("email") {
        email(args.mails, args.concurrency).await?;
    }
    Ok(())
}

/// The platform binary on free ports, in a temporary folder.
struct Platform {
    child: Child,
    edge: String,
    notification: String,
    _dir: tempfile::TempDir,
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Platform {
    /// `env` is set on the process.
    fn start(
        gateway: &std::path::Path,
        config: &std::path::Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Platform> {
        let mut text = std::fs::read_to_string(config)?;
        let (moved, ports) = kit::testing::rebind_ports(
            &text,
            &[
                "8080", "9090", "3001", "3002", "3003", "3004", "3005", "3006", "3009",
            ],
        );
        text = moved;
        // Every account logs in from this one address: lift the per-IP limit on the auth
        // endpoints, so the limiter is not what is measured.
        text = text.replace(
            "rate = \"10/s\"\nburst = 20",
            "rate = \"10000/s\"\nburst = 10000",
        );
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("platform.toml");
        std::fs::write(&path, text)?;
        let child = Command::new(std::fs::canonicalize(gateway)?)
            .args(["run", "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("gateway.log"))?)
            .spawn()?;
        Ok(Platform {
            child,
            edge: format!("http://127.0.0.1:{}", ports["8080"]),
            notification: format!("http://127.0.0.1:{}", ports["3005"]),
            _dir: dir,
        })
    }

    async fn ready(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let jwks = http.get(format!("{}/.well-known/jwks.json", self.edge));
            if jwks.send().await.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the platform did not come up")
    }
}

/// The resident memory of process `pid`.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))
}

struct User {
    token: String,
    email: String,
}

const PASSWORD: &str = "a long enough benchmark passphrase";

async fn register(http: &reqwest::Client, edge: &str, n: usize) -> anyhow::Result<Vec<User>> {
    let started = Instant::now();
    let users = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let email = format!("bench{i}@example.com");
            let body = json!({"email": email, "password": PASSWORD});
            let r = http
                .post(format!("{edge}/api/users"))
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(r.status() == 201, "register: {}", r.status());
            let token = login(http, edge, &email).await?;
            Ok(User { token, email })
        })
        .buffered(4)
        .collect::<Vec<anyhow::Result<User>>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<User>>>()?;
    eprintln!("{n} accounts in {:.1}s", started.elapsed().as_secs_f64());
    Ok(users)
}

async fn login(http: &reqwest::Client, edge: &str, email: &str) -> anyhow::Result<String> {
    let r = http
        .post(format!("{edge}/api/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "login: {}", r.status());
    let pair: Value = r.json().await?;
    Ok(pair["access_token"].as_str().unwrap_or_default().to_owned())
}

fn claims(token: &str) -> anyhow::Result<Value> {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[derive(Clone, Copy, PartialEq)]
enum Route {
    Gateway,
    Direct,
    /// Through `bare_pingora` on this port.
    Bare(u16),
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Gateway => "through the gateway",
            Route::Direct => "direct to the service",
            Route::Bare(_) => "through a bare Pingora proxy (its process)",
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(p: &Platform, path: Route, token: &str) -> anyhow::Result<Socket> {
    let url = match path {
        Route::Gateway => format!("{}/api/notifications/ws", p.edge),
        Route::Direct => format!("{}/notifications/ws", p.notification),
        Route::Bare(port) => format!("http://127.0.0.1:{port}/notifications/ws"),
    };
    let mut req = url.replace("http://", "ws://").into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// Opens `n` sockets, socket i for user i mod users, 50 handshakes at a time.
async fn open(p: &Platform, path: Route, users: &[User], n: usize) -> anyhow::Result<Vec<Socket>> {
    futures_util::stream::iter(0..n)
        .map(|i| connect(p, path, &users[i % users.len()].token))
        .buffered(50)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Returns (p50, p99) in ms.
async fn latency(
    http: &reqwest::Client,
    p: &Platform,
    users: &[User],
    args: &Args,
    path: Route,
) -> anyhow::Result<(f64, f64)> {
    let name = path.name();
    // The sessions to end, made first (logins hash passwords: not while timing).
    let mut sessions = Vec::with_capacity(args.events);
    for i in 0..args.events {
        let u = i % users.len();
        let token = login(http, &p.edge, &users[u].email).await?;
        sessions.push((
            u,
            claims(&token)?["sid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    // When the event for each user was sent (one at a time per user), and what arrived.
    let sent: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<f64>>> = Arc::default();
    let sockets = open(p, path, users, args.clients).await?;
    let mut readers = Vec::new();
    for (i, mut socket) in sockets.into_iter().enumerate() {
        let (sent, samples) = (sent.clone(), samples.clone());
        let u = i % users.len();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(m)) = socket.next().await {
                let Message::Text(text) = m else { continue };
                let at = Instant::now();
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                if v["notification"]["kind"] != "session_revoked" {
                    continue;
                }
                if let Some(t0) = sent.lock().unwrap().get(&u) {
                    samples
                        .lock()
                        .unwrap()
                        .push(at.duration_since(*t0).as_secs_f64() * 1000.0);
                }
            }
        }));
    }
    // Let the welcome notices and any replay pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    samples.lock().unwrap().clear();
    let gap = Duration::from_secs_f64(1.0 / args.rate);
    let mut tick = tokio::time::interval(gap);
    for (u, sid) in &sessions {
        tick.tick().await;
        sent.lock().unwrap().insert(*u, Instant::now());
        let r = http
            .delete(format!("{}/api/users/me/sessions/{sid}", p.edge))
            .bearer_auth(&users[*u].token)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 204, "ending a session: {}", r.status());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in &readers {
        r.abort();
    }
    let mut s = std::mem::take(&mut *samples.lock().unwrap());
    let expected = args.events * args.clients / users.len();
    s.sort_by(f64::total_cmp);
    let q = |f: f64| s[((s.len() as f64 * f) as usize).min(s.len() - 1)];
    anyhow::ensure!(!s.is_empty(), "no frames arrived");
    println!(
        "latency {name}: {} clients, {} events at {}/s: {}/{} frames, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.clients,
        args.events,
        args.rate,
        s.len(),
        expected,
        q(0.5),
        q(0.9),
        q(0.99),
        s[s.len() - 1]
    );
    Ok((q(0.5), q(0.99)))
}

/// RSS of process `pid` per idle socket, over `n` sockets on `route`.
async fn memory(
    p: &Platform,
    pid: u32,
    users: &[User],
    n: usize,
    route: Route,
) -> anyhow::Result<f64> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid)?;
    let sockets = open(p, route, users, n).await?;
    // Let every connection settle (the sockets stay idle: nobody reads them).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_kib(pid)?;
    let per = after.saturating_sub(before) as f64 / n as f64;
    println!(
        "memory: {n} idle WebSockets {}: RSS {before} → {after} KiB, {per:.1} KiB per connection",
        route.name()
    );
    drop(sockets);
    Ok(per)
}

async fn email(n: usize, concurrency: usize) -> anyhow::Result<()> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
    use notification_service::catalog::{kind, Channel};
    use notification_service::email::MailTarget;
    use notification_service::{queue, Service, Settings};

    let port = kit::testing::unused_port();
    let mut sink = Command::new("python3")
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "aiosmtpd.handlers.Sink"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("aiosmtpd (pip install aiosmtpd): {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "aiosmtpd did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("smtp://127.0.0.1:{port}");
    let dir = tempfile::tempdir()?;
    let mut settings = Settings::to_files(dir.path().join("mail"));
    settings.mail = MailTarget::Smtp {
        url: url.clone(),
        credentials: None,
    };
    settings.concurrency = concurrency;
    let k = kind("order_confirmed").expect("a kind");
    let data = json!({"order_id": "o-1", "total": 2500, "currency": "EUR"});

    // Baseline: lettre sends the same messages to the same sink, one after another.
    let templates = Arc::new(notification_service::catalog::Templates::default());
    let builder = notification_service::email::EmailSender::new(
        &MailTarget::Files(dir.path().join("unused")),
        &settings.mail_from,
        &settings.public_url,
        templates,
        notification_service::unsubscribe::Signer::new(settings.link_key.clone()),
    )?;
    let smtp = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)?.build();
    let messages = (0..n)
        .map(|i| {
            let d = queue::Delivery {
                id: format!("baseline-{i}"),
                event_id: format!("event-{i}"),
                channel: Channel::EMAIL,
                recipient: format!("user{i}@example.com"),
                user_id: None,
                category: k.category,
                kind: k.name.to_owned(),
                data: data.clone(),
                attempt: 1,
            };
            builder.message(&d).map_err(|o| anyhow::anyhow!("{o:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let sent: Vec<_> = futures_util::stream::iter(messages)
        .map(|m| smtp.send(m))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    anyhow::ensure!(sent.iter().all(|r| r.is_ok()), "the sink refused a message");
    let direct = n as f64 / started.elapsed().as_secs_f64();

    // The queue: rows committed, then drained by the service's worker.
    let db = kit::Db::connect(&format!(
        "sqlite://{}",
        dir.path().join("notification.db").display()
    ))
    .await?;
    notification_service::migrate(&db).await?;
    let mut tx = db.begin().await?;
    for i in 0..n {
        queue::enqueue(
            &mut tx,
            &format!("event-{i}"),
            &Channel::EMAIL,
            &format!("user{i}@example.com"),
            None,
            k,
            &data,
        )
        .await?;
    }
    tx.commit().await?;
    let started = Instant::now();
    let keys = kit::testing::TestKeys::default();
    let service = Service::start(
        db.clone(),
        settings,
        keys.verifier.clone(),
        kit::testing::bus().await,
        Vec::new(),
    )
    .await?;
    loop {
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE state <> 'sent'")
            .fetch_one(db.pool())
            .await?;
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{left} not sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queued = n as f64 / started.elapsed().as_secs_f64();
    kit::Service::shutdown(service).await;
    let _ = sink.kill();
    let _ = sink.wait();
    println!(
        "email: {n} messages to a local SMTP sink, {concurrency} at a time: queue (SQLite) {queued:.0}/s, lettre direct {direct:.0}/s, ratio {:.2}",
        queued / direct
    );
    Ok(())
}
