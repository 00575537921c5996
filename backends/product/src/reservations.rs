//! Reservations: stock held for an order between "placed" and "paid".
//!
//! - **Reserve** is all-or-nothing in one transaction: per item (in sku order, so two
//!   multi-item reservations lock rows in the same order and cannot deadlock on
//!   PostgreSQL) a conditional `UPDATE inventory SET reserved = reserved + qty WHERE sku = …
//!   AND on_hand - reserved >= qty`, checked by rows affected; one short item rolls back
//!   everything. Idempotent per `order_id` (its primary key): the same items again answer
//!   200 with the stored reservation; other items for a known `order_id` are 409.
//! - **Commit** (`on_hand -= qty, reserved -= qty`), **release** (`reserved -= qty`) and
//!   **expiry** are conditional status transitions out of `reserved`
//!   (`UPDATE reservations SET status = … WHERE order_id = … AND status = 'reserved'`), so of
//!   any two racing transitions exactly one moves the stock, and repeating one is a no-op.
//! - A reservation lives `reservation_ttl`; the [`Sweeper`] expires overdue ones and gives
//!   their stock back. Committing an overdue reservation is 409 even before the sweeper ran.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kit::db::now_ms;
use kit::openapi::ProblemBody;
use kit::{Db, Identity, Json, OutboxWaker};
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use crate::error::{Error, Fields};
use crate::{events, inventory, require, AppState, RESERVE};

/// One line of a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Item {
    /// The product's sku.
    pub sku: String,
    /// Units, at least 1.
    pub qty: i64,
}

impl Item {
    /// From a row with `sku` and `qty`.
    pub fn from_row(r: &sqlx::any::AnyRow) -> Result<Item, sqlx::Error> {
        Ok(Item {
            sku: r.try_get("sku")?,
            qty: r.try_get("qty")?,
        })
    }
}

/// A reservation as `GET /inventory/reservations/{order_id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "order_id": "0193a5f2-8d00-7b4c-a1b2-c3d4e5f60718", "status": "reserved",
    "items": [{"sku": "MUG-001", "qty": 2}], "expires_at": 1733400900000_i64
}))]
pub struct Reservation {
    /// The order it holds stock for (the caller's id; unique).
    pub order_id: String,
    /// `reserved` (holds stock), `committed` (stock shipped), `released` (given back by the
    /// caller) or `expired` (given back by the sweeper).
    pub status: String,
    /// Lines in sku order.
    pub items: Vec<Item>,
    /// Unix ms after which a `reserved` reservation is no longer committable.
    pub expires_at: i64,
}

/// `POST /inventory/reservations`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "order_id": "0193a5f2-8d00-7b4c-a1b2-c3d4e5f60718", "items": [{"sku": "MUG-001", "qty": 2}]
}))]
pub struct NewReservation {
    /// The caller's id for what the stock is held for; reserving it again with the same
    /// items answers the stored reservation.
    order_id: String,
    /// 1 to 100 lines, one per sku.
    items: Vec<Item>,
}

/// The most lines one reservation may have.
pub const MAX_ITEMS: usize = 100;

fn check(req: &NewReservation) -> Result<Vec<Item>, Error> {
    let mut f = Fields::default();
    if req.order_id.trim().is_empty() || req.order_id.len() > 200 {
        f.push("order_id", "must be 1 to 200 characters");
    }
    if req.items.is_empty() || req.items.len() > MAX_ITEMS {
        f.push("items", format!("must have 1 to {MAX_ITEMS} lines"));
    }
    if req.items.iter().any(|i| i.qty < 1 || i.qty > 1_000_000) {
        f.push("items.qty", "must be 1 to 1000000");
    }
    if req
        .items
        .iter()
        .any(|i| i.sku.is_empty() || i.sku.len() > 64)
    {
        f.push("items.sku", "must be 1 to 64 characters");
    }
    let mut items = req.items.clone();
    items.sort_by(|a, b| a.sku.cmp(&b.sku));
    if items.windows(2).any(|w| w[0].sku == w[1].sku) {
        f.push("items", "each sku may appear once");
    }
    f.finish()?;
    Ok(items)
}

/// `POST /inventory/reservations` (`inventory:reserve` or admin) → 201 with the
/// reservation; 200 with the stored one when `order_id` was reserved before with the same
/// items; 409 when with other items; 409 out-of-stock (problem `type`
/// [`crate::error::OUT_OF_STOCK`], `sku` extension) when any line is short, reserving
/// nothing; 422 when a sku is unknown or deleted.
#[utoipa::path(post, path = "/inventory/reservations", operation_id = "reserveStock", tag = "inventory",
    summary = "Hold stock for an order (inventory:reserve or admin)",
    security(("bearer" = [])),
    request_body = NewReservation,
    responses(
        (status = 201, description = "Reserved", body = Reservation),
        (status = 200, description = "Reserved before with the same items", body = Reservation),
        (status = 409, description = "Reserved before with other items, or a line is out of stock (nothing reserved)", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn reserve(
    State(s): State<AppState>,
    id: Identity,
    Json(req): Json<NewReservation>,
) -> Result<Response, Error> {
    require(&id, RESERVE)?;
    let items = check(&req)?;
    let now = now_ms();
    let expires_at = now + s.settings.reservation_ttl.as_millis() as i64;
    let mut tx = s.db.begin().await?;
    let created = sqlx::query(
        "INSERT INTO reservations (order_id, status, expires_at, created_at, updated_at) \
         VALUES ($1, 'reserved', $2, $3, $3) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(&req.order_id)
    .bind(expires_at)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if created != 1 {
        tx.rollback().await?;
        return replay(&s.db, &req.order_id, &items).await;
    }
    check_known(&mut tx, &items).await?;
    for item in &items {
        take(&mut tx, &req.order_id, item, now).await?;
    }
    let reservation = Reservation {
        order_id: req.order_id,
        status: "reserved".into(),
        items,
        expires_at,
    };
    let fact = events::ReservationChanged {
        order_id: &reservation.order_id,
        items: &reservation.items,
        expires_at: Some(expires_at),
        reason: None,
        at: now,
    };
    events::record(&mut tx, "inventory.reserved", &fact).await?;
    tx.commit().await?;
    s.outbox.wake();
    Ok((StatusCode::CREATED, Json(reservation)).into_response())
}

/// The answer to a repeated reservation of `order_id`.
async fn replay(db: &Db, order_id: &str, items: &[Item]) -> Result<Response, Error> {
    let existing = load(db, order_id)
        .await?
        .ok_or_else(|| Error::Invariant(format!("reservation {order_id} vanished")))?;
    if existing.items != items {
        return Err(Error::Conflict(format!(
            "order {order_id} has a reservation with other items already"
        )));
    }
    Ok((StatusCode::OK, Json(existing)).into_response())
}

/// 422 naming every sku that is not a live product.
async fn check_known(tx: &mut Transaction<'static, Any>, items: &[Item]) -> Result<(), Error> {
    let marks = (1..=items.len())
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT sku FROM products WHERE deleted_at IS NULL AND sku IN ({marks})");
    let mut q = sqlx::query(&sql);
    for i in items {
        q = q.bind(&i.sku);
    }
    let known: Vec<String> = q
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get("sku"))
        .collect::<Result<_, _>>()?;
    let unknown: Vec<&str> = items
        .iter()
        .map(|i| i.sku.as_str())
        .filter(|sku| !known.iter().any(|k| k == sku))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(Error::field(
            "items.sku",
            format!("unknown sku: {}", unknown.join(", ")),
        ))
    }
}

/// Reserves one line inside `tx`, or fails (and the caller's transaction rolls back).
async fn take(
    tx: &mut Transaction<'static, Any>,
    order_id: &str,
    item: &Item,
    now: i64,
) -> Result<(), Error> {
    let taken = sqlx::query(
        "UPDATE inventory SET reserved = reserved + $1, updated_at = $2 \
         WHERE sku = $3 AND on_hand - reserved >= $1",
    )
    .bind(item.qty)
    .bind(now)
    .bind(&item.sku)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if taken != 1 {
        return Err(Error::OutOfStock {
            sku: item.sku.clone(),
        });
    }
    sqlx::query("INSERT INTO reservation_items (order_id, sku, qty) VALUES ($1, $2, $3)")
        .bind(order_id)
        .bind(&item.sku)
        .bind(item.qty)
        .execute(&mut **tx)
        .await?;
    inventory::note_taken(tx, &item.sku, item.qty, now).await?;
    Ok(())
}

/// The reservation of `order_id`, if any.
pub async fn load(db: &Db, order_id: &str) -> Result<Option<Reservation>, Error> {
    let Some(row) = sqlx::query("SELECT status, expires_at FROM reservations WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(db.pool())
        .await?
    else {
        return Ok(None);
    };
    let items =
        sqlx::query("SELECT sku, qty FROM reservation_items WHERE order_id = $1 ORDER BY sku")
            .bind(order_id)
            .fetch_all(db.pool())
            .await?
            .iter()
            .map(Item::from_row)
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(Reservation {
        order_id: order_id.to_owned(),
        status: row.try_get("status")?,
        items,
        expires_at: row.try_get("expires_at")?,
    }))
}

/// `GET /inventory/reservations/{order_id}` (`inventory:reserve` or admin).
#[utoipa::path(get, path = "/inventory/reservations/{order_id}", operation_id = "getReservation", tag = "inventory",
    summary = "Read a reservation (inventory:reserve or admin)",
    security(("bearer" = [])),
    params(("order_id" = String, Path, description = "The order the stock is held for")),
    responses((status = 200, description = "The reservation", body = Reservation)))]
pub async fn get(
    State(s): State<AppState>,
    id: Identity,
    Path(order_id): Path<String>,
) -> Result<Json<Reservation>, Error> {
    require(&id, RESERVE)?;
    Ok(Json(
        load(&s.db, &order_id)
            .await?
            .ok_or(Error::NotFound("no such reservation"))?,
    ))
}

/// Moves `order_id` from `reserved` to `to` when `guard` (extra SQL on the row, `$1` = now)
/// holds. `true` when this call made the transition.
async fn transition(
    tx: &mut Transaction<'static, Any>,
    order_id: &str,
    to: &str,
    guard: &str,
    now: i64,
) -> Result<bool, Error> {
    let sql = format!(
        "UPDATE reservations SET status = $2, updated_at = $1 \
         WHERE order_id = $3 AND status = 'reserved'{guard}"
    );
    let n = sqlx::query(&sql)
        .bind(now)
        .bind(to)
        .bind(order_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// Applies `sql` (`$1` = qty, `$2` = sku, `$3` = now; must touch exactly one row) to every
/// line of `order_id` and returns the lines.
async fn apply_lines(
    tx: &mut Transaction<'static, Any>,
    order_id: &str,
    sql: &str,
    now: i64,
) -> Result<Vec<Item>, Error> {
    let items: Vec<Item> =
        sqlx::query("SELECT sku, qty FROM reservation_items WHERE order_id = $1 ORDER BY sku")
            .bind(order_id)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(Item::from_row)
            .collect::<Result<_, sqlx::Error>>()?;
    for item in &items {
        let n = sqlx::query(sql)
            .bind(item.qty)
            .bind(&item.sku)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if n != 1 {
            return Err(Error::Invariant(format!(
                "reservation {order_id}: {} reserved units of {} are not held",
                item.qty, item.sku
            )));
        }
    }
    Ok(items)
}

const GIVE_BACK: &str = "UPDATE inventory SET reserved = reserved - $1, updated_at = $3 \
                         WHERE sku = $2 AND reserved >= $1";

/// Records `inventory.released` for `order_id`'s `items`.
async fn record_released(
    tx: &mut Transaction<'static, Any>,
    order_id: &str,
    items: &[Item],
    reason: &str,
    now: i64,
) -> Result<(), Error> {
    let fact = events::ReservationChanged {
        order_id,
        items,
        expires_at: None,
        reason: Some(reason),
        at: now,
    };
    events::record(tx, "inventory.released", &fact).await
}

/// `POST /inventory/reservations/{order_id}/commit` (`inventory:reserve` or admin) → 200
/// with status `committed` (also when it was committed before); 409 when released or
/// expired (an overdue reservation is expired here and then); 404 when unknown.
#[utoipa::path(post, path = "/inventory/reservations/{order_id}/commit", operation_id = "commitReservation", tag = "inventory",
    summary = "Commit a reservation: the stock leaves (inventory:reserve or admin)",
    security(("bearer" = [])),
    params(("order_id" = String, Path, description = "The order the stock is held for")),
    responses(
        (status = 200, description = "Committed (now or before)", body = Reservation),
        (status = 409, description = "Released or expired", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn commit(
    State(s): State<AppState>,
    id: Identity,
    Path(order_id): Path<String>,
) -> Result<Json<Reservation>, Error> {
    require(&id, RESERVE)?;
    let now = now_ms();
    let mut tx = s.db.begin().await?;
    if transition(&mut tx, &order_id, "committed", " AND expires_at > $1", now).await? {
        let items = apply_lines(
            &mut tx,
            &order_id,
            "UPDATE inventory SET on_hand = on_hand - $1, reserved = reserved - $1, \
             updated_at = $3 WHERE sku = $2 AND reserved >= $1",
            now,
        )
        .await?;
        let fact = events::ReservationChanged {
            order_id: &order_id,
            items: &items,
            expires_at: None,
            reason: None,
            at: now,
        };
        events::record(&mut tx, "inventory.committed", &fact).await?;
        tx.commit().await?;
        s.outbox.wake();
    } else {
        tx.rollback().await?;
    }
    let r = load(&s.db, &order_id)
        .await?
        .ok_or(Error::NotFound("no such reservation"))?;
    match r.status.as_str() {
        "committed" => Ok(Json(r)),
        "reserved" => {
            // Overdue but not swept yet: expire it now so its stock comes back at once.
            if expire(&s.db, &order_id).await? {
                s.outbox.wake();
            }
            Err(Error::Conflict("the reservation has expired".into()))
        }
        other => Err(Error::Conflict(format!("the reservation is {other}"))),
    }
}

/// `DELETE /inventory/reservations/{order_id}` (`inventory:reserve` or admin) → 200 with
/// status `released`, or with its status as stored when it was released or expired before
/// (either way its stock is back); 409 when committed; 404 when unknown.
#[utoipa::path(delete, path = "/inventory/reservations/{order_id}", operation_id = "releaseReservation", tag = "inventory",
    summary = "Release a reservation: the stock is back (inventory:reserve or admin)",
    security(("bearer" = [])),
    params(("order_id" = String, Path, description = "The order the stock is held for")),
    responses(
        (status = 200, description = "Released, now or before (or expired before)", body = Reservation),
        (status = 409, description = "Committed", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn release(
    State(s): State<AppState>,
    id: Identity,
    Path(order_id): Path<String>,
) -> Result<Json<Reservation>, Error> {
    require(&id, RESERVE)?;
    let now = now_ms();
    let mut tx = s.db.begin().await?;
    if transition(&mut tx, &order_id, "released", "", now).await? {
        let items = apply_lines(&mut tx, &order_id, GIVE_BACK, now).await?;
        record_released(&mut tx, &order_id, &items, "released", now).await?;
        tx.commit().await?;
        s.outbox.wake();
    } else {
        tx.rollback().await?;
    }
    let r = load(&s.db, &order_id)
        .await?
        .ok_or(Error::NotFound("no such reservation"))?;
    match r.status.as_str() {
        "committed" => Err(Error::Conflict("the reservation is committed".into())),
        _ => Ok(Json(r)),
    }
}

/// Expires `order_id` if it is still `reserved` and overdue, giving its stock back; `true`
/// when this call did it.
pub async fn expire(db: &Db, order_id: &str) -> Result<bool, Error> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    if !transition(&mut tx, order_id, "expired", " AND expires_at <= $1", now).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    let items = apply_lines(&mut tx, order_id, GIVE_BACK, now).await?;
    record_released(&mut tx, order_id, &items, "expired", now).await?;
    tx.commit().await?;
    Ok(true)
}

/// Expires every overdue reservation; returns how many this call expired.
pub async fn sweep(db: &Db) -> Result<usize, Error> {
    const BATCH: i64 = 100;
    let mut expired = 0;
    loop {
        let due: Vec<String> = sqlx::query(
            "SELECT order_id FROM reservations WHERE status = 'reserved' AND expires_at <= $1 \
             ORDER BY expires_at LIMIT $2",
        )
        .bind(now_ms())
        .bind(BATCH)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| r.try_get("order_id"))
        .collect::<Result<_, _>>()?;
        for order_id in &due {
            expired += usize::from(expire(db, order_id).await?);
        }
        if (due.len() as i64) < BATCH {
            return Ok(expired);
        }
    }
}

/// The background task that runs [`sweep`] every `every`, started by
/// [`crate::Service::start`]. Several replicas may sweep at once: the status transition
/// lets only one of them expire each reservation.
#[must_use = "dropping the Sweeper stops it"]
pub struct Sweeper {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Sweeper {
    /// Starts sweeping `db` every `every`; `waker` wakes the outbox relay after expiries.
    pub fn spawn(db: Db, waker: OutboxWaker, every: Duration) -> Sweeper {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                match sweep(&db).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!(expired = n, "reservation sweeper");
                        waker.wake();
                    }
                    Err(e) => {
                        tracing::warn!(error = %kit::problem::error_chain(&e), "reservation sweep failed; retrying")
                    }
                }
                tokio::select! {
                    _ = stopped.changed() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        Sweeper { stop, task }
    }

    /// Stops after the sweep in hand and waits for the task to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
