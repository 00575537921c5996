//! Refunds never exceed the capture, even when they race.

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
