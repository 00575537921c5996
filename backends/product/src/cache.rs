//! The read cache for product reads (`GET /products/{id}`): in this process by default (a
//! bounded map with a TTL), or Redis when `REDIS_URL` is set, so replicas share it.
//!
//! Entries are evicted by [`Invalidator`], a [`kit::Consumer`] of this service's own
//! `product.*` events: invalidation follows the committed change, through the outbox, the
//! same way any other reader of the facts learns of it. A read right after a write can
//! therefore return the old product until the event has gone round (normally milliseconds
//! after the commit; the relay is woken by the write). The TTL bounds staleness when an
//! event is slow (a consumer retrying, a bus that is down).
//!
//! A fill that raced an eviction is dropped (see [`Cache::generation`]): a reader that read
//! the row before an update committed cannot put the old row back after the update's
//! eviction. The guard is per process; with Redis and several replicas a stale fill from
//! another replica is bounded by the TTL.
//!
//! Stock is never cached: reservations and `GET /inventory/{sku}` read the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kit::bus::BoxError;
use kit::{Event, Handler};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sqlx::{Any, Transaction};

/// How long one Redis command may take before the cache counts as failed.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// Failures of cache reads and fills are logged at most this often (never per request).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why the cache failed; reads and fills treat a failure as a miss, evictions report it so
/// the event is delivered again.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis answered with an error or the connection failed.
    #[error("product cache: redis {op} failed")]
    Redis {
        /// The command: `GET`, `SET`, `DEL`, `connect`.
        op: &'static str,
        /// What the client said.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer within 500 ms.
    #[error("product cache: redis {op} timed out")]
    Timeout {
        /// The command.
        op: &'static str,
    },
}

/// Where the cache keeps entries and for how long.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Redis (`redis://…`) for a cache shared by replicas; `None` = in this process.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so services and tests sharing a Redis stay apart.
    pub key_prefix: String,
    /// How long an entry lives without an eviction: the staleness bound when an event is late.
    pub ttl: Duration,
    /// The most entries the in-process cache holds.
    pub capacity: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            redis_url: None,
            key_prefix: "gatehouse:product:".into(),
            ttl: Duration::from_secs(60),
            capacity: 10_000,
        }
    }
}

/// The cache key of product `id`.
pub fn product_key(id: &str) -> String {
    format!("product:{id}")
}

/// The read cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    ttl: Duration,
    /// Evictions so far, for dropping fills that raced one.
    evictions: AtomicU64,
    started: Instant,
    last_warn_ms: AtomicU64,
}

enum Store {
    Memory {
        entries: Mutex<HashMap<String, (Instant, Arc<str>)>>,
        capacity: usize,
    },
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
}

impl Cache {
    /// The cache `settings` ask for. Redis connects lazily (and reconnects by itself), so a
    /// Redis that is down at start makes reads miss, not the service fail.
    pub fn new(settings: &CacheSettings) -> Result<Cache, CacheError> {
        let store = match &settings.redis_url {
            None => Store::Memory {
                entries: Mutex::new(HashMap::new()),
                capacity: settings.capacity.max(1),
            },
            Some(url) => {
                let redis_err = |source| CacheError::Redis {
                    op: "connect",
                    source,
                };
                let client = redis::Client::open(url.as_str()).map_err(redis_err)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT))
                    .set_number_of_retries(1);
                let conn =
                    ConnectionManager::new_lazy_with_config(client, config).map_err(redis_err)?;
                Store::Redis {
                    conn,
                    prefix: settings.key_prefix.clone(),
                }
            }
        };
        Ok(Cache {
            inner: Arc::new(Inner {
                store,
                ttl: settings.ttl,
                evictions: AtomicU64::new(0),
                started: Instant::now(),
                last_warn_ms: AtomicU64::new(u64::MAX),
            }),
        })
    }

    /// Whether replicas share this cache (Redis): then one durable consumer evicts for all.
    pub fn is_shared(&self) -> bool {
        matches!(self.inner.store, Store::Redis { .. })
    }

    /// Take before reading the database for a fill and pass to [`Cache::put`].
    pub fn generation(&self) -> u64 {
        self.inner.evictions.load(Ordering::Acquire)
    }

    /// The cached value of `key`; a failure counts as a miss.
    pub async fn get(&self, key: &str) -> Option<String> {
        match &self.inner.store {
            Store::Memory { entries, .. } => {
                let mut map = entries.lock().unwrap_or_else(|p| p.into_inner());
                match map.get(key) {
                    Some((expires, v)) if *expires > Instant::now() => Some(v.to_string()),
                    Some(_) => {
                        map.remove(key);
                        None
                    }
                    None => None,
                }
            }
            Store::Redis { conn, prefix } => {
                let mut c = conn.clone();
                let cmd = redis::cmd("GET").arg(format!("{prefix}{key}")).to_owned();
                match run::<Option<String>>("GET", &cmd, &mut c).await {
                    Ok(v) => v,
                    Err(e) => {
                        self.warn(&e);
                        None
                    }
                }
            }
        }
    }

    /// Stores `value` under `key` unless an eviction happened since `generation` was taken
    /// (the value may predate the change that eviction announced). Failures are logged.
    pub async fn put(&self, key: &str, value: &str, generation: u64) {
        if self.generation() != generation {
            return;
        }
        match &self.inner.store {
            Store::Memory { entries, capacity } => {
                let mut map = entries.lock().unwrap_or_else(|p| p.into_inner());
                if map.len() >= *capacity && !map.contains_key(key) {
                    let now = Instant::now();
                    map.retain(|_, (expires, _)| *expires > now);
                    // Still full of live entries: drop any one. Not LRU, but bounded, and
                    // the scan happens only when the map is full.
                    if map.len() >= *capacity {
                        if let Some(k) = map.keys().next().cloned() {
                            map.remove(&k);
                        }
                    }
                }
                map.insert(
                    key.to_owned(),
                    (Instant::now() + self.inner.ttl, Arc::from(value)),
                );
            }
            Store::Redis { conn, prefix } => {
                let mut c = conn.clone();
                let cmd = redis::cmd("SET")
                    .arg(format!("{prefix}{key}"))
                    .arg(value)
                    .arg("PX")
                    .arg(self.inner.ttl.as_millis().max(1) as u64)
                    .to_owned();
                if let Err(e) = run::<()>("SET", &cmd, &mut c).await {
                    self.warn(&e);
                }
            }
        }
    }

    /// Removes `key`. An error is returned (not swallowed) so the event that asked for the
    /// eviction is delivered again.
    pub async fn evict(&self, key: &str) -> Result<(), CacheError> {
        self.inner.evictions.fetch_add(1, Ordering::AcqRel);
        match &self.inner.store {
            Store::Memory { entries, .. } => {
                entries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(key);
                Ok(())
            }
            Store::Redis { conn, prefix } => {
                let mut c = conn.clone();
                let cmd = redis::cmd("DEL").arg(format!("{prefix}{key}")).to_owned();
                run::<i64>("DEL", &cmd, &mut c).await.map(|_| ())
            }
        }
    }

    fn warn(&self, e: &CacheError) {
        let now = self.inner.started.elapsed().as_millis() as u64;
        let last = self.inner.last_warn_ms.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < WARN_EVERY.as_millis() as u64 {
            return;
        }
        if self
            .inner
            .last_warn_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(error = %kit::problem::error_chain(e), "product cache unavailable; reading the database");
        }
    }
}

async fn run<T: redis::FromRedisValue>(
    op: &'static str,
    cmd: &redis::Cmd,
    conn: &mut ConnectionManager,
) -> Result<T, CacheError> {
    match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(CacheError::Redis { op, source }),
        Err(_) => Err(CacheError::Timeout { op }),
    }
}

/// Evicts the product named by each `product.*` event (`payload.id`).
pub struct Invalidator {
    /// The cache to evict from.
    pub cache: Cache,
}

#[async_trait::async_trait]
impl Handler for Invalidator {
    async fn handle(
        &self,
        _tx: &mut Transaction<'static, Any>,
        event: &Event,
    ) -> Result<(), BoxError> {
        if let Some(id) = event.payload.get("id").and_then(|v| v.as_str()) {
            self.cache.evict(&product_key(id)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(capacity: usize, ttl: Duration) -> Cache {
        Cache::new(&CacheSettings {
            capacity,
            ttl,
            ..CacheSettings::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn the_memory_cache_is_bounded_expires_and_drops_fills_that_raced_an_eviction() {
        let c = memory(2, Duration::from_secs(60));
        for k in ["a", "b", "c"] {
            c.put(k, k, c.generation()).await;
        }
        let mut live = 0;
        for k in ["a", "b", "c"] {
            live += usize::from(c.get(k).await.is_some());
        }
        assert_eq!(live, 2, "capacity holds");

        let gen = c.generation();
        c.evict("x").await.unwrap();
        c.put("late", "old row", gen).await;
        assert_eq!(
            c.get("late").await,
            None,
            "a fill older than an eviction is dropped"
        );

        let short = memory(10, Duration::from_millis(20));
        short.put("k", "v", short.generation()).await;
        assert_eq!(short.get("k").await.as_deref(), Some("v"));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(short.get("k").await, None, "entries expire");
    }
}
