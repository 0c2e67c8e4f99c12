//! Programs that touch many files, on a mount whose S3 answers after 20 ms, against the same
//! commands on local disk, with the S3 requests each step sent (the mount's counters): `git
//! clone` of a generated repository into the mount, `git status` right after and again past
//! the metadata TTL, `git gc`, `tar x` into an empty directory and `tar x` of the same archive
//! over the tree it made (each file unlinked and created again under its old name).
//!
//! Run: `cargo bench --bench tools` (as root: it mounts FUSE). Knobs (environment): FILES
//! (300, in 12 directories), LATENCY_MS (20), TTL (5: the mount's `--metadata-ttl`, the
//! default).

use prefixfs::layout::Layout;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::knob;

/// Runs `script` with `sh -c` in `dir`; panics with its output when it fails.
fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script} in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repository of `files` small source files in 12 directories, and a tar of its tree.
fn make_source(base: &Path, files: usize) -> (PathBuf, PathBuf) {
    let src = base.join("src");
    for i in 0..files {
        let dir = src.join(format!("mod{:02}", i % 12));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let body: String = (0..20).map(|l| format!("fn f{i}_{l}() -> u32 {{ {l} }}\n")).collect();
        std::fs::write(dir.join(format!("file{i:04}.rs")), body).expect("write");
    }
    sh(&src, "git init -q && git add -A && git commit -qm init");
    let tar = base.join("src.tar");
    sh(base, &format!("tar cf {} --exclude=.git src", tar.display()));
    (src, tar)
}

/// The mount's request counters by kind (`put`, `head`, ...).
fn requests(mountpoint: &Path) -> BTreeMap<String, u64> {
    let text = prefixfs::read_stats(mountpoint).expect("stats");
    text.lines()
        .filter_map(|l| l.strip_prefix("requests_")?.split_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// What was sent between two snapshots, as `3 put, 12 head`.
fn sent(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = after
        .iter()
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The steps, each a shell script run in the target directory; `None` is the pause past
/// the TTL.
fn steps(src: &Path, tar: &Path) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("git clone", Some(format!("git clone -q {} repo", src.display()))),
        ("git status, right after", Some("git -C repo status --porcelain".into())),
        ("(the TTL passes)", None),
        (
            "git status, past the TTL",
            Some("git -C repo status --porcelain".into()),
        ),
        ("git gc", Some("git -C repo gc -q".into())),
        (
            "tar x, empty directory",
            Some(format!("mkdir t && tar xf {} -C t", tar.display())),
        ),
        ("tar x over that tree", Some(format!("tar xf {} -C t", tar.display()))),
    ]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let files = knob("FILES", 300.0) as usize;
    let latency = Duration::from_millis(knob("LATENCY_MS", 20.0) as u64);
    let ttl = knob("TTL", prefixfs::defaults::METADATA_TTL_SECS);
    let base = tempfile::tempdir().expect("tempdir");
    let (src, tar) = make_source(base.path(), files);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let srv = common::start_server(&rt, &base.path().join("s3"), latency, |_| {});
    let endpoint = srv.endpoint();
    rt.block_on(async {
        let s3 = common::connect(&endpoint).await;
        common::write_descriptor(&s3, &Layout::new("data", 16).expect("layout")).await;
    });

    let local = base.path().join("local");
    std::fs::create_dir_all(&local).expect("mkdir");
    let mnt = base.path().join("mnt");
    let child = common::mount(
        &endpoint,
        &mnt,
        &base.path().join("cache"),
        &["--metadata-ttl", &ttl.to_string()],
    );
    println!(
        "tools: {files} files, {} ms added to every S3 answer, --metadata-ttl {ttl}",
        latency.as_millis()
    );
    println!("  | step | local disk | prefixfs | ratio | S3 requests |");
    println!("  |---|---|---|---|---|");
    for (name, script) in steps(&src, &tar) {
        let Some(script) = script else {
            std::thread::sleep(Duration::from_secs_f64(ttl + 1.0));
            continue;
        };
        let start = Instant::now();
        sh(&local, &script);
        let on_disk = start.elapsed().as_secs_f64();
        let before = requests(&mnt);
        let start = Instant::now();
        sh(&mnt, &script);
        let on_mount = start.elapsed().as_secs_f64();
        let what = sent(&before, &requests(&mnt));
        println!(
            "  | {name} | {on_disk:.3} s | {on_mount:.3} s | {:.0}x | {what} |",
            on_mount / on_disk.max(1e-3)
        );
    }
    common::unmount(&mnt, child);
    rt.block_on(srv.shutdown());
}
