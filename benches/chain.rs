//! The gateway's whole per-request chain, without sockets: a parsed HTTP/1.1 request driven
//! through `GatewayProxy`'s Pingora phases exactly as Pingora calls them on a proxied request
//! (`request_filter`, `upstream_peer`, `upstream_request_filter`, `upstream_response_filter`,
//! `response_filter`, `logging`). That is: snapshot load, client IP, request id, trace
//! context, path normalization, route match on a 10-route table, each filter's `on_request`,
//! backend selection, the forwarding headers, each filter's `on_response` and the response
//! headers it queued, and the metrics (in-flight gauge, per-filter `continue` counters, the
//! upstream and request histograms, the request counter). Not measured: parsing the request
//! (done untimed per iteration), sockets, the upstream.
//!
//! The target route `orders` is the same in every case but for its filters:
//!
//! * `none`: no filters, the baseline.
//! * `rate_limit`: a local `rate_limit` keyed on `claim:sub`, 1 000 000/s (never refuses).
//!   Its burst defaults to the rate, so its response-field values lie beyond the filter's
//!   prebuilt tables (values up to 1 024) and are formatted per request.
//! * `rate_limit/burst1k`: the same with `burst = 1000`, whose values are all prebuilt, as
//!   with any ordinary limit.
//! * `jwt_rl/{HS256,EdDSA}/cached`: `jwt` then that `rate_limit`, the token already in the
//!   verified-token cache (a client sending the same token again).
//! * `jwt_rl/{HS256,EdDSA}/cold`: the same with `cache_entries = 0` (every request verifies
//!   the signature and the claims).
//!
//! Every request carries the same `Authorization: Bearer` header, so the difference between
//! a case and `none` is the filters' cost. Each iteration also pays one
//! `futures::executor::block_on` per phase (nothing waits on I/O, so each completes on its first
//! poll).
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not the wall clock:
//! on a shared machine the wall clock also counts the time other processes held the core. All
//! the work runs on that thread (no runtime is running, so nothing is spawned).
//!
//! `cargo bench --bench chain -- --quick`

use std::hint::black_box;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use futures::executor::block_on;
use gatehouse::config::Source;
use gatehouse::filter::{RequestHeader, ResponseHeader};
use gatehouse::observe::Metrics;
use gatehouse::proxy::GatewayProxy;
use gatehouse::{ConfigStore, FilterRegistry, Snapshot};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pingora_proxy::{ProxyHttp, Session};

const SECRET: &str = "bench-secret-bench-secret-bench-123";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

/// The filters every case declares; a case only changes which ones `orders` lists.
fn filters_text() -> String {
    let jwt = |name: &str, key: String, alg: &str, cache: usize| {
        format!(
            "[filters.{name}]\nkind = \"jwt\"\n{key}\nalgorithms = [\"{alg}\"]\n\
             issuer = \"gatehouse\"\naudience = \"gatehouse-api\"\ncache_entries = {cache}\n\
             forward_claims = {{ \"x-user-id\" = \"sub\" }}\n\n"
        )
    };
    let hs = || format!("secret = {SECRET:?}");
    let ed = || format!("public_key_file = {:?}", fixture("ed25519.pub.pem"));
    [
        jwt("hs256-cached", hs(), "HS256", 10_000),
        jwt("hs256-cold", hs(), "HS256", 0),
        jwt("eddsa-cached", ed(), "EdDSA", 10_000),
        jwt("eddsa-cold", ed(), "EdDSA", 0),
        "[filters.per-user]\nkind = \"rate_limit\"\nrate = \"1000000/s\"\nkey = [\"claim:sub\"]\n\n"
            .to_string(),
        "[filters.per-user-burst1k]\nkind = \"rate_limit\"\nrate = \"1000000/s\"\nburst = 1000\n\
         key = [\"claim:sub\"]\n\n"
            .to_string(),
    ]
    .concat()
}

/// Ten routes as an operator writes them; `orders` (ranked among them by its prefix) carries
/// `filters`.
fn config_text(filters: &[&str]) -> String {
    let mut t = String::from(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nthreads = 1\n\n\
         [[upstreams]]\nname = \"backend\"\nbackends = [\"127.0.0.1:18081\"]\n\n",
    );
    t.push_str(&filters_text());
    let list = filters
        .iter()
        .map(|f| format!("{f:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    for (name, prefix) in [
        ("health", "/health"),
        ("users", "/api/users"),
        ("carts", "/api/carts"),
        ("orders", "/api/orders"),
        ("payments", "/api/payments"),
        ("catalog", "/api/catalog"),
        ("search", "/api/search"),
        ("static", "/static"),
        ("admin", "/internal/admin"),
        ("legacy", "/v1"),
    ] {
        let chain = if name == "orders" { list.as_str() } else { "" };
        t.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\n\
             upstream = \"backend\"\nfilters = [{chain}]\n\n"
        ));
    }
    t
}

fn proxy(filters: &[&str]) -> GatewayProxy {
    let registry = FilterRegistry::builtin();
    let snapshot = Snapshot::from_source(&Source::inline(config_text(filters)), 1, None, &registry)
        .expect("bench config builds");
    let metrics = Arc::new(Metrics::new());
    let store = ConfigStore::new(snapshot, None, Arc::clone(&metrics), registry);
    GatewayProxy::new(Arc::new(store), metrics, None)
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "sub": "user-42",
        "iss": "gatehouse",
        "aud": "gatehouse-api",
        "iat": now,
        "exp": now + 3600,
        "roles": ["customer"],
    });
    encode(&Header::new(alg), &claims, key).expect("sign")
}

/// A request as wrk sends it, parsed by Pingora as if it had arrived on a connection.
fn session(token: &str) -> Session {
    let raw = format!(
        "GET /api/orders/42 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench\r\n\
         Accept: */*\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let mut session = Session::new_h1(Box::new(Cursor::new(raw.into_bytes())));
    assert!(block_on(session.read_request()).expect("request parses"));
    session
}

/// One request through every phase the proxy runs for a proxied request.
fn serve(proxy: &GatewayProxy, session: &mut Session) {
    let mut ctx = proxy.new_ctx();
    let answered = block_on(proxy.request_filter(session, &mut ctx)).expect("request phase");
    assert!(!answered, "the chain answered the request itself");
    let peer = block_on(proxy.upstream_peer(session, &mut ctx)).expect("a backend");
    black_box(peer);
    let mut upstream_request: RequestHeader = session.req_header().clone();
    block_on(proxy.upstream_request_filter(session, &mut upstream_request, &mut ctx))
        .expect("forwarding headers");
    black_box(upstream_request);
    let mut response = ResponseHeader::build(200, Some(4)).expect("response");
    response
        .insert_header("content-length", "20")
        .expect("header");
    block_on(proxy.upstream_response_filter(session, &mut response, &mut ctx)).expect("upstream");
    block_on(proxy.response_filter(session, &mut response, &mut ctx)).expect("response phase");
    black_box(response);
    block_on(proxy.logging(session, None, &mut ctx));
}

/// CPU time of the calling thread, in nanoseconds.
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, as the wall clock's are: print them the same way.
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn bench(c: &mut Criterion<ThreadCpuTime>) {
    let hs = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    let ed_pem = std::fs::read(fixture("ed25519.key.pem")).expect("fixture");
    let ed = token(
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(&ed_pem).expect("ed key"),
    );
    let cases: [(&str, &str, &[&str]); 7] = [
        ("none", &hs, &[]),
        ("rate_limit", &hs, &["per-user"]),
        ("rate_limit/burst1k", &hs, &["per-user-burst1k"]),
        ("jwt_rl/HS256/cached", &hs, &["hs256-cached", "per-user"]),
        ("jwt_rl/HS256/cold", &hs, &["hs256-cold", "per-user"]),
        ("jwt_rl/EdDSA/cached", &ed, &["eddsa-cached", "per-user"]),
        ("jwt_rl/EdDSA/cold", &ed, &["eddsa-cold", "per-user"]),
    ];
    let mut group = c.benchmark_group("request_chain");
    for (label, token, filters) in cases {
        let proxy = proxy(filters);
        // Warms the token cache and resolves the metric handles, as the first request does.
        serve(&proxy, &mut session(token));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_batched(
                || session(token),
                |mut s| {
                    serve(&proxy, &mut s);
                    s
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(ThreadCpuTime)
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
