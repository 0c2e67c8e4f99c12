//! Uploading a new body as it is written.
//!
//! Writes must be sequential. Up to one part is buffered; a small file becomes one PUT at
//! `finish`. Once the buffer fills, a multipart upload starts and full parts are sent in the
//! background, at most `max_inflight` at a time, so memory stays below
//! `(max_inflight + 1) × part size` whatever the file size. Part sizes grow every 1,000 parts
//! so that S3's 10,000-part limit still allows objects of more than 5 TiB.
//! `finish` returns only when S3 has the whole object: that is what makes `close` durable.
//!
//! Parts sent to S3 cannot be read back before the upload completes, so once a multipart
//! upload starts every part is also appended to a local spool file (when one is given): if
//! the upload fails, [`Upload::keep`] moves it to lost+found whole. A spool that cannot be
//! written (disk full) stops there, and `keep` says which bytes it lacks.

use super::kept::Kept;
use super::memory::{Lease, MemoryTarget, Use};
use super::spool::{PartBuf, Spool};
use crate::store::{Headers, ObjectStore, StoreError, StoreResult, UserMeta, WriteIf};
use bytes::Bytes;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// S3's largest part.
const MAX_PART: usize = crate::limits::MAX_PART as usize;

/// The size of part `n` (1-based) for a base part size: doubles every 1,000 parts.
pub fn part_size(base: usize, n: i32) -> usize {
    let doublings = ((n.max(1) - 1) / 1000).min(10) as u32;
    base.saturating_mul(1 << doublings).min(MAX_PART)
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(
        "write at offset {offset} but the file is {size} bytes long: only sequential writes are supported for new files"
    )]
    NotSequential { offset: u64, size: u64 },
    #[error("the upload already finished; reopen the file to write again")]
    Finished,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Upload {
    store: Arc<dyn ObjectStore>,
    key: String,
    meta: UserMeta,
    /// The standard headers the object gets (another client's Content-Type, say), if any.
    headers: Option<Headers>,
    base_part: usize,
    max_inflight: usize,
    buf: PartBuf,
    size: u64,
    upload_id: Option<String>,
    next_part: i32,
    inflight: Vec<(i32, JoinHandle<StoreResult<String>>)>,
    done: Vec<(i32, String)>,
    finished: bool,
    /// A part failed: its bytes are gone from memory, so no later attempt may complete the
    /// upload (S3 would make an object without that part). Every later call fails with this.
    failed: Option<StoreError>,
    /// The ETag of the object the last finish made, when S3 said (a single PUT's): the
    /// version the mount's metadata names, so its reads are pinned to it.
    written: Option<String>,
    spool: Spool,
    /// The mount's memory target, which part buffers draw from (waiting when it is spent),
    /// and what the buffer being filled holds of it.
    memory: Option<MemoryTarget>,
    lease: Option<Lease>,
    /// After a multipart upload completed: its local copy, whole, when asked to keep it
    /// ([`Upload::keep_whole_copy`]) for whoever takes it ([`Upload::take_whole_copy`]).
    keep_copy: bool,
    whole_copy: Option<PathBuf>,
}

impl Upload {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: String,
        meta: UserMeta,
        base_part: usize,
        max_inflight: usize,
    ) -> Self {
        Upload {
            store,
            key,
            meta,
            headers: None,
            base_part,
            max_inflight: max_inflight.max(1),
            buf: PartBuf::default(),
            size: 0,
            upload_id: None,
            next_part: 1,
            inflight: Vec::new(),
            done: Vec::new(),
            finished: false,
            failed: None,
            written: None,
            spool: Spool::Off,
            memory: None,
            lease: None,
            keep_copy: false,
            whole_copy: None,
        }
    }

    /// A completed multipart upload hands its whole local copy over instead of removing it
    /// (the data cache takes the new version from it).
    pub fn keep_whole_copy(mut self) -> Self {
        self.keep_copy = true;
        self
    }

    /// The local copy of the last completed multipart upload, whole (see
    /// [`Upload::keep_whole_copy`]); the taker removes it.
    pub fn take_whole_copy(&mut self) -> Option<PathBuf> {
        self.whole_copy.take()
    }

    /// Part buffers draw from `target` (see [`crate::data::memory`]).
    pub fn within(mut self, target: MemoryTarget) -> Self {
        self.memory = Some(target);
        self
    }

    /// Waits until the memory target covers `bytes` of buffer being filled.
    async fn hold(&mut self, bytes: usize) {
        if let Some(t) = &self.memory {
            let lease = self.lease.get_or_insert_with(|| t.lease(Use::Write));
            lease.grow(bytes as u64).await;
        }
    }

    /// The object was just created empty (an exclusive create): nothing to upload until
    /// something is written.
    pub fn created(mut self) -> Self {
        self.finished = true;
        self
    }

    /// Keeps a local copy of a multipart upload's bytes at `path` (made when needed), of at
    /// most `limit` bytes (the cache size: a huge file must not fill the disk).
    pub fn spool_to(mut self, path: PathBuf, limit: u64) -> Self {
        self.spool = Spool::Planned(path, limit);
        self
    }

    /// After a failed upload: moves what was written into `dir` as `name` and says what that
    /// is. Everything, while no part was sent or the spool holds it all.
    pub async fn keep(&mut self, dir: &Path, name: &str) -> std::io::Result<Kept> {
        self.spool.settle().await;
        if self.upload_id.is_none() && matches!(self.spool, Spool::Planned(..) | Spool::Off) {
            // Every byte is still in the buffer.
            let tmp = dir.join(format!(".{}", uuid::Uuid::new_v4().simple()));
            crate::private::ensure_dir(dir)?;
            let mut f = crate::private::file_options().write(true).create_new(true).open(&tmp)?;
            f.write_all(self.buf.as_slice())?;
            f.sync_data()?;
            let path = super::kept::move_into(&tmp, dir, name)?;
            return Ok(Kept {
                path,
                size: self.size,
                missing: Vec::new(),
            });
        }
        let buf = std::mem::take(&mut self.buf).freeze();
        self.spool.append(buf, &self.key).await;
        self.spool.settle().await;
        let (src, len) = match std::mem::replace(&mut self.spool, Spool::Off) {
            Spool::On { path, file, len, .. } => {
                file.sync_data()?;
                (path, len)
            }
            Spool::Broken { path, len } => (path, len),
            _ => return Err(std::io::Error::other("no local copy of the upload was made")),
        };
        let path = super::kept::move_into(&src, dir, name)?;
        Ok(Kept {
            path,
            size: self.size,
            missing: if len < self.size {
                std::iter::once(len..self.size).collect()
            } else {
                Vec::new()
            },
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// True once a multipart upload has started (parts may be in S3 already).
    pub fn has_multipart(&self) -> bool {
        self.upload_id.is_some()
    }

    /// The bytes written and not sent yet (all of them while no multipart upload started).
    pub fn buffered(&self) -> &[u8] {
        self.buf.as_slice()
    }

    pub fn meta(&self) -> &UserMeta {
        &self.meta
    }

    /// Changes the metadata and headers the object will get; false when it is too late (the
    /// multipart upload was created with other ones).
    pub fn set_attrs(&mut self, meta: UserMeta, headers: Option<Headers>) -> bool {
        if self.upload_id.is_some() {
            return meta == self.meta && headers == self.headers;
        }
        self.meta = meta;
        self.headers = headers;
        true
    }

    /// Forgets what was written (truncate to 0 before anything was sent).
    pub fn reset(&mut self) -> Result<(), UploadError> {
        if self.upload_id.is_some() {
            return Err(UploadError::NotSequential {
                offset: 0,
                size: self.size,
            });
        }
        self.buf.clear();
        self.size = 0;
        Ok(())
    }

    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), UploadError> {
        if let Some(e) = &self.failed {
            return Err(e.clone().into());
        }
        if self.finished {
            // A small file was PUT by an earlier flush (a shell's `close` of a dup'd fd, say)
            // and its bytes are still here: keep writing, and the next flush PUTs it again.
            if self.upload_id.is_some() {
                return Err(UploadError::Finished);
            }
            self.finished = false;
        }
        if offset != self.size {
            return Err(UploadError::NotSequential {
                offset,
                size: self.size,
            });
        }
        let mut rest = data;
        while !rest.is_empty() {
            let want = part_size(self.base_part, self.next_part);
            if self.upload_id.is_some() && self.buf.unallocated() {
                // A later part's buffer is allocated once, at its full size (growing it by
                // doubling churns the allocator and inflates the resident set), once the
                // memory target has room for it.
                self.hold(PartBuf::default().allocated_after(want)).await;
                self.buf = PartBuf::with_capacity(want);
            }
            let take = (want - self.buf.len()).min(rest.len());
            self.hold(self.buf.allocated_after(take)).await;
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            self.size += take as u64;
            if self.buf.len() == want {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> Result<(), UploadError> {
        let id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self
                    .store
                    .create_multipart_with(&self.key, &self.meta, self.headers.as_ref())
                    .await?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        while self.inflight.len() >= self.max_inflight {
            self.reap_one().await?;
        }
        let n = self.next_part;
        self.next_part += 1;
        // The part's memory goes onto the wire with it, and comes back when S3 answered.
        let sent = self.lease.take();
        let body: Bytes = std::mem::take(&mut self.buf).freeze();
        self.spool.append(body.clone(), &self.key).await;
        let (store, key) = (self.store.clone(), self.key.clone());
        self.inflight.push((
            n,
            tokio::spawn(async move {
                let done = store.upload_part(&key, &id, n, body).await;
                drop(sent);
                done
            }),
        ));
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<(), UploadError> {
        if self.inflight.is_empty() {
            return Ok(());
        }
        let (n, h) = self.inflight.remove(0);
        let result = h.await.unwrap_or_else(|e| {
            Err(StoreError::Transport {
                op: "upload_part",
                key: self.key.clone(),
                message: format!("upload task failed: {e}"),
            })
        });
        match result {
            Ok(etag) => {
                self.done.push((n, etag));
                Ok(())
            }
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e.into())
            }
        }
    }

    /// The ETag of the object the last [`Upload::finish`] made, when known.
    pub fn written_etag(&self) -> Option<&str> {
        self.written.as_deref()
    }

    /// Sends what is left and makes the object visible, only if `cond` holds (S3 decides:
    /// the object this write replaces is still the version it names). Idempotent once it
    /// succeeded.
    pub async fn finish(&mut self, cond: Option<&WriteIf>) -> Result<(), UploadError> {
        if self.finished {
            return Ok(());
        }
        if let Some(e) = &self.failed {
            return Err(e.clone().into());
        }
        match self.upload_id.clone() {
            None => {
                let body = Bytes::copy_from_slice(self.buf.as_slice());
                self.written = self
                    .store
                    .put_with(&self.key, body, &self.meta, self.headers.as_ref(), cond)
                    .await?;
                self.finished = true;
                return Ok(());
            }
            Some(id) => {
                if !self.buf.is_empty() {
                    self.send_part().await?;
                }
                while !self.inflight.is_empty() {
                    self.reap_one().await?;
                }
                self.done.sort_by_key(|(n, _)| *n);
                self.written = self
                    .store
                    .complete_multipart_if(&self.key, &id, &self.done, cond)
                    .await?;
                self.spool.settle().await;
                if self.keep_copy {
                    self.whole_copy = self.spool.take_whole(self.size);
                }
                self.spool.remove();
            }
        }
        self.buf = PartBuf::default();
        self.lease = None;
        self.finished = true;
        Ok(())
    }

    /// Abandons the upload (the file is not created); aborts a started multipart upload.
    pub async fn abort(&mut self) {
        for (_, h) in self.inflight.drain(..) {
            h.abort();
        }
        if let Some(id) = self.upload_id.take()
            && let Err(e) = self.store.abort_multipart(&self.key, &id).await
        {
            tracing::warn!(key = %self.key, error = %e, "could not abort multipart upload");
        }
        self.finished = true;
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(p) = self.whole_copy.take() {
            let _ = std::fs::remove_file(p);
        }
        self.spool.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn a_failed_multipart_upload_is_kept_whole_from_its_spool() {
        let t = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemoryStore::new());
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let mut u =
            Upload::new(mem.clone(), "k".into(), UserMeta::new(), 1024, 2).spool_to(t.path().join("spool"), u64::MAX);
        for chunk in data.chunks(300) {
            let off = u.size();
            u.write(off, chunk).await.unwrap();
        }
        mem.fail_next(100, |k| {
            StoreError::from_response("complete_multipart", k, 403, "AccessDenied", "")
        });
        assert!(u.finish(None).await.is_err());
        let kept = u.keep(&t.path().join("lost+found"), "k").await.unwrap();
        assert!(kept.is_complete(), "{kept}");
        assert_eq!(std::fs::read(&kept.path).unwrap(), data);
        assert!(!t.path().join("spool").exists());
    }

    #[tokio::test]
    async fn after_a_failed_part_the_upload_never_completes() {
        let mem = Arc::new(MemoryStore::new());
        let mut u = Upload::new(mem.clone(), "k".into(), UserMeta::new(), 1024, 1);
        u.write(0, &[1u8; 1024]).await.unwrap();
        mem.fail_next(1, |k| {
            StoreError::from_response("upload_part", k, 403, "AccessDenied", "")
        });
        // The second part waits for the first (one in flight), which failed.
        assert!(u.write(1024, &[2u8; 1024]).await.is_err(), "the first part failed");
        assert!(u.finish(None).await.is_err());
        assert!(
            u.finish(None).await.is_err(),
            "a second attempt must not complete without part 1"
        );
        assert!(mem.get("k", None, None).await.is_err());
    }

    #[tokio::test]
    async fn the_spool_stops_at_its_limit_and_says_what_is_missing() {
        let t = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemoryStore::new());
        let mut u =
            Upload::new(mem.clone(), "k".into(), UserMeta::new(), 1024, 2).spool_to(t.path().join("spool"), 2500);
        u.write(0, &[5u8; 5000]).await.unwrap();
        mem.fail_next(100, |k| {
            StoreError::from_response("complete_multipart", k, 403, "AccessDenied", "")
        });
        assert!(u.finish(None).await.is_err());
        let kept = u.keep(&t.path().join("lost+found"), "k").await.unwrap();
        // Parts of 1024 bytes: two fit under 2,500, the third does not.
        assert_eq!(kept.missing, vec![2048..5000], "{kept}");
        assert_eq!(std::fs::read(&kept.path).unwrap().len(), 2048);
    }

    #[tokio::test]
    async fn a_finished_upload_leaves_no_spool() {
        let t = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemoryStore::new());
        mem.allow_small_parts();
        let mut u =
            Upload::new(mem.clone(), "k".into(), UserMeta::new(), 1024, 2).spool_to(t.path().join("spool"), u64::MAX);
        u.write(0, &[1u8; 3000]).await.unwrap();
        assert!(t.path().join("spool").exists());
        u.finish(None).await.unwrap();
        assert!(!t.path().join("spool").exists());
    }

    #[test]
    fn part_sizes_reach_five_tib_within_ten_thousand_parts() {
        let base = 8 * 1024 * 1024;
        let total: u128 = (1..=10_000).map(|n| part_size(base, n) as u128).sum();
        assert!(total >= 5 * (1u128 << 40), "{total}");
        assert_eq!(part_size(base, 1), base);
        assert_eq!(part_size(base, 1001), 2 * base);
    }

    #[tokio::test]
    async fn small_file_is_one_put_and_large_file_is_multipart() {
        let mem = Arc::new(MemoryStore::new());
        mem.allow_small_parts();
        let mut u = Upload::new(mem.clone(), "small".into(), UserMeta::new(), 1024, 2);
        u.write(0, b"hello").await.unwrap();
        assert!(matches!(u.write(2, b"x").await, Err(UploadError::NotSequential { .. })));
        u.finish(None).await.unwrap();
        assert_eq!(&mem.get("small", None, None).await.unwrap()[..], b"hello");

        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut u = Upload::new(mem.clone(), "big".into(), UserMeta::new(), 1024, 2);
        for chunk in data.chunks(700) {
            let off = u.size();
            u.write(off, chunk).await.unwrap();
        }
        u.finish(None).await.unwrap();
        assert_eq!(&mem.get("big", None, None).await.unwrap()[..], &data[..]);
        assert!(mem.list_uploads("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn writes_after_a_flush_of_a_small_file_are_put_again() {
        let mem = Arc::new(MemoryStore::new());
        let mut u = Upload::new(mem.clone(), "k".into(), UserMeta::new(), 1024, 2);
        u.finish(None).await.unwrap();
        assert_eq!(mem.get("k", None, None).await.unwrap().len(), 0);
        u.write(0, b"hello").await.unwrap();
        u.finish(None).await.unwrap();
        assert_eq!(&mem.get("k", None, None).await.unwrap()[..], b"hello");
    }

    #[tokio::test]
    async fn failed_put_is_reported_not_swallowed() {
        let mem = Arc::new(MemoryStore::new());
        mem.fail_next(1, |k| StoreError::Client {
            op: "put",
            key: k.into(),
            status: 403,
            code: "AccessDenied".into(),
            message: String::new(),
        });
        let mut u = Upload::new(mem.clone(), "k".into(), UserMeta::new(), 1024, 2);
        u.write(0, b"data").await.unwrap();
        assert!(u.finish(None).await.is_err());
        assert!(!u.is_finished());
        u.finish(None).await.unwrap();
        assert_eq!(&mem.get("k", None, None).await.unwrap()[..], b"data");
    }
}
