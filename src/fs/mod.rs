//! The filesystem core, free of FUSE, in two parts:
//!
//! - the [`Namespace`] ([`namespace`], [`listing`], [`changes`]): what a path is and what a
//!   directory holds, over every prefix, behind the metadata cache, and the changes of paths
//!   in S3. No inodes or open files: the bucket commands use it without a mount.
//! - the [`Core`] of a mount: the inode and handle tables and the open files ([`files`],
//!   [`attrs`]), the operations the kernel asks for on inodes ([`ops`]), each resolved to
//!   paths and handed to the namespace. Files being written are shown by the namespace
//!   through the [`Pending`] view the core gives it.
//!
//! File bodies go through the data path ([`crate::data`]); `flush`/`release` of a written
//! file returns only when S3 has it.

mod attrs;
mod budget;
pub mod cache;
mod changes;
mod dirs;
pub mod error;
mod files;
pub mod flight;
mod handles;
pub mod inodes;
mod listing;
mod namespace;
mod ops;
pub mod posix;
#[cfg(test)]
mod tests;
pub mod xattr;

use crate::data::read::{ObjectReads, ReadConfig};
use crate::defaults;
use crate::layout::{Layout, RelPath};
use crate::store::ObjectStore;
use crate::store::stats::RequestStats;
pub use attrs::AttrChanges;
use cache::{EntryInfo, Kind, MetaCache};
pub use dirs::{DirEntry, OpenDir};
use error::{FsError, FsResult};
use files::OpenFiles;
use inodes::Inodes;
pub use namespace::{Namespace, Pending};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

/// Tunables of the filesystem core. Every bound on concurrency or memory is here.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long attributes and listings are trusted; 0 disables the cache.
    pub metadata_ttl: Duration,
    /// Cached path entries at most (listings: a tenth of this).
    pub cache_capacity: usize,
    /// Concurrent requests of one fan-out (listing, emptiness check, directory rename).
    pub fanout: usize,
    /// First part size of multipart uploads (grows every 1,000 parts).
    pub part_size: usize,
    /// Parts of one file uploading at once.
    pub upload_inflight: usize,
    /// How server-side copies (rename, chmod of a closed file) are sent: CopyObject up to
    /// its limit, part by part above.
    pub copy: crate::store::copy::CopyLimits,
    /// How sequential readers are read ahead (per stream).
    pub read: ReadConfig,
    /// Bytes read ahead by the whole mount at most (requested or fetched, not yet read).
    pub read_budget: u64,
    /// HEADs in flight while a directory's entries are looked up in listing order (`ls -l`,
    /// `find`, `stat *`): each lookup of an entry the listing knows only by name starts
    /// HEADs for the entries after it. 0 disables the prefetch.
    pub attr_prefetch: usize,
    /// Listed entries are taken as the listing describes them (size, LastModified, a file
    /// or a directory): no HEAD for their POSIX metadata, no symlinks.
    pub trust_listing: bool,
    /// O_EXCL decided by this mount's view (no conditional create in S3).
    pub local_exclusive_creates: bool,
    /// A rewrite of an existing object keeps its tags (one GetObjectTagging per rewrite of
    /// an object this mount did not write tagless itself).
    pub keep_tags: bool,
    /// Where files being modified are staged; `lost+found/` below it keeps data that could
    /// not be uploaded.
    pub cache_dir: PathBuf,
    /// Bytes of staged files at most; writes past it fail with ENOSPC.
    pub cache_size: u64,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub read_only: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            metadata_ttl: Duration::from_secs_f64(defaults::METADATA_TTL_SECS),
            cache_capacity: defaults::CACHE_ENTRIES,
            fanout: defaults::FANOUT,
            part_size: defaults::PART_SIZE_MIB << 20,
            upload_inflight: defaults::UPLOAD_PARTS,
            copy: crate::store::copy::CopyLimits::default(),
            read: ReadConfig::default(),
            read_budget: defaults::READ_MEMORY_MIB << 20,
            attr_prefetch: defaults::ATTR_PREFETCH,
            trust_listing: false,
            local_exclusive_creates: false,
            keep_tags: true,
            // The user's private cache directory, as the mount's `--cache-dir` defaults to:
            // never a shared temporary one (private.rs).
            cache_dir: crate::private::default_dir(crate::private::Place::Cache),
            cache_size: defaults::CACHE_SIZE_MIB << 20,
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            read_only: false,
        }
    }
}

/// Attributes of an inode, defaults applied, as the adapter reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub nlink: u32,
    /// As set with utimens in this mount, else the mtime (reads do not move it).
    pub atime: SystemTime,
    pub size: u64,
    pub mtime: SystemTime,
    /// The last change of its attributes this mount made (else mtime): S3 keeps no ctime.
    pub ctime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// A special file's type bits (S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK), else 0: `kind` is
    /// then File.
    pub special: u32,
    /// A device's number.
    pub rdev: u32,
}

enum Handle {
    /// A file handle. Reads go to the inode's open state when it has one (so every handle
    /// sees writes), else to this handle's own reader.
    File {
        ino: u64,
        reader: Option<Arc<ObjectReads>>,
        writable: bool,
        /// Opened by `execve` (the kernel's FMODE_EXEC): the file is being executed for as
        /// long as this handle lives.
        exec: bool,
    },
    Dir(Arc<OpenDir>),
}

/// A mount's filesystem: the inode and handle tables and the open files, over its
/// [`Namespace`].
pub struct Core {
    /// Itself, for the background tasks it spawns (directory listings).
    me: Weak<Core>,
    ns: Arc<Namespace>,
    /// The namespace's, shared: the open files' changes update it.
    cache: Arc<MetaCache>,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    files: OpenFiles,
}

/// Removes the staging directories of mounts that are no longer running (their inodes, and
/// so their staging files, are gone; data they could not upload is in `lost+found/`).
fn clean_stale_staging(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        let pid = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok());
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = pid.is_some_and(
            |p| unsafe { libc::kill(p, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM),
        );
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    pub fn new(layout: Layout, store: Arc<dyn ObjectStore>, stats: Arc<RequestStats>, cfg: FsConfig) -> Arc<Self> {
        let staging_dir = cfg.cache_dir.join("staging").join(std::process::id().to_string());
        clean_stale_staging(&cfg.cache_dir.join("staging"));
        Arc::new_cyclic(|me: &Weak<Core>| {
            let pending: Weak<dyn Pending> = me.clone();
            let ns = Namespace::new(layout, store, stats, cfg, Some(pending));
            Core {
                me: me.clone(),
                cache: ns.cache.clone(),
                files: OpenFiles::new(ns.clone(), staging_dir),
                ns,
                inodes: Mutex::new(Inodes::default()),
                handles: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
            }
        })
    }

    /// The namespace this mount shows.
    pub fn namespace(&self) -> &Arc<Namespace> {
        &self.ns
    }

    /// What `path` is ([`Namespace::stat`], with this mount's files being written).
    pub async fn stat(&self, path: &RelPath) -> FsResult<Option<EntryInfo>> {
        self.ns.stat(path).await
    }

    /// The children of `dir` ([`Namespace::list_dir`]).
    pub async fn list_dir(&self, dir: &RelPath) -> FsResult<cache::Listing> {
        self.ns.list_dir(dir).await
    }

    /// Deletes `path` and everything below it ([`Namespace::remove_tree`]).
    pub async fn remove_tree(&self, path: &RelPath) -> FsResult<usize> {
        self.ns.remove_tree(path).await
    }

    /// The request counters (also per FUSE operation).
    pub fn stats(&self) -> &Arc<RequestStats> {
        &self.ns.stats
    }

    pub fn config(&self) -> &FsConfig {
        &self.ns.cfg
    }

    pub fn layout(&self) -> &Layout {
        &self.ns.layout
    }

    /// This mount changed `ino`'s attributes now.
    fn attributes_changed(&self, ino: u64) {
        lock(&self.inodes).changed(ino, SystemTime::now());
    }

    /// This mount created, removed or renamed an entry of `path`'s parent now.
    fn entry_changed(&self, path: &RelPath) {
        if let Some(parent) = path.parent() {
            lock(&self.inodes).entries_changed(&parent, SystemTime::now());
        }
    }

    /// Removes this mount's staging directory (at unmount, after `flush_all`).
    pub fn clean_staging(&self) {
        self.files.clean_staging();
    }

    /// Counters and cache facts, as text (`user.prefixfs.stats` on the mount root).
    pub fn stats_text(&self) -> String {
        let mut s = self.ns.stats.snapshot().to_text();
        for (p, c) in self.ns.stats.prefix_snapshot() {
            let requests: u64 = c.requests.values().sum();
            let rate = c
                .rate_limit
                .map(|r| format!("{r:.0}/s"))
                .unwrap_or_else(|| "unpaced".into());
            s.push_str(&format!(
                "prefix {p}: requests={requests} throttles={} retries={} pacing={rate}\n",
                c.throttles, c.retries
            ));
        }
        s.push_str(&self.ns.stats.caller_text());
        s.push_str(&format!(
            "inodes {}\nopen_handles {}\nopen_files {}\nstaged_bytes {}\n",
            lock(&self.inodes).len(),
            lock(&self.handles).len(),
            self.files.len(),
            self.files.staged_bytes()
        ));
        s
    }

    fn path_of(&self, ino: u64) -> FsResult<RelPath> {
        lock(&self.inodes)
            .get(ino)
            .map(|i| i.path.clone())
            .ok_or_else(|| FsError::new(libc::ESTALE, format!("inode {ino} is not known (forgotten)")))
    }

    fn child_path(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<RelPath> {
        let name = name.to_str().ok_or_else(|| {
            FsError::new(
                libc::EINVAL,
                format!("name {name:?} is not valid UTF-8: S3 keys must be UTF-8"),
            )
        })?;
        let path = self.path_of(parent)?.join(name)?;
        // The file key must fit in S3's key limit. (The marker key, one byte longer, is
        // checked by mkdir: a listed file whose key has exactly the limit is reachable.)
        self.ns.layout.file_key(&path)?;
        Ok(path)
    }

    /// Attributes with the mount's defaults for what the object does not record.
    fn attr(&self, ino: u64, info: EntryInfo) -> Attr {
        let times = lock(&self.inodes).times(ino);
        self.attr_with(ino, info, times)
    }

    /// [`Core::attr`] with the inode's times already read (under a lock its caller holds).
    fn attr_with(&self, ino: u64, info: EntryInfo, times: inodes::Times) -> Attr {
        let default_perm = match info.kind {
            Kind::Dir => self.ns.cfg.dir_mode,
            Kind::File => self.ns.cfg.file_mode,
            Kind::Symlink => 0o777,
        };
        // A directory's entries changed here later than its object says: that is its mtime.
        let mtime = match times.entries_changed {
            Some(t) if info.kind == Kind::Dir => t.max(info.mtime),
            _ => info.mtime,
        };
        Attr {
            ino,
            kind: info.kind,
            nlink: match info.kind {
                Kind::Dir => self.dir_links(ino),
                _ => 1,
            },
            size: info.size,
            // This mount's own times first, then what s3fs stored, then the mtime.
            atime: times.accessed.or(info.posix.atime).unwrap_or(mtime),
            mtime,
            ctime: times.changed.or(info.posix.ctime).map_or(mtime, |c| c.max(mtime)),
            perm: info.posix.mode.map(|m| (m & 0o7777) as u16).unwrap_or(default_perm),
            uid: info.posix.uid.unwrap_or(self.ns.cfg.uid),
            gid: info.posix.gid.unwrap_or(self.ns.cfg.gid),
            special: info.special().unwrap_or(0),
            rdev: info.special().and(info.posix.rdev).unwrap_or(0),
        }
    }

    /// A directory's link count as POSIX counts it (`.`, its entry in the parent, and each
    /// subdirectory's `..`), when its listing is cached; else 2. Never a request: S3 keeps
    /// no link counts, and `find` relies on d_type, not on this.
    fn dir_links(&self, ino: u64) -> u32 {
        let Ok(path) = self.path_of(ino) else { return 2 };
        let Some(listing) = self.cache.listing(&path) else {
            return 2;
        };
        let subdirs = listing.values().filter(|e| e.kind == Kind::Dir).count();
        2u32.saturating_add(u32::try_from(subdirs).unwrap_or(u32::MAX))
    }

    fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }
}

impl Pending for Core {
    fn pending_at(&self, path: &RelPath) -> Option<EntryInfo> {
        self.open_file_info(path)
    }

    fn pending_in(&self, dir: &RelPath) -> Vec<(String, EntryInfo)> {
        self.files.pending_in(dir)
    }
}
