//! The operations the kernel asks for, on inodes and names. Each returns an [`FsError`]
//! carrying the errno and a message naming the path, for the adapter to log and reply.

use super::cache::{EntryInfo, Kind, SYMLINK_MAX};
use super::error::{FsError, FsResult};
use super::posix::Posix;
use super::{Attr, Core, DirEntry, Handle, OpenDir};
use crate::layout::RelPath;
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
        self.ns.prefetch_after(&path);
        let ino = lock(&self.inodes).lookup(&path, info.kind);
        Ok(self.attr(ino, info))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        lock(&self.inodes).forget(ino, n);
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        // An open file answers from its open state, even once unlinked (`fstat` after
        // `unlink` of an open file, as POSIX keeps it until the last close).
        if let Some((info, unlinked)) = self.files.open_info_of(ino) {
            let attr = self.attr(ino, info);
            // No name links to it any more.
            return Ok(Attr {
                nlink: if unlinked { 0 } else { attr.nlink },
                ..attr
            });
        }
        let unlinked = |ino| {
            self.files.read_info(ino).map(|info| Attr {
                nlink: 0,
                ..self.attr(ino, info)
            })
        };
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return unlinked(ino).ok_or(e),
        };
        match self.stat(&path).await? {
            Some(info) => Ok(self.attr(ino, info)),
            // Unlinked while open for reading: what it was when opened, with no link left.
            None => unlinked(ino).ok_or_else(|| FsError::not_found(&path)),
        }
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
        self.ns.cache().dir_opened(&path);
        let cached = self.ns.cache().listing(&path).is_some();
        let dir = Arc::new(OpenDir::filling(path, vec![dot(".", ino), dot("..", parent_ino)]));
        if cached {
            if let Err(e) = self.fill_dir(&dir).await {
                self.ns.cache().dir_closed(&dir.path);
                return Err(e);
            }
            dir.finish(Ok(()));
        } else {
            let Some(me) = self.me.upgrade() else {
                self.ns.cache().dir_closed(&dir.path);
                return Err(FsError::new(libc::EIO, "the filesystem is shutting down"));
            };
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
        let filling = dir.clone();
        let feed: super::namespace::Feed = Arc::new(move |page: Vec<(String, Kind, EntryInfo)>| {
            filling.push(
                page.into_iter()
                    .map(|(name, kind, info)| DirEntry::listed(name, kind, info))
                    .collect(),
            );
        });
        let listing = self.ns.list_dir_feeding(&dir.path, Some(&feed)).await?;
        let held: Vec<(String, EntryInfo)> = listing
            .iter()
            .filter(|(name, _)| !dir.has(name))
            .map(|(name, info)| (name.clone(), info.clone()))
            .collect();
        // The cache's copy is edited by every HEAD below (each makes its entry full): a
        // listing still shared with this function would be copied whole by each edit.
        drop(listing);
        let mut typed = self.type_untyped(&dir.path, &held).await;
        let rest = held
            .into_iter()
            .map(|(name, info)| {
                // A listing cannot tell a symlink from a file; a HEAD can, and what it
                // found goes to readdirplus with the name.
                let info = typed.remove(&name).unwrap_or(info);
                DirEntry::listed(name, info.kind, info)
            })
            .collect();
        dir.push(rest);
        Ok(())
    }

    /// The inode number readdir reports for `e` of `dir`: the kernel's, when it has looked
    /// the entry up, else a placeholder (the kernel uses the name and type, and looks the
    /// entry up before using it).
    pub fn entry_ino(&self, dir: &OpenDir, e: &DirEntry) -> u64 {
        if e.ino != u64::MAX {
            return e.ino;
        }
        let Ok(child) = dir.path.join(&e.name) else {
            return u64::MAX;
        };
        lock(&self.inodes).find(&child).unwrap_or(u64::MAX)
    }

    /// What readdirplus hands the kernel with a listed name, with no request, counted as a
    /// lookup by the kernel: the attributes this mount knows now (an open file's, a fresher
    /// cached answer, the HEAD or trusted listing behind the open directory), and whether
    /// they are complete. Incomplete ones (a listing's size and time, no POSIX metadata yet)
    /// go with no validity, so the kernel looks the name up before using them, as after a
    /// plain readdir: so do the attributes of a name the cache now says is gone (removed by
    /// this mount since, or a negative answer older than the listing), which the kernel's
    /// lookup then settles. None: a name that cannot be a path.
    pub fn listed_attr(&self, dir: &OpenDir, e: &DirEntry) -> Option<(Attr, bool)> {
        let child = dir.path.join(&e.name).ok()?;
        let snapshot = e.info.clone()?;
        let (info, vouched) = match self.ns.cache().entry(&child) {
            Some(None) => (snapshot, false),
            Some(Some(now)) if now.full || !snapshot.full => (now, true),
            _ => (snapshot, true),
        };
        // One lock per entry: a readdirplus reply holds a couple of hundred.
        let (ino, times) = {
            let mut inodes = lock(&self.inodes);
            let ino = inodes.lookup(&child, info.kind);
            (ino, inodes.times(ino))
        };
        if let Some((open, _)) = self.files.open_info_of(ino) {
            return Some((self.attr_with(ino, open, times), true));
        }
        let full = info.full && vouched;
        Some((self.attr_with(ino, info, times), full))
    }

    /// A listing cannot tell a symlink from a file, and readdir must give each entry's type
    /// (`find -type l` trusts it; fuser cannot answer DT_UNKNOWN). Symlinks are objects under
    /// [`SYMLINK_MAX`] bytes, so the listed entries that small and not typed yet are HEADed,
    /// `--attr-prefetch` at a time; those HEADs are the ones `ls -l` would send anyway.
    /// Returns what the HEADs found, by name.
    async fn type_untyped(&self, dir: &RelPath, listed: &[(String, EntryInfo)]) -> HashMap<String, EntryInfo> {
        if self.cfg.names.trust_listing {
            return HashMap::new();
        }
        let untyped: Vec<(String, RelPath)> = listed
            .iter()
            .filter(|(_, i)| !i.full && i.kind == Kind::File && i.size < SYMLINK_MAX as u64)
            .filter_map(|(name, _)| Some((name.clone(), dir.join(name).ok()?)))
            .collect();
        stream::iter(untyped)
            .map(|(name, p)| async move {
                match self.stat(&p).await {
                    Ok(Some(info)) => Some((name, info)),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::debug!(path = %p, error = %e, "could not type a listed entry; shown as a file");
                        None
                    }
                }
            })
            .buffer_unordered(self.cfg.names.attr_prefetch.max(1))
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
        if let Some(Handle::Dir(dir)) = lock(&self.handles).remove(&fh) {
            self.ns.cache().dir_closed(&dir.path);
        }
    }

    pub async fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, uid: u32, gid: u32) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        self.check_writable(&path)?;
        let posix = Posix {
            mode: Some(libc::S_IFDIR | (mode & 0o7777)),
            uid: Some(uid),
            gid: Some(gid),
            mtime: Some(SystemTime::now()),
            ..Default::default()
        };
        let info = self.ns.make_dir(&path, posix).await?;
        let ino = lock(&self.inodes).lookup(&path, Kind::Dir);
        self.entry_changed(&path);
        Ok(self.attr(ino, info))
    }

    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        self.check_writable(&path)?;
        self.ns.remove_dir(&path).await?;
        self.entry_changed(&path);
        Ok(())
    }

    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        self.check_writable(&path)?;
        let info = self.ns.check_unlink(&path).await?;
        // A file open here is unlinked first, and an upload of it in progress (the last
        // close's, which the kernel sends after `close` returned) lands before the delete is
        // queued: the delete then reaches S3 after it, and nothing brings the file back.
        if let Some(ino) = self.files.open_at(&path) {
            self.files.unlink(ino).await;
        }
        // The version the check saw is the one removed: if another client writes the name
        // before the delete reaches S3, their object stays.
        self.ns.remove_file(&path, info.version()).await?;
        self.entry_changed(&path);
        Ok(())
    }

    pub async fn rename(&self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32) -> FsResult<()> {
        let from = self.child_path(parent, name)?;
        let to = self.child_path(newparent, newname)?;
        self.check_writable(&from)?;
        let Some((src, dst)) = self.ns.check_rename(&from, &to, flags).await? else {
            return Ok(());
        };
        if src.legacy.is_some() {
            // Its marking object sits under another prefix, outside the tree a directory
            // rename moves: `mv` copies and removes instead.
            return Err(FsError::new(
                libc::EXDEV,
                format!("{from}: a directory marked in an older tool's way is moved by copy, not renamed"),
            ));
        }
        match src.kind {
            Kind::File | Kind::Symlink => {
                let moved_open = match self.files.open_at(&from) {
                    Some(ino) => {
                        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
                        self.files
                            .rename_open_file(ino, &from, &to, dst.as_ref(), noreplace)
                            .await?
                    }
                    None => false,
                };
                let etag = if moved_open {
                    None
                } else {
                    self.ns
                        .move_object(&from, &to, &src, dst.as_ref(), flags & libc::RENAME_NOREPLACE != 0)
                        .await?
                };
                // S3's LastModified changes with the copy; the POSIX mtime travels with it.
                // The version is the copy's (its ETag, when S3 said it).
                self.ns.file_moved(&from, &to, src.with_etag(etag.as_deref()));
            }
            Kind::Dir => {
                let open = self.files.flush_open_under(&from).await?;
                self.ns.rename_dir(&from, &to, src).await?;
                self.files.reanchor_moved(open, &from, &to).await?;
            }
        }
        let replaced = lock(&self.inodes).find(&to);
        let replaced_open = replaced.is_some_and(|ino| self.files.is_open(ino));
        lock(&self.inodes).rename(&from, &to, replaced_open);
        self.entry_changed(&from);
        self.entry_changed(&to);
        let moved = lock(&self.inodes).find(&to);
        if let Some(ino) = moved {
            self.attributes_changed(ino);
        }
        Ok(())
    }

    /// `fsync` of a directory: queued deletes have reached S3 when this returns.
    pub async fn sync_deletes(&self) -> FsResult<()> {
        self.ns.sync_deletes().await
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
