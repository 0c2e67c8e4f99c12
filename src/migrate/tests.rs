use super::*;
use bytes::Bytes;

#[tokio::test]
async fn the_source_and_the_destination_are_listed_at_the_same_time() {
    let store = crate::store::memory::MemoryStore::new();
    let from = Layout::new("plain", 1).unwrap();
    let to = Layout::new("hashed", 4).unwrap();
    let source = store.hold("list", "plain/");
    let destination = store.hold("list", "hashed/");
    let both_out = async {
        // Each waits for the other's listing to be sent before its own is answered.
        source.arrivals(1).await;
        destination.arrivals(1).await;
        source.release(100);
        destination.release(100);
    };
    let joined = async { tokio::join!(survey(&store, &from, &to), both_out).0 };
    let surveyed = tokio::time::timeout(std::time::Duration::from_secs(10), joined)
        .await
        .expect("the destination is listed while the source's listing is out");
    assert!(surveyed.is_ok());
}

/// Issue 21, 2: a writer overwrites a source key between the verification listing and
/// the deletes. Its object stays (and is reported); the others are deleted.
#[tokio::test]
async fn a_source_written_after_verification_is_not_deleted() {
    use crate::store::memory::MemoryStore;
    let mem = Arc::new(MemoryStore::new());
    for k in ["plain/d/1", "plain/d/2", "plain/d/3"] {
        mem.put(k, Bytes::from_static(b"old"), &UserMeta::new()).await.unwrap();
    }
    let store: Arc<dyn ObjectStore> = mem.clone();
    let (from, to) = (Layout::new("plain", 1).unwrap(), Layout::new("hashed", 4).unwrap());
    let deletes = mem.hold("delete_objects", "plain/d/");
    let opts = Options {
        delete_source: true,
        ..Options::default()
    };
    let quiet = Lines::new(Duration::from_secs(3600));
    let run = migrate(store, &from, &to, &opts, &quiet);
    let writer = async {
        deletes.arrivals(1).await;
        mem.put("plain/d/2", Bytes::from_static(b"new"), &UserMeta::new())
            .await
            .unwrap();
        deletes.release(100);
    };
    let report = tokio::join!(run, writer).0.expect("migrate");
    assert_eq!(report.deleted, 2);
    assert_eq!(report.kept, ["plain/d/2"]);
    assert_eq!(&mem.get("plain/d/2", None, None).await.unwrap()[..], b"new");
    assert!(mem.head("plain/d/1").await.unwrap_err().is_not_found());
}

/// Issue 21, 5: in place, a plain key can be another key's new key; nothing is written.
#[tokio::test]
async fn an_in_place_migration_that_would_overwrite_a_source_key_is_refused() {
    use crate::store::memory::MemoryStore;
    let (from, to) = (Layout::new("r", 1).unwrap(), Layout::new("r", 16).unwrap());
    let name = (0..100)
        .map(|i| format!("name{i}.txt"))
        .find(|n| to.prefix_index(&RelPath::parse(n).unwrap()) == 0)
        .unwrap();
    let new_key = to.file_key(&RelPath::parse(&name).unwrap()).unwrap();
    let mem = Arc::new(MemoryStore::new());
    mem.put(&format!("r/{name}"), Bytes::from_static(b"a"), &UserMeta::new())
        .await
        .unwrap();
    mem.put(
        &new_key,
        Bytes::from_static(b"plain file in a directory 0"),
        &UserMeta::new(),
    )
    .await
    .unwrap();
    let before = mem.keys();
    let quiet = Lines::new(Duration::from_secs(3600));
    let e = migrate(mem.clone(), &from, &to, &Options::default(), &quiet)
        .await
        .unwrap_err();
    assert!(matches!(e, crate::migrate::MigrateError::Collisions { .. }), "{e}");
    assert!(e.to_string().contains("would overwrite"), "{e}");
    assert_eq!(mem.keys(), before, "nothing written");
}

#[test]
fn items_go_out_round_robin_over_the_destination_prefixes() {
    let item = |prefix| Item {
        src: String::new(),
        dst: String::new(),
        size: 0,
        etag: None,
        prefix,
    };
    let items = vec![item(0), item(0), item(0), item(1), item(2), item(2)];
    let order: Vec<u32> = interleave(items, 3).iter().map(|i| i.prefix).collect();
    assert_eq!(order, [0, 1, 2, 0, 2, 0]);
}
