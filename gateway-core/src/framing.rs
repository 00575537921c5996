//! Request framing and header names, checked before anything routes or forwards the
//! request.
//!
//! Pingora's HTTP/1 reader already refuses several ambiguous framings with 400 and closes the
//! connection: differing or unparseable `Content-Length` values, a `Transfer-Encoding` whose
//! last coding is not `chunked`, `Transfer-Encoding` on HTTP/1.0, whitespace before a colon
//! and obsolete line folding. A request with both `Transfer-Encoding` and `Content-Length` it
//! reads by the former (dropping the latter) and closes afterwards, which RFC 9112 §6.1
//! allows, but such a message "ought to be handled as an error" and a proxy that forwards it
//! lets the two sides disagree on where it ends: the gateway refuses it (400, connection
//! closed), as nginx does.
//!
//! Header names with an underscore are dropped, refused or allowed as
//! `server.header_underscores` says ([`HeaderUnderscores`]).

use http::header::{HeaderName, TRANSFER_ENCODING};
use pingora_proxy::Session;

use crate::config::HeaderUnderscores;

/// Why a request is answered 400 before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    /// What to tell the client.
    pub detail: &'static str,
    /// The connection must not carry another request (its framing is in doubt).
    pub close: bool,
}

/// Checks the request of `session`, dropping header fields with `_` in their names when
/// `underscores` says so.
pub(crate) fn check(session: &mut Session, underscores: HeaderUnderscores) -> Result<(), Refused> {
    let req = session.req_header();
    // `Content-Length` is gone from the parsed header by now (Pingora drops it when
    // `Transfer-Encoding` is present): the raw bytes tell whether it was there. Only a
    // request with `Transfer-Encoding` pays for reading them.
    if req.headers.contains_key(TRANSFER_ENCODING) {
        let raw = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        if raw.is_some_and(|raw| names_content_length(&raw)) {
            return Err(Refused {
                detail: "a request may not carry both Transfer-Encoding and Content-Length",
                close: true,
            });
        }
    }
    if underscores == HeaderUnderscores::Allow {
        return Ok(());
    }
    let req = session.req_header();
    if !req.headers.keys().any(|n| n.as_str().contains('_')) {
        return Ok(());
    }
    if underscores == HeaderUnderscores::Reject {
        return Err(Refused {
            detail: "header names with \"_\" are refused here",
            close: false,
        });
    }
    let names: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    let req = session.req_header_mut();
    for name in &names {
        req.remove_header(name);
    }
    Ok(())
}

/// Whether a raw request head (request line, then field lines) has a `Content-Length` field.
fn names_content_length(raw: &[u8]) -> bool {
    raw.split(|b| *b == b'\n').skip(1).any(|line| {
        line.iter()
            .position(|b| *b == b':')
            .is_some_and(|colon| line[..colon].eq_ignore_ascii_case(b"content-length"))
    })
}

/// Whether `req` declares a body (a non-zero `Content-Length` or any `Transfer-Encoding`).
pub fn has_body(req: &pingora_http::RequestHeader) -> bool {
    let length = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || req.headers.contains_key(TRANSFER_ENCODING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_found_in_any_case_but_not_in_the_request_line_or_a_value() {
        let raw = b"POST /content-length: HTTP/1.1\r\nHost: a\r\nX-Note: content-length: 1\r\n\r\n";
        assert!(!names_content_length(raw));
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\ncOnTeNt-LeNgTh: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(names_content_length(raw));
    }
}
