//! A TLS load client that opens a new connection per request, resuming sessions or not: what
//! `wrk` cannot do (it never resumes) and `openssl s_time -reuse` does not get from rustls (it
//! closes without close_notify, so no session is kept). `benches/tls.sh` runs it for its
//! `resumed` load.
//!
//! ```sh
//! cargo build --release --example tls_load
//! target/release/examples/tls_load ADDR SECONDS CONNECTIONS resumed|full CA_FILE SERVER_NAME
//! ```
//!
//! Each of CONNECTIONS tasks connects, shakes hands (TLS 1.3 and 1.2 offered, ALPN
//! `http/1.1`), sends `GET /` with `Connection: close`, reads the answer to its end and starts
//! over, for SECONDS. It prints `requests=N resumed=M failed=F`: M of the N handshakes were
//! resumed (with `full`, resumption is off and M is 0).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, seconds, connections, mode, ca, name] = &args[..] else {
        eprintln!("usage: tls_load ADDR SECONDS CONNECTIONS resumed|full CA_FILE SERVER_NAME");
        std::process::exit(2);
    };
    let seconds: u64 = seconds.parse().expect("SECONDS is a number");
    let connections: usize = connections.parse().expect("CONNECTIONS is a number");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA_FILE is readable") {
        roots
            .add(cert.expect("CA_FILE holds PEM certificates"))
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = match mode.as_str() {
        // rustls's default: an in-memory store of sessions and TLS 1.3 tickets.
        "resumed" => Resumption::default(),
        "full" => Resumption::disabled(),
        other => panic!("mode is resumed or full, not {other}"),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(name.clone()).expect("SERVER_NAME is a DNS name");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    runtime.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                let (connector, name, counts) = (connector.clone(), name.clone(), counts.clone());
                let addr = addr.clone();
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        match one(&connector, &addr, name.clone()).await {
                            Ok(resumed) => {
                                counts.requests.fetch_add(1, Ordering::Relaxed);
                                counts.resumed.fetch_add(resumed.into(), Ordering::Relaxed);
                            }
                            Err(_) => {
                                counts.failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    println!(
        "requests={} resumed={} failed={}",
        counts.requests.load(Ordering::Relaxed),
        counts.resumed.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed)
    );
}

/// One request on a new connection; whether its handshake was resumed.
async fn one(
    connector: &tokio_rustls::TlsConnector,
    addr: &str,
    name: ServerName<'static>,
) -> std::io::Result<bool> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name, tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::with_capacity(512);
    // A close without close_notify after the whole answer is the server's right here.
    match tls.read_to_end(&mut answer).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(e),
    }
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("not a 200"));
    }
    // Close with close_notify, so the session stays resumable.
    let _ = tls.shutdown().await;
    Ok(resumed)
}
