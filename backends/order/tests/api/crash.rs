//! A crash at every step, against the REAL product and payment services: the order
//! service stops after a step's call was made and before its outcome was recorded, at each
//! step of placement, of compensation and of a refund; started again, it repeats the step
//! (the other services answer the repeat without acting twice) and the order ends where it
//! would have without the crash, with no stock stranded, no money held or moved without a
//! record, and the ledger balanced. Each on SQLite and PostgreSQL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use order_service::saga::{CrashPoint, SagaSettings};
use payment_service::SimulatedProcessor;
use sqlx::Row;

use crate::helpers::fast_saga;
use crate::real::*;

const SETTLE: Duration = Duration::from_secs(30);

/// A world whose order service stops before recording `before`, with MUG (700, 3 in
/// stock) and a customer paying with `card` who ordered `qty` of it.
struct Crashing {
    w: RealWorld,
    sim: Arc<SimulatedProcessor>,
    hit: Arc<AtomicBool>,
    label: String,
    customer: String,
    order: String,
}

async fn crashing(
    db: kit::testing::TestDb,
    before: &'static str,
    card: &str,
    qty: i64,
) -> Crashing {
    let hit = Arc::new(AtomicBool::new(false));
    let saga = SagaSettings {
        lease: Duration::from_secs(1),
        crash: Some(CrashPoint {
            before,
            hit: hit.clone(),
        }),
        ..fast_saga()
    };
    let settings = payment_settings();
    let sim = Arc::new(SimulatedProcessor::new(settings.simulator_hang));
    let w = RealWorld::with_processor(db, settings, sim.clone(), saga).await;
    let label = format!("{} {before}", w.label());
    w.product("MUG", 700, 3).await;
    let (customer, pm) = w.shopper("ann", card).await;
    let order = w.order(&customer, "MUG", qty, &pm).await;
    Crashing {
        w,
        sim,
        hit,
        label,
        customer,
        order,
    }
}

/// Waits for the crash point, then stops the order service and starts it again without
/// one (its saga resumes once the dead runner's lease expires).
async fn crash_and_restart(w: &mut RealWorld, hit: &AtomicBool, before: &str) {
    let until = Instant::now() + SETTLE;
    while !hit.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < until,
            "{}: never reached {before}",
            w.label()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.stop().await;
    w.restart(fast_saga()).await;
}

/// Whether the order's history holds an event named `name`.
async fn recorded(w: &RealWorld, id: &str, name: &str) -> bool {
    let n: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM order_events WHERE order_id = $1 AND type = $2")
            .bind(id)
            .bind(name)
            .fetch_one(w.orders.db.db.pool())
            .await
            .unwrap()
            .get("n");
    n > 0
}

/// Placement with an approving card, stopped before each of its records: confirmed, one
/// intent authorized and captured once at the processor, the stock taken once.
#[tokio::test]
async fn real_a_crash_before_each_record_of_placement_still_confirms_once() {
    const STEPS: [&str; 7] = [
        "InventoryReserved",
        "PaymentIntentCreated",
        "PaymentAuthorized",
        "ConfirmationStarted",
        "PaymentCaptured",
        "InventoryCommitted",
        "OrderConfirmed",
    ];
    for before in STEPS {
        for db in kit::testing::databases().await {
            let Crashing {
                mut w,
                sim,
                hit,
                label,
                order: id,
                ..
            } = crashing(db, before, APPROVE, 1).await;
            crash_and_restart(&mut w, &hit, before).await;
            let done = w.settled(&id, SETTLE).await;
            assert_eq!(done["status"], "confirmed", "{label}: {done}");
            assert!(
                recorded(&w, &id, before).await,
                "{label}: recorded after all"
            );
            assert_eq!(w.replayed(&id).await, done, "{label}: replay = API");
            let intents = w.intents(&id).await;
            assert_eq!(intents.len(), 1, "{label}: {intents:?}");
            let intent = intents[0]["id"].as_str().unwrap();
            assert_eq!(
                (
                    intents[0]["status"].as_str(),
                    intents[0]["amount_captured"].as_i64()
                ),
                (Some("succeeded"), Some(700)),
                "{label}"
            );
            let calls = sim.calls(intent);
            assert_eq!(
                (calls.authorize, calls.capture, calls.void),
                (1, 1, 0),
                "{label}: one operation of each at the processor"
            );
            let r = w.reservation(&id).await.expect("reservation");
            assert_eq!(r["status"], "committed", "{label}");
            assert_eq!(w.stock("MUG").await, (2, 0), "{label}: taken once");
            w.assert_ledger_balances().await;
        }
    }
}

/// Compensation after a declined card, stopped before each of its records: cancelled,
/// nothing reserved or held, the stock all back.
#[tokio::test]
async fn real_a_crash_before_each_record_of_compensation_still_cancels_cleanly() {
    const STEPS: [&str; 4] = [
        "CompensationStarted",
        "PaymentVoided",
        "InventoryReleased",
        "OrderCancelled",
    ];
    for before in STEPS {
        for db in kit::testing::databases().await {
            let Crashing {
                mut w,
                sim,
                hit,
                label,
                order: id,
                ..
            } = crashing(db, before, DECLINE, 1).await;
            crash_and_restart(&mut w, &hit, before).await;
            let done = w.settled(&id, SETTLE).await;
            assert_eq!(done["status"], "cancelled", "{label}: {done}");
            assert_eq!(
                done["cancel_reason"], "payment_failed:card_declined",
                "{label}"
            );
            assert_eq!(w.replayed(&id).await, done, "{label}: replay = API");
            w.assert_nothing_left(&id).await;
            assert_eq!(w.stock("MUG").await, (3, 0), "{label}");
            assert_eq!((sim.captures(), sim.refunds()), (0, 0), "{label}");
            w.assert_ledger_balances().await;
        }
    }
}

/// A confirmed order cancelled by its customer, stopped before each record of its refund:
/// refunded in full once at the processor, the stock returned once, one `order.refunded`.
#[tokio::test]
async fn real_a_crash_before_each_record_of_a_refund_still_refunds_once() {
    const STEPS: [&str; 3] = ["RefundPaid", "StockReturned", "RefundCompleted"];
    for before in STEPS {
        for db in kit::testing::databases().await {
            let Crashing {
                mut w,
                sim,
                hit,
                label,
                customer: ann,
                order: id,
            } = crashing(db, before, APPROVE, 2).await;
            let confirmed = w.settled(&id, SETTLE).await;
            assert_eq!(confirmed["status"], "confirmed", "{label}: {confirmed}");
            let r = w.post(&ann, &format!("/orders/{id}/cancel")).await;
            assert_eq!(r.status(), 202, "{label}");
            crash_and_restart(&mut w, &hit, before).await;
            let done = w.refunds_done(&id, SETTLE).await;
            assert_eq!(done["status"], "refunded", "{label}: {done}");
            assert_eq!(done["amount_refunded"], 1400, "{label}");
            assert_eq!(w.replayed(&id).await, done, "{label}: replay = API");
            let intent = &w.intents(&id).await[0];
            assert_eq!(intent["amount_refunded"], 1400, "{label}: {intent}");
            assert_eq!(sim.refunds(), 1, "{label}: one refund at the processor");
            assert_eq!(w.stock("MUG").await, (3, 0), "{label}: returned once");
            let topics: Vec<String> = sqlx::query(
                "SELECT topic FROM kit_outbox WHERE topic = 'order.refunded' AND payload LIKE $1",
            )
            .bind(format!("%{id}%"))
            .fetch_all(w.orders.db.db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("topic"))
            .collect();
            assert_eq!(topics.len(), 1, "{label}");
            w.assert_ledger_balances().await;
        }
    }
}
