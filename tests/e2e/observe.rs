//! Observability over real sockets: trace context, access log, Server-Timing, metrics.

use std::time::Duration;

use crate::support::{self, Upstream};

fn config(upstream: std::net::SocketAddr, observability: &str) -> String {
    format!(
        r#"
{observability}

[[upstreams]]
name = "app"
backends = ["{upstream}"]

[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_continues_the_clients_trace_with_a_new_parent() {
    let up = Upstream::start("app").await;
    let gw = support::gateway(&config(up.addr, "")).await;
    let client = support::client();
    let base = support::url(gw.local_addr(), "");

    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = client
        .get(format!("{base}/x"))
        .header("traceparent", incoming)
        .header("tracestate", "vendor=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    let forwarded = seen.header("traceparent").expect("traceparent upstream");
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!(parts.len(), 4, "{forwarded}");
    assert_eq!(parts[0], "00");
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "same trace id"
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "a new parent id for the upstream hop"
    );
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01", "sampling decision kept");
    assert_eq!(seen.header("tracestate"), Some("vendor=1"));

    // No (or a malformed) traceparent starts a new trace: two requests, two trace ids.
    let mut ids = Vec::new();
    for bad in [None, Some("00-zz-00f067aa0ba902b7-01")] {
        let mut req = client.get(format!("{base}/y"));
        if let Some(v) = bad {
            req = req.header("traceparent", v);
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
        let tp = up.last().header("traceparent").unwrap().to_string();
        assert_eq!(tp.len(), 55, "{tp}");
        ids.push(tp[3..35].to_string());
    }
    assert_ne!(ids[0], ids[1]);
    assert_ne!(ids[0], "0".repeat(32));
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_server_timing_and_metrics() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let observability = format!(
        "[observability]\naccess_log = {:?}\nserver_timing = true\n",
        log.display().to_string()
    );
    let gw = support::gateway(&config(up.addr, &observability)).await;
    let client = support::client();
    let resp = client
        .get(support::url(gw.local_addr(), "/a/./b?secret=1"))
        .header("x-request-id", "log-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let timing = resp.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        timing.starts_with("upstream;dur=") && timing.contains(", gateway;dur="),
        "{timing}"
    );

    // The log is written off the request path: poll for the line.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("log-me-1")) {
            break line.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "no access log line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let record: serde_json::Value = serde_json::from_str(&line).expect("one JSON object a line");
    assert_eq!(record["request_id"], "log-me-1");
    assert_eq!(record["method"], "GET");
    assert_eq!(record["path"], "/a/b", "normalized, query left out");
    assert_eq!(record["route"], "app");
    assert_eq!(record["status"], 200);
    assert_eq!(record["upstream"], up.addr.to_string());
    assert_eq!(record["client_ip"], "127.0.0.1");
    assert_eq!(record["trace_id"].as_str().unwrap().len(), 32);
    assert!(record["duration_us"].as_u64().unwrap() >= record["upstream_us"].as_u64().unwrap());
    assert!(!line.contains("secret"), "queries are not logged: {line}");

    let metrics = support::admin_metrics(&client, gw.admin_addr().unwrap()).await;
    assert!(
        metrics.contains(r#"gatehouse_upstream_duration_seconds_count{upstream="app"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_requests_in_flight 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gatehouse_requests_total{method="GET",route="app",status="200"} 1"#),
        "{metrics}"
    );
    support::stop(gw).await;
}
