//! Reports as a shop owner reads them: JSON and CSV with the same numbers, day boundaries
//! in the shop's time zone, top products, the funnel.

use serde_json::{json, Value};

use crate::helpers::{start, TestAnalytics, DEADLINE};

fn at(t: &str) -> i64 {
    t.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// Confirmed orders at fixed times (occurred_at is the producer's: no lateness for facts).
async fn shop_history(a: &TestAnalytics) {
    let orders = [
        ("2026-03-09T22:30:00Z", "EUR", vec![("MUG", 2, 1250)]),
        (
            "2026-03-09T23:30:00Z",
            "EUR",
            vec![("CAP", 1, 1000), ("MUG", 1, 1250)],
        ),
        (
            "2026-03-10T09:15:00Z",
            "EUR",
            vec![("TEE, \"large\"", 3, 2000)],
        ),
        ("2026-03-10T10:00:00Z", "USD", vec![("MUG", 4, 1500)]),
    ];
    for (i, (t, currency, lines)) in orders.iter().enumerate() {
        let items: Vec<Value> = lines
            .iter()
            .map(|(sku, qty, price)| json!({"sku": sku, "qty": qty, "unit_price": price}))
            .collect();
        let total: i64 = lines.iter().map(|(_, q, p)| q * p).sum();
        let order = json!({"order_id": format!("o-{i}"), "customer_id": "ann", "total": total,
                           "currency": currency, "items": items});
        a.publish("order.placed", order.clone(), at(t) - 1000).await;
        a.publish("order.confirmed", order, at(t)).await;
    }
    a.publish(
        "product.viewed",
        json!({"product": "MUG", "views": 40}),
        at("2026-03-09T12:00:00Z"),
    )
    .await;
    a.publish(
        "product.viewed",
        json!({"product": "CAP", "views": 10}),
        at("2026-03-10T12:00:00Z"),
    )
    .await;
    a.publish(
        "order.placed",
        json!({"order_id": "o-x", "customer_id": "bob", "total": 500,
        "currency": "EUR", "items": []}),
        at("2026-03-10T13:00:00Z"),
    )
    .await;
    kit::testing::eventually("every fact is rolled up", DEADLINE, || async {
        (a.stored().await == 11).then_some(())
    })
    .await;
}

#[tokio::test]
async fn csv_and_json_of_a_report_carry_the_same_rows_and_days_follow_the_time_zone() {
    for db in kit::testing::databases().await {
        let a = start(db).await;
        let label = a.label();
        shop_history(&a).await;
        let admin = a.admin();
        let q = "metric=revenue&from=2026-03-09&to=2026-03-11&granularity=day";
        let r = a.get(&format!("/analytics/reports?{q}"), &admin).await;
        assert_eq!(r.status(), 200, "{label}");
        let utc: Value = r.json().await.unwrap();
        let rows: Vec<(String, String, i64, i64)> = utc["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["bucket"].as_str().unwrap().to_owned(),
                    r["currency"].as_str().unwrap().to_owned(),
                    r["count"].as_i64().unwrap(),
                    r["sum"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "2026-03-09T00:00:00+00:00".into(),
                    "EUR".into(),
                    2,
                    2500 + 2250
                ),
                ("2026-03-10T00:00:00+00:00".into(), "EUR".into(), 1, 6000),
                ("2026-03-10T00:00:00+00:00".into(), "USD".into(), 1, 6000),
            ],
            "{label}"
        );

        let csv = a.get(&format!("/analytics/reports.csv?{q}"), &admin).await;
        assert_eq!(csv.status(), 200);
        assert!(csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv"));
        let text = csv.text().await.unwrap();
        let mut reader = ::csv::Reader::from_reader(text.as_bytes());
        assert_eq!(
            reader.headers().unwrap(),
            vec!["bucket", "group", "currency", "count", "sum", "min", "max"]
        );
        let from_csv: Vec<(String, String, i64, i64)> = reader
            .records()
            .map(|r| {
                let r = r.unwrap();
                (
                    r[0].into(),
                    r[2].into(),
                    r[3].parse().unwrap(),
                    r[4].parse().unwrap(),
                )
            })
            .collect();
        assert_eq!(from_csv, rows, "{label}: the same rows as the JSON");
        assert!(text.ends_with("\r\n"), "RFC 4180 line ends");
        // Accept: text/csv on the JSON path gives the same CSV.
        let negotiated = a.csv(&format!("/analytics/reports?{q}"), &admin).await;
        assert_eq!(negotiated, text);

        // In Paris (UTC+1 in March) the 23:30 UTC order of the 9th is on the 10th.
        let paris = a
            .json(&format!("/analytics/reports?{q}&tz=Europe/Paris"), &admin)
            .await;
        let days: Vec<(&str, &str, i64)> = paris["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["bucket"].as_str().unwrap(),
                    r["currency"].as_str().unwrap(),
                    r["sum"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            days,
            [
                ("2026-03-09T00:00:00+01:00", "EUR", 2500),
                ("2026-03-10T00:00:00+01:00", "EUR", 2250 + 6000),
                ("2026-03-10T00:00:00+01:00", "USD", 6000),
            ],
            "{label}"
        );
        // India's midnight is at :30 UTC: the days come from minute buckets.
        let kolkata = a
            .json(&format!("/analytics/reports?{q}&tz=Asia/Kolkata"), &admin)
            .await;
        let eur: i64 = kolkata["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["currency"] == "EUR")
            .map(|r| r["sum"].as_i64().unwrap())
            .sum();
        assert_eq!(eur, 2500 + 2250 + 6000, "{label}");
    }
}

#[tokio::test]
async fn top_products_and_the_funnel() {
    let a = start(kit::testing::sqlite().await).await;
    shop_history(&a).await;
    let admin = a.admin();
    let top = a
        .json(
            "/analytics/reports/top-products?from=2026-03-09&to=2026-03-11",
            &admin,
        )
        .await;
    let ranked: Vec<(i64, &str, &str, i64, i64)> = top["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rank"].as_i64().unwrap(),
                r["product"].as_str().unwrap(),
                r["currency"].as_str().unwrap(),
                r["revenue"].as_i64().unwrap(),
                r["units"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ranked,
        [
            (1, "TEE, \"large\"", "EUR", 6000, 3),
            (2, "MUG", "EUR", 3750, 3),
            (3, "CAP", "EUR", 1000, 1),
            (1, "MUG", "USD", 6000, 4),
        ]
    );
    // A SKU with a comma and quotes survives CSV (RFC 4180 quoting).
    let csv = a
        .csv(
            "/analytics/reports/top-products?from=2026-03-09&to=2026-03-11",
            &admin,
        )
        .await;
    assert!(
        csv.contains("1,\"TEE, \"\"large\"\"\",EUR,6000,3,1\r\n"),
        "{csv}"
    );

    let funnel = a
        .json(
            "/analytics/reports/funnel?from=2026-03-09&to=2026-03-11",
            &admin,
        )
        .await;
    let days: Vec<(i64, i64, i64)> = funnel["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["viewed"].as_i64().unwrap(),
                d["placed"].as_i64().unwrap(),
                d["confirmed"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(days, [(40, 2, 2), (10, 3, 2)]);
    assert_eq!(funnel["total"]["placed_per_view"], 0.1);
    assert_eq!(funnel["total"]["confirmed_per_placed"], 0.8);
}

#[tokio::test]
async fn a_report_refuses_what_it_cannot_answer_and_customers_see_none() {
    let a = start(kit::testing::sqlite().await).await;
    let admin = a.admin();
    for (q, field) in [
        ("metric=nope&from=2026-03-09&to=2026-03-10", "metric"),
        ("metric=revenue&from=2026-03-10&to=2026-03-09", "to"),
        (
            "metric=revenue&from=2026-03-09&to=2026-03-10&tz=Mars/Olympus",
            "tz",
        ),
        (
            "metric=revenue&from=2026-03-09&to=2026-03-10&group_by=product",
            "group_by",
        ),
        (
            "metric=events&from=2020-01-01&to=2026-01-01&granularity=minute",
            "granularity",
        ),
        ("metric=revenue&from=soon&to=2026-03-10", "from"),
    ] {
        let r = a.get(&format!("/analytics/reports?{q}"), &admin).await;
        assert_eq!(r.status(), 422, "{q}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["errors"][0]["field"], field, "{q}: {p}");
    }
    let r = a
        .get(
            "/analytics/reports?metric=revenue&from=2026-03-09&to=2026-03-10",
            &a.user("ann"),
        )
        .await;
    assert_eq!(r.status(), 403);
}
