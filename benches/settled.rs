//! Settled directories (`--settled-after`, issue 26): `find` + `du -s` over a year of dated
//! directories another client wrote, after a remount, against the cold walk of a plain
//! mount measured in the same run: requests by kind and seconds. The embedded server adds
//! LATENCY_MS to every answer, as S3 would.
//!
//! Rows: a plain mount (the baseline: each mount walks cold); the first walk of a settling
//! mount (cold, same requests, plus writing its listings); its remount within
//! `--settled-ttl` (answered from the cache directory); a remount past it (each directory
//! listed again, every attribute carried over to the unchanged versions: no HEAD).
//!
//! Run: `cargo bench --bench settled` (as root: it mounts FUSE). Knobs: DAYS (365),
//! PER_DAY (20), LATENCY_MS (20), PREFIXES (16), RUNS (3: the best time of each row counts;
//! requests are the same every run).

mod common;

use common::{BUCKET, knob};
use prefixfs::layout::{Layout, RelPath};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WALK: &str = "find year > /dev/null && du -s year > /dev/null";

fn requests(mountpoint: &Path) -> BTreeMap<String, u64> {
    prefixfs::read_stats(mountpoint)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("requests_"))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// Seconds and requests of the walk on a fresh mount with `extra` flags and cache `cache`.
fn walk(endpoint: &str, base: &Path, cache: &Path, extra: &[&str]) -> (f64, BTreeMap<String, u64>) {
    let mnt = base.join("mnt");
    let child = common::mount(endpoint, &mnt, cache, extra);
    let before = requests(&mnt);
    let start = Instant::now();
    let ok = Command::new("sh")
        .args(["-c", WALK])
        .current_dir(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    let secs = start.elapsed().as_secs_f64();
    assert!(ok, "the walk failed");
    let sent = requests(&mnt)
        .into_iter()
        .map(|(k, v)| (k.clone(), v - before.get(&k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    common::unmount(&mnt.to_path_buf(), child);
    (secs, sent)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let days = knob("DAYS", 365.0) as usize;
    let per_day = knob("PER_DAY", 20.0) as usize;
    let latency = Duration::from_millis(knob("LATENCY_MS", 20.0) as u64);
    let prefixes = knob("PREFIXES", 16.0) as u32;
    let runs = knob("RUNS", 3.0).max(1.0) as usize;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server_dir = common::server_dir();
    let srv = common::start_server(&rt, server_dir.path(), latency, |_| {});
    let endpoint = srv.endpoint();
    let work = tempfile::tempdir().expect("work dir");
    let s3 = rt.block_on(common::connect(&endpoint));
    let layout = Layout::new("data", prefixes).expect("layout");
    rt.block_on(common::write_descriptor(&s3, &layout));
    let paths: Vec<String> = (0..days)
        .flat_map(|d| (0..per_day).map(move |i| format!("year/{:02}/{:02}/{i:03}.log", d / 31 + 1, d % 31 + 1)))
        .collect();
    let keys = paths.iter().map(|p| {
        let key = layout.file_key(&RelPath::parse(p).expect("path")).expect("key");
        (key, bytes::Bytes::from_static(b"line\n"))
    });
    rt.block_on(common::put_all(&s3, keys, 256));
    let settled = ["--settled-after", "0", "--settled-ttl", "3600"];
    let revalidate = ["--settled-after", "0", "--settled-ttl", "0"];
    let mut rows: Vec<(&str, f64, BTreeMap<String, u64>)> = Vec::new();
    let mut keep = |label: &'static str, (secs, sent): (f64, BTreeMap<String, u64>)| {
        println!("  {label}: {secs:.2} s, {sent:?}");
        match rows.iter_mut().find(|r| r.0 == label) {
            Some(r) => r.1 = r.1.min(secs),
            None => rows.push((label, secs, sent)),
        }
    };
    for run in 0..runs {
        let plain = work.path().join(format!("plain-{run}"));
        let cache = work.path().join(format!("settled-{run}"));
        keep(
            "plain mount, cold walk (baseline)",
            walk(&endpoint, work.path(), &plain, &[]),
        );
        keep(
            "settling mount, first walk (cold)",
            walk(&endpoint, work.path(), &cache, &settled),
        );
        keep(
            "remount within --settled-ttl",
            walk(&endpoint, work.path(), &cache, &settled),
        );
        keep(
            "remount past --settled-ttl (revalidate)",
            walk(&endpoint, work.path(), &cache, &revalidate),
        );
    }
    println!(
        "settled: `{WALK}` over {days} days × {per_day} files ({} directories), {} prefixes, {} ms added to every answer; bucket {BUCKET}",
        days + days.div_ceil(31) + 1,
        prefixes,
        latency.as_millis()
    );
    println!(
        "{:<44}{:>9}{:>9}{:>8}{:>8}{:>9}",
        "", "s", "× base", "LIST", "HEAD", "all"
    );
    let base = rows.first().map_or(1.0, |r| r.1);
    for (label, secs, sent) in &rows {
        let n = |k: &str| sent.get(k).copied().unwrap_or(0);
        let all: u64 = sent.values().sum();
        println!(
            "{label:<44}{secs:>9.2}{:>9.3}{:>8}{:>8}{all:>9}",
            secs / base,
            n("list"),
            n("head")
        );
    }
    rt.block_on(srv.shutdown());
}
