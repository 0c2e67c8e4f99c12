//! A journal of the multipart uploads this process starts, so that uploads left behind by a
//! crash are found and aborted by the next mount instead of accruing storage cost.
//!
//! [`JournalingStore`] appends `start <id> <key>` when an upload is created and `end <id>`
//! when it is completed or aborted, one file per process (`<dir>/<pid>.journal`).
//! [`recover`] reads the journals of processes that are gone and aborts what they left.

use super::{ListPage, ObjectMeta, ObjectStore, StoreResult, UploadInfo, UserMeta};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub struct JournalingStore {
    inner: Arc<dyn ObjectStore>,
    file: Mutex<Option<std::fs::File>>,
    path: PathBuf,
}

impl JournalingStore {
    /// Journals into `dir/<pid>.journal` (created on first use).
    pub fn new(inner: Arc<dyn ObjectStore>, dir: &Path) -> Self {
        JournalingStore {
            inner,
            file: Mutex::new(None),
            path: dir.join(format!("{}.journal", std::process::id())),
        }
    }

    fn record(&self, line: &str) {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            if let Some(dir) = self.path.parent() {
                let _ = crate::private::ensure_dir(dir);
            }
            *f = crate::private::file_options()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
        }
        let ok = f
            .as_mut()
            .is_some_and(|f| writeln!(f, "{line}").and_then(|_| f.flush()).is_ok());
        if !ok {
            tracing::warn!(journal = %self.path.display(), "cannot write the upload journal");
        }
    }
}

impl Drop for JournalingStore {
    fn drop(&mut self) {
        // A clean exit has nothing pending worth remembering.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Aborts the uploads recorded as started and never ended by processes that are no longer
/// running, then removes their journals. Returns how many uploads were aborted.
pub async fn recover(store: &dyn ObjectStore, dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut aborted = 0;
    for e in entries.flatten() {
        let path = e.path();
        let Some(pid) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        if pid == std::process::id() as i32 || unsafe { libc::kill(pid, 0) } == 0 {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut open: BTreeMap<String, String> = BTreeMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("start"), Some(id), Some(key)) => {
                    open.insert(id.to_string(), key.to_string());
                }
                (Some("end"), Some(id), _) => {
                    open.remove(id);
                }
                _ => {}
            }
        }
        let mut all_done = true;
        for (id, key) in open {
            match store.abort_multipart(&key, &id).await {
                Ok(()) => {
                    aborted += 1;
                    tracing::info!(
                        key,
                        upload_id = id,
                        pid,
                        "aborted a multipart upload left by a crashed mount"
                    );
                }
                Err(err) => {
                    all_done = false;
                    tracing::warn!(key, upload_id = id, error = %err, "could not abort a leftover multipart upload");
                }
            }
        }
        if all_done {
            let _ = std::fs::remove_file(&path);
        }
    }
    aborted
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

#[async_trait]
impl ObjectStore for JournalingStore {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.inner.head(key).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes> {
        self.inner.get(key, range).await
    }

    async fn put(&self, key: &str, body: Bytes, meta: &UserMeta) -> StoreResult<()> {
        self.inner.put(key, body, meta).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }

    async fn delete_many(&self, keys: &[String]) -> StoreResult<Vec<(String, String)>> {
        self.inner.delete_many(keys).await
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

    async fn copy(&self, src: &str, dst: &str, meta: Option<&UserMeta>) -> StoreResult<()> {
        self.inner.copy(src, dst, meta).await
    }

    async fn create_multipart(&self, key: &str, meta: &UserMeta) -> StoreResult<String> {
        let id = self.inner.create_multipart(key, meta).await?;
        self.record(&format!("start {id} {key}"));
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
    ) -> StoreResult<String> {
        self.inner.upload_part_copy(key, upload_id, part, src, range).await
    }

    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(i32, String)]) -> StoreResult<()> {
        self.inner.complete_multipart(key, upload_id, parts).await?;
        self.record(&format!("end {upload_id}"));
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.inner.abort_multipart(key, upload_id).await?;
        self.record(&format!("end {upload_id}"));
        Ok(())
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<UploadInfo>> {
        self.inner.list_uploads(prefix).await
    }

    async fn flush(&self) -> StoreResult<()> {
        self.inner.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn uploads_of_a_dead_process_are_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemoryStore::new());
        let done = mem.create_multipart("a", &UserMeta::new()).await.unwrap();
        let left = mem.create_multipart("b", &UserMeta::new()).await.unwrap();
        // A journal of a process that no longer exists (pid beyond pid_max).
        std::fs::write(
            dir.path().join("999999999.journal"),
            format!("start {done} a\nstart {left} b\nend {done}\n"),
        )
        .unwrap();
        mem.complete_multipart("a", &done, &[]).await.unwrap();
        assert_eq!(recover(mem.as_ref(), dir.path()).await, 1);
        assert!(mem.list_uploads("").await.unwrap().is_empty());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn a_live_journal_records_starts_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournalingStore::new(Arc::new(MemoryStore::new()), dir.path());
        let id = j.create_multipart("k", &UserMeta::new()).await.unwrap();
        let text = std::fs::read_to_string(dir.path().join(format!("{}.journal", std::process::id()))).unwrap();
        assert_eq!(text, format!("start {id} k\n"));
        j.abort_multipart("k", &id).await.unwrap();
        drop(j);
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
