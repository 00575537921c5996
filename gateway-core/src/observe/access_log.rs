//! The JSON access log: one line per request, serialized and written on a thread of its own so
//! the request path only hands a record to a bounded queue. When the writer cannot keep up,
//! records are dropped and counted (`gatehouse_access_log_dropped_total`) rather than slowing
//! requests down or growing memory.

use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

use prometheus::IntCounter;
use serde::Serialize;

/// Records waiting for the writer at most; beyond this they are dropped.
const QUEUE: usize = 16 * 1024;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct AccessRecord {
    /// RFC 3339 time the request started.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The request's `x-request-id`.
    pub request_id: String,
    /// W3C trace id (32 hex digits).
    pub trace_id: String,
    /// The client, after trusted-proxy resolution.
    pub client_ip: Option<IpAddr>,
    /// Request method.
    pub method: String,
    /// Host the client asked for.
    pub host: Option<String>,
    /// Normalized request path (no query: queries often carry secrets).
    pub path: String,
    /// Route taken, if any.
    pub route: Option<String>,
    /// Backend that served the last attempt.
    pub upstream: Option<SocketAddr>,
    /// Attempts made (retries + 1), 0 when no upstream was tried.
    pub attempts: usize,
    /// Status sent to the client (0 when none could be sent).
    pub status: u16,
    /// Whole request, microseconds.
    pub duration_us: u64,
    /// Upstream time to response header, microseconds.
    pub upstream_us: Option<u64>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*t))
}

/// Handle to the access-log writer thread.
pub struct AccessLog {
    tx: SyncSender<AccessRecord>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Log to `stdout` or append to a file (created if missing).
    pub fn open(target: &str, dropped: IntCounter) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            "stdout" | "-" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("gatehouse-access-log".into())
            .spawn(move || write_loop(rx, out))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queue a record; never blocks.
    pub fn log(&self, record: AccessRecord) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(record) {
            self.dropped.inc();
        }
    }
}

fn write_loop(rx: Receiver<AccessRecord>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::new(out);
    while let Ok(record) = rx.recv() {
        write_record(&mut out, &record);
        // Write what is queued, then flush once the queue is empty.
        while let Ok(record) = rx.try_recv() {
            write_record(&mut out, &record);
        }
        let _ = out.flush();
    }
}

fn write_record(out: &mut impl Write, record: &AccessRecord) {
    if serde_json::to_writer(&mut *out, record).is_ok() {
        let _ = out.write_all(b"\n");
    }
}
