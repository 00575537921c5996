//! Test harness for services on the kit: a fresh database per test and an app served on
//! port 0 with a real client.
//!
//! Every storage test runs on SQLite (a file in a temporary folder) and, when
//! `TEST_DATABASE_URL` is set, on PostgreSQL in a schema of its own that is dropped
//! afterwards:
//!
//! ```ignore
//! for db in kit::testing::databases().await {
//!     let app = spawn_app(router(state(db.db.clone()))).await;
//!     // …
//! }
//! ```
//!
//! Event tests get a NATS JetStream bus with [`nats`] when `TEST_NATS_URL` is set: a stream
//! and subject prefix of their own, deleted afterwards, so tests run in parallel.
//!
//! Logs are printed only when `TEST_LOG` is set.

use std::net::SocketAddr;
use std::sync::Once;
use std::sync::{Arc, Mutex};

use axum::Router;
use tokio::sync::oneshot;

pub mod binary;

use crate::bus::{NatsBus, NatsOptions};
use crate::db::{Db, DbKind};

/// A database that lives as long as the test: a SQLite file in a temporary folder, or a
/// PostgreSQL schema dropped on drop.
pub struct TestDb {
    /// The connected, unmigrated database.
    pub db: Db,
    /// The URL it was opened with (for a second pool or a restart).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

impl TestDb {
    /// `sqlite` or `postgres`, for assertion messages.
    pub fn label(&self) -> &'static str {
        match self.db.kind() {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
        }
    }
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestDb({})", self.label())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, schema)) = self.pg_schema.take() else {
            return;
        };
        // Drop runs inside the test's runtime: drop the schema from a thread of its own. The
        // test's runtime is blocked meanwhile, so a task of the test that still holds a lock
        // in the schema can never release it: bound the wait (and the whole drop) instead of
        // hanging, and leave the schema behind with a message.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let drop_schema = async {
                        let db = Db::connect(&admin_url).await.ok()?;
                        let mut conn = db.pool().acquire().await.ok()?;
                        sqlx::query("SET lock_timeout = '3s'")
                            .execute(&mut *conn)
                            .await
                            .ok()?;
                        let dropped =
                            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                                .execute(&mut *conn)
                                .await
                                .is_ok();
                        drop(conn);
                        db.close().await;
                        Some(dropped)
                    };
                    let done =
                        tokio::time::timeout(std::time::Duration::from_secs(10), drop_schema).await;
                    if !matches!(done, Ok(Some(true))) {
                        eprintln!(
                            "test schema {schema} was left behind (still locked by the test)"
                        );
                    }
                });
            }
        })
        .join();
    }
}

/// Installs a log subscriber once when `TEST_LOG` is set.
pub fn init_test_log() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug")),
                )
                .with_test_writer()
                .try_init();
        }
    });
}

/// A fresh SQLite database in a temporary folder.
pub async fn sqlite() -> TestDb {
    init_test_log();
    let dir = tempfile::tempdir().expect("temporary folder");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let db = Db::connect(&url).await.expect("open sqlite");
    TestDb {
        db,
        url,
        _dir: Some(dir),
        pg_schema: None,
    }
}

/// A fresh PostgreSQL schema on `TEST_DATABASE_URL`, or `None` (with a message saying what
/// is needed) when it is not set.
pub async fn postgres() -> Option<TestDb> {
    init_test_log();
    let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
        eprintln!("skipping PostgreSQL: set TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test)");
        return None;
    };
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = Db::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("TEST_DATABASE_URL={admin_url} is set but unreachable: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(admin.pool())
        .await
        .expect("create test schema");
    admin.close().await;
    let sep = if admin_url.contains('?') { '&' } else { '?' };
    let url = format!("{admin_url}{sep}options=-c%20search_path%3D{schema}");
    let db = Db::connect(&url).await.expect("connect to test schema");
    Some(TestDb {
        db,
        url,
        _dir: None,
        pg_schema: Some((admin_url, schema)),
    })
}

/// SQLite always, plus PostgreSQL when `TEST_DATABASE_URL` is set: run a storage test on
/// each.
pub async fn databases() -> Vec<TestDb> {
    let mut all = vec![sqlite().await];
    all.extend(postgres().await);
    all
}

/// A NATS JetStream bus on a stream of its own, deleted on drop.
pub struct TestNats {
    /// The connected bus.
    pub bus: NatsBus,
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let options = self.bus.options().clone();
        // Drop runs inside the test's runtime, which drives the bus's connection and is
        // blocked here: delete over a connection of a thread of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let deleted = match async_nats::connect(&options.url).await {
                        Ok(client) => async_nats::jetstream::new(client)
                            .delete_stream(&options.stream)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = deleted {
                        eprintln!("could not delete test stream {}: {e}", options.stream);
                    }
                });
            }
        })
        .join();
    }
}

/// A JetStream bus on `TEST_NATS_URL` with a unique stream and subject prefix, adjusted by
/// `configure` (e.g. a short `ack_wait`), or `None` (with a message saying what is needed)
/// when it is not set.
pub async fn nats_with(configure: impl FnOnce(&mut NatsOptions)) -> Option<TestNats> {
    init_test_log();
    let Ok(url) = std::env::var("TEST_NATS_URL") else {
        eprintln!("skipping NATS: set TEST_NATS_URL (e.g. nats://127.0.0.1:4222)");
        return None;
    };
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let mut options = NatsOptions::new(&url);
    options.stream = format!("TEST_{unique}");
    options.subject_prefix = format!("t{unique}");
    options.max_age = std::time::Duration::from_secs(3600);
    configure(&mut options);
    let bus = NatsBus::connect(options)
        .await
        .unwrap_or_else(|e| panic!("TEST_NATS_URL={url} is set but unusable: {e:?}"));
    Some(TestNats { bus })
}

/// [`nats_with`] the default options.
pub async fn nats() -> Option<TestNats> {
    nats_with(|_| {}).await
}

/// An app served on `127.0.0.1:0` until dropped.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client without a cookie jar or proxy.
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
}

impl TestApp {
    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `app` on a free port and returns a client for it.
pub async fn spawn_app(app: Router) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = crate::serve::serve(listener, app, async {
            let _ = stopped.await;
        })
        .await;
    });
    TestApp {
        addr,
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        stop: Some(stop),
    }
}

/// Everything the process logs from now on, at TRACE (SQL statements included), kept in
/// memory so a test can look for secrets in it. Installs the global subscriber: one per
/// test binary, before anything logs.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Starts capturing.
    pub fn install() -> CapturedLogs {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        logs
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The embedded bus with its log in memory (the same code as on disk).
pub async fn bus() -> Arc<dyn crate::EventBus> {
    bus_with(crate::bus::InProcessOptions::default()).await
}

/// [`bus`] with `options` (e.g. a short `ack_wait`).
pub async fn bus_with(options: crate::bus::InProcessOptions) -> Arc<dyn crate::EventBus> {
    Arc::new(
        crate::InProcessBus::in_memory(options)
            .await
            .expect("an in-memory SQLite bus"),
    )
}

/// A signing key and a verifier that trusts it (issuer `gatehouse-user`, audience
/// `gatehouse`, as the services' defaults), to mint access tokens in tests.
#[derive(Clone)]
pub struct TestKeys {
    /// The key tokens are signed with.
    pub key: crate::identity::SigningKey,
    /// Trusts exactly that key.
    pub verifier: Arc<crate::Verifier>,
}

impl Default for TestKeys {
    fn default() -> TestKeys {
        let key = crate::identity::SigningKey::generate();
        let keys = crate::identity::LocalKeys::new(jsonwebtoken::jwk::JwkSet {
            keys: vec![key.public_jwk()],
        });
        let verifier = crate::Verifier::local(keys, "gatehouse-user", "gatehouse");
        TestKeys {
            key,
            verifier: Arc::new(verifier),
        }
    }
}

impl TestKeys {
    /// An access token for `sub` with `roles` and `perms`, valid for ten minutes.
    pub fn token(&self, sub: &str, roles: &[&str], perms: &[&str]) -> String {
        let now = crate::db::now_ms() / 1000;
        self.key.sign(&crate::identity::AccessClaims {
            sub: sub.into(),
            iss: "gatehouse-user".into(),
            aud: "gatehouse".into(),
            exp: now + 600,
            iat: now,
            jti: crate::db::new_id(),
            sid: "s".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            perms: perms.iter().map(|p| p.to_string()).collect(),
        })
    }
}

/// A loopback port nothing listens on, for a server a test starts later by number (a
/// config file, another process). Picked below Linux's ephemeral range (32768–60999 by
/// default), from which every outgoing connection takes its local port: a port taken by
/// binding port 0 and releasing it can be grabbed by one of the many client sockets a test
/// run opens before the server binds it; one down here cannot. Ports are handed out in
/// turn within a process, from a start that differs between processes.
pub fn unused_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no unused loopback port between {LOW} and {}", LOW + SPAN)
}

/// `text` (a config) with every `127.0.0.1:{port}` of `fixed` moved to an unused port, and
/// where each went. In one pass through placeholders: replacing port by port would rewrite
/// a new port that starts with a later fixed one (30012 after 3001 becomes "<port>2").
pub fn rebind_ports(
    text: &str,
    fixed: &[&str],
) -> (String, std::collections::HashMap<String, u16>) {
    let mut text = text.to_owned();
    for (i, port) in fixed.iter().enumerate() {
        text = text.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:@{i}@"));
    }
    let mut moved = std::collections::HashMap::new();
    for (i, port) in fixed.iter().enumerate() {
        let new = unused_port();
        text = text.replace(&format!("127.0.0.1:@{i}@"), &format!("127.0.0.1:{new}"));
        moved.insert((*port).to_owned(), new);
    }
    (text, moved)
}

/// Polls `check` every 20 ms until it returns `Some`, failing with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
