//! Write semantics legacy programs need, on a real mount: appends, writes in place,
//! truncation, temp-file-and-rename, preserved modes and times, symlinks, tar, rsync, fsx,
//! and a close that reports a failed upload.

mod common;

use common::*;
use prefixfs::layout::RelPath;
use std::time::Duration;

fn key(env: &Env, path: &str) -> String {
    env.layout(16).file_key(&RelPath::parse(path).unwrap()).unwrap()
}

#[test]
fn appends_with_echo_accumulate() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    m.ok("mkdir -p logs && for i in 1 2 3; do echo line $i >> logs/app.log; done");
    assert_eq!(m.ok("cat logs/app.log"), "line 1\nline 2\nline 3\n");
    assert_eq!(env.get(&key(&env, "logs/app.log")), b"line 1\nline 2\nline 3\n");
}

#[test]
fn dd_notrunc_into_the_middle_of_a_large_file_matches_a_local_reference() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    let local = env.dir.path().join("ref.bin");
    let patch = env.dir.path().join("patch.bin");
    run_sh(
        env.dir.path(),
        "dd if=/dev/urandom of=ref.bin bs=1M count=50 status=none && dd if=/dev/urandom of=patch.bin bs=1k count=300 status=none",
    );
    m.ok(&format!("cp {} big.bin", local.display()));
    let before = m.stats();
    let patch_cmd = |target: &str| {
        format!(
            "dd if={} of={target} bs=1k seek=20000 conv=notrunc status=none",
            patch.display()
        )
    };
    m.ok(&patch_cmd("big.bin"));
    run_sh(env.dir.path(), &patch_cmd("ref.bin"));
    let want = run_sh(env.dir.path(), "sha256sum < ref.bin").stdout;
    assert_eq!(m.ok("sha256sum < big.bin"), want);
    // Unchanged parts were copied server-side, not sent again.
    let after = m.stats();
    assert!(
        after["requests_upload_part_copy"] > before["requests_upload_part_copy"] + 3,
        "{after:?}"
    );
    std::fs::write(env.dir.path().join("from-s3.bin"), env.get(&key(&env, "big.bin"))).unwrap();
    assert_eq!(run_sh(env.dir.path(), "sha256sum < from-s3.bin").stdout, want);
}

/// docs/REQUESTS.md, large-file rows: a file written from its start is one multipart upload
/// and nothing more (no self-copy at close for the mtime its writes moved), and reading it
/// back sends a few growing ranged GETs, not one per kernel read.
#[test]
fn a_large_file_costs_one_multipart_upload_and_a_few_ranged_gets() {
    let env = Env::embedded();
    let local = env.dir.path().join("big.bin");
    run_sh(
        env.dir.path(),
        "dd if=/dev/urandom of=big.bin bs=1M count=40 status=none",
    );
    let want = run_sh(env.dir.path(), "sha256sum < big.bin").stdout;
    {
        let mut m = env.mount(16, &[]);
        let before = m.stats();
        m.ok(&format!("dd if={} of=big.bin bs=1M status=none", local.display()));
        let after = m.stats();
        let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        assert_eq!(delta("requests_create_multipart"), 1, "{after:?}");
        assert_eq!(delta("requests_upload_part"), 5, "40 MiB in 8 MiB parts: {after:?}");
        assert_eq!(delta("requests_complete_multipart"), 1, "{after:?}");
        assert_eq!(delta("requests_copy"), 0, "no metadata self-copy at close: {after:?}");
        assert_eq!(delta("requests_put"), 0, "{after:?}");
    }
    let mut m = env.mount(16, &[]);
    m.ok("stat big.bin > /dev/null");
    let before = m.stats();
    assert_eq!(m.ok("sha256sum < big.bin"), want);
    let after = m.stats();
    let gets = after["requests_get"] - before.get("requests_get").copied().unwrap_or(0);
    // The kernel reads at most 1 MiB at a time: at least 40 reads.
    assert!((2..=24).contains(&gets), "{gets} GETs to read 40 MiB");
    std::fs::write(env.dir.path().join("from-s3.bin"), env.get(&key(&env, "big.bin"))).unwrap();
    assert_eq!(run_sh(env.dir.path(), "sha256sum < from-s3.bin").stdout, want);
}

#[test]
fn truncate_down_and_up() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    m.ok("printf 'hello world' > t.txt && truncate -s 5 t.txt");
    assert_eq!(m.ok("cat t.txt"), "hello");
    m.ok("truncate -s 8 t.txt");
    assert_eq!(m.ok("od -An -c t.txt | tr -s ' '").trim(), "h e l l o \\0 \\0 \\0");
    assert_eq!(env.get(&key(&env, "t.txt")), b"hello\0\0\0");
    m.ok("truncate -s 0 t.txt");
    assert_eq!(m.ok("stat -c %s t.txt").trim(), "0");
}

#[test]
fn sed_in_place_and_python_replace_and_copy2() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    m.ok("printf 'a=1\\nb=2\\n' > conf.ini && sed -i 's/b=2/b=3/' conf.ini");
    assert_eq!(m.ok("cat conf.ini"), "a=1\nb=3\n");
    m.ok("chmod 600 conf.ini && touch -d '2020-01-02 03:04:05' conf.ini");
    let py = r#"
import os, shutil
shutil.copy2('conf.ini', 'copy.ini')
with open('new.tmp', 'w') as f:
    f.write('replaced\n')
os.replace('new.tmp', 'conf.ini')
s = os.stat('copy.ini')
print(oct(s.st_mode & 0o777), int(s.st_mtime))
"#;
    let out = m.ok(&format!("python3 -c \"{}\"", py.replace('"', "\\\"")));
    assert_eq!(out.trim(), "0o600 1577934245");
    assert_eq!(m.ok("cat conf.ini"), "replaced\n");
    assert!(m.sh("test -e new.tmp").code != 0);
    assert_eq!(env.data_keys().len(), 2);
}

#[test]
fn cp_p_keeps_mode_and_mtime_across_a_remount() {
    let env = Env::embedded();
    let src = env.dir.path().join("src.txt");
    run_sh(
        env.dir.path(),
        "echo data > src.txt && chmod 640 src.txt && touch -d '2019-05-06 07:08:09.123456789' src.txt",
    );
    {
        let mut m = env.mount(16, &[]);
        m.ok(&format!(
            "cp -p {} kept.txt && mkdir -m 700 private && ln -s kept.txt link",
            src.display()
        ));
        assert_eq!(m.ok("stat -c '%a %Y' kept.txt").trim(), "640 1557126489");
    }
    let mut m = env.mount(16, &[]);
    assert_eq!(
        m.ok("stat -c '%a %y' kept.txt").trim(),
        "640 2019-05-06 07:08:09.123456789 +0000"
    );
    assert_eq!(m.ok("stat -c %a private").trim(), "700");
    assert_eq!(m.ok("readlink link"), "kept.txt\n");
    assert_eq!(m.ok("cat link"), "data\n");
    assert_eq!(m.ok("stat -c %F link").trim(), "symbolic link");
    m.ok("chown 1234:5678 kept.txt");
    drop(m);
    let mut m = env.mount(16, &[]);
    assert_eq!(m.ok("stat -c '%u:%g %a' kept.txt").trim(), "1234:5678 640");
    // The headers are s3fs-fuse's.
    let head = env
        .rt
        .block_on(prefixfs::store::ObjectStore::head(&env.s3, &key(&env, "kept.txt")))
        .unwrap();
    assert_eq!(head.user_meta.get("mode").map(String::as_str), Some("33184"));
    assert_eq!(head.user_meta.get("mtime").map(String::as_str), Some("1557126489"));
}

#[test]
fn tar_extract_with_symlinks_and_modes_compares_clean() {
    let env = Env::embedded();
    let src = env.subdir("tree");
    run_sh(
        &src,
        "mkdir -p a/b && echo one > a/one.txt && echo two > a/b/two.sh && chmod 755 a/b/two.sh && chmod 600 a/one.txt \
         && ln -s b/two.sh a/run && ln -s ../a/one.txt a/b/up && touch -d '2021-02-03 04:05:06' a/one.txt a/b/two.sh",
    );
    let tarball = env.dir.path().join("t.tar");
    assert_eq!(run_sh(&src, &format!("tar cf {} a", tarball.display())).code, 0);
    let mut m = env.mount(16, &[]);
    m.ok(&format!("tar xpf {}", tarball.display()));
    let diff = m.sh(&format!("tar df {}", tarball.display()));
    assert_eq!(diff.code, 0, "tar d found differences:\n{}{}", diff.stdout, diff.stderr);
    assert_eq!(m.ok("find . -type l | sort"), "./a/b/up\n./a/run\n");
}

#[test]
fn rsync_a_twice_transfers_nothing_the_second_time() {
    let env = Env::embedded();
    let src = env.subdir("src");
    dated_tree(&src, 3, 10);
    run_sh(
        &src,
        "chmod 640 2017/02/01/log-000.txt && ln -s 02/log-001.txt 2017/02/latest",
    );
    let mut m = env.mount(16, &[]);
    let first = m.ok(&format!("rsync -a --stats {}/ dst/", src.display()));
    assert!(first.contains("Number of regular files transferred: 30"), "{first}");
    let second = m.ok(&format!("rsync -a --stats {}/ dst/", src.display()));
    assert!(second.contains("Number of regular files transferred: 0"), "{second}");
    assert!(second.contains("Total transferred file size: 0 bytes"), "{second}");
    let diff = run_sh(
        env.dir.path(),
        &format!("diff -r {}/ {}/dst/", src.display(), m.path.display()),
    );
    assert_eq!(diff.code, 0, "{}{}", diff.stdout, diff.stderr);
}

#[test]
fn a_rejected_upload_fails_fsync_and_close_and_keeps_the_data() {
    use std::io::{BufRead, BufReader, Write};
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    env.faults.set_reject_writes(true);

    // fsync reports the failure; the data stays, and a later fsync delivers it.
    let script = r#"
import os, errno, sys
def sync(fd):
    try:
        os.fsync(fd); return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
fd = os.open('precious.txt', os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
os.write(fd, b'do not lose me\n')
print('fsync', sync(fd), flush=True)
sys.stdin.readline()
print('fsync', sync(fd), flush=True)
os.close(fd)
print('closed', flush=True)
"#;
    let mut child = std::process::Command::new("timeout")
        .args(["60", "python3", "-c", script])
        .current_dir(&m.path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "fsync EIO");
    env.faults.set_reject_writes(false);
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "fsync ok");
    assert_eq!(lines.next().unwrap().unwrap(), "closed");
    assert!(child.wait().unwrap().success());
    assert_eq!(env.get(&key(&env, "precious.txt")), b"do not lose me\n");

    // close reports the failure, and the bytes are kept under lost+found.
    env.faults.set_reject_writes(true);
    let script = r#"
import os, errno
fd = os.open('second.txt', os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
os.write(fd, b'kept\n')
try:
    os.close(fd); print('close ok')
except OSError as e:
    print('close', errno.errorcode[e.errno])
"#;
    let out = m.ok(&format!("python3 -c \"{}\"", script.replace('"', "\\\"")));
    assert_eq!(out.trim(), "close EIO");
    std::thread::sleep(Duration::from_millis(300));
    let kept = run_sh(env.dir.path(), "cat cache/lost+found/*second.txt");
    assert_eq!(kept.stdout, "kept\n", "{}\n{}", kept.stderr, tail(&m.log_text(), 10));
    assert!(m.log_text().contains("could not upload at close; all 5 bytes kept at"));
    env.faults.set_reject_writes(false);
}

#[test]
fn failed_uploads_are_kept_whole_in_lost_and_found() {
    let env = Env::embedded();
    let src = env.subdir("src");
    run_sh(
        &src,
        "head -c 12000000 /dev/urandom > big.bin && head -c 20971520 /dev/urandom > base.bin",
    );
    let lost = env.dir.path().join("cache/lost+found");
    let kept_files = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&lost)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };

    // A new file streamed as a multipart upload: two parts reach S3, then S3 refuses. The
    // parts cannot be read back, so the local spool is what is kept, whole.
    let mut m = env.mount(16, &["--part-size-mib", "5"]);
    env.faults.fail_writes_after(2);
    let cp = m.sh(&format!("cp {}/big.bin big.bin", src.display()));
    assert_ne!(cp.code, 0, "the failed upload is reported");
    // The kernel sends the last release after close returned.
    let settled = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while kept_files().len() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    settled(1);
    env.faults.set_reject_writes(false);
    let kept = kept_files();
    assert_eq!(kept.len(), 1, "{kept:?}\n{}", tail(&m.log_text(), 10));
    assert!(std::fs::read(&kept[0]).unwrap() == std::fs::read(src.join("big.bin")).unwrap());
    assert!(
        m.log_text().contains("all 12000000 bytes kept at"),
        "{}",
        tail(&m.log_text(), 10)
    );

    // A patch into the middle of a 20 MiB object: only the chunk around it was fetched, yet
    // the kept copy is the whole file, patched. Twice, for two kept copies of one path.
    m.ok(&format!("cp {}/base.bin base.bin", src.display()));
    drop(m);
    let mut m = env.mount(16, &["--part-size-mib", "5"]);
    let mut want = std::fs::read(src.join("base.bin")).unwrap();
    want[12_000_000] = b'X';
    env.faults.set_reject_writes(true);
    for i in 0..2 {
        let dd = m.sh("printf X | dd of=base.bin bs=1 seek=12000000 conv=notrunc status=none");
        assert_ne!(dd.code, 0, "close reports the failed upload");
        // The release comes after close returned: the next open must not find this file's
        // state still open, or both writes share one state (and one kept copy).
        settled(2 + i);
    }
    env.faults.set_reject_writes(false);
    let kept: Vec<_> = kept_files()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("base.bin"))
        .collect();
    assert_eq!(
        kept.len(),
        2,
        "two failures, two copies: {kept:?}\n{}",
        tail(&m.log_text(), 30)
    );
    for k in &kept {
        assert!(
            std::fs::read(k).unwrap() == want,
            "{} is the whole patched file",
            k.display()
        );
    }
    assert_eq!(m.log_text().matches("all 20971520 bytes kept at").count(), 2);
    assert!(env.get(&key(&env, "base.bin")) == std::fs::read(src.join("base.bin")).unwrap());
}

#[test]
fn fsx_exercises_a_file_without_mismatch() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    let ops = std::env::var("PREFIXFS_FSX_OPS").unwrap_or_else(|_| "20000".into());
    let conf = env.dir.path().join("fsx.toml");
    std::fs::write(
        &conf,
        "flen = 1048576\n[weights]\nclose_open = 1.0\nfsync = 1.0\nread = 10.0\nwrite = 10.0\nmapread = 5.0\nmapwrite = 5.0\ntruncate = 5.0\n",
    )
    .unwrap();
    let out = m.sh(&format!(
        "fsx -q -N {ops} -S 7 -f {} -P {} fsx.dat",
        conf.display(),
        env.dir.path().display()
    ));
    assert_eq!(
        out.code,
        0,
        "fsx failed:\n{}\n{}\nlog:\n{}",
        tail(&out.stdout, 30),
        tail(&out.stderr, 30),
        tail(&m.log_text(), 30)
    );
}

#[test]
fn a_directory_rename_failing_midway_leaves_every_file_readable() {
    let env = Env::embedded();
    let src = env.subdir("src");
    dated_tree(&src, 2, 20);
    let mut m = env.mount(16, &[]);
    m.ok(&format!("cp -r {}/2017 .", src.display()));
    let before = m.ok("find 2017 -type f -exec cat {} + | sort | sha256sum");
    env.faults.fail_writes_after(15);
    let out = m.sh("mv 2017 archive");
    assert_ne!(out.code, 0, "the rename must report the failure");
    assert!(out.stderr.contains("Input/output error"), "{}", out.stderr);
    env.faults.set_reject_writes(false);
    assert!(m.log_text().contains("no source object was deleted"));
    // Every file is still readable under its old name.
    assert_eq!(m.ok("find 2017 -type f -exec cat {} + | sort | sha256sum"), before);
    // And once S3 accepts writes again, the rename completes.
    m.ok("mv 2017 archive");
    assert_eq!(m.ok("find archive -type f -exec cat {} + | sort | sha256sum"), before);
    assert_eq!(m.ok("ls"), "archive\n");
}

#[test]
fn renaming_files_that_are_open_or_would_clobber() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    // An open file renamed mid-write keeps its data and its later writes.
    m.ok("exec 3>tmp.part; echo first >&3; mv tmp.part final.txt; echo second >&3; exec 3>&-");
    assert_eq!(m.ok("cat final.txt"), "first\nsecond\n");
    assert!(m.sh("test -e tmp.part").code != 0);
    assert_eq!(
        env.data_keys(),
        std::collections::BTreeSet::from([key(&env, "final.txt")])
    );
    // No-clobber renames leave the target alone.
    m.ok("echo keep > target && echo other > source && mv -n source target");
    assert_eq!(m.ok("cat target"), "keep\n");
    let out = m.ok("python3 -c \"import os; os.rename('source', 'target'); print(open('target').read(), end='')\"");
    assert_eq!(out, "other\n");
}

#[test]
fn multipart_uploads_left_by_a_crash_are_aborted_by_the_next_mount() {
    let env = Env::embedded();
    let uploads = || {
        env.rt
            .block_on(prefixfs::store::ObjectStore::list_uploads(&env.s3, ""))
            .unwrap()
    };
    let mut m = env.mount(16, &["--part-size-mib", "5"]);
    let mut writer = std::process::Command::new("timeout")
        .args(["60", "dd", "if=/dev/zero", "bs=1M", "count=2000", "status=none"])
        .arg(format!("of={}/big.bin", m.path.display()))
        .spawn()
        .unwrap();
    // Wait until the upload exists in S3 and the daemon has journalled it (it can only write
    // the journal line once S3 has answered with the upload id).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let journalled = || {
        run_sh(env.dir.path(), "cat cache/uploads/*.journal 2>/dev/null")
            .stdout
            .contains("\"op\":\"upload_started\"")
    };
    while uploads().is_empty() || !journalled() {
        assert!(std::time::Instant::now() < deadline, "no multipart upload started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The daemon dies mid-upload.
    let mut daemon = m.child.take().unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let _ = writer.wait();
    m.unmount();
    assert_eq!(uploads().len(), 1, "the crash left an incomplete upload");
    let journals = run_sh(env.dir.path(), "cat cache/uploads/*.journal");
    assert!(
        journals.stdout.contains("\"op\":\"upload_started\""),
        "{}{}",
        journals.stdout,
        journals.stderr
    );

    // Somebody else's upload in this layout, and one outside it.
    let layout_key = key(&env, "other/upload.bin");
    env.rt
        .block_on(prefixfs::store::ObjectStore::create_multipart(
            &env.s3,
            &layout_key,
            &Default::default(),
        ))
        .unwrap();
    env.rt
        .block_on(prefixfs::store::ObjectStore::create_multipart(
            &env.s3,
            "elsewhere/x",
            &Default::default(),
        ))
        .unwrap();

    // The next mount (same cache directory) aborts what the crash left, and keeps the others
    // while they are younger than --abort-uploads-older-than.
    let m2 = env.mount(16, &[]);
    let mut left: Vec<String> = uploads().into_iter().map(|u| u.key).collect();
    left.sort();
    assert_eq!(
        left,
        vec![layout_key.clone(), "elsewhere/x".to_string()],
        "{}",
        m2.log_text()
    );
    drop(m2);
    let _m3 = env.mount(16, &["--abort-uploads-older-than", "0"]);
    let left: Vec<String> = uploads().into_iter().map(|u| u.key).collect();
    assert_eq!(
        left,
        vec!["elsewhere/x".to_string()],
        "only keys of the layout are touched"
    );
}

#[test]
fn an_unlink_is_invisible_at_once_and_in_s3_after_fsync_of_the_directory() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    m.ok("mkdir d && echo x > d/a && echo y > d/b");
    // Removed, then written again under the same name before the delete was sent: the new
    // file must survive the queued delete.
    m.ok("rm d/a && test ! -e d/a && echo again > d/a && rm d/b && sync d");
    assert_eq!(m.ok("ls d"), "a\n");
    let keys = env.data_keys();
    assert!(keys.contains(&key(&env, "d/a")));
    assert!(
        !keys.contains(&key(&env, "d/b")),
        "the delete reached S3 by the fsync of d"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(env.get(&key(&env, "d/a")), b"again\n");
}

#[test]
fn a_full_local_disk_under_staging_is_enospc_not_eio() {
    let env = Env::embedded();
    // A staging directory on a 4 MiB tmpfs: a patch of 8 MiB cannot be staged.
    let small = env.subdir("small");
    assert!(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
            .arg(&small)
            .status()
            .expect("mount tmpfs")
            .success()
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _tmpfs = Unmount(small.clone());
    let mut m = env.mount_host("small/cache", 16, &[]);
    m.ok("head -c 16000000 /dev/zero > big.bin");
    let out = m.sh("head -c 8000000 /dev/urandom | dd of=big.bin bs=1M conv=notrunc iflag=fullblock status=none");
    assert_ne!(out.code, 0, "the patch cannot be staged");
    assert!(out.stderr.contains("No space left on device"), "{}", out.stderr);
    // The file as it was is still there, whole.
    assert_eq!(m.ok("wc -c < big.bin").trim(), "16000000");
}
