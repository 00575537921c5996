//! Per user, per category and per channel: on unless turned off. Security notices are
//! always on.

use kit::db::now_ms;
use serde::{Deserialize, Serialize};
use sqlx::{Any, Executor, Row};

use crate::catalog::{Category, Channel};

/// Whether `user` gets `category` on `channel`.
pub async fn enabled<'c, E>(
    db: E,
    user: &str,
    category: Category,
    channel: &Channel,
) -> Result<bool, sqlx::Error>
where
    E: Executor<'c, Database = Any>,
{
    if !category.optional() {
        return Ok(true);
    }
    let row = sqlx::query(
        "SELECT enabled FROM preferences WHERE user_id = $1 AND category = $2 AND channel = $3",
    )
    .bind(user)
    .bind(category.as_str())
    .bind(channel.as_str())
    .fetch_optional(db)
    .await?;
    Ok(match row {
        Some(r) => r.try_get::<i64, _>("enabled")? != 0,
        None => true,
    })
}

/// One preference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"category": "orders", "channel": "email", "enabled": false}))]
pub struct Preference {
    /// The category.
    pub category: Category,
    /// The channel.
    pub channel: Channel,
    /// Whether it is sent. `security` cannot be turned off.
    pub enabled: bool,
}

/// Every (category, channel) of `user` over `channels`, defaults included.
pub async fn all<'c, E>(
    db: E,
    user: &str,
    channels: &[Channel],
) -> Result<Vec<Preference>, sqlx::Error>
where
    E: Executor<'c, Database = Any>,
{
    let rows = sqlx::query("SELECT category, channel, enabled FROM preferences WHERE user_id = $1")
        .bind(user)
        .fetch_all(db)
        .await?;
    let mut out = Vec::new();
    for category in Category::ALL {
        for channel in channels {
            let stored = rows.iter().find(|r| {
                r.try_get::<String, _>("category").ok().as_deref() == Some(category.as_str())
                    && r.try_get::<String, _>("channel").ok().as_deref() == Some(channel.as_str())
            });
            let enabled = !category.optional()
                || stored.is_none_or(|r| r.try_get::<i64, _>("enabled").unwrap_or(1) != 0);
            out.push(Preference {
                category,
                channel: channel.clone(),
                enabled,
            });
        }
    }
    Ok(out)
}

/// Stores `p` for `user` (security stays on whatever is asked).
pub async fn set<'c, E>(db: E, user: &str, p: &Preference) -> Result<(), sqlx::Error>
where
    E: Executor<'c, Database = Any>,
{
    sqlx::query(
        "INSERT INTO preferences (user_id, category, channel, enabled, updated_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, category, channel) \
         DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at",
    )
    .bind(user)
    .bind(p.category.as_str())
    .bind(p.channel.as_str())
    .bind(i64::from(p.enabled || !p.category.optional()))
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}
