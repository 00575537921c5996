//! Accounts: registration, the caller's profile, password changes, roles.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kit::db::{new_id, now_ms};
use kit::openapi::ProblemBody;
use kit::{DbError, Identity, Json};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::auth::{active_session, revoke_sessions_except};
use crate::error::{Error, FieldError};
use crate::password::Verified;
use crate::{events, AppState, DEFAULT_ROLE, ROLES};

/// `POST /users`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({
    "email": "alice@example.com", "password": "correct horse battery staple", "name": "Alice Martin"
}))]
pub struct Register {
    /// An email address (`local@domain.tld`, at most 254 characters), stored trimmed and
    /// lowercased; one account per address.
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// 12 to 1024 characters (at most 1024 bytes), and not the email address.
    #[schema(min_length = 12)]
    password: String,
    /// Display name, up to 200 characters after trimming; blank is none.
    #[serde(default)]
    #[schema(max_length = 200)]
    name: Option<String>,
}

impl std::fmt::Debug for Register {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Register")
            .field("email", &self.email)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An account as its owner (or an admin) sees it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5f2-7c1e-7a4b-9c2d-3e4f5a6b7c8d", "email": "alice@example.com",
    "name": "Alice Martin", "roles": ["customer"], "created_at": 1733400000000_i64
}))]
pub struct Account {
    /// The account's id.
    pub id: String,
    /// Normalized email.
    pub email: String,
    /// Display name.
    pub name: Option<String>,
    /// Role names.
    pub roles: Vec<String>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// Trims and lowercases an email and checks its shape: `local@domain.tld`, at most 254
/// characters, no spaces or control characters.
pub fn normalize_email(raw: &str) -> Result<String, String> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("is required".into());
    }
    if email.len() > 254 {
        return Err("is longer than 254 characters".into());
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err("is not an email address".into());
    };
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || c == '@';
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !domain.chars().any(bad_char);
    if local.is_empty() || local.len() > 64 || local.chars().any(bad_char) || !domain_ok {
        return Err("is not an email address".into());
    }
    Ok(email)
}

/// Password rules: 12 to 1024 characters, and not the email.
pub fn check_password(
    field: &'static str,
    password: &str,
    email: Option<&str>,
) -> Option<FieldError> {
    let n = password.chars().count();
    let message = if n < 12 {
        "must be at least 12 characters"
    } else if password.len() > 1024 {
        "must be at most 1024 bytes"
    } else if email.is_some_and(|e| password.trim().eq_ignore_ascii_case(e)) {
        "must not be the email address"
    } else {
        return None;
    };
    Some(FieldError::new(field, message))
}

/// `POST /users` → 201 with the account. A taken email is 409, decided by the unique index
/// (two racing registrations: one 201, one 409).
#[utoipa::path(post, path = "/users", operation_id = "register", tag = "accounts",
    summary = "Register an account (role customer)",
    request_body = Register,
    responses(
        (status = 201, description = "Registered", body = Account),
        (status = 409, description = "An account with this email already exists", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn register(
    State(s): State<AppState>,
    Json(req): Json<Register>,
) -> Result<impl IntoResponse, Error> {
    let mut errors = Vec::new();
    let email = match normalize_email(&req.email) {
        Ok(e) => Some(e),
        Err(m) => {
            errors.push(FieldError::new("email", m));
            None
        }
    };
    errors.extend(check_password("password", &req.password, email.as_deref()));
    let name = req
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.chars().count() > 200) {
        errors.push(FieldError::new("name", "must be at most 200 characters"));
    }
    let (Some(email), true) = (email, errors.is_empty()) else {
        return Err(Error::Invalid(errors));
    };
    let hash = s.passwords.hash(&req.password).await?;
    let id = new_id();
    let now = now_ms();
    let mut tx = s.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(&id)
    .bind(&email)
    .bind(&name)
    .bind(&hash)
    .bind(now)
    .execute(&mut *tx)
    .await;
    match inserted.map_err(DbError::from) {
        Err(DbError::Conflict) => return Err(Error::EmailTaken),
        other => other?,
    };
    sqlx::query("INSERT INTO user_roles (user_id, role) VALUES ($1, $2)")
        .bind(&id)
        .bind(DEFAULT_ROLE)
        .execute(&mut *tx)
        .await?;
    let fact = events::UserRegistered {
        user_id: &id,
        email: &email,
        name: name.as_deref(),
        at: now,
    };
    events::record(&mut tx, "user.registered", &fact).await?;
    tx.commit().await?;
    s.outbox.wake();
    tracing::info!(user_id = %id, "account registered");
    let account = Account {
        id,
        email,
        name,
        roles: vec![DEFAULT_ROLE.into()],
        created_at: now,
    };
    Ok((StatusCode::CREATED, Json(account)))
}

/// The roles of `user_id`, sorted.
pub async fn roles_of(db: &kit::Db, user_id: &str) -> Result<Vec<String>, Error> {
    let rows = sqlx::query("SELECT role FROM user_roles WHERE user_id = $1 ORDER BY role")
        .bind(user_id)
        .fetch_all(db.pool())
        .await?;
    Ok(rows.iter().map(|r| r.get::<String, _>("role")).collect())
}

async fn load_account(s: &AppState, user_id: &str) -> Result<Account, Error> {
    let row = sqlx::query("SELECT id, email, name, created_at FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(s.db.pool())
        .await?
        .ok_or(Error::NotFound("no such user"))?;
    Ok(Account {
        id: row.get("id"),
        email: row.get("email"),
        name: row.get("name"),
        roles: roles_of(&s.db, user_id).await?,
        created_at: row.get("created_at"),
    })
}

/// `GET /users/me`.
#[utoipa::path(get, path = "/users/me", operation_id = "getMe", tag = "accounts",
    summary = "Read the caller's account",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account", body = Account),
        (status = 401, description = "No valid bearer token, or its session has ended (logout, revocation, password change; service tokens have no session)", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn me(State(s): State<AppState>, id: Identity) -> Result<Json<Account>, Error> {
    active_session(&s, &id).await?;
    Ok(Json(load_account(&s, &id.user_id).await?))
}

/// `PUT /users/me/password`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({
    "current_password": "correct horse battery staple",
    "new_password": "a longer passphrase for 2026"
}))]
pub struct ChangePassword {
    /// The password the account has now.
    current_password: String,
    /// 12 to 1024 characters (at most 1024 bytes), and not the account's email address.
    #[schema(min_length = 12)]
    new_password: String,
}

impl std::fmt::Debug for ChangePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangePassword { .. }")
    }
}

/// `PUT /users/me/password` → 204; every other session of the account ends.
#[utoipa::path(put, path = "/users/me/password", operation_id = "changePassword", tag = "accounts",
    summary = "Change the caller's password; every other session ends",
    security(("bearer" = [])),
    request_body = ChangePassword,
    responses(
        (status = 204, description = "Changed; the caller's other sessions have ended"),
        (status = 401, description = "No valid bearer token, or its session has ended", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The current password is wrong", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The new password breaks a rule (`errors` names `new_password`), or the body has the wrong shape", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn change_password(
    State(s): State<AppState>,
    id: Identity,
    Json(req): Json<ChangePassword>,
) -> Result<StatusCode, Error> {
    active_session(&s, &id).await?;
    let row = sqlx::query("SELECT email, password_hash FROM users WHERE id = $1")
        .bind(&id.user_id)
        .fetch_optional(s.db.pool())
        .await?
        .ok_or(Error::SessionEnded)?;
    let email: String = row.get("email");
    let stored: String = row.get("password_hash");
    if let Some(e) = check_password("new_password", &req.new_password, Some(&email)) {
        return Err(Error::Invalid(vec![e]));
    }
    if s.passwords
        .verify(&req.current_password, Some(&stored))
        .await
        == Verified::No
    {
        return Err(Error::Forbidden("the current password is wrong".into()));
    }
    let hash = s.passwords.hash(&req.new_password).await?;
    let now = now_ms();
    let mut tx = s.db.begin().await?;
    sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
        .bind(&hash)
        .bind(now)
        .bind(&id.user_id)
        .execute(&mut *tx)
        .await?;
    let ended =
        revoke_sessions_except(&mut tx, &id.user_id, &id.session_id, "password changed").await?;
    let fact = events::PasswordChanged {
        user_id: &id.user_id,
        at: now,
    };
    events::record(&mut tx, "user.password_changed", &fact).await?;
    tx.commit().await?;
    s.outbox.wake();
    tracing::info!(user_id = %id.user_id, sessions_ended = ended, "password changed");
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /admin/users/{id}/roles`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"roles": ["admin", "customer"]}))]
pub struct SetRoles {
    /// At least one of the known roles (`customer`, `admin`); they replace the account's
    /// roles. Duplicates count once.
    #[schema(schema_with = role_names)]
    roles: Vec<String>,
}

/// The schema of `SetRoles::roles`, its enum made from [`ROLES`] so it cannot drift.
fn role_names() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(ROLES.iter().map(|(role, _)| *role))),
        )
        .min_items(Some(1))
        .description(Some(
            "At least one known role; they replace the account's roles. Duplicates count once.",
        ))
        .build()
}

/// `PUT /admin/users/{id}/roles` (admins only) → the account with its new roles. Tokens
/// already issued keep their roles until they expire.
#[utoipa::path(put, path = "/admin/users/{id}/roles", operation_id = "setRoles", tag = "admin",
    summary = "Replace an account's roles (admin)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The account's id")),
    request_body = SetRoles,
    responses(
        (status = 200, description = "The account with its new roles (tokens already issued keep the old ones until they expire)", body = Account),
        (status = 401, description = "No valid bearer token, or its session has ended", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The caller is not an admin", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Another change of this account's roles committed first (concurrent changes on PostgreSQL); retry", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "`roles` is empty or names an unknown role, or the body has the wrong shape", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn set_roles(
    State(s): State<AppState>,
    id: Identity,
    Path(user_id): Path<String>,
    Json(req): Json<SetRoles>,
) -> Result<Json<Account>, Error> {
    active_session(&s, &id).await?;
    id.require_role("admin")?;
    let mut roles = req.roles;
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        return Err(Error::field("roles", "must name at least one role"));
    }
    if let Some(bad) = roles.iter().find(|r| !ROLES.iter().any(|(k, _)| k == r)) {
        let known: Vec<&str> = ROLES.iter().map(|(k, _)| *k).collect();
        return Err(Error::field(
            "roles",
            format!("unknown role {bad:?} (known: {})", known.join(", ")),
        ));
    }
    let mut tx = s.db.begin().await?;
    let exists = sqlx::query("SELECT id FROM users WHERE id = $1")
        .bind(&user_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(Error::NotFound("no such user"));
    }
    sqlx::query("DELETE FROM user_roles WHERE user_id = $1")
        .bind(&user_id)
        .execute(&mut *tx)
        .await?;
    for role in &roles {
        sqlx::query("INSERT INTO user_roles (user_id, role) VALUES ($1, $2)")
            .bind(&user_id)
            .bind(role)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(admin = %id.user_id, user_id = %user_id, roles = ?roles, "roles set");
    Ok(Json(load_account(&s, &user_id).await?))
}

/// Makes the account with `email` an admin (start-up setting or CLI flag; there is no public
/// way to become admin). An email without an account is logged and skipped.
pub async fn bootstrap_admin(s: &AppState, email: &str) -> Result<(), Error> {
    let Ok(email) = normalize_email(email) else {
        tracing::warn!("bootstrap admin: not an email address; skipped");
        return Ok(());
    };
    let row = sqlx::query("SELECT id FROM users WHERE email = $1")
        .bind(&email)
        .fetch_optional(s.db.pool())
        .await?;
    let Some(row) = row else {
        tracing::warn!("bootstrap admin: no account with that email yet; register it and restart");
        return Ok(());
    };
    let user_id: String = row.get("id");
    sqlx::query(
        "INSERT INTO user_roles (user_id, role) VALUES ($1, 'admin') \
         ON CONFLICT (user_id, role) DO NOTHING",
    )
    .bind(&user_id)
    .execute(s.db.pool())
    .await?;
    tracing::info!(user_id = %user_id, "bootstrap admin granted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "a b@example.com",
            "a@example",
            "a@.com",
            "a@example..com",
            "a@b@c.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_rules() {
        assert!(check_password("p", "short", None).is_some());
        assert!(check_password("p", "alice@example.com", Some("alice@example.com")).is_some());
        assert!(check_password("p", "ALICE@example.com", Some("alice@example.com")).is_some());
        assert!(check_password("p", "twelve chars", None).is_none());
        assert!(
            check_password("p", "ééééééééééé", None).is_some(),
            "11 characters"
        );
    }
}
