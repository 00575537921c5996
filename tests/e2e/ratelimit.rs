//! `rate_limit` and `concurrency_limit` over real sockets: exact bursts, `Retry-After`, the
//! draft RateLimit fields, separate buckets per key, state kept across a reload of another
//! route, in-flight caps, and a limit shared through Redis (`TEST_REDIS_URL`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::{Response, StatusCode};

use crate::support::{self, SlowUpstream, Upstream};

/// A route `/limited` behind the filter `FILTER` (declared by `filter`), and `/open` without.
fn config(upstream: SocketAddr, filter: &str, open_extra: &str) -> String {
    format!(
        r#"
{filter}

[[upstreams]]
name = "app"
backends = ["{upstream}"]

[[routes]]
name = "limited"
match = {{ path_prefix = "/limited" }}
upstream = "app"
filters = ["FILTER"]

[[routes]]
name = "open"
match = {{ path_prefix = "/open" }}
upstream = "app"
{open_extra}
"#
    )
}

fn rate_filter(name: &str, settings: &str) -> String {
    format!("[filters.FILTER]\nkind = \"rate_limit\"\n{settings}\n").replace("FILTER", name)
}

/// What the test looks at in one answer.
#[derive(Debug)]
struct Seen {
    status: StatusCode,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Seen {
    async fn of(resp: Response) -> Seen {
        let status = resp.status();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp.text().await.unwrap_or_default();
        Seen {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

async fn get(client: &reqwest::Client, url: &str, x_client: Option<&str>) -> Seen {
    let mut req = client.get(url);
    if let Some(c) = x_client {
        req = req.header("x-client", c);
    }
    Seen::of(req.send().await.expect("the gateway answers")).await
}

/// `n` requests at once.
async fn burst(
    client: &reqwest::Client,
    urls: &[String],
    n: usize,
    x_client: Option<&str>,
) -> Vec<Seen> {
    join_all((0..n).map(|i| get(client, &urls[i % urls.len()], x_client))).await
}

/// A burst that went out fast enough for an exact count. "Exactly 5 of 20" holds only when all
/// 20 reach the limiter before the next token does (200 ms at 5/s); on a machine too busy for
/// that, the attempt is set aside in `spent`, the bucket left to refill, and the burst sent
/// again. Connections are opened beforehand (through `warm`) so the burst is only requests.
#[allow(clippy::too_many_arguments)]
async fn tight_burst(
    client: &reqwest::Client,
    urls: &[String],
    warm: &[String],
    n: usize,
    x_client: Option<&str>,
    within: Duration,
    refill: Duration,
    spent: &mut Vec<Seen>,
) -> Vec<Seen> {
    for _ in 0..5 {
        burst(client, warm, n, None).await;
        let started = Instant::now();
        let seen = burst(client, urls, n, x_client).await;
        let took = started.elapsed();
        if took < within {
            return seen;
        }
        eprintln!("a burst of {n} took {took:?} (> {within:?}): machine busy, trying again");
        spent.extend(seen);
        tokio::time::sleep(refill).await;
    }
    panic!("could not send {n} requests within {within:?} in 5 attempts");
}

fn statuses(seen: &[Seen]) -> (usize, usize) {
    let ok = seen.iter().filter(|s| s.status == StatusCode::OK).count();
    let limited = seen
        .iter()
        .filter(|s| s.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    (ok, limited)
}

/// The `r` of each admitted answer's `RateLimit`, sorted.
fn remaining_of_admitted(seen: &[Seen], name: &str) -> Vec<String> {
    let mut r: Vec<String> = seen
        .iter()
        .filter(|s| s.status == StatusCode::OK)
        .map(|s| {
            let v = s.header("ratelimit");
            let rest = v.strip_prefix(&format!("\"{name}\";r=")).unwrap_or(v);
            rest.split(';').next().unwrap_or("").to_string()
        })
        .collect();
    r.sort();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_20_admits_exactly_5_and_retry_after_says_when_to_come_back() {
    let up = Upstream::start("app").await;
    let filter = rate_filter(
        "rl-burst",
        "rate = \"5/s\"\nburst = 5\nkey = [\"client_ip\"]",
    );
    let gw = support::gateway(&config(up.addr, &filter, "").replace("FILTER", "rl-burst")).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/limited/x");
    let urls = std::slice::from_ref(&url);
    let warm = [support::url(gw.local_addr(), "/open")];
    let (tight, refill) = (Duration::from_millis(190), Duration::from_millis(1200));
    let mut spent = Vec::new();

    let seen = tight_burst(&client, urls, &warm, 20, None, tight, refill, &mut spent).await;
    assert_eq!(statuses(&seen), (5, 15), "{seen:#?}");
    let admitted = 5 + statuses(&spent).0;
    assert_eq!(
        up.requests().len(),
        20 * (spent.len() / 20 + 1) + admitted,
        "refused requests never reach the upstream (the warm-ups do)"
    );
    // Concurrently admitted answers count down from 4 to 0. The gateway's two worker threads
    // each read the clock before their turn at the bucket, so one that read it just before
    // another's admission but took its turn after reports one token less than exactly: the
    // count is conservative, never more than what is left. The exact 4, 3, 2, 1, 0 is checked
    // one request at a time below.
    let left = remaining_of_admitted(&seen, "rl-burst");
    assert_eq!(left.first().map(String::as_str), Some("0"), "{left:?}");
    assert_eq!(left.last().map(String::as_str), Some("4"), "{left:?}");
    for (got, most) in left.iter().zip(["0", "1", "2", "3", "4"]) {
        assert!(got.as_str() <= most, "{left:?}");
    }
    for s in &seen {
        assert_eq!(
            s.header("ratelimit-policy"),
            "\"rl-burst\";q=5;w=1",
            "{s:?}"
        );
        assert_eq!(s.header("x-ratelimit-limit"), "5", "{s:?}");
        assert_eq!(s.header("x-ratelimit-reset"), "1", "{s:?}");
        assert!(s.headers.contains_key("x-request-id"));
        if s.status == StatusCode::TOO_MANY_REQUESTS {
            // The next token is at most 200 ms away: whole seconds, rounded up.
            assert_eq!(s.header("retry-after"), "1", "{s:?}");
            assert_eq!(s.header("ratelimit"), "\"rl-burst\";r=0;t=1", "{s:?}");
            assert_eq!(s.header("x-ratelimit-remaining"), "0", "{s:?}");
            assert_eq!(s.header("content-type"), "application/problem+json");
        } else {
            assert!(!s.headers.contains_key("retry-after"), "{s:?}");
        }
    }
    let refusal = seen
        .iter()
        .find(|s| s.status == StatusCode::TOO_MANY_REQUESTS);
    let problem: serde_json::Value =
        serde_json::from_str(&refusal.expect("a 429").body).expect("problem+json");
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["title"], "Too Many Requests");

    // After waiting as told, a request passes again; once the bucket is full, exactly 5 do.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(get(&client, &url, None).await.status, StatusCode::OK);
    tokio::time::sleep(refill).await;
    let again = tight_burst(&client, urls, &warm, 20, None, tight, refill, &mut spent).await;
    assert_eq!(statuses(&again), (5, 15), "{again:#?}");

    let open = get(&client, &support::url(gw.local_addr(), "/open"), None).await;
    assert_eq!(open.status, StatusCode::OK);
    assert!(
        !open.headers.contains_key("ratelimit"),
        "only limited routes carry the fields"
    );

    // One at a time, each admitted answer sees exactly one token less than the one before.
    let mut countdown = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(refill).await;
        let started = Instant::now();
        countdown.clear();
        for _ in 0..5 {
            countdown.push(get(&client, &url, None).await);
        }
        if started.elapsed() < tight {
            break;
        }
        eprintln!(
            "5 requests took {:?}: machine busy, trying again",
            started.elapsed()
        );
    }
    let left: Vec<String> = countdown
        .iter()
        .map(|s| remaining_of_admitted(std::slice::from_ref(s), "rl-burst").concat())
        .collect();
    assert_eq!(left, ["4", "3", "2", "1", "0"], "{countdown:#?}");

    let metrics = support::admin_metrics(&client, gw.admin_addr().unwrap()).await;
    let refused = support::metric_value(
        &metrics,
        "gatehouse_filter_decisions_total",
        &[("filter", "rl-burst"), ("reason", "rate_limited")],
    );
    let expected = 15 + 15 + statuses(&spent).1;
    assert_eq!(refused, Some(expected as f64), "{metrics}");
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_keys_have_their_own_buckets() {
    let up = Upstream::start("app").await;
    let filter = rate_filter("rl-keys", "rate = \"5/m\"\nkey = [\"header:x-client\"]");
    let gw = support::gateway(&config(up.addr, &filter, "").replace("FILTER", "rl-keys")).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/limited");
    let urls = std::slice::from_ref(&url);

    assert_eq!(
        statuses(&burst(&client, urls, 8, Some("alice")).await),
        (5, 3)
    );
    assert_eq!(
        statuses(&burst(&client, urls, 8, Some("bob")).await),
        (5, 3)
    );
    // No header is the empty key: a bucket of its own, not alice's or bob's.
    assert_eq!(statuses(&burst(&client, urls, 8, None).await), (5, 3));
    let metrics = support::admin_metrics(&client, gw.admin_addr().unwrap()).await;
    assert_eq!(
        support::metric_value(
            &metrics,
            "gatehouse_rate_limit_keys",
            &[("filter", "rl-keys")]
        ),
        Some(3.0),
        "{metrics}"
    );
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_another_routes_filters_keeps_this_limiters_state() {
    let up = Upstream::start("app").await;
    let limit = |rate: &str| rate_filter("rl-reload", &format!("rate = \"{rate}\""));
    let headers = "[filters.tag]\nkind = \"rate_limit\"\nrate = \"100/s\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let write = |rate: &str, open_extra: &str| {
        let text = config(up.addr, &format!("{}\n{headers}", limit(rate)), open_extra)
            .replace("FILTER", "rl-reload");
        std::fs::write(&path, support::with_test_listeners(&text)).unwrap();
    };
    write("5/m", "");
    let gw = support::gateway_from_file_unwatched(path.clone()).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/limited");
    let urls = std::slice::from_ref(&url);
    assert_eq!(statuses(&burst(&client, urls, 6, None).await), (5, 1));

    let reload = |expected: u64| {
        let store = Arc::clone(gw.store());
        async move {
            let outcome = tokio::task::spawn_blocking(move || store.reload())
                .await
                .unwrap()
                .expect("the new config is valid");
            assert_eq!(
                outcome,
                gatehouse::ReloadOutcome::Applied {
                    generation: expected
                }
            );
        }
    };
    // Another route gains a filter: this route's limiter is the same instance, still empty.
    write("5/m", "filters = [\"tag\"]");
    reload(2).await;
    let after = get(&client, &url, None).await;
    assert_eq!(after.status, StatusCode::TOO_MANY_REQUESTS, "{after:?}");
    assert_eq!(after.header("ratelimit").split(';').nth(1), Some("r=0"));
    let open = get(&client, &support::url(gw.local_addr(), "/open"), None).await;
    assert_eq!(
        open.header("ratelimit-policy"),
        "\"tag\";q=100;w=1",
        "the change applied"
    );

    // Changing this filter's own declaration builds a new limiter with full buckets.
    write("6/m", "filters = [\"tag\"]");
    reload(3).await;
    assert_eq!(get(&client, &url, None).await.status, StatusCode::OK);
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_caps_requests_in_flight_per_key() {
    let delay = Duration::from_millis(700);
    let up = SlowUpstream::start("slow", delay).await;
    let filter =
        "[filters.rl-slots]\nkind = \"concurrency_limit\"\nmax = 2\nkey = [\"client_ip\"]\n";
    let gw = support::gateway(&config(up.addr, filter, "").replace("FILTER", "rl-slots")).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/limited");

    let started = Instant::now();
    let seen = join_all((0..5).map(|_| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let s = get(&client, &url, None).await;
            (s, started.elapsed())
        }
    }))
    .await;
    let ok: Vec<_> = seen
        .iter()
        .filter(|(s, _)| s.status == StatusCode::OK)
        .collect();
    let refused: Vec<_> = seen
        .iter()
        .filter(|(s, _)| s.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!((ok.len(), refused.len()), (2, 3), "{seen:#?}");
    assert_eq!(up.hits(), 2, "refused requests never reach the upstream");
    for (s, at) in &refused {
        assert!(
            *at < delay,
            "refused at once, not after the upstream's delay ({at:?})"
        );
        assert_eq!(s.header("content-type"), "application/problem+json");
        assert_eq!(s.header("ratelimit"), "\"rl-slots\";r=0");
    }
    for (s, _) in &ok {
        assert_eq!(
            s.header("ratelimit-policy"),
            "\"rl-slots\";q=2;qu=\"concurrent-requests\""
        );
    }
    // The finished requests gave their slots back.
    let next = join_all((0..2).map(|_| get(&client, &url, None))).await;
    assert_eq!(statuses(&next), (2, 0), "{next:#?}");
    let metrics = support::admin_metrics(&client, gw.admin_addr().unwrap()).await;
    assert_eq!(
        support::metric_value(
            &metrics,
            "gatehouse_filter_decisions_total",
            &[("filter", "rl-slots"), ("reason", "concurrency")]
        ),
        Some(3.0),
        "{metrics}"
    );
    support::stop(gw).await;
}

fn redis_url() -> Option<String> {
    let url = std::env::var("TEST_REDIS_URL").ok();
    if url.is_none() {
        eprintln!("skipping: set TEST_REDIS_URL (e.g. redis://127.0.0.1:6379) to run this test");
    }
    url
}

/// A key prefix no other test (or earlier run) shares.
fn unique_prefix() -> String {
    use std::hash::{BuildHasher, RandomState};
    let salt = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("gatehouse-e2e:{salt:x}:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_admit_the_limit_once_between_them() {
    let Some(redis) = redis_url() else { return };
    let up = Upstream::start("app").await;
    // A generous timeout: this test is about sharing, not about a loaded CI machine's latency.
    let settings = format!(
        "rate = \"5/s\"\nburst = 5\nkey = [\"header:x-client\"]\nstore = \"redis\"\nredis_url = \"{redis}\"\nkey_prefix = \"{}\"\ntimeout = \"2s\"\non_store_error = \"deny\"",
        unique_prefix()
    );
    let text =
        config(up.addr, &rate_filter("rl-shared", &settings), "").replace("FILTER", "rl-shared");
    let one = support::gateway(&text).await;
    let two = support::gateway(&text).await;
    let client = support::client();
    let urls = [
        support::url(one.local_addr(), "/limited"),
        support::url(two.local_addr(), "/limited"),
    ];
    // Connect both to Redis first (with another client's key), so the burst is all decisions.
    for url in &urls {
        assert_eq!(
            get(&client, url, Some("warm-up")).await.status,
            StatusCode::OK
        );
    }
    let warm = [
        support::url(one.local_addr(), "/open"),
        support::url(two.local_addr(), "/open"),
    ];
    let (tight, refill) = (Duration::from_millis(190), Duration::from_millis(1200));
    let mut spent = Vec::new();
    let seen = tight_burst(
        &client,
        &urls,
        &warm,
        20,
        Some("carol"),
        tight,
        refill,
        &mut spent,
    )
    .await;
    assert_eq!(statuses(&seen), (5, 15), "{seen:#?}");
    assert_eq!(
        remaining_of_admitted(&seen, "rl-shared"),
        ["0", "1", "2", "3", "4"]
    );
    for s in seen
        .iter()
        .filter(|s| s.status == StatusCode::TOO_MANY_REQUESTS)
    {
        assert_eq!(s.header("retry-after"), "1", "{s:?}");
    }
    // Both gateways refused some: the limit was shared, not enforced by one of them alone.
    for gw in [&one, &two] {
        let metrics = support::admin_metrics(&client, gw.admin_addr().unwrap()).await;
        let refused = support::metric_value(
            &metrics,
            "gatehouse_filter_decisions_total",
            &[("filter", "rl-shared"), ("reason", "rate_limited")],
        );
        assert!(refused.unwrap_or(0.0) >= 1.0, "{metrics}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        get(&client, &urls[1], Some("carol")).await.status,
        StatusCode::OK
    );
    support::stop(one).await;
    support::stop(two).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_follows_on_store_error() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = Upstream::start("app").await;
    let store = |on_error: &str| {
        format!(
            "rate = \"1/m\"\nstore = \"redis\"\nredis_url = \"redis://{closed}\"\non_store_error = \"{on_error}\""
        )
    };
    let text = format!(
        "{}\n{}\n{}",
        rate_filter("rl-open", &store("allow")),
        rate_filter("rl-closed", &store("deny")),
        config(up.addr, "", "filters = [\"rl-closed\"]").replace("FILTER", "rl-open"),
    );
    let gw = support::gateway(&text).await;
    let client = support::client();
    let limited = support::url(gw.local_addr(), "/limited");
    let open = support::url(gw.local_addr(), "/open");

    let started = Instant::now();
    let allowed = burst(&client, std::slice::from_ref(&limited), 5, None).await;
    assert_eq!(
        statuses(&allowed),
        (5, 0),
        "fail open lets all through: {allowed:#?}"
    );
    assert_eq!(
        allowed[0].header("ratelimit-policy"),
        "\"rl-open\";q=1;w=60"
    );
    assert!(
        !allowed[0].headers.contains_key("ratelimit"),
        "no remaining without the store"
    );

    let denied = burst(&client, std::slice::from_ref(&open), 5, None).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded: {:?}",
        started.elapsed()
    );
    for s in &denied {
        assert_eq!(s.status, StatusCode::SERVICE_UNAVAILABLE, "{s:?}");
        assert_eq!(s.header("content-type"), "application/problem+json");
    }
    let metrics = support::admin_metrics(&client, gw.admin_addr().unwrap()).await;
    assert_eq!(
        support::metric_value(
            &metrics,
            "gatehouse_filter_decisions_total",
            &[("filter", "rl-closed"), ("reason", "store_unavailable")]
        ),
        Some(5.0),
        "{metrics}"
    );
    // Failing open is counted too: nothing else would show the limits are off.
    let errors = |filter: &str, outcome: &str| {
        support::metric_value(
            &metrics,
            "gatehouse_rate_limit_store_errors_total",
            &[("filter", filter), ("outcome", outcome)],
        )
    };
    assert!(errors("rl-open", "allowed") >= Some(1.0), "{metrics}");
    assert!(errors("rl-closed", "denied") >= Some(1.0), "{metrics}");
    support::stop(gw).await;
}

/// The platform's login limit (10/s, burst 20) once stated `q=10` and `X-RateLimit-Limit: 10`
/// beside `r=19` and `X-RateLimit-Remaining: 19`. The stated quota is the one the remaining
/// count is measured against: the bucket, 20 per 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_burst_above_the_rate_remaining_never_exceeds_the_stated_limit() {
    let up = Upstream::start("app").await;
    let filter = rate_filter("rl-deep", "rate = \"10/s\"\nburst = 20");
    let gw = support::gateway(&config(up.addr, &filter, "").replace("FILTER", "rl-deep")).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/limited/x");
    for i in 0..5 {
        let seen = get(&client, &url, None).await;
        assert_eq!(seen.status, StatusCode::OK, "{seen:#?}");
        assert_eq!(seen.header("ratelimit-policy"), "\"rl-deep\";q=20;w=2");
        let limit: u32 = seen.header("x-ratelimit-limit").parse().unwrap();
        let remaining: u32 = seen.header("x-ratelimit-remaining").parse().unwrap();
        assert_eq!(limit, 20);
        assert!(remaining <= limit && remaining >= 19 - i, "{seen:#?}");
        assert!(
            seen.header("ratelimit")
                .starts_with(&format!("\"rl-deep\";r={remaining};")),
            "{seen:#?}"
        );
    }
    support::stop(gw).await;
}
