//! The kit's own tables (outbox, inbox, idempotency keys), run with every service's
//! migrations by [`crate::db::Db::migrate`].

use sqlx::migrate::Migrator;

/// Versions 1..1000 belong to the kit.
pub(crate) static KIT: Migrator = sqlx::migrate!("./migrations");
