//! Issue #5's must-haves against the REAL product and payment services: no oversell under
//! concurrent orders, a failure at each step of the saga (and a restart between steps) ends
//! consistent at every service, and an order's events replay to what its API returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use order_service::saga::SagaSettings;
use payment_service::cards::CardNumber;
use payment_service::processor::{
    Authorization, Authorize, Processor, ProcessorError, SimulatedProcessor, Tokenized,
};
use serde_json::Value;

use crate::helpers::fast_saga;
use crate::real::*;

/// How long an order may take to settle: generous, as a loaded 2-core machine runs every
/// test binary at once.
const SETTLE: Duration = Duration::from_secs(30);

/// The order settled `confirmed`, and its events replay to what the API returns.
async fn confirmed(w: &RealWorld, id: &str) -> Value {
    let done = w.settled(id, SETTLE).await;
    assert_eq!(done["status"], "confirmed", "{}: {done}", w.label());
    assert_eq!(w.replayed(id).await, done, "{}: replay = API", w.label());
    done
}

/// The order settled `cancelled` for `reason`, left nothing reserved or held at the other
/// services, and its events replay to what the API returns.
async fn cancelled_with(w: &RealWorld, id: &str, reason: &str) -> Value {
    let label = w.label();
    let done = w.settled(id, SETTLE).await;
    assert_eq!(done["status"], "cancelled", "{label}: {done}");
    assert_eq!(done["cancel_reason"], reason, "{label}: {done}");
    w.assert_nothing_left(id).await;
    assert_eq!(w.replayed(id).await, done, "{label}: replay = API");
    done
}

/// Whether every order in `ids` is terminal, asked of the order service.
async fn all_settled(w: &RealWorld, ids: &[String]) -> bool {
    let admin = w.admin();
    for id in ids {
        let v: Value = w
            .get(&admin, &format!("/orders/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if v["status"] != "confirmed" && v["status"] != "cancelled" {
            return false;
        }
    }
    true
}

/// Stock N and 2N concurrent single-item orders from different customers: exactly N
/// confirmed (each intent captured) and N cancelled out of stock; the stock never goes
/// negative while they run and ends at 0 on hand, 0 reserved; the ledger balances.
#[tokio::test]
async fn real_no_oversell_when_twice_the_stock_is_ordered_at_once() {
    const N: usize = 5;
    const PRICE: i64 = 999;
    for db in kit::testing::databases().await {
        let w = RealWorld::new(db).await;
        let label = w.label();
        w.product("HOT", PRICE, N as i64).await;
        let mut shoppers = Vec::new();
        for i in 0..2 * N {
            shoppers.push(w.shopper(&format!("c{i}"), APPROVE).await);
        }
        let ids = futures::future::join_all(
            shoppers
                .iter()
                .map(|(token, pm)| w.order(token, "HOT", 1, pm)),
        )
        .await;
        let until = Instant::now() + SETTLE;
        while !all_settled(&w, &ids).await {
            let (on_hand, reserved) = w.stock("HOT").await;
            assert!(
                on_hand >= 0 && reserved >= 0 && reserved <= on_hand,
                "{label}: stock went wrong: on_hand {on_hand}, reserved {reserved}"
            );
            assert!(Instant::now() < until, "{label}: orders not settled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (mut confirmed, mut cancelled) = (0, 0);
        for id in &ids {
            let done = w.settled(id, SETTLE).await;
            assert_eq!(w.replayed(id).await, done, "{label}: replay = API");
            if done["status"] == "confirmed" {
                confirmed += 1;
                let intents = w.intents(id).await;
                assert_eq!(intents.len(), 1, "{label}: {intents:?}");
                assert_eq!(intents[0]["status"], "succeeded", "{label}");
                assert_eq!(intents[0]["amount_captured"], PRICE, "{label}");
                let r = w.reservation(id).await.expect("reservation");
                assert_eq!(r["status"], "committed", "{label}: {r}");
            } else {
                cancelled += 1;
                cancelled_with(&w, id, "out_of_stock").await;
                assert!(w.intents(id).await.is_empty(), "{label}: intent made");
            }
        }
        assert_eq!((confirmed, cancelled), (N, N), "{label}");
        assert_eq!(w.stock("HOT").await, (0, 0), "{label}");
        w.assert_ledger_balances().await;
    }
}

/// Failure at reserve: more than the stock in one order is cancelled out of stock, with
/// no payment intent and the stock untouched.
#[tokio::test]
async fn real_an_order_larger_than_the_stock_is_cancelled_out_of_stock() {
    for db in kit::testing::databases().await {
        let w = RealWorld::new(db).await;
        w.product("SKU-1", 500, 1).await;
        let (ann, pm) = w.shopper("ann", APPROVE).await;
        let id = w.order(&ann, "SKU-1", 2, &pm).await;
        cancelled_with(&w, &id, "out_of_stock").await;
        assert!(w.intents(&id).await.is_empty(), "{}", w.label());
        assert_eq!(w.stock("SKU-1").await, (1, 0), "{}", w.label());
    }
}

/// Failure at authorize: a declined card cancels the order, its intent canceled and the
/// reservation released, the stock back where it was.
#[tokio::test]
async fn real_a_declined_card_cancels_the_order_and_releases_the_stock() {
    for db in kit::testing::databases().await {
        let w = RealWorld::new(db).await;
        let label = w.label();
        w.product("SKU-1", 500, 3).await;
        let (ann, pm) = w.shopper("ann", DECLINE).await;
        let id = w.order(&ann, "SKU-1", 2, &pm).await;
        cancelled_with(&w, &id, "payment_failed:card_declined").await;
        assert_eq!(w.intents(&id).await.len(), 1, "{label}");
        let r = w.reservation(&id).await.expect("reservation");
        assert_eq!(r["status"], "released", "{label}: {r}");
        assert_eq!(w.stock("SKU-1").await, (3, 0), "{label}");
        w.assert_ledger_balances().await;
    }
}

/// Failure at authorize: the processor never answers and the payment service's deadline
/// cancels the intent (`processor_timeout`); the order is cancelled, the stock released.
#[tokio::test]
async fn real_a_processor_timeout_cancels_the_order_and_releases_the_stock() {
    for db in kit::testing::databases().await {
        let w = RealWorld::new(db).await;
        let label = w.label();
        w.product("SKU-1", 500, 3).await;
        let (ann, pm) = w.shopper("ann", TIMEOUT).await;
        let id = w.order(&ann, "SKU-1", 1, &pm).await;
        cancelled_with(&w, &id, "payment_failed:processor_timeout").await;
        let intents = w.intents(&id).await;
        assert_eq!(intents.len(), 1, "{label}");
        assert_eq!(intents[0]["failure_reason"], "processor_timeout", "{label}");
        assert_eq!(w.stock("SKU-1").await, (3, 0), "{label}");
        w.assert_ledger_balances().await;
    }
}

/// Failure at authorize, the order's side: the processor is slower than the saga's step
/// deadline, so the order compensates while the intent is still `processing`; it waits
/// until the payment service settles the intent, then cancels with nothing held.
#[tokio::test]
async fn real_the_authorize_step_deadline_cancels_while_the_processor_hangs() {
    for db in kit::testing::databases().await {
        let mut payment = payment_settings();
        payment.processor_deadline = Duration::from_secs(8);
        let saga = SagaSettings {
            step_deadline: Duration::from_secs(3),
            ..fast_saga()
        };
        let w = RealWorld::with(db, payment, saga).await;
        let label = w.label();
        w.product("SKU-1", 500, 3).await;
        let (ann, pm) = w.shopper("ann", TIMEOUT).await;
        let id = w.order(&ann, "SKU-1", 1, &pm).await;
        cancelled_with(&w, &id, "deadline_exceeded:authorize").await;
        assert_eq!(w.intents(&id).await.len(), 1, "{label}");
        assert_eq!(w.stock("SKU-1").await, (3, 0), "{label}");
        w.assert_ledger_balances().await;
    }
}

/// The order service stops between steps (stock reserved, the payment service
/// unreachable) and starts again: the saga resumes from its events and confirms, with one
/// intent captured, the reservation committed and the stock taken once.
#[tokio::test]
async fn real_a_saga_stopped_between_steps_resumes_after_a_restart() {
    for db in kit::testing::databases().await {
        // A step deadline far beyond the stop, so the first run cannot give up on payments.
        let saga = SagaSettings {
            step_deadline: Duration::from_secs(60),
            ..fast_saga()
        };
        let mut w = RealWorld::with(db, payment_settings(), saga).await;
        let label = w.label();
        w.product("SKU-1", 700, 3).await;
        let (ann, pm) = w.shopper("ann", APPROVE).await;
        w.payments_down();
        let id = w.order(&ann, "SKU-1", 1, &pm).await;
        let until = Instant::now() + SETTLE;
        loop {
            let v: Value = w
                .get(&ann, &format!("/orders/{id}"))
                .await
                .json()
                .await
                .unwrap();
            if v["status"] == "reserved" {
                break;
            }
            assert_eq!(v["status"], "pending", "{label}: {v}");
            assert!(Instant::now() < until, "{label}: never reserved: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        w.stop().await;
        assert_eq!(
            w.stock("SKU-1").await,
            (3, 1),
            "{label}: reserved while stopped"
        );
        w.payments_up().await;
        w.restart(fast_saga()).await;
        confirmed(&w, &id).await;
        let intents = w.intents(&id).await;
        assert_eq!(intents.len(), 1, "{label}: {intents:?}");
        assert_eq!(intents[0]["status"], "succeeded", "{label}");
        assert_eq!(intents[0]["amount_captured"], 700, "{label}");
        let r = w.reservation(&id).await.expect("reservation");
        assert_eq!(r["status"], "committed", "{label}: {r}");
        assert_eq!(w.stock("SKU-1").await, (2, 0), "{label}");
        w.assert_ledger_balances().await;
    }
}

/// A card processor that approves every authorization, `delay` late.
struct SlowApprover {
    inner: SimulatedProcessor,
    delay: Duration,
}

#[async_trait::async_trait]
impl Processor for SlowApprover {
    async fn tokenize(&self, number: &CardNumber) -> Result<Tokenized, ProcessorError> {
        self.inner.tokenize(number).await
    }

    async fn authorize(&self, req: Authorize<'_>) -> Result<Authorization, ProcessorError> {
        tokio::time::sleep(self.delay).await;
        self.inner.authorize(req).await
    }

    async fn capture(&self, reference: &str, amount: i64) -> Result<(), ProcessorError> {
        self.inner.capture(reference, amount).await
    }

    async fn void(&self, reference: &str) -> Result<(), ProcessorError> {
        self.inner.void(reference).await
    }

    async fn refund(&self, reference: &str, id: &str, amount: i64) -> Result<(), ProcessorError> {
        self.inner.refund(reference, id, amount).await
    }
}

/// The authorize step's deadline passes while the processor is still working, and the
/// processor then APPROVES (late, within the payment service's own deadline): the order
/// must still end cancelled with the late hold voided, not stay `cancelling` with money
/// held on the card.
#[tokio::test]
async fn real_a_late_approval_after_the_authorize_deadline_is_voided() {
    for db in kit::testing::databases().await {
        let mut payment = payment_settings();
        payment.processor_deadline = Duration::from_secs(15);
        let processor = Arc::new(SlowApprover {
            inner: SimulatedProcessor::new(payment.simulator_hang),
            delay: Duration::from_secs(5),
        });
        let saga = SagaSettings {
            step_deadline: Duration::from_secs(2),
            ..fast_saga()
        };
        let w = RealWorld::with_processor(db, payment, processor, saga).await;
        let label = w.label();
        w.product("SKU-1", 500, 3).await;
        let (ann, pm) = w.shopper("ann", APPROVE).await;
        let id = w.order(&ann, "SKU-1", 1, &pm).await;
        cancelled_with(&w, &id, "deadline_exceeded:authorize").await;
        let intents = w.intents(&id).await;
        assert_eq!(intents.len(), 1, "{label}");
        assert_eq!(
            intents[0]["failure_reason"], "voided",
            "{label}: {intents:?}"
        );
        assert_eq!(w.stock("SKU-1").await, (3, 0), "{label}");
        w.assert_ledger_balances().await;
    }
}
