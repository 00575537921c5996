//! TLS: the edge listeners' certificates, picked per handshake by the name the client asks
//! for (SNI), and the client side of HTTPS upstreams.
//!
//! Certificates and keys are read while a snapshot is built, so a reload that changes a PEM
//! file builds a new certificate table exactly as it builds a new route table: a file that
//! does not parse, or a key that does not belong to its certificate, fails the reload and the
//! old table keeps serving. The listeners' [`SniResolver`] reads the serving snapshot's table
//! on every handshake; nothing about TLS is on the per-request path.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora_core::upstreams::peer::{HttpPeer, PeerOptions};
use pingora_core::utils::tls::{CertKey, WrappedX509};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{Config, ConfigIssue, ServerTlsConfig, UpstreamTlsConfig};
use crate::reload::ConfigStore;

/// A server name a certificate answers for: `shop.example`, or `*.shop.example` for any one
/// label in front of `shop.example`. Stored in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    /// Exactly this name.
    Exact(String),
    /// Any single label followed by this suffix (without the `*.`).
    Wildcard(String),
}

impl ServerName {
    /// Parse a DNS name, optionally with a leading `*.` label.
    pub fn parse(text: &str) -> Result<ServerName, String> {
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, rest) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, lower),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if rest.is_empty() || rest.len() > 253 || !rest.split('.').all(label_ok) {
            return Err(format!(
                "{text:?} is not a host name (a name like \"shop.example\", or \"*.shop.example\" for one label in front)"
            ));
        }
        Ok(if wildcard {
            ServerName::Wildcard(rest)
        } else {
            ServerName::Exact(rest)
        })
    }
}

/// Every file a config names (certificates, keys, CAs) with its bytes, read once per load so
/// that the content hash and the build see the same bytes.
#[derive(Debug, Default, Clone)]
pub struct Files {
    read: BTreeMap<PathBuf, Vec<u8>>,
}

impl Files {
    /// Read every file `config` names, relative to `base` (the config file's directory).
    pub fn read(config: &Config, base: &Path) -> Result<Files, Vec<ConfigIssue>> {
        let mut files = Files::default();
        let mut issues = Vec::new();
        for (field, name) in referenced(config) {
            let path = base.join(name);
            if files.read.contains_key(&path) {
                continue;
            }
            match std::fs::read(&path) {
                Ok(bytes) => {
                    files.read.insert(path, bytes);
                }
                Err(e) => issues.push(ConfigIssue {
                    field,
                    message: format!("cannot read {}: {e}", path.display()),
                }),
            }
        }
        if issues.is_empty() {
            Ok(files)
        } else {
            Err(issues)
        }
    }

    /// The text of the file at `path` (read once, then kept with the others) without one
    /// trailing line break: a secret's value.
    pub(crate) fn read_text(&mut self, path: &Path) -> Result<String, String> {
        if !self.read.contains_key(path) {
            let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
            self.read.insert(path.to_path_buf(), bytes);
        }
        let text = std::str::from_utf8(&self.read[path]).map_err(|_| "not UTF-8 text")?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
    }

    /// Each file's path and bytes, in path order (for the content hash).
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &[u8])> {
        self.read.iter().map(|(p, b)| (p.as_path(), b.as_slice()))
    }

    /// Every file's path (the reload watcher watches them).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.read.keys().map(PathBuf::as_path)
    }

    fn get(&self, base: &Path, name: &str) -> &[u8] {
        self.read.get(&base.join(name)).map_or(&[], Vec::as_slice)
    }
}

/// Every file the config names, with the field that names it.
fn referenced(config: &Config) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    if let Some(tls) = &config.server.tls {
        for (i, c) in tls.certificates.iter().enumerate() {
            out.push((
                format!("server.tls.certificates[{i}].cert"),
                c.cert.as_str(),
            ));
            out.push((format!("server.tls.certificates[{i}].key"), c.key.as_str()));
        }
    }
    for (i, up) in config.upstreams.iter().enumerate() {
        let Some(tls) = &up.tls else { continue };
        let at = format!("upstreams[{i}].tls");
        for (field, name) in [
            ("ca_file", &tls.ca_file),
            ("client_cert", &tls.client_cert),
            ("client_key", &tls.client_key),
        ] {
            if let Some(name) = name {
                out.push((format!("{at}.{field}"), name.as_str()));
            }
        }
    }
    out
}

/// What `/admin/config` shows of one loaded certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertificateInfo {
    /// The `cert` file as configured.
    pub file: String,
    /// The names it is served for.
    pub names: Vec<String>,
    /// The leaf's expiry (RFC 2822 text, as the certificate says it).
    pub not_after: String,
    /// Served when no name matches.
    pub default: bool,
}

/// The edge listeners' certificates by server name.
pub struct Certificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.shop.example` is stored under `shop.example`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    info: Vec<CertificateInfo>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("certificates", &self.info)
            .finish()
    }
}

impl Certificates {
    /// Build the table from `[server.tls]`, with the PEM bytes from `files`.
    pub fn build(
        tls: &ServerTlsConfig,
        files: &Files,
        base: &Path,
    ) -> Result<Certificates, Vec<ConfigIssue>> {
        let provider = crypto_provider();
        let mut issues = Vec::new();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        let mut info = Vec::new();
        let default_index = tls.certificates.iter().position(|c| c.default).unwrap_or(0);
        for (i, c) in tls.certificates.iter().enumerate() {
            let at = format!("server.tls.certificates[{i}]");
            let loaded =
                certified_key(files.get(base, &c.cert), files.get(base, &c.key), &provider);
            let (key, leaf_names, not_after) = match loaded {
                Ok(loaded) => loaded,
                Err((field, message)) => {
                    issues.push(issue(format!("{at}.{field}"), message));
                    continue;
                }
            };
            let names: Vec<String> = if c.names.is_empty() {
                leaf_names
            } else {
                c.names.clone()
            };
            if names.is_empty() && !(c.default || tls.certificates.len() == 1) {
                issues.push(issue(
                    format!("{at}.names"),
                    "the certificate carries no DNS name; list the names it serves, or make it the default",
                ));
            }
            for name in &names {
                match ServerName::parse(name) {
                    Ok(ServerName::Exact(n)) => {
                        exact.entry(n).or_insert_with(|| Arc::clone(&key));
                    }
                    Ok(ServerName::Wildcard(n)) => {
                        wildcard.entry(n).or_insert_with(|| Arc::clone(&key));
                    }
                    // Names from `names` were validated; a certificate may carry odd ones
                    // (an IP address as a DNS name): they are not served by name.
                    Err(_) => {}
                }
            }
            if i == default_index {
                default = Some(Arc::clone(&key));
            }
            info.push(CertificateInfo {
                file: c.cert.clone(),
                names,
                not_after,
                default: i == default_index,
            });
        }
        match default {
            Some(default) if issues.is_empty() => Ok(Certificates {
                exact,
                wildcard,
                default,
                info,
            }),
            _ => Err(issues),
        }
    }

    /// The certificate for a client that asked for `sni` (or for no name).
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(sni) = sni else {
            return Arc::clone(&self.default);
        };
        let lower;
        let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        if let Some(key) = self.exact.get(sni) {
            return Arc::clone(key);
        }
        if let Some(key) = sni
            .split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
        {
            return Arc::clone(key);
        }
        Arc::clone(&self.default)
    }

    /// What each certificate is, for the admin API.
    pub fn info(&self) -> &[CertificateInfo] {
        &self.info
    }
}

fn issue(field: String, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        field,
        message: message.into(),
    }
}

/// The process's rustls provider (ring, as Pingora's rustls support uses).
fn crypto_provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

type Loaded = (Arc<CertifiedKey>, Vec<String>, String);

/// A chain and its key, checked to belong together, with the leaf's DNS names and expiry.
/// The error names the field at fault (`cert` or `key`).
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Loaded, (&'static str, String)> {
    let chain = read_chain(cert_pem).map_err(|e| ("cert", e))?;
    let (names, not_after) = leaf_facts(&chain[0]).map_err(|e| ("cert", e))?;
    let key = read_key(key_pem).map_err(|e| ("key", e))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        (
            "key",
            format!("does not go with the certificate, or is not a key rustls can use: {e}"),
        )
    })?;
    Ok((Arc::new(key), names, not_after))
}

fn read_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(chain)
}

fn read_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"))
}

/// The DNS names in the leaf's subjectAltName and its `notAfter`.
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, String), String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| format!("the first certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                names.push(n.to_string());
            }
        }
    }
    Ok((names, cert.validity().not_after.to_string()))
}

/// Picks the edge certificate for each handshake from the serving snapshot.
pub struct SniResolver {
    store: Arc<ConfigStore>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl SniResolver {
    /// Serve the certificates of whatever snapshot `store` holds.
    pub fn new(store: Arc<ConfigStore>) -> SniResolver {
        SniResolver { store }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.store.load();
        let certificates = snapshot.certificates.as_ref()?;
        Some(certificates.pick(hello.server_name()))
    }
}

/// Pingora's settings for an HTTPS listener: the resolver, TLS 1.2 and 1.3, ALPN `h2` then
/// `http/1.1`. rustls's defaults keep session resumption on (a 256-entry session cache for
/// TLS 1.2 ids and TLS 1.3 tickets).
pub(crate) fn listener_settings(
    store: &Arc<ConfigStore>,
) -> pingora_core::Result<pingora_core::listeners::tls::TlsSettings> {
    let mut settings = pingora_core::listeners::tls::TlsSettings::intermediate("", "")?;
    settings.set_cert_resolver(Arc::new(SniResolver::new(Arc::clone(store))));
    settings.enable_h2();
    Ok(settings)
}

/// The client side of TLS to one pool's backends, loaded once per snapshot.
#[derive(Clone)]
pub struct UpstreamTls {
    /// SHA-256 of the files it was loaded from: a reload keeps a pool (and its health and
    /// pooled connections) only when these are unchanged too.
    fingerprint: [u8; 32],
    sni: String,
    verify: bool,
    ca: Option<Arc<[WrappedX509]>>,
    client: Option<Arc<CertKey>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl UpstreamTls {
    /// Load the CA and client certificate a pool's `tls` names. Errors name the field.
    pub fn build(
        tls: &UpstreamTlsConfig,
        files: &Files,
        base: &Path,
    ) -> Result<UpstreamTls, (&'static str, String)> {
        let ca = match &tls.ca_file {
            None => None,
            Some(name) => {
                let chain = read_chain(files.get(base, name)).map_err(|e| ("ca_file", e))?;
                let mut wrapped = Vec::with_capacity(chain.len());
                for der in chain {
                    wrapped.push(wrap_x509(der.as_ref().to_vec()).map_err(|e| ("ca_file", e))?);
                }
                Some(Arc::from(wrapped))
            }
        };
        let client = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => {
                let pem = files.get(base, cert);
                // Checked the way the edge's certificates are, since Pingora's `CertKey`
                // assumes well-formed DER and would fail at connect time instead.
                certified_key(pem, files.get(base, key), &crypto_provider()).map_err(
                    |(field, e)| {
                        let field = if field == "cert" {
                            "client_cert"
                        } else {
                            "client_key"
                        };
                        (field, e)
                    },
                )?;
                let chain = read_chain(pem).map_err(|e| ("client_cert", e))?;
                let key = read_key(files.get(base, key)).map_err(|e| ("client_key", e))?;
                Some(Arc::new(CertKey::new(
                    chain.iter().map(|c| c.as_ref().to_vec()).collect(),
                    key.secret_der().to_vec(),
                )))
            }
            _ => None,
        };
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        for name in [&tls.ca_file, &tls.client_cert, &tls.client_key]
            .into_iter()
            .flatten()
        {
            sha2::Digest::update(&mut hasher, files.get(base, name));
            sha2::Digest::update(&mut hasher, b"\0");
        }
        Ok(UpstreamTls {
            fingerprint: sha2::Digest::finalize(hasher).into(),
            sni: tls.sni.clone(),
            verify: tls.verify,
            ca,
            client,
        })
    }

    /// A peer for `addr` over TLS with this pool's name, trust and client certificate.
    pub fn peer(&self, addr: std::net::SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, self.sni.clone());
        self.apply(&mut peer);
        peer
    }

    /// Set a peer's (or an HTTP health check's peer template's) TLS options.
    pub fn apply(&self, peer: &mut HttpPeer) {
        self.apply_options(&mut peer.sni, &mut peer.options);
        peer.client_cert_key.clone_from(&self.client);
    }

    /// Set the name and trust of any peer (a TCP health check's has no client certificate;
    /// a non-empty SNI is what makes it connect with TLS).
    pub fn apply_options(&self, sni: &mut String, options: &mut PeerOptions) {
        sni.clone_from(&self.sni);
        options.verify_cert = self.verify;
        options.verify_hostname = self.verify;
        options.ca.clone_from(&self.ca);
    }
}

/// Pingora's parsed certificate; the DER is checked first because its constructor panics on
/// bytes that do not parse.
fn wrap_x509(der: Vec<u8>) -> Result<WrappedX509, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(&der).map_err(|e| format!("a certificate does not parse: {e}"))?;
    Ok(WrappedX509::new(der, |raw| {
        pingora_core::utils::tls::parse_x509(raw)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_parse() {
        assert_eq!(
            ServerName::parse("Shop.Example"),
            Ok(ServerName::Exact("shop.example".into()))
        );
        assert_eq!(
            ServerName::parse("*.shop.example"),
            Ok(ServerName::Wildcard("shop.example".into()))
        );
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "shop example",
            "-a.b",
            "a.*.b",
            "*.*.b",
        ] {
            assert!(ServerName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
