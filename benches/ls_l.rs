//! `ls -l` of a 10,000-file directory on an S3 that answers after 20 ms, against one raw LIST
//! walk of the same keys (every prefix in parallel, as prefixfs lists) measured in the same
//! run: cold (nothing cached) and warm (right after).
//!
//! Run: `cargo bench --bench ls_l` (as root: it mounts FUSE). Knobs (environment): FILES
//! (10000), LATENCY_MS (20), PREFIXES (16).

use futures::StreamExt;
use prefixfs::layout::{Layout, RelPath};
use prefixfs::server::{self, ServerConfig};
use prefixfs::store::ObjectStore;
use prefixfs::store::aws::{AwsConfig, AwsStore};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "bench";
const ACCESS: &str = "bench-access-key";
const SECRET: &str = "bench-secret-key";

fn knob(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One LIST walk of `dir` over every prefix, in parallel; returns the keys seen.
async fn list_walk(s3: &AwsStore, layout: &Layout, dir: &RelPath) -> usize {
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

fn mount(endpoint: &str, base: &Path, name: &str, extra: &[&str]) -> (std::path::PathBuf, std::process::Child) {
    let path = base.join(name);
    std::fs::create_dir_all(&path).expect("mkdir");
    let child = Command::new(env!("CARGO_BIN_EXE_prefixfs"))
        .args([
            "mount",
            &format!("s3://{BUCKET}/data"),
            path.to_str().unwrap_or_default(),
            "--foreground",
        ])
        .args([
            "--endpoint-url",
            endpoint,
            "--force-path-style",
            "--region",
            "us-east-1",
        ])
        .arg("--cache-dir")
        .arg(base.join(format!("cache-{name}")))
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn prefixfs");
    let want = path.to_string_lossy().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&want))
    {
        assert!(Instant::now() < deadline, "mount did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    (path, child)
}

fn target_in(mnt: &Path) -> std::path::PathBuf {
    mnt.join("2017/02/08")
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let files = knob("FILES", 10_000.0) as usize;
    let latency = Duration::from_millis(knob("LATENCY_MS", 20.0) as u64);
    let prefixes = knob("PREFIXES", 16.0) as u32;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = ServerConfig::local(dir.path().join("s3"));
    cfg.buckets.push(BUCKET.into());
    cfg.credentials = Some(server::Credentials {
        access_key: ACCESS.into(),
        secret_key: SECRET.into(),
    });
    cfg.latency = latency;
    let srv = rt.block_on(server::start(cfg)).expect("server");
    let endpoint = srv.endpoint();
    let s3 = rt.block_on(AwsStore::connect(&AwsConfig {
        bucket: BUCKET.into(),
        endpoint_url: Some(endpoint.clone()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        profile: None,
        static_credentials: Some((ACCESS.into(), SECRET.into())),
    }));
    let layout = Layout::new("data", prefixes).expect("layout");
    let day = RelPath::parse("2017/02/08").expect("path");
    // The bucket: a descriptor and FILES small objects in one directory, written by another
    // S3 client (no POSIX metadata).
    rt.block_on(async {
        let desc = serde_json::to_vec(&layout.descriptor()).expect("json");
        s3.put(&layout.descriptor_key(), desc.into(), &Default::default())
            .await
            .expect("descriptor");
        futures::stream::iter(0..files)
            .map(|i| {
                let key = layout
                    .file_key(&day.join(&format!("{i:06}.log")).expect("name"))
                    .expect("key");
                let s3 = &s3;
                async move {
                    s3.put(&key, bytes::Bytes::from_static(b"line\n"), &Default::default())
                        .await
                }
            })
            .buffer_unordered(256)
            .for_each(|r| async move { r.expect("put") })
            .await;
    });
    // The best of three walks: the baseline is given every advantage.
    let mut walk = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let seen = rt.block_on(list_walk(&s3, &layout, &day));
        walk = walk.min(start.elapsed().as_secs_f64());
        assert_eq!(seen, files);
    }
    println!(
        "ls_l: {files} files in one directory, {prefixes} prefixes, {} ms added to every S3 answer",
        latency.as_millis()
    );
    println!("  raw LIST walk (all prefixes in parallel, best of 3): {walk:.3} s (1.00x)");
    let local = tempfile::tempdir().expect("tempdir");
    for i in 0..files {
        std::fs::write(local.path().join(format!("{i:06}.log")), b"line\n").expect("local file");
    }
    ls_l(local.path(), files);
    let on_disk = ls_l(local.path(), files);
    println!(
        "  ls -l of the same names on the local disk: {on_disk:.3} s ({:.2}x)",
        on_disk / walk
    );
    for (name, extra) in [
        ("prefixfs (POSIX metadata: HEADs)", &[][..]),
        ("prefixfs --trust-listing", &["--trust-listing"][..]),
    ] {
        // Fresh mount: the path's three implicit directories are looked up first (each a
        // marker HEAD, a file HEAD and the parent's listing, in series).
        let base = tempfile::tempdir().expect("tempdir");
        let (path, mut child) = mount(&endpoint, base.path(), "mnt", extra);
        let target = target_in(&path);
        let fresh = ls_l(&target, files);
        let warm = ls_l(&target, files);
        // `ls -l`'s own work on the mount: the kernel's dentries and inodes dropped, the
        // listing still cached in the daemon (no request). What a cold run adds to the walk
        // when nothing of it overlaps the walk.
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
        let kernel_cold = ls_l(&target, files);
        let stats = prefixfs::read_stats(&path).unwrap_or_default();
        let requests: Vec<&str> = stats
            .lines()
            .filter(|l| l.starts_with("requests_") && !l.ends_with(" 0"))
            .collect();
        let _ = Command::new("umount").arg(&path).status();
        let _ = child.wait();
        // The directory cold: its parent was listed (`ls 2017/02`), nothing of it is cached.
        // Each run on a mount of its own; the best of three, as for the walk.
        let mut colds = Vec::new();
        for run in 0..3 {
            let (path, mut child) = mount(&endpoint, base.path(), &format!("cold{run}"), extra);
            let listed = Command::new("ls").arg(path.join("2017/02")).output().expect("ls");
            assert!(listed.status.success());
            // PERF=FILE: profile the daemon during the first run (perf record -g).
            let perf = std::env::var("PERF").ok().filter(|_| run == 0).map(|out| {
                let p = Command::new("perf")
                    .args([
                        "record",
                        "-g",
                        "-F",
                        "4000",
                        "-o",
                        &format!("{out}-{}", extra.len()),
                        "-p",
                        &child.id().to_string(),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("perf");
                std::thread::sleep(Duration::from_millis(500));
                p
            });
            colds.push(ls_l(&target_in(&path), files));
            if let Some(mut p) = perf {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
                let _ = p.wait();
            }
            let _ = Command::new("umount").arg(&path).status();
            let _ = child.wait();
        }
        colds.sort_by(f64::total_cmp);
        let (cold, median) = (colds[0], colds[1]);
        println!(
            "  {name}: directory cold {cold:.3} s ({:.2}x the walk; best of 3, median {median:.3} s = {:.2}x), fresh mount {fresh:.3} s ({:.2}x), warm {warm:.3} s, kernel cold with the listing cached {kernel_cold:.3} s ({:.2}x); requests of the fresh run: {}",
            cold / walk,
            median / walk,
            fresh / walk,
            kernel_cold / walk,
            requests.join(", ")
        );
    }
    rt.block_on(srv.shutdown());
}
