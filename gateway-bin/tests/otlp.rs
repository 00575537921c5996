//! OTLP span export as an operator runs it: the real `gateway` binary (built with
//! `--features otlp`) with `[observability] otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`)
//! pointing at a fake collector, alone and in platform mode with every service.
//!
//! The collector and the upstream are plain std HTTP/1.1 servers that record what they get;
//! the collector's protobuf bodies are decoded field by field (the OTLP trace schema needs
//! only a dozen field numbers), so the test needs no dependency the default build lacks.
//! The batch delay is set far beyond the test's length, so the spans can only arrive through
//! the flush the gateway does when it stops.
#![cfg(feature = "otlp")]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod support;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

/// One request a [`Recorder`] received.
#[derive(Debug, Clone)]
struct Received {
    /// `POST /v1/traces`.
    line: String,
    /// Names in lower case.
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A std HTTP/1.1 server on 127.0.0.1:0 that records every request and answers 200.
struct Recorder {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Recorder {
    fn start(content_type: &'static str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = Arc::clone(&log);
                thread::spawn(move || {
                    let _ = serve(conn, &log, content_type);
                });
            }
        });
        Recorder { addr, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("recorder lock").clone()
    }
}

/// Answer every request of one keep-alive connection.
fn serve(conn: TcpStream, log: &Mutex<Vec<Received>>, content_type: &str) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        assert!(
            !headers.contains_key("transfer-encoding"),
            "this recorder only reads Content-Length bodies: {headers:?}"
        );
        let length: usize = headers
            .get("content-length")
            .map_or(0, |v| v.parse().expect("numeric content-length"));
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        log.lock().expect("recorder lock").push(Received {
            line: line.trim_end().to_string(),
            headers,
            body,
        });
        write!(
            writer,
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: 0\r\n\r\n"
        )?;
    }
}

// ---------------------------------------------------------------------------------------
// A protobuf reader for the few OTLP fields the test looks at
// ---------------------------------------------------------------------------------------

/// A field's value by wire type (fixed-width values are not needed, only skipped).
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &mut &[u8]) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().expect("truncated varint");
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint longer than 10 bytes");
}

/// Every `(field number, value)` of one message, in order.
fn fields(mut buf: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf);
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut buf)),
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                buf = &buf[width..];
                Field::Fixed
            }
            2 => {
                let len = varint(&mut buf) as usize;
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                Field::Bytes(bytes)
            }
            other => panic!("unexpected wire type {other}"),
        };
        out.push((key >> 3, value));
    }
    out
}

/// The length-delimited values of field `number`.
fn bytes_of(message: &[u8], number: u64) -> Vec<&[u8]> {
    fields(message)
        .into_iter()
        .filter_map(|(n, v)| match v {
            Field::Bytes(b) if n == number => Some(b),
            _ => None,
        })
        .collect()
}

/// An attribute value (`AnyValue`): a string, an int, or something the test ignores.
#[derive(Debug, Clone, PartialEq)]
enum Attr {
    Str(String),
    Int(i64),
    Other,
}

/// `repeated KeyValue` (key = 1, AnyValue value = 2 with string_value = 1, int_value = 3).
fn attributes(message: &[u8], number: u64) -> BTreeMap<String, Attr> {
    let mut out = BTreeMap::new();
    for kv in bytes_of(message, number) {
        let key = String::from_utf8(bytes_of(kv, 1).concat()).expect("utf-8 key");
        let any = bytes_of(kv, 2).concat();
        let value = match fields(&any).into_iter().next() {
            Some((1, Field::Bytes(s))) => Attr::Str(String::from_utf8_lossy(s).into_owned()),
            Some((3, Field::Varint(i))) => Attr::Int(i as i64),
            _ => Attr::Other,
        };
        out.insert(key, value);
    }
    out
}

/// One exported span with its resource's attributes.
#[derive(Debug)]
struct Exported {
    service_name: Option<Attr>,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    /// `SpanKind`: 2 server, 3 client, 5 consumer.
    kind: u64,
    attributes: BTreeMap<String, Attr>,
}

const SERVER: u64 = 2;
const CLIENT: u64 = 3;
const CONSUMER: u64 = 5;

/// Every span of an `ExportTraceServiceRequest`: resource_spans = 1 { resource = 1 {
/// attributes = 1 }, scope_spans = 2 { spans = 2 { trace_id = 1, span_id = 2,
/// parent_span_id = 4, name = 5, kind = 6, attributes = 9 } } }.
fn decode_spans(request: &[u8]) -> Vec<Exported> {
    let mut out = Vec::new();
    for resource_spans in bytes_of(request, 1) {
        let resource = bytes_of(resource_spans, 1).concat();
        let service = attributes(&resource, 1);
        for scope_spans in bytes_of(resource_spans, 2) {
            for span in bytes_of(scope_spans, 2) {
                let kind = fields(span)
                    .into_iter()
                    .find_map(|(n, v)| match v {
                        Field::Varint(k) if n == 6 => Some(k),
                        _ => None,
                    })
                    .unwrap_or(0);
                out.push(Exported {
                    service_name: service.get("service.name").cloned(),
                    trace_id: hex(&bytes_of(span, 1).concat()),
                    span_id: hex(&bytes_of(span, 2).concat()),
                    parent_span_id: hex(&bytes_of(span, 4).concat()),
                    name: String::from_utf8_lossy(&bytes_of(span, 5).concat()).into_owned(),
                    kind,
                    attributes: attributes(span, 9),
                });
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// The gateway child
// ---------------------------------------------------------------------------------------

/// Kills and reaps the gateway child however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on (see `kit::testing::unused_port`).
fn free_port() -> u16 {
    kit::testing::unused_port()
}

fn wait_until_accepting(addr: SocketAddr, child: &mut ChildGuard, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            panic!(
                "gateway exited with {status}:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "gateway never accepted on {addr}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` through the gateway with an optional `traceparent`; the response's status code.
fn get(gateway: SocketAddr, path: &str, traceparent: Option<&str>) -> u16 {
    let mut conn = TcpStream::connect(gateway).expect("connect to the gateway");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let trace = traceparent
        .map(|t| format!("traceparent: {t}\r\n"))
        .unwrap_or_default();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: gatehouse.test\r\n{trace}connection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read response");
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// The `traceparent` the upstream received with the request for `path`, split in its four parts.
fn forwarded_traceparent(upstream: &Recorder, path: &str) -> Vec<String> {
    let seen = upstream
        .received()
        .into_iter()
        .find(|r| r.line.starts_with(&format!("GET {path} ")))
        .unwrap_or_else(|| panic!("the upstream never saw {path}"));
    let value = seen
        .headers
        .get("traceparent")
        .expect("traceparent upstream");
    value.split('-').map(str::to_string).collect()
}

#[test]
fn request_spans_are_exported_in_the_clients_trace_and_flushed_on_stop() {
    let collector = Recorder::start("application/x-protobuf");
    let upstream = Recorder::start("text/plain");
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("gateway.toml");
    fs::write(
        &config,
        format!(
            r#"
[server]
listen = ["{listen}"]
threads = 1
shutdown_timeout = "1s"

[admin]
listen = ""

[observability]
otlp_endpoint = "http://{collector}"
otlp_service_name = "gatehouse-otlp-test"

[[upstreams]]
name = "app"
backends = ["{upstream}"]

[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"
"#,
            collector = collector.addr,
            upstream = upstream.addr,
        ),
    )
    .expect("write config");
    let log = dir.path().join("gateway.log");
    let mut child = ChildGuard(
        Command::new(GATEWAY)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the gateway binary"),
    );
    wait_until_accepting(listen, &mut child, &log);

    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_parent = "00f067aa0ba902b7";
    let continued = format!("00-{client_trace}-{client_parent}-01");
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    assert_eq!(get(listen, "/continued", Some(&continued)), 200);
    assert_eq!(get(listen, "/new", None), 200);
    assert_eq!(get(listen, "/unsampled", Some(unsampled)), 200);
    let continued_up = forwarded_traceparent(&upstream, "/continued");
    let new_up = forwarded_traceparent(&upstream, "/new");
    let unsampled_up = forwarded_traceparent(&upstream, "/unsampled");
    assert!(
        collector.received().is_empty(),
        "nothing is exported before the batch delay or the stop"
    );

    // SIGTERM: a graceful stop, after which the gateway flushes its queued spans.
    let pid = child.0.id().to_string();
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the gateway did not stop");
        thread::sleep(Duration::from_millis(50));
    };
    let console = fs::read_to_string(&log).expect("read log");
    assert!(status.success(), "exit {status}:\n{console}");

    let posts = collector.received();
    assert!(
        !posts.is_empty(),
        "no export reached the collector:\n{console}"
    );
    for post in &posts {
        assert_eq!(post.line, "POST /v1/traces HTTP/1.1");
        assert_eq!(
            post.headers.get("content-type").map(String::as_str),
            Some("application/x-protobuf")
        );
    }
    let spans: Vec<Exported> = posts
        .iter()
        .flat_map(|p| decode_spans(&p.body))
        .filter(|s| s.name == "request")
        .collect();
    assert_eq!(spans.len(), 2, "one span per sampled request: {spans:#?}");

    // The client's trace: its trace id, its parent id as the span's parent, and the span's own
    // id is the parent id the upstream received.
    let span = spans
        .iter()
        .find(|s| s.trace_id == client_trace)
        .unwrap_or_else(|| panic!("no span in the client's trace: {spans:#?}"));
    assert_eq!(span.parent_span_id, client_parent);
    assert_eq!(continued_up[1], client_trace);
    assert_eq!(
        continued_up[2], span.span_id,
        "the upstream's parent is the span"
    );
    assert_eq!(continued_up[3], "01");
    assert_eq!(
        span.service_name,
        Some(Attr::Str("gatehouse-otlp-test".into()))
    );
    assert_eq!(span.attributes.get("route"), Some(&Attr::Str("app".into())));
    assert_eq!(
        span.attributes.get("method"),
        Some(&Attr::Str("GET".into()))
    );
    // tracing-opentelemetry exports `u64` fields (how `record_span` records them) as strings;
    // an `i64` would arrive as an int.
    let status = span.attributes.get("status");
    assert!(
        matches!(status, Some(Attr::Int(200))) || status == Some(&Attr::Str("200".into())),
        "{status:?}"
    );
    assert_eq!(
        span.attributes.get("upstream"),
        Some(&Attr::Str(upstream.addr.to_string()))
    );

    // No traceparent: a root span whose trace and span ids are what the upstream received.
    let root = spans
        .iter()
        .find(|s| s.trace_id == new_up[1])
        .unwrap_or_else(|| panic!("no span for the new trace {new_up:?}: {spans:#?}"));
    assert_eq!(root.parent_span_id, "", "a new trace starts at the gateway");
    assert_eq!(root.span_id, new_up[2]);

    // A client that did not sample: nothing exported, the decision forwarded.
    assert_eq!(unsampled_up[1], "0af7651916cd43dd8448eb211c80319c");
    assert_ne!(unsampled_up[2], "b7ad6b7169203331");
    assert_eq!(unsampled_up[3], "00");

    // The console stays at INFO: no line per request.
    assert!(console.contains("gatehouse starting"), "{console}");
    assert!(
        !console.contains("request finished") && !console.contains(client_trace),
        "per-request lines on the console:\n{console}"
    );
}

// ---------------------------------------------------------------------------------------
// One trace across the platform
// ---------------------------------------------------------------------------------------

/// The services' spans of one trace, by `service.name`.
fn of_service<'a>(spans: &'a [Exported], service: &str) -> Vec<&'a Exported> {
    spans
        .iter()
        .filter(|s| s.service_name == Some(Attr::Str(service.into())))
        .collect()
}

/// The platform exports to `OTEL_EXPORTER_OTLP_ENDPOINT`: an order placed through the gateway
/// is one trace. The gateway's span continues the client's; the order service's server span
/// is its child; each call the order service makes to product and payment (while answering,
/// and from the saga after it answered) is a client span under it, parent of the callee's
/// server span; the events the order recorded reach the notification and analytics
/// consumers in the same trace.
#[tokio::test]
async fn an_order_through_the_platform_is_one_trace_across_the_services() {
    use reqwest::Method;
    use support::platform::platform_with_admin_and;

    let collector = Recorder::start("application/x-protobuf");
    let endpoint = format!("http://{}", collector.addr);
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let (gateway, c, admin) = platform_with_admin_and(dir.path(), &[], &env).await;
    c.stock(&admin, "MUG-1", 3).await;
    let (ann, card) = c.customer("ann@example.com", "4242 4242 4242 4242").await;

    let trace = "5c1f0e9a6b3d4c2e8f7a1b0c9d8e7f60";
    let client_parent = "a1b2c3d4e5f60718";
    let body =
        serde_json::json!({ "items": [{ "sku": "MUG-1", "qty": 1 }], "payment_method_id": card });
    let placed = c
        .send(
            c.with(Method::POST, "/api/orders", &ann)
                .header("idempotency-key", "traced-order")
                .header("traceparent", format!("00-{trace}-{client_parent}-01"))
                .json(&body),
        )
        .await;
    let order_id = placed["id"].as_str().expect("order id").to_owned();
    let order = c.settled(&ann, &order_id).await;
    assert_eq!(order["status"], "confirmed", "{order}");
    // The consumers of its events have handled them: the confirmation is in ann's inbox.
    c.notified(&ann, "order_confirmed").await;
    // A stop flushes every queued span.
    let log = gateway.log.clone();
    gateway.terminate();

    let spans: Vec<Exported> = collector
        .received()
        .iter()
        .flat_map(|p| decode_spans(&p.body))
        .filter(|s| s.trace_id == trace)
        .collect();
    let console = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !spans.is_empty(),
        "nothing of the trace exported:\n{console}"
    );
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let by_id = |id: &str| spans.iter().find(|s| s.span_id == id);

    // The gateway's span continues the client's, and the order service's span is its child.
    let edge = spans
        .iter()
        .find(|s| s.parent_span_id == client_parent)
        .unwrap_or_else(|| panic!("no span under the client's: {spans:#?}"));
    assert_eq!(edge.service_name, Some(Attr::Str("gatehouse".into())));
    let placing = of_service(&spans, "order")
        .into_iter()
        .find(|s| s.kind == SERVER && s.name == "POST /orders")
        .unwrap_or_else(|| panic!("no order server span: {spans:#?}"));
    assert_eq!(
        placing.parent_span_id, edge.span_id,
        "order under the gateway"
    );
    assert_eq!(
        placing.attributes.get("http.request.method"),
        Some(&Attr::Str("POST".into()))
    );
    assert_eq!(
        placing.attributes.get("http.route"),
        Some(&Attr::Str("/orders".into()))
    );
    assert!(
        matches!(
            placing.attributes.get("http.response.status_code"),
            Some(Attr::Int(201 | 202))
        ),
        "{placing:#?}"
    );

    // Every call the order made is a client span under its server span, and each callee's
    // server span hangs under one of those calls.
    let calls: Vec<&Exported> = of_service(&spans, "order")
        .into_iter()
        .filter(|s| s.kind == CLIENT)
        .collect();
    assert!(!calls.is_empty(), "no client spans: {spans:#?}");
    for call in &calls {
        assert_eq!(call.parent_span_id, placing.span_id, "{call:#?}");
    }
    for callee in ["product", "payment"] {
        let served: Vec<&Exported> = of_service(&spans, callee)
            .into_iter()
            .filter(|s| s.kind == SERVER)
            .collect();
        assert!(
            !served.is_empty(),
            "no {callee} span in the trace: {spans:#?}"
        );
        for s in &served {
            let parent = by_id(&s.parent_span_id)
                .unwrap_or_else(|| panic!("{callee}'s parent is not in the trace: {s:#?}"));
            assert!(
                parent.kind == CLIENT && parent.service_name == Some(Attr::Str("order".into())),
                "{callee} under an order call: {s:#?} under {parent:#?}"
            );
        }
    }

    // The consumers of the order's events joined the trace.
    for consumer in ["notification", "analytics"] {
        let handled = of_service(&spans, consumer)
            .into_iter()
            .find(|s| s.kind == CONSUMER && s.name == "process order.confirmed")
            .unwrap_or_else(|| panic!("no {consumer} span for order.confirmed: {spans:#?}"));
        assert_eq!(handled.parent_span_id, placing.span_id, "{handled:#?}");
    }

    // One trace, no loose ends: every parent but the client's is a span of the trace.
    for s in &spans {
        assert!(
            s.parent_span_id == client_parent || ids.contains(s.parent_span_id.as_str()),
            "a span whose parent is not in the trace: {s:#?}"
        );
    }
}
