//! Weighted consistent hashing (ketama-style virtual nodes) with an optional
//! bounded-load walk.
//!
//! Specification (the Python reference in `fastgw/_reference/ring.py`
//! reproduces it exactly):
//!
//! - `hash64(data)` is XXH3-64 with seed 0 of the bytes (a `str` is hashed as
//!   its UTF-8).
//! - A target named `name` with weight `w > 0` gets
//!   `max(1, floor(w * replicas + 0.5))` points; point `i` (from 0) is
//!   `hash64(name + b"#" + decimal(i))`. Weight 0 gives no points.
//! - Points are sorted by (hash, name bytes). A key's position is the first
//!   point whose hash is `>= hash64(key)`, wrapping to the first point.
//! - The walk from there visits points clockwise; each target counts the
//!   first time it is met. `lookup` is the first target met, `candidates` the
//!   first `n` distinct targets in walk order.
//! - Bounded load, with in-flight `loads[t]` per target and factor `c >= 1`:
//!   target `t` is eligible when
//!   `loads[t] + 1 <= ceil(c * (total + 1) * (weight[t] / weight_sum))`,
//!   where `total` and `weight_sum` are summed left to right. The bound is
//!   rounded up as in the bounded-load paper (Mirrokni, Thorup and
//!   Zadimoghaddam): with two targets, one with a request in flight keeps its
//!   keys instead of passing them on.
//!   Eligible targets come first in walk order, then the others in walk order.
//!
//! A point's hash depends only on its target's name and index, so adding one
//! target of N moves only the keys that land on its new points: about
//! 1/(N+1) of them for equal weights.

use smallvec::SmallVec;
use xxhash_rust::xxh3::xxh3_64;

/// Target indices in order: on the stack for up to 16 targets.
pub type Indices = SmallVec<[usize; 16]>;

/// The ring's hash: XXH3-64, seed 0.
#[must_use]
pub fn hash64(data: &[u8]) -> u64 {
    xxh3_64(data)
}

/// Why a ring could not be built or walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingError(pub String);

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RingError {}

/// Most points one target may get, so a huge weight cannot exhaust memory.
pub const MAX_POINTS_PER_TARGET: f64 = 1_000_000.0;

/// An immutable ring. Rebuild it to change membership.
#[derive(Debug, Clone)]
pub struct Ring {
    names: Vec<Box<[u8]>>,
    weights: Vec<f64>,
    weight_sum: f64,
    hashes: Vec<u64>,
    owners: Vec<u32>,
}

impl Ring {
    /// Builds a ring of `targets` (name, weight) with `replicas` points per
    /// unit of weight.
    ///
    /// # Errors
    /// Duplicate names, a negative or non-finite weight, too many points, or
    /// `replicas` of 0.
    pub fn new(targets: &[(&[u8], f64)], replicas: u32) -> Result<Ring, RingError> {
        if replicas == 0 {
            return Err(RingError("replicas must be at least 1".into()));
        }
        if targets.len() > u32::MAX as usize {
            return Err(RingError("too many targets".into()));
        }
        let mut names: Vec<Box<[u8]>> = Vec::with_capacity(targets.len());
        let mut weights = Vec::with_capacity(targets.len());
        let mut weight_sum = 0.0;
        let mut points: Vec<(u64, u32)> = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(targets.len());
        let mut buf = Vec::new();
        for (t, &(name, w)) in targets.iter().enumerate() {
            if !seen.insert(name) {
                return Err(RingError(format!(
                    "duplicate target {:?}",
                    String::from_utf8_lossy(name)
                )));
            }
            if !(w.is_finite() && w >= 0.0) {
                return Err(RingError(format!(
                    "weight of {:?} must be finite and >= 0, got {w}",
                    String::from_utf8_lossy(name)
                )));
            }
            let n = if w > 0.0 {
                (w * f64::from(replicas) + 0.5).floor().max(1.0)
            } else {
                0.0
            };
            if n > MAX_POINTS_PER_TARGET {
                return Err(RingError(format!(
                    "weight {w} x replicas {replicas} gives too many points"
                )));
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = n as u32;
            #[allow(clippy::cast_possible_truncation)]
            let owner = t as u32;
            for i in 0..n {
                buf.clear();
                buf.extend_from_slice(name);
                buf.push(b'#');
                buf.extend_from_slice(i.to_string().as_bytes());
                points.push((hash64(&buf), owner));
            }
            names.push(name.into());
            weights.push(w);
            weight_sum += w;
        }
        points.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| names[a.1 as usize].cmp(&names[b.1 as usize]))
        });
        Ok(Ring {
            names,
            weights,
            weight_sum,
            hashes: points.iter().map(|p| p.0).collect(),
            owners: points.iter().map(|p| p.1).collect(),
        })
    }

    /// Number of targets (including weight-0 ones).
    #[must_use]
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when the ring has no target.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Number of points on the ring.
    #[must_use]
    pub fn points(&self) -> usize {
        self.hashes.len()
    }

    /// Target names, in construction order (the order of `loads`).
    #[must_use]
    pub fn names(&self) -> &[Box<[u8]>] {
        &self.names
    }

    /// Target weights, in construction order.
    #[must_use]
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Index of the first point at or after `hash64(key)`; `None` when the
    /// ring has no points.
    fn start(&self, key: &[u8]) -> Option<usize> {
        if self.hashes.is_empty() {
            return None;
        }
        let h = hash64(key);
        let i = self.hashes.partition_point(|&p| p < h);
        Some(if i == self.hashes.len() { 0 } else { i })
    }

    /// The target (index) for `key`; `None` when no target has weight.
    #[must_use]
    pub fn lookup(&self, key: &[u8]) -> Option<usize> {
        self.start(key).map(|i| self.owners[i] as usize)
    }

    /// Checks `loads` and `c` for a bounded walk; returns per-target
    /// eligibility.
    fn eligibility(&self, loads: &[f64], c: f64) -> Result<Vec<bool>, RingError> {
        if loads.len() != self.names.len() {
            return Err(RingError(format!(
                "{} loads given for {} targets",
                loads.len(),
                self.names.len()
            )));
        }
        if !(c.is_finite() && c >= 1.0) {
            return Err(RingError(format!(
                "load factor c must be finite and >= 1, got {c}"
            )));
        }
        let mut total = 0.0;
        for &l in loads {
            if !(l.is_finite() && l >= 0.0) {
                return Err(RingError(format!("loads must be finite and >= 0, got {l}")));
            }
            total += l;
        }
        Ok(loads
            .iter()
            .zip(&self.weights)
            .map(|(&l, &w)| {
                self.weight_sum > 0.0
                    && l + 1.0 <= (c * (total + 1.0) * (w / self.weight_sum)).ceil()
            })
            .collect())
    }

    /// Up to `n` distinct targets in fallback order for `key`, into `out`
    /// (cleared first). With `bounded = Some((loads, c))`, eligible targets
    /// come first.
    ///
    /// # Errors
    /// `loads` of the wrong length or with a bad value, or `c < 1`.
    pub fn candidates(
        &self,
        key: &[u8],
        n: usize,
        bounded: Option<(&[f64], f64)>,
        out: &mut Indices,
    ) -> Result<(), RingError> {
        out.clear();
        let eligible = match bounded {
            Some((loads, c)) => Some(self.eligibility(loads, c)?),
            None => None,
        };
        let Some(start) = self.start(key) else {
            return Ok(());
        };
        let want = n.min(self.names.len());
        if want == 0 {
            return Ok(());
        }
        let mut seen: SmallVec<[bool; 64]> = SmallVec::from_elem(false, self.names.len());
        let mut later = Indices::new();
        let mut distinct = 0;
        let m = self.hashes.len();
        for step in 0..m {
            let t = self.owners[(start + step) % m] as usize;
            if seen[t] {
                continue;
            }
            seen[t] = true;
            distinct += 1;
            match &eligible {
                Some(e) if !e[t] => later.push(t),
                _ => {
                    out.push(t);
                    if out.len() == want {
                        return Ok(());
                    }
                }
            }
            if eligible.is_none() && distinct == want {
                break;
            }
        }
        out.extend(later.into_iter().take(want - out.len()));
        Ok(())
    }

    /// The first eligible target for `key` under bounded load (or the plain
    /// first target when none is eligible).
    ///
    /// # Errors
    /// As [`Ring::candidates`].
    pub fn lookup_bounded(
        &self,
        key: &[u8],
        loads: &[f64],
        c: f64,
    ) -> Result<Option<usize>, RingError> {
        let eligible = self.eligibility(loads, c)?;
        let Some(start) = self.start(key) else {
            return Ok(None);
        };
        let m = self.hashes.len();
        let first = self.owners[start] as usize;
        if eligible[first] {
            return Ok(Some(first));
        }
        for step in 1..m {
            let t = self.owners[(start + step) % m] as usize;
            if eligible[t] {
                return Ok(Some(t));
            }
        }
        Ok(Some(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(names: &[&str], replicas: u32) -> Ring {
        let t: Vec<(&[u8], f64)> = names.iter().map(|n| (n.as_bytes(), 1.0)).collect();
        Ring::new(&t, replicas).unwrap()
    }

    #[test]
    fn hash_matches_xxh3_reference_vectors() {
        // Published XXH3_64bits values (seed 0).
        assert_eq!(hash64(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(hash64(b"a"), 0xE6C6_32B6_1E96_4E1F);
    }

    #[test]
    fn adding_a_target_moves_about_one_in_n_plus_one() {
        let names: Vec<String> = (0..9).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let before = ring(&refs, 160);
        let mut more = refs.clone();
        more.push("t9");
        let after = ring(&more, 160);
        let keys = 20_000;
        let mut moved = 0;
        for k in 0..keys {
            let key = format!("user-{k}");
            let a = before.lookup(key.as_bytes()).unwrap();
            let b = after.lookup(key.as_bytes()).unwrap();
            if before.names()[a] != after.names()[b] {
                assert_eq!(&*after.names()[b], b"t9", "a key moved between old targets");
                moved += 1;
            }
        }
        let share = f64::from(moved) / f64::from(keys);
        assert!((0.06..0.14).contains(&share), "{share}");
    }

    #[test]
    fn weights_shape_the_share() {
        let r = Ring::new(&[(b"a", 3.0), (b"b", 1.0)], 160).unwrap();
        let a = (0..20_000)
            .filter(|k| r.lookup(format!("k{k}").as_bytes()) == Some(0))
            .count();
        assert!((13_500..16_500).contains(&a), "{a}");
    }

    #[test]
    fn candidates_are_distinct_and_bounded_load_skips_the_hot_target() {
        let r = ring(&["a", "b", "c", "d"], 100);
        let mut out = Indices::new();
        r.candidates(b"key", 10, None, &mut out).unwrap();
        assert_eq!(out.len(), 4);
        let mut sorted = out.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
        assert_eq!(Some(out[0]), r.lookup(b"key"));
        let mut loads = vec![0.0; 4];
        loads[out[0]] = 100.0;
        assert_eq!(
            r.lookup_bounded(b"key", &loads, 1.25).unwrap(),
            Some(out[1])
        );
        let mut b = Indices::new();
        r.candidates(b"key", 4, Some((&loads, 1.25)), &mut b)
            .unwrap();
        assert_eq!(b.as_slice(), [out[1], out[2], out[3], out[0]]);
    }

    #[test]
    fn bad_rings_are_errors() {
        assert!(Ring::new(&[(b"a", 1.0), (b"a", 1.0)], 10).is_err());
        assert!(Ring::new(&[(b"a", -1.0)], 10).is_err());
        assert!(Ring::new(&[(b"a", f64::NAN)], 10).is_err());
        assert!(Ring::new(&[(b"a", 1e12)], 10).is_err());
        let r = Ring::new(&[(b"a", 0.0)], 10).unwrap();
        assert_eq!(r.lookup(b"x"), None);
        assert!(r.lookup_bounded(b"x", &[0.0, 1.0], 1.25).is_err());
        assert!(r.lookup_bounded(b"x", &[0.0], 0.5).is_err());
    }
}
