//! No IP address or user agent in any table; visitor ids from salts that rotate daily and
//! are gone after 48 hours, with a visit across midnight keeping its id.

use analytics_service::ingest::{Sender, TrackEvent};
use serde_json::json;
use sqlx::Row;

use crate::helpers::start;

const IP: &str = "203.0.113.77";
const AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) GatehouseProbe/9.1";

/// Every value of every column of every table, as text.
async fn every_value(db: &kit::Db) -> Vec<(String, String, String)> {
    let tables: Vec<String> = match db.kind() {
        kit::DbKind::Sqlite => sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        ),
        kit::DbKind::Postgres => sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema()",
        ),
    }
    .fetch_all(db.pool())
    .await
    .unwrap();
    let mut all = Vec::new();
    for t in tables {
        let columns: Vec<String> = match db.kind() {
            kit::DbKind::Sqlite => sqlx::query_scalar("SELECT name FROM pragma_table_info($1)"),
            kit::DbKind::Postgres => sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1",
            ),
        }
        .bind(&t)
        .fetch_all(db.pool())
        .await
        .unwrap();
        for c in columns {
            // Bytes, so binary columns (checksums, stored bodies) are searched too.
            let sql = match db.kind() {
                kit::DbKind::Sqlite => format!("SELECT CAST(\"{c}\" AS BLOB) FROM \"{t}\""),
                kit::DbKind::Postgres => {
                    format!("SELECT convert_to(CAST(\"{c}\" AS TEXT), 'UTF8') FROM \"{t}\"")
                }
            };
            let values: Vec<Option<Vec<u8>>> =
                sqlx::query_scalar(&sql).fetch_all(db.pool()).await.unwrap();
            for v in values.into_iter().flatten() {
                all.push((
                    t.clone(),
                    c.clone(),
                    String::from_utf8_lossy(&v).into_owned(),
                ));
            }
        }
    }
    all
}

#[tokio::test]
async fn no_table_holds_an_ip_address_or_a_user_agent() {
    for db in kit::testing::databases().await {
        let a = start(db).await;
        let label = a.label();
        // Through a proxy (the gateway appends the client's address), and forwarded by a
        // server in the event's context.
        let r = a
            .app
            .client
            .post(a.app.url("/analytics/events"))
            .bearer_auth(a.user("ann"))
            .header("user-agent", AGENT)
            .header("x-forwarded-for", IP)
            .json(&json!({"batch": [
                {"event": "Viewed", "message_id": "p-1"},
                {"event": "Viewed", "message_id": "p-2",
                 "context": {"ip": "198.51.100.23", "user_agent": "Probe-Forwarded/1.0 (X11)"}}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{label}");
        let visitors: Vec<Option<String>> =
            sqlx::query_scalar("SELECT visitor FROM events ORDER BY message_id")
                .fetch_all(a.db.db.pool())
                .await
                .unwrap();
        assert!(
            visitors
                .iter()
                .all(|v| v.as_ref().is_some_and(|v| v.len() == 32)),
            "{label}"
        );
        assert_ne!(
            visitors[0], visitors[1],
            "{label}: two people, two visitors"
        );
        let values = every_value(&a.db.db).await;
        assert!(
            values.len() > 20,
            "{label}: the probe read {} values",
            values.len()
        );
        for (t, c, v) in &values {
            for secret in [
                IP,
                "198.51.100.23",
                AGENT,
                "GatehouseProbe",
                "Probe-Forwarded",
            ] {
                assert!(
                    !v.contains(secret),
                    "{label}: {t}.{c} holds {secret:?}: {v}"
                );
            }
        }
    }
}

fn at(date: &str) -> i64 {
    date.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

#[tokio::test]
async fn a_visit_across_midnight_keeps_its_id_and_the_day_before_yesterdays_salt_is_gone() {
    for db in kit::testing::databases().await {
        let a = start(db).await;
        let label = a.label();
        let before_midnight = visit(&a, at("2026-03-10T23:50:00Z"), AGENT).await;
        let after_midnight = visit(&a, at("2026-03-11T00:05:00Z"), AGENT).await;
        assert_eq!(
            before_midnight, after_midnight,
            "{label}: yesterday's salt continues the visit"
        );
        let newcomer = visit(&a, at("2026-03-11T00:06:00Z"), "Other/1.0").await;
        let returning = visit(&a, at("2026-03-11T00:06:30Z"), "Other/1.0").await;
        assert_eq!(newcomer, returning, "{label}");
        assert_ne!(newcomer, before_midnight, "{label}");

        let two_days_later = visit(&a, at("2026-03-12T09:00:00Z"), AGENT).await;
        assert_ne!(two_days_later, before_midnight, "{label}");
        let days: Vec<i64> = sqlx::query_scalar("SELECT day FROM salts ORDER BY day")
            .fetch_all(a.db.db.pool())
            .await
            .unwrap();
        let day = |d: &str| at(d) / 86_400_000;
        assert_eq!(
            days,
            [day("2026-03-11T00:00:00Z"), day("2026-03-12T00:00:00Z")],
            "{label}: the 10th's salt is deleted"
        );
    }
}

/// Ann visits at `now` with `agent`; the visitor id her event got.
async fn visit(a: &crate::helpers::TestAnalytics, now: i64, agent: &str) -> String {
    let e: TrackEvent =
        serde_json::from_value(json!({"event": "Viewed", "message_id": format!("v-{now}")}))
            .unwrap();
    let sender = Sender {
        source: "user:ann".into(),
        user: Some("ann".into()),
        ip: Some(IP.into()),
        agent: Some(agent.into()),
    };
    a.service
        .state
        .ingest
        .accept(&sender, None, vec![Ok(e)], now)
        .await
        .unwrap();
    sqlx::query("SELECT visitor FROM events WHERE received_at = $1")
        .bind(now)
        .fetch_one(a.db.db.pool())
        .await
        .unwrap()
        .get::<String, _>("visitor")
}
