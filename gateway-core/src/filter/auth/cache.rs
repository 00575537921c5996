//! The verified-token cache: a hot token skips signature checks.
//!
//! Bounds: at most `capacity` entries (split over a few mutex-guarded shards so request threads
//! rarely meet), and no entry outlives its token (`exp` + leeway). Entries are keyed by a keyed
//! 128-bit hash of the token (SipHash-1-3 with a random key of the cache's own, as the rate
//! limiter keys its buckets: see `crate::keyed`), so the cache never holds a usable credential,
//! and without the key no one can aim a forged token at a cached one. A SHA-256 key cost as
//! much as the rest of a cached check on CPUs without SHA instructions. An entry also records
//! the key-set generation it was verified under: after a JWKS rotation it no longer counts.
//!
//! A full shard first drops what has expired, then the entry that would expire first. A plain
//! `Mutex<HashMap>` per shard keeps this small and obviously correct; a lookup costs one hash
//! of the token plus an uncontended lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

/// SHA-256 of a document (a key set's fingerprint).
pub(crate) type TokenDigest = [u8; 32];

/// A token's key in the cache: see the module docs.
pub(crate) type CacheKey = crate::keyed::Key128;

/// The SHA-256 of a token (or of any bytes).
pub(crate) fn digest(data: impl AsRef<[u8]>) -> TokenDigest {
    Sha256::digest(data.as_ref()).into()
}

struct Entry<V> {
    /// Unix seconds after which the token is no longer accepted (`exp` + leeway).
    valid_until: u64,
    generation: u64,
    value: Arc<V>,
}

/// The keys are keyed hashes already: the maps use them as they are.
type Shard<V> = Mutex<HashMap<CacheKey, Entry<V>, crate::keyed::PassThrough>>;

/// A bounded map from token digest to what verifying it produced.
pub(crate) struct TokenCache<V> {
    shards: Box<[Shard<V>]>,
    /// Total capacity; shard `i` holds at most `capacity / n + (i < capacity % n)` entries.
    capacity: usize,
    /// The hash key of [`TokenCache::key`], random per cache.
    hashing: crate::keyed::HashSecret,
}

impl<V> TokenCache<V> {
    /// A cache of at most `capacity` entries (`capacity` > 0).
    pub fn new(capacity: usize) -> TokenCache<V> {
        let shards = capacity.clamp(1, 16);
        TokenCache {
            shards: (0..shards)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            capacity: capacity.max(1),
            hashing: crate::keyed::HashSecret::new(),
        }
    }

    /// The cache key of a token.
    pub fn key(&self, token: &[u8]) -> CacheKey {
        self.hashing.hash(token)
    }

    fn index(&self, key: &CacheKey) -> usize {
        // The map hashes the first half; the shard takes the second.
        (key.1 % self.shards.len() as u64) as usize
    }

    fn shard_capacity(&self, i: usize) -> usize {
        let n = self.shards.len();
        self.capacity / n + usize::from(i < self.capacity % n)
    }

    fn shard(
        &self,
        i: usize,
    ) -> MutexGuard<'_, HashMap<CacheKey, Entry<V>, crate::keyed::PassThrough>> {
        // A panic while holding the lock cannot leave a map half-updated in a way that matters
        // here: at worst an entry is missing.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value, if it is still valid at `now` under key-set `generation`.
    pub fn get(&self, key: &CacheKey, now: u64, generation: u64) -> Option<Arc<V>> {
        let mut shard = self.shard(self.index(key));
        let entry = shard.get(key)?;
        if now <= entry.valid_until && entry.generation == generation {
            return Some(Arc::clone(&entry.value));
        }
        shard.remove(key);
        None
    }

    /// Remember a verified token until `valid_until` (Unix seconds).
    pub fn insert(
        &self,
        key: CacheKey,
        value: Arc<V>,
        valid_until: u64,
        generation: u64,
        now: u64,
    ) {
        if valid_until < now {
            return;
        }
        let i = self.index(&key);
        let cap = self.shard_capacity(i);
        let mut shard = self.shard(i);
        if shard.len() >= cap && !shard.contains_key(&key) {
            shard.retain(|_, e| e.valid_until >= now && e.generation == generation);
            if shard.len() >= cap {
                let soonest = shard
                    .iter()
                    .min_by_key(|(_, e)| e.valid_until)
                    .map(|(k, _)| *k);
                if let Some(k) = soonest {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(
            key,
            Entry {
                valid_until,
                generation,
                value,
            },
        );
    }

    /// Entries held now (expired ones included until they are met).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_token_is_served_until_it_expires() {
        let cache = TokenCache::new(10);
        let key = cache.key(b"a.b.c");
        cache.insert(key, Arc::new("claims"), 100, 0, 50);
        assert_eq!(cache.get(&key, 100, 0).as_deref(), Some(&"claims"));
        assert!(
            cache.get(&key, 101, 0).is_none(),
            "expired entries are refused"
        );
        assert_eq!(cache.len(), 0, "and dropped");
    }

    #[test]
    fn a_new_key_generation_invalidates_entries() {
        let cache = TokenCache::new(10);
        let key = cache.key(b"a.b.c");
        cache.insert(key, Arc::new(1), 100, 1, 50);
        assert!(cache.get(&key, 60, 2).is_none());
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        for capacity in [1usize, 7, 100, 1000] {
            let cache = TokenCache::new(capacity);
            for i in 0..capacity * 5 {
                cache.insert(
                    cache.key(i.to_string().as_bytes()),
                    Arc::new(i),
                    1000 + i as u64,
                    0,
                    10,
                );
            }
            assert!(
                cache.len() <= capacity,
                "capacity {capacity}: {} entries",
                cache.len()
            );
            assert!(cache.len() * 10 >= capacity * 7, "the cache is mostly used");
        }
    }

    #[test]
    fn a_full_shard_evicts_the_soonest_expiring_entry() {
        let cache = TokenCache::new(1);
        let (a, b) = (cache.key(b"a"), cache.key(b"b"));
        cache.insert(a, Arc::new("a"), 500, 0, 10);
        cache.insert(b, Arc::new("b"), 900, 0, 10);
        assert!(cache.get(&a, 20, 0).is_none());
        assert!(cache.get(&b, 20, 0).is_some());
    }

    #[test]
    fn keys_differ_between_tokens_and_between_caches() {
        let (one, two) = (TokenCache::<()>::new(4), TokenCache::<()>::new(4));
        assert_eq!(one.key(b"a.b.c"), one.key(b"a.b.c"));
        assert_ne!(one.key(b"a.b.c"), one.key(b"a.b.d"));
        assert_ne!(
            one.key(b"a.b.c"),
            two.key(b"a.b.c"),
            "each cache has its own keys"
        );
    }

    #[test]
    fn already_expired_tokens_are_not_cached() {
        let cache = TokenCache::new(4);
        cache.insert(cache.key(b"old"), Arc::new(()), 5, 0, 10);
        assert_eq!(cache.len(), 0);
    }
}
