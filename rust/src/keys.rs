//! API keys by the SHA-256 of what is presented.
//!
//! The configuration holds only each key's SHA-256; a presented key is hashed
//! once and its digest looked up. Timing can tell an attacker only about the
//! digest of a guess, which says nothing about a configured key; the entry
//! found is confirmed with a constant-time comparison all the same.
//!
//! A key found once is remembered (as presented, in memory only, one per
//! configured digest at most), so that the next request with it costs a keyed
//! hash instead of a SHA-256: the remembered keys are found by a hash keyed
//! with a secret drawn at start, and confirmed by a constant-time comparison.
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use ring::digest::{digest, SHA256};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// The SHA-256 of `data`.
#[must_use]
pub fn sha256(data: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

/// Equal, in time that depends only on the length.
#[must_use]
pub fn same(a: &Digest, b: &Digest) -> bool {
    same_bytes(a, b)
}

/// Equal, in time that depends only on the lengths.
#[must_use]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Keys found before: their keyed hash -> (the key as presented, its position).
type Seen = HashMap<u64, (Box<[u8]>, usize), foldhash::fast::RandomState>;

/// Digest -> the index of its entry. Hashed with foldhash, not `SipHash`: the
/// keys are SHA-256 digests, which nobody can choose to collide, so a keyed
/// hash's defence against chosen collisions buys nothing but its cost.
#[derive(Default)]
pub struct KeyTable {
    by_digest: HashMap<Digest, (Digest, usize), foldhash::fast::RandomState>,
    seen: Mutex<Seen>,
    secret: RandomState, // SipHash with keys drawn at start
}

impl KeyTable {
    /// A table of `digests`, each found as its position.
    #[must_use]
    pub fn new(digests: &[Digest]) -> Self {
        let mut by_digest = HashMap::with_capacity_and_hasher(
            digests.len(),
            foldhash::fast::RandomState::default(),
        );
        by_digest.extend(digests.iter().enumerate().map(|(i, d)| (*d, (*d, i))));
        Self {
            by_digest,
            seen: Mutex::default(),
            secret: RandomState::new(),
        }
    }

    /// How many distinct digests (a repeated one: its last position).
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// No digests at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The position of the key whose SHA-256 is `presented`'s.
    #[must_use]
    pub fn find(&self, presented: &[u8]) -> Option<usize> {
        let h = self.secret.hash_one(presented);
        let Ok(mut seen) = self.seen.lock() else {
            return self.find_digest(presented); // (never poisoned: nothing in it panics)
        };
        if let Some((key, i)) = seen.get(&h) {
            if same_bytes(key, presented) {
                return Some(*i);
            }
        }
        let found = self.find_digest(presented);
        if let Some(i) = found {
            // At most one per digest: a second key on the same keyed hash (a 64-bit
            // collision) is simply not remembered.
            if seen.len() < self.by_digest.len() {
                seen.entry(h).or_insert_with(|| (presented.into(), i));
            }
        }
        found
    }

    /// How many keys are remembered (found once).
    #[must_use]
    pub fn remembered(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.len())
    }

    fn find_digest(&self, presented: &[u8]) -> Option<usize> {
        let d = sha256(presented);
        match self.by_digest.get(&d) {
            Some((stored, i)) if same(stored, &d) => Some(*i),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_configured_keys_by_their_hash() {
        let table = KeyTable::new(&[sha256(b"sk-one"), sha256(b"sk-two")]);
        assert_eq!(table.find(b"sk-one"), Some(0));
        assert_eq!(table.find(b"sk-two"), Some(1));
        assert_eq!(table.find(b"sk-three"), None);
        assert_eq!(table.find(b""), None);
    }

    #[test]
    fn a_key_found_once_is_remembered_and_only_found_keys_are() {
        let table = KeyTable::new(&[sha256(b"sk-one"), sha256(b"sk-two")]);
        for _ in 0..3 {
            assert_eq!(table.find(b"sk-one"), Some(0));
            assert_eq!(table.find(b"sk-one-"), None);
            assert_eq!(table.find(b"sk-on"), None);
        }
        assert_eq!(table.remembered(), 1);
        assert_eq!(table.find(b"sk-two"), Some(1));
        assert_eq!(table.find(b"sk-two"), Some(1));
        assert_eq!(table.remembered(), 2);
        for k in 0..100u32 {
            assert_eq!(table.find(format!("sk-{k}").as_bytes()), None);
        }
        assert_eq!(table.remembered(), 2, "never more than the configured keys");
        assert!(same_bytes(b"abc", b"abc") && !same_bytes(b"abc", b"abcd"));
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        let d = sha256(b"abc");
        assert_eq!(
            d[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "FIPS 180-2's first example"
        );
        assert!(same(&d, &sha256(b"abc")) && !same(&d, &sha256(b"abd")));
    }
}
