//! The mount's memory target (`--memory-target-mib`, issue 26) on a real mount: 16 writers
//! streaming large files and 50 readers at once keep the daemon's peak resident set within
//! the target (plus the process's own fixed cost), the writers waiting for memory instead
//! of growing it; what they wrote is whole in the bucket.

mod common;

use common::*;
use prefixfs::layout::RelPath;
use prefixfs::store::ObjectStore;

const MIB: u64 = 1024 * 1024;

fn key(env: &Env, path: &str) -> String {
    env.layout(16).file_key(&RelPath::parse(path).unwrap()).unwrap()
}

/// The daemon's peak resident set (VmHWM), in bytes.
fn peak_rss(m: &Mount) -> u64 {
    let pid = m.child.as_ref().expect("daemon").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// What the process needs besides what the target counts: code and runtime (about 21 MiB
/// idle), HTTP and FUSE buffers, the allocator's slack. Unbounded, the same work peaks at
/// about 550 MiB.
const FIXED: u64 = 96 * MIB;

#[test]
fn sixteen_writers_and_fifty_readers_stay_within_the_memory_target() {
    let env = Env::embedded();
    for i in 0..50 {
        let body: Vec<u8> = (0..4 * MIB).map(|b| (b % 251) as u8 ^ i as u8).collect();
        env.put(&key(&env, &format!("in/r{i}.bin")), &body);
    }
    let target = 160 * MIB;
    let mut m = env.mount(
        16,
        &[
            "--memory-target-mib",
            "160",
            "--part-size-mib",
            "8",
            "--upload-parts",
            "4",
        ],
    );
    let idle = peak_rss(&m);
    m.ok("mkdir out
         for i in $(seq 0 15); do dd if=/dev/urandom of=out/w$i bs=1M count=48 status=none & done
         for i in $(seq 0 49); do cat in/r$i.bin > /dev/null & done
         wait");
    let peak = peak_rss(&m);
    let s = m.stats();
    eprintln!("idle {} MiB, peak {} MiB, stats {s:?}", idle / MIB, peak / MIB);
    assert_eq!(s["memory_target"], target);
    // Unbounded, the writers alone would hold 16 × (1 + 4) parts of 8 MiB: 640 MiB.
    assert!(s["memory_waits"] > 0, "the writers never had to wait: {s:?}");
    assert_eq!(s["memory_overcommits"], 0, "{s:?}");
    assert!(
        peak <= target + FIXED,
        "peak RSS {} MiB over the target {} MiB + {} MiB",
        peak / MIB,
        target / MIB,
        FIXED / MIB
    );
    assert_eq!(
        (s["memory_writes"], s["memory_read_ahead"]),
        (0, 0),
        "all given back: {s:?}"
    );
    m.unmount();
    for i in 0..16 {
        let size = env
            .rt
            .block_on(env.s3.head(&key(&env, &format!("out/w{i}"))))
            .expect("head")
            .size;
        assert_eq!(size, 48 * MIB, "out/w{i}");
    }
}
