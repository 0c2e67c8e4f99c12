//! Deferred, batched deletes: single-key deletes (what `rm -r` through the mount sends, one
//! unlink at a time) are queued for a few milliseconds and sent as DeleteObjects batches
//! with keys interleaved across prefixes, so consecutive deletes hit different partitions
//! and a tree of N files costs about N/1000 requests instead of N.
//!
//! Invariants, so the delay is invisible to readers and writers of this mount:
//! - A key queued or being deleted does not exist: HEAD/GET answer NotFound, listings omit it.
//! - A write to such a key (PUT, copy, multipart) first cancels its queued delete, or waits
//!   for the batch that is deleting it, so the delete can never land after the write.
//! - [`DeferredDeletes::settle`] sends everything queued and waits (unmount calls it).
//!   A batch that fails is logged with its keys; those files reappear.

use super::stats::RequestStats;
use super::{ListPage, ObjectMeta, ObjectStore, StoreError, StoreResult, UploadInfo, UserMeta};
use crate::layout::interleave_by;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How long a delete waits for company before its batch is sent.
const LINGER: Duration = Duration::from_millis(10);
const BATCH: usize = 1000;

#[derive(Default)]
struct Queue {
    queued: Vec<String>,
    queued_set: HashSet<String>,
    in_flight: HashSet<String>,
    flusher_running: bool,
    /// Label of the prefix of the last key sent, so the next batch starts elsewhere.
    last_prefix: Option<String>,
    /// Someone waits in `settle`: send everything, tails included.
    urgent: bool,
}

pub struct DeferredDeletes {
    inner: Arc<dyn ObjectStore>,
    stats: Arc<RequestStats>,
    queue: Arc<Mutex<Queue>>,
    done: Arc<Notify>,
}

impl DeferredDeletes {
    pub fn new(inner: Arc<dyn ObjectStore>, stats: Arc<RequestStats>) -> Self {
        DeferredDeletes {
            inner,
            stats,
            queue: Arc::default(),
            done: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hidden(&self, key: &str) -> bool {
        let q = self.lock();
        q.queued_set.contains(key) || q.in_flight.contains(key)
    }

    /// Before writing `key`: cancel its queued delete, or wait for the batch deleting it.
    async fn claim(&self, key: &str) {
        loop {
            let notified = self.done.notified();
            {
                let mut q = self.lock();
                if q.queued_set.remove(key) {
                    q.queued.retain(|k| k != key);
                }
                if !q.in_flight.contains(key) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Sends every queued delete and waits for all batches to finish.
    pub async fn settle(&self) {
        loop {
            let notified = self.done.notified();
            {
                let mut q = self.lock();
                if q.queued.is_empty() && q.in_flight.is_empty() && !q.flusher_running {
                    q.urgent = false;
                    return;
                }
                q.urgent = true;
            }
            self.spawn_flusher();
            notified.await;
        }
    }

    fn spawn_flusher(&self) {
        {
            let mut q = self.lock();
            if q.flusher_running || q.queued.is_empty() {
                return;
            }
            q.flusher_running = true;
        }
        let (inner, stats, queue, done) = (
            self.inner.clone(),
            self.stats.clone(),
            self.queue.clone(),
            self.done.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LINGER).await;
                let batch = {
                    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    if q.queued.is_empty() {
                        q.flusher_running = false;
                        done.notify_waiters();
                        return;
                    }

                    let n = q.queued.len().min(BATCH);
                    let keys: Vec<String> = q.queued.drain(..n).collect();
                    let mut ordered = interleave_by(keys, |k| stats.prefix_of(k));
                    // Do not start where the last batch ended.
                    if let (Some(last), Some(first)) = (&q.last_prefix, ordered.first())
                        && stats.prefix_of(first) == *last
                        && let Some(pos) = ordered.iter().position(|k| stats.prefix_of(k) != *last)
                    {
                        ordered[..=pos].rotate_right(1);
                    }
                    // A tail of one prefix would send consecutive deletes to one partition:
                    // keep it for the next batch, where other prefixes can separate it
                    // (unless someone is waiting for everything, or there is no other prefix).
                    let labels: Vec<String> = ordered.iter().map(|k| stats.prefix_of(k)).collect();
                    if !q.urgent && labels.iter().any(|l| *l != labels[0]) {
                        let mut cut = labels.len();
                        while cut > 1 && labels[cut - 2] == labels[cut - 1] {
                            cut -= 1;
                        }
                        let held: Vec<String> = ordered.split_off(cut);
                        for (i, k) in held.into_iter().enumerate() {
                            q.queued.insert(i, k);
                        }
                    }
                    for k in &ordered {
                        q.queued_set.remove(k);
                        q.in_flight.insert(k.clone());
                    }
                    q.last_prefix = ordered.last().map(|k| stats.prefix_of(k));
                    ordered
                };
                match inner.delete_many(&batch).await {
                    Ok(failed) if failed.is_empty() => {}
                    Ok(failed) => {
                        tracing::error!(failed = failed.len(), first = ?failed.first(), "deferred deletes failed; those files reappear")
                    }
                    Err(e) => {
                        tracing::error!(keys = batch.len(), error = %e, "a batch of deferred deletes failed; those files reappear")
                    }
                }
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                for k in &batch {
                    q.in_flight.remove(k);
                }
                drop(q);
                done.notify_waiters();
            }
        });
    }
}

fn gone(op: &'static str, key: &str) -> StoreError {
    StoreError::NotFound {
        op,
        key: key.to_string(),
    }
}

#[async_trait]
impl ObjectStore for DeferredDeletes {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        if self.hidden(key) {
            return Err(gone("head", key));
        }
        self.inner.head(key).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes> {
        if self.hidden(key) {
            return Err(gone("get", key));
        }
        self.inner.get(key, range).await
    }

    async fn put(&self, key: &str, body: Bytes, meta: &UserMeta) -> StoreResult<()> {
        self.claim(key).await;
        self.inner.put(key, body, meta).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        {
            let mut q = self.lock();
            if q.queued_set.insert(key.to_string()) {
                q.queued.push(key.to_string());
            }
        }
        self.spawn_flusher();
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> StoreResult<Vec<(String, String)>> {
        for k in keys {
            self.claim(k).await;
        }
        self.inner.delete_many(keys).await
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        // Keys pending when the request leaves may be deleted while it is answered, and then
        // no longer be pending when the answer arrives: hide both.
        let before: HashSet<String> = {
            let q = self.lock();
            q.queued_set
                .iter()
                .chain(q.in_flight.iter())
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect()
        };
        let mut page = self.inner.list(prefix, delimiter, token, max_keys).await?;
        let q = self.lock();
        page.objects
            .retain(|o| !before.contains(&o.key) && !q.queued_set.contains(&o.key) && !q.in_flight.contains(&o.key));
        Ok(page)
    }

    async fn copy(&self, src: &str, dst: &str, meta: Option<&UserMeta>) -> StoreResult<()> {
        if self.hidden(src) {
            return Err(gone("copy", src));
        }
        self.claim(dst).await;
        self.inner.copy(src, dst, meta).await
    }

    async fn create_multipart(&self, key: &str, meta: &UserMeta) -> StoreResult<String> {
        self.claim(key).await;
        self.inner.create_multipart(key, meta).await
    }

    async fn upload_part(&self, key: &str, upload_id: &str, part: i32, body: Bytes) -> StoreResult<String> {
        self.inner.upload_part(key, upload_id, part, body).await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part: i32,
        src: &str,
        range: Range<u64>,
    ) -> StoreResult<String> {
        self.inner.upload_part_copy(key, upload_id, part, src, range).await
    }

    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(i32, String)]) -> StoreResult<()> {
        self.claim(key).await;
        self.inner.complete_multipart(key, upload_id, parts).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.inner.abort_multipart(key, upload_id).await
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<UploadInfo>> {
        self.inner.list_uploads(prefix).await
    }

    async fn flush(&self) -> StoreResult<()> {
        self.settle().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn setup() -> (Arc<MemoryStore>, DeferredDeletes) {
        let mem = Arc::new(MemoryStore::new());
        let stats = Arc::new(RequestStats::default());
        stats.set_prefix_fn(Arc::new(|k: &str| k.split('/').next().unwrap_or("").to_string()));
        let d = DeferredDeletes::new(mem.clone(), stats);
        (mem, d)
    }

    #[tokio::test]
    async fn queued_deletes_are_invisible_and_land_in_one_batch() {
        let (mem, d) = setup();
        for k in ["a/1", "a/2", "b/1"] {
            mem.put(k, Bytes::from_static(b"x"), &UserMeta::new()).await.unwrap();
        }
        d.delete("a/1").await.unwrap();
        d.delete("a/2").await.unwrap();
        assert!(d.head("a/1").await.unwrap_err().is_not_found());
        assert_eq!(d.list("a/", None, None, None).await.unwrap().objects.len(), 0);
        d.settle().await;
        assert_eq!(mem.keys(), vec!["b/1"]);
    }

    #[tokio::test]
    async fn a_write_after_a_delete_wins() {
        let (mem, d) = setup();
        mem.put("a/1", Bytes::from_static(b"old"), &UserMeta::new())
            .await
            .unwrap();
        d.delete("a/1").await.unwrap();
        d.put("a/1", Bytes::from_static(b"new"), &UserMeta::new())
            .await
            .unwrap();
        d.settle().await;
        assert_eq!(&mem.get("a/1", None).await.unwrap()[..], b"new");
    }
}
