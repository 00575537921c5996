//! Ingest as a client sees it: retries counted once, conflicts, malformed events reported
//! per event, size limits, clock skew, late events, bots, write keys.

use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::{event, start, BROWSER};

fn statuses(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_retried_batch_counts_once_and_a_changed_body_is_a_conflict_where_the_first_wins() {
    for db in kit::testing::databases().await {
        let a = start(db).await;
        let label = a.label();
        let ann = a.user("ann");
        let batch = json!([
            event("m-1", "Signup Started"),
            event("m-2", "Product Clicked")
        ]);
        let first = a.track(&ann, batch.clone()).await;
        assert_eq!(statuses(&first), ["accepted", "accepted"], "{label}");
        let retry = a.track(&ann, batch).await;
        assert_eq!(statuses(&retry), ["duplicate", "duplicate"], "{label}");
        assert_eq!(retry["accepted"], 0, "{label}");
        assert_eq!(retry["duplicate"], 2, "{label}");

        let mut changed = event("m-1", "Signup Finished");
        changed["properties"] = json!({"plan": "pro"});
        let conflict = a.track(&ann, json!([changed])).await;
        assert_eq!(statuses(&conflict), ["conflict"], "{label}");
        assert_eq!(conflict["conflict"], 1, "{label}");
        assert_eq!(a.stored().await, 2, "{label}");
        let name: String = sqlx::query_scalar("SELECT name FROM events WHERE message_id = 'm-1'")
            .fetch_one(a.db.db.pool())
            .await
            .unwrap();
        assert_eq!(name, "Signup Started", "{label}: the first one wins");

        // Twice in one batch: the second is the duplicate.
        let twice = a
            .track(&ann, json!([event("m-3", "X"), event("m-3", "X")]))
            .await;
        assert_eq!(statuses(&twice), ["accepted", "duplicate"], "{label}");
        // Message ids are per sender: bob's m-1 is his own.
        let bob = a.track(&a.user("bob"), json!([event("m-1", "Y")])).await;
        assert_eq!(statuses(&bob), ["accepted"], "{label}");
        let now = kit::db::now_ms();
        assert_eq!(a.rollup("events", "minute", now, "").await.0, 4, "{label}");
    }
}

#[tokio::test]
async fn malformed_events_are_reported_one_by_one_and_the_rest_is_kept() {
    let a = start(kit::testing::sqlite().await).await;
    let ann = a.user("ann");
    let answer = a
        .track(
            &ann,
            json!([
                event("ok-1", "Viewed"),
                {"event": "No id"},
                {"type": "identify", "event": "X", "message_id": "m-2"},
                {"event": "", "message_id": "m-3"},
                {"event": "T", "message_id": "m-4", "timestamp": "yesterday"},
                {"event": "U", "message_id": "m-5", "user_id": "bob"},
                "not an object",
                event("ok-2", "Viewed"),
            ]),
        )
        .await;
    assert_eq!(
        statuses(&answer),
        [
            "accepted", "invalid", "invalid", "invalid", "invalid", "invalid", "invalid",
            "accepted"
        ]
    );
    let reasons: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert!(reasons[0].contains("message_id"), "{reasons:?}");
    assert!(reasons[1].contains("track"), "{reasons:?}");
    assert!(reasons[2].contains("event must be"), "{reasons:?}");
    assert!(reasons[3].contains("RFC 3339"), "{reasons:?}");
    assert!(reasons[4].contains("caller's own"), "{reasons:?}");
    assert_eq!(answer["invalid"], 6);
    assert_eq!(a.stored().await, 2);

    // Not a batch at all: the whole request is refused, as a problem.
    let r = a
        .send(&format!("Bearer {ann}"), &json!({"events": []}), BROWSER)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
}

#[tokio::test]
async fn an_oversize_event_or_batch_is_413_naming_the_limit() {
    let a = start(kit::testing::sqlite().await).await;
    let auth = format!("Bearer {}", a.user("ann"));
    let mut big = event("big", "Big");
    big["properties"] = json!({"blob": "x".repeat(33 * 1024)});
    let r = a
        .send(
            &auth,
            &json!({"batch": [event("small", "S"), big]}),
            BROWSER,
        )
        .await;
    assert_eq!(r.status(), 413);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["limit"], "event");
    assert_eq!(problem["index"], 1);
    assert_eq!(problem["max_bytes"], 32 * 1024);

    let many: Vec<Value> = (0..20)
        .map(|i| {
            let mut e = event(&format!("e-{i}"), "Filler");
            e["properties"] = json!({"blob": "y".repeat(30 * 1024)});
            e
        })
        .collect();
    let r = a.send(&auth, &json!({ "batch": many }), BROWSER).await;
    assert_eq!(r.status(), 413);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["limit"], "batch");
    assert_eq!(problem["max_bytes"], 500 * 1024);
    assert_eq!(a.stored().await, 0, "nothing of a refused batch is kept");
}

#[tokio::test]
async fn a_wrong_client_clock_is_corrected_and_received_at_is_kept() {
    for db in kit::testing::databases().await {
        let a = start(db).await;
        let label = a.label();
        let now = jiff::Timestamp::now();
        // The client's clock is two hours ahead: it says the event happened at its 12:00
        // and it sent the batch at its 12:00:30, when our clock said 10:00:30.
        let ahead = jiff::SignedDuration::from_hours(2);
        let occurred = now - jiff::SignedDuration::from_secs(30);
        let answer = a
            .track(
                &a.user("ann"),
                json!([{"event": "Skewed", "message_id": "s-1",
                        "timestamp": (occurred + ahead).to_string(),
                        "sent_at": (now + ahead).to_string()}]),
            )
            .await;
        assert_eq!(statuses(&answer), ["accepted"], "{label}");
        let row = sqlx::query("SELECT occurred_at, received_at FROM events")
            .fetch_one(a.db.db.pool())
            .await
            .unwrap();
        let (at, received): (i64, i64) = (row.get("occurred_at"), row.get("received_at"));
        let expected = occurred.as_millisecond();
        assert!(
            (at - expected).abs() < 5_000,
            "{label}: occurred_at {at} is not within 5 s of {expected}"
        );
        assert!((received - now.as_millisecond()).abs() < 5_000, "{label}");

        // A future timestamp without sent_at never lands after its arrival.
        a.track(
            &a.user("ann"),
            json!([{"event": "Future", "message_id": "s-2",
                    "timestamp": (now + jiff::SignedDuration::from_hours(30)).to_string()}]),
        )
        .await;
        let future: i64 =
            sqlx::query_scalar("SELECT occurred_at FROM events WHERE message_id = 's-2'")
                .fetch_one(a.db.db.pool())
                .await
                .unwrap();
        assert!(future <= kit::db::now_ms(), "{label}");
    }
}

#[tokio::test]
async fn late_events_land_in_their_bucket_within_the_lateness_and_are_dropped_beyond() {
    for db in kit::testing::databases().await {
        let a = start(db).await;
        let label = a.label();
        let ann = a.user("ann");
        let now = jiff::Timestamp::now();
        let ago = |mins: i64| (now - jiff::SignedDuration::from_mins(mins)).to_string();
        let answer = a
            .track(
                &ann,
                json!([
                    {"event": "Fresh", "message_id": "l-1", "timestamp": ago(0), "sent_at": now.to_string()},
                    {"event": "Late", "message_id": "l-2", "timestamp": ago(40), "sent_at": now.to_string()},
                    {"event": "Too late", "message_id": "l-3", "timestamp": ago(90), "sent_at": now.to_string()},
                ]),
            )
            .await;
        assert_eq!(
            statuses(&answer),
            ["accepted", "accepted", "late"],
            "{label}"
        );
        assert!(answer["results"][2]["reason"]
            .as_str()
            .unwrap()
            .contains("3600 s"));
        // Its bucket is the minute it occurred in: 40 minutes ago plus the few ms of clock
        // correction (received − sent), which can cross a minute boundary.
        let forty: i64 =
            sqlx::query_scalar("SELECT occurred_at FROM events WHERE message_id = 'l-2'")
                .fetch_one(a.db.db.pool())
                .await
                .unwrap();
        let ago_forty = (now - jiff::SignedDuration::from_mins(40)).as_millisecond();
        assert!(
            (forty - ago_forty).abs() < 60_000,
            "{label}: {forty} vs {ago_forty}"
        );
        assert_eq!(
            a.rollup("events", "minute", forty, "").await.0,
            1,
            "{label}"
        );
        let counted: i64 = sqlx::query_scalar(
            "SELECT CAST(SUM(count) AS BIGINT) FROM ingest_counts WHERE outcome = 'late'",
        )
        .fetch_one(a.db.db.pool())
        .await
        .unwrap();
        assert_eq!(counted, 1, "{label}");
    }
}

#[tokio::test]
async fn bots_are_dropped_and_counted() {
    let a = start(kit::testing::sqlite().await).await;
    let auth = format!("Bearer {}", a.user("ann"));
    let crawler = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    let r = a
        .send(&auth, &json!({"batch": [event("b-1", "Viewed")]}), crawler)
        .await;
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(statuses(&answer), ["bot"]);
    // A server forwarding a headless browser's agent in context is caught the same way.
    let mut forwarded = event("b-2", "Viewed");
    forwarded["context"] = json!({"userAgent": "Mozilla/5.0 HeadlessChrome/120.0.0.0"});
    let answer = a
        .track(&a.user("ann"), json!([forwarded, event("b-3", "Viewed")]))
        .await;
    assert_eq!(statuses(&answer), ["bot", "accepted"]);
    assert_eq!(a.stored().await, 1);
    let metrics = a
        .app
        .client
        .get(a.app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("analytics_events_total{outcome=\"bot\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_source_sends_with_its_write_key_until_it_is_deleted() {
    let a = start(kit::testing::sqlite().await).await;
    let admin = a.admin();
    let r = a
        .app
        .client
        .post(a.app.url("/analytics/sources"))
        .bearer_auth(&admin)
        .json(&json!({"name": "storefront"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let source: Value = r.json().await.unwrap();
    let key = source["write_key"].as_str().unwrap();
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    );
    let body = json!({"batch": [event("w-1", "Page Viewed")]});
    let r = a.send(&basic, &body, BROWSER).await;
    assert_eq!(r.status(), 202);
    let stored: String = sqlx::query_scalar("SELECT source FROM events")
        .fetch_one(a.db.db.pool())
        .await
        .unwrap();
    assert_eq!(stored, format!("src:{}", source["id"].as_str().unwrap()));

    // Customers cannot make sources; nobody sends without a key or token.
    let r = a
        .app
        .client
        .post(a.app.url("/analytics/sources"))
        .bearer_auth(a.user("ann"))
        .json(&json!({"name": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = a.send("", &body, BROWSER).await;
    assert_eq!(r.status(), 401);

    let id = source["id"].as_str().unwrap();
    let r = a
        .app
        .client
        .delete(a.app.url(&format!("/analytics/sources/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = a.send(&basic, &body, BROWSER).await;
    assert_eq!(r.status(), 401);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["detail"], "unknown write key");
}
