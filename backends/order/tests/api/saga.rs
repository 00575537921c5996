//! Failures injected at each step of the saga end consistent: a cancelled order leaves no
//! reservation held and no money authorized or captured at the other services, and every
//! order's events replay to exactly what the API returns.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fakes::{PM_APPROVE, PM_DECLINE, PM_TIMEOUT};
use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(20);

async fn cancelled_with(w: &World, id: &str, reason: &str) -> Value {
    let label = w.label();
    let done = w.settled(id, SETTLE).await;
    assert_eq!(done["status"], "cancelled", "{label}: {done}");
    assert_eq!(done["cancel_reason"], reason, "{label}: {done}");
    w.assert_nothing_left(id);
    assert_eq!(w.replayed(id).await, done, "{label}: replay = API");
    done
}

/// Stock N and 2N concurrent single-item orders: exactly N confirmed, N cancelled out of
/// stock, and the stock ends at 0 on hand and 0 reserved.
#[tokio::test]
async fn no_oversell_when_twice_the_stock_is_ordered_at_once() {
    const N: i64 = 6;
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        let label = w.label();
        w.products.add("HOT", 999, N);
        let tokens: Vec<String> = (0..2 * N).map(|i| w.customer(&format!("c{i}"))).collect();
        let ids =
            futures::future::join_all(tokens.iter().map(|t| w.order(t, "HOT", 1, PM_APPROVE)))
                .await;
        let mut confirmed = 0;
        let mut cancelled = 0;
        for id in &ids {
            let done = w.settled(id, SETTLE).await;
            match done["status"].as_str() {
                Some("confirmed") => confirmed += 1,
                _ => {
                    assert_eq!(done["cancel_reason"], "out_of_stock", "{label}: {done}");
                    w.assert_nothing_left(id);
                    cancelled += 1;
                }
            }
            assert_eq!(w.replayed(id).await, done, "{label}: replay = API");
        }
        assert_eq!((confirmed, cancelled), (N, N), "{label}");
        let stock = w.products.stock("HOT");
        assert_eq!((stock.on_hand, stock.reserved), (0, 0), "{label}");
    }
}

/// A declined card: the authorization fails, the reservation is released.
#[tokio::test]
async fn a_declined_card_cancels_the_order_and_releases_the_stock() {
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        w.products.add("SKU-1", 500, 3);
        let id = w.order(&w.customer("ann"), "SKU-1", 2, PM_DECLINE).await;
        cancelled_with(&w, &id, "payment_failed:card_declined").await;
        let stock = w.products.stock("SKU-1");
        assert_eq!((stock.on_hand, stock.reserved), (3, 0), "{}", w.label());
    }
}

/// More than the stock in one order: cancelled out of stock without touching payments.
#[tokio::test]
async fn an_order_larger_than_the_stock_is_cancelled_out_of_stock() {
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        w.products.add("SKU-1", 500, 1);
        let id = w.order(&w.customer("ann"), "SKU-1", 2, PM_APPROVE).await;
        cancelled_with(&w, &id, "out_of_stock").await;
        assert!(w.payments.intents_of(&id).is_empty(), "{}", w.label());
    }
}

/// A processor that never answers: the authorize step hits its deadline, the intent is
/// voided and the stock released.
#[tokio::test]
async fn a_payment_that_times_out_is_voided_at_the_step_deadline() {
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        w.products.add("SKU-1", 500, 3);
        let id = w.order(&w.customer("ann"), "SKU-1", 1, PM_TIMEOUT).await;
        cancelled_with(&w, &id, "deadline_exceeded:authorize").await;
        let intents = w.payments.intents_of(&id);
        assert_eq!(intents.len(), 1, "{}", w.label());
        assert_eq!(intents[0].status, "canceled", "{}", w.label());
    }
}

/// The reservation is refused at commit (as when it expired) after the money was
/// captured: the capture is refunded and the order cancelled.
#[tokio::test]
async fn a_refused_commit_after_capture_is_refunded() {
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        w.products.add("SKU-1", 700, 3);
        w.products.state.refuse_commit.store(true, Ordering::SeqCst);
        let id = w.order(&w.customer("ann"), "SKU-1", 1, PM_APPROVE).await;
        cancelled_with(&w, &id, "rejected:commit").await;
        let i = &w.payments.intents_of(&id)[0];
        assert_eq!(
            (i.amount_captured, i.amount_refunded),
            (700, 700),
            "{}",
            w.label()
        );
        assert_eq!(w.products.stock("SKU-1").reserved, 0, "{}", w.label());
    }
}

/// The product service is down: the reserve step hits its deadline and the order waits in
/// `cancelling` until the release can be made, then cancels.
#[tokio::test]
async fn a_product_outage_cancels_at_the_reserve_deadline_once_release_is_possible() {
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        let label = w.label();
        w.products.add("SKU-1", 500, 3);
        let ann = w.customer("ann");
        // Inventory is down before the order is placed (pricing still answers), so the
        // reserve step cannot have succeeded before the outage.
        w.products.state.down.store(true, Ordering::SeqCst);
        let id = w.order(&ann, "SKU-1", 1, PM_APPROVE).await;
        let until = Instant::now() + SETTLE;
        loop {
            let v: Value = w
                .get(&ann, &format!("/orders/{id}"))
                .await
                .json()
                .await
                .unwrap();
            if v["status"] == "cancelling" {
                break;
            }
            assert!(Instant::now() < until, "{label}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        w.products.state.down.store(false, Ordering::SeqCst);
        cancelled_with(&w, &id, "deadline_exceeded:reserve").await;
    }
}

/// The customer cancels while the payment is being authorized: 202 `cancelling`, then
/// cancelled with the authorization voided and the stock released; cancelling a cancelled
/// one answers 200. Cancelling a confirmed order is a refund instead (`refunding`; the
/// after-sale tests follow it to the end against the real services).
#[tokio::test]
async fn a_customer_cancels_before_confirmation_but_not_after() {
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        let label = w.label();
        w.products.add("SKU-1", 500, 3);
        let ann = w.customer("ann");
        w.payments.state.hold_confirm.store(true, Ordering::SeqCst);
        let id = w.order(&ann, "SKU-1", 1, PM_APPROVE).await;
        while w.payments.state.confirms.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = w.post(&ann, &format!("/orders/{id}/cancel")).await;
        assert_eq!(r.status(), 202, "{label}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["status"],
            "cancelling",
            "{label}"
        );
        w.payments.state.hold_confirm.store(false, Ordering::SeqCst);
        cancelled_with(&w, &id, "cancelled_by_customer").await;
        let again = w.post(&ann, &format!("/orders/{id}/cancel")).await;
        assert_eq!(again.status(), 200, "{label}");

        let done = w.order(&ann, "SKU-1", 1, PM_APPROVE).await;
        assert_eq!(
            w.settled(&done, SETTLE).await["status"],
            "confirmed",
            "{label}"
        );
        let r = w.post(&ann, &format!("/orders/{done}/cancel")).await;
        assert_eq!(r.status(), 202, "{label}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["status"],
            "refunding",
            "{label}"
        );
    }
}

/// The order service stops between steps (the authorization outstanding) and starts
/// again: the saga resumes from its events and confirms, with one payment intent, one
/// capture and the stock taken once; the resumed runner's calls continue the trace of the
/// request that placed the order.
#[tokio::test]
async fn a_saga_stopped_between_steps_resumes_after_a_restart() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    for db in kit::testing::databases().await {
        let mut w = World::new(db).await;
        let label = w.label();
        w.products.add("SKU-1", 500, 3);
        w.payments.state.hold_confirm.store(true, Ordering::SeqCst);
        let placed = w
            .app()
            .client
            .post(w.app().url("/orders"))
            .bearer_auth(w.customer("ann"))
            .header("idempotency-key", "traced")
            .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
            .json(&serde_json::json!({
                "items": [{"sku": "SKU-1", "qty": 1}], "payment_method_id": PM_APPROVE
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(placed.status(), 202, "{label}");
        let id = placed.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        while w.payments.state.confirms.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w.stop().await;
        w.payments.state.hold_confirm.store(false, Ordering::SeqCst);
        w.restart(fast_saga()).await;
        let done = w.settled(&id, SETTLE).await;
        assert_eq!(done["status"], "confirmed", "{label}: {done}");
        assert!(
            w.payments.state.confirms.load(Ordering::SeqCst) >= 2,
            "{label}: the restarted service authorized again"
        );
        let intents = w.payments.intents_of(&id);
        assert_eq!(intents.len(), 1, "{label}");
        assert_eq!(intents[0].amount_captured, 500, "{label}");
        let stock = w.products.stock("SKU-1");
        assert_eq!((stock.on_hand, stock.reserved), (2, 0), "{label}");
        assert_eq!(w.replayed(&id).await, done, "{label}: replay = API");
        let traces = w.payments.state.capture_traces.lock().unwrap().clone();
        assert!(!traces.is_empty(), "{label}");
        for t in traces {
            let t = t.unwrap_or_else(|| panic!("{label}: a capture without traceparent"));
            assert_eq!(t.split('-').nth(1), Some(TRACE), "{label}: {t}");
        }
    }
}

/// `/metrics` counts a saga that compensated, and measures from the `orders` table how many
/// sagas are unfinished and how long the least recently progressed one has stood still, so
/// a stuck saga shows even when no runner is left to report it.
#[tokio::test]
async fn compensations_and_unfinished_sagas_are_on_metrics() {
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        let label = w.label();
        w.products.add("SKU-1", 500, 3);
        let id = w.order(&w.customer("ann"), "SKU-1", 1, PM_DECLINE).await;
        cancelled_with(&w, &id, "payment_failed:card_declined").await;
        let url = w.app().url("/metrics");
        let scrape = || async { reqwest::get(&url).await.unwrap().text().await.unwrap() };
        let value = |text: &str, series: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .parse()
                .unwrap()
        };
        let text = scrape().await;
        assert!(
            value(&text, "order_saga_compensations_total{kind=\"rejected\"}") >= 1.0,
            "{label}"
        );
        assert_eq!(
            value(&text, "order_sagas_unfinished{status=\"pending\"}"),
            0.0,
            "{label}"
        );
        assert_eq!(
            value(&text, "order_saga_oldest_unfinished_age_seconds"),
            0.0,
            "{label}"
        );

        // An order that has stood still for ten minutes (its events are missing, so no runner
        // can move it either).
        let ten_minutes_ago = kit::db::now_ms() - 600_000;
        sqlx::query(
            "INSERT INTO orders (id, customer_id, status, seq, created_at, updated_at) \
             VALUES ('stuck', 'ann', 'reserved', 2, $1, $1)",
        )
        .bind(ten_minutes_ago)
        .execute(w.db.db.pool())
        .await
        .unwrap();
        let text = scrape().await;
        assert_eq!(
            value(&text, "order_sagas_unfinished{status=\"reserved\"}"),
            1.0,
            "{label}"
        );
        let age = value(&text, "order_saga_oldest_unfinished_age_seconds");
        assert!((599.0..700.0).contains(&age), "{label}: {age}");
    }
}
