//! Hostile input and other local users: what the bucket holds cannot crash the daemon, and
//! nothing prefixfs keeps locally can be read or planted by another user (issue #8).

mod common;

use common::*;
use prefixfs::layout::RelPath;
use prefixfs::store::{ObjectStore, UserMeta};
use std::os::unix::fs::MetadataExt;
use std::process::Command;

/// A local user that is not root (scripts/test.sh creates it).
const OTHER_USER: &str = "prefixfs-other";

fn meta(pairs: &[(&str, &str)]) -> UserMeta {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn put_with_meta(env: &Env, path: &str, body: Vec<u8>, m: UserMeta) {
    let key = env.layout(16).file_key(&RelPath::parse(path).unwrap()).unwrap();
    env.rt.block_on(env.s3.put(&key, body.into(), &m)).expect("put");
}

/// Runs `script` with sh as OTHER_USER; true when it succeeded.
fn as_other_user(script: &str) -> bool {
    Command::new("timeout")
        .args(["20", "runuser", "-u", OTHER_USER, "--", "sh", "-c", script])
        .status()
        .expect("runuser")
        .success()
}

#[test]
fn hostile_metadata_and_oversized_symlinks_do_not_take_the_mount_down() {
    let env = Env::embedded();
    put_with_meta(
        &env,
        "evil.txt",
        b"evil".to_vec(),
        meta(&[("mtime", "9223372036854775808"), ("mode", "33188")]),
    );
    put_with_meta(
        &env,
        "huge-link",
        vec![b'a'; 300_000],
        meta(&[("mode", &(libc::S_IFLNK | 0o777).to_string())]),
    );
    put_with_meta(
        &env,
        "link",
        b"evil.txt".to_vec(),
        meta(&[("mode", &(libc::S_IFLNK | 0o777).to_string())]),
    );
    let mut m = env.mount(16, &["--metadata-ttl", "0"]);
    for _ in 0..5 {
        assert_eq!(m.ok("cat evil.txt"), "evil");
        m.ok("stat evil.txt >/dev/null && ls -l >/dev/null");
    }
    // A "symlink" bigger than PATH_MAX is a file: never read whole into memory as a target.
    assert_eq!(m.ok("stat -c %F huge-link"), "regular file\n");
    assert_ne!(m.sh("readlink huge-link").code, 0);
    assert_eq!(m.ok("wc -c < huge-link"), "300000\n");
    assert_eq!(m.ok("readlink link"), "evil.txt\n");
    m.assert_alive();
}

#[test]
fn a_listed_key_of_exactly_1024_bytes_can_be_looked_up_and_read() {
    let env = Env::embedded();
    let layout = env.layout(16);
    let dir = ["d".repeat(200), "e".repeat(200), "f".repeat(200), "g".repeat(200)].join("/");
    let base = layout
        .file_key(&RelPath::parse(&format!("{dir}/x")).unwrap())
        .unwrap()
        .len()
        - 1;
    let name = "n".repeat(1024 - base);
    let path = format!("{dir}/{name}");
    assert_eq!(layout.file_key(&RelPath::parse(&path).unwrap()).unwrap().len(), 1024);
    put_with_meta(&env, &path, b"long".to_vec(), UserMeta::new());
    let mut m = env.mount(16, &[]);
    assert_eq!(m.ok(&format!("ls {dir}")), format!("{name}\n"));
    assert_eq!(m.ok(&format!("cat {path}")), "long");
    // A directory of that name would need a 1025-byte marker: mkdir says so.
    let out = m.sh(&format!("mkdir {dir}/{}", "m".repeat(1024 - base)));
    assert!(out.code != 0 && out.stderr.contains("too long"), "{}", out.stderr);
}

#[test]
fn mounting_over_a_mounted_mountpoint_is_refused() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    m.ok("echo first > f.txt");
    let out = env
        .prefixfs()
        .arg("mount")
        .arg(format!("s3://{BUCKET}/{ROOT}"))
        .arg(&m.path)
        .args(env.conn_args())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already a mount point"), "{err}");
    // The first mount is untouched.
    assert_eq!(m.ok("cat f.txt"), "first\n");
}

#[test]
fn names_cannot_forge_log_lines() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    let out = m.sh("cat \"$(printf 'missing\\nERROR forged line')\"");
    assert!(out.code != 0);
    m.unmount();
    let log = m.log_text();
    assert!(!log.lines().any(|l| l.starts_with("ERROR forged")), "{log}");
    assert!(
        log.contains("missing\\nERROR forged line"),
        "the name is logged, escaped:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "no colour codes in a log file");
}

#[test]
fn serve_refuses_a_bucket_name_s3_would_reject() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_prefixfs"))
        .args(["serve", "--addr", "127.0.0.1:0", "--bucket", "b1", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid bucket name"));
}

#[test]
fn the_embedded_store_cache_and_log_are_private_to_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    // The other user must be able to reach the test directory, to show what stops it.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Defaults: data, cache and log under $HOME.
    let status = Command::new(env!("CARGO_BIN_EXE_prefixfs"))
        .arg("mount")
        .arg(&mnt)
        .env("HOME", &home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_STATE_HOME")
        .status()
        .unwrap();
    assert!(status.success());
    let log = home.join(".local/state/prefixfs/prefixfs.log");
    let mut m = Mount {
        path: mnt.clone(),
        child: None,
        log: log.clone(),
    };
    // A file being modified sits in staging while it is open.
    m.ok("head -c 100000 /dev/urandom > secret.bin && chmod 600 secret.bin");
    let data = home.join(".local/share/prefixfs");
    let cache = home.join(".cache/prefixfs");
    let creds = data.join("credentials.json");
    for d in [&data, &cache, log.parent().unwrap()] {
        let md = std::fs::metadata(d).unwrap();
        assert_eq!(md.mode() & 0o777, 0o700, "{}", d.display());
        assert_eq!(md.uid(), 0);
    }
    assert_eq!(std::fs::metadata(&creds).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&log).unwrap().mode() & 0o777, 0o600);
    assert!(as_other_user("true"), "the other user can run commands");
    assert!(!as_other_user(&format!("cat {}", creds.display())));
    assert!(!as_other_user(&format!("ls {}", data.display())));
    assert!(!as_other_user(&format!("ls {}", cache.display())));
    assert!(!as_other_user(&format!("cat {}", log.display())));
    // The store answers only requests signed with its own random keys: the well-known
    // keys of earlier versions are refused.
    let endpoint = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.split("endpoint=")
                .nth(1)
                .map(|e| e.split_whitespace().next().unwrap_or("").to_string())
        })
        .expect("the log names the endpoint");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = client_config(&endpoint);
    cfg.bucket = "prefixfs".into();
    cfg.static_credentials = Some(("prefixfs".into(), "prefixfs-secret".into()));
    let forged = rt.block_on(prefixfs::store::aws::AwsStore::connect(&cfg));
    let err = rt.block_on(forged.list("", None, None, None)).unwrap_err();
    assert!(!err.is_not_found(), "{err}");
    let c: prefixfs::server::Credentials = serde_json::from_str(&std::fs::read_to_string(&creds).unwrap()).unwrap();
    cfg.static_credentials = Some((c.access_key, c.secret_key));
    let owner = rt.block_on(prefixfs::store::aws::AwsStore::connect(&cfg));
    assert!(rt.block_on(owner.list("", None, None, None)).is_ok());
    m.unmount();
}

#[test]
fn a_cache_directory_owned_by_another_user_is_refused() {
    let env = Env::embedded();
    let foreign = env.dir.path().join("foreign-cache");
    std::fs::create_dir(&foreign).unwrap();
    let status = Command::new("chown")
        .arg(format!("{OTHER_USER}:"))
        .arg(&foreign)
        .status()
        .unwrap();
    assert!(status.success());
    let mnt = env.subdir("mnt");
    let out = env
        .prefixfs()
        .arg("mount")
        .arg(format!("s3://{BUCKET}/{ROOT}"))
        .arg(&mnt)
        .args(["--init", "--cache-dir"])
        .arg(&foreign)
        .args(env.conn_args())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to uid"), "{err}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn foreign_keys_leave_no_ghost_directory_and_are_never_deleted() {
    let env = Env::embedded();
    let layout = env.layout(16);
    let pfx = |path: &str| layout.prefix_name(layout.prefix_index(&RelPath::parse(path).unwrap()));
    let key = |path: &str| layout.file_key(&RelPath::parse(path).unwrap()).unwrap();
    // `..` and `.` segments, and a key ending in '/' that holds data.
    let foreign = [
        format!("data/{}/a/../b", pfx("b")),
        format!("data/{}/c/./d", pfx("c/d")),
        format!("data/{}/e/", pfx("e")),
    ];
    for k in &foreign {
        env.put(k, b"not a directory of this mount");
    }
    // A file `d` and a directory `d/` (in other prefixes): the directory wins.
    env.put(&key("d"), b"a file named d");
    env.put(&key("d/x.txt"), b"inside\n");
    let mut m = env.mount(16, &[]);
    assert_eq!(m.ok("ls"), "a\nc\nd\ne\n", "a listing cannot tell yet");
    m.ok("rm -rf a && rmdir c && rm -r e");
    assert_eq!(m.ok("ls"), "d\n");
    assert_eq!(m.ok("ls -p d && cat d/x.txt"), "x.txt\ninside\n");
    assert_eq!(m.ok("find . | sort"), ".\n./d\n./d/x.txt\n");
    // After the TTL too (listings fetched again), and in a fresh mount once it has looked.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut short = env.mount(16, &["--metadata-ttl", "1"]);
    short.ok("ls a c e 2>/dev/null; true");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(short.ok("ls"), "d\n");
    let keys = env.keys();
    for k in &foreign {
        assert!(keys.contains(k), "{k} was deleted");
    }
    assert!(keys.contains(&key("d")), "the shadowed file stays in S3");
}

#[test]
fn find_tells_symlinks_from_files_on_a_fresh_mount() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    m.ok("mkdir d && echo x > d/f.txt && ln -s f.txt d/l && mkdir d/sub && head -c 5000 /dev/zero > d/big");
    drop(m);
    // Nothing looked up yet: readdir alone must give the right types.
    let mut m = env.mount(16, &[]);
    assert_eq!(m.ok("find . -type l"), "./d/l\n");
    assert_eq!(m.ok("find . -type f | sort"), "./d/big\n./d/f.txt\n");
    assert_eq!(m.ok("find . -type d | sort"), ".\n./d\n./d/sub\n");
}
