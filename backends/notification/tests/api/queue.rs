//! The queue under two workers: two service instances on one PostgreSQL database.

use std::collections::HashSet;
use std::time::Duration;

use kit::Service as _;
use notification_service::catalog::{kind, Channel};
use notification_service::{queue, Service, Settings};

use crate::helpers::{eventually, header, start};

#[tokio::test]
async fn two_instances_on_one_database_send_each_of_1000_messages_once() {
    let Some(db) = kit::testing::postgres().await else {
        return;
    };
    let mut a = start(db, |_| {}).await;
    a.stop().await;
    let k = kind("order_confirmed").unwrap();
    let mut tx = a.db.db.begin().await.unwrap();
    for i in 0..1000 {
        queue::enqueue(
            &mut tx,
            &format!("event-{i}"),
            &Channel::EMAIL,
            &format!("user{i}@example.com"),
            None,
            k,
            &serde_json::json!({"order_id": format!("o-{i}"), "total": 100, "currency": "EUR"}),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    // Two instances, each with its own mail folder, start draining together.
    let b_mail = tempfile::tempdir().unwrap();
    let mut b_settings = Settings::to_files(b_mail.path().to_owned());
    b_settings.poll_interval = Duration::from_millis(100);
    let (b, ()) = tokio::join!(
        Service::start(
            a.db.db.clone(),
            b_settings,
            a.keys.verifier.clone(),
            a.bus.clone(),
            Vec::new(),
        ),
        a.restart()
    );
    let b = b.unwrap();
    eventually("all 1000 sent", || async {
        let d = a.deliveries().await;
        (d.iter().filter(|d| d.2 == "sent").count() == 1000).then_some(())
    })
    .await;
    b.shutdown().await;
    let mut files = a.mail_files();
    let from_a = files.len();
    for e in std::fs::read_dir(b_mail.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "eml") {
            files.push(std::fs::read_to_string(p).unwrap());
        }
    }
    assert_eq!(
        files.len(),
        1000,
        "one file per message ({from_a} from the first)"
    );
    let ids: HashSet<String> = files
        .iter()
        .map(|m| header(m, "Message-ID").unwrap())
        .collect();
    assert_eq!(ids.len(), 1000, "no message twice");
    let attempts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE attempts <> 1")
        .fetch_one(a.db.db.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 0, "one attempt each");
    eprintln!("first instance sent {from_a}, second {}", 1000 - from_a);
}

/// With the workers stopped, a due message's wait shows on `/metrics`, measured at the
/// scrape (the workers that would refresh a gauge are the ones stuck); once they run again
/// it is sent and the age falls to 0.
#[tokio::test]
async fn the_age_of_the_oldest_due_message_is_measured_at_each_scrape() {
    for db in kit::testing::databases().await {
        let mut t = start(db, |_| {}).await;
        t.stop().await;
        let k = kind("order_confirmed").unwrap();
        let mut tx = t.db.db.begin().await.unwrap();
        queue::enqueue(
            &mut tx,
            "event-late",
            &Channel::EMAIL,
            "late@example.com",
            None,
            k,
            &serde_json::json!({"order_id": "o-late", "total": 100, "currency": "EUR"}),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        // Due five minutes ago.
        sqlx::query("UPDATE deliveries SET next_attempt_at = next_attempt_at - 300000")
            .execute(t.db.db.pool())
            .await
            .unwrap();
        let url = t.app.url("/metrics");
        let age = || async {
            let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("notification_oldest_due_age_seconds "))
                .unwrap_or_else(|| panic!("no queue age in\n{text}"))
                .parse::<f64>()
                .unwrap()
        };
        let waited = age().await;
        assert!((299.0..400.0).contains(&waited), "{waited} ({})", t.label());

        t.restart().await;
        eventually("the message is sent and the age falls to 0", || async {
            (age().await == 0.0).then_some(())
        })
        .await;
    }
}
