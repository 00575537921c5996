//! Account administration (admins): find accounts (cursor pages, by email prefix, role and
//! status), see one with its sessions, disable and re-enable.
//!
//! Disabling ends every session of the account in the same transaction, so its refresh
//! tokens stop working and this service answers its access tokens 401 at once (other
//! services honour them until they expire, at most the access-token lifetime). Login then
//! refuses it: with a wrong password exactly as for any wrong password; only someone who
//! knows the password learns that the account is disabled.

use axum::extract::{Path, State};
use kit::db::now_ms;
use kit::openapi::ProblemBody;
use kit::page::{Page, PageQuery};
use kit::Query;
use kit::{Identity, Json};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

use crate::accounts::roles_of;
use crate::auth::active_session;
use crate::error::Error;
use crate::{AppState, ROLES};

/// An account as an admin sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5f2-7c1e-7a4b-9c2d-3e4f5a6b7c8d", "email": "alice@example.com",
    "name": "Alice Martin", "roles": ["customer"], "created_at": 1733400000000_i64,
    "status": "disabled", "disabled_at": 1733500000000_i64, "disabled_reason": "chargeback fraud"
}))]
pub struct AdminAccount {
    /// The account's id.
    pub id: String,
    /// Normalized email.
    pub email: String,
    /// Display name.
    pub name: Option<String>,
    /// Role names.
    pub roles: Vec<String>,
    /// Unix ms.
    pub created_at: i64,
    /// `active` or `disabled`.
    pub status: AccountStatus,
    /// When it was disabled (Unix ms), while it is.
    pub disabled_at: Option<i64>,
    /// Why, as the admin wrote it, while it is disabled.
    pub disabled_reason: Option<String>,
}

/// Whether an account may log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    /// It may.
    Active,
    /// It may not; its sessions have ended.
    Disabled,
}

/// A session of an account, as an admin sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdminSession {
    /// The session's id.
    pub id: String,
    /// Unix ms.
    pub created_at: i64,
    /// Last refresh, Unix ms.
    pub last_used_at: i64,
    /// Unix ms.
    pub expires_at: i64,
    /// When it ended, if it did.
    pub revoked_at: Option<i64>,
    /// Why it ended (`logout`, `account disabled`…).
    pub revoked_reason: Option<String>,
    /// The browser or client that logged in (first 200 characters).
    pub user_agent: Option<String>,
    /// Not revoked and not expired.
    pub active: bool,
}

/// One account with its sessions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountDetail {
    /// The account.
    #[serde(flatten)]
    pub account: AdminAccount,
    /// Its last 100 sessions, newest first.
    pub sessions: Vec<AdminSession>,
}

/// `GET /admin/users`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Accounts whose email starts with this (case does not matter).
    #[param(example = "ali")]
    pub email: Option<String>,
    /// Accounts with this role.
    #[param(example = "customer")]
    pub role: Option<String>,
    /// `active` or `disabled`.
    pub status: Option<AccountStatus>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `POST /admin/users/{id}/disable`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"reason": "chargeback fraud"}))]
pub struct Disable {
    /// Why, for other admins (at most 500 characters).
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

const COLUMNS: &str = "id, email, name, created_at, disabled_at, disabled_reason";

async fn account_of(s: &AppState, r: &AnyRow) -> Result<AdminAccount, Error> {
    let id: String = r.try_get("id")?;
    let disabled_at: Option<i64> = r.try_get("disabled_at")?;
    Ok(AdminAccount {
        roles: roles_of(&s.db, &id).await?,
        email: r.try_get("email")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
        status: if disabled_at.is_some() {
            AccountStatus::Disabled
        } else {
            AccountStatus::Active
        },
        disabled_at,
        disabled_reason: r.try_get("disabled_reason")?,
        id,
    })
}

/// 403 unless the caller is an admin with an open session.
async fn admin(s: &AppState, id: &Identity) -> Result<(), Error> {
    active_session(s, id).await?;
    Ok(id.require_role("admin")?)
}

/// `email` as a `LIKE` pattern for "starts with" (`%`, `_` and `\` taken literally).
fn prefix_pattern(email: &str) -> String {
    let mut p = String::with_capacity(email.len() + 1);
    for c in email.trim().to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// `GET /admin/users` → a page of accounts in id order.
#[utoipa::path(get, path = "/admin/users", operation_id = "listAccounts", tag = "admin",
    summary = "Find accounts by email prefix, role and status (admin)",
    security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, description = "One page, oldest account first", body = Page<AdminAccount>),
        (status = 401, description = "No valid bearer token, or its session has ended", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The caller is not an admin", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(s): State<AppState>,
    id: Identity,
    q: Query<ListQuery>,
) -> Result<Json<Page<AdminAccount>>, Error> {
    admin(&s, &id).await?;
    let Query(q) = q;
    if let Some(role) = &q.role {
        if !ROLES.iter().any(|(r, _)| r == role) {
            return Err(Error::field("role", format!("unknown role {role:?}")));
        }
    }
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let after = page.after()?.unwrap_or_default();
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM users u WHERE id > $1 \
         AND ($2 = '' OR email LIKE $2 ESCAPE '\\') \
         AND ($3 = '' OR EXISTS (SELECT 1 FROM user_roles r WHERE r.user_id = u.id AND r.role = $3)) \
         AND ($4 = '' OR ($4 = 'active' AND disabled_at IS NULL) \
              OR ($4 = 'disabled' AND disabled_at IS NOT NULL)) \
         ORDER BY id LIMIT $5"
    ))
    .bind(&after)
    .bind(q.email.as_deref().map(prefix_pattern).unwrap_or_default())
    .bind(q.role.as_deref().unwrap_or_default())
    .bind(match q.status {
        None => "",
        Some(AccountStatus::Active) => "active",
        Some(AccountStatus::Disabled) => "disabled",
    })
    .bind(limit + 1)
    .fetch_all(s.db.pool())
    .await?;
    let mut accounts = Vec::with_capacity(rows.len());
    for r in &rows {
        accounts.push(account_of(&s, r).await?);
    }
    Ok(Json(Page::from_rows(accounts, limit, |a| a.id.clone())))
}

async fn detail(s: &AppState, user_id: &str) -> Result<AccountDetail, Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
        .bind(user_id)
        .fetch_optional(s.db.pool())
        .await?
        .ok_or(Error::NotFound("no such user"))?;
    let account = account_of(s, &row).await?;
    let now = now_ms();
    let sessions = sqlx::query(
        "SELECT id, created_at, last_used_at, expires_at, revoked_at, revoked_reason, user_agent \
         FROM sessions WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT 100",
    )
    .bind(user_id)
    .fetch_all(s.db.pool())
    .await?
    .iter()
    .map(|r| {
        let revoked_at: Option<i64> = r.try_get("revoked_at")?;
        let expires_at: i64 = r.try_get("expires_at")?;
        Ok(AdminSession {
            id: r.try_get("id")?,
            created_at: r.try_get("created_at")?,
            last_used_at: r.try_get("last_used_at")?,
            expires_at,
            revoked_reason: r.try_get("revoked_reason")?,
            user_agent: r.try_get("user_agent")?,
            active: revoked_at.is_none() && expires_at > now,
            revoked_at,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(AccountDetail { account, sessions })
}

/// `GET /admin/users/{id}` → the account and its sessions.
#[utoipa::path(get, path = "/admin/users/{id}", operation_id = "getAccount", tag = "admin",
    summary = "Read an account with its sessions (admin)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The account's id")),
    responses(
        (status = 200, description = "The account and its last 100 sessions", body = AccountDetail),
        (status = 401, description = "No valid bearer token, or its session has ended", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The caller is not an admin", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(s): State<AppState>,
    id: Identity,
    Path(user_id): Path<String>,
) -> Result<Json<AccountDetail>, Error> {
    admin(&s, &id).await?;
    Ok(Json(detail(&s, &user_id).await?))
}

/// `POST /admin/users/{id}/disable` → the account, disabled; its sessions have ended.
#[utoipa::path(post, path = "/admin/users/{id}/disable", operation_id = "disableAccount",
    tag = "admin", summary = "Disable an account and end its sessions (admin)",
    description = "Idempotent: disabling a disabled account changes nothing (the first reason \
        stays). An admin cannot disable their own account.",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The account's id")),
    request_body(content = Option<Disable>, description = "Optional: why"),
    responses(
        (status = 200, description = "The account, disabled, with its sessions ended", body = AccountDetail),
        (status = 401, description = "No valid bearer token, or its session has ended", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The caller is not an admin", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The caller's own account, or a reason over 500 characters", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn disable(
    State(s): State<AppState>,
    id: Identity,
    Path(user_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<AccountDetail>, Error> {
    admin(&s, &id).await?;
    let body: Disable = kit::problem::optional_body(&body)?;
    let reason = body
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(Error::field("reason", "must be at most 500 characters"));
    }
    if user_id == id.user_id {
        return Err(Error::field(
            "id",
            "an admin cannot disable their own account",
        ));
    }
    let now = now_ms();
    let mut tx = s.db.begin().await?;
    let exists = sqlx::query("SELECT id FROM users WHERE id = $1")
        .bind(&user_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(Error::NotFound("no such user"));
    }
    sqlx::query(
        "UPDATE users SET disabled_at = $1, disabled_reason = $2, updated_at = $1 \
         WHERE id = $3 AND disabled_at IS NULL",
    )
    .bind(now)
    .bind(reason.as_deref())
    .bind(&user_id)
    .execute(&mut *tx)
    .await?;
    let ended = sqlx::query(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = 'account disabled' \
         WHERE user_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(&user_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    tracing::warn!(admin = %id.user_id, user_id = %user_id, sessions_ended = ended, "account disabled");
    Ok(Json(detail(&s, &user_id).await?))
}

/// `POST /admin/users/{id}/enable` → the account, active again (it logs in anew).
#[utoipa::path(post, path = "/admin/users/{id}/enable", operation_id = "enableAccount",
    tag = "admin", summary = "Re-enable a disabled account (admin)",
    description = "Idempotent. The sessions that ended when it was disabled stay ended.",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The account's id")),
    responses(
        (status = 200, description = "The account, active", body = AccountDetail),
        (status = 401, description = "No valid bearer token, or its session has ended", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The caller is not an admin", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn enable(
    State(s): State<AppState>,
    id: Identity,
    Path(user_id): Path<String>,
) -> Result<Json<AccountDetail>, Error> {
    admin(&s, &id).await?;
    let done = sqlx::query(
        "UPDATE users SET disabled_at = NULL, disabled_reason = NULL, updated_at = $1 \
         WHERE id = $2",
    )
    .bind(now_ms())
    .bind(&user_id)
    .execute(s.db.pool())
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound("no such user"));
    }
    tracing::info!(admin = %id.user_id, user_id = %user_id, "account enabled");
    Ok(Json(detail(&s, &user_id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_matches_literally() {
        assert_eq!(prefix_pattern(" Ali "), "ali%");
        assert_eq!(prefix_pattern("a_b%c\\"), "a\\_b\\%c\\\\%");
    }
}
