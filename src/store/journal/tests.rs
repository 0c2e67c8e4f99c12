use super::*;
use crate::store::memory::MemoryStore;

fn journal_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
}

#[tokio::test]
async fn work_of_a_dead_process_is_finished_and_its_journal_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryStore::new());
    let done = mem.create_multipart("a", &UserMeta::new()).await.unwrap();
    let left = mem.create_multipart("b", &UserMeta::new()).await.unwrap();
    for k in ["p/gone", "p/rewritten"] {
        mem.put(k, Bytes::from_static(b"x"), &UserMeta::new()).await.unwrap();
    }
    let long_ago = 1_000_000; // ms: 1970, so "p/rewritten" was written after it
    let recent = now_ms() + 5000;
    let records = [
        Record::UploadStarted {
            id: done.clone(),
            key: "a".into(),
        },
        Record::UploadStarted {
            id: left.clone(),
            key: "b".into(),
        },
        Record::UploadEnded { id: done.clone() },
        Record::DeleteQueued {
            key: "p/gone".into(),
            at_ms: recent,
            etag: None,
        },
        Record::DeleteQueued {
            key: "p/rewritten".into(),
            at_ms: long_ago,
            etag: None,
        },
        Record::DeleteQueued {
            key: "p/confirmed".into(),
            at_ms: recent,
            etag: None,
        },
        Record::DeleteEnded {
            key: "p/confirmed".into(),
        },
    ];
    let text: String = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    // Not locked by anyone: its process is gone.
    std::fs::write(dir.path().join("dead.journal"), text).unwrap();
    mem.complete_multipart("a", &done, &[]).await.unwrap();
    let r = recover(
        mem.as_ref(),
        dir.path(),
        DeleteConditions::S3,
        &crate::store::first_segment(),
    )
    .await;
    assert_eq!(
        r,
        Recovered {
            uploads_aborted: 1,
            deletes_sent: 1,
            deletes_superseded: 1
        }
    );
    assert!(mem.list_uploads("").await.unwrap().is_empty());
    assert_eq!(mem.keys(), vec!["a", "p/rewritten"]);
    assert!(journal_files(dir.path()).is_empty());
}

/// The process died between S3 creating an upload and the journal recording its id:
/// the intent recorded before the create finds it by key; a failed create left nothing.
#[tokio::test]
async fn an_upload_created_just_before_a_crash_is_found_by_its_intent() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryStore::new());
    let journal = Arc::new(Journal::create(dir.path()).unwrap());
    let j = JournalingStore::new(mem.clone(), journal.clone());
    mem.fail_next(1, |k| {
        StoreError::from_response("create_multipart", k, 403, "AccessDenied", "")
    });
    assert!(j.create_multipart("failed", &UserMeta::new()).await.is_err());
    // The crash: intent written, then S3 made the upload, and nothing more.
    journal.record(&[Record::UploadIntent {
        key: "k".into(),
        at_ms: now_ms(),
    }]);
    let orphan = mem.create_multipart("k", &UserMeta::new()).await.unwrap();
    let other = mem.create_multipart("k2", &UserMeta::new()).await.unwrap();
    let path = journal.path().to_path_buf();
    std::mem::forget(journal);
    std::mem::forget(j);
    // The lock dies with the process; here, with a copy of the file under another name.
    let copy = dir.path().join("dead.journal");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::remove_file(&path).unwrap();
    let r = recover(
        mem.as_ref(),
        dir.path(),
        DeleteConditions::S3,
        &crate::store::first_segment(),
    )
    .await;
    assert_eq!(r.uploads_aborted, 1);
    let left: Vec<String> = mem
        .list_uploads("")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.upload_id)
        .collect();
    assert_eq!(left, vec![other]);
    assert_ne!(orphan, left[0]);
}

#[tokio::test]
async fn a_live_journal_is_locked_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryStore::new());
    let journal = Arc::new(Journal::create(dir.path()).unwrap());
    let j = JournalingStore::new(mem.clone(), journal.clone());
    let id = j.create_multipart("k", &UserMeta::new()).await.unwrap();
    // Another "process" (another open file description) cannot take the lock.
    assert_eq!(
        recover(
            mem.as_ref(),
            dir.path(),
            DeleteConditions::S3,
            &crate::store::first_segment()
        )
        .await,
        Recovered::default()
    );
    assert_eq!(
        mem.list_uploads("").await.unwrap().len(),
        1,
        "a live upload is not aborted"
    );
    j.abort_multipart("k", &id).await.unwrap();
    drop(j);
    drop(journal);
    assert!(journal_files(dir.path()).is_empty(), "nothing outstanding: removed");
}

#[tokio::test]
async fn keys_with_newlines_cannot_forge_records() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryStore::new());
    let victim = mem.create_multipart("victim", &UserMeta::new()).await.unwrap();
    let journal = Journal::create(dir.path()).unwrap();
    let evil = format!("x\n{{\"op\":\"upload_started\",\"id\":\"{victim}\",\"key\":\"victim\"}}");
    journal.record(&[Record::DeleteQueued {
        key: evil.clone(),
        at_ms: 0,
        etag: None,
    }]);
    let text = std::fs::read_to_string(journal.path()).unwrap();
    assert_eq!(text.lines().count(), 1);
    let o = outstanding(&text, journal.path());
    assert!(o.uploads.is_empty() && o.intents.is_empty());
    assert_eq!(o.deletes.keys().collect::<Vec<_>>(), vec![&evil]);
}

#[tokio::test]
async fn an_abort_of_a_finished_upload_is_not_counted_as_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryStore::new());
    let id = mem.create_multipart("a", &UserMeta::new()).await.unwrap();
    mem.complete_multipart("a", &id, &[]).await.unwrap();
    let line = serde_json::to_string(&Record::UploadStarted { id, key: "a".into() }).unwrap();
    std::fs::write(dir.path().join("dead.journal"), line + "\n").unwrap();
    assert_eq!(
        recover(
            mem.as_ref(),
            dir.path(),
            DeleteConditions::S3,
            &crate::store::first_segment()
        )
        .await
        .uploads_aborted,
        0
    );
    assert!(journal_files(dir.path()).is_empty());
}

#[test]
fn an_idle_journal_is_emptied_instead_of_growing() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::create(dir.path()).unwrap();
    let key = "k".repeat(1000);
    for _ in 0..2000 {
        journal.record(&[
            Record::DeleteQueued {
                key: key.clone(),
                at_ms: 1,
                etag: None,
            },
            Record::DeleteEnded { key: key.clone() },
        ]);
    }
    assert!(std::fs::metadata(journal.path()).unwrap().len() <= COMPACT_AT + 4096);
}

/// Host A's delete was journalled with the version its unlink saw; A died before S3 had it,
/// and host B wrote the key again in the same second. The replay must leave B's object,
/// on a server that checks the ETag in DeleteObjects and on one that checks it only on
/// DeleteObject, and it still deletes what A saw.
#[tokio::test]
async fn a_replayed_delete_removes_only_the_version_its_unlink_saw() {
    for conds in [
        DeleteConditions::S3,
        DeleteConditions {
            single: true,
            batch: false,
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemoryStore::new());
        let seen = mem
            .put_if("p/f", Bytes::from_static(b"old"), &UserMeta::new(), None)
            .await
            .unwrap();
        let other = mem
            .put_if("p/g", Bytes::from_static(b"old"), &UserMeta::new(), None)
            .await
            .unwrap();
        let records = [
            Record::DeleteQueued {
                key: "p/f".into(),
                at_ms: now_ms(),
                etag: seen,
            },
            Record::DeleteQueued {
                key: "p/g".into(),
                at_ms: now_ms(),
                etag: other,
            },
        ];
        let text: String = records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        std::fs::write(dir.path().join("dead.journal"), text).unwrap();
        // Host B, the same second.
        mem.put("p/f", Bytes::from_static(b"B's"), &UserMeta::new())
            .await
            .unwrap();
        let r = recover(mem.as_ref(), dir.path(), conds, &crate::store::first_segment()).await;
        assert_eq!(
            r,
            Recovered {
                uploads_aborted: 0,
                deletes_sent: 1,
                deletes_superseded: 1
            },
            "{conds:?}"
        );
        assert_eq!(mem.keys(), ["p/f"], "{conds:?}");
        assert_eq!(&mem.get("p/f", None, None).await.unwrap()[..], b"B's");
        assert!(journal_files(dir.path()).is_empty());
    }
}

/// An older journal's record names no version: an object of the delete's own second may be
/// a newer write, and stays.
#[tokio::test]
async fn a_replayed_delete_without_a_version_spares_a_write_of_the_same_second() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryStore::new());
    mem.put("p/f", Bytes::from_static(b"B's"), &UserMeta::new())
        .await
        .unwrap();
    let line = format!("{{\"op\":\"delete_queued\",\"key\":\"p/f\",\"at_ms\":{}}}\n", now_ms());
    std::fs::write(dir.path().join("dead.journal"), line).unwrap();
    let r = recover(
        mem.as_ref(),
        dir.path(),
        DeleteConditions::S3,
        &crate::store::first_segment(),
    )
    .await;
    assert_eq!(r.deletes_superseded, 1);
    assert_eq!(mem.keys(), ["p/f"]);
}
