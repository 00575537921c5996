//! Fraud rules: the precedence table (pure), and what block, review and velocity do to
//! intents over HTTP.

use payment_service::fraud::{evaluate, Decision, Facts, Rules};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

fn rules() -> Rules {
    Rules {
        allow_customers: vec!["vip".into()],
        block_amount: 10_000,
        review_amount: 5_000,
        block_customer_per_hour: 5,
        review_customer_per_hour: 3,
        block_card_per_hour: 8,
        review_card_per_hour: 6,
        country_mismatch: Decision::Review,
    }
}

/// (customer, amount, per customer/h, per card/h, card country, billing, mismatch rule,
/// decision, rule)
type Case = (
    &'static str,
    i64,
    i64,
    i64,
    &'static str,
    &'static str,
    Decision,
    Decision,
    Option<&'static str>,
);

#[test]
fn precedence_allow_list_then_block_then_review() {
    use Decision::*;
    // (customer, amount, customer/h, card/h, card country, billing, mismatch rule, decision, rule)
    let cases: &[Case] = &[
        ("ann", 100, 1, 1, "US", "US", Review, Allow, None),
        (
            "ann",
            5_001,
            1,
            1,
            "US",
            "US",
            Review,
            Review,
            Some("amount_review"),
        ),
        (
            "ann",
            10_001,
            1,
            1,
            "US",
            "US",
            Review,
            Block,
            Some("amount_block"),
        ),
        // Block beats review whatever the order of the facts.
        (
            "ann",
            5_001,
            6,
            1,
            "US",
            "US",
            Review,
            Block,
            Some("customer_velocity_block"),
        ),
        (
            "ann",
            100,
            4,
            1,
            "US",
            "US",
            Review,
            Review,
            Some("customer_velocity_review"),
        ),
        (
            "ann",
            100,
            1,
            9,
            "US",
            "US",
            Review,
            Block,
            Some("card_velocity_block"),
        ),
        (
            "ann",
            100,
            1,
            7,
            "US",
            "US",
            Review,
            Review,
            Some("card_velocity_review"),
        ),
        (
            "ann",
            100,
            1,
            1,
            "BR",
            "US",
            Review,
            Review,
            Some("country_mismatch_review"),
        ),
        (
            "ann",
            100,
            1,
            1,
            "BR",
            "US",
            Block,
            Block,
            Some("country_mismatch_block"),
        ),
        ("ann", 100, 1, 1, "BR", "US", Allow, Allow, None),
        (
            "ann",
            6_000,
            1,
            1,
            "BR",
            "US",
            Block,
            Block,
            Some("country_mismatch_block"),
        ),
        ("ann", 100, 1, 1, "us", "US", Review, Allow, None),
        // The allow list beats every block.
        (
            "vip",
            10_001,
            6,
            9,
            "BR",
            "US",
            Block,
            Allow,
            Some("allow_list_customer"),
        ),
        // Counts at the threshold do not match (more than N).
        (
            "ann",
            10_000,
            5,
            8,
            "US",
            "US",
            Review,
            Review,
            Some("amount_review"),
        ),
        ("ann", 5_000, 3, 6, "US", "US", Review, Allow, None),
    ];
    for (customer, amount, per_customer, per_card, card, billing, mismatch, decision, rule) in cases
    {
        let mut r = rules();
        r.country_mismatch = *mismatch;
        let o = evaluate(
            &r,
            &Facts {
                customer_id: customer,
                amount: *amount,
                customer_last_hour: *per_customer,
                card_last_hour: *per_card,
                card_country: card,
                billing_country: billing,
            },
        );
        assert_eq!(
            (o.decision, o.rule),
            (*decision, *rule),
            "{customer} {amount} {per_customer} {per_card} {card}/{billing}"
        );
    }
}

#[tokio::test]
async fn block_cancels_without_the_processor_review_authorizes_flagged_velocity_counts_the_db() {
    for db in kit::testing::databases().await {
        let t = spawn_with(db, |s| s.fraud = rules()).await;
        let label = t.label();
        let ann = t.customer("ann");
        let visa = t.card(&ann, VISA).await;

        let big = t.intent("ann", &visa, 10_001).await;
        let (s, b) = t
            .act(big["id"].as_str().unwrap(), "confirm", json!({}))
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            (b["status"].as_str(), b["failure_reason"].as_str()),
            (Some("canceled"), Some("fraud_blocked")),
            "{label}: {b}"
        );
        assert_eq!(
            b["fraud"],
            json!({ "decision": "block", "rule": "amount_block" })
        );
        assert_eq!(
            t.processor.authorizations(),
            0,
            "{label}: a blocked payment never reaches the processor"
        );

        let brazil = t.card_in(&ann, BRAZIL, "US").await;
        let foreign = t.intent("ann", &brazil, 100).await;
        let (_, b) = t
            .act(foreign["id"].as_str().unwrap(), "confirm", json!({}))
            .await;
        assert_eq!(
            b["status"], "requires_capture",
            "{label}: review authorizes: {b}"
        );
        assert_eq!(
            b["fraud"],
            json!({ "decision": "review", "rule": "country_mismatch_review" })
        );

        // Ann has 2 intents this hour; the 4th is reviewed for velocity, the 6th blocked.
        let mut last = serde_json::Value::Null;
        for n in 3..=6 {
            let i = t.intent("ann", &visa, 100).await;
            let (_, b) = t.act(i["id"].as_str().unwrap(), "confirm", json!({})).await;
            if n == 4 {
                assert_eq!(
                    b["fraud"]["rule"], "customer_velocity_review",
                    "{label}: {b}"
                );
            }
            last = b;
        }
        assert_eq!(
            last["fraud"]["rule"], "customer_velocity_block",
            "{label}: {last}"
        );
        assert_eq!(last["status"], "canceled");

        // The same card saved by another customer counts towards card velocity: ann used it
        // 5 times; bob's 7th use is reviewed, his 9th blocked.
        let bob = t.customer("bob");
        let bobs_visa = t.card(&bob, VISA).await;
        t.intent("bob", &bobs_visa, 100).await;
        let i = t.intent("bob", &bobs_visa, 100).await;
        let (_, b) = t.act(i["id"].as_str().unwrap(), "confirm", json!({})).await;
        assert_eq!(
            b["fraud"]["rule"], "card_velocity_review",
            "{label}: 7 on this card: {b}"
        );
        t.intent("bob", &bobs_visa, 100).await;
        let i = t.intent("bob", &bobs_visa, 100).await;
        let (_, b) = t.act(i["id"].as_str().unwrap(), "confirm", json!({})).await;
        assert_eq!(
            b["fraud"]["rule"], "card_velocity_block",
            "{label}: 9 on this card: {b}"
        );
    }
}
