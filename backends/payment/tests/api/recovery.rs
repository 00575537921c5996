//! No processor call inside a transaction: a call whose answer is lost, or whose service
//! stops before recording it, is settled from the processor's own record, once.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use payment_service::intents::recover_interrupted;
use payment_service::refunds::settle_pending;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::*;
use payment_service::Processor;

/// The action of each call, and the status its intent ends in.
fn action(call: Call) -> (&'static str, &'static str) {
    match call {
        Call::Authorize => ("confirm", "requires_capture"),
        Call::Capture => ("capture", "succeeded"),
        Call::Void => ("cancel", "canceled"),
        Call::Refund => ("refunds", "succeeded"),
    }
}

/// An intent of 1 000 for a new customer, brought to just before `call` (with the faults
/// disarmed); its id.
async fn before(t: &TestPay, faulty: &Faulty, customer: &str, call: Call) -> String {
    faulty.armed.store(false, Ordering::SeqCst);
    let method = t.card(&t.customer(customer), VISA).await;
    let intent = t.intent(customer, &method, 1000).await;
    let id = intent["id"].as_str().unwrap().to_owned();
    if call != Call::Authorize {
        assert_eq!(t.act(&id, "confirm", json!({})).await.0, StatusCode::OK);
    }
    if call == Call::Refund {
        assert_eq!(t.act(&id, "capture", json!({})).await.0, StatusCode::OK);
    }
    faulty.armed.store(true, Ordering::SeqCst);
    id
}

/// What the intent left in the ledger (kind, account → sum) and in the outbox (topics).
async fn traces(t: &TestPay, id: &str) -> (BTreeMap<(String, String), i64>, Vec<String>) {
    let rows = sqlx::query(
        "SELECT kind, account, CAST(SUM(amount) AS BIGINT) AS n FROM ledger_entries \
         WHERE payment_intent_id = $1 GROUP BY kind, account",
    )
    .bind(id)
    .fetch_all(t.db.db.pool())
    .await
    .unwrap();
    let ledger = rows
        .iter()
        .map(|r| ((r.get("kind"), r.get("account")), r.get::<i64, _>("n")))
        .collect();
    let topics = sqlx::query("SELECT topic FROM kit_outbox WHERE payload LIKE $1 ORDER BY id")
        .bind(format!("%{id}%"))
        .fetch_all(t.db.db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("topic"))
        .collect();
    (ledger, topics)
}

async fn status(t: &TestPay, id: &str) -> Value {
    let r = t.get(&format!("/payment-intents/{id}"), &t.service()).await;
    r.json().await.unwrap()
}

/// The service stops after the processor did each call and before the record of it was
/// committed. After a restart its recovery task asks the processor and records what it
/// did: the intent ends as if nothing had happened, with the same ledger entries and
/// events as an intent that went through without a fault, and the processor was asked
/// each operation once.
#[tokio::test]
async fn a_crash_between_the_processors_answer_and_the_commit_is_settled_after_a_restart() {
    for call in [Call::Authorize, Call::Capture, Call::Void, Call::Refund] {
        for db in kit::testing::databases().await {
            let (t, faulty) = spawn_faulty(db, call, Fault::Crash).await;
            let label = format!("{} {call:?}", t.label());
            let (action, ends) = action(call);

            let clean = before(&t, &faulty, "clean", call).await;
            faulty.armed.store(false, Ordering::SeqCst);
            let (s, body) = t.act(&clean, action, json!({})).await;
            assert!(s.is_success(), "{label}: {body}");

            let id = before(&t, &faulty, "ann", call).await;
            let died = t
                .app
                .client
                .post(t.app.url(&format!("/payment-intents/{id}/{action}")))
                .bearer_auth(t.service())
                .header("idempotency-key", t.fresh_key())
                .json(&json!({}))
                .send()
                .await;
            // The kit's idempotency layer answers a handler that died with 500.
            assert!(
                died.map_or(true, |r| r.status().is_server_error()),
                "{label}: the request died"
            );
            let left = if call == Call::Refund {
                sqlx::query_scalar("SELECT status FROM refunds WHERE payment_intent_id = $1")
                    .bind(&id)
                    .fetch_one(t.db.db.pool())
                    .await
                    .unwrap()
            } else {
                status(&t, &id).await["status"].as_str().unwrap().to_owned()
            };
            let between = ["processing", "capturing", "canceling", "pending"];
            assert!(between.contains(&left.as_str()), "{label}: {left}");

            let restarted = t.restarted().await;
            let settle = || async {
                recover_interrupted(&restarted, Duration::ZERO)
                    .await
                    .unwrap()
                    + settle_pending(&restarted, Duration::ZERO).await.unwrap()
            };
            assert_eq!(settle().await, 1, "{label}");
            assert_eq!(settle().await, 0, "{label}: settled once");

            let now = status(&t, &id).await;
            assert_eq!(now["status"], ends, "{label}: {now}");
            if call == Call::Void {
                assert_eq!(now["failure_reason"], "voided", "{label}");
            }
            let calls = t.processor.calls(&id);
            let asked = match call {
                Call::Authorize => calls.authorize,
                Call::Capture => calls.capture,
                Call::Void => calls.void,
                Call::Refund => {
                    assert_eq!(now["amount_refunded"], 1000, "{label}");
                    let refund: String =
                        sqlx::query_scalar("SELECT id FROM refunds WHERE payment_intent_id = $1")
                            .bind(&id)
                            .fetch_one(t.db.db.pool())
                            .await
                            .unwrap();
                    t.processor.refund_calls(&refund)
                }
            };
            assert_eq!(asked, 1, "{label}: one {call:?} at the processor");
            assert_eq!(
                traces(&t, &id).await,
                traces(&t, &clean).await,
                "{label}: the same ledger entries and events as without the crash"
            );
            let l = t.ledger().await;
            assert_eq!(
                (l["sum"].as_i64(), l["unbalanced_transactions"].as_i64()),
                (Some(0), Some(0)),
                "{label}"
            );
        }
    }
}

/// A capture or void whose answer is lost is 502 and stays `capturing` / `canceling`; the
/// retried request (same key: a 5xx is not kept) resumes it, and the processor's reference
/// makes the second call change nothing there.
#[tokio::test]
async fn a_capture_or_void_whose_answer_was_lost_is_resumed_by_the_retried_request() {
    for (call, between) in [(Call::Capture, "capturing"), (Call::Void, "canceling")] {
        for db in kit::testing::databases().await {
            let (t, faulty) = spawn_faulty(db, call, Fault::Lost).await;
            let label = format!("{} {call:?}", t.label());
            let (action, ends) = action(call);
            let id = before(&t, &faulty, "ann", call).await;
            let key = t.fresh_key();
            let path = format!("/payment-intents/{id}/{action}");
            let r = t.post_keyed(&path, &t.service(), &key, json!({})).await;
            assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "{label}");
            assert_eq!(status(&t, &id).await["status"], between, "{label}");
            // Neither a capture nor a void may start while the other's answer is awaited.
            let other = if call == Call::Capture {
                "cancel"
            } else {
                "capture"
            };
            assert_eq!(
                t.act(&id, other, json!({})).await.0,
                StatusCode::CONFLICT,
                "{label}"
            );

            faulty.armed.store(false, Ordering::SeqCst);
            let r = t.post_keyed(&path, &t.service(), &key, json!({})).await;
            assert_eq!(r.status(), StatusCode::OK, "{label}");
            assert_eq!(r.json::<Value>().await.unwrap()["status"], ends, "{label}");
            let calls = t.processor.calls(&id);
            assert_eq!(
                (
                    calls.capture + calls.void,
                    t.processor.captures() + t.processor.voids()
                ),
                (2, 1),
                "{label}: asked twice, done once"
            );
            let l = t.ledger().await;
            assert_eq!(l["unbalanced_transactions"], 0, "{label}");
            assert_eq!(
                traces(&t, &id).await.1.len(),
                2,
                "{label}: authorized, then one {call:?} event"
            );
        }
    }
}

/// A capture or void the processor refuses changes nothing: 502, the intent is
/// `requires_capture` again with its hold, and it can still be captured.
#[tokio::test]
async fn a_refused_capture_or_void_leaves_the_intent_authorized() {
    for call in [Call::Capture, Call::Void] {
        for db in kit::testing::databases().await {
            let (t, faulty) = spawn_faulty(db, call, Fault::Refused).await;
            let label = format!("{} {call:?}", t.label());
            let id = before(&t, &faulty, "ann", call).await;
            let (s, body) = t.act(&id, action(call).0, json!({})).await;
            assert_eq!(s, StatusCode::BAD_GATEWAY, "{label}: {body}");
            let now = status(&t, &id).await;
            assert_eq!(now["status"], "requires_capture", "{label}: {now}");
            assert_eq!(
                (
                    now["amount_captured"].as_i64(),
                    now["failure_reason"].clone()
                ),
                (Some(0), Value::Null),
                "{label}"
            );
            faulty.armed.store(false, Ordering::SeqCst);
            let (s, body) = t.act(&id, "capture", json!({})).await;
            assert_eq!(
                (s, body["status"].as_str()),
                (StatusCode::OK, Some("succeeded")),
                "{label}"
            );
        }
    }
}

/// An authorization whose answer was lost (the processor placed the hold, the reply never
/// came) is voided before the intent is canceled: no hold stays on the card.
#[tokio::test]
async fn an_authorization_whose_answer_was_lost_is_voided_and_canceled() {
    for db in kit::testing::databases().await {
        let (t, faulty) = spawn_faulty(db, Call::Authorize, Fault::Lost).await;
        let label = t.label();
        let id = before(&t, &faulty, "ann", Call::Authorize).await;
        let (s, body) = t.act(&id, "confirm", json!({})).await;
        assert_eq!(s, StatusCode::OK, "{label}: {body}");
        assert_eq!(
            (body["status"].as_str(), body["failure_reason"].as_str()),
            (Some("canceled"), Some("processor_error")),
            "{label}"
        );
        assert_eq!(
            t.processor.lookup(&id).await.unwrap(),
            payment_service::AuthorizationState::Voided,
            "{label}"
        );
    }
}
