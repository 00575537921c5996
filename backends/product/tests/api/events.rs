use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

async fn payloads(t: &TestProduct, topic: &str) -> Vec<Value> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT payload FROM kit_outbox WHERE topic = $1 ORDER BY id")
            .bind(topic)
            .fetch_all(t.db.db.pool())
            .await
            .unwrap();
    rows.iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect()
}

/// Every change leaves its fact in the outbox, in the same transaction.
#[tokio::test]
async fn each_change_records_its_event() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        let p = t.create("E", 7).await;
        let path = format!("/products/{}", p["id"].as_str().unwrap());
        let update =
            json!({ "name": "E2", "category": "c", "price": { "amount": 5, "currency": "EUR" } });
        assert_eq!(
            t.send(Method::PUT, &path, Some(&t.admin), Some(update))
                .await
                .status(),
            StatusCode::OK
        );
        let r = t
            .post_as(
                "/inventory/E/adjustments",
                &t.admin,
                json!({ "delta": -1, "reason": "broken" }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            t.reserve("o-1", json!([{ "sku": "E", "qty": 2 }]))
                .await
                .status(),
            StatusCode::CREATED
        );
        assert_eq!(
            t.reserve("o-2", json!([{ "sku": "E", "qty": 1 }]))
                .await
                .status(),
            StatusCode::CREATED
        );
        let r = t
            .post_as("/inventory/reservations/o-1/commit", &t.service, json!({}))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = t
            .send(
                Method::DELETE,
                "/inventory/reservations/o-2",
                Some(&t.service),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        // A failed reservation records nothing.
        assert_eq!(
            t.reserve("o-3", json!([{ "sku": "E", "qty": 99 }]))
                .await
                .status(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            t.send(Method::DELETE, &path, Some(&t.admin), None)
                .await
                .status(),
            StatusCode::NO_CONTENT
        );

        let mut topics = t.topics().await;
        topics.sort();
        assert_eq!(
            topics,
            [
                "inventory.adjusted",
                "inventory.committed",
                "inventory.low_stock",
                "inventory.released",
                "inventory.reserved",
                "inventory.reserved",
                "product.created",
                "product.deleted",
                "product.updated",
            ],
            "{label}"
        );
        assert_eq!(payloads(&t, "product.created").await[0]["sku"], "E");
        assert_eq!(payloads(&t, "product.updated").await[0]["name"], "E2");
        assert_eq!(payloads(&t, "product.deleted").await[0]["id"], p["id"]);
        let low = &payloads(&t, "inventory.low_stock").await[0];
        assert_eq!(
            (low["available"].clone(), low["threshold"].clone()),
            (json!(4), json!(5)),
            "{label}: once, on crossing 5"
        );
        let reserved = payloads(&t, "inventory.reserved").await;
        assert_eq!(reserved[0]["items"], json!([{ "sku": "E", "qty": 2 }]));
        assert_eq!(
            payloads(&t, "inventory.committed").await[0]["order_id"],
            "o-1"
        );
        let released = &payloads(&t, "inventory.released").await[0];
        assert_eq!(
            (released["order_id"].clone(), released["reason"].clone()),
            (json!("o-2"), json!("released"))
        );
        assert_eq!(payloads(&t, "inventory.adjusted").await[0]["on_hand"], 6);
    }
}
