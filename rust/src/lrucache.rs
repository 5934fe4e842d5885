//! The response cache's in-process store: an LRU bounded by entry count and by
//! bytes, with a TTL per entry.
//!
//! The specification is `fastgw/_reference/memcache.py` (the same store in
//! Python, on an `OrderedDict`); the tests run the same operations on both.
//! Every operation is O(1) plus the entries an insertion evicts. Expiry is lazy:
//! an entry past its TTL is dropped when it is looked up, or when it reaches the
//! front of the LRU; a few expired entries at the front are also dropped on each
//! insertion that finds the store full, so dead entries do not push live ones out.

use lru::LruCache;

/// Expired entries looked for at the LRU's front per insertion into a full store.
const PURGE: usize = 2;

struct Slot<V> {
    value: V,
    created: f64,
    expires: f64,
    cost: usize,
}

/// Values by key, least recently used evicted first.
pub struct Store<V> {
    entries: LruCache<Box<[u8]>, Slot<V>>,
    bytes: usize,
    /// Entries pushed out by a bound (not by their TTL).
    pub evictions: u64,
    /// The entry-count bound.
    pub max_entries: usize,
    /// The byte bound.
    pub max_bytes: usize,
}

impl<V> Store<V> {
    /// An empty store; `None` when a bound is zero.
    #[must_use]
    pub fn new(max_entries: usize, max_bytes: usize) -> Option<Self> {
        if max_entries == 0 || max_bytes == 0 {
            return None;
        }
        Some(Self {
            entries: LruCache::unbounded(),
            bytes: 0,
            evictions: 0,
            max_entries,
            max_bytes,
        })
    }

    /// The value under `key` unless it has expired (then it is dropped), or is
    /// `max_age` seconds old or older (HTTP's freshness rule: `max-age=0` accepts
    /// nothing; kept for others). A hit becomes the most recently used.
    pub fn get(&mut self, key: &[u8], now: f64, max_age: Option<f64>) -> Option<&mut V> {
        let (expires, created, cost) = {
            let slot = self.entries.peek(key)?;
            (slot.expires, slot.created, slot.cost)
        };
        if now >= expires {
            self.entries.pop(key);
            self.bytes -= cost;
            return None;
        }
        if let Some(age) = max_age {
            if now - created >= age {
                return None;
            }
        }
        self.entries.get_mut(key).map(|slot| &mut slot.value)
    }

    /// Store `value` (made at `created`, costing `cost` bytes) for `ttl_s` seconds
    /// from `now`, replacing what `key` held, and evict the least recently used
    /// entries past the bounds. False (nothing stored, the old entry gone too)
    /// when `ttl_s` is not positive or the entry alone is over `max_bytes`.
    pub fn put(
        &mut self,
        key: &[u8],
        value: V,
        created: f64,
        cost: usize,
        ttl_s: f64,
        now: f64,
    ) -> bool {
        if let Some(old) = self.entries.pop(key) {
            self.bytes -= old.cost;
        }
        if ttl_s.is_nan() || ttl_s <= 0.0 || cost > self.max_bytes {
            return false;
        }
        if self.entries.len() >= self.max_entries || self.bytes + cost > self.max_bytes {
            // Full: dead entries at the front first, they should not push live ones out.
            for _ in 0..PURGE {
                if !self
                    .entries
                    .peek_lru()
                    .is_some_and(|(_, slot)| slot.expires <= now)
                {
                    break;
                }
                if let Some((_, slot)) = self.entries.pop_lru() {
                    self.bytes -= slot.cost;
                }
            }
        }
        self.entries.push(
            key.into(),
            Slot {
                value,
                created,
                expires: now + ttl_s,
                cost,
            },
        );
        self.bytes += cost;
        if self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            self.evict(now);
        }
        true
    }

    /// Pop from the LRU's front until the bounds hold. A dead entry behind live
    /// ones (TTLs differ) may free the room on its own: the live entries popped
    /// are then put back, most recently used first, while they still fit.
    fn evict(&mut self, now: f64) {
        let mut popped: Vec<(Box<[u8]>, Slot<V>)> = Vec::new();
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some((key, slot)) = self.entries.pop_lru() else {
                break;
            };
            self.bytes -= slot.cost;
            if slot.expires > now {
                popped.push((key, slot));
            }
        }
        while let Some((_, slot)) = popped.last() {
            if self.entries.len() + 1 > self.max_entries || self.bytes + slot.cost > self.max_bytes
            {
                break;
            }
            let Some((key, slot)) = popped.pop() else {
                break;
            };
            self.bytes += slot.cost;
            self.entries.push(key.clone(), slot);
            self.entries.demote(&key);
        }
        self.evictions += popped.len() as u64;
    }

    /// Forget `key`; false when it was not there.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        match self.entries.pop(key) {
            Some(slot) => {
                self.bytes -= slot.cost;
                true
            }
            None => false,
        }
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Bytes held (the entries' costs).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held, expired or not.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` is held, expired or not (no LRU change).
    #[must_use]
    pub fn contains(&self, key: &[u8]) -> bool {
        self.entries.contains(key)
    }

    /// The keys from least to most recently used.
    #[must_use]
    pub fn keys(&self) -> Vec<&[u8]> {
        self.entries.iter().rev().map(|(k, _)| &**k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_order_and_the_count_bound() {
        let mut s = Store::new(3, 1 << 20).unwrap();
        for k in [b"a", b"b", b"c"] {
            assert!(s.put(k, 1, 0.0, 10, 60.0, 0.0));
        }
        assert_eq!(s.get(b"a", 1.0, None), Some(&mut 1));
        s.put(b"d", 2, 0.0, 10, 60.0, 0.0);
        assert!(!s.contains(b"b"));
        assert_eq!(s.keys(), vec![&b"c"[..], b"a", b"d"]);
        assert_eq!((s.len(), s.bytes(), s.evictions), (3, 30, 1));
    }

    #[test]
    fn ttl_and_max_age() {
        let mut s = Store::new(3, 1 << 20).unwrap();
        s.put(b"k", 1, 100.0, 10, 5.0, 100.0);
        assert_eq!(s.get(b"k", 103.0, Some(3.0)), None);
        assert!(s.contains(b"k"));
        assert_eq!(s.get(b"k", 103.0, Some(4.0)), Some(&mut 1));
        assert_eq!(s.get(b"k", 105.0, None), None);
        assert!(!s.contains(b"k") && s.bytes() == 0);
        assert!(!s.put(b"k", 1, 0.0, 10, 0.0, 0.0));
        assert!(Store::<u8>::new(0, 1).is_none());
    }

    #[test]
    fn a_dead_entry_behind_a_live_one_frees_the_room() {
        // Room for a and b, or a and n, not for all three; b (behind a) has expired.
        let mut s = Store::new(3, 30).unwrap();
        s.put(b"a", 1, 0.0, 10, 2.0, 0.0);
        s.put(b"b", 2, 0.0, 20, 1.0, 0.0);
        s.put(b"n", 3, 1.0, 15, 1.0, 1.0);
        assert_eq!(s.keys(), vec![&b"a"[..], b"n"]);
        assert_eq!((s.evictions, s.bytes()), (0, 25));
    }
}
