//! Storage: one sqlx pool that is SQLite (the embedded default, a file under `./data`) or
//! PostgreSQL (when the URL says `postgres://`), behind sqlx's `Any` driver so every service
//! writes one SQL dialect for both.
//!
//! The dialect, in short: `$1` placeholders (sqlx's SQLite driver binds them by number);
//! `TEXT`, `BIGINT` and `INTEGER` columns only (ids are UUIDv7 strings, times are Unix
//! milliseconds, money is `i64` minor units); `ON CONFLICT`, `RETURNING`, and conditional
//! `UPDATE … WHERE` with a rows-affected check instead of `SELECT … FOR UPDATE`.
//!
//! Writers on SQLite start with `BEGIN IMMEDIATE` ([`Db::begin`]): a deferred transaction
//! that reads and then writes can fail at once with `SQLITE_BUSY` when another writer
//! committed in between, without waiting out the busy timeout.

use std::path::Path;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Transaction};

/// Which database a [`Db`] talks to; the SQL is the same, a few pragmas and the transaction
/// start differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// A SQLite file (WAL mode, 5 s busy timeout, foreign keys on).
    Sqlite,
    /// A PostgreSQL database.
    Postgres,
}

/// A storage error as a service sees it: a unique index said no, nothing matched, or the
/// database failed (the cause is kept for the log, never shown to a client).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A unique constraint refused the write (both databases map here).
    #[error("conflict: a row with the same unique key exists")]
    Conflict,
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// Anything else the database or the driver reported.
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => DbError::NotFound,
            sqlx::Error::Database(d) if d.is_unique_violation() => DbError::Conflict,
            _ => DbError::Other(e),
        }
    }
}

/// Whether an sqlx error is a unique-constraint violation, on SQLite or PostgreSQL.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// A connection pool plus what kind of database it reaches. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    kind: DbKind,
}

static DRIVERS: Once = Once::new();

/// The first migration version a service may use; lower versions belong to the kit.
pub const SERVICE_MIGRATIONS_FROM: i64 = 1000;

impl Db {
    /// Connects to `url`: `sqlite://path/to/file.db` (created when missing, parent folders
    /// too) or `postgres://…`. Does not run migrations: see [`Db::migrate`].
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let kind = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DbKind::Postgres
        } else if url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else {
            return Err(DbError::Other(sqlx::Error::Configuration(
                format!("unsupported database URL {url:?}: expected sqlite:// or postgres://")
                    .into(),
            )));
        };
        let url = match kind {
            DbKind::Sqlite => prepare_sqlite(url).await?,
            DbKind::Postgres => url.to_owned(),
        };
        let mut options = AnyConnectOptions::from_str(&url)?;
        options = options.log_statements(tracing::log::LevelFilter::Trace);
        let pool = AnyPoolOptions::new()
            .max_connections(match kind {
                DbKind::Sqlite => 8,
                DbKind::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Db { pool, kind })
    }

    /// Opens (creating it when missing) the SQLite file `name.db` under `dir`.
    pub async fn sqlite_in(dir: &Path, name: &str) -> Result<Db, DbError> {
        let path = dir.join(format!("{name}.db"));
        Db::connect(&format!("sqlite://{}", path.display())).await
    }

    /// Runs the kit's migrations (outbox, inbox, idempotency keys: versions below
    /// [`SERVICE_MIGRATIONS_FROM`]) and the service's own (`sqlx::migrate!("./migrations")`,
    /// versions from [`SERVICE_MIGRATIONS_FROM`] up) as one ordered list.
    pub async fn migrate(&self, service: &Migrator) -> Result<(), DbError> {
        if let Some(m) = service
            .migrations
            .iter()
            .find(|m| m.version < SERVICE_MIGRATIONS_FROM)
        {
            return Err(DbError::Other(sqlx::Error::Configuration(
                format!(
                    "migration {} ({}) uses a version below {SERVICE_MIGRATIONS_FROM}, which the kit keeps for itself",
                    m.version, m.description
                )
                .into(),
            )));
        }
        let mut all: Vec<_> = crate::migrations::KIT.migrations.to_vec();
        all.extend(service.migrations.iter().cloned());
        all.sort_by_key(|m| m.version);
        let migrator = Migrator {
            migrations: all.into(),
            ..Migrator::DEFAULT
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| DbError::Other(e.into()))
    }

    /// The pool, for queries outside a transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// Starts a transaction that will write: `BEGIN IMMEDIATE` on SQLite (takes the write
    /// lock up front, waiting out the busy timeout), plain `BEGIN` on PostgreSQL.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, DbError> {
        Ok(match self.kind {
            DbKind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            DbKind::Postgres => self.pool.begin().await?,
        })
    }

    /// Whether the database answers (for `/ready`).
    pub async fn ping(&self) -> bool {
        match self.pool.acquire().await {
            Ok(mut c) => c.ping().await.is_ok(),
            Err(_) => false,
        }
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates the file's folder, switches the file to WAL once (a persistent setting that
/// needs an exclusive lock, so not per connection), and returns a URL that creates the file.
async fn prepare_sqlite(url: &str) -> Result<String, DbError> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or(path);
    if path != ":memory:" {
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                DbError::Other(sqlx::Error::Configuration(
                    format!("cannot create {}: {e}", dir.display()).into(),
                ))
            })?;
        }
    }
    let url = if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    };
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let conn = options.connect().await?;
    conn.close().await?;
    Ok(url)
}

/// Milliseconds since the Unix epoch, the kit's one time format in the database.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new time-ordered id (UUIDv7 as text: ids sort by creation time).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A database URL without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            super::redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            super::redact_url("postgres://app@db/x"),
            "postgres://app@db/x"
        );
        assert_eq!(
            super::redact_url("sqlite://data/u.db"),
            "sqlite://data/u.db"
        );
    }
}
