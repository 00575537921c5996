//! Who is calling: the [`Identity`] extractor verifies the bearer access token (EdDSA,
//! issued by the user service) on every protected request, against the user service's
//! JWKS URL or an in-process key set. A backend reached directly, not through the gateway,
//! is therefore never open, and no identity header from the network is ever trusted.
//!
//! The algorithm is fixed to EdDSA by the verifier, never taken from the token; `exp`,
//! `iss`, `aud` and `sub` are required. A token whose `kid` is unknown makes the verifier
//! fetch the JWKS again (at most once per [`Verifier::REFETCH_MIN_INTERVAL`]), so keys
//! rotated at the user service are picked up; when a fetch fails the last good key set
//! keeps serving, and with no key set at all the answer is 503, not 401.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// The claims of a Gatehouse access token.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user's id.
    pub sub: String,
    /// Who issued it (the user service's issuer setting).
    pub iss: String,
    /// Who it is for (the platform's audience setting).
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// The token's own id.
    pub jti: String,
    /// The session it belongs to.
    pub sid: String,
    /// Role names (`customer`, `admin`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Permission names (`users:read`, `orders:write`…).
    #[serde(default)]
    pub perms: Vec<String>,
}

impl std::fmt::Debug for AccessClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessClaims")
            .field("sub", &self.sub)
            .field("sid", &self.sid)
            .field("exp", &self.exp)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user's id (`sub`).
    pub user_id: String,
    /// The session the token belongs to (`sid`).
    pub session_id: String,
    /// The token's id (`jti`).
    pub token_id: String,
    /// Role names.
    pub roles: Vec<String>,
    /// Permission names.
    pub permissions: Vec<String>,
    /// When the token expires, Unix seconds.
    pub expires_at: i64,
}

impl Identity {
    /// Whether the caller has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the caller has `permission`.
    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }

    /// 403 unless the caller has `role`.
    pub fn require_role(&self, role: &str) -> Result<(), Problem> {
        if self.has_role(role) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!("requires the {role:?} role")))
        }
    }

    /// 403 unless the caller has `permission`.
    pub fn require_permission(&self, permission: &str) -> Result<(), Problem> {
        if self.has_permission(permission) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "requires the {permission:?} permission"
            )))
        }
    }
}

/// Why a request has no identity.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("a bearer access token is required")]
    Missing,
    /// The token is malformed, expired, for someone else, or badly signed.
    #[error("{0}")]
    Invalid(String),
    /// No key set could be had to check the token with.
    #[error("the access-token keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Problem {
        match e {
            AuthError::KeysUnavailable(_) => {
                tracing::warn!(error = %e, "cannot verify access tokens");
                Problem::unavailable("cannot verify access tokens right now")
            }
            e => Problem::unauthorized(e.to_string()),
        }
    }
}

/// Public keys that live in this process (the user service's own, or a test's). Cloning
/// shares the set: [`LocalKeys::set`] is seen by every verifier holding it.
#[derive(Clone, Default)]
pub struct LocalKeys(Arc<RwLock<JwkSet>>);

impl LocalKeys {
    /// A set holding `keys`.
    pub fn new(keys: JwkSet) -> LocalKeys {
        LocalKeys(Arc::new(RwLock::new(keys)))
    }

    /// Replaces the set (after a key rotation).
    pub fn set(&self, keys: JwkSet) {
        if let Ok(mut k) = self.0.write() {
            *k = keys;
        }
    }

    /// A copy of the set.
    pub fn get(&self) -> JwkSet {
        self.0
            .read()
            .map(|k| k.clone())
            .unwrap_or(JwkSet { keys: vec![] })
    }
}

enum Source {
    Local(LocalKeys),
    Remote(Remote),
}

struct Remote {
    url: String,
    client: reqwest::Client,
    cache: RwLock<Option<Cached>>,
    fetch: tokio::sync::Mutex<Option<Instant>>,
    refetch_min_interval: Duration,
}

#[derive(Clone)]
struct Cached {
    keys: JwkSet,
    fetched: Instant,
}

/// Verifies access tokens. Share one per service (`Arc<Verifier>` in the app state).
pub struct Verifier {
    source: Source,
    validation: Validation,
}

impl Verifier {
    /// A JWKS is fetched again after this long even when every `kid` is known.
    pub const REFRESH: Duration = Duration::from_secs(300);
    /// An unknown `kid` triggers a fetch at most this often.
    pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(5);

    /// Verifies against keys held in this process.
    pub fn local(keys: LocalKeys, issuer: &str, audience: &str) -> Verifier {
        Verifier {
            source: Source::Local(keys),
            validation: validation(issuer, audience),
        }
    }

    /// Verifies against the JWKS published at `url` (fetched on first use, cached).
    pub fn remote(url: &str, issuer: &str, audience: &str) -> Verifier {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Verifier {
            source: Source::Remote(Remote {
                url: url.to_owned(),
                client,
                cache: RwLock::new(None),
                fetch: tokio::sync::Mutex::new(None),
                refetch_min_interval: Verifier::REFETCH_MIN_INTERVAL,
            }),
            validation: validation(issuer, audience),
        }
    }

    /// Sets how often an unknown `kid` may trigger a JWKS fetch (default
    /// [`Verifier::REFETCH_MIN_INTERVAL`]); no effect on a local key set.
    pub fn refetch_min_interval(mut self, every: Duration) -> Verifier {
        if let Source::Remote(r) = &mut self.source {
            r.refetch_min_interval = every;
        }
        self
    }

    /// Verifies `token` and returns who it names.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > 8 * 1024 {
            return Err(AuthError::Invalid("the token is too large".into()));
        }
        let header = decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token: {e}")))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Invalid("the token names no key (kid)".into()))?;
        let jwk = self.key(&kid).await?;
        let key = decoding_key(&jwk)?;
        let data = decode::<AccessClaims>(token, &key, &self.validation)
            .map_err(|e| AuthError::Invalid(describe(&e)))?;
        let c = data.claims;
        Ok(Identity {
            user_id: c.sub,
            session_id: c.sid,
            token_id: c.jti,
            roles: c.roles,
            permissions: c.perms,
            expires_at: c.exp,
        })
    }

    /// Verifies the `Authorization: Bearer` header of a request.
    pub async fn verify_headers(&self, headers: &http::HeaderMap) -> Result<Identity, AuthError> {
        let value = headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
        let value = value
            .to_str()
            .map_err(|_| AuthError::Invalid("the Authorization header is not text".into()))?;
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => return Err(AuthError::Missing),
        };
        self.verify(token).await
    }

    async fn key(&self, kid: &str) -> Result<Jwk, AuthError> {
        match &self.source {
            Source::Local(keys) => keys
                .get()
                .find(kid)
                .cloned()
                .ok_or_else(|| AuthError::Invalid(format!("unknown key id {:?}", short(kid)))),
            Source::Remote(r) => r.key(kid).await,
        }
    }
}

impl Remote {
    fn cached(&self) -> Option<Cached> {
        self.cache.read().ok().and_then(|c| c.clone())
    }

    async fn key(&self, kid: &str) -> Result<Jwk, AuthError> {
        let cached = self.cached();
        let stale = cached
            .as_ref()
            .is_none_or(|c| c.fetched.elapsed() > Verifier::REFRESH);
        if let Some(jwk) = cached.as_ref().and_then(|c| c.keys.find(kid)) {
            if !stale {
                return Ok(jwk.clone());
            }
        }
        // Unknown kid, stale or empty cache: fetch (one fetch at a time, unknown kids at
        // most once per REFETCH_MIN_INTERVAL).
        let mut last = self.fetch.lock().await;
        let fresh = self.cached();
        let refetched = fresh
            .as_ref()
            .zip(cached.as_ref())
            .is_some_and(|(f, c)| f.fetched > c.fetched)
            || (cached.is_none() && fresh.is_some());
        if !refetched && last.is_none_or(|t| t.elapsed() >= self.refetch_min_interval) {
            *last = Some(Instant::now());
            match self.fetch_now().await {
                Ok(keys) => {
                    if let Ok(mut c) = self.cache.write() {
                        *c = Some(Cached {
                            keys,
                            fetched: Instant::now(),
                        });
                    }
                }
                Err(e) if fresh.is_none() => return Err(AuthError::KeysUnavailable(e)),
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "JWKS refresh failed; keeping the last good key set")
                }
            }
        }
        drop(last);
        match self.cached() {
            Some(c) => c
                .keys
                .find(kid)
                .cloned()
                .ok_or_else(|| AuthError::Invalid(format!("unknown key id {:?}", short(kid)))),
            None => Err(AuthError::KeysUnavailable(format!(
                "{} has not answered yet",
                self.url
            ))),
        }
    }

    async fn fetch_now(&self) -> Result<JwkSet, String> {
        let resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        if !resp.status().is_success() {
            return Err(format!("GET {}: status {}", self.url, resp.status()));
        }
        resp.json::<JwkSet>()
            .await
            .map_err(|e| format!("GET {}: not a JWKS: {e}", self.url))
    }
}

fn short(kid: &str) -> String {
    kid.chars().take(64).collect()
}

fn validation(issuer: &str, audience: &str) -> Validation {
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.validate_nbf = true;
    v.leeway = 30;
    v
}

fn decoding_key(jwk: &Jwk) -> Result<DecodingKey, AuthError> {
    let is_ed25519 = matches!(
        &jwk.algorithm,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519
    );
    let alg_ok = jwk
        .common
        .key_algorithm
        .is_none_or(|a| a == KeyAlgorithm::EdDSA);
    if !is_ed25519 || !alg_ok {
        return Err(AuthError::Invalid(
            "the token's key is not an Ed25519 signing key".into(),
        ));
    }
    DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Invalid(format!("unusable key: {e}")))
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet".into(),
        K::InvalidIssuer => "the token was issued by someone else".into(),
        K::InvalidAudience => "the token is for another audience".into(),
        K::InvalidSignature => "the token's signature does not verify".into(),
        K::MissingRequiredClaim(c) => format!("the token has no {c:?} claim"),
        _ => format!("invalid token: {e}"),
    }
}

impl<S> FromRequestParts<S> for Identity
where
    S: Send + Sync,
    Arc<Verifier>: FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Arc::<Verifier>::from_ref(state);
        Ok(verifier.verify_headers(&parts.headers).await?)
    }
}

/// An Ed25519 key that signs access tokens (the user service's; tests' too). Its `kid` is
/// the RFC 7638 thumbprint of its public JWK. `Debug` never shows the private key.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    der: Vec<u8>,
    key: jsonwebtoken::EncodingKey,
    jwk: Jwk,
}

/// PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl SigningKey {
    /// A new random key.
    pub fn generate() -> SigningKey {
        use rand::RngCore;
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        der.extend_from_slice(&seed);
        SigningKey::from_der(der).expect("a 48-byte PKCS#8 Ed25519 key is valid")
    }

    /// A key from a PKCS#8 PEM file (`openssl genpkey -algorithm ed25519`, or [`Self::to_pem`]).
    pub fn from_pem(pem: &str) -> Result<SigningKey, String> {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| format!("not PEM: {e}"))?;
        if der.len() != 48 || der[..16] != ED25519_PKCS8_PREFIX {
            return Err("not an Ed25519 private key in PKCS#8 form".into());
        }
        SigningKey::from_der(der)
    }

    fn from_der(der: Vec<u8>) -> Result<SigningKey, String> {
        let key = jsonwebtoken::EncodingKey::from_ed_der(&der);
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA).map_err(|e| e.to_string())?;
        let kid = jwk
            .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .map_err(|e| e.to_string())?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(SigningKey { kid, der, key, jwk })
    }

    /// The key as a PKCS#8 PEM file (secret: write it with owner-only permissions).
    pub fn to_pem(&self) -> String {
        use base64::Engine;
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&self.der)
        )
    }

    /// Its key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Its public half, as published in the JWKS.
    pub fn public_jwk(&self) -> Jwk {
        self.jwk.clone()
    }

    /// Signs `claims` (EdDSA, with this key's `kid`).
    pub fn sign(&self, claims: &AccessClaims) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("EdDSA signing does not fail")
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Where a service gets the bearer token it sends on service-to-service calls (the order
/// saga calling inventory and payments). Tokens are cached until a minute before they
/// expire. Cheap to clone.
#[derive(Clone)]
pub struct TokenSource(Arc<TokenInner>);

enum TokenKind {
    /// Mint locally with a key the verifiers trust (tests; single-process setups).
    Signing {
        key: Box<SigningKey>,
        template: Box<AccessClaims>,
        ttl_s: i64,
    },
    /// OAuth 2.0 client credentials against the user service's `POST /auth/token`.
    ClientCredentials {
        url: String,
        client_id: String,
        secret: String,
        client: reqwest::Client,
    },
}

struct TokenInner {
    kind: TokenKind,
    cache: tokio::sync::Mutex<Option<(String, i64)>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0.kind {
            TokenKind::Signing { template, .. } => {
                write!(f, "TokenSource::Signing({})", template.sub)
            }
            TokenKind::ClientCredentials { url, client_id, .. } => {
                write!(f, "TokenSource::ClientCredentials({client_id} at {url})")
            }
        }
    }
}

impl TokenSource {
    /// Mints tokens for `subject` (e.g. `service:order`) with role `service` and
    /// `permissions`, signed by `key`, living 15 minutes.
    pub fn signing(
        key: SigningKey,
        issuer: &str,
        audience: &str,
        subject: &str,
        permissions: &[&str],
    ) -> TokenSource {
        let template = AccessClaims {
            sub: subject.to_owned(),
            iss: issuer.to_owned(),
            aud: audience.to_owned(),
            exp: 0,
            iat: 0,
            jti: String::new(),
            sid: "service".to_owned(),
            roles: vec!["service".to_owned()],
            perms: permissions.iter().map(|p| p.to_string()).collect(),
        };
        TokenSource::new(TokenKind::Signing {
            key: Box::new(key),
            template: Box::new(template),
            ttl_s: 900,
        })
    }

    /// Fetches tokens from `token_url` (the user service's `/auth/token`) with the client
    /// credentials grant.
    pub fn client_credentials(token_url: &str, client_id: &str, secret: &str) -> TokenSource {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap_or_default();
        TokenSource::new(TokenKind::ClientCredentials {
            url: token_url.to_owned(),
            client_id: client_id.to_owned(),
            secret: secret.to_owned(),
            client,
        })
    }

    fn new(kind: TokenKind) -> TokenSource {
        TokenSource(Arc::new(TokenInner {
            kind,
            cache: tokio::sync::Mutex::new(None),
        }))
    }

    /// A token valid for at least another minute.
    pub async fn bearer(&self) -> Result<String, AuthError> {
        let now = crate::db::now_ms() / 1000;
        let mut cache = self.0.cache.lock().await;
        if let Some((token, exp)) = cache.as_ref() {
            if *exp - 60 > now {
                return Ok(token.clone());
            }
        }
        let (token, exp) = match &self.0.kind {
            TokenKind::Signing {
                key,
                template,
                ttl_s,
            } => {
                let mut claims = AccessClaims::clone(template);
                claims.iat = now;
                claims.exp = now + ttl_s;
                claims.jti = crate::db::new_id();
                (key.sign(&claims), claims.exp)
            }
            TokenKind::ClientCredentials {
                url,
                client_id,
                secret,
                client,
            } => fetch_client_token(client, url, client_id, secret, now).await?,
        };
        *cache = Some((token.clone(), exp));
        Ok(token)
    }
}

async fn fetch_client_token(
    client: &reqwest::Client,
    url: &str,
    client_id: &str,
    secret: &str,
    now: i64,
) -> Result<(String, i64), AuthError> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
        expires_in: i64,
    }
    let unavailable = |e: String| AuthError::KeysUnavailable(format!("POST {url}: {e}"));
    let resp = client
        .post(url)
        .json(&serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
        }))
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(unavailable(format!("status {}", resp.status())));
    }
    let a: Answer = resp.json().await.map_err(|e| unavailable(e.to_string()))?;
    Ok((a.access_token, now + a.expires_in))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_in: i64) -> AccessClaims {
        let now = crate::db::now_ms() / 1000;
        AccessClaims {
            sub: "u1".into(),
            iss: "gatehouse".into(),
            aud: "gatehouse-api".into(),
            exp: now + exp_in,
            iat: now,
            jti: "j1".into(),
            sid: "s1".into(),
            roles: vec!["customer".into()],
            perms: vec!["users:read".into()],
        }
    }

    fn verifier(keys: &[&SigningKey]) -> Verifier {
        let set = JwkSet {
            keys: keys.iter().map(|k| k.public_jwk()).collect(),
        };
        Verifier::local(LocalKeys::new(set), "gatehouse", "gatehouse-api")
    }

    #[tokio::test]
    async fn a_signed_token_verifies_and_round_trips_through_pem() {
        let key = SigningKey::generate();
        let again = SigningKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(key.kid(), again.kid());
        let id = verifier(&[&again])
            .verify(&key.sign(&claims(60)))
            .await
            .unwrap();
        assert_eq!(id.user_id, "u1");
        assert!(id.has_role("customer"));
        assert!(id.require_role("admin").is_err());
        assert!(!format!("{key:?}").contains(&key.to_pem()[30..60]));
    }

    #[tokio::test]
    async fn tokens_that_must_not_pass() {
        let key = SigningKey::generate();
        let other = SigningKey::generate();
        let v = verifier(&[&key]);
        let mut wrong_aud = claims(60);
        wrong_aud.aud = "elsewhere".into();
        let mut wrong_iss = claims(60);
        wrong_iss.iss = "mallory".into();
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims(60),
            &jsonwebtoken::EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        let good = key.sign(&claims(60));
        let (head, rest) = good.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        use base64::Engine;
        let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&{
                let mut c = claims(60);
                c.roles = vec!["admin".into()];
                c
            })
            .unwrap(),
        );
        let cases = [
            ("expired", key.sign(&claims(-120))),
            ("wrong audience", key.sign(&wrong_aud)),
            ("wrong issuer", key.sign(&wrong_iss)),
            ("unknown key", other.sign(&claims(60))),
            ("HS256", hs),
            ("tampered payload", format!("{head}.{forged_payload}.{sig}")),
            ("garbage", "not.a.token".into()),
        ];
        for (name, token) in cases {
            let err = v.verify(&token).await.unwrap_err();
            assert!(matches!(err, AuthError::Invalid(_)), "{name}: {err:?}");
        }
    }

    #[tokio::test]
    async fn a_signing_token_source_mints_verifiable_cached_service_tokens() {
        let key = SigningKey::generate();
        let v = verifier(&[&key]);
        let src = TokenSource::signing(
            key,
            "gatehouse",
            "gatehouse-api",
            "service:order",
            &["inventory:reserve"],
        );
        let t = src.bearer().await.unwrap();
        assert_eq!(src.bearer().await.unwrap(), t, "cached");
        let id = v.verify(&t).await.unwrap();
        assert_eq!(id.user_id, "service:order");
        assert!(id.has_role("service") && id.has_permission("inventory:reserve"));
    }

    #[tokio::test]
    async fn a_jwks_url_that_never_answered_is_unavailable_not_unauthorized() {
        let key = SigningKey::generate();
        let v = Verifier::remote("http://127.0.0.1:9/jwks.json", "gatehouse", "gatehouse-api");
        let err = v.verify(&key.sign(&claims(60))).await.unwrap_err();
        assert!(matches!(err, AuthError::KeysUnavailable(_)), "{err:?}");
        assert_eq!(
            Problem::from(err).status,
            http::StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
