//! Visitors without personal data (Plausible's scheme): a visitor id is
//! HMAC-SHA-256(daily salt, source ‖ IP ‖ user agent), cut to 128 bits. The IP and the
//! user agent are never stored. Salts are random, one per UTC day, shared by every replica
//! through the database, and deleted once they are older than yesterday's: after 48 hours
//! nothing can link an id to an address again, nor two days' ids to each other.
//!
//! A visit that crosses midnight keeps its id: if the hash under yesterday's salt was seen
//! in the last [`SESSION_GAP`], that id goes on being used.

use std::sync::Mutex;

use hmac::{Hmac, Mac};
use kit::{Db, DbError};
use rand::RngCore;
use sha2::Sha256;
use sqlx::{Any, Row, Transaction};

/// How long without an event ends a visit (as in Plausible and Google Analytics).
pub const SESSION_GAP_MS: i64 = 30 * 60_000;

/// Sessions are forgotten after this long (the salts that made them are gone by then).
pub const FORGET_AFTER_MS: i64 = 48 * 3_600_000;

const DAY_MS: i64 = 86_400_000;

/// Today's and yesterday's salts.
#[derive(Clone)]
pub struct Salts {
    /// Days since 1970-01-01 UTC.
    pub day: i64,
    today: Vec<u8>,
    yesterday: Option<Vec<u8>>,
}

/// The salts, cached per day.
pub struct Visitors {
    db: Db,
    cache: Mutex<Option<Salts>>,
}

impl Visitors {
    /// Salts kept in `db`.
    pub fn new(db: Db) -> Visitors {
        Visitors {
            db,
            cache: Mutex::new(None),
        }
    }

    /// The salts for the day of `now` (Unix ms): today's is made if no replica has made it
    /// yet, and salts older than yesterday's are deleted.
    pub async fn salts(&self, now: i64) -> Result<Salts, DbError> {
        let day = now.div_euclid(DAY_MS);
        if let Some(s) = self.cache.lock().expect("salt cache").as_ref() {
            if s.day == day {
                return Ok(s.clone());
            }
        }
        let mut fresh = [0u8; 32];
        rand::rng().fill_bytes(&mut fresh);
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT INTO salts (day, salt) VALUES ($1, $2) ON CONFLICT (day) DO NOTHING")
            .bind(day)
            .bind(kit::hex(&fresh))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM salts WHERE day < $1")
            .bind(day - 1)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query("SELECT day, salt FROM salts WHERE day >= $1")
            .bind(day - 1)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut salts = Salts {
            day,
            today: Vec::new(),
            yesterday: None,
        };
        for r in rows {
            let d: i64 = r.try_get("day")?;
            let salt: String = r.try_get("salt")?;
            if d == day {
                salts.today = salt.into_bytes();
            } else if d == day - 1 {
                salts.yesterday = Some(salt.into_bytes());
            }
        }
        *self.cache.lock().expect("salt cache") = Some(salts.clone());
        Ok(salts)
    }
}

/// The visitor id of (`source`, `ip`, `agent`) under `salt`.
fn hash(salt: &[u8], source: &str, ip: &str, agent: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(salt).expect("HMAC takes any key length");
    for part in [source, ip, agent] {
        mac.update(part.as_bytes());
        mac.update(&[0]);
    }
    kit::hex(&mac.finalize().into_bytes()[..16])
}

/// The visitor id of (`source`, `ip`, `agent`) at `now`, inside the ingest's transaction:
/// yesterday's id while that visit goes on, else today's; the visit is marked seen.
pub async fn identify(
    tx: &mut Transaction<'static, Any>,
    salts: &Salts,
    source: &str,
    ip: &str,
    agent: &str,
    now: i64,
) -> Result<String, DbError> {
    let mut id = hash(&salts.today, source, ip, agent);
    if let Some(yesterday) = &salts.yesterday {
        let before = hash(yesterday, source, ip, agent);
        let ongoing = sqlx::query("SELECT 1 FROM sessions WHERE visitor = $1 AND last_seen >= $2")
            .bind(&before)
            .bind(now - SESSION_GAP_MS)
            .fetch_optional(&mut **tx)
            .await?
            .is_some();
        if ongoing {
            id = before;
        }
    }
    sqlx::query(
        "INSERT INTO sessions (visitor, last_seen) VALUES ($1, $2) ON CONFLICT (visitor) \
         DO UPDATE SET last_seen = CASE WHEN excluded.last_seen > sessions.last_seen \
         THEN excluded.last_seen ELSE sessions.last_seen END",
    )
    .bind(&id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// Forgets sessions not seen for [`FORGET_AFTER_MS`]; how many.
pub async fn forget(db: &Db, now: i64) -> Result<u64, DbError> {
    let done = sqlx::query("DELETE FROM sessions WHERE last_seen < $1")
        .bind(now - FORGET_AFTER_MS)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_depends_on_every_part_and_the_salt() {
        let a = hash(b"s1", "web", "10.0.0.1", "Firefox");
        assert_eq!(a.len(), 32);
        assert_eq!(a, hash(b"s1", "web", "10.0.0.1", "Firefox"));
        assert_ne!(a, hash(b"s2", "web", "10.0.0.1", "Firefox"));
        assert_ne!(a, hash(b"s1", "web", "10.0.0.2", "Firefox"));
        assert_ne!(a, hash(b"s1", "web", "10.0.0.1", "Chrome"));
        // The parts are delimited: moving a character from one to the next changes the id.
        assert_ne!(hash(b"s", "ab", "c", ""), hash(b"s", "a", "bc", ""));
    }
}
