//! Returns give committed stock back once per return id, never more than was committed.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn give_back(
    t: &TestProduct,
    order: &str,
    return_id: &str,
    items: Value,
) -> reqwest::Response {
    t.post_as(
        &format!("/inventory/reservations/{order}/returns"),
        &t.service,
        json!({ "return_id": return_id, "items": items, "reason": "refunded" }),
    )
    .await
}

/// A committed order of 3 A and 1 B: a return adds to on_hand once however often it is
/// repeated, each change is an `inventory.adjusted` event, and nothing beyond what was
/// committed, nor of a reservation that was not committed, comes back.
#[tokio::test]
async fn returns_add_committed_stock_back_once_and_never_more_than_was_committed() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        t.create("A", 10).await;
        t.create("B", 5).await;
        let items = json!([{ "sku": "A", "qty": 3 }, { "sku": "B", "qty": 1 }]);
        assert_eq!(t.reserve("o-1", items).await.status(), StatusCode::CREATED);
        let r = give_back(&t, "o-1", "r-0", json!([{ "sku": "A", "qty": 1 }])).await;
        assert_eq!(
            r.status(),
            StatusCode::CONFLICT,
            "{label}: not committed yet"
        );
        let r = t
            .post_as("/inventory/reservations/o-1/commit", &t.service, json!({}))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{label}");
        assert_eq!(t.stock("A").await, (7, 0, 7), "{label}");

        let first = give_back(&t, "o-1", "r-1", json!([{ "sku": "A", "qty": 2 }])).await;
        assert_eq!(first.status(), StatusCode::CREATED, "{label}");
        let first: Value = first.json().await.unwrap();
        let again = give_back(&t, "o-1", "r-1", json!([{ "sku": "A", "qty": 2 }])).await;
        assert_eq!(again.status(), StatusCode::OK, "{label}: replay");
        assert_eq!(again.json::<Value>().await.unwrap(), first, "{label}");
        assert_eq!(t.stock("A").await, (9, 0, 9), "{label}: added once");
        let other = give_back(&t, "o-1", "r-1", json!([{ "sku": "A", "qty": 1 }])).await;
        assert_eq!(
            other.status(),
            StatusCode::CONFLICT,
            "{label}: same id, other items"
        );

        let over = give_back(&t, "o-1", "r-2", json!([{ "sku": "A", "qty": 2 }])).await;
        assert_eq!(
            over.status(),
            StatusCode::CONFLICT,
            "{label}: 2 of 3 back, 2 more"
        );
        let stranger = give_back(&t, "o-1", "r-2", json!([{ "sku": "C", "qty": 1 }])).await;
        assert_eq!(
            stranger.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{label}"
        );
        let rest = json!([{ "sku": "A", "qty": 1 }, { "sku": "B", "qty": 1 }]);
        assert_eq!(
            give_back(&t, "o-1", "r-3", rest).await.status(),
            StatusCode::CREATED
        );
        assert_eq!(t.stock("A").await, (10, 0, 10), "{label}");
        assert_eq!(t.stock("B").await, (5, 0, 5), "{label}");
        let r = give_back(&t, "nobody", "r-1", json!([{ "sku": "A", "qty": 1 }])).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{label}");
        let r = t
            .post_as(
                "/inventory/reservations/o-1/returns",
                &t.customer,
                json!({ "return_id": "x", "items": [{ "sku": "A", "qty": 1 }] }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{label}");
        let adjusted = t
            .topics()
            .await
            .into_iter()
            .filter(|t| t == "inventory.adjusted")
            .count();
        assert_eq!(adjusted, 3, "{label}: one event per sku returned");
    }
}

/// Ten concurrent returns of one unit each, of an order that committed 4: exactly 4 land.
#[tokio::test]
async fn concurrent_returns_never_exceed_what_was_committed() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        t.create("A", 10).await;
        t.reserve("o-1", json!([{ "sku": "A", "qty": 4 }])).await;
        let r = t
            .post_as("/inventory/reservations/o-1/commit", &t.service, json!({}))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{label}");
        let answers = futures::future::join_all((0..10).map(|i| {
            let t = &t;
            async move {
                give_back(
                    t,
                    "o-1",
                    &format!("r-{i}"),
                    json!([{ "sku": "A", "qty": 1 }]),
                )
                .await
                .status()
            }
        }))
        .await;
        let created = answers
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        assert_eq!(created, 4, "{label}: {answers:?}");
        assert_eq!(t.stock("A").await, (10, 0, 10), "{label}");
    }
}
