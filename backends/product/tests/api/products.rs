use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn products_crud_needs_a_writer_and_reads_are_public() {
    for db in kit::testing::databases().await {
        let t = start(db, |_| {}).await;
        let label = t.label();
        let body = product_body("SKU-1", 3);

        let r = t
            .send(Method::POST, "/products", None, Some(body.clone()))
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{label}: no token");
        let r = t.post_as("/products", &t.customer, body.clone()).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{label}: customer");
        let r = t.post_as("/products", &t.service, body.clone()).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{label}: order service");
        problem(r).await;

        let writer = t.token(&["staff"], &["products:write"]);
        let r = t.post_as("/products", &writer, body).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{label}: products:write");
        let created: Value = r.json().await.unwrap();
        assert_eq!(created["sku"], "SKU-1");
        assert_eq!(
            created["price"],
            json!({ "amount": 1999, "currency": "EUR" })
        );
        assert_eq!(
            created["low_stock_threshold"], 5,
            "{label}: default threshold"
        );
        let id = created["id"].as_str().unwrap().to_owned();
        let path = format!("/products/{id}");

        let r = t.get(&path).await;
        assert_eq!(r.status(), StatusCode::OK, "{label}: public read");
        assert_eq!(r.json::<Value>().await.unwrap(), created);
        assert_eq!(t.stock("SKU-1").await, (3, 0, 3), "{label}: initial stock");

        let update = json!({
            "name": "Renamed",
            "category": "other",
            "price": { "amount": 2500, "currency": "USD" },
            "low_stock_threshold": 1,
        });
        let r = t.send(Method::PUT, &path, None, Some(update.clone())).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{label}");
        let r = t
            .send(Method::PUT, &path, Some(&t.customer), Some(update.clone()))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{label}");
        let r = t
            .send(Method::PUT, &path, Some(&t.admin), Some(update))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{label}: update");
        let updated: Value = r.json().await.unwrap();
        assert_eq!(updated["name"], "Renamed");
        assert_eq!(updated["description"], Value::Null, "{label}: PUT replaces");
        assert_eq!(updated["price"]["currency"], "USD");
        assert_eq!(updated["low_stock_threshold"], 1);
        t.eventually(&path, "the update is read", |s, b| {
            s == StatusCode::OK && b["name"] == "Renamed"
        })
        .await;

        let r = t
            .send(Method::PUT, &path, Some(&t.admin), Some(json!({
                "sku": "OTHER", "name": "x", "category": "c", "price": { "amount": 1, "currency": "EUR" }
            })))
            .await;
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{label}: sku is fixed"
        );

        let r = t.send(Method::DELETE, &path, Some(&t.customer), None).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{label}");
        let r = t.send(Method::DELETE, &path, Some(&t.admin), None).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{label}: delete");
        t.eventually(&path, "the deleted product is gone", |s, _| {
            s == StatusCode::NOT_FOUND
        })
        .await;
        let r = t.send(Method::DELETE, &path, Some(&t.admin), None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{label}: deleted once");
        let r = t.get("/products/no-such-id").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{label}");
        problem(r).await;
        t.stop().await;
    }
}

#[tokio::test]
async fn a_taken_sku_is_409_and_bad_input_is_422_naming_each_field() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        t.create("DUP", 1).await;
        let r = t
            .post_as("/products", &t.admin, product_body("DUP", 9))
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{label}: same sku");
        problem(r).await;

        let r = t
            .post_as(
                "/products",
                &t.admin,
                json!({
                    "sku": "has space",
                    "name": " ",
                    "category": "c",
                    "price": { "amount": -1, "currency": "eur" },
                    "initial_stock": -2,
                }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{label}");
        let p = problem(r).await;
        let mut fields: Vec<&str> = p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "initial_stock",
                "name",
                "price.amount",
                "price.currency",
                "sku"
            ],
            "{label}"
        );
        for currency in ["EU", "EURO", "E1R"] {
            let mut body = product_body("X", 0);
            body["price"]["currency"] = json!(currency);
            let r = t.post_as("/products", &t.admin, body).await;
            assert_eq!(
                r.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{label}: {currency}"
            );
        }
    }
}

async fn walk(t: &TestProduct, query: &str, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("/products?limit={limit}{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = t.get(&path).await;
        assert_eq!(r.status(), StatusCode::OK, "{}: {path}", t.label());
        let page: Value = r.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        all.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return all,
        }
    }
    panic!("pagination never ended");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn skus(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|p| p["sku"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn pagination_walks_every_product_once_and_filters_narrow_it() {
    for db in kit::testing::databases().await {
        let t = spawn(db).await;
        let label = t.label();
        let mut created = Vec::new();
        for i in 0..23 {
            let mut body = product_body(&format!("P{i:02}"), 1);
            body["category"] = json!(if i % 3 == 0 { "tools" } else { "toys" });
            body["price"]["amount"] = json!(i * 100);
            body["name"] = json!(if i % 5 == 0 {
                format!("Blue WIDGET {i}")
            } else {
                format!("Item {i}")
            });
            body["description"] = json!(if i == 7 { "50% off" } else { "plain" });
            let r = t.post_as("/products", &t.admin, body).await;
            assert_eq!(r.status(), StatusCode::CREATED);
            created.push(format!("P{i:02}"));
        }
        let deleted = t.create("GONE", 1).await;
        let r = t
            .send(
                Method::DELETE,
                &format!("/products/{}", deleted["id"].as_str().unwrap()),
                Some(&t.admin),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);

        let reference = skus(&walk(&t, "", 100).await);
        assert_eq!(
            sorted(reference.clone()),
            created,
            "{label}: every live product"
        );
        for limit in [1, 7, 23] {
            let all = skus(&walk(&t, "", limit).await);
            let unique: HashSet<&String> = all.iter().collect();
            assert_eq!(
                unique.len(),
                all.len(),
                "{label}: limit {limit}: no duplicates"
            );
            assert_eq!(
                all, reference,
                "{label}: limit {limit}: none missed, same order"
            );
        }

        let tools = walk(&t, "&category=tools", 2).await;
        assert_eq!(
            sorted(skus(&tools)),
            ["P00", "P03", "P06", "P09", "P12", "P15", "P18", "P21"],
            "{label}"
        );
        let mid = walk(&t, "&min_price=500&max_price=900", 2).await;
        assert_eq!(
            sorted(skus(&mid)),
            ["P05", "P06", "P07", "P08", "P09"],
            "{label}"
        );
        assert_eq!(
            skus(&walk(&t, "&sku=P07", 5).await),
            ["P07"],
            "{label}: exact sku"
        );
        assert!(
            walk(&t, "&sku=P0", 5).await.is_empty(),
            "{label}: sku is not a prefix"
        );
        let both = walk(&t, "&category=tools&min_price=500&max_price=900", 10).await;
        assert_eq!(sorted(skus(&both)), ["P06", "P09"], "{label}");
        let found = walk(&t, "&q=widget", 2).await;
        assert_eq!(
            sorted(skus(&found)),
            ["P00", "P05", "P10", "P15", "P20"],
            "{label}: case-insensitive"
        );
        let pct = walk(&t, "&q=50%25", 10).await;
        assert_eq!(sorted(skus(&pct)), ["P07"], "{label}: % is literal");

        let r = t.get("/products").await;
        let page: Value = r.json().await.unwrap();
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            20,
            "{label}: default limit"
        );
        for bad in [
            "?cursor=not-ours",
            "?limit=0",
            "?limit=101",
            "?min_price=cheap",
        ] {
            let r = t.get(&format!("/products{bad}")).await;
            assert_eq!(
                r.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{label}: {bad}"
            );
            problem(r).await;
        }
    }
}
