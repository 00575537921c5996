//! The live stream: `GET /notifications/ws`, a WebSocket of the caller's notifications.
//!
//! - **Who.** A non-browser client sends `Authorization: Bearer <token>`. A browser cannot
//!   set headers on a handshake, so it offers the subprotocols `notifications.v1` and
//!   `bearer.<token>` (`new WebSocket(url, ["notifications.v1", "bearer." + token])`); the
//!   server answers with `notifications.v1` only, never echoing the token. The gateway's jwt
//!   filter reads the same place (`websocket_protocol = true`), so the token is checked at
//!   the edge and again here.
//! - **What.** Text frames `{"type":"notification","notification":{…}}`, oldest first.
//!   `?after=<id>` (the last id the client saw) first replays what it missed from the inbox,
//!   in order, then goes live; nothing is sent twice (ids are UUIDv7, compared in order).
//! - **Only the recipient**: the [`Hub`] routes each new row to its user's connections.
//! - **Bounded.** Each connection has a queue of [`BUFFER`] frames; a client that falls
//!   that far behind is closed with code 4008 and a reason naming the `after` to reconnect
//!   with, instead of holding memory for it.
//!
//! New rows are found by one [`spawn_fanout`] task per process that reads the inbox past
//! the last row it dispatched, when the intake wakes it (after its commit) and at least
//! every `poll`. With several replicas each one reads every
//! replica's rows, so a client reaches its notifications whichever replica it is on;
//! a row committed late with an older id than one already dispatched would reach live
//! clients only at their next reconnect (one consumer per process writes rows in id order).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use kit::Query;
use kit::{Db, Problem};
use serde::Deserialize;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::api::{self, Notification};
use crate::error::Error;
use crate::AppState;

/// Frames a connection may have waiting before it is cut off.
pub const BUFFER: usize = 64;
/// The subprotocol the stream speaks.
pub const PROTOCOL: &str = "notifications.v1";
/// The prefix of the subprotocol that carries a browser's token.
pub const TOKEN_PROTOCOL: &str = "bearer.";
/// The close code of a client too slow to keep up (4000–4999: the application's own).
pub const TOO_SLOW: u16 = 4008;
/// Each connection's read buffer (and write batch).
const SOCKET_BUFFER: usize = 4 * 1024;
/// The largest message a client may send (it has nothing to say but pings and a close).
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

type Sender = mpsc::Sender<Arc<Notification>>;

/// Live connections by user.
pub struct Hub {
    clients: Mutex<HashMap<String, Vec<(u64, Sender)>>>,
    next: AtomicU64,
    connected: AtomicU64,
    gauge: prometheus::IntGauge,
}

impl Hub {
    /// An empty hub that keeps `gauge` at the number of connections.
    pub fn new(gauge: prometheus::IntGauge) -> Hub {
        Hub {
            clients: Mutex::default(),
            next: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            gauge,
        }
    }

    fn count(&self, delta: i64) {
        let now = if delta >= 0 {
            self.connected.fetch_add(delta as u64, Ordering::Relaxed) + delta as u64
        } else {
            self.connected
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed)
                - delta.unsigned_abs()
        };
        self.gauge.set(now as i64);
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(u64, Sender)>>> {
        // Every update is one insert or remove: a panic while held cannot break it.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection of `user`: its id and what it receives.
    pub fn subscribe(&self, user: &str) -> (u64, mpsc::Receiver<Arc<Notification>>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(BUFFER);
        self.clients()
            .entry(user.to_owned())
            .or_default()
            .push((id, tx));
        self.count(1);
        (id, rx)
    }

    /// The connection `id` of `user` is gone.
    pub fn unsubscribe(&self, user: &str, id: u64) {
        let mut clients = self.clients();
        if let Some(list) = clients.get_mut(user) {
            let before = list.len();
            list.retain(|(c, _)| *c != id);
            if list.len() < before {
                self.count(-1);
            }
            if list.is_empty() {
                clients.remove(user);
            }
        }
    }

    /// Hands `n` to every connection of `user`; one whose queue is full is dropped from the
    /// hub (its receiver then ends, and the connection closes as too slow).
    pub fn dispatch(&self, user: &str, n: Arc<Notification>) {
        let mut clients = self.clients();
        if let Some(list) = clients.get_mut(user) {
            let before = list.len();
            list.retain(|(_, tx)| tx.try_send(n.clone()).is_ok());
            self.count(-((before - list.len()) as i64));
            if list.is_empty() {
                clients.remove(user);
            }
        }
    }

    /// Connections open now.
    pub fn connected(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Reads new inbox rows and hands them to the [`Hub`], when woken and every `poll`.
pub fn spawn_fanout(db: Db, hub: Arc<Hub>, wake: Arc<Notify>, poll: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: String =
            sqlx::query_scalar("SELECT COALESCE(MAX(id), '') FROM notifications")
                .fetch_one(db.pool())
                .await
                .unwrap_or_default();
        loop {
            tokio::select! {
                // The intake wakes it after its commit.
                _ = wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
            match api::rows_after(&db, None, &last, 500).await {
                Ok(rows) => {
                    for (user, n) in rows {
                        last = n.id.clone();
                        hub.dispatch(&user, Arc::new(n));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "notification: live fan-out cannot read"),
            }
        }
    })
}

/// `?after=` of the stream.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// The last notification id the client saw: what came after it is replayed first
    /// (`after=` with no value replays the whole inbox). Absent: live only.
    after: Option<String>,
}

/// The token of a handshake: `Authorization: Bearer`, else the `bearer.` subprotocol.
fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, t) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| t.trim().to_owned());
    }
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL).map(str::to_owned))
}

/// `GET /notifications/ws`: the caller's notifications as they happen (see the module).
#[utoipa::path(get, path = "/notifications/ws", operation_id = "streamNotifications",
    tag = "notifications",
    summary = "Your notifications live, over a WebSocket (replays what came after ?after=)",
    description = "A WebSocket handshake. Authenticate with `Authorization: Bearer <token>`, or \
        from a browser by offering the subprotocols `notifications.v1` and `bearer.<token>`; \
        the server selects `notifications.v1`. Each text frame is \
        `{\"type\":\"notification\",\"notification\":{…}}` (the `Notification` schema), oldest \
        first. A client more than 64 frames behind is closed with code 4008; reconnect with \
        `?after=<last id seen>` to get what it missed, once, in order.",
    security(("bearer" = [])), params(StreamQuery),
    responses((status = 101, description = "Switching to the WebSocket protocol")))]
pub async fn stream(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: Query<StreamQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    let Query(q) = query;
    let token = token(&headers).ok_or_else(|| {
        Error::from(Problem::unauthorized(
            "no bearer token (Authorization header or bearer. subprotocol)",
        ))
    })?;
    let id = s.verifier.verify(&token).await.map_err(Problem::from)?;
    let upgrade = upgrade.map_err(|e| Problem::bad_request(e.to_string()))?;
    let state = s.clone();
    Ok(upgrade
        .protocols([PROTOCOL])
        // Clients send nothing but control frames. tungstenite's default 128 KiB read
        // buffer is zero-filled on the first read, so it was 128 KiB of RSS per idle
        // connection (132.5 KiB per connection measured with 5 000, benches/notifications.sh);
        // 4 KiB grows on demand up to the message limit.
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| session(socket, state, id.user_id, q.after)))
}

async fn send(socket: &mut WebSocket, n: &Notification) -> bool {
    let frame = serde_json::json!({"type": "notification", "notification": n}).to_string();
    socket.send(Message::Text(frame.into())).await.is_ok()
}

/// Sends the inbox of `user` after `last`, in order, moving `last`; `false` when the
/// connection is gone.
async fn replay_after(socket: &mut WebSocket, db: &Db, user: &str, last: &mut String) -> bool {
    loop {
        let rows = match api::rows_after(db, Some(user), last, 200).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "notification: replay failed");
                return true;
            }
        };
        let done = rows.len() < 200;
        for (_, n) in rows {
            if !send(socket, &n).await {
                return false;
            }
            *last = n.id;
        }
        if done {
            return true;
        }
    }
}

async fn session(mut socket: WebSocket, s: AppState, user: String, after: Option<String>) {
    // Subscribe first, then replay: what arrives meanwhile waits in the queue, and the
    // id comparison drops what the replay already sent. No `after`: live only.
    let (conn, mut live) = s.hub.subscribe(&user);
    let mut last = match after {
        Some(after) => after,
        // Live only: rows already in the inbox (which the fan-out may hand out a moment
        // after this subscription) are not news.
        None => {
            sqlx::query_scalar("SELECT COALESCE(MAX(id), '') FROM notifications WHERE user_id = $1")
                .bind(&user)
                .fetch_one(s.db.pool())
                .await
                .unwrap_or_default()
        }
    };
    if !replay_after(&mut socket, &s.db, &user, &mut last).await {
        s.hub.unsubscribe(&user, conn);
        return;
    }
    let mut ping = tokio::time::interval(Duration::from_secs(30));
    ping.tick().await;
    loop {
        tokio::select! {
            next = live.recv() => match next {
                Some(n) if n.id > last => {
                    if !send(&mut socket, &n).await {
                        break;
                    }
                    last = n.id.clone();
                }
                Some(_) => {}
                None => {
                    let reason = format!("too slow; reconnect with ?after={last}");
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame { code: TOO_SLOW, reason: reason.into() })))
                        .await;
                    break;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    s.hub.unsubscribe(&user, conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: &str) -> Arc<Notification> {
        Arc::new(Notification {
            id: id.into(),
            category: crate::catalog::Category::Orders,
            kind: "order_confirmed".into(),
            title: "t".into(),
            body: "b".into(),
            created_at: 0,
            read_at: None,
        })
    }

    #[tokio::test]
    async fn a_connection_that_stops_reading_is_cut_off_at_its_buffer_and_others_go_on() {
        let gauge = prometheus::IntGauge::new("g", "g").unwrap();
        let hub = Hub::new(gauge.clone());
        let (_, mut slow) = hub.subscribe("ann");
        let (_, mut fast) = hub.subscribe("ann");
        let (_, mut other) = hub.subscribe("bob");
        assert_eq!(gauge.get(), 3);
        for i in 0..BUFFER + 10 {
            hub.dispatch("ann", n(&format!("{i:04}")));
            assert!(fast.recv().await.is_some(), "the reading one keeps up");
        }
        let mut kept = 0;
        while slow.recv().await.is_some() {
            kept += 1;
        }
        assert_eq!(kept, BUFFER, "held at most its buffer, then ended");
        assert_eq!(gauge.get(), 2, "the slow one is gone");
        assert!(other.try_recv().is_err(), "bob got none of ann's");
        hub.dispatch("ann", n("9999"));
        assert_eq!(fast.recv().await.unwrap().id, "9999");
    }
}
