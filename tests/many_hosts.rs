//! Many hosts, one bucket: two mounts of one bucket with separate caches, as two machines
//! would have, on the embedded server and on moto's. Exclusive creates and `mkdir` are
//! decided by S3 (conditional writes), so every race has exactly one winner.

mod common;

use common::*;
use prefixfs::layout::RelPath;
use std::process::{Command, Stdio};
use std::time::Duration;

on_every_backend!(
    exclusive_creates_across_two_mounts_have_exactly_one_winner,
    mkdir_races_across_two_mounts_have_exactly_one_winner,
    concurrent_small_writers_to_one_path_leave_one_whole_version,
    changes_on_one_mount_are_seen_on_the_other_within_a_ttl,
    an_exclusively_created_file_never_overwrites_what_another_host_put_there,
    another_clients_object_is_read_whole_and_outlives_a_stale_unlink,
);

/// Issue 21, 3 and 7: another S3 client replaces a file this mount has cached (within the
/// TTL). A read gets one version whole, or fails (ESTALE) and the next open reads the new
/// one, never the new bytes cut to the old size; an `rm` of the version this mount saw
/// leaves the object another client wrote since, where the server checks delete ETags.
fn another_clients_object_is_read_whole_and_outlives_a_stale_unlink(env: Env) {
    let mut a = env.mount_host("host-a", 16, &["--metadata-ttl", "600"]);
    let key = env.layout(16).file_key(&RelPath::parse("f").unwrap()).unwrap();
    let out = a.sh("echo old > f; cat f; stat -c %s f");
    assert_eq!(out.stdout, "old\n4\n", "{}", out.stderr);
    env.put(&key, b"new new\n");
    let first = a.sh("cat f 2>&1 || true");
    assert!(
        first.stdout == "new new\n" || first.stdout.contains("Stale file handle"),
        "a read of a replaced file must be one version whole or ESTALE, not {:?}",
        first.stdout
    );
    let second = a.sh("cat f");
    assert_eq!(second.stdout, "new new\n", "{}", second.stderr);
    // The mount knows this version now; another client replaces it again, then rm.
    env.put(&key, b"third\n");
    a.sh("rm f; sync .");
    let log = a.log_text();
    if log.contains("honours ETags in DeleteObjects") {
        assert_eq!(
            env.get(&key),
            b"third\n",
            "the other client's object stays: {}",
            tail(&log, 10)
        );
    } else {
        assert!(
            log.contains("ignores the ETags of DeleteObjects") || log.contains("ignores If-Match on deletes"),
            "{}",
            tail(&log, 20)
        );
    }
    a.assert_alive();
}

fn an_exclusively_created_file_never_overwrites_what_another_host_put_there(env: Env) {
    use std::io::{BufRead, BufReader, Write};
    let mut a = env.mount_host("host-a", 16, &[]);
    let key = env.layout(16).file_key(&RelPath::parse("job.lock").unwrap()).unwrap();
    let script = r#"
import os, errno, sys
fd = os.open('job.lock', os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
print('created', flush=True)
sys.stdin.readline()
os.write(fd, b'pid 1\n')
try:
    os.close(fd); print('close ok', flush=True)
except OSError as e:
    print('close', errno.errorcode[e.errno], flush=True)
"#;
    let mut child = Command::new("timeout")
        .args(["60", "python3", "-c", script])
        .current_dir(&a.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "created");
    // The lock exists in S3 at once (empty), so other hosts' exclusive creates fail...
    assert_eq!(env.get(&key), b"");
    // ...but another client replaces it anyway, between the create and the close.
    env.put(&key, b"someone else\n");
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "close EIO");
    assert!(child.wait().unwrap().success());
    assert_eq!(
        env.get(&key),
        b"someone else\n",
        "the other host's object is not overwritten"
    );
    let kept = run_sh(env.dir.path(), "sleep 0.5; cat host-a/lost+found/*job.lock");
    assert_eq!(kept.stdout, "pid 1\n", "{}", tail(&a.log_text(), 10));
    a.assert_alive();
}

/// Starts `script` in `dir` under sh, without waiting.
fn start(dir: &std::path::Path, script: &str) -> std::process::Child {
    Command::new("timeout")
        .args(["30", "sh", "-c", script])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh")
}

const RACES: usize = 100;

fn exclusive_creates_across_two_mounts_have_exactly_one_winner(env: Env) {
    let mut a = env.mount_host("host-a", 16, &[]);
    let mut b = env.mount_host("host-b", 16, &[]);
    assert!(
        a.log_text().contains("exclusive creates are enforced"),
        "{}",
        a.log_text()
    );
    a.ok("mkdir locks");
    std::thread::sleep(Duration::from_millis(100));
    let mut winners = Vec::new();
    for i in 0..RACES {
        // What lock files of daemons and cron jobs do: `set -C` makes `>` use O_EXCL.
        // Either host starts first, in turn, so that both get to win.
        let (ca, cb) = (
            format!("set -C; echo A > locks/l{i}"),
            format!("set -C; echo B > locks/l{i}"),
        );
        let (mut pa, mut pb) = if i % 2 == 0 {
            let pa = start(&a.path, &ca);
            (pa, start(&b.path, &cb))
        } else {
            let pb = start(&b.path, &cb);
            (start(&a.path, &ca), pb)
        };
        let (wa, wb) = (pa.wait().unwrap().success(), pb.wait().unwrap().success());
        assert!(wa != wb, "race {i}: exactly one winner, got a={wa} b={wb}");
        winners.push(if wa { "A" } else { "B" });
    }
    // The object of each lock holds its winner's word (the loser never overwrote it).
    let layout = env.layout(16);
    for (i, w) in winners.iter().enumerate() {
        let key = layout
            .file_key(&RelPath::parse(&format!("locks/l{i}")).unwrap())
            .unwrap();
        assert_eq!(env.get(&key), format!("{w}\n").as_bytes(), "lock {i}");
    }
    let a_wins = winners.iter().filter(|w| **w == "A").count();
    eprintln!(
        "{RACES} exclusive-create races: A won {a_wins}, B won {}",
        RACES - a_wins
    );
    a.assert_alive();
    b.assert_alive();
}

fn mkdir_races_across_two_mounts_have_exactly_one_winner(env: Env) {
    let a = env.mount_host("host-a", 16, &[]);
    let b = env.mount_host("host-b", 16, &[]);
    for i in 0..RACES / 2 {
        let mut pa = start(&a.path, &format!("mkdir d{i}"));
        let mut pb = start(&b.path, &format!("mkdir d{i}"));
        let (wa, wb) = (pa.wait().unwrap().success(), pb.wait().unwrap().success());
        assert!(wa != wb, "mkdir race {i}: exactly one winner, got a={wa} b={wb}");
    }
}

fn concurrent_small_writers_to_one_path_leave_one_whole_version(env: Env) {
    concurrent_writers(env, 1_000_000);
}

/// Multipart uploads of one key from two hosts at once. Not on moto: its server loses one
/// of two concurrent multipart uploads of a key (KeyError on the upload id at completion,
/// answered 500), which S3 does not.
#[test]
fn concurrent_multipart_writers_to_one_path_leave_one_whole_version() {
    concurrent_writers(Env::embedded(), 12_000_000);
}

/// Two hosts write `size` bytes to one path at once. Each upload names the version it
/// replaces (issue 21: a 412 means someone else wrote, and their object stays), so of two
/// writers that saw the same version one close fails (EIO) and its bytes go whole to that
/// host's lost+found. Never a mix, never a silent loss: the object is a writer's whose close
/// succeeded, and every writer's bytes are in S3 or in its lost+found.
fn concurrent_writers(env: Env, size: usize) {
    let mut a = env.mount_host("host-a", 16, &["--part-size-mib", "5"]);
    let b = env.mount_host("host-b", 16, &["--part-size-mib", "5"]);
    let mut failed = [0usize; 2];
    for round in 0..3 {
        let mut pa = start(&a.path, &format!("head -c {size} /dev/zero | tr '\\0' A > shared.bin"));
        let mut pb = start(&b.path, &format!("head -c {size} /dev/zero | tr '\\0' B > shared.bin"));
        let (sa, sb) = (pa.wait().unwrap(), pb.wait().unwrap());
        // The kernel sends the release after close returned: the next round's open must not
        // find this round's file still open (it would take over its state, failed upload
        // and all, instead of the release keeping it in lost+found).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while [&a, &b].iter().any(|m| m.stats().get("open_files") != Some(&0)) {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: a release never ended"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let context = || {
            format!(
                "{}\n{}\n{}",
                tail(&a.log_text(), 8),
                tail(&b.log_text(), 8),
                tail(
                    &std::fs::read_to_string(env.dir.path().join("moto.log")).unwrap_or_default(),
                    30
                )
            )
        };
        assert!(
            sa.success() || sb.success(),
            "round {round}: a {sa}, b {sb}\n{}",
            context()
        );
        let key = env.layout(16).file_key(&RelPath::parse("shared.bin").unwrap()).unwrap();
        let body = env.get(&key);
        assert_eq!(body.len(), size, "round {round}");
        let first = body[0];
        assert!(body.iter().all(|c| *c == first), "round {round}: a mix of both writers");
        let winner = if first == b'A' { &sa } else { &sb };
        assert!(
            winner.success(),
            "round {round}: the object is from a writer whose close failed"
        );
        for (i, ok) in [sa.success(), sb.success()].into_iter().enumerate() {
            failed[i] += usize::from(!ok);
        }
    }
    // Each failed close left its bytes, whole, in its host's lost+found.
    for (i, host) in ["host-a", "host-b"].into_iter().enumerate() {
        let letter = if i == 0 { 'A' } else { 'B' };
        let kept = run_sh(
            env.dir.path(),
            &format!(
                "sleep 0.5; for f in {host}/lost+found/*shared.bin; do [ -e \"$f\" ] && tr -d {letter} < \"$f\" | wc -c && wc -c < \"$f\"; done; true"
            ),
        );
        let counts: Vec<usize> = kept.stdout.split_whitespace().map(|n| n.parse().unwrap()).collect();
        assert_eq!(counts.len(), 2 * failed[i], "{host}: {}", kept.stdout);
        for pair in counts.chunks(2) {
            assert_eq!(pair, [0, size], "{host}: a kept copy is whole and its own");
        }
    }
    a.assert_alive();
}

fn changes_on_one_mount_are_seen_on_the_other_within_a_ttl(env: Env) {
    let ttl = ["--metadata-ttl", "1"];
    let mut a = env.mount_host("host-a", 16, &ttl);
    let mut b = env.mount_host("host-b", 16, &ttl);
    let settle = || std::thread::sleep(Duration::from_millis(1500));
    a.ok("mkdir -p 2024/01 && echo one > 2024/01/x.txt");
    settle();
    assert_eq!(b.ok("cat 2024/01/x.txt"), "one\n", "created");
    a.ok("echo two > 2024/01/x.txt");
    settle();
    assert_eq!(b.ok("cat 2024/01/x.txt"), "two\n", "overwritten");
    a.ok("mv 2024/01/x.txt 2024/01/y.txt");
    settle();
    assert_eq!(b.ok("ls 2024/01"), "y.txt\n", "renamed");
    b.ok("rm 2024/01/y.txt && sync 2024/01");
    settle();
    assert_eq!(a.ok("ls 2024/01"), "", "removed");
}

/// Issue 21's soak: two mounts of one bucket and another S3 client writing beside them,
/// while the server fails about one request in ten (refused, or applied with the answer
/// lost). Every acknowledged write and unlink, and every object the other client wrote, is
/// accounted for once the faults stop: 0 lost, 0 resurrected, 0 torn reads, 0 double
/// winners of an exclusive create.
#[test]
fn two_mounts_and_an_outside_writer_under_faults_lose_nothing() {
    use prefixfs::server::faults::{FaultKind, FaultPlan};
    use prefixfs::store::ObjectStore;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    let rules = [
        "503:0.04",
        "500:0.04:PutObject:after",
        "500:0.05:DeleteObjects",
        "500:0.05:DeleteObjects:after",
        "500:0.04:DeleteObject",
        "500:0.04:CopyObject:after",
        "truncate:0.05:GetObject",
    ];
    let plan = Arc::new(FaultPlan::new(
        rules.iter().map(|r| r.parse().expect("rule")).collect(),
        7,
        Duration::ZERO,
    ));
    let env = Env::embedded_config(|c| c.fault_plan = Some(plan.clone()));
    let layout = env.layout(16);
    let key = |p: &str| layout.file_key(&RelPath::parse(p).unwrap()).unwrap();
    // The other client retries as S3 clients do, until its write is acknowledged.
    let outside_put = |env: &Env, path: &str, body: &[u8]| {
        let (k, meta) = (key(path), Default::default());
        for _ in 0..30 {
            let put = env.s3.put(&k, bytes::Bytes::copy_from_slice(body), &meta);
            if env.rt.block_on(put).is_ok() {
                return;
            }
        }
        panic!("the outside writer could not write {path}");
    };
    let mut a = env.mount_host("host-a", 16, &["--metadata-ttl", "1"]);
    let mut b = env.mount_host("host-b", 16, &["--metadata-ttl", "1"]);
    // What each path must hold at the end (None: absent); a path whose operation failed
    // may hold its old or its new state.
    let mut expect: BTreeMap<String, Vec<Option<Vec<u8>>>> = BTreeMap::new();
    let status = |out: &Output| -> Vec<bool> { out.stdout.lines().map(|l| l == "ok").collect() };

    // 1. Each mount writes 30 files of its own.
    for (m, d) in [(&mut a, "a"), (&mut b, "b")] {
        let out = m.sh(&format!(
            "mkdir -p {d} 2>/dev/null; for i in $(seq -f %02g 0 29); do echo {d}-$i > {d}/f$i 2>/dev/null && echo ok || echo failed; done"
        ));
        for (i, ok) in status(&out).into_iter().enumerate() {
            let content = Some(format!("{d}-{i:02}\n").into_bytes());
            let alts = if ok { vec![content] } else { vec![None, content] };
            expect.insert(format!("{d}/f{i:02}"), alts);
        }
    }
    // 2. A unlinks ten of its files and B ten of its own; the outside client then writes
    //    five of each name again. Their objects must survive the deletes' retries.
    for (m, d) in [(&mut a, "a"), (&mut b, "b")] {
        let out = m.sh(&format!(
            "for i in $(seq -f %02g 0 9); do rm {d}/f$i 2>/dev/null && echo ok || echo failed; done"
        ));
        for (i, ok) in status(&out).into_iter().enumerate() {
            let p = format!("{d}/f{i:02}");
            if ok {
                expect.insert(p, vec![None]);
            } else {
                expect.entry(p).or_default().push(None);
            }
        }
        for i in 5..10 {
            let p = format!("{d}/f{i:02}");
            let body = format!("outside {p}\n").into_bytes();
            outside_put(&env, &p, &body);
            expect.insert(p, vec![Some(body)]);
        }
    }
    // 3. Twenty exclusive-create races between the two mounts: at most one winner each
    //    (a failed create may leave neither), and the winner's content is what is there.
    let race = |dir: &std::path::Path, who: &str| {
        start(
            dir,
            &format!(
                "for i in $(seq -f %02g 0 19); do (set -C; echo {who} > locks/l$i) 2>/dev/null && echo $i >> ../won-{who}; done; true"
            ),
        )
    };
    // The directory first, until it exists (its mkdir may meet a fault).
    a.ok("for t in 1 2 3 4 5; do mkdir -p locks 2>/dev/null && break; sleep 0.2; done; test -d locks");
    b.ok("for t in $(seq 20); do test -d locks && break; sleep 0.2; done; test -d locks");
    let (mut ra, mut rb) = (race(&a.path, "a"), race(&b.path, "b"));
    assert!(ra.wait().unwrap().success() && rb.wait().unwrap().success());
    let won = |who: &str| -> Vec<String> {
        std::fs::read_to_string(a.path.parent().unwrap().join(format!("won-{who}")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let (won_a, won_b) = (won("a"), won("b"));
    let double: Vec<&String> = won_a.iter().filter(|i| won_b.contains(i)).collect();
    assert!(double.is_empty(), "exclusive creates with two winners: {double:?}");
    for (who, list) in [("a", &won_a), ("b", &won_b)] {
        for i in list {
            expect.insert(format!("locks/l{i}"), vec![Some(format!("{who}\n").into_bytes())]);
        }
    }
    // 4. The other client replaces files the mounts have read within their TTL: every read
    //    is one version whole, or ESTALE.
    for i in 0..10 {
        outside_put(&env, &format!("o/r{i}"), &[b'x'; 1000]);
    }
    a.sh("cat o/r* > /dev/null 2>&1 || true");
    let mut torn = Vec::new();
    for i in 0..10 {
        let p = format!("o/r{i}");
        let body = vec![b'y'; 2000 + i];
        outside_put(&env, &p, &body);
        let out = a.sh(&format!("cat {p} 2>/dev/null | wc -c"));
        let n: usize = out.stdout.trim().parse().unwrap_or(0);
        if ![0, 1000, 2000 + i].contains(&n) {
            torn.push(format!("{p}: {n} bytes"));
        }
        expect.insert(p, vec![Some(body)]);
    }
    assert!(torn.is_empty(), "torn reads: {torn:?}");

    // The faults stop; queued and failed deletes are sent; the mounts end cleanly.
    plan.set_on(false);
    for m in [&mut a, &mut b] {
        m.ok("sync a b locks o 2>/dev/null || sync .");
    }
    a.unmount();
    b.unmount();
    let present: BTreeMap<String, Vec<u8>> = expect
        .keys()
        .filter_map(|p| {
            let k = key(p);
            env.keys().contains(&k).then(|| (p.clone(), env.get(&k)))
        })
        .collect();
    let mut wrong = Vec::new();
    for (p, alts) in &expect {
        let now = present.get(p).cloned();
        if !alts.contains(&now) {
            wrong.push(format!(
                "{p}: {:?}",
                now.map(|b| String::from_utf8_lossy(&b).into_owned())
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "lost, resurrected or overwritten: {wrong:?}\n{}",
        tail(&a.log_text(), 20)
    );
    eprintln!(
        "faults injected: {}; paths checked: {}; exclusive-create winners a {} b {}",
        [FaultKind::InternalError, FaultKind::SlowDown, FaultKind::Truncate]
            .into_iter()
            .map(|k| plan.fired(k))
            .sum::<u64>(),
        expect.len(),
        won_a.len(),
        won_b.len()
    );
}
