//! Domain facts from the bus: counted once however often delivered, no personal data kept.

use serde_json::json;

use crate::helpers::{start, DEADLINE};

#[tokio::test]
async fn facts_from_the_bus_become_revenue_per_currency_and_product_once() {
    for db in kit::testing::databases().await {
        let a = start(db).await;
        let label = a.label();
        let at = kit::db::now_ms() - 5 * 60_000;
        let confirmed = json!({"order_id": "o-1", "customer_id": "ann", "total": 3500,
            "currency": "EUR", "payment_intent_id": "pi-1", "items": [
                {"sku": "MUG", "qty": 2, "unit_price": 1250},
                {"sku": "CAP", "qty": 1, "unit_price": 1000}]});
        let event = a.publish("order.confirmed", confirmed, at).await;
        // The relay may publish an event twice (a crash before it marked the row sent).
        a.bus.publish(&event).await.unwrap();
        a.publish(
            "user.registered",
            json!({"user_id": "ann", "email": "ann@example.com", "name": "Ann"}),
            at,
        )
        .await;
        a.publish("product.viewed", json!({"product": "MUG", "views": 7}), at)
            .await;
        a.publish("inventory.adjusted", json!({"sku": "MUG", "delta": 3}), at)
            .await;
        kit::testing::eventually("the facts are rolled up", DEADLINE, || async {
            (a.rollup("users.registered", "day", at, "").await.0 == 1
                && a.rollup("products.viewed", "day", at, "").await.1 == 7)
                .then_some(())
        })
        .await;
        assert_eq!(
            a.rollup("revenue", "minute", at, "EUR").await,
            (1, 3500),
            "{label}"
        );
        assert_eq!(
            a.rollup("orders.confirmed", "hour", at, "EUR").await,
            (1, 3500),
            "{label}"
        );
        let mug: i64 = sqlx::query_scalar(
            "SELECT sum FROM rollups WHERE metric = 'product.revenue' AND dim = 'product' \
             AND dim_value = 'MUG' AND granularity = 'day'",
        )
        .fetch_one(a.db.db.pool())
        .await
        .unwrap();
        assert_eq!(mug, 2500, "{label}");
        assert_eq!(
            a.stored().await,
            3,
            "{label}: the redelivery and the other topic add nothing"
        );
        let kept: Vec<String> = sqlx::query_scalar("SELECT properties FROM events")
            .fetch_all(a.db.db.pool())
            .await
            .unwrap();
        assert!(
            kept.iter()
                .all(|p| !p.contains("ann@example.com") && !p.contains("Ann")),
            "{label}: {kept:?}"
        );
    }
}
