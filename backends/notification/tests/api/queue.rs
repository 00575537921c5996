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
