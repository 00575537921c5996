//! W3C Trace Context (`traceparent`): continue the client's trace or start one, and give the
//! hop to the upstream a span id of its own.

/// The trace context of one request as the gateway forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16-byte trace id, shared by every hop of the trace.
    pub trace_id: [u8; 16],
    /// 8-byte id of the gateway's span: the parent id the upstream sees.
    pub span_id: [u8; 8],
    /// The client's parent id, when the request continued a trace.
    pub parent_id: Option<[u8; 8]>,
    /// Trace flags (bit 0: sampled), kept from the client.
    pub flags: u8,
}

impl TraceContext {
    /// Continue the trace of an incoming `traceparent` value, or start a new one when it is
    /// absent or malformed (per the spec, a bad header is ignored rather than rejected).
    pub fn from_header(header: Option<&[u8]>) -> TraceContext {
        match header.and_then(parse) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id: new_span_id(),
                parent_id: Some(parent),
                flags,
            },
            None => TraceContext {
                trace_id: new_trace_id(),
                span_id: new_span_id(),
                parent_id: None,
                flags: 0x01,
            },
        }
    }

    /// The `traceparent` value to send upstream.
    pub fn header_value(&self) -> String {
        ascii(&self.header_bytes())
    }

    /// The `traceparent` value to send upstream, as ASCII bytes on the stack (the proxy makes
    /// a header value of them without an intermediate `String`).
    pub fn header_bytes(&self) -> [u8; 55] {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        write_hex(&mut out[3..35], &self.trace_id);
        out[35] = b'-';
        write_hex(&mut out[36..52], &self.span_id);
        out[52] = b'-';
        write_hex(&mut out[53..], &[self.flags]);
        out
    }

    /// The trace id as 32 hex digits (for logs).
    pub fn trace_id_hex(&self) -> String {
        let mut out = [0u8; 32];
        write_hex(&mut out, &self.trace_id);
        ascii(&out)
    }
}

/// Each byte's two lower-case hex digits, so that a byte costs one table read.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0x0f]];
        i += 1;
    }
    pairs
};

/// Lower-case hex into `out` (twice as long as `bytes`), without `fmt`: a `write!` per byte
/// cost ~6k instructions per request.
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

/// A new random (version 4) UUID as hyphenated lower-case text, for request ids.
pub(crate) fn uuid_text() -> [u8; 36] {
    let id = uuid::Builder::from_random_bytes(random_id()).into_uuid();
    let b = id.as_bytes();
    let mut out = [b'-'; 36];
    for (at, range) in [(0, 0..4), (9, 4..6), (14, 6..8), (19, 8..10), (24, 10..16)] {
        let len = 2 * range.len();
        write_hex(&mut out[at..at + len], &b[range]);
    }
    out
}

fn ascii(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = random_id();
        if id != [0; 16] {
            return id;
        }
    }
}

/// Random bytes for ids (trace ids, span ids, request ids): unique, not secret. Each thread
/// draws them from its own small generator (xoshiro256++), seeded once from the OS's, as
/// OpenTelemetry's SDKs do; the cryptographic thread generator cost ~500 instructions per
/// request for ids no one may treat as credentials anyway.
pub(crate) fn random_id<const N: usize>() -> [u8; N] {
    use rand::{Rng, SeedableRng};
    thread_local! {
        static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
            std::cell::RefCell::new(rand::rngs::SmallRng::from_rng(&mut rand::rng()));
    }
    IDS.with(|rng| {
        let mut out = [0u8; N];
        rng.borrow_mut().fill(&mut out[..]);
        out
    })
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = random_id();
        if id != [0; 8] {
            return id;
        }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None, // the spec allows lower-case hex only
    }
}

fn decode<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks(2).enumerate() {
        out[i] = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(out)
}

/// `version-traceid-parentid-flags`; version `ff`, all-zero ids and bad hex are invalid.
/// Future versions may append fields after the flags, which are ignored.
fn parse(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let version = decode::<1>(parts.next()?.as_bytes())?[0];
    let trace_id = decode::<16>(parts.next()?.as_bytes())?;
    let parent = decode::<8>(parts.next()?.as_bytes())?;
    let flags = decode::<1>(parts.next()?.as_bytes())?[0];
    if version == 0xff || (version == 0 && parts.next().is_some()) {
        return None;
    }
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_is_continued_with_a_new_span() {
        let ctx = TraceContext::from_header(Some(VALID.as_bytes()));
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            ctx.parent_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        let out = ctx.header_value();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_ne!(
            &out[36..52],
            "00f067aa0ba902b7",
            "the upstream gets a new parent id"
        );
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let ctx = TraceContext::from_header(Some(bad.as_bytes()));
            assert_eq!(ctx.parent_id, None, "{bad:?} must not be continued");
            assert_eq!(ctx.header_value().len(), 55);
            assert_eq!(ctx.header_value().as_bytes(), ctx.header_bytes());
        }
    }

    #[test]
    fn uuids_are_version_4_in_their_canonical_text() {
        let text = uuid_text();
        let text = std::str::from_utf8(&text).unwrap();
        let parsed = uuid::Uuid::parse_str(text).unwrap();
        assert_eq!(parsed.hyphenated().to_string(), text);
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(uuid_text(), uuid_text());
    }

    #[test]
    fn future_versions_may_carry_more_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        let ctx = TraceContext::from_header(Some(v.as_bytes()));
        assert!(ctx.parent_id.is_some());
    }
}
