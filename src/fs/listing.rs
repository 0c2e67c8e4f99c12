//! Listing fan-out: one ListObjectsV2 stream per prefix, in parallel (at most `fanout` at
//! once), each paginated to the end, merged into one sorted, de-duplicated listing.

use super::Core;
use super::cache::{EntryInfo, Kind, Listing};
use super::error::FsResult;
use crate::layout::{RESERVED_NAME, RelPath, validate_name};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

impl Core {
    /// Runs `f` for every prefix index, at most `fanout` at once.
    pub(super) async fn fan_out<T, F, Fut>(&self, f: F) -> FsResult<Vec<T>>
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

    /// True when any key other than `dir`'s own marker lies below `dir`, in any prefix.
    pub(super) async fn any_under(&self, dir: &RelPath) -> FsResult<bool> {
        let marker = self.layout.dir_marker_key(dir)?;
        let hits = self
            .fan_out(|q| {
                let prefix = self.layout.dir_list_prefix(q, dir);
                let marker = marker.clone();
                async move {
                    let page = self.store.list(&prefix, None, None, Some(2)).await?;
                    Ok(page.objects.iter().any(|o| o.key != marker))
                }
            })
            .await?;
        Ok(hits.into_iter().any(|h| h))
    }

    /// The children of `dir`: from the cache within the TTL, else from every prefix (one
    /// paginated LIST per prefix; concurrent callers share one fetch).
    pub async fn list_dir(&self, dir: &RelPath) -> FsResult<Listing> {
        let listing = match self.cache.listing(dir) {
            Some(l) => l,
            None => {
                self.list_flight
                    .run(dir, || async {
                        let token = self.cache.begin_fetch(dir);
                        let fetched = self.fetch_listing(dir).await?;
                        Ok::<_, super::error::FsError>(token.finish(fetched))
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

    async fn fetch_listing(&self, dir: &RelPath) -> FsResult<BTreeMap<String, EntryInfo>> {
        let pages = self
            .fan_out(|q| async move {
                let prefix = self.layout.dir_list_prefix(q, dir);
                let mut files = Vec::new();
                let mut dirs = Vec::new();
                let mut token: Option<String> = None;
                loop {
                    let page = self.store.list(&prefix, Some("/"), token.as_deref(), None).await?;
                    for o in page.objects {
                        let Some(name) = o.key.strip_prefix(&prefix) else {
                            continue;
                        };
                        if name.is_empty() {
                            continue; // the directory's own marker
                        }
                        // Only keys whose prefix matches their hash are files of this layout.
                        match self.layout.key_to_path(&o.key) {
                            Some((p, false)) if p.parent().as_ref() == Some(dir) => {
                                files.push((name.to_string(), o.size, o.last_modified))
                            }
                            _ => tracing::debug!(key = %o.key, "key outside the layout, not shown"),
                        }
                    }
                    for cp in page.common_prefixes {
                        let Some(name) = cp.strip_prefix(&prefix).and_then(|n| n.strip_suffix('/')) else {
                            continue;
                        };
                        if validate_name(name).is_ok() && !(dir.is_root() && name == RESERVED_NAME) {
                            dirs.push(name.to_string());
                        }
                    }
                    match page.next_token {
                        Some(t) => token = Some(t),
                        None => break,
                    }
                }
                Ok((files, dirs))
            })
            .await?;
        let mut out = BTreeMap::new();
        for (files, _) in &pages {
            for (name, size, mtime) in files {
                out.insert(name.clone(), EntryInfo::new(Kind::File, *size, *mtime).partial());
            }
        }
        for (_, dirs) in pages {
            for name in dirs {
                out.insert(name, EntryInfo::new(Kind::Dir, 0, self.mount_time).partial());
            }
        }
        Ok(out)
    }

    /// Every key below `dir` (its marker included), across all prefixes.
    pub(super) async fn list_tree(&self, dir: &RelPath) -> FsResult<Vec<String>> {
        let per_prefix = self
            .fan_out(|q| async move {
                let prefix = self.layout.dir_list_prefix(q, dir);
                let mut keys = Vec::new();
                let mut token: Option<String> = None;
                loop {
                    let page = self.store.list(&prefix, None, token.as_deref(), None).await?;
                    keys.extend(page.objects.into_iter().map(|o| o.key));
                    match page.next_token {
                        Some(t) => token = Some(t),
                        None => return Ok(keys),
                    }
                }
            })
            .await?;
        Ok(per_prefix.into_iter().flatten().collect())
    }
}
