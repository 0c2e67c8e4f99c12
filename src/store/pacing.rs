//! Per-prefix pacing: an adaptive request rate for each hash prefix, so that one throttled
//! prefix slows itself down and leaves the others at full speed.
//!
//! The SDK's adaptive retry mode keeps one limiter per region per process, which would slow
//! every prefix for one hot one; this does AIMD per prefix instead:
//! - A prefix starts unpaced. The first SlowDown sets its rate to half of what it achieved
//!   over the last second; every further SlowDown halves it again (at most once per
//!   `decrease_interval`, so a burst of throttles counts once).
//! - Each second without a throttle raises the rate by `increase_fraction` of itself (at least
//!   one request per second), until it passes `max_rate`, when the prefix is unpaced again.
//!   The rise is geometric so that a prefix recovers within seconds of a partition split,
//!   rather than crawling back one request at a time.
//! - Requests wait for their slot (a GCRA-style schedule), so a paced prefix sends evenly.
//!
//! Wraps the store *inside* the retry layer: every attempt is paced and observed.

use super::stats::RequestStats;
use super::{
    CopySpec, DeleteTarget, Headers, ListPage, ObjectMeta, ObjectStore, OpKind, PrefixFn, StoreResult, UploadInfo,
    UserMeta, WriteIf,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct PacingConfig {
    /// Above this rate a prefix is not paced at all.
    pub max_rate: f64,
    pub min_rate: f64,
    pub increase_fraction: f64,
    pub decrease_interval: Duration,
}

impl Default for PacingConfig {
    fn default() -> Self {
        PacingConfig {
            max_rate: 10_000.0,
            min_rate: 10.0,
            increase_fraction: 0.5,
            decrease_interval: Duration::from_millis(200),
        }
    }
}

#[derive(Debug)]
struct Pacer {
    /// Requests per second; `None` while unpaced.
    rate: Option<f64>,
    next_slot: Instant,
    last_decrease: Option<Instant>,
    last_increase: Instant,
    window_start: Instant,
    window_count: u64,
    last_window_rate: f64,
}

impl Pacer {
    fn new(now: Instant) -> Self {
        Pacer {
            rate: None,
            next_slot: now,
            last_decrease: None,
            last_increase: now,
            window_start: now,
            window_count: 0,
            last_window_rate: 0.0,
        }
    }

    fn count_success(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.window_start);
        if elapsed >= Duration::from_secs(1) {
            self.last_window_rate = self.window_count as f64 / elapsed.as_secs_f64();
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count += 1;
    }

    fn achieved_rate(&self, now: Instant) -> f64 {
        let elapsed = now.duration_since(self.window_start).as_secs_f64();
        let current = if elapsed > 0.05 {
            self.window_count as f64 / elapsed
        } else {
            0.0
        };
        current.max(self.last_window_rate)
    }
}

/// A store whose requests are paced per hash prefix.
pub struct PacedStore<S> {
    inner: S,
    cfg: PacingConfig,
    stats: Arc<RequestStats>,
    prefix: PrefixFn,
    pacers: Mutex<HashMap<String, Pacer>>,
}

impl<S: ObjectStore> PacedStore<S> {
    /// `prefix` says which partition a key is on: each gets a pacer of its own.
    pub fn new(inner: S, cfg: PacingConfig, stats: Arc<RequestStats>, prefix: PrefixFn) -> Self {
        PacedStore {
            inner,
            cfg,
            stats,
            prefix,
            pacers: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pacer>> {
        self.pacers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current rate limit of a prefix (`None`: unpaced).
    pub fn rate(&self, prefix: &str) -> Option<f64> {
        self.lock().get(prefix).and_then(|p| p.rate)
    }

    async fn wait_turn(&self, prefix: &str) {
        let now = Instant::now();
        let slot = {
            let mut pacers = self.lock();
            let p = pacers.entry(prefix.to_string()).or_insert_with(|| Pacer::new(now));
            // Additive increase for every second that passed without a throttle.
            if let Some(rate) = p.rate {
                let secs = now.duration_since(p.last_increase).as_secs_f64();
                if secs >= 1.0 {
                    let step = (rate * self.cfg.increase_fraction).max(1.0) * secs.floor();
                    p.rate = Some(rate + step).filter(|r| *r < self.cfg.max_rate);
                    p.last_increase = now;
                }
            }
            match p.rate {
                None => return,
                Some(rate) => {
                    let slot = p.next_slot.max(now);
                    p.next_slot = slot + Duration::from_secs_f64(1.0 / rate);
                    slot
                }
            }
        };
        tokio::time::sleep_until(slot).await;
    }

    fn observe(&self, prefix: &str, throttled: bool) {
        let now = Instant::now();
        let mut pacers = self.lock();
        let p = pacers.entry(prefix.to_string()).or_insert_with(|| Pacer::new(now));
        if !throttled {
            p.count_success(now);
            return;
        }
        if p.last_decrease
            .is_some_and(|t| now.duration_since(t) < self.cfg.decrease_interval)
        {
            return;
        }
        let base = p
            .rate
            .unwrap_or_else(|| p.achieved_rate(now).max(2.0 * self.cfg.min_rate));
        let rate = (base / 2.0).max(self.cfg.min_rate);
        p.rate = Some(rate);
        p.last_decrease = Some(now);
        p.last_increase = now;
        self.stats.set_prefix_rate(prefix, Some(rate));
        tracing::debug!(prefix, rate, "SlowDown: pacing this prefix");
    }

    async fn paced<T, F, Fut>(&self, kind: OpKind, key: &str, f: F) -> StoreResult<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let prefix = (self.prefix)(key);
        self.wait_turn(&prefix).await;
        let started = std::time::Instant::now();
        let r = f().await;
        let throttled = matches!(&r, Err(e) if e.is_throttle());
        self.observe(&prefix, throttled);
        self.stats.record_prefix(&prefix, kind, started.elapsed(), throttled);
        r
    }
}

crate::store::around_each_call!(impl[S: ObjectStore] for PacedStore<S>, paced, {
    async fn put_with(
        &self,
        key: &str,
        body: Bytes,
        meta: &UserMeta,
        headers: Option<&Headers>,
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        self.paced(OpKind::Put, key, || self.inner.put_with(key, body, meta, headers, cond))
            .await
    }

    async fn delete_many(&self, targets: &[DeleteTarget]) -> StoreResult<Vec<crate::store::DeleteFailure>> {
        // A batch spans prefixes: pace it by its first key, and feed per-key throttles back
        // to each key's prefix.
        let first = targets.first().map(|t| t.key.as_str()).unwrap_or("");
        let failed = self
            .paced(OpKind::DeleteMany, first, || self.inner.delete_many(targets))
            .await?;
        for f in &failed {
            if f.is_throttle() {
                let prefix = (self.prefix)(&f.key);
                self.observe(&prefix, true);
                self.stats.record_prefix_throttle(&prefix);
            }
        }
        Ok(failed)
    }

    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        self.paced(OpKind::CompleteMultipart, key, || {
            self.inner.complete_multipart_if(key, upload_id, parts, cond)
        })
        .await
    }
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use crate::store::memory::MemoryStore;
    use crate::store::retry::{RetryConfig, RetryingStore};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// Throttles keys under `hot/` while `on` is set; counts requests per prefix.
    struct Throttler {
        inner: MemoryStore,
        on: Arc<AtomicBool>,
        hot_requests: AtomicU64,
    }

    #[async_trait::async_trait]
    impl ObjectStore for Throttler {
        async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
            self.inner.head(key).await
        }
        async fn get(&self, key: &str, range: Option<Range<u64>>, v: Option<&str>) -> StoreResult<Bytes> {
            self.inner.get(key, range, v).await
        }
        async fn put_with(
            &self,
            key: &str,
            body: Bytes,
            meta: &UserMeta,
            h: Option<&Headers>,
            c: Option<&WriteIf>,
        ) -> StoreResult<Option<String>> {
            if key.starts_with("hot/") {
                self.hot_requests.fetch_add(1, Ordering::Relaxed);
                if self.on.load(Ordering::Relaxed) {
                    return Err(StoreError::Throttled {
                        op: "put",
                        key: key.into(),
                    });
                }
            }
            self.inner.put_with(key, body, meta, h, c).await
        }
        async fn delete(&self, key: &str, v: Option<&str>) -> StoreResult<()> {
            self.inner.delete(key, v).await
        }
        async fn delete_many(&self, t: &[DeleteTarget]) -> StoreResult<Vec<crate::store::DeleteFailure>> {
            self.inner.delete_many(t).await
        }
        async fn list(&self, p: &str, d: Option<&str>, t: Option<&str>, m: Option<i32>) -> StoreResult<ListPage> {
            self.inner.list(p, d, t, m).await
        }
        async fn copy(&self, c: &CopySpec<'_>) -> StoreResult<Option<String>> {
            self.inner.copy(c).await
        }
        async fn create_multipart_with(&self, k: &str, m: &UserMeta, h: Option<&Headers>) -> StoreResult<String> {
            self.inner.create_multipart_with(k, m, h).await
        }
        async fn upload_part(&self, k: &str, u: &str, p: i32, b: Bytes) -> StoreResult<String> {
            self.inner.upload_part(k, u, p, b).await
        }
        async fn upload_part_copy(
            &self,
            k: &str,
            u: &str,
            p: i32,
            s: &str,
            r: Range<u64>,
            e: Option<&str>,
        ) -> StoreResult<String> {
            self.inner.upload_part_copy(k, u, p, s, r, e).await
        }
        async fn complete_multipart_if(
            &self,
            k: &str,
            u: &str,
            p: &[(i32, String)],
            c: Option<&WriteIf>,
        ) -> StoreResult<Option<String>> {
            self.inner.complete_multipart_if(k, u, p, c).await
        }
        async fn abort_multipart(&self, k: &str, u: &str) -> StoreResult<()> {
            self.inner.abort_multipart(k, u).await
        }
        async fn list_uploads(&self, p: &str) -> StoreResult<Vec<UploadInfo>> {
            self.inner.list_uploads(p).await
        }
        async fn get_tagging(&self, k: &str) -> StoreResult<Option<String>> {
            self.inner.get_tagging(k).await
        }
    }

    fn setup(
        max_attempts: u32,
    ) -> (
        Arc<RetryingStore<PacedStore<Throttler>>>,
        Arc<AtomicBool>,
        Arc<RequestStats>,
    ) {
        let stats = Arc::new(RequestStats::default());
        let first_segment = crate::store::first_segment();
        let on = Arc::new(AtomicBool::new(false));
        let t = Throttler {
            inner: MemoryStore::new(),
            on: on.clone(),
            hot_requests: AtomicU64::new(0),
        };
        let paced = PacedStore::new(t, PacingConfig::default(), stats.clone(), first_segment.clone());
        let retry = RetryConfig {
            max_attempts,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
        };
        (
            Arc::new(RetryingStore::new(paced, retry, stats.clone(), first_segment)),
            on,
            stats,
        )
    }

    async fn put_n(s: &Arc<RetryingStore<PacedStore<Throttler>>>, prefix: &str, n: usize) -> (usize, Duration) {
        let start = Instant::now();
        let mut ok = 0;
        for i in 0..n {
            if s.put(&format!("{prefix}/{i}"), Bytes::new(), &UserMeta::new())
                .await
                .is_ok()
            {
                ok += 1;
            }
        }
        (ok, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_prefix_backs_off_and_recovers_while_others_run_free() {
        let (s, on, stats) = setup(20);
        // Warm up: both prefixes unpaced.
        put_n(&s, "hot", 50).await;
        on.store(true, Ordering::Relaxed);
        // Throttled: the hot prefix gets paced...
        let throttled = tokio::spawn({
            let s = s.clone();
            async move { put_n(&s, "hot", 5).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let hot_rate = s.inner().rate("hot").expect("the hot prefix is paced");
        // ...while the cold prefix is not paced and its requests wait for nothing.
        let (ok, took) = put_n(&s, "cold", 200).await;
        assert_eq!(ok, 200);
        assert!(took < Duration::from_millis(1), "cold prefix waited {took:?}");
        assert_eq!(s.inner().rate("cold"), None);
        // Throttling stops: the retries succeed and the rate climbs back until unpaced.
        on.store(false, Ordering::Relaxed);
        let (ok, _) = throttled.await.unwrap();
        assert_eq!(ok, 5);
        assert!(stats.snapshot().throttles > 0);
        assert!(hot_rate >= 1.0);
        for _ in 0..200 {
            put_n(&s, "hot", 20).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(s.inner().rate("hot"), None, "recovered to unpaced");
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_past_the_retry_budget_is_an_error_not_not_found() {
        let (s, on, stats) = setup(4);
        on.store(true, Ordering::Relaxed);
        let err = s.put("hot/x", Bytes::new(), &UserMeta::new()).await.unwrap_err();
        assert!(matches!(err, StoreError::RetriesExhausted { attempts: 4, .. }));
        assert!(!err.is_not_found());
        let fs_err: crate::fs::error::FsError = err.into();
        assert_eq!(fs_err.errno, libc::EIO);
        assert_eq!(stats.prefix_snapshot()["hot"].throttles, 4);
    }
}
