//! What the memory store's tests hold and measure requests with: gates that hold requests
//! until released, and a gauge of GETs (delay, most in flight, bytes).

use crate::store::{StoreError, StoreResult};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Requests of one kind (`"list"`, `"head"`) for keys starting with a prefix, held until
/// the test lets them go (see [`MemoryStore::hold`]).
pub(super) struct Hold {
    pub(super) op: &'static str,
    pub(super) prefix: String,
    pub(super) gate: Arc<Gate>,
}

/// What a test holds requests with: each request waits for one permit.
pub struct Gate {
    permits: tokio::sync::Semaphore,
    arrived: AtomicUsize,
}

impl Gate {
    pub(super) fn new() -> Self {
        Gate {
            permits: tokio::sync::Semaphore::new(0),
            arrived: AtomicUsize::new(0),
        }
    }

    /// Lets `n` more held requests go.
    pub fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Waits until `n` requests in all have reached the gate.
    pub async fn arrivals(&self, n: usize) {
        while self.arrived.load(Ordering::SeqCst) < n {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    pub(super) async fn pass(&self, op: &'static str, key: &str) -> StoreResult<()> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let permit = self.permits.acquire().await.map_err(|e| StoreError::Transport {
            op,
            key: key.to_string(),
            message: e.to_string(),
        })?;
        permit.forget();
        Ok(())
    }
}

/// What GETs cost, for tests of the read path: an added delay, the most in flight at once,
/// the bytes returned.
#[derive(Default)]
pub struct GetGauge {
    pub(super) delay: Mutex<std::time::Duration>,
    pub(super) in_flight: AtomicUsize,
    pub(super) max_in_flight: AtomicUsize,
    pub(super) bytes: AtomicU64,
}

impl GetGauge {
    /// Every GET answers after `delay`.
    pub fn set_delay(&self, delay: std::time::Duration) {
        *self.delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    /// The most GETs that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    /// Body bytes returned by GETs.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
