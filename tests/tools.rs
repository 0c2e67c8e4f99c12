//! The bucket tools against real S3 servers (the embedded one and moto's). `prefixfs
//! migrate`: a bucket of plain, date-shaped keys into the hashed layout and back, killed
//! halfway and resumed, verified, the source deleted. `prefixfs fsck` and `info`: planted
//! misplaced and foreign keys found, the misplaced ones repaired.

mod common;

use common::{BUCKET, Env};
use futures::StreamExt;
use prefixfs::store::{ObjectStore, UserMeta};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// Dated files: DAYS days × PER_DAY files, under `plain/`.
const DAYS: usize = 50;
const PER_DAY: usize = 100;

fn dated_paths() -> Vec<String> {
    (0..DAYS)
        .flat_map(|d| (0..PER_DAY).map(move |i| format!("2017/{:02}/{:02}/f{i:03}.log", 1 + d / 28, 1 + d % 28)))
        .collect()
}

/// The key docs/LAYOUT.md gives `path` under ROOT with 16 prefixes, computed here from the
/// document's formula rather than by the layout module.
fn documented_key(root: &str, path: &str) -> String {
    let digest = Sha256::digest(path.as_bytes());
    let q = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 16;
    format!("{root}/{q:x}/{path}")
}

fn meta_of(path: &str) -> UserMeta {
    // s3fs-style POSIX metadata on a few files: it must come along.
    let mut m = UserMeta::new();
    if path.ends_with("f000.log") {
        m.insert("mode".into(), "33152".into());
        m.insert("mtime".into(), "1486512000".into());
    }
    m
}

fn plant(env: &Env, paths: &[String]) {
    env.rt.block_on(async {
        futures::stream::iter(paths)
            .map(|p| {
                let key = format!("plain/{p}");
                let body = bytes::Bytes::from(format!("{p}\n"));
                let meta = meta_of(p);
                async move { env.s3.put(&key, body, &meta).await }
            })
            .buffer_unordered(64)
            .for_each(|r| async move { r.expect("put") })
            .await;
    });
    // An empty directory (a marker) and a foreign key: a "marker" with a body.
    env.put("plain/2017/12/", b"");
    env.put("plain/junk/", b"not a marker");
}

/// `prefixfs ARGS` against the test server; panics with its output unless it succeeded.
fn prefixfs_ok(env: &Env, args: &[&str]) -> Output {
    let out = env
        .prefixfs()
        .args(args)
        .args(env.conn_args())
        .output()
        .expect("prefixfs");
    assert!(
        out.status.success(),
        "prefixfs {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn migrate(env: &Env, args: &[&str]) -> Output {
    prefixfs_ok(env, &[&["migrate"], args].concat())
}

/// The number after `word` in the command's output ("copied 12 (", "12 COPY").
fn figure(out: &Output, before: &str) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find(before).unwrap_or_else(|| panic!("no {before:?} in {text}"));
    let rest = &text[at + before.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure after {before:?} in {text}"))
}

fn count_after(out: &Output, after: &str) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find(after).unwrap_or_else(|| panic!("no {after:?} in {text}"));
    text[..at]
        .trim_end()
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure before {after:?} in {text}"))
}

fn keys_under(env: &Env, prefix: &str) -> BTreeSet<String> {
    env.keys().into_iter().filter(|k| k.starts_with(prefix)).collect()
}

fn a_plain_bucket_moves_into_the_layout_resumes_after_a_kill_and_leaves(env: Env) {
    let paths = dated_paths();
    plant(&env, &paths);
    let objects = paths.len() as u64 + 1; // the files and the marker
    let expected: BTreeSet<String> = paths
        .iter()
        .map(|p| documented_key("data", p))
        .chain([documented_key("data", "2017/12") + "/"])
        .collect();
    let from = format!("s3://{BUCKET}/plain");
    let to = format!("s3://{BUCKET}/data");

    // A dry run counts and changes nothing.
    let dry = migrate(&env, &[&from, &to, "--dry-run"]);
    assert_eq!(figure(&dry, "would copy "), objects);
    assert_eq!(count_after(&dry, "foreign keys"), 1);
    assert!(keys_under(&env, "data/").is_empty(), "a dry run writes nothing");
    // docs/REQUESTS.md: the source's pages (one plain prefix, 5,002 keys: 6 pages) and one
    // LIST per (empty) destination prefix.
    assert_eq!(count_after(&dry, "LIST"), 6 + 16);

    // Killed once part of the copies are made.
    let mut child = env
        .prefixfs()
        .arg("migrate")
        .args([&from, &to, "--jobs", "2"])
        .args(env.conn_args())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn migrate");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = keys_under(&env, "data/").len() as u64;
        if n > objects / 5 {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "migrate ended before it was killed"
        );
        assert!(Instant::now() < deadline, "migrate made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    child.wait().expect("reap");
    std::thread::sleep(Duration::from_millis(300));
    let done = keys_under(&env, "data/").len() as u64;
    assert!(done < objects, "killed halfway: {done} of {objects}");
    assert!(
        !env.keys().contains("data/.prefixfs/layout.json"),
        "no descriptor before the copies are verified: a mount cannot start on half a layout"
    );

    // The rerun copies what is missing, and only that.
    let rerun = migrate(&env, &[&from, &to]);
    assert_eq!(count_after(&rerun, "already in place"), done);
    assert_eq!(figure(&rerun, "copied "), objects - done);
    assert_eq!(count_after(&rerun, "COPY"), objects - done, "no object copied twice");
    let data: BTreeSet<String> = keys_under(&env, "data/")
        .into_iter()
        .filter(|k| !k.starts_with("data/.prefixfs/"))
        .collect();
    assert_eq!(data, expected, "exactly the keys docs/LAYOUT.md gives");
    assert!(
        env.keys().contains("data/.prefixfs/layout.json"),
        "the descriptor is written"
    );
    let sample = &paths[0];
    let head = env
        .rt
        .block_on(env.s3.head(&documented_key("data", sample)))
        .expect("head");
    assert_eq!(head.user_meta, meta_of(sample), "POSIX metadata comes along");
    assert_eq!(
        env.get(&documented_key("data", &paths[7])),
        format!("{}\n", paths[7]).into_bytes()
    );

    // Nothing left to do: a third run copies nothing; with --delete-source the source goes.
    let last = migrate(&env, &[&from, &to, "--delete-source"]);
    assert_eq!(figure(&last, "copied "), 0);
    assert_eq!(figure(&last, "deleted "), objects);
    assert_eq!(
        keys_under(&env, "plain/"),
        BTreeSet::from(["plain/junk/".to_string()]),
        "only the foreign key is left of the source"
    );

    // And back, to leave prefixfs: the plain keys again, under another root.
    let back = migrate(&env, &[&to, &format!("s3://{BUCKET}/back"), "--to-prefix-count", "1"]);
    assert_eq!(figure(&back, "copied "), objects);
    let plain: BTreeSet<String> = keys_under(&env, "back/")
        .into_iter()
        .filter(|k| !k.starts_with("back/.prefixfs/"))
        .collect();
    let wanted: BTreeSet<String> = paths
        .iter()
        .map(|p| format!("back/{p}"))
        .chain(["back/2017/12/".to_string()])
        .collect();
    assert_eq!(plain, wanted);
}

fn objects_too_large_for_copy_object_are_copied_in_parts_and_recognised_on_rerun(env: Env) {
    let body: Vec<u8> = (0..11u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut meta = UserMeta::new();
    meta.insert("mode".into(), "33188".into());
    env.rt
        .block_on(env.s3.put("plain/big.bin", body.clone().into(), &meta))
        .expect("put");
    let args = [
        &format!("s3://{BUCKET}/plain"),
        &format!("s3://{BUCKET}/data"),
        "--copy-object-max",
        "1048576",
        "--copy-part-mib",
        "5",
    ]
    .map(|s| s.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = migrate(&env, &args);
    assert_eq!(figure(&first, "copied "), 1);
    let key = documented_key("data", "big.bin");
    assert_eq!(env.get(&key), body);
    let head = env.rt.block_on(env.s3.head(&key)).expect("head");
    assert_eq!(head.user_meta.get("mode").map(String::as_str), Some("33188"));
    assert!(head.user_meta.contains_key(prefixfs::migrate::SOURCE_ETAG_META));
    let again = migrate(&env, &args);
    assert_eq!(
        figure(&again, "copied "),
        0,
        "the part-by-part copy is recognised as done"
    );
    assert!(env.rt.block_on(env.s3.list_uploads("")).expect("uploads").is_empty());
}

fn a_plain_layout_moves_into_the_layout_in_place(env: Env) {
    let paths: Vec<String> = dated_paths().into_iter().step_by(25).collect();
    env.rt.block_on(async {
        for p in &paths {
            env.s3
                .put(&format!("logs/{p}"), bytes::Bytes::from_static(b"x"), &UserMeta::new())
                .await
                .expect("put");
        }
    });
    let root = format!("s3://{BUCKET}/logs");
    let first = migrate(&env, &[&root, &root]);
    assert_eq!(figure(&first, "copied "), paths.len() as u64);
    // The source is still whole until --delete-source; a rerun finds everything in place.
    let last = migrate(&env, &[&root, &root, "--delete-source"]);
    assert_eq!(figure(&last, "copied "), 0);
    assert_eq!(figure(&last, "deleted "), paths.len() as u64);
    let expected: BTreeSet<String> = paths
        .iter()
        .map(|p| documented_key("logs", p))
        .chain(["logs/.prefixfs/layout.json".to_string()])
        .collect();
    assert_eq!(keys_under(&env, "logs/"), expected);
    let descriptor: serde_json::Value = serde_json::from_slice(&env.get("logs/.prefixfs/layout.json")).expect("json");
    assert_eq!(descriptor["prefix_count"], 16);

    // Issue 21, 5: the root now has a descriptor (16 prefixes). Migrating it in place to 4
    // starts from those 16, not from a plain layout (which would take `9/…` for a path),
    // and a --from-prefix-count that disagrees with the descriptor is refused.
    let mut wrong = env.prefixfs();
    wrong.args([
        "migrate",
        &root,
        &root,
        "--from-prefix-count",
        "1",
        "--to-prefix-count",
        "4",
    ]);
    let out = wrong.args(env.conn_args()).output().expect("prefixfs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("disagrees"), "{out:?}");
    let to4 = migrate(&env, &[&root, &root, "--to-prefix-count", "4", "--delete-source"]);
    // Keys whose 4-prefix key is their 16-prefix key already stay where they are.
    assert!(figure(&to4, "copied ") > 0);
    let four = prefixfs::layout::Layout::new("logs", 4).expect("layout");
    let expected: BTreeSet<String> = paths
        .iter()
        .map(|p| four.file_key(&prefixfs::layout::RelPath::parse(p).unwrap()).unwrap())
        .chain(["logs/.prefixfs/layout.json".to_string()])
        .collect();
    assert_eq!(keys_under(&env, "logs/"), expected);
}

fn fsck_finds_misplaced_and_foreign_keys_and_repairs_the_misplaced(env: Env) {
    let mut mount = env.mount(16, &[]);
    mount.ok("mkdir -p 2017/02 && echo a > 2017/02/a.log && echo b > 2017/02/b.log");
    drop(mount);
    // Written by a tool that ignored the layout: under the wrong prefix.
    let right = documented_key("data", "2017/02/c.log");
    let wrong_q = if right.starts_with("data/0/") { "1" } else { "0" };
    let misplaced = format!("data/{wrong_q}/2017/02/c.log");
    env.put(&misplaced, b"c\n");
    for foreign in ["data/zz/x", "data/top.txt", "data/3/a/../b", "data/4/dir/"] {
        env.put(foreign, b"junk");
    }
    env.rt
        .block_on(env.s3.create_multipart("data/5/left-behind", &UserMeta::new()))
        .expect("create upload");
    let fsck = |extra: &[&str]| {
        env.prefixfs()
            .args(["fsck", &format!("s3://{BUCKET}/data")])
            .args(extra)
            .args(env.conn_args())
            .output()
            .expect("fsck")
    };
    let found = fsck(&[]);
    let text = String::from_utf8_lossy(&found.stdout).to_string();
    assert_eq!(found.status.code(), Some(4), "{text}");
    assert!(
        text.contains(&format!("misplaced: {misplaced} (belongs at {right})")),
        "{text}"
    );
    for foreign in ["data/zz/x", "data/top.txt", "data/3/a/../b", "data/4/dir/"] {
        assert!(text.contains(&format!("foreign: {foreign} (")), "{foreign} in {text}");
    }
    assert!(text.contains("incomplete upload: data/5/left-behind"), "{text}");
    assert!(
        text.contains("4 objects (4 bytes) of the layout"),
        "two files and two markers: {text}"
    );

    let repaired = fsck(&["--repair", "--abort-uploads-older-than", "0"]);
    let text = String::from_utf8_lossy(&repaired.stdout).to_string();
    assert!(text.contains("moved 1 misplaced keys, aborted 1 uploads"), "{text}");
    assert_eq!(repaired.status.code(), Some(4), "foreign keys are left: {text}");
    let keys = env.keys();
    assert!(
        keys.contains(&right) && !keys.contains(&misplaced),
        "moved to its prefix"
    );
    for foreign in ["data/zz/x", "data/top.txt", "data/3/a/../b", "data/4/dir/"] {
        assert!(keys.contains(foreign), "{foreign} is never touched");
    }
    let again = String::from_utf8_lossy(&fsck(&[]).stdout).to_string();
    assert!(
        !again.contains("misplaced:") && !again.contains("incomplete upload"),
        "{again}"
    );

    // The mount sees the repaired file; info counts it.
    let mut mount = env.mount(16, &[]);
    assert_eq!(mount.ok("cat 2017/02/c.log"), "c\n");
    drop(mount);
    let info = env
        .prefixfs()
        .args(["info", &format!("s3://{BUCKET}/data")])
        .args(env.conn_args())
        .output()
        .expect("info");
    let text = String::from_utf8_lossy(&info.stdout).to_string();
    assert!(
        text.contains("16 prefixes") && text.contains("objects 5 (6 bytes)"),
        "{text}"
    );
    let per_prefix: u64 = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("prefix ")?
                .split(": ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(per_prefix, 5, "{text}");
}

fn adhoc(env: &Env, args: &[&str]) -> String {
    String::from_utf8(prefixfs_ok(env, args).stdout).expect("utf-8")
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(|l| l.trim_start_matches("./").to_string()).collect();
    v.sort();
    v
}

fn ls_cat_cp_du_find_without_a_mount_agree_with_the_mount(env: Env) {
    let mut m = env.mount(16, &[]);
    m.ok(
        "mkdir -p 2017/02/08 2017/02/09 empty && for i in $(seq 1 30); do echo $i > 2017/02/08/f$i.log; done \
         && echo x > 2017/02/09/a.txt && chmod 600 2017/02/09/a.txt \
         && head -c 20000000 /dev/urandom > big.bin",
    );
    let url = |p: &str| format!("s3://{BUCKET}/data/{p}");
    // ls, ls -l, ls -R
    let names = m.ok("ls 2017/02/08");
    assert_eq!(
        sorted_lines(&adhoc(&env, &["ls", &url("2017/02/08")])),
        sorted_lines(&names)
    );
    let long = adhoc(&env, &["ls", "-l", &url("2017/02/09")]);
    assert!(
        long.starts_with("-rw------- ") && long.trim_end().ends_with(" a.txt"),
        "{long}"
    );
    let top = adhoc(&env, &["ls", &url("")]);
    assert_eq!(sorted_lines(&top), ["2017", "big.bin", "empty"]);
    let recursive = adhoc(&env, &["ls", "-R", &url("2017")]);
    assert!(recursive.contains("2017/02/08:\nf1.log\n"), "{recursive}");
    // find
    let found = m.ok("find . -name '*.log'");
    let ours = adhoc(&env, &["find", &url(""), "--name", "*.log"]);
    assert_eq!(sorted_lines(&ours), sorted_lines(&found));
    assert_eq!(
        sorted_lines(&adhoc(&env, &["find", &url("2017"), "--type", "d"])),
        sorted_lines(&m.ok("find 2017 -type d"))
    );
    // du: the bytes of the files below
    let bytes: u64 = m
        .ok("find 2017 -type f -printf '%s\\n'")
        .lines()
        .map(|l| l.parse::<u64>().expect("size"))
        .sum();
    assert_eq!(adhoc(&env, &["du", "-s", &url("2017")]), format!("{bytes}\t2017\n"));
    // cat
    assert_eq!(
        adhoc(&env, &["cat", &url("2017/02/09/a.txt"), &url("2017/02/08/f7.log")]),
        "x\n7\n"
    );
    // A reader that goes away (`| head`) ends the command quietly, with status 0.
    let mut child = env
        .prefixfs()
        .args(["cat", &url("big.bin")])
        .args(env.conn_args())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prefixfs");
    let mut head = [0u8; 5];
    std::io::Read::read_exact(child.stdout.as_mut().expect("stdout"), &mut head).expect("5 bytes");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "cat | head: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // cp out: the same tree and bytes as cp -r through the mount
    let out = env.subdir("out");
    adhoc(&env, &["cp", "-r", &url("2017"), out.to_str().expect("path")]);
    adhoc(
        &env,
        &["cp", &url("big.bin"), out.join("big.bin").to_str().expect("path")],
    );
    let diff = m.ok(&format!(
        "diff -r 2017 {o}/2017 && cmp big.bin {o}/big.bin && stat -c %a {o}/2017/02/09/a.txt",
        o = out.display()
    ));
    assert_eq!(diff.trim(), "600", "the mode comes along");
    // cp in: a local tree into the bucket, seen by a fresh mount as it was
    let local = env.subdir("local");
    std::fs::create_dir_all(local.join("tree/sub/deeper")).expect("mkdir");
    std::fs::write(local.join("tree/one.txt"), b"one\n").expect("write");
    std::fs::write(local.join("tree/sub/two.txt"), vec![7u8; 9 << 20]).expect("write");
    adhoc(
        &env,
        &["cp", "-r", local.join("tree").to_str().expect("path"), &url("up")],
    );
    drop(m);
    let mut fresh = env.mount(16, &[]);
    fresh.ok(&format!("diff -r {} up", local.join("tree").display()));
    assert_eq!(fresh.ok("find up -type d | sort"), "up\nup/sub\nup/sub/deeper\n");
}

on_every_backend!(
    ls_cat_cp_du_find_without_a_mount_agree_with_the_mount,
    fsck_finds_misplaced_and_foreign_keys_and_repairs_the_misplaced,
    a_plain_layout_moves_into_the_layout_in_place,
    a_plain_bucket_moves_into_the_layout_resumes_after_a_kill_and_leaves,
    objects_too_large_for_copy_object_are_copied_in_parts_and_recognised_on_rerun,
);

/// Issue 23, the first five minutes: each set-up error a user meets at the first contact is
/// said in one line that names the cause, within 2 s, and never as the SDK's Debug output —
/// on the terminal also when the log goes to a file.
#[test]
fn first_contact_failures_are_one_line_within_two_seconds() {
    let env = Env::embedded();
    let home = env.subdir("home"); // no ~/.aws
    // Some other web server: 404 and an HTML page for everything.
    let web = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let web_url = format!("http://{}", web.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for conn in web.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let page = "<html><body>Not Found</body></html>";
            let _ = std::io::Write::write_all(
                &mut conn,
                format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                )
                .as_bytes(),
            );
        }
    });
    let refused = format!("http://127.0.0.1:{}", common::free_port());
    let tls = env.endpoint.replace("http://", "https://");
    let plain = env.endpoint.trim_start_matches("http://").to_string();
    let mnt = env.subdir("mnt");
    let log = env.dir.path().join("mount.log");
    let mnt_s = mnt.to_str().expect("path").to_string();
    let log_s = log.to_str().expect("path").to_string();
    let ls = |endpoint: &str| -> Vec<String> {
        [
            "ls",
            "s3://test/",
            "--endpoint-url",
            endpoint,
            "--force-path-style",
            "--region",
            "us-east-1",
        ]
        .map(String::from)
        .to_vec()
    };
    let mount_args = |bucket: &str, endpoint: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["mount", &format!("s3://{bucket}/data"), &mnt_s, "--foreground"]
            .map(String::from)
            .to_vec();
        a.extend(
            [
                "--endpoint-url",
                endpoint,
                "--force-path-style",
                "--region",
                "us-east-1",
            ]
            .map(String::from),
        );
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    struct Case {
        what: &'static str,
        args: Vec<String>,
        creds: bool,
        says: &'static str,
    }
    let cases = [
        Case {
            what: "no credentials anywhere",
            args: ls(&env.endpoint),
            creds: false,
            says: "no AWS credentials found; tried the environment",
        },
        Case {
            what: "nothing listening",
            args: ls(&refused),
            creds: true,
            says: "connection refused by http://127.0.0.1:",
        },
        Case {
            what: "an unresolvable host",
            args: ls("http://no-such-host.invalid:9000"),
            creds: true,
            says: "cannot resolve the host of http://no-such-host.invalid:9000",
        },
        Case {
            what: "https:// to an http port",
            args: ls(&tls),
            creds: true,
            says: "TLS handshake with https://",
        },
        Case {
            what: "an endpoint without a scheme",
            args: ls(&plain),
            creds: true,
            says: "no scheme: did you mean http://127.0.0.1:",
        },
        Case {
            what: "some other web server",
            args: ls(&web_url),
            creds: true,
            says: "it is not an S3 endpoint",
        },
        Case {
            what: "some other web server, mount --init",
            args: mount_args("test", &web_url, &["--init"]),
            creds: true,
            says: "it is not an S3 endpoint",
        },
        Case {
            what: "a wrong bucket, --foreground --log-file",
            args: mount_args("no-such-bucket", &env.endpoint, &["--log-file", &log_s]),
            creds: true,
            says: "the bucket does not exist",
        },
    ];
    for case in cases {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_prefixfs"));
        cmd.args(&case.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .stdin(Stdio::null());
        if case.creds {
            cmd.env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY);
        }
        let start = Instant::now();
        let out = cmd.output().expect("prefixfs");
        let took = start.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(!out.status.success(), "{}: {stderr}", case.what);
        assert!(took < Duration::from_secs(2), "{}: {took:?}\n{stderr}", case.what);
        assert!(first.contains(case.says), "{}: {stderr}", case.what);
        assert!(
            !stderr.contains("DispatchFailure") && !stderr.contains("ConnectorError") && !stderr.contains("{ "),
            "{}: no SDK Debug output: {stderr}",
            case.what
        );
        // One line (clap adds a pointer to --help after its own).
        if !case.says.starts_with("no scheme") {
            assert_eq!(stderr.trim_end().lines().count(), 1, "{}: {stderr}", case.what);
        }
    }
    let logged = std::fs::read_to_string(&log).expect("the log file");
    assert!(
        logged.contains("the bucket does not exist"),
        "the log has it too: {logged}"
    );
}

/// Issue 23: `prefixfs doctor` on a working set-up (every check ok, exit 0, nothing left
/// behind) and on broken ones (exit 1, the failing check says why in one line).
#[test]
fn doctor_says_what_works_and_what_does_not() {
    let env = Env::embedded();
    let doctor = |endpoint: &str, creds: Option<(&str, &str)>, target: &str| -> (i32, String) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_prefixfs"));
        cmd.args([
            "doctor",
            target,
            "--endpoint-url",
            endpoint,
            "--force-path-style",
            "--region",
            "us-east-1",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.subdir("home"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
        if let Some((a, s)) = creds {
            cmd.env("AWS_ACCESS_KEY_ID", a).env("AWS_SECRET_ACCESS_KEY", s);
        }
        let out = cmd.output().expect("doctor");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let good = Some((common::ACCESS_KEY, common::SECRET_KEY));
    let init = env
        .prefixfs()
        .args(["init", "s3://test/data"])
        .args(env.conn_args())
        .output()
        .expect("init");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let before = env.keys();
    let (code, table) = doctor(&env.endpoint, good, "s3://test/data");
    assert_eq!(code, 0, "{table}");
    for check in [
        "credentials",
        "descriptor",
        "list",
        "put",
        "get",
        "copy",
        "multipart",
        "delete",
        "conditional writes",
        "conditional deletes",
        "latency",
        "throughput",
    ] {
        let line = table.lines().find(|l| l.starts_with(check)).unwrap_or_default();
        assert!(line.contains(" ok "), "{check}: {table}");
    }
    assert!(table.contains("data/.prefixfs/layout.json: 16 prefixes"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("options") && l.contains("checksums CRC32C")),
        "the bucket options the requests carry: {table}"
    );
    assert_eq!(env.keys(), before, "doctor cleans up after itself");
    assert!(
        env.rt
            .block_on(env.s3.list_uploads("data/"))
            .expect("uploads")
            .is_empty()
    );

    let fails = |code: i32, table: &str, check: &str, says: &str| {
        assert_eq!(code, 1, "{table}");
        let line = table.lines().find(|l| l.starts_with(check)).unwrap_or_default();
        assert!(line.contains("FAIL") && line.contains(says), "{check}: {table}");
    };
    let refused = format!("http://127.0.0.1:{}", common::free_port());
    let (code, table) = doctor(&refused, good, "s3://test/data");
    fails(code, &table, "descriptor", "connection refused by");
    let (code, table) = doctor(&env.endpoint, Some((common::ACCESS_KEY, "wrong")), "s3://test/data");
    fails(code, &table, "descriptor", "refused the credentials");
    let (code, table) = doctor(&env.endpoint, None, "s3://test/data");
    fails(code, &table, "credentials", "no AWS credentials found");
    let (code, table) = doctor(&env.endpoint, good, "s3://test/elsewhere");
    fails(code, &table, "descriptor", "run `prefixfs init`");
}
