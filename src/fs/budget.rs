//! The staging budget: bytes of files being modified kept on the local disk, at most
//! `--cache-size-mib`. Every change is one atomic update, so concurrent writers can neither
//! overshoot the limit together nor drive the count below zero.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct StagingBudget {
    used: AtomicU64,
    limit: u64,
}

impl StagingBudget {
    pub fn new(limit: u64) -> Self {
        StagingBudget {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Takes `n` bytes if they fit under the limit; false (nothing taken) if not.
    pub fn reserve(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
    }

    /// Takes `n` bytes whatever the limit (a file staged whole to be modified in place: its
    /// bytes are on the disk already, refusing would not free them).
    pub fn take(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives `n` bytes back (never below zero).
    pub fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(n)));
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn reservations_never_overshoot_the_limit_and_releases_never_go_below_zero() {
        let b = Arc::new(StagingBudget::new(1000));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.reserve(1)).count())
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(
            (granted, b.used()),
            (1000, 1000),
            "exactly the limit, among 8 racing writers"
        );
        assert!(!b.reserve(1));
        b.release(600);
        assert!(b.reserve(600));
        b.release(5000);
        assert_eq!(b.used(), 0);
        b.take(2000);
        assert_eq!(b.used(), 2000, "taking ignores the limit");
    }
}
