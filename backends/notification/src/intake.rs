//! From the bus to the inbox and the queue (email, and push to each subscribed browser):
//! the consumer's handler. Everything happens in the consumer's transaction with the kit's
//! inbox record, so a redelivered event adds nothing, and the unique indexes make even a
//! second inbox miss harmless.

use std::sync::Arc;

use kit::db::{new_id, now_ms};
use kit::{Event, Handler};
use sqlx::{Any, Row, Transaction};
use tokio::sync::Notify;

use crate::catalog::{drafts, Category, Channel, Draft, Templates};
use crate::channel::ChannelSender;
use crate::preferences;
use crate::queue;

/// The consumer's handler.
pub struct Intake {
    /// Operators' addresses for stock notices.
    pub admins: Vec<String>,
    /// The words.
    pub templates: Arc<Templates>,
    /// Wakes the delivery worker after new rows are committed.
    pub wake: Arc<Notify>,
    /// Wakes the live fan-out after new rows are committed.
    pub live: Arc<Notify>,
    /// The senders that name a user's recipients: push (each subscribed browser, one
    /// delivery each, so one failing push service never holds back another) and the
    /// embedder's channels.
    pub named: Vec<Arc<dyn ChannelSender>>,
}

/// The topics the service listens to (the consumer takes everything and ignores the rest:
/// one durable consumer, one cursor).
pub const PATTERN: &str = ">";

#[async_trait::async_trait]
impl Handler for Intake {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &Event,
    ) -> Result<(), kit::bus::BoxError> {
        if event.topic == "user.registered" {
            remember_recipient(tx, event).await?;
        }
        for d in &drafts(event, &self.admins)? {
            self.record(tx, event, d).await?;
        }
        Ok(())
    }

    async fn committed(&self, _event: &Event) {
        self.wake.notify_waiters();
        // A permit is kept if the fan-out is busy reading, so it looks again at once.
        self.live.notify_one();
    }
}

async fn remember_recipient(
    tx: &mut Transaction<'static, Any>,
    event: &Event,
) -> Result<(), kit::bus::BoxError> {
    let p = &event.payload;
    let (Some(user), Some(email)) = (p["user_id"].as_str(), p["email"].as_str()) else {
        return Err(format!("{}: no user_id or email", event.topic).into());
    };
    sqlx::query(
        "INSERT INTO recipients (user_id, email, name, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, name = excluded.name, \
         updated_at = excluded.updated_at",
    )
    .bind(user)
    .bind(email)
    .bind(p["name"].as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Intake {
    async fn record(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &Event,
        d: &Draft,
    ) -> Result<(), kit::bus::BoxError> {
        let category = d.kind.category;
        if let Some(user) = &d.user_id {
            if preferences::enabled(&mut **tx, user, category, &Channel::IN_APP).await? {
                let (title, body) = self.templates.in_app(d.kind, &d.data)?;
                sqlx::query(
                    "INSERT INTO notifications (id, event_id, user_id, category, kind, title, \
                     body, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (event_id, user_id) DO NOTHING",
                )
                .bind(new_id())
                .bind(&event.id)
                .bind(user)
                .bind(category.as_str())
                .bind(d.kind.name)
                .bind(title)
                .bind(body)
                .bind(now_ms())
                .execute(&mut **tx)
                .await?;
            }
        }
        let address = match (&d.email, &d.user_id) {
            (Some(email), _) => Some(email.clone()),
            (None, Some(user)) => email_of(tx, user).await?,
            (None, None) => None,
        };
        if let Some(address) = address {
            // Opt-outs are checked again when it is sent: one made meanwhile still counts.
            queue::enqueue(
                tx,
                &event.id,
                &Channel::EMAIL,
                &address,
                d.user_id.as_deref(),
                d.kind,
                &d.data,
            )
            .await?;
        } else if category != Category::Stock {
            tracing::debug!(event = %event.id, kind = d.kind.name, "no address known: no email");
        }
        if let Some(user) = &d.user_id {
            for sender in &self.named {
                for recipient in sender.recipients(tx, user).await? {
                    let channel = sender.channel();
                    queue::enqueue(
                        tx,
                        &event.id,
                        &channel,
                        &recipient,
                        Some(user),
                        d.kind,
                        &d.data,
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

async fn email_of(
    tx: &mut Transaction<'static, Any>,
    user: &str,
) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query("SELECT email FROM recipients WHERE user_id = $1")
        .bind(user)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|r| r.try_get("email")).transpose()
}
