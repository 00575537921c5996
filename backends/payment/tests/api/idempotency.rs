//! `Idempotency-Key` on every POST, scoped to the caller.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::*;

/// Sends the POST until it is answered with something other than "still in flight" (409
/// with Retry-After), as a client following the kit's semantics does.
async fn until_answered(
    t: &TestPay,
    path: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, Option<String>, Value) {
    for _ in 0..200 {
        let r = t.post_keyed(path, token, key, body.clone()).await;
        if r.status() == StatusCode::CONFLICT && r.headers().contains_key("retry-after") {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let status = r.status();
        let replayed = r
            .headers()
            .get("idempotency-replayed")
            .map(|v| v.to_str().unwrap().to_owned());
        return (status, replayed, r.json().await.unwrap());
    }
    panic!("still in flight after 200 tries");
}

#[tokio::test]
async fn twenty_concurrent_identical_creates_and_confirms_make_one_intent_and_one_charge() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        let method = t.card(&t.customer("ann"), VISA).await;
        let service = t.service();
        let body = json!({ "customer_id": "ann", "payment_method_id": method, "amount": 1999,
                           "currency": "EUR", "order_id": "o-77", "capture_method": "manual" });
        let creates =
            (0..20).map(|_| until_answered(&t, "/payment-intents", &service, "o-77:create", &body));
        let answers = futures::future::join_all(creates).await;
        let first = &answers[0].2;
        for (status, _, b) in &answers {
            assert_eq!(*status, StatusCode::CREATED, "{label}: {b}");
            assert_eq!(b, first, "{label}: every answer is the first one");
        }
        assert!(
            answers.iter().filter(|a| a.1.is_none()).count() == 1,
            "{label}: one ran, the others were replays"
        );
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM payment_intents")
            .fetch_one(t.db.db.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(n, 1, "{label}: one intent");

        let id = first["id"].as_str().unwrap();
        let path = format!("/payment-intents/{id}/confirm");
        let empty = json!({});
        let confirms =
            (0..20).map(|_| until_answered(&t, &path, &service, "o-77:authorize", &empty));
        let answers = futures::future::join_all(confirms).await;
        for (status, _, b) in &answers {
            assert_eq!((*status, b), (StatusCode::OK, &answers[0].2), "{label}");
        }
        assert_eq!(answers[0].2["status"], "requires_capture");
        assert_eq!(t.processor.authorizations(), 1, "{label}: one charge");

        // The same key with another body, or on another path, is 422.
        let mut other = body.clone();
        other["amount"] = json!(2000);
        let r = t
            .post_keyed("/payment-intents", &service, "o-77:create", other)
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{label}");
        problem(r).await;
        let r = t
            .post_keyed(
                &format!("/payment-intents/{id}/capture"),
                &service,
                "o-77:authorize",
                json!({}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{label}");
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM payment_intents")
            .fetch_one(t.db.db.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(n, 1);
    }
}

#[tokio::test]
async fn every_post_needs_a_key_and_keys_belong_to_their_caller() {
    let t = spawn(kit::testing::sqlite().await).await;
    let ann = t.customer("ann");
    let r = t
        .app
        .client
        .post(t.app.url("/payment-methods"))
        .bearer_auth(&ann)
        .json(&json!({ "card_number": VISA, "exp_month": 1, "exp_year": 2030, "cvc": "123", "billing_country": "US" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Bob using Ann's key gets his own answer, not a replay of hers.
    let body = json!({ "card_number": VISA, "exp_month": 1, "exp_year": 2030, "cvc": "123", "billing_country": "US" });
    let a = t
        .post_keyed("/payment-methods", &ann, "same", body.clone())
        .await;
    let b = t
        .post_keyed("/payment-methods", &t.customer("bob"), "same", body)
        .await;
    assert_eq!(
        (a.status(), b.status()),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert!(b.headers().get("idempotency-replayed").is_none());
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_ne!(a["id"], b["id"]);
}
