//! Request ids and the trace fields a request arrives with: the `x-request-id` the gateway
//! echoes to the client and sends upstream, and the `traceparent` it sends upstream.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use super::trace::TraceContext;

/// `x-request-id`: the client's usable one, or one the gateway mints.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A request's id, held as the header value it is sent as: echoing it upstream and to the
/// client clones a reference count instead of copying the text each time.
#[derive(Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// No id yet (the request failed before `request_filter`).
    pub const NONE: RequestId = RequestId(HeaderValue::from_static(""));

    /// A client's own id, kept when it is short printable ASCII (else the gateway mints one).
    pub fn given(header: Option<&HeaderValue>) -> Option<RequestId> {
        header
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= 128
                    && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
            })
            .map(|id| RequestId(id.clone()))
    }

    /// A new random (v4) UUID.
    pub fn mint() -> RequestId {
        RequestId(shared_value(super::trace::uuid_text()))
    }

    pub fn as_str(&self) -> &str {
        // Only printable ASCII is ever stored, which `to_str` accepts.
        self.0.to_str().unwrap_or_default()
    }

    /// Whether there is no id yet ([`RequestId::NONE`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The id as a header value (a shared reference, not a copy).
    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

/// The request's id (the client's usable one, or a new one) and the `traceparent` value to
/// send upstream; when both are new they share one allocation.
pub fn request_ids(given: Option<&HeaderValue>, trace: &TraceContext) -> (RequestId, HeaderValue) {
    if let Some(id) = RequestId::given(given) {
        return (id, shared_value(trace.header_bytes()));
    }
    let mut both = [0u8; 36 + 55];
    both[..36].copy_from_slice(&super::trace::uuid_text());
    both[36..].copy_from_slice(&trace.header_bytes());
    let both = Bytes::from_owner(both);
    (
        RequestId(own_value(both.slice(..36))),
        own_value(both.slice(36..)),
    )
}

/// The client's `traceparent` and `x-request-id` (the first of each, as `get` finds them). A
/// short header is read in one pass: comparing a handful of names costs less than two hashed
/// lookups of names `http` does not know. A long one is looked up.
pub fn trace_fields(fields: &http::HeaderMap) -> (Option<&HeaderValue>, Option<&HeaderValue>) {
    if fields.keys_len() > 8 {
        return (fields.get(&TRACEPARENT), fields.get(&X_REQUEST_ID));
    }
    let (mut trace, mut id) = (None, None);
    for (name, value) in fields {
        if *name == TRACEPARENT {
            trace = trace.or(Some(value));
        } else if *name == X_REQUEST_ID {
            id = id.or(Some(value));
        }
    }
    (trace, id)
}

/// A header value of bytes the gateway wrote itself (hex, digits, dashes). `from_owner` makes
/// one allocation that every clone shares, where a value copied from a slice is reallocated
/// as shared storage on its first clone.
pub(crate) fn shared_value<const N: usize>(ascii: [u8; N]) -> HeaderValue {
    own_value(Bytes::from_owner(ascii))
}

/// A header value of the gateway's own printable ASCII, shared as it is.
fn own_value(ascii: Bytes) -> HeaderValue {
    HeaderValue::from_maybe_shared(ascii).expect("the gateway's own ids are printable ASCII")
}

/// The one writer of `x-request-id` on a response: every answer, proxied or the gateway's
/// own, gets the request's id through here.
pub(crate) fn stamp(f: &mut dyn crate::fields::Fields, id: &RequestId) {
    f.insert(&X_REQUEST_ID, id.header_value());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_or_minted() {
        let trace = TraceContext::from_header(None);
        let traceparent = trace.header_value();
        let kept = HeaderValue::from_static("abc-123");
        let (id, up) = request_ids(Some(&kept), &trace);
        assert_eq!(
            (id.as_str(), up.to_str().unwrap()),
            ("abc-123", &*traceparent)
        );
        let spaced = HeaderValue::from_static("a b");
        assert_ne!(request_ids(Some(&spaced), &trace).0.as_str(), "a b");
        let (minted, up) = request_ids(None, &trace);
        assert_eq!(up, &*traceparent);
        assert_eq!(minted.as_str().len(), 36);
        assert_eq!(minted.header_value(), minted.as_str());
        assert!(uuid::Uuid::parse_str(minted.as_str()).is_ok());
        assert_ne!(request_ids(None, &trace).0.as_str(), minted.as_str());
    }

    #[test]
    fn trace_fields_find_the_first_of_each_in_short_and_long_headers() {
        let mut fields = http::HeaderMap::new();
        fields.append(&X_REQUEST_ID, HeaderValue::from_static("first"));
        fields.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        fields.append(&TRACEPARENT, HeaderValue::from_static("tp"));
        let owned = |(t, i): (Option<&HeaderValue>, Option<&HeaderValue>)| (t.cloned(), i.cloned());
        let short = owned(trace_fields(&fields));
        assert_eq!(short.0.as_ref().unwrap(), "tp");
        assert_eq!(short.1.as_ref().unwrap(), "first");
        for i in 0..10 {
            fields.insert(
                format!("x-pad-{i}").parse::<HeaderName>().unwrap(),
                i.into(),
            );
        }
        assert!(fields.keys_len() > 8);
        assert_eq!(owned(trace_fields(&fields)), short);
        assert_eq!(trace_fields(&http::HeaderMap::new()), (None, None));
    }
}
