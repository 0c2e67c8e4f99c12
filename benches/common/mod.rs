//! What the benchmarks share: the embedded server with emulated latency, a raw client of it,
//! the layout descriptor, and a mount of it through the real binary.
#![allow(dead_code)]

use prefixfs::layout::Layout;
use prefixfs::server::{self, RunningServer, ServerConfig};
use prefixfs::store::ObjectStore;
use prefixfs::store::aws::{AwsConfig, AwsStore};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "bench";
pub const ACCESS: &str = "bench-access-key";
pub const SECRET: &str = "bench-secret-key";

/// A number from the environment, else `default`.
pub fn knob(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The embedded server on `dir`, every answer `latency` late, configured further by `f`.
pub fn start_server(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    latency: Duration,
    f: impl FnOnce(&mut ServerConfig),
) -> RunningServer {
    let mut cfg = ServerConfig::local(dir.to_path_buf());
    cfg.buckets.push(BUCKET.into());
    cfg.credentials = Some(server::Credentials {
        access_key: ACCESS.into(),
        secret_key: SECRET.into(),
    });
    cfg.latency = latency;
    f(&mut cfg);
    rt.block_on(server::start(cfg)).expect("server")
}

/// Where the server keeps its objects: memory (/dev/shm) where there is one, so the disk
/// under test is the mount's only.
pub fn server_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}

/// PUTs every (key, body), `in_flight` at once, as the fixtures of a run.
pub async fn put_all(
    s3: &dyn ObjectStore,
    objects: impl IntoIterator<Item = (String, bytes::Bytes)>,
    in_flight: usize,
) {
    use futures::StreamExt;
    futures::stream::iter(objects)
        .map(|(key, body)| async move { s3.put(&key, body, &Default::default()).await })
        .buffer_unordered(in_flight)
        .for_each(|r| async move { r.expect("put") })
        .await;
}

/// A raw SDK client of the server at `endpoint`.
pub async fn connect(endpoint: &str) -> AwsStore {
    AwsStore::connect(&AwsConfig {
        bucket: BUCKET.into(),
        endpoint_url: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        profile: None,
        static_credentials: Some((ACCESS.into(), SECRET.into())),
        ..AwsConfig::default()
    })
    .await
}

/// Writes the descriptor of `layout` (as `prefixfs init` does).
pub async fn write_descriptor(s3: &dyn ObjectStore, layout: &Layout) {
    let desc = serde_json::to_vec(&layout.descriptor()).expect("json");
    s3.put(&layout.descriptor_key(), desc.into(), &Default::default())
        .await
        .expect("descriptor");
}

/// Mounts s3://bench/data at `path` (made if missing) with its cache in `cache`, and waits
/// until the kernel lists the mount.
pub fn mount(endpoint: &str, path: &Path, cache: &Path, extra: &[&str]) -> Child {
    std::fs::create_dir_all(path).expect("mkdir");
    let child = Command::new(env!("CARGO_BIN_EXE_prefixfs"))
        .args([
            "mount",
            &format!("s3://{BUCKET}/data"),
            path.to_str().unwrap_or_default(),
        ])
        .args(["--foreground", "--endpoint-url", endpoint, "--force-path-style"])
        .args(["--region", "us-east-1"])
        .arg("--cache-dir")
        .arg(cache)
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
    child
}

/// Unmounts `path` and waits for its daemon.
pub fn unmount(path: &PathBuf, mut child: Child) {
    let _ = Command::new("umount").arg(path).status();
    let _ = child.wait();
}
