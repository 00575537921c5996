//! Saving cards: the checks, what is answered, what is stored, whose cards one sees.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::*;

/// (card_number, exp_month, exp_year, cvc, billing_country, the field refused or None).
type Case = (
    &'static str,
    i64,
    i64,
    &'static str,
    &'static str,
    Option<&'static str>,
);

const CASES: &[Case] = &[
    ("4242 4242 4242 4242", 12, 2030, "123", "us", None),
    (
        "4242424242424241",
        12,
        2030,
        "123",
        "US",
        Some("card_number"),
    ), // Luhn
    (
        "4242-4242-4242-4242",
        12,
        2030,
        "123",
        "US",
        Some("card_number"),
    ), // dashes
    ("42424242", 12, 2030, "123", "US", Some("card_number")), // too short
    ("", 12, 2030, "123", "US", Some("card_number")),
    ("4242424242424242", 13, 2030, "123", "US", Some("exp_month")),
    ("4242424242424242", 0, 2030, "123", "US", Some("exp_month")),
    ("4242424242424242", 1, 2020, "123", "US", Some("exp_year")), // expired
    ("4242424242424242", 12, 30, "123", "US", Some("exp_year")),  // two digits
    ("4242424242424242", 12, 2099, "123", "US", Some("exp_year")), // too far
    ("4242424242424242", 12, 2030, "12", "US", Some("cvc")),
    ("4242424242424242", 12, 2030, "1234", "US", Some("cvc")),
    ("4242424242424242", 12, 2030, "12a", "US", Some("cvc")),
    ("378282246310005", 12, 2030, "123", "US", Some("cvc")), // amex needs 4
    ("378282246310005", 12, 2030, "1234", "US", None),
    (
        "4242424242424242",
        12,
        2030,
        "123",
        "USA",
        Some("billing_country"),
    ),
];

#[tokio::test]
async fn card_validation_table() {
    let t = spawn(kit::testing::sqlite().await).await;
    let ann = t.customer("ann");
    for (number, month, year, cvc, country, refused) in CASES {
        let r = t
            .post(
                "/payment-methods",
                &ann,
                json!({ "card_number": number, "exp_month": month, "exp_year": year,
                        "cvc": cvc, "billing_country": country }),
            )
            .await;
        match refused {
            None => assert_eq!(
                r.status(),
                StatusCode::CREATED,
                "{number} {month}/{year} {cvc}"
            ),
            Some(field) => {
                assert_eq!(
                    r.status(),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{number} {cvc}"
                );
                let p = problem(r).await;
                let fields: Vec<&str> = p["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["field"].as_str().unwrap())
                    .collect();
                assert_eq!(fields, vec![*field], "{number} {month}/{year} {cvc}: {p}");
            }
        }
    }
    // A card that expires this month is still good.
    let (y, m) = payment_service::cards::year_month(kit::db::now_ms());
    let r = t
        .post(
            "/payment-methods",
            &ann,
            json!({ "card_number": VISA, "exp_month": m, "exp_year": y, "cvc": "123", "billing_country": "US" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_saved_card_keeps_brand_last4_and_country_and_never_the_number() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        let ann = t.customer("ann");
        let r = t
            .post(
                "/payment-methods",
                &ann,
                json!({ "card_number": "4000 0007 6000 0002", "exp_month": 7, "exp_year": 2031,
                        "cvc": "987", "billing_country": "BR" }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "{label}");
        let m: Value = r.json().await.unwrap();
        assert_eq!(m["brand"], "visa");
        assert_eq!(m["last4"], "0002");
        assert_eq!(
            m["country"], "BR",
            "{label}: from the simulator's test-card table"
        );
        assert_eq!(m["exp_month"], 7);
        assert_eq!(m["exp_year"], 2031);
        let amex = t.card(&ann, "378282246310005").await;
        let r = t.get("/payment-methods", &ann).await;
        let mine: Value = r.json().await.unwrap();
        let ids: Vec<&str> = mine["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            vec![amex.as_str(), m["id"].as_str().unwrap()],
            "{label}: newest first"
        );
        assert_eq!(mine["items"][0]["brand"], "amex");
        assert_eq!(mine["next_cursor"], Value::Null);
        let r = t.get("/payment-methods", &t.customer("bob")).await;
        let bobs: Value = r.json().await.unwrap();
        assert_eq!(
            bobs["items"],
            json!([]),
            "{label}: another customer sees none of them"
        );

        // Nothing stored anywhere holds the number or the CVC next to its name.
        let dump = dump_database(&t).await;
        for secret in [
            "4000000760000002",
            "4000 0007 6000 0002",
            "378282246310005",
            "\"cvc\"",
        ] {
            assert!(
                !dump.contains(secret),
                "{label}: {secret} is stored: {dump:.2000}"
            );
        }
        assert!(dump.contains("0002"), "{label}: the dump works");
    }
}

/// Every text and number of every row of every table, as one string.
pub async fn dump_database(t: &TestPay) -> String {
    let mut out = String::new();
    for table in [
        "payment_methods",
        "payment_intents",
        "refunds",
        "ledger_entries",
        "kit_outbox",
        "kit_idempotency",
    ] {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(t.db.db.pool())
            .await
            .unwrap();
        for row in rows {
            for i in 0..row.len() {
                if let Ok(Some(s)) = row.try_get::<Option<String>, _>(i) {
                    out.push_str(&s);
                } else if let Ok(Some(n)) = row.try_get::<Option<i64>, _>(i) {
                    out.push_str(&n.to_string());
                }
                out.push('|');
            }
            out.push('\n');
        }
    }
    out
}

#[tokio::test]
async fn card_debug_output_shows_only_the_last_four() {
    let card: payment_service::cards::NewCard = serde_json::from_value(json!({
        "card_number": VISA, "exp_month": 1, "exp_year": 2030, "cvc": "987", "billing_country": "US"
    }))
    .unwrap();
    let valid = card.validate((2025, 1)).unwrap();
    let debug = format!("{card:?} {valid:?}");
    assert!(!debug.contains(VISA) && !debug.contains("987"), "{debug}");
    assert!(debug.contains("4242") && debug.contains("2030"), "{debug}");
}
