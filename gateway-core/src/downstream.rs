//! Client connections before Pingora's HTTP code sees them: a deadline for reading a request
//! head, and a cap on open connections.
//!
//! Pingora times each read of a request head on its own (60 s), so a client that sends one
//! byte every few seconds holds its connection forever (slowloris). [`Downstream`] wraps the
//! proxy's `ServerApp` and hands it each connection wrapped in [`HeadDeadline`], which gives
//! a request head `server.header_timeout` from its first byte to its blank line (HAProxy's
//! `timeout http-request`); past that, reads fail and the connection closes. The wait for a
//! kept-alive connection's next request is `server.keepalive_timeout`'s business, not this.
//!
//! The cost on the request path: one more indirection per read and write, and a scan of the
//! bytes read until the head's blank line (memchr's `memmem`). The deadline's timer is only
//! armed when a read of a head comes back incomplete.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest};
use pingora_core::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN};
use pingora_core::protocols::{SocketDigest, TimingDigest};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The metrics a [`Downstream`] keeps: connections open now, and those closed at once
/// because `server.max_connections` were open.
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// `gatehouse_connections_open`.
    pub open: prometheus::IntGauge,
    /// `gatehouse_connections_refused_total`.
    pub refused: prometheus::IntCounter,
}

struct Counted(prometheus::IntGauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The proxy's `ServerApp` behind the head deadline and the connection cap.
pub struct Downstream<A> {
    inner: Arc<A>,
    header_timeout: Duration,
    max_connections: usize,
    metrics: ConnectionMetrics,
}

impl<A> Downstream<A> {
    /// Wrap `inner`; `max_connections` 0 means no cap.
    pub fn new(
        inner: A,
        header_timeout: Duration,
        max_connections: usize,
        metrics: ConnectionMetrics,
    ) -> Downstream<A> {
        Downstream {
            inner: Arc::new(inner),
            header_timeout,
            max_connections,
            metrics,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Downstream<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if session.as_any().is::<HeadDeadline>() {
            // A connection handed back for reuse is already wrapped and counted.
            return self.inner.process_new(session, shutdown).await;
        }
        self.metrics.open.inc();
        let _counted = Counted(self.metrics.open.clone());
        if self.max_connections > 0 && self.metrics.open.get() > self.max_connections as i64 {
            self.metrics.refused.inc();
            return None;
        }
        let wrapped: Stream = if self.header_timeout.is_zero() {
            session
        } else {
            Box::new(HeadDeadline::new(session, self.header_timeout))
        };
        self.inner.process_new(wrapped, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Where a connection is in reading a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// Between requests: no head byte read yet.
    Waiting,
    /// Part of a head read; the deadline runs. `tail` holds its last bytes (up to 3) so that a
    /// blank line split across reads is found.
    Reading { tail: [u8; 3], len: u8 },
    /// The head is complete; the next write (the answer) makes the connection wait for
    /// the next request again.
    Done,
    /// No more heads: HTTP/2 (its frames are not heads) or a connection upgraded to another
    /// protocol (WebSocket) after a 101.
    Off,
}

/// A client connection whose request heads must arrive within a deadline.
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    head: Head,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl std::fmt::Debug for HeadDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadDeadline")
            .field("inner", &self.inner)
            .field("head", &self.head)
            .finish()
    }
}

impl HeadDeadline {
    fn new(inner: Stream, timeout: Duration) -> HeadDeadline {
        HeadDeadline {
            inner,
            timeout,
            head: Head::Waiting,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// Account for `new` bytes read. A head that arrives whole in one read (nearly every one)
    /// costs a scan and no clock read: the deadline is only set when a head stays incomplete.
    fn saw(&mut self, new: &[u8]) {
        let (tail, len) = match self.head {
            Head::Done | Head::Off => return,
            Head::Waiting if new.starts_with(b"PRI * HTTP/2.0") => {
                self.head = Head::Off;
                return;
            }
            Head::Waiting => ([0; 3], 0),
            Head::Reading { tail, len } => (tail, len),
        };
        if ends_head(&tail[..len as usize], new) {
            self.head = Head::Done;
            return;
        }
        if self.head == Head::Waiting {
            self.sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + self.timeout);
        }
        let mut joined = [0u8; 6];
        let kept = &tail[..len as usize];
        joined[..kept.len()].copy_from_slice(kept);
        let take = new.len().min(3);
        joined[kept.len()..kept.len() + take].copy_from_slice(&new[new.len() - take..]);
        let all = &joined[..kept.len() + take];
        let keep = all.len().min(3);
        let mut next = [0u8; 3];
        next[..keep].copy_from_slice(&all[all.len() - keep..]);
        self.head = Head::Reading {
            tail: next,
            len: keep as u8,
        };
    }
}

impl HeadDeadline {
    /// An answer is being written (`first` is the start of what is written now): once the
    /// head was read, the connection waits for the next request again, unless the answer
    /// switches protocols.
    fn answered(&mut self, first: &[u8]) {
        if self.head != Head::Done {
            return;
        }
        // `HTTP/1.1 1xx`: an interim answer (100 Continue: the body comes next), or 101.
        let interim = first.len() > 9 && first.starts_with(b"HTTP/1.") && first[9] == b'1';
        self.head = if first.starts_with(b"HTTP/1.1 101") {
            Head::Off
        } else if interim {
            Head::Done
        } else {
            Head::Waiting
        };
    }
}

/// Whether the blank line ending a head is in `new`, or straddles `tail` (the previous
/// bytes' end) and `new`: a line feed followed by `\n` or `\r\n`. HTTP/2's preface
/// (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`) has one too. One pass over the line feeds: a head
/// has a few dozen bytes per line, and this runs on every head read.
fn ends_head(tail: &[u8], new: &[u8]) -> bool {
    let blank_after = |rest: &[u8]| rest.first() == Some(&b'\n') || rest.starts_with(b"\r\n");
    if !tail.is_empty() {
        let mut seam = [0u8; 6];
        let take = new.len().min(3);
        seam[..tail.len()].copy_from_slice(tail);
        seam[tail.len()..tail.len() + take].copy_from_slice(&new[..take]);
        let seam = &seam[..tail.len() + take];
        if (0..tail.len()).any(|i| seam[i] == b'\n' && blank_after(&seam[i + 1..])) {
            return true;
        }
    }
    memchr::memchr_iter(b'\n', new).any(|i| blank_after(&new[i + 1..]))
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    this.saw(new);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if matches!(this.head, Head::Reading { .. })
                    && this.sleep.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request head did not arrive within server.header_timeout",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.answered(buf);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.answered(bufs.first().map_or(&[][..], |b| &b[..]));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blank_line_is_found_within_a_read_and_across_reads() {
        assert!(ends_head(b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!ends_head(b"", b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(ends_head(b"\r\n\r", b"\n"));
        assert!(ends_head(b"a\r\n", b"\r\nxyz"));
        assert!(!ends_head(b"a\r\n", b"x\r\n"));
    }
}
