//! `ls -l` of one directory on an S3 that answers after 20 ms, cold (a fresh mount; the
//! parent listed) and warm, against baselines measured in the same run with a raw S3 client:
//! one LIST walk of the directory (every prefix in parallel, as prefixfs lists) and that walk
//! plus a HEAD of every key at the mount's in-flight bound (`--attr-prefetch`), which is what
//! `ls -l` must fetch when the objects carry POSIX metadata. Directories of several sizes,
//! names with an extension (`f000001.log`) and without (`f000001`).
//!
//! The raw baselines run twice: in this process, beside the embedded server (one runtime
//! serves both ends, so no answer crosses a process), and in a child process of their own,
//! as the mount is, with a new client (no open connection) per run, as the mount's is cold:
//! the comparison the target is read against, since no S3 shares a process with its clients. On 2 cores the cross-process wake-ups of 10,000 HEADs cost about as much
//! as the HEADs themselves; both ratios are printed.
//!
//! Run: `cargo bench --bench ls_l` (as root: it mounts FUSE). Knobs (environment): SIZES
//! (500,2000,10000,20000), LATENCY_MS (20), PREFIXES (16), READ_RATE (per-partition reads a
//! second of the S3 emulator; 0: no emulator), PREFETCH_SWEEP (a list of `--attr-prefetch`
//! values to time at the largest size, for choosing the default).

use futures::StreamExt;
use prefixfs::layout::{Layout, RelPath};
use prefixfs::server;
use prefixfs::store::ObjectStore;
use prefixfs::store::aws::AwsStore;
use prefixfs::store::retry::{RetryConfig, RetryingStore};
use prefixfs::store::stats::RequestStats;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::knob;

fn list_knob(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// The walk, then a HEAD of every key it found, `bound` in flight: the raw work of `ls -l`.
async fn walk_and_heads(s3: &Raw, layout: &Layout, dir: &RelPath, bound: usize) -> usize {
    let keys: Vec<String> = futures::stream::iter(0..layout.prefix_count())
        .map(|q| async move {
            let prefix = layout.dir_list_prefix(q, dir);
            let mut keys = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = s3.list(&prefix, Some("/"), token.as_deref(), None).await.expect("list");
                keys.extend(page.objects.into_iter().map(|o| o.key));
                match page.next_token {
                    Some(t) => token = Some(t),
                    None => return keys,
                }
            }
        })
        .buffer_unordered(16)
        .concat()
        .await;
    futures::stream::iter(keys)
        .map(|k| async move { s3.head(&k).await.expect("head") })
        .buffer_unordered(bound.max(1))
        .count()
        .await
}

/// The best (lowest) of `runs` timings of `f`.
fn best_of(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..runs).map(|_| f()).fold(f64::MAX, f64::min)
}

/// One LIST walk of `dir` over every prefix, in parallel; returns the keys seen.
async fn list_walk(s3: &Raw, layout: &Layout, dir: &RelPath) -> usize {
    futures::stream::iter(0..layout.prefix_count())
        .map(|q| async move {
            let prefix = layout.dir_list_prefix(q, dir);
            let mut n = 0;
            let mut token: Option<String> = None;
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

fn ls_l(dir: &Path, files: usize) -> f64 {
    let start = Instant::now();
    let out = Command::new("ls").arg("-l").arg(dir).output().expect("ls");
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
    assert_eq!(lines, files + 1, "ls -l lists every file (and the total line)");
    secs
}

/// The raw baselines, run by a child process of this benchmark (see the module doc): prints
/// `walk SECONDS raw SECONDS` for the directory named by the environment.
fn raw_child(spec: &str) {
    let [endpoint, dir, prefixes, files] = spec.split(' ').collect::<Vec<_>>()[..] else {
        panic!("LS_L_RAW_CHILD: {spec}");
    };
    let (prefixes, files): (u32, usize) = (prefixes.parse().expect("prefixes"), files.parse().expect("files"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let layout = Layout::new("data", prefixes).expect("layout");
    let d = RelPath::parse(dir).expect("path");
    let bound = prefixfs::defaults::ATTR_PREFETCH;
    // A new client per run, as the mount is cold: its connections are opened by the run.
    let walk = best_of(3, || {
        let s3 = rt.block_on(connect(endpoint));
        let start = Instant::now();
        assert_eq!(rt.block_on(list_walk(&s3, &layout, &d)), files);
        start.elapsed().as_secs_f64()
    });
    let raw = best_of(2, || {
        let s3 = rt.block_on(connect(endpoint));
        let start = Instant::now();
        assert_eq!(rt.block_on(walk_and_heads(&s3, &layout, &d, bound)), files);
        start.elapsed().as_secs_f64()
    });
    println!("walk {walk} raw {raw}");
}

/// The raw client: the SDK with the mount's retry policy, since the partition emulator
/// (READ_RATE) answers SlowDown to it as to the mount.
type Raw = RetryingStore<AwsStore>;

async fn connect(endpoint: &str) -> Raw {
    let aws = common::connect(endpoint).await;
    let stats = std::sync::Arc::new(RequestStats::default());
    RetryingStore::new(aws, RetryConfig::default(), stats, prefixfs::store::one_prefix())
}

/// [`raw_child`] in a process of its own: (walk, walk + HEADs) seconds.
fn raw_in_child(endpoint: &str, dir: &str, prefixes: u32, files: usize) -> (f64, f64) {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .env("LS_L_RAW_CHILD", format!("{endpoint} {dir} {prefixes} {files}"))
        .stderr(Stdio::inherit())
        .output()
        .expect("spawn the raw baseline");
    assert!(out.status.success(), "the raw baseline's process failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<f64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    match fields[..] {
        [walk, raw] => (walk, raw),
        _ => panic!("the raw baseline printed {text:?}"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(spec) = std::env::var("LS_L_RAW_CHILD") {
        return raw_child(&spec);
    }
    let sizes = list_knob("SIZES", "500,2000,10000,20000");
    let sweep = list_knob("PREFETCH_SWEEP", "");
    let latency = Duration::from_millis(knob("LATENCY_MS", 20.0) as u64);
    let prefixes = knob("PREFIXES", 16.0) as u32;
    let read_rate = knob("READ_RATE", 0.0);
    let bound = prefixfs::defaults::ATTR_PREFETCH;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = common::start_server(&rt, &dir.path().join("s3"), latency, |cfg| {
        if read_rate > 0.0 {
            cfg.emulator = Some(server::partitions::EmulatorConfig {
                read_rate,
                ..Default::default()
            });
        }
    });
    let endpoint = srv.endpoint();
    let s3 = rt.block_on(connect(&endpoint));
    let layout = Layout::new("data", prefixes).expect("layout");
    // The bucket: a descriptor, and per size and naming one directory of small objects
    // written by another S3 client (no POSIX metadata).
    let namings = [("with extension", ".log"), ("no extension", "")];
    rt.block_on(common::write_descriptor(&s3, &layout));
    for &files in &sizes {
        for (_, ext) in namings {
            let d = RelPath::parse(&format!("d{files}{}", ext.replace('.', "-"))).expect("path");
            let keys = (0..files).map(|i| {
                let key = layout
                    .file_key(&d.join(&format!("f{i:06}{ext}")).expect("name"))
                    .expect("key");
                (key, bytes::Bytes::from_static(b"line\n"))
            });
            rt.block_on(common::put_all(&s3, keys, 256));
        }
    }
    println!(
        "ls_l: {prefixes} prefixes, {} ms added to every S3 answer{}; baselines with a raw S3 client, HEADs {bound} in flight (the default --attr-prefetch)",
        latency.as_millis(),
        if read_rate > 0.0 {
            format!(", partitions serving {read_rate} reads/s")
        } else {
            String::new()
        }
    );
    let base = tempfile::tempdir().expect("tempdir");
    let mut n = 0;
    let mut cold_ls = |files: usize, sub: &str, extra: &[&str]| -> f64 {
        n += 1;
        let path = base.path().join(format!("m{n}"));
        let child = common::mount(&endpoint, &path, &base.path().join(format!("cache-m{n}")), extra);
        let listed = Command::new("ls").arg(&path).output().expect("ls");
        assert!(listed.status.success());
        let cold = ls_l(&path.join(sub), files);
        let warm = ls_l(&path.join(sub), files);
        common::unmount(&path, child);
        println!("      (warm right after: {warm:.3} s)");
        cold
    };
    for &files in &sizes {
        for (naming, ext) in namings {
            let sub = format!("d{files}{}", ext.replace('.', "-"));
            let d = RelPath::parse(&sub).expect("path");
            let walk = best_of(3, || {
                let start = Instant::now();
                assert_eq!(rt.block_on(list_walk(&s3, &layout, &d)), files);
                start.elapsed().as_secs_f64()
            });
            let raw = best_of(2, || {
                let start = Instant::now();
                assert_eq!(rt.block_on(walk_and_heads(&s3, &layout, &d, bound)), files);
                start.elapsed().as_secs_f64()
            });
            let (child_walk, child_raw) = raw_in_child(&endpoint, &sub, prefixes, files);
            println!(
                "  {files} files, {naming}: raw walk {walk:.3} s, raw walk + HEADs {raw:.3} s (in the server's process); {child_walk:.3} s, {child_raw:.3} s (a process of its own)"
            );
            let cold = best_of(2, || cold_ls(files, &sub, &[]));
            println!(
                "    prefixfs ls -l cold {cold:.3} s = {:.2}x walk + HEADs of its own process (target <= 1.3x); {:.2}x in the server's",
                cold / child_raw,
                cold / raw
            );
            let trusted = best_of(2, || cold_ls(files, &sub, &["--trust-listing"]));
            println!(
                "    prefixfs --trust-listing ls -l cold {trusted:.3} s = {:.2}x the walk of its own process (target <= 2.5x); {:.2}x in the server's",
                trusted / child_walk,
                trusted / walk
            );
        }
    }
    if let (Some(&files), false) = (sizes.iter().max(), sweep.is_empty()) {
        let sub = format!("d{files}");
        println!("  --attr-prefetch sweep, {files} files, no extension (best of 2 cold runs):");
        for b in sweep {
            let arg = b.to_string();
            let cold = best_of(2, || cold_ls(files, &sub, &["--attr-prefetch", &arg]));
            println!("    --attr-prefetch {b}: {cold:.3} s");
        }
    }
    rt.block_on(srv.shutdown());
}
