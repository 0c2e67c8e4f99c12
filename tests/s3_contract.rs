//! Issue 25: one contract of S3 behaviour, and every store the project has held to it: the
//! memory store under the unit tests and the model proptest, the embedded server under the
//! mount tests, and moto's server (an independent implementation). Each check runs on all
//! three through the one `ObjectStore` trait; where a store is known to differ from S3 it
//! says so in [`Deviations`], and the check asserts that deviation instead (so a store that
//! starts or stops differing fails here, not in a mount test).

mod common;

use bytes::Bytes;
use common::Env;
use prefixfs::store::memory::MemoryStore;
use prefixfs::store::{CopySpec, DeleteTarget, ObjectStore, StoreError, UserMeta, WriteIf};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Where a store is known to differ from S3.
#[derive(Clone, Copy, Default)]
struct Deviations {
    /// DeleteObjects deletes a key whatever ETag its entry names (moto 5.2).
    batch_delete_ignores_etags: bool,
    /// CopyObject and UploadPartCopy copy whatever the source holds, whatever
    /// `x-amz-copy-source-if-match` names, onto whatever the destination holds, whatever
    /// `If-None-Match` says (moto 5.2).
    copy_ignores_conditions: bool,
    /// A CompleteMultipartUpload that succeeded answers a 200 the SDK cannot read (moto 5.2
    /// names its result element differently); the object is complete.
    completion_answer_unreadable: bool,
}

/// CompleteMultipartUpload, its answer read as the deviation says.
async fn complete(
    s: &Store,
    key: &str,
    id: &str,
    parts: &[(i32, String)],
    cond: Option<&WriteIf>,
) -> Result<Option<String>, StoreError> {
    match s.s3.complete_multipart_if(key, id, parts, cond).await {
        Err(StoreError::Server {
            status: 200, ref code, ..
        }) if code.is_empty() && s.deviations.completion_answer_unreadable => Ok(None),
        r => r,
    }
}

/// Keys under one prefix per check, so that checks do not see each other's keys.
struct Store {
    s3: Arc<dyn ObjectStore>,
    prefix: String,
    deviations: Deviations,
}

impl Store {
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }
}

fn meta(pairs: &[(&str, &str)]) -> UserMeta {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn is_precondition(e: &StoreError) -> bool {
    matches!(e, StoreError::PreconditionFailed { .. })
}

/// Every key under `prefix`, page by page (`max_keys` a page), with or without a delimiter.
async fn list_all(
    s: &dyn ObjectStore,
    prefix: &str,
    delimiter: Option<&str>,
    max_keys: i32,
) -> (Vec<String>, Vec<String>) {
    let (mut keys, mut dirs, mut token) = (Vec::new(), Vec::new(), None::<String>);
    loop {
        let page = s
            .list(prefix, delimiter, token.as_deref(), Some(max_keys))
            .await
            .expect("list");
        assert!(
            page.objects.len() + page.common_prefixes.len() <= max_keys as usize,
            "a page holds at most max-keys entries"
        );
        keys.extend(page.objects.into_iter().map(|o| o.key));
        dirs.extend(page.common_prefixes);
        match page.next_token {
            Some(t) => token = Some(t),
            None => return (keys, dirs),
        }
    }
}

async fn objects_read_back_whole_and_by_range(s: &Store) {
    let k = s.key("a/b.txt");
    s.s3.put(&k, Bytes::from_static(b"0123456789"), &meta(&[("mode", "33188")]))
        .await
        .expect("put");
    let h = s.s3.head(&k).await.expect("head");
    assert_eq!(
        (h.size, h.user_meta.get("mode").map(String::as_str)),
        (10, Some("33188"))
    );
    assert_eq!(&s.s3.get(&k, None, None).await.expect("get")[..], b"0123456789");
    assert_eq!(&s.s3.get(&k, Some(2..5), None).await.expect("range")[..], b"234");
    assert_eq!(
        &s.s3.get(&k, Some(8..100), None).await.expect("past the end")[..],
        b"89"
    );
    assert!(s.s3.get(&k, Some(10..20), None).await.expect("at the end").is_empty());
    let missing = s.s3.head(&s.key("none")).await.expect_err("no such key");
    assert!(missing.is_not_found(), "{missing}");
    assert!(
        s.s3.get(&s.key("none"), None, None)
            .await
            .expect_err("no such key")
            .is_not_found()
    );
    // A read pinned to a version fails on another.
    let e =
        s.s3.get(&k, None, Some("\"0123456789abcdef0123456789abcdef\""))
            .await
            .expect_err("other version");
    assert!(is_precondition(&e), "{e}");
    let etag = h.etag.expect("an ETag");
    assert_eq!(
        &s.s3.get(&k, Some(0..1), Some(&etag)).await.expect("this version")[..],
        b"0"
    );
}

async fn listings_page_and_group_by_the_delimiter(s: &Store) {
    let names = [
        "2017/01/a",
        "2017/01/b",
        "2017/02/c",
        "2017/d",
        "2018/e",
        "top",
        "we ird+%é.txt",
    ];
    for n in names {
        s.s3.put(&s.key(n), Bytes::from_static(b"x"), &UserMeta::new())
            .await
            .expect("put");
    }
    let want: Vec<String> = {
        let mut v: Vec<String> = names.iter().map(|n| s.key(n)).collect();
        v.sort();
        v
    };
    for page in [1, 2, 3, 1000] {
        let (keys, dirs) = list_all(s.s3.as_ref(), &s.prefix, None, page).await;
        assert_eq!(keys, want, "all keys, in order, pages of {page}");
        assert!(dirs.is_empty());
    }
    let (keys, dirs) = list_all(s.s3.as_ref(), &s.prefix, Some("/"), 2).await;
    let top: BTreeSet<String> = keys.into_iter().collect();
    assert_eq!(top, [s.key("top"), s.key("we ird+%é.txt")].into_iter().collect());
    assert_eq!(dirs, vec![s.key("2017/"), s.key("2018/")]);
    let (keys, dirs) = list_all(s.s3.as_ref(), &s.key("2017/"), Some("/"), 1000).await;
    assert_eq!(
        (keys, dirs),
        (vec![s.key("2017/d")], vec![s.key("2017/01/"), s.key("2017/02/")])
    );
    let (keys, _) = list_all(s.s3.as_ref(), &s.key("2017/0"), None, 1000).await;
    assert_eq!(keys.len(), 3, "a prefix that is no directory");
}

async fn conditional_writes_hold(s: &Store) {
    let k = s.key("c");
    let first =
        s.s3.put_if(&k, Bytes::from_static(b"1"), &UserMeta::new(), Some(&WriteIf::Absent))
            .await
            .expect("create");
    let e =
        s.s3.put_if(&k, Bytes::from_static(b"2"), &UserMeta::new(), Some(&WriteIf::Absent))
            .await
            .expect_err("exists");
    assert!(is_precondition(&e), "{e}");
    let wrong = WriteIf::Matches("\"0123456789abcdef0123456789abcdef\"".into());
    let e =
        s.s3.put_if(&k, Bytes::from_static(b"2"), &UserMeta::new(), Some(&wrong))
            .await
            .expect_err("another version");
    assert!(is_precondition(&e), "{e}");
    let etag = first.or(s.s3.head(&k).await.expect("head").etag).expect("an ETag");
    s.s3.put_if(
        &k,
        Bytes::from_static(b"3"),
        &UserMeta::new(),
        Some(&WriteIf::Matches(etag)),
    )
    .await
    .expect("replace the version seen");
    assert_eq!(&s.s3.get(&k, None, None).await.expect("get")[..], b"3");
    let e =
        s.s3.put_if(
            &s.key("nothing"),
            Bytes::new(),
            &UserMeta::new(),
            Some(&WriteIf::Matches("\"x\"".into())),
        )
        .await;
    assert!(e.is_err(), "If-Match on no object fails");
}

async fn deletes_remove_only_the_version_they_name(s: &Store) {
    let k = s.key("d");
    s.s3.put(&k, Bytes::from_static(b"v1"), &UserMeta::new())
        .await
        .expect("put");
    let etag = s.s3.head(&k).await.expect("head").etag.expect("etag");
    let e =
        s.s3.delete(&k, Some("\"0123456789abcdef0123456789abcdef\""))
            .await
            .expect_err("another version");
    assert!(is_precondition(&e), "{e}");
    assert!(s.s3.head(&k).await.is_ok(), "the object stays");
    s.s3.delete(&k, Some(&etag)).await.expect("its version");
    assert!(s.s3.head(&k).await.expect_err("gone").is_not_found());
    s.s3.delete(&k, None)
        .await
        .expect("a key that holds nothing is deleted already");

    let (a, b) = (s.key("batch/a"), s.key("batch/b"));
    for k in [&a, &b] {
        s.s3.put(k, Bytes::from_static(b"x"), &UserMeta::new())
            .await
            .expect("put");
    }
    let a_etag = s.s3.head(&a).await.expect("head").etag;
    let failed =
        s.s3.delete_many(&[
            DeleteTarget {
                key: a.clone(),
                etag: a_etag,
            },
            DeleteTarget {
                key: b.clone(),
                etag: Some("\"0123456789abcdef0123456789abcdef\"".into()),
            },
            DeleteTarget::any(s.key("batch/missing")),
        ])
        .await
        .expect("DeleteObjects");
    assert!(s.s3.head(&a).await.expect_err("a is gone").is_not_found());
    if s.deviations.batch_delete_ignores_etags {
        assert!(
            failed.is_empty() && s.s3.head(&b).await.is_err(),
            "the known deviation: {failed:?}"
        );
    } else {
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(
            (failed[0].key.as_str(), failed[0].code.as_str()),
            (b.as_str(), "PreconditionFailed")
        );
        assert!(s.s3.head(&b).await.is_ok(), "b stays");
    }
}

async fn copies_keep_metadata_and_check_both_ends(s: &Store) {
    let (src, dst) = (s.key("src"), s.key("dst"));
    s.s3.put(&src, Bytes::from_static(b"body"), &meta(&[("mode", "33261")]))
        .await
        .expect("put");
    let etag = s.s3.head(&src).await.expect("head").etag.expect("etag");
    let wrong = "\"0123456789abcdef0123456789abcdef\"";
    let pinned =
        s.s3.copy(&CopySpec {
            src_etag: Some(wrong),
            ..CopySpec::new(&src, &dst)
        })
        .await;
    if s.deviations.copy_ignores_conditions {
        assert!(pinned.is_ok(), "the known deviation: {pinned:?}");
        s.s3.delete(&dst, None).await.expect("delete");
    } else {
        assert!(pinned.as_ref().is_err_and(is_precondition), "{pinned:?}");
        assert!(s.s3.head(&dst).await.is_err(), "nothing copied");
    }
    s.s3.copy(&CopySpec {
        src_etag: Some(&etag),
        ..CopySpec::new(&src, &dst)
    })
    .await
    .expect("copy");
    let h = s.s3.head(&dst).await.expect("head");
    assert_eq!(
        h.user_meta.get("mode").map(String::as_str),
        Some("33261"),
        "the metadata comes along"
    );
    assert_eq!(&s.s3.get(&dst, None, None).await.expect("get")[..], b"body");
    let exclusive =
        s.s3.copy(&CopySpec {
            dst_if: Some(&WriteIf::Absent),
            ..CopySpec::new(&src, &dst)
        })
        .await;
    if s.deviations.copy_ignores_conditions {
        assert!(exclusive.is_ok(), "the known deviation: {exclusive:?}");
    } else {
        assert!(exclusive.as_ref().is_err_and(is_precondition), "{exclusive:?}");
    }
    let replaced = meta(&[("mode", "33152")]);
    s.s3.copy(&CopySpec {
        meta: Some(&replaced),
        ..CopySpec::new(&dst, &dst)
    })
    .await
    .expect("self-copy");
    let h = s.s3.head(&dst).await.expect("head");
    assert_eq!(
        h.user_meta.get("mode").map(String::as_str),
        Some("33152"),
        "REPLACE replaces"
    );
}

async fn multipart_uploads_assemble_in_order(s: &Store) {
    let k = s.key("mp");
    let p1 = Bytes::from(vec![b'a'; 5 << 20]);
    let p2 = Bytes::from_static(b"tail");
    let id =
        s.s3.create_multipart(&k, &meta(&[("mode", "33188")]))
            .await
            .expect("create");
    assert!(
        s.s3.list_uploads(&s.prefix)
            .await
            .expect("uploads")
            .iter()
            .any(|u| u.upload_id == id)
    );
    let r2 = s.s3.upload_part(&k, &id, 2, p2.clone()).await.expect("part 2");
    let r1 = s.s3.upload_part(&k, &id, 1, p1.clone()).await.expect("part 1");
    let etag = complete(s, &k, &id, &[(1, r1), (2, r2)], None).await.expect("complete");
    let h = s.s3.head(&k).await.expect("head");
    assert_eq!(h.size, (5 << 20) + 4);
    assert!(
        h.etag.as_deref().unwrap_or("").trim_matches('"').ends_with("-2"),
        "{:?}",
        h.etag
    );
    if let Some(e) = etag {
        assert_eq!(e.trim_matches('"'), h.etag.as_deref().unwrap_or("").trim_matches('"'));
    }
    assert_eq!(h.user_meta.get("mode").map(String::as_str), Some("33188"));
    assert_eq!(
        &s.s3
            .get(&k, Some((5 << 20) - 1..(5 << 20) + 4), None)
            .await
            .expect("get")[..],
        b"atail"
    );
    assert!(
        !s.s3
            .list_uploads(&s.prefix)
            .await
            .expect("uploads")
            .iter()
            .any(|u| u.upload_id == id)
    );

    // A part below 5 MiB that is not the last is refused at completion.
    let small = s.key("small");
    let id = s.s3.create_multipart(&small, &UserMeta::new()).await.expect("create");
    let r1 = s.s3.upload_part(&small, &id, 1, p2.clone()).await.expect("part 1");
    let r2 = s.s3.upload_part(&small, &id, 2, p2.clone()).await.expect("part 2");
    assert!(complete(s, &small, &id, &[(1, r1), (2, r2)], None).await.is_err());
    s.s3.abort_multipart(&small, &id).await.expect("abort");
    assert!(
        !s.s3
            .list_uploads(&s.prefix)
            .await
            .expect("uploads")
            .iter()
            .any(|u| u.upload_id == id)
    );
    assert!(s.s3.head(&small).await.is_err(), "nothing completed");

    // A completion's condition holds like a PUT's.
    let id = s.s3.create_multipart(&k, &UserMeta::new()).await.expect("create");
    let r1 = s.s3.upload_part(&k, &id, 1, p2.clone()).await.expect("part");
    let e = complete(s, &k, &id, &[(1, r1)], Some(&WriteIf::Absent))
        .await
        .expect_err("exists");
    assert!(is_precondition(&e), "{e}");
    s.s3.abort_multipart(&k, &id).await.expect("abort");

    // Parts copied from an object, pinned to its version.
    let copy = s.key("copied");
    let id = s.s3.create_multipart(&copy, &UserMeta::new()).await.expect("create");
    let src_etag = s.s3.head(&k).await.expect("head").etag;
    let c1 =
        s.s3.upload_part_copy(&copy, &id, 1, &k, 0..5 << 20, src_etag.as_deref())
            .await
            .expect("copy part 1");
    let pinned =
        s.s3.upload_part_copy(
            &copy,
            &id,
            2,
            &k,
            5 << 20..(5 << 20) + 4,
            Some("\"0123456789abcdef0123456789abcdef\""),
        )
        .await;
    if s.deviations.copy_ignores_conditions {
        assert!(pinned.is_ok(), "the known deviation: {pinned:?}");
    } else {
        assert!(pinned.as_ref().is_err_and(is_precondition), "{pinned:?}");
    }
    let c2 =
        s.s3.upload_part_copy(&copy, &id, 2, &k, 5 << 20..(5 << 20) + 4, src_etag.as_deref())
            .await
            .expect("copy part 2");
    complete(s, &copy, &id, &[(1, c1), (2, c2)], None)
        .await
        .expect("complete");
    assert_eq!(
        s.s3.get(&copy, None, None).await.expect("get"),
        s.s3.get(&k, None, None).await.expect("get")
    );
}

/// Runs every check against `s3`, each under its own prefix.
fn run_contract(rt: &tokio::runtime::Runtime, s3: Arc<dyn ObjectStore>, deviations: Deviations) {
    let store = |name: &str| Store {
        s3: s3.clone(),
        prefix: format!("contract/{name}/"),
        deviations,
    };
    rt.block_on(async {
        objects_read_back_whole_and_by_range(&store("read")).await;
        listings_page_and_group_by_the_delimiter(&store("list")).await;
        conditional_writes_hold(&store("cond")).await;
        deletes_remove_only_the_version_they_name(&store("delete")).await;
        copies_keep_metadata_and_check_both_ends(&store("copy")).await;
        multipart_uploads_assemble_in_order(&store("multipart")).await;
    });
}

#[test]
fn the_memory_store_keeps_the_contract() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    run_contract(&rt, Arc::new(MemoryStore::new()), Deviations::default());
}

#[test]
fn the_embedded_server_keeps_the_contract() {
    let env = Env::embedded();
    run_contract(&env.rt, Arc::new(env.s3.clone()), Deviations::default());
}

#[test]
fn moto_keeps_the_contract_but_for_its_known_deviations() {
    let env = Env::moto();
    let deviations = Deviations {
        batch_delete_ignores_etags: true,
        copy_ignores_conditions: true,
        completion_answer_unreadable: true,
    };
    run_contract(&env.rt, Arc::new(env.s3.clone()), deviations);
}
