//! The prefix win, measured: date-shaped writes and deletes against the partition emulator,
//! through a plain layout and through prefixfs's hashed one, as ratios against a raw S3
//! client writing plain keys in the same run.
//!
//! Run: `cargo bench --bench prefix_win` (as root: it mounts FUSE). Under both split policies
//! of the emulator (demand, and SlowDowns in distinct seconds), it prints files/s, the ratio
//! hashed/plain, requests per created file by kind (retries included), SlowDowns and
//! failures, and PASS/FAIL against the targets of issue #7. Knobs (environment): SECS
//! (measured seconds, 20), WARMUP_SECS (15), WRITERS (64), WRITE_RATE (writes/s per emulated
//! partition, 20), READ_RATE (40), SPLIT_AFTER_MS (demand policy, 1000), DELETE_FILES (4000),
//! PARTS (which parts to run: policies,hot,delete).

mod common;

use common::{ACCESS as BENCH_ACCESS_KEY, BUCKET, SECRET as BENCH_SECRET_KEY, knob};
use prefixfs::layout::{Layout, RelPath};
use prefixfs::server::partitions::{EmulatorConfig, EmulatorSnapshot, SplitPolicy};
use prefixfs::server::{self, RunningServer, ServerConfig};
use prefixfs::store::ObjectStore;
use prefixfs::store::retry::{RetryConfig, RetryingStore};
use prefixfs::store::stats::RequestStats;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Server {
    rt: tokio::runtime::Runtime,
    srv: Option<RunningServer>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(emu: EmulatorConfig) -> Server {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = ServerConfig::local(dir.path().join("s3"));
        cfg.buckets.push(BUCKET.into());
        cfg.emulator = Some(emu);
        cfg.credentials = Some(server::Credentials {
            access_key: BENCH_ACCESS_KEY.into(),
            secret_key: BENCH_SECRET_KEY.into(),
        });
        let srv = rt.block_on(server::start(cfg)).expect("server");
        Server {
            rt,
            srv: Some(srv),
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        self.srv.as_ref().map(|s| s.endpoint()).unwrap_or_default()
    }

    fn emulator(&self) -> EmulatorSnapshot {
        self.srv
            .as_ref()
            .and_then(|s| s.emulator.as_ref())
            .map(|e| e.snapshot())
            .expect("emulator")
    }

    /// A raw client: the SDK with prefixfs's retries (backoff, full jitter), no layout.
    fn client(&self) -> (Arc<dyn ObjectStore>, Arc<RequestStats>) {
        let stats = Arc::new(RequestStats::default());
        let aws = self.rt.block_on(common::connect(&self.endpoint()));
        let retry = RetryConfig {
            max_attempts: 40,
            ..RetryConfig::default()
        };
        (
            Arc::new(RetryingStore::new(
                aws,
                retry,
                stats.clone(),
                prefixfs::store::one_prefix(),
            )),
            stats,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.srv.take() {
            self.rt.block_on(s.shutdown());
        }
    }
}

struct Mounted {
    path: PathBuf,
    child: Child,
}

impl Mounted {
    fn new(server: &Server, prefix_count: u32, base: &Path) -> Mounted {
        let path = base.join(format!("mnt-{prefix_count}"));
        std::fs::create_dir_all(&path).expect("mkdir");
        let child = Command::new(env!("CARGO_BIN_EXE_prefixfs"))
            .args([
                "mount",
                &format!("s3://{BUCKET}/data"),
                path.to_str().unwrap_or_default(),
                "--foreground",
                "--init",
            ])
            .args(["--prefix-count", &prefix_count.to_string(), "--max-attempts", "40"])
            .args([
                "--endpoint-url",
                &server.endpoint(),
                "--force-path-style",
                "--region",
                "us-east-1",
            ])
            .arg("--cache-dir")
            .arg(base.join(format!("cache-{prefix_count}")))
            .env("AWS_ACCESS_KEY_ID", BENCH_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", BENCH_SECRET_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn prefixfs");
        let deadline = Instant::now() + Duration::from_secs(30);
        let want = path.to_string_lossy().to_string();
        while !std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(&want))
        {
            assert!(Instant::now() < deadline, "mount did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mounted { path, child }
    }

    fn stats(&self) -> String {
        prefixfs::read_stats(&self.path).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = self.child.wait();
    }
}

/// Counters as `name value` (the stats xattr, or a client's RequestStats text).
fn counters(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// Requests by kind between two counter snapshots, per created file.
struct PerFile {
    total: f64,
    list: f64,
    by_kind: Vec<(String, f64)>,
}

fn per_file(before: &str, after: &str, files: u64) -> PerFile {
    let (b, a) = (counters(before), counters(after));
    let mut by_kind = Vec::new();
    let mut total = 0.0;
    let mut list = 0.0;
    for (k, v) in &a {
        let Some(kind) = k.strip_prefix("requests_") else {
            continue;
        };
        let d = (v - b.get(k).copied().unwrap_or(0)) as f64 / files.max(1) as f64;
        if d > 0.0 {
            by_kind.push((kind.to_string(), d));
            total += d;
            if kind == "list" {
                list = d;
            }
        }
    }
    PerFile { total, list, by_kind }
}

/// Writes date-named files (`<day>/<seq>.log`, one global sequence, as a logger would) with
/// `writers` threads through `write` for `secs` seconds; returns (files, failures).
fn write_for(secs: f64, writers: u64, day: &str, write: impl Fn(&str) -> bool + Sync) -> (u64, u64) {
    let seq = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                while Instant::now() < deadline {
                    let i = seq.fetch_add(1, Ordering::Relaxed);
                    if write(&format!("{day}/{i:07}.log")) {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

struct RunResult {
    files_per_sec: f64,
    files: u64,
    failed: u64,
    slowdowns: u64,
    partitions: usize,
    per_file: PerFile,
    delete_rate: f64,
}

fn emulator_config(policy: SplitPolicy) -> EmulatorConfig {
    EmulatorConfig {
        write_rate: knob("WRITE_RATE", 20.0),
        read_rate: knob("READ_RATE", 40.0),
        split_policy: policy,
        split_after: Duration::from_millis(knob("SPLIT_AFTER_MS", 1000.0) as u64),
        max_partitions: 64,
        boundaries: vec![],
    }
}

const BODY: &[u8] = b"2017-02-08T12:00:00Z level=info msg=\"request served\" status=200\n";

struct Plan {
    policy: SplitPolicy,
    /// 1: one partition that never splits (what a hot partition serves a paced client).
    max_partitions: usize,
    writers: u64,
    warmup_secs: f64,
    secs: f64,
}

fn run_mount(plan: &Plan, prefix_count: u32) -> RunResult {
    let mut emu = emulator_config(plan.policy);
    emu.max_partitions = plan.max_partitions;
    let server = Server::start(emu);
    let base = tempfile::tempdir().expect("tempdir");
    let m = Mounted::new(&server, prefix_count, base.path());
    for day in ["2017/02/07", "2017/02/08"] {
        std::fs::create_dir_all(m.path.join(day)).expect("mkdir");
    }
    let write = |rel: &str| std::fs::write(m.path.join(rel), BODY).is_ok();
    // Warm-up on the day before: the bucket splits as S3 would under sustained load.
    write_for(plan.warmup_secs, plan.writers, "2017/02/07", write);
    let throttles_before = server.emulator().throttles;
    let before = m.stats();
    let (files, failed) = write_for(plan.secs, plan.writers, "2017/02/08", write);
    let per_file = per_file(&before, &m.stats(), files);
    let snap = server.emulator();
    // Delete the day with as many workers as wrote it; the rmdir at the end waits until the
    // queued deletes have reached S3, so the clock stops after it.
    let day = m.path.join("2017/02/08");
    let names: Vec<PathBuf> = std::fs::read_dir(&day)
        .expect("readdir")
        .flatten()
        .map(|e| e.path())
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for chunk in names.chunks(names.len().div_ceil(plan.writers as usize).max(1)) {
            s.spawn(move || chunk.iter().for_each(|p| std::fs::remove_file(p).expect("unlink")));
        }
    });
    assert!(Command::new("rm").arg("-r").arg(&day).status().expect("rm").success());
    let delete_rate = names.len() as f64 / start.elapsed().as_secs_f64();
    RunResult {
        files_per_sec: files as f64 / plan.secs,
        files,
        failed,
        slowdowns: snap.throttles - throttles_before,
        partitions: snap.partitions.len(),
        per_file,
        delete_rate,
    }
}

fn run_baseline(plan: &Plan) -> RunResult {
    let server = Server::start(emulator_config(plan.policy));
    let (client, stats) = server.client();
    let body = bytes::Bytes::from_static(BODY);
    let write = |rel: &str| {
        let key = format!("data/{rel}");
        server
            .rt
            .block_on(client.put(&key, body.clone(), &Default::default()))
            .is_ok()
    };
    write_for(plan.warmup_secs, plan.writers, "2017/02/07", write);
    let throttles_before = server.emulator().throttles;
    let before = stats.snapshot().to_text();
    let (files, failed) = write_for(plan.secs, plan.writers, "2017/02/08", write);
    let snap = server.emulator();
    RunResult {
        files_per_sec: files as f64 / plan.secs,
        files,
        failed,
        slowdowns: snap.throttles - throttles_before,
        partitions: snap.partitions.len(),
        per_file: per_file(&before, &stats.snapshot().to_text(), files),
        delete_rate: f64::NAN,
    }
}

fn print_run(name: &str, r: &RunResult, baseline: f64) {
    let kinds: Vec<String> = r.per_file.by_kind.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
    println!(
        "  {name}: {:7.1} files/s ({:5.2}x raw)  files {:6}  failed {}  SlowDowns {:5}  partitions {:2}  requests/file {:.3} [{}]{}",
        r.files_per_sec,
        r.files_per_sec / baseline,
        r.files,
        r.failed,
        r.slowdowns,
        r.partitions,
        r.per_file.total,
        kinds.join(", "),
        if r.delete_rate.is_nan() {
            String::new()
        } else {
            format!("  delete {:.1} files/s", r.delete_rate)
        }
    );
}

/// Peers, when installed (none are packaged for Debian; they are skipped otherwise).
fn peers() {
    for (tool, what) in [
        ("rclone", "rclone mount --vfs-cache-mode writes"),
        ("mount-s3", "mountpoint-s3"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            println!("  peer {what}: not installed, skipped");
        }
    }
}

/// Deletes of the hashed layout's keys: raw client in sorted key order vs prefixfs rm -r.
fn run_delete_order(files: u64) -> (f64, f64) {
    let layout = Layout::new("data", 16).expect("layout");
    let keys: Vec<String> = (0..files)
        .map(|i| {
            layout
                .file_key(&RelPath::parse(&format!("2017/02/08/{i:07}.log")).expect("path"))
                .expect("key")
        })
        .collect();
    let mut rates = Vec::new();
    for interleaved in [false, true] {
        // A bucket that has split along the prefixes already (it just took these writes), and
        // that does not split further during a delete that lasts seconds (S3 takes minutes).
        let mut cfg = emulator_config(SplitPolicy::Demand);
        cfg.boundaries = (0..16).map(|i| format!("data/{i:x}/")).collect();
        cfg.split_after = Duration::from_secs(3600);
        let server = Server::start(cfg);
        let (client, _) = server.client();
        let put = |k: &String| {
            server
                .rt
                .block_on(client.put(k, bytes::Bytes::from_static(b"x"), &Default::default()))
        };
        std::thread::scope(|s| {
            for chunk in keys.chunks(keys.len().div_ceil(16)) {
                s.spawn(move || chunk.iter().for_each(|k| put(k).expect("put")));
            }
        });
        std::thread::sleep(Duration::from_secs(2)); // let the buckets refill
        let start = Instant::now();
        if interleaved {
            let ok = Command::new(env!("CARGO_BIN_EXE_prefixfs"))
                .args([
                    "init",
                    &format!("s3://{BUCKET}/data"),
                    "--endpoint-url",
                    &server.endpoint(),
                    "--force-path-style",
                ])
                .args(["--region", "us-east-1"])
                .env("AWS_ACCESS_KEY_ID", BENCH_ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", BENCH_SECRET_KEY)
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .stdout(Stdio::null())
                .status()
                .expect("init");
            assert!(ok.success());
            let start_rm = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_prefixfs"))
                .args([
                    "rm",
                    "-r",
                    &format!("s3://{BUCKET}/data"),
                    "2017",
                    "--max-attempts",
                    "60",
                ])
                .args([
                    "--endpoint-url",
                    &server.endpoint(),
                    "--force-path-style",
                    "--region",
                    "us-east-1",
                ])
                .env("AWS_ACCESS_KEY_ID", BENCH_ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", BENCH_SECRET_KEY)
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .output()
                .expect("rm");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            rates.push(files as f64 / start_rm.elapsed().as_secs_f64());
        } else {
            let mut sorted = keys.clone();
            sorted.sort();
            let sorted: Vec<_> = sorted.into_iter().map(prefixfs::store::DeleteTarget::any).collect();
            for batch in sorted.chunks(1000) {
                let failed = server.rt.block_on(client.delete_many(batch)).expect("delete");
                assert!(failed.is_empty(), "{} keys not deleted", failed.len());
            }
            rates.push(files as f64 / start.elapsed().as_secs_f64());
        }
    }
    (rates[0], rates[1])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test harness probes
    }
    let writers = knob("WRITERS", 64.0) as u64;
    // At least three times the default metadata TTL (5 s), so expiring caches are measured.
    let secs = knob("SECS", 20.0);
    let warmup_secs = knob("WARMUP_SECS", 15.0);
    let delete_files = knob("DELETE_FILES", 4000.0) as u64;
    let emu = emulator_config(SplitPolicy::Demand);
    println!(
        "prefix_win: {writers} writers creating date-named files in one directory for {secs} s (after {warmup_secs} s of warm-up), emulated partitions at {} writes/s and {} reads/s",
        emu.write_rate, emu.read_rate
    );
    peers();
    let policies = [
        ("demand (split after running hot)", SplitPolicy::Demand),
        (
            "throttles (split after SlowDowns in 3 distinct seconds of 10)",
            "throttles:3/10".parse().expect("policy"),
        ),
    ];
    // PARTS: which parts to run (default all): policies, hot, delete.
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "policies,hot,delete".into());
    let part = |name: &str| parts.split(',').any(|p| p == name);
    let mut verdicts = Vec::new();
    for (label, policy) in policies.into_iter().filter(|_| part("policies")) {
        let plan = Plan {
            policy,
            max_partitions: 64,
            writers,
            warmup_secs,
            secs,
        };
        println!("split policy: {label}");
        let baseline = run_baseline(&plan);
        print_run("raw S3 client, plain keys  ", &baseline, baseline.files_per_sec);
        let plain = run_mount(&plan, 1);
        print_run("prefixfs plain (1 prefix)  ", &plain, baseline.files_per_sec);
        let hashed = run_mount(&plan, 16);
        print_run("prefixfs hashed (16)       ", &hashed, baseline.files_per_sec);
        let ratio = hashed.files_per_sec / plain.files_per_sec;
        println!("  hashed / plain: {ratio:.1}x");
        for (what, ok) in [
            ("hashed >= 8x plain", ratio >= 8.0),
            ("0 failed operations", plain.failed + hashed.failed == 0),
            (
                "<= 1.2 requests per created file",
                plain.per_file.total <= 1.2 && hashed.per_file.total <= 1.2,
            ),
            (
                "<= 0.05 LISTs per created file",
                plain.per_file.list <= 0.05 && hashed.per_file.list <= 0.05,
            ),
        ] {
            verdicts.push(format!(
                "{} [{}] {what}",
                if ok { "PASS" } else { "FAIL" },
                policy_name(policy)
            ));
        }
    }
    // One hot partition that never splits: how much of it the paced plain layout gets.
    if part("hot") {
        let hot = run_mount(
            &Plan {
                policy: SplitPolicy::Demand,
                max_partitions: 1,
                writers,
                warmup_secs: 5.0,
                secs,
            },
            1,
        );
        let share = hot.files_per_sec / emu.write_rate;
        println!("one hot partition that never splits ({} writes/s):", emu.write_rate);
        print_run("prefixfs plain (1 prefix)  ", &hot, emu.write_rate);
        println!("  = {:.0}% of what the partition serves", share * 100.0);
        verdicts.push(format!(
            "{} plain layout gets >= 90% of one hot partition",
            if share >= 0.9 { "PASS" } else { "FAIL" }
        ));
    }
    if part("delete") {
        let (sorted, interleaved) = run_delete_order(delete_files);
        println!(
            "delete {delete_files} hashed keys: sorted order (raw client) {sorted:8.1} keys/s, interleaved (prefixfs rm -r) {interleaved:8.1} keys/s ({:.1}x)",
            interleaved / sorted
        );
    }
    for v in verdicts {
        println!("{v}");
    }
}

fn policy_name(p: SplitPolicy) -> &'static str {
    match p {
        SplitPolicy::Demand => "demand",
        SplitPolicy::Throttles { .. } => "throttles",
    }
}
