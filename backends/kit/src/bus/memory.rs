//! The in-process bus: a log of recent events in memory and, per durable consumer, a cursor
//! into it plus the deliveries not acked yet. It mirrors a JetStream stream with durable
//! pull consumers, so a service behaves the same on either bus.
//!
//! Guarantees, **while the process runs**:
//! - every event published is handed to every consumer whose pattern matches it and that
//!   existed (had subscribed once) while the event was still retained, in publish order;
//! - a delivery not acked within `ack_wait`, or nacked, is handed out again (ahead of new
//!   events) until it is acked.
//!
//! What a restart loses: events in the log, cursors and unacked deliveries. Rows the relay
//! had not marked sent are published again from the outbox; rows marked sent but not yet
//! handled by a consumer are gone. So in embedded mode, subscribe consumers before the
//! relay starts, and use NATS where losing an in-flight event on a crash matters.
//!
//! The log keeps the last `retention` events; a consumer that falls further behind skips
//! the evicted ones, with a warning.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Acker, Backlog, BusError, DeliverySource, EventBus, Subscription};
use crate::event::{matches, validate_consumer, validate_pattern, Event};
use crate::telemetry::ReadyCheck;

/// How much the in-process bus keeps and how long it waits for an ack.
#[derive(Debug, Clone)]
pub struct InProcessOptions {
    /// Events kept in memory for consumers that are behind (oldest dropped first).
    pub retention: usize,
    /// How long a delivery may stay unacked before it is handed out again.
    pub ack_wait: Duration,
}

impl Default for InProcessOptions {
    fn default() -> Self {
        InProcessOptions {
            retention: 10_000,
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// The embedded event bus. Cheap to clone; clones share the log.
#[derive(Clone)]
pub struct InProcessBus {
    shared: Arc<Shared>,
}

struct Shared {
    options: InProcessOptions,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Sequence number the next published event gets; the log holds the ones just before.
    next_seq: u64,
    log: VecDeque<Arc<Event>>,
    consumers: HashMap<String, Durable>,
}

impl State {
    fn first_seq(&self) -> u64 {
        self.next_seq - self.log.len() as u64
    }
}

struct Durable {
    pattern: String,
    /// The next log sequence number to look at.
    cursor: u64,
    /// Handed out and not acked, by sequence number.
    unacked: BTreeMap<u64, Unacked>,
    delivered: u64,
    /// Woken on publish, nack and ack so waiting subscriptions look again.
    notify: Arc<Notify>,
}

struct Unacked {
    event: Arc<Event>,
    attempt: u64,
    /// When it is handed out again unless acked first.
    due: Instant,
}

impl InProcessBus {
    /// An empty bus.
    pub fn new(options: InProcessOptions) -> InProcessBus {
        InProcessBus {
            shared: Arc::new(Shared {
                options,
                state: Mutex::new(State::default()),
            }),
        }
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        InProcessBus::new(InProcessOptions::default())
    }
}

impl Shared {
    /// The state; a panic while it was held cannot leave it half-updated in a way that
    /// loses events (every update is a single insert or remove), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next delivery for `consumer`, or when to look again (`None`: only when woken).
    fn take(&self, consumer: &str) -> Result<(Arc<Event>, u64, u64), Option<Instant>> {
        let mut state = self.lock();
        let first = state.first_seq();
        let next_seq = state.next_seq;
        let State { log, consumers, .. } = &mut *state;
        let Some(d) = consumers.get_mut(consumer) else {
            return Err(None);
        };
        let now = Instant::now();
        let ack_wait = self.options.ack_wait;
        if let Some((&seq, u)) = d.unacked.iter_mut().find(|(_, u)| u.due <= now) {
            u.attempt += 1;
            u.due = now + ack_wait;
            d.delivered += 1;
            return Ok((u.event.clone(), seq, u.attempt));
        }
        if d.cursor < first {
            tracing::warn!(
                consumer,
                missed = first - d.cursor,
                "in-process bus: consumer fell behind the retained log; skipping evicted events"
            );
            d.cursor = first;
        }
        while d.cursor < next_seq {
            let seq = d.cursor;
            d.cursor += 1;
            let event = &log[(seq - first) as usize];
            if matches(&d.pattern, &event.topic) {
                let event = event.clone();
                d.unacked.insert(
                    seq,
                    Unacked {
                        event: event.clone(),
                        attempt: 1,
                        due: now + ack_wait,
                    },
                );
                d.delivered += 1;
                return Ok((event, seq, 1));
            }
        }
        Err(d.unacked.values().map(|u| u.due).min())
    }

    fn settle(&self, consumer: &str, seq: u64, redeliver_in: Option<Duration>) {
        let mut state = self.lock();
        let Some(d) = state.consumers.get_mut(consumer) else {
            return;
        };
        match redeliver_in {
            None => {
                d.unacked.remove(&seq);
            }
            Some(delay) => {
                if let Some(u) = d.unacked.get_mut(&seq) {
                    u.due = Instant::now() + delay;
                }
            }
        }
        d.notify.notify_waiters();
    }
}

#[async_trait::async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let mut state = self.shared.lock();
        state.log.push_back(Arc::new(event.clone()));
        state.next_seq += 1;
        if state.log.len() > self.shared.options.retention.max(1) {
            state.log.pop_front();
        }
        for d in state.consumers.values() {
            if matches(&d.pattern, &event.topic) {
                d.notify.notify_waiters();
            }
        }
        Ok(())
    }

    async fn subscribe(&self, consumer: &str, pattern: &str) -> Result<Subscription, BusError> {
        validate_consumer(consumer)?;
        validate_pattern(pattern)?;
        let mut state = self.shared.lock();
        let first = state.first_seq();
        let d = state
            .consumers
            .entry(consumer.to_owned())
            .or_insert_with(|| Durable {
                pattern: pattern.to_owned(),
                cursor: first,
                unacked: BTreeMap::new(),
                delivered: 0,
                notify: Arc::new(Notify::new()),
            });
        if d.pattern != pattern {
            return Err(BusError::Config(format!(
                "consumer {consumer:?} exists with pattern {:?}, not {pattern:?}",
                d.pattern
            )));
        }
        Ok(Subscription::new(Box::new(MemorySource {
            shared: self.shared.clone(),
            consumer: consumer.to_owned(),
            notify: d.notify.clone(),
        })))
    }

    async fn backlog(&self, consumer: &str) -> Result<Backlog, BusError> {
        let state = self.shared.lock();
        let Some(d) = state.consumers.get(consumer) else {
            return Err(BusError::Config(format!("no consumer {consumer:?}")));
        };
        let first = state.first_seq();
        let undelivered = state
            .log
            .iter()
            .skip(d.cursor.saturating_sub(first) as usize)
            .filter(|e| matches(&d.pattern, &e.topic))
            .count() as u64;
        Ok(Backlog {
            undelivered,
            unacked: d.unacked.len() as u64,
            delivered: d.delivered,
        })
    }

    async fn ready(&self) -> bool {
        true
    }
}

#[async_trait::async_trait]
impl ReadyCheck for InProcessBus {
    fn name(&self) -> &'static str {
        "bus"
    }
    async fn ready(&self) -> bool {
        true
    }
}

struct MemorySource {
    shared: Arc<Shared>,
    consumer: String,
    notify: Arc<Notify>,
}

#[async_trait::async_trait]
impl DeliverySource for MemorySource {
    async fn next(&mut self) -> Option<Result<super::Delivery, BusError>> {
        loop {
            // Register for a wake-up before looking, so a publish in between is not missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.shared.take(&self.consumer) {
                Ok((event, seq, attempt)) => {
                    let acker = MemoryAcker {
                        shared: self.shared.clone(),
                        consumer: self.consumer.clone(),
                        seq,
                    };
                    let event = Event::clone(&event);
                    return Some(Ok(super::Delivery::new(event, attempt, Box::new(acker))));
                }
                Err(Some(due)) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
                Err(None) => notified.await,
            }
        }
    }
}

struct MemoryAcker {
    shared: Arc<Shared>,
    consumer: String,
    seq: u64,
}

#[async_trait::async_trait]
impl Acker for MemoryAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.shared.settle(&self.consumer, self.seq, None);
        Ok(())
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.shared.settle(&self.consumer, self.seq, Some(delay));
        Ok(())
    }
}
