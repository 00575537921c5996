//! `application/problem+json` (RFC 9457) answers the gateway writes itself: no route, bad
//! request path, upstream failures, and which failure is answered with which status. Each
//! body carries the request id so a user can quote it (the `x-request-id` field is the
//! proxy's to add, as on every response).

use bytes::Bytes;
use http::StatusCode;
use pingora_error::{Error, ErrorSource, ErrorType};
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
    // Header values come from our own code.
    let _ = header.insert_header("content-type", "application/problem+json");
    let _ = header.insert_header("content-length", body.len().to_string());
    let _ = header.insert_header("cache-control", "no-store");
    (header, body)
}

/// The status a failed request is answered with, and what to tell the client; 0 when there
/// is no one to answer (the client hung up).
pub fn for_failure(e: &Error) -> (u16, &'static str) {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(503) => (503, "no healthy backend is available for this route"),
        HTTPStatus(code) => (*code, "the request could not be served"),
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            (504, "the upstream did not answer in time")
        }
        ConnectRefused | ConnectError | ConnectNoRoute | ConnectProxyFailure | SocketError => {
            (502, "the upstream could not be reached")
        }
        TLSHandshakeFailure | InvalidCert | HandshakeError => (
            502,
            "the TLS handshake with the upstream failed (see the gateway's log for why)",
        ),
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "the upstream failed to answer"),
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => (0, ""),
                _ => (400, "the request could not be read"),
            },
            ErrorSource::Internal | ErrorSource::Unset => {
                (500, "the gateway failed to serve the request")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_statuses() {
        let timeout = Error::new(ErrorType::ConnectTimedout);
        assert_eq!(for_failure(&timeout).0, 504);
        let mut refused = Error::new(ErrorType::ConnectRefused);
        refused.esource = ErrorSource::Upstream;
        assert_eq!(for_failure(&refused).0, 502);
        let none = Error::new(ErrorType::HTTPStatus(503));
        assert_eq!(for_failure(&none).0, 503);
    }
}
