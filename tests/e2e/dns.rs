//! Backends given by name, resolved through a resolver the test controls: every address of a
//! name is a backend, a changed answer moves traffic with no reload, a failed lookup keeps
//! the last addresses, and the health of an address that stays carries over.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse::resolve::{Answer, Resolve};
use serde_json::Value;

use crate::support::{self, Upstream};

/// Answers every name with the loopback addresses it holds now (or fails when told to).
#[derive(Default)]
struct Table {
    ips: Mutex<Option<Vec<IpAddr>>>,
    asked: Mutex<Vec<String>>,
}

impl Table {
    fn set(&self, ips: Option<&[&str]>) {
        *self.ips.lock().unwrap() =
            ips.map(|ips| ips.iter().map(|ip| ip.parse().unwrap()).collect());
    }
}

impl Resolve for Table {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Answer> {
        self.asked.lock().unwrap().push(host.to_string());
        match &*self.ips.lock().unwrap() {
            Some(ips) => Ok(Answer {
                addrs: ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect(),
                ttl: None,
            }),
            None => Err(std::io::Error::other("SERVFAIL")),
        }
    }
}

async fn gateway_with(table: &Arc<Table>, text: &str) -> gatehouse::GatewayHandle {
    let resolver: Arc<dyn Resolve> = Arc::clone(table) as Arc<dyn Resolve>;
    let builder = gatehouse::Gateway::builder()
        .config_toml(support::with_test_listeners(text))
        .resolver(resolver);
    support::spawn(builder).await
}

/// Two upstreams on one port: 127.0.0.1 and 127.0.0.2 (all of 127/8 is loopback).
async fn two_on_one_port() -> (Upstream, Upstream) {
    let one = Upstream::start("one").await;
    let two = Upstream::start_on(
        "two",
        SocketAddr::new([127, 0, 0, 2].into(), one.addr.port()),
    )
    .await;
    (one, two)
}

/// Which upstreams answered `n` requests to `url`.
async fn answered_by(client: &reqwest::Client, url: &str, n: usize) -> Vec<String> {
    let mut by = Vec::new();
    for _ in 0..n {
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        by.push(body["upstream"].as_str().unwrap().to_string());
    }
    by
}

fn pool_config(port: u16, extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "pool"
backends = ["pool.test:{port}"]
dns = {{ min_refresh = "50ms", max_refresh = "100ms" }}
{extra}

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "pool"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_balances_over_its_addresses_and_a_new_answer_moves_traffic_without_a_reload() {
    let (one, _two) = two_on_one_port().await;
    let port = one.addr.port();
    let table = Arc::new(Table::default());
    table.set(Some(&["127.0.0.1", "127.0.0.2"]));
    let gw = gateway_with(&table, &pool_config(port, "")).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/");
    let admin = gw.admin_addr().unwrap();

    let by = answered_by(&client, &url, 10).await;
    assert!(
        by.contains(&"one".into()) && by.contains(&"two".into()),
        "{by:?}"
    );

    // The name now has one address: traffic follows, with no reload.
    table.set(Some(&["127.0.0.2"]));
    let deadline = Instant::now() + Duration::from_secs(3);
    while answered_by(&client, &url, 6)
        .await
        .iter()
        .any(|b| b == "one")
    {
        assert!(Instant::now() < deadline, "traffic still reaches 127.0.0.1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = support::admin_metrics(&client, admin).await;
    let name = format!("pool.test:{port}");
    let changed = support::metric_value(
        &metrics,
        "gatehouse_dns_lookups_total",
        &[("name", &name), ("result", "changed")],
    );
    assert!(changed >= Some(1.0), "{metrics}");
    let applied = support::metric_value(
        &metrics,
        "gatehouse_config_reloads_total",
        &[("result", "applied")],
    );
    assert_eq!(applied, Some(0.0), "a new answer is not a config reload");

    // The resolver fails: the last addresses keep serving, and the failure shows.
    table.set(None);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let config = support::admin_config(&client, admin).await;
        if config["names"][0]["failing"] == true {
            assert_eq!(config["names"][0]["addrs"][0], format!("127.0.0.2:{port}"));
            break;
        }
        assert!(Instant::now() < deadline, "{config}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered_by(&client, &url, 4)
        .await
        .iter()
        .all(|b| b == "two"));
    let metrics = support::admin_metrics(&client, admin).await;
    let failed = support::metric_value(
        &metrics,
        "gatehouse_dns_lookups_total",
        &[("name", &name), ("result", "failed")],
    );
    assert!(failed >= Some(1.0), "{metrics}");
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_of_an_address_that_stays_carries_over_a_new_answer() {
    let (one, _two) = two_on_one_port().await;
    let port = one.addr.port();
    let table = Arc::new(Table::default());
    // 127.0.0.3 has nothing listening on the port.
    table.set(Some(&["127.0.0.1", "127.0.0.3"]));
    // One check at start, then none for an hour: only a carried-over health can show .3 down
    // after the pool is rebuilt.
    let check = r#"health_check = { kind = "http", path = "/health", interval = "1h", timeout = "1s", unhealthy_after = 1, healthy_after = 1 }"#;
    let gw = gateway_with(&table, &pool_config(port, check)).await;
    let client = support::client();
    let admin = gw.admin_addr().unwrap();
    let dead: SocketAddr = SocketAddr::new([127, 0, 0, 3].into(), port);
    let deadline = Instant::now() + Duration::from_secs(5);
    while support::backend_healthy(&support::admin_config(&client, admin).await, "pool", dead)
        != Some(false)
    {
        assert!(Instant::now() < deadline, "127.0.0.3 never marked down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 127.0.0.3 comes up, which a new check would see at once; then the answer changes.
    let _three = Upstream::start_on("three", dead).await;
    table.set(Some(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]));
    let added: SocketAddr = SocketAddr::new([127, 0, 0, 2].into(), port);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let config = support::admin_config(&client, admin).await;
        if support::backend_healthy(&config, "pool", added).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "127.0.0.2 never joined: {config}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The rebuilt pool knows .3 as down and runs no check of its own before the hour is up
    // (a pool that started over would check it at once and find it up).
    for _ in 0..2 {
        let config = support::admin_config(&client, admin).await;
        assert_eq!(
            support::backend_healthy(&config, "pool", dead),
            Some(false),
            "{config}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let url = support::url(gw.local_addr(), "/");
    let by = answered_by(&client, &url, 12).await;
    assert!(by.contains(&"two".into()), "the new address serves: {by:?}");
    assert!(
        !by.contains(&"three".into()),
        "a backend known down gets nothing: {by:?}"
    );
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_name_does_not_resolve_yet_answers_503_until_it_does() {
    let up = Upstream::start("up").await;
    let table = Arc::new(Table::default());
    table.set(None);
    let gw = gateway_with(&table, &pool_config(up.addr.port(), "")).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 503);
    table.set(Some(&["127.0.0.1"]));
    let deadline = Instant::now() + Duration::from_secs(3);
    while client.get(&url).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the name never joined the pool");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    support::stop(gw).await;
}
