//! The HTTP surface: the caller's inbox, their preferences, the one-click unsubscribe link,
//! their web push subscriptions and the dead letters (admins).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kit::db::now_ms;
use kit::openapi::ProblemBody;
use kit::page::{Page, PageQuery};
use kit::Query;
use kit::{Identity, Json, Problem};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

use crate::catalog::{Category, Channel};
use crate::error::Error;
use crate::preferences::{self, Preference};
use crate::push::{self, NewSubscription, Subscription};
use crate::queue::{self, DeliveryView};
use crate::AppState;

/// An in-app notification.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "01a246f2-62f6-7316-a269-45fc609fd9c5", "category": "orders",
    "kind": "order_confirmed", "title": "Order confirmed",
    "body": "Your order of 25.00 EUR is confirmed.", "created_at": 1796486619894_i64,
    "read_at": null
}))]
pub struct Notification {
    /// UUIDv7: notifications sort by id in the order they were made.
    pub id: String,
    /// What it is about.
    pub category: Category,
    /// Its kind (`order_confirmed`, `payment_refunded`…).
    pub kind: String,
    /// One line.
    pub title: String,
    /// A sentence or two.
    pub body: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms, `null` while unread.
    pub read_at: Option<i64>,
}

fn from_row(r: &AnyRow) -> Result<Notification, sqlx::Error> {
    let category: String = r.try_get("category")?;
    Ok(Notification {
        id: r.try_get("id")?,
        category: Category::parse(&category)
            .ok_or_else(|| sqlx::Error::Protocol(format!("category {category}")))?,
        kind: r.try_get("kind")?,
        title: r.try_get("title")?,
        body: r.try_get("body")?,
        created_at: r.try_get("created_at")?,
        read_at: r.try_get("read_at")?,
    })
}

/// Inbox rows after `after` in id order (of `user`, or of everyone), with their user.
pub async fn rows_after(
    db: &kit::Db,
    user: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, Notification)>, kit::DbError> {
    let rows = sqlx::query(
        "SELECT id, user_id, category, kind, title, body, created_at, read_at FROM notifications \
         WHERE id > $1 AND ($2 = '' OR user_id = $2) ORDER BY id LIMIT $3",
    )
    .bind(after)
    .bind(user.unwrap_or_default())
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("user_id")?, from_row(r)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(kit::DbError::from)
}

/// `GET /notifications` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only the unread ones.
    #[serde(default)]
    unread: bool,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// `GET /notifications`: the caller's notifications, newest first.
#[utoipa::path(get, path = "/notifications", operation_id = "listNotifications",
    tag = "notifications", summary = "List your notifications, newest first",
    security(("bearer" = [])), params(ListQuery),
    responses((status = 200, description = "One page", body = Page<Notification>)))]
pub async fn list(
    State(s): State<AppState>,
    id: Identity,
    query: Query<ListQuery>,
) -> Result<Json<Page<Notification>>, Error> {
    let Query(q) = query;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let before = page.after()?;
    let rows = sqlx::query(
        "SELECT id, category, kind, title, body, created_at, read_at FROM notifications \
         WHERE user_id = $1 AND ($2 = 0 OR read_at IS NULL) AND ($3 = '' OR id < $3) \
         ORDER BY id DESC LIMIT $4",
    )
    .bind(&id.user_id)
    .bind(i64::from(q.unread))
    .bind(before.unwrap_or_default())
    .bind(limit + 1)
    .fetch_all(s.db.pool())
    .await?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(items, limit, |n| n.id.clone())))
}

/// How many unread.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"unread": 3}))]
pub struct Unread {
    /// The caller's unread notifications.
    pub unread: i64,
}

/// `GET /notifications/unread-count`.
#[utoipa::path(get, path = "/notifications/unread-count", operation_id = "countUnread",
    tag = "notifications", summary = "Count your unread notifications",
    security(("bearer" = [])),
    responses((status = 200, description = "The count", body = Unread)))]
pub async fn unread_count(State(s): State<AppState>, id: Identity) -> Result<Json<Unread>, Error> {
    let unread: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL",
    )
    .bind(&id.user_id)
    .fetch_one(s.db.pool())
    .await?;
    Ok(Json(Unread { unread }))
}

/// `POST /notifications/{id}/read`.
#[utoipa::path(post, path = "/notifications/{id}/read", operation_id = "markRead",
    tag = "notifications", summary = "Mark one of your notifications read",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The notification's id")),
    responses((status = 200, description = "The notification, read (also when it was before)",
        body = Notification)))]
pub async fn mark_read(
    State(s): State<AppState>,
    id: Identity,
    Path(notification): Path<String>,
) -> Result<Json<Notification>, Error> {
    let row = sqlx::query(
        "UPDATE notifications SET read_at = COALESCE(read_at, $1) WHERE id = $2 AND user_id = $3 \
         RETURNING id, category, kind, title, body, created_at, read_at",
    )
    .bind(now_ms())
    .bind(&notification)
    .bind(&id.user_id)
    .fetch_optional(s.db.pool())
    .await?
    .ok_or(Error::NotFound("no such notification"))?;
    Ok(Json(from_row(&row)?))
}

/// How many were marked.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"marked": 3}))]
pub struct Marked {
    /// Notifications that were unread and are read now.
    pub marked: u64,
}

/// `POST /notifications/read-all`.
#[utoipa::path(post, path = "/notifications/read-all", operation_id = "markAllRead",
    tag = "notifications", summary = "Mark all your notifications read",
    security(("bearer" = [])),
    responses((status = 200, description = "How many were unread", body = Marked)))]
pub async fn mark_all_read(State(s): State<AppState>, id: Identity) -> Result<Json<Marked>, Error> {
    let done =
        sqlx::query("UPDATE notifications SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL")
            .bind(now_ms())
            .bind(&id.user_id)
            .execute(s.db.pool())
            .await?;
    Ok(Json(Marked {
        marked: done.rows_affected(),
    }))
}

/// `GET /notifications/preferences`.
#[utoipa::path(get, path = "/notifications/preferences", operation_id = "getPreferences",
    tag = "preferences", summary = "Your preferences: every category on every channel",
    security(("bearer" = [])),
    responses((status = 200, description = "Every (category, channel), defaults included",
        body = Vec<Preference>)))]
pub async fn get_preferences(
    State(s): State<AppState>,
    id: Identity,
) -> Result<Json<Vec<Preference>>, Error> {
    Ok(Json(
        preferences::all(s.db.pool(), &id.user_id, &s.channels).await?,
    ))
}

/// `PUT /notifications/preferences`: the ones given change, the others stay.
#[utoipa::path(put, path = "/notifications/preferences", operation_id = "setPreferences",
    tag = "preferences", summary = "Turn categories on or off per channel",
    security(("bearer" = [])),
    request_body = Vec<Preference>,
    responses((status = 200, description = "Every preference after the change",
        body = Vec<Preference>)))]
pub async fn set_preferences(
    State(s): State<AppState>,
    id: Identity,
    Json(changes): Json<Vec<Preference>>,
) -> Result<Json<Vec<Preference>>, Error> {
    if let Some(i) = changes
        .iter()
        .position(|p| !s.channels.contains(&p.channel))
    {
        let names: Vec<&str> = s.channels.iter().map(Channel::as_str).collect();
        return Err(Error::field(
            format!("[{i}].channel"),
            format!("no such channel; there are {}", names.join(", ")),
        ));
    }
    if let Some(i) = changes
        .iter()
        .position(|p| !p.enabled && !p.category.optional())
    {
        return Err(Error::field(
            format!("[{i}].enabled"),
            "security notices cannot be turned off",
        ));
    }
    let mut tx = s.db.begin().await?;
    for p in &changes {
        preferences::set(&mut *tx, &id.user_id, p).await?;
    }
    tx.commit().await.map_err(kit::DbError::from)?;
    Ok(Json(
        preferences::all(s.db.pool(), &id.user_id, &s.channels).await?,
    ))
}

/// `?token=` of an unsubscribe link.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// The signed token from the email's link.
    token: String,
}

/// What an unsubscribe did.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"category": "orders", "channel": "email", "enabled": false}))]
pub struct Unsubscribed {
    /// The category turned off.
    pub category: Category,
    /// On this channel.
    pub channel: Channel,
    /// Always `false`.
    pub enabled: bool,
}

fn checked(
    s: &AppState,
    query: Query<TokenQuery>,
) -> Result<crate::unsubscribe::Unsubscribe, Error> {
    let Query(q) = query;
    s.signer
        .check(&q.token)
        .ok_or_else(|| Problem::bad_request("this unsubscribe link is not valid").into())
}

/// `POST /notifications/unsubscribe?token=`: RFC 8058 one-click unsubscribe (a mail client
/// posts `List-Unsubscribe=One-Click`; the body is not needed). No login: the token is the
/// proof.
#[utoipa::path(post, path = "/notifications/unsubscribe", operation_id = "unsubscribe",
    tag = "preferences", summary = "One-click unsubscribe from an email's link (RFC 8058)",
    params(TokenQuery),
    responses(
        (status = 200, description = "Turned off (also when it was before)", body = Unsubscribed),
        (status = 400, description = "A token this service did not sign", body = ProblemBody,
            content_type = "application/problem+json"),
    ))]
pub async fn unsubscribe(
    State(s): State<AppState>,
    query: Query<TokenQuery>,
) -> Result<Json<Unsubscribed>, Error> {
    let u = checked(&s, query)?;
    preferences::set(
        s.db.pool(),
        &u.user_id,
        &Preference {
            category: u.category,
            channel: u.channel.clone(),
            enabled: false,
        },
    )
    .await?;
    Ok(Json(Unsubscribed {
        category: u.category,
        channel: u.channel,
        enabled: false,
    }))
}

/// `GET /notifications/unsubscribe?token=`: what a person who clicks the link sees, a page
/// with a button that posts it. A GET changes nothing (mail scanners follow links).
#[utoipa::path(get, path = "/notifications/unsubscribe", operation_id = "unsubscribePage",
    tag = "preferences", summary = "The page behind an email's unsubscribe link",
    params(TokenQuery),
    responses(
        (status = 200, description = "A page with a button that unsubscribes",
            content_type = "text/html", body = String),
        (status = 400, description = "A token this service did not sign", body = ProblemBody,
            content_type = "application/problem+json"),
    ))]
pub async fn unsubscribe_page(
    State(s): State<AppState>,
    query: Query<TokenQuery>,
) -> Result<Response, Error> {
    let u = checked(&s, query)?;
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribe</title></head>\
         <body><p>Stop {} emails?</p><form method=\"post\">\
         <button type=\"submit\">Unsubscribe</button></form></body></html>",
        u.category.as_str()
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response())
}

/// `GET /notifications/admin/dead-letters` (admin): deliveries that ran out of attempts.
#[utoipa::path(get, path = "/notifications/admin/dead-letters", operation_id = "listDeadLetters",
    tag = "admin", summary = "Deliveries that ran out of attempts (admin)",
    security(("bearer" = [])), params(PageQuery),
    responses((status = 200, description = "One page, oldest first", body = Page<DeliveryView>)))]
pub async fn dead_letters(
    State(s): State<AppState>,
    id: Identity,
    query: Query<PageQuery>,
) -> Result<Json<Page<DeliveryView>>, Error> {
    id.require_role("admin")?;
    let Query(page) = query;
    let limit = page.limit()?;
    let after = match page.after()? {
        None => None,
        Some(c) => Some(
            c.split_once(':')
                .and_then(|(at, id)| Some((at.parse().ok()?, id.to_owned())))
                .ok_or_else(|| Error::field("cursor", "not a cursor of this list"))?,
        ),
    };
    let rows = queue::dead(&s.db, after, limit).await?;
    Ok(Json(Page::from_rows(rows, limit, |d| {
        format!("{}:{}", d.updated_at, d.id)
    })))
}

/// `POST /notifications/admin/deliveries/{id}/requeue` (admin): a dead delivery back in the
/// queue, attempts reset.
#[utoipa::path(post, path = "/notifications/admin/deliveries/{id}/requeue",
    operation_id = "requeueDelivery", tag = "admin",
    summary = "Put a dead delivery back in the queue (admin)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The delivery's id")),
    responses(
        (status = 204, description = "Queued again"),
        (status = 404, description = "No dead delivery with this id", body = ProblemBody,
            content_type = "application/problem+json"),
    ))]
pub async fn requeue(
    State(s): State<AppState>,
    id: Identity,
    Path(delivery): Path<String>,
) -> Result<StatusCode, Error> {
    id.require_role("admin")?;
    if queue::requeue(&s.db, &delivery).await? {
        s.wake.notify_waiters();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::NotFound("no dead delivery with this id"))
    }
}

/// The application server key.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"public_key": "BEl62iUYgUivxIkv69yViEuiBIa-Ib9-SkvMeAtA3LFgDzkrxZJjSgSnfckjBJuBkr3qBUYIHBQFLXYp5Nksh8U"}))]
pub struct PushKey {
    /// The VAPID public key, base64url: pass it as `applicationServerKey` to
    /// `pushManager.subscribe`.
    pub public_key: String,
}

/// `GET /notifications/push-key`: the key a browser subscribes with.
#[utoipa::path(get, path = "/notifications/push-key", operation_id = "getPushKey",
    tag = "push", summary = "The VAPID public key to subscribe a browser with",
    responses((status = 200, description = "The key", body = PushKey)))]
pub async fn push_key(State(s): State<AppState>) -> Json<PushKey> {
    Json(PushKey {
        public_key: s.push_key.clone(),
    })
}

/// `POST /notifications/push-subscriptions`: a browser's `PushSubscription`, stored for
/// the caller. Posting one that exists (the same endpoint) updates it.
#[utoipa::path(post, path = "/notifications/push-subscriptions",
    operation_id = "subscribePush", tag = "push",
    summary = "Receive notifications as web push on this browser",
    security(("bearer" = [])),
    request_body(content = NewSubscription,
        description = "What the browser's `PushSubscription.toJSON()` gives"),
    responses(
        (status = 201, description = "Subscribed", body = Subscription),
        (status = 200, description = "This browser was subscribed already (its keys are updated)",
            body = Subscription),
    ))]
pub async fn subscribe_push(
    State(s): State<AppState>,
    id: Identity,
    Json(sub): Json<NewSubscription>,
) -> Result<(StatusCode, Json<Subscription>), Error> {
    push::check(&sub, s.push_allow_http).map_err(|r| Error::field(r.field, r.reason))?;
    let (stored, new) = push::subscribe(&s.db, &id.user_id, &sub).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored)))
}

/// `GET /notifications/push-subscriptions`: the caller's subscribed browsers.
#[utoipa::path(get, path = "/notifications/push-subscriptions",
    operation_id = "listPushSubscriptions", tag = "push",
    summary = "Your browsers that receive web push",
    security(("bearer" = [])),
    responses((status = 200, description = "Oldest first (at most 32)", body = Vec<Subscription>)))]
pub async fn list_push(
    State(s): State<AppState>,
    id: Identity,
) -> Result<Json<Vec<Subscription>>, Error> {
    Ok(Json(push::list(&s.db, &id.user_id).await?))
}

/// `DELETE /notifications/push-subscriptions/{id}`.
#[utoipa::path(delete, path = "/notifications/push-subscriptions/{id}",
    operation_id = "unsubscribePush", tag = "push",
    summary = "Stop web push to one of your browsers",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The subscription's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "You have no subscription with this id", body = ProblemBody,
            content_type = "application/problem+json"),
    ))]
pub async fn unsubscribe_push(
    State(s): State<AppState>,
    id: Identity,
    Path(subscription): Path<String>,
) -> Result<StatusCode, Error> {
    if push::unsubscribe(&s.db, &id.user_id, &subscription).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::NotFound("no such push subscription"))
    }
}
