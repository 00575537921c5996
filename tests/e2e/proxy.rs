//! The proxy path end to end: routing, path normalization on the wire, forwarding headers,
//! error answers, WebSocket, h2c and retries. Every gateway and upstream binds port 0.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::header::HOST;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::raw::{find, raw_exchange, read_response, RawResponse, EXCHANGE_LIMIT};
use crate::support::{self, Upstream};

/// `[[upstreams]]` with one backend, named like its upstream.
fn upstream_toml(name: &str, addr: SocketAddr) -> String {
    format!("[[upstreams]]\nname = \"{name}\"\nbackends = [\"{addr}\"]\n\n")
}

/// Start one echo upstream per name and declare each as a one-backend pool of that name.
async fn echo_pools(names: &[&str]) -> (Vec<Upstream>, String) {
    let mut ups = Vec::new();
    let mut toml = String::new();
    for name in names {
        let up = Upstream::start(name).await;
        toml.push_str(&upstream_toml(name, up.addr));
        ups.push(up);
    }
    (ups, toml)
}

/// An address nobody listens on (bound once by us, then released).
fn dead_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe");
    probe.local_addr().expect("probe addr")
}

/// `GET path` with `Host: host` over a raw socket (no client-side normalization).
async fn raw_get(addr: SocketAddr, host: &str, path: &str) -> RawResponse {
    raw_exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Assert a gateway-written error: status, problem+json, `request_id` equal to the header.
fn assert_problem(status: u16, headers: &reqwest::header::HeaderMap, body: &[u8], want: u16) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, want, "status; body: {text}");
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(content_type, "application/problem+json", "body: {text}");
    let problem: Value = serde_json::from_slice(body).expect("problem body is JSON");
    assert_eq!(problem["status"], want, "{problem}");
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("error answers carry x-request-id");
    assert!(!id.is_empty());
    assert_eq!(problem["request_id"], id, "{problem}");
}

fn assert_raw_problem(resp: &RawResponse, want: u16) {
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &resp.headers {
        headers.append(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    assert_problem(resp.status, &headers, &resp.body, want);
}

async fn send(req: reqwest::RequestBuilder) -> reqwest::Response {
    tokio::time::timeout(EXCHANGE_LIMIT, req.send())
        .await
        .expect("answer in time")
        .expect("request is answered")
}

/// One routing case: a request and the upstream it must reach (`None`: 404).
struct Case {
    method: &'static str,
    host: Option<&'static str>,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want: Option<&'static str>,
}

const fn case(
    method: &'static str,
    host: Option<&'static str>,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want: Option<&'static str>,
) -> Case {
    Case {
        method,
        host,
        path,
        headers,
        want,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_upstream_their_route_names() {
    let names = [
        "wildcard-host",
        "exact-host",
        "api",
        "users",
        "exact-path",
        "canary",
        "items",
        "orders",
        "orders-write",
        "promo-exact",
        "promo-priority",
    ];
    let (ups, mut toml) = echo_pools(&names).await;
    // File order is chosen against the expected outcome: specificity and priority must decide.
    toml.push_str(
        r#"
[[routes]]
name = "wildcard-host"
match = { host = "*.example.com" }
upstream = "wildcard-host"

[[routes]]
name = "exact-host"
match = { host = "api.example.com" }
upstream = "exact-host"

[[routes]]
name = "api"
match = { path_prefix = "/api" }
upstream = "api"

[[routes]]
name = "users"
match = { path_prefix = "/api/users" }
upstream = "users"

[[routes]]
name = "exact-path"
match = { path = "/api/users/me" }
upstream = "exact-path"

[[routes]]
name = "canary"
match = { path_prefix = "/api", headers = { "x-canary" = "1" } }
upstream = "canary"

[[routes]]
name = "items"
match = { path_regex = '^/items/[0-9]+$' }
upstream = "items"

[[routes]]
name = "orders"
match = { path_prefix = "/orders" }
upstream = "orders"

[[routes]]
name = "orders-write"
match = { path_prefix = "/orders", methods = ["POST", "PUT"] }
upstream = "orders-write"

[[routes]]
name = "promo-exact"
match = { path = "/promo/summer" }
upstream = "promo-exact"

[[routes]]
name = "promo-priority"
match = { path_prefix = "/promo" }
priority = 10
upstream = "promo-priority"
"#,
    );
    let gw = support::gateway(&toml).await;
    let client = support::client();
    let cases = [
        // Host: exact beats wildcard; case and port do not matter; a wildcard needs a subdomain.
        case(
            "GET",
            Some("api.example.com"),
            "/x",
            &[],
            Some("exact-host"),
        ),
        case(
            "GET",
            Some("API.Example.COM"),
            "/x",
            &[],
            Some("exact-host"),
        ),
        case(
            "GET",
            Some("api.example.com:8443"),
            "/x",
            &[],
            Some("exact-host"),
        ),
        case(
            "GET",
            Some("api.example.com"),
            "/api/users/me",
            &[],
            Some("exact-host"),
        ),
        case(
            "GET",
            Some("shop.example.com"),
            "/x",
            &[],
            Some("wildcard-host"),
        ),
        case(
            "GET",
            Some("a.b.example.com"),
            "/x",
            &[],
            Some("wildcard-host"),
        ),
        case(
            "GET",
            Some("api.example.com."),
            "/x",
            &[],
            Some("exact-host"),
        ),
        case(
            "GET",
            Some("SHOP.EXAMPLE.COM"),
            "/x",
            &[],
            Some("wildcard-host"),
        ),
        case("GET", Some("example.com"), "/x", &[], None),
        case("GET", Some("notexample.com"), "/x", &[], None),
        // Path: exact beats prefix, the longer prefix wins, prefixes stop at segment bounds.
        case("GET", None, "/api/users/me", &[], Some("exact-path")),
        case("GET", None, "/api/users/me/", &[], Some("users")),
        case("GET", None, "/api/users/42", &[], Some("users")),
        case("GET", None, "/api/users", &[], Some("users")),
        case("GET", None, "/api/usersx", &[], Some("api")),
        case("GET", None, "/api/orders", &[], Some("api")),
        case("GET", None, "/api", &[], Some("api")),
        case("GET", None, "/apix", &[], None),
        // Headers: a header condition beats none on the same path; values must be equal.
        case(
            "GET",
            None,
            "/api/orders",
            &[("x-canary", "1")],
            Some("canary"),
        ),
        case(
            "GET",
            None,
            "/api/orders",
            &[("x-canary", "0")],
            Some("api"),
        ),
        case(
            "GET",
            None,
            "/api/users/42",
            &[("x-canary", "1")],
            Some("users"),
        ),
        // Regex: anchored as written.
        case("GET", None, "/items/42", &[], Some("items")),
        case("GET", None, "/items/abc", &[], None),
        case("GET", None, "/items/42/x", &[], None),
        // Method: a route with methods beats one without on the same path.
        case("POST", None, "/orders/1", &[], Some("orders-write")),
        case("PUT", None, "/orders/1", &[], Some("orders-write")),
        case("GET", None, "/orders/1", &[], Some("orders")),
        case("DELETE", None, "/orders", &[], Some("orders")),
        // Priority beats specificity.
        case("GET", None, "/promo/summer", &[], Some("promo-priority")),
        case("GET", None, "/promo", &[], Some("promo-priority")),
        case("GET", None, "/nowhere", &[], None),
    ];
    for c in &cases {
        let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
        let mut req = client.request(method, support::url(gw.local_addr(), c.path));
        if let Some(host) = c.host {
            req = req.header(HOST, host);
        }
        for (k, v) in c.headers {
            req = req.header(*k, *v);
        }
        let resp = send(req).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("body");
        let what = format!("{} {:?} {} {:?}", c.method, c.host, c.path, c.headers);
        match c.want {
            Some(want) => {
                assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(&body));
                let echo: Value = serde_json::from_slice(&body).expect("echo JSON");
                assert_eq!(echo["upstream"], want, "{what}");
                assert_eq!(echo["method"], c.method, "{what}");
                assert_eq!(
                    echo["uri"], c.path,
                    "{what}: the path reaches the upstream as is"
                );
            }
            None => assert_problem(status, &headers, &body, 404),
        }
    }
    // Each upstream saw exactly the requests routed to it.
    for up in &ups {
        let expected = cases
            .iter()
            .filter(|c| c.want == Some(up.name.as_str()))
            .count();
        assert_eq!(
            up.requests().len(),
            expected,
            "requests seen by {}",
            up.name
        );
    }
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_rewrite_shape_the_upstream_path() {
    let (ups, mut toml) = echo_pools(&["users", "legacy", "billing"]).await;
    toml.push_str(
        r#"
[[routes]]
name = "users"
match = { path_prefix = "/api/users" }
strip_prefix = "/api"
upstream = "users"

[[routes]]
name = "legacy"
match = { path_prefix = "/v1" }
rewrite = { regex = '^/v1/(.*)$', replace = '/v2/$1' }
upstream = "legacy"

[[routes]]
name = "billing"
match = { path_prefix = "/svc/billing" }
strip_prefix = "/svc"
rewrite = { regex = '^/billing/(?P<rest>.*)$', replace = '/internal/billing/${rest}' }
upstream = "billing"
"#,
    );
    let gw = support::gateway(&toml).await;
    let client = support::client();
    let cases = [
        (
            "/api/users/42?expand=true&q=a%2Fb",
            "users",
            "/users/42?expand=true&q=a%2Fb",
        ),
        ("/api/users", "users", "/users"),
        ("/api/users?page=2", "users", "/users?page=2"),
        ("/api/users/a%20b", "users", "/users/a%20b"),
        ("/api/users/", "users", "/users/"),
        ("/api/users//7/./orders", "users", "/users/7/orders"),
        (
            "/v1/things?page=2&page=3",
            "legacy",
            "/v2/things?page=2&page=3",
        ),
        ("/v1/a/b", "legacy", "/v2/a/b"),
        (
            "/svc/billing/invoices/7?format=pdf",
            "billing",
            "/internal/billing/invoices/7?format=pdf",
        ),
    ];
    for (path, want_upstream, want_uri) in cases {
        let resp = send(client.get(support::url(gw.local_addr(), path))).await;
        assert_eq!(resp.status(), 200, "{path}");
        let echo: Value = resp.json().await.expect("echo JSON");
        assert_eq!(echo["upstream"], want_upstream, "{path}");
        assert_eq!(echo["uri"], want_uri, "{path}");
    }
    assert_eq!(ups[0].last().uri, "/users/7/orders");
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricky_raw_paths_resolve_to_the_route_the_operator_expects() {
    let (ups, mut toml) = echo_pools(&["admin", "api", "users"]).await;
    toml.push_str(
        r#"
[[routes]]
name = "admin"
match = { path_prefix = "/admin" }
upstream = "admin"

[[routes]]
name = "api"
match = { path_prefix = "/api" }
upstream = "api"

[[routes]]
name = "users"
match = { path_prefix = "/api/users" }
upstream = "users"
"#,
    );
    let gw = support::gateway(&toml).await;
    // (raw request target, expected upstream or error status, path the upstream must see)
    let cases: &[(&str, Result<&str, u16>, &str)] = &[
        // Encoded dot segments are decoded, then removed: this is /admin, not under /api.
        ("/api/%2e%2e/admin", Ok("admin"), "/admin"),
        ("/api/%2E%2E/admin", Ok("admin"), "/admin"),
        ("/api/.%2e/admin", Ok("admin"), "/admin"),
        ("/api/users/../../admin", Ok("admin"), "/admin"),
        ("/api/../../../admin/x", Ok("admin"), "/admin/x"),
        ("//admin", Ok("admin"), "/admin"),
        ("//api//users///1", Ok("users"), "/api/users/1"),
        ("/api/./x", Ok("api"), "/api/x"),
        ("/api/users/./1", Ok("users"), "/api/users/1"),
        // Encoded unreserved characters are the same path as their plain spelling.
        ("/%61pi/users/1", Ok("users"), "/api/users/1"),
        ("/api/%7Euser", Ok("api"), "/api/~user"),
        // An encoded slash is data inside one segment: not under the /api/users prefix,
        // and never decoded into a path that climbs out of /api.
        (
            "/api/users%2F..%2Fadmin",
            Ok("api"),
            "/api/users%2F..%2Fadmin",
        ),
        ("/api/users%2f1", Ok("api"), "/api/users%2F1"),
        // Query strings are not part of the path.
        ("/api/x?next=/admin", Ok("api"), "/api/x?next=/admin"),
        // Paths are case-sensitive.
        ("/API/users", Err(404), ""),
        ("/Admin", Err(404), ""),
        ("/apiadmin", Err(404), ""),
        // Broken percent-encoding is the client's error.
        ("/a%zz", Err(400), ""),
        ("/api/users%2", Err(400), ""),
    ];
    for (target, want, want_uri) in cases {
        let resp = raw_get(gw.local_addr(), "gw.test", target).await;
        match want {
            Ok(upstream) => {
                assert_eq!(
                    resp.status,
                    200,
                    "{target}: {}",
                    String::from_utf8_lossy(&resp.body)
                );
                let echo = resp.json();
                assert_eq!(echo["upstream"], *upstream, "{target}");
                assert_eq!(echo["uri"], *want_uri, "{target}");
            }
            Err(status) => assert_raw_problem(&resp, *status),
        }
    }
    let mut admin_hits = cases.iter().filter(|c| c.1 == Ok("admin")).count();

    // Absolute-form targets are normalized the same way.
    let resp = raw_exchange(
        gw.local_addr(),
        "GET http://gw.test/api/%2e%2e/admin?x=1 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json()["upstream"], "admin");
    assert_eq!(ups[0].last().uri, "/admin?x=1");
    admin_hits += 1;

    // HTTP/1.0 without a Host still routes on the path, and no X-Forwarded-Host is invented.
    let resp = raw_exchange(gw.local_addr(), "GET /api/./old HTTP/1.0\r\n\r\n").await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json()["upstream"], "api");
    let seen = ups[1].last();
    assert_eq!(seen.uri, "/api/old");
    assert_eq!(seen.header("x-forwarded-host"), None, "{:?}", seen.headers);

    assert_eq!(ups[0].requests().len(), admin_hits);
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_never_reach_the_upstream() {
    let (ups, mut toml) = echo_pools(&["echo"]).await;
    toml.push_str("[[routes]]\nname = \"all\"\nupstream = \"echo\"\n");
    let gw = support::gateway(&toml).await;
    let addr = gw.local_addr();

    let resp = raw_exchange(
        addr,
        "GET /hop HTTP/1.1\r\n\
         Host: hop.test\r\n\
         Connection: keep-alive, x-foo\r\n\
         x-foo: secret\r\n\
         Keep-Alive: timeout=5, max=100\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
         x-end-to-end: kept\r\n\
         \r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let seen = ups[0].last();
    assert_eq!(seen.uri, "/hop");
    for name in [
        "x-foo",
        "keep-alive",
        "proxy-connection",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
    if let Some(conn) = seen.header("connection") {
        assert!(
            !conn.to_ascii_lowercase().contains("x-foo"),
            "the client's Connection header was relayed: {conn}"
        );
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    assert_eq!(seen.header("x-request-id"), resp.header("x-request-id"));

    // An Upgrade that is not a WebSocket handshake is not forwarded either.
    let resp = raw_exchange(
        addr,
        "GET /upgrade HTTP/1.1\r\n\
         Host: hop.test\r\n\
         Connection: Upgrade, close\r\n\
         Upgrade: foo/2\r\n\
         \r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let seen = ups[0].last();
    assert_eq!(seen.uri, "/upgrade");
    assert!(seen.header("upgrade").is_none(), "{:?}", seen.headers);
    if let Some(conn) = seen.header("connection") {
        assert!(
            !conn.to_ascii_lowercase().contains("upgrade"),
            "the client's Connection header was relayed: {conn}"
        );
    }
    support::stop(gw).await;
}

/// A gateway routing every request to an upstream that reads each request head and answers
/// it with the same raw bytes; the task is the upstream's.
async fn gateway_on_canned(
    response: &'static str,
) -> (gatehouse::GatewayHandle, tokio::task::JoinHandle<()>) {
    let (addr, _heads, task) = recording_upstream(response).await;
    let toml = format!(
        "{}[[routes]]\nname = \"all\"\nupstream = \"canned\"\n",
        upstream_toml("canned", addr)
    );
    (support::gateway(&toml).await, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_never_reach_the_client() {
    let (gw, task) = gateway_on_canned(
        "HTTP/1.1 200 OK\r\n\
         Content-Length: 2\r\n\
         Connection: keep-alive, x-upstream-secret\r\n\
         x-upstream-secret: internal\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         Upgrade: foo/2\r\n\
         x-public: visible\r\n\
         \r\n\
         ok",
    )
    .await;
    let resp = raw_get(gw.local_addr(), "gw.test", "/canned").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"ok");
    for name in [
        "x-upstream-secret",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert_eq!(resp.header(name), None, "{name}: {:?}", resp.headers);
    }
    assert_eq!(resp.header("x-public"), Some("visible"));
    assert!(resp.header("x-request-id").is_some_and(|id| id.len() == 36));
    support::stop(gw).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_its_connection_leaves_the_clients_open() {
    let (gw, task) = gateway_on_canned(
        "HTTP/1.1 200 OK\r\n\
         Content-Length: 2\r\n\
         Connection: close\r\n\
         \r\n\
         ok",
    )
    .await;
    let mut stream = TcpStream::connect(gw.local_addr()).await.expect("connect");
    // The upstream's `Connection` speaks for its own connection: the client's, kept alive,
    // carries one `Connection` of the gateway's and serves the next request.
    for _ in 0..2 {
        let resp = tokio::time::timeout(EXCHANGE_LIMIT, async {
            stream
                .write_all(b"GET /canned HTTP/1.1\r\nHost: gw.test\r\n\r\n")
                .await
                .expect("write request");
            read_response(&mut stream).await
        })
        .await
        .expect("an answer on the kept-alive connection");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"ok");
        let connection: Vec<&str> = resp
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(connection, ["keep-alive"], "{:?}", resp.headers);
    }
    support::stop(gw).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_nominating_a_forwarding_header_is_a_client_error() {
    let (ups, mut toml) = echo_pools(&["echo"]).await;
    toml.push_str("[[routes]]\nname = \"all\"\nupstream = \"echo\"\n");
    let gw = support::gateway(&toml).await;
    // A client must not be able to make the gateway drop the X-Forwarded-For it sets.
    let resp = raw_exchange(
        gw.local_addr(),
        "GET /xff HTTP/1.1\r\n\
         Host: hop.test\r\n\
         Connection: close, x-forwarded-for\r\n\
         \r\n",
    )
    .await;
    assert_raw_problem(&resp, 400);
    assert!(ups[0].requests().is_empty());
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_minted_when_absent_and_kept_when_given() {
    let (ups, mut toml) = echo_pools(&["echo"]).await;
    toml.push_str("[[routes]]\nname = \"all\"\nupstream = \"echo\"\n");
    let gw = support::gateway(&toml).await;
    let client = support::client();

    let resp = send(client.get(support::url(gw.local_addr(), "/minted"))).await;
    assert_eq!(resp.status(), 200);
    let id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("the response carries x-request-id")
        .to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(ups[0].last().header("x-request-id"), Some(id.as_str()));

    let resp = send(client.get(support::url(gw.local_addr(), "/minted"))).await;
    let other = resp.headers().get("x-request-id").cloned().expect("id");
    assert_ne!(other.to_str().unwrap(), id, "every request gets its own id");

    let resp = send(
        client
            .get(support::url(gw.local_addr(), "/given"))
            .header("x-request-id", "client-req-0042"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "client-req-0042");
    let seen = ups[0].last();
    assert_eq!(seen.header("x-request-id"), Some("client-req-0042"));
    assert_eq!(seen.headers["x-request-id"].len(), 1);

    // An id that is not short printable ASCII is replaced, on both sides, by one fresh id.
    let resp = send(
        client
            .get(support::url(gw.local_addr(), "/bad-id"))
            .header("x-request-id", "has spaces in it"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a fresh UUID: {id}");
    let seen = ups[0].last();
    assert_eq!(seen.headers["x-request-id"], vec![id]);
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_client_are_replaced() {
    let (ups, mut toml) = echo_pools(&["echo"]).await;
    toml.push_str("[[routes]]\nname = \"all\"\nupstream = \"echo\"\n");
    let gw = support::gateway(&toml).await;
    let client = support::client();
    let addr = gw.local_addr();

    let resp = send(client.get(support::url(addr, "/plain"))).await;
    assert_eq!(resp.status(), 200);
    let seen = ups[0].last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    let host = addr.to_string();
    assert_eq!(seen.header("x-forwarded-host"), Some(host.as_str()));

    let resp = send(
        client
            .get(support::url(addr, "/spoofed"))
            .header(HOST, "Shop.Example.com")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let seen = ups[0].last();
    assert_eq!(seen.headers["x-forwarded-for"], vec!["127.0.0.1"]);
    assert_eq!(seen.headers["x-forwarded-proto"], vec!["http"]);
    assert_eq!(seen.headers["x-forwarded-host"], vec!["Shop.Example.com"]);
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_trusted_proxy_is_appended_to() {
    let echo = Upstream::start("echo").await;
    let toml = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 2
shutdown_timeout = "1s"
trusted_proxies = ["127.0.0.1/32"]

{}
[[routes]]
name = "all"
upstream = "echo"
"#,
        upstream_toml("echo", echo.addr)
    );
    let gw = support::gateway(&toml).await;
    let client = support::client();
    let resp = send(
        client
            .get(support::url(gw.local_addr(), "/via-lb"))
            .header(HOST, "shop.example.com")
            .header("x-forwarded-for", "203.0.113.7, 10.0.0.2")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "www.example.com"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let seen = echo.last();
    assert_eq!(
        seen.headers["x-forwarded-for"],
        vec!["203.0.113.7, 10.0.0.2, 127.0.0.1"]
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("www.example.com"));

    // Without prior forwarding headers the trusted proxy's request is treated like any other.
    let resp = send(
        client
            .get(support::url(gw.local_addr(), "/direct"))
            .header(HOST, "shop.example.com"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let seen = echo.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example.com"));

    // A proxy may add its own X-Forwarded-For line instead of extending the client's: the
    // lines are one comma-separated list, and no hop may be dropped from it.
    let resp = send(
        client
            .get(support::url(gw.local_addr(), "/two-lines"))
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-for", "198.51.100.9"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let seen = echo.last();
    assert_eq!(
        seen.headers["x-forwarded-for"],
        vec!["203.0.113.7, 198.51.100.9, 127.0.0.1"]
    );
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_a_404_problem_with_the_request_id() {
    let (ups, mut toml) = echo_pools(&["api"]).await;
    toml.push_str(
        "[[routes]]\nname = \"api\"\nmatch = { path_prefix = \"/api\" }\nupstream = \"api\"\n",
    );
    let gw = support::gateway(&toml).await;
    let client = support::client();
    let resp = send(client.get(support::url(gw.local_addr(), "/missing"))).await;
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.bytes().await.unwrap();
    assert_problem(status, &headers, &body, 404);

    let resp = send(
        client
            .post(support::url(gw.local_addr(), "/missing"))
            .header("x-request-id", "trace-me-404")
            .body("ignored"),
    )
    .await;
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.bytes().await.unwrap();
    assert_problem(status, &headers, &body, 404);
    assert_eq!(headers["x-request-id"], "trace-me-404");

    // The body of a refused request is never read as a request of its own.
    let smuggled = "GET /api/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let mut stream = TcpStream::connect(gw.local_addr()).await.unwrap();
    let request = format!(
        "POST /missing HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let resp = tokio::time::timeout(EXCHANGE_LIMIT, read_response(&mut stream))
        .await
        .expect("answered in time");
    assert_raw_problem(&resp, 404);
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(ups[0].requests().is_empty());
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_a_502_problem() {
    let toml = format!(
        "{}[[routes]]\nname = \"dead\"\nupstream = \"dead\"\n",
        upstream_toml("dead", dead_addr())
    );
    let gw = support::gateway(&toml).await;
    let resp = send(support::client().get(support::url(gw.local_addr(), "/x"))).await;
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.bytes().await.unwrap();
    assert_problem(status, &headers, &body, 502);
    support::stop(gw).await;
}

/// An upstream that answers every request only after `delay`.
async fn slow_upstream(delay: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().fallback(move || async move {
        tokio::time::sleep(delay).await;
        "late"
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind slow");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_a_504_problem() {
    let (slow, task) = slow_upstream(Duration::from_secs(5)).await;
    let toml = format!(
        "{}[[routes]]\nname = \"slow\"\nupstream = \"slow\"\ntimeouts = {{ read = \"200ms\" }}\n",
        upstream_toml("slow", slow)
    );
    let gw = support::gateway(&toml).await;
    let started = Instant::now();
    let resp = send(support::client().get(support::url(gw.local_addr(), "/slow"))).await;
    let elapsed = started.elapsed();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.bytes().await.unwrap();
    assert_problem(status, &headers, &body, 504);
    assert!(
        elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}, not at the 200ms read timeout"
    );
    support::stop(gw).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_with_no_healthy_backend_is_a_503_problem() {
    let dead = dead_addr();
    let toml = format!(
        r#"
[[upstreams]]
name = "sick"
backends = ["{dead}"]
health_check = {{ kind = "tcp", interval = "100ms", unhealthy_after = 1 }}

[[routes]]
name = "sick"
upstream = "sick"
"#
    );
    let gw = support::gateway(&toml).await;
    let admin = gw.admin_addr().expect("admin listener");
    let client = support::client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let config: Value = send(client.get(support::url(admin, "/admin/config")))
            .await
            .json()
            .await
            .expect("admin config JSON");
        let backends = &config["upstreams"][0]["backends"];
        if backends[0]["healthy"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead backend was never marked unhealthy: {config}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = send(client.get(support::url(gw.local_addr(), "/x"))).await;
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.bytes().await.unwrap();
    assert_problem(status, &headers, &body, 503);
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_gateway() {
    let (_ups, mut toml) = echo_pools(&["echo"]).await;
    toml.push_str("[[routes]]\nname = \"all\"\nupstream = \"echo\"\n");
    let gw = support::gateway(&toml).await;
    let url = format!("ws://{}/ws", gw.local_addr());
    tokio::time::timeout(EXCHANGE_LIMIT, async {
        let (mut ws, resp) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket handshake through the gateway");
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("hello through the gateway"))
            .await
            .unwrap();
        let reply = ws.next().await.expect("a reply").expect("a message");
        assert_eq!(reply, Message::text("hello through the gateway"));
        ws.send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .unwrap();
        let reply = ws.next().await.expect("a reply").expect("a message");
        assert_eq!(reply, Message::binary(vec![0u8, 1, 2, 255]));
        ws.close(None).await.unwrap();
    })
    .await
    .expect("WebSocket exchange in time");
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_served() {
    let (ups, mut toml) = echo_pools(&["echo", "h2-host"]).await;
    toml.push_str(
        r#"
[[routes]]
name = "all"
upstream = "echo"

[[routes]]
name = "h2-host"
match = { host = "h2.example.com" }
upstream = "h2-host"
"#,
    );
    let gw = support::gateway(&toml).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("h2.example.com", gw.local_addr())
        .build()
        .unwrap();
    let resp = send(client.get(support::url(gw.local_addr(), "/over-h2?x=1"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["upstream"], "echo");
    assert_eq!(echo["uri"], "/over-h2?x=1");
    let seen = ups[0].last();
    assert_eq!(seen.header("x-request-id"), Some(id.as_str()));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    let host = gw.local_addr().to_string();
    assert_eq!(seen.header("x-forwarded-host"), Some(host.as_str()));

    // Host routing works on :authority.
    let port = gw.local_addr().port();
    let resp = send(client.get(format!("http://h2.example.com:{port}/by-host"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["upstream"], "h2-host");
    assert_eq!(echo["uri"], "/by-host");
    let seen = ups[1].last();
    let host = format!("h2.example.com:{port}");
    assert_eq!(seen.header("x-forwarded-host"), Some(host.as_str()));
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_backend() {
    let live = Upstream::start("live").await;
    let toml = format!(
        r#"
[[upstreams]]
name = "half-dead"
backends = ["{}", "{}"]
balance = "round_robin"

[[routes]]
name = "all"
upstream = "half-dead"
"#,
        dead_addr(),
        live.addr
    );
    let gw = support::gateway(&toml).await;
    let client = support::client();
    for i in 0..20 {
        let resp = send(client.get(support::url(gw.local_addr(), &format!("/get/{i}")))).await;
        assert_eq!(resp.status(), 200, "GET #{i}");
    }
    // Nothing reached the dead backend, so even a request with a body may go elsewhere.
    for i in 0..6 {
        let resp = send(
            client
                .post(support::url(gw.local_addr(), &format!("/post/{i}")))
                .body("payload"),
        )
        .await;
        assert_eq!(resp.status(), 200, "POST #{i}");
    }
    assert_eq!(live.requests().len(), 26);
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_one_attempt_does_not_retry() {
    let live = Upstream::start("live").await;
    let toml = format!(
        r#"
[[upstreams]]
name = "half-dead"
backends = ["{}", "{}"]

[[routes]]
name = "all"
upstream = "half-dead"
retry = {{ attempts = 1 }}
"#,
        dead_addr(),
        live.addr
    );
    let gw = support::gateway(&toml).await;
    let client = support::client();
    let mut statuses = Vec::new();
    for i in 0..4 {
        let resp = send(client.get(support::url(gw.local_addr(), &format!("/{i}")))).await;
        statuses.push(resp.status().as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        vec![200, 200, 502, 502],
        "round robin, no second attempt"
    );
    assert_eq!(live.requests().len(), 2);
    support::stop(gw).await;
}

/// What a [`Flaky`] backend received.
#[derive(Debug, Clone, PartialEq)]
struct FlakySeen {
    method: String,
    body: Vec<u8>,
    answered: bool,
}

/// A backend that answers the first request on each connection (keeping it open) and, on the
/// next request over the same connection, reads it whole and closes without answering: a
/// pooled connection that fails after the request was delivered.
struct Flaky {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<FlakySeen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Flaky {
    async fn start() -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind flaky");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(flaky_connection(stream, Arc::clone(&log)));
            }
        });
        Flaky { addr, seen, task }
    }

    fn seen(&self) -> Vec<FlakySeen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn flaky_connection(mut stream: TcpStream, log: Arc<Mutex<Vec<FlakySeen>>>) {
    let mut buf = Vec::new();
    let mut served = 0;
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let method = head.split(' ').next().unwrap_or_default().to_string();
        let length: usize = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        buf.drain(..head_end + 4);
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let answered = served == 0;
        log.lock().unwrap().push(FlakySeen {
            method,
            body,
            answered,
        });
        if !answered {
            return; // drop the connection with the request unanswered
        }
        served += 1;
        let reply = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_fails_after_connect_is_not_retried() {
    let (a, b) = (Flaky::start().await, Flaky::start().await);
    let toml = format!(
        r#"
[[upstreams]]
name = "flaky"
backends = ["{}", "{}"]
balance = "round_robin"

[[routes]]
name = "all"
upstream = "flaky"
retry = {{ attempts = 2 }}
"#,
        a.addr, b.addr
    );
    let gw = support::gateway(&toml).await;
    let client = support::client();
    let url = support::url(gw.local_addr(), "/order");
    let all = |a: &Flaky, b: &Flaky| [a.seen(), b.seen()].concat();

    // Warm up: round robin opens one kept-alive connection to each backend.
    for _ in 0..2 {
        let resp = send(client.get(&url)).await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(a.seen().len(), 1, "round robin alternates");
    assert_eq!(b.seen().len(), 1, "round robin alternates");

    // The POST goes over a pooled connection the backend drops after reading it. The backend
    // may have acted on it: the gateway answers 502 and does not send it anywhere else.
    let resp = send(client.post(&url).body("charge card 4242")).await;
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.bytes().await.unwrap();
    assert_problem(status, &headers, &body, 502);
    let posts: Vec<FlakySeen> = all(&a, &b)
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "the POST was sent exactly once: {posts:?}");
    assert_eq!(posts[0].body, b"charge card 4242");

    // The same failure on a GET is retried on the other backend (so the setup does provoke a
    // retry where one is safe).
    let resp = send(client.get(&url)).await;
    assert_eq!(resp.status(), 200);
    let gets: Vec<FlakySeen> = all(&a, &b)
        .into_iter()
        .filter(|s| s.method == "GET")
        .collect();
    assert_eq!(
        gets.len(),
        4,
        "two warm-ups, one dropped attempt, one retry"
    );
    assert_eq!(gets.iter().filter(|s| !s.answered).count(), 1, "{gets:?}");
    support::stop(gw).await;
}

/// An upstream that records each request head as it arrived (bytes, spelling included) and
/// answers it with `response`.
async fn recording_upstream(
    response: &'static str,
) -> (
    SocketAddr,
    Arc<Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind recording");
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while find(&buf, b"\r\n\r\n").is_none() {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    buf.clear();
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads, task)
}

/// The response head to a raw request, as sent (spelling included).
async fn raw_head(addr: SocketAddr, request: &str) -> String {
    tokio::time::timeout(EXCHANGE_LIMIT, async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        while find(&buf, b"\r\n\r\n").is_none() {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before a response head");
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .expect("a response head in time")
}

/// A `[server]` section without `listen` once made a test bind 127.0.0.1:8080, which failed
/// whenever the platform of the README's first command was serving there.
#[tokio::test]
async fn a_test_gateway_binds_port_0_even_when_the_text_has_a_server_section() {
    let gw = support::gateway("[server]\npreserve_header_case = true\n").await;
    assert_ne!(
        gw.local_addr().port(),
        8080,
        "the proxy took the default port"
    );
    assert_ne!(
        gw.admin_addr().expect("admin").port(),
        9090,
        "the admin took the default port"
    );
    let health = support::client()
        .get(support::url(gw.admin_addr().expect("admin"), "/health"))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    support::stop(gw).await;
}

#[test]
#[should_panic(expected = "may not bind the fixed address 127.0.0.1:8080")]
fn a_test_config_with_a_fixed_port_is_refused() {
    support::with_test_listeners("[server]\nlisten = [\"127.0.0.1:8080\"]\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_go_out_in_lower_case_unless_their_case_is_preserved() {
    let (addr, heads, task) = recording_upstream(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Upstream-Spelled: Yes\r\n\r\nok",
    )
    .await;
    let request = "GET /spell HTTP/1.1\r\nHost: gw.test\r\nX-Client-Spelled: One\r\n\
                   Connection: close\r\n\r\n";
    for (preserve, client_name, upstream_name) in [
        (false, "x-client-spelled: One", "x-upstream-spelled: Yes"),
        (true, "X-Client-Spelled: One", "X-Upstream-Spelled: Yes"),
    ] {
        let toml = format!(
            "[server]\npreserve_header_case = {preserve}\n\n{}[[routes]]\nname = \"all\"\n\
             upstream = \"spell\"\n",
            upstream_toml("spell", addr)
        );
        let gw = support::gateway(&toml).await;
        let head = raw_head(gw.local_addr(), request).await;
        let sent = heads
            .lock()
            .unwrap()
            .pop()
            .expect("the upstream saw the request");
        assert!(
            sent.contains(&format!("\r\n{client_name}\r\n")),
            "preserve={preserve}: {sent}"
        );
        assert!(
            head.contains(&format!("\r\n{upstream_name}\r\n")),
            "preserve={preserve}: {head}"
        );
        // The gateway's own fields are there either way, and well-known names keep their
        // usual spelling.
        for field in [
            "x-forwarded-for: ",
            "x-request-id: ",
            "traceparent: ",
            "Host: gw.test",
        ] {
            assert!(sent.contains(field), "preserve={preserve}, {field}: {sent}");
        }
        assert!(head.contains("\r\nContent-Length: 2\r\n"), "{head}");
        assert!(head.contains("\r\nx-request-id: "), "{head}");
        support::stop(gw).await;
    }
    task.abort();
}
