//! One open file's state ([`OpenState`]), shared by all its handles and owned by
//! [`OpenFiles`](super::OpenFiles): nothing outside `files` reads or writes it.
//!
//! Two locks, each with one job:
//! - [`State`], behind an async mutex, is everything an upload reads or changes: the body, the
//!   key, the version the next upload replaces, what it carries, what changed since the last
//!   upload. Whoever holds it may upload; an upload holds it from its start to the cache
//!   update after it, so "the lock is held until the state has left the table" is a property
//!   of this type, not a convention of its callers.
//! - [`View`], behind a plain mutex, is what `getattr`, `stat` and listings read without
//!   waiting for an upload: the size, the POSIX attributes, the [`Life`]. Only a holder of
//!   the state lock writes the size and the attributes; the life only moves forward.

use super::carried::{Carried, default_headers};
use crate::data::staging::StagedFile;
use crate::data::upload::Upload;
use crate::fs::cache::{EntryInfo, Kind};
use crate::fs::error::{FsResult, store_err};
use crate::fs::lock;
use crate::fs::posix::Posix;
use crate::layout::RelPath;
use crate::store::{Headers, ObjectStore, StoreError, UserMeta, WriteIf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

// One per open file, behind a mutex: the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub(super) enum Body {
    /// Written from its start: streams straight to S3.
    Stream(Upload),
    /// Anything else: a local staging file over the object.
    Staged(StagedFile),
}

impl Body {
    pub(super) fn size(&self) -> u64 {
        match self {
            Body::Stream(u) => u.size(),
            Body::Staged(s) => s.size(),
        }
    }

    /// Created (or truncated) and not written to yet: a close (not the last) uploads nothing.
    pub(super) fn untouched(&self) -> bool {
        matches!(self, Body::Stream(up) if up.size() == 0 && !up.is_finished() && !up.has_multipart())
    }

    /// Holds something S3 does not have yet.
    pub(super) fn unsent(&self) -> bool {
        match self {
            Body::Staged(s) => s.is_modified(),
            Body::Stream(up) => !up.is_finished(),
        }
    }
}

/// Where an open file is in its life; it only moves forward (Open → Unlinked → Closed, or
/// Open → Closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Life {
    /// Its changes reach S3 at the next upload (the last close at the latest).
    Open,
    /// Unlinked while open: its handles stay usable, nothing more is uploaded.
    Unlinked,
    /// The last handle closed and the state left the table: a change made to it now would
    /// never be uploaded, so a setattr or setxattr treats the file as closed.
    Closed,
}

/// What is read without waiting for an upload.
struct View {
    size: u64,
    posix: Posix,
    life: Life,
}

/// What changed since the last upload, besides the bytes.
#[derive(Default)]
pub(super) struct Dirty {
    /// POSIX metadata (chmod, utimens... on the open file).
    pub meta: bool,
    /// Extended attributes: they travel in what the upload carries, so only an upload
    /// already made needs the metadata update for them.
    pub xattrs: bool,
}

/// Everything an upload reads or changes (see the module doc).
pub(super) struct State {
    pub body: Body,
    /// The object's key; changes when the open file is renamed.
    pub key: String,
    /// The version at the key that the next upload replaces: `Absent` for a file new to S3,
    /// `Matches` the one opened or last uploaded; None when no version is known. Every
    /// upload is conditional on it (S3 decides), so a file another client wrote meanwhile
    /// stays theirs: the upload fails (EIO), and the last close keeps this mount's bytes in
    /// lost+found.
    pub expect: Option<WriteIf>,
    /// What the object this file rewrites holds that the mount does not own.
    carried: Carried,
    pub dirty: Dirty,
}

pub(super) struct OpenState {
    view: Mutex<View>,
    state: tokio::sync::Mutex<State>,
}

/// The metadata a file written from scratch is uploaded with: no mtime, since S3's
/// LastModified (the upload's completion) is the time of its last write here. A multipart
/// upload takes its metadata when it starts; an mtime that moved with every write since
/// would then need a self-copy of the whole object at close (slow, and impossible past
/// CopyObject's 5 GiB). An mtime set explicitly (utimens) is written by the metadata update.
pub(super) fn stream_meta(posix: &Posix) -> UserMeta {
    Posix { mtime: None, ..*posix }.to_meta()
}

impl OpenState {
    pub(super) fn new(key: String, body: Body, posix: Posix, expect: Option<WriteIf>, carried: Carried) -> Self {
        OpenState {
            view: Mutex::new(View {
                size: body.size(),
                posix,
                life: Life::Open,
            }),
            state: tokio::sync::Mutex::new(State {
                body,
                key,
                expect,
                carried,
                dirty: Dirty::default(),
            }),
        }
    }

    /// The state, once no upload holds it.
    pub(super) async fn lock(&self) -> tokio::sync::MutexGuard<'_, State> {
        self.state.lock().await
    }

    pub(super) fn info(&self) -> EntryInfo {
        let v = lock(&self.view);
        EntryInfo::new(Kind::File, v.size, SystemTime::now()).with_posix(v.posix)
    }

    pub(super) fn life(&self) -> Life {
        lock(&self.view).life
    }

    /// Moves the life forward to `life` (never back).
    pub(super) fn enter(&self, life: Life) {
        let mut v = lock(&self.view);
        if life > v.life {
            v.life = life;
        }
    }

    pub(super) fn size(&self) -> u64 {
        lock(&self.view).size
    }

    pub(super) fn posix(&self) -> Posix {
        lock(&self.view).posix
    }

    /// The body now holds `size` bytes (the caller holds the state).
    pub(super) fn resized(&self, _held: &State, size: u64) {
        lock(&self.view).size = size;
    }

    /// New POSIX attributes (the caller holds the state).
    pub(super) fn set_posix(&self, _held: &State, posix: Posix) {
        lock(&self.view).posix = posix;
    }

    /// Written now (the caller holds the state).
    pub(super) fn modified(&self, _held: &State) {
        lock(&self.view).posix.mtime = Some(SystemTime::now());
    }
}

impl State {
    /// The user metadata and headers a rewrite keeps (see [`Carried`]): waits for the fetch
    /// the first time. An object gone meanwhile keeps nothing (its upload then fails its
    /// condition); a fetch that fails fails the upload, rather than drop what the object
    /// holds, and the next upload fetches again.
    pub(super) async fn carried(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        path: &RelPath,
    ) -> FsResult<Option<(UserMeta, Headers)>> {
        if let Carried::Failed((head, tags)) = &self.carried {
            self.carried = Carried::fetch(store, &self.key, *head, *tags);
        }
        if let Carried::Pending(h, what) = &mut self.carried {
            let what = *what;
            let fetched = h.await.unwrap_or_else(|e| {
                Err(StoreError::Transport {
                    op: "head",
                    key: self.key.clone(),
                    message: format!("task failed: {e}"),
                })
            });
            self.carried = match fetched {
                Ok(k) => Carried::Known(Box::new(k)),
                Err(e) if e.is_not_found() => Carried::Nothing,
                Err(e) => {
                    self.carried = Carried::Failed(what);
                    return Err(store_err(path, "reading what the object it rewrites holds", e));
                }
            };
        }
        Ok(match &self.carried {
            Carried::Known(k) => Some((**k).clone()),
            _ => None,
        })
    }

    /// The extended attributes header of this open file (s3fs's `xattr`): what its next
    /// upload carries.
    pub(super) async fn xattr_header(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        path: &RelPath,
    ) -> FsResult<Option<String>> {
        Ok(self
            .carried(store, path)
            .await?
            .and_then(|(mut m, _)| m.remove(crate::fs::xattr::KEY)))
    }

    /// Applies `change` to this open file's extended attributes (`posix` its attributes):
    /// the next upload (the last close at the latest) writes them.
    pub(super) async fn change_xattrs(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        path: &RelPath,
        posix: &Posix,
        change: &crate::fs::xattr::Change<'_>,
    ) -> FsResult<()> {
        use crate::fs::xattr::{KEY, with_header};
        let (meta, headers) = self.carried(store, path).await?.unwrap_or_default();
        let header = change.apply(meta.get(KEY).map(String::as_str), path)?;
        // Checked with the POSIX keys the upload adds.
        let mut all = meta.clone();
        all.extend(posix.to_meta());
        with_header(all, header.clone(), path)?;
        let meta = with_header(meta, header, path)?;
        self.carried = Carried::Known(Box::new((meta, headers)));
        self.dirty.xattrs = true;
        Ok(())
    }

    /// The storage class the last upload carried from the object before it (a rename's copy
    /// asks for it), as headers for the copy.
    pub(super) fn class_headers(&self) -> Option<Headers> {
        match &self.carried {
            Carried::Known(k) => crate::store::StorageClass::of(k.1.storage_class.as_deref()).copy_headers(),
            _ => None,
        }
    }

    /// True when the upload of this file carries nothing from an object before it (so the
    /// object it made holds nothing a later rewrite must keep).
    pub(super) fn carries_nothing(&self) -> bool {
        match &self.carried {
            Carried::Nothing => true,
            Carried::Known(k) => k.0.is_empty() && default_headers(&k.1),
            Carried::Pending(..) | Carried::Failed(_) => false,
        }
    }

    /// The metadata and headers an upload of this file sends: `own` (the POSIX keys) over
    /// what it carries.
    pub(super) async fn upload_attrs(
        &mut self,
        store: &Arc<dyn ObjectStore>,
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

    /// The version this mount just made at the key (its ETag, when S3 said it).
    pub(super) fn wrote(&mut self, etag: Option<&str>) {
        self.expect = etag.map(|e| WriteIf::Matches(e.to_string()));
    }

    /// The ETag of the version the next upload replaces, when known.
    pub(super) fn version(&self) -> Option<String> {
        match &self.expect {
            Some(WriteIf::Matches(e)) => Some(e.clone()),
            _ => None,
        }
    }
}
