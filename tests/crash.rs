//! `kill -9` of the daemon in the middle of an operation. After the next mount (same cache
//! directory) every file is absent, whole old or whole new content, never a mix; no
//! incomplete multipart upload survives; no acknowledged unlink is lost.

mod common;

use common::*;
use prefixfs::layout::RelPath;
use prefixfs::store::ObjectStore;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn key(env: &Env, path: &str) -> String {
    env.layout(16).file_key(&RelPath::parse(path).unwrap()).unwrap()
}

/// The embedded server answering 5 ms late, so that operations last long enough to be
/// interrupted.
fn slow_env() -> Env {
    Env::embedded_config(|c| c.latency = Duration::from_millis(5))
}

fn sha(dir: &std::path::Path, file: &str) -> String {
    run_sh(dir, &format!("sha256sum < {file}")).stdout
}

fn uploads(env: &Env) -> usize {
    env.rt.block_on(env.s3.list_uploads("")).unwrap().len()
}

/// Runs `script` in the mount, waits until `ready` holds, kills the daemon with SIGKILL,
/// and cleans the dead mount up.
fn crash_during(env: &Env, m: &mut Mount, script: &str, ready: impl Fn() -> bool) {
    let mut op: Child = Command::new("timeout")
        .args(["60", "sh", "-c", script])
        .current_dir(&m.path)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "`{script}` never reached the point to crash at"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut daemon = m.child.take().unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let _ = op.wait();
    m.unmount();
    let _ = env;
}

#[test]
fn a_streamed_write_and_an_o_trunc_rewrite_killed_midway_leave_old_or_nothing() {
    let env = slow_env();
    let d = env.dir.path();
    run_sh(d, "dd if=/dev/urandom of=old.bin bs=1M count=6 status=none");
    run_sh(d, "dd if=/dev/urandom of=new.bin bs=1M count=40 status=none");
    let (old, new) = (sha(d, "old.bin"), sha(d, "new.bin"));
    let mut m = env.mount(16, &["--part-size-mib", "5"]);
    m.ok(&format!("cp {}/old.bin rewritten.bin", d.display()));
    let script = format!(
        "cp {0}/new.bin fresh.bin & dd if={0}/new.bin of=rewritten.bin bs=1M status=none; wait",
        d.display()
    );
    // Killed as soon as both uploads exist in S3, journalled or not yet: an upload S3 made
    // just before the crash is found by the intent the journal recorded before asking.
    crash_during(&env, &mut m, &script, || uploads(&env) >= 2);
    let mut m = env.mount(16, &["--part-size-mib", "5"]);
    assert_eq!(uploads(&env), 0, "the next mount aborted the crashed uploads");
    // `cp` creates with O_EXCL, which makes the (empty) object at open: absent, that empty
    // object, or the whole new content.
    let empty = sha(d, "/dev/null");
    let fresh = m.sh("sha256sum < fresh.bin");
    assert!(
        fresh.code != 0 || fresh.stdout == new || fresh.stdout == empty,
        "fresh.bin is absent, empty or whole"
    );
    let rewritten = m.ok("sha256sum < rewritten.bin");
    assert!(
        rewritten == old || rewritten == new,
        "rewritten.bin is the old or the new content"
    );
    assert!(
        m.log_text().contains("aborted") || m.log_text().contains("abort"),
        "{}",
        tail(&m.log_text(), 20)
    );
}

#[test]
fn an_in_place_patch_of_a_large_file_killed_at_close_leaves_old_or_new() {
    let env = slow_env();
    let d = env.dir.path();
    run_sh(
        d,
        "dd if=/dev/urandom of=base.bin bs=1M count=20 status=none && dd if=/dev/urandom of=patch.bin bs=1k count=300 status=none",
    );
    let old = sha(d, "base.bin");
    run_sh(
        d,
        "cp base.bin patched.bin && dd if=patch.bin of=patched.bin bs=1k seek=10000 conv=notrunc status=none",
    );
    let new = sha(d, "patched.bin");
    let mut m = env.mount(16, &["--part-size-mib", "5"]);
    m.ok(&format!("cp {}/base.bin big.bin", d.display()));
    let script = format!(
        "dd if={}/patch.bin of=big.bin bs=1k seek=10000 conv=notrunc status=none",
        d.display()
    );
    crash_during(&env, &mut m, &script, || uploads(&env) >= 1);
    let mut m = env.mount(16, &["--part-size-mib", "5"]);
    assert_eq!(uploads(&env), 0);
    let got = m.ok("sha256sum < big.bin");
    assert!(got == old || got == new, "big.bin is the old or the patched content");
    std::fs::write(d.join("from-s3.bin"), env.get(&key(&env, "big.bin"))).unwrap();
    assert_eq!(sha(d, "from-s3.bin"), got);
}

#[test]
fn a_directory_rename_killed_midway_loses_no_file() {
    let env = slow_env();
    let mut m = env.mount(16, &[]);
    m.ok("mkdir d && for i in $(seq 1 80); do echo content $i > d/f$i; done");
    let moved = || {
        env.keys().iter().any(|k| {
            env.layout(16)
                .key_to_path(k)
                .is_some_and(|(p, _)| p.as_str().starts_with("e/"))
        })
    };
    crash_during(&env, &mut m, "mv d e", moved);
    let mut m = env.mount(16, &[]);
    for i in 1..=80 {
        let want = format!("content {i}\n");
        let old = m.sh(&format!("cat d/f{i}"));
        let new = m.sh(&format!("cat e/f{i}"));
        assert!(
            ((old.code == 0) && old.stdout == want) || ((new.code == 0) && new.stdout == want),
            "f{i} is whole under d/ or e/"
        );
        for o in [&old, &new] {
            assert!(o.code != 0 || o.stdout == want, "f{i} is never mixed");
        }
    }
}

#[test]
fn unlinks_acknowledged_before_a_kill_are_sent_by_the_next_mount() {
    let env = slow_env();
    let mut m = env.mount(16, &[]);
    m.ok("mkdir d && for i in $(seq 1 30); do echo $i > d/f$i; done");
    let before = env.data_keys().len();
    // rm returns once each delete is queued and journalled; the daemon dies before the
    // batch goes out (or while it does).
    crash_during(&env, &mut m, "rm d/f*; sleep 5", || {
        run_sh(env.dir.path(), "cat cache/uploads/*.journal 2>/dev/null")
            .stdout
            .matches("delete_queued")
            .count()
            >= 30
    });
    let _m = env.mount(16, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.data_keys().iter().any(|k| k.contains("/d/f")) {
        assert!(
            Instant::now() < deadline,
            "the journalled deletes were not sent: {:?}",
            env.data_keys()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(env.data_keys().len(), before - 30);
}

/// The data cache (`--data-cache`) killed while it fills: a block is renamed into place only
/// once whole, so the next mount finds whole blocks (each checked against its CRC32C) and
/// the block being written in `tmp/`, which it removes; the file reads right, the blocks
/// found cost no GET.
#[test]
fn a_data_cache_killed_while_it_fills_keeps_only_whole_blocks() {
    use sha2::{Digest, Sha256};
    let env = slow_env();
    let cache = env.subdir("blocks");
    let c = cache.to_str().unwrap();
    let data: Vec<u8> = (0..64 << 20).map(|i| (i % 253) as u8).collect();
    let want = format!("{}  -\n", hex::encode(Sha256::digest(&data)));
    env.put(&key(&env, "big.bin"), &data);
    let blocks = || -> usize {
        std::fs::read_dir(&cache)
            .map(|d| {
                d.flatten()
                    .filter(|s| s.file_name().len() == 2)
                    .map(|s| std::fs::read_dir(s.path()).map_or(0, |b| b.count()))
                    .sum()
            })
            .unwrap_or(0)
    };
    let mut m = env.mount(16, &["--data-cache", c]);
    crash_during(&env, &mut m, "cat big.bin > /dev/null", || blocks() >= 8);
    let kept = blocks();
    assert!((8..64).contains(&kept), "{kept} blocks when killed");
    let mut m = env.mount(16, &["--data-cache", c]);
    assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0);
    assert_eq!(sha(&m.path, "big.bin"), want);
    let s = m.stats();
    assert_eq!(s["data_cache_discarded"], 0, "{s:?}");
    assert!(s["data_cache_hits"] >= kept as u64, "{s:?}");
    assert_eq!(blocks(), 64);
    m.assert_alive();
}
