//! The gateway's own header fields, set without Pingora's per-field costs.
//!
//! A Pingora header keeps two maps: the fields (`http::HeaderMap`) and, beside it, every name
//! as the peer spelled it, so an HTTP/1 hop can repeat the peer's case. Its `insert_header` and
//! `append_header` parse each name again and copy a name `http` does not know (`x-request-id`,
//! `traceparent`, `ratelimit`, …) twice, into both maps, which grow from an exact fit one field
//! at a time. The gateway sets five fields on every request and one or more on every response:
//! through that API they cost more than the rest of Gatehouse's per-request work together.
//!
//! So by default ([`crate::config::ServerConfig::preserve_header_case`] off) the gateway edits
//! the field map itself, with its names pre-parsed and room reserved once. The header then
//! keeps no spelling: HTTP/1 names go out in lower case (a few common ones, `Content-Type`,
//! `Host`, …, title-cased), as every HTTP/2 hop sends them, and as Envoy and HAProxy send them.
//! Field names are case-insensitive (RFC 9110 §5.1); a backend that wants its own spelling
//! back can have it with `preserve_header_case = true`, at Pingora's price.

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};

/// Header fields as the gateway edits them: a plain map, or a Pingora header that keeps case.
pub(crate) trait Fields {
    /// The fields, to read.
    fn map(&self) -> &HeaderMap;
    /// Replace every value of `name` with `value`.
    fn insert(&mut self, name: &HeaderName, value: HeaderValue);
    /// Add `value` after any values `name` has.
    fn append(&mut self, name: &HeaderName, value: HeaderValue);
    /// Drop every value of `name`.
    fn remove(&mut self, name: &HeaderName);
}

impl Fields for HeaderMap {
    fn map(&self) -> &HeaderMap {
        self
    }

    fn insert(&mut self, name: &HeaderName, value: HeaderValue) {
        // A name from `from_static` or a standard one: cloning it copies a pointer.
        HeaderMap::insert(self, name.clone(), value);
    }

    fn append(&mut self, name: &HeaderName, value: HeaderValue) {
        HeaderMap::append(self, name.clone(), value);
    }

    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
}

/// Pingora's own API, which records each name's case; errors are a name `http` refuses (never
/// one the gateway uses) or a map past 32 768 fields, which a parsed header cannot reach.
macro_rules! cased_fields {
    ($header:ty) => {
        impl Fields for $header {
            fn map(&self) -> &HeaderMap {
                &self.headers
            }

            fn insert(&mut self, name: &HeaderName, value: HeaderValue) {
                let _ = self.insert_header(name.clone(), value);
            }

            fn append(&mut self, name: &HeaderName, value: HeaderValue) {
                let _ = self.append_header(name.clone(), value);
            }

            fn remove(&mut self, name: &HeaderName) {
                if self.headers.contains_key(name) {
                    self.remove_header(name);
                }
            }
        }
    };
}
cased_fields!(RequestHeader);
cased_fields!(ResponseHeader);

/// Run `edit` on a request's fields: through Pingora's API when `preserve_case` is set and the
/// header has case to keep, else on its field map directly, with room for `extra` more fields.
pub(crate) fn edit_request<R>(
    req: &mut RequestHeader,
    preserve_case: bool,
    extra: usize,
    edit: impl FnOnce(&mut dyn Fields) -> R,
) -> R {
    if preserve_case && req.has_case() {
        return edit(req);
    }
    // What `RequestHeader::from(Parts)` does not carry over: an HTTP/2 request's END_STREAM
    // choice and a request-target the URI does not reproduce (absolute form, which the proxy
    // rewrites to the path before it gets here, but this must not depend on that).
    let end_stream = req.send_end_stream();
    let verbatim = (req.raw_path() != uri_target(req)).then(|| req.raw_path().to_vec());
    let mut parts = http::request::Parts::from(std::mem::replace(req, empty_request()));
    parts.headers.reserve(extra);
    let out = edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    if let Some(end_stream) = end_stream {
        req.set_send_end_stream(end_stream);
    }
    if let Some(target) = verbatim {
        // It parsed when the request arrived, so it parses again.
        let _ = req.set_raw_path(&target);
    }
    out
}

/// Drop a request header's record of how the client spelled each name (when spellings are not
/// kept), so the edits after it, and Pingora's copy of it for the upstream, skip the second map.
pub(crate) fn forget_request_case(req: &mut RequestHeader) {
    if req.has_case() {
        edit_request(req, false, 0, |_| ());
    }
}

/// Run `edit` on a response's fields; as [`edit_request`].
pub(crate) fn edit_response<R>(
    resp: &mut ResponseHeader,
    preserve_case: bool,
    extra: usize,
    edit: impl FnOnce(&mut dyn Fields) -> R,
) -> R {
    if preserve_case && resp.has_case() {
        return edit(resp);
    }
    // The reason phrase is kept apart from the parts; only a non-standard one needs keeping.
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, empty_response()));
    parts.headers.reserve(extra);
    let out = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        let _ = resp.set_reason_phrase(reason.as_deref());
    }
    out
}

/// The target the URI reproduces (what Pingora sends when it keeps no raw copy).
fn uri_target(req: &RequestHeader) -> &[u8] {
    req.uri
        .path_and_query()
        .map_or(b"/", |p| p.as_str().as_bytes())
}

/// A placeholder while the real header's parts are out; allocates nothing.
fn empty_request() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

fn empty_response() -> ResponseHeader {
    ResponseHeader::from(http::Response::new(()).into_parts().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const X_ONE: HeaderName = HeaderName::from_static("x-one");

    fn wire_req(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    fn request() -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        req.append_header("Host", "example.com").unwrap();
        req.append_header("X-Custom-Name", "v").unwrap();
        req
    }

    #[test]
    fn a_direct_edit_keeps_everything_but_the_spelling() {
        let mut req = request();
        req.extensions_mut().insert(7u8);
        edit_request(&mut req, false, 1, |f| {
            f.insert(&X_ONE, HeaderValue::from_static("1"));
            f.append(&X_ONE, HeaderValue::from_static("2"));
            f.remove(&HeaderName::from_static("x-absent"));
        });
        assert!(!req.has_case());
        assert_eq!(req.raw_path(), b"/a?b=1");
        assert_eq!(req.method, http::Method::GET);
        assert_eq!(req.extensions.get::<u8>(), Some(&7));
        let wire = wire_req(&req);
        assert!(wire.contains("Host: example.com\r\n"), "{wire}");
        assert!(wire.contains("x-custom-name: v\r\n"), "{wire}");
        assert!(wire.contains("x-one: 1\r\nx-one: 2\r\n"), "{wire}");
    }

    #[test]
    fn preserving_case_goes_through_pingora() {
        let mut req = request();
        edit_request(&mut req, true, 1, |f| {
            f.insert(&X_ONE, HeaderValue::from_static("1"));
            assert_eq!(f.map().get("x-custom-name").unwrap(), "v");
        });
        assert!(req.has_case());
        let wire = wire_req(&req);
        assert!(wire.contains("X-Custom-Name: v\r\n"), "{wire}");
        assert!(wire.contains("x-one: 1\r\n"), "{wire}");
    }

    #[test]
    fn an_absolute_form_target_survives_a_direct_edit() {
        let mut req = RequestHeader::build("GET", b"http://example.com/x?y", None).unwrap();
        edit_request(&mut req, false, 0, |_| ());
        assert_eq!(req.raw_path(), b"http://example.com/x?y");
    }

    #[test]
    fn an_h2_request_keeps_its_end_stream_choice() {
        let mut req = RequestHeader::build_no_case("POST", b"/", None).unwrap();
        req.set_version(http::Version::HTTP_2);
        req.set_send_end_stream(false);
        edit_request(&mut req, false, 0, |_| ());
        assert_eq!(req.send_end_stream(), Some(false));
    }

    #[test]
    fn a_response_keeps_status_version_and_a_custom_reason() {
        let mut resp = ResponseHeader::build(299, None).unwrap();
        resp.set_reason_phrase(Some("Fine Indeed")).unwrap();
        resp.append_header("Content-Type", "text/plain").unwrap();
        edit_response(&mut resp, false, 1, |f| {
            f.insert(&X_ONE, HeaderValue::from_static("1"))
        });
        assert_eq!(resp.status.as_u16(), 299);
        assert_eq!(resp.get_reason_phrase(), Some("Fine Indeed"));
        let mut buf = Vec::new();
        resp.header_to_h1_wire(&mut buf);
        let wire = String::from_utf8(buf).unwrap();
        assert!(wire.contains("Content-Type: text/plain\r\n"), "{wire}");
        assert!(wire.contains("x-one: 1\r\n"), "{wire}");

        let mut ok = ResponseHeader::build(200, None).unwrap();
        edit_response(&mut ok, false, 0, |_| ());
        assert_eq!(ok.get_reason_phrase(), Some("OK"));
    }
}
