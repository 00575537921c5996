//! The edge filter kinds over real sockets: `cors` (Fetch standard table), `ip` (with and
//! without trusted proxies), `limits` (413 before and during the body, 431) and `headers`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, Upstream};

/// Every exchange in this file finishes well within this.
const DEADLINE: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(DEADLINE)
        .build()
        .expect("client")
}

/// An upstream that reads each request body to the end before answering with it, so only a
/// complete request is recorded. Answers carry `x-powered-by` and `x-upstream` headers.
struct BodyUpstream {
    addr: SocketAddr,
    /// Requests whose header arrived.
    arrived: Arc<AtomicUsize>,
    /// Bodies of requests that arrived complete.
    complete: Arc<Mutex<Vec<Bytes>>>,
    task: tokio::task::JoinHandle<()>,
}

impl BodyUpstream {
    async fn start() -> BodyUpstream {
        let arrived = Arc::new(AtomicUsize::new(0));
        let complete = Arc::new(Mutex::new(Vec::new()));
        let (seen, done) = (Arc::clone(&arrived), Arc::clone(&complete));
        let app = Router::new().fallback(move |req: Request| {
            let (seen, done) = (Arc::clone(&seen), Arc::clone(&done));
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                match axum::body::to_bytes(req.into_body(), usize::MAX).await {
                    Ok(body) => {
                        done.lock().unwrap().push(body.clone());
                        (
                            [
                                ("x-powered-by", "test-upstream"),
                                ("x-upstream", "original"),
                            ],
                            body,
                        )
                            .into_response()
                    }
                    Err(_) => http::StatusCode::BAD_REQUEST.into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        BodyUpstream {
            addr,
            arrived,
            complete,
            task,
        }
    }

    fn complete(&self) -> Vec<Bytes> {
        self.complete.lock().unwrap().clone()
    }
}

impl Drop for BodyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Lower-case names, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_response(bytes: &[u8]) -> Option<RawResponse> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(RawResponse {
        status,
        headers,
        body: bytes[end + 4..].to_vec(),
    })
}

/// Send `head`, then each of `chunks` with a short pause between them, while reading the
/// answer until the gateway closes. Write errors are expected once the gateway has answered
/// and closed; the answer is whatever arrived before that.
async fn raw_exchange(addr: SocketAddr, head: String, chunks: Vec<Vec<u8>>) -> RawResponse {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for chunk in chunks {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // Keep the write side open: a half-close would end the request for the gateway.
        tokio::time::sleep(DEADLINE).await;
    });
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf
    };
    let bytes = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the gateway answers and closes in time");
    write.abort();
    parse_response(&bytes)
        .unwrap_or_else(|| panic!("no HTTP answer, got {:?}", String::from_utf8_lossy(&bytes)))
}

fn chunked(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn problem_body(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("problem+json body")
}

// ---------------------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------------------

const ACAO: &str = "access-control-allow-origin";
const ACAC: &str = "access-control-allow-credentials";
const ACAM: &str = "access-control-allow-methods";
const ACAH: &str = "access-control-allow-headers";
const ACMA: &str = "access-control-max-age";
const ACEH: &str = "access-control-expose-headers";
const CHECKED: [&str; 7] = [ACAO, ACAC, ACAM, ACAH, ACMA, ACEH, "vary"];
const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

const APP: &str = "https://app.example.com";
const SUB: &str = "https://a.example.org";
const EVIL: &str = "https://evil.example";

fn cors_config(up: SocketAddr) -> String {
    format!(
        r#"
[filters.cors-exact]
kind = "cors"
allow_origins = ["{APP}", "https://*.example.org"]
allow_methods = ["GET", "PUT"]
allow_headers = ["content-type", "x-trace"]
expose_headers = ["x-request-id"]

[filters.cors-creds]
kind = "cors"
allow_origins = ["{APP}"]
allow_methods = ["GET", "PUT"]
allow_headers = ["content-type", "x-trace"]
expose_headers = ["x-request-id"]
allow_credentials = true
max_age = "1h"

[filters.cors-wild]
kind = "cors"
allow_origins = ["*"]
allow_headers = ["*"]

[filters.ten-only]
kind = "ip"
allow = ["10.0.0.0/8"]

[[upstreams]]
name = "app"
backends = ["{up}"]

[[routes]]
name = "exact"
match = {{ path_prefix = "/exact" }}
upstream = "app"
filters = ["cors-exact"]

[[routes]]
name = "creds"
match = {{ path_prefix = "/creds" }}
upstream = "app"
filters = ["cors-creds"]

[[routes]]
name = "wild"
match = {{ path_prefix = "/wild" }}
upstream = "app"
filters = ["cors-wild"]

[[routes]]
name = "guarded"
match = {{ path_prefix = "/guarded" }}
upstream = "app"
filters = ["cors-creds", "ten-only"]
"#
    )
}

/// One row: a request and every CORS header of the answer (`None`: absent).
struct CorsCase {
    name: &'static str,
    path: &'static str,
    method: &'static str,
    origin: Option<&'static str>,
    /// `Access-Control-Request-Method`: present makes an `OPTIONS` a preflight.
    request_method: Option<&'static str>,
    request_headers: Option<&'static str>,
    status: u16,
    forwarded: bool,
    /// ACAO, ACAC, ACAM, ACAH, ACMA, ACEH, Vary.
    expect: [Option<&'static str>; 7],
}

#[rustfmt::skip]
const CORS_TABLE: &[CorsCase] = &[
    // --- exact origins, no credentials ---
    CorsCase { name: "preflight, allowed origin", path: "/exact", method: "OPTIONS", origin: Some(APP),
        request_method: Some("PUT"), request_headers: Some("Content-Type, X-Trace"), status: 204, forwarded: false,
        expect: [Some(APP), None, Some("GET, PUT"), Some("content-type, x-trace"), Some("600"), None, Some(PREFLIGHT_VARY)] },
    CorsCase { name: "preflight, origin matching *.example.org", path: "/exact", method: "OPTIONS", origin: Some(SUB),
        request_method: Some("GET"), request_headers: None, status: 204, forwarded: false,
        expect: [Some(SUB), None, Some("GET, PUT"), Some("content-type, x-trace"), Some("600"), None, Some(PREFLIGHT_VARY)] },
    CorsCase { name: "preflight, safelisted method not listed", path: "/exact", method: "OPTIONS", origin: Some(APP),
        request_method: Some("POST"), request_headers: Some("x-trace"), status: 204, forwarded: false,
        expect: [Some(APP), None, Some("GET, PUT"), Some("content-type, x-trace"), Some("600"), None, Some(PREFLIGHT_VARY)] },
    CorsCase { name: "preflight, disallowed origin", path: "/exact", method: "OPTIONS", origin: Some(EVIL),
        request_method: Some("PUT"), request_headers: None, status: 403, forwarded: false,
        expect: [None, None, None, None, None, None, Some(PREFLIGHT_VARY)] },
    CorsCase { name: "preflight, apex of a *. pattern", path: "/exact", method: "OPTIONS", origin: Some("https://example.org"),
        request_method: Some("GET"), request_headers: None, status: 403, forwarded: false,
        expect: [None, None, None, None, None, None, Some(PREFLIGHT_VARY)] },
    CorsCase { name: "preflight, method not allowed", path: "/exact", method: "OPTIONS", origin: Some(APP),
        request_method: Some("DELETE"), request_headers: None, status: 403, forwarded: false,
        expect: [None, None, None, None, None, None, Some(PREFLIGHT_VARY)] },
    CorsCase { name: "preflight, header not allowed", path: "/exact", method: "OPTIONS", origin: Some(APP),
        request_method: Some("PUT"), request_headers: Some("x-trace, authorization"), status: 403, forwarded: false,
        expect: [None, None, None, None, None, None, Some(PREFLIGHT_VARY)] },
    CorsCase { name: "simple, allowed origin", path: "/exact", method: "GET", origin: Some(APP),
        request_method: None, request_headers: None, status: 200, forwarded: true,
        expect: [Some(APP), None, None, None, None, Some("x-request-id"), Some("Origin")] },
    CorsCase { name: "simple POST, allowed *.example.org origin", path: "/exact", method: "POST", origin: Some(SUB),
        request_method: None, request_headers: None, status: 200, forwarded: true,
        expect: [Some(SUB), None, None, None, None, Some("x-request-id"), Some("Origin")] },
    CorsCase { name: "simple, disallowed origin", path: "/exact", method: "GET", origin: Some(EVIL),
        request_method: None, request_headers: None, status: 200, forwarded: true,
        expect: [None, None, None, None, None, None, Some("Origin")] },
    CorsCase { name: "no Origin", path: "/exact", method: "GET", origin: None,
        request_method: None, request_headers: None, status: 200, forwarded: true,
        expect: [None, None, None, None, None, None, Some("Origin")] },
    CorsCase { name: "OPTIONS without Access-Control-Request-Method is not a preflight", path: "/exact", method: "OPTIONS", origin: Some(APP),
        request_method: None, request_headers: None, status: 200, forwarded: true,
        expect: [Some(APP), None, None, None, None, Some("x-request-id"), Some("Origin")] },
    // --- credentials on ---
    CorsCase { name: "credentials: preflight, allowed origin", path: "/creds", method: "OPTIONS", origin: Some(APP),
        request_method: Some("PUT"), request_headers: Some("content-type"), status: 204, forwarded: false,
        expect: [Some(APP), Some("true"), Some("GET, PUT"), Some("content-type, x-trace"), Some("3600"), None, Some(PREFLIGHT_VARY)] },
    CorsCase { name: "credentials: preflight, disallowed origin", path: "/creds", method: "OPTIONS", origin: Some(SUB),
        request_method: Some("PUT"), request_headers: None, status: 403, forwarded: false,
        expect: [None, None, None, None, None, None, Some(PREFLIGHT_VARY)] },
    CorsCase { name: "credentials: simple, allowed origin", path: "/creds", method: "POST", origin: Some(APP),
        request_method: None, request_headers: None, status: 200, forwarded: true,
        expect: [Some(APP), Some("true"), None, None, None, Some("x-request-id"), Some("Origin")] },
    CorsCase { name: "credentials: simple, disallowed origin", path: "/creds", method: "GET", origin: Some(EVIL),
        request_method: None, request_headers: None, status: 200, forwarded: true,
        expect: [None, None, None, None, None, None, Some("Origin")] },
    // --- wildcard origin (credentials off: a wildcard with credentials is a config error) ---
    CorsCase { name: "wildcard: preflight", path: "/wild", method: "OPTIONS", origin: Some(EVIL),
        request_method: Some("POST"), request_headers: Some("Authorization"), status: 204, forwarded: false,
        expect: [Some("*"), None, Some("GET, HEAD, POST"), Some("authorization"), Some("600"), None, Some(PREFLIGHT_VARY)] },
    CorsCase { name: "wildcard: preflight, method not allowed", path: "/wild", method: "OPTIONS", origin: Some(EVIL),
        request_method: Some("PATCH"), request_headers: None, status: 403, forwarded: false,
        expect: [None, None, None, None, None, None, Some(PREFLIGHT_VARY)] },
    CorsCase { name: "wildcard: simple", path: "/wild", method: "GET", origin: Some("https://anyone.test"),
        request_method: None, request_headers: None, status: 200, forwarded: true,
        expect: [Some("*"), None, None, None, None, None, Some("Origin")] },
    CorsCase { name: "wildcard: no Origin", path: "/wild", method: "GET", origin: None,
        request_method: None, request_headers: None, status: 200, forwarded: true,
        expect: [None, None, None, None, None, None, Some("Origin")] },
    // --- another filter's answer still carries the CORS headers ---
    CorsCase { name: "ip filter's 403 carries CORS headers", path: "/guarded", method: "GET", origin: Some(APP),
        request_method: None, request_headers: None, status: 403, forwarded: false,
        expect: [Some(APP), Some("true"), None, None, None, Some("x-request-id"), Some("Origin")] },
    CorsCase { name: "preflight answered before the ip filter", path: "/guarded", method: "OPTIONS", origin: Some(APP),
        request_method: Some("GET"), request_headers: None, status: 204, forwarded: false,
        expect: [Some(APP), Some("true"), Some("GET, PUT"), Some("content-type, x-trace"), Some("3600"), None, Some(PREFLIGHT_VARY)] },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_follows_the_fetch_standard() {
    let up = Upstream::start("app").await;
    let gw = support::gateway(&cors_config(up.addr)).await;
    let client = client();
    for case in CORS_TABLE {
        let before = up.requests().len();
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
        let mut req = client.request(method, support::url(gw.local_addr(), case.path));
        if let Some(origin) = case.origin {
            req = req.header("origin", origin);
        }
        if let Some(m) = case.request_method {
            req = req.header("access-control-request-method", m);
        }
        if let Some(h) = case.request_headers {
            req = req.header("access-control-request-headers", h);
        }
        let resp = req.send().await.expect("answer");
        assert_eq!(resp.status().as_u16(), case.status, "{}", case.name);
        for (name, want) in CHECKED.iter().zip(case.expect) {
            let got: Vec<&str> = resp
                .headers()
                .get_all(*name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            let got = if got.is_empty() {
                None
            } else {
                Some(got.join(" | "))
            };
            assert_eq!(got.as_deref(), want, "{}: {name}", case.name);
        }
        if case.status == 204 {
            assert!(
                !resp.headers().contains_key("content-length"),
                "{}: a 204 has no Content-Length (RFC 9110 §8.6)",
                case.name
            );
        }
        if case.status == 403 {
            assert_eq!(
                resp.headers()["content-type"],
                "application/problem+json",
                "{}",
                case.name
            );
        }
        let forwarded = up.requests().len() > before;
        assert_eq!(forwarded, case.forwarded, "{}: forwarded", case.name);
    }
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_configuration_mistakes_reject_the_config() {
    let cases = [
        (
            "allow_origins = [\"*\"]\nallow_credentials = true",
            "filters.bad: allow_origins: \"*\" cannot be combined with allow_credentials",
        ),
        (
            "allow_origins = [\"https://app.example.com/\"]",
            "filters.bad: allow_origins[0]: \"https://app.example.com/\": an origin has no path",
        ),
        (
            "allow_origins = [\"https://a.com\"]\nallow_headers = [\"x y\"]",
            "filters.bad: allow_headers[0]",
        ),
        (
            "allow_origin = [\"https://a.com\"]",
            "filters.bad: unknown field",
        ),
    ];
    for (settings, expected) in cases {
        let text = support::with_test_listeners(&format!(
            r#"
[filters.bad]
kind = "cors"
{settings}

[[upstreams]]
name = "app"
backends = ["127.0.0.1:9"]

[[routes]]
name = "r"
match = {{ path_prefix = "/" }}
upstream = "app"
filters = ["bad"]
"#
        ));
        let err = gatehouse::Gateway::builder()
            .config_toml(text)
            .build()
            .err()
            .unwrap_or_else(|| panic!("{settings} is refused"))
            .to_string();
        assert!(err.contains(expected), "{settings}: {err}");
    }
}

// ---------------------------------------------------------------------------------------
// ip
// ---------------------------------------------------------------------------------------

fn ip_config(up: SocketAddr, server: &str) -> String {
    format!(
        r#"
{server}
[filters.loopback]
kind = "ip"
allow = ["127.0.0.0/8"]

[filters.ten]
kind = "ip"
allow = ["10.0.0.0/8"]

[filters.not-me]
kind = "ip"
allow = ["127.0.0.0/8", "10.0.0.0/8"]
deny = ["127.0.0.1", "10.9.0.0/16"]

[[upstreams]]
name = "app"
backends = ["{up}"]

[[routes]]
name = "loopback"
match = {{ path_prefix = "/loopback" }}
upstream = "app"
filters = ["loopback"]

[[routes]]
name = "ten"
match = {{ path_prefix = "/ten" }}
upstream = "app"
filters = ["ten"]

[[routes]]
name = "not-me"
match = {{ path_prefix = "/not-me" }}
upstream = "app"
filters = ["not-me"]
"#
    )
}

/// (path, X-Forwarded-For sent by the client, expected status).
type IpCase = (&'static str, Option<&'static str>, u16);

async fn check_ip_table(
    gw: &gatehouse::GatewayHandle,
    up: &Upstream,
    cases: &[IpCase],
    label: &str,
) {
    let client = client();
    for (path, xff, status) in cases {
        let before = up.requests().len();
        let mut req = client.get(support::url(gw.local_addr(), path));
        if let Some(xff) = xff {
            req = req.header("x-forwarded-for", *xff);
        }
        let resp = req.send().await.expect("answer");
        let case = format!("{label}: {path} xff={xff:?}");
        assert_eq!(resp.status().as_u16(), *status, "{case}");
        let forwarded = up.requests().len() > before;
        assert_eq!(forwarded, *status == 200, "{case}: forwarded");
        if *status == 403 {
            assert_eq!(
                resp.headers()["content-type"],
                "application/problem+json",
                "{case}"
            );
            let body: Value = resp.json().await.expect("problem body");
            assert_eq!(body["status"], 403, "{case}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_allow_and_deny_without_trusted_proxies() {
    let up = Upstream::start("app").await;
    let gw = support::gateway(&ip_config(up.addr, "")).await;
    #[rustfmt::skip]
    let cases: &[IpCase] = &[
        ("/loopback", None, 200),
        ("/ten", None, 403),
        // An untrusted peer cannot claim an address.
        ("/ten", Some("10.1.2.3"), 403),
        ("/loopback", Some("203.0.113.9"), 200),
        // Deny wins over allow.
        ("/not-me", None, 403),
    ];
    check_ip_table(&gw, &up, cases, "untrusted").await;
    let metrics = support::admin_metrics(&client(), gw.admin_addr().unwrap()).await;
    assert!(
        metrics.contains(r#"gatehouse_filter_decisions_total{decision="respond",filter="ten",reason="ip_denied"} 2"#),
        "{metrics}"
    );
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_allow_and_deny_behind_a_trusted_proxy() {
    let up = Upstream::start("app").await;
    let server = "[server]\nlisten = [\"127.0.0.1:0\"]\nthreads = 2\nshutdown_timeout = \"1s\"\n\
                  trusted_proxies = [\"127.0.0.1/32\"]\n";
    let gw = support::gateway(&ip_config(up.addr, server)).await;
    #[rustfmt::skip]
    let cases: &[IpCase] = &[
        // The trusted proxy (us, 127.0.0.1) says who the client is.
        ("/ten", Some("10.1.2.3"), 200),
        ("/ten", Some("203.0.113.9"), 403),
        ("/loopback", Some("203.0.113.9"), 403),
        // No header: the proxy itself is the client.
        ("/loopback", None, 200),
        ("/ten", None, 403),
        // Only the nearest untrusted hop counts: a client prepending 10.x gains nothing.
        ("/ten", Some("10.1.2.3, 203.0.113.9"), 403),
        ("/ten", Some("203.0.113.9, 10.1.2.3"), 200),
        // Deny wins over allow for the resolved client too.
        ("/not-me", Some("10.9.1.1"), 403),
        ("/not-me", Some("10.8.1.1"), 200),
        // IPv4-mapped IPv6 is the IPv4 address.
        ("/ten", Some("::ffff:10.1.2.3"), 200),
    ];
    check_ip_table(&gw, &up, cases, "trusted").await;
    support::stop(gw).await;
}

// ---------------------------------------------------------------------------------------
// limits
// ---------------------------------------------------------------------------------------

const BODY_CAP: usize = 64 * 1024;

fn limits_config(up: SocketAddr) -> String {
    format!(
        r#"
[filters.small]
kind = "limits"
max_body_bytes = {BODY_CAP}
max_header_count = 32
max_header_bytes = 4096

[filters.cors]
kind = "cors"
allow_origins = ["{APP}"]

[[upstreams]]
name = "app"
backends = ["{up}"]

[[routes]]
name = "upload"
match = {{ path_prefix = "/upload" }}
upstream = "app"
filters = ["cors", "small"]
"#
    )
}

fn assert_413(resp: &RawResponse, case: &str) {
    assert_eq!(resp.status, 413, "{case}: {resp:?}");
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{case}"
    );
    let body = problem_body(&resp.body);
    assert_eq!(body["status"], 413, "{case}");
    assert_eq!(
        body["detail"],
        format!("the request body is larger than the {BODY_CAP} bytes this route accepts"),
        "{case}"
    );
    assert_eq!(
        resp.header(ACAO),
        Some(APP),
        "{case}: CORS on a gateway answer"
    );
    assert!(resp.header("x-request-id").is_some(), "{case}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_cap_is_refused_before_the_upstream_is_contacted() {
    let up = BodyUpstream::start().await;
    let gw = support::gateway(&limits_config(up.addr)).await;
    let too_big = BODY_CAP + 1;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nOrigin: {APP}\r\nContent-Length: {too_big}\r\n\r\n"
    );
    // Without a body byte sent, and with the client already streaming the body.
    for (case, chunks) in [
        ("no body sent", vec![]),
        ("body streaming", vec![vec![b'a'; 8192]; 4]),
    ] {
        let resp = raw_exchange(gw.local_addr(), head.clone(), chunks).await;
        assert_413(&resp, case);
        assert_eq!(resp.header("connection"), Some("close"), "{case}");
    }
    assert_eq!(
        up.arrived.load(Ordering::SeqCst),
        0,
        "the upstream never saw the request"
    );
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_crossing_the_cap_is_refused_mid_stream() {
    let up = BodyUpstream::start().await;
    let gw = support::gateway(&limits_config(up.addr)).await;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nOrigin: {APP}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    // 16 KiB chunks, 128 KiB in all (twice the cap), then the last chunk.
    let mut chunks: Vec<Vec<u8>> = (0..8).map(|_| chunked(&[b'z'; 16 * 1024])).collect();
    chunks.push(b"0\r\n\r\n".to_vec());
    let resp = raw_exchange(gw.local_addr(), head, chunks).await;
    assert_413(&resp, "chunked");
    // Give a complete request every chance to show up before asserting it never did.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        up.complete().is_empty(),
        "the upstream saw no complete request: {:?}",
        up.complete().iter().map(Bytes::len).collect::<Vec<_>>()
    );

    // The same through an ordinary client streaming its body.
    let stream = futures::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 16 * 1024]))),
    );
    let resp = client()
        .post(support::url(gw.local_addr(), "/upload"))
        .header("origin", APP)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("the 413 reaches a streaming client");
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()[ACAO], APP);

    // HTTP/2 (h2c) has no chunked coding and no Content-Length here: the count still applies.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(DEADLINE)
        .build()
        .expect("h2c client");
    let stream = futures::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 16 * 1024]))),
    );
    let resp = h2
        .post(support::url(gw.local_addr(), "/upload"))
        .header("origin", APP)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("the 413 reaches an HTTP/2 client");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()[ACAO], APP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        up.complete().is_empty(),
        "still no complete request upstream"
    );
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_within_the_cap_passes_intact() {
    let up = BodyUpstream::start().await;
    let gw = support::gateway(&limits_config(up.addr)).await;
    let client = client();
    let exact: Vec<u8> = (0..BODY_CAP).map(|i| (i % 251) as u8).collect();
    let resp = client
        .post(support::url(gw.local_addr(), "/upload"))
        .body(exact.clone())
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.bytes().await.unwrap(),
        exact,
        "content-length body at the cap"
    );

    let parts: Vec<Bytes> = exact.chunks(10_000).map(Bytes::copy_from_slice).collect();
    let stream = futures::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>));
    let resp = client
        .post(support::url(gw.local_addr(), "/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.bytes().await.unwrap(),
        exact,
        "chunked body at the cap"
    );
    assert_eq!(up.complete(), vec![Bytes::from(exact.clone()); 2]);
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_header_fields_are_431() {
    let up = BodyUpstream::start().await;
    let gw = support::gateway(&limits_config(up.addr)).await;
    let many: String = (0..40).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let at_cap: String = (0..29).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let big = format!("x-big: {}\r\n", "b".repeat(4096));
    #[rustfmt::skip]
    let cases: [(&str, String, u16, Option<&str>); 4] = [
        ("40 fields > 32", many, 431, Some("has more than 32 header fields")),
        ("32 fields (29 + host, origin, connection)", at_cap, 200, None),
        ("4 KiB value > 4096 bytes", big, 431, Some("larger than 4096 bytes")),
        ("small", "x-a: 1\r\n".to_string(), 200, None),
    ];
    for (case, fields, status, detail) in cases {
        let before = up.arrived.load(Ordering::SeqCst);
        let head = format!(
            "GET /upload HTTP/1.1\r\nHost: x\r\nOrigin: {APP}\r\n{fields}Connection: close\r\n\r\n"
        );
        let resp = raw_exchange(gw.local_addr(), head, vec![]).await;
        assert_eq!(resp.status, status, "{case}: {resp:?}");
        let arrived = up.arrived.load(Ordering::SeqCst) > before;
        assert_eq!(arrived, status == 200, "{case}: forwarded");
        if let Some(detail) = detail {
            assert_eq!(
                resp.header("content-type"),
                Some("application/problem+json")
            );
            let body = problem_body(&resp.body);
            assert!(
                body["detail"].as_str().unwrap().contains(detail),
                "{case}: {body}"
            );
            assert_eq!(
                resp.header(ACAO),
                Some(APP),
                "{case}: CORS on a gateway answer"
            );
        }
    }
    support::stop(gw).await;
}

// ---------------------------------------------------------------------------------------
// headers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_set_and_removed_in_both_directions() {
    let echo = Upstream::start("echo").await;
    let body_up = BodyUpstream::start().await;
    let gw = support::gateway(&format!(
        r#"
[filters.edit]
kind = "headers"
request_set = {{ "x-a" = "gateway", "X-New" = "added" }}
request_remove = ["x-b"]
response_set = {{ "x-upstream" = "replaced", "x-frame-options" = "DENY" }}
response_remove = ["x-powered-by"]
response_add = {{ "cache-control" = "no-transform" }}

[filters.ten]
kind = "ip"
allow = ["10.0.0.0/8"]

[[upstreams]]
name = "echo"
backends = ["{echo}"]

[[upstreams]]
name = "body"
backends = ["{body}"]

[[routes]]
name = "in"
match = {{ path_prefix = "/in" }}
upstream = "echo"
filters = ["edit"]

[[routes]]
name = "out"
match = {{ path_prefix = "/out" }}
upstream = "body"
filters = ["edit"]

[[routes]]
name = "refused"
match = {{ path_prefix = "/refused" }}
upstream = "body"
filters = ["edit", "ten"]
"#,
        echo = echo.addr,
        body = body_up.addr,
    ))
    .await;
    let client = client();

    let resp = client
        .get(support::url(gw.local_addr(), "/in"))
        .header("x-a", "client")
        .header("x-b", "secret")
        .header("x-c", "kept")
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    let seen = echo.last();
    assert_eq!(
        seen.headers.get("x-a").cloned(),
        Some(vec!["gateway".to_string()])
    );
    assert_eq!(seen.header("x-new"), Some("added"));
    assert_eq!(seen.header("x-b"), None);
    assert_eq!(seen.header("x-c"), Some("kept"));

    let resp = client
        .get(support::url(gw.local_addr(), "/out"))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert!(!h.contains_key("x-powered-by"));
    assert_eq!(
        h.get_all("x-upstream").iter().collect::<Vec<_>>(),
        ["replaced"]
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(
        h.get_all("cache-control").iter().collect::<Vec<_>>(),
        ["no-transform"]
    );

    // Response edits apply to the gateway's own answers too.
    let resp = client
        .get(support::url(gw.local_addr(), "/refused"))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    let cache: Vec<_> = resp.headers().get_all("cache-control").iter().collect();
    assert_eq!(cache, ["no-store", "no-transform"]);
    support::stop(gw).await;
}
