//! The `api_key` filter: a request must carry one of the configured keys in a header.
//!
//! Keys are configured only as SHA-256 digests, so the config file (and `/admin/config`) never
//! holds a usable key. The presented key is hashed and compared with every digest in constant
//! time, without stopping at the first match.

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::is_quotable;
use super::reject::Rejection;
use crate::filter::{Decision, Filter, FilterSpec, FilterState, RequestInfo};

/// Keys longer than this are refused without hashing.
const MAX_KEY_BYTES: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyConfig {
    #[serde(default = "default_header")]
    header: String,
    keys: Vec<String>,
    #[serde(default)]
    forward: bool,
    #[serde(default = "default_realm")]
    realm: String,
}

fn default_header() -> String {
    "x-api-key".into()
}

fn default_realm() -> String {
    "gatehouse".into()
}

/// The `api_key` filter kind. Build it from TOML with [`ApiKeyFilter::from_spec`].
pub struct ApiKeyFilter {
    header: HeaderName,
    digests: Vec<[u8; 32]>,
    forward: bool,
    challenge: HeaderValue,
}

impl ApiKeyFilter {
    /// Build from `[filters.NAME]` settings.
    pub fn from_spec(spec: &FilterSpec<'_>) -> Result<ApiKeyFilter, String> {
        let cfg: ApiKeyConfig = spec.parse()?;
        let header = HeaderName::from_bytes(cfg.header.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("header: {:?} is not a header name", cfg.header))?;
        if cfg.keys.is_empty() {
            return Err("`keys` must list at least one \"sha256:<hex>\" digest".into());
        }
        let digests = cfg
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| parse_digest(k).map_err(|e| format!("keys[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if cfg.realm.is_empty() || !is_quotable(&cfg.realm) {
            return Err("`realm` must be printable ASCII without quotes or backslashes".into());
        }
        let challenge = HeaderValue::from_str(&format!(
            "ApiKey realm=\"{}\", header=\"{}\"",
            cfg.realm, header
        ))
        .map_err(|_| "`realm` cannot be sent in a header".to_string())?;
        Ok(ApiKeyFilter {
            header,
            digests,
            forward: cfg.forward,
            challenge,
        })
    }

    /// Whether `key` is one of the configured keys (constant time in the key and the list).
    fn accepts(&self, key: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(key).into();
        let found = self
            .digests
            .iter()
            .fold(Choice::from(0), |found, d| found | d.ct_eq(&presented));
        bool::from(found)
    }
}

/// `sha256:<64 hex digits>` → the digest.
fn parse_digest(text: &str) -> Result<[u8; 32], String> {
    let hex = text
        .strip_prefix("sha256:")
        .ok_or("keys are stored hashed: write \"sha256:\" + the SHA-256 of the key in hex (e.g. `printf %s \"$KEY\" | sha256sum`)")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("expected 64 hexadecimal digits after \"sha256:\"".into());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "the digest is not hexadecimal".to_string())?;
    }
    Ok(out)
}

#[async_trait]
impl Filter for ApiKeyFilter {
    async fn on_request(&self, req: &mut RequestInfo<'_>, _state: &mut FilterState) -> Decision {
        let mut values = req.header.headers.get_all(&self.header).iter();
        let verdict = match (values.next(), values.next()) {
            (None, _) => Err(Rejection::MissingApiKey),
            (Some(_), Some(_)) => Err(Rejection::InvalidApiKey),
            (Some(key), None) if key.len() > MAX_KEY_BYTES => Err(Rejection::InvalidApiKey),
            (Some(key), None) if self.accepts(key.as_bytes()) => Ok(()),
            (Some(_), None) => Err(Rejection::InvalidApiKey),
        };
        if let Err(why) = verdict {
            return Decision::Respond(why.api_key_reply(&self.challenge));
        }
        if !self.forward {
            req.remove_header(&self.header);
        }
        Decision::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use pingora_http::RequestHeader;

    // Another key's digest: several keys may be configured.
    const DIGEST: &str = "sha256:0c7e6f9e5c8e2a8a6a5f0b1fa2f5c1e6e7b1f9d8f2a3c4b5d6e7f8091a2b3c4d";

    fn sha256_hex(text: &str) -> String {
        Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn filter(extra: &str) -> Result<ApiKeyFilter, String> {
        let text = format!(
            "keys = [\"sha256:{}\", {DIGEST:?}]\n{extra}",
            sha256_hex("s3cret-key")
        );
        let table: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
        ApiKeyFilter::from_spec(&FilterSpec {
            name: "keys",
            settings: &table,
        })
    }

    async fn run(f: &ApiKeyFilter, keys: &[(&str, &str)]) -> (Option<StatusCode>, RequestHeader) {
        let mut header = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in keys {
            header.append_header(k.to_string(), *v).unwrap();
        }
        let mut info = RequestInfo {
            header: &mut header,
            client_ip: None,
            route: "r",
            request_id: "id",
        };
        let status = match f.on_request(&mut info, &mut FilterState::default()).await {
            Decision::Continue => None,
            Decision::Respond(r) => Some(r.status),
        };
        (status, header)
    }

    #[tokio::test]
    async fn the_right_key_passes_and_is_not_forwarded() {
        let f = filter("").unwrap();
        let (status, header) = run(&f, &[("x-api-key", "s3cret-key")]).await;
        assert_eq!(status, None);
        assert!(!header.headers.contains_key("x-api-key"));
        let f = filter("forward = true").unwrap();
        let (_, header) = run(&f, &[("x-api-key", "s3cret-key")]).await;
        assert_eq!(header.headers["x-api-key"], "s3cret-key");
    }

    #[tokio::test]
    async fn missing_wrong_or_doubled_keys_are_401() {
        let f = filter("header = \"X-Partner-Key\"").unwrap();
        for keys in [
            vec![],
            vec![("x-partner-key", "wrong")],
            vec![("x-partner-key", "s3cret-key ")],
            vec![("x-api-key", "s3cret-key")],
            vec![("x-partner-key", "s3cret-key"), ("x-partner-key", "wrong")],
        ] {
            let (status, _) = run(&f, &keys).await;
            assert_eq!(status, Some(StatusCode::UNAUTHORIZED), "{keys:?}");
        }
        let (status, _) = run(&f, &[("x-partner-key", "s3cret-key")]).await;
        assert_eq!(status, None);
    }

    #[test]
    fn keys_must_be_digests() {
        let table: toml::Table = "keys = [\"s3cret-key\"]".parse().unwrap();
        let err = ApiKeyFilter::from_spec(&FilterSpec {
            name: "k",
            settings: &table,
        })
        .err()
        .unwrap_or_default();
        assert!(err.contains("keys[0]") && err.contains("sha256"), "{err}");
        assert!(parse_digest("sha256:zz").is_err());
        assert!(parse_digest(&format!("sha256:{}", "g".repeat(64))).is_err());
        assert!(
            parse_digest(&format!("sha256:{}", "é".repeat(32))).is_err(),
            "no panic"
        );
        assert!(filter("keyz = 1")
            .err()
            .unwrap_or_default()
            .contains("unknown field"));
    }
}
