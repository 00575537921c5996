use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

/// Waits until the cache invalidator has applied `n` events (its inbox rows).
async fn invalidations(t: &TestProduct, n: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM kit_inbox")
            .fetch_one(t.db.db.pool())
            .await
            .unwrap();
        if done >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: {done} of {n} invalidations",
            t.label()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads come from the cache (a change behind the service's back is not seen), and a
/// change through the API is seen once its event has evicted the entry. Returns the
/// product's id.
async fn cache_follows_events(t: &TestProduct) -> String {
    let label = t.label();
    let p = t.create("CACHED", 1).await;
    let id = p["id"].as_str().unwrap().to_owned();
    let path = format!("/products/{id}");
    invalidations(t, 1).await;
    let r = t.get(&path).await;
    assert_eq!(r.status(), StatusCode::OK);
    sqlx::query("UPDATE products SET name = 'behind its back' WHERE id = $1")
        .bind(&id)
        .execute(t.db.db.pool())
        .await
        .unwrap();
    let r: serde_json::Value = t.get(&path).await.json().await.unwrap();
    assert_eq!(
        r["name"], "Product CACHED",
        "{label}: served from the cache"
    );

    let update =
        json!({ "name": "Fresh", "category": "c", "price": { "amount": 1, "currency": "EUR" } });
    let r = t
        .send(Method::PUT, &path, Some(&t.admin), Some(update))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    t.eventually(&path, "the update evicts the cache", |s, b| {
        s == StatusCode::OK && b["name"] == "Fresh"
    })
    .await;
    let r = t.send(Method::DELETE, &path, Some(&t.admin), None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    t.eventually(&path, "the delete evicts the cache", |s, _| {
        s == StatusCode::NOT_FOUND
    })
    .await;
    id
}

#[tokio::test]
async fn the_in_process_cache_is_evicted_by_product_events() {
    for db in kit::testing::databases().await {
        let t = start(db, |_| {}).await;
        cache_follows_events(&t).await;
        t.stop().await;
    }
}

#[tokio::test]
async fn the_redis_cache_is_evicted_by_product_events() {
    let Ok(url) = std::env::var("TEST_REDIS_URL") else {
        eprintln!(
            "skipping: set TEST_REDIS_URL (e.g. redis://127.0.0.1:6379) to test the Redis cache"
        );
        return;
    };
    for db in kit::testing::databases().await {
        let prefix = format!("gatehouse-test:{}:", kit::db::new_id());
        let t = start(db, |s| {
            s.cache.redis_url = Some(url.clone());
            s.cache.key_prefix = prefix.clone();
        })
        .await;
        assert!(t.state.cache.is_shared());
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();

        let id = cache_follows_events(&t).await;
        let key = format!("{prefix}product:{id}");
        let gone: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(gone, None, "{}: evicted in Redis", t.label());

        // A fill lands in Redis under the prefix.
        let p = t.create("FILLED", 1).await;
        invalidations(&t, 4).await;
        let key = format!("{prefix}product:{}", p["id"].as_str().unwrap());
        assert_eq!(
            t.get(&format!("/products/{}", p["id"].as_str().unwrap()))
                .await
                .status(),
            StatusCode::OK
        );
        let held: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            held.is_some_and(|v| v.contains("FILLED")),
            "{}: cached in Redis",
            t.label()
        );
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        t.stop().await;
    }
}
