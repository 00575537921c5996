//! The live dashboard: an HTML page (server-rendered with minijinja, uPlot vendored from
//! the npm registry, no CDN) where an admin signs in and watches the shop: orders and
//! revenue per minute, today's totals, the funnel, top products, ingest and what it dropped.
//!
//! The page is public (a browser opening a URL sends no bearer token); its data is not.
//! After signing in through the user service it reads `GET /analytics/dashboard/live`, a
//! server-sent event stream of [`Snapshot`]s with its bearer token (fetch, not
//! `EventSource`, which cannot send one).
//!
//! One task computes a snapshot when the rollups change (at most about twice a second, and
//! every 10 s so the minute window rolls), only while someone watches, and every stream
//! sends that same one: 100 open dashboards cost one set of queries, not 100.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures_util::Stream;
use kit::{Identity, Json};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::error::Error;
use crate::reports::{self, label, FunnelDay, TopProduct};
use crate::rollup::Granularity;
use crate::sources::require_admin;
use crate::store::Counts;
use crate::AppState;

const PAGE: &str = include_str!("../assets/dashboard.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");
const UPLOT_JS: &str = include_str!("../assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/uplot/uPlot.min.css");

/// Minutes the per-minute charts show.
pub const WINDOW_MINUTES: i64 = 60;

/// What the dashboard shows, at one moment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// When it was computed (RFC 3339, UTC).
    pub generated_at: String,
    /// The start of today (UTC) for the day figures.
    pub day: String,
    /// The start of each minute of the last hour, Unix ms, oldest first.
    pub minutes: Vec<i64>,
    /// Orders confirmed per minute (all currencies).
    pub orders_per_minute: Vec<i64>,
    /// Revenue per minute, minor units, per currency.
    pub revenue_per_minute: BTreeMap<String, Vec<i64>>,
    /// Client events accepted per minute (by arrival).
    pub events_per_minute: Vec<i64>,
    /// Client events dropped per minute (duplicate, conflict, late, bot, invalid).
    pub dropped_per_minute: Vec<i64>,
    /// Today's figures.
    pub today: Today,
    /// Today's funnel.
    pub funnel: FunnelDay,
    /// Today's best sellers (five per currency).
    pub top_products: Vec<TopProduct>,
    /// What ingest did in the last hour, by outcome.
    pub ingest_last_hour: Counts,
}

/// Today's totals.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Today {
    /// Orders placed.
    pub orders_placed: i64,
    /// Orders confirmed.
    pub orders_confirmed: i64,
    /// Orders cancelled.
    pub orders_cancelled: i64,
    /// Confirmed revenue per currency, minor units.
    pub revenue: BTreeMap<String, i64>,
    /// Product page views.
    pub views: i64,
    /// Accounts registered.
    pub registrations: i64,
}

/// The dashboard as of `now` (Unix ms).
pub async fn snapshot(db: &kit::Db, now: i64) -> Result<Snapshot, Error> {
    let minute = Granularity::Minute;
    let last = minute.bucket(now);
    let first = last - (WINDOW_MINUTES - 1) * minute.ms();
    let minutes: Vec<i64> = (0..WINDOW_MINUTES)
        .map(|i| first + i * minute.ms())
        .collect();
    let slot = |bucket: i64| ((bucket - first) / minute.ms()) as usize;
    let utc = jiff::tz::TimeZone::UTC;
    let per_minute = |metric: &'static str| reports::Series {
        metric,
        dim: "",
        currency: None,
        granularity: minute,
        tz: &utc,
        from: first,
        to: last + minute.ms(),
    };
    let mut orders_per_minute = vec![0; minutes.len()];
    for p in reports::series(db, &per_minute("orders.confirmed")).await? {
        orders_per_minute[slot(p.bucket)] += p.agg.count;
    }
    let mut revenue_per_minute: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for p in reports::series(db, &per_minute("revenue")).await? {
        revenue_per_minute
            .entry(p.currency)
            .or_insert_with(|| vec![0; minutes.len()])[slot(p.bucket)] += p.agg.sum;
    }
    let (mut events_per_minute, mut dropped_per_minute) =
        (vec![0; minutes.len()], vec![0; minutes.len()]);
    let mut last_hour = Counts::default();
    let rows = sqlx::query(
        "SELECT minute, outcome, count FROM ingest_counts WHERE minute >= $1 AND minute <= $2",
    )
    .bind(first)
    .bind(last)
    .fetch_all(db.pool())
    .await?;
    for r in rows {
        let (m, outcome, n): (i64, String, i64) = (
            r.try_get("minute")?,
            r.try_get("outcome")?,
            r.try_get("count")?,
        );
        let i = slot(m);
        let field = match outcome.as_str() {
            "accepted" => {
                events_per_minute[i] += n;
                &mut last_hour.accepted
            }
            other => {
                dropped_per_minute[i] += n;
                match other {
                    "duplicate" => &mut last_hour.duplicate,
                    "conflict" => &mut last_hour.conflict,
                    "late" => &mut last_hour.late,
                    "bot" => &mut last_hour.bot,
                    _ => &mut last_hour.invalid,
                }
            }
        };
        *field += n;
    }
    let day = Granularity::Day.bucket(now);
    let (from, to) = (label(&utc, day), label(&utc, day + Granularity::Day.ms()));
    let today = today(db, day).await?;
    let funnel = reports::funnel(
        db,
        &reports::FunnelQuery {
            from: from.clone(),
            to: to.clone(),
            tz: None,
        },
    )
    .await?
    .total;
    let top_products = reports::top_products(
        db,
        &reports::TopQuery {
            from: from.clone(),
            to,
            limit: Some(5),
            tz: None,
        },
    )
    .await?
    .rows;
    Ok(Snapshot {
        generated_at: label(&utc, now),
        day: from,
        minutes,
        orders_per_minute,
        revenue_per_minute,
        events_per_minute,
        dropped_per_minute,
        today,
        funnel,
        top_products,
        ingest_last_hour: last_hour,
    })
}

async fn today(db: &kit::Db, day: i64) -> Result<Today, Error> {
    let rows = sqlx::query(
        "SELECT metric, currency, count, sum FROM rollups WHERE granularity = 'day' \
         AND bucket = $1 AND dim = ''",
    )
    .bind(day)
    .fetch_all(db.pool())
    .await?;
    let mut t = Today::default();
    for r in rows {
        let metric: String = r.try_get("metric")?;
        let (count, sum): (i64, i64) = (r.try_get("count")?, r.try_get("sum")?);
        match metric.as_str() {
            "orders.placed" => t.orders_placed += count,
            "orders.confirmed" => t.orders_confirmed += count,
            "orders.cancelled" => t.orders_cancelled += count,
            "revenue" => {
                *t.revenue.entry(r.try_get("currency")?).or_insert(0) += sum;
            }
            "products.viewed" => t.views += sum,
            "users.registered" => t.registrations += count,
            _ => {}
        }
    }
    Ok(t)
}

/// The latest snapshot, shared by every open dashboard.
pub struct Live {
    latest: watch::Sender<Option<Arc<str>>>,
}

impl Live {
    /// Recomputes the snapshot from `db` after each change (and every 10 s) while anyone
    /// watches.
    pub fn spawn(
        db: kit::Db,
        mut changes: watch::Receiver<u64>,
    ) -> (Arc<Live>, tokio::task::JoinHandle<()>) {
        let (latest, _) = watch::channel(None);
        let live = Arc::new(Live { latest });
        let me = live.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
                if me.latest.receiver_count() == 0 {
                    continue;
                }
                me.refresh(&db).await;
                // Coalesce a burst of changes into one more snapshot.
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
        (live, task)
    }

    async fn refresh(&self, db: &kit::Db) {
        match snapshot(db, kit::db::now_ms()).await {
            Ok(s) => match serde_json::to_string(&s) {
                Ok(json) => {
                    self.latest.send_replace(Some(json.into()));
                }
                Err(e) => tracing::warn!(error = %e, "dashboard snapshot not serialized"),
            },
            Err(e) => tracing::warn!(error = %e, "dashboard snapshot failed"),
        }
    }
}

/// The page, rendered once: nothing in it changes while the process runs.
fn rendered_page() -> &'static Result<String, String> {
    static PAGE_HTML: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    PAGE_HTML.get_or_init(|| {
        minijinja::Environment::new()
            .render_str(
                PAGE,
                minijinja::context! {
                    version => env!("CARGO_PKG_VERSION"),
                    window => WINDOW_MINUTES,
                },
            )
            .map_err(|e| e.to_string())
    })
}

/// `GET /analytics/dashboard`: the page.
pub async fn page() -> Response {
    match rendered_page() {
        Ok(html) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; style-src 'self'; script-src 'self'; \
                     connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                ),
            ],
            Html(html.as_str()),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard template");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `GET /analytics/dashboard/assets/{file}`: the page's script, style and uPlot.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "dashboard.css" => (STYLE, "text/css; charset=utf-8"),
        "uPlot.iife.min.js" => (UPLOT_JS, "text/javascript; charset=utf-8"),
        "uPlot.min.css" => (UPLOT_CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// `GET /analytics/dashboard/snapshot`.
#[utoipa::path(get, path = "/analytics/dashboard/snapshot", operation_id = "dashboardSnapshot",
    tag = "reports", summary = "What the live dashboard shows, now (admins)",
    description = "`GET /analytics/dashboard/live` streams the same object as server-sent \
        events (`event: snapshot`) each time it changes.",
    security(("bearer" = [])),
    responses((status = 200, description = "The dashboard's figures", body = Snapshot)))]
pub async fn get_snapshot(
    State(s): State<AppState>,
    id: Identity,
) -> Result<Json<Snapshot>, Error> {
    require_admin(&id)?;
    Ok(Json(snapshot(&s.db, kit::db::now_ms()).await?))
}

/// `GET /analytics/dashboard/live`: snapshots as server-sent events, the first at once.
pub async fn live(
    State(s): State<AppState>,
    id: Identity,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Error> {
    require_admin(&id)?;
    let mut rx = s.live.latest.subscribe();
    let first = snapshot(&s.db, kit::db::now_ms()).await?;
    let first = serde_json::to_string(&first).unwrap_or_default();
    rx.mark_unchanged();
    let stream = futures_util::stream::unfold((Some(first), rx), |(first, mut rx)| async move {
        if let Some(json) = first {
            return Some((
                Ok(Event::default().event("snapshot").data(json)),
                (None, rx),
            ));
        }
        loop {
            rx.changed().await.ok()?;
            let latest = rx.borrow_and_update().clone();
            if let Some(json) = latest {
                return Some((
                    Ok(Event::default().event("snapshot").data(&*json)),
                    (None, rx),
                ));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
