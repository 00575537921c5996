//! Requests through a spawned gateway against the same client hitting the upstream directly,
//! over loopback with keep-alive connections. Each group holds a `direct` and a `gatehouse`
//! benchmark, so the ratio of the two is the gateway's cost.
//!
//! * `proxy_sequential`: one request at a time on one kept-alive connection (latency).
//! * `proxy_concurrent_16`: 16 requests in flight on 16 kept-alive connections (throughput;
//!   reported per request).
//!
//! The upstream is a tiny axum server on its own thread answering a short body; the gateway
//! runs one proxy thread. Client, upstream and gateway share the machine, so absolute numbers
//! depend on it; the ratio is what carries over.
//!
//! `cargo bench --bench proxy -- --quick`

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::future::join_all;
use gatehouse::{Gateway, GatewayHandle};

const BODY: &str = "hello from upstream\n";
const CONCURRENCY: usize = 16;

/// Start the upstream on its own thread; returns its address.
fn start_upstream() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bench-upstream".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("upstream runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind upstream");
                tx.send(listener.local_addr().expect("upstream addr"))
                    .expect("report address");
                let app = axum::Router::new().fallback(|| async { BODY });
                axum::serve(listener, app).await.expect("upstream serves");
            });
        })
        .expect("upstream thread");
    rx.recv().expect("upstream started")
}

fn start_gateway(upstream: SocketAddr) -> GatewayHandle {
    let config = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[admin]
listen = "127.0.0.1:0"

[[upstreams]]
name = "bench"
backends = ["{upstream}"]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "bench"
retry = {{ attempts = 1 }}
"#
    );
    Gateway::builder()
        .config_toml(config)
        .build()
        .expect("gateway config builds")
        .spawn()
        .expect("gateway starts")
}

async fn get(client: &reqwest::Client, url: &str) {
    let resp = client.get(url).send().await.expect("request answered");
    assert!(resp.status().is_success(), "status {}", resp.status());
    let body = resp.bytes().await.expect("body read");
    black_box(body);
}

fn bench_proxy(c: &mut Criterion) {
    let upstream = start_upstream();
    let gateway = start_gateway(upstream);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .expect("client");
    let targets = [
        ("direct", format!("http://{upstream}/bench/item")),
        (
            "gatehouse",
            format!("http://{}/bench/item", gateway.local_addr()),
        ),
    ];
    // Both answer the same body before anything is timed.
    rt.block_on(async {
        for (_, url) in &targets {
            let body = client.get(url).send().await.unwrap().text().await.unwrap();
            assert_eq!(body, BODY, "{url}");
        }
    });

    let mut group = c.benchmark_group("proxy_sequential");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    for (name, url) in &targets {
        group.bench_with_input(BenchmarkId::from_parameter(name), url, |b, url| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        get(&client, url).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("proxy_concurrent_16");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(CONCURRENCY as u64));
    for (name, url) in &targets {
        group.bench_with_input(BenchmarkId::from_parameter(name), url, |b, url| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        join_all((0..CONCURRENCY).map(|_| get(&client, url))).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    drop(client);
    gateway.shutdown();
}

criterion_group!(benches, bench_proxy);
criterion_main!(benches);
