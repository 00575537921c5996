//! Refunds never exceed the capture, even when they race.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn two_concurrent_partial_refunds_exceeding_the_capture_exactly_one_succeeds() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        for round in 0..5 {
            let auth = t.authorized(&format!("c{round}"), VISA, 1000).await;
            let id = auth["id"].as_str().unwrap();
            assert_eq!(t.act(id, "capture", json!({})).await.0, StatusCode::OK);
            let (a, b) = tokio::join!(
                t.act(id, "refunds", json!({ "amount": 600 })),
                t.act(id, "refunds", json!({ "amount": 700 })),
            );
            let mut statuses = [a.0, b.0];
            statuses.sort();
            assert_eq!(
                statuses,
                [StatusCode::CREATED, StatusCode::CONFLICT],
                "{label} round {round}: {a:?} {b:?}"
            );
            let loser = if a.0 == StatusCode::CONFLICT {
                &a.1
            } else {
                &b.1
            };
            let winner = if a.0 == StatusCode::CREATED {
                &a.1
            } else {
                &b.1
            };
            assert_eq!(
                loser["refundable"],
                1000 - winner["amount"].as_i64().unwrap(),
                "{label}: {loser}"
            );
            let r = t.get(&format!("/payment-intents/{id}"), &t.service()).await;
            let now: serde_json::Value = r.json().await.unwrap();
            assert_eq!(now["amount_refunded"], winner["amount"], "{label}");
        }
        let l = t.ledger().await;
        assert_eq!(
            (l["sum"].as_i64(), l["unbalanced_transactions"].as_i64()),
            (Some(0), Some(0))
        );
        assert_eq!(t.processor.refunds(), 5);
    }
}

#[tokio::test]
async fn refunds_need_the_refund_permission_and_a_positive_amount() {
    let t = spawn(kit::testing::sqlite().await).await;
    let auth = t.authorized("ann", VISA, 1000).await;
    let id = auth["id"].as_str().unwrap();
    assert_eq!(t.act(id, "capture", json!({})).await.0, StatusCode::OK);
    let charge_only = t.token("service:x", &["service"], &["payments:charge"]);
    let r = t
        .post(
            &format!("/payment-intents/{id}/refunds"),
            &charge_only,
            json!({ "amount": 1 }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = t
        .post(
            &format!("/payment-intents/{id}/refunds"),
            &t.customer("ann"),
            json!({ "amount": 1 }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        t.act(id, "refunds", json!({ "amount": 0 })).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        t.act(id, "refunds", json!({ "amount": -5 })).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let r = t
        .post(
            &format!("/payment-intents/{id}/refunds"),
            &t.admin(),
            json!({ "amount": 1000 }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "admins may refund");
    assert_eq!(
        t.act(id, "refunds", json!({})).await.0,
        StatusCode::CONFLICT,
        "nothing left"
    );
}

/// A service whose refunds fail with `refunds`, and an intent of 1 000 captured through
/// it; the merchant revenue account's balance after the capture.
async fn captured_through(db: kit::testing::TestDb, refunds: Fault) -> (TestPay, String, i64) {
    let (t, _) = spawn_faulty(db, Call::Refund, refunds).await;
    let auth = t.authorized("ann", VISA, 1000).await;
    let id = auth["id"].as_str().unwrap().to_owned();
    assert_eq!(t.act(&id, "capture", json!({})).await.0, StatusCode::OK);
    let captured = TestPay::account(&t.ledger().await, "merchant_revenue");
    (t, id, captured)
}

/// The processor refunded but its answer never reached the record: the refund is `pending`
/// (202) with its amount held, recovery asks the processor and books it once; the processor
/// saw one refund for that reference, and the ledger balances.
#[tokio::test]
async fn a_refund_whose_answer_was_lost_is_settled_from_the_processor_once() {
    for db in kit::testing::databases().await {
        let (t, id, captured) = captured_through(db, Fault::Lost).await;
        let (id, label) = (id.as_str(), t.label());
        let (status, refund) = t.act(id, "refunds", json!({ "amount": 400 })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{label}: {refund}");
        assert_eq!(refund["status"], "pending", "{label}");
        // Held: only 600 is refundable while it is pending.
        let (status, over) = t.act(id, "refunds", json!({ "amount": 700 })).await;
        assert_eq!(status, StatusCode::CONFLICT, "{label}: {over}");
        assert_eq!(over["refundable"], 600, "{label}");
        let before = t.ledger().await;
        assert_eq!(
            TestPay::account(&before, "merchant_revenue"),
            captured,
            "{label}: not booked yet"
        );

        let settled = payment_service::refunds::settle_pending(&t.state, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(settled, 1, "{label}");
        assert_eq!(
            payment_service::refunds::settle_pending(&t.state, Duration::ZERO)
                .await
                .unwrap(),
            0,
            "{label}: settled once"
        );
        let refund_id = refund["id"].as_str().unwrap();
        assert_eq!(
            t.processor.refund_calls(refund_id),
            1,
            "{label}: asked, not repeated"
        );
        let status: String = sqlx::query_scalar("SELECT status FROM refunds WHERE id = $1")
            .bind(refund_id)
            .fetch_one(t.db.db.pool())
            .await
            .unwrap();
        assert_eq!(status, "succeeded", "{label}");
        let l = t.ledger().await;
        assert_eq!(
            TestPay::account(&l, "merchant_revenue"),
            captured + 400,
            "{label}: {l}"
        );
        assert_eq!(
            (l["sum"].as_i64(), l["unbalanced_transactions"].as_i64()),
            (Some(0), Some(0))
        );
        let events: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM kit_outbox WHERE topic = 'payment.refunded'")
                .fetch_one(t.db.db.pool())
                .await
                .unwrap();
        assert_eq!(events, 1, "{label}");
    }
}

/// A refund the processor refuses ends `failed` and its amount is refundable again.
#[tokio::test]
async fn a_refused_refund_releases_its_amount() {
    for db in kit::testing::databases().await {
        let (t, id, captured) = captured_through(db, Fault::Refused).await;
        let (id, label) = (id.as_str(), t.label());
        let (status, problem) = t.act(id, "refunds", json!({ "amount": 400 })).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{label}: {problem}");
        let r = t.get(&format!("/payment-intents/{id}"), &t.service()).await;
        let now: serde_json::Value = r.json().await.unwrap();
        assert_eq!(now["amount_refunded"], 0, "{label}");
        let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM refunds")
            .fetch_all(t.db.db.pool())
            .await
            .unwrap();
        assert_eq!(statuses, ["failed"], "{label}");
        let l = t.ledger().await;
        assert_eq!(
            TestPay::account(&l, "merchant_revenue"),
            captured,
            "{label}"
        );
    }
}
