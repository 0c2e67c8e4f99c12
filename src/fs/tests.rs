//! The request budget of each operation (docs/REQUESTS.md), checked on the request counters
//! of a [`Core`] over the in-memory store: deterministic, no mount, no timing.
//!
//! Each test drives the core the way the kernel does for one user-level operation (the
//! lookups first, then the call) and asserts exactly what it sent to S3.

use super::cache::Kind;
use super::inodes::ROOT_INO;
use super::{Core, FsConfig};
use crate::layout::{Layout, RelPath};
use crate::store::deferred::DeferredDeletes;
use crate::store::memory::MemoryStore;
use crate::store::retry::{RetryConfig, RetryingStore};
use crate::store::stats::RequestStats;
use crate::store::{ObjectStore, OpKind, UserMeta};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

mod model;

const PREFIXES: u32 = 16;

struct Rig {
    core: Arc<Core>,
    s3: Arc<RetryingStore<MemoryStore>>,
    stats: Arc<RequestStats>,
    layout: Layout,
    _dir: tempfile::TempDir,
}

/// Requests by kind sent since the last call.
struct Meter<'a> {
    stats: &'a RequestStats,
    last: BTreeMap<&'static str, u64>,
}

impl Meter<'_> {
    fn take(&mut self) -> BTreeMap<&'static str, u64> {
        let now: BTreeMap<_, _> = self.stats.snapshot().requests.into_iter().collect();
        let delta = now
            .iter()
            .map(|(k, v)| (*k, v - self.last.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        self.last = now;
        delta
    }
}

fn counts(pairs: &[(OpKind, u64)]) -> BTreeMap<&'static str, u64> {
    pairs.iter().map(|(k, n)| (k.name(), *n)).collect()
}

fn rig_with(cfg: impl FnOnce(&mut FsConfig)) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new("data", PREFIXES).expect("layout");
    let stats = Arc::new(RequestStats::default());
    let l = layout.clone();
    let prefix: crate::store::PrefixFn = Arc::new(move |k: &str| l.prefix_label(k));
    let s3 = Arc::new(RetryingStore::new(
        MemoryStore::new(),
        RetryConfig::default(),
        stats.clone(),
        prefix.clone(),
    ));
    let store: Arc<dyn ObjectStore> = Arc::new(DeferredDeletes::new(s3.clone(), None, prefix));
    let mut fs = FsConfig {
        metadata_ttl: Duration::from_secs(60),
        cache_dir: dir.path().to_path_buf(),
        ..FsConfig::default()
    };
    cfg(&mut fs);
    let core = Core::new(layout.clone(), store, stats.clone(), fs);
    Rig {
        core,
        s3,
        stats,
        layout,
        _dir: dir,
    }
}

fn rig() -> Rig {
    rig_with(|_| {})
}

impl Rig {
    /// The bucket itself, behind the counters.
    fn mem(&self) -> &MemoryStore {
        self.s3.inner()
    }

    fn meter(&self) -> Meter<'_> {
        let mut m = Meter {
            stats: &self.stats,
            last: BTreeMap::new(),
        };
        m.take();
        m
    }

    /// An object written by someone else (no POSIX metadata unless given).
    async fn plant(&self, path: &str, body: &[u8]) {
        let p = crate::layout::RelPath::parse(path).unwrap();
        let key = self.layout.file_key(&p).unwrap();
        self.mem()
            .put(&key, Bytes::copy_from_slice(body), &UserMeta::new())
            .await
            .unwrap();
    }

    async fn plant_dir(&self, path: &str) {
        let p = crate::layout::RelPath::parse(path).unwrap();
        let key = self.layout.dir_marker_key(&p).unwrap();
        self.mem().put(&key, Bytes::new(), &UserMeta::new()).await.unwrap();
    }

    /// What `ls` does: opendir, readdir to the end, releasedir.
    async fn list(&self, ino: u64) -> Vec<super::DirEntry> {
        let fh = self.core.opendir(ino).await.unwrap();
        let entries = self.core.readdir(fh).unwrap().all_entries().await.unwrap();
        self.core.release_handle(fh);
        entries
    }

    async fn ino(&self, path: &str) -> u64 {
        let mut ino = ROOT_INO;
        for name in path.split('/') {
            ino = self.core.lookup(ino, OsStr::new(name)).await.unwrap().ino;
        }
        ino
    }

    /// What `echo x > NAME` does: a negative lookup, create, the shell's close of the
    /// duplicate descriptor, the write, the last close.
    async fn echo_into(&self, parent: u64, name: &str, body: &[u8]) {
        let err = self.core.lookup(parent, OsStr::new(name)).await.unwrap_err();
        assert_eq!(err.errno, libc::ENOENT);
        let (attr, fh) = self
            .core
            .create(parent, OsStr::new(name), 0o644, 0, 0, false)
            .await
            .unwrap();
        self.core.flush(fh, false).await.unwrap();
        assert_eq!(self.core.write(fh, 0, body).await.unwrap() as usize, body.len());
        self.core.flush(fh, false).await.unwrap();
        self.core.release(fh).await.unwrap();
        assert_eq!(attr.kind, Kind::File);
    }

    /// `mkdir NAME` at the root; its inode.
    async fn ino_after_mkdir(&self, name: &str) -> u64 {
        self.core
            .mkdir(ROOT_INO, OsStr::new(name), 0o755, 0, 0)
            .await
            .unwrap()
            .ino
    }

    /// Forgets every cached answer, as if the TTL had run out.
    fn expire(&self) {
        self.core.cache.clear();
    }
}

#[tokio::test]
async fn creating_a_small_file_is_one_put_in_steady_state() {
    let r = rig();
    r.plant("day/old.txt", b"x").await;
    let day = r.ino("day").await;
    r.expire();
    let mut m = r.meter();
    // The first new name in a directory whose listing is not cached: HEADs of the file and
    // the marker, then the directory's listing (one LIST per prefix), then the one PUT.
    r.echo_into(day, "f0.txt", b"0\n").await;
    assert_eq!(
        m.take(),
        counts(&[(OpKind::Head, 2), (OpKind::List, PREFIXES as u64), (OpKind::Put, 1)])
    );
    // Every further file within the TTL: one PUT, nothing else.
    for i in 1..100 {
        r.echo_into(day, &format!("f{i}.txt"), format!("{i}\n").as_bytes())
            .await;
    }
    assert_eq!(m.take(), counts(&[(OpKind::Put, 99)]));
    let keys = r.mem().keys();
    assert_eq!(keys.len(), 101);
}

#[tokio::test]
async fn lookups_cost_one_head_when_the_name_says_what_it_is() {
    let r = rig();
    r.plant_dir("2017").await;
    r.plant("2017/a.txt", b"abc").await;
    r.plant("2017/noext", b"abc").await;
    let mut m = r.meter();
    let y = r.ino("2017").await;
    assert_eq!(m.take(), counts(&[(OpKind::Head, 1)]), "a directory with a marker");
    let a = r.core.lookup(y, OsStr::new("a.txt")).await.unwrap();
    assert_eq!((a.kind, a.size), (Kind::File, 3));
    assert_eq!(m.take(), counts(&[(OpKind::Head, 1)]), "a file");
    r.core.lookup(y, OsStr::new("noext")).await.unwrap();
    assert_eq!(m.take(), counts(&[(OpKind::Head, 2)]), "a file named like a directory");
    // Within the TTL: nothing.
    r.core.lookup(y, OsStr::new("a.txt")).await.unwrap();
    r.core.getattr(a.ino).await.unwrap();
    assert_eq!(m.take(), counts(&[]));
}

#[tokio::test]
async fn a_negative_lookup_lists_the_directory_once_per_ttl_not_once_per_name() {
    let r = rig();
    r.plant("logs/2017/02/08/a.txt", b"x").await; // logs/2017 is implicit: no marker
    let logs = r.ino("logs").await;
    r.expire();
    let mut m = r.meter();
    let implicit = r.core.lookup(logs, OsStr::new("2017")).await.unwrap();
    assert_eq!(implicit.kind, Kind::Dir);
    assert_eq!(
        m.take(),
        counts(&[(OpKind::Head, 2), (OpKind::List, PREFIXES as u64)]),
        "an implicit directory: both HEADs miss, the parent's listing shows it"
    );
    for i in 0..50 {
        let e = r
            .core
            .lookup(logs, OsStr::new(&format!("missing{i}")))
            .await
            .unwrap_err();
        assert_eq!(e.errno, libc::ENOENT);
    }
    assert_eq!(m.take(), counts(&[]), "the listing answers every other name");
}

#[tokio::test]
async fn concurrent_lookups_and_listings_share_their_requests() {
    let r = rig();
    for i in 0..20 {
        r.plant(&format!("d/f{i}.txt"), b"x").await;
    }
    let d = r.ino("d").await;
    r.expire();
    let mut m = r.meter();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let core = r.core.clone();
        tasks.push(tokio::spawn(async move {
            core.lookup(d, OsStr::new("new.txt")).await.unwrap_err();
            let fh = core.opendir(d).await.unwrap();
            core.readdir(fh).unwrap().all_entries().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The 20 entries are small enough to be symlinks: opendir types them (one HEAD each,
    // shared by all 64 callers too).
    assert_eq!(
        m.take(),
        counts(&[(OpKind::Head, 2 + 20), (OpKind::List, PREFIXES as u64)]),
        "64 callers, one set of requests"
    );
}

#[tokio::test]
async fn readdir_knows_symlinks_and_types_only_entries_small_enough_to_be_one() {
    let r = rig();
    let d = r.ino_after_mkdir("d").await;
    r.core
        .symlink(d, OsStr::new("link"), std::path::Path::new("target.txt"), 0, 0)
        .await
        .unwrap();
    r.plant("d/small.txt", b"x").await;
    r.plant("d/big.bin", &[0u8; 5000]).await;
    r.expire();
    let mut m = r.meter();
    let fh = r.core.opendir(r.ino("d").await).await.unwrap();
    let kinds: BTreeMap<String, Kind> = r
        .core
        .readdir(fh)
        .unwrap()
        .all_entries()
        .await
        .unwrap()
        .iter()
        .map(|e| (e.name.clone(), e.kind))
        .collect();
    assert_eq!(kinds["link"], Kind::Symlink);
    assert_eq!(kinds["small.txt"], Kind::File);
    assert_eq!(kinds["big.bin"], Kind::File);
    // The lookup of d (1 HEAD), its listing, and one HEAD per entry under 4 KiB; a 5,000-byte
    // object cannot be a symlink.
    assert_eq!(
        m.take(),
        counts(&[(OpKind::Head, 1 + 2), (OpKind::List, PREFIXES as u64)])
    );
    // `ls -l` after that: nothing more for the small ones, one HEAD for the big one.
    for name in ["link", "small.txt", "big.bin"] {
        r.core.lookup(r.ino("d").await, OsStr::new(name)).await.unwrap();
    }
    assert_eq!(m.take(), counts(&[(OpKind::Head, 1)]));
}

#[tokio::test]
async fn trusting_the_listing_makes_ls_l_cost_its_lists_only() {
    let r = rig_with(|c| c.trust_listing = true);
    for i in 0..50 {
        r.plant(&format!("d/f{i:02}.txt"), b"x").await;
    }
    r.plant_dir("d").await;
    let d = r.ino("d").await;
    r.expire();
    let mut m = r.meter();
    let fh = r.core.opendir(d).await.unwrap();
    for e in r.core.readdir(fh).unwrap().all_entries().await.unwrap().iter().skip(2) {
        let a = r.core.lookup(d, OsStr::new(&e.name)).await.unwrap();
        assert_eq!((a.kind, a.size, a.perm), (Kind::File, 1, 0o644));
    }
    assert_eq!(m.take(), counts(&[(OpKind::List, PREFIXES as u64)]));
}

#[tokio::test]
async fn ls_l_heads_every_entry_in_parallel_once_and_then_nothing() {
    let r = rig_with(|c| c.attr_prefetch = 32);
    for i in 0..200 {
        r.plant(&format!("d/f{i:03}.txt"), b"x").await;
    }
    let d = r.ino("d").await;
    r.expire();
    let mut m = r.meter();
    // ls -l: opendir/readdir, then a lookup of each name in listing order.
    let ls_l = || async {
        let fh = r.core.opendir(d).await.unwrap();
        let names: Vec<String> = r
            .core
            .readdir(fh)
            .unwrap()
            .all_entries()
            .await
            .unwrap()
            .iter()
            .skip(2)
            .map(|e| e.name.clone())
            .collect();
        r.core.release_handle(fh);
        for n in &names {
            let a = r.core.lookup(d, OsStr::new(n)).await.unwrap();
            assert_eq!(a.kind, Kind::File);
        }
        names.len()
    };
    assert_eq!(ls_l().await, 200);
    // No entry was HEADed twice (lookups joined the prefetch or found its answer).
    let first = m.take();
    assert_eq!(first.get("list"), Some(&(PREFIXES as u64)));
    assert!(first.get("head").is_some_and(|h| *h <= 201), "{first:?}");
    assert_eq!(ls_l().await, 200);
    assert_eq!(m.take(), counts(&[]), "a second ls -l within the TTL is free");
}

#[tokio::test]
async fn readdir_hands_out_entries_before_the_slowest_prefix_answers() {
    let r = rig_with(|c| c.trust_listing = true);
    for i in 0..40 {
        r.plant(&format!("d/f{i:02}.txt"), b"x").await;
    }
    let d = r.ino("d").await;
    r.expire();
    // One prefix's LIST is held back; the others answer.
    let dir = crate::layout::RelPath::parse("d").unwrap();
    let slow = r.layout.dir_list_prefix(0, &dir);
    let in_slow = (0..40)
        .filter(|i| {
            let p = dir.join(&format!("f{i:02}.txt")).unwrap();
            r.layout.file_key(&p).unwrap().starts_with(&slow)
        })
        .count();
    assert!(in_slow > 0 && in_slow < 40, "the files spread over the prefixes");
    let gate = r.mem().hold("list", &slow);
    let fh = r.core.opendir(d).await.unwrap();
    let open = r.core.readdir(fh).unwrap();
    let mut early = Vec::new();
    let first = async {
        while early.len() < 40 - in_slow {
            early.extend(open.entries_from(2 + early.len(), 1024).await.unwrap());
        }
    };
    // Without the held prefix's answer the others' entries come out (bounded, so a regression
    // fails instead of hanging).
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the answered prefixes' entries are handed out while one prefix is held");
    assert_eq!(
        early.len(),
        40 - in_slow,
        "every entry of the prefixes that answered, none twice"
    );
    gate.release(1);
    let all = open.all_entries().await.unwrap();
    let names: std::collections::BTreeSet<&str> = all.iter().skip(2).map(|e| e.name.as_str()).collect();
    assert_eq!((all.len(), names.len()), (42, 40));
    // The listing is cached whole: a second ls sends nothing.
    let mut m = r.meter();
    assert_eq!(r.list(d).await.len(), 42);
    assert!(m.take().is_empty());
}

#[tokio::test]
async fn a_head_answered_before_an_unlink_does_not_bring_the_file_back() {
    let r = rig();
    r.plant("d/a.txt", b"x").await;
    let d = r.ino("d").await;
    r.core.lookup(d, OsStr::new("a.txt")).await.unwrap();
    r.list(d).await;
    let path = RelPath::parse("d/a.txt").unwrap();
    // A HEAD (an attribute prefetch, say) is answered "it exists", and the answer is still
    // on the wire when the file is removed.
    let gate = r.mem().hold("head", &r.layout.file_key(&path).unwrap());
    let (core, p) = (r.core.clone(), path.clone());
    let late = tokio::spawn(async move { core.fetch_stat(&p, Some(Kind::File)).await });
    gate.arrivals(1).await;
    r.core.unlink(d, OsStr::new("a.txt")).await.unwrap();
    gate.release(1);
    assert!(
        late.await.unwrap().unwrap().is_none(),
        "the caller is told what the mount knows now"
    );
    assert!(
        r.list(d).await.iter().all(|e| e.name != "a.txt"),
        "the late answer did not put the file back in the listing"
    );
    assert_eq!(
        r.core.lookup(d, OsStr::new("a.txt")).await.unwrap_err().errno,
        libc::ENOENT
    );
}

#[tokio::test]
async fn a_relisted_directory_needs_no_head_for_unchanged_objects() {
    let r = rig();
    r.plant("d/a.txt", b"x").await;
    let d = r.ino("d").await;
    // Make the HEAD look old enough to vouch for the object's version.
    let path = crate::layout::RelPath::parse("d/a.txt").unwrap();
    r.list(d).await;
    r.core.lookup(d, OsStr::new("a.txt")).await.unwrap();
    let mut info = r.core.cache.entry(&path).unwrap().unwrap();
    info.checked = Some(info.s3_modified + Duration::from_secs(60));
    r.core.cache.learned(&path, Some(info));
    // The listing's TTL runs out (the entry's too); the listing is fetched again.
    r.core.cache.age_all();
    let mut m = r.meter();
    r.list(d).await;
    r.core.lookup(d, OsStr::new("a.txt")).await.unwrap();
    assert_eq!(m.take(), counts(&[(OpKind::List, PREFIXES as u64)]));
}

#[tokio::test]
async fn mkdir_is_one_put_and_rmdir_an_emptiness_check_and_one_delete() {
    let r = rig();
    r.plant_dir("top").await;
    let top = r.ino("top").await;
    r.list(top).await; // the parent's listing is known
    let mut m = r.meter();
    r.core.lookup(top, OsStr::new("sub")).await.unwrap_err();
    r.core.mkdir(top, OsStr::new("sub"), 0o755, 0, 0).await.unwrap();
    assert_eq!(m.take(), counts(&[(OpKind::Put, 1)]));
    r.core.rmdir(top, OsStr::new("sub")).await.unwrap();
    // The emptiness check asks every prefix for one page; the marker's delete is queued
    // and sent by rmdir's barrier as one DeleteObjects.
    assert_eq!(
        m.take(),
        counts(&[(OpKind::List, PREFIXES as u64), (OpKind::DeleteMany, 1)])
    );
}

#[tokio::test]
async fn rename_of_a_file_is_one_copy_and_one_delete() {
    let r = rig();
    r.plant("d/a.txt", b"abc").await;
    let d = r.ino("d").await;
    r.list(d).await;
    r.core.lookup(d, OsStr::new("a.txt")).await.unwrap();
    let mut m = r.meter();
    r.core.lookup(d, OsStr::new("b.txt")).await.unwrap_err();
    r.core
        .rename(d, OsStr::new("a.txt"), d, OsStr::new("b.txt"), 0)
        .await
        .unwrap();
    assert_eq!(m.take(), counts(&[(OpKind::Copy, 1), (OpKind::DeleteMany, 1)]));
}

#[tokio::test]
async fn overwrite_with_o_trunc_is_one_put_and_unlinks_are_batched() {
    let r = rig();
    for i in 0..50 {
        r.plant(&format!("d/f{i}.txt"), b"old").await;
    }
    let d = r.ino("d").await;
    r.list(d).await;
    let f0 = r.core.lookup(d, OsStr::new("f0.txt")).await.unwrap();
    let mut m = r.meter();
    let fh = r.core.open(f0.ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
    r.core.flush(fh, false).await.unwrap();
    r.core.write(fh, 0, b"new").await.unwrap();
    r.core.flush(fh, false).await.unwrap();
    r.core.release(fh).await.unwrap();
    assert_eq!(m.take(), counts(&[(OpKind::Put, 1)]));
    // rm d/*: 50 unlinks (the HEADs are the lookups of names the listing knew only by name).
    for i in 0..50 {
        r.core.lookup(d, OsStr::new(&format!("f{i}.txt"))).await.unwrap();
    }
    m.take();
    for i in 0..50 {
        r.core.unlink(d, OsStr::new(&format!("f{i}.txt"))).await.unwrap();
    }
    r.core.sync_deletes().await.unwrap();
    let sent = m.take();
    assert!(sent.get("delete_objects").is_some_and(|n| *n <= 2), "{sent:?}");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        r.mem()
            .keys()
            .iter()
            .all(|k| k.ends_with("layout.json") || !k.contains("/d/f"))
    );
}

#[tokio::test]
async fn requests_are_counted_per_caller() {
    let r = rig();
    r.plant_dir("d").await;
    r.plant("d/a.txt", b"abc").await;
    crate::store::stats::CALLER
        .scope("lookup", async {
            r.ino("d/a.txt").await;
        })
        .await;
    let callers = r.stats.caller_snapshot();
    assert_eq!(callers["lookup"].requests.values().sum::<u64>(), 2, "{callers:?}");
}

// The namespace's rules for keys that do not fit it (docs/LAYOUT.md): foreign keys are never
// shown, counted, moved or deleted, and cannot leave a directory nobody can remove.

impl Rig {
    /// A raw key below the layout root, exactly as given.
    async fn plant_key(&self, rel_key: &str, body: &[u8]) -> String {
        let key = format!("data/{rel_key}");
        self.mem()
            .put(&key, Bytes::copy_from_slice(body), &UserMeta::new())
            .await
            .unwrap();
        key
    }

    async fn names(&self, ino: u64) -> Vec<String> {
        let path = self.core.path_of(ino).unwrap();
        self.core.list_dir(&path).await.unwrap().keys().cloned().collect()
    }
}

#[tokio::test]
async fn directories_of_foreign_keys_only_are_hidden_once_seen_and_removable() {
    let r = rig();
    let p = |path: &str| {
        r.layout
            .prefix_name(r.layout.prefix_index(&RelPath::parse(path).unwrap()))
    };
    let dots = r.plant_key(&format!("{}/a/../b", p("b")), b"dots").await;
    let dot = r.plant_key(&format!("{}/c/./d", p("c/d")), b"dot").await;
    // A key ending in '/' with a body: data, not a directory marker.
    let body_marker = r.plant_key(&format!("{}/e/", p("e")), b"precious").await;
    r.plant("real/f.txt", b"f").await;
    let before = r.mem().keys();

    // The root's listing can only see that keys start with "a/", "c/", "e/".
    assert_eq!(r.names(ROOT_INO).await, vec!["a", "c", "e", "real"]);
    for name in ["a", "c", "e"] {
        let ino = r.ino(name).await;
        assert_eq!(r.names(ino).await, Vec::<String>::new(), "{name} shows nothing");
    }
    // Listing them showed nothing of this namespace in them: they are hidden from then on,
    // also after the TTL (the parent's listing is fetched again).
    assert_eq!(r.names(ROOT_INO).await, vec!["real"]);
    r.expire();
    assert_eq!(r.names(ROOT_INO).await, vec!["real"]);
    assert_eq!(
        r.core.lookup(ROOT_INO, OsStr::new("a")).await.unwrap_err().errno,
        libc::ENOENT
    );

    // rmdir of such a directory met before it was hidden succeeds, and deletes nothing:
    // neither the foreign keys nor a "marker" with a body.
    let r = rig();
    r.plant_key(&format!("{}/a/../b", p("b")), b"dots").await;
    r.plant_key(&format!("{}/e/", p("e")), b"precious").await;
    assert_eq!(r.names(ROOT_INO).await, vec!["a", "e"]);
    for name in ["a", "e"] {
        r.ino(name).await;
        r.core.rmdir(ROOT_INO, OsStr::new(name)).await.unwrap();
    }
    assert_eq!(r.names(ROOT_INO).await, Vec::<String>::new());
    r.expire();
    assert_eq!(r.names(ROOT_INO).await, Vec::<String>::new());
    let mut left = r.mem().keys();
    left.sort();
    assert_eq!(left.len(), 2);
    assert!(before.contains(&dots) && before.contains(&dot) && before.contains(&body_marker));

    // A directory created here again at such a name is real.
    r.core.mkdir(ROOT_INO, OsStr::new("a"), 0o755, 0, 0).await.unwrap();
    assert_eq!(r.names(ROOT_INO).await, vec!["a"]);
    r.expire();
    assert_eq!(r.names(ROOT_INO).await, vec!["a"]);
}

#[tokio::test]
async fn a_directory_shadows_a_file_of_the_same_name() {
    let r = rig();
    r.plant("d", b"a file named d").await;
    r.plant("d/x.txt", b"inside").await;
    // Listed: the directory wins, and what is in it is reachable.
    let listing = r.core.list_dir(&RelPath::root()).await.unwrap();
    assert_eq!(listing["d"].kind, Kind::Dir);
    let d = r.core.lookup(ROOT_INO, OsStr::new("d")).await.unwrap();
    assert_eq!(d.kind, Kind::Dir);
    let x = r.core.lookup(d.ino, OsStr::new("x.txt")).await.unwrap();
    assert_eq!((x.kind, x.size), (Kind::File, 6));
    // So after the TTL, once the parent is listed again.
    r.expire();
    assert_eq!(r.names(ROOT_INO).await, vec!["d"]);
    assert_eq!(r.core.lookup(ROOT_INO, OsStr::new("d")).await.unwrap().kind, Kind::Dir);
}

#[tokio::test]
async fn an_open_file_keeps_its_attributes_after_unlink() {
    let r = rig();
    let d = r.ino_after_mkdir("d").await;
    let (attr, fh) = r.core.create(d, OsStr::new("f"), 0o600, 0, 0, false).await.unwrap();
    assert_eq!(r.core.write(fh, 0, b"still here").await.unwrap(), 10);
    r.core.unlink(d, OsStr::new("f")).await.unwrap();
    // fstat of the open descriptor.
    let got = r.core.getattr(attr.ino).await.unwrap();
    assert_eq!((got.kind, got.size, got.perm, got.nlink), (Kind::File, 10, 0o600, 0));
    r.core.release(fh).await.unwrap();
    assert_eq!(r.core.lookup(d, OsStr::new("f")).await.unwrap_err().errno, libc::ENOENT);
}

#[tokio::test]
async fn directory_and_change_times_follow_this_mounts_changes() {
    let r = rig();
    let d = r.ino_after_mkdir("d").await;
    let t0 = r.core.getattr(d).await.unwrap();
    let later = |a: std::time::SystemTime, b: std::time::SystemTime| a > b;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // An entry created in d moves d's mtime and ctime (pjdfstest's `changed_time` checks).
    let (f, fh) = r.core.create(d, OsStr::new("f"), 0o644, 0, 0, false).await.unwrap();
    r.core.release(fh).await.unwrap();
    let t1 = r.core.getattr(d).await.unwrap();
    assert!(later(t1.mtime, t0.mtime) && t1.ctime >= t1.mtime, "{t0:?} {t1:?}");
    // chmod moves ctime, not mtime.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = r.core.getattr(f.ino).await.unwrap();
    let after = r
        .core
        .setattr(f.ino, None, Some(0o600), None, None, None, None)
        .await
        .unwrap();
    assert_eq!(after.mtime, before.mtime);
    assert!(later(after.ctime, before.ctime), "{before:?} {after:?}");
    // Removing and renaming entries move the directory's times again.
    for step in 0..2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let b = r.core.getattr(d).await.unwrap();
        if step == 0 {
            r.core.rename(d, OsStr::new("f"), d, OsStr::new("g"), 0).await.unwrap();
        } else {
            r.core.unlink(d, OsStr::new("g")).await.unwrap();
        }
        let a = r.core.getattr(d).await.unwrap();
        assert!(later(a.mtime, b.mtime), "step {step}");
    }
}

/// docs/REQUESTS.md, walk row: `find` lists every directory in turn; once it lists a second
/// sibling, the parent's subtree is listed whole (N LISTs without a delimiter) and every
/// directory below it is answered from that, implicit directories without a HEAD. A file
/// this mount writes meanwhile keeps its directory out of the subtree listing.
#[tokio::test]
async fn a_walk_lists_the_subtree_whole_once_it_sees_two_siblings() {
    let r = rig();
    for day in 1..=20 {
        for f in 0..3 {
            r.plant(&format!("2017/01/{day:02}/{f}.log"), b"line\n").await;
        }
    }
    r.plant_dir("2017/01/07").await;
    let n = PREFIXES as u64;
    let mut m = r.meter();
    let walk = |path: String| {
        let core = r.core.clone();
        async move {
            let p = RelPath::parse(&path).unwrap();
            core.list_dir(&p).await.unwrap()
        }
    };
    walk("2017".into()).await;
    walk("2017/01".into()).await;
    walk("2017/01/01".into()).await;
    assert_eq!(m.take(), counts(&[(OpKind::List, 3 * n)]));
    // The second sibling: 2017/01 is listed whole, one LIST per prefix (one page each).
    let day2 = walk("2017/01/02".into()).await;
    assert_eq!(day2.len(), 3);
    assert_eq!(m.take(), counts(&[(OpKind::List, n)]));
    for day in 3..=20 {
        let l = walk(format!("2017/01/{day:02}")).await;
        assert_eq!(l.keys().cloned().collect::<Vec<_>>(), ["0.log", "1.log", "2.log"]);
    }
    // Implicit days need no HEAD to be looked up; the marked one does (its metadata).
    let month = r.ino("2017/01").await;
    m.take();
    r.core.lookup(month, OsStr::new("05")).await.unwrap();
    assert_eq!(
        m.take(),
        BTreeMap::new(),
        "the rest of the walk is answered from the subtree listing"
    );
    r.core.lookup(month, OsStr::new("07")).await.unwrap();
    assert_eq!(m.take(), counts(&[(OpKind::Head, 1)]));

    // A second walk: a day written to while the subtree is listed is listed on its own.
    let r = rig();
    for day in 1..=5 {
        r.plant(&format!("2018/02/{day:02}/a.log"), b"x").await;
    }
    r.plant("2018/02/06/a.log", b"x").await;
    for d in ["2018/02", "2018/02/01"] {
        r.core.list_dir(&RelPath::parse(d).unwrap()).await.unwrap();
    }
    let root = RelPath::parse("2018/02").unwrap();
    let watch = r.core.cache.watch_tree(&root);
    let day3 = r.ino("2018/02/03").await;
    r.echo_into(day3, "new.log", b"y").await;
    assert!(!watch.untouched(&RelPath::parse("2018/02/03").unwrap()));
    assert!(watch.untouched(&RelPath::parse("2018/02/04").unwrap()));
    drop(watch);
    let l = r.core.list_dir(&RelPath::parse("2018/02/03").unwrap()).await.unwrap();
    assert!(l.contains_key("new.log") && l.contains_key("a.log"), "{l:?}");
}

/// A directory's st_nlink counts its subdirectories as this mount knows them (its cached
/// listing), without a request.
#[tokio::test]
async fn a_directory_links_its_subdirectories() {
    let r = rig();
    let d = r.ino_after_mkdir("d").await;
    let fh = r.core.opendir(d).await.unwrap();
    r.core.release_handle(fh);
    assert_eq!(r.core.getattr(d).await.unwrap().nlink, 2);
    for name in ["a", "b"] {
        r.core.mkdir(d, OsStr::new(name), 0o755, 0, 0).await.unwrap();
    }
    r.echo_into(d, "f.txt", b"x").await;
    let mut m = r.meter();
    assert_eq!(r.core.getattr(d).await.unwrap().nlink, 4);
    assert_eq!(m.take(), BTreeMap::new());
    r.core.rmdir(d, OsStr::new("a")).await.unwrap();
    assert_eq!(r.core.getattr(d).await.unwrap().nlink, 3);
    assert_eq!(r.core.getattr(r.ino("d/f.txt").await).await.unwrap().nlink, 1);
}

/// `truncate(path)` right after `close`: the kernel sends `release` after `close` returned,
/// so the truncate can reach the open state while the last release uploads it. Whatever the
/// interleaving, the truncate is neither lost nor answered with the old size.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncate_racing_the_last_close_is_kept() {
    let r = rig();
    for i in 0..40 {
        let name = format!("f{i}");
        let (attr, fh) = r
            .core
            .create(ROOT_INO, OsStr::new(&name), 0o644, 0, 0, false)
            .await
            .unwrap();
        r.core.flush(fh, false).await.unwrap();
        let (core, ino) = (r.core.clone(), attr.ino);
        let truncate =
            tokio::spawn(async move { core.setattr(ino, Some(1_234_567), None, None, None, None, None).await });
        r.core.release(fh).await.unwrap();
        let answered = truncate.await.unwrap().unwrap();
        assert_eq!(answered.size, 1_234_567, "{name}: setattr's answer");
        assert_eq!(r.core.getattr(ino).await.unwrap().size, 1_234_567, "{name}");
        r.core.flush_all().await;
        let key = r.layout.file_key(&RelPath::parse(&name).unwrap()).unwrap();
        assert_eq!(r.mem().get(&key, None).await.unwrap().len(), 1_234_567, "{name} in S3");
    }
}

/// utimens: the mtime goes to S3, the atime lives in this mount's view; setting the mtime
/// alone leaves the atime as it read.
#[tokio::test]
async fn atime_is_kept_in_the_mounts_view() {
    let r = rig();
    r.echo_into(ROOT_INO, "f", b"x").await;
    let ino = r.ino("f").await;
    let t = |s| std::time::UNIX_EPOCH + Duration::from_secs(s);
    let a = r
        .core
        .setattr(
            ino,
            None,
            None,
            None,
            None,
            Some(t(1_900_000_000)),
            Some(t(1_950_000_000)),
        )
        .await
        .unwrap();
    assert_eq!((a.atime, a.mtime), (t(1_900_000_000), t(1_950_000_000)));
    let a = r
        .core
        .setattr(ino, None, None, None, None, None, Some(t(2_000_000_000)))
        .await
        .unwrap();
    assert_eq!((a.atime, a.mtime), (t(1_900_000_000), t(2_000_000_000)));
    let a = r.core.getattr(ino).await.unwrap();
    assert_eq!((a.atime, a.mtime), (t(1_900_000_000), t(2_000_000_000)));
}

#[tokio::test]
async fn staging_past_the_cache_size_is_enospc_and_every_byte_comes_back() {
    let r = rig_with(|c| c.cache_size = 100);
    r.plant("d/a.txt", &[b'a'; 50]).await;
    let d = r.ino("d").await;
    let a = r.core.lookup(d, OsStr::new("a.txt")).await.unwrap();
    // Patching in place stages the file: its 50 bytes count.
    let fh = r.core.open(a.ino, libc::O_WRONLY).await.unwrap();
    r.core.write(fh, 50, &[b'b'; 40]).await.unwrap();
    let err = r.core.write(fh, 90, &[b'c'; 20]).await.unwrap_err();
    assert_eq!(err.errno, libc::ENOSPC);
    r.core.write(fh, 90, &[b'c'; 10]).await.unwrap();
    r.core.flush(fh, false).await.unwrap();
    r.core.release(fh).await.unwrap();
    let staged = |text: String| {
        text.lines()
            .find_map(|l| l.strip_prefix("staged_bytes ").map(str::to_string))
    };
    assert_eq!(staged(r.core.stats_text()).as_deref(), Some("0"), "released at close");
    assert_eq!(
        r.mem()
            .get(
                &r.layout
                    .file_key(&crate::layout::RelPath::parse("d/a.txt").unwrap())
                    .unwrap(),
                None
            )
            .await
            .unwrap()
            .len(),
        100
    );
}
