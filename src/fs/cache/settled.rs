//! Settled directories (`--settled-after`, `--settled-ttl`). Date-shaped buckets change
//! today's directory and almost never last year's: a directory whose newest object at or
//! below it is older than `after`, and that this mount has not changed, is trusted for `ttl`
//! instead of the metadata TTL. Its listing, and the attributes HEADs add to it, are kept in
//! the cache directory ([`files`]), so a remount's `find` or `du` over last year is answered
//! from disk within `ttl`, and after it costs one listing per directory that carries every
//! attribute of an unchanged version over (no HEAD again), not a walk with a HEAD per file.
//!
//! Invariants:
//! 1. Settled means known: the newest object below a directory is known only from its own
//!    files and its subdirectories' settled listings (a walk's whole-subtree listing knows
//!    them all at once); a directory with a subdirectory of unknown age is not settled.
//! 2. A change of this mount unsettles the changed path's parent and every ancestor, for the
//!    rest of the mount, in memory first, then in the change log on disk, before the
//!    change returns (so a crash never brings a settled listing back over it).
//! 3. A HEAD that shows a version newer than the listing knew makes the directory's newest
//!    that, so another host's recent write unsettles it once seen.
//! 4. Another host's change in a settled directory is seen within `ttl` (the README states
//!    the window); nothing on disk is trusted past it, only used to carry attributes over.

use super::{DirFacts, Listing, MetaCache, TimedListing, lock};
use crate::layout::RelPath;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub(super) mod files;
use files::{SettledFiles, StoredDir, StoredEntry, StoredFacts};

/// When a directory counts as settled, and how long a settled one is trusted.
#[derive(Debug, Clone, PartialEq)]
pub struct SettledConfig {
    /// Its newest object is older than this (`--settled-after`).
    pub after: Duration,
    /// Revalidated once per this (`--settled-ttl`).
    pub ttl: Duration,
    /// Where the listings are kept: a path without extension in a private directory (the
    /// scope's files get `.json`, `.log`, `.lock`); None: in memory only.
    pub file: Option<PathBuf>,
}

/// Entries of a directory at most whose age is worked out again when a subdirectory's
/// becomes known (see [`MetaCache::settle_up`]).
const SETTLE_UP_MAX: usize = 4096;

pub(super) struct SettledState {
    cfg: SettledConfig,
    /// Directories this mount changed: not settled while it runs.
    changed: Mutex<HashSet<RelPath>>,
    files: Option<SettledFiles>,
    /// A settled listing was stored, edited or unsettled since the last flush.
    dirty: AtomicBool,
}

impl MetaCache {
    /// Settles directories as `cfg` says, with the listings an earlier mount kept.
    pub fn with_settled(mut self, cfg: SettledConfig) -> Self {
        let files = cfg.file.as_ref().and_then(|base| match SettledFiles::open(base) {
            Ok(Some(f)) => Some(f),
            Ok(None) => {
                tracing::info!(file = %base.display(), "another mount of this bucket keeps the settled listings: this one settles in memory only");
                None
            }
            Err(e) => {
                tracing::warn!(file = %base.display(), error = %e, "cannot keep settled listings on disk: settling in memory only");
                None
            }
        });
        let loaded = files.as_ref().map(SettledFiles::load).unwrap_or_default();
        self.settled = Some(SettledState {
            cfg,
            changed: Mutex::default(),
            files,
            dirty: AtomicBool::new(false),
        });
        // Stored as already past the metadata TTL: only `settled_trusted` vouches for them.
        let Some(at) = std::time::Instant::now().checked_sub(self.ttl) else {
            return self;
        };
        let mut count = 0;
        for l in loaded {
            let newest = Some(l.newest);
            let settled = self.settles(&l.dir, newest);
            let listing: Listing = Arc::new(l.entries);
            lock(&self.dirs).put(
                l.dir.clone(),
                TimedListing {
                    value: listing,
                    at,
                    validated: l.validated,
                    newest,
                    settled,
                },
            );
            if let Some(f) = l.facts {
                lock(&self.facts).insert(l.dir, (at, f));
            }
            count += usize::from(settled);
        }
        if count > 0 {
            tracing::info!(directories = count, "settled listings kept by an earlier mount");
        }
        self
    }

    /// Whether a listing of `dir` whose newest object is `newest` counts as settled now.
    pub(super) fn settles(&self, dir: &RelPath, newest: Option<SystemTime>) -> bool {
        let Some(s) = &self.settled else { return false };
        newest.is_some_and(|n| n + s.cfg.after <= SystemTime::now()) && !lock(&s.changed).contains(dir)
    }

    /// Whether a settled listing is still trusted (within `--settled-ttl` of its fetch).
    pub(super) fn settled_trusted(&self, t: &TimedListing) -> bool {
        t.settled
            && self
                .settled
                .as_ref()
                .is_some_and(|s| t.validated.elapsed().is_ok_and(|age| age < s.cfg.ttl))
    }

    /// The newest object at or below `dir` whose listing is `listing`: its files' and its
    /// subdirectories' (from their cached listings), or None when a subdirectory's is not
    /// known. Only worked out when directories settle.
    pub(super) fn newest_of(
        &self,
        dir: &RelPath,
        listing: &Listing,
        dirs: &lru::LruCache<RelPath, TimedListing>,
    ) -> Option<SystemTime> {
        self.settled.as_ref()?;
        let mut newest = SystemTime::UNIX_EPOCH;
        for (name, info) in listing.iter() {
            let t = match info.kind {
                super::Kind::Dir => dirs.peek(&dir.join(name).ok()?)?.newest?,
                _ => info.s3_modified,
            };
            newest = newest.max(t);
        }
        Some(newest)
    }

    /// `dir`'s newest object became known: so may its ancestors' be (a walk lists the
    /// subtree below a directory after the directory itself). Each ancestor is worked out
    /// again only while its age is unknown, and only when small enough
    /// ([`SETTLE_UP_MAX`]) that doing so per child stays cheap.
    pub(super) fn settle_up(&self, dirs: &mut lru::LruCache<RelPath, TimedListing>, dir: &RelPath) {
        let mut dir = dir.clone();
        while let Some(parent) = dir.parent() {
            let listing = match dirs.peek(&parent) {
                Some(t) if t.newest.is_none() && t.value.len() <= SETTLE_UP_MAX => t.value.clone(),
                _ => return,
            };
            let Some(newest) = self.newest_of(&parent, &listing, dirs) else {
                return;
            };
            let settled = self.settles(&parent, Some(newest));
            if let Some(t) = dirs.peek_mut(&parent) {
                t.newest = Some(newest);
                t.settled = settled;
            }
            if settled {
                self.settled_edited();
            }
            dir = parent;
        }
    }

    /// This mount changed `path` (`created_dir`: made it a directory, itself not settled
    /// then; `subtree`: removed or moved a directory, everything below it too): its parent
    /// and every ancestor are not settled while the mount runs.
    pub(super) fn unsettle(&self, path: &RelPath, created_dir: bool, subtree: bool) {
        let Some(s) = &self.settled else { return };
        let mut fresh = Vec::new();
        {
            let mut changed = lock(&s.changed);
            let mut p = if created_dir { Some(path.clone()) } else { path.parent() };
            while let Some(dir) = p {
                if !changed.insert(dir.clone()) {
                    // Its ancestors were marked with it.
                    break;
                }
                p = dir.parent();
                fresh.push(dir);
            }
        }
        if fresh.is_empty() && !subtree {
            return;
        }
        {
            let mut dirs = lock(&self.dirs);
            for d in &fresh {
                if let Some(t) = dirs.peek_mut(d) {
                    t.settled = false;
                }
            }
        }
        s.dirty.store(true, Ordering::Relaxed);
        if let Some(files) = &s.files {
            for d in &fresh {
                files.log_drop(d, false);
            }
            if subtree {
                files.log_drop(path, true);
            }
        }
    }

    /// S3 said otherwise about `dir`'s listing (another host changed it): not kept.
    pub(super) fn forget_settled(&self, dir: &RelPath) {
        if let Some(files) = self.settled.as_ref().and_then(|s| s.files.as_ref()) {
            files.log_drop(dir, false);
        }
    }

    /// A settled listing changed (attributes a HEAD added): the next flush keeps it.
    pub(super) fn settled_edited(&self) {
        if let Some(s) = &self.settled {
            s.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// How many directories are settled and trusted now.
    pub fn settled_count(&self) -> usize {
        if self.settled.is_none() {
            return 0;
        }
        lock(&self.dirs).iter().filter(|(_, t)| self.settled_trusted(t)).count()
    }

    /// Writes the settled listings to disk when they changed since the last flush; how many
    /// were written (0 when nothing changed or nothing is kept on disk).
    pub fn flush_settled(&self) -> usize {
        let Some(s) = &self.settled else { return 0 };
        let Some(files) = &s.files else { return 0 };
        if !s.dirty.swap(false, Ordering::Relaxed) {
            return 0;
        }
        if let Err(e) = files.rotate() {
            tracing::warn!(error = %e, "cannot rotate the settled listings' log");
            s.dirty.store(true, Ordering::Relaxed);
            return 0;
        }
        // Taken after the rotation: a change logged before it is in this snapshot.
        let settled: Vec<(RelPath, Listing, SystemTime, SystemTime, std::time::Instant)> = lock(&self.dirs)
            .iter()
            .filter(|(_, t)| t.settled)
            .filter_map(|(d, t)| Some((d.clone(), t.value.clone(), t.validated, t.newest?, t.at)))
            .collect();
        let facts = lock(&self.facts).clone();
        let stored: Vec<StoredDir> = settled
            .into_iter()
            .map(|(dir, listing, validated, newest, at)| StoredDir {
                facts: facts
                    .get(&dir)
                    .filter(|(a, _)| *a == at)
                    .map(|(_, f): &(_, DirFacts)| StoredFacts::of(f)),
                path: dir.as_str().to_string(),
                validated_ms: files::ms(validated),
                newest_ms: files::ms(newest),
                entries: listing.iter().map(|(n, i)| (n.clone(), StoredEntry::of(i))).collect(),
            })
            .collect();
        let n = stored.len();
        match files.write(stored) {
            Ok(()) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the settled listings");
                s.dirty.store(true, Ordering::Relaxed);
                0
            }
        }
    }
}
