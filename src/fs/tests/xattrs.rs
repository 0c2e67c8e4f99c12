//! Issue 24: special files and extended attributes, as s3fs keeps them, and what each costs.

use super::*;

fn meta(pairs: &[(&str, &str)]) -> UserMeta {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `chmod 600` of `ino`.
async fn chmod_600(r: &Rig, ino: u64) -> super::super::Attr {
    let mode = AttrChanges {
        mode: Some(0o600),
        ..Default::default()
    };
    r.core.setattr(ino, mode).await.unwrap()
}

/// A FIFO, a socket and a device are empty objects whose mode says which (and `rdev` which
/// device): one conditional PUT each; they stat, chmod and list as such.
#[tokio::test]
async fn special_files_are_empty_objects_with_their_mode() {
    let r = rig();
    let mut m = r.meter();
    let fifo = r
        .core
        .mknod_special(ROOT_INO, OsStr::new("p"), libc::S_IFIFO | 0o640, 0, 1000, 100)
        .await
        .unwrap();
    // A HEAD of each key the name could have (the name says "directory" first), the root's
    // listing for an implicit directory, then the PUT.
    assert_eq!(m.take().get(OpKind::Put.name()), Some(&1));
    assert_eq!(
        (fifo.kind, fifo.special, fifo.perm, fifo.size),
        (Kind::File, libc::S_IFIFO, 0o640, 0)
    );
    let dev = r
        .core
        .mknod_special(ROOT_INO, OsStr::new("d"), libc::S_IFCHR | 0o600, 0x0501, 0, 0)
        .await
        .unwrap();
    assert_eq!((dev.special, dev.rdev), (libc::S_IFCHR, 0x0501));
    let key = r.layout.file_key(&RelPath::parse("d").unwrap()).unwrap();
    let head = r.mem().head(&key).await.unwrap();
    assert_eq!(head.size, 0);
    assert_eq!(head.user_meta["mode"], (libc::S_IFCHR | 0o600).to_string());
    assert_eq!(head.user_meta["rdev"], "1281");
    // A taken name is EEXIST; a regular type is not a special file.
    let e = r
        .core
        .mknod_special(ROOT_INO, OsStr::new("p"), libc::S_IFSOCK | 0o600, 0, 0, 0)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EEXIST);
    // chmod keeps the type.
    let ino = fifo.ino;
    let attr = chmod_600(&r, ino).await;
    assert_eq!((attr.special, attr.perm), (libc::S_IFIFO, 0o600));
    r.expire();
    let again = r.core.lookup(ROOT_INO, OsStr::new("p")).await.unwrap();
    assert_eq!((again.special, again.perm), (libc::S_IFIFO, 0o600));
    // One written by s3fs reads as one; an object claiming to be a FIFO with a body is a file.
    let s3fs = r.layout.file_key(&RelPath::parse("s").unwrap()).unwrap();
    let mode = (libc::S_IFSOCK | 0o755).to_string();
    r.mem()
        .put(&s3fs, Bytes::new(), &meta(&[("mode", &mode)]))
        .await
        .unwrap();
    let big = r.layout.file_key(&RelPath::parse("b").unwrap()).unwrap();
    let fifo_mode = (libc::S_IFIFO | 0o644).to_string();
    r.mem()
        .put(&big, Bytes::from_static(b"data"), &meta(&[("mode", &fifo_mode)]))
        .await
        .unwrap();
    assert_eq!(
        r.core.lookup(ROOT_INO, OsStr::new("s")).await.unwrap().special,
        libc::S_IFSOCK
    );
    let b = r.core.lookup(ROOT_INO, OsStr::new("b")).await.unwrap();
    assert_eq!((b.kind, b.special), (Kind::File, 0));
    // The listing shows them by type once their metadata is known.
    let listed = r.list(ROOT_INO).await;
    let p = listed.iter().find(|e| e.name == "p").unwrap();
    assert_eq!(p.special(), libc::S_IFIFO);
}

/// setxattr/getxattr/listxattr/removexattr on a closed file, in s3fs's header; the names the
/// kernel and `ls -l` ask for on every file cost no request.
#[tokio::test]
async fn xattrs_of_a_closed_file_live_in_the_s3fs_header() {
    let r = rig();
    r.plant("f.txt", b"body").await;
    let key = r.layout.file_key(&RelPath::parse("f.txt").unwrap()).unwrap();
    r.mem().set_headers(
        &key,
        crate::store::Headers {
            content_type: Some("text/plain".into()),
            ..Default::default()
        },
    );
    let ino = r.ino("f.txt").await;
    let mut m = r.meter();
    for name in ["security.capability", "system.posix_acl_access", "security.selinux"] {
        let e = r.core.getxattr(ino, OsStr::new(name)).await.unwrap_err();
        assert_eq!(e.errno, libc::ENODATA);
    }
    // The lookup's HEAD said there are none.
    assert!(r.core.listxattr(ino).await.unwrap().is_empty());
    assert_eq!(m.take(), counts(&[]), "answered from what the lookup's HEAD said");
    r.core
        .setxattr(ino, OsStr::new("user.k"), Some(b"v1"), 0)
        .await
        .unwrap();
    // A fresh HEAD (the version and the header now) and the copy onto itself.
    assert_eq!(m.take(), counts(&[(OpKind::Head, 1), (OpKind::Copy, 1)]));
    let head = r.mem().head(&key).await.unwrap();
    assert_eq!(
        crate::store::urlenc::decode_percent(&head.user_meta["xattr"]),
        r#"{"user.k":"djE="}"#
    );
    assert_eq!(head.headers.content_type.as_deref(), Some("text/plain"), "kept");
    assert_eq!(
        r.mem().get(&key, None, None).await.unwrap(),
        Bytes::from_static(b"body")
    );
    assert_eq!(r.core.getxattr(ino, OsStr::new("user.k")).await.unwrap(), b"v1");
    assert_eq!(r.core.listxattr(ino).await.unwrap(), b"user.k\0");
    assert_eq!(m.take(), counts(&[]), "this mount's change is known");
    // XATTR_CREATE on a taken name, XATTR_REPLACE on a missing one.
    let e = r
        .core
        .setxattr(ino, OsStr::new("user.k"), Some(b"v2"), libc::XATTR_CREATE)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EEXIST);
    let e = r
        .core
        .setxattr(ino, OsStr::new("user.new"), Some(b"v2"), libc::XATTR_REPLACE)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::ENODATA);
    let e = r
        .core
        .setxattr(ino, OsStr::new("security.x"), Some(b"v2"), 0)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EOPNOTSUPP);
    // Past S3's 2 KiB of user metadata: ENOSPC, the object unchanged.
    let e = r
        .core
        .setxattr(ino, OsStr::new("user.big"), Some(&[1u8; 1800]), 0)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::ENOSPC);
    // After the TTL, another mount's view: one HEAD, then the value.
    r.expire();
    m.take();
    assert_eq!(r.core.getxattr(ino, OsStr::new("user.k")).await.unwrap(), b"v1");
    assert_eq!(m.take(), counts(&[(OpKind::Head, 1)]));
    r.core.setxattr(ino, OsStr::new("user.k"), None, 0).await.unwrap();
    assert!(!r.mem().head(&key).await.unwrap().user_meta.contains_key("xattr"));
    let e = r.core.setxattr(ino, OsStr::new("user.k"), None, 0).await.unwrap_err();
    assert_eq!(e.errno, libc::ENODATA);
}

/// A header s3fs wrote is read; a hostile one is EIO and left alone, never a panic; xattrs
/// follow a rename (the copy keeps the header) and a chmod.
#[tokio::test]
async fn xattrs_written_by_s3fs_read_back_and_follow_renames() {
    let r = rig();
    let key = r.layout.file_key(&RelPath::parse("a").unwrap()).unwrap();
    r.mem()
        .put(
            &key,
            Bytes::from_static(b"x"),
            &meta(&[("xattr", "%7B%22user.foo%22%3A%22YmFy%22%7D"), ("mode", "33188")]),
        )
        .await
        .unwrap();
    let ino = r.ino("a").await;
    assert_eq!(r.core.getxattr(ino, OsStr::new("user.foo")).await.unwrap(), b"bar");
    chmod_600(&r, ino).await;
    r.core
        .rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), 0)
        .await
        .unwrap();
    r.expire();
    let b = r.ino("b").await;
    assert_eq!(r.core.getxattr(b, OsStr::new("user.foo")).await.unwrap(), b"bar");
    let bad = r.layout.file_key(&RelPath::parse("bad").unwrap()).unwrap();
    r.mem()
        .put(&bad, Bytes::new(), &meta(&[("xattr", "%7Bnot json")]))
        .await
        .unwrap();
    let ino = r.ino("bad").await;
    assert_eq!(r.core.listxattr(ino).await.unwrap_err().errno, libc::EIO);
    let e = r
        .core
        .setxattr(ino, OsStr::new("user.x"), Some(b"1"), 0)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EIO);
    assert_eq!(r.mem().head(&bad).await.unwrap().user_meta["xattr"], "%7Bnot json");
}

/// A file open for writing keeps its xattr changes for its upload: the close writes data
/// and attributes in one PUT, with no copy that would race its own upload.
#[tokio::test]
async fn xattrs_of_an_open_file_go_with_its_upload() {
    let r = rig();
    let fh = r.create(ROOT_INO, "new.bin").await;
    let ino = r.ino("new.bin").await;
    r.core.write(fh, 0, b"hello").await.unwrap();
    let mut m = r.meter();
    r.core.setxattr(ino, OsStr::new("user.a"), Some(b"1"), 0).await.unwrap();
    assert_eq!(r.core.getxattr(ino, OsStr::new("user.a")).await.unwrap(), b"1");
    assert_eq!(m.take(), counts(&[]));
    r.core.flush(fh, false).await.unwrap();
    r.core.release(fh).await.unwrap();
    assert_eq!(m.take(), counts(&[(OpKind::Put, 1)]));
    let key = r.layout.file_key(&RelPath::parse("new.bin").unwrap()).unwrap();
    let head = r.mem().head(&key).await.unwrap();
    assert_eq!(
        crate::store::urlenc::decode_percent(&head.user_meta["xattr"]),
        r#"{"user.a":"MQ=="}"#
    );
    assert_eq!(
        r.mem().get(&key, None, None).await.unwrap(),
        Bytes::from_static(b"hello")
    );
}

/// Directories keep theirs in their marker; a directory without one gets one; the mount
/// root has no object (EOPNOTSUPP).
#[tokio::test]
async fn xattrs_of_directories_live_in_their_marker() {
    let r = rig();
    r.plant("implicit/f", b"x").await;
    let dir = r.ino("implicit").await;
    r.core
        .setxattr(dir, OsStr::new("user.d"), Some(b"dv"), 0)
        .await
        .unwrap();
    let marker = r.layout.dir_marker_key(&RelPath::parse("implicit").unwrap()).unwrap();
    assert!(r.mem().head(&marker).await.unwrap().user_meta.contains_key("xattr"));
    r.expire();
    assert_eq!(r.core.getxattr(dir, OsStr::new("user.d")).await.unwrap(), b"dv");
    let e = r
        .core
        .setxattr(ROOT_INO, OsStr::new("user.d"), Some(b"dv"), 0)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EOPNOTSUPP);
    assert!(r.core.listxattr(ROOT_INO).await.unwrap().is_empty());
}

/// s3fs's legacy directory objects: `NAME_$folder$`, and `NAME` without the slash
/// (Content-Type `application/x-directory`, or a directory mode): shown as the directory,
/// removed with it; a rename of one is EXDEV (`mv` copies and removes).
#[tokio::test]
async fn legacy_directory_objects_show_as_directories_and_go_with_rmdir() {
    let r = rig();
    let key = |p: &str| r.layout.file_key(&RelPath::parse(p).unwrap()).unwrap();
    let empty = UserMeta::new();
    r.mem().put(&key("old_$folder$"), Bytes::new(), &empty).await.unwrap();
    r.plant("old/f", b"x").await;
    r.mem().put(&key("gone_$folder$"), Bytes::new(), &empty).await.unwrap();
    r.mem().put(&key("typed"), Bytes::new(), &empty).await.unwrap();
    r.mem().set_headers(
        &key("typed"),
        crate::store::Headers {
            content_type: Some("application/x-directory".into()),
            ..Default::default()
        },
    );
    let dir_mode = (libc::S_IFDIR | 0o750).to_string();
    r.mem()
        .put(&key("moded"), Bytes::new(), &meta(&[("mode", &dir_mode)]))
        .await
        .unwrap();
    let mut names: Vec<String> = r.list(ROOT_INO).await.iter().skip(2).map(|e| e.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["gone", "moded", "old", "typed"]);
    for name in ["old", "gone", "typed", "moded"] {
        let a = r.core.lookup(ROOT_INO, OsStr::new(name)).await.unwrap();
        assert_eq!(a.kind, Kind::Dir, "{name}");
    }
    assert_eq!(r.core.lookup(ROOT_INO, OsStr::new("moded")).await.unwrap().perm, 0o750);
    let old = r.ino("old").await;
    let inside: Vec<String> = r.list(old).await.iter().skip(2).map(|e| e.name.clone()).collect();
    assert_eq!(inside, ["f"]);
    let e = r.core.rmdir(ROOT_INO, OsStr::new("old")).await.unwrap_err();
    assert_eq!(e.errno, libc::ENOTEMPTY);
    let e = r
        .core
        .rename(ROOT_INO, OsStr::new("typed"), ROOT_INO, OsStr::new("t2"), 0)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EXDEV);
    r.core.unlink(old, OsStr::new("f")).await.unwrap();
    for name in ["old", "gone", "typed", "moded"] {
        r.core.rmdir(ROOT_INO, OsStr::new(name)).await.unwrap();
    }
    assert!(r.mem().keys().is_empty(), "{:?}", r.mem().keys());
    r.expire();
    assert_eq!(r.list(ROOT_INO).await.len(), 2);
}

/// `open(O_RDONLY | O_TRUNC)` truncates as Linux does (the kernel, with atomic O_TRUNC, has
/// already dropped its cached size), except a file being executed: ETXTBSY before it is cut
/// under the running program (pjdfstest `open::etxtbsy`).
#[tokio::test]
async fn a_read_only_truncating_open_truncates_unless_the_file_is_being_executed() {
    let r = rig();
    r.plant("bin", b"\x7fELF...").await;
    let ino = r.ino("bin").await;
    let exec = r.core.open(ino, libc::O_RDONLY | 0x20).await.unwrap();
    let e = r.core.open(ino, libc::O_RDONLY | libc::O_TRUNC).await.unwrap_err();
    assert_eq!(e.errno, libc::ETXTBSY);
    let key = r.layout.file_key(&RelPath::parse("bin").unwrap()).unwrap();
    assert_eq!(r.mem().get(&key, None, None).await.unwrap().len(), 7, "not cut");
    r.core.release(exec).await.unwrap();
    let fh = r.core.open(ino, libc::O_RDONLY | libc::O_TRUNC).await.unwrap();
    assert_eq!(r.mem().get(&key, None, None).await.unwrap().len(), 0);
    assert_eq!(r.core.getattr(ino).await.unwrap().size, 0);
    r.core.release(fh).await.unwrap();
}

/// Issue 23: the mount root has no object: chmod, chown or an mtime of it is refused (EPERM,
/// logged), never a silent success; its atime lives in the mount's view.
#[tokio::test]
async fn the_mount_root_refuses_what_it_cannot_keep() {
    let r = rig();
    let mut m = r.meter();
    for changes in [
        AttrChanges {
            mode: Some(0o700),
            ..Default::default()
        },
        AttrChanges {
            uid: Some(1000),
            ..Default::default()
        },
        AttrChanges {
            mtime: Some(std::time::SystemTime::UNIX_EPOCH),
            ..Default::default()
        },
    ] {
        assert_eq!(r.core.setattr(ROOT_INO, changes).await.unwrap_err().errno, libc::EPERM);
    }
    let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_300_000_000);
    let atime = AttrChanges {
        atime: Some(t),
        ..Default::default()
    };
    assert_eq!(r.core.setattr(ROOT_INO, atime).await.unwrap().atime, t);
    assert_eq!(m.take(), counts(&[]));
}
