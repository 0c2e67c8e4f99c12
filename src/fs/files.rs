//! Files open through this mount: one state per inode, shared by all its handles.
//!
//! A file written from its start (create, `O_TRUNC`) streams straight to S3 ([`Upload`]).
//! Anything else (append, a write at an offset, a truncate to a non-zero size, a read of a
//! file being written) moves the file to a local staging file ([`StagedFile`]). `flush`,
//! `fsync` and the last `close` upload what changed and return the upload's error; data that
//! cannot be uploaded at the last close is kept under `lost+found/` in the cache directory.

use super::cache::{EntryInfo, Kind};
use super::error::{FsError, FsResult};
use super::posix::Posix;
use super::{Attr, Core, Handle, lock};
use crate::data::read::ObjectReads;
use crate::data::staging::{Base, StagedFile};
use crate::data::upload::{Upload, UploadError};
use crate::layout::RelPath;
use crate::store::{StoreError, WriteIf};
use bytes::Bytes;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

// One per open file, behind a mutex: the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub(super) enum Body {
    Stream(Upload),
    Staged(StagedFile),
}

/// The part of an open file's state that is read without waiting for an upload.
pub(super) struct Shared {
    /// The object's key; changes when the open file is renamed.
    key: Mutex<String>,
    size: AtomicU64,
    pub(super) posix: Mutex<Posix>,
    /// Metadata changed since the last upload (chmod, utimens... on the open file).
    pub(super) meta_dirty: AtomicBool,
    unlinked: AtomicBool,
    /// The last handle closed and the state left the open-file table: a change made to it
    /// now would never be uploaded, so setattr treats the file as closed.
    pub(super) detached: AtomicBool,
    pub(super) body: tokio::sync::Mutex<Body>,
}

pub(super) struct OpenFile {
    pub path: RelPath,
    handles: usize,
    shared: Arc<Shared>,
}

/// The metadata a file written from scratch is uploaded with: no mtime, since S3's
/// LastModified (the upload's completion) is the time of its last write here. A multipart
/// upload takes its metadata when it starts; an mtime that moved with every write since
/// would then need a self-copy of the whole object at close (slow, and impossible past
/// CopyObject's 5 GiB). An mtime set explicitly (utimens) is written by the metadata update.
fn stream_meta(posix: &Posix) -> crate::store::UserMeta {
    Posix { mtime: None, ..*posix }.to_meta()
}

impl Shared {
    pub(super) fn info(&self) -> EntryInfo {
        let posix = *lock(&self.posix);
        EntryInfo::new(Kind::File, self.size.load(Ordering::Relaxed), SystemTime::now()).with_posix(posix)
    }

    fn key(&self) -> String {
        lock(&self.key).clone()
    }
}

impl OpenFile {
    pub fn unlinked(&self) -> bool {
        self.shared.unlinked.load(Ordering::Relaxed)
    }

    pub fn info(&self) -> EntryInfo {
        self.shared.info()
    }
}

fn upload_err(path: &RelPath, e: UploadError) -> FsError {
    match e {
        UploadError::NotSequential { .. } | UploadError::Finished => FsError::new(libc::EINVAL, format!("{path}: {e}")),
        UploadError::Store(s) => store_err(path, "upload", s),
    }
}

pub(super) fn store_err(path: &RelPath, what: &str, e: StoreError) -> FsError {
    let errno = e.errno();
    if matches!(e, StoreError::PreconditionFailed { .. }) {
        return FsError::new(
            errno,
            format!("{path}: {what} refused: another host replaced the file this mount created exclusively ({e})"),
        )
        .caused_by(e);
    }
    FsError::new(errno, format!("{path}: {what} failed: {e}")).caused_by(e)
}

impl Core {
    pub(super) fn open_file_info(&self, path: &RelPath) -> Option<EntryInfo> {
        let ino = lock(&self.inodes).find(path)?;
        lock(&self.open_files)
            .get(&ino)
            .filter(|f| !f.unlinked())
            .map(OpenFile::info)
    }

    /// The open state's attributes of `ino`, and whether it was unlinked.
    pub(super) fn open_info_of(&self, ino: u64) -> Option<(EntryInfo, bool)> {
        lock(&self.open_files).get(&ino).map(|f| (f.info(), f.unlinked()))
    }

    pub(super) fn shared(&self, ino: u64) -> Option<Arc<Shared>> {
        lock(&self.open_files).get(&ino).map(|f| f.shared.clone())
    }

    pub(super) fn staging_path(&self) -> std::path::PathBuf {
        self.staging_dir.join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Registers a handle on `ino`'s open state, creating the state with `body` if needed.
    fn attach(
        &self,
        ino: u64,
        path: &RelPath,
        posix: Posix,
        make: impl FnOnce(String) -> FsResult<Body>,
    ) -> FsResult<Arc<Shared>> {
        let mut files = lock(&self.open_files);
        if let Some(f) = files.get_mut(&ino) {
            f.handles += 1;
            return Ok(f.shared.clone());
        }
        let key = self.layout.file_key(path)?;
        let body = make(key.clone())?;
        let size = match &body {
            Body::Stream(u) => u.size(),
            Body::Staged(s) => s.size(),
        };
        let shared = Arc::new(Shared {
            key: Mutex::new(key),
            size: AtomicU64::new(size),
            posix: Mutex::new(posix),
            meta_dirty: AtomicBool::new(false),
            unlinked: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            body: tokio::sync::Mutex::new(body),
        });
        files.insert(
            ino,
            OpenFile {
                path: path.clone(),
                handles: 1,
                shared: shared.clone(),
            },
        );
        Ok(shared)
    }

    fn new_stream(&self, key: String, posix: &Posix) -> Body {
        Body::Stream(
            Upload::new(
                self.store.clone(),
                key,
                stream_meta(posix),
                self.cfg.part_size,
                self.cfg.upload_inflight,
            )
            .spool_to(self.staging_path(), self.cfg.cache_size),
        )
    }

    /// `creat`/`open(O_CREAT)`. With `exclusive` (`O_EXCL`: lock files, `set -C`) S3 decides,
    /// not this mount's view: the object is created empty with `If-None-Match: *` before this
    /// returns (one more PUT than an ordinary create), a 412 is EEXIST, and the file's
    /// upload later replaces only that object (`If-Match`).
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
    ) -> FsResult<(Attr, u64)> {
        let path = self.child_path(parent, name)?;
        self.check_writable(&path)?;
        match self.stat(&path).await? {
            Some(i) if i.kind == Kind::Dir => {
                return Err(FsError::new(libc::EISDIR, format!("{path}: is a directory")));
            }
            Some(_) if exclusive => return Err(FsError::new(libc::EEXIST, format!("{path}: exists"))),
            _ => {}
        }
        let posix = Posix {
            mode: Some(libc::S_IFREG | (mode & 0o7777)),
            uid: Some(uid),
            gid: Some(gid),
            mtime: Some(SystemTime::now()),
        };
        let created = if exclusive && !self.cfg.local_exclusive_creates {
            Some(self.create_exclusive(&path, &posix).await?)
        } else {
            None
        };
        let ino = lock(&self.inodes).lookup(&path, Kind::File);
        let shared = self.attach(ino, &path, posix, |key| {
            let stream = self.new_stream(key, &posix);
            Ok(match (stream, created) {
                (Body::Stream(up), Some(etag)) => Body::Stream(up.created_as(etag)),
                (body, _) => body,
            })
        })?;
        // Another handle had it open: creat() truncates.
        self.truncate_open(&path, &shared, 0).await?;
        let info = EntryInfo::new(Kind::File, 0, SystemTime::now()).with_posix(posix);
        self.cache.upsert(&path, info);
        let fh = self.new_fh(Handle::File {
            ino,
            reader: None,
            writable: true,
        });
        self.entry_changed(&path);
        self.attributes_changed(ino);
        Ok((self.attr(ino, info), fh))
    }

    /// Creates `path` empty, only if no object is there; returns its ETag.
    async fn create_exclusive(&self, path: &RelPath, posix: &Posix) -> FsResult<Option<String>> {
        let key = self.layout.file_key(path)?;
        match self
            .store
            .put_if(&key, Bytes::new(), &posix.to_meta(), Some(&WriteIf::Absent))
            .await
        {
            Ok(etag) => Ok(etag),
            Err(StoreError::PreconditionFailed { .. }) => {
                // Another host created it: what this mount believed is stale.
                self.cache.forget(path);
                Err(FsError::new(
                    libc::EEXIST,
                    format!("{path}: exists (created elsewhere)"),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let path = self.path_of(ino)?;
        let info = self.stat(&path).await?.ok_or_else(|| FsError::not_found(&path))?;
        if info.kind == Kind::Dir {
            return Err(FsError::new(libc::EISDIR, format!("{path}: is a directory")));
        }
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let trunc = flags & libc::O_TRUNC != 0;
        if writable {
            self.check_writable(&path)?;
            let shared = self.attach(ino, &path, info.posix, |key| {
                if trunc || info.size == 0 {
                    return Ok(self.new_stream(key, &info.posix));
                }
                let base = Base { key, size: info.size };
                let staged = StagedFile::create(self.staging_path(), Some(base), self.cfg.part_size as u64)
                    .map_err(|e| FsError::new(libc::EIO, format!("{path}: cannot create a staging file: {e}")))?;
                self.staging.take(info.size);
                Ok(Body::Staged(staged))
            })?;
            if trunc {
                self.truncate_open(&path, &shared, 0).await?;
                self.attributes_changed(ino);
            }
            return Ok(self.new_fh(Handle::File {
                ino,
                reader: None,
                writable: true,
            }));
        }
        // A reader of a file open for writing reads the open state (see `read`).
        let reader = self.object_reads(ino, &path, info.size)?;
        Ok(self.new_fh(Handle::File {
            ino,
            reader: Some(reader),
            writable: false,
        }))
    }

    /// The reads of `ino`'s object as it is now: shared with the file's other readers while
    /// they read the same version.
    fn object_reads(&self, ino: u64, path: &RelPath, size: u64) -> FsResult<Arc<ObjectReads>> {
        let mut reads = lock(&self.reads);
        reads.retain(|_, r| r.strong_count() > 0);
        if let Some(r) = reads.get(&ino).and_then(Weak::upgrade)
            && r.size() == size
        {
            return Ok(r);
        }
        let key = self.layout.file_key(path)?;
        let r = Arc::new(ObjectReads::new(
            self.store.clone(),
            key,
            size,
            self.cfg.read,
            self.read_budget.clone(),
        ));
        reads.insert(ino, Arc::downgrade(&r));
        Ok(r)
    }

    fn handle_file(&self, fh: u64) -> FsResult<(u64, Option<Arc<ObjectReads>>)> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::File { ino, reader, .. }) => Ok((*ino, reader.clone())),
            _ => Err(FsError::new(libc::EBADF, format!("file handle {fh} is not open"))),
        }
    }

    /// Moves a streaming file to staging; returns the staged file.
    async fn staged<'a>(&self, path: &RelPath, shared: &Shared, body: &'a mut Body) -> FsResult<&'a mut StagedFile> {
        if let Body::Stream(up) = body {
            let staged = if up.has_multipart() {
                // Parts are in S3 already: complete what was written, then stage on top of it.
                up.finish().await.map_err(|e| upload_err(path, e))?;
                StagedFile::create(
                    self.staging_path(),
                    Some(Base {
                        key: shared.key(),
                        size: up.size(),
                    }),
                    self.cfg.part_size as u64,
                )
            } else {
                StagedFile::create(self.staging_path(), None, self.cfg.part_size as u64)
            }
            .map_err(|e| FsError::new(libc::EIO, format!("{path}: cannot create a staging file: {e}")))?;
            let mut staged = staged;
            if !up.has_multipart() {
                let data = up.buffered().to_vec();
                staged
                    .write(self.store.as_ref(), 0, &data)
                    .await
                    .map_err(|e| store_err(path, "staging", e))?;
                if up.is_finished() {
                    staged.mark_uploaded(&shared.key());
                }
            }
            self.staging.take(staged.size());
            *body = Body::Staged(staged);
        }
        match body {
            Body::Staged(s) => Ok(s),
            Body::Stream(_) => Err(FsError::new(libc::EIO, format!("{path}: staging conversion failed"))),
        }
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let (ino, reader) = self.handle_file(fh)?;
        if let Some(shared) = self.shared(ino) {
            let path = self.path_of(ino)?;
            let mut body = shared.body.lock().await;
            let staged = self.staged(&path, &shared, &mut body).await?;
            return staged
                .read(self.store.as_ref(), offset, size as usize)
                .await
                .map_err(|e| store_err(&path, "read", e));
        }
        let reader = reader.ok_or_else(|| FsError::new(libc::EBADF, format!("file handle {fh} cannot read")))?;
        Ok(reader.read(offset, size as usize).await?)
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (ino, _) = self.handle_file(fh)?;
        let path = self.path_of(ino)?;
        let shared = self
            .shared(ino)
            .ok_or_else(|| FsError::new(libc::EBADF, format!("{path}: not open for writing")))?;
        let mut body = shared.body.lock().await;
        let sequential =
            matches!(&*body, Body::Stream(up) if up.size() == offset && !(up.is_finished() && up.has_multipart()));
        if sequential {
            if let Body::Stream(up) = &mut *body {
                up.write(offset, data).await.map_err(|e| upload_err(&path, e))?;
                shared.size.store(up.size(), Ordering::Relaxed);
            }
        } else {
            let end = offset + data.len() as u64;
            let staged = self.staged(&path, &shared, &mut body).await?;
            let growth = end.saturating_sub(staged.size());
            if !self.staging.reserve(growth) {
                return Err(FsError::new(
                    libc::ENOSPC,
                    format!(
                        "{path}: the staging cache is full ({} bytes, --cache-size-mib)",
                        self.staging.limit()
                    ),
                ));
            }
            if let Err(e) = staged.write(self.store.as_ref(), offset, data).await {
                self.staging.release(growth);
                return Err(store_err(&path, "write", e));
            }
            shared.size.store(staged.size(), Ordering::Relaxed);
        }
        lock(&shared.posix).mtime = Some(SystemTime::now());
        Ok(data.len() as u32)
    }

    /// Truncates an open file.
    async fn truncate_open(&self, path: &RelPath, shared: &Shared, size: u64) -> FsResult<()> {
        let mut body = shared.body.lock().await;
        self.truncate_body(path, shared, &mut body, size).await
    }

    /// Truncates an open file whose body the caller holds locked.
    pub(super) async fn truncate_body(
        &self,
        path: &RelPath,
        shared: &Shared,
        body: &mut Body,
        size: u64,
    ) -> FsResult<()> {
        if let Body::Stream(up) = &mut *body
            && size == 0
            && up.reset().is_ok()
        {
            shared.size.store(0, Ordering::Relaxed);
            return Ok(());
        }
        if let Body::Stream(up) = &*body
            && up.size() == size
        {
            return Ok(());
        }
        let staged = self.staged(path, shared, body).await?;
        let old = staged.size();
        staged
            .truncate(self.store.as_ref(), size)
            .await
            .map_err(|e| store_err(path, "truncate", e))?;
        if size > old {
            self.staging.take(size - old);
        } else {
            self.staging.release(old - size);
        }
        shared.size.store(size, Ordering::Relaxed);
        lock(&shared.posix).mtime = Some(SystemTime::now());
        Ok(())
    }

    /// Uploads what changed in `ino`'s open state; the error is the upload's.
    async fn flush_ino(&self, ino: u64) -> FsResult<()> {
        let Some(shared) = self.shared(ino) else { return Ok(()) };
        let path = self.path_of(ino)?;
        let mut body = shared.body.lock().await;
        self.flush_body(&path, &shared, &mut body).await
    }

    async fn flush_body(&self, path: &RelPath, shared: &Shared, body: &mut Body) -> FsResult<()> {
        if shared.unlinked.load(Ordering::Relaxed) {
            return Ok(());
        }
        let key = shared.key();
        let posix = *lock(&shared.posix);
        let meta = posix.to_meta();
        let meta_dirty = shared.meta_dirty.load(Ordering::Relaxed);
        let update_meta = || async {
            self.store
                .copy(&key, &key, Some(&meta))
                .await
                .map_err(|e| store_err(path, "metadata update", e))
        };
        match body {
            Body::Stream(up) => {
                let late_meta = !up.set_meta(stream_meta(&posix));
                if !up.is_finished()
                    && let Err(e) = up.finish().await
                {
                    // Another host replaced an exclusively created file: this write must
                    // never land (the last close keeps it in lost+found instead).
                    let replaced = matches!(&e, UploadError::Store(StoreError::PreconditionFailed { .. }));
                    let err = upload_err(path, e);
                    // Keep the bytes: a small file moves to staging, so the next flush or
                    // close tries again and nothing is lost.
                    if !up.has_multipart() && !replaced {
                        let _ = self.staged(path, shared, body).await;
                    }
                    return Err(err);
                }
                if late_meta || meta_dirty {
                    update_meta().await?;
                }
            }
            Body::Staged(staged) => {
                if staged.is_modified() {
                    staged
                        .upload(&self.store, &key, &meta)
                        .await
                        .map_err(|e| store_err(path, "upload", e))?;
                } else if meta_dirty {
                    update_meta().await?;
                }
            }
        }
        shared.meta_dirty.store(false, Ordering::Relaxed);
        let size = shared.size.load(Ordering::Relaxed);
        self.cache.upsert(
            path,
            EntryInfo::new(Kind::File, size, SystemTime::now()).with_posix(posix),
        );
        Ok(())
    }

    /// Renames a file that is open here: its pending data is uploaded first, then the object
    /// moves, and the open state follows it to the new key.
    pub(super) async fn rename_open_file(&self, ino: u64, from: &RelPath, to: &RelPath) -> FsResult<bool> {
        let Some(shared) = self.shared(ino) else {
            return Ok(false);
        };
        let mut body = shared.body.lock().await;
        self.flush_body(from, &shared, &mut body).await?;
        let (src, dst) = (shared.key(), self.layout.file_key(to)?);
        self.store.copy(&src, &dst, None).await?;
        self.ns.delete_keys(vec![src]).await?;
        self.reanchor(ino, &shared, &mut body, to)
    }

    /// Points an open file's state at the object now at `to` (after a rename moved it).
    fn reanchor(&self, ino: u64, shared: &Shared, body: &mut Body, to: &RelPath) -> FsResult<bool> {
        let dst = self.layout.file_key(to)?;
        let size = shared.size.load(Ordering::Relaxed);
        let staged = StagedFile::create(
            self.staging_path(),
            Some(Base { key: dst.clone(), size }),
            self.cfg.part_size as u64,
        )
        .map_err(|e| FsError::new(libc::EIO, format!("{to}: cannot create a staging file: {e}")))?;
        if let Body::Staged(old) = &*body {
            self.staging.release(old.size());
        }
        self.staging.take(size);
        *body = Body::Staged(staged);
        *lock(&shared.key) = dst;
        if let Some(f) = lock(&self.open_files).get_mut(&ino) {
            f.path = to.clone();
        }
        Ok(true)
    }

    /// Before a directory rename: uploads every open file below `dir`; returns them.
    pub(super) async fn flush_open_under(&self, dir: &RelPath) -> FsResult<Vec<(u64, RelPath)>> {
        let open: Vec<(u64, RelPath)> = lock(&self.open_files)
            .iter()
            .filter(|(_, f)| f.path.starts_with(dir) && !f.unlinked())
            .map(|(ino, f)| (*ino, f.path.clone()))
            .collect();
        for (ino, _) in &open {
            self.flush_ino(*ino).await?;
        }
        Ok(open)
    }

    /// After a directory rename: open files below it follow their objects.
    pub(super) async fn reanchor_moved(
        &self,
        moved: Vec<(u64, RelPath)>,
        from: &RelPath,
        to: &RelPath,
    ) -> FsResult<()> {
        for (ino, path) in moved {
            let Some(shared) = self.shared(ino) else { continue };
            let mut body = shared.body.lock().await;
            self.reanchor(ino, &shared, &mut body, &path.rebase(from, to))?;
        }
        Ok(())
    }

    /// `close` (every one; `sync` false) and `fsync` (`sync` true): what was written is in
    /// S3 when this returns Ok.
    ///
    /// A close of a file created (or truncated by `O_TRUNC`) that nobody has written to yet
    /// uploads nothing: the shell's `echo x > f` closes a duplicate of the descriptor before
    /// it writes, and an upload there would cost a second PUT per file. Such a file is
    /// uploaded at its last close (`release`) or at `fsync`.
    pub async fn flush(&self, fh: u64, sync: bool) -> FsResult<()> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::File { writable: true, .. }) => {}
            _ => return Ok(()),
        }
        let (ino, _) = self.handle_file(fh)?;
        if !sync && let Some(shared) = self.shared(ino) {
            let body = shared.body.lock().await;
            if matches!(&*body, Body::Stream(up) if up.size() == 0 && !up.is_finished() && !up.has_multipart()) {
                return Ok(());
            }
        }
        self.flush_ino(ino).await
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let handle = lock(&self.handles).remove(&fh);
        let Some(Handle::File {
            ino, writable: true, ..
        }) = handle
        else {
            return Ok(());
        };
        let last = match lock(&self.open_files).get_mut(&ino) {
            Some(f) => {
                f.handles -= 1;
                f.handles == 0
            }
            None => false,
        };
        if !last {
            return Ok(());
        }
        let result = self.flush_ino(ino).await;
        // Another open may have attached while we were uploading: then the state stays.
        let file = {
            let mut files = lock(&self.open_files);
            match files.get(&ino) {
                Some(f) if f.handles == 0 => files.remove(&ino),
                _ => None,
            }
        };
        let Some(file) = file else { return result };
        let mut body = file.shared.body.lock().await;
        file.shared.detached.store(true, Ordering::Relaxed);
        // A truncate or chmod by path (no handle) may have changed the state between the
        // upload above and now (the kernel sends `release` after `close` returned): upload
        // that too, or it would be silently undone.
        let changed = file.shared.meta_dirty.load(Ordering::Relaxed)
            || match &*body {
                Body::Staged(s) => s.is_modified(),
                Body::Stream(up) => !up.is_finished(),
            };
        let result = match result {
            Ok(()) if changed => self.flush_body(&file.path, &file.shared, &mut body).await,
            r => r,
        };
        if let Body::Staged(s) = &*body {
            self.staging.release(s.size());
        }
        if let Err(e) = &result {
            let dir = self.cfg.cache_dir.join("lost+found");
            let name = crate::data::kept::name_for(file.path.as_str());
            let kept = match &mut *body {
                Body::Staged(s) => s.keep(self.store.as_ref(), &dir, &name).await,
                Body::Stream(up) => {
                    let kept = up.keep(&dir, &name).await;
                    up.abort().await;
                    kept
                }
            };
            match kept {
                Ok(k) if k.is_complete() => {
                    tracing::error!(path = %file.path, error = %e, "could not upload at close; {k}")
                }
                Ok(k) => {
                    tracing::error!(path = %file.path, error = %e, "could not upload at close; only part of the data could be kept: {k}")
                }
                Err(io) => {
                    tracing::error!(path = %file.path, error = %e, io = %io, "could not upload at close, nor keep the data locally: the write is lost")
                }
            }
            // What S3 has is what it had before (or nothing): ask it again, rather than
            // take the path for removed.
            self.cache.forget(&file.path);
        }
        result
    }

    pub(super) fn forget_open(&self, path: &RelPath) {
        let Some(ino) = lock(&self.inodes).find(path) else {
            return;
        };
        if let Some(f) = lock(&self.open_files).get(&ino) {
            f.shared.unlinked.store(true, Ordering::Relaxed);
        }
    }

    /// Uploads every open file and sends every deferred delete (before unmount); false if
    /// something did not reach S3 (each failure is logged).
    pub async fn flush_all(&self) -> bool {
        let mut all = self.flush_open_files().await;
        if let Err(e) = self.store.flush().await {
            all = false;
            tracing::error!(error = %e, "deletes acknowledged to programs did not reach S3 before unmount; they are kept in the journal and the next mount of this cache directory sends them");
        }
        all
    }

    async fn flush_open_files(&self) -> bool {
        let inos: Vec<u64> = lock(&self.open_files).keys().copied().collect();
        let mut all = true;
        for ino in inos {
            if let Err(e) = self.flush_ino(ino).await {
                all = false;
                tracing::error!(ino, error = %e, "could not upload an open file at unmount");
            }
        }
        all
    }
}
