//! Why an auth filter refused a request, and the answer that says so.

use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use jsonwebtoken::errors::ErrorKind;

use crate::filter::Reply;

/// Why a request was refused. Each has a fixed `reason` label for
/// `gatehouse_filter_decisions_total` and a fixed description for the client: nothing the
/// client sent is echoed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `Authorization: Bearer …` header.
    MissingToken,
    /// The token is longer than `max_token_bytes`.
    TokenTooLarge,
    /// Not three base64url parts, bad JSON, unknown `alg` (`none` included), bad claim types.
    Malformed,
    /// The token's `alg` is not one the configuration (or the key's JWK) allows.
    BadAlgorithm,
    /// The token names a key (`kid`) the key set does not hold, even after a refresh.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is past, beyond the leeway.
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    NotYetValid,
    /// `iss` is not the configured issuer.
    BadIssuer,
    /// `aud` is not the configured audience.
    BadAudience,
    /// A required claim (`exp`, or `iss`/`aud` when configured) is absent.
    MissingClaim,
    /// Anything else wrong with the token.
    Invalid,
    /// A role listed in `require_roles` is not in the token.
    MissingRole,
    /// A permission listed in `require_permissions` is not in the token.
    MissingPermission,
    /// No key set was ever obtained from the JWKS URL: the gateway cannot judge any token.
    NoKeys,
    /// `api_key`: no key header.
    MissingApiKey,
    /// `api_key`: a key that is not configured (or several key headers).
    InvalidApiKey,
}

impl Rejection {
    /// The bounded label for `gatehouse_filter_decisions_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::MissingToken => "missing_token",
            Rejection::TokenTooLarge => "token_too_large",
            Rejection::Malformed => "malformed_token",
            Rejection::BadAlgorithm => "bad_algorithm",
            Rejection::UnknownKey => "unknown_kid",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::BadIssuer => "bad_issuer",
            Rejection::BadAudience => "bad_audience",
            Rejection::MissingClaim => "missing_claim",
            Rejection::Invalid => "invalid_token",
            Rejection::MissingRole | Rejection::MissingPermission => "insufficient_scope",
            Rejection::NoKeys => "no_keys",
            Rejection::MissingApiKey => "missing_key",
            Rejection::InvalidApiKey => "invalid_key",
        }
    }

    /// What the client is told (problem `detail` and `error_description`).
    pub fn detail(self) -> &'static str {
        match self {
            Rejection::MissingToken => "a bearer token is required",
            Rejection::TokenTooLarge => "the token is too large",
            Rejection::Malformed => "the token is malformed",
            Rejection::BadAlgorithm => "the token's algorithm is not accepted",
            Rejection::UnknownKey => "the token's signing key is not known",
            Rejection::BadSignature => "the token's signature is invalid",
            Rejection::Expired => "the token has expired",
            Rejection::NotYetValid => "the token is not valid yet",
            Rejection::BadIssuer => "the token's issuer is not accepted",
            Rejection::BadAudience => "the token is not meant for this audience",
            Rejection::MissingClaim => "the token lacks a required claim (exp, iss or aud)",
            Rejection::Invalid => "the token is invalid",
            Rejection::MissingRole => "the token lacks a required role",
            Rejection::MissingPermission => "the token lacks a required permission",
            Rejection::NoKeys => "the keys to verify tokens are not available; try again later",
            Rejection::MissingApiKey => "an API key is required",
            Rejection::InvalidApiKey => "the API key is not valid",
        }
    }

    /// The status of the answer.
    pub fn status(self) -> StatusCode {
        match self {
            Rejection::MissingRole | Rejection::MissingPermission => StatusCode::FORBIDDEN,
            Rejection::NoKeys => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 §3.1 error code; `None` when the request carried no credentials at all.
    fn bearer_error(self) -> Option<&'static str> {
        match self {
            Rejection::MissingToken | Rejection::NoKeys => None,
            Rejection::MissingRole | Rejection::MissingPermission => Some("insufficient_scope"),
            _ => Some("invalid_token"),
        }
    }

    /// The answer of a bearer-token filter: problem+json plus `WWW-Authenticate` (401/403) or
    /// `Retry-After` (503). `realm` was checked to be quotable when the filter was built.
    pub(crate) fn bearer_reply(self, realm: &str, retry_after_secs: u64) -> Reply {
        let reply = Reply::problem(self.status(), self.detail(), self.reason());
        if self == Rejection::NoKeys {
            return reply.with_header(RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
        }
        let challenge = match self.bearer_error() {
            None => format!("Bearer realm=\"{realm}\""),
            Some(error) => format!(
                "Bearer realm=\"{realm}\", error=\"{error}\", error_description=\"{}\"",
                self.detail()
            ),
        };
        match HeaderValue::from_str(&challenge) {
            Ok(value) => reply.with_header(WWW_AUTHENTICATE, value),
            Err(_) => reply.with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
        }
    }

    /// The answer of the `api_key` filter (there is no registered scheme for API keys; the
    /// challenge names the header to use, since RFC 9110 requires one on every 401).
    pub(crate) fn api_key_reply(self, challenge: &HeaderValue) -> Reply {
        Reply::problem(self.status(), self.detail(), self.reason())
            .with_header(WWW_AUTHENTICATE, challenge.clone())
    }

    /// Map a `jsonwebtoken` failure to a rejection.
    pub(crate) fn from_jwt(kind: &ErrorKind) -> Rejection {
        match kind {
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_)
            | ErrorKind::InvalidClaimFormat(_) => Rejection::Malformed,
            ErrorKind::InvalidSignature => Rejection::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm => Rejection::BadAlgorithm,
            ErrorKind::ExpiredSignature => Rejection::Expired,
            ErrorKind::ImmatureSignature => Rejection::NotYetValid,
            ErrorKind::InvalidIssuer => Rejection::BadIssuer,
            ErrorKind::InvalidAudience => Rejection::BadAudience,
            ErrorKind::MissingRequiredClaim(_) => Rejection::MissingClaim,
            _ => Rejection::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::ReplyBody;

    fn challenge(reply: &Reply) -> String {
        reply
            .headers
            .iter()
            .find(|(n, _)| n == WWW_AUTHENTICATE)
            .and_then(|(_, v)| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn a_missing_token_gets_a_challenge_without_an_error_code() {
        let reply = Rejection::MissingToken.bearer_reply("gatehouse", 5);
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge(&reply), r#"Bearer realm="gatehouse""#);
        assert!(matches!(reply.body, ReplyBody::Problem(_)));
    }

    #[test]
    fn a_bad_token_gets_invalid_token_and_a_description() {
        let reply = Rejection::Expired.bearer_reply("gatehouse", 5);
        assert_eq!(
            challenge(&reply),
            r#"Bearer realm="gatehouse", error="invalid_token", error_description="the token has expired""#
        );
        assert_eq!(reply.reason, "expired");
    }

    #[test]
    fn scope_failures_are_403_insufficient_scope() {
        let reply = Rejection::MissingRole.bearer_reply("gatehouse", 5);
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert!(challenge(&reply).contains(r#"error="insufficient_scope""#));
    }

    #[test]
    fn no_keys_is_503_with_retry_after() {
        let reply = Rejection::NoKeys.bearer_reply("gatehouse", 0);
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.reason, "no_keys");
        assert!(reply
            .headers
            .iter()
            .any(|(n, v)| n == RETRY_AFTER && v == "1"));
        assert!(challenge(&reply).is_empty());
    }

    #[test]
    fn every_description_fits_a_quoted_string() {
        use Rejection::*;
        for r in [
            MissingToken,
            TokenTooLarge,
            Malformed,
            BadAlgorithm,
            UnknownKey,
            BadSignature,
            Expired,
            NotYetValid,
            BadIssuer,
            BadAudience,
            MissingClaim,
            Invalid,
            MissingRole,
            MissingPermission,
            NoKeys,
            MissingApiKey,
            InvalidApiKey,
        ] {
            assert!(super::super::is_quotable(r.detail()), "{r:?}");
        }
    }
}
