//! The `distributed` Kubernetes overlay against the real binaries: the test renders it with
//! `kubectl kustomize`, starts each Deployment's binary with the Deployment's own arguments
//! and environment (the Secret's example values, with databases, addresses and key files
//! that exist here), and requests every probe at the path and named port the manifests
//! give: each answers 200. Then the order service's database goes away (a proxy in front of
//! PostgreSQL stops) and its readiness probe answers 503, while liveness stays 200.
//!
//! Needs kubectl and python3 with PyYAML (`.ci/run` has both); skipped with a message
//! otherwise. The services' binaries come from the same `cargo test --workspace` build.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The overlay rendered, as JSON documents (`None` when kubectl or PyYAML is missing).
fn rendered(overlay: &str) -> Option<Vec<Value>> {
    let dir = root().join("deploy/k8s/overlays").join(overlay);
    let yaml = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(out) if out.status.success() => out.stdout,
        Ok(out) => panic!(
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => {
            eprintln!("skipping: kubectl is needed to render deploy/k8s");
            return None;
        }
    };
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    python.stdin.take()?.write_all(&yaml).ok()?;
    let out = python.wait_with_output().ok()?;
    if !out.status.success() {
        eprintln!(
            "skipping: python3 with PyYAML is needed ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("JSON from python"))
}

/// The example Secret's values, by key.
fn example_secrets() -> HashMap<String, String> {
    let text =
        std::fs::read_to_string(root().join("deploy/k8s/overlays/distributed/secrets.example.env"))
            .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One Deployment's container: its arguments, environment, named ports and probes.
struct Container {
    name: String,
    args: Vec<String>,
    env: Vec<(String, Value)>,
    ports: HashMap<String, u16>,
    probes: Vec<(String, String, String)>,
}

fn containers(docs: &[Value]) -> Vec<Container> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| {
            let c = &d["spec"]["template"]["spec"]["containers"][0];
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect()
            };
            Container {
                name: d["metadata"]["name"].as_str().unwrap().to_string(),
                args: strings(&c["args"]),
                env: c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
                    .collect(),
                ports: c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let name = p["name"].as_str().unwrap().to_string();
                        (name, p["containerPort"].as_u64().unwrap() as u16)
                    })
                    .collect(),
                probes: ["readinessProbe", "livenessProbe", "startupProbe"]
                    .iter()
                    .map(|kind| {
                        let get = &c[*kind]["httpGet"];
                        assert!(
                            get.is_object(),
                            "{}: {kind} is not an HTTP GET",
                            d["metadata"]["name"]
                        );
                        let port = match &get["port"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (
                            kind.to_string(),
                            get["path"].as_str().unwrap().to_string(),
                            port,
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

/// A TCP proxy to `target` that can be stopped, closing every connection through it.
struct Proxy {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
}

async fn proxy(target: String) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let mut stopping = stopped.clone();
            tokio::select! {
                _ = stopping.changed() => return,
                Ok((mut client, _)) = listener.accept() => {
                    let target = target.clone();
                    let mut stopping = stopped.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { return };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = stopping.changed() => {}
                        }
                    });
                }
            }
        }
    });
    Proxy { addr, stop }
}

/// `host:port` of a `scheme://user@host:port/…` URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap()
}

async fn status(http: &reqwest::Client, url: &str) -> u16 {
    match http.get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn until_status(http: &reqwest::Client, url: &str, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = status(http, url).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{url} answers {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_distributed_overlays_probes_answer_on_the_real_binaries() {
    let Some(docs) = rendered("distributed") else {
        return;
    };
    let bin_dir = Path::new(GATEWAY).parent().unwrap().to_path_buf();
    let secrets = example_secrets();
    let containers = containers(&docs);
    let mut names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "analytics",
            "gateway",
            "notification",
            "order",
            "payment",
            "product",
            "user"
        ]
    );
    for c in containers.iter().filter(|c| c.name != "gateway") {
        let binary = bin_dir.join(&c.args[0]);
        if !binary.exists() {
            eprintln!(
                "skipping: {} is not built (run the workspace's tests: cargo test --workspace)",
                binary.display()
            );
            return;
        }
    }
    // The order service's database: PostgreSQL through a proxy the test can stop.
    let order_db = kit::testing::postgres().await;
    let order_proxy = match &order_db {
        Some(db) => Some(proxy(authority(&db.url).to_string()).await),
        None => None,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();

    // Services in dependency order: the others read the user service's keys.
    let order = [
        "user",
        "product",
        "payment",
        "order",
        "notification",
        "analytics",
    ];
    let mut started: HashMap<String, kit::testing::binary::RunningBinary> = HashMap::new();
    let mut addrs: HashMap<String, SocketAddr> = HashMap::new();
    for name in order {
        let c = containers.iter().find(|c| c.name == name).unwrap();
        let mut env: Vec<(String, String)> = Vec::new();
        for (var, spec) in &c.env {
            let value = if let Some(v) = spec["value"].as_str() {
                v.to_string()
            } else {
                let key = spec["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap();
                secrets
                    .get(key)
                    .unwrap_or_else(|| panic!("{name}: {var} reads {key}, which the Secret lacks"))
                    .clone()
            };
            let value = match var.as_str() {
                // Here: SQLite files, and PostgreSQL for the order service.
                "DATABASE_URL" => match (name, &order_db, &order_proxy) {
                    ("order", Some(db), Some(p)) => {
                        db.url.replace(authority(&db.url), &p.addr.to_string())
                    }
                    _ => format!(
                        "sqlite://{}",
                        scratch.path().join(format!("{name}.db")).display()
                    ),
                },
                // Each service on its embedded bus (a NATS per test is not needed for probes).
                "NATS_URL" => continue,
                // Optional caches and mail: left out.
                "REDIS_URL" | "SMTP_URL" => continue,
                // Key files from the operator's Secret: the services make their own here.
                v if v.ends_with("_FILE") => continue,
                _ => value,
            };
            // Other services by their Service name: the ones started here.
            let value = addrs.iter().fold(value, |v, (svc, addr)| {
                let port = containers.iter().find(|c| c.name == *svc).unwrap().ports["http"];
                v.replace(&format!("://{svc}:{port}"), &format!("://{addr}"))
            });
            env.push((var.clone(), value));
        }
        // BIND says where the container listens: the probes' named port must be that port.
        let bind = env
            .iter()
            .find(|(v, _)| v == "BIND")
            .map(|(_, b)| b.clone());
        let bound_port: u16 = bind
            .as_deref()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(
            c.ports["http"], bound_port,
            "{name}: port http is not where BIND listens"
        );
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let running = kit::testing::binary::start(bin_dir.join(&c.args[0]).to_str().unwrap(), &env);
        addrs.insert(name.to_string(), running.addr);
        started.insert(name.to_string(), running);
    }
    for name in order {
        let c = containers.iter().find(|c| c.name == name).unwrap();
        for (kind, path, port) in &c.probes {
            assert!(
                c.ports.contains_key(port) || port.parse::<u16>().is_ok(),
                "{name}: {kind} port {port}"
            );
            let url = format!("http://{}{path}", addrs[name]);
            until_status(&http, &url, 200, Duration::from_secs(20)).await;
        }
    }

    // The gateway with the overlay's config: the Services' names become the addresses
    // started here, its listeners free ports; the probes' named ports must be its listeners.
    let gw = containers.iter().find(|c| c.name == "gateway").unwrap();
    let config_path = gw
        .args
        .iter()
        .position(|a| a == "--config")
        .map(|i| &gw.args[i + 1])
        .unwrap();
    assert!(config_path.ends_with("/gateway.toml"), "{config_path}");
    let mut text =
        std::fs::read_to_string(root().join("deploy/k8s/overlays/distributed/gateway.toml"))
            .unwrap();
    for (kind, _, port) in &gw.probes {
        assert_eq!(
            port, "admin",
            "the gateway's {kind} is on its admin listener"
        );
    }
    assert!(
        text.contains(&format!("listen = \"0.0.0.0:{}\"", gw.ports["admin"])),
        "[admin] listen is not the admin containerPort {}",
        gw.ports["admin"]
    );
    for (svc, addr) in &addrs {
        let port = containers.iter().find(|c| c.name == *svc).unwrap().ports["http"];
        text = text.replace(&format!("\"{svc}:{port}\""), &format!("\"{addr}\""));
        text = text.replace(&format!("://{svc}:{port}"), &format!("://{addr}"));
    }
    let (text, ports) = kit::testing::rebind_ports(
        &text.replace("0.0.0.0:", "127.0.0.1:"),
        &[
            &gw.ports["http"].to_string(),
            &gw.ports["admin"].to_string(),
        ],
    );
    let config = scratch.path().join("gateway.toml");
    std::fs::write(&config, text).unwrap();
    let redis = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:1".into());
    let log = scratch.path().join("gateway.log");
    let mut gateway = Command::new(GATEWAY)
        .args(["run", "--config"])
        .arg(&config)
        .env("GATEWAY_REDIS_URL", redis)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let admin = ports[&gw.ports["admin"].to_string()];
    for (kind, path, _) in &gw.probes {
        let url = format!("http://127.0.0.1:{admin}{path}");
        let within = Duration::from_secs(20);
        if status(&http, &url).await != 200 {
            let deadline = Instant::now() + within;
            while status(&http, &url).await != 200 {
                if Instant::now() > deadline {
                    let _ = gateway.kill();
                    panic!(
                        "gateway {kind} {path} never 200; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let _ = gateway.kill();
    let _ = gateway.wait();

    // The order service's database goes away: not ready (503), still alive (200).
    let Some(proxy) = order_proxy else {
        eprintln!("skipping the database-down half: set TEST_DATABASE_URL");
        return;
    };
    let _ = proxy.stop.send(true);
    let order_at = addrs["order"];
    until_status(
        &http,
        &format!("http://{order_at}/ready"),
        503,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        status(&http, &format!("http://{order_at}/health")).await,
        200
    );
    drop(started);
}
