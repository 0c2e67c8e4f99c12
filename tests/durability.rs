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
