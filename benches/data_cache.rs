//! The data cache on disk (`--data-cache`, issue 26): the second read of a large file after a
//! remount, against the same file read from the local disk the cache is on (the baseline,
//! measured in the same run), with the GETs each read sent. The embedded server adds
//! LATENCY_MS to every answer and holds each connection to MIBPS, as S3 would.
//!
//! Run: `cargo bench --bench data_cache` (as root: it mounts FUSE and drops the page cache
//! before each timed read, so the local disk is read, not memory). With bindfs installed,
//! the local file read through it, a FUSE passthrough, shows what any FUSE filesystem can
//! reach on this machine. Knobs: SIZE_MIB (1024),
//! LATENCY_MS (20), MIBPS (90), CACHE_DIR (where the cache and the local copy go: a
//! temporary directory on the disk of /var/tmp), RUNS (3: each row this often, interleaved;
//! the best counts).

mod common;

use common::{BUCKET, knob};
use prefixfs::layout::{Layout, RelPath};
use prefixfs::store::ObjectStore;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// Seconds `script` took (None when it failed).
fn timed(script: &str) -> Option<f64> {
    let start = Instant::now();
    let ok = Command::new("sh").args(["-c", script]).status().ok()?.success();
    ok.then(|| start.elapsed().as_secs_f64())
}

fn drop_page_cache() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
}

fn gets(mountpoint: &Path) -> u64 {
    prefixfs::read_stats(mountpoint)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("requests_get ").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let size = knob("SIZE_MIB", 1024.0) as u64 * MIB;
    let latency = Duration::from_millis(knob("LATENCY_MS", 20.0) as u64);
    let mibps = knob("MIBPS", 90.0);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server_dir = common::server_dir();
    let srv = common::start_server(&rt, server_dir.path(), latency, |c| {
        c.connection_rate = (mibps > 0.0).then_some(mibps * MIB as f64);
    });
    let local_base = std::env::var("CACHE_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let work = tempfile::tempdir_in(&local_base).expect("work dir");
    let s3 = rt.block_on(common::connect(&srv.endpoint()));
    let layout = Layout::new("data", 16).expect("layout");
    rt.block_on(common::write_descriptor(&s3, &layout));
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let key = layout.file_key(&RelPath::parse("big.bin").expect("path")).expect("key");
    rt.block_on(s3.put(&key, body.clone().into(), &Default::default()))
        .expect("put");
    // The baseline: the same bytes read from a file on the cache's disk.
    let local = work.path().join("local.bin");
    std::fs::write(&local, &body).expect("local copy");
    drop(body);
    let bind = work.path().join("bind");
    std::fs::create_dir_all(&bind).expect("mkdir");
    let cache = work.path().join("blocks");
    let c = cache.to_str().unwrap_or_default().to_string();
    let mnt = work.path().join("mnt");
    let read = |label: &str| {
        let child = common::mount(&srv.endpoint(), &mnt, &work.path().join("cache"), &["--data-cache", &c]);
        drop_page_cache();
        let before = gets(&mnt);
        let secs = timed(&format!("cat {} > /dev/null", mnt.join("big.bin").display()));
        let sent = gets(&mnt) - before;
        common::unmount(&mnt.to_path_buf(), child);
        println!("  {label}: {secs:?} s, {sent} GETs");
        (secs, sent)
    };
    // This disk's speed swings by 2x from one minute to the next: every row is run RUNS
    // times, interleaved, and the best of each counts.
    let best = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let (mut local_secs, mut bindfs_secs, mut cold, mut warm) = (None, None, None, None);
    let (mut cold_gets, mut warm_gets) = (0, 0);
    for _ in 0..knob("RUNS", 3.0).max(1.0) as usize {
        drop_page_cache();
        local_secs = best(local_secs, timed(&format!("cat {} > /dev/null", local.display())));
        // The floor of any FUSE filesystem here: the same local file through bindfs, a FUSE
        // passthrough (`apt install bindfs`), when installed.
        if Command::new("bindfs")
            .arg(work.path())
            .arg(&bind)
            .status()
            .is_ok_and(|s| s.success())
        {
            drop_page_cache();
            bindfs_secs = best(
                bindfs_secs,
                timed(&format!("cat {} > /dev/null", bind.join("local.bin").display())),
            );
            let _ = Command::new("umount").arg(&bind).status();
        }
        let _ = std::fs::remove_dir_all(&cache);
        let (secs, n) = read("first read (cache empty)");
        (cold, cold_gets) = (best(cold, secs), n);
        let (secs, n) = read("second read, after a remount");
        (warm, warm_gets) = (best(warm, secs), n);
    }
    let speed = |s: Option<f64>| s.map_or(0.0, |s| size as f64 / MIB as f64 / s);
    println!(
        "data cache: {} MiB file, {} ms added to every S3 answer, {mibps} MiB/s per connection; bucket {BUCKET}",
        size / MIB,
        latency.as_millis()
    );
    println!("{:<44}{:>12}{:>10}{:>10}", "", "MiB/s", "% local", "GETs");
    let row = |label: &str, secs: Option<f64>, gets: Option<u64>| {
        let pct = speed(secs) / speed(local_secs).max(f64::MIN_POSITIVE) * 100.0;
        let gets = gets.map_or("-".to_string(), |g| g.to_string());
        println!("{label:<44}{:>12.1}{pct:>9.0}%{gets:>10}", speed(secs));
    };
    row("local disk (cat of a file on the cache's disk)", local_secs, None);
    match bindfs_secs {
        Some(_) => row("bindfs: that file through FUSE (the floor)", bindfs_secs, None),
        None => println!("bindfs: not installed (apt install bindfs), no FUSE floor measured"),
    }
    row("prefixfs, first read (from S3)", cold, Some(cold_gets));
    row("prefixfs, second read after a remount", warm, Some(warm_gets));
    rt.block_on(srv.shutdown());
}
