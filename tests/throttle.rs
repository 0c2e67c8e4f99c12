//! prefixfs against the partition emulator: SlowDown is absorbed (no failed operation),
//! bulk deletes are interleaved across partitions, and the counters are visible.

mod common;

use common::*;
use prefixfs::layout::RelPath;
use prefixfs::server::partitions::EmulatorConfig;
use prefixfs::store::ObjectStore;
use std::io::{Read, Write};
use std::time::Duration;

fn emulator(write_rate: f64, boundaries: Vec<String>) -> EmulatorConfig {
    EmulatorConfig {
        write_rate,
        read_rate: write_rate * 1.5,
        split_after: Duration::from_secs(3600),
        max_partitions: 64,
        boundaries,
        ..EmulatorConfig::default()
    }
}

/// Boundaries at every prefix of a 16-prefix layout under `data/`: one partition each.
fn prefix_boundaries() -> Vec<String> {
    (0..16).map(|i| format!("data/{i:x}/")).collect()
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn slowdown_is_absorbed_with_backoff_and_pacing_and_nothing_fails() {
    let env = Env::embedded_with(Some(emulator(40.0, vec![])));
    let src = env.subdir("src");
    dated_tree(&src, 4, 40);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let mut m = env.mount(
        16,
        &[
            "--metadata-ttl",
            "30",
            "--metrics-addr",
            &metrics,
            "--max-attempts",
            "30",
        ],
    );
    // 160 files, 4 writers at once, against one partition taking 40 writes a second.
    m.ok(&format!(
        "mkdir -p 2017/02 && for d in 01 02 03 04; do cp -r {}/2017/02/$d 2017/02/ & done; wait",
        src.display()
    ));
    assert_eq!(m.ok("find 2017 -type f | wc -l").trim(), "160");
    // Every byte arrived (read back through the mount, which absorbs read throttling too),
    // and the bucket holds exactly the predicted keys.
    let sums = m.ok("cat 2017/02/*/log-*.txt | sort | md5sum");
    assert_eq!(sums, run_sh(&src, "cat 2017/02/*/log-*.txt | sort | md5sum").stdout);
    std::thread::sleep(Duration::from_secs(2));
    let layout = env.layout(16);
    let files: Vec<String> = (1..=4)
        .flat_map(|d| (0..40).map(move |i| format!("2017/02/{d:02}/log-{i:03}.txt")))
        .collect();
    let dirs = [
        "2017",
        "2017/02",
        "2017/02/01",
        "2017/02/02",
        "2017/02/03",
        "2017/02/04",
    ];
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(env.data_keys(), expected_keys(&layout, &files, &dirs));
    let stats = m.stats();
    assert!(stats["throttles"] > 0, "the emulator throttled: {stats:?}");
    assert!(stats["retries"] > 0);
    assert_eq!(stats["failures"], 0, "no operation failed");
    assert!(env.emulator.as_ref().unwrap().snapshot().throttles > 0);
    // Per-prefix counters, in `prefixfs stats` and on the Prometheus endpoint.
    let text = env.prefixfs().arg("stats").arg(&m.path).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.lines().filter(|l| l.starts_with("prefix ")).count() >= 8, "{text}");
    let body = http_get(&metrics, "/metrics");
    assert!(body.contains("prefixfs_prefix_throttles_total{prefix="), "{body}");
    assert!(body.contains("prefixfs_prefix_requests_total{prefix="), "{body}");
    assert!(body.contains("prefixfs_prefix_latency_seconds_count{prefix="), "{body}");
}

/// True when every pair of consecutive equal partitions sits in a tail where only that
/// partition was left.
fn interleaved(log: &[usize]) -> bool {
    log.windows(2)
        .enumerate()
        .all(|(i, w)| w[0] != w[1] || log[i..].iter().all(|p| *p == w[0]))
}

#[test]
fn bulk_delete_never_sends_two_consecutive_deletes_to_one_partition() {
    let env = Env::embedded_with(Some(emulator(5000.0, prefix_boundaries())));
    let layout = env.layout(16);
    let mut paths = Vec::new();
    for d in 1..=3 {
        for i in 0..300 {
            paths.push(format!("2017/02/{d:02}/f{i:04}"));
        }
    }
    for p in &paths {
        env.put(&layout.file_key(&RelPath::parse(p).unwrap()).unwrap(), b"x");
    }
    let emu = env.emulator.clone().unwrap();
    // prefixfs needs the descriptor.
    let init = env
        .prefixfs()
        .arg("init")
        .arg("s3://test/data")
        .args(env.conn_args())
        .output()
        .unwrap();
    assert!(init.status.success());
    let before = emu.snapshot().write_log.len();
    let out = env
        .prefixfs()
        .arg("rm")
        .arg("-r")
        .arg("s3://test/data")
        .arg("2017")
        .args(env.conn_args())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deleted 900 objects"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(env.data_keys().len(), 0);
    let log = emu.snapshot().write_log[before..].to_vec();
    assert_eq!(log.len(), 900);
    assert!(
        interleaved(&log),
        "consecutive deletes hit one partition: {:?}",
        &log[..40]
    );

    // The same keys deleted in sorted order hammer one partition after another: the check
    // above would fail for them.
    let mut keys: Vec<String> = paths
        .iter()
        .map(|p| layout.file_key(&RelPath::parse(p).unwrap()).unwrap())
        .collect();
    for k in &keys {
        env.put(k, b"x");
    }
    keys.sort();
    let before = emu.snapshot().write_log.len();
    let targets: Vec<_> = keys[..900].iter().map(prefixfs::store::DeleteTarget::any).collect();
    env.rt.block_on(env.s3.delete_many(&targets)).unwrap();
    let sorted_log = emu.snapshot().write_log[before..].to_vec();
    assert!(!interleaved(&sorted_log));
}

#[test]
fn rm_r_through_the_mount_and_partition_counters_as_json() {
    let env = Env::embedded_with(Some(emulator(5000.0, prefix_boundaries())));
    let src = env.subdir("src");
    dated_tree(&src, 1, 100);
    let mut m = env.mount(16, &[]);
    m.ok(&format!("cp -r {}/2017 .", src.display()));
    let emu = env.emulator.clone().unwrap();
    let before = emu.snapshot().write_log.len();
    m.ok("rm -r 2017");
    assert_eq!(env.data_keys().len(), 0);
    // rm unlinks one file at a time; the mount batches them into DeleteObjects with keys
    // interleaved across prefixes: no two consecutive deletes reach one partition.
    // (Each rmdir sends what is queued before it returns, so the file deletes of the one
    // directory are what is available to interleave; the markers come one per rmdir.)
    let snap = emu.snapshot();
    let files: Vec<usize> = snap.write_log[before..]
        .iter()
        .zip(&snap.write_keys[before..])
        .filter(|(_, k)| !k.ends_with('/'))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(files.len(), 100);
    assert_eq!(
        snap.write_log.len() - before,
        103,
        "and the markers of 2017, 2017/02, 2017/02/01"
    );
    assert!(interleaved(&files), "consecutive deletes hit one partition: {files:?}");
    let stats = m.stats();
    assert!(stats["requests_delete_objects"] < 30, "batched: {stats:?}");
    // Three DeleteObjects: the start-up probes' (does the server enforce If-None-Match? does
    // it honour If-Match on DeleteObject?); none of the unlinks'.
    assert_eq!(stats["requests_delete"], 3, "{stats:?}");

    // `prefixfs serve --emulate-partitions --stats-addr` shows the counters as JSON.
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (s3_port, stats_port) = (port(()), port(()));
    let mut serve = env
        .prefixfs()
        .args([
            "serve",
            "--emulate-partitions",
            "--write-rate",
            "10",
            "--bucket",
            "jsonbucket",
        ])
        .arg("--data-dir")
        .arg(env.dir.path().join("serve"))
        .args([
            "--addr",
            &format!("127.0.0.1:{s3_port}"),
            "--stats-addr",
            &format!("127.0.0.1:{stats_port}"),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut body = String::new();
    for _ in 0..100 {
        if std::net::TcpStream::connect(format!("127.0.0.1:{stats_port}")).is_ok() {
            body = http_get(&format!("127.0.0.1:{stats_port}"), "/partitions");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        body.contains("\"partitions\"") && body.contains("\"write_throttles\""),
        "{body}"
    );
}

#[test]
fn slowdown_in_a_200_body_of_a_completion_is_retried() {
    use prefixfs::store::retry::{RetryConfig, RetryingStore};
    use prefixfs::store::stats::RequestStats;
    let env = Env::embedded_with(Some(emulator(5.0, vec![])));
    let stats = std::sync::Arc::new(RequestStats::default());
    let aws = env
        .rt
        .block_on(prefixfs::store::aws::AwsStore::connect(&client_config(&env.endpoint)));
    let s3 = RetryingStore::new(
        aws,
        RetryConfig {
            max_attempts: 20,
            ..RetryConfig::default()
        },
        stats.clone(),
        prefixfs::store::one_prefix(),
    );
    let id = env
        .rt
        .block_on(s3.create_multipart("big", &Default::default()))
        .unwrap();
    let part = bytes::Bytes::from(vec![1u8; 5 * 1024 * 1024]);
    let e1 = env.rt.block_on(s3.upload_part("big", &id, 1, part)).unwrap();
    // Drain the partition's write tokens so the completion is refused.
    while env
        .emulator
        .as_ref()
        .unwrap()
        .admit(prefixfs::server::partitions::Access::Write, "big")
    {}
    let before = stats.snapshot().retries;
    env.rt.block_on(s3.complete_multipart("big", &id, &[(1, e1)])).unwrap();
    assert!(
        stats.snapshot().retries > before,
        "the 200-with-SlowDown answer was seen and retried"
    );
    assert_eq!(env.get("big").len(), 5 * 1024 * 1024);
}
