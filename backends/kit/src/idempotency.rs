//! `Idempotency-Key` for requests that are not idempotent by themselves (POST and PATCH),
//! with Stripe's semantics, as a tower layer over a service's routes:
//!
//! ```ignore
//! let app = Router::new()
//!     .route("/orders", post(create_order))
//!     .layer(IdempotencyLayer::new(db.clone()).scope(CallerScope).required(true));
//! kit::idempotency::spawn_purger(db, Duration::from_secs(3600));
//! ```
//!
//! - No key: the request passes untouched, or is refused with 400 when the layer is
//!   [`required`](IdempotencyLayer::required). A key is 1–255 visible ASCII characters.
//! - Keys belong to a scope (the caller, see [`IdempotencyScope`]); two callers never share a
//!   key. The stored fingerprint is a SHA-256 over the method, path and query, content type
//!   and body, so the same key sent to another endpoint or with another body is refused.
//! - First request with a key: a row is inserted *in flight* (no status) with a lease; the
//!   handler runs; a 2xx–4xx answer is stored and replayed to every later request with the
//!   same key and fingerprint (with `Idempotency-Replayed: true`). A 5xx answer, a 408, 409
//!   or 429 (each says "try again": the resource was busy or in another state for now), or a
//!   handler that panicked releases the key: the client's retry runs the handler again, as
//!   Stripe keeps neither 5xx nor answers to requests that conflicted with others.
//! - Same key, other fingerprint: 422. Same key while the first request runs: 409 with
//!   `Retry-After`.
//!
//! Exactly one request per key reaches the handler, on both databases: the claim is a plain
//! `INSERT` (the primary key refuses the second), and taking over an expired lease is an
//! `UPDATE … WHERE locked_until < now` whose rows-affected count says who won.
//!
//! The handler runs in a task of its own: a client that hangs up does not cancel it, and its
//! answer is still stored, so the client's retry gets the replay instead of running the
//! command twice. What the layer cannot cover, and how it bounds it:
//!
//! - A process that dies mid-request leaves its key in flight: requests get 409 until the
//!   [lease](IdempotencyLayer::lease) (60 s by default) expires, then one takes it over and
//!   runs the handler again. The lease must outlast the slowest handler: a handler still
//!   running when its lease is taken over runs twice (its late answer is not stored, the
//!   lock token forbids it). Leases compare the clocks of the service's instances, so their
//!   skew shortens or lengthens a lease by as much.
//! - A handler that commits and then fails to have its answer stored (database down between
//!   the two) leaves its key in flight until the lease expires, then runs again. Handlers
//!   should make their effect one transaction, so that a run that was cut short left nothing.
//!
//! Keys are kept at least [`RETENTION`] (24 h): services call [`purge_expired`]
//! periodically, or start [`spawn_purger`] once.

use crate::hex;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sha2::{Digest, Sha256};
use sqlx::Row;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use crate::db::{is_unique_violation, new_id, now_ms, Db, DbError};
use crate::problem::{error_chain, Problem};

/// The request header carrying the client's key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header (`true`) that marks an answer replayed from storage.
pub const IDEMPOTENCY_REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");

/// How long a key is kept at least (Stripe keeps keys 24 hours).
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest key accepted, as Stripe's.
pub const MAX_KEY_LEN: usize = 255;

/// The response headers stored and replayed with the body; the others (`date`,
/// `content-length`, hop-by-hop, tracing) describe one transmission, not the answer.
const REPLAYED_HEADERS: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::CONTENT_LANGUAGE,
    header::CONTENT_LOCATION,
    header::LOCATION,
    header::ETAG,
    header::LAST_MODIFIED,
    header::LINK,
];

/// Whose keys a request's key is among: keys are unique per scope, so two callers using
/// the same key never see each other's answers.
///
/// A service with authenticated callers returns the verified subject (running its identity
/// extractor on `parts`, which takes `&mut Parts`); an error is answered as is, before the
/// key is looked at (e.g. 401). [`Anonymous`] is for endpoints without callers.
#[async_trait::async_trait]
pub trait IdempotencyScope: Send + Sync + 'static {
    /// The scope of this request's key.
    async fn scope(&self, parts: &mut Parts) -> Result<String, Problem>;
}

/// The scope of anonymous endpoints: every caller shares the one scope `anonymous`, so a key
/// is protected only by being unguessable. Use a caller's scope wherever there is a caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anonymous;

#[async_trait::async_trait]
impl IdempotencyScope for Anonymous {
    async fn scope(&self, _parts: &mut Parts) -> Result<String, Problem> {
        Ok("anonymous".to_owned())
    }
}

/// Keys belong to the caller's verified `sub`: two callers never share a key, and a request
/// without a valid token is answered 401 (with `WWW-Authenticate`) before its key is looked
/// at.
#[derive(Clone)]
pub struct CallerScope(pub Arc<crate::Verifier>);

#[async_trait::async_trait]
impl IdempotencyScope for CallerScope {
    async fn scope(&self, parts: &mut Parts) -> Result<String, Problem> {
        use axum::extract::FromRequestParts;
        let id = crate::Identity::from_request_parts(parts, &self.0).await?;
        Ok(id.user_id)
    }
}

/// The layer: put it on the routes whose POST and PATCH requests take keys. Other methods
/// pass untouched.
#[derive(Clone)]
pub struct IdempotencyLayer {
    config: Config,
}

#[derive(Clone)]
struct Config {
    /// Where keys and answers are kept (`kit_idempotency`).
    db: Db,
    /// Whose keys a request's key is among.
    scope: Arc<dyn IdempotencyScope>,
    /// Whether a POST or PATCH without a key is refused (400).
    required: bool,
    /// How long a request holds its key before another may take it over.
    lease: Duration,
    /// The largest request body buffered for the fingerprint (413 beyond).
    max_request_body: usize,
    /// The largest answer body stored for replay.
    max_response_body: usize,
    /// HMAC key for the stored request fingerprint; `None` = plain SHA-256.
    fingerprint_key: Option<Arc<Vec<u8>>>,
}

impl IdempotencyLayer {
    /// Keys in `db`, the [`Anonymous`] scope, keys optional, a 60 s lease, request and
    /// response bodies up to 1 MiB.
    pub fn new(db: Db) -> IdempotencyLayer {
        IdempotencyLayer {
            config: Config {
                db,
                scope: Arc::new(Anonymous),
                required: false,
                lease: Duration::from_secs(60),
                max_request_body: 1 << 20,
                max_response_body: 1 << 20,
                fingerprint_key: None,
            },
        }
    }

    /// Scopes keys with `scope` (the caller's identity, usually).
    pub fn scope(mut self, scope: impl IdempotencyScope) -> IdempotencyLayer {
        self.config.scope = Arc::new(scope);
        self
    }

    /// Stores request fingerprints as HMAC-SHA256 under `key` instead of plain SHA-256. Set
    /// it whenever request bodies carry secrets (card numbers, passwords): an unkeyed hash
    /// of a low-entropy secret can be reversed by guessing. The key must stay the same
    /// across restarts (a new key makes retries of earlier requests look different: 422).
    pub fn fingerprint_key(mut self, key: impl Into<Vec<u8>>) -> IdempotencyLayer {
        self.config.fingerprint_key = Some(Arc::new(key.into()));
        self
    }

    /// Refuses POST and PATCH requests without a key with 400 when `required`.
    pub fn required(mut self, required: bool) -> IdempotencyLayer {
        self.config.required = required;
        self
    }

    /// How long a request holds its key: after that, a retry takes the key over and runs
    /// the handler again, so it must outlast the slowest handler.
    pub fn lease(mut self, lease: Duration) -> IdempotencyLayer {
        self.config.lease = lease;
        self
    }

    /// The largest request body (413 beyond) and the largest answer body stored (an answer
    /// beyond it is not stored: the key is released and the client gets 500).
    pub fn max_body(mut self, request: usize, response: usize) -> IdempotencyLayer {
        self.config.max_request_body = request;
        self.config.max_response_body = response;
        self
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Idempotency<S> {
        Idempotency {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}

/// The service [`IdempotencyLayer`] wraps routes in.
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Service<Request> for Idempotency<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The clone that was polled ready serves this request.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        let config = self.config.clone();
        Box::pin(async move { Ok(handle(config, ready, req).await) })
    }
}

async fn handle<S>(config: Arc<Config>, inner: S, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    if !matches!(*req.method(), Method::POST | Method::PATCH) {
        return call(inner, req).await;
    }
    let key = match idempotency_key(req.headers()) {
        Ok(Some(key)) => key,
        Ok(None) if !config.required => return call(inner, req).await,
        Ok(None) => {
            return Problem::bad_request("this endpoint requires an Idempotency-Key header")
                .into_response()
        }
        Err(bad) => return Problem::bad_request(bad.to_string()).into_response(),
    };
    let (mut parts, body) = req.into_parts();
    let scope = match config.scope.scope(&mut parts).await {
        Ok(scope) => scope,
        Err(problem) => return problem.into_response(),
    };
    let body = match read_request_body(&parts.headers, body, config.max_request_body).await {
        Ok(body) => body,
        Err(problem) => return problem.into_response(),
    };
    let hash = fingerprint(
        &parts,
        &body,
        config.fingerprint_key.as_deref().map(Vec::as_slice),
    );
    let claim = match claim(&config, scope, key, hash).await {
        Ok(Claimed::Owner(claim)) => claim,
        Ok(Claimed::Answered(resp)) => return resp,
        Err(e) => return Problem::from(e).into_response(),
    };
    run(
        config,
        inner,
        Request::from_parts(parts, Body::from(body)),
        claim,
    )
    .await
}

async fn call<S>(inner: S, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    match inner.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// Why a request's key was refused (answered 400).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum BadKey {
    #[error("send one Idempotency-Key header, not several")]
    Repeated,
    #[error("an Idempotency-Key is 1 to {MAX_KEY_LEN} visible ASCII characters")]
    Malformed,
}

/// The request's key, `None` when absent.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, BadKey> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BadKey::Repeated);
    }
    let bytes = value.as_bytes();
    let visible = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    if bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !visible {
        return Err(BadKey::Malformed);
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

async fn read_request_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE).detail(format!(
            "a request with an Idempotency-Key carries at most {limit} bytes"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(Problem::bad_request("the request body could not be read")),
    }
}

/// SHA-256 (HMAC-SHA256 under `key`, when given) over the method, path and query, content
/// type and body, each length-prefixed so that no two requests run together into the same
/// bytes.
fn fingerprint(parts: &Parts, body: &[u8], key: Option<&[u8]>) -> String {
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or_else(|| parts.uri.path());
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let fields = [
        parts.method.as_str().as_bytes(),
        target.as_bytes(),
        content_type,
        body,
    ];
    match key {
        Some(key) => {
            use hmac::Mac;
            let mut mac =
                hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
            for field in fields {
                mac.update(&(field.len() as u64).to_be_bytes());
                mac.update(field);
            }
            hex(&mac.finalize().into_bytes())
        }
        None => {
            let mut hash = Sha256::new();
            for field in fields {
                hash.update((field.len() as u64).to_be_bytes());
                hash.update(field);
            }
            hex(&hash.finalize())
        }
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let pairs = s.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// A key this request holds: only the holder of `token` may store an answer or release it.
#[derive(Clone)]
struct Claim {
    db: Db,
    scope: String,
    key: String,
    token: String,
}

enum Claimed {
    /// This request holds the key: run the handler.
    Owner(Claim),
    /// The key's answer for this request: a replay, 409 or 422.
    Answered(Response),
}

/// The key's row as another request left it.
struct Stored {
    request_hash: String,
    status: Option<i64>,
    headers: Option<String>,
    body: Option<String>,
    body_encoding: Option<String>,
    locked_until: i64,
}

/// Claims the key, or answers from what is stored. A row released between the `INSERT`
/// and the `SELECT`, or taken over by another between the `SELECT` and the `UPDATE`, makes
/// it look again; after three rounds of that it answers 409.
async fn claim(
    config: &Config,
    scope: String,
    key: String,
    hash: String,
) -> Result<Claimed, DbError> {
    let pool = config.db.pool();
    let token = new_id();
    let lease = i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX / 2);
    for _ in 0..3 {
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO kit_idempotency (scope, idem_key, request_hash, lock_token, created_at, locked_until) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&scope)
        .bind(&key)
        .bind(&hash)
        .bind(&token)
        .bind(now)
        .bind(now + lease)
        .execute(pool)
        .await;
        match inserted {
            Ok(_) => {
                return Ok(Claimed::Owner(Claim {
                    db: config.db.clone(),
                    scope,
                    key,
                    token,
                }))
            }
            Err(e) if is_unique_violation(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(stored) = load(&config.db, &scope, &key).await? else {
            continue;
        };
        if stored.request_hash != hash {
            return Ok(Claimed::Answered(reused().into_response()));
        }
        if stored.status.is_some() {
            return Ok(Claimed::Answered(replay(stored)));
        }
        let now = now_ms();
        if stored.locked_until >= now {
            return Ok(Claimed::Answered(in_flight().into_response()));
        }
        let taken = sqlx::query(
            "UPDATE kit_idempotency SET lock_token = $3, created_at = $4, locked_until = $5 \
             WHERE scope = $1 AND idem_key = $2 AND status IS NULL AND locked_until < $4",
        )
        .bind(&scope)
        .bind(&key)
        .bind(&token)
        .bind(now)
        .bind(now + lease)
        .execute(pool)
        .await?
        .rows_affected();
        if taken == 1 {
            tracing::warn!(
                scope,
                key,
                "idempotency key taken over after its lease expired"
            );
            return Ok(Claimed::Owner(Claim {
                db: config.db.clone(),
                scope,
                key,
                token,
            }));
        }
    }
    Ok(Claimed::Answered(in_flight().into_response()))
}

async fn load(db: &Db, scope: &str, key: &str) -> Result<Option<Stored>, DbError> {
    let row = sqlx::query(
        "SELECT request_hash, status, headers, body, body_encoding, locked_until \
         FROM kit_idempotency WHERE scope = $1 AND idem_key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(Stored {
        request_hash: row.try_get("request_hash")?,
        status: row.try_get("status")?,
        headers: row.try_get("headers")?,
        body: row.try_get("body")?,
        body_encoding: row.try_get("body_encoding")?,
        locked_until: row.try_get("locked_until")?,
    }))
}

fn reused() -> Problem {
    Problem::unprocessable(
        "this Idempotency-Key was used with a different request (method, path, content type \
         or body); send a new key with a new request",
    )
    .title("Idempotency-Key reused")
}

fn in_flight() -> Problem {
    Problem::conflict(
        "a request with this Idempotency-Key is still being processed; retry after it finishes",
    )
    .title("Idempotency-Key in use")
    .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
}

/// The stored answer, marked replayed; a row that does not decode is a 500 (logged).
fn replay(stored: Stored) -> Response {
    match decode_answer(stored) {
        Ok(mut resp) => {
            resp.headers_mut()
                .insert(IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true"));
            resp
        }
        Err(why) => {
            let cause = std::io::Error::other(format!("stored idempotent answer: {why}"));
            Problem::internal(&cause).into_response()
        }
    }
}

fn decode_answer(stored: Stored) -> Result<Response, &'static str> {
    let status = stored
        .status
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or("bad status")?;
    let body = stored.body.unwrap_or_default();
    let body = match stored.body_encoding.as_deref() {
        Some("hex") => Bytes::from(unhex(&body).ok_or("bad hex body")?),
        _ => Bytes::from(body),
    };
    let headers: Vec<(String, String)> =
        serde_json::from_str(stored.headers.as_deref().unwrap_or("[]"))
            .map_err(|_| "bad headers")?;
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    for (name, value) in headers {
        let name = HeaderName::try_from(name).map_err(|_| "bad header name")?;
        let value = HeaderValue::try_from(value).map_err(|_| "bad header value")?;
        resp.headers_mut().append(name, value);
    }
    Ok(resp)
}

/// Runs the handler in a task of its own (a client hanging up does not cancel it), in the
/// request's trace, and settles the key with its answer.
async fn run<S>(config: Arc<Config>, inner: S, req: Request, claim: Claim) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let held = claim.clone();
    let task = async move {
        let mut guard = ReleaseOnDrop(Some(claim));
        let resp = call(inner, req).await;
        match guard.0.take() {
            Some(claim) => settle(&config, claim, resp).await,
            None => resp,
        }
    };
    match crate::trace::spawn(task.instrument(tracing::Span::current())).await {
        Ok(resp) => resp,
        Err(e) => {
            // The guard released the key from a task of its own; release it here too, so
            // the client's retry surely finds it free.
            release(held).await;
            Problem::internal(&e).into_response()
        }
    }
}

/// Releases the key when the handler's task unwinds (a panic) or is cancelled (runtime
/// shutdown) before the answer was settled.
struct ReleaseOnDrop(Option<Claim>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let (Some(claim), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(release(claim));
        }
    }
}

/// Whether an answer is kept for replay: not a 5xx, and not 408, 409 or 429, which ask the
/// client to try again later (replaying them would refuse the retry forever — e.g. a void
/// refused with 409 while the payment was still being confirmed).
fn keeps(status: StatusCode) -> bool {
    !status.is_server_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::CONFLICT
        && status != StatusCode::TOO_MANY_REQUESTS
}

/// Stores the answer (or releases the key) and hands the answer on.
async fn settle(config: &Config, claim: Claim, resp: Response) -> Response {
    let status = resp.status();
    if !keeps(status) {
        release(claim).await;
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let body = match Limited::new(body, config.max_response_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            release(claim).await;
            tracing::error!(
                error = %e,
                limit = config.max_response_body,
                "an answer to an idempotent request could not be read for storage; key released"
            );
            return Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
                .detail("the answer could not be kept for replay; it has been logged")
                .into_response();
        }
    };
    if let Err(e) = store(&claim, status, &parts.headers, &body).await {
        tracing::error!(error = %error_chain(&e), scope = claim.scope, key = claim.key,
            "an idempotent answer was not stored; the key stays in flight until its lease expires");
    }
    Response::from_parts(parts, Body::from(body))
}

async fn store(
    claim: &Claim,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), DbError> {
    let kept: Vec<(&str, &str)> = REPLAYED_HEADERS
        .iter()
        .flat_map(|name| {
            headers
                .get_all(name)
                .iter()
                .filter_map(move |v| Some((name.as_str(), v.to_str().ok()?)))
        })
        .collect();
    let headers = serde_json::to_string(&kept).unwrap_or_else(|_| "[]".to_owned());
    let (body, encoding) = match std::str::from_utf8(body) {
        Ok(text) if !text.contains('\0') => (text.to_owned(), "text"),
        _ => (hex(body), "hex"),
    };
    let stored = sqlx::query(
        "UPDATE kit_idempotency SET status = $4, headers = $5, body = $6, body_encoding = $7, \
         lock_token = NULL WHERE scope = $1 AND idem_key = $2 AND lock_token = $3",
    )
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(&claim.token)
    .bind(i32::from(status.as_u16()))
    .bind(headers)
    .bind(body)
    .bind(encoding)
    .execute(claim.db.pool())
    .await?
    .rows_affected();
    if stored == 0 {
        tracing::warn!(
            scope = claim.scope,
            key = claim.key,
            "an idempotent answer came after its lease was taken over; not stored"
        );
    }
    Ok(())
}

/// Deletes the key if this request still holds it, so the client's retry runs again.
async fn release(claim: Claim) {
    let released = sqlx::query(
        "DELETE FROM kit_idempotency WHERE scope = $1 AND idem_key = $2 AND lock_token = $3",
    )
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(&claim.token)
    .execute(claim.db.pool())
    .await;
    if let Err(e) = released {
        tracing::error!(error = %error_chain(&e), scope = claim.scope, key = claim.key,
            "an idempotency key was not released; retries get 409 until its lease expires");
    }
}

/// Deletes the keys created more than `older_than` ago (at least [`RETENTION`], to honour
/// the 24 h promise), except those still held by a request; returns how many went.
pub async fn purge_expired(db: &Db, older_than: Duration) -> Result<u64, DbError> {
    let now = now_ms();
    let age = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let purged = sqlx::query(
        "DELETE FROM kit_idempotency \
         WHERE created_at < $1 AND (status IS NOT NULL OR locked_until < $2)",
    )
    .bind(now.saturating_sub(age))
    .bind(now)
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(purged)
}

/// Purges keys older than [`RETENTION`] now and then `every` after, until the task is
/// aborted; failures are logged and retried at the next round.
pub fn spawn_purger(db: Db, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match purge_expired(&db, RETENTION).await {
                Ok(n) => tracing::debug!(purged = n, "idempotency keys purged"),
                Err(e) => tracing::warn!(error = %error_chain(&e), "idempotency purge failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_255_visible_ascii_characters() {
        let cases: [(&[u8], bool); 7] = [
            (b"a", true),
            (b"order-7f3a_!~", true),
            (&[b'k'; 255], true),
            (b"", false),
            (&[b'k'; 256], false),
            (b"with space", false),
            (b"tab\tkey", false),
        ];
        for (key, ok) in cases {
            let mut h = HeaderMap::new();
            h.insert(
                &IDEMPOTENCY_KEY,
                HeaderValue::from_bytes(key).expect("header value"),
            );
            let got = idempotency_key(&h);
            assert_eq!(got.is_ok(), ok, "{:?}", String::from_utf8_lossy(key));
        }
        let mut twice = HeaderMap::new();
        twice.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        twice.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
        assert_eq!(idempotency_key(&twice), Err(BadKey::Repeated));
        assert_eq!(idempotency_key(&HeaderMap::new()).ok(), Some(None));
    }

    #[test]
    fn the_fingerprint_covers_method_target_content_type_and_body() {
        let parts = |method: &str, uri: &str, ct: &str| {
            let (p, ()) = http::Request::builder()
                .method(method)
                .uri(uri)
                .header(header::CONTENT_TYPE, ct)
                .body(())
                .expect("request")
                .into_parts();
            p
        };
        let base = fingerprint(&parts("POST", "/a?x=1", "application/json"), b"{}", None);
        assert_eq!(
            base,
            fingerprint(&parts("POST", "/a?x=1", "application/json"), b"{}", None)
        );
        for other in [
            fingerprint(&parts("PATCH", "/a?x=1", "application/json"), b"{}", None),
            fingerprint(&parts("POST", "/a?x=2", "application/json"), b"{}", None),
            fingerprint(&parts("POST", "/b?x=1", "application/json"), b"{}", None),
            fingerprint(&parts("POST", "/a?x=1", "text/plain"), b"{}", None),
            fingerprint(&parts("POST", "/a?x=1", "application/json"), b"{ }", None),
        ] {
            assert_ne!(base, other);
        }
        // Keyed: stable under one key, different under another, and not the plain hash.
        let card = br#"{"card_number":"4242424242424242","cvc":"123"}"#;
        let p = parts("POST", "/payment-methods", "application/json");
        let k1 = fingerprint(&p, card, Some(b"key one"));
        assert_eq!(k1, fingerprint(&p, card, Some(b"key one")));
        assert_ne!(k1, fingerprint(&p, card, Some(b"key two")));
        assert_ne!(k1, fingerprint(&p, card, None));
    }

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex(&hex(&bytes)).as_deref(), Some(&bytes[..]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
