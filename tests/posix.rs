//! Issue 24, with real tools on a real mount: special files and extended attributes as s3fs
//! keeps them, times set through an open file, and a bucket written by s3fs's conventions
//! (objects put through the S3 API with its headers) read back exactly.

mod common;

use common::*;
use prefixfs::layout::RelPath;
use prefixfs::store::{ObjectStore, UserMeta};

on_every_backend!(
    fifos_devices_and_xattrs_work_with_real_tools,
    a_bucket_in_s3fs_conventions_reads_back_exactly,
    legacy_directory_objects_are_directories,
);

fn meta(pairs: &[(&str, String)]) -> UserMeta {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn fifos_devices_and_xattrs_work_with_real_tools(env: Env) {
    let key = |p: &str| env.layout(16).file_key(&RelPath::parse(p).unwrap()).unwrap();
    let mut m = env.mount(16, &["--xattr"]);
    // A FIFO between two local processes; a device node that opens nothing (nodev).
    m.ok("mkdir d && mkfifo d/pipe && (echo through > d/pipe &) && timeout 10 cat d/pipe > got && test \"$(cat got)\" = through");
    m.ok("mknod d/null c 1 3 && test -c d/null && test -p d/pipe");
    assert_eq!(m.ok("stat -c '%F %t %T' d/null").trim(), "character special file 1 3");
    let denied = m.sh("timeout 5 cat d/null");
    assert_ne!(denied.code, 0, "a device on the mount must not open (nodev)");
    assert!(denied.stderr.contains("Permission denied"), "{}", denied.stderr);
    let fifo = env.rt.block_on(env.s3.head(&key("d/pipe"))).unwrap();
    assert_eq!(fifo.size, 0);
    let mode: u32 = fifo.user_meta["mode"].parse().unwrap();
    assert_eq!(mode & libc::S_IFMT, libc::S_IFIFO);
    // They rename, chmod and unlink like any other entry.
    m.ok("chmod 600 d/pipe && mv d/pipe d/pipe2 && test -p d/pipe2 && test \"$(stat -c %a d/pipe2)\" = 600 && rm d/null && sync d");
    assert!(!env.keys().contains(&key("d/null")));
    // Extended attributes: set, read, list, remove; kept through a rename and a chmod.
    m.ok("echo hi > f && setfattr -n user.color -v blue f && setfattr -n user.n -v 42 f && mv f g && chmod 640 g");
    assert_eq!(
        m.ok("getfattr --absolute-names -d g | grep '^user' | sort"),
        "user.color=\"blue\"\nuser.n=\"42\"\n"
    );
    m.ok("setfattr -x user.n g && test \"$(getfattr --absolute-names --only-values -n user.color g)\" = blue");
    let refused = m.sh("setfattr -x user.n g");
    assert_ne!(refused.code, 0, "removing a missing attribute is ENODATA");
    let head = env.rt.block_on(env.s3.head(&key("g"))).unwrap();
    assert!(head.user_meta.contains_key("xattr"), "{:?}", head.user_meta);
    // rsync -aX round trip: local → mount → local, attributes and times intact.
    let src = env.subdir("src");
    let back = env.subdir("back");
    let local = format!(
        "cd {s} && echo one > a && setfattr -n user.k -v val a && touch -d @1300000000 a",
        s = src.display()
    );
    assert!(run_sh(&src, &local).code == 0);
    m.ok(&format!("rsync -aX {}/ rs/", src.display()));
    m.ok(&format!("rsync -aX rs/ {}/", back.display()));
    let out = run_sh(
        &back,
        "getfattr --absolute-names --only-values -n user.k a; stat -c %Y a; cat a",
    );
    assert_eq!(out.stdout, "val1300000000\none\n", "{}", out.stderr);
    // Times through an open file (`touch -a`, `touch -d` use futimens): ctime never goes back.
    m.ok("echo x > t && sleep 1 && touch -m t && sleep 1 && touch -d @1200000000 t");
    m.ok("touch -a -d @1250000000 t");
    let times = m.ok("stat -c '%X %Y %Z' t");
    let t: Vec<i64> = times.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    assert_eq!((t[0], t[1]), (1_250_000_000, 1_200_000_000), "atime, mtime");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(t[2] > now - 60, "ctime {} moved back", t[2]);
    // A fresh mount (nothing cached) sees the same.
    m.unmount();
    let mut m = env.mount(16, &["--xattr"]);
    m.ok("test -p d/pipe2 && test \"$(getfattr --absolute-names --only-values -n user.color g)\" = blue");
    m.assert_alive();
}

/// Objects as s3fs-fuse writes them: POSIX metadata in `x-amz-meta-mode/uid/gid/mtime`,
/// symlinks as objects holding the target, FIFOs and devices as empty objects with their mode
/// (and `rdev`), extended attributes in `x-amz-meta-xattr`.
fn a_bucket_in_s3fs_conventions_reads_back_exactly(env: Env) {
    let layout = env.layout(16);
    let key = |p: &str| layout.file_key(&RelPath::parse(p).unwrap()).unwrap();
    let put = |k: String, body: &'static [u8], m: UserMeta| {
        env.rt
            .block_on(env.s3.put(&k, bytes::Bytes::from_static(body), &m))
            .unwrap();
    };
    let posix = |mode: u32, uid: u32| {
        vec![
            ("mode", mode.to_string()),
            ("uid", uid.to_string()),
            ("gid", "100".to_string()),
            ("mtime", "1486512000".to_string()),
        ]
    };
    let mut file = posix(libc::S_IFREG | 0o640, 1000);
    // s3fs's own encoding of {"user.origin":"s3fs"}.
    file.push(("xattr", "%7B%22user.origin%22%3A%22czNmcw%3D%3D%22%7D".to_string()));
    put(key("s3fs/data.txt"), b"made by s3fs\n", meta(&file));
    put(key("s3fs/link"), b"data.txt", meta(&posix(libc::S_IFLNK | 0o777, 1000)));
    put(key("s3fs/fifo"), b"", meta(&posix(libc::S_IFIFO | 0o600, 1000)));
    let mut dev = posix(libc::S_IFBLK | 0o660, 0);
    dev.push(("rdev", ((8u32 << 8) | 1).to_string()));
    put(key("s3fs/sda1"), b"", meta(&dev));
    put(
        layout.dir_marker_key(&RelPath::parse("s3fs").unwrap()).unwrap(),
        b"",
        meta(&posix(libc::S_IFDIR | 0o750, 1000)),
    );
    let mut m = env.mount(16, &["--xattr"]);
    let out = m.ok("cd s3fs && stat -c '%n %F %a %u %g %Y' data.txt link fifo sda1 . && readlink link && cat link");
    assert_eq!(
        out,
        "data.txt regular file 640 1000 100 1486512000\n\
         link symbolic link 777 1000 100 1486512000\n\
         fifo fifo 600 1000 100 1486512000\n\
         sda1 block special file 660 0 100 1486512000\n\
         . directory 750 1000 100 1486512000\n\
         data.txt\n\
         made by s3fs\n"
    );
    assert_eq!(m.ok("stat -c '%t %T' s3fs/sda1").trim(), "8 1");
    assert_eq!(
        m.ok("getfattr --absolute-names --only-values -n user.origin s3fs/data.txt"),
        "s3fs"
    );
    assert_eq!(m.ok("ls s3fs | tr '\\n' ' '"), "data.txt fifo link sda1 ");
    m.assert_alive();
}

/// The directory objects older s3fs versions and other tools made: `NAME_$folder$`, and
/// `NAME` without the slash with Content-Type `application/x-directory`. Shown as
/// directories, removed with `rm -r`; `mv` of one copies and removes (the rename is EXDEV).
fn legacy_directory_objects_are_directories(env: Env) {
    use prefixfs::store::Headers;
    let layout = env.layout(16);
    let key = |p: &str| layout.file_key(&RelPath::parse(p).unwrap()).unwrap();
    env.put(&key("folder_$folder$"), b"");
    env.put(&key("folder/in.txt"), b"in folder\n");
    env.put(&key("empty_$folder$"), b"");
    let dir_type = Headers {
        content_type: Some("application/x-directory".into()),
        ..Default::default()
    };
    for k in [key("typed"), key("moved")] {
        env.rt
            .block_on(
                env.s3
                    .put_with(&k, bytes::Bytes::new(), &UserMeta::new(), Some(&dir_type), None),
            )
            .unwrap();
    }
    env.put(&key("moved/x"), b"x\n");
    // Without --xattr (the default, as s3fs's use_xattr): extended attributes are refused.
    let mut m = env.mount(16, &[]);
    let refused = m.sh("setfattr -n user.a -v 1 folder/in.txt");
    assert!(refused.stderr.contains("Operation not supported"), "{}", refused.stderr);
    assert_eq!(m.ok("ls | tr '\\n' ' '"), "empty folder moved typed ");
    m.ok("test -d folder && test -d empty && test -d typed && test -d moved && cat folder/in.txt");
    m.ok("mv moved renamed && test -f renamed/x && test ! -e moved");
    m.ok("rm -r folder empty typed && sync .");
    assert_eq!(m.ok("ls | tr '\\n' ' '"), "renamed ");
    let marker = layout.dir_marker_key(&RelPath::parse("renamed").unwrap()).unwrap();
    assert_eq!(env.data_keys(), [key("renamed/x"), marker].into_iter().collect());
    m.assert_alive();
}
