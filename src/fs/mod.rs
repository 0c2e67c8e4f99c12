//! The filesystem core, free of FUSE: inodes, lookup, listing fan-out and merge, the
//! metadata cache, and the operations the kernel asks for, expressed on paths and keys.
//!
//! Requirements and where they live:
//! 1. A path maps to one key (`layout`); a directory exists through its marker or any key
//!    below it in any prefix ([`Core::stat`], [`Core::any_under`]).
//! 2. A listing asks every prefix in parallel, bounded by `fanout`, paginates, and merges into
//!    one sorted, de-duplicated map; a directory shadows a file of the same name ([`listing`]).
//! 3. Metadata answers come from the cache within the TTL; the mount's own writes update it
//!    ([`cache`]).
//! 4. File bodies go through the data path ([`crate::data`]); `flush`/`release` of a written
//!    file returns only when S3 has it.

pub mod cache;
pub mod error;
pub mod inodes;
mod listing;
mod ops;

use crate::data::read::Reader;
use crate::data::upload::Upload;
use crate::layout::{Layout, RelPath};
use crate::store::ObjectStore;
use crate::store::stats::RequestStats;
use cache::{EntryInfo, Kind, MetaCache};
use error::{FsError, FsResult};
use inodes::Inodes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
    pub read_window_min: usize,
    pub read_window_max: usize,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub read_only: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            metadata_ttl: Duration::from_secs(5),
            cache_capacity: 100_000,
            fanout: 16,
            part_size: 8 * 1024 * 1024,
            upload_inflight: 4,
            read_window_min: 1024 * 1024,
            read_window_max: 16 * 1024 * 1024,
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            read_only: false,
        }
    }
}

/// Attributes of an inode, as the adapter reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
}

/// A file being written: shared by its handle and by `getattr`/listings of its path.
#[derive(Clone)]
struct Writer {
    path: RelPath,
    size: Arc<AtomicU64>,
    upload: Arc<tokio::sync::Mutex<Upload>>,
}

enum Handle {
    Read(Arc<tokio::sync::Mutex<Reader>>),
    Write { ino: u64 },
    Dir(Arc<Vec<(String, Kind, u64)>>),
}

pub struct Core {
    layout: Layout,
    store: Arc<dyn ObjectStore>,
    stats: Arc<RequestStats>,
    cfg: FsConfig,
    cache: MetaCache,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Handle>>,
    writers: Mutex<HashMap<u64, Writer>>,
    next_fh: AtomicU64,
    mount_time: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    pub fn new(layout: Layout, store: Arc<dyn ObjectStore>, stats: Arc<RequestStats>, cfg: FsConfig) -> Self {
        Core {
            cache: MetaCache::new(cfg.metadata_ttl, cfg.cache_capacity),
            layout,
            store,
            stats,
            cfg,
            inodes: Mutex::new(Inodes::default()),
            handles: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            mount_time: SystemTime::now(),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Counters and cache facts, as text (`user.prefixfs.stats` on the mount root).
    pub fn stats_text(&self) -> String {
        let mut s = self.stats.snapshot().to_text();
        s.push_str(&format!(
            "inodes {}\nopen_handles {}\n",
            lock(&self.inodes).len(),
            lock(&self.handles).len()
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
        // Both the file key and the marker key must fit in S3's key limit.
        self.layout.dir_marker_key(&path)?;
        Ok(path)
    }

    fn attr(&self, ino: u64, info: EntryInfo) -> Attr {
        Attr {
            ino,
            kind: info.kind,
            size: info.size,
            mtime: info.mtime,
        }
    }

    fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }

    /// What `path` is, from the cache, an open writer, or S3.
    pub async fn stat(&self, path: &RelPath) -> FsResult<Option<EntryInfo>> {
        if path.is_root() {
            return Ok(Some(EntryInfo {
                kind: Kind::Dir,
                size: 0,
                mtime: self.mount_time,
            }));
        }
        if let Some(info) = self.writer_info(path) {
            return Ok(Some(info));
        }
        if let Some(cached) = self.cache.entry(path) {
            return Ok(cached);
        }
        let fkey = self.layout.file_key(path)?;
        let dkey = self.layout.dir_marker_key(path)?;
        let (file, marker) = tokio::join!(self.store.head(&fkey), self.store.head(&dkey));
        let info = match (file, marker) {
            (_, Ok(m)) => Some(EntryInfo {
                kind: Kind::Dir,
                size: 0,
                mtime: m.last_modified,
            }),
            (Err(e), _) if !e.is_not_found() => return Err(e.into()),
            (_, Err(e)) if !e.is_not_found() => return Err(e.into()),
            (Ok(f), _) => {
                if self.any_under(path).await? {
                    tracing::warn!(%path, "both a file and a directory have this name; showing the directory");
                    Some(EntryInfo {
                        kind: Kind::Dir,
                        size: 0,
                        mtime: self.mount_time,
                    })
                } else {
                    Some(EntryInfo {
                        kind: Kind::File,
                        size: f.size,
                        mtime: f.last_modified,
                    })
                }
            }
            (Err(_), Err(_)) => {
                if self.any_under(path).await? {
                    Some(EntryInfo {
                        kind: Kind::Dir,
                        size: 0,
                        mtime: self.mount_time,
                    })
                } else {
                    None
                }
            }
        };
        self.cache.put_entry(path, info);
        Ok(info)
    }

    fn writer_info(&self, path: &RelPath) -> Option<EntryInfo> {
        let ino = lock(&self.inodes).find(path)?;
        let writers = lock(&self.writers);
        let w = writers.get(&ino)?;
        Some(EntryInfo {
            kind: Kind::File,
            size: w.size.load(Ordering::Relaxed),
            mtime: SystemTime::now(),
        })
    }

    /// Files created through this mount that S3 does not have yet, directly in `dir`.
    fn pending_in(&self, dir: &RelPath) -> Vec<(String, EntryInfo)> {
        lock(&self.writers)
            .values()
            .filter(|w| w.path.parent().as_ref() == Some(dir))
            .map(|w| {
                let info = EntryInfo {
                    kind: Kind::File,
                    size: w.size.load(Ordering::Relaxed),
                    mtime: SystemTime::now(),
                };
                (w.path.name().to_string(), info)
            })
            .collect()
    }

    /// Uploads every file still open for writing (before unmount).
    pub async fn flush_all(&self) {
        let uploads: Vec<(RelPath, Arc<tokio::sync::Mutex<Upload>>)> = lock(&self.writers)
            .values()
            .map(|w| (w.path.clone(), w.upload.clone()))
            .collect();
        for (path, up) in uploads {
            if let Err(e) = up.lock().await.finish().await {
                tracing::error!(%path, error = %e, "could not upload file at unmount");
            }
        }
    }
}
