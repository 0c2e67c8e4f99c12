//! The mount's journal of work S3 has not confirmed yet, so that a crash neither leaks nor
//! undoes it: multipart uploads in flight (a crash would leave them accruing storage cost) and
//! deletes acknowledged to a program but not yet sent (a crash would bring the files back).
//!
//! Invariants:
//! 1. One journal file per mount process, `<dir>/<uuid>.journal`, mode 0600 in a 0700
//!    directory ([`crate::private`]). The process holds an exclusive `flock` on it for its
//!    whole life: a journal whose lock can be taken belongs to a process that is gone. The
//!    PID is not used (PIDs are reused after a crash).
//! 2. One JSON object per line ([`Record`]), so no key (newlines included) can split or forge
//!    a record; a line that does not parse is skipped with a warning, never guessed at.
//! 3. A record is written (and flushed to the kernel) before the work it announces is
//!    acknowledged, and its end after S3 confirmed it. A process crash loses nothing; a machine
//!    crash may lose the last records (no fsync per unlink: that would cost a disk flush each).
//! 4. [`recover`] finishes what dead processes left: aborts their uploads (NoSuchUpload means
//!    already completed or aborted, and is said so) and sends their deletes, each only at the
//!    version the unlink saw (its ETag, checked by S3): an object written since, by anyone,
//!    stays. A record without an ETag (an older journal) falls back to LastModified, which
//!    must be before the delete was queued (a write in the same second stays).
//! 5. A journal with nothing outstanding is emptied (and removed at a clean exit), so a
//!    long-running mount's journal does not grow without bound.

use super::delete::DeleteConditions;
use super::{
    CopySpec, DeleteTarget, Headers, ListPage, ObjectMeta, ObjectStore, PrefixFn, StoreError, StoreResult, UploadInfo,
    UserMeta, WriteIf,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One line of a journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// A multipart upload of `key` is about to be created (at `at_ms`). If the process dies
    /// before [`Record::UploadStarted`] is written, S3 may have an upload nobody knows the id
    /// of: recovery looks for it by key and time.
    UploadIntent { key: String, at_ms: u64 },
    /// Creating it failed: nothing to look for.
    UploadIntentDropped { key: String },
    /// A multipart upload was created.
    UploadStarted { id: String, key: String },
    /// It was completed or aborted.
    UploadEnded { id: String },
    /// A delete was acknowledged and queued, at `at_ms` (Unix milliseconds), of the version
    /// `etag` (absent: whatever the key held; journals of earlier versions have none).
    DeleteQueued {
        key: String,
        at_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        etag: Option<String>,
    },
    /// S3 confirmed the delete, or a later write made it moot.
    DeleteEnded { key: String },
}

/// Emptied once nothing is outstanding and it has grown past this.
const COMPACT_AT: u64 = 1 << 20;

struct Inner {
    file: std::fs::File,
    written: u64,
    uploads: HashSet<String>,
    deletes: HashSet<String>,
    /// Keys with an upload being created (intent written, id not yet).
    intents: HashMap<String, usize>,
    broken: bool,
}

impl Inner {
    fn idle(&self) -> bool {
        self.uploads.is_empty() && self.deletes.is_empty() && self.intents.is_empty()
    }

    fn intent_done(&mut self, key: &str) {
        if let Some(n) = self.intents.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.intents.remove(key);
            }
        }
    }
}

/// The journal of this process (invariant 1).
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
}

/// Now, in Unix milliseconds (the journal's clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Takes `file`'s exclusive lock without waiting; false if another process holds it.
fn try_lock(file: &std::fs::File) -> bool {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl Journal {
    /// Creates this process's journal in `dir` (a private directory) and locks it. The file
    /// is locked under a temporary name first, so [`recover`] never sees it unlocked.
    pub fn create(dir: &Path) -> std::io::Result<Journal> {
        crate::private::ensure_dir(dir)?;
        let name = uuid::Uuid::new_v4().simple().to_string();
        let tmp = dir.join(format!("{name}.new"));
        let file = crate::private::file_options()
            .create_new(true)
            .append(true)
            .read(true)
            .open(&tmp)?;
        if !try_lock(&file) {
            return Err(std::io::Error::other(format!("cannot lock {}", tmp.display())));
        }
        let path = dir.join(format!("{name}.journal"));
        std::fs::rename(&tmp, &path)?;
        Ok(Journal {
            path,
            inner: Mutex::new(Inner {
                file,
                written: 0,
                uploads: HashSet::new(),
                deletes: HashSet::new(),
                intents: HashMap::new(),
                broken: false,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records`; false (and one warning) if the journal cannot be written.
    pub fn record(&self, records: &[Record]) -> bool {
        if records.is_empty() {
            return true;
        }
        let mut j = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for r in records {
            match r {
                Record::UploadIntent { key, .. } => {
                    *j.intents.entry(key.clone()).or_default() += 1;
                }
                Record::UploadIntentDropped { key } => j.intent_done(key),
                Record::UploadStarted { id, key } => {
                    j.intent_done(key);
                    j.uploads.insert(id.clone());
                }
                Record::UploadEnded { id } => {
                    j.uploads.remove(id);
                }
                Record::DeleteQueued { key, .. } => {
                    j.deletes.insert(key.clone());
                }
                Record::DeleteEnded { key } => {
                    j.deletes.remove(key);
                }
            }
        }
        let mut text = String::new();
        for r in records {
            // Serializing a struct of strings and integers cannot fail.
            text.push_str(&serde_json::to_string(r).unwrap_or_default());
            text.push('\n');
        }
        let idle = j.idle();
        let result = if idle && j.written + text.len() as u64 > COMPACT_AT {
            // Nothing outstanding: start over rather than grow (invariant 5).
            j.file.set_len(0).map(|_| 0)
        } else {
            j.file.write_all(text.as_bytes()).map(|_| text.len() as u64)
        };
        match result {
            Ok(0) => j.written = 0,
            Ok(n) => j.written += n,
            Err(e) => {
                if !j.broken {
                    tracing::error!(journal = %self.path.display(), error = %e, "cannot write the journal: a crash now could leak uploads or bring deleted files back");
                }
                j.broken = true;
                return false;
            }
        }
        true
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let j = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        // A clean exit has nothing pending worth remembering; otherwise the next mount
        // finishes what is recorded.
        if j.idle() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What [`recover`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub uploads_aborted: usize,
    pub deletes_sent: usize,
    /// Deletes not sent because the object was written after the delete was queued.
    pub deletes_superseded: usize,
}

/// The outstanding records of one journal's text.
#[derive(Default)]
struct Outstanding {
    /// Upload id → key.
    uploads: BTreeMap<String, String>,
    /// Key → when the delete was queued, and the version it removes.
    deletes: BTreeMap<String, (u64, Option<String>)>,
    /// Key → when an upload of it was about to be created, with no id recorded.
    intents: BTreeMap<String, u64>,
}

fn outstanding(text: &str, journal: &Path) -> Outstanding {
    let mut o = Outstanding::default();
    let (uploads, deletes, intents) = (&mut o.uploads, &mut o.deletes, &mut o.intents);
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(Record::UploadIntent { key, at_ms }) => {
                intents.insert(key, at_ms);
            }
            Ok(Record::UploadIntentDropped { key }) => {
                intents.remove(&key);
            }
            Ok(Record::UploadStarted { id, key }) => {
                intents.remove(&key);
                uploads.insert(id, key);
            }
            Ok(Record::UploadEnded { id }) => {
                uploads.remove(&id);
            }
            Ok(Record::DeleteQueued { key, at_ms, etag }) => {
                deletes.insert(key, (at_ms, etag));
            }
            Ok(Record::DeleteEnded { key }) => {
                deletes.remove(&key);
            }
            Err(e) => {
                tracing::warn!(journal = %journal.display(), line = n + 1, error = %e, "skipping a journal line that does not parse")
            }
        }
    }
    o
}

/// An upload created for an intent recorded at `at_ms` starts within this window of it
/// (the create, with its retries, follows the intent at once).
const INTENT_BEFORE_MS: u64 = 5_000;
const INTENT_AFTER_MS: u64 = 120_000;

/// The uploads of `key` S3 has that an intent at `at_ms` may have created.
async fn uploads_of_intent(store: &dyn ObjectStore, key: &str, at_ms: u64) -> StoreResult<Vec<String>> {
    let found = store.list_uploads(key).await?;
    Ok(found
        .into_iter()
        .filter(|u| u.key == key)
        .filter(|u| {
            u.initiated.is_none_or(|t| {
                let ms = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                ms + INTENT_BEFORE_MS >= at_ms && ms <= at_ms + INTENT_AFTER_MS
            })
        })
        .map(|u| u.upload_id)
        .collect())
}

/// Finishes the work recorded in the journals of processes that are gone (invariant 4) and
/// removes those journals once everything in them is done.
pub async fn recover(store: &dyn ObjectStore, dir: &Path, conds: DeleteConditions, prefix: &PrefixFn) -> Recovered {
    let mut done = Recovered::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return done;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "journal") {
            continue;
        }
        let Ok(mut file) = crate::private::file_options().read(true).write(true).open(&path) else {
            continue;
        };
        // Held until this function is done with it, so two mounts never recover one journal.
        if !try_lock(&file) {
            continue;
        }
        let mut text = String::new();
        if std::io::Read::read_to_string(&mut file, &mut text).is_err() {
            tracing::warn!(journal = %path.display(), "cannot read a journal; leaving it");
            continue;
        }
        let Outstanding {
            mut uploads,
            deletes,
            intents,
        } = outstanding(&text, &path);
        let mut all_done = true;
        // Uploads S3 created just before the process died, before their ids were recorded.
        for (key, at_ms) in intents {
            match uploads_of_intent(store, &key, at_ms).await {
                Ok(ids) => {
                    for id in ids {
                        uploads.insert(id, key.clone());
                    }
                }
                Err(err) => {
                    all_done = false;
                    tracing::warn!(key = %crate::layout::escape_controls(&key), error = %err, "could not look for a multipart upload a crashed mount was creating");
                }
            }
        }
        for (id, key) in uploads {
            match store.abort_multipart(&key, &id).await {
                Ok(()) => {
                    done.uploads_aborted += 1;
                    tracing::info!(key = %crate::layout::escape_controls(&key), upload_id = id, "aborted a multipart upload left by a crashed mount");
                }
                Err(StoreError::Client { code, .. }) if code == "NoSuchUpload" => {
                    tracing::info!(key = %crate::layout::escape_controls(&key), upload_id = id, "a multipart upload left by a crashed mount was already completed or aborted");
                }
                Err(err) => {
                    all_done = false;
                    tracing::warn!(key = %crate::layout::escape_controls(&key), upload_id = id, error = %err, "could not abort a leftover multipart upload");
                }
            }
        }
        if !deletes.is_empty() {
            match finish_deletes(store, deletes, conds, prefix).await {
                Ok((sent, superseded)) => {
                    done.deletes_sent += sent;
                    done.deletes_superseded += superseded;
                    if sent > 0 {
                        tracing::info!(sent, journal = %path.display(), "sent deletes acknowledged by a mount that ended before S3 had them");
                    }
                }
                Err(err) => {
                    all_done = false;
                    tracing::error!(journal = %path.display(), error = %err, "could not send the deletes left by an earlier mount; they are kept for the next one");
                }
            }
        }
        if all_done {
            let _ = std::fs::remove_file(&path);
        }
    }
    done
}

/// Deletes each key at the version its unlink saw (invariant 4): returns how many were
/// deleted and how many kept because someone wrote them since.
async fn finish_deletes(
    store: &dyn ObjectStore,
    deletes: BTreeMap<String, (u64, Option<String>)>,
    conds: DeleteConditions,
    prefix: &PrefixFn,
) -> StoreResult<(usize, usize)> {
    let (named, unnamed): (Vec<_>, Vec<_>) = deletes.into_iter().partition(|(_, (_, etag))| etag.is_some());
    // No version recorded: the object's own time decides, strictly before the delete.
    let checks = futures::stream::iter(unnamed)
        .map(|(key, (at_ms, _))| async move {
            match store.head(&key).await {
                Ok(meta) => {
                    let lm = meta
                        .last_modified
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(u64::MAX);
                    // LastModified has one-second resolution: of the delete's own second,
                    // it may be newer; it stays.
                    let older = lm / 1000 < at_ms / 1000;
                    Ok(Some((DeleteTarget::version(key, meta.etag), older)))
                }
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut targets: Vec<DeleteTarget> = named
        .into_iter()
        .map(|(key, (_, etag))| DeleteTarget::version(key, etag))
        .collect();
    let mut superseded = 0;
    for c in checks {
        match c? {
            Some((t, true)) => targets.push(t),
            Some((t, false)) => {
                superseded += 1;
                tracing::warn!(key = %crate::layout::escape_controls(&t.key), "not deleting: the object was written again after the delete was queued");
            }
            None => {}
        }
    }
    let removed = super::delete::delete_versions(store, targets, conds, prefix, 4)
        .await?
        .into_result()?;
    Ok((removed.deleted, superseded + removed.kept.len()))
}

/// Aborts incomplete uploads under `prefix` initiated more than `older_than` ago, for which
/// `wanted(key)` holds. Returns the uploads aborted.
pub async fn abort_stale(
    store: &dyn ObjectStore,
    prefix: &str,
    older_than: Duration,
    wanted: impl Fn(&str) -> bool,
) -> StoreResult<Vec<UploadInfo>> {
    let now = SystemTime::now();
    let mut done = Vec::new();
    for u in store.list_uploads(prefix).await? {
        let age = u
            .initiated
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or(Duration::MAX);
        if age < older_than || !wanted(&u.key) {
            continue;
        }
        store.abort_multipart(&u.key, &u.upload_id).await?;
        done.push(u);
    }
    Ok(done)
}

/// Records the multipart uploads passing through it in a [`Journal`].
pub struct JournalingStore {
    inner: Arc<dyn ObjectStore>,
    journal: Arc<Journal>,
}

impl JournalingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, journal: Arc<Journal>) -> Self {
        JournalingStore { inner, journal }
    }
}

#[async_trait]
impl ObjectStore for JournalingStore {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.inner.head(key).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>, version: Option<&str>) -> StoreResult<Bytes> {
        self.inner.get(key, range, version).await
    }

    async fn put_with(
        &self,
        key: &str,
        body: Bytes,
        meta: &UserMeta,
        headers: Option<&Headers>,
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        self.inner.put_with(key, body, meta, headers, cond).await
    }

    async fn delete(&self, key: &str, version: Option<&str>) -> StoreResult<()> {
        self.inner.delete(key, version).await
    }

    async fn delete_many(&self, targets: &[DeleteTarget]) -> StoreResult<Vec<crate::store::DeleteFailure>> {
        self.inner.delete_many(targets).await
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        self.inner.list(prefix, delimiter, token, max_keys).await
    }

    async fn copy(&self, c: &CopySpec<'_>) -> StoreResult<Option<String>> {
        self.inner.copy(c).await
    }

    async fn create_multipart_with(
        &self,
        key: &str,
        meta: &UserMeta,
        headers: Option<&Headers>,
    ) -> StoreResult<String> {
        self.journal.record(&[Record::UploadIntent {
            key: key.to_string(),
            at_ms: now_ms(),
        }]);
        let id = match self.inner.create_multipart_with(key, meta, headers).await {
            Ok(id) => id,
            Err(e) => {
                self.journal
                    .record(&[Record::UploadIntentDropped { key: key.to_string() }]);
                return Err(e);
            }
        };
        self.journal.record(&[Record::UploadStarted {
            id: id.clone(),
            key: key.to_string(),
        }]);
        Ok(id)
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
        src_etag: Option<&str>,
    ) -> StoreResult<String> {
        self.inner
            .upload_part_copy(key, upload_id, part, src, range, src_etag)
            .await
    }

    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        let etag = self.inner.complete_multipart_if(key, upload_id, parts, cond).await?;
        self.journal.record(&[Record::UploadEnded {
            id: upload_id.to_string(),
        }]);
        Ok(etag)
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        match self.inner.abort_multipart(key, upload_id).await {
            Ok(()) => {}
            // Gone already (completed by an earlier attempt, or aborted): nothing to recover.
            Err(StoreError::Client { code, .. }) if code == "NoSuchUpload" => {}
            Err(e) => return Err(e),
        }
        self.journal.record(&[Record::UploadEnded {
            id: upload_id.to_string(),
        }]);
        Ok(())
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<UploadInfo>> {
        self.inner.list_uploads(prefix).await
    }

    async fn get_tagging(&self, key: &str) -> StoreResult<Option<String>> {
        self.inner.get_tagging(key).await
    }

    async fn flush(&self) -> StoreResult<()> {
        self.inner.flush().await
    }

    fn pin(&self, key: &str) {
        self.inner.pin(key)
    }

    fn unpin(&self, key: &str) {
        self.inner.unpin(key)
    }
}

#[cfg(test)]
mod tests;
