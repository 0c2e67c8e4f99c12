//! What another client wrote is kept (user metadata, standard headers, tags, the storage
//! class, a version written meanwhile), and the newer POSIX calls (futimens, mknod,
//! fallocate), over the in-memory store.

use super::*;

/// Issue 21, 8: chmod, chown and touch of a closed file (a copy onto itself) keep what the
/// mount does not own: other clients' user metadata (s3fs's xattrs), Content-Type and the
/// other standard headers; a directory marker keeps its foreign metadata too.
#[tokio::test]
async fn metadata_changes_keep_what_other_clients_stored() {
    use crate::store::Headers;
    let r = rig();
    let key = r.layout.file_key(&RelPath::parse("page.html").unwrap()).unwrap();
    let foreign = UserMeta::from([
        ("foreign".to_string(), "keepme".to_string()),
        ("xattr".to_string(), "%7B%22user.a%22%3A%22MQ%3D%3D%22%7D".to_string()),
    ]);
    r.mem()
        .put(&key, Bytes::from_static(b"<p>hi</p>"), &foreign)
        .await
        .unwrap();
    let headers = Headers {
        content_type: Some("text/html".into()),
        cache_control: Some("max-age=60".into()),
        storage_class: Some("STANDARD_IA".into()),
        ..Default::default()
    };
    r.mem().set_headers(&key, headers.clone());
    let marker = r.layout.dir_marker_key(&RelPath::parse("d").unwrap()).unwrap();
    r.mem().put(&marker, Bytes::new(), &foreign).await.unwrap();
    for (path, ino) in [("page.html", r.ino("page.html").await), ("d", r.ino("d").await)] {
        let changes = AttrChanges {
            mode: Some(0o600),
            uid: Some(1000),
            mtime: Some(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000)),
            ..Default::default()
        };
        r.core
            .setattr(ino, changes)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let head = r.mem().head(&key).await.unwrap();
    assert_eq!(head.user_meta.get("foreign").map(String::as_str), Some("keepme"));
    assert!(head.user_meta.contains_key("xattr"));
    assert_eq!(head.user_meta.get("mode").map(String::as_str), Some("33152"));
    assert_eq!(head.user_meta.get("uid").map(String::as_str), Some("1000"));
    assert_eq!(head.user_meta.get("mtime").map(String::as_str), Some("1600000000"));
    assert_eq!(head.headers, headers);
    let head = r.mem().head(&marker).await.unwrap();
    assert_eq!(head.user_meta.get("foreign").map(String::as_str), Some("keepme"));
    assert_eq!(head.user_meta.get("uid").map(String::as_str), Some("1000"));
}

/// Issue 21, 8: rewriting a file's bytes (an append, an `O_TRUNC` rewrite, a truncate of a
/// closed file) keeps what another client stored with the object besides them: its user
/// metadata, standard headers and tags. Each upload names the version it replaces: once another
/// client replaced the object after `open`, the upload is refused and their object stays.
#[tokio::test]
async fn rewrites_keep_what_other_clients_stored() {
    use crate::store::Headers;
    let r = rig();
    let foreign = UserMeta::from([("xattr".to_string(), "%7B%7D".to_string())]);
    let headers = Headers {
        content_type: Some("text/plain".into()),
        content_encoding: Some("identity".into()),
        storage_class: Some("STANDARD_IA".into()),
        ..Default::default()
    };
    let tags = Some("project=a%20b&keep=1".to_string());
    let key = |p: &str| r.layout.file_key(&RelPath::parse(p).unwrap()).unwrap();
    for p in ["append.txt", "trunc.txt", "short.txt", "raced.txt"] {
        r.mem()
            .put(&key(p), Bytes::from_static(b"old\n"), &foreign)
            .await
            .unwrap();
        let tagged = Headers {
            tagging: tags.clone(),
            ..headers.clone()
        };
        r.mem().set_headers(&key(p), tagged);
    }
    let fh = r
        .core
        .open(r.ino("append.txt").await, libc::O_WRONLY | libc::O_APPEND)
        .await
        .unwrap();
    r.core.write(fh, 4, b"more\n").await.unwrap();
    r.core.release(fh).await.unwrap();
    let fh = r
        .core
        .open(r.ino("trunc.txt").await, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    r.core.write(fh, 0, b"new\n").await.unwrap();
    r.core.release(fh).await.unwrap();
    let changes = AttrChanges {
        size: Some(2),
        ..Default::default()
    };
    r.core.setattr(r.ino("short.txt").await, changes).await.unwrap();
    for (p, body) in [
        ("append.txt", &b"old\nmore\n"[..]),
        ("trunc.txt", b"new\n"),
        ("short.txt", b"ol"),
    ] {
        assert_eq!(&r.mem().get(&key(p), None, None).await.unwrap()[..], body, "{p}");
        let head = r.mem().head(&key(p)).await.unwrap();
        assert_eq!(head.user_meta.get("xattr").map(String::as_str), Some("%7B%7D"), "{p}");
        assert_eq!(head.headers, headers, "{p}");
        assert_eq!(r.mem().get_tagging(&key(p)).await.unwrap(), tags, "{p}");
    }

    let fh = r
        .core
        .open(r.ino("raced.txt").await, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    r.core.write(fh, 0, b"mine\n").await.unwrap();
    r.mem()
        .put(&key("raced.txt"), Bytes::from_static(b"theirs\n"), &UserMeta::new())
        .await
        .unwrap();
    let e = r.core.release(fh).await.unwrap_err();
    assert_eq!(e.errno, libc::EIO, "{e}");
    assert_eq!(
        &r.mem().get(&key("raced.txt"), None, None).await.unwrap()[..],
        b"theirs\n"
    );
}

/// A rename replaces only what its check saw at the target: a version another client wrote
/// there meanwhile (or a file it created at a free name) stays theirs, the rename fails
/// with ESTALE, and the source is left where it was.
#[tokio::test]
async fn a_rename_never_replaces_a_target_another_client_wrote_meanwhile() {
    let r = rig();
    let key = |p: &str| r.layout.file_key(&RelPath::parse(p).unwrap()).unwrap();
    for p in ["a", "b"] {
        r.mem()
            .put(&key(p), Bytes::from_static(b"mine\n"), &UserMeta::new())
            .await
            .unwrap();
    }
    r.ino("a").await;
    r.ino("b").await;
    assert!(r.core.lookup(ROOT_INO, OsStr::new("c")).await.is_err(), "c is free");
    r.mem()
        .put(&key("b"), Bytes::from_static(b"theirs\n"), &UserMeta::new())
        .await
        .unwrap();
    r.mem()
        .put(&key("c"), Bytes::from_static(b"theirs\n"), &UserMeta::new())
        .await
        .unwrap();
    for target in ["b", "c"] {
        let e = r
            .core
            .rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new(target), 0)
            .await
            .unwrap_err();
        assert_eq!(e.errno, libc::ESTALE, "{target}: {e}");
        assert_eq!(&r.mem().get(&key(target), None, None).await.unwrap()[..], b"theirs\n");
        assert_eq!(&r.mem().get(&key("a"), None, None).await.unwrap()[..], b"mine\n");
    }
    // The same rename onto what this mount saw succeeds.
    r.ino("b").await;
    r.core
        .rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), 0)
        .await
        .unwrap();
    assert_eq!(&r.mem().get(&key("b"), None, None).await.unwrap()[..], b"mine\n");
}

/// Issue 21, 8: a rename (a file's, a directory's) keeps the storage class: S3 makes a copy
/// STANDARD unless the request names the class, which the listing or HEAD told.
#[tokio::test]
async fn renames_keep_the_storage_class() {
    use crate::store::Headers;
    let r = rig();
    let key = |p: &str| r.layout.file_key(&RelPath::parse(p).unwrap()).unwrap();
    let ia = Headers {
        storage_class: Some("STANDARD_IA".into()),
        content_type: Some("text/csv".into()),
        ..Default::default()
    };
    for p in ["a.csv", "d/b.csv"] {
        r.mem()
            .put(&key(p), Bytes::from_static(b"1,2\n"), &UserMeta::new())
            .await
            .unwrap();
        r.mem().set_headers(&key(p), ia.clone());
    }
    r.ino("a.csv").await;
    r.core
        .rename(ROOT_INO, OsStr::new("a.csv"), ROOT_INO, OsStr::new("moved.csv"), 0)
        .await
        .unwrap();
    r.ino("d").await;
    r.core
        .rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), 0)
        .await
        .unwrap();
    for p in ["moved.csv", "e/b.csv"] {
        assert_eq!(r.mem().head(&key(p)).await.unwrap().headers, ia, "{p}");
    }
}

/// Issue 24: a change of an open file's times (`futimens`: what `touch -a` and `touch -d`
/// send) moves its ctime to now, as by path; the ctime never goes back, even when the mtime
/// is set into the past.
#[tokio::test]
async fn times_set_on_an_open_file_move_its_ctime_forward() {
    let r = rig();
    let (ino, fh) = {
        let (attr, fh) = r
            .core
            .create(ROOT_INO, OsStr::new("f"), 0o644, 0, 0, false)
            .await
            .unwrap();
        (attr.ino, fh)
    };
    r.core.write(fh, 0, b"x\n").await.unwrap();
    let before = std::time::SystemTime::now();
    let past = std::time::UNIX_EPOCH + Duration::from_secs(1_200_000_000);
    let changes = AttrChanges {
        mtime: Some(past),
        atime: Some(past),
        ..Default::default()
    };
    let attr = r.core.setattr(ino, changes).await.unwrap();
    assert_eq!(attr.mtime, past);
    assert!(attr.ctime >= before, "ctime {:?} went back", attr.ctime);
    r.core.release(fh).await.unwrap();
    let attr = r.core.getattr(ino).await.unwrap();
    assert_eq!(attr.mtime, past);
    assert!(attr.ctime >= before, "after close: ctime {:?}", attr.ctime);
}

/// Issue 24: `mknod` of a regular file makes an empty file (as ext4 and s3fs do), in S3 at
/// once; a taken name is EEXIST.
#[tokio::test]
async fn mknod_of_a_regular_file_creates_it() {
    let r = rig();
    let attr = r
        .core
        .mknod_regular(ROOT_INO, OsStr::new("m"), 0o640, 1000, 1000)
        .await
        .unwrap();
    assert_eq!(
        (attr.kind, attr.size, attr.perm, attr.uid),
        (Kind::File, 0, 0o640, 1000)
    );
    let key = r.layout.file_key(&RelPath::parse("m").unwrap()).unwrap();
    assert_eq!(r.mem().get(&key, None, None).await.unwrap().len(), 0);
    let e = r
        .core
        .mknod_regular(ROOT_INO, OsStr::new("m"), 0o640, 1000, 1000)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EEXIST);
}

/// Issue 23: `fallocate` mode 0 extends a file (never shrinks it), `FALLOC_FL_KEEP_SIZE` has
/// nothing to reserve, the other modes are EOPNOTSUPP.
#[tokio::test]
async fn fallocate_extends_or_refuses_clearly() {
    let r = rig();
    let key = r.layout.file_key(&RelPath::parse("f").unwrap()).unwrap();
    r.mem()
        .put(&key, Bytes::from_static(b"abc"), &UserMeta::new())
        .await
        .unwrap();
    let ino = r.ino("f").await;
    r.core.fallocate(ino, 0, 10, 0).await.unwrap();
    assert_eq!(&r.mem().get(&key, None, None).await.unwrap()[..], b"abc\0\0\0\0\0\0\0");
    r.core.fallocate(ino, 0, 5, 0).await.unwrap();
    r.core.fallocate(ino, 0, 100, libc::FALLOC_FL_KEEP_SIZE).await.unwrap();
    assert_eq!(r.core.getattr(ino).await.unwrap().size, 10, "neither shrinks nor grows");
    let e = r
        .core
        .fallocate(ino, 0, 2, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EOPNOTSUPP);
}

/// Credentials without s3:GetObjectTagging must not make every rewrite fail: the tags
/// cannot be kept then (said once in the log), the write goes through.
#[tokio::test]
async fn a_rewrite_goes_through_when_the_tags_may_not_be_read() {
    let r = rig();
    let key = r.layout.file_key(&RelPath::parse("f").unwrap()).unwrap();
    r.mem()
        .put(&key, Bytes::from_static(b"old\n"), &UserMeta::new())
        .await
        .unwrap();
    let ino = r.ino("f").await; // a HEAD: nothing but the tags to fetch at open
    r.mem().fail_next(1, |k| {
        crate::store::StoreError::from_response("get_tagging", k, 403, "AccessDenied", "Access Denied")
    });
    let fh = r.core.open(ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
    r.core.write(fh, 0, b"new\n").await.unwrap();
    r.core.release(fh).await.unwrap();
    assert_eq!(&r.mem().get(&key, None, None).await.unwrap()[..], b"new\n");
}

/// Issue 21, 8: an object s3fs wrote carries its atime and ctime; they are shown (where this
/// mount has no time of its own), and a metadata change moves the stored ctime.
#[tokio::test]
async fn s3fs_atime_and_ctime_are_read_and_ctime_moves_on_chmod() {
    let r = rig();
    let key = r.layout.file_key(&RelPath::parse("s3fs.txt").unwrap()).unwrap();
    let meta = UserMeta::from([
        ("mode".to_string(), "33188".to_string()),
        ("mtime".to_string(), "1500000000".to_string()),
        ("atime".to_string(), "1500000100".to_string()),
        ("ctime".to_string(), "1500000200".to_string()),
    ]);
    r.mem().put(&key, Bytes::from_static(b"x"), &meta).await.unwrap();
    let ino = r.ino("s3fs.txt").await;
    let a = r.core.getattr(ino).await.unwrap();
    let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        (secs(a.mtime), secs(a.atime), secs(a.ctime)),
        (1_500_000_000, 1_500_000_100, 1_500_000_200)
    );
    let changes = AttrChanges {
        mode: Some(0o600),
        ..Default::default()
    };
    r.core.setattr(ino, changes).await.unwrap();
    let stored = r.mem().head(&key).await.unwrap().user_meta;
    let ctime: u64 = stored["ctime"].parse().unwrap();
    assert!(ctime > 1_700_000_000, "moved to now: {ctime}");
    assert_eq!(stored["atime"], "1500000100");
}
