//! The event bus: how facts recorded in one service's outbox reach the services that react
//! to them.
//!
//! Delivery is **at least once**. A consumer names a durable subscription; each
//! [`Delivery`] must be [acked](Delivery::ack) after the consumer's own transaction
//! commits. A delivery that is not acked within the bus's ack wait (the consumer crashed,
//! its transaction failed, it was dropped) or that is [nacked](Delivery::nack) is delivered
//! again, so consumers dedupe through the inbox ([`crate::inbox`]), which also absorbs an
//! event the relay published twice.
//!
//! Two implementations:
//!
//! - [`InProcessBus`] (the embedded default): a log in a SQLite file of its own with
//!   durable consumers; it survives crashes and restarts of the process.
//! - [`NatsBus`]: NATS JetStream, a stream on disk with durable pull consumers; it survives
//!   restarts of services and of the server.

mod embedded;
mod nats;

use std::sync::Arc;
use std::time::Duration;

pub use embedded::{InProcessBus, InProcessOptions};
pub use nats::{NatsBus, NatsOptions};

use crate::event::{Event, TopicError};
use crate::telemetry::ReadyCheck;

/// An error with its cause, as the bus's client library reported it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the bus could not do what was asked, and where that came from.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus server or the connection to it failed (`op` says what was being done);
    /// worth retrying.
    #[error("event bus: {op} failed")]
    Transport {
        /// What was being done: `connect`, `publish`, `subscribe`, `ack`…
        op: &'static str,
        /// What the client library said.
        #[source]
        source: BoxError,
    },
    /// A topic, pattern or consumer name that the bus cannot route.
    #[error(transparent)]
    Name(#[from] TopicError),
    /// A message on the bus that is not an [`Event`] envelope.
    #[error("event bus: a message is not an event envelope")]
    Malformed(#[source] serde_json::Error),
    /// The bus is configured in a way it cannot work with (a consumer reused with another
    /// pattern, an invalid stream name).
    #[error("event bus: {0}")]
    Config(String),
}

impl BusError {
    pub(crate) fn transport(op: &'static str, source: impl Into<BoxError>) -> BusError {
        BusError::Transport {
            op,
            source: source.into(),
        }
    }
}

/// Where a durable consumer stands, for metrics, `/ready` detail and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Events matching the consumer that it has not been handed yet.
    pub undelivered: u64,
    /// Events handed out and neither acked nor expired yet.
    pub unacked: u64,
    /// Deliveries made so far, redeliveries included.
    pub delivered: u64,
}

/// A bus that publishes events and hands them to durable consumers, at least once.
#[async_trait::async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes `event`, returning once the bus has stored it (for JetStream, once the
    /// server acked it). Publishing an event with the same id again is harmless: JetStream
    /// drops it within its duplicate window, and inboxes drop it after.
    async fn publish(&self, event: &Event) -> Result<(), BusError>;

    /// Attaches to the durable consumer `consumer` (created on first use) that receives the
    /// events whose topic matches `pattern`. Events published after the consumer was first
    /// created are kept for it while nobody is attached (within the bus's retention).
    /// Several subscriptions to one consumer share its events (each goes to one of them).
    async fn subscribe(&self, consumer: &str, pattern: &str) -> Result<Subscription, BusError>;

    /// Where `consumer` stands.
    async fn backlog(&self, consumer: &str) -> Result<Backlog, BusError>;

    /// Whether the bus is reachable now (for `/ready`).
    async fn ready(&self) -> bool;
}

/// The bus the configuration asks for: NATS JetStream at `nats_url` with the default
/// stream, or, when it is `None`, the embedded bus with its log at `log` (the default).
pub async fn from_config(
    nats_url: Option<&str>,
    log: &std::path::Path,
) -> Result<Arc<dyn EventBus>, BusError> {
    Ok(match nats_url {
        Some(url) => Arc::new(NatsBus::connect(NatsOptions::new(url)).await?),
        None => Arc::new(InProcessBus::open(log, InProcessOptions::default()).await?),
    })
}

/// Settles one delivery with the bus that made it.
#[async_trait::async_trait]
pub trait Acker: Send + Sync {
    /// The consumer is done with it: never deliver it again.
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// The consumer could not handle it now: deliver it again after `delay`.
    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError>;
}

/// One event handed to a consumer. Ack it after the consumer's transaction committed;
/// dropping it unacked means "not done": it is delivered again after the ack wait.
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub attempt: u64,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery settled through `acker` (for bus implementations).
    pub fn new(event: Event, attempt: u64, acker: Box<dyn Acker>) -> Delivery {
        Delivery {
            event,
            attempt,
            acker,
        }
    }

    /// Tells the bus the event is handled for good.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// Asks the bus to deliver the event again after `delay`.
    pub async fn nack(self, delay: Duration) -> Result<(), BusError> {
        self.acker.nack(delay).await
    }
}

/// The source behind a [`Subscription`] (for bus implementations).
#[async_trait::async_trait]
pub trait DeliverySource: Send {
    /// The next delivery, an error worth logging (the subscription goes on), or `None` when
    /// the subscription has ended for good.
    async fn next(&mut self) -> Option<Result<Delivery, BusError>>;
}

/// Deliveries for one durable consumer, in the order the bus hands them out.
pub struct Subscription {
    source: Box<dyn DeliverySource>,
}

impl Subscription {
    /// A subscription reading from `source` (for bus implementations).
    pub fn new(source: Box<dyn DeliverySource>) -> Subscription {
        Subscription { source }
    }

    /// Waits for the next delivery. An `Err` is a passing problem (the subscription goes
    /// on); `None` means it has ended.
    pub async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        self.source.next().await
    }
}

/// A bus as a `/ready` check named `bus`.
pub struct BusReady(pub Arc<dyn EventBus>);

#[async_trait::async_trait]
impl ReadyCheck for BusReady {
    fn name(&self) -> &'static str {
        "bus"
    }
    async fn ready(&self) -> bool {
        self.0.ready().await
    }
}
