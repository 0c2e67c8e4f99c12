//! Staging: a file being modified in place lives in a local sparse file until it is uploaded.
//!
//! The staging file mirrors the object chunk by chunk (chunk = the multipart part size).
//! Invariants:
//! - `fetched[i]`: the local bytes of chunk `i` are valid (downloaded from the base object or
//!   written). Chunks are fetched lazily, only when read or partly overwritten.
//! - `dirty[i]`: chunk `i` may differ from the base object at the same offsets. Clean chunks
//!   that lie wholly inside the base object are uploaded with UploadPartCopy (server side),
//!   so appending to or patching a large file does not re-send the unchanged gigabytes.
//! - After a successful upload the object is the new base and nothing is dirty; after a
//!   failed one everything stays as it was, so nothing written is lost.

use super::kept::Kept;
use crate::store::{Headers, ObjectStore, StoreError, UserMeta, WriteIf};
use bytes::Bytes;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// S3's smallest part but the last.
use crate::limits::MIN_PART;

/// The object a staging file started from.
#[derive(Debug, Clone)]
pub struct Base {
    pub key: String,
    pub size: u64,
    /// The version read from (its ETag), when known: every GET and part copy of the base
    /// names it, so an object another client replaced meanwhile fails the read or the
    /// upload instead of mixing two versions.
    pub etag: Option<String>,
}

pub struct StagedFile {
    path: PathBuf,
    file: File,
    size: u64,
    base: Option<Base>,
    chunk: u64,
    fetched: Vec<bool>,
    dirty: Vec<bool>,
    modified: bool,
    /// The mount's memory target, which the buffer of each part read back for its upload
    /// draws from.
    memory: Option<crate::data::memory::MemoryTarget>,
}

/// Why an operation on a staged file failed: the local disk under it (ENOSPC, EDQUOT, EIO
/// of this machine, never retried) or S3.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("local staging file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StagingError {
    /// The errno a program gets: the disk's own, or the store's ([`StoreError::errno`]).
    pub fn errno(&self) -> i32 {
        match self {
            StagingError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            StagingError::Store(e) => e.errno(),
        }
    }
}

pub type StagingResult<T> = Result<T, StagingError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StagingError + '_ {
    move |source| StagingError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl StagedFile {
    /// A staging file at `path` (created, truncated) for an object of `base` (or a new one).
    pub fn create(path: PathBuf, base: Option<Base>, part_size: u64) -> std::io::Result<StagedFile> {
        if let Some(dir) = path.parent() {
            crate::private::ensure_dir(dir)?;
        }
        let file = crate::private::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let size = base.as_ref().map(|b| b.size).unwrap_or(0);
        file.set_len(size)?;
        // Chunks grow with the object so that it fits in 10,000 parts.
        let chunk = part_size
            .max(MIN_PART)
            .max(size.div_ceil(9_000).next_multiple_of(1 << 20));
        let n = size.div_ceil(chunk) as usize;
        Ok(StagedFile {
            path,
            file,
            size,
            base,
            chunk,
            fetched: vec![false; n],
            dirty: vec![false; n],
            modified: false,
            memory: None,
        })
    }

    /// Part buffers of its uploads draw from `target` (see [`crate::data::memory`]).
    pub fn within(mut self, target: Option<crate::data::memory::MemoryTarget>) -> Self {
        self.memory = target;
        self
    }

    /// Waits until the memory target covers a buffer of `bytes` (held until dropped).
    async fn hold(&self, bytes: u64) -> Option<crate::data::memory::Lease> {
        let mut lease = self.memory.as_ref()?.lease(crate::data::memory::Use::Write);
        lease.grow(bytes).await;
        Some(lease)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_modified(&self) -> bool {
        self.modified
    }

    /// Marks the content as changed without a write (e.g. new metadata to upload).
    pub fn touch(&mut self) {
        self.modified = true;
    }

    fn grow_maps(&mut self) {
        let n = self.size.div_ceil(self.chunk) as usize;
        if self.fetched.len() < n {
            self.fetched.resize(n, true);
            self.dirty.resize(n, true);
        }
    }

    /// Makes the local bytes of every chunk overlapping `start..end` valid: a chunk that
    /// holds any byte of the base object is fetched whole.
    async fn ensure(&mut self, store: &dyn ObjectStore, start: u64, end: u64) -> StagingResult<()> {
        let Some(base) = self.base.clone() else { return Ok(()) };
        if start >= end || self.fetched.is_empty() {
            return Ok(());
        }
        let last = (((end - 1) / self.chunk) as usize).min(self.fetched.len() - 1);
        for i in (start / self.chunk) as usize..=last {
            let c0 = i as u64 * self.chunk;
            // Only bytes that are both in the base object and still in the file come from S3.
            let c1 = (c0 + self.chunk).min(base.size).min(self.size);
            if self.fetched[i] || c0 >= c1 {
                continue;
            }
            let data = store.get(&base.key, Some(c0..c1), base.etag.as_deref()).await?;
            if (data.len() as u64) < c1 - c0 {
                return Err(StagingError::Store(StoreError::Server {
                    op: "get",
                    key: base.key.clone(),
                    status: 200,
                    code: "ShortRead".into(),
                    message: format!(
                        "object changed underneath: wanted {} bytes at {c0}, got {}",
                        c1 - c0,
                        data.len()
                    ),
                }));
            }
            self.file.write_all_at(&data, c0).map_err(io_err(&self.path))?;
            self.fetched[i] = true;
        }
        Ok(())
    }

    pub async fn read(&mut self, store: &dyn ObjectStore, offset: u64, len: usize) -> StagingResult<Bytes> {
        let end = (offset + len as u64).min(self.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        self.ensure(store, offset, end).await?;
        let mut buf = vec![0u8; (end - offset) as usize];
        self.file.read_exact_at(&mut buf, offset).map_err(io_err(&self.path))?;
        Ok(Bytes::from(buf))
    }

    pub async fn write(&mut self, store: &dyn ObjectStore, offset: u64, data: &[u8]) -> StagingResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        // Partly overwritten chunks keep their other bytes: fetch the first and last first.
        self.ensure(store, offset, offset + 1).await?;
        self.ensure(store, end - 1, end).await?;
        if end > self.size {
            self.size = end;
            self.grow_maps();
        }
        self.file.write_all_at(data, offset).map_err(io_err(&self.path))?;
        for i in (offset / self.chunk) as usize..=((end - 1) / self.chunk) as usize {
            self.fetched[i] = true;
            self.dirty[i] = true;
        }
        self.modified = true;
        Ok(())
    }

    pub async fn truncate(&mut self, store: &dyn ObjectStore, size: u64) -> StagingResult<()> {
        if size == self.size {
            return Ok(());
        }
        if size > self.size {
            // The chunk holding the old end gains zeros after its valid bytes.
            if self.size > 0 {
                self.ensure(store, self.size - 1, self.size).await?;
                let i = ((self.size - 1) / self.chunk) as usize;
                self.dirty[i] = true;
            }
        } else if size > 0 {
            self.ensure(store, size - 1, size).await?;
            let i = ((size - 1) / self.chunk) as usize;
            self.dirty[i] = true;
        }
        self.file.set_len(size).map_err(io_err(&self.path))?;
        let old = self.size;
        self.size = size;
        let n = size.div_ceil(self.chunk) as usize;
        self.fetched.truncate(n);
        self.dirty.truncate(n);
        self.grow_maps();
        if size > old {
            // Any chunk after the old end is new zeros.
            for i in (old / self.chunk) as usize..n {
                self.fetched[i] = true;
                self.dirty[i] = true;
            }
        }
        self.modified = true;
        Ok(())
    }

    /// Uploads the whole file to `key` with `meta`, only if `cond` holds (S3 decides: the
    /// object it replaces is still the version it names): one PUT when small, else a
    /// multipart upload that copies clean chunks server-side. Returns the bytes sent over
    /// the wire and the new object's ETag (when S3 said it).
    pub async fn upload(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        meta: &UserMeta,
        headers: Option<&Headers>,
        cond: Option<&WriteIf>,
    ) -> StagingResult<(u64, Option<String>)> {
        if self.size <= self.chunk {
            let _memory = self.hold(self.size).await;
            let body = self.read(store.as_ref(), 0, self.size as usize).await?;
            let sent = body.len() as u64;
            let etag = store.put_with(key, body, meta, headers, cond).await?;
            self.uploaded(key, etag.clone());
            return Ok((sent, etag));
        }
        let id = store.create_multipart_with(key, meta, headers).await?;
        match self.upload_parts(store, key, &id).await {
            Ok((parts, sent)) => {
                let etag = match store.complete_multipart_if(key, &id, &parts, cond).await {
                    Ok(etag) => etag,
                    Err(e) => {
                        let _ = store.abort_multipart(key, &id).await;
                        return Err(e.into());
                    }
                };
                self.uploaded(key, etag.clone());
                Ok((sent, etag))
            }
            Err(e) => {
                if let Err(abort) = store.abort_multipart(key, &id).await {
                    tracing::warn!(key, error = %abort, "could not abort a failed multipart upload");
                }
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        id: &str,
    ) -> StagingResult<(Vec<(i32, String)>, u64)> {
        let mut parts = Vec::new();
        let mut sent = 0;
        let n = self.size.div_ceil(self.chunk) as usize;
        for i in 0..n {
            let c0 = i as u64 * self.chunk;
            let c1 = (c0 + self.chunk).min(self.size);
            let part = i as i32 + 1;
            let copyable = match &self.base {
                Some(b) => !self.dirty[i] && c1 <= b.size,
                None => false,
            };
            let etag = match (&self.base, copyable) {
                (Some(b), true) => {
                    store
                        .upload_part_copy(key, id, part, &b.key, c0..c1, b.etag.as_deref())
                        .await?
                }
                _ => {
                    let _memory = self.hold(c1 - c0).await;
                    let body = self.read(store.as_ref(), c0, (c1 - c0) as usize).await?;
                    sent += body.len() as u64;
                    store.upload_part(key, id, part, body).await?
                }
            };
            parts.push((part, etag));
        }
        Ok((parts, sent))
    }

    /// Records that the object at `key` (version `etag`) already holds exactly this content.
    pub fn mark_uploaded(&mut self, key: &str, etag: Option<String>) {
        self.uploaded(key, etag);
    }

    fn uploaded(&mut self, key: &str, etag: Option<String>) {
        // The local copy now equals the object: clean, and every chunk held locally stays
        // valid; chunks never fetched are fetched from the new object when needed.
        self.base = Some(Base {
            key: key.to_string(),
            size: self.size,
            etag,
        });
        self.dirty.iter_mut().for_each(|d| *d = false);
        self.modified = false;
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl StagedFile {
    /// Keeps the staging file in `dir` (lost+found) instead of deleting it, for data that
    /// could not be uploaded. Chunks never fetched from the base object are fetched first, so
    /// the copy is whole; those S3 does not give are listed as missing in the answer.
    pub async fn keep(&mut self, store: &dyn ObjectStore, dir: &Path, name: &str) -> std::io::Result<Kept> {
        let mut missing: Vec<Range<u64>> = Vec::new();
        for i in 0..self.fetched.len() {
            let c0 = i as u64 * self.chunk;
            let c1 = (c0 + self.chunk).min(self.size);
            if c0 < c1 && self.ensure(store, c0, c1).await.is_err() {
                let hole = c0..c1.min(self.base.as_ref().map_or(c1, |b| b.size.max(c0)));
                match missing.last_mut() {
                    Some(last) if last.end == hole.start => last.end = hole.end,
                    _ => missing.push(hole),
                }
            }
        }
        self.file.sync_data()?;
        let path = super::kept::move_into(&self.path, dir, name)?;
        // Nothing left to delete on drop.
        self.path = PathBuf::new();
        Ok(Kept {
            path,
            size: self.size,
            missing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OpKind;
    use crate::store::memory::MemoryStore;
    use crate::store::retry::{RetryConfig, RetryingStore};
    use crate::store::stats::RequestStats;

    const MIB: usize = 1024 * 1024;

    fn setup() -> (Arc<dyn ObjectStore>, Arc<RequestStats>, tempfile::TempDir) {
        let stats = Arc::new(RequestStats::default());
        let store: Arc<dyn ObjectStore> = Arc::new(RetryingStore::new(
            MemoryStore::new(),
            RetryConfig::default(),
            stats.clone(),
            crate::store::one_prefix(),
        ));
        (store, stats, tempfile::tempdir().unwrap())
    }

    #[tokio::test]
    async fn patching_a_large_file_copies_clean_parts_server_side() {
        let (store, stats, dir) = setup();
        let body: Vec<u8> = (0..20 * MIB).map(|i| (i % 253) as u8).collect();
        store
            .put("k", Bytes::from(body.clone()), &UserMeta::new())
            .await
            .unwrap();
        let mut s = StagedFile::create(
            dir.path().join("s"),
            Some(Base {
                key: "k".into(),
                size: body.len() as u64,
                etag: None,
            }),
            5 * MIB as u64,
        )
        .unwrap();
        s.write(store.as_ref(), 7 * MIB as u64, b"PATCH").await.unwrap();
        s.write(store.as_ref(), body.len() as u64, b"tail").await.unwrap();
        let (sent, _) = s.upload(&store, "k", &UserMeta::new(), None, None).await.unwrap();
        let mut expected = body.clone();
        expected[7 * MIB..7 * MIB + 5].copy_from_slice(b"PATCH");
        expected.extend_from_slice(b"tail");
        assert_eq!(&store.get("k", None, None).await.unwrap()[..], &expected[..]);
        let snap = stats.snapshot();
        assert_eq!(snap.get(OpKind::UploadPartCopy), 3, "{snap:?}");
        assert!(sent < 11 * MIB as u64, "sent {sent}");
    }

    #[tokio::test]
    async fn appending_keeps_the_bytes_before_the_end() {
        let (store, _, dir) = setup();
        store
            .put("k", Bytes::from_static(b"line 1\n"), &UserMeta::new())
            .await
            .unwrap();
        let mut s = StagedFile::create(
            dir.path().join("s"),
            Some(Base {
                key: "k".into(),
                size: 7,
                etag: None,
            }),
            5 * MIB as u64,
        )
        .unwrap();
        s.write(store.as_ref(), 7, b"line 2\n").await.unwrap();
        s.upload(&store, "k", &UserMeta::new(), None, None).await.unwrap();
        assert_eq!(&store.get("k", None, None).await.unwrap()[..], b"line 1\nline 2\n");
    }

    #[tokio::test]
    async fn truncate_down_and_up_reads_back_zeros() {
        let (store, _, dir) = setup();
        store
            .put("k", Bytes::from_static(b"hello world"), &UserMeta::new())
            .await
            .unwrap();
        let mut s = StagedFile::create(
            dir.path().join("s"),
            Some(Base {
                key: "k".into(),
                size: 11,
                etag: None,
            }),
            5 * MIB as u64,
        )
        .unwrap();
        s.truncate(store.as_ref(), 5).await.unwrap();
        s.truncate(store.as_ref(), 8).await.unwrap();
        assert_eq!(&s.read(store.as_ref(), 0, 100).await.unwrap()[..], b"hello\0\0\0");
        s.upload(&store, "k", &UserMeta::new(), None, None).await.unwrap();
        assert_eq!(&store.get("k", None, None).await.unwrap()[..], b"hello\0\0\0");
        assert!(!s.is_modified());
    }

    #[tokio::test]
    async fn failed_upload_keeps_everything_for_the_next_try() {
        let mem = Arc::new(MemoryStore::new());
        let store: Arc<dyn ObjectStore> = mem.clone();
        let dir = tempfile::tempdir().unwrap();
        let mut s = StagedFile::create(dir.path().join("s"), None, 5 * MIB as u64).unwrap();
        s.write(store.as_ref(), 0, b"precious").await.unwrap();
        mem.fail_next(1, |k| StoreError::Client {
            op: "put",
            key: k.into(),
            status: 403,
            code: "AccessDenied".into(),
            message: String::new(),
        });
        assert!(s.upload(&store, "k", &UserMeta::new(), None, None).await.is_err());
        assert!(s.is_modified());
        s.upload(&store, "k", &UserMeta::new(), None, None).await.unwrap();
        assert_eq!(&store.get("k", None, None).await.unwrap()[..], b"precious");
    }
}
