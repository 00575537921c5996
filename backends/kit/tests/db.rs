//! Storage on both databases: migrations, the unique-violation mapping, and writers that
//! race on SQLite without `database is locked`.

use kit::db::{Db, DbError};
use kit::testing::databases;
use sqlx::migrate::Migrator;
use sqlx::Row;

static MIGRATIONS: Migrator = sqlx::migrate!("./tests/migrations");

#[tokio::test]
async fn migrations_create_the_kit_tables_and_the_service_tables_and_run_twice() {
    for t in databases().await {
        t.db.migrate(&MIGRATIONS).await.expect("migrate");
        t.db.migrate(&MIGRATIONS)
            .await
            .expect("migrate again is a no-op");
        for table in [
            "kit_outbox",
            "kit_outbox_lease",
            "kit_inbox",
            "kit_idempotency",
            "counters",
        ] {
            let n: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
                .fetch_one(t.db.pool())
                .await
                .unwrap_or_else(|e| panic!("{}: {table}: {e}", t.label()))
                .get("n");
            assert_eq!(n, 0, "{}", t.label());
        }
    }
}

#[tokio::test]
async fn a_service_migration_below_1000_is_refused() {
    let t = kit::testing::sqlite().await;
    let bad = Migrator {
        migrations: MIGRATIONS
            .migrations
            .iter()
            .cloned()
            .map(|mut m| {
                m.version = 7;
                m
            })
            .collect::<Vec<_>>()
            .into(),
        ..Migrator::DEFAULT
    };
    let err = t.db.migrate(&bad).await.unwrap_err();
    assert!(err.to_string().contains("below 1000"), "{err}");
}

#[tokio::test]
async fn a_duplicate_key_is_a_conflict_on_both_databases() {
    for t in databases().await {
        t.db.migrate(&MIGRATIONS).await.unwrap();
        let insert = || {
            sqlx::query("INSERT INTO counters (name, value) VALUES ($1, $2)")
                .bind("a")
                .bind(1_i64)
                .execute(t.db.pool())
        };
        insert().await.expect("first insert");
        let err: DbError = insert().await.unwrap_err().into();
        assert!(matches!(err, DbError::Conflict), "{}: {err:?}", t.label());
        let missing: Result<_, DbError> = sqlx::query("SELECT value FROM counters WHERE name = $1")
            .bind("zzz")
            .fetch_one(t.db.pool())
            .await
            .map_err(Into::into);
        assert!(matches!(missing, Err(DbError::NotFound)), "{}", t.label());
    }
}

/// 40 tasks each read-then-write the same row in a transaction: with `BEGIN IMMEDIATE` on
/// SQLite none fails with "database is locked" and no increment is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_write_transactions_lose_nothing() {
    for t in databases().await {
        t.db.migrate(&MIGRATIONS).await.unwrap();
        sqlx::query("INSERT INTO counters (name, value) VALUES ('c', 0)")
            .execute(t.db.pool())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let db: Db = t.db.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = db.begin().await?;
                let v: i64 = sqlx::query("SELECT value FROM counters WHERE name = 'c'")
                    .fetch_one(&mut *tx)
                    .await?
                    .get("value");
                let done =
                    sqlx::query("UPDATE counters SET value = $1 WHERE name = 'c' AND value = $2")
                        .bind(v + 1)
                        .bind(v)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                tx.commit().await?;
                Ok::<u64, DbError>(done)
            }));
        }
        let mut applied = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(n) => applied += n,
                // PostgreSQL's read-committed lets a racing UPDATE find the row changed: the
                // conditional update then affects 0 rows, which is the point of the check.
                Err(e) => panic!("{}: {e}", t.label()),
            }
        }
        let v: i64 = sqlx::query("SELECT value FROM counters WHERE name = 'c'")
            .fetch_one(t.db.pool())
            .await
            .unwrap()
            .get("value");
        assert_eq!(
            v as u64,
            applied,
            "{}: every applied update is counted",
            t.label()
        );
        if t.label() == "sqlite" {
            assert_eq!(v, 40, "sqlite serializes writers: every task applies");
        }
    }
}

#[tokio::test]
async fn committed_rows_survive_closing_and_reopening_the_file() {
    let t = kit::testing::sqlite().await;
    t.db.migrate(&MIGRATIONS).await.unwrap();
    let mut tx = t.db.begin().await.unwrap();
    sqlx::query("INSERT INTO counters (name, value) VALUES ('kept', 7)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = t.db.begin().await.unwrap();
    sqlx::query("INSERT INTO counters (name, value) VALUES ('dropped', 8)")
        .execute(&mut *tx)
        .await
        .unwrap();
    drop(tx); // rolled back
    t.db.close().await;
    let again = Db::connect(&t.url).await.unwrap();
    let names: Vec<String> = sqlx::query("SELECT name FROM counters ORDER BY name")
        .fetch_all(again.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("name"))
        .collect();
    assert_eq!(names, ["kept"]);
}
