//! The inbox: how a consumer applies each event once although the bus delivers at least
//! once.
//!
//! The consumer's transaction first inserts `(consumer, event id)` into `kit_inbox`
//! ([`apply_once`]); if the row was already there the event was applied before and the
//! state change is skipped. Because the inbox row commits or rolls back with the state
//! change, "applied" and "recorded as applied" cannot disagree. The delivery is acked only
//! after the commit, so a crash in between means a redelivery that the inbox then skips.
//!
//! [`Consumer::spawn`] runs that loop for a [`Handler`]:
//! delivery → begin → `apply_once` → `handler.handle(tx, event)` → commit → ack.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::{Any, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bus::{BoxError, BusError, Delivery, EventBus, Subscription};
use crate::db::{now_ms, Db, DbError};
use crate::event::Event;
use crate::problem::error_chain;
use crate::trace::{Current, Span, SpanKind, TraceContext, Tracer, Value};

/// Records inside `tx` that `consumer` applies `event_id`: `true` the first time, `false`
/// when a committed (or, on PostgreSQL, a concurrently committing) transaction already did,
/// in which case the caller skips its state change.
pub async fn apply_once(
    tx: &mut Transaction<'_, Any>,
    consumer: &str,
    event_id: &str,
) -> Result<bool, DbError> {
    let inserted = sqlx::query(
        "INSERT INTO kit_inbox (consumer, event_id, processed_at) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Deletes inbox rows older than `before_ms` (Unix ms) and returns how many. Keep them
/// longer than an event can be redelivered (the bus's retention), or a very late duplicate
/// would be applied again.
pub async fn purge(db: &Db, before_ms: i64) -> Result<u64, DbError> {
    let done = sqlx::query("DELETE FROM kit_inbox WHERE processed_at < $1")
        .bind(before_ms)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

/// What a consumer does with one event, inside the transaction that also records it in the
/// inbox. An error rolls both back and the event is delivered again later.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Applies `event` to the consumer's state through `tx`. Called at most once per event
    /// id whose transaction commits.
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &Event,
    ) -> Result<(), BoxError>;

    /// Called after the transaction that applied `event` committed (not for an event the
    /// inbox had seen): the place to wake whatever reads what `handle` wrote, which must
    /// not look before the commit.
    async fn committed(&self, _event: &Event) {}
}

/// Why one delivery was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The database failed (begin, inbox insert or commit).
    #[error("consumer: database")]
    Db(#[from] DbError),
    /// The handler refused or failed.
    #[error("consumer: handler failed")]
    Handler(#[source] BoxError),
}

/// Applies `event` for `consumer` through `handler` in one transaction: `Ok(true)` when it
/// was applied now, `Ok(false)` when the inbox says it was applied before.
pub async fn process(
    db: &Db,
    consumer: &str,
    handler: &dyn Handler,
    event: &Event,
) -> Result<bool, ConsumeError> {
    let mut tx = db.begin().await?;
    if !apply_once(&mut tx, consumer, &event.id).await? {
        return Ok(false);
    }
    handler
        .handle(&mut tx, event)
        .await
        .map_err(ConsumeError::Handler)?;
    tx.commit().await.map_err(DbError::from)?;
    handler.committed(event).await;
    Ok(true)
}

/// How a consumer retries, and where its spans go.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// How long after a failed delivery (handler or database error) it is delivered again,
    /// and how long to wait after a subscription error before reading on.
    pub retry_delay: Duration,
    /// Records a consumer span per delivery, in the trace of the work that recorded the
    /// event. Without one, the trace still continues into what the handler records and
    /// calls; no span is exported.
    pub tracer: Option<Tracer>,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            retry_delay: Duration::from_secs(1),
            tracer: None,
        }
    }
}

impl ConsumerOptions {
    /// The defaults, with `service`'s spans exported (see [`crate::trace`]).
    pub fn for_service(service: &'static str) -> ConsumerOptions {
        ConsumerOptions {
            tracer: Some(Tracer::for_service(service)),
            ..ConsumerOptions::default()
        }
    }
}

/// A running consumer loop. Dropping it stops the loop; [`Consumer::shutdown`] also waits.
#[must_use = "dropping the Consumer stops it"]
pub struct Consumer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Consumer {
    /// Subscribes the durable consumer `name` to `pattern` (so events published from now on
    /// are kept for it) and then handles its deliveries one at a time, in order, until
    /// shut down.
    ///
    /// Order holds while handlers succeed; a failed delivery comes back after
    /// `retry_delay` and may then follow events published after it. An event whose handler
    /// always fails is retried forever (logged with its attempt count each time).
    pub async fn spawn(
        db: Db,
        bus: Arc<dyn EventBus>,
        name: &str,
        pattern: &str,
        handler: impl Handler,
        options: ConsumerOptions,
    ) -> Result<Consumer, BusError> {
        let subscription = bus.subscribe(name, pattern).await?;
        let (stop, stopped) = watch::channel(false);
        let looped = Loop {
            db,
            bus,
            name: name.to_owned(),
            pattern: pattern.to_owned(),
            handler: Box::new(handler),
            options,
            stopped,
        };
        Ok(Consumer {
            stop,
            task: tokio::spawn(looped.run(subscription)),
        })
    }

    /// Stops after the delivery in hand and waits for the loop to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Loop {
    db: Db,
    bus: Arc<dyn EventBus>,
    name: String,
    pattern: String,
    handler: Box<dyn Handler>,
    options: ConsumerOptions,
    stopped: watch::Receiver<bool>,
}

impl Loop {
    async fn run(mut self, mut subscription: Subscription) {
        loop {
            let next = tokio::select! {
                _ = self.stopped.changed() => return,
                next = subscription.next() => next,
            };
            match next {
                Some(Ok(delivery)) => self.deliver(delivery).await,
                Some(Err(e)) => {
                    tracing::warn!(consumer = %self.name, error = %error_chain(&e), "consumer: subscription error");
                    self.pause().await;
                }
                None => match self.resubscribe().await {
                    Some(s) => subscription = s,
                    None => return,
                },
            }
        }
    }

    async fn deliver(&self, delivery: Delivery) {
        let id = delivery.event.id.clone();
        let current = Current {
            trace: TraceContext::continue_from(delivery.event.traceparent.as_deref()),
            tracer: self.options.tracer.clone().unwrap_or_default(),
        };
        let start = SystemTime::now();
        let exported = current.tracer.exporting().then(|| current.clone());
        let processed = current
            .scope(process(
                &self.db,
                &self.name,
                &*self.handler,
                &delivery.event,
            ))
            .await;
        if let Some(current) = exported {
            self.record_span(current, start, &delivery, &processed);
        }
        match processed {
            Ok(_) => {
                // A lost ack means a redelivery, which the inbox skips.
                if let Err(e) = delivery.ack().await {
                    tracing::debug!(consumer = %self.name, event = %id, error = %error_chain(&e), "consumer: ack failed");
                }
            }
            Err(e) => {
                tracing::warn!(consumer = %self.name, event = %id, attempt = delivery.attempt,
                    error = %error_chain(&e), retry_in = ?self.options.retry_delay, "consumer: event not applied");
                let _ = delivery.nack(self.options.retry_delay).await;
            }
        }
    }

    /// The delivery's consumer span, after OpenTelemetry's messaging conventions.
    fn record_span(
        &self,
        current: Current,
        start: SystemTime,
        delivery: &Delivery,
        processed: &Result<bool, ConsumeError>,
    ) {
        let event = &delivery.event;
        let attempt = i64::try_from(delivery.attempt).unwrap_or(i64::MAX);
        let error = processed.as_ref().err().map(|e| error_chain(e));
        let mut attributes: Vec<(&'static str, Value)> = vec![
            ("messaging.operation.type", "process".into()),
            ("messaging.destination.name", event.topic.as_str().into()),
            ("messaging.consumer.group.name", self.name.as_str().into()),
            ("messaging.message.id", event.id.as_str().into()),
            ("gatehouse.delivery.attempt", attempt.into()),
        ];
        if let Some(e) = &error {
            attributes.push(("error.type", e.clone().into()));
        }
        current.tracer.record(Span {
            name: format!("process {}", event.topic),
            kind: SpanKind::Consumer,
            context: current.trace,
            start,
            end: SystemTime::now(),
            attributes,
            error,
        });
    }

    /// Waits `retry_delay` unless stopped first.
    async fn pause(&mut self) {
        tokio::select! {
            _ = self.stopped.changed() => {}
            _ = tokio::time::sleep(self.options.retry_delay) => {}
        }
    }

    /// The subscription ended (the bus closed it): subscribe again until it works or the
    /// loop is stopped.
    async fn resubscribe(&mut self) -> Option<Subscription> {
        loop {
            self.pause().await;
            if *self.stopped.borrow() || self.stopped.has_changed().is_err() {
                return None;
            }
            match self.bus.subscribe(&self.name, &self.pattern).await {
                Ok(s) => return Some(s),
                Err(e) => {
                    tracing::warn!(consumer = %self.name, error = %error_chain(&e), "consumer: resubscribe failed")
                }
            }
        }
    }
}
