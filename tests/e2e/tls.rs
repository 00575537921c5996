//! TLS over real sockets, with certificates the tests issue from their own CA: names picked
//! by SNI (exact, wildcard, default), HTTP/2 by ALPN, a certificate replaced on disk served
//! by new handshakes with no failed request, a mismatched key refused while the old one keeps
//! serving, plain-to-HTTPS redirects, HSTS, `X-Forwarded-Proto`, and HTTPS upstreams (a
//! second gateway terminating TLS is the backend) trusted through a private CA or refused, and
//! one demanding a client certificate (mTLS) given the gateway's and refusing none or a stranger's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;

use crate::support::{self, Upstream};

/// A certificate authority of the test's own.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names`, as (certificate PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Write `name.pem` and `name.key` in `dir`.
fn write_pair(dir: &Path, name: &str, (cert, key): &(String, String)) {
    std::fs::write(dir.join(format!("{name}.pem")), cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key).unwrap();
}

/// Replace a file by rename, as certificate renewers do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A client trusting `ca` only, that resolves every name in `names` to `addr`.
fn https_client(ca: &Ca, addr: SocketAddr, names: &[&str]) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none());
    for name in names {
        builder = builder.resolve(name, addr);
    }
    builder.build().unwrap()
}

/// The DNS names of the certificate the server presented.
fn peer_names(response: &reqwest::Response) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    let der = info.peer_certificate().expect("a peer certificate");
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(n) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

/// A gateway config with a plain and an HTTPS listener in front of `upstream`, certificates
/// for `shop.test` (the default), `*.api.test`, and `admin.test` read from `dir`.
fn edge_config(upstream: SocketAddr, extra_tls: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[server.tls]
listen = ["127.0.0.1:0"]
{extra_tls}

[[server.tls.certificates]]
cert = "shop.pem"
key = "shop.key"
default = true

[[server.tls.certificates]]
cert = "api.pem"
key = "api.key"

[[server.tls.certificates]]
cert = "admin.pem"
key = "admin.key"

[[upstreams]]
name = "echo"
backends = ["{upstream}"]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "echo"
"#
    )
}

struct Edge {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    gateway: gatehouse::GatewayHandle,
    upstream: Upstream,
}

impl Edge {
    async fn start(extra_tls: &str) -> Edge {
        let upstream = Upstream::start("echo").await;
        let ca = Ca::new("gatehouse test CA");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        write_pair(&dir, "shop", &ca.issue(&["shop.test"]));
        write_pair(&dir, "api", &ca.issue(&["*.api.test"]));
        write_pair(&dir, "admin", &ca.issue(&["admin.test"]));
        let path = dir.join("gateway.toml");
        let text = support::with_test_listeners(&edge_config(upstream.addr, extra_tls));
        std::fs::write(&path, text).unwrap();
        let gateway = support::gateway_from_file(path).await;
        Edge {
            _dir: tmp,
            dir,
            ca,
            gateway,
            upstream,
        }
    }

    fn https(&self) -> SocketAddr {
        self.gateway.tls_addrs()[0]
    }

    fn client(&self) -> reqwest::Client {
        let names = ["shop.test", "v1.api.test", "admin.test", "other.test"];
        https_client(&self.ca, self.https(), &names)
    }

    fn url(&self, name: &str, path: &str) -> String {
        format!("https://{name}:{}{path}", self.https().port())
    }
}

#[tokio::test]
async fn each_name_gets_its_certificate_and_an_unknown_name_the_default() {
    let edge = Edge::start("").await;
    let client = edge.client();
    for (name, expected) in [
        ("shop.test", "shop.test"),
        ("v1.api.test", "*.api.test"),
        ("admin.test", "admin.test"),
        ("other.test", "shop.test"),
    ] {
        // `other.test` is not on the default certificate: the client must refuse it, which
        // shows the default was what the server sent.
        let result = client.get(edge.url(name, "/hello")).send().await;
        if name == "other.test" {
            let e = result.expect_err("a certificate for another name is refused");
            let chain = format!("{:?}", e);
            assert!(chain.contains("NotValidForName"), "{chain}");
            let lenient = reqwest::Client::builder()
                .use_rustls_tls()
                .danger_accept_invalid_certs(true)
                .tls_info(true)
                .resolve(name, edge.https())
                .build()
                .unwrap();
            let response = lenient.get(edge.url(name, "/")).send().await.unwrap();
            assert_eq!(peer_names(&response), [expected], "{name}");
            continue;
        }
        let response = result.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(peer_names(&response), [expected], "{name}");
        // HTTP/2 by ALPN: reqwest offers h2 and http/1.1, the gateway picks h2.
        assert_eq!(response.version(), reqwest::Version::HTTP_2, "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["headers"]["x-forwarded-proto"][0], "https", "{body}");
    }
    // The plain listener still serves plain HTTP, and says so upstream.
    let plain = support::client()
        .get(support::url(edge.gateway.local_addr(), "/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(
        edge.upstream.last().header("x-forwarded-proto"),
        Some("http")
    );
    // HTTP/1.1 is offered too.
    let h1 = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(edge.ca.pem.as_bytes()).unwrap())
        .http1_only()
        .resolve("shop.test", edge.https())
        .build()
        .unwrap();
    let response = h1.get(edge.url("shop.test", "/h1")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    support::stop(edge.gateway).await;
}

#[tokio::test]
async fn a_replaced_certificate_serves_new_handshakes_without_a_failed_request() {
    let edge = Edge::start("").await;
    let admin = edge.gateway.admin_addr().unwrap();
    // A stream of requests, each on a new connection (a new handshake), while the file changes.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stream = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (ca_pem, addr, url) = (
            edge.ca.pem.clone(),
            edge.https(),
            edge.url("shop.test", "/"),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let client = reqwest::Client::builder()
                    .use_rustls_tls()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(
                        reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap(),
                    )
                    .resolve("shop.test", addr)
                    .build()
                    .unwrap();
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Renewed: the same name plus a new one, written by rename.
    let (cert, key) = edge.ca.issue(&["shop.test", "www.shop.test"]);
    replace(&edge.dir.join("shop.key"), &key);
    replace(&edge.dir.join("shop.pem"), &cert);
    let client = edge.client();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = https_client(&edge.ca, edge.https(), &["shop.test"]);
        let response = fresh.get(edge.url("shop.test", "/")).send().await.unwrap();
        if peer_names(&response) == ["shop.test", "www.shop.test"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other names are untouched.
    let response = client
        .get(edge.url("admin.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_names(&response), ["admin.test"]);

    // A key that does not go with its certificate: refused, the renewed one keeps serving.
    let http = support::client();
    let failed_reloads = || async {
        let metrics = support::admin_metrics(&http, admin).await;
        support::metric_value(
            &metrics,
            "gatehouse_config_reloads_total",
            &[("result", "failed")],
        )
        .unwrap_or(0.0)
    };
    let before = failed_reloads().await;
    let (_, other_key) = edge.ca.issue(&["shop.test"]);
    replace(&edge.dir.join("shop.key"), &other_key);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if failed_reloads().await > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mismatched key was not refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = http
        .post(format!("http://{admin}/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    let errors = problem["errors"].to_string();
    assert!(
        errors.contains("server.tls.certificates[0].key") && errors.contains("does not go with"),
        "{errors}"
    );
    let fresh = https_client(&edge.ca, edge.https(), &["shop.test"]);
    let response = fresh.get(edge.url("shop.test", "/")).send().await.unwrap();
    assert_eq!(peer_names(&response), ["shop.test", "www.shop.test"]);

    stop.store(true, Ordering::Relaxed);
    stream.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
    assert!(ok.load(Ordering::Relaxed) > 5, "the stream ran");
    let config = support::admin_config(&http, admin).await;
    assert_eq!(
        config["certificates"][0]["names"][1], "www.shop.test",
        "{config}"
    );
    support::stop(edge.gateway).await;
}

#[tokio::test]
async fn plain_requests_redirect_to_https_and_https_answers_carry_hsts() {
    let edge =
        Edge::start("redirect_plain = true\nhsts = \"max-age=31536000; includeSubDomains\"").await;
    let port = edge.https().port();
    let plain = format!("http://shop.test:{}", edge.gateway.local_addr().port());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve("shop.test", edge.gateway.local_addr())
        .build()
        .unwrap();
    let response = client
        .post(format!("{plain}/cart/items?x=1"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!("https://shop.test:{port}/cart/items?x=1").as_str()
    );
    assert!(response
        .headers()
        .get("strict-transport-security")
        .is_none());
    assert!(
        edge.upstream.requests().is_empty(),
        "a plain request went upstream"
    );

    let response = edge
        .client()
        .get(edge.url("shop.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    // The gateway's own answers carry it too.
    let lenient = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let response = lenient
        .get(format!("https://127.0.0.1:{port}/%zz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.headers().contains_key("strict-transport-security"));
    support::stop(edge.gateway).await;
}

/// A gateway in front of `backend`'s HTTPS listener, trusting `ca_file` (relative to `dir`).
async fn front(
    dir: &Path,
    backend: SocketAddr,
    tls: &str,
    check: bool,
) -> gatehouse::GatewayHandle {
    let health = if check {
        "health_check = { kind = \"http\", path = \"/health\", interval = \"100ms\", timeout = \"1s\", unhealthy_after = 1, healthy_after = 1 }"
    } else {
        ""
    };
    let text = format!(
        r#"
[[upstreams]]
name = "secure"
backends = ["{backend}"]
tls = {tls}
{health}

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "secure"
retry = {{ attempts = 1 }}
"#
    );
    let path = dir.join("front.toml");
    std::fs::write(&path, support::with_test_listeners(&text)).unwrap();
    support::gateway_from_file_unwatched(path).await
}

/// A front gateway reaching the edge's HTTPS listener with `tls`, and its answer to `path`.
async fn via_front(
    edge: &Edge,
    tls: &str,
    check: bool,
    path: &str,
) -> (gatehouse::GatewayHandle, reqwest::Response) {
    let gateway = front(&edge.dir, edge.https(), tls, check).await;
    let response = support::client()
        .get(support::url(gateway.local_addr(), path))
        .send()
        .await
        .unwrap();
    (gateway, response)
}

#[tokio::test]
async fn an_https_upstream_is_reached_through_a_private_ca_and_refused_with_the_wrong_one() {
    // The backend: a second gateway terminating TLS for `backend.internal` before the echo.
    let edge = Edge::start("").await;
    let (cert, key) = edge.ca.issue(&["backend.internal"]);
    write_pair(&edge.dir, "backend", &(cert, key));
    let text = std::fs::read_to_string(edge.dir.join("gateway.toml")).unwrap();
    let text = text.replacen("cert = \"shop.pem\"", "cert = \"backend.pem\"", 1);
    let text = text.replacen("key = \"shop.key\"", "key = \"backend.key\"", 1);
    replace(&edge.dir.join("gateway.toml"), &text);
    std::fs::write(edge.dir.join("ca.pem"), &edge.ca.pem).unwrap();
    let other = Ca::new("someone else's CA");
    std::fs::write(edge.dir.join("other-ca.pem"), &other.pem).unwrap();
    let admin = edge.gateway.admin_addr().unwrap();
    let http = support::client();
    let deadline = Instant::now() + Duration::from_secs(5);
    while support::admin_config(&http, admin).await["certificates"][0]["names"][0]
        != "backend.internal"
    {
        assert!(Instant::now() < deadline, "backend certificate not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let tls = r#"{ sni = "backend.internal", ca_file = "ca.pem" }"#;
    let (trusted, response) = via_front(&edge, tls, true, "/over/tls").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["uri"], "/over/tls");
    // The backend gateway saw an HTTPS client.
    assert_eq!(body["headers"]["x-forwarded-proto"][0], "https", "{body}");
    // The health check goes over TLS too, and finds the backend up.
    let front_admin = trusted.admin_addr().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let config = support::admin_config(&http, front_admin).await;
    assert_eq!(
        support::backend_healthy(&config, "secure", edge.https()),
        Some(true),
        "{config}"
    );
    assert_eq!(config["upstreams"][0]["tls"], true);
    support::stop(trusted).await;

    let tls = r#"{ sni = "backend.internal", ca_file = "other-ca.pem" }"#;
    let (untrusted, response) = via_front(&edge, tls, false, "/over/tls").await;
    assert_eq!(response.status(), 502);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("TLS handshake"),
        "{problem}"
    );
    support::stop(untrusted).await;

    // The right CA but the wrong name: refused as well.
    let tls = r#"{ sni = "elsewhere.internal", ca_file = "ca.pem" }"#;
    let (misnamed, response) = via_front(&edge, tls, false, "/").await;
    assert_eq!(response.status(), 502);
    support::stop(misnamed).await;
    support::stop(edge.gateway).await;
}

/// A backend that demands a client certificate issued by `clients` and answers 200 with the
/// common name of the one it got; it serves `server` (certificate and key PEM).
async fn mtls_backend(clients: &Ca, server: &(String, String)) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use x509_parser::prelude::{FromDer, X509Certificate};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(clients.pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(server.0.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(server.1.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A handshake without an acceptable client certificate ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                let (_, cert) = X509Certificate::from_der(&der).unwrap();
                let name = cert.subject().iter_common_name().next().unwrap();
                let name = name.as_str().unwrap().to_string();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_demanding_a_client_certificate_gets_the_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("internal CA");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    write_pair(dir.path(), "gateway", &ca.issue(&["gateway.internal"]));
    let stranger = Ca::new("someone else's CA");
    write_pair(
        dir.path(),
        "stranger",
        &stranger.issue(&["stranger.internal"]),
    );
    let backend = mtls_backend(&ca, &ca.issue(&["backend.internal"])).await;
    let http = support::client();
    let ask = |gateway: &gatehouse::GatewayHandle| {
        http.get(support::url(gateway.local_addr(), "/who")).send()
    };

    let tls = r#"{ sni = "backend.internal", ca_file = "ca.pem", client_cert = "gateway.pem", client_key = "gateway.key" }"#;
    let gateway = front(dir.path(), backend, tls, false).await;
    let response = ask(&gateway).await.unwrap();
    assert_eq!(response.status(), 200);
    // The backend saw the gateway's own certificate.
    assert_eq!(response.text().await.unwrap(), "gateway.internal");
    support::stop(gateway).await;

    // No client certificate, or one the backend does not trust: the handshake fails, 502.
    for tls in [
        r#"{ sni = "backend.internal", ca_file = "ca.pem" }"#,
        r#"{ sni = "backend.internal", ca_file = "ca.pem", client_cert = "stranger.pem", client_key = "stranger.key" }"#,
    ] {
        let gateway = front(dir.path(), backend, tls, false).await;
        let response = ask(&gateway).await.unwrap();
        assert_eq!(response.status(), 502, "{tls}");
        support::stop(gateway).await;
    }
}

#[tokio::test]
async fn bad_tls_settings_are_refused_with_the_field_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    write_pair(dir.path(), "a", &ca.issue(&["a.test"]));
    write_pair(dir.path(), "b", &ca.issue(&["b.test"]));
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let cases = [
        (
            "[[server.tls.certificates]]\ncert = \"a.pem\"\nkey = \"b.key\"",
            "server.tls.certificates[0].key: does not go with the certificate",
        ),
        (
            "[[server.tls.certificates]]\ncert = \"junk.pem\"\nkey = \"a.key\"",
            "server.tls.certificates[0].cert: holds no PEM certificate",
        ),
        (
            "[[server.tls.certificates]]\ncert = \"missing.pem\"\nkey = \"a.key\"",
            "server.tls.certificates[0].cert: cannot read",
        ),
        (
            "[[server.tls.certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\nnames = [\"bad name\"]",
            "server.tls.certificates[0].names[0]",
        ),
    ];
    for (certs, expected) in cases {
        let text = refused(
            dir.path(),
            &format!("[server.tls]\nlisten = [\"127.0.0.1:0\"]\n{certs}\n"),
        );
        assert!(text.contains(expected), "{certs}\n---\n{text}");
        assert!(text.contains("gateway.toml"), "{text}");
    }
    let upstream_cases = [
        (
            "tls = { sni = \"b.test\", ca_file = \"junk.pem\" }",
            "upstreams[0].tls.ca_file",
        ),
        (
            "tls = { sni = \"b.test\", client_cert = \"a.pem\", client_key = \"b.key\" }",
            "upstreams[0].tls.client_key: does not go with",
        ),
        (
            "tls = { sni = \"b.test\", client_cert = \"a.pem\" }",
            "client_cert and client_key go together",
        ),
        ("tls = { sni = \"\" }", "upstreams[0].tls.sni"),
    ];
    for (tls, expected) in upstream_cases {
        let pool = format!("[[upstreams]]\nname = \"u\"\nbackends = [\"127.0.0.1:1\"]\n{tls}\n");
        let text = refused(dir.path(), &pool);
        assert!(text.contains(expected), "{tls}\n---\n{text}");
    }
}

/// Why a gateway refuses to build from `text` written as `dir/gateway.toml`.
fn refused(dir: &Path, text: &str) -> String {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, support::with_test_listeners(text)).unwrap();
    gatehouse::Gateway::builder()
        .config_file(&path)
        .build()
        .err()
        .unwrap_or_else(|| panic!("accepted: {text}"))
        .to_string()
}
