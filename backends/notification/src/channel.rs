//! The channels a notification can take, as the queue's worker sees them: one
//! [`ChannelSender`] per channel. Email and web push are built in; an embedder replaces one
//! (mail through a provider's API instead of SMTP) or adds a channel of its own (SMS, FCM,
//! APNs: not built in) by passing senders to [`Service::start`](crate::Service::start).

use sqlx::{Any, Transaction};

use crate::catalog::Channel;
use crate::queue::{Delivery, Outcome};

/// Sends what the queue holds for one channel.
///
/// A sender for a built-in channel (`email`, `push`) replaces the built-in one. A sender for
/// a channel of its own ([`Channel::custom`]) is asked, for every notification to a user,
/// where that user is reached on it ([`ChannelSender::recipients`]); each answer becomes one
/// queued delivery, with the queue's guarantees (once per event and recipient, retries with
/// backoff, dead letters, the user's preferences checked before sending). The channel then
/// appears in every user's preferences.
#[async_trait::async_trait]
pub trait ChannelSender: Send + Sync + 'static {
    /// The channel it serves.
    fn channel(&self) -> Channel;

    /// Where `user` is reached on this channel (phone numbers, device tokens…), read
    /// inside the intake's transaction. Asked of the built-in push sender (the user's
    /// browsers) and of senders for channels of their own; a sender replacing `email` or
    /// `push` is not asked (email's address comes with the registration, push's from the
    /// built-in subscriptions). By default nobody.
    async fn recipients(
        &self,
        _tx: &mut Transaction<'static, Any>,
        _user: &str,
    ) -> Result<Vec<String>, kit::bus::BoxError> {
        Ok(Vec::new())
    }

    /// Sends `d`; the outcome says whether to retry.
    async fn send(&self, d: &Delivery) -> Outcome;
}
