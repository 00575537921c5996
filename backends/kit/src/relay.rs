//! The outbox relay: a task that publishes committed outbox rows to the bus and marks them
//! sent.
//!
//! Each pass takes up to `batch_size` pending rows in id order, publishes them one by one
//! and marks each `sent_at` with a conditional `UPDATE … WHERE sent_at IS NULL`. The first
//! failure ends the pass: the row's `attempts` and `last_error` are updated, the relay
//! backs off (doubling from `min_backoff` up to `max_backoff`) and starts over from the
//! oldest pending row. So a row is never skipped, and never published before an earlier
//! pending row (one that can never be published, such as a payload the bus refuses,
//! blocks the rows after it: `attempts` and `last_error` show which).
//!
//! Wake-ups: after a commit that recorded events the service calls
//! [`OutboxWaker::wake`]; without it the relay looks every `poll_interval`.
//!
//! Several processes on one database: the relay that holds the lease row
//! (`kit_outbox_lease`, taken by a conditional upsert and renewed while it runs) is the
//! only one publishing; the others look every `poll_interval` and take over when the lease
//! expires or is released on shutdown. A relay that stalls longer than its lease (or hosts
//! whose clocks disagree) can overlap with its successor, so a row may be published twice
//! at worst. Delivery is at least once anyway: JetStream drops the second publish of an
//! event id within its duplicate window, and consumers' inboxes drop anything after.
//!
//! Commit order: ids are UUIDv7 taken when the event is recorded. On SQLite writers are
//! serialized, so id order is commit order. On PostgreSQL two transactions can commit in
//! the other order than they recorded; the later-visible row is then published after rows
//! with larger ids. Events about one entity keep their order whenever the transactions
//! writing that entity are serialized by its row lock (record the event after the write).

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::bus::{BusError, EventBus};
use crate::db::{new_id, now_ms, Db, DbError};
use crate::event::Event;
use crate::problem::error_chain;

/// How the relay batches, polls, backs off and holds its lease.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Rows taken per pass; a full batch is followed at once by the next pass.
    pub batch_size: u32,
    /// How often to look for rows when nobody wakes the relay, and how often a relay that
    /// does not hold the lease checks whether it can take it.
    pub poll_interval: Duration,
    /// The first wait after a failure.
    pub min_backoff: Duration,
    /// The longest wait between retries.
    pub max_backoff: Duration,
    /// How long the lease lasts without renewal (renewed after a third of it).
    pub lease: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            lease: Duration::from_secs(15),
        }
    }
}

/// Wakes the relay after a commit that recorded events, so they go out now rather than at
/// the next poll. Cheap to clone; keep one in the service's state.
#[derive(Clone, Debug, Default)]
pub struct OutboxWaker(Arc<Notify>);

impl OutboxWaker {
    /// Asks the relay for a pass; wakes coalesce, none is lost while the relay is busy.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// A running relay. Dropping it stops the relay; [`Relay::shutdown`] also waits for it.
#[must_use = "dropping the Relay stops it"]
pub struct Relay {
    waker: OutboxWaker,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying `db`'s outbox to `bus`.
    pub fn spawn(db: Db, bus: Arc<dyn EventBus>, options: RelayOptions) -> Relay {
        let waker = OutboxWaker::default();
        let (stop, stopped) = watch::channel(false);
        let worker = Worker {
            db,
            bus,
            holder: new_id(),
            held_until: 0,
            backoff: options.min_backoff,
            options,
            wake: waker.0.clone(),
            stopped,
        };
        Relay {
            waker,
            stop,
            task: tokio::spawn(worker.run()),
        }
    }

    /// A waker to keep in the service's state.
    pub fn waker(&self) -> OutboxWaker {
        self.waker.clone()
    }

    /// Asks for a pass now.
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Stops after the row being published, releases the lease, and waits for the task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Why a pass ended early.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error("outbox relay: database")]
    Db(#[from] DbError),
    #[error("outbox relay: event {id} not published")]
    Publish {
        id: String,
        #[source]
        source: BusError,
    },
    #[error("outbox relay: event {id} has a payload that is not JSON")]
    Payload {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

enum Pass {
    /// A full batch went out: more may be waiting.
    More,
    /// Everything pending went out.
    Done,
    /// Another relay holds the lease.
    NotLeader,
}

struct Worker {
    db: Db,
    bus: Arc<dyn EventBus>,
    options: RelayOptions,
    holder: String,
    /// When our lease ends as far as we last wrote it (Unix ms); 0 when not held.
    held_until: i64,
    backoff: Duration,
    wake: Arc<Notify>,
    stopped: watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self) {
        while !self.is_stopped() {
            let (wait, wakeable) = match self.pass().await {
                Ok(Pass::More) => {
                    self.backoff = self.options.min_backoff;
                    continue;
                }
                Ok(pass) => {
                    self.backoff = self.options.min_backoff;
                    (self.options.poll_interval, matches!(pass, Pass::Done))
                }
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), retry_in = ?self.backoff, "outbox relay: pass failed; retrying");
                    let wait = self.backoff;
                    self.backoff = (self.backoff * 2).min(self.options.max_backoff);
                    (wait, false)
                }
            };
            self.pause(wait, wakeable).await;
        }
        self.release().await;
    }

    fn is_stopped(&self) -> bool {
        // A dropped Relay counts as a stop.
        *self.stopped.borrow() || self.stopped.has_changed().is_err()
    }

    /// Waits `wait`, or less when stopped or (when `wakeable`) woken. A failing bus is not
    /// woken early: new commits must not turn the backoff into a busy loop.
    async fn pause(&mut self, wait: Duration, wakeable: bool) {
        let wake = self.wake.clone();
        tokio::select! {
            _ = self.stopped.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified(), if wakeable => {}
        }
    }

    async fn pass(&mut self) -> Result<Pass, PassError> {
        if !self.hold_lease().await? {
            return Ok(Pass::NotLeader);
        }
        let rows = sqlx::query(
            "SELECT id, topic, payload, created_at, traceparent FROM kit_outbox \
             WHERE sent_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(self.options.batch_size.max(1)))
        .fetch_all(self.db.pool())
        .await
        .map_err(DbError::from)?;
        let full = rows.len() >= self.options.batch_size.max(1) as usize;
        for row in rows {
            if self.is_stopped() {
                return Ok(Pass::Done);
            }
            let id: String = row.try_get("id").map_err(DbError::from)?;
            let payload: String = row.try_get("payload").map_err(DbError::from)?;
            let payload = match serde_json::from_str(&payload) {
                Ok(p) => p,
                Err(source) => {
                    let e = PassError::Payload { id, source };
                    self.record_failure(&e).await?;
                    return Err(e);
                }
            };
            let event = Event {
                id,
                topic: row.try_get("topic").map_err(DbError::from)?,
                occurred_at: row.try_get("created_at").map_err(DbError::from)?,
                payload,
                traceparent: row.try_get("traceparent").map_err(DbError::from)?,
            };
            self.publish(event).await?;
        }
        Ok(if full { Pass::More } else { Pass::Done })
    }

    async fn publish(&self, event: Event) -> Result<(), PassError> {
        if let Err(source) = self.bus.publish(&event).await {
            let e = PassError::Publish {
                id: event.id,
                source,
            };
            self.record_failure(&e).await?;
            return Err(e);
        }
        sqlx::query("UPDATE kit_outbox SET sent_at = $1 WHERE id = $2 AND sent_at IS NULL")
            .bind(now_ms())
            .bind(&event.id)
            .execute(self.db.pool())
            .await
            .map_err(DbError::from)?;
        Ok(())
    }

    async fn record_failure(&self, e: &PassError) -> Result<(), DbError> {
        let id = match e {
            PassError::Publish { id, .. } | PassError::Payload { id, .. } => id,
            PassError::Db(_) => return Ok(()),
        };
        sqlx::query(
            "UPDATE kit_outbox SET attempts = attempts + 1, last_error = $1 \
             WHERE id = $2 AND sent_at IS NULL",
        )
        .bind(error_chain(e))
        .bind(id)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Takes or renews the lease; renews only after a third of it has passed, so an idle
    /// relay writes about three times per lease period, not every poll.
    async fn hold_lease(&mut self) -> Result<bool, DbError> {
        let now = now_ms();
        let lease = self.options.lease.as_millis() as i64;
        if now < self.held_until - lease * 2 / 3 {
            return Ok(true);
        }
        let expires = now + lease;
        let taken = sqlx::query(
            "INSERT INTO kit_outbox_lease (name, holder, expires_at) VALUES ('relay', $1, $2) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE kit_outbox_lease.holder = excluded.holder OR kit_outbox_lease.expires_at < $3",
        )
        .bind(&self.holder)
        .bind(expires)
        .bind(now)
        .execute(self.db.pool())
        .await?
        .rows_affected()
            == 1;
        if taken && self.held_until < now {
            tracing::info!(holder = %self.holder, "outbox relay: took the lease");
        }
        self.held_until = if taken { expires } else { 0 };
        Ok(taken)
    }

    async fn release(&self) {
        if self.held_until == 0 {
            return;
        }
        let released = sqlx::query(
            "UPDATE kit_outbox_lease SET expires_at = 0 WHERE name = 'relay' AND holder = $1",
        )
        .bind(&self.holder)
        .execute(self.db.pool())
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "outbox relay: could not release the lease; it expires on its own");
        }
    }
}
