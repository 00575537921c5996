//! The ledger balances after any sequence of authorize / capture / void / refund: a
//! property test over seeded random sequences (the seed of a failing case is printed), many
//! cases on SQLite and fewer on PostgreSQL. Each operation's answer is also checked against
//! a model of the intent.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row;

use crate::helpers::*;

#[derive(Debug, Clone, Default)]
struct Model {
    status: &'static str,
    authorized: i64,
    captured: i64,
    refunded: i64,
}

#[tokio::test]
async fn the_ledger_balances_after_any_sequence_of_operations() {
    for db in kit::testing::databases().await {
        let cases = if db.label() == "sqlite" { 40 } else { 12 };
        // Hundreds of intents an hour from one customer: velocity rules would block them.
        let t = spawn_with(db, |s| s.fraud.allow_customers = vec!["ann".into()]).await;
        let label = t.label();
        let ann = t.customer("ann");
        let approve = t.card(&ann, VISA).await;
        let decline = t.card(&ann, DECLINE).await;
        let mut models: HashMap<String, Model> = HashMap::new();
        for case in 0..cases {
            let seed = 0x5eed_0000 + case;
            let mut rng = StdRng::seed_from_u64(seed);
            let mut ids: Vec<String> = Vec::new();
            for step in 0..14 {
                let op = if ids.is_empty() {
                    0
                } else {
                    rng.random_range(0..5)
                };
                let ctx = format!("{label} seed {seed:#x} step {step}");
                if op == 0 {
                    let card = if rng.random_bool(0.8) {
                        &approve
                    } else {
                        &decline
                    };
                    let amount = rng.random_range(1..=10_000);
                    let i = t.intent("ann", card, amount).await;
                    let id = i["id"].as_str().unwrap().to_owned();
                    let (s, b) = t.act(&id, "confirm", json!({})).await;
                    assert_eq!(s, StatusCode::OK, "{ctx}: {b}");
                    let m = if card == &approve {
                        assert_eq!(b["status"], "requires_capture", "{ctx}");
                        Model {
                            status: "requires_capture",
                            authorized: amount,
                            ..Model::default()
                        }
                    } else {
                        assert_eq!(b["status"], "canceled", "{ctx}");
                        Model {
                            status: "canceled",
                            ..Model::default()
                        }
                    };
                    models.insert(id.clone(), m);
                    ids.push(id);
                    continue;
                }
                let id = ids[rng.random_range(0..ids.len())].clone();
                let m = models.get_mut(&id).unwrap();
                match op {
                    1 | 2 => {
                        let amount = rng.random_range(1..=m.authorized.max(1) + 50);
                        let (s, b) = t.act(&id, "capture", json!({ "amount": amount })).await;
                        match m.status {
                            "requires_capture" if amount <= m.authorized => {
                                assert_eq!(s, StatusCode::OK, "{ctx}: {b}");
                                m.status = "succeeded";
                                m.captured = amount;
                            }
                            "requires_capture" => {
                                assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{ctx}")
                            }
                            "succeeded" => assert_eq!(s, StatusCode::OK, "{ctx}: idempotent"),
                            _ => assert_eq!(s, StatusCode::CONFLICT, "{ctx}"),
                        }
                    }
                    3 => {
                        let (s, b) = t.act(&id, "cancel", json!({})).await;
                        match m.status {
                            "succeeded" => assert_eq!(s, StatusCode::CONFLICT, "{ctx}"),
                            _ => {
                                assert_eq!(s, StatusCode::OK, "{ctx}: {b}");
                                m.status = "canceled";
                            }
                        }
                    }
                    _ => {
                        let amount = rng.random_range(1..=m.captured.max(1));
                        let (s, b) = t.act(&id, "refunds", json!({ "amount": amount })).await;
                        if m.status == "succeeded" && m.refunded + amount <= m.captured {
                            assert_eq!(s, StatusCode::CREATED, "{ctx}: {b}");
                            m.refunded += amount;
                        } else {
                            assert_eq!(s, StatusCode::CONFLICT, "{ctx}: {b}");
                        }
                    }
                }
            }
            check(&t, &models, &format!("{label} seed {seed:#x}")).await;
        }
    }
}

async fn check(t: &TestPay, models: &HashMap<String, Model>, ctx: &str) {
    let l = t.ledger().await;
    assert_eq!(l["sum"], 0, "{ctx}: {l}");
    assert_eq!(l["unbalanced_transactions"], 0, "{ctx}: {l}");
    let holds: i64 = models
        .values()
        .filter(|m| m.status == "requires_capture")
        .map(|m| m.authorized)
        .sum();
    let receivable: i64 = models.values().map(|m| m.captured - m.refunded).sum();
    assert_eq!(TestPay::account(&l, "authorized_holds"), holds, "{ctx}");
    assert_eq!(
        TestPay::account(&l, "customer_funds_on_hold"),
        -holds,
        "{ctx}"
    );
    assert_eq!(
        TestPay::account(&l, "customer_receivable"),
        receivable,
        "{ctx}"
    );
    assert_eq!(
        TestPay::account(&l, "merchant_revenue"),
        -receivable,
        "{ctx}"
    );
    // Per intent too, and the intent rows agree with the model.
    for (id, m) in models {
        let row = sqlx::query(
            "SELECT status, amount_captured, amount_refunded, \
             (SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM ledger_entries \
              WHERE payment_intent_id = $1 AND account = 'customer_receivable') AS receivable \
             FROM payment_intents WHERE id = $1",
        )
        .bind(id)
        .fetch_one(t.db.db.pool())
        .await
        .unwrap();
        let got: (String, i64, i64, i64) = (
            row.get("status"),
            row.get("amount_captured"),
            row.get("amount_refunded"),
            row.get("receivable"),
        );
        assert_eq!(
            got,
            (
                m.status.to_owned(),
                m.captured,
                m.refunded,
                m.captured - m.refunded
            ),
            "{ctx}: {id}"
        );
    }
}
