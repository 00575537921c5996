//! The dashboard: the page and its assets from the service (nothing from a CDN), and the
//! live stream of snapshots that moves when the shop does.

use serde_json::{json, Value};

use crate::helpers::{start, DEADLINE};

#[tokio::test]
async fn the_page_and_its_assets_are_served_by_the_service() {
    let a = start(kit::testing::sqlite().await).await;
    let r = a
        .app
        .client
        .get(a.app.url("/analytics/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"signin-form\""), "{html}");
    let scripts: Vec<&str> = html
        .split("src=\"")
        .skip(1)
        .chain(html.split("href=\"").skip(1))
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    assert_eq!(scripts.len(), 4, "{scripts:?}");
    for src in scripts {
        assert!(!src.contains("//"), "{src} is not from this service");
        let r = a
            .app
            .client
            .get(a.app.url(&format!("/analytics/{src}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{src}");
        assert!(r.bytes().await.unwrap().len() > 1000, "{src}");
    }
    let r = a
        .app
        .client
        .get(a.app.url("/analytics/dashboard/assets/Cargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// The next `event: snapshot` on the stream.
async fn next_snapshot(r: &mut reqwest::Response, buffer: &mut String) -> Value {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            if message.contains("event: snapshot") {
                let data: String = message
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                return serde_json::from_str(&data).unwrap();
            }
            continue;
        }
        let chunk = tokio::time::timeout(DEADLINE, r.chunk())
            .await
            .expect("a snapshot within the deadline")
            .unwrap()
            .expect("the stream goes on");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn the_live_stream_sends_a_new_snapshot_when_an_order_is_confirmed() {
    let a = start(kit::testing::sqlite().await).await;
    let r = a.get("/analytics/dashboard/live", &a.user("ann")).await;
    assert_eq!(r.status(), 403, "admins only");
    let mut r = a.get("/analytics/dashboard/live", &a.admin()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut buffer = String::new();
    let first = next_snapshot(&mut r, &mut buffer).await;
    assert_eq!(first["today"]["orders_confirmed"], 0);
    assert_eq!(first["minutes"].as_array().unwrap().len(), 60);

    a.publish(
        "order.confirmed",
        json!({"order_id": "o-1", "customer_id": "ann", "total": 2500, "currency": "EUR",
               "items": [{"sku": "MUG", "qty": 2, "unit_price": 1250}]}),
        kit::db::now_ms(),
    )
    .await;
    let next = loop {
        let s = next_snapshot(&mut r, &mut buffer).await;
        if s["today"]["orders_confirmed"] == 1 {
            break s;
        }
    };
    assert_eq!(next["today"]["revenue"]["EUR"], 2500);
    let per_minute: i64 = next["orders_per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_i64().unwrap())
        .sum();
    assert_eq!(per_minute, 1);
    assert_eq!(next["top_products"][0]["product"], "MUG");
    // The same figures as the snapshot operation.
    let once: Value = a
        .get("/analytics/dashboard/snapshot", &a.admin())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(once["today"], next["today"]);
}
