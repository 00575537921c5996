//! The distributed bus on NATS JetStream.
//!
//! One stream (`GATEHOUSE_EVENTS` by default) takes every subject under a prefix
//! (`events.>`); an event with topic `user.registered` is published on
//! `events.user.registered` with `Nats-Msg-Id` set to the event id, and the publish returns
//! only once JetStream acked it (stored on disk). A second publish of the same id within the
//! stream's duplicate window is dropped by the server, which is what makes a relay's retry
//! after a lost ack, or two relays racing, invisible to consumers.
//!
//! Each consumer is a durable pull consumer with explicit acks, filtered to its pattern
//! under the prefix; a message not acked within `ack_wait` is redelivered. The stream is
//! created (or its settings updated) at connect, so connecting is idempotent.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures_util::StreamExt;

use super::{Acker, Backlog, BusError, Delivery, DeliverySource, EventBus, Subscription};
use crate::event::{validate_consumer, validate_pattern, validate_topic, Event};
use crate::telemetry::ReadyCheck;

/// Where the NATS bus connects and how its stream and consumers are set up.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The JetStream stream holding the events (tests use a unique one each).
    pub stream: String,
    /// The subject prefix: topics are published as `{prefix}.{topic}`. Streams must not
    /// overlap, so each stream needs its own prefix.
    pub subject_prefix: String,
    /// How long JetStream remembers an event id to drop a republished duplicate.
    pub duplicate_window: Duration,
    /// How long events stay in the stream (consumers that are down longer miss them).
    pub max_age: Duration,
    /// How long a delivery may stay unacked before JetStream redelivers it.
    pub ack_wait: Duration,
    /// How many messages a subscription pulls at once. Pulled messages count against
    /// `ack_wait` while they wait in the client, so keep it small for slow handlers.
    pub pull_batch: usize,
}

impl NatsOptions {
    /// The defaults for `url`: stream `GATEHOUSE_EVENTS` on `events.>`, a 2 minute duplicate
    /// window, 7 days of events, a 30 s ack wait.
    pub fn new(url: impl Into<String>) -> NatsOptions {
        NatsOptions {
            url: url.into(),
            stream: "GATEHOUSE_EVENTS".into(),
            subject_prefix: "events".into(),
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            ack_wait: Duration::from_secs(30),
            pull_batch: 16,
        }
    }
}

/// The NATS JetStream bus. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    options: std::sync::Arc<NatsOptions>,
}

impl NatsBus {
    /// Connects, and creates the stream or updates its settings. Fails when the server is
    /// unreachable now (a service should not start believing it can publish).
    pub async fn connect(options: NatsOptions) -> Result<NatsBus, BusError> {
        validate_topic(&options.subject_prefix)?;
        if options.stream.is_empty()
            || options
                .stream
                .contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
        {
            return Err(BusError::Config(format!(
                "stream name {:?} must be non-empty without spaces, '.', '*' or '>'",
                options.stream
            )));
        }
        let client = async_nats::ConnectOptions::new()
            .name("gatehouse")
            .connection_timeout(Duration::from_secs(5))
            .connect(&options.url)
            .await
            .map_err(|e| BusError::transport("connect", e))?;
        let js = jetstream::new(client.clone());
        js.create_or_update_stream(stream::Config {
            name: options.stream.clone(),
            subjects: vec![format!("{}.>", options.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: options.duplicate_window,
            max_age: options.max_age,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::transport("create stream", e))?;
        Ok(NatsBus {
            client,
            js,
            options: options.into(),
        })
    }

    /// The options it was connected with.
    pub fn options(&self) -> &NatsOptions {
        &self.options
    }

    fn subject(&self, topic_or_pattern: &str) -> String {
        format!("{}.{topic_or_pattern}", self.options.subject_prefix)
    }

    async fn stream(&self) -> Result<stream::Stream, BusError> {
        self.js
            .get_stream(&self.options.stream)
            .await
            .map_err(|e| BusError::transport("get stream", e))
    }
}

#[async_trait::async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        validate_topic(&event.topic)?;
        let body = serde_json::to_vec(event).map_err(BusError::Malformed)?;
        let ack = self
            .js
            .send_publish(
                self.subject(&event.topic),
                jetstream::message::PublishMessage::build()
                    .payload(body.into())
                    .message_id(&event.id),
            )
            .await
            .map_err(|e| BusError::transport("publish", e))?;
        ack.await
            .map_err(|e| BusError::transport("publish ack", e))?;
        Ok(())
    }

    async fn subscribe(&self, name: &str, pattern: &str) -> Result<Subscription, BusError> {
        validate_consumer(name)?;
        validate_pattern(pattern)?;
        let consumer = self
            .stream()
            .await?
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: self.subject(pattern),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: self.options.ack_wait,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::transport("create consumer", e))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.options.pull_batch.max(1))
            .messages()
            .await
            .map_err(|e| BusError::transport("subscribe", e))?;
        Ok(Subscription::new(Box::new(NatsSource { messages })))
    }

    async fn backlog(&self, name: &str) -> Result<Backlog, BusError> {
        let info = self
            .stream()
            .await?
            .consumer_info(name)
            .await
            .map_err(|e| BusError::transport("consumer info", e))?;
        Ok(Backlog {
            undelivered: info.num_pending,
            unacked: info.num_ack_pending as u64,
            delivered: info.delivered.consumer_sequence,
        })
    }

    async fn ready(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

#[async_trait::async_trait]
impl ReadyCheck for NatsBus {
    fn name(&self) -> &'static str {
        "bus"
    }
    async fn ready(&self) -> bool {
        EventBus::ready(self).await
    }
}

struct NatsSource {
    messages: consumer::pull::Stream,
}

#[async_trait::async_trait]
impl DeliverySource for NatsSource {
    async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        let message = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(BusError::transport("receive", e))),
        };
        let event: Event = match serde_json::from_slice(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                // Redelivering it would fail the same way forever: tell JetStream to drop it.
                let _ = message.ack_with(AckKind::Term).await;
                return Some(Err(BusError::Malformed(e)));
            }
        };
        let attempt = message
            .info()
            .map(|i| i.delivered.max(1) as u64)
            .unwrap_or(1);
        Some(Ok(Delivery::new(
            event,
            attempt,
            Box::new(NatsAcker { message }),
        )))
    }
}

struct NatsAcker {
    message: jetstream::Message,
}

#[async_trait::async_trait]
impl Acker for NatsAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.message
            .ack()
            .await
            .map_err(|e| BusError::transport("ack", e))
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| BusError::transport("nack", e))
    }
}
