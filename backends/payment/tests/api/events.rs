//! With the relay running, payment facts reach a bus subscriber after commit.

use kit::Service as _;
use std::sync::Arc;
use std::time::Duration;

use kit::EventBus;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn payment_events_are_published_to_the_bus() {
    for db in kit::testing::databases().await {
        let label = db.label();
        let bus: Arc<dyn EventBus> = kit::testing::bus().await;
        let mut sub = bus.subscribe("test", "payment.>").await.unwrap();
        let t = spawn(db).await;
        let service = payment_service::Service::run(t.state.clone(), bus);
        let app = kit::testing::spawn_app(service.router()).await;
        let t = TestPay { app, ..t };
        let auth = t.authorized("ann", VISA, 900).await;
        let id = auth["id"].as_str().unwrap();
        t.act(id, "capture", json!({ "amount": 800 })).await;
        let mut seen = Vec::new();
        for _ in 0..2 {
            let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap_or_else(|_| panic!("{label}: no event within 10 s"))
                .unwrap()
                .unwrap();
            seen.push((d.event.topic.clone(), d.event.payload["amount"].clone()));
            assert_eq!(d.event.payload["payment_intent_id"], id);
            d.ack().await.unwrap();
        }
        assert_eq!(
            seen,
            [
                ("payment.authorized".to_owned(), json!(900)),
                ("payment.captured".to_owned(), json!(800))
            ],
            "{label}"
        );
        service.shutdown().await;
    }
}
