//! Passive outlier ejection and the retry budget, over real sockets: a backend that starts
//! answering 500 is ejected after the configured consecutive failures, GETs stop seeing its
//! errors, it returns after its ejection time once healthy, and its record survives a reload
//! that changes the pool; retries beyond the pool's budget are not made.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, Upstream};

/// A backend answering `name` with 200, or 500 while `failing` is set.
struct Switchable {
    addr: SocketAddr,
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

impl Switchable {
    async fn start(name: &'static str) -> Switchable {
        let failing = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (f, h) = (failing.clone(), hits.clone());
        let app = axum::Router::new().fallback(move || {
            let (f, h) = (f.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::Relaxed);
                if f.load(Ordering::Relaxed) {
                    (http::StatusCode::INTERNAL_SERVER_ERROR, "broken")
                } else {
                    (http::StatusCode::OK, name)
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Switchable {
            addr,
            failing,
            hits,
        }
    }
}

fn config(a: SocketAddr, b: SocketAddr, extra_backend: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "pool"
backends = ["{a}", "{b}"{extra_backend}]
outlier_detection = {{ consecutive_failures = 3, base_ejection_time = "1s", max_ejection_time = "10s", max_ejection_percent = 50 }}

[[routes]]
name = "all"
upstream = "pool"
retry = {{ attempts = 1 }}
"#
    )
}

async fn get(client: &reqwest::Client, addr: SocketAddr) -> (u16, String) {
    let r = client.get(support::url(addr, "/x")).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn backend(config: &Value, addr: SocketAddr) -> &Value {
    config["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr.to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_500_is_ejected_and_returns_after_its_time() {
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        support::with_test_listeners(&config(a.addr, b.addr, "")),
    )
    .unwrap();
    let gateway = support::gateway_from_file(path.clone()).await;
    let admin = gateway.admin_addr().unwrap();
    let client = support::client();

    b.failing.store(true, Ordering::Relaxed);
    let mut errors = 0;
    for _ in 0..40 {
        let (status, _) = get(&client, gateway.local_addr()).await;
        if status == 500 {
            errors += 1;
        }
    }
    // Round robin sent every other request to b until its third 500 in a row ejected it.
    assert_eq!(errors, 3, "500s seen before the ejection");
    let config = support::admin_config(&client, admin).await;
    assert_eq!(backend(&config, b.addr)["ejected"], true, "{config}");
    assert_eq!(backend(&config, b.addr)["ejections"], 1, "{config}");
    assert_eq!(backend(&config, a.addr)["ejected"], false, "{config}");
    let metrics = support::admin_metrics(&client, admin).await;
    let labels = [("upstream", "pool"), ("backend", &*b.addr.to_string())];
    assert_eq!(
        support::metric_value(&metrics, "gatehouse_upstream_ejections_total", &labels),
        Some(1.0)
    );

    // Healthy again; after its second of ejection it takes traffic.
    b.failing.store(false, Ordering::Relaxed);
    let hits_before = b.hits.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        assert_eq!(get(&client, gateway.local_addr()).await, (200, "a".into()));
    }
    assert_eq!(
        b.hits.load(Ordering::Relaxed),
        hits_before,
        "ejected b got traffic"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (status, body) = get(&client, gateway.local_addr()).await;
        assert_eq!(status, 200);
        answered.insert(body);
    }
    assert_eq!(answered.len(), 2, "b is back: {answered:?}");
    let metrics = support::admin_metrics(&client, admin).await;
    assert_eq!(
        support::metric_value(
            &metrics,
            "gatehouse_upstream_ejection_returns_total",
            &labels
        ),
        Some(1.0)
    );

    // Ejected again, then a reload adds a backend: b's ejection carries over.
    b.failing.store(true, Ordering::Relaxed);
    for _ in 0..12 {
        get(&client, gateway.local_addr()).await;
    }
    let config = support::admin_config(&client, admin).await;
    assert_eq!(backend(&config, b.addr)["ejected"], true, "{config}");
    assert_eq!(backend(&config, b.addr)["ejections"], 2, "{config}");
    let c = Upstream::start("c").await;
    let generation = config["generation"].as_u64().unwrap();
    std::fs::write(
        &path,
        support::with_test_listeners(&config_text_with(a.addr, b.addr, c.addr)),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let config = loop {
        let config = support::admin_config(&client, admin).await;
        if config["generation"].as_u64() > Some(generation) {
            break config;
        }
        assert!(Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(backend(&config, b.addr)["ejected"], true, "{config}");
    assert_eq!(backend(&config, b.addr)["ejections"], 2, "{config}");
    for _ in 0..9 {
        let (status, _) = get(&client, gateway.local_addr()).await;
        assert_eq!(status, 200, "the carried-over ejection keeps b out");
    }
    support::stop(gateway).await;
}

fn config_text_with(a: SocketAddr, b: SocketAddr, c: SocketAddr) -> String {
    config(a, b, &format!(", \"{c}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_beyond_the_budget_are_not_made() {
    // Two dead backends: every request's first attempt fails to connect and may retry on
    // the other. With a budget of one retry in flight, concurrent requests mostly may not.
    let dead: Vec<SocketAddr> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        })
        .collect();
    let gateway = support::gateway(&format!(
        r#"
[[upstreams]]
name = "dead"
backends = ["{}", "{}"]
retry_budget = {{ percent = 0, min_concurrency = 0 }}

[[routes]]
name = "all"
upstream = "dead"
retry = {{ attempts = 2 }}
"#,
        dead[0], dead[1]
    ))
    .await;
    let client = support::client();
    for _ in 0..5 {
        let r = client
            .get(support::url(gateway.local_addr(), "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
    }
    let admin = gateway.admin_addr().unwrap();
    let metrics = support::admin_metrics(&client, admin).await;
    assert_eq!(
        support::metric_value(
            &metrics,
            "gatehouse_retries_over_budget_total",
            &[("upstream", "dead")]
        ),
        Some(5.0),
        "every retry was refused by a zero budget"
    );
    support::stop(gateway).await;
}
