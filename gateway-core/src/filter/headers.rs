//! `headers`: set, remove and add header fields on the way in and out.
//!
//! ```toml
//! [filters.tidy]
//! kind = "headers"
//! request_set = { "x-env" = "prod" }            # replace (or add) on the upstream request
//! request_remove = ["x-debug"]                   # drop from the upstream request
//! response_set = { "x-frame-options" = "DENY" } # replace (or add) on the client's response
//! response_remove = ["server", "x-powered-by"]  # drop from the client's response
//! response_add = { "cache-control" = "no-transform" }  # append another line
//! ```
//!
//! In each direction removals run first, then sets, then adds. Names are case-insensitive and
//! every name and value is checked when the config loads. Response changes run in the
//! response phase, so they apply to gateway answers (401, 403, 429, …) as well as proxied ones.
//!
//! Fields that frame the message or belong to one connection (`content-length`,
//! `transfer-encoding`, `connection`, `keep-alive`, `proxy-connection`, `te`, `trailer`,
//! `upgrade`) cannot be touched, and `host` cannot be removed: changing them would let a
//! filter desynchronise the gateway and the upstream. `x-request-id` and `x-forwarded-*` are
//! written by the gateway after the filters ran, so setting them on the request has no effect.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_http::ResponseHeader;
use serde::Deserialize;

use super::{Decision, Filter, FilterSpec, FilterState, RequestInfo};

/// Settings of a `headers` filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// Fields set on the upstream request, replacing any the client sent.
    #[serde(default)]
    pub request_set: BTreeMap<String, String>,
    /// Fields removed from the upstream request.
    #[serde(default)]
    pub request_remove: Vec<String>,
    /// Fields set on the response, replacing any the upstream sent.
    #[serde(default)]
    pub response_set: BTreeMap<String, String>,
    /// Fields removed from the response.
    #[serde(default)]
    pub response_remove: Vec<String>,
    /// Fields appended to the response, after any of the same name.
    #[serde(default)]
    pub response_add: BTreeMap<String, String>,
}

/// Builds a `headers` filter; every bad name or value is reported at once.
pub fn factory(spec: &FilterSpec<'_>) -> Result<Arc<dyn Filter>, String> {
    let cfg: HeadersConfig = spec.parse()?;
    Ok(Arc::new(Headers::new(&cfg)?))
}

/// Compiled header edits.
#[derive(Debug)]
pub struct Headers {
    request_set: Vec<(HeaderName, HeaderValue)>,
    request_remove: Vec<HeaderName>,
    response_set: Vec<(HeaderName, HeaderValue)>,
    response_remove: Vec<HeaderName>,
    response_add: Vec<(HeaderName, HeaderValue)>,
}

/// Framing and hop-by-hop fields no filter may change.
const PROTECTED: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

impl Headers {
    /// Check and compile the edits.
    pub fn new(cfg: &HeadersConfig) -> Result<Headers, String> {
        let mut errors = Vec::new();
        let edits = Headers {
            request_set: pairs("request_set", &cfg.request_set, &mut errors),
            request_remove: names("request_remove", &cfg.request_remove, &mut errors),
            response_set: pairs("response_set", &cfg.response_set, &mut errors),
            response_remove: names("response_remove", &cfg.response_remove, &mut errors),
            response_add: pairs("response_add", &cfg.response_add, &mut errors),
        };
        if edits.request_remove.contains(&http::header::HOST) {
            errors.push("request_remove: \"host\" cannot be removed".to_string());
        }
        overlap(
            "request",
            &edits.request_set,
            &edits.request_remove,
            &mut errors,
        );
        overlap(
            "response",
            &edits.response_set,
            &edits.response_remove,
            &mut errors,
        );
        if edits.is_empty() && errors.is_empty() {
            errors.push(
                "no edits configured: set one of request_set, request_remove, \
                         response_set, response_remove, response_add"
                    .to_string(),
            );
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(edits)
    }

    fn is_empty(&self) -> bool {
        self.request_set.is_empty()
            && self.request_remove.is_empty()
            && self.response_set.is_empty()
            && self.response_remove.is_empty()
            && self.response_add.is_empty()
    }
}

fn name(field: &str, text: &str, errors: &mut Vec<String>) -> Option<HeaderName> {
    match HeaderName::from_bytes(text.as_bytes()) {
        Ok(name) if PROTECTED.contains(&name.as_str()) => {
            errors.push(format!(
                "{field}: {text:?} frames the message or the connection and cannot be changed"
            ));
            None
        }
        Ok(name) => Some(name),
        Err(_) => {
            errors.push(format!("{field}: {text:?} is not a header name"));
            None
        }
    }
}

fn names(field: &str, list: &[String], errors: &mut Vec<String>) -> Vec<HeaderName> {
    list.iter()
        .enumerate()
        .filter_map(|(i, text)| name(&format!("{field}[{i}]"), text, errors))
        .collect()
}

fn pairs(
    field: &str,
    map: &BTreeMap<String, String>,
    errors: &mut Vec<String>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(map.len());
    for (key, text) in map {
        let at = format!("{field}.{key}");
        let value = HeaderValue::from_str(text);
        if value.is_err() {
            errors.push(format!(
                "{at}: {text:?} is not a header value (control characters or non-ASCII)"
            ));
        }
        if let (Some(name), Ok(value)) = (name(&at, key, errors), value) {
            out.push((name, value));
        }
    }
    out
}

/// A name both set and removed in one direction is a contradiction, not an order question.
fn overlap(
    side: &str,
    set: &[(HeaderName, HeaderValue)],
    remove: &[HeaderName],
    errors: &mut Vec<String>,
) {
    for (name, _) in set.iter().filter(|(n, _)| remove.contains(n)) {
        errors.push(format!(
            "{side}_set and {side}_remove both name {:?}",
            name.as_str()
        ));
    }
}

#[async_trait]
impl Filter for Headers {
    async fn on_request(&self, req: &mut RequestInfo<'_>, _state: &mut FilterState) -> Decision {
        for name in &self.request_remove {
            req.remove_header(name);
        }
        for (name, value) in &self.request_set {
            // Names and values were validated when the config loaded.
            req.set_header(name, value.clone());
        }
        Decision::Continue
    }

    fn on_response(&self, resp: &mut ResponseHeader, _state: &mut FilterState) {
        for name in &self.response_remove {
            resp.remove_header(name);
        }
        for (name, value) in &self.response_set {
            let _ = resp.insert_header(name.clone(), value.clone());
        }
        for (name, value) in &self.response_add {
            let _ = resp.append_header(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::RequestHeader;

    fn headers(text: &str) -> Result<Arc<dyn Filter>, String> {
        let table: toml::Table = toml::from_str(text).expect("toml");
        factory(&FilterSpec {
            name: "headers",
            settings: &table,
        })
    }

    fn values<'a>(map: &'a http::HeaderMap, name: &str) -> Vec<&'a str> {
        map.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    #[tokio::test]
    async fn request_edits() {
        let f = headers(
            "request_set = { \"X-Env\" = \"prod\" }\nrequest_remove = [\"x-debug\", \"X-Drop\"]",
        )
        .expect("valid");
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        for (k, v) in [
            ("x-env", "dev"),
            ("x-env", "test"),
            ("x-debug", "1"),
            ("x-drop", "2"),
            ("x-keep", "3"),
        ] {
            req.append_header(k, v).expect("header");
        }
        let mut info = RequestInfo {
            header: &mut req,
            client_ip: None,
            route: "r",
            request_id: "id",
        };
        assert!(matches!(
            f.on_request(&mut info, &mut FilterState::default()).await,
            Decision::Continue
        ));
        assert_eq!(values(&req.headers, "x-env"), ["prod"]);
        assert!(values(&req.headers, "x-debug").is_empty());
        assert!(values(&req.headers, "x-drop").is_empty());
        assert_eq!(values(&req.headers, "x-keep"), ["3"]);
    }

    #[test]
    fn response_edits_remove_then_set_then_add() {
        let f = headers(
            "response_set = { \"x-frame-options\" = \"DENY\" }\n\
             response_remove = [\"server\"]\n\
             response_add = { \"cache-control\" = \"no-transform\", \"x-frame-options\" = \"SAMEORIGIN\" }",
        )
        .expect("valid");
        let mut resp = ResponseHeader::build(200, None).expect("response");
        resp.append_header("server", "upstream/1.0").expect("h");
        resp.append_header("x-frame-options", "ALLOW").expect("h");
        resp.append_header("cache-control", "max-age=60")
            .expect("h");
        f.on_response(&mut resp, &mut FilterState::default());
        assert!(values(&resp.headers, "server").is_empty());
        assert_eq!(
            values(&resp.headers, "x-frame-options"),
            ["DENY", "SAMEORIGIN"]
        );
        assert_eq!(
            values(&resp.headers, "cache-control"),
            ["max-age=60", "no-transform"]
        );
    }

    #[test]
    fn configuration_errors_table() {
        let cases = [
            ("", "no edits configured"),
            (
                "request_set = { \"bad name\" = \"1\" }",
                "request_set.bad name",
            ),
            (
                "response_set = { \"x-a\" = \"line\\nbreak\" }",
                "not a header value",
            ),
            ("request_remove = [\"content-length\"]", "cannot be changed"),
            (
                "response_add = { \"Transfer-Encoding\" = \"chunked\" }",
                "cannot be changed",
            ),
            ("request_remove = [\"host\"]", "\"host\" cannot be removed"),
            (
                "request_set = { \"x-a\" = \"1\" }\nrequest_remove = [\"X-A\"]",
                "both name \"x-a\"",
            ),
            ("response_sett = {}", "unknown field"),
        ];
        for (text, expected) in cases {
            let err = headers(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} is refused"));
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
