//! Rollups: count, sum, min and max of every measure per minute, hour and day bucket,
//! kept current by upserts as events are accepted, and recomputable from the raw events.
//!
//! Both paths go through [`Rollup`]: an accepted batch (or one domain event) is aggregated
//! in memory first, so a batch of 100 events in one minute costs one upsert per key, not
//! one per event; then [`upsert`] merges it into the table with `ON CONFLICT … DO UPDATE`
//! (the same SQL on SQLite and PostgreSQL). [`rebuild`] aggregates every raw event the
//! same way and replaces the table. Keys are written in sorted order, so two transactions
//! on PostgreSQL take their row locks in one order and cannot deadlock.

use std::collections::BTreeMap;

use kit::{Db, DbError, DbKind};
use sqlx::{Any, Row, Transaction};

use crate::measure::{measures, Measure};

/// A bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Granularity {
    /// 60 s.
    Minute,
    /// 3 600 s.
    Hour,
    /// 86 400 s (UTC days).
    Day,
}

impl Granularity {
    /// Every granularity, finest first.
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// Its length in ms.
    pub const fn ms(self) -> i64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    /// Its name in the table and in queries.
    pub const fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    /// The granularity called `s`.
    pub fn parse(s: &str) -> Option<Granularity> {
        Granularity::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// The start of the bucket holding `at` (Unix ms, floor also before 1970).
    pub const fn bucket(self, at: i64) -> i64 {
        at.div_euclid(self.ms()) * self.ms()
    }
}

/// One row's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// `orders.confirmed`, `revenue`, `events`…
    pub metric: String,
    /// Minute, hour or day.
    pub granularity: Granularity,
    /// The dimension (`product`, `name`…), `""` for the metric's total.
    pub dim: String,
    /// The bucket's start, Unix ms UTC.
    pub bucket: i64,
    /// ISO 4217 for money, `""` otherwise: amounts in two currencies are never added.
    pub currency: String,
    /// The dimension's value (`MUG-001`), `""` for the total.
    pub dim_value: String,
}

/// What a row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agg {
    /// Measures counted.
    pub count: i64,
    /// Their values added (minor units for money).
    pub sum: i64,
    /// The smallest value.
    pub min: i64,
    /// The largest value.
    pub max: i64,
}

impl Agg {
    fn of(value: i64) -> Agg {
        Agg {
            count: 1,
            sum: value,
            min: value,
            max: value,
        }
    }

    fn merge(&mut self, o: Agg) {
        self.count += o.count;
        self.sum = self.sum.saturating_add(o.sum);
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// Rollup rows aggregated in memory, sorted by key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rollup(pub BTreeMap<Key, Agg>);

impl Rollup {
    /// Adds every measure of the event `name` from `source` with `properties` that
    /// occurred `at`.
    pub fn add_event(&mut self, source: &str, name: &str, properties: &serde_json::Value, at: i64) {
        for m in measures(source, name, properties) {
            self.add(&m, at);
        }
    }

    /// Adds `m` at `at` to its total row and each of its dimensions, in every granularity.
    pub fn add(&mut self, m: &Measure, at: i64) {
        let dims = std::iter::once(("", "")).chain(m.dims.iter().map(|(d, v)| (*d, v.as_str())));
        for (dim, value) in dims {
            for g in Granularity::ALL {
                let key = Key {
                    metric: m.metric.to_owned(),
                    granularity: g,
                    dim: dim.to_owned(),
                    bucket: g.bucket(at),
                    currency: m.currency.clone(),
                    dim_value: value.to_owned(),
                };
                self.0
                    .entry(key)
                    .and_modify(|a| a.merge(Agg::of(m.value)))
                    .or_insert(Agg::of(m.value));
            }
        }
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Columns per rollup row; rows per statement keep the parameters under SQLite's 32 766.
const COLUMNS: usize = 10;
const ROWS_PER_STATEMENT: usize = 500;

/// Merges `rollup` into the table inside `tx`.
pub async fn upsert(tx: &mut Transaction<'static, Any>, rollup: &Rollup) -> Result<(), DbError> {
    let rows: Vec<_> = rollup.0.iter().collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO rollups (metric, granularity, dim, bucket, currency, dim_value, count, \
             sum, min, max) VALUES {} ON CONFLICT (metric, granularity, dim, bucket, currency, \
             dim_value) DO UPDATE SET count = rollups.count + excluded.count, \
             sum = rollups.sum + excluded.sum, \
             min = CASE WHEN excluded.min < rollups.min THEN excluded.min ELSE rollups.min END, \
             max = CASE WHEN excluded.max > rollups.max THEN excluded.max ELSE rollups.max END",
            placeholders(chunk.len(), COLUMNS)
        );
        let mut q = sqlx::query(&sql);
        for (k, a) in chunk {
            q = q
                .bind(k.metric.as_str())
                .bind(k.granularity.as_str())
                .bind(k.dim.as_str())
                .bind(k.bucket)
                .bind(k.currency.as_str())
                .bind(k.dim_value.as_str())
                .bind(a.count)
                .bind(a.sum)
                .bind(a.min)
                .bind(a.max);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// `($1, $2, …), (…)`: `rows` groups of `columns` numbered placeholders.
pub fn placeholders(rows: usize, columns: usize) -> String {
    let mut s = String::with_capacity(rows * columns * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..columns {
            if c > 0 {
                s.push_str(", ");
            }
            s.push('$');
            s.push_str(&(r * columns + c + 1).to_string());
        }
        s.push(')');
    }
    s
}

/// Every rollup row, sorted by key (for tests and `rebuild`'s check).
pub async fn read_all(db: &Db) -> Result<Rollup, DbError> {
    let rows = sqlx::query(
        "SELECT metric, granularity, dim, bucket, currency, dim_value, count, sum, min, max \
         FROM rollups",
    )
    .fetch_all(db.pool())
    .await?;
    let mut all = Rollup::default();
    for r in rows {
        let g: String = r.try_get("granularity")?;
        let key = Key {
            metric: r.try_get("metric")?,
            granularity: Granularity::parse(&g)
                .ok_or_else(|| sqlx::Error::Protocol(format!("granularity {g:?}")))?,
            dim: r.try_get("dim")?,
            bucket: r.try_get("bucket")?,
            currency: r.try_get("currency")?,
            dim_value: r.try_get("dim_value")?,
        };
        let agg = Agg {
            count: r.try_get("count")?,
            sum: r.try_get("sum")?,
            min: r.try_get("min")?,
            max: r.try_get("max")?,
        };
        all.0.insert(key, agg);
    }
    Ok(all)
}

/// Raw events read per page by [`recompute`].
const PAGE: i64 = 5_000;

/// The rollups the raw events add up to, computed from scratch inside `tx`.
pub async fn recompute(tx: &mut Transaction<'static, Any>) -> Result<Rollup, DbError> {
    let mut all = Rollup::default();
    let mut after = String::new();
    loop {
        let rows = sqlx::query(
            "SELECT id, source, name, occurred_at, properties FROM events WHERE id > $1 \
             ORDER BY id LIMIT $2",
        )
        .bind(&after)
        .bind(PAGE)
        .fetch_all(&mut **tx)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get("id")?;
        for r in &rows {
            let properties: String = r.try_get("properties")?;
            let properties =
                serde_json::from_str(&properties).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            all.add_event(
                &r.try_get::<String, _>("source")?,
                &r.try_get::<String, _>("name")?,
                &properties,
                r.try_get("occurred_at")?,
            );
        }
    }
    Ok(all)
}

/// Replaces every rollup with a recompute from the raw events; how many rows it wrote.
/// Ingest waits meanwhile (SQLite's write lock; on PostgreSQL a lock on `events` that
/// inserts wait for), so no event is counted twice or missed.
pub async fn rebuild(db: &Db) -> Result<usize, DbError> {
    let mut tx = db.begin().await?;
    if db.kind() == DbKind::Postgres {
        sqlx::query("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM rollups").execute(&mut *tx).await?;
    let all = recompute(&mut tx).await?;
    upsert(&mut tx, &all).await?;
    tx.commit().await?;
    Ok(all.0.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_floor_in_utc_also_before_1970() {
        assert_eq!(Granularity::Minute.bucket(119_999), 60_000);
        assert_eq!(Granularity::Hour.bucket(3_600_000 * 5 + 1), 3_600_000 * 5);
        assert_eq!(Granularity::Day.bucket(-1), -86_400_000);
    }

    #[test]
    fn placeholders_number_rows_then_columns() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }

    #[test]
    fn a_measure_lands_in_its_total_and_its_dimensions_in_every_granularity() {
        let mut r = Rollup::default();
        let m = Measure {
            metric: "product.revenue",
            currency: "EUR".into(),
            value: 250,
            dims: vec![("product", "MUG".into())],
        };
        r.add(&m, 90_000);
        r.add(&Measure { value: 100, ..m }, 100_000);
        assert_eq!(r.0.len(), 6);
        let total_minute =
            r.0.iter()
                .find(|(k, _)| k.dim.is_empty() && k.granularity == Granularity::Minute)
                .map(|(_, a)| *a);
        assert_eq!(
            total_minute,
            Some(Agg {
                count: 2,
                sum: 350,
                min: 100,
                max: 250
            })
        );
    }
}
