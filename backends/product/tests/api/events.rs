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

/// Views of real products (cached or not) are counted in memory and told as one
/// `product.viewed` per product per flush; a 404 is not a view; shutdown flushes the rest.
#[tokio::test]
async fn product_views_are_told_in_batches_per_product() {
    for db in kit::testing::databases().await {
        let t = start(db, |s| s.view_flush = std::time::Duration::from_secs(3600)).await;
        let label = t.label();
        let mug = t.create("MUG", 5).await;
        let cap = t.create("CAP", 5).await;
        for (p, n) in [(&mug, 3), (&cap, 1)] {
            for _ in 0..n {
                let path = format!("/products/{}", p["id"].as_str().unwrap());
                assert_eq!(t.get(&path).await.status(), StatusCode::OK, "{label}");
            }
        }
        assert_eq!(
            t.get("/products/nope").await.status(),
            StatusCode::NOT_FOUND
        );
        assert!(
            payloads(&t, "product.viewed").await.is_empty(),
            "{label}: not before a flush"
        );
        let flushed = t.state.views.flush(&t.db.db).await.unwrap();
        assert_eq!(flushed, 2, "{label}");
        let mut views: Vec<(String, i64)> = payloads(&t, "product.viewed")
            .await
            .iter()
            .map(|v| {
                (
                    v["product"].as_str().unwrap().to_owned(),
                    v["views"].as_i64().unwrap(),
                )
            })
            .collect();
        views.sort();
        assert_eq!(
            views,
            [("CAP".to_owned(), 1), ("MUG".to_owned(), 3)],
            "{label}"
        );
        assert_eq!(
            t.state.views.flush(&t.db.db).await.unwrap(),
            0,
            "{label}: counted once"
        );

        let path = format!("/products/{}", cap["id"].as_str().unwrap());
        assert_eq!(t.get(&path).await.status(), StatusCode::OK, "{label}");
        let mut t = t;
        let service = t.running.take().unwrap();
        kit::Service::shutdown(service).await;
        assert_eq!(
            payloads(&t, "product.viewed").await.len(),
            3,
            "{label}: flushed at shutdown"
        );
    }
}
