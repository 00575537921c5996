//! The local bucket table: governor's per-key GCRA state in a DashMap, with a hard cap on keys.
//!
//! # Memory bound
//!
//! An entry is a [`BucketKey`] (16 bytes) and governor's `InMemoryState` (one `AtomicU64`,
//! 8 bytes): 24 bytes, plus one control byte in the hashbrown table of its DashMap shard. A
//! shard's table has a power-of-two number of slots filled to between 7/16 (just after it
//! doubled) and 7/8, so a key costs at most `25 × 16/7 ≈ 57.2` bytes of table, wherever the
//! client-controlled parts of its key came from (they are hashed, never stored).
//! [`MAX_BYTES_PER_KEY`] rounds that up to 64 for allocator slack. With the key count capped at
//! `max_keys` (+1 overflow bucket), the table never holds more than
//! `64 × (max_keys + 1)` bytes plus a few hundred bytes per shard: 64 MB at the default
//! 1 000 000 keys. While one shard doubles, its old table lives on until the copy is done, so
//! for that moment the shard (1/shards of the total) needs half again as much.
//!
//! Keys come and go: [`CappedStore::retain_recent`] (driven by governor's `retain_recent`) drops
//! buckets that are full again (a full bucket is the same as no bucket), and `shrink_to_fit`
//! gives the freed slots back.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};

use super::key::{BucketKey, OVERFLOW};

pub(crate) use crate::keyed::PassThrough;

/// Upper bound of table bytes per key held by a local `rate_limit`: an entry is 24 bytes plus a
/// control byte, in hashbrown tables filled to between 7/16 and 7/8, so at most
/// `25 × 16/7 ≈ 57.2` bytes; 64 leaves room for allocator slack. Measured: 52 at a million keys.
pub const MAX_BYTES_PER_KEY: usize = 64;

/// Bytes of one table slot: the entry and its control byte.
const SLOT_BYTES: usize = std::mem::size_of::<(BucketKey, InMemoryState)>() + 1;

/// governor state per [`BucketKey`], at most `max_keys` of them. Clones share the table (the
/// limiter owns one, the filter keeps one to count and measure it).
#[derive(Clone)]
pub(crate) struct CappedStore(Arc<Table>);

/// See [`CappedStore`].
pub(crate) struct Table {
    map: DashMap<BucketKey, InMemoryState, PassThrough>,
    /// Keys admitted under the cap (the overflow bucket is not counted).
    tracked: AtomicUsize,
    max_keys: usize,
    /// Set when a new key found the table full; cleared by the next cleanup.
    full: AtomicBool,
}

impl std::ops::Deref for CappedStore {
    type Target = Table;
    fn deref(&self) -> &Table {
        &self.0
    }
}

impl CappedStore {
    pub(crate) fn new(max_keys: usize) -> CappedStore {
        CappedStore(Arc::new(Table {
            map: DashMap::with_hasher(PassThrough),
            tracked: AtomicUsize::new(0),
            max_keys,
            full: AtomicBool::new(false),
        }))
    }
}

impl Table {
    /// Buckets held now (the overflow bucket included).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether a new key was turned away to the overflow bucket since the last cleanup.
    pub(crate) fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Bytes the table's slots take now (from its capacity; see the module docs).
    pub(crate) fn table_bytes(&self) -> usize {
        // hashbrown's capacity is 7/8 of its slots (for tables past 8 slots).
        self.map.capacity() * 8 / 7 * SLOT_BYTES
    }

    fn measure<T, F, E>(state: &InMemoryState, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }

    /// Whether a bucket's theoretical arrival time is at or before `drop_below`.
    fn is_older_than(state: &InMemoryState, drop_below: Nanos) -> bool {
        // A closure that refuses reads the state without writing it.
        match Table::measure(state, Err::<((), Nanos), _>) {
            Err(Some(tat)) => tat <= drop_below,
            Err(None) => true,
            Ok(()) => false,
        }
    }
}

impl StateStore for CappedStore {
    type Key = BucketKey;

    fn measure_and_replace<T, F, E>(&self, key: &BucketKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.map.get(key) {
            return Table::measure(&state, f);
        }
        match self.map.entry(*key) {
            Entry::Occupied(o) => return Table::measure(o.get(), f),
            Entry::Vacant(v) => {
                if self.tracked.fetch_add(1, Ordering::Relaxed) < self.max_keys {
                    return Table::measure(&v.insert(InMemoryState::default()), f);
                }
                self.tracked.fetch_sub(1, Ordering::Relaxed);
                self.full.store(true, Ordering::Relaxed);
            } // the shard lock is released here, before the overflow bucket is looked up
        }
        let overflow = self.map.entry(OVERFLOW).or_default();
        Table::measure(&overflow, f)
    }
}

impl ShrinkableKeyedStateStore<BucketKey> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map.retain(|key, state| {
            let keep = !Table::is_older_than(state, drop_below);
            if !keep && *key != OVERFLOW {
                self.tracked.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
        self.full.store(false, Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(prev: Option<Nanos>) -> Result<(Option<Nanos>, Nanos), ()> {
        Ok((prev, Nanos::new(prev.map_or(0, |n| n.as_u64()) + 10)))
    }

    #[test]
    fn the_cap_sends_new_keys_to_one_overflow_bucket() {
        let store = CappedStore::new(3);
        for i in 1..=10u64 {
            let _ = store.measure_and_replace(&BucketKey(i, i), allow);
        }
        assert_eq!(store.len(), 4, "3 keys and the overflow bucket");
        assert!(store.is_full());
        // The seven turned-away keys all measured the same (overflow) bucket.
        let seen = store
            .measure_and_replace(&BucketKey(99, 99), allow)
            .unwrap();
        assert_eq!(seen, Some(Nanos::new(70)));
        // A key already in keeps its own bucket.
        let own = store.measure_and_replace(&BucketKey(2, 2), allow).unwrap();
        assert_eq!(own, Some(Nanos::new(10)));
    }

    #[test]
    fn retain_drops_old_buckets_and_frees_room() {
        let store = CappedStore::new(2);
        let _ = store.measure_and_replace(&BucketKey(1, 1), allow); // tat 10
        let _ = store.measure_and_replace(&BucketKey(2, 2), allow); // tat 10
        let _ = store.measure_and_replace(&BucketKey(2, 2), allow); // tat 20
        let _ = store.measure_and_replace(&BucketKey(3, 3), allow); // overflow
        store.retain_recent(Nanos::new(10));
        assert_eq!(store.len(), 1, "only key 2 (tat 20) is recent");
        assert!(!store.is_full());
        let _ = store.measure_and_replace(&BucketKey(4, 4), allow);
        assert_eq!(store.len(), 2, "room for a new key again");
        store.shrink_to_fit();
        assert!(store.table_bytes() <= MAX_BYTES_PER_KEY * 8);
    }

    #[test]
    fn an_entry_is_24_bytes() {
        assert_eq!(SLOT_BYTES, 25);
        // The documented bound: a table just doubled holds 7/16 of its slots.
        assert!(SLOT_BYTES as f64 * 16.0 / 7.0 <= MAX_BYTES_PER_KEY as f64);
    }
}
