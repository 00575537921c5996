//! The `gateway` binary as an operator runs it: `check`, `explain` and `run`.
//!
//! Every test starts the real binary built by Cargo (`CARGO_BIN_EXE_gateway`) as a child
//! process. The streaming test puts 50 MiB through the gateway each way and then reads the
//! child's peak resident set size from `/proc/<pid>/status`.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

/// The workspace root (this crate lives one level below it).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn gateway(args: &[&str]) -> Output {
    Command::new(GATEWAY)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("start the gateway binary")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A loopback port nothing listens on (see `kit::testing::unused_port`).
fn free_port() -> u16 {
    kit::testing::unused_port()
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).expect("write config");
    path
}

// ---------------------------------------------------------------------------------------
// gateway check
// ---------------------------------------------------------------------------------------

#[test]
fn check_accepts_the_reference_config_and_every_example() {
    let root = workspace();
    let mut files = vec![
        root.join("config/gateway.toml"),
        root.join("config/platform.toml"),
    ];
    let mut examples: Vec<PathBuf> = fs::read_dir(root.join("config/examples"))
        .expect("config/examples exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    assert!(
        examples.len() >= 4,
        "expected at least 4 examples in config/examples, found {examples:?}"
    );
    files.extend(examples);
    for file in &files {
        let path = file.to_str().expect("utf-8 path");
        let out = gateway(&["check", "--config", path]);
        assert!(out.status.success(), "{path} failed: {}", describe(&out));
        let lines = stdout_lines(&out);
        assert_eq!(lines.len(), 1, "{}", describe(&out));
        assert!(
            lines[0].starts_with(&format!("{path}: ok (")),
            "{}",
            describe(&out)
        );
    }
}

#[test]
fn check_prints_every_problem_with_its_field_path_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_port();
    let bad = write_config(
        dir.path(),
        "bad.toml",
        &format!(
            r#"
[server]
listen = ["127.0.0.1:{listen}"]
threads = 0
trusted_proxies = ["10.0.0.0/8", "10.1.0.0/33"]

[admin]
listen = ""

[[upstreams]]
name = "users"
backends = ["127.0.0.1:3001"]

[[upstreams]]
name = "orders"
backends = ["127.0.0.1:3002", "local_host:3003"]
balance = "consistent_hash"

[[routes]]
name = "users"
match = {{ path_prefix = "/users" }}
upstream = "users"

[[routes]]
name = "profiles"
match = {{ path_regex = "^/profiles/([0-9]+" }}
upstream = "userz"

[[routes]]
name = "users"
match = {{ host = "*.*.example.com", methods = ["GE T"] }}
upstream = "orders"
rewrite = {{ regex = "(", replace = "/" }}
retry = {{ attempts = 0 }}
"#
        ),
    );
    let path = bad.to_str().expect("utf-8 path");
    let started = Instant::now();
    let out = gateway(&["check", "--config", path]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let expected: Vec<String> = [
        "server.threads: must be at least 1",
        r#"server.trusted_proxies[1]: "10.1.0.0/33" is not an IP address or CIDR (e.g. "10.0.0.0/8")"#,
        r#"upstreams[1].backends[1]: "local_host:3003" is not an ip:port or host:port address"#,
        r#"upstreams[1].hash_key: consistent_hash needs a hash_key: client_ip, path, "header:NAME" or "cookie:NAME""#,
        r#"routes[1].upstream: no upstream named "userz" (did you mean "users"?)"#,
        r#"routes[1].match.path_regex: invalid regex "^/profiles/([0-9]+": unclosed group"#,
        r#"routes[2].name: duplicate route name "users""#,
        r#"routes[2].match.host: "*.*.example.com" is not a host name or a wildcard like "*.example.com""#,
        r#"routes[2].match.methods[0]: "GE T" is not an HTTP method"#,
        r#"routes[2].rewrite.regex: invalid regex "(": unclosed group"#,
        "routes[2].retry.attempts: must be at least 1 (1 = no retries)",
    ]
    .iter()
    .map(|line| format!("{path}: {line}"))
    .collect();
    assert_eq!(stdout_lines(&out), expected, "{}", describe(&out));

    // `check` binds nothing: it returns at once and the file's listen port is still free.
    assert!(took < Duration::from_secs(10), "check took {took:?}");
    TcpListener::bind(("127.0.0.1", listen)).expect("the checked listen port is still free");
}

#[test]
fn check_reports_a_bad_platform_section_with_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = write_config(
        dir.path(),
        "platform.toml",
        "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[platform.user]\nlisten = \"127.0.0.1:3001\"\ndatabase = \"x\"\n",
    );
    let path = bad.to_str().expect("utf-8 path");
    let out = gateway(&["check", "--config", path]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let lines = stdout_lines(&out);
    assert!(
        lines[0].starts_with(&format!("{path}:6:")) && lines[0].contains("database"),
        "{}",
        describe(&out)
    );
}

#[test]
fn check_does_not_bind_the_ports_of_a_valid_config() {
    // Hold the proxy and admin ports ourselves: a `check` that tried to bind would fail.
    let proxy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(
        dir.path(),
        "good.toml",
        &format!(
            r#"
[server]
listen = ["{}"]
[admin]
listen = "{}"
[[upstreams]]
name = "app"
backends = ["127.0.0.1:3000"]
[[routes]]
name = "all"
upstream = "app"
"#,
            proxy.local_addr().expect("addr"),
            admin.local_addr().expect("addr"),
        ),
    );
    let path = file.to_str().expect("utf-8 path");
    let out = gateway(&["check", "--config", path]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        stdout_lines(&out),
        [format!("{path}: ok (1 upstream, 1 route)")],
        "{}",
        describe(&out)
    );
}

#[test]
fn check_reports_a_toml_syntax_error_with_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(
        dir.path(),
        "syntax.toml",
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n\n[[routes]]\nname = \"x\"\nupstream = users\n",
    );
    let path = file.to_str().expect("utf-8 path");
    let out = gateway(&["check", "--config", path]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    // Line 6 is `upstream = users`; the unquoted value starts in column 12.
    assert!(
        lines[0].starts_with(&format!("{path}:6:12: ")),
        "{}",
        describe(&out)
    );

    // A value of the wrong type is located the same way.
    let file = write_config(
        dir.path(),
        "types.toml",
        "[[upstreams]]\nname = \"u\"\nbackends = [\"127.0.0.1:1\"]\ntimeouts = { connect = 5 }\n",
    );
    let path = file.to_str().expect("utf-8 path");
    let out = gateway(&["check", "--config", path]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        stdout_lines(&out),
        [format!(
            "{path}:4:24: invalid type: integer `5`, expected a string"
        )],
        "{}",
        describe(&out)
    );
}

#[test]
fn check_reports_a_missing_file_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let path = missing.to_str().expect("utf-8 path");
    let out = gateway(&["check", "--config", path]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    assert!(
        lines[0].starts_with(&format!("{path}: cannot read: ")),
        "{}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------------------
// gateway explain
// ---------------------------------------------------------------------------------------

const EXPLAIN_CONFIG: &str = r#"
[[upstreams]]
name = "orders-stable"
backends = ["127.0.0.1:3001"]

[[upstreams]]
name = "orders-canary"
backends = ["127.0.0.1:3101"]

[[routes]]
name = "orders-canary"
priority = 10
match = { host = "shop.example.com", path_prefix = "/api/orders", headers = { "x-canary" = "1" } }
upstream = "orders-canary"
strip_prefix = "/api"

[[routes]]
name = "orders"
match = { host = "shop.example.com", path_prefix = "/api/orders", methods = ["GET", "POST"] }
upstream = "orders-stable"
rewrite = { regex = "^/api/orders/([0-9]+)$", replace = "/v2/orders/$1" }
"#;

#[test]
fn explain_names_the_matching_route_and_why_earlier_ones_did_not_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(dir.path(), "explain.toml", EXPLAIN_CONFIG);
    let config = file.to_str().expect("utf-8 path");

    // With the canary header: the priority-10 route wins, with its prefix stripped.
    let out = gateway(&[
        "explain",
        "--config",
        config,
        "GET",
        "http://Shop.Example.com:8080/api/orders/7",
        "-H",
        "x-canary: 1",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        stdout_lines(&out),
        [
            "request: GET host=shop.example.com path=/api/orders/7",
            r#"  route "orders-canary" (priority 10): MATCH"#,
            r#"=> route "orders-canary""#,
            r#"   upstream "orders-canary", forwarded path "/orders/7""#,
        ],
        "{}",
        describe(&out)
    );

    // Without it: the canary is skipped for a stated reason, the stable route takes it, and
    // the path is normalized before matching and rewritten after.
    let out = gateway(&[
        "explain",
        "--config",
        config,
        "get",
        "http://shop.example.com/api/./orders//7",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        stdout_lines(&out),
        [
            "request: GET host=shop.example.com path=/api/orders/7",
            r#"  route "orders-canary" (priority 10): no, header x-canary is not "1""#,
            r#"  route "orders" (priority 0): MATCH"#,
            r#"=> route "orders""#,
            r#"   upstream "orders-stable", forwarded path "/v2/orders/7""#,
        ],
        "{}",
        describe(&out)
    );
}

#[test]
fn explain_says_when_no_route_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(dir.path(), "explain.toml", EXPLAIN_CONFIG);
    let config = file.to_str().expect("utf-8 path");
    let out = gateway(&[
        "explain",
        "--config",
        config,
        "DELETE",
        "/api/orders/7",
        "-H",
        "host: other.example.com",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        stdout_lines(&out),
        [
            "request: DELETE host=other.example.com path=/api/orders/7",
            r#"  route "orders-canary" (priority 10): no, host "other.example.com" is not "shop.example.com"; header x-canary is not "1""#,
            r#"  route "orders" (priority 0): no, host "other.example.com" is not "shop.example.com"; method DELETE is not one of [GET, POST]"#,
            "=> no route matches (the gateway answers 404)",
        ],
        "{}",
        describe(&out)
    );
}

#[test]
fn explain_rejects_a_bad_config_or_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write_config(dir.path(), "explain.toml", EXPLAIN_CONFIG);
    let out = gateway(&[
        "explain",
        "--config",
        good.to_str().expect("utf-8 path"),
        "GET",
        "/",
        "-H",
        "no-colon-here",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(r#"header "no-colon-here" is not `name: value`"#),
        "{}",
        describe(&out)
    );

    let bad = write_config(
        dir.path(),
        "bad.toml",
        "[[routes]]\nname = \"r\"\nupstream = \"nowhere\"\n",
    );
    let path = bad.to_str().expect("utf-8 path");
    let out = gateway(&["explain", "--config", path, "GET", "/"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(r#"routes[0].upstream: no upstream named "nowhere""#),
        "{}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------------------
// gateway run: streaming 50 MiB each way with bounded memory
// ---------------------------------------------------------------------------------------

const BIG: u64 = 50 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// Kills and reaps the gateway child however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How the body after a head is framed.
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A request or status line and the headers (names in lower case).
type Head = (String, Vec<(String, String)>);

/// Read a request or response head; `None` on a clean end of stream before it starts.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut first = String::new();
    if r.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "head cut short",
            ));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, line.to_string()))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Some((first.trim_end().to_string(), headers)))
}

fn framing(headers: &[(String, String)], request: bool) -> Framing {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        Framing::Chunked
    } else if let Some(len) = get("content-length") {
        Framing::Length(len.parse().expect("content-length"))
    } else if request {
        Framing::Length(0)
    } else {
        Framing::UntilClose
    }
}

/// Read a body and throw it away, returning how many bytes it had.
fn drain(r: &mut impl BufRead, framing: Framing) -> io::Result<u64> {
    let short = || io::Error::new(io::ErrorKind::UnexpectedEof, "body cut short");
    match framing {
        Framing::Length(n) => {
            let got = io::copy(&mut r.take(n), &mut io::sink())?;
            if got == n {
                Ok(got)
            } else {
                Err(short())
            }
        }
        Framing::UntilClose => io::copy(r, &mut io::sink()),
        Framing::Chunked => {
            let mut total = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line)? == 0 {
                    return Err(short());
                }
                let size = line.trim().split(';').next().unwrap_or("");
                let size = u64::from_str_radix(size.trim(), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        let mut t = String::new();
                        if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                            return Ok(total);
                        }
                    }
                }
                if io::copy(&mut r.by_ref().take(size), &mut io::sink())? != size {
                    return Err(short());
                }
                total += size;
                let mut crlf = String::new();
                r.read_line(&mut crlf)?;
            }
        }
    }
}

/// An HTTP/1.1 upstream on a std listener, one thread per connection:
/// `POST /upload` answers the number of body bytes it read (stored nowhere);
/// `GET /download` sends `BIG` bytes in `CHUNK`-sized chunked-encoding chunks.
fn spawn_bulk_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            thread::spawn(move || {
                let _ = serve_bulk(conn);
            });
        }
    });
    addr
}

fn serve_bulk(conn: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    while let Some((request_line, headers)) = read_head(&mut reader)? {
        let read = drain(&mut reader, framing(&headers, true))?;
        let mut parts = request_line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("POST"), Some("/upload")) => {
                let body = read.to_string();
                write!(
                    writer,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )?;
            }
            (Some("GET"), Some("/download")) => {
                writer.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                      transfer-encoding: chunked\r\n\r\n",
                )?;
                let chunk = vec![b'd'; CHUNK];
                let mut left = BIG;
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    write!(writer, "{n:x}\r\n")?;
                    writer.write_all(&chunk[..n])?;
                    writer.write_all(b"\r\n")?;
                    left -= n as u64;
                }
                writer.write_all(b"0\r\n\r\n")?;
            }
            _ => writer.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?,
        }
        writer.flush()?;
    }
    Ok(())
}

fn wait_until_accepting(addr: SocketAddr, child: &mut ChildGuard, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            panic!(
                "the gateway exited ({status}) before accepting:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not accept on {addr} within 60 s:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the gateway");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(120)))
        .expect("write timeout");
    stream
}

/// Stream `BIG` bytes up through the gateway; returns the status line and the upstream's count.
fn upload(gateway: SocketAddr) -> (String, String) {
    let mut stream = connect(gateway);
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nhost: bulk.test\r\ncontent-type: application/octet-stream\r\n\
         content-length: {BIG}\r\nconnection: close\r\n\r\n"
    )
    .expect("write request head");
    let chunk = vec![b'u'; CHUNK];
    let mut left = BIG;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream.write_all(&chunk[..n]).expect("write request body");
        left -= n as u64;
    }
    stream.flush().expect("flush");
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader)
        .expect("read response head")
        .expect("a response");
    let mut body = Vec::new();
    match framing(&headers, false) {
        Framing::Length(n) => {
            reader.take(n).read_to_end(&mut body).expect("read body");
        }
        _ => {
            reader.read_to_end(&mut body).expect("read body");
        }
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Stream `BIG` bytes down through the gateway; returns the status line and the byte count.
fn download(gateway: SocketAddr) -> (String, u64) {
    let mut stream = connect(gateway);
    stream
        .write_all(b"GET /download HTTP/1.1\r\nhost: bulk.test\r\nconnection: close\r\n\r\n")
        .expect("write request");
    let mut reader = BufReader::with_capacity(CHUNK, stream.try_clone().expect("clone"));
    let (status, headers) = read_head(&mut reader)
        .expect("read response head")
        .expect("a response");
    let count = drain(&mut reader, framing(&headers, false)).expect("read response body");
    let _ = stream.shutdown(Shutdown::Both);
    (status, count)
}

/// `VmHWM` (peak resident set size) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

#[test]
fn run_streams_50_mib_each_way_with_bounded_memory() {
    let upstream = spawn_bulk_upstream();
    let proxy_port = free_port();
    let admin_port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "gateway.toml",
        &format!(
            r#"
[server]
listen = ["127.0.0.1:{proxy_port}"]
threads = 2

[admin]
listen = "127.0.0.1:{admin_port}"

[[upstreams]]
name = "bulk"
backends = ["{upstream}"]

[[routes]]
name = "bulk"
match = {{ path_prefix = "/" }}
upstream = "bulk"
"#
        ),
    );
    let log = dir.path().join("gateway.log");
    let mut child = ChildGuard(
        Command::new(GATEWAY)
            .args(["run", "--config", config.to_str().expect("utf-8 path")])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start gateway run"),
    );
    let pid = child.0.id();
    let gateway: SocketAddr = ([127, 0, 0, 1], proxy_port).into();
    wait_until_accepting(gateway, &mut child, &log);
    let idle_kib = peak_rss_kib(pid);

    let started = Instant::now();
    let (status, counted) = upload(gateway);
    let up_took = started.elapsed();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "upload: {status}\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(counted, BIG.to_string(), "bytes the upstream received");

    let started = Instant::now();
    let (status, received) = download(gateway);
    let down_took = started.elapsed();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "download: {status}\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(received, BIG, "bytes the client received");

    let peak_kib = peak_rss_kib(pid);
    eprintln!(
        "gateway peak RSS (VmHWM): {:.1} MiB after 50 MiB up ({up_took:?}) and 50 MiB down \
         ({down_took:?}); {:.1} MiB when it started accepting",
        peak_kib as f64 / 1024.0,
        idle_kib as f64 / 1024.0
    );
    assert!(
        peak_kib < 40 * 1024,
        "the gateway's peak RSS was {peak_kib} KiB: the 50 MiB bodies were buffered"
    );
    assert!(
        peak_kib - idle_kib < 16 * 1024,
        "the gateway's peak RSS grew from {idle_kib} KiB to {peak_kib} KiB during the transfers"
    );
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "the gateway exited during the transfers"
    );
}

#[test]
fn check_warns_about_an_upstream_whose_certificate_is_not_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_port();
    let path = write_config(
        dir.path(),
        "insecure.toml",
        &format!(
            r#"
[server]
listen = ["127.0.0.1:{listen}"]

[[upstreams]]
name = "legacy"
backends = ["127.0.0.1:8443"]
tls = {{ sni = "legacy.internal", verify = false }}

[[routes]]
name = "all"
upstream = "legacy"
"#
        ),
    );
    let path = path.to_str().expect("utf-8 path");
    let out = gateway(&["check", "--config", path]);
    assert!(out.status.success(), "{}", describe(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 2, "{}", describe(&out));
    assert!(
        lines[0].contains("warning: upstreams[0].tls.verify: is false"),
        "{}",
        describe(&out)
    );
    assert!(
        lines[1].ends_with("ok (1 upstream, 1 route)"),
        "{}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------------------
// gateway probe
// ---------------------------------------------------------------------------------------

/// A one-connection-at-a-time HTTP server answering every request with `status`.
fn answer_with(status: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    addr
}

#[test]
fn probe_exits_0_on_2xx_and_1_on_anything_else() {
    let ok = answer_with("200 OK");
    let out = gateway(&["probe", &format!("http://{ok}/ready")]);
    assert!(out.status.success(), "{}", describe(&out));

    let draining = answer_with("503 Service Unavailable");
    let out = gateway(&["probe", &format!("http://{draining}/ready")]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("503"),
        "{}",
        describe(&out)
    );

    let nobody = format!("http://127.0.0.1:{}/ready", free_port());
    let out = gateway(&["probe", &nobody]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
}

#[test]
fn run_logs_json_lines_with_log_format_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "gateway.toml",
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut child = ChildGuard(
        Command::new(GATEWAY)
            .args(["run", "--config", config.to_str().expect("utf-8 path")])
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gateway run"),
    );
    let stderr = BufReader::new(child.0.stderr.take().expect("stderr"));
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.expect("a log line");
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\nbefore: {seen:?}"));
        if event["message"] == "gatehouse starting" {
            assert_eq!(event["level"], "INFO", "{line}");
            return;
        }
        seen.push(line);
    }
    panic!("the gateway exited without logging its start: {seen:?}");
}

#[test]
fn check_warns_about_a_backend_name_that_does_not_resolve() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `.invalid` never resolves (RFC 6761).
    let config = write_config(
        dir.path(),
        "gateway.toml",
        "[[upstreams]]\nname = \"api\"\nbackends = [\"api.gatehouse.invalid:8080\"]\n",
    );
    let path = config.to_str().expect("utf-8 path");
    let out = gateway(&["check", "--config", path]);
    assert!(out.status.success(), "{}", describe(&out));
    let lines = stdout_lines(&out);
    assert!(
        lines[0].starts_with(&format!(
            "{path}: warning: upstreams[0].backends[0]: \"api.gatehouse.invalid:8080\" does not resolve yet"
        )),
        "{}",
        describe(&out)
    );
    assert_eq!(lines[1], format!("{path}: ok (1 upstream, 0 routes)"));
}
