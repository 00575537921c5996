//! The settings of a `jwt` filter, as written under `[filters.NAME]`, and their checks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::is_quotable;

/// `[filters.NAME] kind = "jwt"`. See the module docs of [`super`] for the reference.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtConfig {
    /// Shared secret for HS256/384/512.
    pub secret: Option<String>,
    /// PEM public key for RS*, PS*, ES256/384, EdDSA.
    pub public_key_file: Option<PathBuf>,
    /// JWKS document URL (`http://` or `https://`).
    pub jwks_url: Option<String>,
    /// Scheduled refresh of the JWKS.
    #[serde(
        default = "default_jwks_refresh",
        deserialize_with = "crate::config::duration::deserialize"
    )]
    pub jwks_refresh: Duration,
    /// Least gap between two refreshes asked for by tokens with an unknown `kid`.
    #[serde(
        default = "default_jwks_min_refresh",
        deserialize_with = "crate::config::duration::deserialize"
    )]
    pub jwks_min_refresh: Duration,
    /// Time allowed for one JWKS fetch.
    #[serde(
        default = "default_jwks_timeout",
        deserialize_with = "crate::config::duration::deserialize"
    )]
    pub jwks_timeout: Duration,
    /// Accepted algorithms (required).
    pub algorithms: Vec<String>,
    /// Accepted `iss` value(s); makes `iss` required.
    pub issuer: Option<OneOrMany>,
    /// Accepted `aud` value(s); makes `aud` required.
    pub audience: Option<OneOrMany>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(
        default = "default_leeway",
        deserialize_with = "crate::config::duration::deserialize"
    )]
    pub leeway: Duration,
    /// Roles that must all be present (403 otherwise).
    #[serde(default)]
    pub require_roles: Vec<String>,
    /// Permissions that must all be present (403 otherwise).
    #[serde(default)]
    pub require_permissions: Vec<String>,
    /// The claim holding roles.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim holding permissions.
    #[serde(default = "default_permissions_claim")]
    pub permissions_claim: String,
    /// Request header name → claim name, sent upstream.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Verified-token cache size (0: off).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Longest token accepted.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Also take the token of a WebSocket handshake that has no `Authorization` header
    /// from a `bearer.<token>` entry of `Sec-WebSocket-Protocol` (a browser cannot set
    /// headers on a handshake).
    #[serde(default)]
    pub websocket_protocol: bool,
    /// `realm` of the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
}

/// One string or a list of them (`issuer = "a"` or `issuer = ["a", "b"]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(v) => vec![v.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(5)
}
fn default_jwks_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_permissions_claim() -> String {
    "perms".into()
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_realm() -> String {
    "gatehouse".into()
}

/// Where the keys come from, once checked.
#[derive(Debug)]
pub(crate) enum KeySource<'a> {
    Secret(&'a str),
    PemFile(&'a PathBuf),
    Jwks(&'a str),
}

/// Headers that must never be set from a claim: they steer routing or framing.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
];

impl JwtConfig {
    /// The one configured key source.
    pub fn key_source(&self) -> Result<KeySource<'_>, String> {
        match (&self.secret, &self.public_key_file, &self.jwks_url) {
            (Some(s), None, None) => Ok(KeySource::Secret(s)),
            (None, Some(p), None) => Ok(KeySource::PemFile(p)),
            (None, None, Some(u)) => {
                let url = reqwest::Url::parse(u).map_err(|e| format!("jwks_url {u:?}: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(format!("jwks_url {u:?} must be http:// or https://"));
                }
                if !self.algorithms().is_ok_and(|algs| {
                    algs.iter()
                        .all(|a| a.family() != jsonwebtoken::AlgorithmFamily::Hmac)
                }) {
                    return Err("HS* algorithms need `secret`: shared secrets are not fetched from a JWKS URL".into());
                }
                Ok(KeySource::Jwks(u))
            }
            _ => Err("set exactly one of `secret`, `public_key_file` or `jwks_url`".into()),
        }
    }

    /// The accepted algorithms, parsed.
    pub fn algorithms(&self) -> Result<Vec<Algorithm>, String> {
        if self.algorithms.is_empty() {
            return Err("`algorithms` must list at least one algorithm, e.g. [\"EdDSA\"]".into());
        }
        let mut out = Vec::new();
        for name in &self.algorithms {
            let alg: Algorithm = name.parse().map_err(|_| {
                format!(
                    "unknown algorithm {name:?}; known: HS256, HS384, HS512, RS256, RS384, RS512, \
                     PS256, PS384, PS512, ES256, ES384, EdDSA"
                )
            })?;
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
        Ok(out)
    }

    /// Checks that need no key material.
    pub fn check(&self) -> Result<(), String> {
        if self.max_token_bytes == 0 {
            return Err("`max_token_bytes` must be at least 1".into());
        }
        if self.jwks_min_refresh.is_zero() || self.jwks_timeout.is_zero() {
            return Err("`jwks_min_refresh` and `jwks_timeout` must be more than zero".into());
        }
        if self.jwks_refresh < self.jwks_min_refresh {
            return Err("`jwks_refresh` must not be shorter than `jwks_min_refresh`".into());
        }
        if self.realm.is_empty() || !is_quotable(&self.realm) {
            return Err("`realm` must be printable ASCII without quotes or backslashes".into());
        }
        Ok(())
    }

    /// `forward_claims` as header names, checked.
    pub fn forward_headers(&self) -> Result<Vec<(HeaderName, String)>, String> {
        let mut out = Vec::new();
        for (header, claim) in &self.forward_claims {
            let name = HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("forward_claims: {header:?} is not a header name"))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(format!(
                    "forward_claims: {header:?} cannot be set from a claim"
                ));
            }
            out.push((name, claim.clone()));
        }
        Ok(out)
    }

    /// One validation per accepted algorithm: `exp` always required, `nbf` checked, `iss`/`aud`
    /// required and matched when configured.
    pub fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&iss.values());
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&aud.values());
                required.push("aud");
            }
            // Without a configured audience, `aud` is the upstream's business, not ours.
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JwtConfig, String> {
        let table: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
        table
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())
    }

    #[test]
    fn defaults() {
        let cfg = parse(
            r#"jwks_url = "http://127.0.0.1:1/jwks"
algorithms = ["EdDSA"]"#,
        )
        .unwrap();
        assert_eq!(cfg.jwks_refresh, Duration::from_secs(300));
        assert_eq!(cfg.jwks_min_refresh, Duration::from_secs(5));
        assert_eq!(cfg.leeway, Duration::from_secs(30));
        assert_eq!(cfg.cache_entries, 10_000);
        assert_eq!(cfg.max_token_bytes, 8192);
        assert_eq!(cfg.roles_claim, "roles");
        assert_eq!(cfg.permissions_claim, "perms");
        assert!(cfg.check().is_ok());
        assert!(matches!(cfg.key_source(), Ok(KeySource::Jwks(_))));
    }

    #[test]
    fn exactly_one_key_source() {
        let none = parse(r#"algorithms = ["EdDSA"]"#).unwrap();
        assert!(none.key_source().is_err());
        let two = parse(
            r#"algorithms = ["HS256"]
secret = "0123456789abcdef0123456789abcdef"
jwks_url = "http://x/jwks""#,
        )
        .unwrap();
        assert!(two.key_source().unwrap_err().contains("exactly one"));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        assert!(parse(r#"algorithm = ["EdDSA"]"#)
            .unwrap_err()
            .contains("unknown field"));
        assert!(parse(
            r#"algorithms = ["EdDSA"]
leeway = "soon""#
        )
        .unwrap_err()
        .contains("invalid duration"));
        let none = parse(
            r#"algorithms = ["none"]
jwks_url = "http://x/""#,
        )
        .unwrap();
        assert!(none
            .algorithms()
            .unwrap_err()
            .contains("unknown algorithm \"none\""));
        let ftp = parse(
            r#"algorithms = ["EdDSA"]
jwks_url = "ftp://x/""#,
        )
        .unwrap();
        assert!(ftp.key_source().is_err());
        let hs_url = parse(
            r#"algorithms = ["HS256"]
jwks_url = "http://x/""#,
        )
        .unwrap();
        assert!(hs_url.key_source().is_err());
        let host = parse(
            r#"algorithms = ["EdDSA"]
forward_claims = { host = "sub" }"#,
        )
        .unwrap();
        assert!(host.forward_headers().is_err());
        let quote = parse(
            r#"algorithms = ["EdDSA"]
realm = 'a"b'"#,
        )
        .unwrap();
        assert!(quote.check().is_err());
    }

    #[test]
    fn audience_and_issuer_become_required_claims() {
        let cfg = parse(
            r#"algorithms = ["EdDSA"]
issuer = "gatehouse"
audience = ["api", "admin"]"#,
        )
        .unwrap();
        let v = cfg.validation(Algorithm::EdDSA);
        for claim in ["exp", "iss", "aud"] {
            assert!(v.required_spec_claims.contains(claim), "{claim}");
        }
        assert!(v.validate_nbf && v.validate_aud);
        assert_eq!(v.algorithms, vec![Algorithm::EdDSA]);
        let open = parse(r#"algorithms = ["EdDSA"]"#).unwrap();
        assert!(!open.validation(Algorithm::EdDSA).validate_aud);
    }
}
