//! The namespace: what a path is and what a directory holds, over every prefix, behind the
//! metadata cache; and the changes of paths in S3 ([`changes`]). It knows
//! no inodes, handles or open-file state, so the bucket commands (`prefixfs rm`, `ls`,
//! `find`...) use it without a mount. A mount's files being written reach it through the
//! [`OpenTable`] its [`Core`](super::Core) shares with it.
//!
//! Requirements and where they live:
//! 1. A path maps to one key (`layout`); a directory exists through its marker or any key
//!    below it in any prefix ([`Namespace::stat`], [`Namespace::any_under`]).
//! 2. A listing asks every prefix in parallel, bounded by `fanout`, paginates, and merges into
//!    one sorted, de-duplicated map; a directory shadows a file of the same name
//!    ([`listing`]).
//! 3. Metadata answers come from the cache within the TTL; the mount's own changes update it
//!    ([`cache`](super::cache)).

mod changes;
mod listing;
mod xattrs;

use changes::replaced_elsewhere;
pub(super) use listing::Feed;

use super::cache::{self, EntryInfo, Kind, MetaCache};
use super::error::FsResult;
use super::files::OpenTable;
use super::flight::SingleFlight;
use super::{NamespaceConfig, lock, posix};
use crate::layout::{Layout, RelPath};
use crate::store::ObjectStore;
use crate::store::stats::RequestStats;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

/// Rounds of HEADs a stat sends at most while this mount keeps changing the path under it.
const STAT_ROUNDS: u32 = 3;

pub struct Namespace {
    /// Itself, for the background tasks it spawns (listing pages, attribute prefetch).
    me: Weak<Namespace>,
    layout: Layout,
    store: Arc<dyn ObjectStore>,
    stats: Arc<RequestStats>,
    cfg: NamespaceConfig,
    cache: Arc<MetaCache>,
    /// The mount's files being written, which S3 may not have yet: the namespace shows them
    /// as they are here (their size so far, their metadata), and counts them in emptiness
    /// checks. None for the bucket commands.
    open: Option<Arc<OpenTable>>,
    /// The time implicit directories (no object of their own) report.
    mount_time: SystemTime,
    stat_flight: SingleFlight<RelPath, Option<EntryInfo>>,
    list_flight: SingleFlight<RelPath, cache::Listing>,
    /// Paths whose attribute prefetch is queued or running.
    prefetching: Mutex<HashSet<RelPath>>,
    prefetch_slots: Arc<tokio::sync::Semaphore>,
    /// Subtrees listed whole (a walk was seen), and when: not again within the TTL.
    walked: Mutex<HashMap<RelPath, std::time::Instant>>,
    /// Directories in which lookups of entries the TTL let expire were seen, when the first
    /// came, and how many since (see [`Namespace::revalidate`]).
    storms: Mutex<HashMap<RelPath, (std::time::Instant, u32)>>,
}

/// What a LIST costs against a HEAD (S3's prices: $0.005 and $0.0004 per 1,000).
const LIST_PRICE_IN_HEADS: f64 = 12.5;

/// Lookups of expired entries in one directory within a TTL that make a storm worth a
/// listing (of a directory big enough for it): a few files read now and then are not.
const RELIST_AFTER: u32 = 8;

/// True when a name looks like a file's (`a.txt`, not `2017` or `.git`): which key a lookup
/// asks for first.
fn looks_like_file(name: &str) -> bool {
    name.char_indices().any(|(i, c)| c == '.' && i > 0)
}

impl Namespace {
    /// The namespace of `layout` in `store`. Of `cfg`, it uses the bounds of fan-out and
    /// prefetch, the metadata TTL and cache size, and `trust_listing`.
    pub fn new(
        layout: Layout,
        store: Arc<dyn ObjectStore>,
        stats: Arc<RequestStats>,
        cfg: NamespaceConfig,
    ) -> Arc<Self> {
        Self::with_open_files(layout, store, stats, cfg, None)
    }

    /// A mount's namespace: it shows the files open in `open` as they are here.
    pub(super) fn with_open_files(
        layout: Layout,
        store: Arc<dyn ObjectStore>,
        stats: Arc<RequestStats>,
        cfg: NamespaceConfig,
        open: Option<Arc<OpenTable>>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Namespace {
            me: me.clone(),
            cache: Arc::new({
                let cache = MetaCache::new(cfg.metadata_ttl, cfg.cache_capacity).with_listed_max(cfg.listed_entries);
                match &cfg.settled {
                    Some(s) => cache.with_settled(s.clone()),
                    None => cache,
                }
            }),
            stat_flight: SingleFlight::default(),
            list_flight: SingleFlight::default(),
            prefetching: Mutex::new(HashSet::new()),
            prefetch_slots: Arc::new(tokio::sync::Semaphore::new(cfg.attr_prefetch.max(1))),
            walked: Mutex::new(HashMap::new()),
            storms: Mutex::new(HashMap::new()),
            mount_time: SystemTime::now(),
            open,
            layout,
            store,
            stats,
            cfg,
        })
    }

    /// The request counters (also per FUSE operation).
    pub fn stats(&self) -> &Arc<RequestStats> {
        &self.stats
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(super) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn config(&self) -> &NamespaceConfig {
        &self.cfg
    }

    /// The metadata cache, to read (and pin listings with). Path changes reach it through
    /// the namespace only: [`Namespace::learned`], [`Namespace::forget`], and the changes.
    pub(super) fn cache(&self) -> &MetaCache {
        &self.cache
    }

    /// What this mount made `path` now (a file uploaded or created, its attributes changed),
    /// as S3 says it: the cache takes it as fresh.
    pub(super) fn learned(&self, path: &RelPath, info: EntryInfo) {
        self.cache.upsert(path, info);
    }

    /// S3 holds something at `path` this mount cannot describe (another client wrote it, an
    /// upload failed): the next stat asks.
    pub(super) fn forget(&self, path: &RelPath) {
        self.cache.forget(path);
    }

    /// A file (or symlink) `info` describes moved from `from` to `to`.
    pub(super) fn file_moved(&self, from: &RelPath, to: &RelPath, info: EntryInfo) {
        self.cache.remove(from);
        self.cache.upsert(to, info);
    }

    /// The file being written at `path` through the mount, if any.
    fn pending_at(&self, path: &RelPath) -> Option<EntryInfo> {
        self.open.as_ref()?.at(path)
    }

    /// Files being written through the mount directly in `dir`, that S3 may not have yet.
    pub(super) fn pending_in(&self, dir: &RelPath) -> Vec<(String, EntryInfo)> {
        match &self.open {
            Some(open) => open.in_dir(dir),
            None => Vec::new(),
        }
    }

    /// What `path` is, with its POSIX metadata: from an open file, the cache, or S3.
    ///
    /// Requests, cache cold: 1 HEAD when a listing of the parent already said what `path`
    /// is; else a HEAD of the key the name suggests (file for `a.txt`, marker for `2017`),
    /// then of the other key if that one is missing, and when neither exists the parent's
    /// listing (shared, once per TTL) says whether `path` is an implicit directory.
    /// Concurrent callers for one path share one set of requests.
    pub async fn stat(&self, path: &RelPath) -> FsResult<Option<EntryInfo>> {
        if path.is_root() {
            return Ok(Some(EntryInfo::new(Kind::Dir, 0, self.mount_time)));
        }
        if let Some(info) = self.pending_at(path) {
            return Ok(Some(info));
        }
        let hint = match self.cache.entry(path) {
            Some(Some(info)) if info.full => return Ok(Some(info)),
            Some(None) => return Ok(None),
            Some(Some(info)) => Some(info.kind),
            None => {
                if self.revalidate(path).await?
                    && let Some(Some(info)) = self.cache.entry(path)
                    && info.full
                {
                    return Ok(Some(info));
                }
                None
            }
        };
        self.stat_flight.run(path, || self.fetch_stat(path, hint)).await
    }

    /// A lookup of `path`, whose cached answer the TTL let expire while its parent's listing
    /// is still held (stale): lookups of many such siblings within a TTL are a stat storm
    /// (`git status`, `make`, rsync's second run). A directory big enough that listing it
    /// again costs less than a HEAD of each stale entry ([`Namespace::worth_listing`]) is
    /// listed again once [`RELIST_AFTER`] such lookups came, every prefix in parallel:
    /// unchanged objects keep their attributes and only changed ones are HEADed later. True
    /// when that listing was fetched. A smaller one is left to the attribute prefetch, which
    /// from the second such lookup HEADs the stale entries after `path` in parallel instead
    /// of one per lookup in series ([`Namespace::prefetch_after`]).
    async fn revalidate(&self, path: &RelPath) -> FsResult<bool> {
        if self.cfg.metadata_ttl.is_zero() {
            return Ok(false);
        }
        let Some(parent) = path.parent() else { return Ok(false) };
        let Some(stale) = self.cache.stale_listing(&parent) else {
            return Ok(false);
        };
        if self.storm_in(&parent) < RELIST_AFTER || !self.worth_listing(stale.len()) {
            return Ok(false);
        }
        drop(stale);
        tracing::debug!(dir = %parent, "stat storm after the TTL: the directory is listed again");
        self.list_dir(&parent).await?;
        Ok(true)
    }

    /// True when listing a directory of `entries` again costs less than a HEAD of each: a
    /// LIST is 12.5 HEADs, and the listing takes one per prefix and page.
    fn worth_listing(&self, entries: usize) -> bool {
        let prefixes = self.layout.prefix_count().max(1) as usize;
        let pages = (entries / prefixes).div_ceil(crate::limits::MAX_LIST_PAGE).max(1);
        entries as f64 >= LIST_PRICE_IN_HEADS * (prefixes * pages) as f64
    }

    /// Counts a lookup of an expired entry in `dir`: how many came within a TTL.
    fn storm_in(&self, dir: &RelPath) -> u32 {
        let ttl = self.cfg.metadata_ttl;
        let mut storms = lock(&self.storms);
        storms.retain(|_, (first, _)| first.elapsed() < ttl);
        let s = storms.entry(dir.clone()).or_insert((std::time::Instant::now(), 0));
        s.1 += 1;
        s.1
    }

    pub(super) async fn fetch_stat(&self, path: &RelPath, hint: Option<Kind>) -> FsResult<Option<EntryInfo>> {
        // An answer may be overtaken on the wire by this mount's own change of `path` (an
        // attribute prefetch's HEAD still out when `rm` or `mv` of the file returns): the
        // change is newer, and caching the answer would bring a removed file back. Callers
        // that joined this fetch after the change get what the change left in the cache, or
        // (with nothing cached: TTL 0) a fresh answer; a change in every round is rare enough
        // to give up after a few.
        let mut rounds = 0;
        loop {
            rounds += 1;
            let watch = self.cache.watch_tree(path);
            let info = self.ask_s3(path, hint).await?;
            if watch.unchanged(path) {
                self.cache.learned(path, info.clone());
                return Ok(info);
            }
            if let Some(now) = self.cache.entry(path) {
                tracing::debug!(%path, "changed by this mount while its HEAD was out: the cached change answers");
                return Ok(now);
            }
            if rounds == STAT_ROUNDS {
                return Ok(info);
            }
            tracing::debug!(%path, "changed by this mount while its HEAD was out, nothing cached: asking again");
        }
    }

    /// What S3 says `path` is: the HEADs (and the parent's listing) of [`Namespace::stat`].
    /// A directory keeps what the parent's listing knew of an older tool's object marking
    /// it (see [`super::cache::LegacyDir`]).
    async fn ask_s3(&self, path: &RelPath, hint: Option<Kind>) -> FsResult<Option<EntryInfo>> {
        let mut found = self.ask_s3_heads(path, hint).await?;
        if let Some(info) = found.as_mut().filter(|i| i.kind == Kind::Dir && i.legacy.is_none()) {
            info.legacy = self.legacy_of(path);
        }
        Ok(found)
    }

    /// What the cache knows (no request) of an older tool's object marking directory
    /// `path` (see [`super::cache::LegacyDir`]): the parent's listing says, or shows an
    /// empty object of that name (a suspect, confirmed by a HEAD before anything removes it).
    pub(super) fn legacy_of(&self, path: &RelPath) -> Option<super::cache::LegacyDir> {
        let parent = path.parent()?;
        let listing = self.cache.stale_listing(&parent)?;
        let e = listing.get(path.name())?;
        match e.kind {
            Kind::Dir => e.legacy,
            Kind::File if e.size == 0 => Some(super::cache::LegacyDir {
                folder_suffix: false,
                etag: e.etag,
                confirmed: false,
            }),
            _ => None,
        }
    }

    async fn ask_s3_heads(&self, path: &RelPath, hint: Option<Kind>) -> FsResult<Option<EntryInfo>> {
        Ok(match hint {
            // A listing already said what kind it is: one HEAD for the metadata.
            Some(Kind::Dir) => self.head_as(path, true).await?.or(Some(self.implicit_dir())),
            Some(_) => self.head_as(path, false).await?,
            // Guess from the name which key to ask first, so that a lookup of a file
            // (`a.txt`) or of a directory with a marker (`2017`) costs one HEAD; only a wrong
            // guess or a missing name costs the second.
            None => {
                let dir_first = !looks_like_file(path.name());
                match self.head_as(path, dir_first).await? {
                    Some(found) => Some(found),
                    None => match self.head_as(path, !dir_first).await? {
                        Some(found) => Some(found),
                        None => self.implicit_dir_in_listing(path).await?,
                    },
                }
            }
        })
    }

    /// [`Namespace::stat`] without the cache: what S3 says now.
    pub(super) async fn stat_fresh(&self, path: &RelPath) -> FsResult<Option<EntryInfo>> {
        if let Some(info) = self.pending_at(path) {
            return Ok(Some(info));
        }
        self.fetch_stat(path, None).await
    }

    fn implicit_dir(&self) -> EntryInfo {
        EntryInfo::new(Kind::Dir, 0, self.mount_time)
    }

    /// HEAD of `path`'s directory marker (`dir`) or file key: what is there with its POSIX
    /// metadata, or None.
    async fn head_as(&self, path: &RelPath, dir: bool) -> FsResult<Option<EntryInfo>> {
        let key = if dir {
            // A path whose marker key would exceed S3's limit cannot have one.
            let Ok(key) = self.layout.dir_marker_key(path) else {
                return Ok(None);
            };
            key
        } else {
            self.layout.file_key(path)?
        };
        match self.store.head(&key).await {
            // A "marker" with a body is somebody's data, not a directory of this namespace.
            Ok(m) if dir && m.size > 0 => {
                tracing::debug!(key = %crate::layout::escape_controls(&key), size = m.size, "a directory marker key with a body: ignored");
                Ok(None)
            }
            // An older tool's directory object without the slash (see LegacyDir).
            Ok(m) if !dir && m.size == 0 && legacy_dir_object(&m) => {
                let mut info = EntryInfo::new(Kind::Dir, 0, m.last_modified)
                    .with_posix(posix::Posix::from_meta(&m.user_meta))
                    .checked_now();
                info.legacy = Some(super::cache::LegacyDir {
                    folder_suffix: false,
                    etag: crate::store::ETag::of(m.etag.as_deref()),
                    confirmed: true,
                });
                Ok(Some(info))
            }
            Ok(m) => {
                let (kind, size) = if dir { (Kind::Dir, 0) } else { (Kind::File, m.size) };
                Ok(Some(
                    EntryInfo::new(kind, size, m.last_modified)
                        .with_posix(posix::Posix::from_meta(&m.user_meta))
                        .with_etag(m.etag.as_deref())
                        .with_plain(super::files::nothing_to_carry(&m))
                        .with_class(m.headers.storage_class.as_deref())
                        .with_xattrs(m.user_meta.get(super::xattr::KEY).map(String::as_str))
                        .checked_now(),
                ))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Neither key exists: `path` is an implicit directory (keys below it, no marker) when
    /// the parent's listing shows it. That listing is fetched at most once per TTL and
    /// shared, instead of a LIST of every prefix for every missing name.
    async fn implicit_dir_in_listing(&self, path: &RelPath) -> FsResult<Option<EntryInfo>> {
        let Some(parent) = path.parent() else { return Ok(None) };
        let listing = self.list_dir(&parent).await?;
        Ok(listing
            .get(path.name())
            .filter(|i| i.kind == Kind::Dir)
            .map(|_| self.implicit_dir()))
    }

    /// Starts HEADs for the entries after `path` in its parent's listing that are known only
    /// by name, so that a walk in listing order (`ls -l`, `find`, `stat *`) finds their
    /// attributes ready instead of paying one round trip each, in series.
    pub(super) fn prefetch_after(&self, path: &RelPath) {
        let window = self.cfg.attr_prefetch;
        // A trusted listing leaves nothing to fetch.
        if window == 0 || self.cfg.trust_listing {
            return;
        }
        let (Some(parent), Some(me)) = (path.parent(), self.me.upgrade()) else {
            return;
        };
        // A fresh listing: the entries it knows by name alone (a HEAD makes them full in
        // the listing). In a stat storm after the TTL (see `revalidate`), the held stale
        // listing: the entries whose cached answer expired.
        let (listing, stale) = match self.cache.listing(&parent) {
            Some(l) => (l, false),
            None => match self.cache.stale_listing(&parent) {
                Some(l)
                    if !self.worth_listing(l.len()) && lock(&self.storms).get(&parent).is_some_and(|s| s.1 >= 2) =>
                {
                    (l, true)
                }
                _ => return,
            },
        };
        use std::ops::Bound;
        let wanted: Vec<String> = listing
            .range::<str, _>((Bound::Excluded(path.name()), Bound::Unbounded))
            .take(window)
            .filter(|(name, info)| match stale {
                false => !info.full,
                true => parent.join(name).is_ok_and(|p| self.cache.entry(&p).is_none()),
            })
            .map(|(name, _)| name.clone())
            .collect();
        drop(listing); // a shared listing would be copied by the next edit
        for name in wanted {
            let Ok(child) = parent.join(&name) else { continue };
            if !lock(&self.prefetching).insert(child.clone()) {
                continue;
            }
            let (me, slots) = (me.clone(), self.prefetch_slots.clone());
            tokio::spawn(crate::store::stats::CALLER.scope("lookup", async move {
                if let Ok(_slot) = slots.acquire_owned().await
                    && let Err(e) = me.stat(&child).await
                {
                    tracing::debug!(path = %child, error = %e, "attribute prefetch failed");
                }
                lock(&me.prefetching).remove(&child);
            }));
        }
    }
}

/// An empty object that older s3fs-fuse versions (and other tools) made for a directory,
/// named without the trailing slash: Content-Type `application/x-directory`, or a directory
/// mode in s3fs's header.
pub(super) fn legacy_dir_object(m: &crate::store::ObjectMeta) -> bool {
    m.headers
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/x-directory"))
        || posix::Posix::from_meta(&m.user_meta).is_dir()
}
