//! Logging in, refreshing, logging out, sessions, and the published keys.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kit::db::{new_id, now_ms};
use kit::identity::AccessClaims;
use kit::openapi::ProblemBody;
use kit::{Identity, Json};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;

use crate::accounts::{normalize_email, roles_of};
use crate::error::Error;
use crate::password::Verified;
use crate::{events, permissions_of, AppState};

/// `POST /auth/login`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"email": "alice@example.com", "password": "correct horse battery staple"}))]
pub struct Login {
    /// The account's email (matched trimmed and lowercased).
    email: String,
    /// The account's password.
    password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// A token pair.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "access_token": "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCIsImtpZCI6Ik5fQ2ZFZ3JQIn0.eyJzdWIiOiIwMTkzYTVmMi03YzFlIn0.c2lnbmF0dXJl",
    "refresh_token": "q3Vh2mXo0fJb9sYk1Zt8wNcR4eLd7uPa6iGhTnBvC5E",
    "token_type": "Bearer", "expires_in": 900
}))]
pub struct Tokens {
    /// EdDSA JWT.
    pub access_token: String,
    /// Opaque; rotate it at `POST /auth/refresh`.
    pub refresh_token: String,
    /// Always `Bearer`.
    #[schema(value_type = String)]
    pub token_type: &'static str,
    /// Seconds the access token lives.
    pub expires_in: u64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { .. }")
    }
}

/// SHA-256 hex of a refresh token: what the database keeps.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_refresh_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(200).collect())
}

/// `POST /auth/login` → a token pair. Unknown email and wrong password give the same
/// answer after the same work; failed logins per email back off exponentially.
#[utoipa::path(post, path = "/auth/login", operation_id = "login", tag = "auth",
    summary = "Log in with email and password: a new session and its token pair",
    request_body = Login,
    responses(
        (status = 200, description = "Logged in", body = Tokens),
        (status = 401, description = "Wrong email or password (the same answer for both)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The right password for an account an admin disabled (a wrong one gets the 401 above)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed logins for this email; wait `Retry-After` seconds", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until the next attempt is considered"))),
    ))]
pub async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<Login>,
) -> Result<Json<Tokens>, Error> {
    // A malformed email is just an unknown one: same answer, same cost.
    let email = normalize_email(&req.email).unwrap_or_else(|_| req.email.trim().to_lowercase());
    let now = now_ms();
    if let Some(retry_after_s) = locked_out(&s, &email, now).await? {
        return Err(Error::Throttled { retry_after_s });
    }
    let row = sqlx::query("SELECT id, password_hash, disabled_at FROM users WHERE email = $1")
        .bind(&email)
        .fetch_optional(s.db.pool())
        .await?;
    let stored: Option<String> = row.as_ref().map(|r| r.get("password_hash"));
    let verdict = s.passwords.verify(&req.password, stored.as_deref()).await;
    let (Some(row), Verified::Yes { rehash }) = (row, verdict) else {
        record_failure(&s, &email, now).await?;
        return Err(Error::BadCredentials);
    };
    let user_id: String = row.get("id");
    // Only someone who knows the password learns that the account is disabled.
    if row.get::<Option<i64>, _>("disabled_at").is_some() {
        return Err(Error::Disabled);
    }
    sqlx::query("DELETE FROM login_failures WHERE email = $1")
        .bind(&email)
        .execute(s.db.pool())
        .await?;
    if rehash {
        let hash = s.passwords.hash(&req.password).await?;
        sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(&hash)
            .bind(now)
            .bind(&user_id)
            .execute(s.db.pool())
            .await?;
        tracing::info!(user_id = %user_id, "password rehashed with the current parameters");
    }
    let session_id = new_id();
    let refresh = new_refresh_token();
    let mut tx = s.db.begin().await?;
    // The account's row is the gate between a login and a disable racing it: this
    // conditional update waits for a disable in progress and then finds the account
    // disabled, or goes first, and the disable's revocation then sees this session.
    let active = sqlx::query(
        "UPDATE users SET updated_at = updated_at WHERE id = $1 AND disabled_at IS NULL",
    )
    .bind(&user_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if active == 0 {
        return Err(Error::Disabled);
    }
    sqlx::query(
        "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, user_agent) \
         VALUES ($1, $2, $3, $3, $4, $5)",
    )
    .bind(&session_id)
    .bind(&user_id)
    .bind(now)
    .bind(now + s.settings.session_ttl.as_millis() as i64)
    .bind(user_agent(&headers))
    .execute(&mut *tx)
    .await?;
    insert_refresh(&mut tx, &refresh, &session_id, now).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user_id, session_id = %session_id, "logged in");
    Ok(Json(issue(&s, &user_id, &session_id, refresh).await?))
}

/// Seconds until `email` may try again, when it is locked out.
async fn locked_out(s: &AppState, email: &str, now: i64) -> Result<Option<u64>, Error> {
    let row = sqlx::query("SELECT locked_until FROM login_failures WHERE email = $1")
        .bind(email)
        .fetch_optional(s.db.pool())
        .await?;
    Ok(row
        .map(|r| r.get::<i64, _>("locked_until"))
        .filter(|until| *until > now)
        .map(|until| ((until - now) as u64).div_ceil(1000)))
}

/// Counts a failed login; past the free attempts, locks the email for 1 s, 2 s, 4 s, …
/// up to the maximum. Failures older than the maximum lockout are forgotten.
async fn record_failure(s: &AppState, email: &str, now: i64) -> Result<(), Error> {
    let max_ms = s.settings.max_lockout.as_millis() as i64;
    let row = sqlx::query(
        "INSERT INTO login_failures (email, failures, locked_until, last_failed_at) \
         VALUES ($1, 1, 0, $2) \
         ON CONFLICT (email) DO UPDATE SET \
           failures = CASE WHEN login_failures.last_failed_at < $3 THEN 1 \
                           ELSE login_failures.failures + 1 END, \
           last_failed_at = $2 \
         RETURNING failures",
    )
    .bind(email)
    .bind(now)
    .bind(now - max_ms)
    .fetch_one(s.db.pool())
    .await?;
    let failures = row.get::<i64, _>("failures").max(0) as u32;
    let over = failures.saturating_sub(s.settings.free_failures);
    if over > 0 {
        let lock_ms = (1000_i64 << (over - 1).min(20)).min(max_ms);
        sqlx::query("UPDATE login_failures SET locked_until = $1 WHERE email = $2")
            .bind(now + lock_ms)
            .bind(email)
            .execute(s.db.pool())
            .await?;
        tracing::warn!(
            failures,
            lock_ms,
            "failed logins: email locked out for a while"
        );
    }
    Ok(())
}

async fn insert_refresh(
    tx: &mut Transaction<'static, Any>,
    token: &str,
    session_id: &str,
    now: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ($1, $2, $3)",
    )
    .bind(token_hash(token))
    .bind(session_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Signs an access token for the session, with the user's current roles.
async fn issue(
    s: &AppState,
    user_id: &str,
    session_id: &str,
    refresh_token: String,
) -> Result<Tokens, Error> {
    let roles = roles_of(&s.db, user_id).await?;
    let now = now_ms() / 1000;
    let ttl = s.settings.access_ttl.as_secs();
    let claims = AccessClaims {
        sub: user_id.to_owned(),
        iss: s.settings.issuer.clone(),
        aud: s.settings.audience.clone(),
        exp: now + ttl as i64,
        iat: now,
        jti: new_id(),
        sid: session_id.to_owned(),
        perms: permissions_of(&roles),
        roles,
    };
    Ok(Tokens {
        access_token: s.keys.active().sign(&claims),
        refresh_token,
        token_type: "Bearer",
        expires_in: ttl,
    })
}

/// `POST /auth/refresh`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"refresh_token": "q3Vh2mXo0fJb9sYk1Zt8wNcR4eLd7uPa6iGhTnBvC5E"}))]
pub struct Refresh {
    /// The refresh token of the latest pair; it is spent by this call.
    refresh_token: String,
}

impl std::fmt::Debug for Refresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Refresh { .. }")
    }
}

/// `POST /auth/refresh` → a new pair; the presented token is spent. A token presented
/// again after it was spent ends its session.
#[utoipa::path(post, path = "/auth/refresh", operation_id = "refresh", tag = "auth",
    summary = "Trade a refresh token for a new pair (the presented one is spent)",
    request_body = Refresh,
    responses(
        (status = 200, description = "The new pair, with the account's current roles", body = Tokens),
        (status = 401, description = "The refresh token is unknown, its session has ended or expired, or it was already used (which ends its session)", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn refresh(
    State(s): State<AppState>,
    Json(req): Json<Refresh>,
) -> Result<Json<Tokens>, Error> {
    let hash = token_hash(&req.refresh_token);
    let now = now_ms();
    let mut tx = s.db.begin().await?;
    // The conditional update is the lock: of two racing refreshes exactly one spends it.
    let spent = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
    )
    .bind(now)
    .bind(&hash)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let row = sqlx::query(
        "SELECT s.id, s.user_id, s.revoked_at, s.expires_at, u.disabled_at \
         FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id \
         JOIN users u ON u.id = s.user_id WHERE r.token_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(Error::BadRefreshToken("unknown refresh token"));
    };
    let session_id: String = row.get("id");
    let user_id: String = row.get("user_id");
    if spent == 0 {
        let ended = revoke_session_tx(&mut tx, &session_id, "refresh token reused").await?;
        if ended {
            let fact = events::SessionRevoked {
                user_id: &user_id,
                session_id: &session_id,
                reason: "refresh_token_reused",
                at: now,
            };
            events::record(&mut tx, "user.session_revoked", &fact).await?;
        }
        tx.commit().await?;
        s.outbox.wake();
        if ended {
            tracing::warn!(user_id = %user_id, session_id = %session_id, "a rotated refresh token was presented again: session revoked");
        }
        return Err(Error::BadRefreshToken(
            "this refresh token was already used; the session has been ended",
        ));
    }
    let revoked: Option<i64> = row.get("revoked_at");
    let expires_at: i64 = row.get("expires_at");
    let disabled: Option<i64> = row.get("disabled_at");
    if revoked.is_some() || expires_at <= now || disabled.is_some() {
        tx.commit().await?;
        return Err(Error::BadRefreshToken(
            "the session has ended; log in again",
        ));
    }
    let next = new_refresh_token();
    insert_refresh(&mut tx, &next, &session_id, now).await?;
    sqlx::query("UPDATE sessions SET last_used_at = $1 WHERE id = $2")
        .bind(now)
        .bind(&session_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(issue(&s, &user_id, &session_id, next).await?))
}

async fn revoke_session_tx(
    tx: &mut Transaction<'static, Any>,
    session_id: &str,
    reason: &str,
) -> Result<bool, Error> {
    let n = sqlx::query(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
    )
    .bind(now_ms())
    .bind(reason)
    .bind(session_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Ends every open session of `user_id` but `keep`; returns how many ended.
pub async fn revoke_sessions_except(
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
    keep: &str,
    reason: &str,
) -> Result<u64, Error> {
    Ok(sqlx::query(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
         WHERE user_id = $3 AND id <> $4 AND revoked_at IS NULL",
    )
    .bind(now_ms())
    .bind(reason)
    .bind(user_id)
    .bind(keep)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// 401 unless the access token's session is still open (this service's endpoints honour
/// logout and revocation at once).
pub async fn active_session(s: &AppState, id: &Identity) -> Result<(), Error> {
    let row =
        sqlx::query("SELECT revoked_at, expires_at FROM sessions WHERE id = $1 AND user_id = $2")
            .bind(&id.session_id)
            .bind(&id.user_id)
            .fetch_optional(s.db.pool())
            .await?;
    match row {
        Some(r)
            if r.get::<Option<i64>, _>("revoked_at").is_none()
                && r.get::<i64, _>("expires_at") > now_ms() =>
        {
            Ok(())
        }
        _ => Err(Error::SessionEnded),
    }
}

/// `POST /auth/logout` → 204; the session and its refresh tokens end.
#[utoipa::path(post, path = "/auth/logout", operation_id = "logout", tag = "auth",
    summary = "End the caller's session and its refresh tokens",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The session has ended"),
        (status = 401, description = "No valid bearer token, or its session has ended already", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn logout(State(s): State<AppState>, id: Identity) -> Result<StatusCode, Error> {
    active_session(&s, &id).await?;
    let mut tx = s.db.begin().await?;
    revoke_session_tx(&mut tx, &id.session_id, "logout").await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A session as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5f3-1a2b-7c3d-8e4f-5a6b7c8d9e0f", "created_at": 1733400000000_i64,
    "last_used_at": 1733400600000_i64, "expires_at": 1735992000000_i64,
    "user_agent": "Mozilla/5.0 (X11; Linux x86_64)", "current": true
}))]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the last refresh.
    pub last_used_at: i64,
    /// Unix ms after which it cannot be refreshed.
    pub expires_at: i64,
    /// The client that logged in.
    pub user_agent: Option<String>,
    /// Whether this is the session of the token that asked.
    pub current: bool,
}

/// `GET /users/me/sessions`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"sessions": [{
    "id": "0193a5f3-1a2b-7c3d-8e4f-5a6b7c8d9e0f", "created_at": 1733400000000_i64,
    "last_used_at": 1733400600000_i64, "expires_at": 1735992000000_i64,
    "user_agent": "Mozilla/5.0 (X11; Linux x86_64)", "current": true
}]}))]
pub struct Sessions {
    /// The open sessions, newest first, at most 100.
    pub sessions: Vec<SessionView>,
}

/// `GET /users/me/sessions` → the open sessions, newest first.
#[utoipa::path(get, path = "/users/me/sessions", operation_id = "listSessions", tag = "sessions",
    summary = "List the caller's open sessions, newest first",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The open sessions (at most 100)", body = Sessions),
        (status = 401, description = "No valid bearer token, or its session has ended", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list_sessions(
    State(s): State<AppState>,
    id: Identity,
) -> Result<Json<Sessions>, Error> {
    active_session(&s, &id).await?;
    let rows = sqlx::query(
        "SELECT id, created_at, last_used_at, expires_at, user_agent FROM sessions \
         WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
         ORDER BY created_at DESC LIMIT 100",
    )
    .bind(&id.user_id)
    .bind(now_ms())
    .fetch_all(s.db.pool())
    .await?;
    let sessions: Vec<SessionView> = rows
        .iter()
        .map(|r| {
            let sid: String = r.get("id");
            SessionView {
                current: sid == id.session_id,
                id: sid,
                created_at: r.get("created_at"),
                last_used_at: r.get("last_used_at"),
                expires_at: r.get("expires_at"),
                user_agent: r.get("user_agent"),
            }
        })
        .collect();
    Ok(Json(Sessions { sessions }))
}

/// `DELETE /users/me/sessions/{id}` → 204, or 404 for a session that is not the caller's.
#[utoipa::path(delete, path = "/users/me/sessions/{id}", operation_id = "revokeSession", tag = "sessions",
    summary = "End one of the caller's sessions",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 204, description = "The session has ended"),
        (status = 401, description = "No valid bearer token, or its session has ended", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No open session with this id is the caller's", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn revoke_session(
    State(s): State<AppState>,
    id: Identity,
    Path(session_id): Path<String>,
) -> Result<StatusCode, Error> {
    active_session(&s, &id).await?;
    let mut tx = s.db.begin().await?;
    let n = sqlx::query(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = 'revoked by owner' \
         WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
    )
    .bind(now_ms())
    .bind(&session_id)
    .bind(&id.user_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(Error::NotFound("no such open session"));
    }
    let fact = events::SessionRevoked {
        user_id: &id.user_id,
        session_id: &session_id,
        reason: "revoked_by_owner",
        at: now_ms(),
    };
    events::record(&mut tx, "user.session_revoked", &fact).await?;
    tx.commit().await?;
    s.outbox.wake();
    Ok(StatusCode::NO_CONTENT)
}

/// The published key set (RFC 7517).
// Only the OpenAPI document's picture of `jsonwebtoken`'s `JwkSet`, which the handler
// serializes (it has no schema of its own).
#[derive(ToSchema)]
#[schema(as = JwkSet, example = json!({"keys": [{
    "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    "kid": "N_CfEgrPxT0sZ5DkT9Hk3Oa6mh7tY2yGq4fJ8uLwR1c", "alg": "EdDSA", "use": "sig"
}]}))]
#[allow(dead_code)]
struct JwkSetBody {
    /// The active key first, then retired keys whose tokens may still be alive.
    keys: Vec<PublicJwk>,
}

/// One Ed25519 public key (RFC 8037).
#[derive(ToSchema)]
#[schema(as = Jwk)]
#[allow(dead_code)]
struct PublicJwk {
    /// Key type: `OKP`.
    kty: String,
    /// Curve: `Ed25519`.
    crv: String,
    /// The public key, base64url.
    x: String,
    /// Key id: the RFC 7638 thumbprint; access tokens name it in their `kid` header.
    kid: String,
    /// `EdDSA`.
    alg: String,
    /// `sig`.
    #[schema(rename = "use")]
    usage: String,
}

/// `GET /.well-known/jwks.json`: the active key and retired keys whose tokens may still be
/// alive.
#[utoipa::path(get, path = "/.well-known/jwks.json", operation_id = "getJwks", tag = "auth",
    summary = "The public keys that verify access tokens (JWKS)",
    responses((status = 200, description = "The key set (cacheable for 60 s)", body = JwkSetBody,
        headers(("Cache-Control" = String, description = "`public, max-age=60`")))))]
pub async fn jwks(State(s): State<AppState>) -> Response {
    let mut resp = axum::Json(s.keys.jwks()).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    resp
}

/// `POST /admin/keys/rotate`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"kid": "N_CfEgrPxT0sZ5DkT9Hk3Oa6mh7tY2yGq4fJ8uLwR1c"}))]
pub struct RotatedKey {
    /// The new active key's id.
    pub kid: String,
}

/// `POST /admin/keys/rotate` (permission `keys:rotate`) → the new key's id. The old key
/// stays published for the access-token lifetime plus a minute.
#[utoipa::path(post, path = "/admin/keys/rotate", operation_id = "rotateKeys", tag = "admin",
    summary = "Make a new signing key (keys:rotate); the old one stays published for the token lifetime plus a minute",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rotated", body = RotatedKey),
        (status = 401, description = "No valid bearer token, or its session has ended", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The caller lacks the keys:rotate permission", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The signing key is configured inline (SIGNING_KEY): rotate it where it is kept", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn rotate_keys(
    State(s): State<AppState>,
    id: Identity,
) -> Result<Json<RotatedKey>, Error> {
    active_session(&s, &id).await?;
    id.require_permission("keys:rotate")?;
    let keep = s.settings.access_ttl.as_millis() as i64 + 60_000;
    let kid = s.keys.rotate(&s.db, keep).await?;
    Ok(Json(RotatedKey { kid }))
}

/// `POST /auth/token` (client credentials grant, JSON body).
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({
    "grant_type": "client_credentials", "client_id": "order",
    "client_secret": "s3cr3t-for-the-order-service"
}))]
pub struct TokenRequest {
    /// `client_credentials`, the only grant.
    #[schema(value_type = GrantType)]
    grant_type: String,
    /// The service's client id (one of the configured `SERVICE_CLIENTS`).
    client_id: String,
    /// The client's secret (the service keeps only its SHA-256).
    client_secret: String,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("grant_type", &self.grant_type)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The grants `POST /auth/token` knows.
// Only for the OpenAPI document: the handler reads a string and names the field when it
// is another grant.
#[derive(ToSchema)]
#[allow(dead_code)]
enum GrantType {
    /// A service authenticates with its own id and secret.
    #[schema(rename = "client_credentials")]
    ClientCredentials,
}

/// A service token: no refresh token, ask again before it expires.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "access_token": "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCIsImtpZCI6Ik5fQ2ZFZ3JQIn0.eyJzdWIiOiJzZXJ2aWNlOm9yZGVyIn0.c2lnbmF0dXJl",
    "token_type": "Bearer", "expires_in": 900
}))]
pub struct ServiceToken {
    /// EdDSA JWT: `sub` = `service:<client id>`, role `service`, the client's permissions.
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(value_type = String)]
    pub token_type: &'static str,
    /// Seconds the token lives.
    pub expires_in: u64,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceToken { .. }")
    }
}

/// `POST /auth/token` → a service token (`sub` = `service:<id>`, role `service`, the
/// client's permissions; no refresh token: ask again before it expires).
#[utoipa::path(post, path = "/auth/token", operation_id = "serviceToken", tag = "auth",
    summary = "Get a service token (client credentials grant)",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "The service token", body = ServiceToken),
        (status = 401, description = "Unknown client id or wrong secret", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "`grant_type` is not `client_credentials`, or the body has the wrong shape", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn service_token(
    State(s): State<AppState>,
    Json(req): Json<TokenRequest>,
) -> Result<Json<ServiceToken>, Error> {
    if req.grant_type != "client_credentials" {
        return Err(Error::field(
            "grant_type",
            "only \"client_credentials\" is supported",
        ));
    }
    let presented = token_hash(&req.client_secret);
    let client = s.settings.service_clients.iter().find(|c| {
        c.id == req.client_id && constant_time_eq(c.secret_sha256.as_bytes(), presented.as_bytes())
    });
    let Some(client) = client else {
        tracing::warn!(client_id = %req.client_id.chars().take(64).collect::<String>(), "service token refused");
        return Err(Error::BadCredentials);
    };
    let now = now_ms() / 1000;
    let ttl = s.settings.access_ttl.as_secs();
    let claims = AccessClaims {
        sub: format!("service:{}", client.id),
        iss: s.settings.issuer.clone(),
        aud: s.settings.audience.clone(),
        exp: now + ttl as i64,
        iat: now,
        jti: new_id(),
        sid: "service".into(),
        roles: vec!["service".into()],
        perms: client.permissions.clone(),
    };
    Ok(Json(ServiceToken {
        access_token: s.keys.active().sign(&claims),
        token_type: "Bearer",
        expires_in: ttl,
    }))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
