//! One memory target for the whole mount (`--memory-target-mib`; by default 95% of the
//! machine's memory or of the cgroup's limit, whichever is lower, as mountpoint-s3 does).
//!
//! A quarter of it bounds the metadata caches (their entry counts are worked out from it
//! when the mount starts, see `cli`); the rest is the pool this type counts, in 4 KiB units:
//! 1. Read-ahead takes from it without waiting ([`MemoryTarget::try_lease`]): a reader that
//!    finds it spent reads on demand, unhelped, until memory is given back.
//! 2. The part buffers of every writer (the part being filled and the parts on the wire)
//!    wait for it ([`Lease::grow`]): back-pressure on `write`, instead of a process that
//!    grows or a write that fails. A writer whose wait sees no memory given back for
//!    [`STALL`] (every byte held by writers that are themselves stopped: one program
//!    writing many files in turn) takes it over the target, counted and logged, rather
//!    than hang.
//!
//! A [`Lease`] gives its bytes back when dropped (a part's lease goes with the part onto the
//! wire and comes back when S3 answered).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The pool is counted in units of this many bytes (a semaphore's permits are `u32`).
const UNIT: u64 = 4096;

/// How long a waiting writer waits with no memory given back before it goes over the target.
pub const STALL: Duration = Duration::from_secs(5);

/// What the metadata caches may use of the target: this fraction.
pub const METADATA_SHARE: u64 = 4;

/// What one cached entry (a path's attributes, or a name in a cached listing) costs, for
/// bounding the metadata caches in bytes.
pub const ENTRY_BYTES: u64 = 512;

struct Inner {
    sem: Semaphore,
    units: u64,
    target: u64,
    /// Bytes leased to writers' part buffers now.
    writes: AtomicU64,
    /// Bytes leased to read-ahead now.
    reads: AtomicU64,
    /// Writers that had to wait, and those that went over the target after a stall.
    waits: AtomicU64,
    overcommits: AtomicU64,
    /// Bytes taken over the target and not yet given back.
    over: AtomicU64,
}

/// The pool of a mount (clones share it).
#[derive(Clone)]
pub struct MemoryTarget(Arc<Inner>);

/// What a lease is for: counted apart in `prefixfs stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    ReadAhead,
    Write,
}

/// Bytes taken from the pool, given back on drop.
pub struct Lease {
    target: MemoryTarget,
    use_: Use,
    /// Units held from the semaphore, and bytes taken over the target.
    units: u64,
    over: u64,
    bytes: u64,
}

fn units(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT)
}

impl MemoryTarget {
    /// A pool of `pool` bytes for read-ahead and part buffers, of a mount whose whole target
    /// is `target` bytes.
    pub fn new(target: u64, pool: u64) -> Self {
        let units = units(pool).clamp(1, u32::MAX as u64 / 2);
        MemoryTarget(Arc::new(Inner {
            sem: Semaphore::new(units as usize),
            units,
            target,
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            overcommits: AtomicU64::new(0),
            over: AtomicU64::new(0),
        }))
    }

    /// A lease of nothing yet, for `use_` (grown with [`Lease::grow`]).
    pub fn lease(&self, use_: Use) -> Lease {
        Lease {
            target: self.clone(),
            use_,
            units: 0,
            over: 0,
            bytes: 0,
        }
    }

    /// `bytes` now, or None when the pool has not that much free (read-ahead).
    pub fn try_lease(&self, bytes: u64, use_: Use) -> Option<Lease> {
        let n = units(bytes).min(self.0.units);
        let permit = self.0.sem.try_acquire_many(n as u32).ok()?;
        permit.forget();
        let mut l = self.lease(use_);
        l.units = n;
        l.set_bytes(bytes);
        Some(l)
    }

    /// Bytes leased to read-ahead, to writers; waits; over-target takes; bytes over now.
    pub fn usage(&self) -> MemoryUsage {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MemoryUsage {
            target: self.0.target,
            pool: self.0.units * UNIT,
            read_ahead: n(&self.0.reads),
            writes: n(&self.0.writes),
            waits: n(&self.0.waits),
            overcommits: n(&self.0.overcommits),
            over: n(&self.0.over),
        }
    }
}

/// What `prefixfs stats` shows of the target.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryUsage {
    pub target: u64,
    pub pool: u64,
    pub read_ahead: u64,
    pub writes: u64,
    pub waits: u64,
    pub overcommits: u64,
    pub over: u64,
}

impl Lease {
    fn counter(&self) -> &AtomicU64 {
        match self.use_ {
            Use::ReadAhead => &self.target.0.reads,
            Use::Write => &self.target.0.writes,
        }
    }

    fn set_bytes(&mut self, bytes: u64) {
        let c = self.counter();
        c.fetch_add(bytes, Ordering::Relaxed);
        c.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = bytes;
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds `to` bytes: waits until the pool has the difference (see the module doc).
    pub async fn grow(&mut self, to: u64) {
        if to <= self.bytes {
            return;
        }
        let inner = self.target.0.clone();
        let want = units(to).saturating_sub(self.units + units(self.over)).min(inner.units);
        if want > 0 {
            match inner.sem.try_acquire_many(want as u32) {
                Ok(p) => {
                    p.forget();
                    self.units += want;
                }
                Err(_) => {
                    inner.waits.fetch_add(1, Ordering::Relaxed);
                    self.wait_for(want).await;
                }
            }
        }
        self.set_bytes(to);
    }

    /// Takes `want` units, waiting while memory is given back; after a [`STALL`] with none
    /// given back, takes them over the target.
    async fn wait_for(&mut self, want: u64) {
        let inner = self.target.0.clone();
        loop {
            let free = inner.sem.available_permits();
            match tokio::time::timeout(STALL, inner.sem.acquire_many(want as u32)).await {
                Ok(Ok(p)) => {
                    p.forget();
                    self.units += want;
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) if inner.sem.available_permits() > free => continue,
                Err(_) => {
                    let n = inner.overcommits.fetch_add(1, Ordering::Relaxed);
                    if n == 0 {
                        tracing::warn!(
                            target_mib = inner.target >> 20,
                            "writers hold the whole memory target and none gave any back for {STALL:?}: going over it (a program writing many files in turn?); raise --memory-target-mib"
                        );
                    }
                    let bytes = want * UNIT;
                    inner.over.fetch_add(bytes, Ordering::Relaxed);
                    self.over += bytes;
                    return;
                }
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let inner = &self.target.0;
        if self.units > 0 {
            inner.sem.add_permits(self.units as usize);
        }
        inner.over.fetch_sub(self.over, Ordering::Relaxed);
        self.counter().fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The default target: 95% of the machine's memory, or of the cgroup's limit when lower.
pub fn default_target() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(4 << 30, |kib| kib * 1024);
    let cgroup = cgroup_limit();
    machine.min(cgroup.unwrap_or(u64::MAX)) / 100 * 95
}

/// This process's cgroup v2 memory limit (`memory.max`), when it has one.
fn cgroup_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let limit = std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", path.trim_end_matches('/'))).ok()?;
    limit.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_writer_waits_for_memory_given_back_and_counts_it() {
        let t = MemoryTarget::new(64 << 20, 16 << 20);
        let mut a = t.lease(Use::Write);
        a.grow(12 << 20).await;
        assert_eq!(t.usage().writes, 12 << 20);
        // Read-ahead gets what is left, no more.
        assert!(t.try_lease(8 << 20, Use::ReadAhead).is_none());
        let r = t.try_lease(4 << 20, Use::ReadAhead).expect("4 MiB free");
        assert_eq!(t.usage().read_ahead, 4 << 20);
        let t2 = t.clone();
        let waiter = tokio::spawn(async move {
            let mut b = t2.lease(Use::Write);
            b.grow(8 << 20).await;
            b.bytes()
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "waits while the pool is spent");
        drop(r);
        drop(a);
        assert_eq!(waiter.await.unwrap(), 8 << 20);
        let u = t.usage();
        assert_eq!((u.waits, u.overcommits, u.writes, u.read_ahead), (1, 0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_stalled_behind_stopped_writers_goes_over_the_target() {
        let t = MemoryTarget::new(16 << 20, 16 << 20);
        let mut a = t.lease(Use::Write);
        a.grow(16 << 20).await;
        let mut b = t.lease(Use::Write);
        b.grow(8 << 20).await;
        let u = t.usage();
        assert_eq!((u.waits, u.overcommits, u.over), (1, 1, 8 << 20));
        drop(b);
        drop(a);
        assert_eq!(t.usage().over, 0);
        assert_eq!(t.usage().writes, 0);
        // Everything given back: the whole pool leases again.
        assert!(t.try_lease(16 << 20, Use::ReadAhead).is_some());
    }
}
