//! `prefixfs fsck` and `prefixfs info`: what lies under a layout's root, key by key.
//!
//! Every key under `ROOT/` is one of: an object of the layout (a file, or an empty marker);
//! **misplaced** (a valid path under a prefix that is not its hash prefix, as a tool that
//! ignored the layout would write it: `--repair` moves it); or **foreign** (anything else:
//! outside the prefix set, `.`/`..`/empty segments, a "marker" with a body), which the mount
//! never shows and fsck never touches. Incomplete multipart uploads are reported too.

use crate::layout::{Layout, RESERVED_NAME, RelPath, escape_controls};
use crate::store::{CopySpec, ObjectMeta, ObjectStore, StoreError, StoreResult, UploadInfo, WriteIf};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::BTreeMap;

/// What a scan found.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Objects and bytes of the layout, per prefix index.
    pub per_prefix: Vec<(u64, u64)>,
    /// Keys whose path is valid but which lie under the wrong prefix: (key, its right key).
    pub misplaced: Vec<(String, String)>,
    /// The version (ETag) each misplaced key was listed with: a repair moves only that one.
    pub listed_etags: BTreeMap<String, String>,
    /// Keys that are not of the layout, with the reason.
    pub foreign: Vec<(String, &'static str)>,
    /// Incomplete multipart uploads under the root.
    pub uploads: Vec<UploadInfo>,
}

impl Inventory {
    pub fn objects(&self) -> u64 {
        self.per_prefix.iter().map(|p| p.0).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.per_prefix.iter().map(|p| p.1).sum()
    }

    /// The fullest prefix's objects over the mean (1.0: perfectly even).
    pub fn skew(&self) -> f64 {
        let n = self.per_prefix.len().max(1) as f64;
        let mean = self.objects() as f64 / n;
        let max = self.per_prefix.iter().map(|p| p.0).max().unwrap_or(0) as f64;
        if mean > 0.0 { max / mean } else { 1.0 }
    }

    /// Nothing misplaced, foreign or left incomplete.
    pub fn is_clean(&self) -> bool {
        self.misplaced.is_empty() && self.foreign.is_empty() && self.uploads.is_empty()
    }
}

/// Lists every key under the layout's root (the top level with a delimiter, then each
/// top-level name whole, `jobs` at once) and sorts them out.
pub async fn scan(store: &dyn ObjectStore, layout: &Layout, jobs: usize) -> StoreResult<Inventory> {
    let root = layout.root_slash();
    let top = list_all(store, &root, Some("/")).await?;
    let reserved = format!("{root}{RESERVED_NAME}/");
    let mut inv = Inventory {
        per_prefix: vec![(0, 0); layout.prefix_count() as usize],
        ..Default::default()
    };
    let (objects, dirs) = top;
    let below: Vec<Vec<ObjectMeta>> = stream::iter(dirs.into_iter().filter(|d| *d != reserved))
        .map(|d| async move { list_all(store, &d, None).await.map(|(o, _)| o) })
        .buffer_unordered(jobs.max(1))
        .try_collect()
        .await?;
    for o in objects.iter().chain(below.iter().flatten()) {
        classify(layout, o, &mut inv);
    }
    inv.uploads = store.list_uploads(&root).await?;
    inv.misplaced.sort();
    inv.foreign.sort();
    Ok(inv)
}

fn classify(layout: &Layout, o: &ObjectMeta, inv: &mut Inventory) {
    if let Some((path, is_dir)) = layout.key_to_path(&o.key) {
        if is_dir && o.size > 0 {
            inv.foreign.push((o.key.clone(), "a directory marker with a body"));
        } else {
            let q = layout.prefix_index(&path) as usize;
            inv.per_prefix[q].0 += 1;
            inv.per_prefix[q].1 += o.size;
        }
        return;
    }
    let rest = o.key.strip_prefix(&layout.root_slash()).unwrap_or(&o.key);
    let rel = if layout.prefix_count() == 1 {
        Some(rest)
    } else {
        rest.split_once('/').map(|(_, rel)| rel)
    };
    // `prefix_label` names a key's prefix segment, or "other" outside the prefix set.
    let is_prefix = layout.prefix_count() == 1 || layout.prefix_label(&o.key) != "other";
    let reason = match rel {
        _ if !is_prefix => "not under a prefix of the layout",
        None => "not under a prefix of the layout",
        Some(rel) => {
            let is_dir = rel.ends_with('/');
            match RelPath::parse(rel) {
                Ok(p) if !p.is_root() && p.as_str() == rel.trim_end_matches('/') => {
                    if is_dir && o.size > 0 {
                        "a directory marker with a body"
                    } else {
                        let right = if is_dir {
                            layout.dir_marker_key(&p)
                        } else {
                            layout.file_key(&p)
                        };
                        match right {
                            Ok(right) => {
                                inv.misplaced.push((o.key.clone(), right));
                                if let Some(e) = &o.etag {
                                    inv.listed_etags.insert(o.key.clone(), e.clone());
                                }
                                return;
                            }
                            Err(_) => "too long for its right prefix",
                        }
                    }
                }
                _ => "an empty, '.' or '..' segment, or not a path",
            }
        }
    };
    tracing::debug!(key = %escape_controls(&o.key), reason, "foreign key");
    inv.foreign.push((o.key.clone(), reason));
}

/// Every object (and, with a delimiter, common prefix) under `prefix`, all pages.
async fn list_all(
    store: &dyn ObjectStore,
    prefix: &str,
    delimiter: Option<&str>,
) -> StoreResult<(Vec<ObjectMeta>, Vec<String>)> {
    store.list_all(prefix, delimiter).await
}

/// What `--repair` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repair {
    pub moved: u64,
    /// Misplaced keys left where they are: their right key holds another object.
    pub conflicts: Vec<String>,
}

/// Moves each misplaced key to its hash prefix (a server-side copy, then the old key's
/// delete), `jobs` at once and interleaved across the destination prefixes. A key whose
/// right place is taken is left alone and reported. Both name versions: the copy is made
/// only from the version listed and only where the right key is still free
/// (`If-None-Match: *`, so a file a mount writes there after the HEAD stays), and the old
/// key is deleted only at that version.
pub async fn repair(store: &dyn ObjectStore, layout: &Layout, inv: &Inventory, jobs: usize) -> StoreResult<Repair> {
    // One move per right key: a second key that belongs there is a conflict from the start.
    let mut by_right: BTreeMap<&str, &str> = BTreeMap::new();
    let mut out = Repair::default();
    for (wrong, right) in &inv.misplaced {
        if by_right.insert(right, wrong).is_some() {
            out.conflicts.push(wrong.clone());
        }
    }
    let order = layout.interleave_by_prefix(by_right.keys().map(|r| r.to_string()).collect());
    // Per key moved: None, or Some(the misplaced key) when it was left where it is.
    let results: Vec<Option<String>> = stream::iter(order)
        .map(|right| {
            let wrong = by_right.get(right.as_str()).copied().unwrap_or_default().to_string();
            async move {
                match store.head(&right).await {
                    Ok(_) => return Ok(Some(wrong)),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
                let etag = inv.listed_etags.get(&wrong).map(String::as_str);
                let copy = CopySpec::new(&wrong, &right)
                    .from_version(etag)
                    .only_if(Some(&WriteIf::Absent));
                match store.copy(&copy).await {
                    Ok(_) => {}
                    // The right key was written meanwhile, or the misplaced key changed: both
                    // stay, reported.
                    Err(StoreError::PreconditionFailed { .. }) => return Ok(Some(wrong)),
                    Err(e) => return Err(e),
                }
                match store.delete(&wrong, etag).await {
                    Ok(()) => Ok(None),
                    Err(StoreError::PreconditionFailed { .. }) => {
                        tracing::warn!(key = %wrong, "written again while it was being moved: the new object stays as well");
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(jobs.max(1))
        .try_collect()
        .await?;
    for r in results {
        match r {
            None => out.moved += 1,
            Some(wrong) => out.conflicts.push(wrong),
        }
    }
    out.conflicts.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use bytes::Bytes;

    #[tokio::test]
    async fn keys_are_sorted_into_the_layout_misplaced_and_foreign() {
        let layout = Layout::new("data", 16).unwrap();
        let s = MemoryStore::new();
        let good = layout.file_key(&RelPath::parse("2017/a.txt").unwrap()).unwrap();
        let right = layout.file_key(&RelPath::parse("2017/b.txt").unwrap()).unwrap();
        let wrong_prefix = if right.starts_with("data/0/") { "1" } else { "0" };
        let misplaced = format!("data/{wrong_prefix}/2017/b.txt");
        for (k, body) in [
            (good.as_str(), &b"abc"[..]),
            (misplaced.as_str(), b"b"),
            ("data/zz/x", b"x"),
            ("data/top.txt", b"x"),
            ("data/3/a/../b", b"x"),
            ("data/4/dir/", b"body"),
            ("data/.prefixfs/layout.json", b"{}"),
        ] {
            s.put(k, Bytes::copy_from_slice(body), &Default::default())
                .await
                .unwrap();
        }
        let inv = scan(&s, &layout, 4).await.unwrap();
        assert_eq!((inv.objects(), inv.bytes()), (1, 3));
        assert_eq!(inv.misplaced, [(misplaced.clone(), right.clone())]);
        let foreign: Vec<&str> = inv.foreign.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(foreign, ["data/3/a/../b", "data/4/dir/", "data/top.txt", "data/zz/x"]);
        assert!(!inv.is_clean());
        let r = repair(&s, &layout, &inv, 4).await.unwrap();
        assert_eq!(
            r,
            Repair {
                moved: 1,
                conflicts: vec![]
            }
        );
        assert_eq!(s.get(&right, None, None).await.unwrap(), Bytes::from_static(b"b"));
        let again = scan(&s, &layout, 4).await.unwrap();
        assert!(again.misplaced.is_empty());
        assert_eq!(again.objects(), 2);
        assert_eq!(again.foreign.len(), 4, "foreign keys are never touched");
    }

    /// Issue 21, 4: a mount writes the right key after repair's HEAD found it free; the
    /// repair's copy (If-None-Match) is refused, the mount's file stays, and the misplaced
    /// key is reported, not deleted.
    #[tokio::test]
    async fn a_repair_never_overwrites_a_file_written_after_its_check() {
        let layout = Layout::new("data", 16).unwrap();
        let s = MemoryStore::new();
        let right = layout.file_key(&RelPath::parse("2017/b.txt").unwrap()).unwrap();
        let wrong_prefix = if right.starts_with("data/0/") { "1" } else { "0" };
        let misplaced = format!("data/{wrong_prefix}/2017/b.txt");
        s.put(&misplaced, Bytes::from_static(b"old"), &Default::default())
            .await
            .unwrap();
        let inv = scan(&s, &layout, 4).await.unwrap();
        let copies = s.hold("copy", &right);
        let mount = async {
            copies.arrivals(1).await;
            s.put(&right, Bytes::from_static(b"written by a mount"), &Default::default())
                .await
                .unwrap();
            copies.release(10);
        };
        let r = tokio::join!(repair(&s, &layout, &inv, 4), mount).0.unwrap();
        assert_eq!(
            r,
            Repair {
                moved: 0,
                conflicts: vec![misplaced.clone()]
            }
        );
        assert_eq!(
            s.get(&right, None, None).await.unwrap(),
            Bytes::from_static(b"written by a mount")
        );
        assert_eq!(s.get(&misplaced, None, None).await.unwrap(), Bytes::from_static(b"old"));
    }
}
