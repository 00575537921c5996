//! Who is asking and how it reached us: the client's address (walking `X-Forwarded-For`
//! through trusted proxies), the forwarding fields a request takes upstream
//! (`X-Forwarded-For/-Proto/-Host`), and the hop-by-hop fields a response must not carry on.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use crate::fields::Fields;
use crate::observe::request_id::{self, RequestId, TRACEPARENT};
use crate::snapshot::Snapshot;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// `X-Forwarded-Proto` values; static, so never copied.
const HTTP: HeaderValue = HeaderValue::from_static("http");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Fields [`set_forwarding`] may add to a request.
pub(crate) const FORWARDING_FIELDS: usize = 5;

/// The address that connected and the client behind it, as far as the gateway trusts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientAddr {
    /// The address that connected to us.
    pub peer: Option<IpAddr>,
    /// That address is a trusted proxy, whose forwarding fields are extended, not replaced.
    pub peer_trusted: bool,
    /// The client: the peer, or, when the peer is a trusted proxy, the nearest untrusted hop
    /// of `X-Forwarded-For`.
    pub client: Option<IpAddr>,
    /// The connection came in over TLS (an HTTPS listener).
    pub secure: bool,
}

impl ClientAddr {
    /// Of the request `req` that arrived on `session`, under `snapshot`'s trusted proxies.
    pub fn of(session: &Session, snapshot: &Snapshot, req: &RequestHeader) -> ClientAddr {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let peer_trusted = peer.is_some_and(|ip| snapshot.is_trusted_proxy(ip));
        ClientAddr {
            peer,
            peer_trusted,
            client: resolve_client_ip(snapshot, peer, peer_trusted, req),
            secure: session
                .as_downstream()
                .digest()
                .is_some_and(|d| d.ssl_digest.is_some()),
        }
    }
}

/// An address as text; IPv4 without `fmt`, which costs ~1k instructions on every request.
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
            out
        }
        IpAddr::V6(_) => ip.to_string(),
    }
}

/// An address as a header value. Consecutive requests on a worker thread mostly come from one
/// address (a keep-alive connection, or the load balancer in front of the gateway), so each
/// thread keeps the last one, shared by reference count, instead of formatting it again.
fn ip_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, value)) = &*last {
            if *cached == ip {
                return value.clone();
            }
        }
        let value = HeaderValue::from_maybe_shared(Bytes::from_owner(ip_text(ip)))
            .expect("an address's text is a valid value");
        *last = Some((ip, value.clone()));
        value
    })
}

/// Walk `X-Forwarded-For` from the nearest hop outwards while the hops are trusted proxies;
/// the first untrusted hop is the client. A malformed hop ends the walk at the last trusted one.
/// `trusted`: the peer is a trusted proxy.
pub(crate) fn resolve_client_ip(
    snapshot: &Snapshot,
    peer: Option<IpAddr>,
    trusted: bool,
    req: &RequestHeader,
) -> Option<IpAddr> {
    let mut client = peer?;
    if !trusted {
        return Some(client);
    }
    let lines: Vec<&str> = req
        .headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for hop in lines.iter().rev().flat_map(|l| l.rsplit(',')) {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !snapshot.is_trusted_proxy(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

/// The host the client asked for as a header value (for `X-Forwarded-Host`): `Host` is
/// shared rather than copied.
pub(crate) fn host_value(req: &RequestHeader) -> Option<HeaderValue> {
    match req.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req
            .headers
            .get(http::header::HOST)
            .filter(|h| h.to_str().is_ok())
            .cloned(),
    }
}

/// The answer to a plain request when plain listeners redirect to HTTPS: a permanent redirect
/// (308 keeps the method and body, unlike 301) to the same host and target on `https_port`
/// (left out when it is 443). `None` when the request names no host.
pub(crate) fn https_redirect(req: &RequestHeader, https_port: u16) -> Option<ResponseHeader> {
    let host = host_value(req)?;
    let host = host.to_str().ok()?;
    // Drop the plain port: `[v6]:80` or `name:80` (a v6 literal keeps its brackets).
    let name = match host.rfind(':') {
        Some(colon) if !host[colon..].contains(']') => &host[..colon],
        _ => host,
    };
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{name}{target}")
    } else {
        format!("https://{name}:{https_port}{target}")
    };
    let mut header = ResponseHeader::build(308, Some(3)).ok()?;
    header
        .insert_header(http::header::LOCATION, location)
        .ok()?;
    header
        .insert_header(http::header::CONTENT_LENGTH, "0")
        .ok()?;
    Some(header)
}

/// `X-Forwarded-For/-Proto/-Host`, `x-request-id` and `traceparent` on a request going up
/// (a trusted proxy's forwarding fields are extended, not replaced); `host` is the host the
/// client asked for.
pub(crate) fn set_forwarding(
    f: &mut dyn Fields,
    addr: &ClientAddr,
    host: Option<HeaderValue>,
    id: &RequestId,
    traceparent: Option<&HeaderValue>,
) {
    let trusted = addr.peer_trusted;
    let client = addr.peer.map(ip_value);
    // Several X-Forwarded-For lines are one list (a proxy may add its own line rather than
    // extend the client's): keep every hop, in order.
    let prior: Option<Vec<&str>> = if trusted {
        f.map()
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|v| v.to_str().ok())
            .collect()
    } else {
        None
    };
    let forwarded_for = match (prior, client) {
        (Some(lines), client) if !lines.is_empty() => {
            let client = client.as_ref().and_then(|c| c.to_str().ok()).unwrap_or("");
            // Printable hops joined by ", ": always a valid value.
            HeaderValue::try_from(format!("{}, {client}", lines.join(", "))).ok()
        }
        (_, client) => client,
    };
    match forwarded_for {
        Some(value) => f.insert(&X_FORWARDED_FOR, value),
        None => f.remove(&X_FORWARDED_FOR),
    }
    if !(trusted && f.map().contains_key(&X_FORWARDED_PROTO)) {
        f.insert(&X_FORWARDED_PROTO, if addr.secure { HTTPS } else { HTTP });
    }
    if !(trusted && f.map().contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(host) => f.insert(&X_FORWARDED_HOST, host),
            None => f.remove(&X_FORWARDED_HOST),
        }
    }
    request_id::stamp(f, id);
    if let Some(traceparent) = traceparent {
        f.insert(&TRACEPARENT, traceparent.clone());
    }
}

/// Hop-by-hop fields of a response (RFC 9110 §7.6.1) that must not be relayed: `Connection`
/// itself (Pingora writes its own for the client's connection), the fields it nominates, and
/// the fields that are hop-by-hop wherever they appear.
pub(crate) fn strip_response_hop_by_hop(f: &mut dyn Fields) {
    static ALWAYS: [HeaderName; 5] = [
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        http::header::TE,
        http::header::TRAILER,
        http::header::UPGRADE,
    ];
    // One pass over the names (a response has a handful), by length first, tells what there
    // is to do; a lookup per name would cost more than the pass.
    let mut present = [false; 5];
    let mut connection = false;
    for name in f.map().keys() {
        let found = match name.as_str() {
            "connection" => {
                connection = true;
                continue;
            }
            n if !matches!(n.len(), 2 | 7 | 10 | 16) => continue,
            "keep-alive" => 0,
            "proxy-connection" => 1,
            "te" => 2,
            "trailer" => 3,
            "upgrade" => 4,
            _ => continue,
        };
        present[found] = true;
    }
    // The usual value, one `Connection: keep-alive` or `close`, nominates nothing.
    let nominates = connection
        && f.map().get_all(http::header::CONNECTION).iter().any(|v| {
            let v = v.as_bytes();
            !(v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close"))
        });
    if nominates {
        let nominated: Vec<HeaderName> = f
            .map()
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("keep-alive")
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in &nominated {
            f.remove(name);
        }
    }
    if connection {
        // Pingora writes its own for the client's connection. Removing the upstream's first
        // also keeps the map from growing twice: the response reaches us in an exactly-sized
        // copy, and `http` grows a full map's index on any insert, even one that replaces
        // (Pingora's `Date`), so the request id taking that room would cost a second growth.
        f.remove(&http::header::CONNECTION);
    }
    for (name, _) in ALWAYS.iter().zip(present).filter(|(_, p)| *p) {
        f.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::ResponseHeader;

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn response_hop_by_hop_fields_are_stripped() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (name, value) in [
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Upgrade", "h2c"),
            ("Content-Type", "text/plain"),
        ] {
            resp.append_header(name, value).unwrap();
        }
        strip_response_hop_by_hop(&mut resp);
        for gone in ["x-private", "keep-alive", "upgrade", "connection"] {
            assert!(!resp.headers.contains_key(gone), "{gone}");
        }
        assert!(resp.headers.contains_key("content-type"));
    }
}
