//! Product page views, told as `product.viewed` facts (for analytics' funnel).
//!
//! A view is a `GET /products/{id}` that found the product. Recording each one in the outbox
//! would turn every cached read into a database write, so views are counted in memory and
//! [`Views::flush`] records one event per product per interval (`VIEW_FLUSH`, 10 s, and at
//! shutdown): `{product: sku, product_id, views, from, to}`. A crash loses at most the last
//! interval's counts; views are a rate, not money.
//!
//! Why here and not from the gateway's access log: the product service knows a view was of
//! a real product (a 404 is not a view) and has the outbox; the gateway depends on no
//! backend and keeps I/O off its logging phase.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kit::db::now_ms;
use kit::{Db, OutboxWaker};
use serde::Serialize;
use sqlx::Row;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::events;

/// Views counted since the last flush, per product id.
#[derive(Debug, Default)]
pub struct Views {
    counts: Mutex<HashMap<String, i64>>,
    since: AtomicI64,
}

/// `product.viewed`.
#[derive(Debug, Serialize)]
pub struct Viewed<'a> {
    /// The SKU (what order lines name).
    pub product: &'a str,
    /// The product's id.
    pub product_id: &'a str,
    /// Views in [from, to).
    pub views: i64,
    /// Unix ms.
    pub from: i64,
    /// Unix ms.
    pub to: i64,
}

impl Views {
    /// Counts a view of product `id`.
    pub fn seen(&self, id: &str) {
        let mut counts = self.counts.lock().expect("view counts");
        if counts.is_empty() {
            self.since.store(now_ms(), Ordering::Relaxed);
        }
        // A product already counted costs no allocation (this runs on every product read).
        match counts.get_mut(id) {
            Some(n) => *n += 1,
            None => {
                counts.insert(id.to_owned(), 1);
            }
        }
    }

    /// Records the views counted so far as `product.viewed` events; how many events. On a
    /// database error the counts are put back for the next flush.
    pub async fn flush(&self, db: &Db) -> Result<usize, Error> {
        let counts = std::mem::take(&mut *self.counts.lock().expect("view counts"));
        if counts.is_empty() {
            return Ok(0);
        }
        let (from, to) = (self.since.load(Ordering::Relaxed), now_ms());
        match record(db, &counts, from, to).await {
            Ok(n) => Ok(n),
            Err(e) => {
                let mut now = self.counts.lock().expect("view counts");
                for (id, n) in counts {
                    *now.entry(id).or_insert(0) += n;
                }
                Err(e)
            }
        }
    }
}

async fn record(
    db: &Db,
    counts: &HashMap<String, i64>,
    from: i64,
    to: i64,
) -> Result<usize, Error> {
    let ids: Vec<&String> = counts.keys().collect();
    let list = (1..=ids.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut tx = db.begin().await?;
    let sql = format!("SELECT id, sku FROM products WHERE id IN ({list})");
    let mut q = sqlx::query(&sql);
    for id in &ids {
        q = q.bind(id.as_str());
    }
    let rows = q.fetch_all(&mut *tx).await?;
    let mut recorded = 0;
    for r in rows {
        let id: String = r.try_get("id")?;
        let sku: String = r.try_get("sku")?;
        let fact = Viewed {
            product: &sku,
            product_id: &id,
            views: counts.get(&id).copied().unwrap_or(0),
            from,
            to,
        };
        events::record(&mut tx, "product.viewed", &fact).await?;
        recorded += 1;
    }
    tx.commit().await?;
    Ok(recorded)
}

/// Flushes [`Views`] every interval and once more when stopped.
pub struct ViewFlusher {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ViewFlusher {
    /// Flushes `views` into `db` every `every`, waking the relay after each.
    pub fn spawn(db: Db, views: Arc<Views>, waker: OutboxWaker, every: Duration) -> ViewFlusher {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let last = tokio::select! {
                    _ = stopped.changed() => true,
                    _ = tokio::time::sleep(every) => false,
                };
                match views.flush(&db).await {
                    Ok(0) => {}
                    Ok(_) => waker.wake(),
                    Err(e) => tracing::warn!(
                        error = %kit::problem::error_chain(&e),
                        "recording product views failed; kept for the next flush"
                    ),
                }
                if last {
                    return;
                }
            }
        });
        ViewFlusher { stop, task }
    }

    /// Flushes what was counted and stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
