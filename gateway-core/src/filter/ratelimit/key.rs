//! Bucket keys: the configured parts of a request, framed unambiguously and hashed.
//!
//! Each part is written as a tag byte, a value count and length-prefixed values, so no two
//! different requests frame to the same bytes (`["a:b", "c"]` never equals `["a", "b:c"]`). The
//! framed bytes are never stored: the local store keeps a 128-bit keyed SipHash of them (two
//! SipHash-1-3 runs under independent random keys), so a bucket costs the same few bytes
//! whatever the client sends, and a client cannot aim a header value at another client's bucket
//! without knowing the per-process keys. The Redis store needs the same key on every replica, so
//! it uses a SHA-256 digest instead.

use std::hash::Hasher;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use super::config::{KeyPart, OnMissingKey};
use crate::filter::{FilterState, RequestInfo};

const TAG_IP: u8 = 1;
const TAG_ROUTE: u8 = 2;
const TAG_HEADER: u8 = 3;
const TAG_CLAIM: u8 = 4;

/// Where framed key bytes go.
pub(crate) trait KeySink {
    /// Feed raw bytes.
    fn write(&mut self, bytes: &[u8]);

    /// One key part: its tag, how many values, then each value with its length.
    fn part<'v>(&mut self, tag: u8, values: impl ExactSizeIterator<Item = &'v [u8]>) {
        self.write(&[tag]);
        self.write(&(values.len() as u64).to_le_bytes());
        for v in values {
            self.write(&(v.len() as u64).to_le_bytes());
            self.write(v);
        }
    }
}

/// A bucket of the local stores: 128 bits of keyed hash.
pub(crate) use crate::keyed::Key128 as BucketKey;

/// Reserved key of the bucket shared by keys that find the local store full. A real key lands
/// here with probability 2^-128.
pub(crate) const OVERFLOW: BucketKey = BucketKey(0, 0);

/// The per-filter secret that turns framed key bytes into [`BucketKey`]s.
pub(crate) use crate::keyed::HashSecret;

/// A [`KeySink`] computing a [`BucketKey`]. Small writes are gathered first: SipHash reads a
/// stream (how it is cut into writes does not change the hash), and one long write costs far
/// less than many short ones.
pub(crate) struct SipSink {
    hasher: siphasher::sip128::SipHasher13,
    buf: [u8; 64],
    len: usize,
}

impl SipSink {
    pub(crate) fn new(keys: &HashSecret) -> SipSink {
        SipSink {
            hasher: keys.hasher(),
            buf: [0; 64],
            len: 0,
        }
    }

    fn flush(&mut self) {
        self.hasher.write(&self.buf[..self.len]);
        self.len = 0;
    }

    pub(crate) fn finish(mut self) -> BucketKey {
        self.flush();
        crate::keyed::finish(&self.hasher)
    }
}

impl KeySink for SipSink {
    fn write(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > self.buf.len() {
            self.flush();
            if bytes.len() > self.buf.len() {
                self.hasher.write(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// A [`KeySink`] computing a digest that is the same on every replica (the Redis store).
pub(crate) struct Sha(pub(crate) Sha256);

impl KeySink for Sha {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl Sha {
    /// The first 128 bits of the digest as 32 lower-case hex digits.
    pub(crate) fn hex(self) -> String {
        use std::fmt::Write;
        let digest = self.0.finalize();
        let mut out = String::with_capacity(32);
        for b in &digest[..16] {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

/// What to do with a request, once its key parts were looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyOutcome {
    /// The key is complete in the sink.
    Limit,
    /// A part was missing and the filter skips such requests.
    Skip,
    /// A part was missing and the filter refuses such requests.
    Reject,
}

/// The configured key of a filter.
#[derive(Debug, Clone)]
pub(crate) struct KeySpec {
    pub(crate) parts: Vec<KeyPart>,
    pub(crate) on_missing: OnMissingKey,
}

impl KeySpec {
    /// Frame this request's key parts into `sink`.
    pub(crate) fn write<S: KeySink>(
        &self,
        req: &RequestInfo<'_>,
        state: &FilterState,
        sink: &mut S,
    ) -> KeyOutcome {
        for part in &self.parts {
            let present = match part {
                KeyPart::ClientIp => match req.client_ip {
                    Some(IpAddr::V4(ip)) => {
                        sink.part(TAG_IP, std::iter::once(&ip.octets()[..]));
                        true
                    }
                    Some(IpAddr::V6(ip)) => {
                        sink.part(TAG_IP, std::iter::once(&ip.octets()[..]));
                        true
                    }
                    None => false,
                },
                KeyPart::Route => {
                    sink.part(TAG_ROUTE, std::iter::once(req.route.as_bytes()));
                    true
                }
                KeyPart::Header(name) => {
                    let values = req.header.headers.get_all(name);
                    let count = values.iter().count();
                    if count > 0 {
                        let values = values.iter().map(|v| v.as_bytes());
                        sink.part(TAG_HEADER, Counted(values, count));
                    }
                    count > 0
                }
                KeyPart::Claim(name) => match state.claims().and_then(|c| c.as_text(name)) {
                    Some(text) => {
                        sink.part(TAG_CLAIM, std::iter::once(text.as_bytes()));
                        true
                    }
                    None => false,
                },
            };
            if !present {
                match self.on_missing {
                    // Missing is framed exactly as one empty value of that part.
                    OnMissingKey::Empty => sink.part(tag_of(part), std::iter::once(&[][..])),
                    OnMissingKey::Skip => return KeyOutcome::Skip,
                    OnMissingKey::Reject => return KeyOutcome::Reject,
                }
            }
        }
        KeyOutcome::Limit
    }

    /// Words for a 400 when a part is missing.
    pub(crate) fn describe(&self) -> String {
        let names: Vec<String> = self
            .parts
            .iter()
            .map(|p| match p {
                KeyPart::ClientIp => "the client IP".to_string(),
                KeyPart::Route => "the route".to_string(),
                KeyPart::Header(h) => format!("header {h}"),
                KeyPart::Claim(c) => format!("token claim {c}"),
            })
            .collect();
        names.join(", ")
    }
}

fn tag_of(part: &KeyPart) -> u8 {
    match part {
        KeyPart::ClientIp => TAG_IP,
        KeyPart::Route => TAG_ROUTE,
        KeyPart::Header(_) => TAG_HEADER,
        KeyPart::Claim(_) => TAG_CLAIM,
    }
}

/// An iterator with a known length (header values are a linked list without one).
struct Counted<I>(I, usize);

impl<'v, I: Iterator<Item = &'v [u8]>> Iterator for Counted<I> {
    type Item = &'v [u8];
    fn next(&mut self) -> Option<&'v [u8]> {
        let v = self.0.next()?;
        self.1 = self.1.saturating_sub(1);
        Some(v)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.1, Some(self.1))
    }
}

impl<'v, I: Iterator<Item = &'v [u8]>> ExactSizeIterator for Counted<I> {}

/// Fuzz entry (see [`crate::fuzzing`]): line 1 is a key spec (`client_ip,header:x-api-key,…`),
/// line 2 a client address, the rest `name: value` request headers. The key of one request
/// is the same every time it is built, and framing keeps distinct parts apart.
pub(crate) fn fuzz(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let parts: Vec<String> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::to_string)
        .collect();
    let Ok(parts) = KeyPart::parse_all(&parts) else {
        return;
    };
    let client_ip = lines.next().and_then(|l| l.trim().parse().ok());
    let Ok(mut header) = pingora_http::RequestHeader::build("GET", b"/", None) else {
        return;
    };
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let _ = header.append_header(name.trim().to_string(), value.trim());
        }
    }
    let info = RequestInfo {
        header: &mut header,
        client_ip,
        route: "fuzz",
        request_id: "id",
    };
    let state = FilterState::default();
    let secret = HashSecret::new();
    for on_missing in [
        OnMissingKey::Empty,
        OnMissingKey::Skip,
        OnMissingKey::Reject,
    ] {
        let spec = KeySpec {
            parts: parts.clone(),
            on_missing,
        };
        let mut first = SipSink::new(&secret);
        let mut second = SipSink::new(&secret);
        let outcome = spec.write(&info, &state, &mut first);
        assert_eq!(outcome, spec.write(&info, &state, &mut second));
        assert!(
            first.finish() == second.finish(),
            "the same request keyed two ways"
        );
        let _ = spec.describe();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use pingora_http::RequestHeader;

    use super::*;

    /// Collects the framed bytes.
    struct Bytes(Vec<u8>);
    impl KeySink for Bytes {
        fn write(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
    }

    pub(crate) fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut h = RequestHeader::build("GET", b"/", None).expect("request");
        for (k, v) in headers {
            h.append_header(k.to_string(), *v).expect("header");
        }
        h
    }

    fn framed(
        spec: &KeySpec,
        headers: &[(&str, &str)],
        ip: Option<IpAddr>,
        claims: Option<serde_json::Value>,
    ) -> (KeyOutcome, Vec<u8>) {
        let mut header = request(headers);
        let info = RequestInfo {
            header: &mut header,
            client_ip: ip,
            route: "r",
            request_id: "id",
        };
        let mut state = FilterState::default();
        if let Some(serde_json::Value::Object(map)) = claims {
            state
                .extensions
                .insert(crate::filter::VerifiedClaims(Arc::new(map)));
        }
        let mut sink = Bytes(Vec::new());
        let outcome = spec.write(&info, &state, &mut sink);
        (outcome, sink.0)
    }

    fn spec(parts: &[&str], on_missing: OnMissingKey) -> KeySpec {
        let parts: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
        KeySpec {
            parts: KeyPart::parse_all(&parts).unwrap(),
            on_missing,
        }
    }

    #[test]
    fn composite_keys_are_unambiguous() {
        let s = spec(&["header:a", "header:b"], OnMissingKey::Empty);
        let (_, one) = framed(&s, &[("a", "x:y"), ("b", "z")], None, None);
        let (_, two) = framed(&s, &[("a", "x"), ("b", "y:z")], None, None);
        let (_, three) = framed(&s, &[("a", "x"), ("a", "y"), ("b", "z")], None, None);
        assert_ne!(one, two);
        assert_ne!(one, three);
        assert_ne!(two, three);
    }

    #[test]
    fn missing_parts_follow_the_configured_behaviour() {
        let empty = spec(&["header:x-client"], OnMissingKey::Empty);
        let (o, missing) = framed(&empty, &[], None, None);
        assert_eq!(o, KeyOutcome::Limit);
        let (_, blank) = framed(&empty, &[("x-client", "")], None, None);
        assert_eq!(missing, blank, "missing is the empty string");
        let (_, set) = framed(&empty, &[("x-client", "a")], None, None);
        assert_ne!(missing, set);

        let skip = spec(&["claim:sub"], OnMissingKey::Skip);
        assert_eq!(framed(&skip, &[], None, None).0, KeyOutcome::Skip);
        let claims = serde_json::json!({"sub": "alice", "n": 7});
        assert_eq!(framed(&skip, &[], None, Some(claims)).0, KeyOutcome::Limit);
        let reject = spec(&["client_ip"], OnMissingKey::Reject);
        assert_eq!(framed(&reject, &[], None, None).0, KeyOutcome::Reject);
    }

    #[test]
    fn claims_ips_and_routes_frame_differently() {
        let s = spec(&["client_ip", "route", "claim:sub"], OnMissingKey::Empty);
        let ip4: IpAddr = "10.0.0.1".parse().unwrap();
        let ip6: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let alice = serde_json::json!({"sub": "alice"});
        let bob = serde_json::json!({"sub": "bob"});
        let (_, a) = framed(&s, &[], Some(ip4), Some(alice.clone()));
        let (_, b) = framed(&s, &[], Some(ip4), Some(bob));
        let (_, c) = framed(&s, &[], Some(ip6), Some(alice));
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn bucket_keys_are_stable_per_filter_and_differ_between_filters() {
        let s = spec(&["header:x-client"], OnMissingKey::Empty);
        let mut header = request(&[("x-client", "a")]);
        let info = RequestInfo {
            header: &mut header,
            client_ip: None,
            route: "r",
            request_id: "id",
        };
        let state = FilterState::default();
        let hashing = HashSecret::new();
        let key = |h: &HashSecret| {
            let mut sink = SipSink::new(h);
            s.write(&info, &state, &mut sink);
            sink.finish()
        };
        assert_eq!(key(&hashing), key(&hashing));
        // However the bytes are cut into writes, the key is the same.
        let long = vec![7u8; 150];
        let mut one = SipSink::new(&hashing);
        one.write(&long);
        let mut many = SipSink::new(&hashing);
        for chunk in long.chunks(3) {
            many.write(chunk);
        }
        assert_eq!(one.finish(), many.finish());
        assert_ne!(key(&hashing), key(&HashSecret::new()));
        let mut sha = Sha(Sha256::new());
        s.write(&info, &state, &mut sha);
        assert_eq!(sha.hex().len(), 32);
    }
}
