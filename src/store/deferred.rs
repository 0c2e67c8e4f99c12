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
//! 2. A write to such a key (PUT, copy, multipart) holds its pending delete while it is in
//!    flight (after waiting for a batch already deleting it), so the delete can never land
//!    after the write; the delete is dropped only once the write succeeded, and queued again
//!    when it failed: a failed write never undoes an acknowledged unlink.
//! 3. A delete is journalled ([`Journal`]) when it is queued, with the version (ETag) it
//!    removes, and marked done when S3 confirms it or a write of ours replaced it, so a crash
//!    does not lose it: the next mount sends it, at that version only.
//! 4. A delete that fails is kept and tried again (backoff from 1 s to a minute) until it
//!    succeeds or the mount ends; it is never dropped. Every attempt names the version the
//!    unlink saw: a key someone else wrote meanwhile answers PreconditionFailed, and their
//!    object stays (logged). A server that ignores the per-key ETag of DeleteObjects gets the
//!    retries one DeleteObject `If-Match` each ([`super::delete`]).
//! 5. [`DeferredDeletes::settle`] (rmdir, fsync of a directory, unmount) sends everything,
//!    failed deletes included, waits, and fails if any delete is still unconfirmed: that is
//!    how a failure reaches a program (EIO) instead of only the log.

use super::delete::DeleteConditions;
use super::journal::{Journal, Record};
use super::{
    CopySpec, DeleteFailure, DeleteTarget, Headers, ListPage, ObjectMeta, ObjectStore, PrefixFn, StoreError,
    StoreResult, UploadInfo, UserMeta, WriteIf,
};
use crate::layout::interleave_by;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
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
    /// Keys whose delete failed once: their next attempts go where the version is checked.
    retried: HashSet<String>,
    /// The version (ETag) each pending delete removes; None: whatever is there.
    versions: HashMap<String, Option<String>>,
    /// Deletes held by writes of the key in flight (invariant 2): how many writes, and
    /// whether an unlink came after they started (then the delete goes out after them).
    held: HashMap<String, Held>,
    /// Keys open for reading here (how many readers), and those of them unlinked meanwhile
    /// ("parked": acknowledged, journalled and hidden, queued at the last reader's unpin).
    pins: HashMap<String, u32>,
    parked: HashSet<String>,
    last_error: Option<String>,
    retry_delay: Option<Duration>,
    retry_scheduled: bool,
    flusher_running: bool,
    /// Label of the prefix of the last key sent, so the next batch starts elsewhere.
    last_prefix: Option<String>,
    /// Someone waits in `settle`: send everything, tails included.
    urgent: bool,
}

#[derive(Default)]
struct Held {
    writes: u32,
    unlinked_again: bool,
}

impl Queue {
    fn target(&self, key: &str) -> DeleteTarget {
        DeleteTarget::version(key, self.versions.get(key).cloned().flatten())
    }

    /// Nothing of `key` is pending any more: forget its version.
    fn forget(&mut self, key: &str) {
        let pending = self.queued_set.contains(key)
            || self.in_flight.contains(key)
            || self.failed.contains(key)
            || self.held.contains_key(key)
            || self.parked.contains(key);
        if !pending {
            self.versions.remove(key);
            self.retried.remove(key);
        }
    }

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
    conds: DeleteConditions,
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
                let failed = s.send(&batch).await;
                s.batch_done(batch, failed);
            }
        });
    }

    /// Sends one batch, each key at its version. Where DeleteObjects cannot carry the
    /// condition, keys tried before go one by one (invariant 4); first attempts stay in the
    /// batch (the window the README states).
    async fn send(&self, batch: &[DeleteTarget]) -> Vec<DeleteFailure> {
        let (fresh, again): (Vec<DeleteTarget>, Vec<DeleteTarget>) = {
            let q = self.lock();
            batch
                .iter()
                .cloned()
                .partition(|t| self.conds.batch || t.etag.is_none() || !q.retried.contains(&t.key))
        };
        let all_failed = |targets: &[DeleteTarget], e: &StoreError| -> Vec<DeleteFailure> {
            targets
                .iter()
                .map(|t| DeleteFailure::new(t.key.clone(), "RequestFailed", e.to_string()))
                .collect()
        };
        let mut failed = Vec::new();
        if !fresh.is_empty() {
            match self.inner.delete_many(&fresh).await {
                Ok(f) => failed.extend(f),
                Err(e) => failed.extend(all_failed(&fresh, &e)),
            }
        }
        if !again.is_empty() {
            match super::delete::delete_versions(self.inner.as_ref(), again.clone(), self.conds, &self.prefix, 1).await
            {
                Ok(r) => {
                    failed.extend(r.failed);
                    failed.extend(
                        r.kept
                            .into_iter()
                            .map(|k| DeleteFailure::new(k, "PreconditionFailed", "another version is there")),
                    );
                }
                Err(e) => failed.extend(all_failed(&again, &e)),
            }
        }
        failed
    }

    /// Takes the next batch off the queue (None, and the flusher ends, when it is empty).
    fn next_batch(&self) -> Option<Vec<DeleteTarget>> {
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
        Some(ordered.into_iter().map(|k| q.target(&k)).collect())
    }

    fn batch_done(self: &Arc<Self>, batch: Vec<DeleteTarget>, failed: Vec<DeleteFailure>) {
        // Another version at the key: someone else wrote it after this mount's unlink saw
        // it, and their object stays. Gone already: deleted.
        let (kept, failed): (Vec<DeleteFailure>, Vec<DeleteFailure>) = failed
            .into_iter()
            .filter(|f| !f.is_gone())
            .partition(|f| f.is_precondition());
        for f in &kept {
            tracing::warn!(
                key = %crate::layout::escape_controls(&f.key),
                "an unlinked file was written again by another client before the delete reached S3; their object stays"
            );
        }
        let failed_keys: HashSet<&str> = failed.iter().map(|f| f.key.as_str()).collect();
        let schedule = {
            let mut q = self.lock();
            for t in &batch {
                q.in_flight.remove(&t.key);
            }
            // Confirmed, unless an unlink queued the key again meanwhile (that one stays
            // in the journal).
            let confirmed: Vec<Record> = batch
                .iter()
                .filter(|t| !failed_keys.contains(t.key.as_str()) && !q.queued_set.contains(&t.key))
                .map(|t| Record::DeleteEnded { key: t.key.clone() })
                .collect();
            self.journal(&confirmed);
            for t in &batch {
                if !failed_keys.contains(t.key.as_str()) {
                    q.forget(&t.key);
                }
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
                    q.retried.insert(f.key.clone());
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

/// A write conditional on a version S3 no longer has (412, or 404 for a key now empty).
fn refused<T>(r: &StoreResult<T>) -> bool {
    matches!(r, Err(StoreError::PreconditionFailed { .. })) || r.as_ref().is_err_and(|e| e.is_not_found())
}

impl DeferredDeletes {
    /// Queues deletes in front of `inner`, journalling them in `journal` when given.
    /// `prefix` says which partition a key is on: batches interleave them. `conds`: which
    /// delete conditions the server honours (probed at mount start).
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        journal: Option<Arc<Journal>>,
        prefix: PrefixFn,
        conds: DeleteConditions,
    ) -> Self {
        DeferredDeletes {
            s: Arc::new(Shared {
                inner,
                prefix,
                journal,
                conds,
                queue: Mutex::default(),
                done: Notify::new(),
            }),
        }
    }

    fn hidden(&self, key: &str) -> bool {
        let q = self.s.lock();
        q.queued_set.contains(key)
            || q.in_flight.contains(key)
            || q.failed.contains(key)
            || q.held.contains_key(key)
            || q.parked.contains(key)
    }

    /// Before writing `key` (invariant 2): its queued (or failed) delete is held, not sent,
    /// until [`DeferredDeletes::release`] says how the write ended; a batch already deleting
    /// it is waited for. True if a delete is held.
    async fn hold(&self, key: &str) -> bool {
        loop {
            let notified = self.s.done.notified();
            {
                let mut q = self.s.lock();
                if !q.in_flight.contains(key) {
                    // A delete parked for a reader is pending like a queued one.
                    let mut pending = q.failed.remove(key) | q.parked.remove(key);
                    if q.queued_set.remove(key) {
                        q.queued.retain(|k| k != key);
                        pending = true;
                    }
                    if let Some(h) = q.held.get_mut(key) {
                        h.writes += 1;
                        return true;
                    }
                    if pending {
                        q.held.insert(
                            key.to_string(),
                            Held {
                                writes: 1,
                                unlinked_again: false,
                            },
                        );
                    }
                    return pending;
                }
            }
            notified.await;
        }
    }

    /// A write that held `key`'s delete has ended: written, the delete is moot (journalled as
    /// ended) unless an unlink came after the write began; not written, the delete goes out.
    fn release(&self, key: &str, written: bool) {
        let send = {
            let mut q = self.s.lock();
            let Some(h) = q.held.get_mut(key) else { return };
            h.writes -= 1;
            if h.writes > 0 && !written {
                return;
            }
            let again = h.unlinked_again;
            q.held.remove(key);
            if written && !again {
                q.forget(key);
                drop(q);
                self.s.journal(&[Record::DeleteEnded { key: key.to_string() }]);
                false
            } else {
                if written {
                    // The unlink after the write removes whatever the write made.
                    q.versions.insert(key.to_string(), None);
                }
                q.enqueue(key.to_string());
                true
            }
        };
        if send {
            self.s.spawn_flusher();
        }
    }

    /// Runs a write of `key` with its pending delete held (invariant 2).
    async fn write<T>(&self, key: &str, w: impl std::future::Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let held = self.hold(key).await;
        let r = w.await;
        if held {
            self.release(key, r.is_ok());
        }
        r
    }

    /// Before a conditional write that makes the object at `key`: it must be checked against
    /// S3 as this mount has told its programs it is, so a pending delete of ours lands first.
    async fn before_conditional(&self, key: &str) -> StoreResult<()> {
        // A delete parked for a reader goes out now: the name is being made anew.
        let unparked = {
            let mut q = self.s.lock();
            let p = q.parked.remove(key);
            if p {
                q.enqueue(key.to_string());
            }
            p
        };
        if unparked {
            self.s.spawn_flusher();
        }
        if self.hidden(key) {
            self.settle_key(key).await?;
        }
        Ok(())
    }

    /// The version a held delete of `key` removes, when it names one.
    fn held_version(&self, key: &str) -> Option<String> {
        let q = self.s.lock();
        q.held
            .contains_key(key)
            .then(|| q.versions.get(key).cloned().flatten())?
    }

    /// A create (`If-None-Match: *`) of a key whose delete by this mount is pending and
    /// names its version: S3 still holds that version, so the create replaces exactly it
    /// (`If-Match`) with the delete held, and the delete is moot once the create landed. No
    /// wait for the delete, nor a failure while S3 refuses deletes. When that version is
    /// gone after all (the delete landed and its answer was lost), the create goes the slow
    /// way: the delete lands, then `If-None-Match: *`.
    /// `write` sends the request under the condition it is given.
    async fn create_over_pending_delete<T, F, Fut>(&self, key: &str, write: F) -> StoreResult<T>
    where
        F: Fn(WriteIf) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        if self.hold(key).await {
            if let Some(version) = self.held_version(key) {
                let r = write(WriteIf::Matches(version)).await;
                self.release(key, r.is_ok());
                if !refused(&r) {
                    return r;
                }
            } else {
                self.release(key, false);
            }
        }
        self.before_conditional(key).await?;
        write(WriteIf::Absent).await
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
            .chain(q.parked.iter())
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Whether a key below `prefix` exists besides `hidden` (and those hidden meanwhile): LIST
    /// pages until one does. Sent only for a subdirectory with deletes pending under it.
    async fn holds_more(&self, prefix: &str, hidden: &HashSet<String>) -> StoreResult<bool> {
        use futures::TryStreamExt;
        let mut pages = self.s.inner.list_pages(prefix, None);
        while let Some(page) = pages.try_next().await? {
            let now = self.hidden_below(prefix);
            if page
                .objects
                .iter()
                .any(|o| !hidden.contains(&o.key) && !now.contains(&o.key))
            {
                return Ok(true);
            }
        }
        Ok(false)
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

mod store;

#[cfg(test)]
mod tests;
