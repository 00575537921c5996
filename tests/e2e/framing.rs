//! Request smuggling and framing, as an attacker would try it: raw requests on fresh
//! connections, each answered with the status it must get, the connection closed where its
//! framing is in doubt, and nothing smuggled reaching the upstream (a real HTTP server that
//! records every request it parses).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw::{read_response, EXCHANGE_LIMIT};
use crate::support::{self, Upstream};

/// What must become of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// 400, and the connection closed after it.
    RefusedAndClosed,
    /// Served (200) on a connection that stays usable.
    Served,
}

/// The probes: a name, the raw bytes (its path names the probe), and what must happen.
fn probes() -> Vec<(&'static str, String, Want)> {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    vec![
        (
            "Transfer-Encoding and Content-Length, a request hidden in the body",
            format!(
                "POST /p1 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Want::RefusedAndClosed,
        ),
        (
            "Content-Length before Transfer-Encoding",
            format!(
                "POST /p2 HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Want::RefusedAndClosed,
        ),
        (
            "both, in odd case",
            format!(
                "POST /p3 HTTP/1.1\r\nHost: gw.test\r\ncontent-LENGTH: 5\r\ntransfer-encoding: Chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Want::RefusedAndClosed,
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST /p4 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nContent-Length: 46\r\n\r\nhello{smuggled}"
            ),
            Want::RefusedAndClosed,
        ),
        (
            "a Content-Length that is not a number",
            format!("POST /p5 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: +5\r\n\r\nhello{smuggled}"),
            Want::RefusedAndClosed,
        ),
        (
            "a Transfer-Encoding whose last coding is not chunked",
            format!(
                "POST /p6 HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Want::RefusedAndClosed,
        ),
        (
            "an unknown coding that looks like chunked",
            format!(
                "POST /p7 HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Want::RefusedAndClosed,
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!(
                "POST /p8 HTTP/1.0\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Want::RefusedAndClosed,
        ),
        (
            "whitespace before the colon",
            format!(
                "POST /p9 HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Want::RefusedAndClosed,
        ),
        (
            "a header name with an underscore (dropped by default)",
            "GET /p10 HTTP/1.1\r\nHost: gw.test\r\nX_User_Id: admin\r\n\r\n".to_owned(),
            Want::Served,
        ),
        (
            "two requests pipelined (legitimate)",
            "GET /p11 HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /p11b HTTP/1.1\r\nHost: gw.test\r\n\r\n"
                .to_owned(),
            Want::Served,
        ),
    ]
}

/// Sends `request` on a fresh connection: the first response's status, how many responses
/// came, and whether the gateway closed the connection after them.
async fn probe(addr: std::net::SocketAddr, request: &str, responses: usize) -> (u16, usize, bool) {
    tokio::time::timeout(EXCHANGE_LIMIT, async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        // A connection closed without a word is a refusal too, but an unkind one: told apart
        // as status 0.
        let mut peek = [0u8; 1];
        let n = stream.peek(&mut peek).await.unwrap_or(0);
        if n == 0 {
            return (0, 0, true);
        }
        let first = read_response(&mut stream).await;
        let mut answered = 1;
        if first.status == 200 {
            while answered < responses {
                assert_eq!(read_response(&mut stream).await.status, 200);
                answered += 1;
            }
        }
        let mut byte = [0u8; 1];
        let closed =
            match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => true,
                Ok(Ok(_)) => panic!("more bytes after the responses to {request:?}"),
                Err(_) => false,
            };
        (first.status, answered, closed)
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within {EXCHANGE_LIMIT:?} to {request:?}"))
}

/// Every framing probe gets its status, the connection is closed where the framing is in
/// doubt, and the upstream never sees a refused request or the one hidden in a body.
#[tokio::test]
async fn smuggling_and_framing_probes_are_refused_and_nothing_reaches_the_upstream() {
    let up = Upstream::start("up").await;
    let gw = support::gateway(&format!(
        "[[upstreams]]\nname = \"up\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"up\"\n",
        up.addr
    ))
    .await;
    let mut refused = 0;
    let table = probes();
    for (name, request, want) in &table {
        let responses = if name.contains("pipelined") { 2 } else { 1 };
        let (status, answered, closed) = probe(gw.local_addr(), request, responses).await;
        match want {
            Want::RefusedAndClosed => {
                assert_eq!((status, closed), (400, true), "{name}");
                refused += 1;
            }
            Want::Served => {
                assert_eq!(
                    (status, answered, closed),
                    (200, responses, false),
                    "{name}"
                );
            }
        }
    }
    assert_eq!(
        refused,
        table.len() - 2,
        "all but the underscore and the pipelined pair"
    );
    let seen = up.seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(
        paths,
        ["/p10", "/p11", "/p11b"],
        "nothing refused or smuggled went up"
    );
    assert_eq!(
        seen[0].header("x_user_id"),
        None,
        "the underscore field was dropped: {:?}",
        seen[0].headers
    );
    support::stop(gw).await;
}

/// With `header_underscores = "reject"` such a request is answered 400 (its framing is
/// fine, so the connection stays usable); with `"allow"` it goes up as it came.
#[tokio::test]
async fn underscore_header_names_are_rejected_or_allowed_when_configured() {
    let up = Upstream::start("up").await;
    let config = |policy: &str| {
        format!(
            "[server]\nheader_underscores = \"{policy}\"\n\n[[upstreams]]\nname = \"up\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"up\"\n",
            up.addr
        )
    };
    let request = "GET /u HTTP/1.1\r\nHost: gw.test\r\nX_User_Id: admin\r\n\r\n";
    let gw = support::gateway(&config("reject")).await;
    assert_eq!(probe(gw.local_addr(), request, 1).await, (400, 1, false));
    support::stop(gw).await;
    assert!(up.seen.lock().unwrap().is_empty());
    let gw = support::gateway(&config("allow")).await;
    assert_eq!(probe(gw.local_addr(), request, 1).await, (200, 1, false));
    support::stop(gw).await;
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen[0].header("x_user_id"), Some("admin"));
}

/// A kept-alive connection left idle is closed after `server.keepalive_timeout`, and not
/// before.
#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout() {
    let up = Upstream::start("up").await;
    let gw = support::gateway(&format!(
        "[server]\nkeepalive_timeout = \"1s\"\n\n[[upstreams]]\nname = \"up\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"up\"\n",
        up.addr
    ))
    .await;
    let mut stream = TcpStream::connect(gw.local_addr()).await.expect("connect");
    stream
        .write_all(b"GET /idle HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
    let idle = started.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed, not {read:?} after {idle:?}"
    );
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(4),
        "closed after {idle:?}"
    );
    support::stop(gw).await;
}
