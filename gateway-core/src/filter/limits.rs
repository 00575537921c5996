//! `limits`: caps on the request's body and header.
//!
//! ```toml
//! [filters.small]
//! kind = "limits"
//! max_body_bytes = 1048576    # 413 above this
//! max_header_bytes = 8192     # 431 above this: the sum of every field's name + value bytes
//! max_header_count = 64       # 431 above this many field lines
//! ```
//!
//! Every setting is optional but at least one must be set. The body is checked twice: a
//! `Content-Length` above the cap is answered before any body byte is read (the upstream
//! never sees the request); a body without one (chunked, HTTP/2) is counted as it streams and
//! refused at the first chunk that crosses the cap. That chunk and the end of the body are
//! never forwarded, so the upstream sees an incomplete request and its connection is dropped.
//!
//! | request | answer |
//! |---|---|
//! | `Content-Length` > `max_body_bytes` | 413 at once, body unread, upstream not contacted |
//! | streamed body crosses `max_body_bytes` | 413 (reason `body_too_large`), connection closed, upstream request left incomplete |
//! | body ≤ `max_body_bytes` | forwarded intact |
//! | more than `max_header_count` field lines | 431 (reason `too_many_headers`) |
//! | names + values > `max_header_bytes` | 431 (reason `headers_too_large`) |
//!
//! Header size counts the fields as the client sent them (not the request line; Pingora itself
//! refuses a request head over 1 MiB and more than 256 field lines with 400). List `limits`
//! first on a route so filters that add request headers (`headers`) do not count against the
//! client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;

use super::{Decision, Filter, FilterSpec, FilterState, Reply, RequestInfo};

/// Pingora refuses a request with more field lines than this before any filter runs.
const PINGORA_MAX_HEADERS: usize = 256;

/// Settings of a `limits` filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: Option<u64>,
    /// Largest sum of header field name and value bytes accepted.
    pub max_header_bytes: Option<usize>,
    /// Most header field lines accepted.
    pub max_header_count: Option<usize>,
}

/// Builds a `limits` filter.
pub fn factory(spec: &FilterSpec<'_>) -> Result<Arc<dyn Filter>, String> {
    let cfg: LimitsConfig = spec.parse()?;
    Ok(Arc::new(Limits::new(&cfg)?))
}

/// Tells one `limits` filter's body count from another's on the same route.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A compiled set of request limits.
#[derive(Debug)]
pub struct Limits {
    id: u64,
    max_body: Option<u64>,
    max_header_bytes: Option<usize>,
    max_header_count: Option<usize>,
}

/// Body bytes seen so far, per `limits` filter of the request.
#[derive(Debug, Clone, Default)]
struct BodySeen(Vec<(u64, u64)>);

impl Limits {
    /// Check the settings.
    pub fn new(cfg: &LimitsConfig) -> Result<Limits, String> {
        let mut errors = Vec::new();
        if cfg.max_body_bytes.is_none()
            && cfg.max_header_bytes.is_none()
            && cfg.max_header_count.is_none()
        {
            errors.push(
                "set at least one of max_body_bytes, max_header_bytes, max_header_count"
                    .to_string(),
            );
        }
        if cfg.max_header_bytes == Some(0) {
            errors.push("max_header_bytes: must be at least 1".to_string());
        }
        match cfg.max_header_count {
            Some(0) => errors.push("max_header_count: must be at least 1".to_string()),
            Some(n) if n > PINGORA_MAX_HEADERS => errors.push(format!(
                "max_header_count: {n} can never apply; requests with more than \
                 {PINGORA_MAX_HEADERS} header lines are refused before filters run"
            )),
            _ => {}
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(Limits {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            max_body: cfg.max_body_bytes,
            max_header_bytes: cfg.max_header_bytes,
            max_header_count: cfg.max_header_count,
        })
    }

    fn too_large(&self, limit: u64) -> Reply {
        Reply::problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the {limit} bytes this route accepts"),
            "body_too_large",
        )
    }

    /// The 431 answer for a header over either cap, if any.
    fn check_header(&self, headers: &http::HeaderMap) -> Option<Reply> {
        if let Some(max) = self.max_header_count {
            if headers.len() > max {
                return Some(Reply::problem(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("the request has more than {max} header fields"),
                    "too_many_headers",
                ));
            }
        }
        if let Some(max) = self.max_header_bytes {
            let size: usize = headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum();
            if size > max {
                return Some(Reply::problem(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("the request header fields are larger than {max} bytes"),
                    "headers_too_large",
                ));
            }
        }
        None
    }
}

/// The declared body length, when there is one readable `Content-Length`.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[async_trait]
impl Filter for Limits {
    async fn on_request(&self, req: &mut RequestInfo<'_>, _state: &mut FilterState) -> Decision {
        if let Some(reply) = self.check_header(&req.header.headers) {
            return Decision::Respond(reply);
        }
        if let Some(max) = self.max_body {
            if content_length(&req.header.headers).is_some_and(|n| n > max) {
                return Decision::Respond(self.too_large(max));
            }
        }
        Decision::Continue
    }

    fn on_request_body(
        &self,
        chunk: Option<&Bytes>,
        _end: bool,
        state: &mut FilterState,
    ) -> Result<(), Reply> {
        let (Some(max), Some(chunk)) = (self.max_body, chunk) else {
            return Ok(());
        };
        let seen = state.extensions.get_or_insert_default::<BodySeen>();
        let total = match seen.0.iter_mut().find(|(id, _)| *id == self.id) {
            Some((_, n)) => n,
            None => {
                seen.0.push((self.id, 0));
                &mut seen.0.last_mut().expect("just pushed").1
            }
        };
        *total = total.saturating_add(chunk.len() as u64);
        if *total > max {
            return Err(self.too_large(max));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::RequestHeader;

    fn limits(text: &str) -> Result<Arc<dyn Filter>, String> {
        let table: toml::Table = toml::from_str(text).expect("toml");
        factory(&FilterSpec {
            name: "limits",
            settings: &table,
        })
    }

    async fn request(f: &dyn Filter, headers: &[(&str, &str)]) -> Option<Reply> {
        let mut req = RequestHeader::build("POST", b"/", None).expect("request");
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("header");
        }
        let mut info = RequestInfo {
            header: &mut req,
            client_ip: None,
            route: "r",
            request_id: "id",
        };
        match f.on_request(&mut info, &mut FilterState::default()).await {
            Decision::Respond(reply) => Some(reply),
            Decision::Continue => None,
        }
    }

    #[test]
    fn configuration_errors_table() {
        let cases = [
            ("", "set at least one"),
            ("max_header_count = 0", "at least 1"),
            ("max_header_count = 300", "can never apply"),
            ("max_header_bytes = 0", "at least 1"),
            ("max_body_bytes = -1", "invalid value"),
            ("max_body = 10", "unknown field"),
        ];
        for (text, expected) in cases {
            let err = limits(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} is refused"));
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    /// (case, request header fields, expected status and reason).
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        Option<(u16, &'static str)>,
    );

    #[tokio::test]
    async fn request_head_table() {
        let f = limits("max_body_bytes = 10\nmax_header_bytes = 20\nmax_header_count = 2")
            .expect("valid");
        let cases: [Case; 7] = [
            ("small", &[("a", "1")], None),
            (
                "content-length at the cap",
                &[("content-length", "10")],
                None,
            ),
            (
                "content-length over",
                &[("content-length", "11")],
                Some((413, "body_too_large")),
            ),
            (
                "unparsable content-length is left to the body count",
                &[("content-length", "x")],
                None,
            ),
            ("count at the cap", &[("a", "1"), ("b", "2")], None),
            (
                "count over",
                &[("a", "1"), ("b", "2"), ("a", "3")],
                Some((431, "too_many_headers")),
            ),
            (
                "bytes over (name + value = 21)",
                &[("abcdefghij", "01234567890")],
                Some((431, "headers_too_large")),
            ),
        ];
        for (case, headers, expected) in cases {
            let got = request(f.as_ref(), headers)
                .await
                .map(|r| (r.status.as_u16(), r.reason));
            assert_eq!(got, expected, "{case}");
        }
        let at_cap = request(f.as_ref(), &[("abcdefghij", "0123456789")]).await;
        assert!(at_cap.is_none(), "exactly 20 bytes pass");
    }

    #[test]
    fn streamed_body_is_counted_per_filter() {
        let a = limits("max_body_bytes = 10").expect("valid");
        let b = limits("max_body_bytes = 15").expect("valid");
        let mut state = FilterState::default();
        let chunk = Bytes::from_static(b"123456");
        for f in [&a, &b] {
            assert!(f.on_request_body(Some(&chunk), false, &mut state).is_ok());
        }
        // 12 bytes: over a's cap, within b's (each counts once, not twice).
        let err = a
            .on_request_body(Some(&chunk), false, &mut state)
            .expect_err("12 > 10");
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.reason, "body_too_large");
        assert!(b.on_request_body(Some(&chunk), false, &mut state).is_ok());
        assert!(b.on_request_body(None, true, &mut state).is_ok());
    }
}
