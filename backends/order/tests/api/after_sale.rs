//! After the sale, against the REAL product and payment services: a confirmed order is
//! cancelled (a full refund) or refunded by line, its stock comes back, and however the
//! requests race, nothing is refunded or returned twice.

use std::sync::Arc;
use std::time::Duration;

use payment_service::SimulatedProcessor;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::fast_saga;
use crate::real::*;

const SETTLE: Duration = Duration::from_secs(30);

/// A world whose payment service runs on a simulator the test can count at.
async fn world(db: kit::testing::TestDb) -> (RealWorld, Arc<SimulatedProcessor>) {
    let settings = payment_settings();
    let sim = Arc::new(SimulatedProcessor::new(settings.simulator_hang));
    let w = RealWorld::with_processor(db, settings, sim.clone(), fast_saga()).await;
    (w, sim)
}

/// Places `items` for the shopper and waits for it to be confirmed; the order's id.
async fn bought(w: &RealWorld, token: &str, pm: &str, items: Value) -> String {
    let r = w
        .place(
            token,
            &kit::db::new_id(),
            json!({"items": items, "payment_method_id": pm}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", w.label());
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = w.settled(&id, SETTLE).await;
    assert_eq!(done["status"], "confirmed", "{}: {done}", w.label());
    id
}

async fn refund_lines(w: &RealWorld, token: &str, id: &str, key: &str, body: Value) -> Response {
    w.app()
        .client
        .post(w.app().url(&format!("/orders/{id}/refunds")))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The balance of `account` at the payment service's ledger.
async fn account(w: &RealWorld, account: &str) -> i64 {
    w.ledger().await["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["account"] == account)
        .map(|a| a["balance"].as_i64().unwrap())
        .sum()
}

/// The topics the order service recorded for the bus, oldest first.
async fn published(w: &RealWorld, order_id: &str) -> Vec<String> {
    sqlx::query("SELECT topic FROM kit_outbox WHERE payload LIKE $1 ORDER BY id")
        .bind(format!("%{order_id}%"))
        .fetch_all(w.orders.db.db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("topic"))
        .collect()
}

/// A customer cancels a confirmed order: it ends `refunded`, the whole capture is paid
/// back once at the processor, the stock is back, the ledger's customer and revenue
/// accounts are where they were before the order, and `order.refunded` and
/// `order.cancelled` go out with the amount.
#[tokio::test]
async fn real_a_confirmed_order_cancelled_by_its_customer_is_refunded_with_its_stock_back() {
    for db in kit::testing::databases().await {
        let (w, sim) = world(db).await;
        let label = w.label();
        w.product("MUG", 1250, 10).await;
        let (ann, pm) = w.shopper("ann", APPROVE).await;
        let (receivable, revenue) = (
            account(&w, "customer_receivable").await,
            account(&w, "merchant_revenue").await,
        );
        let id = bought(&w, &ann, &pm, json!([{"sku": "MUG", "qty": 2}])).await;
        assert_eq!(w.stock("MUG").await, (8, 0), "{label}");
        assert_ne!(account(&w, "merchant_revenue").await, revenue, "{label}");

        let r = w.post(&ann, &format!("/orders/{id}/cancel")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{label}");
        let cancelling: Value = r.json().await.unwrap();
        assert_eq!(cancelling["status"], "refunding", "{label}: {cancelling}");
        let done = w.refunds_done(&id, SETTLE).await;
        assert_eq!(done["status"], "refunded", "{label}: {done}");
        assert_eq!(done["amount_refunded"], 2500, "{label}");
        let refund = &done["refunds"][0];
        assert_eq!(
            (refund["status"].as_str(), refund["cancel"].as_bool()),
            (Some("completed"), Some(true)),
            "{label}: {refund}"
        );
        assert_eq!(
            refund["items"],
            json!([{"sku": "MUG", "qty": 2}]),
            "{label}"
        );
        assert_eq!(w.replayed(&id).await, done, "{label}: replay = API");

        assert_eq!(w.stock("MUG").await, (10, 0), "{label}: stock back");
        let intent = &w.intents(&id).await[0];
        assert_eq!(intent["amount_refunded"], 2500, "{label}: {intent}");
        assert_eq!(sim.refunds(), 1, "{label}: one refund at the processor");
        assert_eq!(
            (
                account(&w, "customer_receivable").await,
                account(&w, "merchant_revenue").await
            ),
            (receivable, revenue),
            "{label}: the ledger is back where it was"
        );
        w.assert_ledger_balances().await;
        let topics = published(&w, &id).await;
        assert!(
            topics.ends_with(&["order.refunded".into(), "order.cancelled".into()]),
            "{label}: {topics:?}"
        );

        // Once is enough: again is the order as it is, and nothing is left to refund.
        let again = w.post(&ann, &format!("/orders/{id}/cancel")).await;
        assert_eq!(again.status(), StatusCode::OK, "{label}");
        let more = refund_lines(
            &w,
            &w.admin(),
            &id,
            "k",
            json!({"items": [{"sku": "MUG", "qty": 1}]}),
        )
        .await;
        assert_eq!(more.status(), StatusCode::CONFLICT, "{label}");
        assert_eq!(sim.refunds(), 1, "{label}");
    }
}

/// Staff refund lines: each refund pays back its lines' price and returns their stock,
/// a repeated request (same key) is answered again without refunding twice, and no line is
/// refunded beyond what was bought; the customer cancels the rest and the order ends
/// `refunded` with the total paid back.
#[tokio::test]
async fn real_partial_refunds_by_line_never_exceed_what_was_bought() {
    for db in kit::testing::databases().await {
        let (w, sim) = world(db).await;
        let label = w.label();
        w.product("MUG", 1250, 10).await;
        w.product("TEA", 400, 10).await;
        let (ann, pm) = w.shopper("ann", APPROVE).await;
        let id = bought(
            &w,
            &ann,
            &pm,
            json!([{"sku": "MUG", "qty": 3}, {"sku": "TEA", "qty": 2}]),
        )
        .await;
        let admin = w.admin();
        let one_mug = json!({"items": [{"sku": "MUG", "qty": 1}], "reason": "arrived broken"});

        let r = refund_lines(&w, &ann, &id, "k-ann", one_mug.clone()).await;
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{label}: customers cancel, staff refund"
        );
        let r = refund_lines(&w, &admin, &id, "k-1", one_mug.clone()).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{label}");
        let first: Value = r.json().await.unwrap();
        assert_eq!(first["amount"], 1250, "{label}: {first}");
        let r = refund_lines(&w, &admin, &id, "k-1", one_mug.clone()).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{label}");
        assert_eq!(r.headers()["idempotency-replayed"], "true", "{label}");
        assert_eq!(r.json::<Value>().await.unwrap(), first, "{label}");

        let r = refund_lines(
            &w,
            &admin,
            &id,
            "k-2",
            json!({"items": [{"sku": "MUG", "qty": 3}]}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{label}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(
            p["refundable"],
            json!([{"sku": "MUG", "qty": 2}, {"sku": "TEA", "qty": 2}]),
            "{label}: {p}"
        );
        let r = refund_lines(
            &w,
            &admin,
            &id,
            "k-3",
            json!({"items": [{"sku": "NOPE", "qty": 1}]}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{label}");

        let after_one = w.refunds_done(&id, SETTLE).await;
        assert_eq!(after_one["status"], "confirmed", "{label}: lines are left");
        assert_eq!(after_one["amount_refunded"], 1250, "{label}");
        assert_eq!(w.stock("MUG").await, (8, 0), "{label}: one mug back");
        assert_eq!(w.stock("TEA").await, (8, 0), "{label}");

        let r = w.post(&ann, &format!("/orders/{id}/cancel")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{label}");
        let done = w.refunds_done(&id, SETTLE).await;
        assert_eq!(done["status"], "refunded", "{label}: {done}");
        assert_eq!(done["amount_refunded"], done["total"], "{label}");
        assert_eq!(
            done["refunds"][1]["items"],
            json!([{"sku": "MUG", "qty": 2}, {"sku": "TEA", "qty": 2}]),
            "{label}"
        );
        assert_eq!(w.stock("MUG").await, (10, 0), "{label}");
        assert_eq!(w.stock("TEA").await, (10, 0), "{label}");
        assert_eq!(w.intents(&id).await[0]["amount_refunded"], 4550, "{label}");
        assert_eq!(sim.refunds(), 2, "{label}");
        w.assert_ledger_balances().await;
    }
}

/// Two cancels and two partial refunds of one confirmed order of 4, all at once: what is
/// refunded never exceeds what was captured, the stock returned equals what was refunded,
/// and the processor refunded once per refund the order records.
#[tokio::test]
async fn real_racing_cancels_and_refunds_refund_each_unit_once() {
    for db in kit::testing::databases().await {
        let (w, sim) = world(db).await;
        let label = w.label();
        w.product("MUG", 1000, 10).await;
        let (ann, pm) = w.shopper("ann", APPROVE).await;
        let id = bought(&w, &ann, &pm, json!([{"sku": "MUG", "qty": 4}])).await;
        let admin = w.admin();
        let cancel_path = format!("/orders/{id}/cancel");
        let one = json!({"items": [{"sku": "MUG", "qty": 1}]});
        let (c1, c2, r1, r2) = tokio::join!(
            w.post(&ann, &cancel_path),
            w.post(&admin, &cancel_path),
            refund_lines(&w, &admin, &id, "race-1", one.clone()),
            refund_lines(&w, &admin, &id, "race-2", one.clone()),
        );
        let statuses = [c1.status(), c2.status(), r1.status(), r2.status()];
        assert!(
            statuses.iter().all(|s| *s == StatusCode::ACCEPTED
                || *s == StatusCode::CONFLICT
                || *s == StatusCode::OK),
            "{label}: {statuses:?}"
        );
        let done = w.refunds_done(&id, SETTLE).await;
        assert_eq!(
            done["status"], "refunded",
            "{label}: a cancel was among them: {done}"
        );
        let completed: Vec<&Value> = done["refunds"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["status"] == "completed")
            .collect();
        let units: i64 = completed
            .iter()
            .flat_map(|f| f["items"].as_array().unwrap())
            .map(|i| i["qty"].as_i64().unwrap())
            .sum();
        let amount: i64 = completed
            .iter()
            .map(|f| f["amount"].as_i64().unwrap())
            .sum();
        assert_eq!(units, 4, "{label}: each unit once: {done}");
        assert_eq!(amount, 4000, "{label}");
        let intent = &w.intents(&id).await[0];
        assert_eq!(
            intent["amount_refunded"], intent["amount_captured"],
            "{label}: {intent}"
        );
        assert_eq!(
            w.stock("MUG").await,
            (10, 0),
            "{label}: returned = refunded"
        );
        assert_eq!(sim.refunds(), completed.len() as u64, "{label}");
        w.assert_ledger_balances().await;
    }
}

/// A customer may cancel a confirmed order only within the window; an admin at any time.
#[tokio::test]
async fn real_after_the_window_only_an_admin_cancels_a_confirmed_order() {
    for db in kit::testing::databases().await {
        let (mut w, _sim) = world(db).await;
        let label = w.label();
        w.orders.cancel_window = Duration::ZERO;
        w.stop().await;
        w.restart(fast_saga()).await;
        w.product("MUG", 1250, 10).await;
        let (ann, pm) = w.shopper("ann", APPROVE).await;
        let id = bought(&w, &ann, &pm, json!([{"sku": "MUG", "qty": 1}])).await;
        let r = w.post(&ann, &format!("/orders/{id}/cancel")).await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{label}");
        let p: Value = r.json().await.unwrap();
        assert!(
            p["detail"].as_str().unwrap().contains("only the shop"),
            "{label}: {p}"
        );
        let r = w.post(&w.admin(), &format!("/orders/{id}/cancel")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{label}");
        let done = w.refunds_done(&id, SETTLE).await;
        assert_eq!(done["status"], "refunded", "{label}");
        assert_eq!(
            done["refunds"][0]["reason"], "cancelled_by_admin",
            "{label}"
        );
        assert_eq!(w.stock("MUG").await, (10, 0), "{label}");
    }
}
