//! The `jwt` filter: verifies `Authorization: Bearer` tokens, checks roles and permissions,
//! forwards claims as headers and leaves [`VerifiedClaims`] for later filters.

use std::sync::Arc;

use async_trait::async_trait;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{decode, decode_header, Algorithm, Validation};
use serde_json::{Map, Value};

use super::cache::{CacheKey, TokenCache};
use super::config::{JwtConfig, KeySource};
use super::jwks::{Jwks, JwksSettings};
use super::keys::{self, KeyEntry, KeySet};
use super::now_secs;
use super::reject::Rejection;
use crate::filter::{Decision, Filter, FilterSpec, FilterState, RequestInfo, VerifiedClaims};

/// What verifying one token produced; cached per token.
struct Verified {
    claims: VerifiedClaims,
    /// Headers to send upstream, values taken from claims.
    forward: Vec<(HeaderName, HeaderValue)>,
    /// Set when the token is genuine but lacks a required role or permission.
    denied: Option<Rejection>,
}

enum Keys {
    Configured(Arc<KeySet>),
    Jwks(Arc<Jwks>),
}

/// The `jwt` filter kind. Build it from TOML with [`JwtFilter::from_spec`].
pub struct JwtFilter {
    keys: Keys,
    /// One validation per accepted algorithm (the algorithm is looked up, never trusted).
    validations: Vec<(Algorithm, Validation)>,
    leeway: u64,
    require_roles: Vec<String>,
    require_permissions: Vec<String>,
    roles_claim: String,
    permissions_claim: String,
    forward: Vec<(HeaderName, String)>,
    cache: Option<TokenCache<Verified>>,
    max_token_bytes: usize,
    websocket_protocol: bool,
    realm: String,
}

impl JwtFilter {
    /// Build from `[filters.NAME]` settings; every problem is reported as text.
    pub fn from_spec(spec: &FilterSpec<'_>) -> Result<JwtFilter, String> {
        let cfg: JwtConfig = spec.parse()?;
        cfg.check()?;
        let algorithms = cfg.algorithms()?;
        let keys = match cfg.key_source()? {
            KeySource::Secret(s) => Keys::Configured(Arc::new(KeySet::configured(
                keys::from_secret(s, &algorithms)?,
            ))),
            KeySource::PemFile(p) => Keys::Configured(Arc::new(KeySet::configured(
                keys::from_pem_file(p, &algorithms)?,
            ))),
            KeySource::Jwks(url) => Keys::Jwks(Arc::new(Jwks::new(JwksSettings {
                filter: spec.name.to_string(),
                url: url.to_string(),
                algorithms: algorithms.clone(),
                refresh: cfg.jwks_refresh,
                min_refresh: cfg.jwks_min_refresh,
                timeout: cfg.jwks_timeout,
            })?)),
        };
        Ok(JwtFilter {
            keys,
            validations: algorithms
                .iter()
                .map(|a| (*a, cfg.validation(*a)))
                .collect(),
            leeway: cfg.leeway.as_secs(),
            forward: cfg.forward_headers()?,
            cache: (cfg.cache_entries > 0).then(|| TokenCache::new(cfg.cache_entries)),
            max_token_bytes: cfg.max_token_bytes,
            websocket_protocol: cfg.websocket_protocol,
            require_roles: cfg.require_roles,
            require_permissions: cfg.require_permissions,
            roles_claim: cfg.roles_claim,
            permissions_claim: cfg.permissions_claim,
            realm: cfg.realm,
        })
    }

    /// Tokens held by the verified-token cache (0 when it is off).
    pub fn cached_tokens(&self) -> usize {
        self.cache.as_ref().map_or(0, TokenCache::len)
    }

    fn reject(&self, why: Rejection) -> Decision {
        let retry_after = match &self.keys {
            Keys::Jwks(j) => j.retry_after_secs(),
            Keys::Configured(_) => 1,
        };
        Decision::Respond(why.bearer_reply(&self.realm, retry_after))
    }

    /// The generation of the keys serving now (`None`: no key set yet, nothing can be cached).
    fn generation(&self) -> Option<u64> {
        match &self.keys {
            Keys::Configured(set) => Some(set.generation),
            Keys::Jwks(j) => j.current().map(|s| s.generation),
        }
    }

    async fn key_for(&self, kid: Option<&str>) -> Result<(Arc<KeyEntry>, u64), Rejection> {
        match &self.keys {
            Keys::Configured(set) => set
                .find(kid)
                .map(|k| (Arc::clone(k), set.generation))
                .ok_or(Rejection::UnknownKey),
            Keys::Jwks(j) => j.key_for(kid).await,
        }
    }

    /// A token's key in the verified-token cache (`None` when the cache is off).
    fn cache_key(&self, token: &str) -> Option<CacheKey> {
        self.cache.as_ref().map(|c| c.key(token.as_bytes()))
    }

    /// The token of `key`, verified earlier and still valid under the keys serving now.
    fn cached(&self, key: Option<&CacheKey>, now: u64) -> Option<Arc<Verified>> {
        self.cache.as_ref()?.get(key?, now, self.generation()?)
    }

    /// Verify a token (or find it verified in the cache).
    async fn verify(&self, token: &str) -> Result<Arc<Verified>, Rejection> {
        let now = now_secs();
        let cache_key = self.cache_key(token);
        if let Some(hit) = self.cached(cache_key.as_ref(), now) {
            return Ok(hit);
        }
        let header = decode_header(token).map_err(|e| Rejection::from_jwt(e.kind()))?;
        // RFC 7515 §4.1.11: `crit` lists extensions the recipient must understand; we know
        // none. (`jku`/`x5u`/`jwk` in the header are ignored: keys never come from the token.)
        if header.crit.is_some() {
            return Err(Rejection::Invalid);
        }
        let (entry, generation) = self.key_for(header.kid.as_deref()).await?;
        // The token's `alg` only selects among what the key and the configuration allow.
        if !entry.algorithms.contains(&header.alg) {
            return Err(Rejection::BadAlgorithm);
        }
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(Rejection::BadAlgorithm);
        };
        let data = decode::<Map<String, Value>>(token, &entry.key, validation)
            .map_err(|e| Rejection::from_jwt(e.kind()))?;
        let exp = data.claims.get("exp").and_then(seconds);
        let verified = Arc::new(self.describe(data.claims));
        if let (Some(cache), Some(key), Some(exp)) = (&self.cache, cache_key, exp) {
            let valid_until = exp.saturating_add(self.leeway);
            cache.insert(key, Arc::clone(&verified), valid_until, generation, now);
        }
        Ok(verified)
    }

    /// What a verified token grants: scope decision and forwarded headers.
    fn describe(&self, claims: Map<String, Value>) -> Verified {
        let denied = if !has_all(&claims, &self.roles_claim, &self.require_roles) {
            Some(Rejection::MissingRole)
        } else if !has_all(&claims, &self.permissions_claim, &self.require_permissions) {
            Some(Rejection::MissingPermission)
        } else {
            None
        };
        let forward = self
            .forward
            .iter()
            .filter_map(|(name, claim)| {
                let value = header_value(claims.get(claim)?)?;
                Some((name.clone(), value))
            })
            .collect();
        Verified {
            claims: VerifiedClaims(Arc::new(claims)),
            forward,
            denied,
        }
    }
}

impl JwtFilter {
    /// Identity headers come from a verified token or not at all: the client's are dropped.
    fn strip_forwarded(&self, req: &mut RequestInfo<'_>) {
        for (name, _) in &self.forward {
            req.remove_header(name);
        }
    }

    /// The request phase once the token is known good (or not).
    fn admit(
        &self,
        verified: Result<Arc<Verified>, Rejection>,
        req: &mut RequestInfo<'_>,
        state: &mut FilterState,
    ) -> Decision {
        let verified = match verified {
            Ok(v) => v,
            Err(why) => return self.reject(why),
        };
        if let Some(why) = verified.denied {
            return self.reject(why);
        }
        for (name, value) in &verified.forward {
            req.set_header(name, value.clone());
        }
        state.verified_claims = Some(verified.claims.clone());
        Decision::Continue
    }
}

#[async_trait]
impl Filter for JwtFilter {
    fn not_ready(&self) -> Option<String> {
        match &self.keys {
            Keys::Configured(_) => None,
            Keys::Jwks(jwks) => jwks.not_ready(),
        }
    }

    /// A missing or malformed token, or one in the verified-token cache, is decided at once;
    /// only a token that needs its signature checked (and maybe keys fetched) waits.
    fn decide_now(&self, req: &mut RequestInfo<'_>, state: &mut FilterState) -> Option<Decision> {
        self.strip_forwarded(req);
        let verified = match self.token(&req.header.headers) {
            Ok(token) => Ok(self.cached(self.cache_key(token).as_ref(), now_secs())?),
            Err(why) => Err(why),
        };
        Some(self.admit(verified, req, state))
    }

    async fn on_request(&self, req: &mut RequestInfo<'_>, state: &mut FilterState) -> Decision {
        self.strip_forwarded(req);
        let verified = match self.token(&req.header.headers) {
            Ok(token) => self.verify(token).await,
            Err(why) => Err(why),
        };
        self.admit(verified, req, state)
    }
}

impl JwtFilter {
    /// The request's token: its `Authorization: Bearer`, else, when the filter is set to,
    /// the `bearer.` subprotocol of a WebSocket handshake.
    fn token<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, Rejection> {
        match bearer_token(headers, self.max_token_bytes) {
            Err(Rejection::MissingToken)
                if self.websocket_protocol && headers.get(AUTHORIZATION).is_none() =>
            {
                protocol_token(headers, self.max_token_bytes)
            }
            found => found,
        }
    }
}

/// The token a browser offers as the subprotocol `bearer.<token>` on a WebSocket handshake
/// (`Sec-WebSocket-Protocol: notifications.v1, bearer.eyJ…`).
fn protocol_token(headers: &HeaderMap, max_bytes: usize) -> Result<&str, Rejection> {
    let is_websocket = headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    if !is_websocket {
        return Err(Rejection::MissingToken);
    }
    let mut found = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix("bearer."));
    let token = found.next().ok_or(Rejection::MissingToken)?;
    if found.next().is_some() || token.is_empty() {
        return Err(Rejection::Malformed);
    }
    if token.len() > max_bytes {
        return Err(Rejection::TokenTooLarge);
    }
    Ok(token)
}

/// The bearer token of a request. The size is checked on the raw header, before any parsing.
fn bearer_token(headers: &HeaderMap, max_bytes: usize) -> Result<&str, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Rejection::MissingToken);
    };
    if values.next().is_some() {
        return Err(Rejection::Malformed);
    }
    if value.len() > max_bytes.saturating_add("Bearer ".len()) {
        return Err(Rejection::TokenTooLarge);
    }
    let text = value.to_str().map_err(|_| Rejection::Malformed)?;
    let (scheme, token) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, …) carries no bearer token: challenge without an error.
        return Err(Rejection::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Rejection::MissingToken);
    }
    if token.len() > max_bytes {
        return Err(Rejection::TokenTooLarge);
    }
    Ok(token)
}

/// A time claim as whole seconds.
fn seconds(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// The strings of a claim: an array of strings, or one space-separated string (OAuth `scope`).
fn claim_strings<'a>(claims: &'a Map<String, Value>, name: &str) -> Vec<&'a str> {
    match claims.get(name) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => s.split_whitespace().collect(),
        _ => Vec::new(),
    }
}

fn has_all(claims: &Map<String, Value>, claim: &str, required: &[String]) -> bool {
    if required.is_empty() {
        return true;
    }
    let held = claim_strings(claims, claim);
    required.iter().all(|r| held.contains(&r.as_str()))
}

/// A claim as a header value: strings as they are (UTF-8 passes as obs-text), numbers and
/// booleans printed, arrays joined with commas. Objects, nulls and values with control
/// characters are not forwarded.
fn header_value(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                })
                .collect();
            parts?.join(",")
        }
        _ => return None,
    };
    HeaderValue::from_bytes(text.as_bytes()).ok()
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;

/// Fuzz entry (see [`crate::fuzzing`]): the token extraction and the claim readers that run
/// on what a client sends. Lines 1 to 3 are `Authorization`, `Upgrade` and
/// `Sec-WebSocket-Protocol`; the rest is read as a JSON claim set.
pub(crate) fn fuzz(data: &[u8]) {
    let mut lines = data.splitn(4, |b| *b == b'\n');
    let mut headers = HeaderMap::new();
    for name in [
        AUTHORIZATION,
        http::header::UPGRADE,
        http::header::SEC_WEBSOCKET_PROTOCOL,
    ] {
        if let Some(value) = lines.next().and_then(|l| HeaderValue::from_bytes(l).ok()) {
            headers.append(name, value);
        }
    }
    for token in [bearer_token(&headers, 8192), protocol_token(&headers, 8192)]
        .into_iter()
        .flatten()
    {
        assert!(
            token.len() <= 8192,
            "a token over the size limit was accepted"
        );
        if let Ok(header) = decode_header(token) {
            let _ = header.kid.map(|k| k.len());
        }
    }
    let Some(rest) = lines.next() else { return };
    if let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(rest) {
        for name in ["sub", "scope", "roles", "exp", "nbf"] {
            let _ = claim_strings(&claims, name);
            let _ = claims.get(name).and_then(seconds);
            let _ = claims.get(name).and_then(header_value);
            let _ = has_all(&claims, name, &["admin".to_string()]);
        }
    }
}
