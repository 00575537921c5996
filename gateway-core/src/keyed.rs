//! Keyed 128-bit hashes, for tables whose keys clients choose (rate-limit buckets, the
//! verified-token cache): SipHash-1-3 in its 128-bit form, with a random key per table, so no
//! one without the key can aim two inputs at one entry, and a table never holds the input
//! itself (a token is never kept, only what it hashed to).

use std::hash::{BuildHasher, Hasher};

use siphasher::sip128::{Hasher128, SipHasher13};

/// 128 bits of keyed hash. Two `u64`s rather than a `u128` so an entry is 8-byte aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key128(pub(crate) u64, pub(crate) u64);

impl std::hash::Hash for Key128 {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a keyed hash: half of it is a fine table hash (see `PassThrough`).
        state.write_u64(self.0);
    }
}

/// A table's secret hash key, drawn from the OS's generator.
#[derive(Debug, Clone)]
pub(crate) struct HashSecret {
    k0: u64,
    k1: u64,
}

impl HashSecret {
    pub(crate) fn new() -> HashSecret {
        let [k0, k1]: [u64; 2] = rand::random();
        HashSecret { k0, k1 }
    }

    /// A hasher to stream input into; [`finish`] gives the key.
    pub(crate) fn hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }

    /// The key of one input.
    pub(crate) fn hash(&self, bytes: &[u8]) -> Key128 {
        let mut h = self.hasher();
        h.write(bytes);
        finish(&h)
    }
}

/// The key a streamed hasher ends with.
pub(crate) fn finish(h: &SipHasher13) -> Key128 {
    let out = h.finish128();
    Key128(out.h1, out.h2)
}

/// The table hasher for [`Key128`]s: they are keyed hashes already, so hashing them again
/// would only cost time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PassThrough;

/// See [`PassThrough`].
#[derive(Debug, Default)]
pub(crate) struct PassThroughHasher(u64);

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if a key type other than `Key128` were used: mix (FNV-1a) anyway.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_the_input_and_the_table() {
        let (one, two) = (HashSecret::new(), HashSecret::new());
        assert_eq!(one.hash(b"a.b.c"), one.hash(b"a.b.c"));
        assert_ne!(one.hash(b"a.b.c"), one.hash(b"a.b.d"));
        assert_ne!(one.hash(b"a.b.c"), two.hash(b"a.b.c"));
        let mut streamed = one.hasher();
        streamed.write(b"a.b");
        streamed.write(b".c");
        assert_eq!(finish(&streamed), one.hash(b"a.b.c"), "writes are a stream");
    }
}
