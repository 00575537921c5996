//! `application/problem+json` (RFC 9457) answers the gateway writes itself: no route, bad
//! request path, upstream failures. Each carries the request id so a user can quote it.

use bytes::Bytes;
use http::StatusCode;
use pingora_http::ResponseHeader;
use serde::Serialize;

/// The JSON body of a problem answer.
#[derive(Debug, Serialize)]
pub struct Problem<'a> {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The status' reason phrase.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What happened, for a human.
    pub detail: &'a str,
    /// The request's `x-request-id`.
    pub request_id: &'a str,
}

/// The header and body of a problem answer.
pub fn render(status: u16, detail: &str, request_id: &str) -> (ResponseHeader, Bytes) {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let problem = Problem {
        kind: "about:blank",
        title: code.canonical_reason().unwrap_or("Error"),
        status: code.as_u16(),
        detail,
        request_id,
    };
    let body = Bytes::from(serde_json::to_vec(&problem).unwrap_or_default());
    let mut header = ResponseHeader::build(code, Some(5)).expect("static status");
    // Header values come from our own code or from a validated request id.
    let _ = header.insert_header("content-type", "application/problem+json");
    let _ = header.insert_header("content-length", body.len().to_string());
    let _ = header.insert_header("cache-control", "no-store");
    let _ = header.insert_header("x-request-id", request_id);
    (header, body)
}
