//! The intent state machine over HTTP: the happy path, partial capture, illegal
//! transitions (409), idempotent capture and cancel, and who may see and use what.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::*;

#[tokio::test]
async fn confirm_capture_refund_happy_path_with_ledger_and_events() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        let ann = t.customer("ann");
        let method = t.card(&ann, VISA).await;
        let r = t
            .post(
                "/payment-intents",
                &ann,
                json!({ "payment_method_id": method, "amount": 5000, "currency": "eur",
                        "order_id": "o-1", "capture_method": "manual" }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "{label}");
        let created: Value = r.json().await.unwrap();
        assert_eq!(created["status"], "requires_confirmation");
        assert_eq!(created["customer_id"], "ann");
        assert_eq!(created["currency"], "EUR");
        assert_eq!(created["fraud"], Value::Null);
        let id = created["id"].as_str().unwrap();

        let r = t
            .post(&format!("/payment-intents/{id}/confirm"), &ann, json!({}))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{label}: the customer confirms");
        let confirmed: Value = r.json().await.unwrap();
        assert_eq!(
            confirmed["status"], "requires_capture",
            "{label}: {confirmed}"
        );
        assert_eq!(confirmed["amount_authorized"], 5000);
        assert_eq!(
            confirmed["fraud"],
            json!({ "decision": "allow", "rule": null })
        );
        let l = t.ledger().await;
        assert_eq!(
            TestPay::account(&l, "authorized_holds"),
            5000,
            "{label}: {l}"
        );

        let r = t
            .post(&format!("/payment-intents/{id}/capture"), &ann, json!({}))
            .await;
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{label}: customers do not capture"
        );
        let (s, captured) = t.act(id, "capture", json!({ "amount": 4000 })).await;
        assert_eq!(s, StatusCode::OK, "{label}: {captured}");
        assert_eq!(captured["status"], "succeeded");
        assert_eq!(captured["amount_captured"], 4000);
        let (s, again) = t.act(id, "capture", json!({ "amount": 4000 })).await;
        assert_eq!(
            (s, &again["amount_captured"]),
            (StatusCode::OK, &json!(4000)),
            "{label}: capture is idempotent"
        );
        let l = t.ledger().await;
        assert_eq!(
            TestPay::account(&l, "authorized_holds"),
            0,
            "{label}: the remaining hold is released"
        );
        assert_eq!(TestPay::account(&l, "customer_receivable"), 4000);
        assert_eq!(TestPay::account(&l, "merchant_revenue"), -4000);

        let (s, refund) = t
            .act(
                id,
                "refunds",
                json!({ "amount": 1500, "reason": "damaged" }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{label}: {refund}");
        assert_eq!(refund["amount_refunded"], 1500);
        let (s, _) = t.act(id, "refunds", json!({ "amount": 2501 })).await;
        assert_eq!(s, StatusCode::CONFLICT, "{label}: more than captured");
        let (s, rest) = t.act(id, "refunds", json!({})).await;
        assert_eq!(
            (s, &rest["amount"]),
            (StatusCode::CREATED, &json!(2500)),
            "{label}: the rest by default"
        );
        let l = t.ledger().await;
        assert_eq!(l["sum"], 0);
        assert_eq!(l["unbalanced_transactions"], 0);
        assert_eq!(TestPay::account(&l, "customer_receivable"), 0);

        let r = t.get(&format!("/payment-intents/{id}"), &ann).await;
        let now: Value = r.json().await.unwrap();
        assert_eq!(
            (now["status"].as_str(), now["amount_refunded"].as_i64()),
            (Some("succeeded"), Some(4000))
        );
        let r = t.get("/payment-intents?order_id=o-1", &t.service()).await;
        let list: Value = r.json().await.unwrap();
        assert_eq!(
            list["items"].as_array().unwrap().len(),
            1,
            "{label}: {list}"
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
                "payment.captured",
                "payment.refunded",
                "payment.refunded"
            ],
            "{label}"
        );
    }
}

#[tokio::test]
async fn illegal_transitions_are_409_and_cancel_is_idempotent() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        let method = t.card(&t.customer("ann"), VISA).await;

        // Unconfirmed: no capture, no refund; cancel works twice.
        let fresh = t.intent("ann", &method, 1000).await;
        let id = fresh["id"].as_str().unwrap();
        assert_eq!(
            t.act(id, "capture", json!({})).await.0,
            StatusCode::CONFLICT,
            "{label}"
        );
        assert_eq!(
            t.act(id, "refunds", json!({ "amount": 1 })).await.0,
            StatusCode::CONFLICT
        );
        let (s, c) = t.act(id, "cancel", json!({})).await;
        assert_eq!(
            (s, c["status"].as_str()),
            (StatusCode::OK, Some("canceled")),
            "{label}"
        );
        let (s, c) = t.act(id, "cancel", json!({})).await;
        assert_eq!(
            (s, c["status"].as_str()),
            (StatusCode::OK, Some("canceled"))
        );
        assert_eq!(
            t.act(id, "confirm", json!({})).await.0,
            StatusCode::CONFLICT
        );
        assert_eq!(
            t.act(id, "capture", json!({})).await.0,
            StatusCode::CONFLICT
        );

        // Authorized: over-capture is 422; void releases the hold; capture after void 409.
        let auth = t.authorized("bob", VISA, 2000).await;
        let id = auth["id"].as_str().unwrap();
        let (s, again) = t.act(id, "confirm", json!({})).await;
        assert_eq!(
            (s, again["status"].as_str()),
            (StatusCode::OK, Some("requires_capture")),
            "{label}: confirming again authorizes nothing new"
        );
        assert_eq!(t.processor.authorizations(), 1);
        assert_eq!(
            t.act(id, "capture", json!({ "amount": 2001 })).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            t.act(id, "capture", json!({ "amount": 0 })).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let (s, v) = t.act(id, "cancel", json!({})).await;
        assert_eq!(
            (s, v["failure_reason"].as_str()),
            (StatusCode::OK, Some("voided")),
            "{label}"
        );
        assert_eq!(
            t.act(id, "capture", json!({})).await.0,
            StatusCode::CONFLICT
        );
        assert_eq!(TestPay::account(&t.ledger().await, "authorized_holds"), 0);

        // Captured: cancel is 409.
        let auth = t.authorized("cy", VISA, 3000).await;
        let id = auth["id"].as_str().unwrap();
        assert_eq!(t.act(id, "capture", json!({})).await.0, StatusCode::OK);
        let r = t
            .post(
                &format!("/payment-intents/{id}/cancel"),
                &t.service(),
                json!({}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{label}");
        let p = problem(r).await;
        assert!(p["detail"].as_str().unwrap().contains("refund"), "{p}");
        assert_eq!(t.ledger().await["sum"], 0);
    }
}

#[tokio::test]
async fn concurrent_captures_and_voids_of_one_intent_apply_once() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        let auth = t.authorized("ann", VISA, 1000).await;
        let id = auth["id"].as_str().unwrap();
        let tasks = (0..8).map(|i| {
            let action = if i % 2 == 0 { "capture" } else { "cancel" };
            t.act(id, action, json!({}))
        });
        let results = futures::future::join_all(tasks).await;
        let captured = results
            .iter()
            .filter(|(s, b)| *s == StatusCode::OK && b["status"] == "succeeded")
            .count();
        let voided = results
            .iter()
            .filter(|(s, b)| *s == StatusCode::OK && b["status"] == "canceled")
            .count();
        assert!(
            captured == 0 || voided == 0,
            "{label}: both captured and voided: {results:?}"
        );
        let l = t.ledger().await;
        assert_eq!(l["unbalanced_transactions"], 0);
        let txns: i64 = sqlx::query("SELECT COUNT(DISTINCT txn_id) AS n FROM ledger_entries")
            .fetch_one(t.db.db.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(
            txns, 2,
            "{label}: one authorization and one capture or void"
        );
        assert_eq!(t.processor.captures() + t.processor.voids(), 1, "{label}");
    }
}

#[tokio::test]
async fn a_customer_cannot_use_anothers_card_or_see_their_intents() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        let ann = t.customer("ann");
        let bob = t.customer("bob");
        let anns_card = t.card(&ann, VISA).await;
        let bobs_card = t.card(&bob, VISA).await;

        // Bob paying with Ann's card, for himself or (via the service) for Ann's card as his.
        let r = t
            .post(
                "/payment-intents",
                &bob,
                json!({ "payment_method_id": anns_card, "amount": 100, "currency": "EUR" }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{label}");
        assert_eq!(problem(r).await["errors"][0]["field"], "payment_method_id");
        let r = t
            .post("/payment-intents", &t.service(), json!({ "customer_id": "bob", "payment_method_id": anns_card, "amount": 100, "currency": "EUR" }))
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{label}");
        // Bob creating an intent for Ann.
        let r = t
            .post("/payment-intents", &bob, json!({ "customer_id": "ann", "payment_method_id": anns_card, "amount": 100, "currency": "EUR" }))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{label}");

        let anns = t.intent("ann", &anns_card, 100).await;
        let id = anns["id"].as_str().unwrap();
        assert_eq!(
            t.get(&format!("/payment-intents/{id}"), &bob)
                .await
                .status(),
            StatusCode::NOT_FOUND,
            "{label}"
        );
        assert_eq!(
            t.get(&format!("/payment-intents/{id}"), &ann)
                .await
                .status(),
            StatusCode::OK
        );
        for action in ["confirm", "cancel", "capture", "refunds"] {
            let r = t
                .post(&format!("/payment-intents/{id}/{action}"), &bob, json!({}))
                .await;
            assert!(
                [StatusCode::NOT_FOUND, StatusCode::FORBIDDEN].contains(&r.status()),
                "{label}: bob may not {action}: {}",
                r.status()
            );
        }
        let r = t.get("/payment-intents?customer_id=ann", &bob).await;
        let seen: Value = r.json().await.unwrap();
        assert_eq!(
            seen["items"],
            json!([]),
            "{label}: bob's list is only his own"
        );
        let _ = bobs_card;
        assert_eq!(
            t.get("/ledger/balance", &ann).await.status(),
            StatusCode::FORBIDDEN
        );
        let r = t
            .app
            .client
            .get(t.app.url("/payment-methods"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = t
            .app
            .client
            .post(t.app.url("/payment-methods"))
            .header("idempotency-key", "k")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{label}: no token, no key lookup"
        );
    }
}

/// A process that died mid-authorization leaves the intent `processing`: recovery voids it
/// at the processor and cancels it, without touching the ledger; a fresh one is left alone.
#[tokio::test]
async fn an_intent_interrupted_while_processing_is_voided_and_canceled() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        let method = t.card(&t.customer("ann"), VISA).await;
        let stuck = t.intent("ann", &method, 1000).await;
        let fresh = t.intent("ann", &method, 2000).await;
        for (intent, updated_at) in [(&stuck, 0_i64), (&fresh, kit::db::now_ms())] {
            sqlx::query(
                "UPDATE payment_intents SET status = 'processing', updated_at = $1 WHERE id = $2",
            )
            .bind(updated_at)
            .bind(intent["id"].as_str().unwrap())
            .execute(t.state.db.pool())
            .await
            .unwrap();
        }
        let voids_before = t.processor.voids();
        let ended = payment_service::intents::recover_interrupted(
            &t.state,
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
        assert_eq!(ended, 1, "{label}");
        assert_eq!(
            t.processor.voids(),
            voids_before + 1,
            "{label}: voided first"
        );
        let s = t
            .get(
                &format!("/payment-intents/{}", stuck["id"].as_str().unwrap()),
                &t.service(),
            )
            .await;
        let s: Value = s.json().await.unwrap();
        assert_eq!(
            (s["status"].as_str(), s["failure_reason"].as_str()),
            (Some("canceled"), Some("processor_interrupted")),
            "{label}: {s}"
        );
        let f = t
            .get(
                &format!("/payment-intents/{}", fresh["id"].as_str().unwrap()),
                &t.service(),
            )
            .await;
        let f: Value = f.json().await.unwrap();
        assert_eq!(
            f["status"], "processing",
            "{label}: a live authorization is left alone"
        );
        assert_eq!(t.ledger().await["sum"], 0, "{label}");
    }
}
