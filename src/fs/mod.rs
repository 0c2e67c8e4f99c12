//! The filesystem core, free of FUSE, in two parts:
//!
//! - the [`Namespace`] ([`namespace`], with its listings and changes): what a path is and what a
//!   directory holds, over every prefix, behind the metadata cache, and the changes of paths
//!   in S3. No inodes or open files: the bucket commands use it without a mount.
//! - the [`Core`] of a mount: the inode and handle tables and the open files ([`files`],
//!   [`attrs`]), the operations the kernel asks for on inodes ([`ops`]), each resolved to
//!   paths and handed to the namespace. Files being written are shown by the namespace
//!   through the open-file table ([`files::OpenTable`]) the core shares with it.
//!
//! File bodies go through the data path ([`crate::data`]); `flush`/`release` of a written
//! file returns only when S3 has it.

mod attrs;
mod budget;
pub mod cache;
mod config;
mod dirs;
pub mod error;
mod files;
pub mod flight;
mod handles;
pub mod inodes;
mod namespace;
mod ops;
pub mod posix;
#[cfg(test)]
mod tests;
pub mod xattr;

use crate::data::read::ObjectReads;
use crate::layout::{Layout, RelPath};
use crate::store::ObjectStore;
use crate::store::stats::RequestStats;
pub use attrs::AttrChanges;
use cache::{EntryInfo, Kind};
pub use config::{FilesConfig, FsConfig, NamespaceConfig};
pub use dirs::{DirEntry, OpenDir};
use error::{FsError, FsResult};
use files::{OpenFiles, OpenTable};
use inodes::Inodes;
pub use namespace::Namespace;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::SystemTime;

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
    /// The whole configuration as given; its namespace and open-file parts are their
    /// owners' copies.
    cfg: FsConfig,
    ns: Arc<Namespace>,
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
        let staging = cfg.files.cache_dir.join("staging");
        let staging_dir = staging.join(std::process::id().to_string());
        clean_stale_staging(&staging);
        let open = Arc::new(OpenTable::default());
        let ns = Namespace::with_open_files(layout, store, stats, cfg.names.clone(), Some(open.clone()));
        Arc::new_cyclic(|me: &Weak<Core>| Core {
            me: me.clone(),
            files: OpenFiles::new(ns.clone(), open, cfg.files.clone(), staging_dir),
            cfg,
            ns,
            inodes: Mutex::new(Inodes::default()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
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
        self.ns.stats()
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    pub fn layout(&self) -> &Layout {
        self.ns.layout()
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
    /// Writes the settled listings to disk when they changed (see `fs::cache::settled`).
    pub fn flush_settled(&self) -> usize {
        self.ns.cache().flush_settled()
    }

    /// The request counters and the memory target's use, as Prometheus metrics.
    pub fn prometheus(&self) -> String {
        let mut s = self.ns.stats().prometheus();
        if let Some(m) = self.files.memory_usage() {
            let metadata = self.ns.cache().names_held() as u64 * crate::data::memory::ENTRY_BYTES;
            s.push_str("# HELP prefixfs_memory_bytes Memory the mount holds against its target, by use.\n# TYPE prefixfs_memory_bytes gauge\n");
            for (what, v) in [
                ("target", m.target),
                ("read_ahead", m.read_ahead),
                ("writes", m.writes),
                ("metadata", metadata),
                ("over", m.over),
            ] {
                s.push_str(&format!("prefixfs_memory_bytes{{use=\"{what}\"}} {v}\n"));
            }
            s.push_str(&format!(
                "# HELP prefixfs_memory_waits_total Writers that waited for memory.\n# TYPE prefixfs_memory_waits_total counter\nprefixfs_memory_waits_total {}\n",
                m.waits
            ));
        }
        s
    }

    pub fn stats_text(&self) -> String {
        let mut s = self.ns.stats().snapshot().to_text();
        for (p, c) in self.ns.stats().prefix_snapshot() {
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
        s.push_str(&self.ns.stats().caller_text());
        s.push_str(&format!(
            "inodes {}\nopen_handles {}\nopen_files {}\nstaged_bytes {}\n",
            lock(&self.inodes).len(),
            lock(&self.handles).len(),
            self.files.len(),
            self.files.staged_bytes()
        ));
        if let Some(m) = self.files.memory_usage() {
            let cache = self.ns.cache();
            s.push_str(&format!(
                "memory_target {}\nmemory_pool {}\nmemory_read_ahead {}\nmemory_writes {}\nmemory_metadata {}\nmemory_waits {}\nmemory_overcommits {}\nmemory_over {}\n",
                m.target,
                m.pool,
                m.read_ahead,
                m.writes,
                cache.names_held() as u64 * crate::data::memory::ENTRY_BYTES,
                m.waits,
                m.overcommits,
                m.over
            ));
        }
        if self.ns.config().settled.is_some() {
            s.push_str(&format!("settled_dirs {}\n", self.ns.cache().settled_count()));
        }
        if let Some(c) = self.files.data_cache() {
            let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            s.push_str(&format!(
                "data_cache_bytes {}\ndata_cache_limit {}\ndata_cache_hits {}\ndata_cache_misses {}\ndata_cache_discarded {}\ndata_cache_evicted {}\n",
                c.used(),
                c.limit(),
                n(&c.counters.hits),
                n(&c.counters.misses),
                n(&c.counters.discarded),
                n(&c.counters.evicted)
            ));
        }
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
        self.ns.layout().file_key(&path)?;
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
            Kind::Dir => self.cfg.dir_mode,
            Kind::File => self.cfg.file_mode,
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
            uid: info.posix.uid.unwrap_or(self.cfg.uid),
            gid: info.posix.gid.unwrap_or(self.cfg.gid),
            special: info.special().unwrap_or(0),
            rdev: info.special().and(info.posix.rdev).unwrap_or(0),
        }
    }

    /// A directory's link count as POSIX counts it (`.`, its entry in the parent, and each
    /// subdirectory's `..`), when its listing is cached; else 2. Never a request: S3 keeps
    /// no link counts, and `find` relies on d_type, not on this.
    fn dir_links(&self, ino: u64) -> u32 {
        let Ok(path) = self.path_of(ino) else { return 2 };
        let Some(listing) = self.ns.cache().listing(&path) else {
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
