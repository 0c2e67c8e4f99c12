//! Single-flight: concurrent callers asking for the same thing (64 writers looking up names in
//! one directory, `ls -l` racing its own attribute prefetch) share one set of S3 requests.
//!
//! Invariant: while a call for a key is in flight, every caller for that key waits for its
//! result instead of sending its own requests. A call that fails is not shared: the next
//! waiter runs its own (a failure is often a throttle that the retry already absorbed, and
//! each caller deserves its own attempt budget).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

pub struct SingleFlight<K, V> {
    calls: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            calls: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<OnceCell<V>>>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` unless a call for `key` is in flight, in which case its result is shared.
    pub async fn run<E, F, Fut>(&self, key: &K, f: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = self.calls().entry(key.clone()).or_default().clone();
        let result = cell.get_or_try_init(f).await.cloned();
        let mut calls = self.calls();
        if calls.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            calls.remove(key);
        }
        result
    }

    /// True while a call for `key` is running.
    pub fn in_flight(&self, key: &K) -> bool {
        self.calls().contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_call() {
        let flight: Arc<SingleFlight<&str, u32>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (flight, calls) = (flight.clone(), calls.clone());
                tokio::spawn(async move {
                    flight
                        .run(&"k", || async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, ()>(7)
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(!flight.in_flight(&"k"));
    }

    #[tokio::test]
    async fn a_failed_call_is_not_shared_with_later_callers() {
        let flight: SingleFlight<&str, u32> = SingleFlight::default();
        assert_eq!(flight.run(&"k", || async { Err::<u32, _>("boom") }).await, Err("boom"));
        assert_eq!(flight.run(&"k", || async { Ok::<_, &str>(1) }).await, Ok(1));
    }
}
