//! Deferred, batched deletes: single-key deletes (what `rm -r` through the mount sends, one
//! unlink at a time) are queued for a few milliseconds and sent as DeleteObjects batches
//! with keys interleaved across prefixes, so consecutive deletes hit different partitions
//! and a tree of N files costs about N/1000 requests instead of N.
//!
//! Invariants, so the delay is invisible to readers and writers of this mount, and an
//! acknowledged unlink is never undone:
//! 1. A key queued, being deleted, or whose delete failed does not exist: HEAD/GET answer
//!    NotFound, listings omit it, and a subdirectory of a delimited listing that holds
//!    nothing else is omitted too (one LIST below it tells, sent only in that case).
//! 2. A write to such a key (PUT, copy, multipart) first cancels its queued delete, or waits
//!    for the batch that is deleting it, so the delete can never land after the write.
//! 3. A delete is journalled ([`Journal`]) when it is queued and marked done when S3 confirms
//!    it, so a crash does not lose it: the next mount sends it.
//! 4. A delete that fails is kept and tried again (backoff from 1 s to a minute) until it
//!    succeeds or the mount ends; it is never dropped.
//! 5. [`DeferredDeletes::settle`] (rmdir, fsync of a directory, unmount) sends everything,
//!    failed deletes included, waits, and fails if any delete is still unconfirmed: that is
//!    how a failure reaches a program (EIO) instead of only the log.

use super::journal::{Journal, Record};
use super::{ListPage, ObjectMeta, ObjectStore, PrefixFn, StoreError, StoreResult, UploadInfo, UserMeta, WriteIf};
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
const BATCH: usize = crate::limits::MAX_DELETE_BATCH;
/// Failed deletes are tried again after this, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Queue {
    queued: Vec<String>,
    queued_set: HashSet<String>,
    in_flight: HashSet<String>,
    /// Deletes that failed, waiting for their next attempt (invariant 4).
    failed: HashSet<String>,
    last_error: Option<String>,
    retry_delay: Option<Duration>,
    retry_scheduled: bool,
    flusher_running: bool,
    /// Label of the prefix of the last key sent, so the next batch starts elsewhere.
    last_prefix: Option<String>,
    /// Someone waits in `settle`: send everything, tails included.
    urgent: bool,
}

impl Queue {
    fn enqueue(&mut self, key: String) {
        if self.queued_set.insert(key.clone()) {
            self.queued.push(key);
        }
    }

    /// Failed deletes go back into the queue for another attempt.
    fn requeue_failed(&mut self) {
        for k in std::mem::take(&mut self.failed) {
            self.enqueue(k);
        }
    }
}

struct Shared {
    inner: Arc<dyn ObjectStore>,
    journal: Option<Arc<Journal>>,
    prefix: PrefixFn,
    queue: Mutex<Queue>,
    done: Notify,
}

pub struct DeferredDeletes {
    s: Arc<Shared>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn journal(&self, records: &[Record]) {
        if let Some(j) = &self.journal {
            j.record(records);
        }
    }

    fn spawn_flusher(self: &Arc<Self>) {
        {
            let mut q = self.lock();
            if q.flusher_running || q.queued.is_empty() {
                return;
            }
            q.flusher_running = true;
        }
        let s = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LINGER).await;
                let Some(batch) = s.next_batch() else { return };
                let failed: Vec<crate::store::DeleteFailure> = match s.inner.delete_many(&batch).await {
                    Ok(failed) => failed,
                    Err(e) => batch
                        .iter()
                        .map(|k| crate::store::DeleteFailure::new(k.clone(), "RequestFailed", e.to_string()))
                        .collect(),
                };
                s.batch_done(batch, failed);
            }
        });
    }

    /// Takes the next batch off the queue (None, and the flusher ends, when it is empty).
    fn next_batch(&self) -> Option<Vec<String>> {
        let label = &self.prefix;
        let mut q = self.lock();
        if q.queued.is_empty() {
            q.flusher_running = false;
            drop(q);
            self.done.notify_waiters();
            return None;
        }
        let n = q.queued.len().min(BATCH);
        let keys: Vec<String> = q.queued.drain(..n).collect();
        let mut ordered = interleave_by(keys, |k| label(k));
        // Do not start where the last batch ended.
        if let (Some(last), Some(first)) = (&q.last_prefix, ordered.first())
            && label(first) == *last
            && let Some(pos) = ordered.iter().position(|k| label(k) != *last)
        {
            ordered[..=pos].rotate_right(1);
        }
        // A tail of one prefix would send consecutive deletes to one partition: keep it for
        // the next batch, where other prefixes can separate it (unless someone is waiting for
        // everything, or there is no other prefix).
        let labels: Vec<String> = ordered.iter().map(|k| label(k)).collect();
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
        q.last_prefix = ordered.last().map(|k| label(k));
        Some(ordered)
    }

    fn batch_done(self: &Arc<Self>, batch: Vec<String>, failed: Vec<crate::store::DeleteFailure>) {
        let failed_keys: HashSet<&str> = failed.iter().map(|f| f.key.as_str()).collect();
        let confirmed: Vec<Record> = batch
            .iter()
            .filter(|k| !failed_keys.contains(k.as_str()))
            .map(|k| Record::DeleteEnded { key: k.clone() })
            .collect();
        self.journal(&confirmed);
        let schedule = {
            let mut q = self.lock();
            for k in &batch {
                q.in_flight.remove(k);
            }
            if let Some(f) = failed.first() {
                let err = format!("{} {}", f.code, f.message);
                tracing::error!(
                    failed = failed.len(),
                    first = %crate::layout::escape_controls(&f.key),
                    error = %err,
                    "deletes not confirmed by S3; they stay deleted in this mount and are tried again"
                );
                q.last_error = Some(err);
                for f in failed {
                    q.failed.insert(f.key);
                }
                let delay = q.retry_delay.map_or(RETRY_FIRST, |d| (d * 2).min(RETRY_MAX));
                q.retry_delay = Some(delay);
                (!q.retry_scheduled).then(|| {
                    q.retry_scheduled = true;
                    delay
                })
            } else {
                if q.failed.is_empty() {
                    q.retry_delay = None;
                }
                None
            }
        };
        self.done.notify_waiters();
        if let Some(delay) = schedule {
            let s = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                {
                    let mut q = s.lock();
                    q.retry_scheduled = false;
                    q.requeue_failed();
                }
                s.spawn_flusher();
            });
        }
    }
}

impl DeferredDeletes {
    /// Queues deletes in front of `inner`, journalling them in `journal` when given.
    /// `prefix` says which partition a key is on: batches interleave them.
    pub fn new(inner: Arc<dyn ObjectStore>, journal: Option<Arc<Journal>>, prefix: PrefixFn) -> Self {
        DeferredDeletes {
            s: Arc::new(Shared {
                inner,
                prefix,
                journal,
                queue: Mutex::default(),
                done: Notify::new(),
            }),
        }
    }

    fn hidden(&self, key: &str) -> bool {
        let q = self.s.lock();
        q.queued_set.contains(key) || q.in_flight.contains(key) || q.failed.contains(key)
    }

    /// Before writing `key`: cancel its queued (or failed) delete, or wait for the batch
    /// deleting it.
    async fn claim(&self, key: &str) {
        loop {
            let notified = self.s.done.notified();
            let cancelled = {
                let mut q = self.s.lock();
                let mut cancelled = q.failed.remove(key);
                if q.queued_set.remove(key) {
                    q.queued.retain(|k| k != key);
                    cancelled = true;
                }
                if !q.in_flight.contains(key) {
                    Some(cancelled)
                } else {
                    None
                }
            };
            match cancelled {
                Some(true) => {
                    self.s.journal(&[Record::DeleteEnded { key: key.to_string() }]);
                    return;
                }
                Some(false) => return,
                None => notified.await,
            }
        }
    }

    /// Before a write that makes the object at `key` (invariant 2). A plain write cancels a
    /// queued delete of it. A conditional one must be checked against S3 as this mount has
    /// told its programs it is, so a pending delete of ours lands first.
    async fn before_write(&self, key: &str, cond: Option<&WriteIf>) -> StoreResult<()> {
        match cond {
            None => {
                self.claim(key).await;
                Ok(())
            }
            Some(_) if self.hidden(key) => self.settle_key(key).await,
            Some(_) => Ok(()),
        }
    }

    /// A conditional write to a key whose delete is pending: the delete must land first (an
    /// `If-None-Match: *` create after an unlink must see the key gone, and must not be
    /// undone by that delete afterwards). Settles everything; cheap, since it is rare.
    async fn settle_key(&self, key: &str) -> StoreResult<()> {
        self.settle().await?;
        if self.hidden(key) {
            return Err(StoreError::DeletesUnconfirmed {
                key: key.to_string(),
                count: 1,
                message: "its delete is not confirmed yet".into(),
            });
        }
        Ok(())
    }

    /// The keys below `prefix` that do not exist for this mount's readers: queued, being
    /// deleted, or whose delete failed.
    fn hidden_below(&self, prefix: &str) -> HashSet<String> {
        let q = self.s.lock();
        q.queued_set
            .iter()
            .chain(q.in_flight.iter())
            .chain(q.failed.iter())
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Whether a key below `prefix` exists besides `hidden` (and those hidden meanwhile): LIST
    /// pages until one does. Sent only for a subdirectory with deletes pending under it.
    async fn holds_more(&self, prefix: &str, hidden: &HashSet<String>) -> StoreResult<bool> {
        let mut token: Option<String> = None;
        loop {
            let page = self.s.inner.list(prefix, None, token.as_deref(), None).await?;
            let now = self.hidden_below(prefix);
            if page
                .objects
                .iter()
                .any(|o| !hidden.contains(&o.key) && !now.contains(&o.key))
            {
                return Ok(true);
            }
            match page.next_token {
                Some(t) => token = Some(t),
                None => return Ok(false),
            }
        }
    }

    /// Sends every queued delete, failed ones included, and waits for all batches to finish
    /// (invariant 5). Fails if any delete is still unconfirmed; it stays queued for retries.
    pub async fn settle(&self) -> StoreResult<()> {
        self.s.lock().requeue_failed();
        loop {
            let notified = self.s.done.notified();
            {
                let mut q = self.s.lock();
                if q.queued.is_empty() && q.in_flight.is_empty() && !q.flusher_running {
                    q.urgent = false;
                    if let Some(first) = q.failed.iter().next() {
                        return Err(StoreError::DeletesUnconfirmed {
                            key: first.clone(),
                            count: q.failed.len(),
                            message: q.last_error.clone().unwrap_or_default(),
                        });
                    }
                    return Ok(());
                }
                q.urgent = true;
            }
            self.s.spawn_flusher();
            notified.await;
        }
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
        self.s.inner.head(key).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes> {
        if self.hidden(key) {
            return Err(gone("get", key));
        }
        self.s.inner.get(key, range).await
    }

    async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        meta: &UserMeta,
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        self.before_write(key, cond).await?;
        self.s.inner.put_if(key, body, meta, cond).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        // Journalled before it is acknowledged (invariant 3).
        self.s.journal(&[Record::DeleteQueued {
            key: key.to_string(),
            at_ms: super::journal::now_ms(),
        }]);
        {
            let mut q = self.s.lock();
            q.failed.remove(key);
            q.enqueue(key.to_string());
        }
        self.s.spawn_flusher();
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> StoreResult<Vec<crate::store::DeleteFailure>> {
        for k in keys {
            self.claim(k).await;
        }
        self.s.inner.delete_many(keys).await
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
        let before = self.hidden_below(prefix);
        let mut page = self.s.inner.list(prefix, delimiter, token, max_keys).await?;
        let mut hidden = self.hidden_below(prefix);
        hidden.extend(before);
        page.objects.retain(|o| !hidden.contains(&o.key));
        // A subdirectory S3 shows because of keys whose delete is pending (`rm -r d`, then
        // `ls` of its parent) may hold nothing else: then it is not there either.
        if let Some(delimiter) = delimiter.filter(|d| !d.is_empty())
            && !hidden.is_empty()
        {
            // The subdirectory each hidden key lies in (prefix, next segment, delimiter).
            let under: HashSet<&str> = hidden
                .iter()
                .filter_map(|k| {
                    let end = k[prefix.len()..].find(delimiter)? + prefix.len() + delimiter.len();
                    Some(&k[..end])
                })
                .collect();
            // The subdirectories to check are asked about at once, not one after another.
            let checks = page.common_prefixes.iter().map(|cp| async {
                Ok::<_, StoreError>(!under.contains(cp.as_str()) || self.holds_more(cp, &hidden).await?)
            });
            let keep = futures::future::try_join_all(checks).await?;
            let mut keep = keep.into_iter();
            page.common_prefixes.retain(|_| keep.next().unwrap_or(true));
        }
        Ok(page)
    }

    async fn copy(&self, src: &str, dst: &str, meta: Option<&UserMeta>) -> StoreResult<()> {
        if self.hidden(src) {
            return Err(gone("copy", src));
        }
        self.claim(dst).await;
        self.s.inner.copy(src, dst, meta).await
    }

    async fn create_multipart(&self, key: &str, meta: &UserMeta) -> StoreResult<String> {
        self.claim(key).await;
        self.s.inner.create_multipart(key, meta).await
    }

    async fn upload_part(&self, key: &str, upload_id: &str, part: i32, body: Bytes) -> StoreResult<String> {
        self.s.inner.upload_part(key, upload_id, part, body).await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part: i32,
        src: &str,
        range: Range<u64>,
        src_etag: Option<&str>,
    ) -> StoreResult<String> {
        self.s
            .inner
            .upload_part_copy(key, upload_id, part, src, range, src_etag)
            .await
    }

    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
        cond: Option<&WriteIf>,
    ) -> StoreResult<()> {
        self.before_write(key, cond).await?;
        self.s.inner.complete_multipart_if(key, upload_id, parts, cond).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.s.inner.abort_multipart(key, upload_id).await
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<UploadInfo>> {
        self.s.inner.list_uploads(prefix).await
    }

    async fn flush(&self) -> StoreResult<()> {
        self.settle().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn setup() -> (Arc<MemoryStore>, DeferredDeletes) {
        let mem = Arc::new(MemoryStore::new());
        let first_segment = crate::store::first_segment();
        let d = DeferredDeletes::new(mem.clone(), None, first_segment);
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
        d.settle().await.unwrap();
        assert_eq!(mem.keys(), vec!["b/1"]);
    }

    #[tokio::test]
    async fn a_subdirectory_of_pending_deletes_only_is_not_listed() {
        let (mem, d) = setup();
        for k in ["p/gone/1", "p/gone/2", "p/kept/1", "p/kept/2", "p/f"] {
            mem.put(k, Bytes::from_static(b"x"), &UserMeta::new()).await.unwrap();
        }
        for k in ["p/gone/1", "p/gone/2", "p/kept/1"] {
            d.delete(k).await.unwrap();
        }
        let page = d.list("p/", Some("/"), None, None).await.unwrap();
        assert_eq!(page.common_prefixes, ["p/kept/"], "p/gone/ holds only pending deletes");
        assert_eq!(page.objects.len(), 1);
        d.settle().await.unwrap();
        let page = d.list("p/", Some("/"), None, None).await.unwrap();
        assert_eq!(page.common_prefixes, ["p/kept/"]);
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
        d.settle().await.unwrap();
        assert_eq!(&mem.get("a/1", None).await.unwrap()[..], b"new");
    }
}
