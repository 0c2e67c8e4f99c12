use super::*;
use crate::store::memory::MemoryStore;

fn setup() -> (Arc<MemoryStore>, DeferredDeletes) {
    let mem = Arc::new(MemoryStore::new());
    let first_segment = crate::store::first_segment();
    let d = DeferredDeletes::new(mem.clone(), None, first_segment, DeleteConditions::S3);
    (mem, d)
}

#[tokio::test]
async fn queued_deletes_are_invisible_and_land_in_one_batch() {
    let (mem, d) = setup();
    for k in ["a/1", "a/2", "b/1"] {
        mem.put(k, Bytes::from_static(b"x"), &UserMeta::new()).await.unwrap();
    }
    d.delete("a/1", None).await.unwrap();
    d.delete("a/2", None).await.unwrap();
    assert!(d.head("a/1").await.unwrap_err().is_not_found());
    assert_eq!(d.list("a/", None, None, None).await.unwrap().objects.len(), 0);
    d.settle().await.unwrap();
    assert_eq!(mem.keys(), vec!["b/1"]);
}

#[tokio::test]
async fn a_subdirectory_of_pending_deletes_only_is_not_listed() {
    let (mem, d) = setup();
    for k in ["p/gone/1", "p/gone/2", "p/kept/1", "p/kept/2", "p/f"] {
        mem.put(k, Bytes::from_static(b"x"), &UserMeta::new()).await.unwrap();
    }
    for k in ["p/gone/1", "p/gone/2", "p/kept/1"] {
        d.delete(k, None).await.unwrap();
    }
    let page = d.list("p/", Some("/"), None, None).await.unwrap();
    assert_eq!(page.common_prefixes, ["p/kept/"], "p/gone/ holds only pending deletes");
    assert_eq!(page.objects.len(), 1);
    d.settle().await.unwrap();
    let page = d.list("p/", Some("/"), None, None).await.unwrap();
    assert_eq!(page.common_prefixes, ["p/kept/"]);
}

#[tokio::test]
async fn a_write_after_a_delete_wins() {
    let (mem, d) = setup();
    mem.put("a/1", Bytes::from_static(b"old"), &UserMeta::new())
        .await
        .unwrap();
    d.delete("a/1", None).await.unwrap();
    d.put("a/1", Bytes::from_static(b"new"), &UserMeta::new())
        .await
        .unwrap();
    d.settle().await.unwrap();
    assert_eq!(&mem.get("a/1", None, None).await.unwrap()[..], b"new");
}

/// A create (`If-None-Match: *`) of a name this mount unlinked replaces the unlinked
/// version at once, without waiting for its delete; another writer's object made
/// meanwhile stays theirs and the create fails.
#[tokio::test]
async fn a_create_over_a_pending_unlink_replaces_only_the_unlinked_version() {
    let (mem, d) = setup();
    let old = mem
        .put_if("a/1", Bytes::from_static(b"old"), &UserMeta::new(), None)
        .await
        .unwrap();
    // Issue 22: a name deleted and created again costs what a new name costs: the create
    // does not wait for the delete batch (held here: it would never come).
    let batches = mem.hold("delete_objects", "a/1");
    d.delete("a/1", old.as_deref()).await.unwrap();
    let none = UserMeta::new();
    let create = d.put_if("a/1", Bytes::from_static(b"new"), &none, Some(&WriteIf::Absent));
    tokio::time::timeout(Duration::from_secs(5), create)
        .await
        .expect("the create waited for the delete batch")
        .unwrap();
    d.settle().await.unwrap();
    assert_eq!(&mem.get("a/1", None, None).await.unwrap()[..], b"new");
    batches.release(100);

    let old = mem
        .put_if("a/2", Bytes::from_static(b"old"), &UserMeta::new(), None)
        .await
        .unwrap();
    d.delete("a/2", old.as_deref()).await.unwrap();
    mem.put("a/2", Bytes::from_static(b"theirs"), &UserMeta::new())
        .await
        .unwrap();
    let e = d
        .put_if(
            "a/2",
            Bytes::from_static(b"new"),
            &UserMeta::new(),
            Some(&WriteIf::Absent),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::PreconditionFailed { .. }), "{e}");
    d.settle().await.unwrap();
    assert_eq!(&mem.get("a/2", None, None).await.unwrap()[..], b"theirs");
}

/// A file renamed away while a program reads it: the source's delete waits for the last
/// reader, as an unlink's does (the reader keeps reading the version it opened).
#[tokio::test]
async fn a_bulk_delete_of_a_key_open_for_reading_waits_for_its_last_reader() {
    let (mem, d) = setup();
    for k in ["a/1", "a/2"] {
        mem.put(k, Bytes::from_static(b"x"), &UserMeta::new()).await.unwrap();
    }
    d.pin("a/1");
    let failed = d
        .delete_many(&[DeleteTarget::any("a/1"), DeleteTarget::any("a/2")])
        .await
        .unwrap();
    assert!(failed.is_empty());
    assert_eq!(mem.keys(), ["a/1"], "the read key stays while it is read");
    assert!(
        d.head("a/1").await.unwrap_err().is_not_found(),
        "but is gone for the mount"
    );
    d.unpin("a/1");
    d.settle().await.unwrap();
    assert!(mem.keys().is_empty());
}

/// Issue 21, 1: `rm f` was acknowledged; the write that replaces `f` then fails. The
/// delete must still land (before, the write cancelled it first, and the old file came
/// back once S3 was healthy).
#[tokio::test]
async fn a_failed_write_does_not_undo_an_acknowledged_unlink() {
    let (mem, d) = setup();
    let etag = mem
        .put_if("a/1", Bytes::from_static(b"old"), &UserMeta::new(), None)
        .await
        .unwrap();
    d.delete("a/1", etag.as_deref()).await.unwrap();
    mem.fail_next(1, |key| StoreError::from_response("put", key, 500, "InternalError", ""));
    assert!(
        d.put("a/1", Bytes::from_static(b"new"), &UserMeta::new())
            .await
            .is_err()
    );
    assert!(d.head("a/1").await.unwrap_err().is_not_found(), "still unlinked");
    d.settle().await.unwrap();
    assert!(
        mem.keys().is_empty(),
        "the old file must not come back: {:?}",
        mem.keys()
    );
}

/// Issue 21, 3: this mount's unlink saw one version; its delete failed for a while, and
/// meanwhile another host wrote the key. The retry leaves their object.
#[tokio::test]
async fn a_retried_delete_leaves_another_hosts_newer_object() {
    for conds in [
        DeleteConditions::S3,
        DeleteConditions {
            single: true,
            batch: false,
        },
        DeleteConditions {
            single: false,
            batch: false,
        },
    ] {
        let mem = Arc::new(MemoryStore::new());
        let d = DeferredDeletes::new(mem.clone(), None, crate::store::first_segment(), conds);
        let etag = mem
            .put_if("a/1", Bytes::from_static(b"old"), &UserMeta::new(), None)
            .await
            .unwrap();
        mem.fail_next(1, |key| {
            StoreError::from_response("delete_objects", key, 503, "ServiceUnavailable", "")
        });
        d.delete("a/1", etag.as_deref()).await.unwrap();
        // The first attempt fails; another host writes while it waits for its retry.
        tokio::time::sleep(Duration::from_millis(100)).await;
        mem.put("a/1", Bytes::from_static(b"theirs"), &UserMeta::new())
            .await
            .unwrap();
        d.settle().await.unwrap();
        assert_eq!(&mem.get("a/1", None, None).await.unwrap()[..], b"theirs", "{conds:?}");
    }
}

/// Issue 21, 10: a file unlinked while open for reading stays readable (its version)
/// until the last reader goes; then the delete is sent. Everyone else sees it gone at once.
#[tokio::test]
async fn an_unlinked_file_open_for_reading_stays_readable_until_its_last_reader_goes() {
    let (mem, d) = setup();
    let etag = mem
        .put_if("a/1", Bytes::from_static(b"data"), &UserMeta::new(), None)
        .await
        .unwrap();
    d.pin("a/1");
    d.pin("a/1");
    d.delete("a/1", etag.as_deref()).await.unwrap();
    assert!(d.head("a/1").await.unwrap_err().is_not_found(), "gone for lookups");
    assert!(d.list("a/", None, None, None).await.unwrap().objects.is_empty());
    d.settle().await.unwrap();
    assert_eq!(&d.get("a/1", None, etag.as_deref()).await.unwrap()[..], b"data");
    d.unpin("a/1");
    d.settle().await.unwrap();
    assert_eq!(mem.keys(), ["a/1"], "one reader is left");
    d.unpin("a/1");
    d.settle().await.unwrap();
    assert!(mem.keys().is_empty(), "deleted after the last reader");
}
