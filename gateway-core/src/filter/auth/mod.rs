//! Authentication filters: `jwt` (bearer tokens) and `api_key` (static keys stored hashed).
//!
//! ## `jwt`
//!
//! ```toml
//! [filters.auth]
//! kind = "jwt"
//! # key material, exactly one of:
//! jwks_url = "https://id.example.com/.well-known/jwks.json"
//! # secret = "at least 32 bytes of shared secret for HS256/384/512"
//! # public_key_file = "keys/issuer.pub.pem"       # RS*, PS*, ES256/384 or EdDSA public key
//! jwks_refresh = "5m"          # scheduled refresh of the key set
//! jwks_min_refresh = "5s"      # least gap between refreshes asked for by an unknown `kid`
//! jwks_timeout = "3s"          # per fetch
//! algorithms = ["EdDSA"]       # required; a token whose `alg` is not listed (or not its key's) is refused
//! issuer = "gatehouse"         # optional; when set, `iss` is required and must match (or a list)
//! audience = "gatehouse-api"   # optional; when set, `aud` is required and must match (or a list)
//! leeway = "30s"               # clock skew allowed on `exp` and `nbf`; `exp` is always required
//! require_roles = ["admin"]    # every one must be in the `roles` claim, else 403
//! require_permissions = []     # every one must be in the `perms` claim, else 403
//! roles_claim = "roles"        # claim names (arrays of strings, or one space-separated string)
//! permissions_claim = "perms"
//! forward_claims = { "x-user-id" = "sub", "x-user-roles" = "roles" }  # header = claim
//! cache_entries = 10000        # verified-token cache (0 turns it off)
//! max_token_bytes = 8192       # a larger token is refused before it is parsed
//! websocket_protocol = false   # also read a WebSocket handshake's `bearer.<token>` subprotocol
//! realm = "gatehouse"          # the `realm` of `WWW-Authenticate`
//! ```
//!
//! With `websocket_protocol = true`, a WebSocket handshake with no `Authorization` header may
//! carry its token as one entry `bearer.<token>` of `Sec-WebSocket-Protocol` (how a browser,
//! which cannot set headers on a handshake, authenticates: `new WebSocket(url,
//! ["notifications.v1", "bearer." + token])`); the upstream picks its own protocol in the
//! answer. The header is never logged.
//!
//! The algorithm always comes from the configuration (or the JWK's own `alg`), never from the
//! token. Client-sent copies of the `forward_claims` headers are removed on every request, valid
//! token or not. Answers: no token → 401 `WWW-Authenticate: Bearer realm="…"`; a bad token →
//! 401 `Bearer realm="…", error="invalid_token", error_description="…"`; a missing role or
//! permission → 403 `error="insufficient_scope"`; a JWKS that could never be fetched → 503.
//! Every refusal carries one of a fixed set of `reason` labels (see [`Rejection::reason`]).
//!
//! ## `api_key`
//!
//! ```toml
//! [filters.partners]
//! kind = "api_key"
//! header = "x-api-key"   # where the client sends its key
//! keys = ["sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"]
//! forward = false        # strip the key header before the request goes upstream
//! realm = "gatehouse"
//! ```
//!
//! Keys are configured as SHA-256 digests (`printf %s "$KEY" | sha256sum`) and compared in
//! constant time; a missing or unknown key → 401.

mod api_key;
mod cache;
mod config;
mod jwks;
mod jwt;
mod keys;
mod reject;

use std::sync::Arc;

pub use api_key::ApiKeyFilter;
pub(crate) use jwt::fuzz as fuzz_token;
pub use jwt::JwtFilter;
pub use reject::Rejection;

use super::{Filter, FilterFactory};

/// The factory of the `jwt` kind.
pub fn jwt_factory() -> FilterFactory {
    Arc::new(|spec| JwtFilter::from_spec(spec).map(|f| Arc::new(f) as Arc<dyn Filter>))
}

/// The factory of the `api_key` kind.
pub fn api_key_factory() -> FilterFactory {
    Arc::new(|spec| ApiKeyFilter::from_spec(spec).map(|f| Arc::new(f) as Arc<dyn Filter>))
}

/// Seconds since the Unix epoch, as JWT time claims count them.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether text can sit inside an HTTP quoted-string without escaping (a realm, a description).
fn is_quotable(text: &str) -> bool {
    text.bytes()
        .all(|b| (b == b' ' || b.is_ascii_graphic()) && b != b'"' && b != b'\\')
}
