//! From events to the inbox: who gets what, once, and only them; reading, marking read,
//! preferences.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{eventually, start, TestNotify};

async fn inbox_len(t: &TestNotify, token: &str, n: usize) -> Vec<Value> {
    eventually("the inbox fills", || async {
        let items = t.inbox(token).await;
        (items.len() >= n).then_some(items)
    })
    .await
}

#[tokio::test]
async fn an_order_confirmed_reaches_its_customer_once_and_nobody_else() {
    for db in kit::testing::databases().await {
        let t = start(db, |_| {}).await;
        let what = t.label();
        t.registered("ann", "ann@example.com").await;
        t.registered("bob", "bob@example.com").await;
        let confirmed = t.confirmed("ann", "o-1").await;
        // The bus hands a republished event on once; the consumer's inbox and the unique
        // indexes would absorb a redelivery too.
        t.bus.publish(&confirmed).await.unwrap();
        let (ann, bob) = (t.user("ann"), t.user("bob"));
        let items = inbox_len(&t, &ann, 2).await;
        let kinds: Vec<&str> = items.iter().map(|n| n["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["order_confirmed", "welcome"],
            "{what}: newest first"
        );
        assert_eq!(items[0]["title"], "Order confirmed");
        assert_eq!(items[0]["body"], "Your order of 25.00 EUR is confirmed.");
        assert_eq!(items[0]["category"], "orders");
        let bobs = t.inbox(&bob).await;
        assert_eq!(bobs.len(), 1, "{what}: bob only has his welcome: {bobs:?}");
        let mails = eventually("three mails are sent", || async {
            let d = t.deliveries().await;
            (d.iter().filter(|d| d.2 == "sent").count() == 3).then_some(d)
        })
        .await;
        let to_ann: Vec<&str> = mails
            .iter()
            .filter(|d| d.0 == "ann@example.com")
            .map(|d| d.1.as_str())
            .collect();
        assert_eq!(to_ann, ["welcome", "order_confirmed"], "{what}");
        assert_eq!(t.mail_files().len(), 3, "{what}");

        // Reading: unread count, one read, all read; another user's is not found.
        let count = |token: String| {
            let t = &t;
            async move {
                let r = t.get("/notifications/unread-count", &token).await;
                r.json::<Value>().await.unwrap()["unread"].as_i64().unwrap()
            }
        };
        assert_eq!(count(ann.clone()).await, 2);
        let first = items[0]["id"].as_str().unwrap();
        let r = t
            .post(&format!("/notifications/{first}/read"), Some(&bob), None)
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{what}: not bob's");
        let r = t
            .post(&format!("/notifications/{first}/read"), Some(&ann), None)
            .await;
        assert_eq!(r.status(), 200);
        assert!(r.json::<Value>().await.unwrap()["read_at"].is_i64());
        assert_eq!(count(ann.clone()).await, 1);
        let unread = t.get("/notifications?unread=true", &ann).await;
        let unread: Value = unread.json().await.unwrap();
        assert_eq!(unread["items"].as_array().unwrap().len(), 1);
        let r = t.post("/notifications/read-all", Some(&ann), None).await;
        assert_eq!(r.json::<Value>().await.unwrap()["marked"], 1);
        assert_eq!(count(ann).await, 0);
        assert_eq!(count(bob).await, 1);
    }
}

#[tokio::test]
async fn pages_go_back_in_time_without_repeats() {
    for db in kit::testing::databases().await {
        let t = start(db, |_| {}).await;
        t.registered("ann", "ann@example.com").await;
        for i in 0..4 {
            t.confirmed("ann", &format!("o-{i}")).await;
        }
        let ann = t.user("ann");
        inbox_len(&t, &ann, 5).await;
        let mut seen = Vec::new();
        let mut path = "/notifications?limit=2".to_owned();
        loop {
            let page: Value = t.get(&path, &ann).await.json().await.unwrap();
            for n in page["items"].as_array().unwrap() {
                seen.push(n["id"].as_str().unwrap().to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(c) => path = format!("/notifications?limit=2&cursor={c}"),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.reverse();
        assert_eq!(seen, sorted, "newest first");
        sorted.dedup();
        assert_eq!(sorted.len(), 5, "every one once");
        let r = t.get("/notifications?limit=101", &ann).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let r = t.get("/notifications?cursor=%%%", &ann).await;
        assert!(r.status().is_client_error());
        let r = t
            .app
            .client
            .get(t.app.url("/notifications"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn an_opt_out_is_honoured_and_security_notices_cannot_be_turned_off() {
    for db in kit::testing::databases().await {
        let t = start(db, |_| {}).await;
        let what = t.label();
        let ann = t.user("ann");
        t.registered("ann", "ann@example.com").await;
        let r = t
            .put(
                "/notifications/preferences",
                &ann,
                json!([{"category": "orders", "channel": "email", "enabled": false}]),
            )
            .await;
        assert_eq!(r.status(), 200, "{what}");
        let all: Value = r.json().await.unwrap();
        assert_eq!(
            all.as_array().unwrap().len(),
            15,
            "5 categories × 3 channels"
        );
        assert!(all
            .as_array()
            .unwrap()
            .contains(&json!({"category": "orders", "channel": "email", "enabled": false})));
        let r = t
            .put(
                "/notifications/preferences",
                &ann,
                json!([{"category": "security", "channel": "email", "enabled": false}]),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{what}");

        t.confirmed("ann", "o-1").await;
        t.publish("user.password_changed", json!({"user_id": "ann", "at": 1}))
            .await;
        let d = eventually("the deliveries settle", || async {
            let d = t.deliveries().await;
            (d.len() == 3 && d.iter().all(|d| d.2 == "sent" || d.2 == "dropped")).then_some(d)
        })
        .await;
        let states: Vec<(&str, &str)> = d.iter().map(|d| (d.1.as_str(), d.2.as_str())).collect();
        assert_eq!(
            states,
            [
                ("welcome", "sent"),
                ("order_confirmed", "dropped"),
                ("password_changed", "sent")
            ],
            "{what}"
        );
        assert_eq!(d[1].4.as_deref(), Some("the recipient turned this off"));
        // In-app still gets the order: only email was turned off.
        let kinds: Vec<String> = inbox_len(&t, &ann, 3)
            .await
            .iter()
            .map(|n| n["kind"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            kinds.contains(&"order_confirmed".to_owned()),
            "{what}: {kinds:?}"
        );
    }
}
