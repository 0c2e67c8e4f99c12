//! Listing fan-out: one ListObjectsV2 stream per prefix, in parallel (at most `fanout` at
//! once), each paginated to the end, merged into one sorted, de-duplicated listing.

use super::Namespace;
use crate::fs::cache::{DirFacts, EntryInfo, Kind, Listing, SYMLINK_MAX};
use crate::fs::error::FsResult;
use crate::fs::lock;
use crate::layout::{RESERVED_NAME, RelPath, escape_controls, validate_name};
use crate::store::ETag;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

/// Keys asked for per prefix by an emptiness check: enough to see past a few foreign keys.
const EMPTINESS_PAGE: i32 = 100;

/// A listed file: name, size, LastModified, ETag.
type Listed = (
    String,
    u64,
    std::time::SystemTime,
    Option<crate::store::ETag>,
    crate::store::StorageClass,
);

/// One prefix's files, subdirectories, and marker.
type PrefixPage = (Vec<Listed>, Vec<String>, DirFacts);

/// A key of a tree as one listing saw it.
#[derive(Debug, Clone)]
pub(in crate::fs) struct TreeKey {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub class: crate::store::StorageClass,
}

/// What an emptiness check found below a directory.
#[derive(Debug, Default, Clone, Copy)]
pub(in crate::fs) struct Emptiness {
    /// A key of this namespace (not the directory's own marker) lies below it.
    pub not_empty: bool,
    /// The size of the directory's own marker object, when there is one.
    pub marker: Option<u64>,
    /// The marker's version, which `rmdir` deletes (and only that one).
    pub marker_etag: Option<ETag>,
    /// Keys that are not of this namespace lie below it.
    pub foreign: bool,
}

/// Where a listing being fetched hands each page's entries (name, kind, what the page says)
/// as they arrive, before the whole listing is merged: an open directory being filled.
pub type Feed = Arc<dyn Fn(Vec<(String, Kind, EntryInfo)>) + Send + Sync>;

impl Namespace {
    /// Runs `f` for every prefix index, at most `fanout` at once.
    pub(in crate::fs) async fn fan_out<T, F, Fut>(&self, f: F) -> FsResult<Vec<T>>
    where
        F: Fn(u32) -> Fut,
        Fut: Future<Output = FsResult<T>>,
    {
        stream::iter(0..self.layout.prefix_count())
            .map(f)
            .buffer_unordered(self.cfg.fanout.max(1))
            .try_collect()
            .await
    }

    /// Whether `key` (of `size` bytes) is part of this mount's namespace: a file or symlink
    /// of the layout, or an empty directory marker. Anything else under the prefixes (a
    /// prefix that does not match the hash, `.`/`..`/empty segments, a "marker" with a body)
    /// is foreign: never shown, never counted, never deleted or moved.
    pub(in crate::fs) fn ours(&self, key: &str, size: u64) -> bool {
        matches!(self.layout.key_to_path(key), Some((_, is_dir)) if !is_dir || size == 0)
    }

    /// What lies below `dir`, in any prefix: one LIST page per prefix.
    pub(in crate::fs) async fn emptiness(&self, dir: &RelPath) -> FsResult<Emptiness> {
        let marker = self.layout.dir_marker_key(dir)?;
        let pages = self
            .fan_out(|q| {
                let prefix = self.layout.dir_list_prefix(q, dir);
                let marker = marker.clone();
                async move {
                    let page = self.store.list(&prefix, None, None, Some(EMPTINESS_PAGE)).await?;
                    let mut e = Emptiness::default();
                    for o in &page.objects {
                        if o.key == marker {
                            e.marker = Some(o.size);
                            e.marker_etag = ETag::of(o.etag.as_deref());
                        } else if self.ours(&o.key, o.size) {
                            e.not_empty = true;
                        } else {
                            e.foreign = true;
                        }
                    }
                    // A full page of foreign keys may hide one of ours behind it.
                    e.not_empty |= page.next_token.is_some();
                    Ok(e)
                }
            })
            .await?;
        Ok(pages.into_iter().fold(Emptiness::default(), |a, b| Emptiness {
            not_empty: a.not_empty || b.not_empty,
            marker: a.marker.or(b.marker),
            marker_etag: a.marker_etag.or(b.marker_etag),
            foreign: a.foreign || b.foreign,
        }))
    }

    /// What lies below `dir` as this mount knows it without a request: its listing, fetched
    /// within the TTL and kept up to date with this mount's own changes (a directory it
    /// created and emptied, or listed and emptied: `rm -r`), and what that fetch saw of its
    /// marker and of foreign keys. None when not known so (then [`Namespace::emptiness`]).
    pub(in crate::fs) fn known_emptiness(&self, dir: &RelPath) -> Option<Emptiness> {
        let (listing, facts) = self.cache.listing_facts(dir)?;
        Some(Emptiness {
            not_empty: !listing.is_empty(),
            marker: facts.marker,
            marker_etag: facts.marker_etag,
            foreign: facts.foreign,
        })
    }

    /// True when a key of this namespace other than `dir`'s own marker lies below `dir`.
    pub(in crate::fs) async fn any_under(&self, dir: &RelPath) -> FsResult<bool> {
        Ok(self.emptiness(dir).await?.not_empty)
    }

    /// The children of `dir`: from the cache within the TTL, else from every prefix (one
    /// paginated LIST per prefix; concurrent callers share one fetch).
    pub async fn list_dir(&self, dir: &RelPath) -> FsResult<Listing> {
        self.list_dir_feeding(dir, None).await
    }

    /// [`Namespace::list_dir`], handing each prefix's entries to `feed` as they arrive when this
    /// call is the one that fetches them. Only entries whose type the listing settles go
    /// early (without `--trust-listing`, a small object may be a symlink: it waits for its
    /// HEAD); the caller adds the rest from the listing returned.
    pub(in crate::fs) async fn list_dir_feeding(&self, dir: &RelPath, feed: Option<&Feed>) -> FsResult<Listing> {
        let listing = match self.cache.listing(dir) {
            Some(l) => l,
            None => {
                self.list_flight
                    .run(dir, || async {
                        if let Some(root) = self.walk_root(dir)
                            && let Some(listing) = self.list_subtree(&root, dir).await?
                        {
                            return Ok(listing);
                        }
                        let token = self.cache.begin_fetch(dir);
                        let (fetched, facts) = self.fetch_listing(dir, feed).await?;
                        let marked = facts.marker == Some(0);
                        let listing = token.finish_with(fetched, Some(facts));
                        // Shown by the parent's listing only because some key starts with
                        // its name, yet nothing of this namespace is in it and it has no
                        // marker: hide it, so it does not stay as a ghost nobody can remove.
                        if listing.is_empty()
                            && !marked
                            && !dir.is_root()
                            && self.pending_in(dir).is_empty()
                            && self.legacy_of(dir).is_none()
                        {
                            tracing::debug!(%dir, "a directory with nothing of this mount in it (foreign keys only, or emptied): hidden");
                            self.cache.mark_ghost(dir);
                        }
                        Ok::<_, crate::fs::error::FsError>(listing)
                    })
                    .await?
            }
        };
        let pending = self.pending_in(dir);
        if pending.is_empty() {
            return Ok(listing);
        }
        let mut merged = (*listing).clone();
        for (name, info) in pending {
            merged.entry(name).or_insert(info);
        }
        Ok(Arc::new(merged))
    }

    /// The entries of `dir` in S3, and whether it has an (empty) marker. Each prefix's pages
    /// are fetched and parsed in a task of its own, so that parsing (most of the CPU of a big
    /// listing) uses every core, not just the thread that asked.
    async fn fetch_listing(
        &self,
        dir: &RelPath,
        feed: Option<&Feed>,
    ) -> FsResult<(BTreeMap<String, EntryInfo>, DirFacts)> {
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| crate::fs::error::FsError::new(libc::EIO, "the filesystem is shutting down"))?;
        let caller = crate::store::stats::CALLER.try_with(|c| *c).unwrap_or("background");
        let pages: Vec<PrefixPage> = stream::iter(0..self.layout.prefix_count())
            .map(|q| {
                let (me, dir, feed) = (me.clone(), dir.clone(), feed.cloned());
                tokio::spawn(
                    crate::store::stats::CALLER
                        .scope(caller, async move { me.list_prefix(q, &dir, feed.as_ref()).await }),
                )
            })
            .buffer_unordered(self.cfg.fanout.max(1))
            .map(|joined| {
                joined.unwrap_or_else(|e| {
                    Err(crate::fs::error::FsError::new(
                        libc::EIO,
                        format!("listing task failed: {e}"),
                    ))
                })
            })
            .try_collect()
            .await?;
        let mut facts = pages.iter().fold(DirFacts::default(), |a, (_, _, b)| DirFacts {
            marker: a.marker.or(b.marker),
            marker_etag: a.marker_etag.or(b.marker_etag),
            foreign: a.foreign || b.foreign,
        });
        let mut dirs = Vec::new();
        // Built at once from all the files (sorted once, not inserted one by one).
        let mut out: BTreeMap<String, EntryInfo> = pages
            .into_iter()
            .flat_map(|(files, subdirs, _)| {
                dirs.extend(subdirs);
                files
            })
            .map(|(name, size, mtime, etag, class)| {
                let mut info = EntryInfo::new(Kind::File, size, mtime);
                info.etag = etag;
                info.class = class;
                (name, self.listed(info))
            })
            .collect();
        // A directory shadows a file of the same name (docs/LAYOUT.md): inserted last. A
        // name this mount found to hold only foreign keys stays hidden.
        for name in dirs {
            if dir.join(&name).is_ok_and(|p| self.cache.is_ghost(&p)) {
                facts.foreign = true;
                continue;
            }
            let d = self.listed(EntryInfo::new(Kind::Dir, 0, self.mount_time));
            let d = crate::fs::cache::LegacyDir::shadowed(d, out.get(&name));
            out.insert(name, d);
        }
        crate::fs::cache::fold_legacy_dirs(&mut out, self.mount_time);
        Ok((out, facts))
    }

    /// A listed entry: known by name, kind, size and LastModified only, unless the mount
    /// trusts the listing.
    fn listed(&self, info: EntryInfo) -> EntryInfo {
        if self.cfg.trust_listing { info } else { info.partial() }
    }

    /// Hands one page's entries of `dir` to `feed`: those whose type the page settles (see
    /// [`Namespace::list_dir_feeding`]). A directory that shadows a file of the same name in
    /// another prefix may come after the file was handed out; the cached listing, and so every
    /// lookup, still shows the directory.
    fn feed_page(&self, feed: &Feed, dir: &RelPath, files: &[Listed], dirs: &[String]) {
        let certain = |size: u64| self.cfg.trust_listing || size >= SYMLINK_MAX as u64;
        let mut entries = Vec::with_capacity(files.len() + dirs.len());
        // An older tool's `NAME_$folder$` is shown as the directory it marks (the listing
        // folds it), not as a file.
        let folder = |name: &str| name.ends_with(crate::fs::cache::FOLDER_SUFFIX);
        for (name, size, mtime, etag, class) in files.iter().filter(|f| certain(f.1) && !folder(&f.0)) {
            let mut info = EntryInfo::new(Kind::File, *size, *mtime);
            info.etag = *etag;
            info.class = *class;
            let info = self.listed(info);
            entries.push((name.clone(), Kind::File, info));
        }
        for name in dirs {
            if dir.join(name).is_ok_and(|p| self.cache.is_ghost(&p)) {
                continue;
            }
            let info = self.listed(EntryInfo::new(Kind::Dir, 0, self.mount_time));
            entries.push((name.clone(), Kind::Dir, info));
        }
        feed(entries);
    }

    /// One prefix's part of `dir`'s listing: files, subdirectories, and whether the marker
    /// (empty) is there.
    async fn list_prefix(&self, q: u32, dir: &RelPath, feed: Option<&Feed>) -> FsResult<PrefixPage> {
        let prefix = self.layout.dir_list_prefix(q, dir);
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        let mut facts = DirFacts::default();
        let mut pages = self.store.list_pages(&prefix, Some("/"));
        while let Some(page) = pages.try_next().await? {
            let (files_before, dirs_before) = (files.len(), dirs.len());
            for o in page.objects {
                let Some(name) = o.key.strip_prefix(&prefix) else {
                    continue;
                };
                if name.is_empty() {
                    // The directory's own marker; one with a body is foreign.
                    if !dir.is_root() {
                        facts.marker = Some(o.size);
                        facts.marker_etag = ETag::of(o.etag.as_deref());
                        facts.foreign |= o.size > 0;
                    }
                    continue;
                }
                // Only keys whose prefix matches their hash are files of this layout (what
                // `key_to_path` checks, without re-parsing the directory part).
                match dir.join(name) {
                    Ok(p) if self.layout.prefix_index(&p) == q => files.push((
                        name.to_string(),
                        o.size,
                        o.last_modified,
                        ETag::of(o.etag.as_deref()),
                        crate::store::StorageClass::of(o.headers.storage_class.as_deref()),
                    )),
                    _ => {
                        facts.foreign = true;
                        tracing::debug!(key = %escape_controls(&o.key), "key outside the layout, not shown")
                    }
                }
            }
            for cp in page.common_prefixes {
                let Some(name) = cp.strip_prefix(&prefix).and_then(|n| n.strip_suffix('/')) else {
                    continue;
                };
                if validate_name(name).is_ok() && !(dir.is_root() && name == RESERVED_NAME) {
                    dirs.push(name.to_string());
                } else {
                    facts.foreign = true;
                }
            }
            if let Some(feed) = feed {
                self.feed_page(feed, dir, &files[files_before..], &dirs[dirs_before..]);
            }
        }
        Ok((files, dirs, facts))
    }

    /// The directory being walked when `dir` is listed as part of a walk (`find`, `du`,
    /// `ls -R`, `cp -r`, `rsync`: every subdirectory listed in turn): its parent, once the
    /// parent's listing and a sibling's are cached. Each subtree once per TTL.
    fn walk_root(&self, dir: &RelPath) -> Option<RelPath> {
        let parent = dir.parent()?;
        let listing = self.cache.listing(&parent)?;
        let sibling_listed = listing.iter().any(|(name, info)| {
            info.kind == Kind::Dir
                && name != dir.name()
                && parent.join(name).is_ok_and(|p| self.cache.listing(&p).is_some())
        });
        if !sibling_listed {
            return None;
        }
        let mut walked = lock(&self.walked);
        let ttl = self.cache.ttl();
        walked.retain(|_, at| at.elapsed() < ttl);
        if walked.contains_key(&parent) {
            return None;
        }
        walked.insert(parent.clone(), std::time::Instant::now());
        Some(parent)
    }

    /// Lists the subtree at `root` whole, one LIST stream per prefix without a delimiter
    /// (every level at once: a year of dated directories in N LISTs instead of N per
    /// directory), and caches the listing of every directory in it that this mount did not
    /// change meanwhile. Returns `want`'s listing, or None when the subtree has more than
    /// `--cache-entries` keys (then directories are listed one by one) or `want` is not in it.
    ///
    /// Directories without a marker are known whole from this (they have no metadata of
    /// their own), so their lookups send no HEAD.
    async fn list_subtree(&self, root: &RelPath, want: &RelPath) -> FsResult<Option<Listing>> {
        let watch = self.cache.watch_tree(root);
        let limit = self.cfg.cache_capacity;
        let seen = std::sync::atomic::AtomicUsize::new(0);
        // A foreign key anywhere in it: every directory's rmdir asks S3 (see DirFacts).
        let foreign = std::sync::atomic::AtomicBool::new(false);
        let per_prefix = self
            .fan_out(|q| {
                let (seen, foreign) = (&seen, &foreign);
                async move {
                    let prefix = self.layout.dir_list_prefix(q, root);
                    let mut objects = Vec::new();
                    let mut pages = self.store.list_pages(&prefix, None);
                    while let Some(page) = pages.try_next().await? {
                        let n = page.objects.len();
                        let before = objects.len();
                        objects.extend(page.objects.into_iter().filter(|o| self.ours(&o.key, o.size)));
                        if objects.len() - before < n {
                            foreign.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        if seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n > limit {
                            return Ok(None);
                        }
                    }
                    Ok(Some(objects))
                }
            })
            .await?;
        let Some(per_prefix) = per_prefix.into_iter().collect::<Option<Vec<_>>>() else {
            tracing::debug!(%root, limit, "subtree too large to list whole; listing its directories one by one");
            return Ok(None);
        };
        let listed = |info: EntryInfo| self.listed(info);
        let mut tree: BTreeMap<RelPath, BTreeMap<String, EntryInfo>> = BTreeMap::new();
        let mut marked: HashMap<RelPath, Option<ETag>> = HashMap::new();
        tree.insert(root.clone(), BTreeMap::new());
        for o in per_prefix.into_iter().flatten() {
            let Some((path, is_dir)) = self.layout.key_to_path(&o.key) else {
                continue;
            };
            if is_dir && path == *root {
                // The walk root's own marker (what its rmdir deletes).
                marked.insert(path.clone(), ETag::of(o.etag.as_deref()));
            }
            if !path.starts_with(root) || path == *root {
                continue;
            }
            if root.is_root() && path.as_str().split('/').next() == Some(RESERVED_NAME) {
                continue;
            }
            let (mut child, mut parent) = (path.clone(), path.parent());
            if is_dir {
                marked.insert(path.clone(), ETag::of(o.etag.as_deref()));
                tree.entry(path.clone()).or_default();
            } else if let Some(p) = &parent {
                tree.entry(p.clone()).or_default().insert(
                    path.name().to_string(),
                    listed(
                        EntryInfo::new(Kind::File, o.size, o.last_modified)
                            .with_etag(o.etag.as_deref())
                            .with_class(o.headers.storage_class.as_deref()),
                    ),
                );
                (child, parent) = (p.clone(), p.parent());
            }
            // Every directory between `root` and the key is one (implicit unless marked).
            while let Some(p) = parent {
                if !child.starts_with(root) || child == *root {
                    break;
                }
                let dirs = tree.entry(p.clone()).or_default();
                let d = EntryInfo::new(Kind::Dir, 0, self.mount_time);
                let d = crate::fs::cache::LegacyDir::shadowed(d, dirs.get(child.name()));
                dirs.insert(child.name().to_string(), d);
                (child, parent) = (p.clone(), p.parent());
            }
        }
        // A directory shadows a file of the same name (docs/LAYOUT.md); a marked directory
        // may carry POSIX metadata (its HEAD tells), an implicit one has none to fetch.
        let dirs: Vec<RelPath> = tree.keys().cloned().collect();
        for d in &dirs {
            let partial = marked.contains_key(d);
            if let (Some(parent), false) = (d.parent(), d == root)
                && let Some(m) = tree.get_mut(&parent)
            {
                let info = EntryInfo::new(Kind::Dir, 0, self.mount_time);
                let info = if partial { listed(info) } else { info };
                let info = crate::fs::cache::LegacyDir::shadowed(info, m.get(d.name()));
                m.insert(d.name().to_string(), info);
            }
        }
        let mut found = None;
        // Deepest first: a directory's newest object is known once its subdirectories' are.
        for (dir, mut entries) in tree.into_iter().rev() {
            crate::fs::cache::fold_legacy_dirs(&mut entries, self.mount_time);
            // `root` too: its own listing could not tell implicit subdirectories from marked ones.
            if !watch.untouched(&dir) {
                continue;
            }
            let is_want = dir == *want;
            let marker = marked.get(&dir);
            let facts = DirFacts {
                marker: marker.map(|_| 0),
                marker_etag: marker.copied().flatten(),
                foreign: foreign.load(std::sync::atomic::Ordering::Relaxed),
            };
            let listing = self.cache.begin_fetch(&dir).finish_with(entries, Some(facts));
            if is_want {
                found = Some(listing);
            }
        }
        Ok(found)
    }

    /// Every key below `dir` (its marker included) that belongs to this namespace, with
    /// its size and the version listed (its ETag: what a rename copies and a delete removes),
    /// across all prefixes; foreign keys are left out (see [`Namespace::ours`]).
    pub(in crate::fs) async fn list_tree(&self, dir: &RelPath) -> FsResult<Vec<TreeKey>> {
        let per_prefix = self
            .fan_out(|q| async move {
                let prefix = self.layout.dir_list_prefix(q, dir);
                let mut keys = Vec::new();
                let mut pages = self.store.list_pages(&prefix, None);
                while let Some(page) = pages.try_next().await? {
                    keys.extend(
                        page.objects
                            .into_iter()
                            .filter(|o| self.ours(&o.key, o.size))
                            .map(|o| TreeKey {
                                class: crate::store::StorageClass::of(o.headers.storage_class.as_deref()),
                                key: o.key,
                                size: o.size,
                                etag: o.etag,
                            }),
                    );
                }
                Ok(keys)
            })
            .await?;
        Ok(per_prefix.into_iter().flatten().collect())
    }
}
