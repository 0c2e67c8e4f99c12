//! The memory target (`--memory-target-mib`, issue 26): 16 writers streaming WRITE_MIB each
//! and 50 readers of 4 MiB files at once, through mounts with a shrinking target, against
//! the default target (95% of this machine: nothing waits) measured in the same run: the
//! daemon's peak resident set against its target, the time the work took, and how often a
//! writer waited for memory. The embedded server adds LATENCY_MS to every answer and holds
//! each connection to MIBPS, as S3 would.
//!
//! Run: `cargo bench --bench memory` (as root: it mounts FUSE). Knobs: WRITE_MIB (64),
//! LATENCY_MS (20), MIBPS (90), TARGETS (MiB, comma-separated: 512,256,160).

mod common;

use common::{BUCKET, knob};
use prefixfs::layout::{Layout, RelPath};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn stat(mountpoint: &Path, name: &str) -> u64 {
    prefixfs::read_stats(mountpoint)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Seconds, peak RSS, target and writer waits of the workload on a mount with `extra`.
fn run(endpoint: &str, base: &Path, write_mib: u64, extra: &[&str]) -> (f64, u64, u64, u64) {
    let mnt = base.join("mnt");
    let child = common::mount(endpoint, &mnt, &base.join("cache"), extra);
    let script = format!(
        "rm -rf out; mkdir out
         for i in $(seq 0 15); do dd if=/dev/zero of=out/w$i bs=1M count={write_mib} status=none & done
         for i in $(seq 0 49); do cat in/r$i.bin > /dev/null & done
         wait"
    );
    let start = Instant::now();
    let ok = Command::new("sh")
        .args(["-c", &script])
        .current_dir(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    let secs = start.elapsed().as_secs_f64();
    assert!(ok, "the workload failed");
    let out = (
        secs,
        peak_rss(child.id()),
        stat(&mnt, "memory_target "),
        stat(&mnt, "memory_waits "),
    );
    common::unmount(&mnt.to_path_buf(), child);
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let write_mib = knob("WRITE_MIB", 64.0) as u64;
    let latency = Duration::from_millis(knob("LATENCY_MS", 20.0) as u64);
    let mibps = knob("MIBPS", 90.0);
    let targets: Vec<String> = std::env::var("TARGETS")
        .unwrap_or_else(|_| "512,256,160".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server_dir = common::server_dir();
    let srv = common::start_server(&rt, server_dir.path(), latency, |c| {
        c.connection_rate = (mibps > 0.0).then_some(mibps * MIB as f64);
    });
    let endpoint = srv.endpoint();
    let work = tempfile::tempdir().expect("work dir");
    let s3 = rt.block_on(common::connect(&endpoint));
    let layout = Layout::new("data", 16).expect("layout");
    rt.block_on(common::write_descriptor(&s3, &layout));
    let inputs = (0..50).map(|i| {
        let path = RelPath::parse(&format!("in/r{i}.bin")).expect("path");
        let body = bytes::Bytes::from(vec![i as u8; 4 << 20]);
        (layout.file_key(&path).expect("key"), body)
    });
    rt.block_on(common::put_all(&s3, inputs, 16));
    let (base_secs, base_rss, base_target, base_waits) = run(&endpoint, work.path(), write_mib, &[]);
    println!(
        "memory: 16 writers × {write_mib} MiB and 50 readers × 4 MiB at once, 8 MiB parts 4 in flight, {} ms added to every answer, {mibps} MiB/s per connection; bucket {BUCKET}",
        latency.as_millis()
    );
    println!(
        "{:<28}{:>12}{:>12}{:>10}{:>9}{:>9}",
        "target", "peak RSS", "of target", "s", "× base", "waits"
    );
    println!(
        "{:<28}{:>8} MiB{:>11.0}%{base_secs:>10.2}{:>9.2}{base_waits:>9}",
        format!("default ({} MiB)", base_target / MIB),
        base_rss / MIB,
        base_rss as f64 / base_target.max(1) as f64 * 100.0,
        1.0
    );
    for t in &targets {
        let (secs, rss, target, waits) = run(&endpoint, work.path(), write_mib, &["--memory-target-mib", t]);
        println!(
            "{:<28}{:>8} MiB{:>11.0}%{secs:>10.2}{:>9.2}{waits:>9}",
            format!("{t} MiB"),
            rss / MIB,
            rss as f64 / target.max(1) as f64 * 100.0,
            secs / base_secs
        );
    }
    rt.block_on(srv.shutdown());
}
