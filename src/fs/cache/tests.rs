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
fn own_changes_during_a_listing_fetch_are_applied_to_it() {
    let c = MetaCache::new(Duration::from_secs(60), 100);
    let dir = RelPath::parse("d").unwrap();
    let token = c.begin_fetch(&dir);
    // Created and removed by this mount while the LIST was on the wire.
    c.upsert(&dir.join("new").unwrap(), info(Kind::File));
    c.remove(&dir.join("old").unwrap());
    let mut fetched = BTreeMap::new();
    fetched.insert("old".to_string(), info(Kind::File).partial());
    let l = token.finish(fetched);
    assert!(l.contains_key("new") && !l.contains_key("old"));
    assert!(lock(&c.fetching).is_empty(), "recording stops when the fetch ends");
}

#[test]
fn unchanged_objects_keep_their_attributes_across_listings() {
    let c = MetaCache::new(Duration::from_secs(60), 100);
    let dir = RelPath::parse("d").unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let posix = Posix {
        mode: Some(libc::S_IFLNK | 0o777),
        ..Default::default()
    };
    let mut headed = EntryInfo::new(Kind::File, 5, t0).with_posix(posix);
    headed.checked = Some(t0 + Duration::from_secs(10));
    c.learned(&dir.join("link").unwrap(), Some(headed));
    let mut young = EntryInfo::new(Kind::File, 5, t0).with_posix(posix);
    young.checked = Some(t0); // a HEAD in the same second as the write proves nothing
    c.learned(&dir.join("young").unwrap(), Some(young));
    let mut fetched = BTreeMap::new();
    for name in ["link", "young"] {
        fetched.insert(name.to_string(), EntryInfo::new(Kind::File, 5, t0).partial());
    }
    fetched.insert(
        "changed".to_string(),
        EntryInfo::new(Kind::File, 6, t0 + Duration::from_secs(20)).partial(),
    );
    let l = c.begin_fetch(&dir).finish(fetched);
    assert_eq!(l["link"].kind, Kind::Symlink);
    assert!(l["link"].full);
    assert!(!l["young"].full);
    assert!(!l["changed"].full);
}

#[test]
fn capacity_is_bounded() {
    let c = MetaCache::new(Duration::from_secs(60), 10);
    for i in 0..100 {
        c.put_entry(&RelPath::parse(&format!("f{i}")).unwrap(), None);
    }
    assert_eq!(lock(&c.entries).len(), 10);
}

fn settled_cache(after_secs: u64) -> MetaCache {
    MetaCache::new(Duration::from_millis(20), 100).with_settled(SettledConfig {
        after: Duration::from_secs(after_secs),
        ttl: Duration::from_secs(3600),
        file: None,
    })
}

fn listing_of(entries: &[(&str, Kind, SystemTime)]) -> Listing {
    Arc::new(
        entries
            .iter()
            .map(|(n, k, t)| (n.to_string(), EntryInfo::new(*k, 1, *t)))
            .collect(),
    )
}

#[test]
fn a_directory_settles_once_everything_below_it_is_known_old() {
    let c = settled_cache(3600);
    let old = SystemTime::now() - Duration::from_secs(7200);
    let (year, day, today) = (
        RelPath::parse("2025").unwrap(),
        RelPath::parse("2025/01").unwrap(),
        RelPath::parse("2025/02").unwrap(),
    );
    c.put_listing(&year, listing_of(&[("01", Kind::Dir, old), ("02", Kind::Dir, old)]));
    assert_eq!(c.settled_count(), 0, "its subdirectories' ages are unknown");
    c.put_listing(&day, listing_of(&[("a", Kind::File, old)]));
    assert_eq!(c.settled_count(), 1, "the old day");
    c.put_listing(&today, listing_of(&[("b", Kind::File, SystemTime::now())]));
    assert_eq!(c.settled_count(), 1, "a new file keeps its day and the year unsettled");
    std::thread::sleep(Duration::from_millis(30));
    assert!(c.listing(&day).is_some(), "a settled listing outlives the metadata TTL");
    assert!(c.listing(&today).is_none());
    assert!(c.entry(&day.join("a").unwrap()).flatten().is_some());
}

#[test]
fn the_mounts_own_change_unsettles_the_directory_and_its_ancestors() {
    let c = settled_cache(0);
    let old = SystemTime::now() - Duration::from_secs(10);
    let (year, day) = (RelPath::parse("2025").unwrap(), RelPath::parse("2025/01").unwrap());
    c.put_listing(&day, listing_of(&[("a", Kind::File, old)]));
    c.put_listing(&year, listing_of(&[("01", Kind::Dir, old)]));
    assert_eq!(c.settled_count(), 2);
    c.upsert(&day.join("new").unwrap(), EntryInfo::new(Kind::File, 1, old));
    assert_eq!(c.settled_count(), 0);
    // Listed again while the mount runs: still not settled.
    c.put_listing(&day, listing_of(&[("a", Kind::File, old), ("new", Kind::File, old)]));
    assert_eq!(c.settled_count(), 0);
}
