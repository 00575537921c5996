use std::time::Duration;

use serde_json::{json, Value};

use crate::fakes::PM_APPROVE;
use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(15);

/// The order is priced by the product service (a price sent by the client is ignored),
/// answered 202 while the saga runs, and ends confirmed with the stock taken and the money
/// captured; its events replay to exactly what the API shows.
#[tokio::test]
async fn an_order_is_accepted_priced_by_the_product_service_and_confirmed() {
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        let label = w.label();
        w.products.add("SKU-1", 1250, 10);
        let ann = w.customer("ann");
        let r = w
            .place(
                &ann,
                "k1",
                json!({"items": [{"sku": "SKU-1", "qty": 2, "unit_price": 1}], "payment_method_id": PM_APPROVE}),
            )
            .await;
        assert_eq!(r.status(), 202, "{label}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let placed: Value = r.json().await.unwrap();
        assert_eq!(placed["status"], "pending", "{label}");
        assert_eq!(placed["total"], 2500, "{label}");
        assert_eq!(placed["items"][0]["unit_price"], 1250, "{label}");
        let id = placed["id"].as_str().unwrap();
        assert_eq!(location, format!("/orders/{id}"));

        let done = w.settled(id, SETTLE).await;
        assert_eq!(done["status"], "confirmed", "{label}: {done}");
        let stock = w.products.stock("SKU-1");
        assert_eq!((stock.on_hand, stock.reserved), (8, 0), "{label}");
        let intents = w.payments.intents_of(id);
        assert_eq!(intents.len(), 1, "{label}");
        assert_eq!(intents[0].status, "succeeded", "{label}");
        assert_eq!(intents[0].amount_captured, 2500, "{label}");
        assert_eq!(w.replayed(id).await, done, "{label}: replay = API");
        let own: Value = w.get(&ann, &location).await.json().await.unwrap();
        assert_eq!(own, done, "{label}");
    }
}

/// `Idempotency-Key` is required; the same key and body replay the first answer (one
/// order), the same key with another body is refused.
#[tokio::test]
async fn placing_needs_an_idempotency_key_and_a_retry_places_nothing_new() {
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        let label = w.label();
        w.products.add("SKU-1", 100, 10);
        let ann = w.customer("ann");
        let body = json!({"items": [{"sku": "SKU-1", "qty": 1}], "payment_method_id": PM_APPROVE});
        let r = w
            .app()
            .client
            .post(w.app().url("/orders"))
            .bearer_auth(&ann)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{label}");
        let first: Value = w
            .place(&ann, "same", body.clone())
            .await
            .json()
            .await
            .unwrap();
        let again = w.place(&ann, "same", body.clone()).await;
        assert_eq!(again.status(), 202, "{label}");
        assert_eq!(again.headers()["idempotency-replayed"], "true", "{label}");
        let again: Value = again.json().await.unwrap();
        assert_eq!(again["id"], first["id"], "{label}");
        let other = w
            .place(
                &ann,
                "same",
                json!({"items": [{"sku": "SKU-1", "qty": 2}], "payment_method_id": PM_APPROVE}),
            )
            .await;
        assert_eq!(other.status(), 422, "{label}");
        let page: Value = w.get(&ann, "/orders").await.json().await.unwrap();
        assert_eq!(page["items"].as_array().unwrap().len(), 1, "{label}");
    }
}

/// Bad input is 422 naming each field; an unknown SKU is found by asking the product
/// service; no token is 401.
#[tokio::test]
async fn invalid_orders_are_refused_with_field_errors() {
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        let label = w.label();
        w.products.add("SKU-1", 100, 10);
        let ann = w.customer("ann");
        let cases = [
            (
                json!({"items": [], "payment_method_id": PM_APPROVE}),
                "items",
            ),
            (
                json!({"items": [{"sku": "SKU-1", "qty": 0}], "payment_method_id": PM_APPROVE}),
                "items[0].qty",
            ),
            (
                json!({"items": [{"sku": "SKU-1", "qty": 1}, {"sku": "SKU-1", "qty": 1}], "payment_method_id": PM_APPROVE}),
                "items[1].sku",
            ),
            (
                json!({"items": [{"sku": "SKU-1", "qty": 1}], "payment_method_id": " "}),
                "payment_method_id",
            ),
            (
                json!({"items": [{"sku": "NOPE", "qty": 1}], "payment_method_id": PM_APPROVE}),
                "items[0].sku",
            ),
        ];
        for (i, (body, field)) in cases.into_iter().enumerate() {
            let r = w.place(&ann, &format!("bad-{i}"), body).await;
            assert_eq!(r.status(), 422, "{label}: case {i}");
            let p = problem(r).await;
            assert_eq!(p["errors"][0]["field"], field, "{label}: case {i}: {p}");
        }
        let r = w
            .app()
            .client
            .get(w.app().url("/orders"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{label}");
    }
}

/// An order is seen by its owner and admins (others get 404); `GET /orders` lists the
/// caller's own, newest first, in pages joined by `next_cursor`.
#[tokio::test]
async fn orders_are_private_to_their_owner_and_listed_in_pages() {
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        let label = w.label();
        w.products.add("SKU-1", 100, 10);
        let ann = w.customer("ann");
        let bob = w.customer("bob");
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(w.order(&ann, "SKU-1", 1, PM_APPROVE).await);
        }
        w.order(&bob, "SKU-1", 1, PM_APPROVE).await;
        let path = format!("/orders/{}", ids[0]);
        assert_eq!(w.get(&bob, &path).await.status(), 404, "{label}");
        assert_eq!(
            w.post(&bob, &format!("{path}/cancel")).await.status(),
            404,
            "{label}"
        );
        assert_eq!(w.get(&w.admin(), &path).await.status(), 200, "{label}");
        let p1: Value = w.get(&ann, "/orders?limit=2").await.json().await.unwrap();
        let cursor = p1["next_cursor"].as_str().expect("a next page").to_owned();
        let p2: Value = w
            .get(&ann, &format!("/orders?limit=2&cursor={cursor}"))
            .await
            .json()
            .await
            .unwrap();
        assert!(p2["next_cursor"].is_null(), "{label}");
        let listed: Vec<&str> = p1["items"]
            .as_array()
            .unwrap()
            .iter()
            .chain(p2["items"].as_array().unwrap())
            .map(|o| o["id"].as_str().unwrap())
            .collect();
        let mut newest_first = ids.clone();
        newest_first.reverse();
        assert_eq!(listed, newest_first, "{label}");
        assert_eq!(
            w.get(&ann, "/orders?limit=0").await.status(),
            422,
            "{label}"
        );
        assert_eq!(
            w.get(&ann, "/orders?cursor=%%%").await.status(),
            422,
            "{label}"
        );
        for id in &ids {
            w.settled(id, SETTLE).await;
        }
    }
}

/// `order.placed` and `order.confirmed` reach the bus through the outbox.
#[tokio::test]
async fn order_events_are_published_through_the_outbox() {
    for db in kit::testing::databases().await {
        let w = World::new(db).await;
        let label = w.label();
        let mut sub = w.bus.subscribe("test", "order.>").await.unwrap();
        w.products.add("SKU-1", 100, 10);
        let id = w.order(&w.customer("ann"), "SKU-1", 1, PM_APPROVE).await;
        w.settled(&id, SETTLE).await;
        let mut seen = Vec::new();
        for _ in 0..2 {
            let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap_or_else(|_| panic!("{label}: no event"))
                .unwrap()
                .unwrap();
            assert_eq!(d.event.payload["order_id"], id.as_str(), "{label}");
            seen.push(d.event.topic.clone());
            d.ack().await.unwrap();
        }
        assert_eq!(seen, ["order.placed", "order.confirmed"], "{label}");
    }
}
