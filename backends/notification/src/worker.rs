//! The delivery worker: claims due rows from the queue, checks the recipient still wants
//! them, sends them through their channel and records the outcome. Several workers (in
//! several replicas) may run on one database; the queue's lease keeps each row in one.

use std::sync::Arc;
use std::time::Duration;

use kit::db::now_ms;
use kit::Db;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::email::ChannelSender;
use crate::metrics::Metrics;
use crate::preferences;
use crate::queue::{self, Delivery, Outcome, RetryPolicy};

/// A running worker. [`Worker::shutdown`] stops it after the delivery in hand.
#[must_use = "dropping the Worker leaves it running until the runtime ends"]
pub struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Worker {
    /// Starts delivering from `db` with `senders`, looking for due rows when woken and at
    /// least every `poll`.
    pub fn spawn(
        db: Db,
        senders: Vec<Arc<dyn ChannelSender>>,
        policy: RetryPolicy,
        poll: Duration,
        wake: Arc<Notify>,
        metrics: Metrics,
    ) -> Worker {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut counted = tokio::time::Instant::now() - Duration::from_secs(1);
            loop {
                if *stopped.borrow() {
                    return;
                }
                if counted.elapsed() >= Duration::from_secs(1) {
                    counted = tokio::time::Instant::now();
                    refresh_depth(&db, &metrics).await;
                }
                let idle = match queue::claim(&db, policy.lease).await {
                    Ok(Some(d)) => {
                        let outcome = deliver(&db, &senders, &d).await;
                        match queue::settle(&db, &d, &outcome, &policy).await {
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
                    let wait = match queue::next_due(&db).await {
                        Ok(Some(at)) => Duration::from_millis((at - now_ms()).max(10) as u64),
                        _ => poll,
                    };
                    tokio::select! {
                        _ = stopped.changed() => {}
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(wait.min(poll)) => {}
                    }
                }
            }
        });
        Worker { stop, task }
    }

    /// Stops after the delivery in hand and waits for the task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn deliver(db: &Db, senders: &[Arc<dyn ChannelSender>], d: &Delivery) -> Outcome {
    if let Some(user) = &d.user_id {
        match preferences::enabled(db.pool(), user, d.category, d.channel).await {
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
