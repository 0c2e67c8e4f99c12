//! Files open through this mount: one state per inode, shared by all its handles.
//!
//! A file written from its start (create, `O_TRUNC`) streams straight to S3 ([`Upload`]).
//! Anything else (append, a write at an offset, a truncate to a non-zero size, a read of a
//! file being written) moves the file to a local staging file ([`StagedFile`]). `flush`,
//! `fsync` and the last `close` upload what changed and return the upload's error; data that
//! cannot be uploaded at the last close is kept under `lost+found/` in the cache directory.

use super::budget::StagingBudget;
use super::cache::{EntryInfo, Kind};
use super::error::{FsError, FsResult, staging_err, store_err, upload_err};
use super::lock;
use super::namespace::Namespace;
use super::posix::Posix;
use crate::data::read::{ObjectReads, ReadBudget};
use crate::data::staging::{Base, StagedFile};
use crate::data::upload::{Upload, UploadError};
use crate::layout::RelPath;
use crate::store::{CopySpec, DeleteTarget, Headers, ObjectMeta, StoreError, StoreResult, UserMeta, WriteIf};
use bytes::Bytes;
use std::collections::HashMap;
use std::path::PathBuf;
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
    /// Extended attributes changed since the last upload: they travel in what the upload
    /// carries, so only an upload already made needs the metadata update for them.
    xattrs_dirty: AtomicBool,
    unlinked: AtomicBool,
    /// The last handle closed and the state left the open-file table: a change made to it
    /// now would never be uploaded, so setattr treats the file as closed.
    pub(super) detached: AtomicBool,
    /// The version at the key that the next upload replaces: `Absent` for a file new to
    /// S3, `Matches` the one opened or last uploaded; None when no version is known. Every
    /// upload is conditional on it (S3 decides), so a file another client wrote meanwhile
    /// stays theirs: the upload fails (EIO), and the last close keeps this mount's bytes in
    /// lost+found.
    expect: Mutex<Option<WriteIf>>,
    /// What the object this file rewrites holds that the mount does not own.
    carried: tokio::sync::Mutex<Carried>,
    pub(super) body: tokio::sync::Mutex<Body>,
}

/// True when the object `m` describes holds nothing a rewrite must keep ([`Carried`]): no
/// user metadata but the mount's, and the headers S3 gives an object nobody set them on.
pub(super) fn nothing_to_carry(m: &ObjectMeta) -> bool {
    m.user_meta.keys().all(|k| Posix::OWNED_KEYS.contains(&k.as_str())) && default_headers(&m.headers)
}

/// The headers S3 gives an object nobody set them on.
fn default_headers(h: &Headers) -> bool {
    matches!(
        h.content_type.as_deref(),
        None | Some("binary/octet-stream" | "application/octet-stream")
    ) && h.content_encoding.is_none()
        && h.cache_control.is_none()
        && h.content_disposition.is_none()
        && h.content_language.is_none()
        && matches!(h.storage_class.as_deref(), None | Some("STANDARD"))
        && h.tagging.is_none()
}

/// What a rewrite keeps of the object it replaces: every user metadata key the mount does
/// not own, the standard headers (Content-Type, Content-Encoding, Cache-Control, storage
/// class...) and the tags, which another client put there. Learnt from a HEAD and a
/// GetObjectTagging (each only when the cache cannot tell), sent at once when the file is
/// opened for writing and awaited by the first upload (or the first write that could start
/// one); a new file has none.
pub(super) enum Carried {
    Nothing,
    /// Being fetched (a HEAD when the first flag says, the tags when the second does).
    Pending(tokio::task::JoinHandle<StoreResult<(UserMeta, Headers)>>, (bool, bool)),
    /// A fetch failed: the next upload tries again (it must not go without).
    Failed((bool, bool)),
    Known(Box<(UserMeta, Headers)>),
}

impl Carried {
    /// What the object at `key` holds, fetched from now on (see [`carried_of`]).
    pub(super) fn fetch(store: &Arc<dyn crate::store::ObjectStore>, key: &str, head: bool, tags: bool) -> Carried {
        if !head && !tags {
            return Carried::Nothing;
        }
        let (store, key) = (store.clone(), key.to_string());
        let task = tokio::spawn(async move { carried_of(store.as_ref(), &key, head, tags).await });
        Carried::Pending(task, (head, tags))
    }
}

/// What a rewrite keeps of the object at `key`: its foreign metadata and headers (a HEAD)
/// when `head`, its tags (GetObjectTagging) when `tags`, both in flight together.
async fn carried_of(
    store: &dyn crate::store::ObjectStore,
    key: &str,
    head: bool,
    tags: bool,
) -> StoreResult<(UserMeta, Headers)> {
    let (m, t) = tokio::join!(
        async {
            match head {
                true => store.head(key).await.map(Some),
                false => Ok(None),
            }
        },
        async {
            match tags {
                true => tags_of(store, key).await,
                false => Ok(None),
            }
        }
    );
    let (meta, mut headers) = m?
        .map(|m: ObjectMeta| (super::posix::foreign_meta(m.user_meta), m.headers))
        .unwrap_or_default();
    headers.tagging = t?;
    Ok((meta, headers))
}

/// The tags of `key`; none where the server does not keep tags (NotImplemented) or the
/// credentials may not read them (AccessDenied: a policy without s3:GetObjectTagging),
/// said once in the log, rather than fail every rewrite.
async fn tags_of(store: &dyn crate::store::ObjectStore, key: &str) -> StoreResult<Option<String>> {
    static NO_TAGS: std::sync::Once = std::sync::Once::new();
    static DENIED: std::sync::Once = std::sync::Once::new();
    match store.get_tagging(key).await {
        Err(StoreError::Client { code, .. } | StoreError::Server { code, .. }) if code == "NotImplemented" => {
            NO_TAGS.call_once(|| {
                tracing::warn!(
                    "this S3 server does not keep object tags (GetObjectTagging: NotImplemented): rewrites carry none"
                )
            });
            Ok(None)
        }
        Err(e @ StoreError::Client { status: 403, .. }) => {
            DENIED.call_once(|| {
                tracing::warn!(error = %e, "these credentials may not read object tags (s3:GetObjectTagging): a rewrite of a tagged object drops its tags; grant the permission, or pass --drop-tags-on-rewrite to say so")
            });
            Ok(None)
        }
        r => r,
    }
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
    /// The user metadata and headers a rewrite keeps (see [`Carried`]): waits for the fetch
    /// the first time. An object gone meanwhile keeps nothing (its upload then fails its
    /// condition); a fetch that fails fails the upload, rather than drop what the object
    /// holds, and the next upload fetches again.
    async fn carried(
        &self,
        store: &Arc<dyn crate::store::ObjectStore>,
        path: &RelPath,
    ) -> FsResult<Option<(UserMeta, Headers)>> {
        let mut c = self.carried.lock().await;
        if let Carried::Failed((head, tags)) = &*c {
            *c = Carried::fetch(store, &self.key(), *head, *tags);
        }
        if let Carried::Pending(h, what) = &mut *c {
            let what = *what;
            let fetched = h.await.unwrap_or_else(|e| {
                Err(StoreError::Transport {
                    op: "head",
                    key: self.key(),
                    message: format!("task failed: {e}"),
                })
            });
            *c = match fetched {
                Ok(k) => Carried::Known(Box::new(k)),
                Err(e) if e.is_not_found() => Carried::Nothing,
                Err(e) => {
                    *c = Carried::Failed(what);
                    return Err(store_err(path, "reading what the object it rewrites holds", e));
                }
            };
        }
        Ok(match &*c {
            Carried::Known(k) => Some((**k).clone()),
            _ => None,
        })
    }

    /// The extended attributes header of this open file (s3fs's `xattr`): what its next
    /// upload carries.
    pub(super) async fn xattr_header(
        &self,
        store: &Arc<dyn crate::store::ObjectStore>,
        path: &RelPath,
    ) -> FsResult<Option<String>> {
        Ok(self
            .carried(store, path)
            .await?
            .and_then(|(mut m, _)| m.remove(super::xattr::KEY)))
    }

    /// Applies `change` to this open file's extended attributes: the next upload (the last
    /// close at the latest) writes them. The caller holds the body's lock.
    pub(super) async fn change_xattrs(
        &self,
        store: &Arc<dyn crate::store::ObjectStore>,
        path: &RelPath,
        change: &super::xattr::Change<'_>,
    ) -> FsResult<()> {
        let (meta, headers) = self.carried(store, path).await?.unwrap_or_default();
        let header = change.apply(meta.get(super::xattr::KEY).map(String::as_str), path)?;
        // Checked with the POSIX keys the upload adds.
        let mut all = meta.clone();
        all.extend(lock(&self.posix).to_meta());
        super::xattr::with_header(all, header.clone(), path)?;
        let meta = super::xattr::with_header(meta, header, path)?;
        *self.carried.lock().await = Carried::Known(Box::new((meta, headers)));
        self.xattrs_dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The storage class the last upload carried from the object before it (a rename's copy
    /// asks for it), as headers for the copy.
    fn class_headers(&self) -> Option<Headers> {
        let c = self.carried.try_lock().ok()?;
        match &*c {
            Carried::Known(k) => crate::store::StorageClass::of(k.1.storage_class.as_deref()).copy_headers(),
            _ => None,
        }
    }

    /// True when the upload of this file carries nothing from an object before it (so the
    /// object it made holds nothing a later rewrite must keep).
    fn carries_nothing(&self) -> bool {
        match self.carried.try_lock() {
            Ok(c) => match &*c {
                Carried::Nothing => true,
                Carried::Known(k) => k.0.is_empty() && default_headers(&k.1),
                Carried::Pending(..) | Carried::Failed(_) => false,
            },
            Err(_) => false,
        }
    }

    /// The metadata and headers an upload of this file sends: `own` (the POSIX keys) over
    /// what it carries.
    async fn upload_attrs(
        &self,
        store: &Arc<dyn crate::store::ObjectStore>,
        path: &RelPath,
        own: UserMeta,
    ) -> FsResult<(UserMeta, Option<Headers>)> {
        Ok(match self.carried(store, path).await? {
            Some((mut meta, headers)) => {
                meta.extend(own);
                (meta, Some(headers))
            }
            None => (own, None),
        })
    }

    pub(super) fn info(&self) -> EntryInfo {
        let posix = *lock(&self.posix);
        EntryInfo::new(Kind::File, self.size.load(Ordering::Relaxed), SystemTime::now()).with_posix(posix)
    }

    fn key(&self) -> String {
        lock(&self.key).clone()
    }

    fn expect(&self) -> Option<WriteIf> {
        lock(&self.expect).clone()
    }

    /// The version this mount just made at the key (its ETag, when S3 said it).
    fn wrote(&self, etag: Option<&str>) {
        *lock(&self.expect) = etag.map(|e| WriteIf::Matches(e.to_string()));
    }

    /// The ETag of the version the next upload replaces, when known.
    fn version(&self) -> Option<String> {
        match self.expect() {
            Some(WriteIf::Matches(e)) => Some(e),
            _ => None,
        }
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

/// The files open through a mount, by inode: each one's state (shared by its handles) and
/// the reads shared by its readers, the staging budget and directory, and lost+found. It
/// works on inodes and paths the [`Core`](super::Core) resolved; the namespace's cache
/// learns what it uploads.
pub(super) struct OpenFiles {
    ns: Arc<Namespace>,
    table: Mutex<HashMap<u64, OpenFile>>,
    staging: StagingBudget,
    /// This mount's staging files (`<cache dir>/staging/<pid>`).
    staging_dir: PathBuf,
    /// The reads of each file open for reading (shared by its handles), and the mount's
    /// read-ahead budget.
    /// With what the file was when opened, for `fstat` once its name is gone.
    reads: Mutex<HashMap<u64, (Weak<ObjectReads>, EntryInfo)>>,
    read_budget: ReadBudget,
}

impl OpenFiles {
    pub(super) fn new(ns: Arc<Namespace>, staging_dir: PathBuf) -> Self {
        let cfg = &ns.cfg;
        OpenFiles {
            staging: StagingBudget::new(cfg.cache_size),
            read_budget: ReadBudget::new(cfg.read_budget),
            reads: Mutex::new(HashMap::new()),
            table: Mutex::new(HashMap::new()),
            staging_dir,
            ns,
        }
    }

    /// Open files (their states) at present.
    pub(super) fn len(&self) -> usize {
        lock(&self.table).len()
    }

    /// Bytes of files staged locally at present.
    pub(super) fn staged_bytes(&self) -> u64 {
        self.staging.used()
    }

    /// Removes this mount's staging directory (at unmount, after the last upload).
    pub(super) fn clean_staging(&self) {
        let _ = std::fs::remove_dir_all(&self.staging_dir);
    }

    /// `ino`'s open state, when it has one and it was not unlinked.
    pub(super) fn linked_info(&self, ino: u64) -> Option<EntryInfo> {
        lock(&self.table)
            .get(&ino)
            .filter(|f| !f.unlinked())
            .map(OpenFile::info)
    }

    /// Files open here, directly in `dir`, that S3 may not have yet.
    pub(super) fn pending_in(&self, dir: &RelPath) -> Vec<(String, EntryInfo)> {
        lock(&self.table)
            .values()
            .filter(|f| !f.unlinked() && f.path.parent().as_ref() == Some(dir))
            .map(|f| (f.path.name().to_string(), f.info()))
            .collect()
    }

    /// The open state's attributes of `ino`, and whether it was unlinked.
    pub(super) fn open_info_of(&self, ino: u64) -> Option<(EntryInfo, bool)> {
        lock(&self.table).get(&ino).map(|f| (f.info(), f.unlinked()))
    }

    pub(super) fn shared(&self, ino: u64) -> Option<Arc<Shared>> {
        lock(&self.table).get(&ino).map(|f| f.shared.clone())
    }

    pub(super) fn staging_path(&self) -> std::path::PathBuf {
        self.staging_dir.join(uuid::Uuid::new_v4().simple().to_string())
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
        let key = self.ns.layout.file_key(path)?;
        // What another client stored with the object stays, by the rule an open for writing
        // follows: a HEAD unless one showed nothing to keep, the tags unless this mount
        // wrote the version without any.
        let (head, tags) = (!info.plain, !info.tagless && self.ns.cfg.keep_tags);
        let (mut meta, headers) = carried_of(self.ns.store.as_ref(), &key, head, tags).await?;
        meta.extend(posix.to_meta());
        let cond = etag.map(|e| WriteIf::Matches(e.to_string()));
        if size == 0 {
            return Ok(self
                .ns
                .store
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
            .truncate(self.ns.store.as_ref(), size)
            .await
            .map_err(|e| staging_err(path, "truncate", e))?;
        let (_, etag) = staged
            .upload(&self.ns.store, &key, &meta, Some(&headers), cond.as_ref())
            .await
            .map_err(|e| staging_err(path, "truncate", e))?;
        Ok(etag)
    }

    /// Registers a handle on `ino`'s open state, creating the state with `body` if needed,
    /// to replace the version `expect` at the key (see [`Shared`]), keeping what `carry`
    /// says must be fetched of the object there (a HEAD, its tags: see [`Carried`]).
    pub(super) fn attach(
        &self,
        ino: u64,
        path: &RelPath,
        posix: Posix,
        expect: Option<WriteIf>,
        carry: Option<(bool, bool)>,
        make: impl FnOnce(String) -> FsResult<Body>,
    ) -> FsResult<Arc<Shared>> {
        let mut files = lock(&self.table);
        if let Some(f) = files.get_mut(&ino) {
            f.handles += 1;
            return Ok(f.shared.clone());
        }
        let key = self.ns.layout.file_key(path)?;
        let body = make(key.clone())?;
        let carried = match carry {
            Some((head, tags)) => Carried::fetch(&self.ns.store, &key, head, tags && self.ns.cfg.keep_tags),
            None => Carried::Nothing,
        };
        let size = match &body {
            Body::Stream(u) => u.size(),
            Body::Staged(s) => s.size(),
        };
        let shared = Arc::new(Shared {
            key: Mutex::new(key),
            size: AtomicU64::new(size),
            posix: Mutex::new(posix),
            meta_dirty: AtomicBool::new(false),
            xattrs_dirty: AtomicBool::new(false),
            unlinked: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            expect: Mutex::new(expect),
            carried: tokio::sync::Mutex::new(carried),
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

    pub(super) fn new_stream(&self, key: String, posix: &Posix) -> Body {
        Body::Stream(
            Upload::new(
                self.ns.store.clone(),
                key,
                stream_meta(posix),
                self.ns.cfg.part_size,
                self.ns.cfg.upload_inflight,
            )
            .spool_to(self.staging_path(), self.ns.cfg.cache_size),
        )
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
        let key = self.ns.layout.file_key(path)?;
        let r = Arc::new(
            ObjectReads::new(
                self.ns.store.clone(),
                key,
                size,
                self.ns.cfg.read,
                self.read_budget.clone(),
            )
            .pinned(info.version().map(str::to_string)),
        );
        reads.insert(ino, (Arc::downgrade(&r), info.clone()));
        Ok(r)
    }

    /// Moves a streaming file to staging; returns the staged file.
    async fn staged<'a>(&self, path: &RelPath, shared: &Shared, body: &'a mut Body) -> FsResult<&'a mut StagedFile> {
        if let Body::Stream(up) = body {
            let base = if up.has_multipart() {
                // Parts are in S3 already: complete what was written, then stage on top of it.
                up.finish(shared.expect().as_ref())
                    .await
                    .map_err(|e| upload_err(path, e))?;
                shared.wrote(up.written_etag());
                Some(Base {
                    key: shared.key(),
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
                    .write(self.ns.store.as_ref(), 0, &data)
                    .await
                    .map_err(|e| staging_err(path, "staging", e))?;
                if up.is_finished() {
                    staged.mark_uploaded(&shared.key(), up.written_etag().map(str::to_string));
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

    /// The body of a file opened to be modified in place: a staging file over the object
    /// (`base`), fetched chunk by chunk as it is touched, counted whole in the staging budget.
    pub(super) fn staged_body(&self, path: &RelPath, base: Base) -> FsResult<Body> {
        let size = base.size;
        let staged = self.staging_file(path, Some(base))?;
        self.staging.take(size);
        Ok(Body::Staged(staged))
    }

    /// A new staging file for `path`: over the object `base` (fetched chunk by chunk as it is
    /// touched), or empty.
    fn staging_file(&self, path: &RelPath, base: Option<Base>) -> FsResult<StagedFile> {
        StagedFile::create(self.staging_path(), base, self.ns.cfg.part_size as u64)
            .map_err(|e| FsError::new(libc::EIO, format!("{path}: cannot create a staging file: {e}")))
    }

    /// A read of an open file's state (what this mount wrote, not yet in S3): from staging.
    pub(super) async fn read(&self, path: &RelPath, shared: &Shared, offset: u64, size: u32) -> FsResult<Bytes> {
        let mut body = shared.body.lock().await;
        let staged = self.staged(path, shared, &mut body).await?;
        staged
            .read(self.ns.store.as_ref(), offset, size as usize)
            .await
            .map_err(|e| staging_err(path, "read", e))
    }

    /// A write to `ino`'s open state: appended to its upload when it continues it, else
    /// into staging (ENOSPC past the staging budget).
    pub(super) async fn write(&self, ino: u64, path: &RelPath, offset: u64, data: &[u8]) -> FsResult<u32> {
        let shared = self
            .shared(ino)
            .ok_or_else(|| FsError::new(libc::EBADF, format!("{path}: not open for writing")))?;
        let mut body = shared.body.lock().await;
        let sequential =
            matches!(&*body, Body::Stream(up) if up.size() == offset && !(up.is_finished() && up.has_multipart()));
        if sequential {
            if let Body::Stream(up) = &mut *body {
                if !up.has_multipart() {
                    // A multipart upload takes its metadata when it starts.
                    let posix = *lock(&shared.posix);
                    let (meta, headers) = shared.upload_attrs(&self.ns.store, path, stream_meta(&posix)).await?;
                    up.set_attrs(meta, headers);
                }
                up.write(offset, data).await.map_err(|e| upload_err(path, e))?;
                shared.size.store(up.size(), Ordering::Relaxed);
            }
        } else {
            let end = offset + data.len() as u64;
            let staged = self.staged(path, &shared, &mut body).await?;
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
            if let Err(e) = staged.write(self.ns.store.as_ref(), offset, data).await {
                self.staging.release(growth);
                return Err(staging_err(path, "write", e));
            }
            shared.size.store(staged.size(), Ordering::Relaxed);
        }
        lock(&shared.posix).mtime = Some(SystemTime::now());
        Ok(data.len() as u32)
    }

    /// Truncates an open file.
    pub(super) async fn truncate_open(&self, path: &RelPath, shared: &Shared, size: u64) -> FsResult<()> {
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
            .truncate(self.ns.store.as_ref(), size)
            .await
            .map_err(|e| staging_err(path, "truncate", e))?;
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
    pub(super) async fn flush_ino(&self, ino: u64) -> FsResult<()> {
        let Some((shared, path)) = lock(&self.table).get(&ino).map(|f| (f.shared.clone(), f.path.clone())) else {
            return Ok(());
        };
        let mut body = shared.body.lock().await;
        self.flush_body(&path, &shared, &mut body).await
    }

    async fn flush_body(&self, path: &RelPath, shared: &Shared, body: &mut Body) -> FsResult<()> {
        if shared.unlinked.load(Ordering::Relaxed) {
            return Ok(());
        }
        let key = shared.key();
        let posix = *lock(&shared.posix);
        let meta_dirty = shared.meta_dirty.load(Ordering::Relaxed);
        let xattrs_dirty = shared.xattrs_dirty.load(Ordering::Relaxed);
        let expect = shared.expect();
        let update_meta = || async {
            let version = shared.version();
            let xattr = shared.xattr_header(&self.ns.store, path).await?;
            let etag = self
                .ns
                .replace_posix_meta(&key, &posix, version.as_deref(), Some(xattr))
                .await
                .map_err(|e| store_err(path, "metadata update", e))?;
            shared.wrote(etag.as_deref());
            Ok::<_, FsError>(())
        };
        match body {
            Body::Stream(up) => {
                let (meta, headers) = shared.upload_attrs(&self.ns.store, path, stream_meta(&posix)).await?;
                // Changed extended attributes reach S3 with the upload still to finish; after
                // it (an earlier flush sent it), by the metadata update. So does a POSIX
                // change: the stream's metadata leaves the mtime to LastModified.
                let finished_before = up.is_finished();
                let late_meta = !up.set_attrs(meta, headers) || meta_dirty || (xattrs_dirty && finished_before);
                if !up.is_finished() {
                    if let Err(e) = up.finish(expect.as_ref()).await {
                        // Another host or client wrote the name since this mount saw it: this
                        // write must never replace theirs (the last close keeps it in
                        // lost+found instead).
                        let replaced = matches!(&e, UploadError::Store(StoreError::PreconditionFailed { .. }));
                        let err = upload_err(path, e);
                        // Keep the bytes: a small file moves to staging, so the next flush or
                        // close tries again and nothing is lost.
                        if !up.has_multipart() && !replaced {
                            let _ = self.staged(path, shared, body).await;
                        }
                        return Err(err);
                    }
                    shared.wrote(up.written_etag());
                }
                if late_meta {
                    update_meta().await?;
                }
            }
            Body::Staged(staged) => {
                if staged.is_modified() {
                    let (meta, headers) = shared.upload_attrs(&self.ns.store, path, posix.to_meta()).await?;
                    let (_, etag) = staged
                        .upload(&self.ns.store, &key, &meta, headers.as_ref(), expect.as_ref())
                        .await
                        .map_err(|e| staging_err(path, "upload", e))?;
                    shared.wrote(etag.as_deref());
                } else if meta_dirty || xattrs_dirty {
                    update_meta().await?;
                }
            }
        }
        shared.meta_dirty.store(false, Ordering::Relaxed);
        shared.xattrs_dirty.store(false, Ordering::Relaxed);
        let size = shared.size.load(Ordering::Relaxed);
        self.ns.cache.upsert(
            path,
            EntryInfo::new(Kind::File, size, SystemTime::now())
                .with_posix(posix)
                .with_etag(shared.version().as_deref())
                .with_plain(shared.carries_nothing())
                .with_tagless(shared.carries_nothing()),
        );
        Ok(())
    }

    /// Renames a file that is open here: its pending data is uploaded first, then the object
    /// moves, and the open state follows it to the new key.
    /// The copy replaces only what the rename's check saw at `to` (`dst`), as a closed
    /// file's does (`Namespace::target_condition`).
    pub(super) async fn rename_open_file(
        &self,
        ino: u64,
        from: &RelPath,
        to: &RelPath,
        dst_info: Option<&EntryInfo>,
        noreplace: bool,
    ) -> FsResult<bool> {
        let Some(shared) = self.shared(ino) else {
            return Ok(false);
        };
        let mut body = shared.body.lock().await;
        self.flush_body(from, &shared, &mut body).await?;
        let (src, dst) = (shared.key(), self.ns.layout.file_key(to)?);
        let size = shared.size.load(Ordering::Relaxed);
        // The version just uploaded (or opened) is the one moved, and the one removed.
        let version = shared.version();
        let target = self.ns.target_condition(dst_info, noreplace);
        let class = shared.class_headers();
        let copy = CopySpec::new(&src, &dst)
            .from_version(version.as_deref())
            .only_if(target.as_ref())
            .with_headers(class.as_ref());
        let etag = match self.ns.copy_object(&copy, size).await {
            Err(e @ StoreError::PreconditionFailed { .. }) => {
                let errno = if noreplace { libc::EEXIST } else { libc::ESTALE };
                return Err(FsError::new(
                    errno,
                    format!("rename {from} -> {to}: another client wrote one of them meanwhile; nothing was moved"),
                )
                .caused_by(e));
            }
            r => r?,
        };
        self.ns.delete_keys(vec![DeleteTarget::version(src, version)]).await?;
        shared.wrote(etag.as_deref());
        self.reanchor(ino, &shared, &mut body, to)
    }

    /// Points an open file's state at the object now at `to` (after a rename moved it).
    fn reanchor(&self, ino: u64, shared: &Shared, body: &mut Body, to: &RelPath) -> FsResult<bool> {
        let dst = self.ns.layout.file_key(to)?;
        let size = shared.size.load(Ordering::Relaxed);
        let staged = self.staging_file(
            to,
            Some(Base {
                key: dst.clone(),
                size,
                etag: shared.version(),
            }),
        )?;
        if let Body::Staged(old) = &*body {
            self.staging.release(old.size());
        }
        self.staging.take(size);
        *body = Body::Staged(staged);
        *lock(&shared.key) = dst;
        if let Some(f) = lock(&self.table).get_mut(&ino) {
            f.path = to.clone();
        }
        Ok(true)
    }

    /// Before a directory rename: uploads every open file below `dir`; returns them.
    pub(super) async fn flush_open_under(&self, dir: &RelPath) -> FsResult<Vec<(u64, RelPath)>> {
        let open: Vec<(u64, RelPath)> = lock(&self.table)
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
            // The copy's ETag is not passed up from the directory rename: the next upload
            // of this file goes without a condition (README, "Versions named").
            shared.wrote(None);
            self.reanchor(ino, &shared, &mut body, &path.rebase(from, to))?;
        }
        Ok(())
    }

    /// The last close of a handle of `ino` for writing: when it was the last one, uploads
    /// what changed and drops the state; data that cannot be uploaded goes to lost+found.
    pub(super) async fn release(&self, ino: u64) -> FsResult<()> {
        let last = match lock(&self.table).get_mut(&ino) {
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
        let Some((shared, path)) = (match lock(&self.table).get(&ino) {
            Some(f) if f.handles == 0 => Some((f.shared.clone(), f.path.clone())),
            _ => None,
        }) else {
            return result;
        };
        // The body's lock is held until the state has left the table: an unlink or a
        // truncate by path that finds the state waits for what follows; one that comes later
        // finds the file closed.
        let mut body = shared.body.lock().await;
        // A truncate or chmod by path (no handle) may have changed the state between the
        // upload above and now (the kernel sends `release` after `close` returned): upload
        // that too, or it would be silently undone.
        let changed = shared.meta_dirty.load(Ordering::Relaxed)
            || shared.xattrs_dirty.load(Ordering::Relaxed)
            || match &*body {
                Body::Staged(s) => s.is_modified(),
                Body::Stream(up) => !up.is_finished(),
            };
        let result = match result {
            Ok(()) if changed => self.flush_body(&path, &shared, &mut body).await,
            r => r,
        };
        let removed = {
            let mut files = lock(&self.table);
            match files.get(&ino) {
                Some(f) if f.handles == 0 && Arc::ptr_eq(&f.shared, &shared) => files.remove(&ino),
                _ => None,
            }
        };
        let Some(file) = removed else { return result };
        shared.detached.store(true, Ordering::Relaxed);
        if shared.unlinked.load(Ordering::Relaxed)
            && let Body::Stream(up) = &mut *body
        {
            // Unlinked while open: none of it is to reach S3, and the parts already sent
            // would stay as an incomplete upload (stored, and billed) until aborted.
            up.abort().await;
        }
        if let Body::Staged(s) = &*body {
            self.staging.release(s.size());
        }
        if let Err(e) = &result {
            self.keep_in_lost_found(&file.path, &mut body, e).await;
        }
        result
    }

    /// The last close could not upload `path`: its data goes to `lost+found/` in the cache
    /// directory (whole, or as much as could be kept, as the log says).
    async fn keep_in_lost_found(&self, path: &RelPath, body: &mut Body, e: &FsError) {
        let dir = self.ns.cfg.cache_dir.join("lost+found");
        let name = crate::data::kept::name_for(path.as_str());
        let kept = match body {
            Body::Staged(s) => s.keep(self.ns.store.as_ref(), &dir, &name).await,
            Body::Stream(up) => {
                let kept = up.keep(&dir, &name).await;
                up.abort().await;
                kept
            }
        };
        match kept {
            Ok(k) if k.is_complete() => tracing::error!(%path, error = %e, "could not upload at close; {k}"),
            Ok(k) => {
                tracing::error!(%path, error = %e, "could not upload at close; only part of the data could be kept: {k}")
            }
            Err(io) => {
                tracing::error!(%path, error = %e, io = %io, "could not upload at close, nor keep the data locally: the write is lost")
            }
        }
        // What S3 has is what it had before (or nothing): ask it again, rather than take the
        // path for removed.
        self.ns.cache.forget(path);
    }

    /// Marks `ino`'s open state as unlinked (its handles stay usable, nothing more is
    /// uploaded), and waits for an upload of it already under way to end.
    pub(super) async fn unlink(&self, ino: u64) {
        let Some(shared) = self.shared(ino) else { return };
        shared.unlinked.store(true, Ordering::Relaxed);
        // Uploads hold the body's lock from their start to the cache update after them.
        drop(shared.body.lock().await);
    }

    /// Uploads every open file (before unmount); false if one failed (each is logged).
    pub(super) async fn flush_open_files(&self) -> bool {
        let inos: Vec<u64> = lock(&self.table).keys().copied().collect();
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
