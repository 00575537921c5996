//! The filter chain: custom kinds registered by an embedder, configured in TOML like built-ins.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use gatehouse::{Decision, Filter, FilterSpec, FilterState, Gateway, Reply, RequestInfo};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use crate::support::{self, Upstream};

/// Answers 403 unless the request carries `x-team: <team>`; tags forwarded requests and
/// responses; counts the requests it saw (state that must survive reloads).
struct TeamGate {
    team: String,
    seen: AtomicUsize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamGateConfig {
    team: String,
}

#[async_trait]
impl Filter for TeamGate {
    async fn on_request(&self, req: &mut RequestInfo<'_>, state: &mut FilterState) -> Decision {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        state.response_headers.push((
            HeaderName::from_static("x-team-gate-seen"),
            HeaderValue::from(n),
        ));
        let ok = req
            .header
            .headers
            .get("x-team")
            .is_some_and(|v| v.as_bytes() == self.team.as_bytes());
        if !ok {
            return Decision::Respond(Reply::problem(
                StatusCode::FORBIDDEN,
                "wrong team",
                "wrong_team",
            ));
        }
        let _ = req.header.insert_header("x-team-checked", "yes");
        Decision::Continue
    }
}

fn team_gate(spec: &FilterSpec<'_>) -> Result<Arc<dyn Filter>, String> {
    let cfg: TeamGateConfig = spec.parse()?;
    Ok(Arc::new(TeamGate {
        team: cfg.team,
        seen: AtomicUsize::new(0),
    }))
}

fn config(upstream: std::net::SocketAddr, extra_route: &str) -> String {
    support::with_test_listeners(&format!(
        r#"
[filters.gate]
kind = "team-gate"
team = "blue"

[[upstreams]]
name = "app"
backends = ["{upstream}"]

[[routes]]
name = "gated"
match = {{ path_prefix = "/gated" }}
upstream = "app"
filters = ["gate"]

[[routes]]
name = "open"
match = {{ path_prefix = "/open" }}
upstream = "app"
{extra_route}
"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_filter_kind_is_configured_in_toml_and_survives_reloads() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(up.addr, "")).unwrap();
    let file = path.clone();
    let gw = tokio::task::spawn_blocking(move || {
        Gateway::builder()
            .config_file(file)
            .watch_config(false)
            .filter_kind("team-gate", team_gate)
            .build()
            .expect("config with a custom kind builds")
            .spawn()
            .expect("starts")
    })
    .await
    .unwrap();
    let client = support::client();
    let base = support::url(gw.local_addr(), "");

    let denied = client.get(format!("{base}/gated/x")).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["content-type"], "application/problem+json");
    assert_eq!(denied.headers()["x-team-gate-seen"], "1");
    assert!(denied.headers().contains_key("x-request-id"));
    assert!(
        up.requests().is_empty(),
        "a refused request never reaches the upstream"
    );

    let allowed = client
        .get(format!("{base}/gated/x"))
        .header("x-team", "blue")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["x-team-gate-seen"], "2");
    assert_eq!(up.last().header("x-team-checked"), Some("yes"));

    let open = client.get(format!("{base}/open")).send().await.unwrap();
    assert_eq!(open.status(), 200);
    assert!(!open.headers().contains_key("x-team-gate-seen"));

    // Reload with another route changed: the unchanged filter keeps its state (its counter).
    std::fs::write(&path, config(up.addr, "priority = 1")).unwrap();
    let store = Arc::clone(gw.store());
    let outcome = tokio::task::spawn_blocking(move || store.reload())
        .await
        .unwrap();
    assert_eq!(
        outcome.unwrap(),
        gatehouse::ReloadOutcome::Applied { generation: 2 }
    );
    let again = client
        .get(format!("{base}/gated/y"))
        .header("x-team", "blue")
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["x-team-gate-seen"], "3");

    let metrics = support::admin_metrics(&client, gw.admin_addr().unwrap()).await;
    assert!(
        metrics.contains(r#"gatehouse_filter_decisions_total{decision="respond",filter="gate",reason="wrong_team"} 1"#),
        "{metrics}"
    );
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_filter_kind_or_name_is_a_config_error() {
    let up = Upstream::start("app").await;
    let text = config(up.addr, "filters = [\"gat\"]");
    let err = Gateway::builder()
        .config_toml(text.clone())
        .build()
        .err()
        .expect("unknown name is rejected");
    let msg = err.to_string();
    assert!(
        msg.contains(
            r#"routes[1].filters[0]: no filter named "gat" under [filters] (did you mean "gate"?)"#
        ),
        "{msg}"
    );
    // The kind is only known to a builder that registered it.
    let text = config(up.addr, "");
    let err = Gateway::builder()
        .config_toml(text)
        .build()
        .err()
        .expect("unknown kind");
    assert!(
        err.to_string()
            .contains(r#"filters.gate.kind: no filter kind "team-gate""#),
        "{err}"
    );
}
