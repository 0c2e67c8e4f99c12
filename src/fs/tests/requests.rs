//! The request budget of the common operations: exactly what each sends to S3.

use super::*;

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
    let r = rig_with(|c| c.names.trust_listing = true);
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

/// Issue 22: an `ls -l` that outlasts the TTL (a big directory, a slow consumer) pays each
/// request once. What was fetched for a directory being read stays valid while it is open
/// and for one TTL after its close; nothing then lasts past the TTL.
#[tokio::test]
async fn an_ls_l_that_outlasts_the_ttl_heads_each_entry_once() {
    let ttl = Duration::from_millis(1500);
    let r = rig_with(|c| {
        c.names.attr_prefetch = 32;
        c.names.metadata_ttl = ttl;
    });
    for i in 0..200 {
        // No extension: a lookup by name alone would try the file key and the marker.
        r.plant(&format!("d/f{i:03}"), b"x").await;
    }
    let d = r.ino("d").await;
    r.expire();
    let mut m = r.meter();
    let fh = r.core.opendir(d).await.unwrap();
    let names = r.handle_names(fh).await;
    assert_eq!(names.len(), 200);
    for (i, n) in names.iter().enumerate() {
        if i == 100 {
            // The TTL runs out halfway through the stats.
            r.core.ns.cache().age_all();
        }
        r.core.lookup(d, OsStr::new(n)).await.unwrap();
    }
    r.core.release_handle(fh);
    // Within one TTL of the close, what was fetched still answers (all of it older than
    // the TTL by now).
    for n in &names {
        r.core.lookup(d, OsStr::new(n)).await.unwrap();
    }
    let sent = m.take();
    assert_eq!(sent.get("list"), Some(&(PREFIXES as u64)), "{sent:?}");
    assert!(
        sent.get("head").is_some_and(|h| *h <= 200),
        "each entry HEADed once: {sent:?}"
    );
    // One TTL after the close, the TTL holds again: a lookup asks S3.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    r.core.lookup(d, OsStr::new(&names[0])).await.unwrap();
    assert!(m.take().get("head").is_some_and(|h| *h >= 1));
}

#[tokio::test]
async fn ls_l_heads_every_entry_in_parallel_once_and_then_nothing() {
    let r = rig_with(|c| c.names.attr_prefetch = 32);
    for i in 0..200 {
        r.plant(&format!("d/f{i:03}.txt"), b"x").await;
    }
    let d = r.ino("d").await;
    r.expire();
    let mut m = r.meter();
    // ls -l: opendir/readdir, then a lookup of each name in listing order.
    let ls_l = || async {
        let fh = r.core.opendir(d).await.unwrap();
        let names = r.handle_names(fh).await;
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
    let r = rig_with(|c| c.names.trust_listing = true);
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
    let late = tokio::spawn(async move { core.ns.fetch_stat(&p, Some(Kind::File)).await });
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
    let mut info = r.core.ns.cache().entry(&path).unwrap().unwrap();
    info.checked = Some(info.s3_modified + Duration::from_secs(60));
    r.core.ns.cache().learned(&path, Some(info));
    // The listing's TTL runs out (the entry's too); the listing is fetched again.
    r.core.ns.cache().age_all();
    let mut m = r.meter();
    r.list(d).await;
    r.core.lookup(d, OsStr::new("a.txt")).await.unwrap();
    assert_eq!(m.take(), counts(&[(OpKind::List, PREFIXES as u64)]));
}

/// Issue 22: a stat storm after the TTL (`git status`, rsync's second run) over a directory
/// big enough that one listing costs less than a HEAD per entry (a LIST is 12.5 HEADs; here
/// 16 prefixes, 250 entries) revalidates by listing it again: unchanged objects keep their
/// attributes, so the storm costs the HEADs of its first 7 lookups and one LIST per prefix.
#[tokio::test]
async fn a_stat_storm_after_the_ttl_over_a_big_directory_revalidates_by_listing() {
    let r = rig();
    let names: Vec<String> = (0..250).map(|i| format!("f{i:03}.c")).collect();
    for n in &names {
        r.plant(&format!("src/{n}"), b"x").await;
    }
    let d = r.ino("src").await;
    r.list(d).await;
    for n in &names {
        r.core.lookup(d, OsStr::new(n)).await.unwrap();
        // Each HEAD came long enough after the object's write to vouch for its version.
        let path = crate::layout::RelPath::parse(&format!("src/{n}")).unwrap();
        let mut info = r.core.ns.cache().entry(&path).unwrap().unwrap();
        info.checked = Some(info.s3_modified + Duration::from_secs(60));
        r.core.ns.cache().learned(&path, Some(info));
    }
    r.core.ns.cache().age_all();
    let mut m = r.meter();
    for n in &names {
        r.core.lookup(d, OsStr::new(n)).await.unwrap();
    }
    assert_eq!(m.take(), counts(&[(OpKind::Head, 7), (OpKind::List, PREFIXES as u64)]));
}

/// Issue 22: a stat storm after the TTL over a small directory (a listing would cost more
/// than its HEADs) sends the HEADs of the expired entries together, from the second lookup
/// on, instead of one per lookup in series; each entry is HEADed once.
#[tokio::test]
async fn a_stat_storm_after_the_ttl_over_a_small_directory_heads_its_entries_together() {
    let r = rig();
    let names: Vec<String> = (0..20).map(|i| format!("f{i:02}.c")).collect();
    for n in &names {
        r.plant(&format!("src/{n}"), b"x").await;
    }
    let d = r.ino("src").await;
    r.list(d).await;
    for n in &names {
        r.core.lookup(d, OsStr::new(n)).await.unwrap();
    }
    r.core.ns.cache().age_all();
    let mut m = r.meter();
    for n in &names[..2] {
        r.core.lookup(d, OsStr::new(n)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        m.take(),
        counts(&[(OpKind::Head, 20)]),
        "after the second lookup, the other 18 expired entries were HEADed at once"
    );
    for n in &names[2..] {
        r.core.lookup(d, OsStr::new(n)).await.unwrap();
    }
    assert_eq!(m.take(), counts(&[]), "each entry HEADed once");
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
    // A directory this mount created (and has kept the listing of) is known empty: no
    // LIST; the marker's delete is queued and sent by rmdir's barrier as one DeleteObjects.
    r.core.rmdir(top, OsStr::new("sub")).await.unwrap();
    assert_eq!(m.take(), counts(&[(OpKind::DeleteMany, 1)]));
    // Past the TTL nothing is known: the emptiness check asks every prefix for one page.
    r.core.mkdir(top, OsStr::new("sub2"), 0o755, 0, 0).await.unwrap();
    r.expire();
    m.take();
    r.core.rmdir(top, OsStr::new("sub2")).await.unwrap();
    let sent = m.take();
    assert_eq!(sent.get(OpKind::List.name()), Some(&(PREFIXES as u64)), "{sent:?}");
    assert_eq!(sent.get(OpKind::DeleteMany.name()), Some(&1), "{sent:?}");
}

/// Issue 22: `rm -r` of a directory it has just listed (a fresh listing, emptied by its own
/// unlinks) costs no LIST for the rmdir, only the deletes; the marker goes at the version
/// the listing saw; foreign keys the listing saw below stay, and the name is hidden.
#[tokio::test]
async fn rmdir_after_rm_of_a_listed_directory_sends_no_list() {
    let r = rig();
    r.plant_dir("top/d").await;
    for i in 0..5 {
        r.plant(&format!("top/d/f{i}"), b"x").await;
    }
    let top = r.ino("top").await;
    let d = r.ino("top/d").await;
    r.list(d).await;
    let mut m = r.meter();
    for i in 0..5 {
        r.core.unlink(d, OsStr::new(&format!("f{i}"))).await.unwrap();
    }
    r.core.rmdir(top, OsStr::new("d")).await.unwrap();
    let sent = m.take();
    assert_eq!(sent.get(OpKind::List.name()), None, "{sent:?}");
    assert!(
        !r.mem().keys().iter().any(|k| k.contains("top/d")),
        "{:?}",
        r.mem().keys()
    );
    // A foreign key below (a prefix that does not match its hash): the listing saw it, so
    // the rmdir leaves it and hides the name.
    r.plant_dir("top/e").await;
    let right = r.layout.prefix_index(&RelPath::parse("top/e/alien").unwrap());
    let wrong = (right + 1) % PREFIXES;
    let alien = format!(
        "{}alien",
        r.layout.dir_list_prefix(wrong, &RelPath::parse("top/e").unwrap())
    );
    r.mem()
        .put(&alien, Bytes::from_static(b"x"), &UserMeta::new())
        .await
        .unwrap();
    let e = r.ino("top/e").await;
    r.list(e).await;
    m.take();
    r.core.rmdir(top, OsStr::new("e")).await.unwrap();
    let sent = m.take();
    assert_eq!(sent.get(OpKind::List.name()), None, "{sent:?}");
    assert!(r.mem().keys().contains(&alien));
    let names: Vec<String> = r.list(top).await.iter().skip(2).map(|e| e.name.clone()).collect();
    assert!(names.is_empty(), "hidden, not shown again: {names:?}");
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
    let rewrite = || async {
        let fh = r.core.open(f0.ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
        r.core.flush(fh, false).await.unwrap();
        r.core.write(fh, 0, b"new").await.unwrap();
        r.core.flush(fh, false).await.unwrap();
        r.core.release(fh).await.unwrap();
    };
    // Another client's object: its tags are asked for (a HEAD cannot tell them; the
    // lookup's HEAD showed nothing else to keep).
    rewrite().await;
    assert_eq!(m.take(), counts(&[(OpKind::Put, 1), (OpKind::GetTagging, 1)]));
    // This mount's own object, written with nothing to keep: one PUT.
    rewrite().await;
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
