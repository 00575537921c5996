//! The Idempotency-Key layer over real sockets, on SQLite and on PostgreSQL: replays, 422
//! and 409, released keys after 5xx and panics, scopes, leases taken over, and purging.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use kit::db::{new_id, now_ms, Db};
use kit::idempotency::{purge_expired, IdempotencyLayer, IdempotencyScope, RETENTION};
use kit::testing::{databases, spawn_app, TestApp};
use kit::{Json, Problem};
use serde_json::{json, Value};
use sqlx::migrate::Migrator;
use sqlx::Row;

static MIGRATIONS: Migrator = sqlx::migrate!("./tests/migrations");

/// How many times each handler ran.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
    /// Counts this call and returns its number (1 for the first).
    fn count(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Creates an order: 201, a `Location`, a fresh id. Sleeps `sleep_ms` from the body first
/// (or `first_sleep_ms` on its first call only), so tests can hold a request in flight.
async fn create(Extension(calls): Extension<Calls>, Json(body): Json<Value>) -> Response {
    let call = calls.count();
    let first_only = body.get("first_sleep_ms").and_then(Value::as_u64);
    let sleep = body
        .get("sleep_ms")
        .and_then(Value::as_u64)
        .or(first_only.filter(|_| call == 1));
    if let Some(ms) = sleep {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let id = new_id();
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/orders/{id}"))],
        axum::Json(json!({ "id": id, "call": call })),
    )
        .into_response()
}

/// Fails with 500 on its first call, creates afterwards.
async fn flaky(calls: Extension<Calls>, body: Json<Value>) -> Response {
    if calls.0.get() == 0 {
        calls.0.count();
        return Problem::unavailable("database hiccup").into_response();
    }
    create(calls, body).await
}

/// Answers 409 ("busy, try again") on its first call, creates afterwards.
async fn busy(calls: Extension<Calls>, body: Json<Value>) -> Response {
    if calls.0.get() == 0 {
        calls.0.count();
        return Problem::conflict("the resource is being changed; try again").into_response();
    }
    create(calls, body).await
}

/// Panics on its first call, creates afterwards.
async fn panics(calls: Extension<Calls>, body: Json<Value>) -> Response {
    if calls.0.get() == 0 {
        calls.0.count();
        panic!("the handler panicked (on purpose, in a test)");
    }
    create(calls, body).await
}

/// The scope is the `x-tenant` header, standing in for a verified caller.
struct Tenant;

#[async_trait::async_trait]
impl IdempotencyScope for Tenant {
    async fn scope(&self, parts: &mut Parts) -> Result<String, Problem> {
        parts
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| Problem::unauthorized("no tenant"))
    }
}

fn router(layer: IdempotencyLayer, calls: Calls) -> Router {
    Router::new()
        .route("/orders", post(create).patch(create).get(create))
        .route("/flaky", post(flaky))
        .route("/busy", post(busy))
        .route("/panics", post(panics))
        .layer(layer)
        .layer(Extension(calls))
}

async fn serve(
    db: &Db,
    layer: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer,
) -> (TestApp, Calls) {
    db.migrate(&MIGRATIONS).await.expect("migrate");
    let calls = Calls::default();
    let layer = layer(IdempotencyLayer::new(db.clone()).scope(Tenant));
    (spawn_app(router(layer, calls.clone())).await, calls)
}

fn request(app: &TestApp, path: &str, key: Option<&str>, body: Value) -> reqwest::RequestBuilder {
    let req = app
        .client
        .post(app.url(path))
        .header("x-tenant", "acme")
        .json(&body);
    match key {
        Some(key) => req.header("idempotency-key", key),
        None => req,
    }
}

/// Status, `Idempotency-Replayed`, `Location`, body.
async fn answer(resp: reqwest::Response) -> (u16, Option<String>, Option<String>, Value) {
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (replayed, location) = (header("idempotency-replayed"), header("location"));
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, replayed, location, body)
}

async fn stored_rows(db: &Db) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM kit_idempotency")
        .fetch_one(db.pool())
        .await
        .expect("count")
        .get("n")
}

#[tokio::test]
async fn the_same_key_and_body_replay_the_first_answer_and_run_the_handler_once() {
    for t in databases().await {
        let (app, calls) = serve(&t.db, |l| l).await;
        let body = json!({ "item": "book", "qty": 2 });
        let first = request(&app, "/orders", Some("k-1"), body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            first.headers()[header::CONTENT_TYPE],
            "application/json",
            "{}",
            t.label()
        );
        let first = answer(first).await;
        assert_eq!(first.0, 201, "{}", t.label());
        assert_eq!(
            first.1,
            None,
            "{}: a first answer is not a replay",
            t.label()
        );
        for _ in 0..2 {
            let again = request(&app, "/orders", Some("k-1"), body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(again.headers()[header::CONTENT_TYPE], "application/json");
            let again = answer(again).await;
            assert_eq!(again.0, 201, "{}", t.label());
            assert_eq!(again.1.as_deref(), Some("true"), "{}", t.label());
            assert_eq!(again.2, first.2, "{}: Location is replayed", t.label());
            assert_eq!(again.3, first.3, "{}: the body is replayed", t.label());
        }
        assert_eq!(calls.get(), 1, "{}", t.label());
        let status: i64 = sqlx::query("SELECT status FROM kit_idempotency WHERE idem_key = 'k-1'")
            .fetch_one(t.db.pool())
            .await
            .unwrap()
            .get("status");
        assert_eq!(status, 201, "{}", t.label());
    }
}

#[tokio::test]
async fn the_same_key_with_another_body_method_or_path_is_422() {
    for t in databases().await {
        let (app, calls) = serve(&t.db, |l| l).await;
        let body = json!({ "item": "book" });
        let first = request(&app, "/orders", Some("k-1"), body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), 201, "{}", t.label());
        let other_body = request(&app, "/orders", Some("k-1"), json!({ "item": "pen" }));
        let other_method = app
            .client
            .patch(app.url("/orders"))
            .header("x-tenant", "acme")
            .header("idempotency-key", "k-1")
            .json(&body);
        let other_path = request(&app, "/orders?dry_run=1", Some("k-1"), body.clone());
        for req in [other_body, other_method, other_path] {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 422, "{}", t.label());
            assert_eq!(
                resp.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            let problem: Value = resp.json().await.unwrap();
            assert_eq!(problem["title"], "Idempotency-Key reused", "{}", t.label());
        }
        assert_eq!(calls.get(), 1, "{}", t.label());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_reach_the_handler_once_and_the_others_get_409() {
    for t in databases().await {
        let (app, calls) = serve(&t.db, |l| l).await;
        let app = Arc::new(app);
        let body = json!({ "item": "book", "sleep_ms": 800 });
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (app, body) = (app.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let resp = request(&app, "/orders", Some("dup"), body)
                    .send()
                    .await
                    .unwrap();
                let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
                (answer(resp).await, retry_after)
            }));
        }
        let mut created = Vec::new();
        let mut in_use = 0;
        for task in tasks {
            match task.await.unwrap() {
                ((201, None, _, body), _) => created.push(body),
                ((409, None, _, problem), Some(_)) => {
                    assert_eq!(problem["title"], "Idempotency-Key in use");
                    in_use += 1;
                }
                other => panic!("{}: unexpected {other:?}", t.label()),
            }
        }
        assert_eq!((created.len(), in_use), (1, 7), "{}", t.label());
        assert_eq!(calls.get(), 1, "{}", t.label());
        let after = answer(
            request(&app, "/orders", Some("dup"), body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((after.0, after.1.as_deref()), (201, Some("true")));
        assert_eq!(after.3, created[0], "{}", t.label());
    }
}

#[tokio::test]
async fn a_5xx_answer_is_not_stored_and_the_retry_runs_the_handler_again() {
    for t in databases().await {
        let (app, calls) = serve(&t.db, |l| l).await;
        let body = json!({ "item": "book" });
        let failed = request(&app, "/flaky", Some("k-5xx"), body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(failed.status(), 503, "{}", t.label());
        assert_eq!(
            stored_rows(&t.db).await,
            0,
            "{}: the key is released",
            t.label()
        );
        let retried = answer(
            request(&app, "/flaky", Some("k-5xx"), body.clone())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((retried.0, retried.1), (201, None), "{}", t.label());
        let replayed = answer(
            request(&app, "/flaky", Some("k-5xx"), body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(replayed.1.as_deref(), Some("true"), "{}", t.label());
        assert_eq!(replayed.3, retried.3, "{}", t.label());
        assert_eq!(calls.get(), 2, "{}", t.label());
    }
}

/// A 409 says "not now": replaying it would refuse the client's retry forever, so it is not
/// stored (as Stripe keeps no answer to a request that conflicted).
#[tokio::test]
async fn a_409_answer_is_not_stored_and_the_retry_runs_the_handler_again() {
    for t in databases().await {
        let (app, calls) = serve(&t.db, |l| l).await;
        let body = json!({ "item": "book" });
        let send = || request(&app, "/busy", Some("k-409"), body.clone()).send();
        assert_eq!(send().await.unwrap().status(), 409, "{}", t.label());
        assert_eq!(stored_rows(&t.db).await, 0, "{}: released", t.label());
        let retried = answer(send().await.unwrap()).await;
        assert_eq!((retried.0, retried.1), (201, None), "{}", t.label());
        assert_eq!(calls.get(), 2, "{}", t.label());
    }
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_releases_its_key() {
    for t in databases().await {
        let (app, calls) = serve(&t.db, |l| l).await;
        let body = json!({ "item": "book" });
        let failed = request(&app, "/panics", Some("k-p"), body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(failed.status(), 500, "{}", t.label());
        let retried = request(&app, "/panics", Some("k-p"), body)
            .send()
            .await
            .unwrap();
        assert_eq!(retried.status(), 201, "{}", t.label());
        assert_eq!(calls.get(), 2, "{}", t.label());
    }
}

#[tokio::test]
async fn different_scopes_do_not_share_keys() {
    for t in databases().await {
        let (app, calls) = serve(&t.db, |l| l).await;
        let as_tenant = |tenant: &'static str, body: Value| {
            app.client
                .post(app.url("/orders"))
                .header("x-tenant", tenant)
                .header("idempotency-key", "shared")
                .json(&body)
                .send()
        };
        let a = answer(as_tenant("acme", json!({ "item": "book" })).await.unwrap()).await;
        let b = answer(
            as_tenant("globex", json!({ "item": "book" }))
                .await
                .unwrap(),
        )
        .await;
        let c = answer(
            as_tenant("initech", json!({ "item": "pen" }))
                .await
                .unwrap(),
        )
        .await;
        for got in [&a, &b, &c] {
            assert_eq!((got.0, got.1.as_deref()), (201, None), "{}", t.label());
        }
        assert_ne!(a.3["id"], b.3["id"], "{}", t.label());
        assert_eq!(calls.get(), 3, "{}", t.label());
        let no_scope = app
            .client
            .post(app.url("/orders"))
            .header("idempotency-key", "shared")
            .json(&json!({ "item": "book" }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            no_scope.status(),
            401,
            "{}: the scope's refusal is the answer",
            t.label()
        );
        assert_eq!(calls.get(), 3, "{}", t.label());
    }
}

#[tokio::test]
async fn without_a_key_the_handler_runs_every_time_and_other_methods_pass() {
    for t in databases().await {
        let (app, calls) = serve(&t.db, |l| l).await;
        for _ in 0..3 {
            let resp = request(&app, "/orders", None, json!({ "item": "book" }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201, "{}", t.label());
        }
        for _ in 0..2 {
            let resp = app
                .client
                .get(app.url("/orders"))
                .header("idempotency-key", "k-get")
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.headers().get("idempotency-replayed"), None);
        }
        assert_eq!(calls.get(), 5, "{}", t.label());
        assert_eq!(stored_rows(&t.db).await, 0, "{}", t.label());
    }
}

#[tokio::test]
async fn a_required_key_must_be_present_and_well_formed_and_bodies_are_bounded() {
    let t = kit::testing::sqlite().await;
    let (app, calls) = serve(&t.db, |l| l.required(true).max_body(64, 1 << 20)).await;
    let long = "k".repeat(256);
    for (key, status) in [
        (None, 400),
        (Some(""), 400),
        (Some(long.as_str()), 400),
        (Some("with space"), 400),
        (Some(&long[..255]), 201),
    ] {
        let resp = request(&app, "/orders", key, json!({ "item": "book" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{key:?}");
    }
    let big = json!({ "item": "x".repeat(100) });
    let resp = request(&app, "/orders", Some("big"), big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(calls.get(), 1);
}

/// The first request outlives its 300 ms lease: a retry takes the key over and answers
/// first; the first request's late answer reaches its client but is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_is_taken_over_and_the_late_answer_is_not_stored() {
    for t in databases().await {
        let (app, calls) = serve(&t.db, |l| l.lease(Duration::from_millis(300))).await;
        let app = Arc::new(app);
        let body = json!({ "item": "book", "first_sleep_ms": 1500 });
        let send = |app: Arc<TestApp>, body: Value| async move {
            let resp = request(&app, "/orders", Some("k-lease"), body);
            answer(resp.send().await.unwrap()).await
        };
        let slow = tokio::spawn(send(app.clone(), body.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let early = send(app.clone(), body.clone()).await;
        assert_eq!(early.0, 409, "{}: the lease still holds", t.label());
        tokio::time::sleep(Duration::from_millis(600)).await;
        let taken = send(app.clone(), body.clone()).await;
        assert_eq!((taken.0, taken.1.as_deref()), (201, None), "{}", t.label());
        assert!(
            !slow.is_finished(),
            "{}: the first request still runs",
            t.label()
        );
        let late = slow.await.unwrap();
        assert_eq!((late.0, late.1), (201, None), "{}", t.label());
        assert_ne!(late.3["id"], taken.3["id"], "{}", t.label());
        assert_eq!(calls.get(), 2, "{}", t.label());
        let replay = send(app.clone(), body).await;
        assert_eq!(replay.1.as_deref(), Some("true"), "{}", t.label());
        assert_eq!(
            replay.3,
            taken.3,
            "{}: the answer of the request that held the key",
            t.label()
        );
    }
}

#[tokio::test]
async fn purge_removes_only_keys_older_than_the_retention() {
    for t in databases().await {
        let (app, calls) = serve(&t.db, |l| l).await;
        for key in ["old", "new"] {
            let resp = request(&app, "/orders", Some(key), json!({ "item": "book" }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201);
        }
        let day_ago = now_ms() - RETENTION.as_millis() as i64 - 60_000;
        sqlx::query("UPDATE kit_idempotency SET created_at = $1 WHERE idem_key = 'old'")
            .bind(day_ago)
            .execute(t.db.pool())
            .await
            .unwrap();
        // An old key whose request still holds its lease stays.
        sqlx::query(
            "INSERT INTO kit_idempotency (scope, idem_key, request_hash, lock_token, created_at, locked_until) \
             VALUES ('acme', 'held', 'h', 't', $1, $2)",
        )
        .bind(day_ago)
        .bind(now_ms() + 60_000)
        .execute(t.db.pool())
        .await
        .unwrap();
        assert_eq!(
            purge_expired(&t.db, RETENTION).await.unwrap(),
            1,
            "{}",
            t.label()
        );
        let keys: Vec<String> =
            sqlx::query("SELECT idem_key FROM kit_idempotency ORDER BY idem_key")
                .fetch_all(t.db.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.get("idem_key"))
                .collect();
        assert_eq!(keys, ["held", "new"], "{}", t.label());
        let new = answer(
            request(&app, "/orders", Some("new"), json!({ "item": "book" }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let old = answer(
            request(&app, "/orders", Some("old"), json!({ "item": "book" }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(new.1.as_deref(), Some("true"), "{}", t.label());
        assert_eq!(
            (old.0, old.1),
            (201, None),
            "{}: a purged key is new again",
            t.label()
        );
        assert_eq!(calls.get(), 3, "{}", t.label());
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_does_not_cancel_the_handler_and_its_retry_gets_the_answer() {
    for t in databases().await {
        let (app, calls) = serve(&t.db, |l| l).await;
        let body = json!({ "item": "book", "sleep_ms": 500 });
        let gave_up = request(&app, "/orders", Some("k-gone"), body.clone())
            .timeout(Duration::from_millis(100))
            .send()
            .await;
        assert!(gave_up.is_err(), "{}: the client timed out", t.label());
        tokio::time::sleep(Duration::from_millis(900)).await;
        let retry = answer(
            request(&app, "/orders", Some("k-gone"), body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (retry.0, retry.1.as_deref()),
            (201, Some("true")),
            "{}",
            t.label()
        );
        assert_eq!(calls.get(), 1, "{}", t.label());
    }
}
