//! The prefix win, measured: date-shaped writes and deletes against the partition emulator,
//! through a plain layout and through prefixfs's hashed one, as ratios against a raw S3
//! client writing plain keys in the same run.
//!
//! Run: `cargo bench --bench prefix_win` (as root: it mounts FUSE). Knobs (environment):
//! FILES (default 1500), WRITERS (16), WRITE_RATE (writes/s per emulated partition, 25),
//! SPLIT_AFTER_MS (500), WARMUP (files written before measuring, 1500), DELETE_FILES (4000).

use prefixfs::layout::{Layout, RelPath};
use prefixfs::server::partitions::{EmulatorConfig, EmulatorSnapshot};
use prefixfs::server::{self, RunningServer, ServerConfig};
use prefixfs::store::ObjectStore;
use prefixfs::store::aws::{AwsConfig, AwsStore};
use prefixfs::store::retry::{RetryConfig, RetryingStore};
use prefixfs::store::stats::RequestStats;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BUCKET: &str = "bench";

fn knob(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const BENCH_ACCESS_KEY: &str = "bench-access-key";
const BENCH_SECRET_KEY: &str = "bench-secret-key";
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
        let cfg = AwsConfig {
            bucket: BUCKET.into(),
            endpoint_url: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            force_path_style: true,
            profile: None,
            static_credentials: Some((BENCH_ACCESS_KEY.into(), BENCH_SECRET_KEY.into())),
        };
        let stats = Arc::new(RequestStats::default());
        let aws = self.rt.block_on(AwsStore::connect(&cfg));
        let retry = RetryConfig {
            max_attempts: 40,
            ..RetryConfig::default()
        };
        (Arc::new(RetryingStore::new(aws, retry, stats.clone())), stats)
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
            .args([
                "--prefix-count",
                &prefix_count.to_string(),
                "--max-attempts",
                "40",
                "--metadata-ttl",
                "60",
            ])
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

/// Writes `n` date-named files (`<day>/<seq>.log`, one global sequence, as a logger would)
/// with `writers` threads through `write`; returns files per second.
fn write_files(n: u64, writers: u64, day: &str, write: impl Fn(&str) -> bool + Sync) -> f64 {
    let seq = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                loop {
                    let i = seq.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    if !write(&format!("{day}/{i:07}.log")) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let f = failed.load(Ordering::Relaxed);
    assert_eq!(f, 0, "{f} writes failed");
    n as f64 / start.elapsed().as_secs_f64()
}

struct RunResult {
    write_rate: f64,
    delete_rate: f64,
    slowdowns: u64,
    partitions: usize,
    splits: usize,
    stats: String,
}

fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        write_rate: knob("WRITE_RATE", 25.0),
        read_rate: knob("WRITE_RATE", 25.0) * 1.6,
        split_after: Duration::from_millis(knob("SPLIT_AFTER_MS", 500.0) as u64),
        max_partitions: 64,
        boundaries: vec![],
    }
}

fn run_mount(prefix_count: u32, files: u64, writers: u64, warmup: u64) -> RunResult {
    let server = Server::start(emulator_config());
    let base = tempfile::tempdir().expect("tempdir");
    let m = Mounted::new(&server, prefix_count, base.path());
    let body = b"2017-02-08T12:00:00Z level=info msg=\"request served\" status=200\n";
    for day in ["2017/02/07", "2017/02/08"] {
        std::fs::create_dir_all(m.path.join(day)).expect("mkdir");
    }
    let write = |rel: &str| std::fs::write(m.path.join(rel), body).is_ok();
    // Warm-up: let the emulator split as S3 would under sustained load.
    write_files(warmup, writers, "2017/02/07", write);
    let write_rate = write_files(files, writers, "2017/02/08", write);
    // Delete with as many parallel workers as wrote (one `rm` is bound by its own latency).
    let day = m.path.join("2017/02/08");
    let names: Vec<PathBuf> = std::fs::read_dir(&day)
        .expect("readdir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(names.len() as u64, files);
    let start = Instant::now();
    std::thread::scope(|s| {
        for chunk in names.chunks(names.len().div_ceil(writers as usize)) {
            s.spawn(move || chunk.iter().for_each(|p| std::fs::remove_file(p).expect("unlink")));
        }
    });
    // The rmdir waits until the queued deletes have reached S3: the clock stops after it.
    assert!(Command::new("rm").arg("-r").arg(&day).status().expect("rm").success());
    let delete_rate = files as f64 / start.elapsed().as_secs_f64();
    let snap = server.emulator();
    RunResult {
        write_rate,
        delete_rate,
        slowdowns: snap.throttles,
        partitions: snap.partitions.len(),
        splits: snap.splits.len(),
        stats: m.stats(),
    }
}

fn run_baseline(files: u64, writers: u64, warmup: u64) -> (f64, u64) {
    let server = Server::start(emulator_config());
    let (client, _) = server.client();
    let body = bytes::Bytes::from_static(b"2017-02-08T12:00:00Z level=info msg=\"request served\" status=200\n");
    let write = |rel: &str| {
        let key = format!("data/{rel}");
        server
            .rt
            .block_on(client.put(&key, body.clone(), &Default::default()))
            .is_ok()
    };
    write_files(warmup, writers, "2017/02/07", write);
    let rate = write_files(files, writers, "2017/02/08", write);
    (rate, server.emulator().throttles)
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
        let mut cfg = emulator_config();
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
    let files = knob("FILES", 1500.0) as u64;
    let writers = knob("WRITERS", 16.0) as u64;
    let warmup = knob("WARMUP", 1500.0) as u64;
    let delete_files = knob("DELETE_FILES", 4000.0) as u64;
    let emu = emulator_config();
    println!(
        "prefix_win: {files} files, {writers} writers, emulated partitions at {} writes/s, split after {:?} (warm-up {warmup} files)",
        emu.write_rate, emu.split_after
    );
    let (baseline, baseline_slowdowns) = run_baseline(files, writers, warmup);
    println!("baseline  raw S3 client, plain keys : {baseline:8.1} files/s  (1.00x)  SlowDowns {baseline_slowdowns}");
    let plain = run_mount(1, files, writers, warmup);
    let hashed = run_mount(16, files, writers, warmup);
    for (name, r) in [
        ("prefixfs  plain layout (1 prefix)  ", &plain),
        ("prefixfs  hashed layout (16)       ", &hashed),
    ] {
        println!(
            "{name}: {:8.1} files/s  ({:.2}x)  delete {:8.1} files/s  SlowDowns {}  partitions {} (splits {})",
            r.write_rate,
            r.write_rate / baseline,
            r.delete_rate,
            r.slowdowns,
            r.partitions,
            r.splits
        );
    }
    println!(
        "hashed / plain: writes {:.1}x, deletes {:.1}x",
        hashed.write_rate / plain.write_rate,
        hashed.delete_rate / plain.delete_rate
    );
    for (name, r) in [("plain", &plain), ("hashed", &hashed)] {
        println!("-- prefixfs stats, {name} layout:");
        for line in r.stats.lines().filter(|l| {
            l.starts_with("prefix ")
                || l.starts_with("throttles")
                || l.starts_with("retries")
                || l.starts_with("failures")
        }) {
            println!("   {line}");
        }
    }
    let (sorted, interleaved) = run_delete_order(delete_files);
    println!(
        "delete {delete_files} hashed keys: sorted order (raw client) {sorted:8.1} keys/s, interleaved (prefixfs rm -r) {interleaved:8.1} keys/s ({:.1}x)",
        interleaved / sorted
    );
}
