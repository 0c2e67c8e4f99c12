//! Files open through this mount: one state per inode ([`OpenState`]), shared by all its
//! handles, owned here whole. The rest of the filesystem speaks to it in intents (`write`,
//! `setattr`, `flush`, `release`...) by inode, and asks the [`OpenTable`] what is being
//! written at a path; nothing outside this module locks or changes an open file's state.
//!
//! A file written from its start (create, `O_TRUNC`) streams straight to S3 ([`Upload`]).
//! Anything else (append, a write at an offset, a truncate to a non-zero size, a read of a
//! file being written) moves the file to a local staging file ([`StagedFile`]). `flush`,
//! `fsync` and the last `close` upload what changed and return the upload's error; data that
//! cannot be uploaded at the last close is kept under `lost+found/` in the cache directory
//! ([`close`]).

mod carried;
mod close;
mod rename;
mod state;
mod upload;

pub(super) use carried::nothing_to_carry;

use super::budget::StagingBudget;
use super::cache::EntryInfo;
use super::error::{FsError, FsResult, staging_err, upload_err};
use super::namespace::Namespace;
use super::posix::Posix;
use super::{FilesConfig, lock};
use crate::data::memory::{MemoryTarget, MemoryUsage};
use crate::data::read::{ObjectReads, ReadBudget};
use crate::data::staging::{Base, StagedFile};
use crate::data::upload::Upload;
use crate::layout::RelPath;
use crate::store::WriteIf;
use bytes::Bytes;
use carried::{Carried, carried_of};
use state::{Body, Life, OpenState, State, stream_meta};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

struct OpenFile {
    path: RelPath,
    handles: usize,
    state: Arc<OpenState>,
}

impl OpenFile {
    fn linked(&self) -> bool {
        self.state.life() == Life::Open
    }
}

/// The files open through a mount, by inode, with their paths: what the namespace asks
/// about files being written that S3 may not have yet (their size so far, their metadata;
/// emptiness checks count them). [`OpenFiles`] is its only writer.
#[derive(Default)]
pub struct OpenTable(Mutex<HashMap<u64, OpenFile>>);

impl OpenTable {
    /// The file being written at `path`, if any (not one unlinked while open). One pass over
    /// the open files, no request.
    pub(super) fn at(&self, path: &RelPath) -> Option<EntryInfo> {
        lock(&self.0)
            .values()
            .find(|f| f.path == *path && f.linked())
            .map(|f| f.state.info())
    }

    /// The files being written directly in `dir`, by name.
    pub(super) fn in_dir(&self, dir: &RelPath) -> Vec<(String, EntryInfo)> {
        lock(&self.0)
            .values()
            .filter(|f| f.linked() && f.path.parent().as_ref() == Some(dir))
            .map(|f| (f.path.name().to_string(), f.state.info()))
            .collect()
    }
}

/// How a file's open state starts, when the open makes one.
pub(super) enum Start {
    /// Written from its start: a stream to S3. `created`: an exclusive create made the empty
    /// object already.
    New { created: bool },
    /// Modified in place: a staging file over the object (`size` bytes, version `etag`),
    /// fetched chunk by chunk as it is touched, counted whole in the staging budget.
    Over { size: u64, etag: Option<String> },
}

/// The files open through a mount: their states (the [`OpenTable`]), the reads shared by
/// each file's readers, the staging budget and directory, and lost+found. It works on
/// inodes and paths the [`Core`](super::Core) resolved; the namespace learns what it
/// uploads.
pub(super) struct OpenFiles {
    ns: Arc<Namespace>,
    table: Arc<OpenTable>,
    staging: StagingBudget,
    /// This mount's staging files (`<cache dir>/staging/<pid>`).
    staging_dir: PathBuf,
    /// The reads of each file open for reading (shared by its handles), with what the file
    /// was when opened, for `fstat` once its name is gone.
    reads: Mutex<HashMap<u64, (Weak<ObjectReads>, EntryInfo)>>,
    /// The mount's read-ahead budget.
    read_budget: ReadBudget,
    /// The mount's memory target (read-ahead and part buffers draw from it).
    memory: Option<MemoryTarget>,
    cfg: FilesConfig,
}

impl OpenFiles {
    pub(super) fn new(ns: Arc<Namespace>, table: Arc<OpenTable>, cfg: FilesConfig, staging_dir: PathBuf) -> Self {
        let memory = cfg.memory_target.map(|(target, pool)| MemoryTarget::new(target, pool));
        let read_budget = ReadBudget::new(cfg.read_budget);
        OpenFiles {
            staging: StagingBudget::new(cfg.cache_size),
            read_budget: match &memory {
                Some(m) => read_budget.within(m.clone()),
                None => read_budget,
            },
            memory,
            reads: Mutex::new(HashMap::new()),
            table,
            staging_dir,
            ns,
            cfg,
        }
    }

    /// What the memory target holds now, when the mount has one.
    pub fn memory_usage(&self) -> Option<MemoryUsage> {
        self.memory.as_ref().map(MemoryTarget::usage)
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenFile>> {
        lock(&self.table.0)
    }

    fn get(&self, ino: u64) -> Option<Arc<OpenState>> {
        self.files().get(&ino).map(|f| f.state.clone())
    }

    /// Open files (their states) at present.
    pub(super) fn len(&self) -> usize {
        self.files().len()
    }

    /// The data cache on disk, when the mount has one.
    pub(super) fn data_cache(&self) -> Option<&crate::data::cache::BlockCache> {
        self.cfg.data_cache.as_deref()
    }

    /// Bytes of files staged locally at present.
    pub(super) fn staged_bytes(&self) -> u64 {
        self.staging.used()
    }

    /// Removes this mount's staging directory (at unmount, after the last upload).
    pub(super) fn clean_staging(&self) {
        let _ = std::fs::remove_dir_all(&self.staging_dir);
    }

    /// True while `ino` has an open state here (unlinked or not).
    pub(super) fn is_open(&self, ino: u64) -> bool {
        self.files().contains_key(&ino)
    }

    /// The inode of the file open (and not unlinked) at `path`.
    pub(super) fn open_at(&self, path: &RelPath) -> Option<u64> {
        self.files()
            .iter()
            .find(|(_, f)| f.path == *path && f.linked())
            .map(|(ino, _)| *ino)
    }

    /// The open state's attributes of `ino`, and whether it was unlinked.
    pub(super) fn open_info_of(&self, ino: u64) -> Option<(EntryInfo, bool)> {
        self.files()
            .get(&ino)
            .map(|f| (f.state.info(), f.state.life() == Life::Unlinked))
    }

    fn staging_path(&self) -> std::path::PathBuf {
        self.staging_dir.join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Registers a handle on `ino`'s open state, creating the state as `start` says if
    /// needed, to replace the version `expect` at the key (see [`State`]), keeping what
    /// `carry` says must be fetched of the object there (a HEAD, its tags: see [`Carried`]).
    /// With `truncate` (`creat`, `O_TRUNC`), a state another handle had open is truncated.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attach(
        &self,
        ino: u64,
        path: &RelPath,
        posix: Posix,
        expect: Option<WriteIf>,
        carry: Option<(bool, bool)>,
        start: Start,
        truncate: bool,
    ) -> FsResult<()> {
        let existing = {
            let mut files = self.files();
            match files.get_mut(&ino) {
                Some(f) => {
                    f.handles += 1;
                    Some(f.state.clone())
                }
                None => {
                    let key = self.ns.layout().file_key(path)?;
                    let body = match start {
                        Start::New { created } => {
                            let up = Upload::new(
                                self.ns.store().clone(),
                                key.clone(),
                                stream_meta(&posix),
                                self.cfg.part_size,
                                self.cfg.upload_inflight,
                            )
                            .spool_to(self.staging_path(), self.cfg.cache_size);
                            let up = match &self.memory {
                                Some(m) => up.within(m.clone()),
                                None => up,
                            };
                            let up = match &self.cfg.data_cache {
                                Some(_) => up.keep_whole_copy(),
                                None => up,
                            };
                            Body::Stream(if created { up.created() } else { up })
                        }
                        Start::Over { size, etag } => {
                            let base = Base {
                                key: key.clone(),
                                size,
                                etag,
                            };
                            let staged = self.staging_file(path, Some(base))?;
                            self.staging.take(size);
                            Body::Staged(staged)
                        }
                    };
                    let carried = match carry {
                        Some((head, tags)) => Carried::fetch(self.ns.store(), &key, head, tags && self.cfg.keep_tags),
                        None => Carried::Nothing,
                    };
                    let state = Arc::new(OpenState::new(key, body, posix, expect, carried));
                    files.insert(
                        ino,
                        OpenFile {
                            path: path.clone(),
                            handles: 1,
                            state,
                        },
                    );
                    None
                }
            }
        };
        if let Some(open) = existing
            && truncate
        {
            let mut st = open.lock().await;
            self.truncate_held(path, &open, &mut st, 0).await?;
        }
        Ok(())
    }

    /// Truncates `path`, a file nobody has open and `info` describes, to `size` in S3, with
    /// `posix` as its metadata, over the version `info` names only (when known): an empty
    /// PUT, or the kept part (ranged GETs of that version) through a staging file and
    /// uploaded. Returns the new version's ETag.
    pub(super) async fn truncate_closed(
        &self,
        path: &RelPath,
        info: &EntryInfo,
        size: u64,
        posix: &Posix,
    ) -> FsResult<Option<String>> {
        let (old_size, etag) = (info.size, info.version());
        let key = self.ns.layout().file_key(path)?;
        // What another client stored with the object stays, by the rule an open for writing
        // follows: a HEAD unless one showed nothing to keep, the tags unless this mount
        // wrote the version without any.
        let (head, tags) = (!info.plain, !info.tagless && self.cfg.keep_tags);
        let (mut meta, headers) = carried_of(self.ns.store().as_ref(), &key, head, tags).await?;
        meta.extend(posix.to_meta());
        let cond = etag.map(|e| WriteIf::Matches(e.to_string()));
        if size == 0 {
            return Ok(self
                .ns
                .store()
                .put_with(&key, Bytes::new(), &meta, Some(&headers), cond.as_ref())
                .await?);
        }
        let base = Base {
            key: key.clone(),
            size: old_size,
            etag: etag.map(str::to_string),
        };
        let mut staged = self.staging_file(path, Some(base))?;
        staged
            .truncate(self.ns.store().as_ref(), size)
            .await
            .map_err(|e| staging_err(path, "truncate", e))?;
        let (_, etag) = staged
            .upload(self.ns.store(), &key, &meta, Some(&headers), cond.as_ref())
            .await
            .map_err(|e| staging_err(path, "truncate", e))?;
        Ok(etag)
    }

    /// What `ino` was when it was opened for reading, while a reader still has it open.
    pub(super) fn read_info(&self, ino: u64) -> Option<EntryInfo> {
        lock(&self.reads)
            .get(&ino)
            .filter(|r| r.0.strong_count() > 0)
            .map(|r| r.1.clone())
    }

    /// The reads of `ino`'s object as it is now: shared with the file's other readers while
    /// they read the same version.
    pub(super) fn object_reads(&self, ino: u64, path: &RelPath, info: &EntryInfo) -> FsResult<Arc<ObjectReads>> {
        let size = info.size;
        let mut reads = lock(&self.reads);
        reads.retain(|_, r| r.0.strong_count() > 0);
        if let Some(r) = reads.get(&ino).and_then(|r| r.0.upgrade())
            && r.size() == size
            && r.etag() == info.version()
        {
            return Ok(r);
        }
        let key = self.ns.layout().file_key(path)?;
        let r = Arc::new(
            ObjectReads::new(
                self.ns.store().clone(),
                key,
                size,
                self.cfg.read,
                self.read_budget.clone(),
            )
            .pinned(info.version().map(str::to_string))
            .cached(self.cfg.data_cache.clone()),
        );
        reads.insert(ino, (Arc::downgrade(&r), info.clone()));
        Ok(r)
    }

    /// Moves a streaming file to staging; returns the staged file.
    async fn staged<'a>(&self, path: &RelPath, st: &'a mut State) -> FsResult<&'a mut StagedFile> {
        if let Body::Stream(up) = &mut st.body {
            let base = if up.has_multipart() {
                // Parts are in S3 already: complete what was written, then stage on top of it.
                up.finish(st.expect.as_ref()).await.map_err(|e| upload_err(path, e))?;
                st.expect = up.written_etag().map(|e| WriteIf::Matches(e.to_string()));
                Some(Base {
                    key: st.key.clone(),
                    size: up.size(),
                    etag: up.written_etag().map(str::to_string),
                })
            } else {
                None
            };
            let mut staged = self.staging_file(path, base)?;
            if !up.has_multipart() {
                let data = up.buffered().to_vec();
                staged
                    .write(self.ns.store().as_ref(), 0, &data)
                    .await
                    .map_err(|e| staging_err(path, "staging", e))?;
                if up.is_finished() {
                    staged.mark_uploaded(&st.key, up.written_etag().map(str::to_string));
                }
            }
            self.staging.take(staged.size());
            st.body = Body::Staged(staged);
        }
        match &mut st.body {
            Body::Staged(s) => Ok(s),
            // Rust cannot yet return the borrow of a match arm and replace the value in the
            // other (the body became Staged just above).
            Body::Stream(_) => Err(FsError::new(libc::EIO, format!("{path}: staging conversion failed"))),
        }
    }

    /// A new staging file for `path`: over the object `base` (fetched chunk by chunk as it is
    /// touched), or empty.
    fn staging_file(&self, path: &RelPath, base: Option<Base>) -> FsResult<StagedFile> {
        StagedFile::create(self.staging_path(), base, self.cfg.part_size as u64)
            .map(|f| f.within(self.memory.clone()))
            .map_err(|e| FsError::new(libc::EIO, format!("{path}: cannot create a staging file: {e}")))
    }

    /// A read of `ino` while it has an open state (what this mount wrote, not yet in S3):
    /// from staging. None when it has none (the caller reads the object).
    pub(super) async fn read(&self, ino: u64, path: &RelPath, offset: u64, size: u32) -> FsResult<Option<Bytes>> {
        let Some(open) = self.get(ino) else { return Ok(None) };
        let mut st = open.lock().await;
        let staged = self.staged(path, &mut st).await?;
        staged
            .read(self.ns.store().as_ref(), offset, size as usize)
            .await
            .map(Some)
            .map_err(|e| staging_err(path, "read", e))
    }

    /// A write to `ino`'s open state: appended to its upload when it continues it, else
    /// into staging (ENOSPC past the staging budget).
    pub(super) async fn write(&self, ino: u64, path: &RelPath, offset: u64, data: &[u8]) -> FsResult<u32> {
        let open = self
            .get(ino)
            .ok_or_else(|| FsError::new(libc::EBADF, format!("{path}: not open for writing")))?;
        let mut st = open.lock().await;
        let sequential =
            matches!(&st.body, Body::Stream(up) if up.size() == offset && !(up.is_finished() && up.has_multipart()));
        let size = if sequential {
            if let Body::Stream(up) = &st.body
                && !up.has_multipart()
            {
                // A multipart upload takes its metadata when it starts.
                let own = stream_meta(&open.posix());
                let (meta, headers) = st.upload_attrs(self.ns.store(), path, own).await?;
                if let Body::Stream(up) = &mut st.body {
                    up.set_attrs(meta, headers);
                }
            }
            match &mut st.body {
                Body::Stream(up) => {
                    up.write(offset, data).await.map_err(|e| upload_err(path, e))?;
                    up.size()
                }
                Body::Staged(s) => s.size(),
            }
        } else {
            let end = offset + data.len() as u64;
            let staged = self.staged(path, &mut st).await?;
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
            if let Err(e) = staged.write(self.ns.store().as_ref(), offset, data).await {
                self.staging.release(growth);
                return Err(staging_err(path, "write", e));
            }
            staged.size()
        };
        open.resized(&st, size);
        open.modified(&st);
        Ok(data.len() as u32)
    }

    /// Truncates an open file whose state the caller holds.
    async fn truncate_held(&self, path: &RelPath, open: &OpenState, st: &mut State, size: u64) -> FsResult<()> {
        if let Body::Stream(up) = &mut st.body
            && size == 0
            && up.reset().is_ok()
        {
            open.resized(st, 0);
            return Ok(());
        }
        if let Body::Stream(up) = &st.body
            && up.size() == size
        {
            return Ok(());
        }
        let staged = self.staged(path, st).await?;
        let old = staged.size();
        staged
            .truncate(self.ns.store().as_ref(), size)
            .await
            .map_err(|e| staging_err(path, "truncate", e))?;
        if size > old {
            self.staging.take(size - old);
        } else {
            self.staging.release(old - size);
        }
        open.resized(st, size);
        open.modified(st);
        Ok(())
    }

    /// A setattr of `ino` while it is open here: the size (`size`) and `posix` go into the
    /// open state, and its next upload (the last close at the latest) writes them;
    /// `meta_change` says the POSIX metadata changed. Returns what the file is now, or None
    /// when it has no open state (or the last close detached it: then the change is one to
    /// a closed file, made in S3 by the caller).
    pub(super) async fn setattr(
        &self,
        ino: u64,
        path: &RelPath,
        size: Option<u64>,
        posix: Posix,
        meta_change: bool,
    ) -> FsResult<Option<EntryInfo>> {
        let Some(open) = self.get(ino) else { return Ok(None) };
        // Under the state's lock: the last close either uploads what this changes or has
        // detached the state already.
        let mut st = open.lock().await;
        if open.life() == Life::Closed {
            return Ok(None);
        }
        if let Some(size) = size {
            self.truncate_held(path, &open, &mut st, size).await?;
        }
        open.set_posix(&st, posix);
        if meta_change {
            st.dirty.meta = true;
        }
        // From the state itself: the last close may take it out of the table now, before
        // its upload has updated the cache.
        Ok(Some(open.info()))
    }

    /// The extended attributes header an open file's next upload carries; None when `ino`
    /// has no open state (the caller asks the namespace).
    pub(super) async fn xattr_header(&self, ino: u64, path: &RelPath) -> FsResult<Option<Option<String>>> {
        let Some(open) = self.get(ino) else { return Ok(None) };
        let mut st = open.lock().await;
        if open.life() == Life::Closed {
            return Ok(None);
        }
        st.xattr_header(self.ns.store(), path).await.map(Some)
    }

    /// Applies `change` to an open file's extended attributes, for its next upload; false
    /// when `ino` has no open state (the caller changes the object).
    pub(super) async fn change_xattrs(
        &self,
        ino: u64,
        path: &RelPath,
        change: &super::xattr::Change<'_>,
    ) -> FsResult<bool> {
        let Some(open) = self.get(ino) else { return Ok(false) };
        let mut st = open.lock().await;
        if open.life() == Life::Closed {
            return Ok(false);
        }
        st.change_xattrs(self.ns.store(), path, &open.posix(), change).await?;
        Ok(true)
    }
}
