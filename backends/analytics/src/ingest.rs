//! Ingest: a batch of Segment-like `track` events in, each one accepted or dropped with a
//! reason, in one transaction.
//!
//! Per event, in this order:
//! 1. **invalid**: not a track event with an `event` name and a `message_id`, or a time
//!    that does not parse (reported with its reason; the rest of the batch goes on);
//! 2. **bot**: its user agent (`context.user_agent`, else the request's) is a crawler's or
//!    a headless browser's;
//! 3. **late**: it occurred before the watermark minus the allowed lateness;
//! 4. **duplicate** / **conflict**: its `message_id` was seen from this source within the
//!    dedup window, with the same content (a retry) or with another (the first one wins);
//! 5. **accepted**: stored and rolled up.
//!
//! Time: `occurred_at = timestamp + (received_at − sent_at)`, so a client whose clock is
//! an hour off still lands its events in the right bucket (Segment's correction), and never
//! later than `received_at`. Without a `timestamp` the event occurred when it arrived.

use std::collections::HashMap;

use kit::db::new_id;
use kit::DbError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::store::{self, Counts, RawEvent};
use crate::visitor::{self, Visitors};

/// Largest event, as sent (Segment's limit).
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Largest batch body (Segment's limit).
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// Longest event name, message id, user id or anonymous id.
pub const MAX_NAME_CHARS: usize = 200;

/// The body of `POST /analytics/events`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"batch": [{"type": "track", "event": "Product Clicked",
    "message_id": "0f1c7a5e-2d5b-4a47-9a3e-7d1e2f9c0b11", "timestamp": "2026-12-05T10:00:00Z",
    "properties": {"sku": "MUG-001"}, "anonymous_id": "anon-42"}],
    "sent_at": "2026-12-05T10:00:02Z"}))]
pub struct Batch<'a> {
    /// The events, each checked on its own (at most 32 KiB each, 500 KiB in all).
    #[serde(borrow)]
    #[schema(value_type = Vec<TrackEvent>)]
    pub batch: Vec<&'a RawValue>,
    /// When the client sent the batch, by its clock (RFC 3339): the default of each event's
    /// `sent_at`.
    #[serde(default)]
    pub sent_at: Option<String>,
}

/// One tracked event (Segment's `track` call, snake_case).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct TrackEvent {
    /// `track` (the only kind accepted; may be left out).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// What happened, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub event: String,
    /// The sender's id of this event, unique per source: a retry with the same id is
    /// counted once.
    #[schema(min_length = 1, max_length = 200)]
    pub message_id: String,
    /// Anything else about it (a JSON object).
    #[serde(default)]
    pub properties: Option<serde_json::Map<String, Value>>,
    /// When it happened, by the client's clock (RFC 3339); default: when it arrived.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// When the client sent it, by its clock (RFC 3339): corrects `timestamp` for the
    /// client's clock error.
    #[serde(default)]
    pub sent_at: Option<String>,
    /// The client's id of an anonymous visitor.
    #[serde(default)]
    pub anonymous_id: Option<String>,
    /// The user; with a user's token it must be the caller (and defaults to it).
    #[serde(default)]
    pub user_id: Option<String>,
    /// The end user's address and browser, as a server-side source forwards them (used for
    /// the visitor hash and the bot check, never stored).
    #[serde(default)]
    pub context: Option<Context>,
}

/// Where an event came from, as a server-side source forwards it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
pub struct Context {
    /// The end user's IP address.
    #[serde(default)]
    pub ip: Option<String>,
    /// The end user's browser.
    #[serde(default, alias = "userAgent")]
    pub user_agent: Option<String>,
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Stored and counted.
    Accepted,
    /// Its `message_id` was seen with the same content: counted once already.
    Duplicate,
    /// Its `message_id` was seen with other content: the first one is kept.
    Conflict,
    /// It occurred too long before the newest events (more than the allowed lateness).
    Late,
    /// From a crawler or a headless browser.
    Bot,
    /// Not a valid event: see `reason`.
    Invalid,
}

/// One event's result.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventResult {
    /// Its position in the batch, from 0.
    pub index: usize,
    /// Its `message_id`, when it had one.
    pub message_id: Option<String>,
    /// What happened to it.
    pub status: Outcome,
    /// Why, for an invalid or late event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to a batch: totals per outcome and each event's result, in batch order.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"accepted": 1, "duplicate": 0, "conflict": 0, "late": 0, "bot": 0,
    "invalid": 1, "results": [
        {"index": 0, "message_id": "m-1", "status": "accepted"},
        {"index": 1, "message_id": null, "status": "invalid",
         "reason": "missing field `message_id`"}]}))]
pub struct IngestReport {
    /// Counts per outcome.
    #[serde(flatten)]
    pub counts: Counts,
    /// One per event.
    pub results: Vec<EventResult>,
}

/// Who sent a batch, and from where.
#[derive(Debug, Clone)]
pub struct Sender {
    /// The dedup scope: `src:<id>` for a write key, `user:<id>` for a user's token.
    pub source: String,
    /// The signed-in user whose token sent it, if so.
    pub user: Option<String>,
    /// The request's client address (from the gateway's `X-Forwarded-For`).
    pub ip: Option<String>,
    /// The request's `User-Agent`.
    pub agent: Option<String>,
}

/// What ingest needs besides the batch.
pub struct Ingest {
    /// The database.
    pub db: kit::Db,
    /// The daily salts.
    pub visitors: Visitors,
    /// The crawler patterns.
    pub bots: isbot::Bots,
    /// Client events older than the watermark minus this are dropped (ms).
    pub lateness_ms: i64,
    /// How long a message id is remembered (ms).
    pub dedup_window_ms: i64,
    /// On SQLite, batches queue here for the write lock rather than in SQLite's busy
    /// handler, whose sleeps (up to 100 ms each) made the slowest batches wait for most of
    /// a second under 8 concurrent senders (`benches/analytics.sh`: batch p99 837 ms).
    pub sqlite_writer: tokio::sync::Mutex<()>,
}

/// A valid event on its way in.
struct Candidate {
    index: usize,
    event: TrackEvent,
    occurred_at: i64,
    digest: String,
    ip: Option<String>,
    agent: Option<String>,
}

impl Ingest {
    /// Accepts what it can of `events` (each parsed or not) from `sender`, received at
    /// `now` (Unix ms), with the batch's `sent_at`.
    pub async fn accept(
        &self,
        sender: &Sender,
        sent_at: Option<&str>,
        events: Vec<Result<TrackEvent, String>>,
        now: i64,
    ) -> Result<IngestReport, DbError> {
        let mut results: Vec<EventResult> = Vec::with_capacity(events.len());
        let mut candidates = Vec::new();
        for (index, parsed) in events.into_iter().enumerate() {
            let checked = parsed.and_then(|e| self.check(sender, sent_at, e, now));
            match checked {
                Ok(c) => {
                    let bot = c.agent.as_deref().is_some_and(|a| self.bots.is_bot(a));
                    // A non-bot's status is settled below.
                    let status = if bot { Outcome::Bot } else { Outcome::Accepted };
                    results.push(result(index, Some(&c.event.message_id), status));
                    if !bot {
                        candidates.push(Candidate { index, ..c });
                    }
                }
                Err(reason) => results.push(EventResult {
                    reason: Some(reason),
                    ..result(index, None, Outcome::Invalid)
                }),
            }
        }
        let salts = if candidates
            .iter()
            .any(|c| c.ip.is_some() || c.agent.is_some())
        {
            Some(self.visitors.salts(now).await?)
        } else {
            None
        };
        let _turn = match self.db.kind() {
            kit::DbKind::Sqlite => Some(self.sqlite_writer.lock().await),
            kit::DbKind::Postgres => None,
        };
        let mut tx = self.db.begin().await?;
        // Late: against the watermark this batch moves it to.
        let newest = candidates.iter().map(|c| c.occurred_at).max().unwrap_or(0);
        let horizon = store::watermark(&mut tx).await?.max(newest) - self.lateness_ms;
        candidates.retain(|c| {
            let late = c.occurred_at < horizon;
            if late {
                results[c.index].status = Outcome::Late;
                results[c.index].reason = Some(format!(
                    "it occurred more than {} s before the newest events",
                    self.lateness_ms / 1000
                ));
            }
            !late
        });
        let fresh = self
            .dedup(&mut tx, sender, &mut candidates, &mut results, now)
            .await?;
        let visitors = match &salts {
            Some(salts) => visitors_of(&mut tx, salts, &sender.source, &fresh, now).await?,
            None => vec![None; fresh.len()],
        };
        let mut raw = Vec::with_capacity(fresh.len());
        for (c, visitor) in fresh.into_iter().zip(visitors) {
            results[c.index].status = Outcome::Accepted;
            let e = c.event;
            raw.push(RawEvent {
                id: new_id(),
                source: sender.source.clone(),
                message_id: e.message_id,
                name: e.event,
                occurred_at: c.occurred_at,
                received_at: now,
                user_id: e.user_id,
                anonymous_id: e.anonymous_id,
                visitor,
                properties: Value::Object(e.properties.unwrap_or_default()),
            });
        }
        store::append(&mut tx, &raw).await?;
        let counts = tally(&results);
        store::count(&mut tx, now, &counts).await?;
        tx.commit().await?;
        Ok(IngestReport { counts, results })
    }

    /// The event's rules, its corrected time, its digest.
    fn check(
        &self,
        sender: &Sender,
        batch_sent_at: Option<&str>,
        mut e: TrackEvent,
        now: i64,
    ) -> Result<Candidate, String> {
        if e.kind.as_deref().is_some_and(|k| k != "track") {
            return Err("only track events are accepted (type: track)".into());
        }
        for (field, value, min) in [
            ("event", Some(&e.event), 1),
            ("message_id", Some(&e.message_id), 1),
            ("user_id", e.user_id.as_ref(), 1),
            ("anonymous_id", e.anonymous_id.as_ref(), 1),
        ] {
            if let Some(v) = value {
                let n = v.chars().count();
                if n < min || n > MAX_NAME_CHARS || v.chars().any(char::is_control) {
                    return Err(format!(
                        "{field} must be 1 to {MAX_NAME_CHARS} characters, none a control character"
                    ));
                }
            }
        }
        if let Some(user) = &sender.user {
            match &e.user_id {
                Some(u) if u != user => return Err("user_id must be the caller's own".into()),
                _ => e.user_id = Some(user.clone()),
            }
        }
        let timestamp = time("timestamp", e.timestamp.as_deref())?;
        let sent = time("sent_at", e.sent_at.as_deref().or(batch_sent_at))?;
        let occurred_at = match (timestamp, sent) {
            (Some(t), Some(s)) => t.saturating_add(now.saturating_sub(s)),
            (Some(t), None) => t,
            (None, _) => now,
        }
        .min(now);
        let context = e.context.take().unwrap_or_default();
        let digest = digest(&e);
        Ok(Candidate {
            index: 0,
            occurred_at,
            digest,
            ip: context.ip.or_else(|| sender.ip.clone()),
            agent: context.user_agent.or_else(|| sender.agent.clone()),
            event: e,
        })
    }

    /// Keeps the candidates whose message id is new to the source (recording it), marking
    /// the others duplicate or conflict.
    async fn dedup(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        sender: &Sender,
        candidates: &mut Vec<Candidate>,
        results: &mut [EventResult],
        now: i64,
    ) -> Result<Vec<Candidate>, DbError> {
        // Twice in one batch: the first stands.
        let mut first: HashMap<String, String> = HashMap::new();
        candidates.retain(|c| match first.get(&c.event.message_id) {
            Some(d) => {
                results[c.index].status = repeat(d, &c.digest);
                false
            }
            None => {
                first.insert(c.event.message_id.clone(), c.digest.clone());
                true
            }
        });
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut inserted = std::collections::HashSet::new();
        for chunk in candidates.chunks(1_000) {
            let sql = format!(
                "INSERT INTO seen (source, message_id, digest, seen_at) VALUES {} \
                 ON CONFLICT (source, message_id) DO NOTHING RETURNING message_id",
                crate::rollup::placeholders(chunk.len(), 4)
            );
            let mut q = sqlx::query_scalar::<_, String>(&sql);
            for c in chunk {
                q = q
                    .bind(sender.source.as_str())
                    .bind(c.event.message_id.as_str())
                    .bind(c.digest.as_str())
                    .bind(now);
            }
            inserted.extend(q.fetch_all(&mut **tx).await?);
        }
        let (fresh, seen): (Vec<_>, Vec<_>) = std::mem::take(candidates)
            .into_iter()
            .partition(|c| inserted.contains(&c.event.message_id));
        // What the ids seen before carried, in one query per chunk (a retried batch repeats
        // every id).
        let mut before: HashMap<String, String> = HashMap::new();
        for chunk in seen.chunks(1_000) {
            let sql = format!(
                "SELECT message_id, digest FROM seen WHERE source = $1 AND message_id IN ({})",
                (2..chunk.len() + 2)
                    .map(|i| format!("${i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut q = sqlx::query_as::<_, (String, String)>(&sql).bind(sender.source.as_str());
            for c in chunk {
                q = q.bind(c.event.message_id.as_str());
            }
            before.extend(q.fetch_all(&mut **tx).await?);
        }
        for c in seen {
            let first = before.get(&c.event.message_id).map_or("", String::as_str);
            results[c.index].status = repeat(first, &c.digest);
        }
        Ok(fresh)
    }
}

/// The visitor id of each candidate, one [`visitor::identify`] per distinct (IP, agent).
async fn visitors_of(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    salts: &visitor::Salts,
    source: &str,
    fresh: &[Candidate],
    now: i64,
) -> Result<Vec<Option<String>>, DbError> {
    let mut known: HashMap<(Option<&str>, Option<&str>), String> = HashMap::new();
    let mut ids = Vec::with_capacity(fresh.len());
    for c in fresh {
        let key = (c.ip.as_deref(), c.agent.as_deref());
        let id = match known.get(&key) {
            Some(id) => id.clone(),
            None => {
                let (ip, agent) = (key.0.unwrap_or_default(), key.1.unwrap_or_default());
                let id = visitor::identify(tx, salts, source, ip, agent, now).await?;
                known.insert(key, id.clone());
                id
            }
        };
        ids.push(Some(id));
    }
    Ok(ids)
}

fn repeat(first: &str, this: &str) -> Outcome {
    if first == this {
        Outcome::Duplicate
    } else {
        Outcome::Conflict
    }
}

fn result(index: usize, message_id: Option<&str>, status: Outcome) -> EventResult {
    EventResult {
        index,
        message_id: message_id.map(str::to_owned),
        status,
        reason: None,
    }
}

fn tally(results: &[EventResult]) -> Counts {
    let mut c = Counts::default();
    for r in results {
        *match r.status {
            Outcome::Accepted => &mut c.accepted,
            Outcome::Duplicate => &mut c.duplicate,
            Outcome::Conflict => &mut c.conflict,
            Outcome::Late => &mut c.late,
            Outcome::Bot => &mut c.bot,
            Outcome::Invalid => &mut c.invalid,
        } += 1;
    }
    c
}

/// `value` (RFC 3339) as Unix ms.
fn time(field: &str, value: Option<&str>) -> Result<Option<i64>, String> {
    value
        .map(|v| {
            v.parse::<jiff::Timestamp>()
                .map(|t| t.as_millisecond())
                .map_err(|_| format!("{field} must be an RFC 3339 time like 2026-12-05T10:00:00Z"))
        })
        .transpose()
}

/// What identifies an event's content: everything it carries but `sent_at` (a retry may
/// send it again later) and `context` (not stored).
fn digest(e: &TrackEvent) -> String {
    let canonical = serde_json::json!([
        e.event,
        e.properties,
        e.timestamp,
        e.user_id,
        e.anonymous_id
    ]);
    let hash = Sha256::digest(canonical.to_string().as_bytes());
    kit::hex(&hash[..16])
}

/// Parses each raw event of a batch on its own: a malformed one becomes its reason.
pub fn parse_events(batch: &[&RawValue]) -> Vec<Result<TrackEvent, String>> {
    batch
        .iter()
        .map(|raw| serde_json::from_str::<TrackEvent>(raw.get()).map_err(|e| e.to_string()))
        .collect()
}
