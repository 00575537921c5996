//! The facts this service publishes, written to the kit's outbox in the same transaction
//! as the change they describe: `user.registered`, `user.password_changed`. The relay
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

/// Records `topic` with `payload` in the outbox, inside `tx`.
pub async fn record(
    tx: &mut Transaction<'static, Any>,
    topic: &str,
    payload: &impl Serialize,
) -> Result<(), Error> {
    kit::outbox::record(tx, topic, payload).await?;
    Ok(())
}
