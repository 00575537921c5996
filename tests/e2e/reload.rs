//! Hot reload over real sockets: file edits (in place and by rename), broken files that never
//! replace a good config, `POST /admin/reload`, health carried over a reload, and in-flight
//! requests finishing on the snapshot they started with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{self, SlowUpstream, Upstream};

/// Two upstreams (`one`, `two`) and a route `/a` to `one`.
fn base(one: SocketAddr, two: SocketAddr) -> String {
    format!(
        r#"
[[upstreams]]
name = "one"
backends = ["{one}"]

[[upstreams]]
name = "two"
backends = ["{two}"]

[[routes]]
name = "a"
match = {{ path_prefix = "/a" }}
upstream = "one"
"#
    )
}

/// A route `name` for `/name` to `upstream`.
fn route(name: &str, upstream: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
match = {{ path_prefix = "/{name}" }}
upstream = "{upstream}"
"#
    )
}

/// A temp dir holding `gateway.toml` with `text` (test listeners added).
fn config_dir(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, support::with_test_listeners(text)).expect("write config");
    (dir, path)
}

/// Overwrite the file in place (truncate + one write), as `>` or many editors do.
fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, support::with_test_listeners(text)).expect("write config");
}

/// Write a sibling temp file and rename it over the config, as vim and friends do.
fn write_by_rename(path: &Path, text: &str) {
    let tmp = path.with_file_name(".gateway.toml.swp");
    std::fs::write(&tmp, support::with_test_listeners(text)).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename over config");
}

async fn reloads(client: &reqwest::Client, admin: SocketAddr, result: &str) -> u64 {
    let text = support::admin_metrics(client, admin).await;
    support::metric_value(
        &text,
        "gatehouse_config_reloads_total",
        &[("result", result)],
    )
    .unwrap_or_else(|| panic!("no reloads_total{{result={result:?}}} in\n{text}")) as u64
}

async fn generation(client: &reqwest::Client, admin: SocketAddr) -> u64 {
    support::admin_config(client, admin).await["generation"]
        .as_u64()
        .expect("admin/config has a generation")
}

/// Make sure the file watcher is live before a test relies on it: rewrite the same text
/// until the gateway counts an `unchanged` reload.
async fn wait_for_watcher(client: &reqwest::Client, admin: SocketAddr, path: &Path) {
    let text = std::fs::read_to_string(path).expect("read config");
    let before = reloads(client, admin, "unchanged").await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        std::fs::write(path, &text).expect("rewrite config");
        let round = Instant::now() + Duration::from_millis(300);
        while Instant::now() < round {
            if reloads(client, admin, "unchanged").await > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    panic!(
        "the config watcher never noticed a write to {}",
        path.display()
    );
}

/// Status and the answering upstream's name (if the body names one).
async fn get(client: &reqwest::Client, url: &str) -> (u16, Option<String>) {
    let resp = client.get(url).send().await.expect("gateway answers");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["upstream"].as_str().map(str::to_string))
}

/// Poll `url` until it answers 200 from `upstream`; how long that took.
async fn until_served(
    client: &reqwest::Client,
    url: &str,
    upstream: &str,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let (status, by) = get(client, url).await;
        if status == 200 && by.as_deref() == Some(upstream) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{url} still answers {status} (from {by:?}) after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Poll the admin metrics until `reloads_total{result}` exceeds `than`.
async fn until_reloads_exceed(
    client: &reqwest::Client,
    admin: SocketAddr,
    result: &str,
    than: u64,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let n = reloads(client, admin, result).await;
        if n > than {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "reloads_total{{result={result:?}}} stayed at {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A stream of GETs to one URL from `clients` tasks; counts 200s and anything else.
struct Stream {
    running: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>,
}

impl Stream {
    fn start(client: &reqwest::Client, url: String, clients: usize) -> Stream {
        let running = Arc::new(AtomicBool::new(true));
        let tasks = (0..clients)
            .map(|_| {
                let (running, client, url) = (Arc::clone(&running), client.clone(), url.clone());
                tokio::spawn(async move {
                    let hard_stop = Instant::now() + Duration::from_secs(10);
                    let (mut ok, mut failed) = (0, Vec::new());
                    while running.load(Ordering::SeqCst) && Instant::now() < hard_stop {
                        match client.get(&url).send().await {
                            Ok(r) if r.status() == 200 => ok += 1,
                            Ok(r) => failed.push(format!("status {}", r.status())),
                            Err(e) => failed.push(format!("error {e}")),
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    (ok, failed)
                })
            })
            .collect();
        Stream { running, tasks }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.running.store(false, Ordering::SeqCst);
        let (mut ok, mut failed) = (0, Vec::new());
        for t in self.tasks {
            let (o, f) = t.await.expect("stream task");
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_file_adds_a_route_without_failing_a_request() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let (_dir, path) = config_dir(&base(one.addr, two.addr));
    let gw = support::gateway_from_file(path.clone()).await;
    let admin = gw.admin_addr().expect("admin listener");
    let client = support::client();
    wait_for_watcher(&client, admin, &path).await;
    let b_url = support::url(gw.local_addr(), "/b");
    assert_eq!(get(&client, &b_url).await.0, 404, "no /b route yet");
    assert_eq!(generation(&client, admin).await, 1);

    let stream = Stream::start(&client, support::url(gw.local_addr(), "/a/items"), 2);
    tokio::time::sleep(Duration::from_millis(200)).await;

    write_in_place(&path, &(base(one.addr, two.addr) + &route("b", "two")));
    let took = until_served(&client, &b_url, "two", Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (ok, failed) = stream.finish().await;
    assert!(
        failed.is_empty(),
        "{} of {} requests on /a failed across the reload: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok >= 20, "the stream only ran {ok} requests");
    assert_eq!(generation(&client, admin).await, 2);
    eprintln!("reload: /b served {took:?} after the edit; {ok} requests on /a, none failed");
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_never_replace_the_serving_config() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let good = base(one.addr, two.addr);
    let (_dir, path) = config_dir(&good);
    let gw = support::gateway_from_file(path.clone()).await;
    let admin = gw.admin_addr().expect("admin listener");
    let client = support::client();
    wait_for_watcher(&client, admin, &path).await;
    let a_url = support::url(gw.local_addr(), "/a");
    let before = support::admin_config(&client, admin).await;
    assert_eq!(before["generation"], 1);

    // 1. A TOML syntax error.
    let failed0 = reloads(&client, admin, "failed").await;
    write_in_place(&path, &format!("{good}\n[[routes]\nname = \"b\"\n"));
    let failed1 = until_reloads_exceed(&client, admin, "failed", failed0).await;
    assert_eq!(get(&client, &a_url).await, (200, Some("one".into())));
    let now = support::admin_config(&client, admin).await;
    assert_eq!(now["generation"], 1, "{now}");
    assert_eq!(now["content_hash"], before["content_hash"], "{now}");

    // 2. Valid TOML, but a route to an upstream that does not exist.
    write_in_place(&path, &(good.clone() + &route("b", "nowhere")));
    until_reloads_exceed(&client, admin, "failed", failed1).await;
    assert_eq!(get(&client, &a_url).await, (200, Some("one".into())));
    let b_url = support::url(gw.local_addr(), "/b");
    assert_eq!(
        get(&client, &b_url).await.0,
        404,
        "the broken route is not served"
    );
    let now = support::admin_config(&client, admin).await;
    assert_eq!(now["generation"], 1, "{now}");
    assert_eq!(now["content_hash"], before["content_hash"], "{now}");
    let metrics = support::admin_metrics(&client, admin).await;
    assert_eq!(
        support::metric_value(&metrics, "gatehouse_config_generation", &[]),
        Some(1.0),
        "{metrics}"
    );

    // 3. Fixed: applied, with a new generation.
    write_in_place(&path, &(good.clone() + &route("b", "two")));
    until_served(&client, &b_url, "two", Duration::from_secs(1)).await;
    assert_eq!(get(&client, &a_url).await, (200, Some("one".into())));
    let now = support::admin_config(&client, admin).await;
    assert!(now["generation"].as_u64() >= Some(2), "{now}");
    assert_ne!(now["content_hash"], before["content_hash"], "{now}");
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saving_by_rename_reloads() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let good = base(one.addr, two.addr);
    let (_dir, path) = config_dir(&good);
    let gw = support::gateway_from_file(path.clone()).await;
    let admin = gw.admin_addr().expect("admin listener");
    let client = support::client();
    wait_for_watcher(&client, admin, &path).await;

    write_by_rename(&path, &(good.clone() + &route("b", "two")));
    let b_url = support::url(gw.local_addr(), "/b");
    until_served(&client, &b_url, "two", Duration::from_secs(1)).await;

    // The watch survives the file being replaced: a second save by rename applies too.
    write_by_rename(
        &path,
        &(good.clone() + &route("b", "two") + &route("c", "one")),
    );
    let c_url = support::url(gw.local_addr(), "/c");
    until_served(&client, &c_url, "one", Duration::from_secs(1)).await;
    assert_eq!(generation(&client, admin).await, 3);
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_applies_or_names_the_broken_field() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let good = base(one.addr, two.addr);
    let (_dir, path) = config_dir(&good);
    let gw = support::gateway_from_file_unwatched(path.clone()).await;
    let admin = gw.admin_addr().expect("admin listener");
    let client = support::client();
    let reload = || async {
        let resp = client
            .post(support::url(admin, "/admin/reload"))
            .send()
            .await
            .expect("admin answers");
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: Value = resp.json().await.expect("JSON body");
        (status, ctype, body)
    };
    let b_url = support::url(gw.local_addr(), "/b");

    let (status, _, body) = reload().await;
    assert_eq!(
        (status, body),
        (200, json!({"result": "unchanged", "generation": 1}))
    );

    write_in_place(&path, &(good.clone() + &route("b", "two")));
    assert_eq!(
        get(&client, &b_url).await.0,
        404,
        "not applied before the POST"
    );
    let (status, ctype, body) = reload().await;
    assert_eq!(
        (status, body),
        (200, json!({"result": "applied", "generation": 2}))
    );
    assert!(ctype.starts_with("application/json"), "{ctype}");
    assert_eq!(get(&client, &b_url).await, (200, Some("two".into())));

    // routes[1] points at an upstream that does not exist.
    write_in_place(&path, &(good.clone() + &route("b", "nowhere")));
    let (status, ctype, body) = reload().await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(ctype, "application/problem+json");
    assert_eq!(body["status"], 422, "{body}");
    assert_eq!(body["generation"], 2, "{body}");
    let errors: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("routes[1].upstream") && e.contains("nowhere")),
        "errors do not name routes[1].upstream: {errors:?}"
    );
    assert_eq!(get(&client, &b_url).await, (200, Some("two".into())));

    // A syntax error names the file and its line.
    write_in_place(&path, &format!("{good}\n[[routes]\nname = \"b\"\n"));
    let (status, ctype, body) = reload().await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(ctype, "application/problem+json");
    let first = body["errors"][0].as_str().unwrap_or_default();
    assert!(
        first.contains("gateway.toml:"),
        "the syntax error does not name the file: {body}"
    );
    assert_eq!(generation(&client, admin).await, 2);

    write_in_place(
        &path,
        &(good.clone() + &route("b", "two") + &route("c", "one")),
    );
    let (status, _, body) = reload().await;
    assert_eq!(
        (status, body),
        (200, json!({"result": "applied", "generation": 3}))
    );
    let c_url = support::url(gw.local_addr(), "/c");
    assert_eq!(get(&client, &c_url).await, (200, Some("one".into())));
    support::stop(gw).await;
}

/// An address nothing listens on (bound, then released).
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_of_an_unchanged_upstream_survives_a_reload() {
    let live = Upstream::start("live").await;
    let other = Upstream::start("other").await;
    let dead = dead_addr();
    let pool = format!(
        r#"
[[upstreams]]
name = "pool"
backends = ["{}", "{dead}"]
health_check = {{ kind = "http", path = "/health", interval = "300ms", unhealthy_after = 2, healthy_after = 1 }}

[[upstreams]]
name = "other"
backends = ["{}"]

[[routes]]
name = "p"
match = {{ path_prefix = "/p" }}
upstream = "pool"
"#,
        live.addr, other.addr
    );
    let (_dir, path) = config_dir(&pool);
    let gw = support::gateway_from_file_unwatched(path.clone()).await;
    let admin = gw.admin_addr().expect("admin listener");
    let client = support::client();
    let dead_gauge = |text: &str| {
        support::metric_value(
            text,
            "gatehouse_upstream_backend_healthy",
            &[("upstream", "pool"), ("backend", &dead.to_string())],
        )
    };

    // Two failed checks 300 ms apart take the dead backend out.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let cfg = support::admin_config(&client, admin).await;
        let m = support::admin_metrics(&client, admin).await;
        if support::backend_healthy(&cfg, "pool", dead) == Some(false)
            && dead_gauge(&m) == Some(0.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead backend never marked: {cfg}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Reload with only an unrelated route added. A rebuilt pool would start healthy and need
    // two more failed checks (>= 300 ms); the kept one is unhealthy at once.
    write_in_place(&path, &(pool.clone() + &route("o", "other")));
    let resp = client
        .post(support::url(admin, "/admin/reload"))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body, json!({"result": "applied", "generation": 2}));
    let cfg = support::admin_config(&client, admin).await;
    let m = support::admin_metrics(&client, admin).await;
    assert_eq!(cfg["generation"], 2, "{cfg}");
    assert_eq!(
        support::backend_healthy(&cfg, "pool", dead),
        Some(false),
        "{cfg}"
    );
    assert_eq!(
        support::backend_healthy(&cfg, "pool", live.addr),
        Some(true),
        "{cfg}"
    );
    assert_eq!(
        dead_gauge(&m),
        Some(0.0),
        "the health gauge of the kept pool vanished or changed on reload:\n{m}"
    );

    let o_url = support::url(gw.local_addr(), "/o");
    assert_eq!(get(&client, &o_url).await, (200, Some("other".into())));
    let p_url = support::url(gw.local_addr(), "/p");
    for _ in 0..10 {
        assert_eq!(get(&client, &p_url).await, (200, Some("live".into())));
    }
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_finishes_on_its_snapshot() {
    let slow = SlowUpstream::start("slow", Duration::from_millis(800)).await;
    let fast = Upstream::start("fast").await;
    let pools = format!(
        r#"
[[upstreams]]
name = "slowpool"
backends = ["{}"]

[[upstreams]]
name = "fastpool"
backends = ["{}"]
"#,
        slow.addr, fast.addr
    );
    let (_dir, path) = config_dir(&(pools.clone() + &route("x", "slowpool")));
    let gw = support::gateway_from_file_unwatched(path.clone()).await;
    let admin = gw.admin_addr().expect("admin listener");
    let client = support::client();
    let x_url = support::url(gw.local_addr(), "/x");

    let in_flight = tokio::spawn({
        let (client, url) = (client.clone(), x_url.clone());
        async move { get(&client, &url).await }
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    while slow.hits() == 0 {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // While it waits, /x moves to another pool and the slow pool goes away.
    let moved = format!(
        r#"
[[upstreams]]
name = "fastpool"
backends = ["{}"]
{}"#,
        fast.addr,
        route("x", "fastpool")
    );
    write_in_place(&path, &moved);
    let resp = client
        .post(support::url(admin, "/admin/reload"))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(resp.status(), 200);
    assert_eq!(get(&client, &x_url).await, (200, Some("fast".into())));
    assert!(!in_flight.is_finished(), "the slow request ended early");

    let old = tokio::time::timeout(Duration::from_secs(3), in_flight)
        .await
        .expect("the in-flight request finishes")
        .expect("task");
    assert_eq!(old, (200, Some("slow".into())));
    assert_eq!(slow.hits(), 1);
    support::stop(gw).await;
}

/// A directory laid out as the kubelet mounts a ConfigMap: `gateway.toml` is a link to
/// `..data/gateway.toml`, `..data` a link to a timestamped directory holding the files.
struct ConfigMapDir {
    dir: tempfile::TempDir,
    updates: u32,
}

impl ConfigMapDir {
    fn new(text: &str) -> ConfigMapDir {
        let mut mount = ConfigMapDir {
            dir: tempfile::tempdir().expect("temp dir"),
            updates: 0,
        };
        mount.update(text);
        std::os::unix::fs::symlink("..data/gateway.toml", mount.path()).expect("link the file");
        mount
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// The kubelet's atomic update: the new files in a new timestamped directory, a
    /// `..data_tmp` link to it renamed over `..data`, then the old directory removed.
    fn update(&mut self, text: &str) {
        let root = self.dir.path();
        let old = std::fs::read_link(root.join("..data")).ok();
        self.updates += 1;
        let fresh = format!("..2026_12_06_00_00_00.{}", 1000 + self.updates);
        std::fs::create_dir(root.join(&fresh)).expect("timestamped dir");
        std::fs::write(
            root.join(&fresh).join("gateway.toml"),
            support::with_test_listeners(text),
        )
        .expect("write config");
        std::os::unix::fs::symlink(&fresh, root.join("..data_tmp")).expect("..data_tmp");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");
        if let Some(old) = old {
            std::fs::remove_dir_all(root.join(old)).expect("remove the old dir");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_by_link_swap_serves_within_a_second_and_swaps_back() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    // No periodic check: the watch alone must see the swap.
    let good = "[server]\nconfig_check_interval = \"0s\"\n".to_string() + &base(one.addr, two.addr);
    let mut mount = ConfigMapDir::new(&good);
    let gw = support::gateway_from_file(mount.path()).await;
    let admin = gw.admin_addr().expect("admin listener");
    let client = support::client();
    // The watch is live once a swap to the same content counts as an unchanged reload.
    let before = reloads(&client, admin, "unchanged").await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while reloads(&client, admin, "unchanged").await == before {
        assert!(Instant::now() < deadline, "a ..data swap was never noticed");
        mount.update(&good);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let b_url = support::url(gw.local_addr(), "/b");
    assert_eq!(get(&client, &b_url).await.0, 404);
    mount.update(&(good.clone() + &route("b", "two")));
    until_served(&client, &b_url, "two", Duration::from_secs(1)).await;

    // And back, as a rollback of the ConfigMap does.
    mount.update(&good);
    let start = Instant::now();
    while get(&client, &b_url).await.0 != 404 {
        assert!(start.elapsed() < Duration::from_secs(1), "/b still served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reloads(&client, admin, "failed").await, 0);
    support::stop(gw).await;
}

/// A change the watch cannot see (the config is a link to a file in a directory it does not
/// watch, edited in place there) is found by the periodic content-hash check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_check_finds_a_change_the_watch_cannot_see() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let target = elsewhere.path().join("real.toml");
    let text = |interval: &str, extra: &str| {
        format!("[server]\nconfig_check_interval = \"{interval}\"\n")
            + &base(one.addr, two.addr)
            + extra
    };
    for (interval, found) in [("0s", false), ("200ms", true)] {
        std::fs::write(&target, support::with_test_listeners(&text(interval, ""))).unwrap();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gateway.toml");
        std::os::unix::fs::symlink(&target, &path).expect("link");
        let gw = support::gateway_from_file(path).await;
        let client = support::client();
        let b_url = support::url(gw.local_addr(), "/b");
        write_in_place(&target, &text(interval, &route("b", "two")));
        if found {
            until_served(&client, &b_url, "two", Duration::from_secs(2)).await;
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(
                get(&client, &b_url).await.0,
                404,
                "the watch saw it after all"
            );
        }
        support::stop(gw).await;
    }
}
