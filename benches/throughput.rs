//! Throughput at S3 latency: the same workloads through the raw S3 client (aws-sdk-s3, the
//! physical limit here), through prefixfs, and through s3fs-fuse and rclone mount when they
//! are installed (`apt install s3fs rclone`), against the embedded server with WAN emulation
//! (LATENCY_MS added to every answer, each connection held to MIBPS). Prints one table with
//! ratios to the raw client measured in the same run.
//!
//! Run: `cargo bench --bench throughput` (as root: it mounts FUSE). Knobs (environment):
//! SIZE_MIB (1024), LATENCY_MS (20), MIBPS (90), LS_FILES (10000), DAYS (365), PER_DAY (20),
//! PEERS (1: mount the peers when installed; 0: skip them), ONLY (a comma list of write, read,
//! ls, find, small, cp: run only those), PREFIXFS_ARGS (extra mount flags,
//! e.g. `--read-ahead-mib 96`), SERVER_DIR (where the store keeps its data: /dev/shm),
//! RUNS (3: the sequential write and read run this often, each filesystem and the raw
//! client alike, and the best counts).

mod common;

use common::{ACCESS, BUCKET, SECRET, knob};
use futures::StreamExt;
use prefixfs::layout::{Layout, RelPath};
use prefixfs::server::{self, ServerConfig};
use prefixfs::store::ObjectStore;
use prefixfs::store::aws::AwsStore;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
const PART: u64 = 8 * MIB;

/// Whether workload `name` runs (the ONLY knob).
fn wanted(name: &str) -> bool {
    std::env::var("ONLY").map_or(true, |only| only.split(',').any(|w| w.trim() == name))
}

/// Which filesystem runs a workload.
#[derive(Clone, Copy, PartialEq)]
enum Fs {
    Prefixfs,
    S3fs,
    Rclone,
}

impl Fs {
    fn name(self) -> &'static str {
        match self {
            Fs::Prefixfs => "prefixfs",
            Fs::S3fs => "s3fs",
            Fs::Rclone => "rclone",
        }
    }

    fn installed(self) -> bool {
        let tool = match self {
            Fs::Prefixfs => return true,
            Fs::S3fs => "s3fs",
            Fs::Rclone => "rclone",
        };
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

struct Mounted {
    path: PathBuf,
    child: Child,
}

impl Mounted {
    fn new(fs: Fs, endpoint: &str, base: &Path, n: usize) -> Option<Mounted> {
        let path = base.join(format!("mnt-{}-{n}", fs.name()));
        let cache = base.join(format!("cache-{}-{n}", fs.name()));
        std::fs::create_dir_all(&path).expect("mkdir");
        let mut cmd = match fs {
            Fs::Prefixfs => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_prefixfs"));
                c.args(["mount", &format!("s3://{BUCKET}/data")])
                    .arg(&path)
                    .args(["--foreground", "--endpoint-url", endpoint, "--force-path-style"])
                    .args(["--region", "us-east-1", "--cache-dir"])
                    .arg(&cache)
                    .args(std::env::var("PREFIXFS_ARGS").unwrap_or_default().split_whitespace())
                    .env("AWS_ACCESS_KEY_ID", ACCESS)
                    .env("AWS_SECRET_ACCESS_KEY", SECRET)
                    .env("AWS_EC2_METADATA_DISABLED", "true")
                    .env("RUST_LOG", "warn");
                c
            }
            Fs::S3fs => {
                let pass = base.join("s3fs.passwd");
                std::fs::write(&pass, format!("{ACCESS}:{SECRET}\n")).expect("passwd");
                let _ = Command::new("chmod").arg("600").arg(&pass).status();
                let mut c = Command::new("s3fs");
                c.arg(format!("{BUCKET}:/plain")).arg(&path).arg("-f").args([
                    "-o",
                    &format!("url={endpoint}"),
                    "-o",
                    "use_path_request_style",
                    "-o",
                    &format!("passwd_file={}", pass.display()),
                    "-o",
                    "endpoint=us-east-1",
                ]);
                c
            }
            Fs::Rclone => {
                let mut c = Command::new("rclone");
                c.args(["mount", &format!("bench:{BUCKET}/plain")])
                    .arg(&path)
                    .args(["--vfs-cache-mode", "off", "--cache-dir"])
                    .arg(&cache)
                    .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
                    .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
                    .env("RCLONE_CONFIG_BENCH_ENDPOINT", endpoint)
                    .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", ACCESS)
                    .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", SECRET)
                    .env("RCLONE_CONFIG_BENCH_REGION", "us-east-1")
                    // rclone takes the SDK's CA bundle variable and fails on plain HTTP with it.
                    .env_remove("AWS_CA_BUNDLE");
                c
            }
        };
        let log = base.join(format!("{}-{n}.log", fs.name()));
        let err = std::fs::File::create(&log).expect("log");
        let mut child = cmd.stdout(Stdio::null()).stderr(err).spawn().expect("spawn");
        let want = path.to_string_lossy().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(&want))
        {
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                eprintln!("{} did not mount: {}", fs.name(), log.trim());
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Mounted { path, child })
    }

    /// Peak resident memory of the filesystem process, MiB.
    fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sh -c script` with a time limit; the seconds it took, or None when it failed.
fn timed(script: &str) -> Option<f64> {
    let start = Instant::now();
    let out = Command::new("timeout")
        .args(["600", "sh", "-c", script])
        .output()
        .ok()?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        eprintln!("  `{script}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        return None;
    }
    Some(secs)
}

/// Results of one filesystem (or the raw client): seconds per workload, and peak RSS.
#[derive(Default, Clone)]
struct Row {
    write: Option<f64>,
    read: Option<f64>,
    ls_cold: Option<f64>,
    ls_warm: Option<f64>,
    find: Option<f64>,
    small: Option<f64>,
    cp_r: Option<f64>,
    rss: Option<f64>,
}

struct Plan {
    /// Times the write and read workloads run; the best counts.
    runs: usize,
    size: u64,
    ls_files: usize,
    days: usize,
    per_day: usize,
    endpoint: String,
    tree: PathBuf,
}

/// The shortest of `runs` timings (None when any run failed).
fn best_of(runs: usize, mut f: impl FnMut() -> Option<f64>) -> Option<f64> {
    (0..runs.max(1))
        .map(|_| f())
        .try_fold(f64::MAX, |best, t| t.map(|t| best.min(t)))
}

fn run_fs(fs: Fs, plan: &Plan, base: &Path) -> Row {
    let mut row = Row::default();
    let q = |p: &Path| format!("'{}'", p.display());
    let mut peak: f64 = 0.0;
    {
        let Some(m) = Mounted::new(fs, &plan.endpoint, base, 0) else {
            return row;
        };
        let big = m.path.join("big");
        // Best of RUNS (each a whole new upload): the machine's own noise is not the
        // filesystem's.
        row.write = wanted("write")
            .then(|| {
                best_of(plan.runs, || {
                    timed(&format!(
                        "dd if=/dev/zero of={} bs=1M count={} status=none",
                        q(&big),
                        plan.size / MIB
                    ))
                })
            })
            .flatten();
        // Sixteen writers, 1,000 files of 4 KiB, one directory.
        let dir = m.path.join("small");
        let start = Instant::now();
        let ok = wanted("small")
            && std::fs::create_dir(&dir).is_ok()
            && std::thread::scope(|s| {
                let handles: Vec<_> = (0..16)
                    .map(|w| {
                        let dir = &dir;
                        s.spawn(move || {
                            (0..1000)
                                .filter(|i| i % 16 == w)
                                .all(|i| std::fs::write(dir.join(format!("f{i:04}")), [b'x'; 4096]).is_ok())
                        })
                    })
                    .collect();
                handles.into_iter().all(|h| h.join().unwrap_or(false))
            });
        row.small = ok.then(|| start.elapsed().as_secs_f64());
        row.cp_r = wanted("cp")
            .then(|| timed(&format!("cp -r {} {}", q(&plan.tree), q(&m.path.join("tree")))))
            .flatten();
        peak = peak.max(m.peak_rss_mib());
    }
    if wanted("read") && wanted("write") {
        // Each run on a fresh mount: nothing of the file in any cache.
        let mut n = 10;
        row.read = best_of(plan.runs, || {
            n += 1;
            let m = Mounted::new(fs, &plan.endpoint, base, n)?;
            let big = q(&m.path.join("big"));
            let secs = timed(&format!("dd if={big} of=/dev/null bs=1M status=none"));
            peak = peak.max(m.peak_rss_mib());
            secs
        });
    }
    {
        let Some(m) = Mounted::new(fs, &plan.endpoint, base, 1) else {
            return row;
        };
        if wanted("ls") {
            let ls = q(&m.path.join("ls"));
            row.ls_cold = timed(&format!("ls -l {ls} | wc -l | grep -qx {}", plan.ls_files + 1));
            row.ls_warm = timed(&format!("ls -l {ls} > /dev/null"));
        }
        peak = peak.max(m.peak_rss_mib());
    }
    if wanted("find") {
        let Some(m) = Mounted::new(fs, &plan.endpoint, base, 2) else {
            return row;
        };
        row.find = timed(&format!(
            "find {} -type f | wc -l | grep -qx {}",
            q(&m.path.join("year")),
            plan.days * plan.per_day
        ));
        peak = peak.max(m.peak_rss_mib());
    }
    row.rss = Some(peak);
    row
}

/// The bucket's fixtures, written by the raw client: the `ls` directory and the year tree,
/// under prefixfs's layout and as plain keys for the peers.
async fn fixtures(s3: &AwsStore, layout: &Layout, plan: &Plan) {
    let desc = serde_json::to_vec(&layout.descriptor()).expect("json");
    s3.put(&layout.descriptor_key(), desc.into(), &Default::default())
        .await
        .expect("descriptor");
    let mut paths: Vec<String> = (0..plan.ls_files).map(|i| format!("ls/{i:06}.log")).collect();
    for d in 0..plan.days {
        let day = time_of_day(d);
        paths.extend((0..plan.per_day).map(|i| format!("year/{day}/{i:03}.log")));
    }
    let keys = paths.iter().flat_map(|p| {
        let rel = RelPath::parse(p).expect("path");
        [layout.file_key(&rel).expect("key"), format!("plain/{p}")]
    });
    futures::stream::iter(keys)
        .map(|key| async move {
            s3.put(&key, bytes::Bytes::from_static(b"line\n"), &Default::default())
                .await
        })
        .buffer_unordered(256)
        .for_each(|r| async move { r.expect("put") })
        .await;
}

/// `2017/MM/DD` of day `d` of the year (months of 31 days: shape, not calendar).
fn time_of_day(d: usize) -> String {
    format!("2017/{:02}/{:02}", d / 31 + 1, d % 31 + 1)
}

/// The raw client: 8 MiB parts, 16 in flight up; 8 MiB ranged GETs, 32 in flight down; the
/// LIST walks prefixfs sends; 16 PUTs in flight for small files.
async fn run_raw(s3: &Arc<AwsStore>, layout: &Layout, plan: &Plan) -> Row {
    let mut row = Row::default();
    let key = "raw/big";
    let (mut write, mut read) = (f64::MAX, f64::MAX);
    for _ in 0..plan.runs.max(1) {
        let start = Instant::now();
        let id = s3.create_multipart(key, &Default::default()).await.expect("create");
        let parts: Vec<(i32, String)> = futures::stream::iter(0..plan.size.div_ceil(PART))
            .map(|i| {
                let (s3, id) = (s3.clone(), id.clone());
                let len = PART.min(plan.size - i * PART) as usize;
                async move {
                    let etag = s3
                        .upload_part(key, &id, i as i32 + 1, bytes::Bytes::from(vec![0u8; len]))
                        .await
                        .expect("part");
                    (i as i32 + 1, etag)
                }
            })
            .buffered(16)
            .collect()
            .await;
        s3.complete_multipart(key, &id, &parts).await.expect("complete");
        write = write.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let got: u64 = futures::stream::iter(0..plan.size.div_ceil(PART))
            .map(|i| {
                let s3 = s3.clone();
                async move {
                    let end = ((i + 1) * PART).min(plan.size);
                    s3.get(key, Some(i * PART..end), None).await.expect("get").len() as u64
                }
            })
            .buffered(32)
            .fold(0, |a, n| async move { a + n })
            .await;
        assert_eq!(got, plan.size);
        read = read.min(start.elapsed().as_secs_f64());
    }
    (row.write, row.read) = (Some(write), Some(read));
    let start = Instant::now();
    let seen = walk(s3, layout, &RelPath::parse("ls").expect("path")).await;
    assert_eq!(seen, plan.ls_files);
    row.ls_cold = Some(start.elapsed().as_secs_f64());
    // The year tree as plain keys: one LIST stream, no delimiter (the least any walk sends).
    let start = Instant::now();
    let (mut n, mut token) = (0, None::<String>);
    loop {
        let page = s3
            .list("plain/year/", None, token.as_deref(), None)
            .await
            .expect("list");
        n += page.objects.len();
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(n, plan.days * plan.per_day);
    row.find = Some(start.elapsed().as_secs_f64());
    let start = Instant::now();
    futures::stream::iter(0..1000)
        .map(|i| {
            let s3 = s3.clone();
            async move {
                s3.put(
                    &format!("raw/small/f{i:04}"),
                    bytes::Bytes::from(vec![b'x'; 4096]),
                    &Default::default(),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .for_each(|r| async move { r.expect("put") })
        .await;
    row.small = Some(start.elapsed().as_secs_f64());
    row
}

/// One LIST walk of `dir` over every prefix, in parallel, as prefixfs lists.
async fn walk(s3: &AwsStore, layout: &Layout, dir: &RelPath) -> usize {
    futures::stream::iter(0..layout.prefix_count())
        .map(|q| async move {
            let prefix = layout.dir_list_prefix(q, dir);
            let (mut n, mut token) = (0, None::<String>);
            loop {
                let page = s3.list(&prefix, Some("/"), token.as_deref(), None).await.expect("list");
                n += page.objects.len();
                match page.next_token {
                    Some(t) => token = Some(t),
                    None => return n,
                }
            }
        })
        .buffer_unordered(16)
        .fold(0, |a, n| async move { a + n })
        .await
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let latency = Duration::from_millis(knob("LATENCY_MS", 20.0) as u64);
    let mibps = knob("MIBPS", 90.0);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // The store's data in memory when it can be (SERVER_DIR, default /dev/shm): S3's disks
    // are not this machine's, and the server's page-cache writeback made the baseline swing
    // by half from run to run.
    let server_dir = std::env::var("SERVER_DIR").unwrap_or_else(|_| "/dev/shm".into());
    let dir = tempfile::tempdir_in(&server_dir)
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    let mut cfg = ServerConfig::local(dir.path().join("s3"));
    cfg.buckets.push(BUCKET.into());
    cfg.credentials = Some(server::Credentials {
        access_key: ACCESS.into(),
        secret_key: SECRET.into(),
    });
    cfg.latency = latency;
    cfg.connection_rate = (mibps > 0.0).then_some(mibps * MIB as f64);
    let srv = rt.block_on(server::start(cfg)).expect("server");
    let tree = dir.path().join("tree");
    for d in 0..10 {
        std::fs::create_dir_all(tree.join(format!("d{d}"))).expect("mkdir");
        for f in 0..100 {
            std::fs::write(tree.join(format!("d{d}/f{f:03}")), [b'y'; 1024]).expect("write");
        }
    }
    let plan = Plan {
        runs: knob("RUNS", 3.0) as usize,
        size: knob("SIZE_MIB", 1024.0) as u64 * MIB,
        ls_files: knob("LS_FILES", 10_000.0) as usize,
        days: knob("DAYS", 365.0) as usize,
        per_day: knob("PER_DAY", 20.0) as usize,
        endpoint: srv.endpoint(),
        tree,
    };
    let s3 = Arc::new(rt.block_on(common::connect(&plan.endpoint)));
    let layout = Layout::new("data", 16).expect("layout");
    rt.block_on(fixtures(&s3, &layout, &plan));
    let raw = rt.block_on(run_raw(&s3, &layout, &plan));
    let mut rows = vec![("raw client".to_string(), raw.clone())];
    let peers = knob("PEERS", 1.0) > 0.0;
    for fs in [Fs::Prefixfs, Fs::S3fs, Fs::Rclone] {
        if fs != Fs::Prefixfs && !(peers && fs.installed()) {
            println!("{}: not installed or PEERS=0, skipped", fs.name());
            continue;
        }
        let base = tempfile::tempdir().expect("tempdir");
        rows.push((fs.name().to_string(), run_fs(fs, &plan, base.path())));
    }
    println!(
        "throughput: {} ms added to every S3 answer, {mibps} MiB/s per connection; {} MiB file, ls of {} files, find over {} x {} files",
        latency.as_millis(),
        plan.size / MIB,
        plan.ls_files,
        plan.days,
        plan.per_day
    );
    let mbps = |s: Option<f64>| s.map(|s| plan.size as f64 / MIB as f64 / s);
    type Metric<'a> = (&'a str, Box<dyn Fn(&Row) -> Option<f64> + 'a>, bool);
    let metrics: Vec<Metric> = vec![
        ("sequential write, MiB/s", Box::new(|r: &Row| mbps(r.write)), true),
        ("sequential read, MiB/s", Box::new(|r: &Row| mbps(r.read)), true),
        ("ls -l cold, s", Box::new(|r: &Row| r.ls_cold), false),
        ("ls -l warm, s", Box::new(|r: &Row| r.ls_warm), false),
        ("find over the year, s", Box::new(|r: &Row| r.find), false),
        ("1,000 x 4 KiB by 16 writers, s", Box::new(|r: &Row| r.small), false),
        ("cp -r 10 x 100 files, s", Box::new(|r: &Row| r.cp_r), false),
        ("peak RSS, MiB", Box::new(|r: &Row| r.rss), false),
    ];
    print!("{:<34}", "");
    for (name, _) in &rows {
        print!("{name:>22}");
    }
    println!();
    for (label, f, higher_better) in &metrics {
        print!("{label:<34}");
        let base = f(&raw);
        for (_, r) in &rows {
            let cell = match (f(r), base) {
                (Some(v), Some(b)) if b > 0.0 => {
                    let ratio = if *higher_better { v / b } else { b / v };
                    format!("{v:.3} ({:.0}%)", ratio * 100.0)
                }
                (Some(v), _) => format!("{v:.3}"),
                (None, _) => "-".to_string(),
            };
            print!("{cell:>22}");
        }
        println!();
    }
    println!("(percent: of the raw client's speed, higher is better; '-': not measured or failed)");
    rt.block_on(srv.shutdown());
}
