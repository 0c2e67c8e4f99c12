//! Changes of the namespace in S3, on paths: directories made and removed, files removed
//! and moved, trees renamed and deleted. Each updates the metadata cache before it returns;
//! what a mount keeps per inode (open files, times) is its [`Core`](crate::fs::Core)'s part.

use super::Namespace;
use super::listing::TreeKey;
use crate::fs::cache::{EntryInfo, Kind};
use crate::fs::error::{FsError, FsResult};
use crate::fs::posix::Posix;
use crate::layout::RelPath;
use crate::store::{CopySpec, DeleteTarget, StoreError, StoreResult, UserMeta, WriteIf};
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use std::sync::Arc;
use std::time::SystemTime;

impl Namespace {
    /// `mkdir`: the directory's marker, created only if absent; its attributes.
    pub async fn make_dir(&self, path: &RelPath, posix: Posix) -> FsResult<EntryInfo> {
        if self.stat(path).await?.is_some() {
            return Err(FsError::new(libc::EEXIST, format!("{path}: exists")));
        }
        let key = self.layout.dir_marker_key(path)?;
        // Conditional (no extra request): of two hosts making one directory at once, exactly
        // one succeeds, as `mkdir` used as a lock expects.
        let etag = match self
            .store
            .put_if(&key, Bytes::new(), &posix.to_meta(), Some(&WriteIf::Absent))
            .await
        {
            Ok(etag) => etag,
            Err(StoreError::PreconditionFailed { .. }) => {
                self.cache.forget(path);
                return Err(FsError::new(
                    libc::EEXIST,
                    format!("{path}: exists (created elsewhere)"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let info = EntryInfo::new(Kind::Dir, 0, SystemTime::now()).with_posix(posix);
        self.cache.upsert(path, info.clone());
        // A directory we just created is empty, with its marker and nothing else: its
        // listing, and its rmdir's emptiness check, need no request.
        let facts = crate::fs::cache::DirFacts {
            marker: Some(0),
            marker_etag: crate::store::ETag::of(etag.as_deref()),
            foreign: false,
        };
        self.cache.put_listing_with(path, Arc::default(), Some(facts));
        Ok(info)
    }

    /// Creates `path` empty, only if no object is there; returns its ETag.
    pub(in crate::fs) async fn create_exclusive(&self, path: &RelPath, posix: &Posix) -> FsResult<Option<String>> {
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

    /// Stores `posix` as the metadata of `path`, a closed file or symlink of `size` bytes
    /// (a copy of the object onto itself) or a directory (its marker PUT anew). A file whose
    /// version this mount knows (`info.etag`) is copied only from and onto that version: if
    /// another client replaced it meanwhile, their object stays and this fails (ESTALE).
    /// Returns the new version's ETag when S3 said it.
    pub async fn set_metadata(&self, path: &RelPath, info: &EntryInfo, posix: &Posix) -> FsResult<Option<String>> {
        let r = if info.kind == Kind::Dir {
            self.cache.forget_facts(path);
            self.set_marker_metadata(&self.layout.dir_marker_key(path)?, posix)
                .await
                .map(|()| None)
        } else {
            let key = self.layout.file_key(path)?;
            self.replace_posix_meta(&key, posix, info.version(), None).await
        };
        match r {
            Err(StoreError::PreconditionFailed { .. }) => {
                self.cache.forget(path);
                Err(replaced_elsewhere(path))
            }
            r => Ok(r?),
        }
    }

    /// Stores `posix` in the object at `key` by a copy onto itself, keeping everything the
    /// mount does not own: other tools' user metadata (s3fs's `xattr`, another client's
    /// keys), Content-Type and the other standard headers, the storage class (tags are
    /// copied by S3 itself). One HEAD says what they are and which version is there; the
    /// copy names that version, so a write by someone else in between fails it
    /// (PreconditionFailed) instead of being replaced. `expect`: the version this mount
    /// believes is there, when it knows one: another one fails the same way. `xattr`: the
    /// extended attributes header to write instead of the object's (an open file's, changed
    /// since its last upload; see `fs::xattr`).
    pub async fn replace_posix_meta(
        &self,
        key: &str,
        posix: &Posix,
        expect: Option<&str>,
        xattr: Option<Option<String>>,
    ) -> StoreResult<Option<String>> {
        let head = self.store.head(key).await?;
        let now = head.etag.as_deref();
        if let (Some(want), Some(now)) = (expect, now)
            && want.trim_matches('"') != now.trim_matches('"')
        {
            return Err(StoreError::PreconditionFailed {
                op: "copy",
                key: key.to_string(),
            });
        }
        let mut meta = merged_meta(head.user_meta, posix);
        match xattr {
            Some(Some(h)) => meta.insert(crate::fs::xattr::KEY.to_string(), h),
            Some(None) => meta.remove(crate::fs::xattr::KEY),
            None => None,
        };
        let same = now.map(|e| WriteIf::Matches(e.to_string()));
        let copy = CopySpec::new(key, key)
            .from_version(now)
            .only_if(same.as_ref())
            .with_meta(Some(&meta))
            .with_headers(Some(&head.headers));
        self.copy_object(&copy, head.size).await
    }

    /// A directory's metadata: its marker PUT anew with the other user metadata it held,
    /// only over the version the HEAD saw (made fresh where there is none).
    async fn set_marker_metadata(&self, key: &str, posix: &Posix) -> StoreResult<()> {
        match self.store.head(key).await {
            Ok(head) => {
                let cond = head.etag.map(WriteIf::Matches);
                let meta = merged_meta(head.user_meta, posix);
                self.store
                    .put_with(key, Bytes::new(), &meta, Some(&head.headers), cond.as_ref())
                    .await?;
            }
            Err(e) if e.is_not_found() => {
                self.store.put(key, Bytes::new(), &posix.to_meta()).await?;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Copies an object inside S3 as `c` says (its versions, its metadata: `c.meta`, else the
    /// source's), `size` bytes as this mount knows it: one CopyObject, or part by part above
    /// CopyObject's limit (5 GiB).
    pub async fn copy_object(&self, c: &CopySpec<'_>, size: u64) -> StoreResult<Option<String>> {
        crate::store::copy::copy_object(self.store.as_ref(), c, size, &self.cfg.copy).await
    }

    /// `rmdir`: fails unless nothing of this namespace (nor a file being written through the
    /// mount) is below `path`; deletes its marker.
    pub async fn remove_dir(&self, path: &RelPath) -> FsResult<()> {
        if self.cache.is_ghost(path) && self.legacy_of(path).is_none() {
            // Listing it found nothing of this namespace (see docs/LAYOUT.md) and hid it;
            // `rm -r` walked into it before that: removing it is already done.
            return Ok(());
        }
        let legacy = match self.stat(path).await? {
            None => return Err(FsError::not_found(path)),
            Some(i) if i.kind != Kind::Dir => {
                return Err(FsError::new(libc::ENOTDIR, format!("{path}: not a directory")));
            }
            Some(i) => i.legacy,
        };
        // Deletes queued by the unlinks of an `rm -r` land first, so the check below sees S3
        // as it is.
        self.store.flush().await?;
        // Pending files first: one whose upload ends while the LIST below is on the wire is
        // then either still pending here or already in S3 for the LIST (checked the other
        // way round, it could slip between the two, and a non-empty directory be removed).
        let pending = !self.pending_in(path).is_empty();
        let below = match self.known_emptiness(path) {
            Some(known) => known,
            None => self.emptiness(path).await?,
        };
        if pending || below.not_empty {
            return Err(FsError::new(libc::ENOTEMPTY, format!("{path}: directory not empty")));
        }
        match below.marker {
            Some(0) => {
                let version = below.marker_etag.as_ref().map(|e| e.as_str());
                self.store.delete(&self.layout.dir_marker_key(path)?, version).await?
            }
            // Not a marker but somebody's data under a key ending in '/': never deleted.
            Some(bytes) => {
                tracing::warn!(%path, bytes, "the directory's marker key holds data: not deleting it; the directory is hidden instead")
            }
            None => {}
        }
        // An older tool's object marking it goes with it (at the version listed or HEADed).
        if let Some(l) = legacy {
            self.remove_legacy_marker(path, l).await?;
        }
        // The deletes of the files that were in it (queued by unlink, to be batched) land
        // before rmdir returns: after `rm -r`, the bucket holds none of the tree.
        self.store.flush().await?;
        self.cache.remove(path);
        if below.foreign || below.marker.is_some_and(|b| b > 0) {
            // Foreign keys below keep the name in S3 listings: hide it from this mount.
            self.cache.mark_ghost(path);
        }
        Ok(())
    }

    /// Deletes the object an older tool marked directory `path` with (see
    /// [`crate::fs::cache::LegacyDir`]), at its version. One only suspected (an empty object the
    /// directory shadowed) is HEADed first and left alone unless it is one.
    async fn remove_legacy_marker(&self, path: &RelPath, l: crate::fs::cache::LegacyDir) -> FsResult<()> {
        let key = match l.folder_suffix {
            true => {
                let name = format!("{}{}", path.name(), crate::fs::cache::FOLDER_SUFFIX);
                self.layout.file_key(&path.parent().unwrap_or_default().join(&name)?)?
            }
            false => self.layout.file_key(path)?,
        };
        let mut etag = l.etag.as_ref().map(|e| e.as_str().to_string());
        if !l.confirmed {
            match self.store.head(&key).await {
                Ok(m) if m.size == 0 && super::legacy_dir_object(&m) => etag = m.etag,
                Ok(_) => return Ok(()),
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        self.store.delete(&key, etag.as_deref()).await?;
        Ok(())
    }

    /// The checks of `unlink(path)`: something that is not a directory is there; what.
    pub async fn check_unlink(&self, path: &RelPath) -> FsResult<EntryInfo> {
        match self.stat(path).await? {
            None => Err(FsError::not_found(path)),
            Some(i) if i.kind == Kind::Dir => Err(FsError::new(libc::EISDIR, format!("{path}: is a directory"))),
            Some(i) => Ok(i),
        }
    }

    /// `unlink` once checked: the file's key is deleted (queued to be batched with the
    /// deletes around it, see store::deferred), only at `version` when this mount knows which
    /// version it unlinks, and the path leaves the cache.
    pub async fn remove_file(&self, path: &RelPath, version: Option<&str>) -> FsResult<()> {
        self.store.delete(&self.layout.file_key(path)?, version).await?;
        self.cache.remove(path);
        Ok(())
    }

    /// The checks of `rename(from, to)` with `flags` (renameat2): what `from` is and what
    /// `to` holds, or None when there is nothing to do (`from` is `to`).
    pub async fn check_rename(
        &self,
        from: &RelPath,
        to: &RelPath,
        flags: u32,
    ) -> FsResult<Option<(EntryInfo, Option<EntryInfo>)>> {
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(FsError::new(
                libc::EINVAL,
                format!("{from}: RENAME_EXCHANGE is not supported"),
            ));
        }
        if from == to {
            return Ok(None);
        }
        if to.starts_with(from) {
            return Err(FsError::new(
                libc::EINVAL,
                format!("cannot move {from} into itself ({to})"),
            ));
        }
        let src = self.stat(from).await?.ok_or_else(|| FsError::not_found(from))?;
        // `mv -n` asks S3, not this mount's view, whether the target exists (another host may
        // have created it within the TTL); a create elsewhere between this HEAD and the copy
        // is caught by the copy's own condition (see `move_object`).
        let dst = if flags & libc::RENAME_NOREPLACE != 0 {
            self.stat_fresh(to).await?
        } else {
            self.stat(to).await?
        };
        if let Some(dst) = &dst {
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
                // A file being written in `to` counts, though S3 may not have it yet (`close`
                // returns before the kernel's `release` uploads it).
                (Kind::Dir, Kind::Dir) if !self.pending_in(to).is_empty() || self.any_under(to).await? => {
                    return Err(FsError::new(libc::ENOTEMPTY, format!("{to}: directory not empty")));
                }
                _ => {}
            }
        }
        Ok(Some((src, dst)))
    }

    /// Moves the object of a file (or symlink) `src` from `from` to `to`: a copy, then the
    /// old key's delete, sent at once (the old name must be gone when rename returns). Both
    /// name the version `src` describes when known: a source another client replaced
    /// meanwhile is neither copied nor deleted (ESTALE). With `noreplace` (`mv -n`) the copy
    /// lands only where nothing is (`If-None-Match: *`): a target created elsewhere after
    /// [`Namespace::check_rename`] looked fails it with EEXIST. Without it the copy replaces
    /// only what that check saw at `to` (`dst`: its version, or nothing), so a target another
    /// client wrote meanwhile stays theirs (ESTALE).
    /// Returns the moved object's ETag when S3 said it.
    pub async fn move_object(
        &self,
        from: &RelPath,
        to: &RelPath,
        src: &EntryInfo,
        dst: Option<&EntryInfo>,
        noreplace: bool,
    ) -> FsResult<Option<String>> {
        let (sk, dk) = (self.layout.file_key(from)?, self.layout.file_key(to)?);
        let target = self.target_condition(dst, noreplace);
        let class = src.class.copy_headers();
        let copy = CopySpec::new(&sk, &dk)
            .from_version(src.version())
            .only_if(target.as_ref())
            .with_headers(class.as_ref());
        let etag = match self.copy_object(&copy, src.size).await {
            Err(e @ StoreError::PreconditionFailed { .. }) => {
                return Err(self.refused_move(from, to, src, noreplace, e).await);
            }
            r => r?,
        };
        // `to` holds the new version from here on: readers that open it now pin that one.
        self.cache.upsert(to, src.clone().with_etag(etag.as_deref()));
        self.delete_keys(vec![DeleteTarget::version(sk, src.version().map(str::to_string))])
            .await?;
        Ok(etag)
    }

    /// What a rename's copy onto `to` is conditional on: nothing there (`mv -n`, or a name
    /// the check found free), else the version the check saw there (when known). None with
    /// `--local-exclusive-creates` (a server without conditional writes), but for `mv -n`.
    pub(in crate::fs) fn target_condition(&self, dst: Option<&EntryInfo>, noreplace: bool) -> Option<WriteIf> {
        if noreplace {
            return Some(WriteIf::Absent);
        }
        if self.cfg.local_exclusive_creates {
            return None;
        }
        match dst {
            None => Some(WriteIf::Absent),
            Some(d) => d.version().map(|e| WriteIf::Matches(e.to_string())),
        }
    }

    /// The error of a rename's copy S3 refused (`e`, 412): the target was taken (`mv -n`:
    /// EEXIST) or written by another client meanwhile, or the source replaced (ESTALE). One
    /// HEAD of each side tells which.
    pub(in crate::fs) async fn refused_move(
        &self,
        from: &RelPath,
        to: &RelPath,
        src: &EntryInfo,
        noreplace: bool,
        e: StoreError,
    ) -> FsError {
        let source_kept = match self.stat_fresh(from).await {
            Ok(Some(now)) => now.version().is_some() && now.version() == src.version(),
            _ => false,
        };
        if source_kept {
            self.cache.forget(to);
            if noreplace {
                return FsError::new(libc::EEXIST, format!("{to}: exists (created elsewhere)")).caused_by(e);
            }
            return FsError::new(
                libc::ESTALE,
                format!("{to}: written by another client meanwhile; their version stays, and {from} was not moved"),
            )
            .caused_by(e);
        }
        self.cache.forget(from);
        replaced_elsewhere(from)
    }

    /// Renames the directory `from` (`src` describes it) to `to` ([`Namespace::copy_tree`]),
    /// and the cache follows: the tree moved, or (a rename that failed midway) forgotten.
    pub async fn rename_dir(&self, from: &RelPath, to: &RelPath, src: EntryInfo) -> FsResult<()> {
        match self.copy_tree(from, to).await {
            Ok(()) => {
                self.cache.moved_tree(from, to, src);
                Ok(())
            }
            Err(e) => {
                self.cache.clear();
                Err(e)
            }
        }
    }

    /// Copies every object below `from` to its key below `to` (in parallel, interleaved
    /// across prefixes), and deletes the old keys only once every copy succeeded.
    async fn copy_tree(&self, from: &RelPath, to: &RelPath) -> FsResult<()> {
        let mut pairs = Vec::new();
        let to_marker = self.layout.dir_marker_key(to)?;
        let mut has_marker = false;
        let mut listed = std::collections::HashMap::new();
        for t in self.list_tree(from).await? {
            let key = t.key.clone();
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
            listed.insert(key.clone(), t);
            pairs.push((key, new_key));
        }
        let order = self
            .layout
            .interleave_by_prefix(pairs.iter().map(|(k, _)| k.clone()).collect());
        let dst_of: std::collections::HashMap<String, String> = pairs.into_iter().collect();
        let total = order.len();
        // Every key below `to` is new (the check found it empty or absent): a copy lands
        // only where nothing is, so a file another client wrote there meanwhile stays
        // theirs and the rename fails. The marker of a directory renamed over excepted.
        let absent = (!self.cfg.local_exclusive_creates).then_some(WriteIf::Absent);
        let absent = absent.as_ref();
        let results: Vec<StoreResult<(String, Option<String>)>> = stream::iter(order.iter())
            .map(|src| {
                let dst = dst_of.get(src).cloned().unwrap_or_default();
                let t = listed.get(src);
                let (size, etag) = t.map_or((0, None), |t| (t.size, t.etag.as_deref()));
                let class = t.and_then(|t| t.class.copy_headers());
                let cond = if dst == to_marker { None } else { absent };
                async move {
                    let copy = CopySpec::new(src, &dst)
                        .from_version(etag)
                        .only_if(cond)
                        .with_headers(class.as_ref());
                    self.copy_object(&copy, size).await.map(|made| (dst, made))
                }
            })
            .buffer_unordered(self.cfg.fanout.max(1))
            .collect()
            .await;
        let failures: Vec<&StoreError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if let Some(first) = failures.first() {
            // Take back the copies that did land, each only at the version it made, so the
            // tree exists under one name only.
            let made: std::collections::HashMap<String, Option<String>> =
                results.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
            let copied = self.layout.interleave_by_prefix(made.keys().cloned().collect());
            let cleanup = self
                .delete_keys(
                    copied
                        .into_iter()
                        .map(|k| {
                            let etag = made.get(&k).cloned().flatten();
                            DeleteTarget::version(k, etag)
                        })
                        .collect(),
                )
                .await;
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
        // An implicit directory becomes an explicit one, so it survives being emptied; a
        // marker another host made meanwhile is as good (`If-None-Match: *`).
        if !has_marker {
            match self
                .store
                .put_if(&to_marker, Bytes::new(), &UserMeta::new(), Some(&WriteIf::Absent))
                .await
            {
                Ok(_) | Err(StoreError::PreconditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Each source goes only at the version copied: one another client wrote meanwhile
        // stays under the old name (logged).
        let targets = order
            .into_iter()
            .map(|k| {
                let etag = listed.get(&k).and_then(|t| t.etag.clone());
                DeleteTarget::version(k, etag)
            })
            .collect();
        self.delete_keys(targets).await
    }

    /// Deletes `path` and everything below it with DeleteObjects, keys interleaved across
    /// prefixes so consecutive deletes hit different partitions. Returns the keys deleted.
    pub async fn remove_tree(&self, path: &RelPath) -> FsResult<usize> {
        let mut keys: Vec<DeleteTarget> = self
            .list_tree(path)
            .await?
            .into_iter()
            .filter(|t| self.layout.key_to_path(&t.key).is_some())
            .map(|TreeKey { key, etag, .. }| DeleteTarget::version(key, etag))
            .collect();
        if !path.is_root()
            && let Some(info) = self.stat(path).await?
            && info.kind != Kind::Dir
        {
            keys.push(DeleteTarget::version(
                self.layout.file_key(path)?,
                info.version().map(str::to_string),
            ));
        }
        let n = keys.len();
        self.delete_keys(keys).await?;
        self.cache.clear();
        Ok(n)
    }

    /// DeleteObjects in batches of 1000, keys interleaved across prefixes, each only at the
    /// version it names ([`crate::store::delete::delete_versions`]): a key another client
    /// wrote since stays (logged), and is no failure. One batch at a time: the stack below
    /// retries a failed key by the server's own conditions (deferred deletes).
    pub(in crate::fs) async fn delete_keys(&self, keys: Vec<DeleteTarget>) -> FsResult<()> {
        let layout = self.layout.clone();
        let prefix: crate::store::PrefixFn = Arc::new(move |k: &str| layout.prefix_label(k));
        let conds = crate::store::delete::DeleteConditions::S3;
        let removed = crate::store::delete::delete_versions(self.store.as_ref(), keys, conds, &prefix, 1).await?;
        if let Some(f) = removed.failed.first() {
            return Err(FsError::new(
                libc::EIO,
                format!("deleting {f} ({} keys failed)", removed.failed.len()),
            ));
        }
        Ok(())
    }

    /// `fsync` of a directory: queued deletes have reached S3 when this returns.
    pub async fn sync_deletes(&self) -> FsResult<()> {
        Ok(self.store.flush().await?)
    }
}

/// A change refused because the object is no longer the version this mount knew: another
/// client replaced it, and their object stays.
pub(in crate::fs) fn replaced_elsewhere(path: &RelPath) -> FsError {
    FsError::new(
        libc::ESTALE,
        format!("{path}: replaced by another client meanwhile; their version stays"),
    )
}

/// An object's user metadata with the POSIX keys the mount owns replaced by `posix`'s.
/// An s3fs `ctime` key there moves to now: its metadata changed.
fn merged_meta(meta: UserMeta, posix: &Posix) -> UserMeta {
    let mut meta = crate::fs::posix::foreign_meta(meta);
    meta.extend(posix.to_meta());
    meta
}
