//! The facts this service publishes, written to the kit's outbox in the same transaction
//! as the change they describe: `user.registered`, `user.password_changed`,
//! `user.session_revoked`. The relay
//! started by [`crate::Service`] publishes them to the event bus after commit.

use serde::Serialize;
use sqlx::{Any, Transaction};

use crate::error::Error;

/// `user.registered`.
#[derive(Debug, Serialize)]
pub struct UserRegistered<'a> {
    /// The new account's id.
    pub user_id: &'a str,
    /// Its normalized email.
    pub email: &'a str,
    /// Display name.
    pub name: Option<&'a str>,
    /// Unix ms.
    pub at: i64,
}

/// `user.password_changed`.
#[derive(Debug, Serialize)]
pub struct PasswordChanged<'a> {
    /// The account's id.
    pub user_id: &'a str,
    /// Unix ms.
    pub at: i64,
}

/// `user.session_revoked`: a session ended before its time by its owner
/// (`revoked_by_owner`) or because a spent refresh token of it was presented again
/// (`refresh_token_reused`: someone may hold a stolen token). Logouts and the sessions a
/// password change ends are not announced (the password change is).
#[derive(Debug, Serialize)]
pub struct SessionRevoked<'a> {
    /// The account's id.
    pub user_id: &'a str,
    /// The session's id.
    pub session_id: &'a str,
    /// `revoked_by_owner` or `refresh_token_reused`.
    pub reason: &'a str,
    /// Unix ms.
    pub at: i64,
}

/// Records `topic` with `payload` in the outbox, inside `tx`.
pub async fn record(
    tx: &mut Transaction<'static, Any>,
    topic: &str,
    payload: &impl Serialize,
) -> Result<(), Error> {
    kit::outbox::record(tx, topic, payload).await?;
    Ok(())
}
