//! A service's own binary, run as a user runs it: its command line, its JSON logs, serving
//! on a port the OS picks, and a graceful stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A service binary serving (see [`start`]).
pub struct RunningBinary {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every line it logged so far.
    pub logs: Arc<Mutex<Vec<String>>>,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Starts `binary` with `--bind 127.0.0.1:0`, a fresh `--data-dir`, `LOG_FORMAT=json` and
/// `env`; returns once it logged the address it listens on (panics after 60 s).
pub fn start(binary: &str, env: &[(&str, &str)]) -> RunningBinary {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut child = Command::new(binary)
        .args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{binary}: {e}"));
    let stderr = child.stderr.take().expect("stderr is piped");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (found, listening) = mpsc::channel();
    let lines = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = listening_addr(&line) {
                let _ = found.send(addr);
            }
            lines.lock().unwrap().push(line);
        }
    });
    let addr = match listening.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "{binary} did not log where it listens; it logged:\n{}",
                logs.lock().unwrap().join("\n")
            )
        }
    };
    RunningBinary {
        addr,
        logs,
        child,
        _dir: dir,
    }
}

/// The `addr` of a JSON log line whose message is `listening`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["message"] == "listening").then_some(())?;
    v["addr"].as_str()?.parse().ok()
}

impl RunningBinary {
    /// Sends SIGTERM and waits for the exit (panics after 30 s).
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("waiting for the binary") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("still running 30 s after SIGTERM");
    }
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET {base}/openapi.json` is an OpenAPI 3.1 document of the service `name` in which every
/// operation has an id and answers, valid by `openapi-spec-validator` (a separate
/// implementation of the specification's schema; `.ci/run` installs it, elsewhere that part
/// is skipped with a message).
pub async fn check_openapi(base: &str, name: &str) {
    let resp = reqwest::get(format!("{base}/openapi.json"))
        .await
        .expect("/openapi.json answers");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let text = resp.text().await.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).expect("a JSON document");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], format!("Gatehouse {name} service"));
    let paths = doc["paths"].as_object().expect("paths");
    assert!(!paths.is_empty(), "no operation documented");
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["operationId"].is_string(),
                "{method} {path}: no operationId"
            );
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                // 101: a WebSocket handshake's success.
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{method} {path}: no success answer"
            );
        }
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    match Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
    {
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            eprintln!("skipping the OpenAPI validator: pip install openapi-spec-validator")
        }
        Ok(out) => assert!(
            out.status.success(),
            "openapi-spec-validator refused the {name} document: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("skipping the OpenAPI validator: no python3 ({e})"),
    }
}

/// What every service binary must do, checked as a user would: `--help` names the binary
/// and its variables, `--version` prints the version, a wrong flag exits 2 saying why, and
/// with `env` it starts, answers `/health` and `/openapi.json` (see [`check_openapi`]) with
/// JSON log lines only, and on SIGTERM stops
/// with success after logging that it stopped serving.
pub async fn check_service_binary(binary: &str, name: &str, env: &[(&str, &str)]) {
    let run = |arg: &str| {
        Command::new(binary)
            .arg(arg)
            .output()
            .unwrap_or_else(|e| panic!("{binary} {arg}: {e}"))
    };
    let help = run("--help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "--help: {help:?}");
    assert!(text.contains(&format!("Usage: {name}-service")), "{text}");
    assert!(
        text.contains(&format!("prefixed {}_", name.to_uppercase())),
        "{text}"
    );
    assert!(
        text.contains("--database-url") && text.contains("DATABASE_URL"),
        "{text}"
    );
    let version = run("--version");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("{name}-service {}", env!("CARGO_PKG_VERSION"))
    );
    let wrong = run("--no-such-flag");
    assert_eq!(wrong.status.code(), Some(2), "{wrong:?}");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("--no-such-flag"));

    let binary_path = binary.to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let running = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        start(&binary_path, &env)
    })
    .await
    .expect("the binary starts");
    let health = reqwest::get(format!("http://{}/health", running.addr))
        .await
        .expect("/health answers");
    assert_eq!(health.status(), 200);
    check_openapi(&format!("http://{}", running.addr), name).await;
    let logs = running.logs.clone();
    let status = tokio::task::spawn_blocking(move || running.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    let logs = logs.lock().unwrap();
    for line in logs.iter() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("LOG_FORMAT=json, yet a line is not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        logs.iter().any(|l| l.contains("stopped serving")),
        "no graceful stop logged:\n{}",
        logs.join("\n")
    );
}
