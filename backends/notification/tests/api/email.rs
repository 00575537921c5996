//! Email: the message itself, the one-click unsubscribe, and SMTP against a real server
//! (aiosmtpd), up, down and back.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Row;

use crate::helpers::{eventually, header, start, unfolded};
use crate::smtp::{free_port, SmtpSink};

#[tokio::test]
async fn a_confirmation_mail_has_its_headers_both_parts_and_a_working_one_click_unsubscribe() {
    for db in kit::testing::databases().await {
        let t = start(db, |_| {}).await;
        t.registered("ann", "ann@example.com").await;
        t.confirmed("ann", "o-1").await;
        let files = eventually("two mails written", || async {
            let f = t.mail_files();
            (f.len() == 2).then_some(f)
        })
        .await;
        let mail = files
            .iter()
            .find(|m| header(m, "Subject").as_deref() == Some("Your order is confirmed"))
            .expect("the confirmation");
        assert_eq!(header(mail, "To").as_deref(), Some("ann@example.com"));
        assert_eq!(
            header(mail, "From").as_deref(),
            Some("\"Gatehouse shop\" <no-reply@shop.example>")
        );
        let id: String = sqlx::query("SELECT id FROM deliveries WHERE kind = 'order_confirmed'")
            .fetch_one(t.db.db.pool())
            .await
            .unwrap()
            .get("id");
        assert_eq!(
            header(mail, "Message-ID"),
            Some(format!("<{id}@shop.example>")),
            "made from the delivery id"
        );
        assert_eq!(
            header(mail, "List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        let body = unfolded(mail);
        assert!(body.contains("multipart/alternative"), "{mail}");
        assert!(
            body.contains("text/plain") && body.contains("text/html"),
            "{mail}"
        );
        assert!(body.contains("25.00 EUR"), "{mail}");
        let link = header(mail, "List-Unsubscribe").expect("List-Unsubscribe");
        let link = link
            .trim_start_matches('<')
            .trim_end_matches('>')
            .replace(' ', "");
        let (_, path) = link
            .split_once("/api")
            .expect("a link through the gateway's /api");

        // A GET shows a page and changes nothing; a forged token is refused; the POST opts out.
        let page = t.app.client.get(t.app.url(path)).send().await.unwrap();
        assert_eq!(page.status(), 200);
        assert!(page
            .text()
            .await
            .unwrap()
            .contains("<form method=\"post\">"));
        let forged = t.post(&format!("{}x", path), None, None).await;
        assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
        let r = t
            .app
            .client
            .post(t.app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r: Value = r.json().await.unwrap();
        assert_eq!(r["category"], "orders");

        // The next order sends no mail; the in-app one still arrives.
        t.confirmed("ann", "o-2").await;
        eventually("the second confirmation is dropped", || async {
            let d = t.deliveries().await;
            d.iter()
                .any(|d| d.1 == "order_confirmed" && d.2 == "dropped")
                .then_some(())
        })
        .await;
        assert_eq!(t.mail_files().len(), 2);
        let inbox = t.inbox(&t.user("ann")).await;
        assert_eq!(
            inbox
                .iter()
                .filter(|n| n["kind"] == "order_confirmed")
                .count(),
            2
        );
        // Security mails carry no unsubscribe link (they cannot be turned off).
        let welcome = files
            .iter()
            .find(|m| header(m, "Subject").as_deref() == Some("Welcome"))
            .unwrap();
        assert!(
            header(welcome, "List-Unsubscribe").is_some(),
            "account mails can be"
        );
    }
}

#[tokio::test]
async fn over_smtp_the_mail_arrives_once_at_a_real_server() {
    let Some(sink) = SmtpSink::start_on(free_port()) else {
        return;
    };
    let url = sink.url();
    let t = start(kit::testing::sqlite().await, |s| {
        s.mail = notification_service::email::MailTarget::Smtp {
            url,
            credentials: None,
        }
    })
    .await;
    t.registered("ann", "ann@example.com").await;
    t.confirmed("ann", "o-1").await;
    let messages = eventually("two messages at the server", || async {
        let m = sink.messages();
        (m.len() >= 2).then_some(m)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.messages().len(), 2, "once each");
    let confirmation = messages
        .iter()
        .map(|m| m.replace('\n', "\r\n").replace("\r\r\n", "\r\n"))
        .find(|m| header(m, "Subject").as_deref() == Some("Your order is confirmed"))
        .expect("the confirmation");
    assert_eq!(
        header(&confirmation, "To").as_deref(),
        Some("ann@example.com")
    );
    assert!(header(&confirmation, "List-Unsubscribe").is_some());
    assert!(header(&confirmation, "Message-ID")
        .unwrap()
        .ends_with("@shop.example>"));
}

#[tokio::test]
async fn with_the_server_down_attempts_back_off_then_dead_letter_and_a_requeue_sends_once() {
    for db in kit::testing::databases().await {
        let port = free_port();
        let t = start(db, |s| {
            s.mail = notification_service::email::MailTarget::Smtp {
                url: format!("smtp://127.0.0.1:{port}"),
                credentials: None,
            };
            s.retry.base = Duration::from_millis(200);
            s.retry.max_attempts = 4;
        })
        .await;
        t.registered("ann", "ann@example.com").await;
        // Watch the row: after each failed attempt, the wait the worker chose (from the
        // service's own clock: the failure's time and the next attempt's due time), and when
        // each attempt actually started.
        let started = Instant::now();
        let mut waits: Vec<(i64, i64)> = Vec::new();
        let mut begun: Vec<(i64, i64)> = Vec::new();
        loop {
            let row =
                sqlx::query("SELECT state, attempts, next_attempt_at, updated_at FROM deliveries")
                    .fetch_optional(t.db.db.pool())
                    .await
                    .unwrap();
            if let Some(row) = row {
                let (state, n): (String, i64) = (row.get("state"), row.get("attempts"));
                let (due, at): (i64, i64) = (row.get("next_attempt_at"), row.get("updated_at"));
                if state == "failed" && waits.last().is_none_or(|w| w.0 != n) {
                    waits.push((n, due - at));
                }
                if state == "sending" && begun.last().is_none_or(|b| b.0 != n) {
                    begun.push((n, at));
                }
                if state == "dead" {
                    assert_eq!(n, 4, "dead after max_attempts");
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "not dead: {waits:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Waits are in [d/2, d] for d = 200, 400, 800 ms, so each is at least the one before.
        let chosen: Vec<i64> = waits.iter().map(|w| w.1).collect();
        assert_eq!(
            waits.iter().map(|w| w.0).collect::<Vec<_>>(),
            [1, 2, 3],
            "{waits:?}"
        );
        for (i, d) in [200, 400, 800].into_iter().enumerate() {
            assert!((d / 2..=d).contains(&chosen[i]), "wait {i}: {chosen:?}");
        }
        assert!(
            chosen.windows(2).all(|w| w[1] >= w[0]),
            "growing: {chosen:?}"
        );
        // And no attempt started before its wait was over.
        for pair in begun.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            let wait = waits.iter().find(|w| w.0 == prev.0).map_or(0, |w| w.1);
            assert!(
                next.1 - prev.1 >= wait,
                "attempt {} came early: {begun:?} {waits:?}",
                next.0
            );
        }

        // /metrics says so: three retries and a dead letter, and the queue's depth.
        let metrics = eventually("the depth is refreshed", || async {
            let m = t
                .app
                .client
                .get(t.app.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            m.contains("notification_deliveries{state=\"dead\"} 1")
                .then_some(m)
        })
        .await;
        for line in [
            "notification_send_attempts_total{channel=\"email\",outcome=\"retry\"} 3",
            "notification_send_attempts_total{channel=\"email\",outcome=\"dead\"} 1",
        ] {
            assert!(metrics.contains(line), "{line} in:\n{metrics}");
        }

        // An admin sees it, the server comes up, the re-queued message is sent once.
        let admin = t.admin();
        let dead: Value = t
            .get("/notifications/admin/dead-letters", &admin)
            .await
            .json()
            .await
            .unwrap();
        let items = dead["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{dead}");
        assert_eq!(items[0]["attempts"], 4);
        let r = t
            .get("/notifications/admin/dead-letters", &t.user("ann"))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let Some(sink) = SmtpSink::start_on(port) else {
            return;
        };
        let id = items[0]["id"].as_str().unwrap();
        let r = t
            .post(
                &format!("/notifications/admin/deliveries/{id}/requeue"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        eventually("sent after the requeue", || async {
            (t.deliveries().await[0].2 == "sent").then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sink.messages().len(), 1);
        let again = t
            .post(
                &format!("/notifications/admin/deliveries/{id}/requeue"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(again.status(), StatusCode::NOT_FOUND, "no longer dead");
    }
}

#[tokio::test]
async fn a_message_claimed_by_a_worker_that_died_is_sent_once_after_its_lease() {
    for db in kit::testing::databases().await {
        let Some(sink) = SmtpSink::start_on(free_port()) else {
            return;
        };
        let url = sink.url();
        let mut t = start(db, |s| {
            s.mail = notification_service::email::MailTarget::Smtp {
                url,
                credentials: None,
            };
            s.retry.lease = Duration::from_secs(1);
        })
        .await;
        t.stop().await;
        // A message in the queue, claimed by a worker that then died (it never settles it).
        t.claimed_by_a_dead_worker(
            "event-1",
            &notification_service::catalog::Channel::EMAIL,
            "ann@example.com",
            "order_confirmed",
            serde_json::json!({"order_id": "o-1", "total": 2500, "currency": "EUR"}),
        )
        .await;
        t.restart().await;
        eventually("sent after the lease", || async {
            (t.deliveries().await[0].2 == "sent").then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sink.messages().len(), 1, "once");
        assert_eq!(t.deliveries().await[0].3, 2, "the second attempt sent it");
    }
}
