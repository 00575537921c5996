//! Load balancing over real backends: round robin, weighted, consistent hashing,
//! least-request, and active health checks taking a dead backend out and back in.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, SlowUpstream, Upstream};

/// One upstream `pool` over `backends` (TOML array items), and a catch-all route to it.
fn pool_config(backends: &str, extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "pool"
backends = [{backends}]
{extra}

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "pool"
"#
    )
}

/// GET `path` and return the name of the upstream that answered (panics on a non-200).
async fn answered_by(client: &reqwest::Client, url: &str, header: Option<(&str, &str)>) -> String {
    let mut req = client.get(url);
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    let resp = req.send().await.expect("gateway answers");
    assert_eq!(resp.status(), 200, "GET {url}");
    let body: Value = resp.json().await.expect("JSON body");
    body["upstream"]
        .as_str()
        .expect("body names its upstream")
        .to_string()
}

/// `n` sequential GETs; how many each upstream answered.
async fn spread(client: &reqwest::Client, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts
            .entry(answered_by(client, url, None).await)
            .or_default() += 1;
    }
    counts
}

fn count(counts: &BTreeMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_evenly() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = support::gateway(&pool_config(
        &format!("\"{}\", \"{}\"", a.addr, b.addr),
        "balance = \"round_robin\"",
    ))
    .await;
    let client = support::client();

    let counts = spread(&client, &support::url(gw.local_addr(), "/rr"), 200).await;

    assert_eq!(count(&counts, "a") + count(&counts, "b"), 200, "{counts:?}");
    for name in ["a", "b"] {
        let n = count(&counts, name);
        assert!(
            (80..=120).contains(&n),
            "round robin over two backends gave {name} {n} of 200: {counts:?}"
        );
    }
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_splits_three_to_one() {
    let heavy = Upstream::start("heavy").await;
    let light = Upstream::start("light").await;
    let gw = support::gateway(&pool_config(
        &format!(
            "{{ addr = \"{}\", weight = 3 }}, {{ addr = \"{}\", weight = 1 }}",
            heavy.addr, light.addr
        ),
        "balance = \"weighted\"",
    ))
    .await;
    let client = support::client();

    let counts = spread(&client, &support::url(gw.local_addr(), "/w"), 200).await;

    let (h, l) = (count(&counts, "heavy"), count(&counts, "light"));
    assert_eq!(h + l, 200, "{counts:?}");
    // 3:1 is 150:50; allow a little either way.
    assert!(
        (135..=165).contains(&h) && (35..=65).contains(&l),
        "weights 3:1 gave heavy {h}, light {l}"
    );
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_is_sticky_and_spreads() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = support::gateway(&pool_config(
        &format!("\"{}\", \"{}\"", a.addr, b.addr),
        "balance = \"consistent_hash\"\nhash_key = \"header:x-user\"",
    ))
    .await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/profile");

    let mut users_per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..40 {
        let user = format!("user-{i}");
        let first = answered_by(&client, &url, Some(("x-user", &user))).await;
        for _ in 0..4 {
            let again = answered_by(&client, &url, Some(("x-user", &user))).await;
            assert_eq!(
                again, first,
                "x-user {user} went to {first} first, then to {again}"
            );
        }
        *users_per_backend.entry(first).or_default() += 1;
    }

    // 40 users over two backends: both get a fair share (Ketama is not exact).
    for name in ["a", "b"] {
        let n = count(&users_per_backend, name);
        assert!(
            n >= 5,
            "only {n} of 40 users hashed to {name}: {users_per_backend:?}"
        );
    }
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_uses_both_backends() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = support::gateway(&pool_config(
        &format!("\"{}\", \"{}\"", a.addr, b.addr),
        "balance = \"least_request\"",
    ))
    .await;
    let client = support::client();

    let counts = spread(&client, &support::url(gw.local_addr(), "/lr"), 200).await;

    for name in ["a", "b"] {
        let n = count(&counts, name);
        assert!(
            n >= 20,
            "least_request over two idle backends gave {name} only {n} of 200: {counts:?}"
        );
    }
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_prefers_the_idle_backend() {
    // `slow` holds every request for longer than the test sends traffic, so each client that
    // lands there is stuck for the rest of the window. Round robin (or random) would strand
    // every client on `slow` within its first few requests; least-request keeps sending to
    // `fast` as long as `slow` has requests in flight.
    let slow = SlowUpstream::start("slow", Duration::from_millis(1500)).await;
    let fast = Upstream::start("fast").await;
    let gw = support::gateway(&pool_config(
        &format!("\"{}\", \"{}\"", slow.addr, fast.addr),
        "balance = \"least_request\"",
    ))
    .await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/work");

    const CLIENTS: usize = 6;
    let window_end = Instant::now() + Duration::from_millis(1000);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            while Instant::now() < window_end {
                answered.push(answered_by(&client, &url, None).await);
            }
            answered
        }));
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        for name in t.await.expect("client task") {
            *counts.entry(name).or_default() += 1;
        }
    }

    let (to_slow, to_fast) = (slow.hits(), count(&counts, "fast"));
    let total = to_slow + to_fast;
    eprintln!("least_request: fast served {to_fast}, slow received {to_slow}");
    assert!(
        to_slow <= CLIENTS,
        "slow got {to_slow} requests from {CLIENTS} clients"
    );
    // Round robin here: about as many to `fast` as to `slow` (every client stranded).
    assert!(
        to_fast >= 60,
        "with slow requests in flight on one backend, the idle one served only {to_fast} \
         (slow received {to_slow})"
    );
    assert!(
        to_slow * 10 < total,
        "the busy backend received {to_slow} of {total} requests; least-request should \
         have sent nearly all of them to the idle one"
    );
    assert_eq!(
        count(&counts, "slow"),
        to_slow,
        "every slow request ended 200"
    );
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_dead_backend_out_and_back_in() {
    let interval = Duration::from_millis(200);
    let a = Upstream::start("a").await;
    let mut b = Upstream::start("b").await;
    let b_addr = b.addr;
    let gw = support::gateway(&pool_config(
        &format!("\"{}\", \"{}\"", a.addr, b.addr),
        "health_check = { kind = \"http\", path = \"/health\", interval = \"200ms\", \
         unhealthy_after = 2, healthy_after = 1 }",
    ))
    .await;
    let admin = gw.admin_addr().expect("admin listener");
    let client = support::client();
    let healthy_gauge = |text: &str, addr: std::net::SocketAddr| {
        support::metric_value(
            text,
            "gatehouse_upstream_backend_healthy",
            &[("upstream", "pool"), ("backend", &addr.to_string())],
        )
    };

    // The first health pass has published both backends as healthy.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let m = support::admin_metrics(&client, admin).await;
        if healthy_gauge(&m, a.addr) == Some(1.0) && healthy_gauge(&m, b_addr) == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health gauges never appeared:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A steady stream of GETs through the gateway, from two clients.
    let running = Arc::new(AtomicBool::new(true));
    let url = support::url(gw.local_addr(), "/stream");
    let started = Instant::now();
    let mut stream = Vec::new();
    for _ in 0..2 {
        let (running, client, url) = (Arc::clone(&running), client.clone(), url.clone());
        stream.push(tokio::spawn(async move {
            let (mut ok, mut failures) = (0usize, Vec::new());
            // Bounded even if the test body panics before clearing `running`.
            while running.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(10) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => {
                        failures.push(format!("{:?}: status {}", started.elapsed(), r.status()))
                    }
                    Err(e) => failures.push(format!("{:?}: error {e}", started.elapsed())),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert!(
        !a.requests().is_empty() && !b.requests().is_empty(),
        "the stream uses both backends before one dies"
    );

    // Kill b mid-stream.
    b.stop().await;
    let killed = Instant::now();
    let limit = 2 * interval + Duration::from_millis(300);
    let mut marked_down = None;
    let mut gauge_down = None;
    while (marked_down.is_none() || gauge_down.is_none()) && killed.elapsed() < limit * 3 {
        if marked_down.is_none() {
            let cfg = support::admin_config(&client, admin).await;
            if support::backend_healthy(&cfg, "pool", b_addr) == Some(false) {
                marked_down = Some(killed.elapsed());
            }
        }
        if gauge_down.is_none() {
            let m = support::admin_metrics(&client, admin).await;
            if healthy_gauge(&m, b_addr) == Some(0.0) {
                gauge_down = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let marked_down = marked_down.expect("admin/config never showed the dead backend unhealthy");
    let gauge_down = gauge_down.expect("/metrics never showed the dead backend at 0");
    assert!(
        marked_down <= limit,
        "admin/config showed b unhealthy after {marked_down:?} (limit {limit:?})"
    );
    assert!(
        gauge_down <= limit,
        "/metrics showed b at 0 after {gauge_down:?} (limit {limit:?})"
    );
    let cfg = support::admin_config(&client, admin).await;
    assert_eq!(
        support::backend_healthy(&cfg, "pool", a.addr),
        Some(true),
        "{cfg}"
    );
    // Serve a while on `a` alone.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Bring b back on the same port: it is checked healthy and takes traffic again.
    let b2 = Upstream::start_on("b", b_addr).await;
    let revived = Instant::now();
    let back_limit = interval + Duration::from_millis(300);
    let mut marked_up = None;
    let mut serving = None;
    while (marked_up.is_none() || serving.is_none()) && revived.elapsed() < back_limit * 3 {
        if marked_up.is_none() {
            let cfg = support::admin_config(&client, admin).await;
            if support::backend_healthy(&cfg, "pool", b_addr) == Some(true) {
                marked_up = Some(revived.elapsed());
            }
        }
        if serving.is_none() && !b2.requests().is_empty() {
            serving = Some(revived.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let marked_up = marked_up.expect("admin/config never showed the revived backend healthy");
    let serving = serving.expect("the revived backend never received a request");
    assert!(
        marked_up <= back_limit,
        "b came back healthy only after {marked_up:?} (limit {back_limit:?})"
    );
    let m = support::admin_metrics(&client, admin).await;
    assert_eq!(healthy_gauge(&m, b_addr), Some(1.0), "{m}");

    running.store(false, Ordering::SeqCst);
    let (mut ok, mut failures) = (0, Vec::new());
    for t in stream {
        let (o, f) = t.await.expect("stream task");
        ok += o;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed while a backend died and came back (b killed at {:?}): \
         {failures:?}",
        failures.len(),
        ok + failures.len(),
        killed - started,
    );
    assert!(ok >= 50, "the stream only ran {ok} requests");
    eprintln!(
        "health: down in admin after {marked_down:?}, in metrics after {gauge_down:?}; \
         up after {marked_up:?}, serving after {serving:?}; {ok} requests ok"
    );
    support::stop(gw).await;
}

/// `/admin/health`: a pool with every backend up is healthy, one with a backend down is
/// degraded (saying how many are up), one with none up is unhealthy, and so is the whole.
/// A backend's own `/ready` answer is shown with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_grades_each_pool_by_its_backends() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let check = r#"health_check = { kind = "tcp", interval = "100ms", timeout = "500ms", unhealthy_after = 1, healthy_after = 1 }"#;
    let gw = support::gateway(&format!(
        r#"
[[upstreams]]
name = "whole"
backends = ["{one}"]
{check}

[[upstreams]]
name = "half"
backends = ["{two}", "{dead}"]
{check}

[[upstreams]]
name = "gone"
backends = ["{dead}"]
{check}
"#,
        one = one.addr,
        two = two.addr,
    ))
    .await;
    let client = support::client();
    let url = format!("http://{}/admin/health", gw.admin_addr().unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    let health = loop {
        let health: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        if health["upstreams"][1]["status"] == "degraded" {
            break health;
        }
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Pools in name order: gone, half, whole.
    assert_eq!(health["upstreams"][0]["status"], "unhealthy", "{health}");
    assert_eq!(
        health["upstreams"][1]["reason"], "1 of 2 backends up",
        "{health}"
    );
    assert_eq!(health["upstreams"][2]["status"], "healthy", "{health}");
    assert_eq!(health["status"], "unhealthy", "{health}");
    assert_eq!(health["gateway"]["status"], "healthy", "{health}");
    // The test upstream answers /ready like any path: 200 with its echo.
    let backend = &health["upstreams"][2]["backends"][0];
    assert_eq!(backend["ready"]["status"], 200, "{health}");
    assert_eq!(backend["ready"]["body"]["upstream"], "one", "{health}");
    support::stop(gw).await;
}
