//! No card number or CVC appears in the logs (captured at TRACE, SQL statements included,
//! while cards are saved, refused and charged) or in the database.

use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use kit::identity::{AccessClaims, LocalKeys, SigningKey};
use kit::Verifier;
use payment_service::{router, AppState, SecretSource, Settings};
use serde_json::json;
use sqlx::Row;

const CVC: &str = "7391";
const NUMBER: &str = "3782 822463 10005";

#[tokio::test]
async fn card_numbers_and_cvcs_never_reach_the_logs_or_the_database() {
    let logs = kit::testing::CapturedLogs::install();

    let db = kit::testing::sqlite().await;
    let mut settings = Settings::new(&std::env::temp_dir());
    settings.fingerprint_key = SecretSource::Inline("a fingerprint key for the test".into());
    let key = SigningKey::generate();
    let verifier = Verifier::local(
        LocalKeys::new(JwkSet {
            keys: vec![key.public_jwk()],
        }),
        "gatehouse-user",
        "gatehouse",
    );
    let state = AppState::build(db.db.clone(), settings, Arc::new(verifier))
        .await
        .unwrap();
    let app = kit::testing::spawn_app(router(state)).await;
    let now = kit::db::now_ms() / 1000;
    let token = key.sign(&AccessClaims {
        sub: "ann".into(),
        iss: "gatehouse-user".into(),
        aud: "gatehouse".into(),
        exp: now + 600,
        iat: now,
        jti: "j".into(),
        sid: "s".into(),
        roles: vec!["customer".into()],
        perms: vec![],
    });
    let post = |path: &str, key: &str, body: serde_json::Value| {
        app.client
            .post(app.url(path))
            .bearer_auth(&token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let card = |number: &str, year: i64| json!({ "card_number": number, "exp_month": 3, "exp_year": year, "cvc": CVC, "billing_country": "US" });
    let r = post("/payment-methods", "k1", card(NUMBER, 2031))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let method: serde_json::Value = r.json().await.unwrap();
    let r = post("/payment-methods", "k2", card("3782 822463 10006", 2031))
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "a Luhn failure");
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        p["errors"].as_array().unwrap().len(),
        1,
        "only the number is wrong: {p}"
    );
    let r = post("/payment-methods", "k3", card(NUMBER, 2001))
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "expired");
    let r = post(
        "/payment-intents",
        "k4",
        json!({ "payment_method_id": method["id"], "amount": 100, "currency": "USD" }),
    )
    .await
    .unwrap();
    let intent: serde_json::Value = r.json().await.unwrap();
    let r = post(
        &format!(
            "/payment-intents/{}/confirm",
            intent["id"].as_str().unwrap()
        ),
        "k5",
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    let text = logs.text();
    assert!(
        text.contains("card saved"),
        "the capture works: {text:.3000}"
    );
    assert!(
        text.contains("INSERT INTO payment_methods"),
        "SQL is logged at TRACE"
    );
    for secret in [
        NUMBER,
        "378282246310005",
        "378282246310006",
        "3782 822463 10006",
    ] {
        assert!(!text.contains(secret), "a card number leaked into the logs");
    }
    for (at, _) in text.match_indices("cvc") {
        let near = &text[at..(at + 40).min(text.len())];
        assert!(!near.contains(CVC), "the CVC leaked into the logs: {near}");
    }

    let mut stored = String::new();
    for table in [
        "payment_methods",
        "payment_intents",
        "kit_idempotency",
        "kit_outbox",
        "ledger_entries",
    ] {
        for row in sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(db.db.pool())
            .await
            .unwrap()
        {
            for i in 0..row.len() {
                if let Ok(Some(s)) = row.try_get::<Option<String>, _>(i) {
                    stored.push_str(&s);
                    stored.push('|');
                }
            }
        }
    }
    assert!(stored.contains("0005"), "the last four are kept");
    for secret in [
        "378282246310005",
        "37828224631000",
        NUMBER,
        "\"cvc\":\"7391\"",
    ] {
        assert!(!stored.contains(secret), "stored: {secret}");
    }
}
