//! The operations the kernel asks for, on inodes and names. Each returns an [`FsError`]
//! carrying the errno and a message naming the path, for the adapter to log and reply.

use super::cache::{EntryInfo, Kind, SYMLINK_MAX};
use super::error::{FsError, FsResult};
use super::posix::Posix;
use super::{Attr, Core, DirEntry, Handle, OpenDir};
use crate::layout::RelPath;
use crate::store::{StoreError, UserMeta, WriteIf};
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::SystemTime;

use super::lock;

/// Numbers `statfs` reports: S3 has no meaningful capacity, so report a lot of it.
const STATFS_BLOCKS: u64 = 1 << 40;

#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

impl Core {
    pub(super) fn check_writable(&self, path: &RelPath) -> FsResult<()> {
        if self.cfg.read_only {
            return Err(FsError::new(libc::EROFS, format!("{path}: mounted read-only")));
        }
        Ok(())
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let path = match self.child_path(parent, name) {
            Ok(p) => p,
            // The descriptor's folder is not part of the tree.
            Err(e) if e.errno == libc::EPERM => {
                return Err(FsError::not_found(name.to_string_lossy()));
            }
            Err(e) => return Err(e),
        };
        let info = self.stat(&path).await?.ok_or_else(|| FsError::not_found(&path))?;
        self.prefetch_after(&path);
        let ino = lock(&self.inodes).lookup(&path, info.kind);
        Ok(self.attr(ino, info))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        lock(&self.inodes).forget(ino, n);
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        // An open file answers from its open state, even once unlinked (`fstat` after
        // `unlink` of an open file, as POSIX keeps it until the last close).
        if let Some((info, unlinked)) = self.open_info_of(ino) {
            let attr = self.attr(ino, info);
            // No name links to it any more.
            return Ok(Attr {
                nlink: if unlinked { 0 } else { attr.nlink },
                ..attr
            });
        }
        let path = self.path_of(ino)?;
        let info = self.stat(&path).await?.ok_or_else(|| FsError::not_found(&path))?;
        Ok(self.attr(ino, info))
    }

    /// Opens a directory. A cached listing fills it at once; otherwise the listing is fetched
    /// in the background and readdir hands out each prefix's entries as they arrive (a failed
    /// LIST fails the readdir).
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let path = self.path_of(ino)?;
        let parent_ino = path
            .parent()
            .and_then(|p| lock(&self.inodes).find(&p))
            .unwrap_or(super::inodes::ROOT_INO);
        let dot = |name: &str, ino| DirEntry {
            name: name.to_string(),
            kind: Kind::Dir,
            ino,
            info: None,
        };
        let cached = self.cache.listing(&path).is_some();
        let dir = Arc::new(OpenDir::filling(path, vec![dot(".", ino), dot("..", parent_ino)]));
        if cached {
            self.fill_dir(&dir).await?;
            dir.finish(Ok(()));
        } else {
            let me = self
                .me
                .upgrade()
                .ok_or_else(|| FsError::new(libc::EIO, "the filesystem is shutting down"))?;
            let caller = crate::store::stats::CALLER.try_with(|c| *c).unwrap_or("background");
            let filling = dir.clone();
            tokio::spawn(crate::store::stats::CALLER.scope(caller, async move {
                let result = me.fill_dir(&filling).await;
                if let Err(e) = &result {
                    tracing::warn!(dir = %filling.path, error = %e, "listing failed");
                }
                filling.finish(result);
            }));
        }
        Ok(self.new_fh(Handle::Dir(dir)))
    }

    /// Lists `dir`'s path into it (each prefix's pages as they come, when the listing is
    /// fetched), then the entries that needed the whole listing or a HEAD to be typed.
    async fn fill_dir(&self, dir: &Arc<OpenDir>) -> FsResult<()> {
        let listing = self.list_dir_feeding(&dir.path, Some(dir)).await?;
        let typed = self.type_untyped(&dir.path, &listing).await;
        let inodes = lock(&self.inodes);
        let rest = listing
            .iter()
            .filter(|(name, _)| !dir.has(name))
            .map(|(name, info)| {
                // A listing cannot tell a symlink from a file; a HEAD can (and updates the
                // listing, so a full entry is typed).
                let kind = typed.get(name).copied().unwrap_or(info.kind);
                Self::dir_entry(&inodes, &dir.path, name, kind, info)
            })
            .collect();
        drop(inodes);
        dir.push(rest);
        Ok(())
    }

    /// The entry `name` of `dir`. Entries the kernel has not looked up yet get a placeholder
    /// number; it uses the name and type, and looks the entry up before using it.
    pub(super) fn dir_entry(
        inodes: &super::inodes::Inodes,
        dir: &RelPath,
        name: &str,
        kind: Kind,
        info: &EntryInfo,
    ) -> DirEntry {
        let ino = dir.join(name).ok().and_then(|p| inodes.find(&p)).unwrap_or(u64::MAX);
        DirEntry {
            name: name.to_string(),
            kind,
            ino,
            info: info.full.then_some(*info),
        }
    }

    /// The attributes of a listed entry whose listing says everything (`--trust-listing`, or
    /// HEADed already), counted as a lookup by the kernel, with no request: what
    /// readdirplus hands over with each name. None: look it up the usual way.
    pub fn listed_attr(&self, dir: &OpenDir, e: &DirEntry) -> Option<Attr> {
        let info = e.info?;
        let child = dir.path.join(&e.name).ok()?;
        let ino = lock(&self.inodes).lookup(&child, info.kind);
        Some(self.attr(ino, info))
    }

    /// A listing cannot tell a symlink from a file, and readdir must give each entry's type
    /// (`find -type l` trusts it; fuser cannot answer DT_UNKNOWN). Symlinks are objects under
    /// [`SYMLINK_MAX`] bytes, so the listed entries that small and not typed yet are HEADed,
    /// `--attr-prefetch` at a time; those HEADs are the ones `ls -l` would send anyway.
    /// Returns the kinds found, by name.
    async fn type_untyped(&self, dir: &RelPath, listing: &super::cache::Listing) -> HashMap<String, Kind> {
        if self.cfg.trust_listing {
            return HashMap::new();
        }
        let untyped: Vec<(String, RelPath)> = listing
            .iter()
            .filter(|(_, i)| !i.full && i.kind == Kind::File && i.size < SYMLINK_MAX as u64)
            .filter_map(|(name, _)| Some((name.clone(), dir.join(name).ok()?)))
            .collect();
        stream::iter(untyped)
            .map(|(name, p)| async move {
                match self.stat(&p).await {
                    Ok(Some(info)) => Some((name, info.kind)),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::debug!(path = %p, error = %e, "could not type a listed entry; shown as a file");
                        None
                    }
                }
            })
            .buffer_unordered(self.cfg.attr_prefetch.max(1))
            .filter_map(|x| async move { x })
            .collect()
            .await
    }

    /// The entries of an open directory.
    pub fn readdir(&self, fh: u64) -> FsResult<Arc<OpenDir>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Dir(dir)) => Ok(dir.clone()),
            _ => Err(FsError::new(libc::EBADF, format!("directory handle {fh} is not open"))),
        }
    }

    pub fn release_handle(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    pub async fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, uid: u32, gid: u32) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        self.check_writable(&path)?;
        if self.stat(&path).await?.is_some() {
            return Err(FsError::new(libc::EEXIST, format!("{path}: exists")));
        }
        let key = self.layout.dir_marker_key(&path)?;
        let posix = Posix {
            mode: Some(libc::S_IFDIR | (mode & 0o7777)),
            uid: Some(uid),
            gid: Some(gid),
            mtime: Some(SystemTime::now()),
        };
        // Conditional (no extra request): of two hosts making one directory at once, exactly
        // one succeeds, as `mkdir` used as a lock expects.
        match self
            .store
            .put_if(&key, Bytes::new(), &posix.to_meta(), Some(&WriteIf::Absent))
            .await
        {
            Ok(_) => {}
            Err(StoreError::PreconditionFailed { .. }) => {
                self.cache.forget(&path);
                return Err(FsError::new(
                    libc::EEXIST,
                    format!("{path}: exists (created elsewhere)"),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        let info = EntryInfo::new(Kind::Dir, 0, SystemTime::now()).with_posix(posix);
        self.cache.upsert(&path, info);
        // A directory we just created is empty: its listing needs no request.
        self.cache.put_listing(&path, Arc::default());
        let ino = lock(&self.inodes).lookup(&path, Kind::Dir);
        self.entry_changed(&path);
        Ok(self.attr(ino, info))
    }

    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        self.check_writable(&path)?;
        if self.cache.is_ghost(&path) {
            // Listing it found nothing of this namespace (see docs/LAYOUT.md) and hid it;
            // `rm -r` walked into it before that: removing it is already done.
            return Ok(());
        }
        match self.stat(&path).await? {
            None => return Err(FsError::not_found(&path)),
            Some(i) if i.kind == Kind::File => {
                return Err(FsError::new(libc::ENOTDIR, format!("{path}: not a directory")));
            }
            _ => {}
        }
        // Deletes queued by the unlinks of an `rm -r` land first, so the check below sees S3
        // as it is.
        self.store.flush().await?;
        // Pending files first: one whose upload ends while the LIST below is on the wire is
        // then either still pending here or already in S3 for the LIST (checked the other
        // way round, it could slip between the two, and a non-empty directory be removed).
        let pending = !self.pending_in(&path).is_empty();
        let below = self.emptiness(&path).await?;
        if pending || below.not_empty {
            return Err(FsError::new(libc::ENOTEMPTY, format!("{path}: directory not empty")));
        }
        match below.marker {
            Some(0) => self.store.delete(&self.layout.dir_marker_key(&path)?).await?,
            // Not a marker but somebody's data under a key ending in '/': never deleted.
            Some(bytes) => {
                tracing::warn!(%path, bytes, "the directory's marker key holds data: not deleting it; the directory is hidden instead")
            }
            None => {}
        }
        // The deletes of the files that were in it (queued by unlink, to be batched) land
        // before rmdir returns: after `rm -r`, the bucket holds none of the tree.
        self.store.flush().await?;
        self.cache.remove(&path);
        if below.foreign || below.marker.is_some_and(|b| b > 0) {
            // Foreign keys below keep the name in S3 listings: hide it from this mount.
            self.cache.mark_ghost(&path);
        }
        self.entry_changed(&path);
        Ok(())
    }

    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        self.check_writable(&path)?;
        match self.stat(&path).await? {
            None => return Err(FsError::not_found(&path)),
            Some(i) if i.kind == Kind::Dir => {
                return Err(FsError::new(libc::EISDIR, format!("{path}: is a directory")));
            }
            _ => {}
        }
        // Queued and sent in an interleaved batch with the unlinks around it (see
        // store::deferred); invisible to this mount from now on.
        self.store.delete(&self.layout.file_key(&path)?).await?;
        self.forget_open(&path);
        self.cache.remove(&path);
        self.entry_changed(&path);
        Ok(())
    }

    pub async fn rename(&self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32) -> FsResult<()> {
        let from = self.child_path(parent, name)?;
        let to = self.child_path(newparent, newname)?;
        self.check_writable(&from)?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(FsError::new(
                libc::EINVAL,
                format!("{from}: RENAME_EXCHANGE is not supported"),
            ));
        }
        if from == to {
            return Ok(());
        }
        if to.starts_with(&from) {
            return Err(FsError::new(
                libc::EINVAL,
                format!("cannot move {from} into itself ({to})"),
            ));
        }
        let src = self.stat(&from).await?.ok_or_else(|| FsError::not_found(&from))?;
        // `mv -n` asks S3, not this mount's view, whether the target exists (another host may
        // have created it within the TTL). S3 has no conditional CopyObject this server
        // honours, so a create elsewhere between this HEAD and the copy is not caught.
        let dst = if flags & libc::RENAME_NOREPLACE != 0 {
            self.stat_fresh(&to).await?
        } else {
            self.stat(&to).await?
        };
        if let Some(dst) = dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(FsError::new(libc::EEXIST, format!("{to}: exists")));
            }
            match (src.kind, dst.kind) {
                (Kind::File | Kind::Symlink, Kind::Dir) => {
                    return Err(FsError::new(libc::EISDIR, format!("{to}: is a directory")));
                }
                (Kind::Dir, Kind::File | Kind::Symlink) => {
                    return Err(FsError::new(libc::ENOTDIR, format!("{to}: not a directory")));
                }
                (Kind::Dir, Kind::Dir) if self.any_under(&to).await? => {
                    return Err(FsError::new(libc::ENOTEMPTY, format!("{to}: directory not empty")));
                }
                _ => {}
            }
        }
        match src.kind {
            Kind::File | Kind::Symlink => {
                let open_ino = lock(&self.inodes).find(&from);
                let moved_open = match open_ino {
                    Some(ino) => self.rename_open_file(ino, &from, &to).await?,
                    None => false,
                };
                if !moved_open {
                    let (sk, dk) = (self.layout.file_key(&from)?, self.layout.file_key(&to)?);
                    self.store.copy(&sk, &dk, None).await?;
                    // At once, not deferred: the old name must be gone when rename returns.
                    self.delete_keys(vec![sk]).await?;
                }
                self.cache.remove(&from);
                // S3's LastModified changes with the copy; the POSIX mtime travels with it.
                self.cache.upsert(&to, src);
            }
            Kind::Dir => {
                let open = self.flush_open_under(&from).await?;
                let result = self.rename_dir(&from, &to).await;
                self.cache.clear();
                result?;
                self.reanchor_moved(open, &from, &to).await?;
            }
        }
        lock(&self.inodes).rename(&from, &to);
        self.entry_changed(&from);
        self.entry_changed(&to);
        let moved = lock(&self.inodes).find(&to);
        if let Some(ino) = moved {
            self.attributes_changed(ino);
        }
        Ok(())
    }

    /// Copies every object below `from` to its key below `to` (in parallel, interleaved
    /// across prefixes), and deletes the old keys only once every copy succeeded.
    async fn rename_dir(&self, from: &RelPath, to: &RelPath) -> FsResult<()> {
        let mut pairs = Vec::new();
        let to_marker = self.layout.dir_marker_key(to)?;
        let mut has_marker = false;
        for key in self.list_tree(from).await? {
            let Some((path, is_dir)) = self.layout.key_to_path(&key) else {
                continue;
            };
            if !path.starts_with(from) {
                continue;
            }
            let new_path = path.rebase(from, to);
            let new_key = if is_dir {
                self.layout.dir_marker_key(&new_path)?
            } else {
                self.layout.file_key(&new_path)?
            };
            has_marker |= new_key == to_marker;
            pairs.push((key, new_key));
        }
        let order = self
            .layout
            .interleave_by_prefix(pairs.iter().map(|(k, _)| k.clone()).collect());
        let dst_of: std::collections::HashMap<String, String> = pairs.into_iter().collect();
        let total = order.len();
        let results: Vec<Result<String, String>> = stream::iter(order.iter())
            .map(|src| {
                let dst = dst_of.get(src).cloned().unwrap_or_default();
                async move {
                    match self.store.copy(src, &dst, None).await {
                        Ok(()) => Ok(dst),
                        Err(e) => Err(e.to_string()),
                    }
                }
            })
            .buffer_unordered(self.cfg.fanout.max(1))
            .collect()
            .await;
        let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if let Some(first) = failures.first() {
            // Take back the copies that did land, so the tree exists under one name only.
            let copied: Vec<String> = results.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
            let cleanup = self.delete_keys(self.layout.interleave_by_prefix(copied)).await;
            tracing::error!(
                %from, %to, failed = failures.len(), total, error = %first, cleanup_ok = cleanup.is_ok(),
                "directory rename failed midway; no source object was deleted, so every file is still readable under its old name"
            );
            if let Err(e) = cleanup {
                tracing::error!(%to, error = %e, "some copies under the new name could not be removed");
            }
            return Err(FsError::new(
                libc::EIO,
                format!(
                    "rename {from} -> {to}: {} of {total} copies failed: {first}",
                    failures.len()
                ),
            ));
        }
        // An implicit directory becomes an explicit one, so it survives being emptied.
        if !has_marker {
            self.store.put(&to_marker, Bytes::new(), &UserMeta::new()).await?;
        }
        self.delete_keys(order).await
    }

    /// Deletes `path` and everything below it with DeleteObjects, keys interleaved across
    /// prefixes so consecutive deletes hit different partitions. Returns the keys deleted.
    pub async fn remove_tree(&self, path: &RelPath) -> FsResult<usize> {
        let mut keys: Vec<String> = self
            .list_tree(path)
            .await?
            .into_iter()
            .filter(|k| self.layout.key_to_path(k).is_some())
            .collect();
        if !path.is_root()
            && let Some(info) = self.stat(path).await?
            && info.kind != Kind::Dir
        {
            keys.push(self.layout.file_key(path)?);
        }
        let n = keys.len();
        self.delete_keys(self.layout.interleave_by_prefix(keys)).await?;
        self.cache.clear();
        Ok(n)
    }

    /// DeleteObjects in batches of 1000, keys interleaved across prefixes.
    pub(super) async fn delete_keys(&self, keys: Vec<String>) -> FsResult<()> {
        for batch in keys.chunks(crate::limits::MAX_DELETE_BATCH) {
            let failed = self.store.delete_many(batch).await?;
            if let Some(f) = failed.first() {
                return Err(FsError::new(
                    libc::EIO,
                    format!("deleting {f} ({} keys failed)", failed.len()),
                ));
            }
        }
        Ok(())
    }

    /// `fsync` of a directory: queued deletes have reached S3 when this returns.
    pub async fn sync_deletes(&self) -> FsResult<()> {
        Ok(self.store.flush().await?)
    }

    pub fn statfs(&self) -> StatFs {
        StatFs {
            blocks: STATFS_BLOCKS,
            bfree: STATFS_BLOCKS,
            files: STATFS_BLOCKS,
            ffree: STATFS_BLOCKS,
            bsize: 4096,
            namelen: 255,
        }
    }
}
