//! The integration-test harness: an S3 server (the embedded one in-process, or moto's as a
//! child process), prefixfs mounted for real through its binary, and guards that unmount
//! and stop everything on drop, also when a test panics.
#![allow(dead_code)]

use prefixfs::layout::{Layout, RelPath};
use prefixfs::server::{self, RunningServer, ServerConfig};
use prefixfs::store::ObjectStore;
use prefixfs::store::aws::{AwsConfig, AwsStore};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "test";
/// The keys the test servers are started with (moto accepts any).
pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key";

pub fn test_credentials() -> server::Credentials {
    server::Credentials {
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
    }
}
pub const ROOT: &str = "data";

pub enum Backend {
    Embedded(RunningServer),
    Moto(Child),
}

/// Runs each named test body (a function taking an [`Env`]) against every S3 implementation:
/// the embedded server and moto's (an independent implementation, to catch behaviour that
/// only our server has).
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(super::Env::embedded()) } )*
        }
        mod moto {
            $( #[test] fn $name() { super::$name(super::Env::moto()) } )*
        }
    };
}

/// One S3 server with one bucket, and a client to inspect it through the S3 API.
pub struct Env {
    pub faults: std::sync::Arc<server::Faults>,
    pub emulator: Option<std::sync::Arc<server::partitions::Emulator>>,
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub s3: AwsStore,
    backend: Option<Backend>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Env {
    pub fn embedded() -> Env {
        Self::embedded_with(None)
    }

    /// The embedded server throttling like S3 (see `server::partitions`).
    pub fn embedded_with(emulator: Option<server::partitions::EmulatorConfig>) -> Env {
        Self::embedded_config(|c| c.emulator = emulator)
    }

    /// The embedded server, configured by `f` (faults, latency…).
    pub fn embedded_config(f: impl FnOnce(&mut ServerConfig)) -> Env {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = ServerConfig::local(dir.path().join("s3"));
        cfg.buckets.push(BUCKET.into());
        f(&mut cfg);
        cfg.credentials = Some(test_credentials());
        let faults = cfg.faults.clone();
        let srv = rt.block_on(server::start(cfg)).expect("server starts");
        let endpoint = srv.endpoint();
        let s3 = rt.block_on(AwsStore::connect(&client_config(&endpoint)));
        Env {
            faults,
            emulator: srv.emulator.clone(),
            rt,
            dir,
            endpoint,
            s3,
            backend: Some(Backend::Embedded(srv)),
        }
    }

    /// Stops the embedded server, waits `down`, and starts it again on the same address and
    /// data, with the same faults (`plan`): what a client sees when S3 goes away a while.
    pub fn restart_embedded(&mut self, down: Duration, plan: Option<std::sync::Arc<server::faults::FaultPlan>>) {
        let Some(Backend::Embedded(srv)) = self.backend.take() else {
            panic!("restart_embedded needs the embedded server");
        };
        let addr = srv.addr;
        self.rt.block_on(srv.shutdown());
        std::thread::sleep(down);
        let mut cfg = ServerConfig::local(self.dir.path().join("s3"));
        cfg.addr = addr;
        cfg.credentials = Some(test_credentials());
        cfg.faults = self.faults.clone();
        cfg.fault_plan = plan;
        let srv = self.rt.block_on(server::start(cfg)).expect("server restarts");
        self.backend = Some(Backend::Embedded(srv));
    }

    /// moto's S3 server (`moto_server`, from PyPI `moto[server]`), an independent
    /// implementation to cross-check against.
    pub fn moto() -> Env {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("moto.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .expect("python3 must be installed; scripts/test.sh installs moto[server] into it");
        let endpoint = format!("http://127.0.0.1:{port}");
        let s3 = rt.block_on(AwsStore::connect(&client_config(&endpoint)));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rt.block_on(s3.create_bucket()) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => panic!("moto_server did not come up: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        Env {
            faults: Default::default(),
            emulator: None,
            rt,
            dir,
            endpoint,
            s3,
            backend: Some(Backend::Moto(child)),
        }
    }

    pub fn layout(&self, prefix_count: u32) -> Layout {
        Layout::new(ROOT, prefix_count).expect("layout")
    }

    /// Every key in the bucket, sorted.
    pub fn keys(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut token = None;
        loop {
            let page = self
                .rt
                .block_on(self.s3.list("", None, token.as_deref(), None))
                .expect("list");
            out.extend(page.objects.into_iter().map(|o| o.key));
            match page.next_token {
                Some(t) => token = Some(t),
                None => return out,
            }
        }
    }

    /// Keys of the layout's data (the descriptor left out).
    pub fn data_keys(&self) -> BTreeSet<String> {
        self.keys().into_iter().filter(|k| !k.contains("/.prefixfs/")).collect()
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        self.rt.block_on(self.s3.get(key, None, None)).expect("get").to_vec()
    }

    pub fn put(&self, key: &str, body: &[u8]) {
        self.rt
            .block_on(
                self.s3
                    .put(key, bytes::Bytes::copy_from_slice(body), &Default::default()),
            )
            .expect("put");
    }

    /// A new empty directory under the test's temp dir.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    /// The `prefixfs` command with this server's credentials.
    pub fn prefixfs(&self) -> Command {
        self.command(env!("CARGO_BIN_EXE_prefixfs"))
    }

    /// A command with this server's credentials in its environment.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE");
        c
    }

    pub fn conn_args(&self) -> Vec<String> {
        vec![
            "--endpoint-url".into(),
            self.endpoint.clone(),
            "--force-path-style".into(),
            "--region".into(),
            "us-east-1".into(),
        ]
    }

    /// Mounts s3://test/data with `prefix_count` prefixes (writing the descriptor if none).
    pub fn mount(&self, prefix_count: u32, extra: &[&str]) -> Mount {
        self.mount_host("cache", prefix_count, extra)
    }

    /// Like [`Env::mount`], as another host would: its own cache directory `cache_dir`.
    pub fn mount_host(&self, cache_dir: &str, prefix_count: u32, extra: &[&str]) -> Mount {
        let mnt = self.subdir(&format!("mnt-{}", uuid::Uuid::new_v4().simple()));
        let log = self
            .dir
            .path()
            .join(format!("{}.log", mnt.file_name().unwrap_or_default().to_string_lossy()));
        let mut cmd = self.prefixfs();
        cmd.arg("mount")
            .arg(format!("s3://{BUCKET}/{ROOT}"))
            .arg(&mnt)
            .arg("--foreground")
            .arg("--init")
            .args(["--prefix-count", &prefix_count.to_string()])
            .arg("--cache-dir")
            .arg(self.dir.path().join(cache_dir))
            .args(self.conn_args())
            .args(extra)
            .env("RUST_LOG", "info,prefixfs=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map(Stdio::from).expect("log file"));
        let child = cmd.spawn().expect("spawn prefixfs");
        let mut m = Mount {
            path: mnt,
            child: Some(child),
            log,
        };
        m.wait_mounted();
        m
    }
}

pub fn client_config(endpoint: &str) -> AwsConfig {
    AwsConfig {
        bucket: BUCKET.into(),
        endpoint_url: Some(endpoint.into()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        profile: None,
        static_credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        content_type_auto: false,
        ..AwsConfig::default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        match self.backend.take() {
            Some(Backend::Moto(mut c)) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Some(Backend::Embedded(s)) => drop(s),
            None => {}
        }
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(want.as_str())))
        .unwrap_or(false)
}

/// A mounted prefixfs daemon; unmounts and reaps it on drop.
pub struct Mount {
    pub path: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Mount {
    fn wait_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&self.path) {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("prefixfs exited ({status}) before mounting:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                panic!("prefixfs did not mount within 30 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Panics unless the daemon is still running and mounted.
    pub fn assert_alive(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!("prefixfs died ({status}):\n{}", self.log_text());
        }
        assert!(is_mounted(&self.path), "{} is no longer mounted", self.path.display());
    }

    /// Runs a shell command in the mount directory, with a timeout; returns its output.
    pub fn sh(&mut self, script: &str) -> Output {
        let out = run_sh(&self.path, script);
        self.assert_alive();
        out
    }

    /// Like [`Mount::sh`] but panics (with the daemon's log) unless the command succeeded.
    pub fn ok(&mut self, script: &str) -> String {
        let out = self.sh(script);
        if out.code != 0 {
            panic!(
                "`{script}` failed ({}):\nstdout: {}\nstderr: {}\nwarnings in the log:\n{}\nlog tail:\n{}",
                out.code,
                out.stdout,
                out.stderr,
                tail(
                    &self
                        .log_text()
                        .lines()
                        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    20
                ),
                tail(&self.log_text(), 30)
            );
        }
        out.stdout
    }

    /// The request counters of the daemon (root xattr).
    pub fn stats(&self) -> std::collections::BTreeMap<String, u64> {
        let text = prefixfs::read_stats(&self.path).expect("stats xattr");
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
            .collect()
    }

    pub fn unmount(&mut self) {
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg(&self.path).status();
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `bash -c script` in `dir`, killed after 300 s so a hung mount fails the test instead of
/// hanging CI.
pub fn run_sh(dir: &Path, script: &str) -> Output {
    let out = Command::new("timeout")
        .args(["-k", "5", "300", "bash", "-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The set of keys a tree of files and directories should occupy.
pub fn expected_keys(layout: &Layout, files: &[&str], dirs: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in files {
        out.insert(layout.file_key(&RelPath::parse(f).expect("path")).expect("key"));
    }
    for d in dirs {
        out.insert(layout.dir_marker_key(&RelPath::parse(d).expect("path")).expect("key"));
    }
    out
}

/// Builds a local tree of dated directories: `days` days × `per_day` small files.
pub fn dated_tree(base: &Path, days: u32, per_day: u32) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    let mut dirs = vec!["2017".to_string(), "2017/02".to_string()];
    for d in 1..=days {
        let day = format!("2017/02/{d:02}");
        std::fs::create_dir_all(base.join(&day)).expect("mkdir");
        dirs.push(day.clone());
        for i in 0..per_day {
            let f = format!("{day}/log-{i:03}.txt");
            std::fs::write(base.join(&f), format!("day {d} file {i}\n")).expect("write");
            files.push(f);
        }
    }
    (files, dirs)
}
