//! A limiter table in shared memory, so that `--workers N` processes share one
//! count without Redis.
//!
//! The region is either anonymous (`MAP_SHARED | MAP_ANONYMOUS`, shared with
//! children forked after it is made) or a file that separate processes map by
//! path (a file under `/dev/shm` stays in memory).
//!
//! Layout: a 128-byte `Header` (magic, geometry, hash seed and a robust,
//! process-shared `pthread` mutex), then `sets * WAYS` slots of 64 bytes.
//! A key is identified by its seeded XXH3-128 (the seed is random per region,
//! so colliding keys cannot be chosen from outside) and lives in one of the
//! `WAYS` slots of the set its hash selects. A new key takes an empty slot,
//! else an idle one (lossless), else the least recently used one.
//!
//! Every operation holds the mutex for its whole duration, which is what
//! makes a multi-scope reserve atomic across processes. The mutex is robust:
//! if a process dies holding it the next locker recovers it (the table may
//! then hold that process's half-written update, which errs by at most one
//! request's cost).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::limiter::{
    check_costs, check_now, check_settle, reserve_in, settle_in, BucketState, Limit, LimitError,
    Outcome, Period, Store, KIND_CONCURRENCY, KIND_RATE,
};

/// Slots per set; also the most scopes one call may name.
pub const WAYS: usize = 16;
const MAGIC: u64 = u64::from_le_bytes(*b"FGWLIM01");
const VERSION: u32 = 1;
#[repr(C, align(64))]
struct Header {
    magic: u64,
    version: u32,
    ways: u32,
    sets: u64,
    seed: u64,
    _reserved: [u64; 4],
    mutex: libc::pthread_mutex_t,
}

const HEADER_SIZE: usize = std::mem::size_of::<Header>();
const _: () = assert!(HEADER_SIZE.is_multiple_of(64));

/// One bucket: key hash, limit, state, last use. 64 bytes.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Slot {
    key_lo: u64,
    key_hi: u64,
    kind: u32,
    month: u32,
    p1: f64,
    p2: f64,
    level: f64,
    stamp: f64,
    last_used: f64,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

impl Slot {
    fn limit(&self) -> Limit {
        match self.kind {
            KIND_RATE => Limit::Rate {
                capacity: self.p1,
                refill_per_s: self.p2,
            },
            KIND_CONCURRENCY => Limit::Concurrency { max: self.p1 },
            _ => Limit::Budget {
                amount: self.p1,
                period: if self.month == 1 {
                    Period::Month
                } else {
                    Period::Seconds(self.p2)
                },
            },
        }
    }

    fn set_limit(&mut self, limit: &Limit) {
        self.kind = limit.kind();
        match *limit {
            Limit::Rate {
                capacity,
                refill_per_s,
            } => {
                self.p1 = capacity;
                self.p2 = refill_per_s;
                self.month = 0;
            }
            Limit::Concurrency { max } => {
                self.p1 = max;
                self.p2 = 0.0;
                self.month = 0;
            }
            Limit::Budget { amount, period } => {
                self.p1 = amount;
                (self.p2, self.month) = match period {
                    Period::Seconds(p) => (p, 0),
                    Period::Month => (0.0, 1),
                };
            }
        }
    }
}

/// A mapped shared region.
pub struct ShmTable {
    base: *mut Header,
    len: usize,
    sets: usize,
    seed: u64,
}

// SAFETY: all access to the region's slots happens with the process-shared
// mutex held (see `Locked`), and the header fields read without it are
// written once before the region is published.
unsafe impl Send for ShmTable {}
// SAFETY: as above; `&ShmTable` methods lock before touching slots.
unsafe impl Sync for ShmTable {}

fn os_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn check_rc(rc: i32, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what}: {}",
            io::Error::from_raw_os_error(rc)
        )))
    }
}

fn region_len(sets: usize) -> usize {
    HEADER_SIZE + sets * WAYS * std::mem::size_of::<Slot>()
}

/// Rounds a slot count to a power of two number of sets (at least one).
fn sets_for(slots: usize) -> usize {
    (slots.div_ceil(WAYS)).max(1).next_power_of_two()
}

impl ShmTable {
    /// An anonymous shared region of about `slots` buckets (rounded up to a
    /// power of two times [`WAYS`]), shared with children forked later.
    ///
    /// # Errors
    /// The mapping or mutex set-up failed.
    pub fn anonymous(slots: usize) -> io::Result<ShmTable> {
        let sets = sets_for(slots);
        let len = region_len(sets);
        // SAFETY: a fresh anonymous mapping; checked for MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os_err("mmap"));
        }
        let mut table = ShmTable {
            base: base.cast::<Header>(),
            len,
            sets,
            seed: 0,
        };
        // SAFETY: the region is new, zeroed and ours alone.
        table.seed = unsafe { table.init(sets)? };
        Ok(table)
    }

    /// Maps the region in file `path`, creating and initialising it (with
    /// about `slots` buckets) when the file is new or empty. An existing
    /// region keeps its own size. Creation is serialised with `flock`, so
    /// processes racing to open the same path agree on one region.
    ///
    /// # Errors
    /// The file cannot be opened or mapped, or holds something else.
    pub fn open(path: &Path, slots: usize) -> io::Result<ShmTable> {
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        // SAFETY: plain syscalls on a valid C string; results are checked.
        unsafe {
            let fd = libc::open(
                cpath.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
                0o600,
            );
            if fd < 0 {
                return Err(os_err("open"));
            }
            let result = Self::open_fd(fd, slots);
            libc::close(fd);
            result
        }
    }

    /// # Safety
    /// `fd` is an open, readable and writable file descriptor.
    unsafe fn open_fd(fd: i32, slots: usize) -> io::Result<ShmTable> {
        if libc::flock(fd, libc::LOCK_EX) != 0 {
            return Err(os_err("flock"));
        }
        let result = Self::map_locked(fd, slots);
        libc::flock(fd, libc::LOCK_UN);
        result
    }

    /// # Safety
    /// `fd` is open read-write and flock-ed by us.
    unsafe fn map_locked(fd: i32, slots: usize) -> io::Result<ShmTable> {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &raw mut st) != 0 {
            return Err(os_err("fstat"));
        }
        let size = usize::try_from(st.st_size).unwrap_or(0);
        let (len, fresh) = if size == 0 {
            let sets = sets_for(slots);
            let len = region_len(sets);
            let off =
                libc::off_t::try_from(len).map_err(|_| io::Error::other("region too large"))?;
            if libc::ftruncate(fd, off) != 0 {
                return Err(os_err("ftruncate"));
            }
            (len, Some(sets))
        } else {
            (size, None)
        };
        if len < HEADER_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "file is not a fastgw limiter region",
            ));
        }
        let base = libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if base == libc::MAP_FAILED {
            return Err(os_err("mmap"));
        }
        let mut table = ShmTable {
            base: base.cast::<Header>(),
            len,
            sets: 0,
            seed: 0,
        };
        if let Some(sets) = fresh {
            table.seed = table.init(sets)?;
            table.sets = sets;
            return Ok(table);
        }
        let h = &*table.base;
        let sets = usize::try_from(h.sets).unwrap_or(0);
        let valid = h.magic == MAGIC
            && h.version == VERSION
            && h.ways as usize == WAYS
            && sets.is_power_of_two()
            && region_len(sets) == len;
        if !valid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "file is not a fastgw limiter region (or another version)",
            ));
        }
        table.sets = sets;
        table.seed = h.seed;
        Ok(table)
    }

    /// Writes the header and the mutex; returns the seed.
    ///
    /// # Safety
    /// The region is zeroed and nobody else uses it yet.
    unsafe fn init(&self, sets: usize) -> io::Result<u64> {
        let h = self.base;
        let mut seed = [0_u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| io::Error::other("no system randomness"))?;
        let seed = u64::from_le_bytes(seed);
        self.init_mutex()?;
        (*h).version = VERSION;
        #[allow(clippy::cast_possible_truncation)]
        {
            (*h).ways = WAYS as u32;
        }
        (*h).sets = sets as u64;
        (*h).seed = seed;
        // Written last: a reader that sees the magic sees a whole header.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        (*h).magic = MAGIC;
        Ok(seed)
    }

    /// Writes a fresh process-shared, robust mutex into the header (zeroed
    /// first, so whatever a dead process left there is gone).
    ///
    /// # Safety
    /// Nobody else uses the region meanwhile.
    unsafe fn init_mutex(&self) -> io::Result<()> {
        let m = ptr::addr_of_mut!((*self.base).mutex);
        ptr::write_bytes(m, 0, 1);
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        check_rc(
            libc::pthread_mutexattr_init(&raw mut attr),
            "pthread_mutexattr_init",
        )?;
        check_rc(
            libc::pthread_mutexattr_setpshared(&raw mut attr, libc::PTHREAD_PROCESS_SHARED),
            "setpshared",
        )?;
        check_rc(
            libc::pthread_mutexattr_setrobust(&raw mut attr, libc::PTHREAD_MUTEX_ROBUST),
            "setrobust",
        )?;
        let rc = libc::pthread_mutex_init(m, &raw const attr);
        libc::pthread_mutexattr_destroy(&raw mut attr);
        check_rc(rc, "pthread_mutex_init")
    }

    /// Makes a region kept in a file usable again after the processes that
    /// used it are gone (a restart, or a crash of the machine): a new mutex
    /// (a lock held when the machine went down would otherwise never be
    /// released) and every concurrency counter freed (the requests it
    /// counted died with their process). Rate and budget buckets are kept as
    /// they were. Returns the number of counters freed.
    ///
    /// # Errors
    /// The mutex could not be set up or taken.
    ///
    /// # Safety
    /// No other process or thread uses the region during the call (the
    /// caller holds an exclusive lock on the state it belongs to).
    pub unsafe fn recover(&self) -> io::Result<usize> {
        self.init_mutex()?;
        let g = self.lock()?;
        let mut n = 0;
        for s in g.slots.iter_mut() {
            if s.kind == KIND_CONCURRENCY {
                s.kind = 0;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Writes the region's changed pages to its file and waits for the disk
    /// (`msync(MS_SYNC)`); a no-op for an anonymous region's memory.
    ///
    /// # Errors
    /// The system call failed.
    pub fn flush(&self) -> io::Result<()> {
        // SAFETY: our own live mapping, of exactly `len` bytes.
        let rc = unsafe { libc::msync(self.base.cast(), self.len, libc::MS_SYNC) };
        if rc == 0 {
            Ok(())
        } else {
            Err(os_err("msync"))
        }
    }

    /// Number of slots (the most buckets the region can hold).
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.sets * WAYS
    }

    /// Size of the mapping in bytes.
    #[must_use]
    pub fn region_len(&self) -> usize {
        self.len
    }

    /// Takes the mutex; released when the guard drops.
    fn lock(&self) -> io::Result<Locked<'_>> {
        // SAFETY: the header was initialised before this table was built.
        unsafe {
            let m = ptr::addr_of_mut!((*self.base).mutex);
            match libc::pthread_mutex_lock(m) {
                0 => {}
                libc::EOWNERDEAD => {
                    // The holder died; its update may be half done, which
                    // errs by at most one request. Carry on.
                    check_rc(
                        libc::pthread_mutex_consistent(m),
                        "pthread_mutex_consistent",
                    )?;
                }
                rc => check_rc(rc, "pthread_mutex_lock")?,
            }
            let slots =
                std::slice::from_raw_parts_mut(self.base.add(1).cast::<Slot>(), self.sets * WAYS);
            Ok(Locked {
                table: self,
                slots,
                now: 0.0,
            })
        }
    }

    /// As [`crate::limiter::LocalTable::reserve`], across every process
    /// mapping the region. At most [`WAYS`] scopes per call.
    ///
    /// # Errors
    /// Bad arguments, or the lock failed.
    pub fn reserve(
        &self,
        keys: &[&[u8]],
        limits: &[Limit],
        costs: &[f64],
        now: f64,
    ) -> Result<Outcome, LimitError> {
        check_now(now)?;
        if limits.len() != keys.len() {
            return Err(LimitError(format!(
                "{} limits given for {} keys",
                limits.len(),
                keys.len()
            )));
        }
        if keys.len() > WAYS {
            return Err(LimitError(format!(
                "at most {WAYS} scopes per call in a shared table"
            )));
        }
        check_costs(keys.len(), costs, "costs")?;
        let mut g = self.lock().map_err(|e| LimitError(e.to_string()))?;
        g.now = now;
        Ok(reserve_in(&mut g, keys, limits, costs, now))
    }

    /// As [`crate::limiter::LocalTable::settle`].
    ///
    /// # Errors
    /// Bad arguments, or the lock failed.
    pub fn settle(
        &self,
        keys: &[&[u8]],
        limits: &[Limit],
        reserved: &[f64],
        windows: &[f64],
        actual: &[f64],
        now: f64,
    ) -> Result<(), LimitError> {
        check_settle(keys, limits, reserved, windows, actual, now)?;
        let mut g = self.lock().map_err(|e| LimitError(e.to_string()))?;
        g.now = now;
        settle_in(&mut g, keys, limits, reserved, windows, actual, now, None);
        Ok(())
    }

    /// Number of buckets in use (a scan of the region).
    ///
    /// # Errors
    /// The lock failed.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> io::Result<usize> {
        let g = self.lock()?;
        Ok(g.slots.iter().filter(|s| s.kind != 0).count())
    }

    /// Frees every idle bucket; returns how many.
    ///
    /// # Errors
    /// The lock failed.
    pub fn evict_idle(&self, now: f64) -> io::Result<usize> {
        let g = self.lock()?;
        let mut n = 0;
        for s in g.slots.iter_mut() {
            if s.kind != 0
                && s.limit().is_idle(
                    BucketState {
                        level: s.level,
                        stamp: s.stamp,
                    },
                    now,
                )
            {
                s.kind = 0;
                n += 1;
            }
        }
        Ok(n)
    }

    fn hash(&self, key: &[u8]) -> (u64, u64) {
        let h = xxh3_128_with_seed(key, self.seed);
        #[allow(clippy::cast_possible_truncation)]
        (h as u64, (h >> 64) as u64)
    }
}

impl Drop for ShmTable {
    fn drop(&mut self) {
        // SAFETY: the mapping we made, unmapped once.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

/// The slots, with the mutex held.
struct Locked<'a> {
    table: &'a ShmTable,
    slots: &'a mut [Slot],
    now: f64,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: we hold the mutex.
        unsafe {
            libc::pthread_mutex_unlock(ptr::addr_of_mut!((*self.table.base).mutex));
        }
    }
}

impl Locked<'_> {
    fn set_base(&self, lo: u64) -> usize {
        #[allow(clippy::cast_possible_truncation)]
        let set = (lo as usize) & (self.table.sets - 1);
        set * WAYS
    }
}

impl Store for Locked<'_> {
    fn slot(&mut self, key: &[u8], limit: &Limit, now: f64, pinned: &[usize]) -> usize {
        let (lo, hi) = self.table.hash(key);
        let base = self.set_base(lo);
        let mut empty = None;
        let mut idle = None;
        let mut oldest: Option<(usize, f64)> = None;
        for idx in base..base + WAYS {
            let s = &mut self.slots[idx];
            if s.kind == 0 {
                empty = empty.or(Some(idx));
                continue;
            }
            if s.key_lo == lo && s.key_hi == hi {
                let old = s.limit();
                if old != *limit {
                    let st = limit.adopt(
                        &old,
                        BucketState {
                            level: s.level,
                            stamp: s.stamp,
                        },
                        now,
                    );
                    s.set_limit(limit);
                    s.level = st.level;
                    s.stamp = st.stamp;
                }
                s.last_used = now;
                return idx;
            }
            if pinned.contains(&idx) {
                continue;
            }
            if idle.is_none()
                && s.limit().is_idle(
                    BucketState {
                        level: s.level,
                        stamp: s.stamp,
                    },
                    now,
                )
            {
                idle = Some(idx);
            }
            if oldest.is_none_or(|(_, t)| s.last_used < t) {
                oldest = Some((idx, s.last_used));
            }
        }
        // At most WAYS scopes per call, so some slot is never pinned.
        let idx = empty.or(idle).or(oldest.map(|(i, _)| i)).unwrap_or(base);
        let fresh = limit.fresh(now);
        let s = &mut self.slots[idx];
        s.key_lo = lo;
        s.key_hi = hi;
        s.set_limit(limit);
        s.level = fresh.level;
        s.stamp = fresh.stamp;
        s.last_used = now;
        idx
    }

    fn find(&mut self, key: &[u8]) -> Option<usize> {
        let (lo, hi) = self.table.hash(key);
        let base = self.set_base(lo);
        let now = self.now;
        (base..base + WAYS).find(|&i| {
            let s = &mut self.slots[i];
            let hit = s.kind != 0 && s.key_lo == lo && s.key_hi == hi;
            if hit {
                s.last_used = now;
            }
            hit
        })
    }

    fn state(&self, idx: usize) -> BucketState {
        let s = &self.slots[idx];
        BucketState {
            level: s.level,
            stamp: s.stamp,
        }
    }

    fn set_state(&mut self, idx: usize, st: BucketState) {
        let s = &mut self.slots[idx];
        s.level = st.level;
        s.stamp = st.stamp;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::LocalTable;

    #[test]
    fn same_answers_as_the_local_table() {
        let shm = ShmTable::anonymous(4096).unwrap();
        let mut local = LocalTable::new(1 << 20);
        let rpm = Limit::rate(5.0, 60.0, None).unwrap();
        let conc = Limit::concurrency(3.0).unwrap();
        let bud = Limit::budget(2.5, Period::Month).unwrap();
        let keys: [&[u8]; 3] = [b"rpm", b"conc", b"bud"];
        let limits = [rpm, conc, bud];
        let mut t = 1_700_000_000.0;
        for i in 0..200 {
            t += f64::from(i % 7) * 0.9;
            let costs = [1.0, 1.0, 0.3];
            let a = shm.reserve(&keys, &limits, &costs, t).unwrap();
            let b = local.reserve(&keys, &limits, &costs, t).unwrap();
            assert_eq!(a, b);
            if a.admitted && i % 2 == 0 {
                let actual = [1.0, 0.0, 0.1];
                shm.settle(&keys, &limits, &costs, &a.windows, &actual, t)
                    .unwrap();
                local
                    .settle(&keys, &limits, &costs, &b.windows, &actual, t)
                    .unwrap();
            }
        }
    }

    #[test]
    fn two_mappings_of_one_file_share_counts() {
        let dir = std::env::temp_dir().join(format!("fastgw-shm-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let a = ShmTable::open(&dir, 1024).unwrap();
        let b = ShmTable::open(&dir, 99).unwrap();
        assert_eq!(a.capacity(), b.capacity());
        let l = Limit::rate(3.0, 60.0, None).unwrap();
        let mut admitted = 0;
        for i in 0..6 {
            let t = if i % 2 == 0 { &a } else { &b };
            if t.reserve(&[b"k"], &[l], &[1.0], 0.0).unwrap().admitted {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3);
        drop(a);
        drop(b);
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn a_file_reopened_after_a_restart_keeps_rates_and_budgets_and_frees_counters() {
        let path = std::env::temp_dir().join(format!("fastgw-shm-recover-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rpm = Limit::rate(3.0, 60.0, None).unwrap();
        let conc = Limit::concurrency(1.0).unwrap();
        let bud = Limit::budget(2.0, Period::Month).unwrap();
        let keys: [&[u8]; 3] = [b"rpm", b"conc", b"bud"];
        let limits = [rpm, conc, bud];
        let t = 1_700_000_000.0;
        {
            let a = ShmTable::open(&path, 1024).unwrap();
            assert!(a.reserve(&keys, &limits, &[1.0, 1.0, 1.5], t).unwrap().admitted);
            // The lock left held, as by a process that died without exiting.
            let g = a.lock().unwrap();
            std::mem::forget(g);
            a.flush().unwrap();
        }
        let b = ShmTable::open(&path, 1024).unwrap();
        // SAFETY: this test is the region's only user.
        assert_eq!(unsafe { b.recover() }.unwrap(), 1);
        // The counter is free again; the rate and the budget remember.
        let out = b.reserve(&keys, &limits, &[1.0, 1.0, 0.5], t).unwrap();
        assert!(out.admitted);
        assert!((out.statuses[0].remaining - 1.0).abs() < 1e-9);
        assert!((out.statuses[2].remaining - 0.0).abs() < 1e-9);
        assert!(!b.reserve(&keys, &limits, &[1.0, 0.0, 0.5], t).unwrap().admitted);
        drop(b);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_full_set_evicts_idle_then_oldest() {
        let shm = ShmTable::anonymous(WAYS).unwrap();
        assert_eq!(shm.capacity(), WAYS);
        let c = Limit::concurrency(1.0).unwrap();
        for i in 0..100_u32 {
            assert!(
                shm.reserve(&[&i.to_le_bytes()], &[c], &[1.0], f64::from(i))
                    .unwrap()
                    .admitted
            );
            assert!(shm.len().unwrap() <= WAYS);
        }
        let many: [&[u8]; 17] = [b"x"; 17];
        assert!(shm.reserve(&many, &[c; 17], &[0.0; 17], 0.0).is_err());
    }

    #[test]
    fn a_process_that_dies_holding_the_lock_does_not_wedge_the_table() {
        let shm = ShmTable::anonymous(64).unwrap();
        // SAFETY: the child only takes the lock and exits at once.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let guard = shm.lock();
            std::mem::forget(guard);
            // SAFETY: leave without unlocking or running destructors.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &raw mut status, 0) }, pid);
        let l = Limit::rate(1.0, 60.0, None).unwrap();
        assert!(shm.reserve(&[b"k"], &[l], &[1.0], 0.0).unwrap().admitted);
        assert!(!shm.reserve(&[b"k"], &[l], &[1.0], 0.0).unwrap().admitted);
    }

    #[test]
    fn garbage_files_are_refused() {
        let p = std::env::temp_dir().join(format!("fastgw-shm-bad-{}", std::process::id()));
        std::fs::write(&p, vec![7_u8; 4096]).unwrap();
        assert!(ShmTable::open(&p, 64).is_err());
        std::fs::remove_file(&p).unwrap();
    }
}
