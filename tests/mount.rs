//! End-to-end tests: real programs on a real FUSE mount of prefixfs, talking S3 over HTTP to
//! the embedded server; the bucket is then read through the S3 API and compared with the keys
//! docs/LAYOUT.md predicts.

mod common;

use common::*;
use prefixfs::layout::RelPath;
use prefixfs::store::ObjectStore;
use std::collections::BTreeSet;
use std::time::Duration;

on_every_backend!(
    cp_r_of_dated_tree_lands_every_file_at_its_hashed_key,
    mv_of_file_and_directory_moves_every_key_across_prefixes,
    rm_r_rmdir_and_mkdir_keep_the_bucket_exact,
    listing_spanning_many_pages_and_prefixes_is_complete_sorted_and_cached,
    keys_outside_the_prefix_set_are_not_shown,
    names_that_cannot_be_keys_get_a_clear_errno,
    overwriting_a_file_replaces_its_object,
    two_mounts_see_each_other_after_the_ttl,
    echo_into_a_directory_costs_one_put_per_file,
    cp_r_of_a_tree_sends_no_listing_per_file,
    ls_l_with_a_trusted_listing_sends_lists_only,
    ls_l_gets_the_attributes_with_the_names,
    new_objects_get_the_content_type_of_their_name,
    new_objects_get_the_storage_class_asked_for,
    a_key_with_a_control_character_is_listed_like_any_other,
    a_replaced_name_always_shows_a_file_and_an_unlinked_open_file_stays_readable,
    rewrites_with_shell_tools_keep_what_another_client_stored,
    the_start_up_probes_name_the_conditions_a_server_ignores,
);

/// A mount says at start which of S3's conditions the server ignores: moto 5.2 copies an
/// object whose `x-amz-copy-source-if-match` names another version (tests/s3_contract.rs)
/// and ignores the ETags of DeleteObjects; the embedded server honours both. One CopyObject
/// is what asking costs.
fn the_start_up_probes_name_the_conditions_a_server_ignores(env: Env) {
    let m = env.mount(16, &[]);
    let log = m.log_text();
    let moto = env.dir.path().join("moto.log").exists();
    let copy_warned = log.contains("ignores x-amz-copy-source-if-match");
    assert_eq!(copy_warned, moto, "{}", common::tail(&log, 8));
    assert_eq!(
        m.stats().get("requests_copy").copied(),
        Some(1),
        "one CopyObject asks: {:?}",
        m.stats()
    );
}

/// Issue 21, 8: `>>`, `>` and `truncate` on objects another S3 client wrote keep its user
/// metadata, Content-Type and tags (read back through the S3 API).
fn rewrites_with_shell_tools_keep_what_another_client_stored(env: Env) {
    use prefixfs::store::{Headers, UserMeta};
    let key = |p: &str| env.layout(16).file_key(&RelPath::parse(p).unwrap()).unwrap();
    let meta = UserMeta::from([("owner-app".to_string(), "ingest".to_string())]);
    let headers = Headers {
        content_type: Some("text/csv".into()),
        tagging: Some("retention=long&team=data".into()),
        ..Default::default()
    };
    for p in ["append.csv", "over.csv", "cut.csv"] {
        env.rt
            .block_on(env.s3.put_with(
                &key(p),
                bytes::Bytes::from_static(b"a,b\n"),
                &meta,
                Some(&headers),
                None,
            ))
            .unwrap();
    }
    let mut m = env.mount(16, &[]);
    m.ok("echo c,d >> append.csv && echo x,y > over.csv && truncate -s 2 cut.csv");
    for (p, body) in [
        ("append.csv", &b"a,b\nc,d\n"[..]),
        ("over.csv", b"x,y\n"),
        ("cut.csv", b"a,"),
    ] {
        assert_eq!(env.get(&key(p)), body, "{p}");
        let head = env.rt.block_on(env.s3.head(&key(p))).unwrap();
        assert_eq!(
            head.user_meta.get("owner-app").map(String::as_str),
            Some("ingest"),
            "{p}"
        );
        assert_eq!(head.headers.content_type.as_deref(), Some("text/csv"), "{p}");
        let tags = env
            .rt
            .block_on(env.s3.get_tagging(&key(p)))
            .unwrap()
            .unwrap_or_default();
        let mut tags: Vec<&str> = tags.split('&').collect();
        tags.sort();
        assert_eq!(tags, ["retention=long", "team=data"], "{p}");
    }
}

/// Issue 21, 9 and 10: while `mv f.tmp f` replaces `f` again and again (as editors and
/// `os.replace` do), a reader of `f` always finds a file, as on a local disk; and a file
/// unlinked (or renamed away) while open for reading is still read and `fstat`ed through
/// its descriptor, and its old key leaves the bucket at its last close.
fn a_replaced_name_always_shows_a_file_and_an_unlinked_open_file_stays_readable(env: Env) {
    let mut m = env.mount(16, &[]);
    // Each read: a whole version (`vN`), or ESTALE when the version it opened was replaced
    // before it read (S3 keeps no old version to finish with); never no file, never a mix.
    let out = m.ok("echo v0 > f
         (for i in $(seq 100); do echo v$i > f.tmp; mv f.tmp f; done) &
         whole=0; stale=0; missing=0; other=''
         while kill -0 $! 2>/dev/null; do
           if out=$(cat f 2>&1); then
             if [[ $out =~ ^v[0-9]+$ ]]; then whole=$((whole+1)); else other=\"$other|$out\"; fi
           elif [[ $out == *'No such file'* ]]; then missing=$((missing+1));
           elif [[ $out == *'Stale file handle'* ]]; then stale=$((stale+1));
           else other=\"$other|$out\"; fi
         done
         wait; cat f; echo \"missing $missing other [$other] whole $whole stale $stale\"");
    let (last, counts) = out.split_once('\n').unwrap();
    assert_eq!(last, "v100");
    assert!(counts.starts_with("missing 0 other [] whole "), "{counts}");
    eprintln!("readers during 100 replacements: {counts}");
    let script = r#"
import os
with open('g', 'w') as w:
    w.write('kept data\n')
fd = os.open('g', os.O_RDONLY)
os.unlink('g')
print(os.path.exists('g'), os.fstat(fd).st_size, os.pread(fd, 100, 0).decode().strip())
os.close(fd)
with open('h', 'w') as w:
    w.write('moved data\n')
fd = os.open('h', os.O_RDONLY)
os.rename('h', 'h2')
print(os.pread(fd, 100, 0).decode().strip())
os.close(fd)
"#;
    std::fs::write(env.dir.path().join("unlinked.py"), script).unwrap();
    let out = m.ok(&format!(
        "python3 {}; sync .",
        env.dir.path().join("unlinked.py").display()
    ));
    assert_eq!(out, "False 10 kept data\nmoved data\n");
    let key = |p: &str| env.layout(16).file_key(&RelPath::parse(p).unwrap()).unwrap();
    let keys = env.data_keys();
    assert!(!keys.contains(&key("g")), "deleted at the last close");
    assert!(!keys.contains(&key("h")) && keys.contains(&key("h2")), "{keys:?}");
}

/// Issue 21, 11: one key with a control character (which XML 1.0 cannot carry) made its
/// directory unreadable everywhere. Listings ask for URL-encoded keys and decode them.
fn a_key_with_a_control_character_is_listed_like_any_other(env: Env) {
    let layout = env.layout(16);
    let key = |p: &str| layout.file_key(&RelPath::parse(p).unwrap()).unwrap();
    env.put(&key("d/bad\u{1}name"), b"odd\n");
    env.put(&key("d/good"), b"fine\n");
    env.put(&key("d/a b+c%20"), b"spaced\n");
    let mut m = env.mount(16, &[]);
    assert_eq!(m.ok("ls d | wc -l"), "3\n");
    assert_eq!(
        m.ok("cat d/good \"d/a b+c%20\" d/bad$'\\x01'name"),
        "fine\nspaced\nodd\n"
    );
    assert_eq!(m.ok("find . -type f | wc -l"), "3\n");
}

/// docs/REQUESTS.md, `--trust-listing` row: `ls -l`, `find` and `stat` of a directory written
/// by another S3 client cost its LISTs, no HEAD (readdirplus hands the kernel the listing's
/// attributes); sizes and times are the objects'.
fn ls_l_with_a_trusted_listing_sends_lists_only(env: Env) {
    let layout = env.layout(16);
    for i in 0..100 {
        let key = layout
            .file_key(&RelPath::parse(&format!("day/f{i:03}.log")).unwrap())
            .unwrap();
        env.put(&key, format!("line {i}\n").as_bytes());
    }
    let mut m = env.mount(16, &["--trust-listing", "--metadata-ttl", "600"]);
    m.ok("ls day > /dev/null"); // the path is looked up; day's parent is listed
    let before = m.stats();
    let ls = m.ok("ls -l day");
    assert_eq!(ls.lines().filter(|l| l.starts_with("-rw-r--r--")).count(), 100, "{ls}");
    assert_eq!(m.ok("stat -c %s day/f007.log day/f042.log"), "7\n8\n");
    assert_eq!(m.ok("find day -type f | wc -l").trim(), "100");
    assert_eq!(
        m.ok("ls -l day | wc -l").trim(),
        "101",
        "again, from the kernel's cache"
    );
    let sent = sent(&before, &m.stats());
    assert!(sent.iter().all(|(k, _)| k == "list"), "{sent:?}");
    // Written through this mount, read back.
    m.ok("echo hello > day/new.txt");
    assert_eq!(m.ok("cat day/new.txt"), "hello\n");
}

/// Issue 22, the cold `ls -l` target: the small objects another client wrote are HEADed once
/// each while `opendir` types the listing (a symlink is such an object), and readdirplus
/// hands the kernel what those HEADs found with the names, so `ls -l` sends no lookup per
/// file. An entry known by its listing only (too big to be a symlink, never HEADed) goes
/// with no validity: the kernel looks it up when `ls` stats it, and that lookup HEADs it.
fn ls_l_gets_the_attributes_with_the_names(env: Env) {
    let layout = env.layout(16);
    let key = |p: &str| layout.file_key(&RelPath::parse(p).unwrap()).unwrap();
    for i in 0..100 {
        env.put(&key(&format!("day/f{i:03}")), format!("line {i}\n").as_bytes());
    }
    env.put(&key("day/big.bin"), &[7u8; 5000]);
    let mut m = env.mount(16, &["--metadata-ttl", "600"]);
    m.ok("ls > /dev/null"); // the root is listed
    let (before, calls_before) = (m.stats(), lookups(&m));
    let ls = m.ok("ls -l day");
    assert_eq!(ls.lines().filter(|l| l.starts_with("-rw-r--r--")).count(), 101, "{ls}");
    assert!(ls.contains(" 5000 ") && ls.contains(" 7 "), "{ls}");
    let sent = sent(&before, &m.stats());
    // day's marker, each small file, big.bin's lookup; day's LIST per prefix.
    assert_eq!(sent, [("head".to_string(), 102), ("list".to_string(), 16)], "{sent:?}");
    assert_eq!(lookups(&m) - calls_before, 2, "day and big.bin only");
    // What the kernel holds is right: sizes, and a stat needs nothing more.
    assert_eq!(m.ok("stat -c %s day/f007 day/big.bin"), "7\n5000\n");
    assert_eq!(lookups(&m) - calls_before, 2);
}

/// How many lookups the kernel has sent the mount (its `op lookup: calls=N` counter).
fn lookups(m: &common::Mount) -> u64 {
    let text = prefixfs::read_stats(&m.path).expect("stats");
    text.lines()
        .find_map(|l| l.strip_prefix("op lookup: calls="))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Requests by kind (`requests_put`...) sent between two snapshots of the counters.
fn sent(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> Vec<(String, u64)> {
    after
        .iter()
        .filter(|(k, _)| k.starts_with("requests_"))
        .map(|(k, v)| {
            (
                k.trim_start_matches("requests_").to_string(),
                v - before.get(k).copied().unwrap_or(0),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// docs/REQUESTS.md, first row, through a real mount: the shell's `echo x > f` in a
/// directory whose listing is known costs one PUT per file and nothing else.
fn echo_into_a_directory_costs_one_put_per_file(env: Env) {
    let layout = env.layout(16);
    env.put(
        &layout.file_key(&RelPath::parse("day/old.txt").unwrap()).unwrap(),
        b"old",
    );
    let mut m = env.mount(16, &["--metadata-ttl", "600"]);
    m.ok("ls day >/dev/null");
    let before = m.stats();
    m.ok("for i in $(seq 1 100); do echo $i > day/f$i.txt; done");
    assert_eq!(sent(&before, &m.stats()), vec![("put".to_string(), 100)]);
    assert_eq!(m.ok("cat day/f57.txt"), "57\n");
    assert_eq!(env.data_keys().len(), 101);
}

/// `cp -r` into the mount: directories it creates are known to be empty, so no file costs a
/// listing; the only LISTs are the one of the destination's parent. `cp` creates each new
/// file with O_EXCL, which S3 decides (a conditional empty PUT, then the content): 2 PUTs
/// per file, or 1 with `--local-exclusive-creates`.
fn cp_r_of_a_tree_sends_no_listing_per_file(env: Env) {
    let src = env.subdir("src");
    let (files, dirs) = dated_tree(&src, 3, 20);
    for (extra, puts_per_file) in [(None, 2), (Some("--local-exclusive-creates"), 1)] {
        let mut args = vec!["--metadata-ttl", "600"];
        args.extend(extra);
        let mut m = env.mount(16, &args);
        let dest = format!("copy-{puts_per_file}");
        m.ok(&format!("mkdir {dest}"));
        let before = m.stats();
        m.ok(&format!("cp -r {}/2017 {dest}/", src.display()));
        let sent = sent(&before, &m.stats());
        let want = vec![(
            "put".to_string(),
            puts_per_file * files.len() as u64 + dirs.len() as u64,
        )];
        assert_eq!(sent, want, "{extra:?}");
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn cp_r_of_dated_tree_lands_every_file_at_its_hashed_key(env: Env) {
    let src = env.subdir("src");
    let (files, dirs) = dated_tree(&src, 3, 20);
    let mut m = env.mount(16, &[]);
    m.ok(&format!("cp -r {}/2017 .", src.display()));

    // What the mount shows equals the source tree.
    let local = run_sh(&src, "find . | sort").stdout;
    assert_eq!(m.ok("find . | sort"), local);
    let ls = m.ok("ls -l 2017/02/02");
    assert_eq!(ls.lines().filter(|l| l.starts_with('-')).count(), 20, "{ls}");
    assert_eq!(m.ok("cat 2017/02/03/log-007.txt"), "day 3 file 7\n");
    assert_eq!(m.ok("stat -c %s 2017/02/03/log-007.txt").trim(), "13");

    // The bucket holds exactly the predicted keys: files and cp's directory markers.
    let layout = env.layout(16);
    assert_eq!(env.data_keys(), expected_keys(&layout, &strs(&files), &strs(&dirs)));
    // ...spread over many prefixes, not one.
    let prefixes: BTreeSet<String> = env
        .data_keys()
        .iter()
        .map(|k| k.split('/').nth(1).unwrap_or("").to_string())
        .collect();
    assert!(prefixes.len() >= 12, "{prefixes:?}");
    assert!(env.keys().contains("data/.prefixfs/layout.json"));
}

fn mv_of_file_and_directory_moves_every_key_across_prefixes(env: Env) {
    let src = env.subdir("src");
    let (_files, _dirs) = dated_tree(&src, 2, 10);
    let mut m = env.mount(16, &[]);
    m.ok(&format!("cp -r {}/2017 .", src.display()));

    m.ok("mv 2017/02/01/log-000.txt 2017/02/02/moved.txt");
    assert_eq!(m.ok("cat 2017/02/02/moved.txt"), "day 1 file 0\n");
    assert!(m.sh("test -e 2017/02/01/log-000.txt").code != 0);

    m.ok("mkdir archive && mv 2017/02 archive/feb");
    assert_eq!(m.ok("ls archive/feb"), "01\n02\n");
    assert_eq!(m.ok("cat archive/feb/02/moved.txt"), "day 1 file 0\n");
    assert!(m.sh("test -e 2017/02").code != 0);

    let layout = env.layout(16);
    let mut files = Vec::new();
    for i in 1..10 {
        files.push(format!("archive/feb/01/log-{i:03}.txt"));
    }
    for i in 0..10 {
        files.push(format!("archive/feb/02/log-{i:03}.txt"));
    }
    files.push("archive/feb/02/moved.txt".into());
    let dirs = ["2017", "archive", "archive/feb", "archive/feb/01", "archive/feb/02"];
    assert_eq!(env.data_keys(), expected_keys(&layout, &strs(&files), &dirs));

    // Renaming over an existing file replaces it; over a non-empty directory is refused.
    m.ok("echo new > archive/a && echo old > archive/b && mv archive/a archive/b");
    assert_eq!(m.ok("cat archive/b"), "new\n");
    let out = m.sh("mv -T archive/feb/01 archive/feb/02");
    assert_ne!(out.code, 0, "moving a directory over a non-empty one must fail");
    assert!(out.stderr.contains("Directory not empty"), "{}", out.stderr);
    assert_eq!(m.ok("ls archive/feb/01 | wc -l").trim(), "9");
}

fn rm_r_rmdir_and_mkdir_keep_the_bucket_exact(env: Env) {
    let src = env.subdir("src");
    dated_tree(&src, 2, 15);
    let mut m = env.mount(16, &[]);
    m.ok(&format!("cp -r {}/2017 .", src.display()));

    let out = m.sh("rmdir 2017/02/01");
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("Directory not empty"), "{}", out.stderr);

    m.ok("mkdir -p empty/inner && rmdir empty/inner");
    assert_eq!(m.ok("ls empty"), "");
    assert!(
        env.data_keys().contains(
            &env.layout(16)
                .dir_marker_key(&RelPath::parse("empty").unwrap())
                .unwrap()
        )
    );

    m.ok("rm -r 2017");
    assert!(m.sh("test -e 2017").code != 0);
    m.ok("rmdir empty");
    assert_eq!(m.ok("ls -A"), "");
    assert_eq!(env.data_keys(), BTreeSet::new());

    let out = m.sh("rm nothing-here");
    assert!(out.stderr.contains("No such file or directory"), "{}", out.stderr);
}

#[test]
fn dd_of_100_mib_round_trips_with_identical_checksum() {
    let env = Env::embedded();
    let local = env.dir.path().join("big.bin");
    run_sh(
        env.dir.path(),
        &format!("dd if=/dev/urandom of={} bs=1M count=100 status=none", local.display()),
    );
    let mut m = env.mount(16, &[]);
    m.ok(&format!("dd if={} of=big.bin bs=1M status=none", local.display()));
    m.ok(&format!("dd if=big.bin of={}.back bs=1M status=none", local.display()));
    let sums = run_sh(
        env.dir.path(),
        "sha256sum big.bin big.bin.back | cut -d' ' -f1 | uniq | wc -l",
    );
    assert_eq!(sums.stdout.trim(), "1", "checksums differ");
    assert_eq!(m.ok("stat -c %s big.bin").trim(), "104857600");
    let key = env.layout(16).file_key(&RelPath::parse("big.bin").unwrap()).unwrap();
    assert_eq!(env.data_keys(), BTreeSet::from([key.clone()]));
    let stats = m.stats();
    assert!(
        stats["requests_upload_part"] >= 12,
        "100 MiB goes up in parts: {stats:?}"
    );
    // Reads use large windows, not one GET per kernel read.
    assert!(stats["requests_get"] < 40, "{stats:?}");
}

fn listing_spanning_many_pages_and_prefixes_is_complete_sorted_and_cached(env: Env) {
    let layout = env.layout(2);
    // 2,600 files in one directory: with 2 prefixes, each prefix holds more than one page.
    let mut names = Vec::new();
    for i in 0..2600 {
        let name = format!("f{i:05}.log");
        env.put(
            &layout
                .file_key(&RelPath::parse(&format!("day/{name}")).unwrap())
                .unwrap(),
            b"x",
        );
        names.push(name);
    }
    let per_prefix: Vec<usize> = (0..2)
        .map(|q| {
            env.keys()
                .iter()
                .filter(|k| k.starts_with(&layout.dir_list_prefix(q, &RelPath::parse("day").unwrap())))
                .count()
        })
        .collect();
    assert!(per_prefix.iter().all(|n| *n > 1000), "{per_prefix:?}");

    let mut m = env.mount(2, &["--metadata-ttl", "60"]);
    let listed = m.ok("ls day");
    let expected: String = names.iter().map(|n| format!("{n}\n")).collect();
    assert_eq!(listed, expected, "complete and sorted");
    assert_eq!(m.ok("ls -1 | wc -l").trim(), "1");

    let before = m.stats()["requests_list"];
    assert!(before >= 6, "paginated over both prefixes: {before}");
    assert_eq!(m.ok("ls day | wc -l").trim(), "2600");
    assert_eq!(
        m.stats()["requests_list"],
        before,
        "a second ls within the TTL sends no LIST"
    );
}

fn keys_outside_the_prefix_set_are_not_shown(env: Env) {
    let layout = env.layout(16);
    env.put("data/stray.txt", b"not ours");
    env.put("data/zz/a.txt", b"not ours");
    let good = layout.file_key(&RelPath::parse("a.txt").unwrap()).unwrap();
    env.put(&good, b"ours");
    // Right shape, wrong prefix for the hash.
    let wrong_prefix = format!(
        "data/{}/a.txt",
        layout.prefix_name((layout.prefix_index(&RelPath::parse("a.txt").unwrap()) + 1) % 16)
    );
    env.put(&wrong_prefix, b"misplaced");
    let mut m = env.mount(16, &[]);
    assert_eq!(m.ok("ls -A"), "a.txt\n");
    assert_eq!(m.ok("cat a.txt"), "ours");
}

fn names_that_cannot_be_keys_get_a_clear_errno(env: Env) {
    let mut m = env.mount(16, &[]);
    let long = "n".repeat(300);
    let out = m.sh(&format!("touch {long}"));
    assert!(out.stderr.contains("File name too long"), "{}", out.stderr);
    // Each name fits, the key does not (S3's 1,024-byte limit).
    let seg = "d".repeat(250);
    let out = m.sh(&format!("mkdir -p {seg}/{seg}/{seg}/{seg}/{seg}"));
    assert!(out.stderr.contains("File name too long"), "{}", out.stderr);
    let out = m.sh("touch $'bad\\xffname'");
    assert!(out.stderr.contains("Invalid argument"), "{}", out.stderr);
    let out = m.sh("mkdir .prefixfs");
    assert_ne!(out.code, 0);
    m.ok("echo fine > ok.txt && cat ok.txt");
}

fn overwriting_a_file_replaces_its_object(env: Env) {
    let mut m = env.mount(16, &[]);
    m.ok("echo first version > f.txt && cp /etc/hostname g.txt");
    m.ok("echo second > f.txt");
    assert_eq!(m.ok("cat f.txt"), "second\n");
    m.ok("cp f.txt g.txt");
    assert_eq!(m.ok("cat g.txt"), "second\n");
    m.ok("dd if=/dev/zero of=f.txt bs=1k count=3 status=none");
    assert_eq!(m.ok("stat -c %s f.txt").trim(), "3072");
    let layout = env.layout(16);
    let key = layout.file_key(&RelPath::parse("f.txt").unwrap()).unwrap();
    assert_eq!(env.get(&key), vec![0u8; 3072]);
    assert_eq!(env.data_keys().len(), 2);
}

fn two_mounts_see_each_other_after_the_ttl(env: Env) {
    let mut a = env.mount(16, &["--metadata-ttl", "1"]);
    let mut b = env.mount(16, &["--metadata-ttl", "1"]);
    assert_eq!(b.ok("ls -A"), "");
    a.ok("mkdir -p 2024/01 && echo from-a > 2024/01/x.txt");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(b.ok("cat 2024/01/x.txt"), "from-a\n");
    assert_eq!(b.ok("ls 2024/01"), "x.txt\n");
    b.ok("rm 2024/01/x.txt");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(a.sh("test -e 2024/01/x.txt").code != 0);
}

#[test]
fn a_mount_disagreeing_with_the_descriptor_is_refused() {
    let env = Env::embedded();
    let out = env
        .prefixfs()
        .arg("init")
        .arg("s3://test/data")
        .args(["--prefix-count", "16"])
        .args(env.conn_args())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mnt = env.subdir("m");
    let out = env
        .prefixfs()
        .arg("mount")
        .arg("s3://test/data")
        .arg(&mnt)
        .args(["--prefix-count", "8", "--foreground"])
        .args(env.conn_args())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disagrees") && err.contains("16"), "{err}");
    assert!(!is_mounted(&mnt));
    // No descriptor at all (another root) and no --init: refused with a hint.
    let out = env
        .prefixfs()
        .arg("mount")
        .arg("s3://test/other")
        .arg(&mnt)
        .arg("--foreground")
        .args(env.conn_args())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("prefixfs init"));
}

#[test]
fn sigint_in_foreground_unmounts_cleanly_and_df_works() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    m.ok("echo kept > kept.txt");
    let df = m.ok("df -P . | tail -1");
    assert!(df.contains("prefixfs"), "{df}");
    let pid = m.child.as_ref().map(|c| c.id()).unwrap();
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = m.child.as_mut().unwrap().wait().unwrap();
    assert!(status.success(), "{status}\n{}", m.log_text());
    assert!(!is_mounted(&m.path));
    let key = env.layout(16).file_key(&RelPath::parse("kept.txt").unwrap()).unwrap();
    assert_eq!(env.get(&key), b"kept\n");
}

/// Issue 21, 12: locks are this host's only; the mount says so in its log the first time a
/// program holds one (found in /proc/locks: the kernel keeps them), once.
#[test]
fn a_lock_taken_on_the_mount_is_logged_once_as_this_hosts_only() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    m.ok("echo x > job.lock && flock job.lock -c 'sleep 5' && flock -s job.lock -c 'sleep 3'");
    let log = m.log_text();
    let said = log.matches("holds a file lock on this mount").count();
    assert_eq!(said, 1, "{log}");
    assert!(log.contains("kind=\"FLOCK\"") || log.contains("kind=FLOCK"), "{log}");
}

/// Issue 24: `mknod` of a regular file creates it (ext4 and s3fs do), and of a FIFO one
/// (tests/posix.rs has the rest of the special files). Issue 23: `fallocate` extends a file; other modes are refused.
#[test]
fn mknod_and_fallocate_of_regular_files_work_and_the_rest_is_refused() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    let script = "import os, stat
os.mknod('plain', 0o640 | stat.S_IFREG)
st = os.stat('plain')
print(stat.S_ISREG(st.st_mode), oct(st.st_mode & 0o777), st.st_size)
os.mkfifo('pipe')
print(stat.S_ISFIFO(os.stat('pipe').st_mode))
";
    std::fs::write(env.dir.path().join("mknod.py"), script).unwrap();
    let out = m.ok(&format!("python3 {}", env.dir.path().join("mknod.py").display()));
    assert_eq!(out, "True 0o640 0\nTrue\n");
    let key = env.layout(16).file_key(&RelPath::parse("plain").unwrap()).unwrap();
    assert!(env.data_keys().contains(&key));
    // Issue 23: fallocate extends a file; punching a hole is refused with a clear errno.
    let out = m.ok("fallocate -l 1M plain && stat -c %s plain; fallocate -p -o 0 -l 10 plain 2>&1 || true");
    assert!(out.starts_with("1048576\n") && out.contains("unsupported"), "{out}");
    assert_eq!(env.get(&key).len(), 1 << 20);
    // Issue 23: the mount root has no object to keep a mode, owner or mtime in: refused
    // with EPERM and a log line, never a success that changes nothing.
    for change in ["chmod 700 .", "chown 1000 .", "touch -m -d 2001-01-01 ."] {
        let out = m.sh(change);
        assert!(
            out.code != 0 && out.stderr.contains("Operation not permitted"),
            "{change}: {}",
            out.stderr
        );
    }
    assert!(
        m.log_text().contains("mount root"),
        "{}",
        common::tail(&m.log_text(), 5)
    );
}

/// `prefixfs mount MNT` on the embedded store, daemonised, as the README's demo runs it.
fn mount_demo(dir: &std::path::Path, mnt: &std::path::Path) -> Mount {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_prefixfs"))
        .arg("mount")
        .arg(mnt)
        .arg("--data-dir")
        .arg(dir.join("store"))
        .arg("--log-file")
        .arg(dir.join("log"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(is_mounted(mnt));
    Mount {
        path: mnt.to_path_buf(),
        child: None,
        log: dir.join("log"),
    }
}

#[test]
fn embedded_store_demo_mounts_in_the_background_with_no_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let guard = mount_demo(dir.path(), &mnt);
    let out = run_sh(
        &mnt,
        "mkdir -p 2017/02/08 && echo hi > 2017/02/08/file.txt && cat 2017/02/08/file.txt",
    );
    assert_eq!(out.stdout, "hi\n", "{}", out.stderr);
    // Unmount the way a non-root user would.
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success());
    drop(guard);
    assert!(!is_mounted(&mnt));
    // The data outlives the mount: mount again and read it, from the data cache the demo
    // mount keeps (the first mount's read filled it): no GET.
    let guard = mount_demo(dir.path(), &mnt);
    let stat = |name: &str| {
        let text = prefixfs::read_stats(&mnt).unwrap();
        let line = text.lines().find_map(|l| l.strip_prefix(name)).expect(name);
        line.trim().parse::<u64>().unwrap()
    };
    let before = stat("requests_get ");
    assert_eq!(run_sh(&mnt, "cat 2017/02/08/file.txt").stdout, "hi\n");
    assert_eq!(stat("requests_get "), before, "{}", common::tail(&guard.log_text(), 10));
    assert!(stat("data_cache_hits ") >= 1);
}

#[test]
fn fstab_helper_mounts_with_options_in_the_background() {
    let env = Env::embedded();
    let mnt = env.subdir("fstab-mnt");
    let log = env.dir.path().join("helper.log");
    let opts = format!(
        "rw,_netdev,init,endpoint_url={},force_path_style,region=us-east-1,prefix_count=16,metadata_ttl=1,log_file={}",
        env.endpoint,
        log.display()
    );
    // As mount(8) runs it for an fstab line of type prefixfs.
    let out = env
        .command(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/mount.prefixfs"))
        .env("PREFIXFS", env!("CARGO_BIN_EXE_prefixfs"))
        .arg("s3://test/data")
        .arg(&mnt)
        .args(["-o", &opts])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _guard = Mount {
        path: mnt.clone(),
        child: None,
        log,
    };
    assert!(is_mounted(&mnt));
    let out = run_sh(&mnt, "echo via-fstab > f.txt && cat f.txt");
    assert_eq!(out.stdout, "via-fstab\n", "{}", out.stderr);
    let key = env.layout(16).file_key(&RelPath::parse("f.txt").unwrap()).unwrap();
    assert_eq!(env.get(&key), b"via-fstab\n");
}

/// CopyObject copies at most 5 GiB (here the server's limit is 8 MiB, and the mount told so):
/// `mv`, `chmod`, `touch`, `cp -p`, `rsync -a` and a directory rename of larger files copy
/// them part by part, and the bucket ends with whole files and no upload left open.
#[test]
fn files_too_large_for_one_copy_are_moved_and_changed_part_by_part() {
    let env = Env::embedded_config(|c| c.copy_object_max = 8 << 20);
    let local = env.dir.path().join("big.bin");
    run_sh(
        env.dir.path(),
        &format!(
            "dd if=/dev/urandom of={0} bs=1M count=20 status=none && chmod 640 {0} && touch -d '2021-03-04 05:06:07' {0}",
            local.display()
        ),
    );
    let local = local.display().to_string();
    let mut m = env.mount(16, &["--copy-object-max-mib", "8", "--metadata-ttl", "3600"]);
    m.ok(&format!("cp {local} big.bin"));
    let before = m.stats();
    m.ok("mv big.bin moved.bin");
    let after = m.stats();
    let sent = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(sent("requests_upload_part_copy"), 3, "20 MiB in 8 MiB parts: {after:?}");
    assert_eq!(sent("requests_complete_multipart"), 1);
    assert_eq!(sent("requests_copy"), 0, "no CopyObject the server would refuse");
    m.ok(&format!("cmp {local} moved.bin"));

    // chmod and touch of a closed file: a copy onto itself with the new metadata.
    m.ok("chmod 600 moved.bin && touch -d '2020-01-02 03:04:05' moved.bin");
    assert_eq!(m.ok("stat -c '%a %Y' moved.bin").trim(), "600 1577934245");
    let key = |p: &str| env.layout(16).file_key(&RelPath::parse(p).unwrap()).unwrap();
    let head = env.rt.block_on(env.s3.head(&key("moved.bin"))).expect("head");
    assert_eq!(head.size, 20 << 20);
    assert_eq!(head.user_meta.get("mode").map(String::as_str), Some("33152"), "0100600");

    // A directory holding one is renamed; cp -p sets mode and times on the open file (its
    // multipart upload has started: the metadata follows by a copy); rsync -a sets them on
    // a closed temporary file, then renames it.
    m.ok("mkdir d && mv moved.bin d/ && mv d e");
    m.ok(&format!("cp -p {local} e/p.bin && rsync -a {local} e/r.bin"));
    for f in ["e/moved.bin", "e/p.bin", "e/r.bin"] {
        m.ok(&format!("cmp {local} {f}"));
    }
    assert_eq!(
        m.ok("stat -c '%a %Y' e/p.bin e/r.bin"),
        "640 1614834367\n640 1614834367\n"
    );
    assert_eq!(
        env.data_keys(),
        expected_keys(&env.layout(16), &["e/moved.bin", "e/p.bin", "e/r.bin"], &["e"])
    );
    assert!(env.rt.block_on(env.s3.list_uploads("")).expect("uploads").is_empty());
    let stats = m.stats();
    assert_eq!(stats["failures"], 0, "{stats:?}");

    // Another client made a small file large; this mount still believes it small (its TTL
    // has not run out): the refused CopyObject is followed by a copy part by part.
    m.ok("echo small > e/grown.bin && stat e/grown.bin >/dev/null");
    let body = std::fs::read(&local).expect("local");
    env.rt
        .block_on(
            env.s3
                .put(&key("e/grown.bin"), body.clone().into(), &Default::default()),
        )
        .expect("put");
    m.ok("mv e/grown.bin e/moved-grown.bin");
    assert_eq!(env.get(&key("e/moved-grown.bin")), body);
}

/// Issue 23: `prefixfs mount s3://b /dev/fd/N` serves a /dev/fuse descriptor that another
/// process opened and mounted (what a container runtime or a CSI driver's privileged helper
/// does); the helper unmounts, and the daemon ends.
#[test]
fn a_mount_from_a_passed_fuse_descriptor() {
    use std::os::fd::AsRawFd;
    /// Unmounts the helper's mount and stops the daemon, also when the test fails.
    struct Helper {
        dir: std::path::PathBuf,
        child: Option<std::process::Child>,
    }
    impl Drop for Helper {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let env = Env::embedded();
    let dir = env.subdir("passed");
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .expect("/dev/fuse");
    let fd = fuse.as_raw_fd();
    let target = std::ffi::CString::new(dir.to_str().expect("path")).expect("path");
    let data = std::ffi::CString::new(format!(
        "fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions"
    ))
    .expect("options");
    // SAFETY: plain mount(2) with NUL-terminated strings that outlive the call.
    let mounted = unsafe {
        libc::mount(
            c"prefixfs-helper".as_ptr(),
            target.as_ptr(),
            c"fuse.prefixfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    assert_eq!(mounted, 0, "mount(2): {}", std::io::Error::last_os_error());
    let mut helper = Helper {
        dir: dir.clone(),
        child: None,
    };
    // The daemon inherits the descriptor.
    // SAFETY: clears close-on-exec on a descriptor this test owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let log = env.dir.path().join("passed.log");
    let child = env
        .prefixfs()
        .args([
            "mount",
            "s3://test/data",
            &format!("/dev/fd/{fd}"),
            "--foreground",
            "--init",
        ])
        .arg("--cache-dir")
        .arg(env.dir.path().join("cache-passed"))
        .args(env.conn_args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("prefixfs");
    helper.child = Some(child);
    drop(fuse); // the helper's copy: the daemon holds the connection now
    let out = common::run_sh(
        &dir,
        "echo hello > hello.txt && mkdir -p d && cp hello.txt d/ && cat d/hello.txt",
    );
    assert_eq!(
        out.stdout,
        "hello\n",
        "{} {}",
        out.stderr,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let layout = env.layout(16);
    let keys = env.data_keys();
    for p in ["hello.txt", "d/hello.txt"] {
        let key = layout.file_key(&RelPath::parse(p).unwrap()).unwrap();
        assert!(keys.contains(&key), "{p}: {keys:?}");
    }
    // The helper unmounts; the session ends and the daemon exits cleanly.
    assert!(
        std::process::Command::new("umount")
            .arg(&dir)
            .status()
            .expect("umount")
            .success()
    );
    let mut child = helper.child.take().expect("child");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the daemon outlived its mount");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The standard headers of the object behind `path` (16 prefixes), as S3 answers a HEAD.
fn headers_of(env: &Env, path: &str) -> prefixfs::store::Headers {
    let key = env.layout(16).file_key(&RelPath::parse(path).unwrap()).unwrap();
    env.rt.block_on(env.s3.head(&key)).expect("head").headers
}

/// Issue 23: objects written through the mount get the Content-Type their name says (as
/// s3fs does), one PUT or one multipart upload as before; a rename keeps the object's own;
/// `--content-type none` leaves S3's default.
fn new_objects_get_the_content_type_of_their_name(env: Env) {
    let content_type = |p: &str| headers_of(&env, p).content_type.unwrap_or_default();
    let mut m = env.mount(16, &[]);
    m.ok("echo '<p>hi</p>' > page.html && echo '{}' > data.json && echo x > README");
    m.ok("head -c 20000000 /dev/zero > big.mp4"); // a multipart upload
    assert_eq!(content_type("page.html"), "text/html");
    assert_eq!(content_type("data.json"), "application/json");
    assert_eq!(content_type("big.mp4"), "video/mp4");
    assert_ne!(content_type("README"), "text/html");
    m.ok("mv page.html renamed.txt && chmod 600 renamed.txt");
    assert_eq!(
        content_type("renamed.txt"),
        "text/html",
        "a rename keeps the object's own"
    );
    drop(m);
    let mut m = env.mount(16, &["--content-type", "none"]);
    m.ok("echo '<p>plain</p>' > other.html");
    assert_ne!(content_type("other.html"), "text/html");
}

/// Issue 23: `--storage-class` puts every new object (one PUT, a multipart upload) in that
/// class; a rename keeps the object's own (CopyObject names it: S3 makes a copy STANDARD
/// otherwise); the server stores and answers it.
fn new_objects_get_the_storage_class_asked_for(env: Env) {
    let class = |p: &str| headers_of(&env, p).storage_class.unwrap_or_else(|| "STANDARD".into());
    let mut m = env.mount(16, &["--storage-class", "STANDARD_IA"]);
    m.ok("echo small > small.txt && head -c 20000000 /dev/zero > big.bin");
    assert_eq!(class("small.txt"), "STANDARD_IA");
    assert_eq!(class("big.bin"), "STANDARD_IA");
    drop(m);
    let mut m = env.mount(16, &[]);
    m.ok("echo plain > plain.txt && mv small.txt moved.txt && chmod 600 big.bin");
    assert_eq!(class("plain.txt"), "STANDARD", "without the flag: the bucket's default");
    assert_eq!(class("moved.txt"), "STANDARD_IA", "a rename keeps the object's class");
    assert_eq!(class("big.bin"), "STANDARD_IA", "so does a change of mode");
}
