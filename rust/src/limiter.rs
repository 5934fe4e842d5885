//! Limit buckets and the in-process limiter table.
//!
//! Three kinds of bucket share one state shape ([`BucketState`]: a level and a
//! time stamp), so that one [`reserve`](LocalTable::reserve) call can admit a
//! request against rate, concurrency and budget scopes at once, all or none:
//!
//! - [`Limit::Rate`]: a token bucket holding up to `capacity` and refilling
//!   continuously at `refill_per_s` (an `rpm` limit is `capacity = rpm`,
//!   `refill_per_s = rpm / 60`). `level` is what is left, `stamp` the time of
//!   the last update.
//! - [`Limit::Concurrency`]: an in-flight counter with a cap. `level` is what
//!   is in flight; reserve adds the cost and settle gives it back.
//! - [`Limit::Budget`]: a fixed-window amount (USD per day or month). `level`
//!   is what was spent in the window that starts at `stamp`.
//!
//! Time is always passed in, as seconds since the Unix epoch (`time.time()`),
//! so that every process sharing a table agrees on windows and refills.
//!
//! Float arithmetic here is written to be reproduced operation for operation by
//! the Python reference (`fastgw/_reference/limiter.py`): both give bit-equal
//! answers, and tests compare them with `==`.
//!
//! Eviction is lossless when it can be: a bucket is *idle* when its state is
//! the same as a fresh bucket's (a rate bucket that has refilled, a counter at
//! zero, a budget whose window has passed), and the table drops idle buckets a
//! few at a time on every `reserve`, so memory follows the number of busy keys.
//! Only when `max_keys` busy buckets exist does it evict busy ones.

use indexmap::IndexMap;
use smallvec::SmallVec;

/// Seconds in a day.
const DAY: f64 = 86_400.0;

/// Why a limit, a cost or a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError(pub String);

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitError {}

fn err<T>(msg: impl Into<String>) -> Result<T, LimitError> {
    Err(LimitError(msg.into()))
}

/// The length of a budget window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Period {
    /// Windows of this many seconds, aligned on multiples of it since the epoch
    /// (86 400 gives UTC days).
    Seconds(f64),
    /// UTC calendar months.
    Month,
}

impl Period {
    /// Parses `minute`, `hour`, `day`, `week` (aligned on the epoch, a
    /// Thursday) or `month`.
    ///
    /// # Errors
    /// An unknown name.
    pub fn from_name(name: &str) -> Result<Period, LimitError> {
        match name {
            "minute" => Ok(Period::Seconds(60.0)),
            "hour" => Ok(Period::Seconds(3600.0)),
            "day" => Ok(Period::Seconds(DAY)),
            "week" => Ok(Period::Seconds(7.0 * DAY)),
            "month" => Ok(Period::Month),
            _ => err(format!(
                "unknown budget period {name:?}: use minute, hour, day, week, month or seconds"
            )),
        }
    }

    /// Start of the window holding `now`.
    #[must_use]
    pub fn window_start(self, now: f64) -> f64 {
        match self {
            Period::Seconds(p) => (now / p).floor() * p,
            Period::Month => {
                let (y, m, _) = civil_from_days(days_of(now));
                day_seconds(days_from_civil(y, m, 1))
            }
        }
    }

    /// End of the window that starts at `start` (the next window's start).
    #[must_use]
    pub fn window_end(self, start: f64) -> f64 {
        match self {
            Period::Seconds(p) => start + p,
            Period::Month => {
                let (y, m, _) = civil_from_days(days_of(start));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                day_seconds(days_from_civil(y, m, 1))
            }
        }
    }
}

/// Whole days since the epoch holding `t`. `t` is finite and within ±2^53 s,
/// which the callers check, so the cast is exact.
#[allow(clippy::cast_possible_truncation)]
fn days_of(t: f64) -> i64 {
    (t / DAY).floor() as i64
}

/// Seconds since the epoch at the start of day `days` (exact below 2^53).
#[allow(clippy::cast_precision_loss)]
fn day_seconds(days: i64) -> f64 {
    days as f64 * DAY
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
#[must_use]
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of day `z` since 1970-01-01.
#[must_use]
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// What a scope allows. Built through the checked constructors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// Token bucket: holds up to `capacity`, refills `refill_per_s` per second.
    Rate {
        /// Burst size, and the level of a fresh bucket.
        capacity: f64,
        /// Refill per second.
        refill_per_s: f64,
    },
    /// In-flight counter capped at `max`.
    Concurrency {
        /// Most in flight at once.
        max: f64,
    },
    /// `amount` per window of `period`, reset at each window start.
    Budget {
        /// What one window allows.
        amount: f64,
        /// Window length.
        period: Period,
    },
}

/// Largest time or amount accepted: beyond 2^53 floats stop being integers.
const MAX_VALUE: f64 = 9_007_199_254_740_992.0;

fn check_positive(what: &str, v: f64) -> Result<f64, LimitError> {
    if v.is_finite() && v > 0.0 && v <= MAX_VALUE {
        Ok(v)
    } else {
        err(format!("{what} must be a positive finite number, got {v}"))
    }
}

fn check_non_negative(what: &str, v: f64) -> Result<f64, LimitError> {
    if (0.0..=MAX_VALUE).contains(&v) {
        Ok(v)
    } else {
        err(format!("{what} must be a finite number >= 0, got {v}"))
    }
}

/// Checks a time stamp passed in by a caller.
///
/// # Errors
/// `now` is not finite or beyond ±2^53 seconds.
pub fn check_now(now: f64) -> Result<f64, LimitError> {
    if now.is_finite() && now.abs() <= MAX_VALUE {
        Ok(now)
    } else {
        err(format!("now must be a finite time in seconds, got {now}"))
    }
}

/// Where a scope stands after a reserve: what the `x-ratelimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScopeStatus {
    /// The scope's limit (capacity, cap or amount).
    pub limit: f64,
    /// What is left after this request (or before it, when refused); never
    /// below zero.
    pub remaining: f64,
    /// Seconds until the scope is back to its full limit (rate: refilled;
    /// budget: window end; concurrency: 0).
    pub reset_after: f64,
}

/// A bucket's mutable state; meaning depends on the [`Limit`] kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketState {
    /// Tokens left (rate), count in flight (concurrency) or spent (budget).
    pub level: f64,
    /// Last update (rate), window start (budget); always 0 for concurrency.
    pub stamp: f64,
}

/// Kind tags, shared with the shared-memory layout.
pub(crate) const KIND_RATE: u32 = 1;
pub(crate) const KIND_CONCURRENCY: u32 = 2;
pub(crate) const KIND_BUDGET: u32 = 3;

impl Limit {
    /// A rate limit of `amount` per `period_s` seconds holding a burst of
    /// `burst` (default `amount`).
    ///
    /// # Errors
    /// A value that is not positive and finite.
    pub fn rate(amount: f64, period_s: f64, burst: Option<f64>) -> Result<Limit, LimitError> {
        let amount = check_positive("rate amount", amount)?;
        let period_s = check_positive("rate period", period_s)?;
        let capacity = match burst {
            Some(b) => check_positive("burst", b)?,
            None => amount,
        };
        Ok(Limit::Rate {
            capacity,
            refill_per_s: amount / period_s,
        })
    }

    /// A cap of `max` in flight.
    ///
    /// # Errors
    /// `max` negative or not finite.
    pub fn concurrency(max: f64) -> Result<Limit, LimitError> {
        Ok(Limit::Concurrency {
            max: check_non_negative("max in flight", max)?,
        })
    }

    /// `amount` per `period`.
    ///
    /// # Errors
    /// `amount` negative, or a period of seconds that is not positive.
    pub fn budget(amount: f64, period: Period) -> Result<Limit, LimitError> {
        let amount = check_non_negative("budget amount", amount)?;
        if let Period::Seconds(p) = period {
            check_positive("budget period", p)?;
        }
        Ok(Limit::Budget { amount, period })
    }

    /// The kind tag (`KIND_*`).
    #[must_use]
    pub(crate) fn kind(&self) -> u32 {
        match self {
            Limit::Rate { .. } => KIND_RATE,
            Limit::Concurrency { .. } => KIND_CONCURRENCY,
            Limit::Budget { .. } => KIND_BUDGET,
        }
    }

    /// The limit value reported in headers.
    #[must_use]
    pub fn value(&self) -> f64 {
        match *self {
            Limit::Rate { capacity, .. } => capacity,
            Limit::Concurrency { max } => max,
            Limit::Budget { amount, .. } => amount,
        }
    }

    /// The state of a bucket never used before.
    #[must_use]
    pub fn fresh(&self, now: f64) -> BucketState {
        match *self {
            Limit::Rate { capacity, .. } => BucketState {
                level: capacity,
                stamp: now,
            },
            Limit::Concurrency { .. } => BucketState {
                level: 0.0,
                stamp: 0.0,
            },
            Limit::Budget { period, .. } => BucketState {
                level: 0.0,
                stamp: period.window_start(now),
            },
        }
    }

    /// `s` brought forward to `now`: refilled, or moved to the current window.
    /// A clock that goes backwards changes nothing.
    #[must_use]
    pub fn refresh(&self, s: BucketState, now: f64) -> BucketState {
        match *self {
            Limit::Rate {
                capacity,
                refill_per_s,
            } => {
                if now > s.stamp {
                    BucketState {
                        level: capacity.min(s.level + (now - s.stamp) * refill_per_s),
                        stamp: now,
                    }
                } else {
                    s
                }
            }
            Limit::Concurrency { .. } => s,
            Limit::Budget { period, .. } => {
                let start = period.window_start(now);
                if start > s.stamp {
                    BucketState {
                        level: 0.0,
                        stamp: start,
                    }
                } else {
                    s
                }
            }
        }
    }

    /// True when `s` at `now` is the same as a fresh bucket, so dropping it
    /// loses nothing.
    #[must_use]
    pub fn is_idle(&self, s: BucketState, now: f64) -> bool {
        match *self {
            Limit::Rate { capacity, .. } => self.refresh(s, now).level >= capacity,
            Limit::Concurrency { .. } => s.level <= 0.0,
            Limit::Budget { period, .. } => s.level <= 0.0 || period.window_start(now) > s.stamp,
        }
    }

    /// Headers for a refreshed state `s` at `now`.
    #[must_use]
    pub fn status(&self, s: BucketState, now: f64) -> ScopeStatus {
        match *self {
            Limit::Rate {
                capacity,
                refill_per_s,
            } => ScopeStatus {
                limit: capacity,
                remaining: s.level.max(0.0),
                reset_after: (capacity - s.level) / refill_per_s,
            },
            Limit::Concurrency { max } => ScopeStatus {
                limit: max,
                remaining: (max - s.level).max(0.0),
                reset_after: 0.0,
            },
            Limit::Budget { amount, period } => ScopeStatus {
                limit: amount,
                remaining: (amount - s.level).max(0.0),
                reset_after: period.window_end(s.stamp) - now,
            },
        }
    }

    /// Takes `cost` from the refreshed state `s`: the new state, or the
    /// seconds to wait before it could be taken (+inf when it never can).
    ///
    /// # Errors
    /// `Err(retry_after)` when the bucket cannot take `cost` now.
    pub fn take(&self, s: BucketState, cost: f64, now: f64) -> Result<BucketState, f64> {
        match *self {
            Limit::Rate {
                capacity,
                refill_per_s,
            } => {
                if cost <= s.level {
                    Ok(BucketState {
                        level: s.level - cost,
                        stamp: s.stamp,
                    })
                } else if cost > capacity {
                    Err(f64::INFINITY)
                } else {
                    Err((cost - s.level) / refill_per_s)
                }
            }
            Limit::Concurrency { max } => {
                if s.level + cost <= max {
                    Ok(BucketState {
                        level: s.level + cost,
                        stamp: s.stamp,
                    })
                } else if cost > max {
                    Err(f64::INFINITY)
                } else {
                    // Unknown: a slot frees when some request ends. One second
                    // is the smallest whole `Retry-After`.
                    Err(1.0)
                }
            }
            Limit::Budget { amount, period } => {
                if s.level + cost <= amount {
                    Ok(BucketState {
                        level: s.level + cost,
                        stamp: s.stamp,
                    })
                } else if cost > amount {
                    Err(f64::INFINITY)
                } else {
                    Err(period.window_end(s.stamp) - now)
                }
            }
        }
    }

    /// The state kept when a bucket's limit changes from `old` to `self`
    /// (configuration reload): same kind keeps its count, clamped.
    #[must_use]
    pub fn adopt(&self, old: &Limit, s: BucketState, now: f64) -> BucketState {
        match (*self, *old) {
            (Limit::Rate { capacity, .. }, Limit::Rate { .. }) => BucketState {
                level: s.level.min(capacity),
                stamp: s.stamp,
            },
            (Limit::Concurrency { .. }, Limit::Concurrency { .. }) => s,
            (
                Limit::Budget { period, .. },
                Limit::Budget {
                    period: old_period, ..
                },
            ) if period == old_period => s,
            _ => self.fresh(now),
        }
    }
}

/// Storage of buckets by key, as the reserve and settle algorithms need it.
pub(crate) trait Store {
    /// The index of `key`'s bucket, created fresh with `limit` when absent and
    /// switched to `limit` when its limit changed. Never moves or reuses an
    /// index listed in `pinned`.
    fn slot(&mut self, key: &[u8], limit: &Limit, now: f64, pinned: &[usize]) -> usize;
    /// The index of `key`'s bucket, if it exists.
    fn find(&mut self, key: &[u8]) -> Option<usize>;
    /// The bucket at `idx`.
    fn state(&self, idx: usize) -> BucketState;
    /// Replaces the bucket state at `idx`.
    fn set_state(&mut self, idx: usize, s: BucketState);
}

/// The answer to a reserve.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// True when every scope took its cost.
    pub admitted: bool,
    /// When refused: seconds until every refusing scope could take its cost
    /// (the largest wait; +inf when some cost exceeds its limit). 0 when
    /// admitted. `Retry-After` is this rounded up to whole seconds.
    pub retry_after: f64,
    /// When refused: the scope with the longest wait (first on ties).
    pub denied: Option<usize>,
    /// Per scope, in call order.
    pub statuses: Vec<ScopeStatus>,
    /// Per scope: the bucket's stamp after the reserve (for a budget, the
    /// window the cost was charged to; settle checks it).
    pub windows: Vec<f64>,
    /// Per scope: where its bucket was in the store that made the reserve. Only
    /// that store can read them, and only while nothing moved (see
    /// [`LocalTable::settle_at`]).
    pub slots: Vec<usize>,
}

/// Two outcomes are equal when they answer alike: where each store keeps its
/// buckets (`slots`) is no part of the answer.
impl PartialEq for Outcome {
    #[allow(clippy::float_cmp)] // as a derived comparison: exact
    fn eq(&self, other: &Outcome) -> bool {
        self.admitted == other.admitted
            && self.retry_after == other.retry_after
            && self.denied == other.denied
            && self.statuses == other.statuses
            && self.windows == other.windows
    }
}

/// Checks the arguments shared by reserve and settle.
/// Checks the arguments of a settle, for every table kind.
pub(crate) fn check_settle(
    keys: &[&[u8]],
    limits: &[Limit],
    reserved: &[f64],
    windows: &[f64],
    actual: &[f64],
    now: f64,
) -> Result<(), LimitError> {
    check_now(now)?;
    let n = keys.len();
    if limits.len() != n || reserved.len() != n || windows.len() != n {
        return err("reservation fields differ in length");
    }
    check_costs(n, actual, "actual costs")
}

pub(crate) fn check_costs(n: usize, costs: &[f64], what: &str) -> Result<(), LimitError> {
    if costs.len() != n {
        return err(format!("{} {what} given for {n} scopes", costs.len()));
    }
    for &c in costs {
        check_non_negative(what, c)?;
    }
    Ok(())
}

/// Reserve across scopes, all or none (see [`LocalTable::reserve`]).
pub(crate) fn reserve_in<S: Store>(
    store: &mut S,
    keys: &[&[u8]],
    limits: &[Limit],
    costs: &[f64],
    now: f64,
) -> Outcome {
    let n = keys.len();
    // On the stack for the usual handful of scopes.
    let mut slots: SmallVec<[usize; 8]> = SmallVec::with_capacity(n);
    let mut work: SmallVec<[BucketState; 8]> = SmallVec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut admitted = true;
    let mut retry_after = 0.0_f64;
    let mut denied = None;
    for i in 0..n {
        let limit = &limits[i];
        let slot = store.slot(keys[i], limit, now, &slots);
        // The same key twice in one call sees the earlier scope's result.
        let base = match slots.iter().rposition(|&j| j == slot) {
            Some(p) => work[p],
            None => limit.refresh(store.state(slot), now),
        };
        slots.push(slot);
        match limit.take(base, costs[i], now) {
            Ok(next) => {
                statuses.push(limit.status(next, now));
                work.push(next);
            }
            Err(wait) => {
                statuses.push(limit.status(base, now));
                work.push(base);
                if admitted || wait > retry_after {
                    retry_after = wait;
                    denied = Some(i);
                }
                admitted = false;
            }
        }
    }
    if admitted {
        for (i, &slot) in slots.iter().enumerate() {
            store.set_state(slot, work[i]);
        }
    }
    Outcome {
        admitted,
        retry_after,
        denied,
        statuses,
        windows: work.iter().map(|s| s.stamp).collect(),
        slots: slots.into_vec(),
    }
}

/// Settle across scopes (see [`LocalTable::settle`]). With `at`, scope `i`'s
/// bucket is known to be at `at[i]` (the reserve's slots, nothing moved since):
/// no lookup by key.
#[allow(clippy::too_many_arguments)]
pub(crate) fn settle_in<S: Store>(
    store: &mut S,
    keys: &[&[u8]],
    limits: &[Limit],
    reserved: &[f64],
    windows: &[f64],
    actual: &[f64],
    now: f64,
    at: Option<&[usize]>,
) {
    for i in 0..keys.len() {
        let limit = &limits[i];
        let slot = match at {
            Some(at) => at[i],
            None => match store.find(keys[i]) {
                Some(slot) => slot,
                // A missing bucket is full (rate), in a fresh window (budget) or
                // holds nothing in flight: only a debit changes it.
                None if !matches!(limit, Limit::Concurrency { .. })
                    && actual[i] - reserved[i] > 0.0 =>
                {
                    store.slot(keys[i], limit, now, &[])
                }
                None => continue,
            },
        };
        settle_one(store, slot, limit, reserved[i], windows[i], actual[i], now);
    }
}

/// Settle one scope whose bucket is at `slot`: a rate or budget bucket gets
/// `reserved - actual` back (a budget only within the window it was charged to),
/// a concurrency counter gives back what it reserved.
fn settle_one<S: Store>(
    store: &mut S,
    slot: usize,
    limit: &Limit,
    reserved: f64,
    window: f64,
    actual: f64,
    now: f64,
) {
    match *limit {
        Limit::Rate { capacity, .. } => {
            let s = limit.refresh(store.state(slot), now);
            let level = capacity.min(s.level - (actual - reserved));
            store.set_state(
                slot,
                BucketState {
                    level,
                    stamp: s.stamp,
                },
            );
        }
        Limit::Concurrency { .. } => {
            let s = store.state(slot);
            let level = (s.level - reserved).max(0.0);
            store.set_state(
                slot,
                BucketState {
                    level,
                    stamp: s.stamp,
                },
            );
        }
        Limit::Budget { .. } => {
            let s = limit.refresh(store.state(slot), now);
            #[allow(clippy::float_cmp)] // window starts are exact values
            if s.stamp == window {
                let level = (s.level + (actual - reserved)).max(0.0);
                store.set_state(
                    slot,
                    BucketState {
                        level,
                        stamp: s.stamp,
                    },
                );
            }
        }
    }
}

/// One bucket of the in-process table.
#[derive(Debug, Clone, Copy)]
struct Entry {
    limit: Limit,
    state: BucketState,
}

/// Buckets a table keeps without sweeping idle ones: an idle bucket answers
/// as a fresh one would (full, nothing in flight, its window over), so below
/// this size dropping it only costs its re-creation at the key's next request
/// (a few keys with limits far above their traffic would otherwise be dropped
/// and made again on every request). Half of `max_keys`, at most 1024.
#[must_use]
pub fn sweep_floor(max_keys: usize) -> usize {
    (max_keys / 2).min(SWEEP_FLOOR)
}

/// The most idle buckets a table keeps unswept (see [`sweep_floor`]).
pub const SWEEP_FLOOR: usize = 1024;

/// Many named buckets in one process.
///
/// Keys are bytes (a `str` key is its UTF-8). Buckets live in insertion order;
/// a cursor walks them, a few per reserve, dropping idle ones (swap-remove:
/// the last bucket takes the dropped one's place). The Python reference keeps
/// the same order, so both evict the same buckets.
#[derive(Debug)]
pub struct LocalTable {
    map: IndexMap<Box<[u8]>, Entry, foldhash::fast::RandomState>,
    cursor: usize,
    max_keys: usize,
    evicted_busy: u64,
    /// Counts the removals: a bucket's index holds while this is unchanged
    /// (inserting appends; only a removal moves a bucket into the gap).
    moves: u64,
}

impl LocalTable {
    /// An empty table that keeps at most `max_keys` buckets (at least 1).
    #[must_use]
    pub fn new(max_keys: usize) -> LocalTable {
        LocalTable {
            map: IndexMap::with_hasher(foldhash::fast::RandomState::default()),
            cursor: 0,
            max_keys: max_keys.max(1),
            evicted_busy: 0,
            moves: 0,
        }
    }

    /// Changes whenever a bucket may have moved: the indices of an
    /// [`Outcome::slots`] made while this had the same value still hold.
    #[must_use]
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// Number of buckets held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no bucket is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Buckets evicted while busy because `max_keys` was reached.
    #[must_use]
    pub fn evicted_busy(&self) -> u64 {
        self.evicted_busy
    }

    /// The state of `key`'s bucket, as stored (not refreshed).
    #[must_use]
    pub fn peek(&self, key: &[u8]) -> Option<(Limit, BucketState)> {
        self.map.get(key).map(|e| (e.limit, e.state))
    }

    /// Admits a request against every scope (`keys[i]` with `limits[i]`,
    /// taking `costs[i]`) atomically: either all buckets take their cost or
    /// none changes. Unknown keys get a fresh bucket. Before that it drops up
    /// to `keys.len() + 1` idle buckets, and evicts busy ones only if the
    /// table would otherwise exceed `max_keys`.
    ///
    /// # Errors
    /// Lengths differ, a cost is negative or not finite, or `now` is not finite.
    pub fn reserve(
        &mut self,
        keys: &[&[u8]],
        limits: &[Limit],
        costs: &[f64],
        now: f64,
    ) -> Result<Outcome, LimitError> {
        check_now(now)?;
        if limits.len() != keys.len() {
            return err(format!(
                "{} limits given for {} keys",
                limits.len(),
                keys.len()
            ));
        }
        check_costs(keys.len(), costs, "costs")?;
        self.maintain(now, keys.len());
        Ok(reserve_in(self, keys, limits, costs, now))
    }

    /// Corrects an admitted reservation with the real costs: a rate or budget
    /// bucket gets `reserved - actual` back (or pays the extra, which may
    /// leave it in debt); a concurrency counter gives back what it reserved.
    /// A budget correction is dropped when its window has ended.
    ///
    /// # Errors
    /// Lengths differ, a cost is negative or not finite, or `now` is not finite.
    pub fn settle(
        &mut self,
        keys: &[&[u8]],
        limits: &[Limit],
        reserved: &[f64],
        windows: &[f64],
        actual: &[f64],
        now: f64,
    ) -> Result<(), LimitError> {
        check_settle(keys, limits, reserved, windows, actual, now)?;
        settle_in(self, keys, limits, reserved, windows, actual, now, None);
        Ok(())
    }

    /// [`settle`](Self::settle) of a reserve made by this table when [`moves`](Self::moves)
    /// was `moves`: while no bucket has moved since, its buckets are at
    /// `slots` (the reserve's [`Outcome::slots`]) and are not looked up again.
    ///
    /// # Errors
    /// As [`settle`](Self::settle).
    #[allow(clippy::too_many_arguments)]
    pub fn settle_at(
        &mut self,
        keys: &[&[u8]],
        limits: &[Limit],
        reserved: &[f64],
        windows: &[f64],
        actual: &[f64],
        now: f64,
        slots: &[usize],
        moves: u64,
    ) -> Result<(), LimitError> {
        check_settle(keys, limits, reserved, windows, actual, now)?;
        let at = (moves == self.moves && slots.len() == keys.len()).then_some(slots);
        debug_assert!(at.is_none_or(
            |at| (0..keys.len()).all(|i| self.map.get_index_of(keys[i]) == Some(at[i]))
        ));
        settle_in(self, keys, limits, reserved, windows, actual, now, at);
        Ok(())
    }

    /// Drops every idle bucket now; returns how many.
    pub fn evict_idle(&mut self, now: f64) -> usize {
        let before = self.map.len();
        let mut i = 0;
        while i < self.map.len() {
            let e = self.map[i];
            if e.limit.is_idle(e.state, now) {
                self.map.swap_remove_index(i);
                self.moves += 1;
            } else {
                i += 1;
            }
        }
        before - self.map.len()
    }

    /// Sweeps `n + 1` buckets at the cursor (once the table holds more than
    /// [`sweep_floor`] buckets), then makes room for `n` new ones.
    fn maintain(&mut self, now: f64, n: usize) {
        let sweep = if self.map.len() > sweep_floor(self.max_keys) {
            n + 1
        } else {
            0
        };
        for _ in 0..sweep {
            if self.map.is_empty() {
                self.cursor = 0;
                break;
            }
            if self.cursor >= self.map.len() {
                self.cursor = 0;
            }
            let e = self.map[self.cursor];
            if e.limit.is_idle(e.state, now) {
                self.map.swap_remove_index(self.cursor);
                self.moves += 1;
            } else {
                self.cursor += 1;
            }
        }
        while !self.map.is_empty() && self.map.len() + n > self.max_keys {
            if self.cursor >= self.map.len() {
                self.cursor = 0;
            }
            let e = self.map[self.cursor];
            if !e.limit.is_idle(e.state, now) {
                self.evicted_busy += 1;
            }
            self.map.swap_remove_index(self.cursor);
            self.moves += 1;
        }
    }
}

impl Store for LocalTable {
    fn slot(&mut self, key: &[u8], limit: &Limit, now: f64, _pinned: &[usize]) -> usize {
        // Inserting appends and nothing is removed during a call, so indices
        // already handed out stay valid.
        if let Some((idx, _, e)) = self.map.get_full_mut(key) {
            if e.limit != *limit {
                e.state = limit.adopt(&e.limit, e.state, now);
                e.limit = *limit;
            }
            return idx;
        }
        let (idx, _) = self.map.insert_full(
            key.into(),
            Entry {
                limit: *limit,
                state: limit.fresh(now),
            },
        );
        idx
    }

    fn find(&mut self, key: &[u8]) -> Option<usize> {
        self.map.get_index_of(key)
    }

    fn state(&self, idx: usize) -> BucketState {
        self.map[idx].state
    }

    fn set_state(&mut self, idx: usize, s: BucketState) {
        self.map[idx].state = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpm(n: f64) -> Limit {
        Limit::rate(n, 60.0, None).unwrap()
    }

    #[test]
    fn rpm_three_gives_two_one_zero_then_refuses() {
        let mut t = LocalTable::new(100);
        let l = rpm(3.0);
        let rem: Vec<f64> = (0..3)
            .map(|_| t.reserve(&[b"k"], &[l], &[1.0], 1000.0).unwrap().statuses[0].remaining)
            .collect();
        assert_eq!(rem, vec![2.0, 1.0, 0.0]);
        let o = t.reserve(&[b"k"], &[l], &[1.0], 1000.0).unwrap();
        assert!(!o.admitted);
        assert!((o.retry_after - 20.0).abs() < 1e-9);
        assert_eq!(o.denied, Some(0));
    }

    #[test]
    fn all_or_none_across_scopes() {
        let mut t = LocalTable::new(100);
        let a = rpm(10.0);
        let b = rpm(1.0);
        assert!(
            t.reserve(&[b"a", b"b"], &[a, b], &[1.0, 1.0], 0.0)
                .unwrap()
                .admitted
        );
        let o = t.reserve(&[b"a", b"b"], &[a, b], &[1.0, 1.0], 0.0).unwrap();
        assert!(!o.admitted);
        assert_eq!(o.denied, Some(1));
        // "a" was not charged for the refused request.
        assert!((t.peek(b"a").unwrap().1.level - 9.0).abs() < 1e-12);
    }

    #[test]
    fn settle_refunds_and_debits() {
        let mut t = LocalTable::new(100);
        let tpm = Limit::rate(1000.0, 60.0, None).unwrap();
        let o = t.reserve(&[b"t"], &[tpm], &[500.0], 0.0).unwrap();
        t.settle(&[b"t"], &[tpm], &[500.0], &o.windows, &[100.0], 0.0)
            .unwrap();
        assert!((t.peek(b"t").unwrap().1.level - 900.0).abs() < 1e-9);
        t.settle(&[b"t"], &[tpm], &[0.0], &o.windows, &[1500.0], 0.0)
            .unwrap();
        assert!((t.peek(b"t").unwrap().1.level + 600.0).abs() < 1e-9);
        let o = t.reserve(&[b"t"], &[tpm], &[0.0], 0.0).unwrap();
        assert!(!o.admitted, "a bucket in debt refuses even a zero cost");
    }

    #[test]
    fn concurrency_counts_in_flight() {
        let mut t = LocalTable::new(100);
        let c = Limit::concurrency(2.0).unwrap();
        let o1 = t.reserve(&[b"c"], &[c], &[1.0], 0.0).unwrap();
        assert!(t.reserve(&[b"c"], &[c], &[1.0], 0.0).unwrap().admitted);
        assert!(!t.reserve(&[b"c"], &[c], &[1.0], 0.0).unwrap().admitted);
        t.settle(&[b"c"], &[c], &[1.0], &o1.windows, &[0.0], 0.0)
            .unwrap();
        assert!(t.reserve(&[b"c"], &[c], &[1.0], 0.0).unwrap().admitted);
    }

    #[test]
    fn budget_resets_at_the_window() {
        let mut t = LocalTable::new(100);
        let b = Limit::budget(1.0, Period::from_name("day").unwrap()).unwrap();
        assert!(t.reserve(&[b"u"], &[b], &[0.75], 10.0).unwrap().admitted);
        let o = t.reserve(&[b"u"], &[b], &[0.5], 20.0).unwrap();
        assert!(!o.admitted);
        assert!((o.retry_after - (DAY - 20.0)).abs() < 1e-9);
        assert!(
            t.reserve(&[b"u"], &[b], &[0.5], DAY + 1.0)
                .unwrap()
                .admitted
        );
    }

    #[test]
    fn month_windows_follow_the_calendar() {
        // 2024-02-15T00:00:00Z
        let feb15 = 1_707_955_200.0;
        let start = Period::Month.window_start(feb15);
        assert!((start - 1_706_745_600.0).abs() < 1e-6); // 2024-02-01
        assert!((Period::Month.window_end(start) - 1_709_251_200.0).abs() < 1e-6); // 2024-03-01
        for z in [-800_000_i64, -1, 0, 1, 59, 60, 11_016, 800_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn idle_buckets_are_swept_and_busy_ones_kept() {
        let mut t = LocalTable::new(1_000_000);
        let l = rpm(60.0);
        for i in 0..3000_u32 {
            t.reserve(&[&i.to_le_bytes()], &[l], &[1.0], 0.0).unwrap();
        }
        assert_eq!(t.len(), 3000);
        // One second later every bucket has refilled: all idle.
        assert_eq!(t.evict_idle(1.0), 3000);
        for i in 0..3000_u32 {
            t.reserve(&[&i.to_le_bytes()], &[l], &[1.0], 10.0).unwrap();
        }
        // Each reserve sweeps two; after refill the table shrinks as it is used,
        // down to the idle buckets it keeps unswept.
        for _ in 0..3000 {
            t.reserve(&[b"hot"], &[l], &[0.0], 20.0).unwrap();
        }
        assert!(t.len() <= SWEEP_FLOOR + 1, "{}", t.len());
        assert!(t.len() >= SWEEP_FLOOR - 1, "{}", t.len());
    }

    #[test]
    fn idle_buckets_below_the_floor_stay_and_answer_as_fresh_ones() {
        let l = rpm(60.0);
        let mut t = LocalTable::new(1_000_000);
        t.reserve(&[b"a"], &[l], &[1.0], 0.0).unwrap();
        for i in 1..50_u32 {
            t.reserve(&[b"b"], &[l], &[1.0], f64::from(i)).unwrap();
        }
        assert_eq!(t.len(), 2); // "a" idle since 1.0, kept
        let kept = t.reserve(&[b"a"], &[l], &[1.0], 100.0).unwrap();
        let fresh = LocalTable::new(1_000_000)
            .reserve(&[b"a"], &[l], &[1.0], 100.0)
            .unwrap();
        assert_eq!(format!("{kept:?}"), format!("{fresh:?}"));
        assert_eq!(sweep_floor(8), 4);
        assert_eq!(sweep_floor(1_000_000), SWEEP_FLOOR);
    }

    #[test]
    fn settle_at_the_reserves_slots_or_by_key_once_buckets_moved() {
        let tpm = Limit::rate(1000.0, 60.0, None).unwrap();
        let both = [tpm, tpm];
        let keys: [&[u8]; 2] = [b"a", b"b"];
        // Two tables, one settled by key and one at the slots: the same states.
        let (mut by_key, mut at) = (LocalTable::new(4), LocalTable::new(4));
        let o1 = by_key.reserve(&keys, &both, &[300.0, 300.0], 0.0).unwrap();
        let o2 = at.reserve(&keys, &both, &[300.0, 300.0], 0.0).unwrap();
        assert_eq!(o2.slots.as_slice(), &[0, 1]);
        let (reserved, actual) = ([300.0, 300.0], [100.0, 0.0]);
        by_key.settle(&keys, &both, &reserved, &o1.windows, &actual, 0.0).unwrap();
        let moves = at.moves();
        at.settle_at(&keys, &both, &reserved, &o2.windows, &actual, 0.0, &o2.slots, moves)
            .unwrap();
        assert_eq!(by_key.peek(b"a"), at.peek(b"a"));
        assert_eq!(by_key.peek(b"b"), at.peek(b"b"));
        // Both buckets swept once idle, then made again in the other order: "b"
        // at 0, "c" where "b" was. The stale slot would refund "c".
        let o3 = at.reserve(&[b"b"], &[tpm], &[500.0], 0.0).unwrap();
        assert_eq!(o3.slots.as_slice(), &[1]);
        let moves = at.moves();
        assert_eq!(at.evict_idle(600.0), 2);
        assert_ne!(at.moves(), moves);
        let o4 = at.reserve(&[b"b", b"c"], &both, &[1.0, 1.0], 600.0).unwrap();
        assert_eq!(o4.slots.as_slice(), &[0, 1]);
        at.settle_at(&[b"b"], &[tpm], &[500.0], &o3.windows, &[0.0], 600.0, &o3.slots, moves)
            .unwrap();
        let level = |t: &LocalTable, k: &[u8]| t.peek(k).unwrap().1.level;
        assert!((level(&at, b"b") - 1000.0).abs() < 1e-9); // the refund, by key
        assert!((level(&at, b"c") - 999.0).abs() < 1e-9); // untouched
    }

    #[test]
    fn max_keys_bounds_the_table() {
        let mut t = LocalTable::new(10);
        let c = Limit::concurrency(5.0).unwrap();
        for i in 0..100_u32 {
            t.reserve(&[&i.to_le_bytes()], &[c], &[1.0], 0.0).unwrap();
            assert!(t.len() <= 10);
        }
        assert_eq!(t.evicted_busy(), 90);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(Limit::rate(0.0, 60.0, None).is_err());
        assert!(Limit::rate(1.0, f64::NAN, None).is_err());
        assert!(Limit::budget(-1.0, Period::Month).is_err());
        assert!(Period::from_name("fortnight").is_err());
        let mut t = LocalTable::new(10);
        let l = rpm(1.0);
        assert!(t.reserve(&[b"a"], &[l], &[-1.0], 0.0).is_err());
        assert!(t.reserve(&[b"a"], &[l], &[1.0, 2.0], 0.0).is_err());
        assert!(t.reserve(&[b"a"], &[l], &[1.0], f64::INFINITY).is_err());
    }
}
