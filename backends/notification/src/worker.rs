//! The delivery worker: claims due rows from the queue, checks the recipient still wants
//! them, sends them through their channel and records the outcome. Several workers (in
//! several replicas) may run on one database; the queue's lease keeps each row in one.

use std::sync::Arc;
use std::time::Duration;

use kit::db::now_ms;
use kit::Db;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::channel::ChannelSender;
use crate::metrics::Metrics;
use crate::preferences;
use crate::queue::{self, Delivery, Outcome, RetryPolicy};

/// A running worker. [`Worker::shutdown`] stops it after the deliveries in hand.
#[must_use = "dropping the Worker leaves it running until the runtime ends"]
pub struct Worker {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Worker {
    /// Starts `concurrency` delivery loops on `db` with `senders`, each looking for due rows
    /// when woken and at least every `poll`. Several loops keep one slow server (an SMTP
    /// relay far away, a push service taking its time) from holding back the whole queue;
    /// the lease keeps each row in one loop.
    pub fn spawn(
        db: Db,
        senders: Vec<Arc<dyn ChannelSender>>,
        policy: RetryPolicy,
        poll: Duration,
        concurrency: usize,
        wake: Arc<Notify>,
        metrics: Metrics,
    ) -> Worker {
        let (stop, stopped) = watch::channel(false);
        let senders: Arc<[Arc<dyn ChannelSender>]> = senders.into();
        let tasks = (0..concurrency.max(1))
            .map(|n| {
                let run = Loop {
                    db: db.clone(),
                    senders: senders.clone(),
                    policy: policy.clone(),
                    poll,
                    wake: wake.clone(),
                    metrics: metrics.clone(),
                    // One loop keeps the queue-depth gauge.
                    counts: n == 0,
                };
                tokio::spawn(run.run(stopped.clone()))
            })
            .collect();
        Worker { stop, tasks }
    }

    /// Stops after the deliveries in hand and waits for the loops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Loop {
    db: Db,
    senders: Arc<[Arc<dyn ChannelSender>]>,
    policy: RetryPolicy,
    poll: Duration,
    wake: Arc<Notify>,
    metrics: Metrics,
    counts: bool,
}

impl Loop {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let (db, metrics) = (&self.db, &self.metrics);
        let mut counted = tokio::time::Instant::now() - Duration::from_secs(1);
        loop {
            if *stopped.borrow() {
                return;
            }
            if self.counts && counted.elapsed() >= Duration::from_secs(1) {
                counted = tokio::time::Instant::now();
                refresh_depth(db, metrics).await;
            }
            let idle = match queue::claim(db, self.policy.lease).await {
                Ok(Some(d)) => {
                    let outcome = deliver(db, &self.senders, &d).await;
                    match queue::settle(db, &d, &outcome, &self.policy).await {
                        Ok(state) => {
                            let result = if state == "failed" { "retry" } else { state };
                            metrics
                                .attempts
                                .with_label_values(&[d.channel.as_str(), result])
                                .inc();
                            log(&d, &outcome, state)
                        }
                        Err(e) => tracing::warn!(delivery = %d.id, error = %e,
                            "notification: outcome not recorded; the lease will expire"),
                    }
                    false
                }
                Ok(None) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "notification: cannot claim deliveries");
                    true
                }
            };
            if idle {
                // Until the next retry falls due, a wake-up (new rows), or `poll`.
                let wait = match queue::next_due(db).await {
                    Ok(Some(at)) => Duration::from_millis((at - now_ms()).max(10) as u64),
                    _ => self.poll,
                };
                tokio::select! {
                    _ = stopped.changed() => {}
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait.min(self.poll)) => {}
                }
            }
        }
    }
}

async fn deliver(db: &Db, senders: &[Arc<dyn ChannelSender>], d: &Delivery) -> Outcome {
    if let Some(user) = &d.user_id {
        match preferences::enabled(db.pool(), user, d.category, &d.channel).await {
            Ok(false) => return Outcome::Dropped("the recipient turned this off".into()),
            Ok(true) => {}
            Err(e) => return Outcome::Retry(format!("reading preferences: {e}")),
        }
    }
    match senders.iter().find(|s| s.channel() == d.channel) {
        Some(sender) => sender.send(d).await,
        None => Outcome::Dropped(format!("no sender for {}", d.channel.as_str())),
    }
}

async fn refresh_depth(db: &Db, metrics: &Metrics) {
    match queue::depth(db).await {
        Ok(states) => {
            metrics.deliveries.reset();
            for (state, n) in states {
                metrics.deliveries.with_label_values(&[&state]).set(n);
            }
        }
        Err(e) => tracing::debug!(error = %e, "notification: queue depth not read"),
    }
}

fn log(d: &Delivery, outcome: &Outcome, state: &str) {
    match outcome {
        Outcome::Sent => tracing::debug!(delivery = %d.id, kind = %d.kind, "notification sent"),
        Outcome::Dropped(why) => {
            tracing::info!(delivery = %d.id, kind = %d.kind, why, "notification dropped")
        }
        Outcome::Retry(why) | Outcome::Permanent(why) => tracing::warn!(
            delivery = %d.id, kind = %d.kind, attempt = d.attempt, state, error = %why,
            "notification not sent"
        ),
    }
}
