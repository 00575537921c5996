//! The event store under concurrent writers: an append at a stale version is refused, and
//! `decide` reloads and decides again, so no decision is lost.

use kit::OutboxWaker;
use order_service::order::{Line, OrderEvent};
use order_service::store::{EventStore, StoreError};

fn placed() -> OrderEvent {
    OrderEvent::OrderPlaced {
        customer_id: "ann".into(),
        items: vec![Line {
            sku: "A".into(),
            qty: 1,
            unit_price: 100,
        }],
        currency: "EUR".into(),
        total: 100,
        payment_method_id: "pm".into(),
        placed_at: 1,
    }
}

#[tokio::test]
async fn concurrent_decisions_are_all_appended_in_one_gapless_sequence() {
    for db in kit::testing::databases().await {
        let label = db.label();
        order_service::migrate(&db.db).await.unwrap();
        let store = EventStore::new(db.db.clone(), OutboxWaker::default());
        let first = store.create("o1", placed()).await.unwrap();
        assert!(
            matches!(
                store.create("o1", placed()).await,
                Err(StoreError::Conflict(_))
            ),
            "{label}: a second placement of one id"
        );
        // Both decided on version 1: the second append is refused.
        store
            .append(
                "o1",
                Some(&first),
                vec![OrderEvent::InventoryReserved { expires_at: 1 }],
            )
            .await
            .unwrap();
        let stale = store
            .append("o1", Some(&first), vec![OrderEvent::InventoryReleased])
            .await;
        assert!(matches!(stale, Err(StoreError::Conflict(_))), "{label}");

        const WRITERS: i64 = 8;
        let tasks = (0..WRITERS).map(|i| {
            let store = store.clone();
            async move {
                store
                    .decide("o1", |_| {
                        Ok::<_, StoreError>(vec![OrderEvent::InventoryReserved { expires_at: i }])
                    })
                    .await
            }
        });
        for r in futures::future::join_all(tasks).await {
            r.unwrap_or_else(|e| panic!("{label}: {e}"));
        }
        let events = store.events("o1").await.unwrap();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=2 + WRITERS).collect::<Vec<_>>(), "{label}");
        let mut decided: Vec<i64> = events[2..]
            .iter()
            .map(|r| match r.event {
                OrderEvent::InventoryReserved { expires_at } => expires_at,
                _ => -1,
            })
            .collect();
        decided.sort();
        assert_eq!(
            decided,
            (0..WRITERS).collect::<Vec<_>>(),
            "{label}: none lost"
        );
        let order = store.load("o1").await.unwrap().unwrap();
        assert_eq!(order.version, 2 + WRITERS, "{label}");
    }
}
