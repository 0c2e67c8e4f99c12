//! The metadata cache: attributes of paths (negative entries included) and whole directory
//! listings, each with a TTL, in bounded LRUs.
//!
//! Invariants: the mount's own writes update or invalidate the affected entries before the
//! operation returns, so this mount always sees its own changes; other writers' changes
//! become visible when an entry's TTL runs out (the consistency model in the README).

use super::posix::Posix;
use crate::layout::RelPath;
use lru::LruCache;
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// What the cache knows of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryInfo {
    pub kind: Kind,
    pub size: u64,
    /// S3's LastModified, unless `posix.mtime` says otherwise.
    pub mtime: SystemTime,
    pub posix: Posix,
    /// False for entries known only from a listing (no user metadata): attributes need a HEAD.
    pub full: bool,
}

impl EntryInfo {
    pub fn new(kind: Kind, size: u64, mtime: SystemTime) -> Self {
        EntryInfo {
            kind,
            size,
            mtime,
            posix: Posix::default(),
            full: true,
        }
    }

    pub fn with_posix(mut self, posix: Posix) -> Self {
        self.posix = posix;
        if let Some(t) = posix.mtime {
            self.mtime = t;
        }
        if posix.is_symlink() {
            self.kind = Kind::Symlink;
        }
        self
    }

    pub fn partial(mut self) -> Self {
        self.full = false;
        self
    }
}

/// A directory's children by name, sorted.
pub type Listing = Arc<BTreeMap<String, EntryInfo>>;

struct Timed<T> {
    value: T,
    at: Instant,
}

pub struct MetaCache {
    ttl: Duration,
    entries: Mutex<LruCache<RelPath, Timed<Option<EntryInfo>>>>,
    dirs: Mutex<LruCache<RelPath, Timed<Listing>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MetaCache {
    /// `capacity` bounds the number of path entries; listings are bounded to a tenth of it
    /// (each can be large).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        let dir_cap = NonZeroUsize::new((capacity / 10).max(1)).unwrap_or(NonZeroUsize::MIN);
        MetaCache {
            ttl,
            entries: Mutex::new(LruCache::new(cap)),
            dirs: Mutex::new(LruCache::new(dir_cap)),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.ttl
    }

    /// `Some(None)` is a cached negative entry; `None` means "ask S3".
    pub fn entry(&self, path: &RelPath) -> Option<Option<EntryInfo>> {
        if let Some(t) = lock(&self.entries).get(path)
            && self.fresh(t.at)
        {
            return Some(t.value);
        }
        // A fresh listing of the parent answers too.
        let parent = path.parent()?;
        let listing = self.listing(&parent)?;
        Some(listing.get(path.name()).copied())
    }

    pub fn put_entry(&self, path: &RelPath, info: Option<EntryInfo>) {
        if self.ttl.is_zero() {
            return;
        }
        lock(&self.entries).put(
            path.clone(),
            Timed {
                value: info,
                at: Instant::now(),
            },
        );
    }

    pub fn listing(&self, dir: &RelPath) -> Option<Listing> {
        let mut dirs = lock(&self.dirs);
        match dirs.get(dir) {
            Some(t) if self.fresh(t.at) => Some(t.value.clone()),
            _ => None,
        }
    }

    pub fn put_listing(&self, dir: &RelPath, listing: Listing) {
        if self.ttl.is_zero() {
            return;
        }
        lock(&self.dirs).put(
            dir.clone(),
            Timed {
                value: listing,
                at: Instant::now(),
            },
        );
    }

    /// Records the mount's own creation or update of `path`.
    pub fn upsert(&self, path: &RelPath, info: EntryInfo) {
        self.put_entry(path, Some(info));
        self.edit_parent_listing(path, |m| {
            m.insert(path.name().to_string(), info);
        });
    }

    /// Records the mount's own removal of `path`.
    pub fn remove(&self, path: &RelPath) {
        self.put_entry(path, None);
        lock(&self.dirs).pop(path);
        self.edit_parent_listing(path, |m| {
            m.remove(path.name());
        });
    }

    /// Forgets everything (after a directory rename, which moves whole subtrees).
    pub fn clear(&self) {
        lock(&self.entries).clear();
        lock(&self.dirs).clear();
    }

    fn edit_parent_listing(&self, path: &RelPath, f: impl FnOnce(&mut BTreeMap<String, EntryInfo>)) {
        let Some(parent) = path.parent() else { return };
        let mut dirs = lock(&self.dirs);
        if let Some(t) = dirs.get_mut(&parent) {
            f(Arc::make_mut(&mut t.value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: Kind) -> EntryInfo {
        EntryInfo::new(kind, 1, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn own_writes_update_cached_listing_and_negative_entries() {
        let c = MetaCache::new(Duration::from_secs(60), 100);
        let dir = RelPath::parse("d").unwrap();
        let f = dir.join("f").unwrap();
        assert_eq!(c.entry(&f), None);
        c.put_listing(&dir, Arc::new(BTreeMap::new()));
        assert_eq!(c.entry(&f), Some(None), "a fresh empty listing answers negatively");
        c.upsert(&f, info(Kind::File));
        assert_eq!(c.listing(&dir).unwrap().len(), 1);
        c.remove(&f);
        assert_eq!(c.entry(&f), Some(None));
        assert!(c.listing(&dir).unwrap().is_empty());
    }

    #[test]
    fn entries_expire_and_zero_ttl_caches_nothing() {
        let c = MetaCache::new(Duration::from_millis(20), 100);
        let p = RelPath::parse("x").unwrap();
        c.put_entry(&p, Some(info(Kind::Dir)));
        assert!(c.entry(&p).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(c.entry(&p).is_none());
        let z = MetaCache::new(Duration::ZERO, 100);
        z.put_entry(&p, None);
        assert!(z.entry(&p).is_none());
    }

    #[test]
    fn capacity_is_bounded() {
        let c = MetaCache::new(Duration::from_secs(60), 10);
        for i in 0..100 {
            c.put_entry(&RelPath::parse(&format!("f{i}")).unwrap(), None);
        }
        assert_eq!(lock(&c.entries).len(), 10);
    }
}
