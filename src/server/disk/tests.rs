use super::*;

fn put(b: &Bucket, key: &str, body: &[u8]) -> Entry {
    let mut s = b.stage().unwrap();
    s.write(body).unwrap();
    b.commit(s, key, None, Attrs::default(), &WriteCondition::default())
        .unwrap()
}

fn all(b: &Bucket, prefix: &str, delim: Option<&str>, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut resume = None;
    loop {
        let page = b.list(prefix, delim, resume, max);
        out.extend(page.prefixes.iter().cloned());
        out.extend(page.objects.iter().map(|o| o.key.clone()));
        match page.next {
            Some(r) => resume = Some(r),
            None => return out,
        }
    }
}

#[test]
fn flat_namespace_holds_markers_and_file_beside_dir() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    store.create_bucket("b").unwrap();
    let b = store.bucket("b").unwrap();
    put(&b, "x/", b"");
    put(&b, "f", b"file");
    put(&b, "f/g", b"child");
    assert_eq!(b.lookup("x/").unwrap().size, 0);
    assert_eq!(b.lookup("f").unwrap().size, 4);
    let (mut file, e) = b.open("f/g").unwrap();
    let mut body = vec![0; e.size as usize];
    file.read_exact(&mut body).unwrap();
    assert_eq!(body, b"child");
    // survives a restart
    drop(b);
    let store = DiskStore::open(dir.path()).unwrap();
    let b = store.bucket("b").unwrap();
    assert_eq!(all(&b, "", None, 1000), vec!["f", "f/g", "x/"]);
}

#[test]
fn listing_paginates_and_rolls_up_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    store.create_bucket("b").unwrap();
    let b = store.bucket("b").unwrap();
    for k in ["a/1", "a/2", "a/b/c", "a/b/d", "a/c", "b/1", "a0"] {
        put(&b, k, b"1");
    }
    for max in [1, 2, 1000] {
        let mut got = all(&b, "a/", Some("/"), max);
        got.sort();
        assert_eq!(got, vec!["a/1", "a/2", "a/b/", "a/c"]);
        assert_eq!(all(&b, "", Some("/"), max).len(), 3);
    }
    assert_eq!(all(&b, "a", None, 2), vec!["a/1", "a/2", "a/b/c", "a/b/d", "a/c", "a0"]);
}

#[test]
fn conditional_writes_and_multipart() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    store.create_bucket("b").unwrap();
    let b = store.bucket("b").unwrap();
    let e = put(&b, "k", b"v1");
    let mut s = b.stage().unwrap();
    s.write(b"v2").unwrap();
    let cond = WriteCondition {
        if_none_match_any: true,
        if_match: None,
    };
    assert!(matches!(
        b.commit(s, "k", None, Attrs::default(), &cond),
        Err(DiskError::PreconditionFailed)
    ));
    assert!(matches!(
        b.delete("k", Some("nope")),
        Err(DiskError::PreconditionFailed)
    ));
    b.delete("k", Some(&e.etag)).unwrap();
    assert!(b.lookup("k").is_none());

    let up = b.create_upload("big", Attrs::default(), None).unwrap();
    let mut p1 = b.stage().unwrap();
    p1.write(&vec![1u8; MIN_PART_SIZE as usize]).unwrap();
    let e1 = b.put_part("big", &up.id, 1, p1, None).unwrap().0;
    let mut p2 = b.stage().unwrap();
    p2.write(b"tail").unwrap();
    let e2 = b.put_part("big", &up.id, 2, p2, None).unwrap().0;
    assert_eq!(b.uploads("").len(), 1);
    let entry = b
        .complete_upload(
            "big",
            &up.id,
            &[
                CompletedPartInfo {
                    number: 1,
                    etag: e1,
                    checksum: None,
                },
                CompletedPartInfo {
                    number: 2,
                    etag: e2,
                    checksum: None,
                },
            ],
            &WriteCondition::default(),
            None,
        )
        .unwrap();
    assert_eq!(entry.size, MIN_PART_SIZE + 4);
    assert!(entry.etag.ends_with("-2"));
    assert!(b.uploads("").is_empty());
}
