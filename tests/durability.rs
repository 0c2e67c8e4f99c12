//! What is acknowledged to a program stays done when S3 misbehaves: unlinks S3 refuses are
//! kept, retried, reported at rmdir/fsync/unmount and finished by the next mount; a completed
//! upload whose answer was lost is not reported as a failure.

mod common;

use common::*;
use prefixfs::layout::RelPath;

fn key(env: &Env, path: &str) -> String {
    env.layout(16).file_key(&RelPath::parse(path).unwrap()).unwrap()
}

#[test]
fn an_unlink_s3_refuses_stays_done_fails_fsync_and_rmdir_and_is_sent_later() {
    let env = Env::embedded();
    let mut m = env.mount(16, &["--max-attempts", "2"]);
    m.ok("mkdir d && echo x > d/a && echo y > d/b && echo z > d/c");
    let (a, b, c) = (key(&env, "d/a"), key(&env, "d/b"), key(&env, "d/c"));

    // S3 refuses the delete: the unlink was acknowledged, so the file stays gone here, and
    // the failure reaches the programs that ask whether it is durable.
    env.faults.set_fail_deletes(true);
    m.ok("rm d/a && test ! -e d/a");
    let sync = m.sh("sync d");
    assert_ne!(sync.code, 0, "fsync of the directory must report the failed delete");
    assert!(sync.stderr.contains("Input/output error"), "{}", sync.stderr);
    assert_eq!(m.ok("ls d"), "b\nc\n", "the unlinked file does not come back");
    assert!(env.data_keys().contains(&a), "S3 still has it");
    let rmdir = m.sh("rm d/b d/c && rmdir d");
    assert_ne!(rmdir.code, 0, "rmdir must report the failed deletes");
    assert!(rmdir.stderr.contains("Input/output error"), "{}", rmdir.stderr);
    assert_eq!(m.ok("ls d"), "", "still deleted in this mount");

    // S3 recovers: the next barrier sends what failed.
    env.faults.set_fail_deletes(false);
    m.ok("sync d && rmdir d");
    let keys = env.data_keys();
    for k in [&a, &b, &c] {
        assert!(!keys.contains(k), "{k} deleted once S3 took it");
    }

    // A delete that never reached S3 before unmount is journalled and sent by the next mount.
    m.ok("echo w > e && sync");
    let e = key(&env, "e");
    env.faults.set_fail_deletes(true);
    m.ok("rm e");
    m.unmount();
    assert!(env.data_keys().contains(&e));
    let log = m.log_text();
    assert!(log.contains("kept in the journal"), "{}", tail(&log, 10));
    let journal = run_sh(env.dir.path(), "cat cache/uploads/*.journal");
    assert!(
        journal.stdout.contains("\"op\":\"delete_queued\""),
        "{}",
        journal.stdout
    );
    env.faults.set_fail_deletes(false);
    let mut m2 = env.mount(16, &[]);
    assert!(!env.data_keys().contains(&e), "{}", tail(&m2.log_text(), 10));
    assert!(m2.log_text().contains("deletes_sent=1"), "{}", tail(&m2.log_text(), 10));
    assert_eq!(m2.ok("ls"), "");
}

#[test]
fn a_completed_upload_whose_answer_was_lost_is_not_a_failure() {
    let env = Env::embedded();
    let mut m = env.mount(16, &["--part-size-mib", "5"]);
    let src = env.subdir("src");
    run_sh(&src, "head -c 12000000 /dev/urandom > big.bin");
    // Every completion is applied by the server and its answer lost once: the retry finds
    // no upload, and the object in S3 is the one the parts make.
    env.faults.lose_completion_answers(3);
    for i in 0..3 {
        m.ok(&format!("cp {}/big.bin big{i}.bin", src.display()));
    }
    let want = std::fs::read(src.join("big.bin")).unwrap();
    for i in 0..3 {
        assert!(
            env.get(&key(&env, &format!("big{i}.bin"))) == want,
            "big{i}.bin whole in S3"
        );
    }
    let log = m.log_text();
    assert_eq!(log.matches("answer was lost").count(), 3, "{}", tail(&log, 20));
    assert!(!log.contains("the write is lost"));
}

/// A mount against a server that fails one request in five (500s and 503s before the
/// request, lost answers after it, dropped connections, cut-off GET bodies): what the shell
/// tools were told succeeded is what the bucket holds once the faults stop.
#[test]
fn a_mount_absorbs_injected_faults() {
    use prefixfs::server::faults::{FaultKind, FaultPlan};
    let rules = [
        "503:0.08",
        "500:0.04",
        "reset:0.03",
        "500:0.05:PutObject:after",
        "500:0.1:CompleteMultipartUpload:after",
        "truncate:0.05:GetObject",
    ];
    let plan = std::sync::Arc::new(FaultPlan::new(
        rules.iter().map(|r| r.parse().unwrap()).collect(),
        42,
        std::time::Duration::ZERO,
    ));
    plan.set_on(false);
    let env = Env::embedded_config(|c| c.fault_plan = Some(plan.clone()));
    let local = env.dir.path().join("big.bin");
    run_sh(
        env.dir.path(),
        "dd if=/dev/urandom of=big.bin bs=1M count=20 status=none",
    );
    let want_big = run_sh(env.dir.path(), "sha256sum < big.bin").stdout;
    let mut m = env.mount(16, &[]);
    m.ok("mkdir -p 2017/02/08");
    plan.set_on(true);
    m.ok("for i in $(seq 1 40); do echo line $i > 2017/02/08/f$i.log; done");
    m.ok(&format!("cp {} 2017/02/08/big.bin", local.display()));
    m.ok("rm 2017/02/08/f1.log 2017/02/08/f2.log && mv 2017/02/08/f3.log 2017/02/08/moved.log");
    assert_eq!(m.ok("sha256sum < 2017/02/08/big.bin"), want_big);
    assert_eq!(m.ok("cat 2017/02/08/f40.log"), "line 40\n");
    m.ok("sync 2017/02/08");
    plan.set_on(false);
    m.unmount();
    let fired: u64 = [
        FaultKind::InternalError,
        FaultKind::SlowDown,
        FaultKind::Reset,
        FaultKind::Truncate,
    ]
    .iter()
    .map(|k| plan.fired(*k))
    .sum();
    assert!(fired >= 10, "only {fired} faults fired");
    let mut files: Vec<String> = (4..=40).map(|i| format!("2017/02/08/f{i}.log")).collect();
    files.push("2017/02/08/moved.log".into());
    files.push("2017/02/08/big.bin".into());
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(
        env.data_keys(),
        expected_keys(&env.layout(16), &names, &["2017", "2017/02", "2017/02/08"])
    );
    assert_eq!(env.get(&key(&env, "2017/02/08/moved.log")), b"line 3\n");
    std::fs::write(
        env.dir.path().join("from-s3.bin"),
        env.get(&key(&env, "2017/02/08/big.bin")),
    )
    .unwrap();
    assert_eq!(run_sh(env.dir.path(), "sha256sum < from-s3.bin").stdout, want_big);
    println!("{fired} faults injected");
}

/// Issue 21, 1, through a mount: `rm f` is acknowledged while S3 refuses deletes, and the
/// write that replaces `f` then fails too (its bytes go to lost+found). Once S3 is healthy
/// the old content never comes back: not when the queued delete is retried, nor after a
/// remount. (Before, the write cancelled the queued delete before it was tried, and `cat f`
/// printed the old content.)
#[test]
fn an_acknowledged_rm_stays_done_when_the_write_after_it_fails() {
    use prefixfs::server::faults::FaultPlan;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let rules = ["500:1:DeleteObjects", "500:1:DeleteObject", "500:1:PutObject"];
    let plan = Arc::new(FaultPlan::new(
        rules.iter().map(|r| r.parse().expect("rule")).collect(),
        1,
        Duration::ZERO,
    ));
    plan.set_on(false);
    let env = Env::embedded_config(|c| c.fault_plan = Some(plan.clone()));
    let f = key(&env, "f");
    let mut m = env.mount(16, &["--max-attempts", "2"]);
    m.ok("echo old > f");
    plan.set_on(true);
    m.ok("rm f");
    assert_eq!(
        env.get(&f),
        b"old\n",
        "S3 refused the delete: the object is still there"
    );
    // The close fails (EIO; the shell does not report it); the bytes are kept.
    m.sh("echo new > f");
    let kept = run_sh(env.dir.path(), "sleep 0.5; cat cache/lost+found/*f");
    assert_eq!(kept.stdout, "new\n", "{}", m.log_text());
    assert_eq!(m.sh("cat f").code, 1, "f stays unlinked");
    plan.set_on(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.keys().contains(&f) {
        assert!(
            Instant::now() < deadline,
            "the queued delete never landed\n{}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(m.sh("cat f").code, 1);
    m.unmount();
    let mut again = env.mount(16, &[]);
    assert_eq!(again.sh("cat f").code, 1, "the old file came back after a remount");
    assert!(!env.keys().contains(&f));
}
