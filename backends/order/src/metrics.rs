//! The order service's own metrics, beside the kit's HTTP ones: sagas that have not finished
//! (and how long the oldest has made no progress), measured from the `orders` table at each
//! scrape so they grow even when the saga runners are the ones stuck, and compensations by
//! kind, counted where the saga starts one.

use std::sync::LazyLock;

use kit::{Db, Telemetry};
use prometheus::{Gauge, IntCounterVec, IntGaugeVec, Opts};

/// `order_saga_compensations_total{kind}`: sagas that started undoing, by `deadline` (a step
/// ran out of time) or `rejected` (inventory or payment said no). Process-wide: the saga
/// runner has no handle on a registry.
pub static COMPENSATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "order_saga_compensations_total",
            "Order sagas that started compensating, by kind: deadline or rejected",
        ),
        &["kind"],
    )
    .expect("a valid counter")
});

/// The statuses a saga is still driving.
const UNFINISHED: [&str; 6] = [
    "pending",
    "reserved",
    "authorized",
    "confirming",
    "cancelling",
    "refunding",
];

/// Each unfinished status: how many orders, and when the least recently updated changed.
const UNFINISHED_QUERY: &str = "SELECT status, COUNT(*), MIN(updated_at) FROM orders \
     WHERE status IN ('pending', 'reserved', 'authorized', 'confirming', 'cancelling', 'refunding') \
     GROUP BY status";

/// Adds the order metrics to `telemetry`'s registry and measures the sagas at each scrape.
pub fn register(telemetry: &Telemetry, db: &Db) {
    let unfinished = IntGaugeVec::new(
        Opts::new(
            "order_sagas_unfinished",
            "Orders whose saga has not finished, by status",
        ),
        &["status"],
    )
    .expect("a valid gauge");
    let oldest = Gauge::new(
        "order_saga_oldest_unfinished_age_seconds",
        "How long the unfinished order that progressed least recently has made no progress (0 when none)",
    )
    .expect("a valid gauge");
    for c in [
        Box::new(unfinished.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(oldest.clone()),
        Box::new(COMPENSATIONS.clone()),
    ] {
        if let Err(e) = telemetry.registry().register(c) {
            tracing::warn!(error = %e, "order metrics not registered");
        }
    }
    // Both kinds from the start, at 0: an increase is then seen from the first one on.
    for kind in ["deadline", "rejected"] {
        COMPENSATIONS.with_label_values(&[kind]);
    }
    let db = db.clone();
    telemetry.on_scrape(move || {
        let (db, unfinished, oldest) = (db.clone(), unfinished.clone(), oldest.clone());
        async move {
            let rows = sqlx::query_as::<_, (String, i64, Option<i64>)>(UNFINISHED_QUERY)
                .fetch_all(db.pool())
                .await;
            let Ok(rows) = rows else { return };
            for status in UNFINISHED {
                let n = rows.iter().find(|r| r.0 == status).map_or(0, |r| r.1);
                unfinished.with_label_values(&[status]).set(n);
            }
            let now = kit::db::now_ms();
            let least_recent = rows.iter().filter_map(|r| r.2).min();
            oldest.set(least_recent.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0));
        }
    });
}
