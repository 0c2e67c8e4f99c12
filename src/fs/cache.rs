//! The metadata cache: attributes of paths (negative entries included) and whole directory
//! listings, each with a TTL, in bounded LRUs.
//!
//! Invariants: the mount's own writes update or invalidate the affected entries before the
//! operation returns, so this mount always sees its own changes; other writers' changes
//! become visible when an entry's TTL runs out (the consistency model in the README).

use super::posix::Posix;
use crate::layout::RelPath;
use crate::store::ETag;
use lru::LruCache;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

mod entry;
mod settled;
pub use entry::*;
pub use settled::SettledConfig;

/// A directory's children by name, sorted.
pub type Listing = Arc<BTreeMap<String, EntryInfo>>;

struct Timed<T> {
    value: T,
    at: Instant,
}

/// A cached listing: when it was fetched (by the clock for the metadata TTL, by the
/// calendar for `--settled-ttl`), the newest object at or below the directory when known,
/// and whether it is settled (see [`settled`]).
struct TimedListing {
    value: Listing,
    at: Instant,
    validated: SystemTime,
    newest: Option<SystemTime>,
    settled: bool,
}

/// The mount's own changes in a directory while a listing of it is being fetched: the
/// listing may have left before they reached S3, so they are applied to it on arrival.
#[derive(Default)]
struct Fetching {
    fetches: usize,
    changes: Vec<(String, Option<EntryInfo>)>,
}

pub struct MetaCache {
    ttl: Duration,
    entries: Mutex<LruCache<RelPath, Timed<Option<EntryInfo>>>>,
    dirs: Mutex<LruCache<RelPath, TimedListing>>,
    fetching: Mutex<HashMap<RelPath, Fetching>>,
    /// Directories shown by a listing only because foreign keys start with their name
    /// (nothing of this namespace below them, no marker), and when they were found so:
    /// hidden for [`MetaCache::ghost_for`], or until this mount creates something there.
    /// Not for ever: another host may put files there later.
    ghosts: Mutex<HashMap<RelPath, Instant>>,
    /// Subtrees being listed whole (see [`MetaCache::watch_tree`]) and the paths this mount
    /// changed below each meanwhile; `None` once the cache was cleared.
    trees: Mutex<HashMap<u64, Watched>>,
    next_tree: std::sync::atomic::AtomicU64,
    /// Directories being read (`opendir` to `releasedir`): what was fetched for them since
    /// they were opened (their listing, the attributes prefetched for their entries) stays
    /// valid while they are open and for one TTL after the last close, however long the
    /// reader takes (an `ls -l` of 20,000 entries, a slow consumer). Nothing older is
    /// revived: an answer counts only if it was still valid when the directory was opened.
    open_dirs: Mutex<HashMap<RelPath, DirUse>>,
    /// What the fetch of a cached listing saw besides its entries (see [`DirFacts`]), by
    /// the instant that listing was stored: valid as long as that listing is.
    facts: Mutex<HashMap<RelPath, (Instant, DirFacts)>>,
    /// Settled directories (`--settled-after`), when on.
    settled: Option<settled::SettledState>,
    /// Names in all cached listings together at most (see [`MetaCache::with_listed_max`]),
    /// and about how many they hold (counted as listings are stored; see `put_listing_with`).
    listed_max: usize,
    listed: AtomicUsize,
}

/// What a directory's listing saw besides its entries: its own marker (size and version)
/// and whether keys that are not of this namespace lie below it. With a fresh listing that
/// shows the directory empty, `rmdir` needs no request but its marker's delete.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirFacts {
    pub marker: Option<u64>,
    pub marker_etag: Option<ETag>,
    pub foreign: bool,
}

/// The readers of one directory (see `MetaCache::open_dirs`).
struct DirUse {
    handles: usize,
    /// When the first of the current readers opened it.
    since: Instant,
    /// When the last reader closed it (while `handles` is 0).
    closed: Instant,
}

/// A watched subtree's root, and what changed below it (`None`: everything may have).
type Watched = (RelPath, Option<Vec<RelPath>>);

/// A whole-subtree listing in progress (see [`MetaCache::watch_tree`]).
pub struct TreeWatch<'a> {
    cache: &'a MetaCache,
    id: u64,
}

impl TreeWatch<'_> {
    /// Whether the mount changed nothing at or below `dir` since the watch began: only then
    /// may the subtree listing stand for `dir`'s listing.
    pub fn untouched(&self, dir: &RelPath) -> bool {
        match lock(&self.cache.trees).get(&self.id) {
            Some((_, Some(changed))) => !changed.iter().any(|c| c.starts_with(dir)),
            _ => false,
        }
    }

    /// Whether the mount left `path` itself alone since the watch began (its own change is
    /// newer than any answer to a request sent before it).
    pub fn unchanged(&self, path: &RelPath) -> bool {
        match lock(&self.cache.trees).get(&self.id) {
            Some((_, Some(changed))) => !changed.contains(path),
            _ => false,
        }
    }
}

impl Drop for TreeWatch<'_> {
    fn drop(&mut self) {
        lock(&self.cache.trees).remove(&self.id);
    }
}

/// A listing fetch in progress (see [`MetaCache::begin_fetch`]); dropping it unfinished
/// forgets the changes recorded for it.
pub struct FetchToken<'a> {
    cache: &'a MetaCache,
    dir: RelPath,
}

impl FetchToken<'_> {
    /// Stores the fetched listing: attributes of unchanged objects carried over from what
    /// the cache knew (no HEAD needed again), then the mount's own changes made meanwhile.
    pub fn finish(self, listing: BTreeMap<String, EntryInfo>) -> Listing {
        self.finish_with(listing, None)
    }

    /// [`FetchToken::finish`], with what the fetch saw besides the entries.
    pub fn finish_with(self, mut listing: BTreeMap<String, EntryInfo>, facts: Option<DirFacts>) -> Listing {
        let c = self.cache;
        let previous = lock(&c.dirs).peek(&self.dir).map(|t| t.value.clone());
        {
            let mut entries = lock(&c.entries);
            for (name, listed) in listing.iter_mut() {
                if listed.full {
                    continue;
                }
                let Ok(path) = self.dir.join(name) else { continue };
                let known = entries
                    .peek(&path)
                    .and_then(|t| t.value.clone())
                    .or_else(|| previous.as_ref().and_then(|l| l.get(name).cloned()));
                if let Some(known) = known.filter(|k| k.still_describes(listed)) {
                    *listed = known.clone();
                    // Keep the path entry as fresh as the listing that confirmed it.
                    entries.put(
                        path,
                        Timed {
                            value: Some(known),
                            at: Instant::now(),
                        },
                    );
                }
            }
        }
        if let Some(f) = lock(&c.fetching).get_mut(&self.dir) {
            for (name, change) in f.changes.drain(..) {
                match change {
                    Some(info) => listing.insert(name, info),
                    None => listing.remove(&name),
                };
            }
        }
        let listing = Arc::new(listing);
        c.put_listing_with(&self.dir, listing.clone(), facts);
        listing
    }
}

impl Drop for FetchToken<'_> {
    fn drop(&mut self) {
        let mut fetching = lock(&self.cache.fetching);
        if let Some(f) = fetching.get_mut(&self.dir) {
            f.fetches -= 1;
            if f.fetches == 0 {
                fetching.remove(&self.dir);
            }
        }
    }
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
            fetching: Mutex::new(HashMap::new()),
            ghosts: Mutex::default(),
            trees: Mutex::default(),
            next_tree: Default::default(),
            open_dirs: Mutex::default(),
            facts: Mutex::default(),
            settled: None,
            listed_max: usize::MAX,
            listed: AtomicUsize::new(0),
        }
    }

    /// Holds at most `names` names in all cached listings together (their share of the
    /// memory target).
    pub fn with_listed_max(mut self, names: usize) -> Self {
        self.listed_max = names;
        self
    }

    /// Path entries and names in listings held now (what the metadata caches cost).
    pub fn names_held(&self) -> usize {
        let listed: usize = lock(&self.dirs).iter().map(|(_, t)| t.value.len()).sum();
        listed + lock(&self.entries).len()
    }

    /// A reader opened `dir` (see `MetaCache::open_dirs`).
    pub fn dir_opened(&self, dir: &RelPath) {
        let mut open = lock(&self.open_dirs);
        let now = Instant::now();
        let ttl = self.ttl;
        open.retain(|_, u| u.handles > 0 || u.closed.elapsed() < ttl);
        let u = open.entry(dir.clone()).or_insert(DirUse {
            handles: 0,
            since: now,
            closed: now,
        });
        u.handles += 1;
    }

    /// A reader of `dir` closed it.
    pub fn dir_closed(&self, dir: &RelPath) {
        if let Some(u) = lock(&self.open_dirs).get_mut(dir) {
            u.handles = u.handles.saturating_sub(1);
            u.closed = Instant::now();
        }
    }

    /// True when an answer about `dir` (its listing) or an entry in it, cached at `at`, is
    /// still valid: younger than the TTL, or fetched while `dir` is being read (see
    /// `MetaCache::open_dirs`).
    fn valid(&self, dir: Option<&RelPath>, at: Instant) -> bool {
        if self.fresh(at) {
            return true;
        }
        let Some(dir) = dir else { return false };
        match lock(&self.open_dirs).get(dir) {
            // Valid when the reader opened it, or fetched since.
            Some(u) => at + self.ttl > u.since && (u.handles > 0 || u.closed.elapsed() < self.ttl),
            None => false,
        }
    }

    /// Starts watching the subtree at `root`: every change this mount makes at or below it
    /// from now on is recorded, so that an answer to a request sent before the change (a
    /// whole-subtree listing, a HEAD) is not cached over it.
    pub fn watch_tree(&self, root: &RelPath) -> TreeWatch<'_> {
        let id = self.next_tree.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.trees).insert(id, (root.clone(), Some(Vec::new())));
        TreeWatch { cache: self, id }
    }

    /// Hides `dir` (see `ghosts`): gone from its parent's listing and from lookups.
    pub fn mark_ghost(&self, dir: &RelPath) {
        lock(&self.ghosts).insert(dir.clone(), Instant::now());
        self.put_entry(dir, None);
        self.edit_parent_listing(dir, |m| {
            m.remove(dir.name());
        });
    }

    pub fn is_ghost(&self, path: &RelPath) -> bool {
        let mut ghosts = lock(&self.ghosts);
        match ghosts.get(path) {
            Some(at) if at.elapsed() < self.ghost_for() => true,
            Some(_) => {
                ghosts.remove(path);
                false
            }
            None => false,
        }
    }

    /// How long a directory of foreign keys stays hidden: twelve TTLs, at least a minute;
    /// then a listing shows it again (and listing it hides it again, if it is still so).
    pub fn ghost_for(&self) -> Duration {
        (self.ttl * 12).max(Duration::from_secs(60))
    }

    /// This mount created `path`: it and its ancestors are real again.
    fn unghost(&self, path: &RelPath) {
        let mut ghosts = lock(&self.ghosts);
        if ghosts.is_empty() {
            return;
        }
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            ghosts.remove(&cur);
            p = cur.parent();
        }
    }

    /// Starts fetching `dir`'s listing: the mount's own changes in `dir` from now on are
    /// recorded and applied to the listing when it is stored ([`FetchToken::finish`]).
    pub fn begin_fetch(&self, dir: &RelPath) -> FetchToken<'_> {
        lock(&self.fetching).entry(dir.clone()).or_default().fetches += 1;
        FetchToken {
            cache: self,
            dir: dir.clone(),
        }
    }

    fn record_change(&self, path: &RelPath, info: Option<EntryInfo>) {
        for (root, changed) in lock(&self.trees).values_mut() {
            if let Some(changed) = changed
                && path.starts_with(root)
            {
                changed.push(path.clone());
            }
        }
        let Some(parent) = path.parent() else { return };
        if let Some(f) = lock(&self.fetching).get_mut(&parent) {
            f.changes.push((path.name().to_string(), info));
        }
    }

    /// Records what S3 answered for `path` (a HEAD). A listing that shows `path` as a
    /// directory keeps it so: a directory shadows a file of the same name.
    pub fn learned(&self, path: &RelPath, info: Option<EntryInfo>) {
        if info.as_ref().is_some_and(|i| i.kind == Kind::Dir) {
            self.unghost(path);
        }
        self.put_entry(path, info.clone());
        self.edit_parent_listing(path, |m| match info {
            Some(info) => {
                if m.get(path.name())
                    .is_none_or(|old| old.kind != Kind::Dir || info.kind == Kind::Dir)
                {
                    m.insert(path.name().to_string(), info);
                }
            }
            None => {
                m.remove(path.name());
            }
        });
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.ttl
    }

    /// `Some(None)` is a cached negative entry; `None` means "ask S3".
    pub fn entry(&self, path: &RelPath) -> Option<Option<EntryInfo>> {
        let parent = path.parent();
        if let Some(t) = lock(&self.entries).get(path).map(|t| (t.value.clone(), t.at))
            && self.valid(parent.as_ref(), t.1)
        {
            return Some(t.0);
        }
        // A fresh listing of the parent answers too. Looked up in place: a copy of the
        // listing held meanwhile would make the next edit of it copy the whole map.
        let parent = parent?;
        let mut dirs = lock(&self.dirs);
        let t = dirs.get(&parent)?;
        let valid = self.settled_trusted(t) || self.valid(Some(&parent), t.at);
        valid.then(|| t.value.get(path.name()).cloned())
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
        let t = dirs.get(dir)?;
        (self.settled_trusted(t) || self.valid(Some(dir), t.at)).then(|| t.value.clone())
    }

    /// A listing of `dir` the cache still holds but no longer vouches for (older than the
    /// TTL): what a stat storm after the TTL revalidates.
    pub fn stale_listing(&self, dir: &RelPath) -> Option<Listing> {
        lock(&self.dirs).peek(dir).map(|t| t.value.clone())
    }

    pub fn put_listing(&self, dir: &RelPath, listing: Listing) {
        self.put_listing_with(dir, listing, None);
    }

    /// [`MetaCache::put_listing`], with what its fetch saw besides the entries.
    pub fn put_listing_with(&self, dir: &RelPath, listing: Listing, facts: Option<DirFacts>) {
        if self.ttl.is_zero() {
            return;
        }
        let at = Instant::now();
        let mut dirs = lock(&self.dirs);
        let newest = self.newest_of(dir, &listing, &dirs);
        let settled = self.settles(dir, newest);
        if settled {
            self.settled_edited();
        }
        let names = listing.len();
        let out = dirs.push(
            dir.clone(),
            TimedListing {
                value: listing,
                at,
                validated: SystemTime::now(),
                newest,
                settled,
            },
        );
        if newest.is_some() {
            self.settle_up(&mut dirs, dir);
        }
        // Names in all listings within their share of the memory target: the least recently
        // used listings go (the one just stored stays, however large). The running count
        // misses other removals and edits, so it is made exact before anything goes.
        let mut listed =
            (self.listed.load(Ordering::Relaxed) + names).saturating_sub(out.map_or(0, |(_, t)| t.value.len()));
        if listed > self.listed_max {
            listed = dirs.iter().map(|(_, t)| t.value.len()).sum();
            while listed > self.listed_max && dirs.len() > 1 {
                match dirs.pop_lru() {
                    Some((_, t)) => listed -= t.value.len(),
                    None => break,
                }
            }
        }
        self.listed.store(listed, Ordering::Relaxed);
        let mut all = lock(&self.facts);
        match facts {
            Some(f) => all.insert(dir.clone(), (at, f)),
            None => all.remove(dir),
        };
        // Bounded by the listings they go with.
        if all.len() > 2 * dirs.cap().get() {
            all.retain(|d, (at, _)| dirs.peek(d).is_some_and(|t| t.at == *at));
        }
    }

    /// A valid listing of `dir` and what its fetch saw besides the entries, when both are
    /// known (this mount's own changes since keep them so: they edit the listing).
    pub fn listing_facts(&self, dir: &RelPath) -> Option<(Listing, DirFacts)> {
        let (value, at) = {
            let mut dirs = lock(&self.dirs);
            let t = dirs.get(dir)?;
            if !(self.settled_trusted(t) || self.valid(Some(dir), t.at)) {
                return None;
            }
            (t.value.clone(), t.at)
        };
        let facts = lock(&self.facts).get(dir).filter(|(a, _)| *a == at).map(|(_, f)| *f)?;
        Some((value, facts))
    }

    /// This mount wrote `dir`'s marker anew (chmod, xattrs): its version is not the one
    /// the listing saw.
    pub fn forget_facts(&self, dir: &RelPath) {
        lock(&self.facts).remove(dir);
    }

    /// Records the mount's own creation or update of `path`.
    pub fn upsert(&self, path: &RelPath, info: EntryInfo) {
        self.unsettle(path, info.kind == Kind::Dir, false);
        self.unghost(path);
        self.put_entry(path, Some(info.clone()));
        self.record_change(path, Some(info.clone()));
        self.edit_parent_listing(path, |m| {
            m.insert(path.name().to_string(), info);
        });
    }

    /// Forgets what is known of `path` and its parent's listing: S3 said otherwise (another
    /// host changed it), so the next lookup asks again.
    pub fn forget(&self, path: &RelPath) {
        lock(&self.entries).pop(path);
        if let Some(parent) = path.parent() {
            lock(&self.dirs).pop(&parent);
            self.forget_settled(&parent);
        }
    }

    /// Records the mount's own removal of `path`.
    pub fn remove(&self, path: &RelPath) {
        // A directory's own listing goes with it (and its subtree's, on disk).
        let listed = lock(&self.dirs).pop(path).is_some();
        if self.settled.is_some() {
            let was_dir = listed || self.entry(path).flatten().is_some_and(|i| i.kind == Kind::Dir);
            self.unsettle(path, false, was_dir);
        }
        self.put_entry(path, None);
        self.record_change(path, None);
        self.edit_parent_listing(path, |m| {
            m.remove(path.name());
        });
    }

    /// Makes every cached answer as old as the TTL: expired, but still there to carry
    /// attributes over (what a long pause does).
    #[cfg(test)]
    pub fn age_all(&self) {
        let Some(old) = Instant::now().checked_sub(self.ttl) else {
            return;
        };
        for (_, t) in lock(&self.entries).iter_mut() {
            t.at = old;
        }
        for (_, t) in lock(&self.dirs).iter_mut() {
            t.at = old;
            t.validated = SystemTime::UNIX_EPOCH;
        }
        // Directories closed before the pause are closed since longer than a TTL.
        for u in lock(&self.open_dirs).values_mut() {
            u.closed = old;
        }
    }

    /// After the mount renamed directory `from` to `to` (`info`): what was known at and below
    /// either is forgotten (whole subtrees moved), `from` leaves its parent's listing and `to`
    /// joins its own, so the parents' link counts and listings stay right; everything else
    /// stays cached. Subtree listings in progress over either are void.
    pub fn moved_tree(&self, from: &RelPath, to: &RelPath, info: EntryInfo) {
        let overlaps =
            |p: &RelPath| p.starts_with(from) || from.starts_with(p) || p.starts_with(to) || to.starts_with(p);
        for (root, changed) in lock(&self.trees).values_mut() {
            if overlaps(root) {
                *changed = None;
            }
        }
        let below = |p: &RelPath| p.starts_with(from) || p.starts_with(to);
        {
            let mut entries = lock(&self.entries);
            let gone: Vec<RelPath> = entries
                .iter()
                .filter(|(p, _)| below(p))
                .map(|(p, _)| p.clone())
                .collect();
            for p in gone {
                entries.pop(&p);
            }
        }
        {
            let mut dirs = lock(&self.dirs);
            let gone: Vec<RelPath> = dirs.iter().filter(|(p, _)| below(p)).map(|(p, _)| p.clone()).collect();
            for p in gone {
                dirs.pop(&p);
            }
        }
        self.unsettle(from, false, true);
        self.unsettle(to, true, true);
        self.remove(from);
        self.upsert(to, info);
    }

    /// Forgets everything (after a failed directory rename, which may have moved part of a
    /// subtree).
    pub fn clear(&self) {
        for (_, changed) in lock(&self.trees).values_mut() {
            *changed = None;
        }
        lock(&self.entries).clear();
        lock(&self.dirs).clear();
        self.unsettle(&RelPath::root(), true, true);
    }

    fn edit_parent_listing(&self, path: &RelPath, f: impl FnOnce(&mut BTreeMap<String, EntryInfo>)) {
        let Some(parent) = path.parent() else { return };
        let mut dirs = lock(&self.dirs);
        if let Some(t) = dirs.get_mut(&parent) {
            f(Arc::make_mut(&mut t.value));
            if t.settled {
                // A HEAD may show a version newer than the listing saw (another host's).
                if let Some(i) = t.value.get(path.name())
                    && i.kind != Kind::Dir
                    && t.newest.is_some_and(|n| i.s3_modified > n)
                {
                    t.newest = Some(i.s3_modified);
                    t.settled = self.settles(&parent, t.newest);
                }
                self.settled_edited();
            }
        }
    }
}

#[cfg(test)]
mod tests;
