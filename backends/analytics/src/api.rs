//! The ingest endpoint and the admins' rebuild: who is sending (a write key or a user's
//! token), from where (the client address the gateway forwards), and the size limits.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine as _;
use kit::db::now_ms;
use kit::{Identity, Json, Problem};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::Error;
use crate::ingest::{parse_events, Batch, IngestReport, Sender, MAX_BATCH_BYTES, MAX_EVENT_BYTES};
use crate::sources::{self, require_admin};
use crate::AppState;

/// `POST /analytics/events` → 202 with each event's outcome.
#[utoipa::path(post, path = "/analytics/events", operation_id = "ingestEvents", tag = "ingest",
    summary = "Send a batch of track events",
    description = "Authenticated by a user's bearer token or a source's write key (HTTP Basic, \
        the key as the user name). Retry-safe without an Idempotency-Key: a `message_id` seen \
        from the same source within the dedup window is counted once. Each event is accepted or \
        dropped on its own; a malformed one does not fail the batch. 413 when the body passes \
        500 KiB or one event 32 KiB.",
    security(("bearer" = []), ("writeKey" = [])),
    request_body(content = Batch, content_type = "application/json"),
    responses((status = 202, description = "Each event's outcome, in batch order",
        body = IngestReport)))]
pub async fn ingest(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<IngestReport>), Error> {
    let (source, user) = sender(&s, &headers).await?;
    if !headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
    {
        return Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .detail("send the batch as application/json")
            .into());
    }
    let too_large = || {
        Error::Problem(
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
                .detail(format!(
                    "a batch may be at most {} KiB",
                    MAX_BATCH_BYTES / 1024
                ))
                .with("limit", "batch")
                .with("max_bytes", MAX_BATCH_BYTES),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BATCH_BYTES) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_BATCH_BYTES)
        .await
        .map_err(|_| too_large())?;
    let batch: Batch = serde_json::from_slice(&bytes)
        .map_err(|e| Problem::bad_request(format!("the body is not a batch: {e}")))?;
    if let Some(i) = batch
        .batch
        .iter()
        .position(|e| e.get().len() > MAX_EVENT_BYTES)
    {
        return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
            .detail(format!(
                "event {i} is larger than {} KiB",
                MAX_EVENT_BYTES / 1024
            ))
            .with("limit", "event")
            .with("max_bytes", MAX_EVENT_BYTES)
            .with("index", i)
            .into());
    }
    let sender = Sender {
        source,
        user,
        ip: client_ip(peer, &headers).map(|ip| ip.to_string()),
        agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let events = parse_events(&batch.batch);
    let report = s
        .ingest
        .accept(&sender, batch.sent_at.as_deref(), events, now_ms())
        .await?;
    s.metrics.count(&report.counts);
    if report.counts.accepted > 0 {
        s.changed();
    }
    Ok((StatusCode::ACCEPTED, Json(report)))
}

/// The source and user of a request: a write key (Basic) or a user's token (Bearer).
async fn sender(s: &AppState, headers: &HeaderMap) -> Result<(String, Option<String>), Error> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Some(basic) = auth.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let key = decoded.split(':').next().unwrap_or_default();
        return match sources::by_key(&s.db, key).await? {
            Some(id) => Ok((format!("src:{id}"), None)),
            None => Err(Problem::unauthorized("unknown write key")
                .header(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic"),
                )
                .into()),
        };
    }
    let id = s
        .verifier
        .verify_headers(headers)
        .await
        .map_err(Problem::from)?;
    Ok((format!("user:{}", id.user_id), Some(id.user_id)))
}

/// The client's address: the nearest hop of `X-Forwarded-For` when the peer is a proxy on
/// loopback or a private network (the gateway appends the address it saw), else the peer.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap) -> Option<IpAddr> {
    let proxied = match peer.ip() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    if proxied {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .next_back();
        if forwarded.is_some() {
            return forwarded;
        }
    }
    Some(peer.ip())
}

/// The answer to a rebuild.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"rows": 1520}))]
pub struct Rebuilt {
    /// Rollup rows written.
    pub rows: usize,
}

/// `POST /analytics/rollups/rebuild`.
#[utoipa::path(post, path = "/analytics/rollups/rebuild", operation_id = "rebuildRollups",
    tag = "reports", summary = "Recompute every rollup from the raw events (admins)",
    description = "Ingest waits while it runs. The result equals what ingest kept \
        incrementally; run it after changing what a metric measures.",
    security(("bearer" = [])),
    responses((status = 200, description = "Done", body = Rebuilt)))]
pub async fn rebuild(State(s): State<AppState>, id: Identity) -> Result<Json<Rebuilt>, Error> {
    require_admin(&id)?;
    let rows = crate::rollup::rebuild(&s.db).await?;
    s.changed();
    Ok(Json(Rebuilt { rows }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_forwards_the_client_address_and_nobody_else_does() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse().unwrap());
        let gw: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let outside: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(client_ip(gw, &h), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(client_ip(outside, &h), Some(outside.ip()));
        assert_eq!(client_ip(gw, &HeaderMap::new()), Some(gw.ip()));
    }
}
