//! The simulated processor's test cards through confirm.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::*;

#[tokio::test]
async fn test_cards_approve_decline_review_and_time_out() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        let ann = t.customer("ann");
        // (card, status, failure_reason, fraud decision, fraud rule)
        let cases: [(&str, &str, Value, &str, Value); 5] = [
            (VISA, "requires_capture", Value::Null, "allow", Value::Null),
            (
                DECLINE,
                "canceled",
                json!("card_declined"),
                "allow",
                Value::Null,
            ),
            (
                "4000000000009995",
                "canceled",
                json!("insufficient_funds"),
                "allow",
                Value::Null,
            ),
            (
                REVIEW,
                "requires_capture",
                Value::Null,
                "review",
                json!("processor_elevated_risk"),
            ),
            (
                TIMEOUT,
                "canceled",
                json!("processor_timeout"),
                "allow",
                Value::Null,
            ),
        ];
        for (card, status, reason, decision, rule) in cases {
            let method = t.card(&ann, card).await;
            let intent = t.intent("ann", &method, 700).await;
            let id = intent["id"].as_str().unwrap();
            let started = std::time::Instant::now();
            let (s, body) = t.act(id, "confirm", json!({})).await;
            assert_eq!(s, StatusCode::OK, "{label} {card}: {body}");
            assert_eq!(body["status"], status, "{label} {card}: {body}");
            assert_eq!(body["failure_reason"], reason, "{label} {card}");
            assert_eq!(body["fraud"]["decision"], decision, "{label} {card}");
            assert_eq!(body["fraud"]["rule"], rule, "{label} {card}");
            if card == TIMEOUT {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(5),
                    "the deadline (300 ms) cut it off"
                );
            }
            let (s, again) = t.act(id, "confirm", json!({})).await;
            if status == "canceled" {
                assert_eq!(
                    s,
                    StatusCode::CONFLICT,
                    "{label} {card}: a failed intent is final: {again}"
                );
            }
        }
        assert_eq!(
            t.processor.voids(),
            1,
            "{label}: the timed-out hold is voided"
        );
        let topics: Vec<String> = sqlx::query("SELECT topic FROM kit_outbox ORDER BY id")
            .fetch_all(t.db.db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("topic"))
            .collect();
        assert_eq!(
            topics,
            [
                "payment.authorized",
                "payment.failed",
                "payment.failed",
                "payment.authorized",
                "payment.failed"
            ],
            "{label}"
        );
        let l = t.ledger().await;
        assert_eq!(
            TestPay::account(&l, "authorized_holds"),
            1400,
            "{label}: only approved holds: {l}"
        );
    }
}

#[test]
fn every_test_card_passes_luhn() {
    for (number, _, _) in payment_service::processor::TEST_CARDS {
        assert!(payment_service::cards::luhn(number), "{number}");
    }
}
