use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

const OUT_OF_STOCK: &str = "https://gatehouse.dev/problems/out-of-stock";

/// Stock N and 2N concurrent single-unit reservations for different orders: exactly N get
/// 201, N get the out-of-stock 409, and available ends at 0, never below.
#[tokio::test]
async fn concurrent_reservations_never_oversell() {
    const N: usize = 10;
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        t.create("HOT", N as i64).await;
        let orders: Vec<String> = (0..2 * N).map(|i| format!("order-{i}")).collect();
        let answers = futures::future::join_all(
            orders
                .iter()
                .map(|o| t.reserve(o, json!([{ "sku": "HOT", "qty": 1 }]))),
        )
        .await;
        let mut created = 0;
        let mut refused = 0;
        for r in answers {
            match r.status() {
                StatusCode::CREATED => created += 1,
                StatusCode::CONFLICT => {
                    let p = problem(r).await;
                    assert_eq!(p["type"], OUT_OF_STOCK, "{label}");
                    assert_eq!(p["sku"], "HOT", "{label}");
                    refused += 1;
                }
                other => panic!("{label}: unexpected {other}"),
            }
        }
        assert_eq!((created, refused), (N, N), "{label}");
        assert_eq!(t.stock("HOT").await, (N as i64, N as i64, 0), "{label}");
        let held: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(qty), 0) AS BIGINT) FROM reservation_items i \
             JOIN reservations r ON r.order_id = i.order_id WHERE r.status = 'reserved'",
        )
        .fetch_one(t.db.db.pool())
        .await
        .unwrap();
        assert_eq!(held, N as i64, "{label}: rows match the counter");
    }
}

/// A reservation whose second line is short reserves nothing; an unknown sku is 422.
#[tokio::test]
async fn a_reservation_is_all_or_nothing() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        t.create("A", 5).await;
        t.create("B", 1).await;
        let r = t
            .reserve(
                "o-1",
                json!([{ "sku": "A", "qty": 2 }, { "sku": "B", "qty": 2 }]),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{label}");
        assert_eq!(problem(r).await["sku"], "B", "{label}: names the short sku");
        assert_eq!(t.stock("A").await, (5, 0, 5), "{label}: A untouched");
        assert_eq!(t.stock("B").await, (1, 0, 1), "{label}: B untouched");
        let r = t.get_as("/inventory/reservations/o-1", &t.service).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{label}: nothing stored");

        let r = t
            .reserve(
                "o-2",
                json!([{ "sku": "A", "qty": 1 }, { "sku": "NOPE", "qty": 1 }]),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{label}: unknown sku"
        );
        assert!(problem(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("NOPE"));
        for bad in [
            json!([]),
            json!([{ "sku": "A", "qty": 0 }]),
            json!([{ "sku": "A", "qty": 1 }, { "sku": "A", "qty": 1 }]),
        ] {
            let r = t.reserve("o-3", bad.clone()).await;
            assert_eq!(
                r.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{label}: {bad}"
            );
        }
        assert_eq!(t.stock("A").await, (5, 0, 5), "{label}");

        // The failed order may try again once there is stock.
        let r = t
            .reserve(
                "o-1",
                json!([{ "sku": "B", "qty": 1 }, { "sku": "A", "qty": 2 }]),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "{label}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "reserved");
        assert_eq!(
            body["items"],
            json!([{ "sku": "A", "qty": 2 }, { "sku": "B", "qty": 1 }]),
            "{label}: sku order"
        );
        assert_eq!(t.stock("A").await, (5, 2, 3), "{label}");
        assert_eq!(t.stock("B").await, (1, 1, 0), "{label}");
    }
}

async fn commit(t: &TestProduct, order: &str) -> reqwest::Response {
    t.post_as(
        &format!("/inventory/reservations/{order}/commit"),
        &t.service,
        json!({}),
    )
    .await
}

async fn release(t: &TestProduct, order: &str) -> reqwest::Response {
    t.send(
        Method::DELETE,
        &format!("/inventory/reservations/{order}"),
        Some(&t.service),
        None,
    )
    .await
}

#[tokio::test]
async fn reserve_commit_and_release_are_idempotent() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        t.create("S", 10).await;
        let items = json!([{ "sku": "S", "qty": 3 }]);

        let r = t
            .send(
                Method::POST,
                "/inventory/reservations",
                None,
                Some(json!({ "order_id": "o", "items": items })),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{label}");
        let r = t
            .post_as(
                "/inventory/reservations",
                &t.customer,
                json!({ "order_id": "o", "items": items }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{label}");

        let first = t.reserve("o-1", items.clone()).await;
        assert_eq!(first.status(), StatusCode::CREATED, "{label}");
        let first: Value = first.json().await.unwrap();
        let again = t.reserve("o-1", items.clone()).await;
        assert_eq!(again.status(), StatusCode::OK, "{label}: replay");
        assert_eq!(
            again.json::<Value>().await.unwrap(),
            first,
            "{label}: same reservation"
        );
        let other = t.reserve("o-1", json!([{ "sku": "S", "qty": 4 }])).await;
        assert_eq!(other.status(), StatusCode::CONFLICT, "{label}: other items");
        assert_eq!(t.stock("S").await, (10, 3, 7), "{label}: reserved once");
        let got: Value = t
            .get_as("/inventory/reservations/o-1", &t.service)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(got, first, "{label}");

        for _ in 0..2 {
            let r = commit(&t, "o-1").await;
            assert_eq!(r.status(), StatusCode::OK, "{label}: commit");
            assert_eq!(r.json::<Value>().await.unwrap()["status"], "committed");
            assert_eq!(t.stock("S").await, (7, 0, 7), "{label}: committed once");
        }
        assert_eq!(
            release(&t, "o-1").await.status(),
            StatusCode::CONFLICT,
            "{label}: committed cannot be released"
        );
        assert_eq!(
            t.reserve("o-1", items.clone()).await.status(),
            StatusCode::OK,
            "{label}: replay after commit"
        );
        assert_eq!(t.stock("S").await, (7, 0, 7), "{label}");

        assert_eq!(
            t.reserve("o-2", items.clone()).await.status(),
            StatusCode::CREATED
        );
        assert_eq!(t.stock("S").await, (7, 3, 4), "{label}");
        for _ in 0..2 {
            let r = release(&t, "o-2").await;
            assert_eq!(r.status(), StatusCode::OK, "{label}: release");
            assert_eq!(r.json::<Value>().await.unwrap()["status"], "released");
            assert_eq!(t.stock("S").await, (7, 0, 7), "{label}: released once");
        }
        let r = commit(&t, "o-2").await;
        assert_eq!(
            r.status(),
            StatusCode::CONFLICT,
            "{label}: released cannot be committed"
        );
        problem(r).await;

        assert_eq!(
            commit(&t, "nope").await.status(),
            StatusCode::NOT_FOUND,
            "{label}"
        );
        assert_eq!(
            release(&t, "nope").await.status(),
            StatusCode::NOT_FOUND,
            "{label}"
        );
        assert_eq!(
            t.get_as("/inventory/reservations/nope", &t.service)
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            t.get_as("/inventory/reservations/o-2", &t.customer)
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
    }
}

/// The sweeper expires a reservation past its TTL and gives its stock back; committing it
/// then is 409 and releasing it is a harmless 200.
#[tokio::test]
async fn the_sweeper_releases_expired_reservations() {
    for db in kit::testing::databases().await {
        let t = start(db, |s| {
            s.reservation_ttl = Duration::from_millis(300);
            s.sweep_interval = Duration::from_millis(50);
        })
        .await;
        let label = t.label();
        t.create("T", 4).await;
        assert_eq!(
            t.reserve("late", json!([{ "sku": "T", "qty": 3 }]))
                .await
                .status(),
            StatusCode::CREATED
        );
        assert_eq!(t.stock("T").await, (4, 3, 1), "{label}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let r: Value = t
                .get_as("/inventory/reservations/late", &t.service)
                .await
                .json()
                .await
                .unwrap();
            if r["status"] == "expired" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{label}: not swept: {r}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(t.stock("T").await, (4, 0, 4), "{label}: stock back");
        let r = commit(&t, "late").await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{label}: expired");
        let r = release(&t, "late").await;
        assert_eq!(r.status(), StatusCode::OK, "{label}: release is idempotent");
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "expired");
        assert_eq!(t.stock("T").await, (4, 0, 4), "{label}: given back once");
        t.stop().await;
    }
}

/// Without a sweeper run, a commit after the TTL is still 409 and expires it on the spot.
#[tokio::test]
async fn a_commit_after_the_ttl_is_409_even_before_the_sweeper_runs() {
    for db in kit::testing::databases().await {
        let t = spawn_with(db, |s| s.reservation_ttl = Duration::from_millis(100)).await;
        let label = t.label();
        t.create("U", 2).await;
        assert_eq!(
            t.reserve("slow", json!([{ "sku": "U", "qty": 2 }]))
                .await
                .status(),
            StatusCode::CREATED
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            commit(&t, "slow").await.status(),
            StatusCode::CONFLICT,
            "{label}"
        );
        let r: Value = t
            .get_as("/inventory/reservations/slow", &t.service)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "expired", "{label}");
        assert_eq!(t.stock("U").await, (2, 0, 2), "{label}");
    }
}
