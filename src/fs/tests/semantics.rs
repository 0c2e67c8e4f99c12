//! What the namespace does (foreign keys, shadowing, times, walks, staging limits), over
//! the in-memory store.

use super::*;

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
        .setattr(
            f.ino,
            AttrChanges {
                mode: Some(0o600),
                ..Default::default()
            },
        )
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
    let watch = r.core.ns.cache().watch_tree(&root);
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
        let truncate = tokio::spawn(async move { core.setattr(ino, AttrChanges::truncate(1_234_567)).await });
        r.core.release(fh).await.unwrap();
        let answered = truncate.await.unwrap().unwrap();
        assert_eq!(answered.size, 1_234_567, "{name}: setattr's answer");
        assert_eq!(r.core.getattr(ino).await.unwrap().size, 1_234_567, "{name}");
        r.core.flush_all().await;
        let key = r.layout.file_key(&RelPath::parse(&name).unwrap()).unwrap();
        assert_eq!(
            r.mem().get(&key, None, None).await.unwrap().len(),
            1_234_567,
            "{name} in S3"
        );
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
            AttrChanges {
                atime: Some(t(1_900_000_000)),
                mtime: Some(t(1_950_000_000)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((a.atime, a.mtime), (t(1_900_000_000), t(1_950_000_000)));
    let a = r
        .core
        .setattr(
            ino,
            AttrChanges {
                mtime: Some(t(2_000_000_000)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((a.atime, a.mtime), (t(1_900_000_000), t(2_000_000_000)));
    let a = r.core.getattr(ino).await.unwrap();
    assert_eq!((a.atime, a.mtime), (t(1_900_000_000), t(2_000_000_000)));
}

#[tokio::test]
async fn staging_past_the_cache_size_is_enospc_and_every_byte_comes_back() {
    let r = rig_with(|c| c.files.cache_size = 100);
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
                None,
                None
            )
            .await
            .unwrap()
            .len(),
        100
    );
}

#[tokio::test]
async fn a_directory_rename_whose_copy_fails_takes_its_copies_back() {
    let r = rig();
    for i in 0..8 {
        r.plant(&format!("d/f{i}.txt"), format!("{i}").as_bytes()).await;
    }
    r.ino("d").await;
    let before = r.mem().keys();
    // The fourth file's copy is refused (not retryable): the others may land first.
    let refused = r.layout.file_key(&RelPath::parse("e/f3.txt").unwrap()).unwrap();
    r.mem().fail_key(&refused, |k| crate::store::StoreError::Client {
        op: "copy",
        key: k.to_string(),
        status: 403,
        code: "AccessDenied".into(),
        message: "denied".into(),
    });
    let err = r
        .core
        .rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), 0)
        .await
        .unwrap_err();
    assert_eq!(err.errno, libc::EIO);
    r.core.sync_deletes().await.unwrap();
    assert_eq!(
        r.mem().keys(),
        before,
        "the copies that landed were taken back and no source was deleted"
    );
    r.expire();
    let names: Vec<String> = r.list(r.ino("d").await).await.into_iter().map(|e| e.name).collect();
    assert_eq!(names.len(), 2 + 8, "{names:?}");
    assert_eq!(
        r.core.lookup(ROOT_INO, OsStr::new("e")).await.unwrap_err().errno,
        libc::ENOENT
    );
}

#[tokio::test]
async fn a_file_being_written_is_listed_before_s3_has_it() {
    let r = rig();
    r.plant("d/old.txt", b"x").await;
    let d = r.ino("d").await;
    let fh = r.create(d, "new.txt").await;
    r.core.write(fh, 0, b"not uploaded yet").await.unwrap();
    r.expire();
    let key = r.layout.file_key(&RelPath::parse("d/new.txt").unwrap()).unwrap();
    assert!(!r.mem().keys().contains(&key), "nothing is uploaded before the close");
    let mut m = r.meter();
    let names: Vec<String> = r.list(d).await.into_iter().map(|e| e.name).collect();
    assert!(
        names.contains(&"new.txt".to_string()) && names.contains(&"old.txt".to_string()),
        "{names:?}"
    );
    assert_eq!(
        m.take().get("list").copied(),
        Some(PREFIXES as u64),
        "one LIST per prefix"
    );
    r.core.release(fh).await.unwrap();
    assert!(r.mem().keys().contains(&key));
}

#[tokio::test]
async fn an_implicit_directory_is_found_from_its_parents_listing_and_cached() {
    let r = rig();
    // Keys below `a/b`, no marker for either.
    r.plant("a/b/c.txt", b"x").await;
    let mut m = r.meter();
    let a = r.ino("a").await;
    let b = r.core.lookup(a, OsStr::new("b")).await.unwrap();
    assert_eq!(b.kind, Kind::Dir);
    let first = m.take();
    assert!(first.get("list").copied().unwrap_or(0) >= PREFIXES as u64, "{first:?}");
    // Within the TTL: no request at all, for the lookup or the listing.
    r.core.lookup(a, OsStr::new("b")).await.unwrap();
    r.list(a).await;
    assert!(
        m.take().is_empty(),
        "a second lookup and listing within the TTL send nothing"
    );
}

impl Rig {
    /// Unlinks `name` in `dir` while a PUT is held at `gate`, then lets that PUT land and
    /// waits for the `release` that sent it, and for the unlink.
    async fn unlink_past_held_put(
        &self,
        dir: u64,
        name: &str,
        gate: &crate::store::memory::Gate,
        release: tokio::task::JoinHandle<crate::fs::FsResult<()>>,
    ) {
        let (core, name) = (self.core.clone(), name.to_string());
        let unlink = tokio::spawn(async move { core.unlink(dir, OsStr::new(&name)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.release(1);
        release.await.unwrap().unwrap();
        unlink.await.unwrap().unwrap();
    }

    /// Once the batched deletes are sent, `path` is gone from the mount and `key` from S3.
    async fn assert_removed(&self, path: &RelPath, key: &str) {
        self.core.sync_deletes().await.unwrap();
        assert!(
            self.core.stat(path).await.unwrap().is_none(),
            "the mount shows the file again"
        );
        assert!(!self.mem().keys().iter().any(|k| k == key), "S3 has the file again");
    }
}

#[tokio::test]
async fn an_unlink_racing_the_upload_of_the_last_close_is_not_undone() {
    // `touch f; rm f`: close returns before the kernel's release, whose upload of the empty
    // file may still be on the wire when the unlink arrives.
    let r = rig();
    let day = r.ino_after_mkdir("day").await;
    let path = RelPath::parse("day/f.txt").unwrap();
    let key = r.layout.file_key(&path).unwrap();
    let fh = r.create(day, "f.txt").await;
    r.core.flush(fh, false).await.unwrap();
    let gate = r.mem().hold("put", &key);
    let core = r.core.clone();
    let release = tokio::spawn(async move { core.release(fh).await });
    gate.arrivals(1).await;
    r.unlink_past_held_put(day, "f.txt", &gate, release).await;
    r.assert_removed(&path, &key).await;
}

#[tokio::test]
async fn an_unlink_racing_the_second_upload_of_the_last_close_is_not_undone() {
    // The last close uploads, then uploads again what a truncate by path changed meanwhile;
    // an unlink arriving during that second upload must wait for it, not be undone by it.
    let r = rig();
    let day = r.ino_after_mkdir("day").await;
    let path = RelPath::parse("day/f.txt").unwrap();
    let key = r.layout.file_key(&path).unwrap();
    let fh = r.create(day, "f.txt").await;
    r.core.write(fh, 0, b"some bytes").await.unwrap();
    let ino = r.ino("day/f.txt").await;
    let gate = r.mem().hold("put", &key);
    let core = r.core.clone();
    let release = tokio::spawn(async move { core.release(fh).await });
    gate.arrivals(1).await;
    // Queued on the file's lock behind the first upload: served before the second.
    let core = r.core.clone();
    let truncate = tokio::spawn(async move { core.setattr(ino, AttrChanges::truncate(4)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.release(1);
    truncate.await.unwrap().unwrap();
    gate.arrivals(2).await;
    r.unlink_past_held_put(day, "f.txt", &gate, release).await;
    r.assert_removed(&path, &key).await;
}

#[tokio::test]
async fn a_file_unlinked_while_being_written_leaves_no_incomplete_upload() {
    let r = rig_with(|c| c.files.part_size = 1024);
    let day = r.ino_after_mkdir("day").await;
    let fh = r.create(day, "big.bin").await;
    r.core.write(fh, 0, &[7u8; 3000]).await.unwrap();
    assert_eq!(
        r.mem().list_uploads("").await.unwrap().len(),
        1,
        "parts are on their way"
    );
    r.core.unlink(day, OsStr::new("big.bin")).await.unwrap();
    r.core.write(fh, 3000, &[8u8; 100]).await.unwrap();
    r.core.flush(fh, false).await.unwrap();
    r.core.release(fh).await.unwrap();
    assert!(
        r.mem().list_uploads("").await.unwrap().is_empty(),
        "the upload was aborted"
    );
    r.core.sync_deletes().await.unwrap();
    let key = r.layout.file_key(&RelPath::parse("day/big.bin").unwrap()).unwrap();
    assert!(!r.mem().keys().contains(&key));
}

#[tokio::test]
async fn a_stat_that_joins_a_head_sent_before_the_mounts_change_gets_the_change() {
    // Nothing cached (TTL 0): a stat after `rm` must not take the answer of a HEAD sent
    // before it, which is still on the wire saying the file is there.
    let r = rig_with(|c| c.names.metadata_ttl = Duration::ZERO);
    r.plant("day/f.txt", b"x").await;
    let path = RelPath::parse("day/f.txt").unwrap();
    let key = r.layout.file_key(&path).unwrap();
    let gate = r.mem().hold("head", &key);
    let (ns, p) = (r.core.ns.clone(), path.clone());
    let before = tokio::spawn(async move { ns.stat(&p).await });
    gate.arrivals(1).await;
    // What the mount's unlink does: the key goes, the cache records the removal.
    r.mem().delete(&key, None).await.unwrap();
    r.core.ns.cache().remove(&path);
    let (ns, p) = (r.core.ns.clone(), path.clone());
    let after = tokio::spawn(async move { ns.stat(&p).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.release(100);
    assert!(before.await.unwrap().is_ok());
    assert_eq!(
        after.await.unwrap().unwrap(),
        None,
        "a stat after the removal says the file is gone"
    );
}

#[tokio::test]
async fn readdir_reports_the_inode_numbers_the_kernel_knows() {
    let r = rig();
    r.plant("day/a.txt", b"a").await;
    r.plant("day/b.txt", b"b").await;
    let a = r.ino("day/a.txt").await;
    let day = r.ino("day").await;
    let fh = r.core.opendir(day).await.unwrap();
    let dir = r.core.readdir(fh).unwrap();
    let entries = dir.all_entries().await.unwrap();
    let ino_of = |name: &str| {
        let e = entries.iter().find(|e| e.name == name).unwrap();
        r.core.entry_ino(&dir, e)
    };
    assert_eq!(ino_of("."), day);
    assert_eq!(ino_of("a.txt"), a, "the number stat gives");
    assert_eq!(ino_of("b.txt"), u64::MAX, "not looked up yet: a placeholder");
}

#[tokio::test]
async fn a_directory_whose_keys_are_all_being_deleted_is_not_listed() {
    // `rm d/f` (d has no marker): its delete waits a moment to be batched; a listing of the
    // root fetched meanwhile (the cache dropped, as a directory rename does) sees `d/` in
    // S3, which nothing but that pending delete holds up.
    let r = rig();
    r.plant("d/f.txt", b"x").await;
    r.plant("e/g.txt", b"y").await;
    let d = r.ino("d").await;
    r.core.unlink(d, OsStr::new("f.txt")).await.unwrap();
    r.core.ns.cache().clear();
    let names: Vec<String> = r.list(ROOT_INO).await.into_iter().map(|e| e.name).collect();
    assert_eq!(names, [".", "..", "e"]);
}

#[tokio::test]
async fn a_directory_holding_only_a_file_being_written_is_not_replaced_by_a_rename() {
    // pjdfstest rename/20: `to/test` created and closed, then rename(from, to); the kernel's
    // release (which uploads it) may come after the rename.
    let r = rig();
    r.ino_after_mkdir("from").await;
    let to = r.ino_after_mkdir("to").await;
    let fh = r.create(to, "test").await;
    let err = r
        .core
        .rename(ROOT_INO, OsStr::new("from"), ROOT_INO, OsStr::new("to"), 0)
        .await
        .unwrap_err();
    assert_eq!(err.errno, libc::ENOTEMPTY);
    r.core.release(fh).await.unwrap();
    assert_eq!(r.list(to).await.len(), 3, "to/test is still there");
}
