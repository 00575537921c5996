//! Reports, read from the rollups only: a metric over time, the top products by revenue,
//! and the funnel from product views to confirmed orders. Each is JSON, or CSV (RFC 4180,
//! header row) with `Accept: text/csv` or the `.csv` path: the same rows either way.
//!
//! Buckets are UTC. With `tz=` (an IANA zone) day buckets follow that zone's midnights,
//! summed from hour buckets (or minute buckets for a zone whose midnights fall on the half
//! hour), so a shop in Paris sees its own days.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use kit::Query;
use kit::{Identity, Json};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

use crate::error::Error;
use crate::measure::METRICS;
use crate::rollup::{Agg, Granularity};
use crate::sources::require_admin;
use crate::AppState;

/// Buckets one report may span.
pub const MAX_BUCKETS: i64 = 50_000;

/// `GET /analytics/reports`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// The metric: `events`, `orders.placed`, `orders.confirmed`, `orders.cancelled`,
    /// `orders.refunded`, `revenue`, `product.revenue`, `product.units`,
    /// `product.refunded`, `payments.captured`, `payments.refunded`, `users.registered`,
    /// `products.viewed`.
    #[param(example = "revenue")]
    pub metric: String,
    /// The start, included: RFC 3339 (`2026-12-05T00:00:00Z`) or a date (`2026-12-05`,
    /// midnight in `tz`).
    #[param(example = "2026-12-01")]
    pub from: String,
    /// The end, excluded; same forms as `from`.
    #[param(example = "2026-12-08")]
    pub to: String,
    /// `minute`, `hour` or `day` (default).
    #[param(example = "day")]
    pub granularity: Option<String>,
    /// A dimension to break the metric down by: `name` (of `events`) or `product` (of
    /// `product.revenue`, `product.units`, `products.viewed`).
    pub group_by: Option<String>,
    /// Only this currency (ISO 4217).
    pub currency: Option<String>,
    /// An IANA time zone for day boundaries and the buckets' labels (default `UTC`).
    #[param(example = "Europe/Paris")]
    pub tz: Option<String>,
}

/// One row of a metric report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"bucket": "2026-12-05T00:00:00+00:00", "group": null,
    "currency": "EUR", "count": 12, "sum": 30900, "min": 1250, "max": 5600}))]
pub struct ReportRow {
    /// The bucket's start, RFC 3339 in the report's time zone.
    pub bucket: String,
    /// The dimension's value, with `group_by`.
    pub group: Option<String>,
    /// The currency of money metrics.
    pub currency: Option<String>,
    /// Measures counted (orders, events, lines…).
    pub count: i64,
    /// Their values added (minor units for money).
    pub sum: i64,
    /// The smallest value.
    pub min: i64,
    /// The largest value.
    pub max: i64,
}

/// A metric report. Buckets with nothing in them are left out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Report {
    /// The metric.
    pub metric: String,
    /// The bucket size.
    pub granularity: String,
    /// The time zone of `bucket`.
    pub tz: String,
    /// The first bucket's start (RFC 3339).
    pub from: String,
    /// The end of the last bucket (RFC 3339, excluded).
    pub to: String,
    /// In bucket order, then currency, then group.
    pub rows: Vec<ReportRow>,
}

/// One bucket of a series, before labelling.
#[derive(Debug, Clone)]
pub struct Point {
    /// The bucket's start, Unix ms.
    pub bucket: i64,
    /// `""` for non-money metrics.
    pub currency: String,
    /// `""` without a dimension.
    pub group: String,
    /// The numbers.
    pub agg: Agg,
}

/// What a series reads.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// The metric.
    pub metric: &'a str,
    /// The dimension (`""` for totals).
    pub dim: &'a str,
    /// Only this currency.
    pub currency: Option<&'a str>,
    /// The bucket size.
    pub granularity: Granularity,
    /// Day boundaries and labels.
    pub tz: &'a TimeZone,
    /// Unix ms, included (a bucket start).
    pub from: i64,
    /// Unix ms, excluded (a bucket start).
    pub to: i64,
}

/// The span of `[from, to)` in `granularity` buckets of `tz`: the first bucket's start and
/// the end of the last.
pub fn span(
    granularity: Granularity,
    tz: &TimeZone,
    from: Timestamp,
    to: Timestamp,
) -> Result<(i64, i64), Error> {
    if granularity == Granularity::Day && *tz != TimeZone::UTC {
        let start = day_start(tz, from.as_millisecond())?;
        let last = day_start(tz, to.as_millisecond() - 1)?;
        let end = next_day(tz, last)?;
        Ok((start, end))
    } else {
        let g = granularity;
        let end = g.bucket(to.as_millisecond() - 1) + g.ms();
        Ok((g.bucket(from.as_millisecond()), end))
    }
}

fn day_start(tz: &TimeZone, at: i64) -> Result<i64, Error> {
    let ts = Timestamp::from_millisecond(at).map_err(|_| Error::field("from", "out of range"))?;
    ts.to_zoned_datetime(tz.clone())
        .start_of_day()
        .map(|z| z.timestamp().as_millisecond())
        .map_err(|_| Error::field("tz", "cannot find the start of a day in this zone"))
}

fn next_day(tz: &TimeZone, day_start_ms: i64) -> Result<i64, Error> {
    // A day is 23 to 25 hours: the start of the day holding start + 25 h, unless that
    // skipped a day.
    let probe = day_start(tz, day_start_ms + 25 * 3_600_000)?;
    if probe > day_start_ms + 3_600_000 * 22 && probe <= day_start_ms + 3_600_000 * 26 {
        Ok(probe)
    } else {
        day_start(tz, day_start_ms + 24 * 3_600_000 - 1).map(|d| d.max(day_start_ms + 1))
    }
}

/// The points of `s`, in bucket, currency, group order.
pub async fn series(db: &kit::Db, s: &Series<'_>) -> Result<Vec<Point>, Error> {
    if s.granularity != Granularity::Day || *s.tz == TimeZone::UTC {
        return read(db, s, s.granularity).await;
    }
    // Local days from finer UTC buckets: hours when every midnight falls on an hour.
    let mut days = vec![s.from];
    while *days.last().expect("not empty") < s.to {
        let next = next_day(s.tz, *days.last().expect("not empty"))?;
        days.push(next);
    }
    let fine = if days.iter().all(|d| d % Granularity::Hour.ms() == 0) {
        Granularity::Hour
    } else {
        Granularity::Minute
    };
    let mut out: Vec<Point> = Vec::new();
    for p in read(db, s, fine).await? {
        let i = days.partition_point(|d| *d <= p.bucket) - 1;
        let day = days[i];
        match out
            .iter_mut()
            .rev()
            .take_while(|o| o.bucket == day)
            .find(|o| o.currency == p.currency && o.group == p.group)
        {
            Some(o) => merge(&mut o.agg, p.agg),
            None => out.push(Point { bucket: day, ..p }),
        }
    }
    out.sort_by(|a, b| (a.bucket, &a.currency, &a.group).cmp(&(b.bucket, &b.currency, &b.group)));
    Ok(out)
}

fn merge(a: &mut Agg, b: Agg) {
    a.count += b.count;
    a.sum = a.sum.saturating_add(b.sum);
    a.min = a.min.min(b.min);
    a.max = a.max.max(b.max);
}

async fn read(db: &kit::Db, s: &Series<'_>, g: Granularity) -> Result<Vec<Point>, Error> {
    let rows = sqlx::query(
        "SELECT bucket, currency, dim_value, count, sum, min, max FROM rollups \
         WHERE metric = $1 AND granularity = $2 AND dim = $3 AND bucket >= $4 AND bucket < $5 \
         AND ($6 = '' OR currency = $6) ORDER BY bucket, currency, dim_value",
    )
    .bind(s.metric)
    .bind(g.as_str())
    .bind(s.dim)
    .bind(s.from)
    .bind(s.to)
    .bind(s.currency.unwrap_or_default())
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Point {
                bucket: r.try_get("bucket")?,
                currency: r.try_get("currency")?,
                group: r.try_get("dim_value")?,
                agg: Agg {
                    count: r.try_get("count")?,
                    sum: r.try_get("sum")?,
                    min: r.try_get("min")?,
                    max: r.try_get("max")?,
                },
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Error::from)
}

/// RFC 3339 of `at` in `tz`.
pub fn label(tz: &TimeZone, at: i64) -> String {
    match Timestamp::from_millisecond(at) {
        Ok(ts) => ts
            .to_zoned_datetime(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
        Err(_) => at.to_string(),
    }
}

/// The zone `tz=` names (UTC when absent).
pub fn zone(tz: Option<&str>) -> Result<TimeZone, Error> {
    match tz {
        None | Some("UTC") | Some("Etc/UTC") => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name)
            .map_err(|_| Error::field("tz", format!("{name:?} is not a known IANA time zone"))),
    }
}

/// A time given as RFC 3339 or as a date (its midnight in `tz`).
pub fn instant(field: &'static str, value: &str, tz: &TimeZone) -> Result<Timestamp, Error> {
    if let Ok(ts) = value.parse::<Timestamp>() {
        return Ok(ts);
    }
    value
        .parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned_datetime(tz.clone()).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| {
            Error::field(
                field,
                "must be an RFC 3339 time (2026-12-05T10:00:00Z) or a date (2026-12-05)",
            )
        })
}

/// The dimensions `metric` is broken down by.
fn dimensions(metric: &str) -> &'static [&'static str] {
    match metric {
        "events" => &["name"],
        "product.revenue" | "product.units" | "product.refunded" | "products.viewed" => {
            &["product"]
        }
        _ => &[],
    }
}

/// A report's time frame, checked.
struct Frame {
    tz: TimeZone,
    granularity: Granularity,
    from: i64,
    to: i64,
}

fn frame(
    from: &str,
    to: &str,
    granularity: Option<&str>,
    tz: Option<&str>,
) -> Result<Frame, Error> {
    let tz = zone(tz)?;
    let granularity = match granularity {
        None => Granularity::Day,
        Some(g) => Granularity::parse(g)
            .ok_or_else(|| Error::field("granularity", "must be minute, hour or day"))?,
    };
    let (f, t) = (instant("from", from, &tz)?, instant("to", to, &tz)?);
    if f >= t {
        return Err(Error::field("to", "must be after from"));
    }
    let (from, to) = span(granularity, &tz, f, t)?;
    if (to - from) / granularity.ms() > MAX_BUCKETS {
        return Err(Error::field(
            "granularity",
            format!("the range spans more than {MAX_BUCKETS} buckets: pick a coarser one"),
        ));
    }
    Ok(Frame {
        tz,
        granularity,
        from,
        to,
    })
}

/// Builds a metric report.
pub async fn report(db: &kit::Db, q: &ReportQuery) -> Result<Report, Error> {
    if !METRICS.iter().any(|(m, _)| *m == q.metric) {
        let known: Vec<_> = METRICS.iter().map(|(m, _)| *m).collect();
        return Err(Error::field(
            "metric",
            format!("unknown metric; known: {}", known.join(", ")),
        ));
    }
    let dim = match q.group_by.as_deref() {
        None | Some("") => "",
        Some(d) => dimensions(&q.metric)
            .iter()
            .find(|x| **x == d)
            .copied()
            .ok_or_else(|| {
                Error::field(
                    "group_by",
                    format!(
                        "{} has no dimension {d:?}; it has: {:?}",
                        q.metric,
                        dimensions(&q.metric)
                    ),
                )
            })?,
    };
    let f = frame(&q.from, &q.to, q.granularity.as_deref(), q.tz.as_deref())?;
    let points = series(
        db,
        &Series {
            metric: &q.metric,
            dim,
            currency: q.currency.as_deref(),
            granularity: f.granularity,
            tz: &f.tz,
            from: f.from,
            to: f.to,
        },
    )
    .await?;
    let rows = points
        .into_iter()
        .map(|p| ReportRow {
            bucket: label(&f.tz, p.bucket),
            group: (!dim.is_empty()).then_some(p.group),
            currency: (!p.currency.is_empty()).then_some(p.currency),
            count: p.agg.count,
            sum: p.agg.sum,
            min: p.agg.min,
            max: p.agg.max,
        })
        .collect();
    Ok(Report {
        metric: q.metric.clone(),
        granularity: f.granularity.as_str().into(),
        tz: f.tz.iana_name().unwrap_or("UTC").into(),
        from: label(&f.tz, f.from),
        to: label(&f.tz, f.to),
        rows,
    })
}

/// A row type with its CSV header (written also when there are no rows, so an empty
/// report still opens in a spreadsheet with its columns).
pub trait CsvRow: Serialize {
    /// The column names, in field order.
    const HEADER: &'static [&'static str];
}

impl CsvRow for ReportRow {
    const HEADER: &'static [&'static str] =
        &["bucket", "group", "currency", "count", "sum", "min", "max"];
}

impl CsvRow for TopProduct {
    const HEADER: &'static [&'static str] =
        &["rank", "product", "currency", "revenue", "units", "orders"];
}

impl CsvRow for FunnelDay {
    const HEADER: &'static [&'static str] = &[
        "day",
        "viewed",
        "placed",
        "confirmed",
        "placed_per_view",
        "confirmed_per_placed",
        "confirmed_per_view",
    ];
}

/// JSON, or CSV of `rows` when asked for (the `.csv` path or `Accept: text/csv`).
fn answer<T: Serialize, R: CsvRow>(
    csv: bool,
    headers: &HeaderMap,
    whole: &T,
    rows: &[R],
    name: &str,
) -> Result<Response, Error> {
    let wants_csv = csv
        || headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/csv"));
    if !wants_csv {
        return Ok(Json(whole).into_response());
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.csv\""),
            ),
        ],
        to_csv(rows)?,
    )
        .into_response())
}

/// `rows` as CSV with a header row (RFC 4180: CRLF, quotes where needed).
pub fn to_csv<R: CsvRow>(rows: &[R]) -> Result<String, Error> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .has_headers(false)
        .from_writer(Vec::new());
    w.write_record(R::HEADER).map_err(csv_error)?;
    for r in rows {
        w.serialize(r).map_err(csv_error)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| csv_error(e.into_error().into()))?;
    String::from_utf8(bytes).map_err(|e| csv_error(csv::Error::from(std::io::Error::other(e))))
}

fn csv_error(e: csv::Error) -> Error {
    Error::Db(kit::DbError::Other(sqlx::Error::Encode(Box::new(e))))
}

/// `GET /analytics/reports`: a metric per bucket.
#[utoipa::path(get, path = "/analytics/reports", operation_id = "report", tag = "reports",
    summary = "A metric per minute, hour or day (admins)", security(("bearer" = [])),
    params(ReportQuery),
    responses((status = 200, description = "The report", content(
        (Report = "application/json"),
        (String = "text/csv", example = "bucket,group,currency,count,sum,min,max\r\n2026-12-05T00:00:00+00:00,,EUR,12,30900,1250,5600\r\n")))))]
pub async fn get_report(
    State(s): State<AppState>,
    id: Identity,
    headers: HeaderMap,
    q: Query<ReportQuery>,
) -> Result<Response, Error> {
    require_admin(&id)?;
    let Query(q) = q;
    let r = report(&s.db, &q).await?;
    answer(false, &headers, &r, &r.rows, &q.metric)
}

/// `GET /analytics/reports.csv`: the same report as CSV.
#[utoipa::path(get, path = "/analytics/reports.csv", operation_id = "reportCsv", tag = "reports",
    summary = "A metric per minute, hour or day, as CSV (admins)", security(("bearer" = [])),
    params(ReportQuery),
    responses((status = 200, description = "The report's rows, with a header row",
        content_type = "text/csv", body = String)))]
pub async fn get_report_csv(
    State(s): State<AppState>,
    id: Identity,
    headers: HeaderMap,
    q: Query<ReportQuery>,
) -> Result<Response, Error> {
    require_admin(&id)?;
    let Query(q) = q;
    let r = report(&s.db, &q).await?;
    answer(true, &headers, &r, &r.rows, &q.metric)
}

/// `GET /analytics/reports/top-products`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopQuery {
    /// The start, included (RFC 3339 or a date).
    #[param(example = "2026-12-01")]
    pub from: String,
    /// The end, excluded (RFC 3339 or a date).
    #[param(example = "2026-12-08")]
    pub to: String,
    /// How many products per currency, 1 to 100 (default 10).
    pub limit: Option<i64>,
    /// For dates given as `from`/`to` (default `UTC`).
    pub tz: Option<String>,
}

/// A product's sales.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"rank": 1, "product": "MUG-001", "currency": "EUR",
    "revenue": 25000, "units": 20, "orders": 9}))]
pub struct TopProduct {
    /// 1 for the best seller in its currency.
    pub rank: i64,
    /// The SKU.
    pub product: String,
    /// The currency of `revenue`.
    pub currency: String,
    /// Confirmed revenue, minor units.
    pub revenue: i64,
    /// Units confirmed.
    pub units: i64,
    /// Confirmed order lines with it.
    pub orders: i64,
}

/// The top products report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopProducts {
    /// The start (RFC 3339).
    pub from: String,
    /// The end, excluded (RFC 3339).
    pub to: String,
    /// Per currency, best first.
    pub rows: Vec<TopProduct>,
}

/// The finest bucket both ends fall on.
fn exact(from: i64, to: i64) -> Granularity {
    Granularity::ALL
        .into_iter()
        .rev()
        .find(|g| from % g.ms() == 0 && to % g.ms() == 0)
        .unwrap_or(Granularity::Minute)
}

/// Builds the top products by confirmed revenue.
pub async fn top_products(db: &kit::Db, q: &TopQuery) -> Result<TopProducts, Error> {
    let tz = zone(q.tz.as_deref())?;
    let limit = q.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(Error::field("limit", "must be 1 to 100"));
    }
    let (f, t) = (instant("from", &q.from, &tz)?, instant("to", &q.to, &tz)?);
    if f >= t {
        return Err(Error::field("to", "must be after from"));
    }
    let from = Granularity::Minute.bucket(f.as_millisecond());
    let to = Granularity::Minute.bucket(t.as_millisecond() - 1) + Granularity::Minute.ms();
    let g = exact(from, to);
    let rows = sqlx::query(
        "SELECT r.currency, r.dim_value, CAST(SUM(r.sum) AS BIGINT) AS revenue, \
         CAST(SUM(r.count) AS BIGINT) AS lines, \
         (SELECT CAST(SUM(u.sum) AS BIGINT) FROM rollups u WHERE u.metric = 'product.units' \
          AND u.granularity = $1 AND u.dim = 'product' AND u.dim_value = r.dim_value \
          AND u.currency = r.currency \
          AND u.bucket >= $2 AND u.bucket < $3) AS units \
         FROM rollups r WHERE r.metric = 'product.revenue' AND r.granularity = $1 \
         AND r.dim = 'product' AND r.bucket >= $2 AND r.bucket < $3 \
         GROUP BY r.currency, r.dim_value ORDER BY r.currency, revenue DESC, r.dim_value",
    )
    .bind(g.as_str())
    .bind(from)
    .bind(to)
    .fetch_all(db.pool())
    .await?;
    let mut out: Vec<TopProduct> = Vec::new();
    for r in rows {
        let currency: String = r.try_get("currency")?;
        let rank = match out.last() {
            Some(p) if p.currency == currency => p.rank + 1,
            _ => 1,
        };
        if rank > limit {
            continue;
        }
        out.push(TopProduct {
            rank,
            product: r.try_get("dim_value")?,
            currency,
            revenue: r.try_get("revenue")?,
            units: r.try_get::<Option<i64>, _>("units")?.unwrap_or(0),
            orders: r.try_get("lines")?,
        });
    }
    Ok(TopProducts {
        from: label(&tz, from),
        to: label(&tz, to),
        rows: out,
    })
}

/// `GET /analytics/reports/top-products`.
#[utoipa::path(get, path = "/analytics/reports/top-products", operation_id = "topProducts",
    tag = "reports", summary = "Best-selling products by confirmed revenue (admins)",
    security(("bearer" = [])), params(TopQuery),
    responses((status = 200, description = "Per currency, best first", content(
        (TopProducts = "application/json"), (String = "text/csv")))))]
pub async fn get_top_products(
    State(s): State<AppState>,
    id: Identity,
    headers: HeaderMap,
    q: Query<TopQuery>,
) -> Result<Response, Error> {
    require_admin(&id)?;
    let r = top_products(&s.db, &q.0).await?;
    answer(false, &headers, &r, &r.rows, "top-products")
}

/// `GET /analytics/reports/funnel`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FunnelQuery {
    /// The first day, included (RFC 3339 or a date).
    #[param(example = "2026-12-01")]
    pub from: String,
    /// The end, excluded (RFC 3339 or a date).
    #[param(example = "2026-12-08")]
    pub to: String,
    /// Whose days (default `UTC`).
    pub tz: Option<String>,
}

/// One day of the funnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"day": "2026-12-05T00:00:00+00:00", "viewed": 400, "placed": 20,
    "confirmed": 18, "placed_per_view": 0.05, "confirmed_per_placed": 0.9,
    "confirmed_per_view": 0.045}))]
pub struct FunnelDay {
    /// The day's start (RFC 3339 in the report's zone).
    pub day: String,
    /// Product page views.
    pub viewed: i64,
    /// Orders placed.
    pub placed: i64,
    /// Orders confirmed.
    pub confirmed: i64,
    /// placed ÷ viewed (`null` without views).
    pub placed_per_view: Option<f64>,
    /// confirmed ÷ placed (`null` without orders).
    pub confirmed_per_placed: Option<f64>,
    /// confirmed ÷ viewed (`null` without views).
    pub confirmed_per_view: Option<f64>,
}

/// The funnel report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Funnel {
    /// The time zone of `day`.
    pub tz: String,
    /// One row per day, every day of the range (zeros included).
    pub rows: Vec<FunnelDay>,
    /// The whole range's totals and rates.
    pub total: FunnelDay,
}

fn rate(n: i64, d: i64) -> Option<f64> {
    (d > 0).then(|| (n as f64 / d as f64 * 10_000.0).round() / 10_000.0)
}

fn funnel_day(day: String, viewed: i64, placed: i64, confirmed: i64) -> FunnelDay {
    FunnelDay {
        day,
        viewed,
        placed,
        confirmed,
        placed_per_view: rate(placed, viewed),
        confirmed_per_placed: rate(confirmed, placed),
        confirmed_per_view: rate(confirmed, viewed),
    }
}

/// Builds the funnel per day: product viewed → order placed → order confirmed.
pub async fn funnel(db: &kit::Db, q: &FunnelQuery) -> Result<Funnel, Error> {
    let f = frame(&q.from, &q.to, Some("day"), q.tz.as_deref())?;
    let mut days: Vec<(i64, [i64; 3])> = Vec::new();
    let mut d = f.from;
    while d < f.to {
        days.push((d, [0; 3]));
        d = if f.tz == TimeZone::UTC {
            d + Granularity::Day.ms()
        } else {
            next_day(&f.tz, d)?
        };
    }
    for (i, (metric, use_sum)) in [
        ("products.viewed", true),
        ("orders.placed", false),
        ("orders.confirmed", false),
    ]
    .into_iter()
    .enumerate()
    {
        let s = Series {
            metric,
            dim: "",
            currency: None,
            granularity: Granularity::Day,
            tz: &f.tz,
            from: f.from,
            to: f.to,
        };
        for p in series(db, &s).await? {
            if let Some(day) = days.iter_mut().find(|(d, _)| *d == p.bucket) {
                day.1[i] += if use_sum { p.agg.sum } else { p.agg.count };
            }
        }
    }
    let mut total = [0i64; 3];
    let rows = days
        .into_iter()
        .map(|(d, [v, p, c])| {
            total[0] += v;
            total[1] += p;
            total[2] += c;
            funnel_day(label(&f.tz, d), v, p, c)
        })
        .collect();
    Ok(Funnel {
        tz: f.tz.iana_name().unwrap_or("UTC").into(),
        rows,
        total: funnel_day(label(&f.tz, f.from), total[0], total[1], total[2]),
    })
}

/// `GET /analytics/reports/funnel`.
#[utoipa::path(get, path = "/analytics/reports/funnel", operation_id = "funnel",
    tag = "reports", summary = "Views → orders placed → confirmed, per day (admins)",
    security(("bearer" = [])), params(FunnelQuery),
    responses((status = 200, description = "Per day and in all", content(
        (Funnel = "application/json"), (String = "text/csv")))))]
pub async fn get_funnel(
    State(s): State<AppState>,
    id: Identity,
    headers: HeaderMap,
    q: Query<FunnelQuery>,
) -> Result<Response, Error> {
    require_admin(&id)?;
    let r = funnel(&s.db, &q.0).await?;
    answer(false, &headers, &r, &r.rows, "funnel")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header names exactly the fields the row serializes.
    fn same_columns<R: CsvRow>(row: &R) {
        let json = serde_json::to_value(row).unwrap();
        let mut fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut header = R::HEADER.to_vec();
        fields.sort();
        header.sort();
        assert_eq!(fields, header);
    }

    #[test]
    fn csv_headers_match_the_fields_and_come_without_rows_too() {
        assert_eq!(
            to_csv::<ReportRow>(&[]).unwrap(),
            "bucket,group,currency,count,sum,min,max\r\n"
        );
        let row = ReportRow {
            bucket: "b".into(),
            group: Some("a \"quoted\", value".into()),
            currency: None,
            count: 1,
            sum: 2,
            min: 2,
            max: 2,
        };
        same_columns(&row);
        same_columns(&TopProduct {
            rank: 1,
            product: "p".into(),
            currency: "EUR".into(),
            revenue: 1,
            units: 1,
            orders: 1,
        });
        same_columns(&funnel_day("d".into(), 1, 1, 1));
        assert_eq!(
            to_csv(&[row]).unwrap(),
            "bucket,group,currency,count,sum,min,max\r\nb,\"a \"\"quoted\"\", value\",,1,2,2,2\r\n"
        );
    }
}
