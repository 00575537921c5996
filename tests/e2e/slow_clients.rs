//! Slow and greedy clients over raw sockets: a request head sent a byte at a time is cut off
//! at `server.header_timeout`; 500 such clients do not slow a normal client down; a kept-alive
//! exchange, HTTP/2 and a WebSocket outlive the header timeout; `server.max_connections`
//! closes the connection one over the cap at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw::read_response;
use crate::support::{self, Upstream};

fn config(up: SocketAddr, server: &str) -> String {
    format!(
        "[server]\n{server}\n\n[[upstreams]]\nname = \"up\"\nbackends = [\"{up}\"]\n\n[[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"up\"\n"
    )
}

/// Whether the server closed `stream` (a read gives EOF or an error) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Send a head's first line, then a byte every `every`, until the connection is closed or
/// `limit` passes; how long it stayed open.
async fn slowloris(addr: SocketAddr, every: Duration, limit: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let started = Instant::now();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: gw.test\r\n")
        .await
        .ok()?;
    while started.elapsed() < limit {
        if stream.write_all(b"x").await.is_err() {
            return Some(started.elapsed());
        }
        let mut byte = [0u8; 64];
        match tokio::time::timeout(every, stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            _ => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
    let up = Upstream::start("up").await;
    let gw = support::gateway(&config(up.addr, "header_timeout = \"1s\"")).await;
    let open = slowloris(
        gw.local_addr(),
        Duration::from_millis(100),
        Duration::from_secs(6),
    )
    .await
    .expect("the slow head was cut off");
    assert!(
        open >= Duration::from_millis(900) && open < Duration::from_secs(3),
        "closed after {open:?}"
    );
    assert!(
        up.requests().is_empty(),
        "a partial head reached the upstream"
    );

    // A whole head sent in pieces, within the timeout, is served.
    let mut stream = TcpStream::connect(gw.local_addr()).await.unwrap();
    for piece in ["GET /pieces HTTP/1.1\r\n", "Host: gw.test\r", "\n", "\r\n"] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(read_response(&mut stream).await.status, 200);
    // The same connection, kept alive past the header timeout, serves its next request.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    stream
        .write_all(b"GET /again HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_slow_clients_do_not_slow_a_normal_one() {
    let up = Upstream::start("up").await;
    let gw = support::gateway(&config(up.addr, "header_timeout = \"2s\"")).await;
    let addr = gw.local_addr();
    let client = support::client();
    let url = support::url(addr, "/normal");
    let mut baseline = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
        baseline.push(started.elapsed());
    }
    let slow: Vec<_> = (0..500)
        .map(|_| {
            tokio::spawn(slowloris(
                addr,
                Duration::from_millis(500),
                Duration::from_secs(8),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut loaded = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
        loaded.push(started.elapsed());
    }
    let mut cut = 0;
    for s in slow {
        if s.await
            .unwrap()
            .is_some_and(|open| open < Duration::from_secs(5))
        {
            cut += 1;
        }
    }
    let p99 = |v: &mut Vec<Duration>| {
        v.sort();
        v[(v.len() * 99 / 100).min(v.len() - 1)]
    };
    let (before, during) = (p99(&mut baseline), p99(&mut loaded));
    eprintln!("normal client p99: {before:?} alone, {during:?} beside 500 slow clients; {cut} of 500 cut off");
    assert_eq!(
        cut, 500,
        "every slow client was cut off by the header timeout"
    );
    assert!(
        during < Duration::from_millis(250),
        "p99 {during:?} beside 500 slow clients (alone {before:?})"
    );
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_websockets_outlive_the_header_timeout() {
    let up = Upstream::start("up").await;
    let gw = support::gateway(&config(up.addr, "header_timeout = \"1s\"")).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = support::url(gw.local_addr(), "/h2");
    for _ in 0..3 {
        let r = h2.get(&url).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.local_addr()))
        .await
        .expect("websocket");
    use futures::{SinkExt, StreamExt};
    for i in 0..3 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
            "m{i}"
        )))
        .await
        .unwrap();
        let echoed = ws.next().await.expect("an echo").expect("a message");
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("m{i}"));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    support::stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_over_the_cap_is_closed_at_once() {
    let up = Upstream::start("up").await;
    let gw = support::gateway(&config(up.addr, "max_connections = 3")).await;
    let addr = gw.local_addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /held HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.status, 200);
        held.push(s);
    }
    let mut over = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "the fourth connection stayed open"
    );
    let admin = gw.admin_addr().unwrap();
    let metrics = support::admin_metrics(&support::client(), admin).await;
    assert_eq!(
        support::metric_value(&metrics, "gatehouse_connections_refused_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        support::metric_value(&metrics, "gatehouse_connections_open", &[]),
        Some(3.0)
    );
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = TcpStream::connect(addr).await.unwrap();
    again
        .write_all(b"GET /again HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut again).await.status, 200);
    support::stop(gw).await;
}
