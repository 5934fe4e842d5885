//! API keys by the SHA-256 of what is presented.
//!
//! The configuration holds only each key's SHA-256; a presented key is hashed
//! once and its digest looked up. Timing can tell an attacker only about the
//! digest of a guess, which says nothing about a configured key; the entry
//! found is confirmed with a constant-time comparison all the same.
use std::collections::HashMap;

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
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Digest -> the index of its entry. Hashed with foldhash, not `SipHash`: the
/// keys are SHA-256 digests, which nobody can choose to collide, so a keyed
/// hash's defence against chosen collisions buys nothing but its cost.
#[derive(Default)]
pub struct KeyTable {
    by_digest: HashMap<Digest, (Digest, usize), foldhash::fast::RandomState>,
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
        Self { by_digest }
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
