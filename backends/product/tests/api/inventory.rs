use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn adjustments_keep_on_hand_at_or_above_reserved() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        t.create("K", 5).await;
        let adjust = |delta: i64| json!({ "delta": delta, "reason": "stocktake" });

        let r = t.send(Method::GET, "/inventory/K", None, None).await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{label}: stock needs a token"
        );
        let r = t.get_as("/inventory/K", &t.customer).await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "{label}: any signed-in caller reads stock"
        );
        let r = t
            .post_as("/inventory/K/adjustments", &t.customer, adjust(1))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{label}");
        let r = t
            .post_as("/inventory/K/adjustments", &t.service, adjust(1))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{label}");

        let r = t
            .post_as("/inventory/K/adjustments", &t.admin, adjust(7))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{label}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({ "sku": "K", "on_hand": 12, "reserved": 0, "available": 12 })
        );
        assert_eq!(
            t.reserve("o", json!([{ "sku": "K", "qty": 10 }]))
                .await
                .status(),
            StatusCode::CREATED
        );
        let r = t
            .post_as("/inventory/K/adjustments", &t.admin, adjust(-3))
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{label}: below reserved");
        problem(r).await;
        assert_eq!(t.stock("K").await, (12, 10, 2), "{label}: unchanged");
        let r = t
            .post_as("/inventory/K/adjustments", &t.admin, adjust(-2))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{label}: down to reserved");
        assert_eq!(t.stock("K").await, (10, 10, 0), "{label}");

        let r = t
            .post_as("/inventory/NOPE/adjustments", &t.admin, adjust(1))
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{label}");
        assert_eq!(
            t.get_as("/inventory/NOPE", &t.admin).await.status(),
            StatusCode::NOT_FOUND
        );
        let r = t
            .post_as(
                "/inventory/K/adjustments",
                &t.admin,
                json!({ "delta": 0, "reason": "" }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{label}");
    }
}
