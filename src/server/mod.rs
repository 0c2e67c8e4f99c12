//! The embedded S3-compatible server, for the demo mount and the tests.
//!
//! The protocol (SigV4, XML, routing) is the `s3s` crate's; the store is [`disk::DiskStore`],
//! the project's own flat-namespace store. Sockets get TCP_NODELAY (without it each GET stalls
//! ~40 ms on delayed ACKs). Nothing here knows about the filesystem.

pub mod disk;
pub mod partitions;
mod s3impl;

use disk::DiskStore;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Fixed credentials of the embedded server (it only listens on loopback by default).
pub const DEFAULT_ACCESS_KEY: &str = "prefixfs";
pub const DEFAULT_SECRET_KEY: &str = "prefixfs-secret";

/// Faults a test can switch on in a running server.
#[derive(Debug)]
pub struct Faults {
    /// Writes (PUT, parts, copies, completions) still accepted before every further one is
    /// refused with 403 AccessDenied; negative: no limit.
    writes_left: std::sync::atomic::AtomicI64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            writes_left: std::sync::atomic::AtomicI64::new(-1),
        }
    }
}

impl Faults {
    pub fn set_reject_writes(&self, on: bool) {
        self.writes_left
            .store(if on { 0 } else { -1 }, std::sync::atomic::Ordering::Relaxed);
    }

    /// Accept `n` more writes, then refuse all.
    pub fn fail_writes_after(&self, n: i64) {
        self.writes_left.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the next write is refused (counts it).
    pub fn take_write(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let r = self
            .writes_left
            .fetch_update(Relaxed, Relaxed, |n| if n > 0 { Some(n - 1) } else { None });
        matches!(r, Err(0))
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    /// Buckets to create at start if missing.
    pub buckets: Vec<String>,
    pub faults: Arc<Faults>,
    /// Throttle like S3's partitions (see [`partitions`]); None: never throttle.
    pub emulator: Option<partitions::EmulatorConfig>,
}

impl ServerConfig {
    pub fn local(data_dir: PathBuf) -> Self {
        ServerConfig {
            data_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            access_key: DEFAULT_ACCESS_KEY.into(),
            secret_key: DEFAULT_SECRET_KEY.into(),
            buckets: Vec::new(),
            faults: Arc::default(),
            emulator: None,
        }
    }
}

/// A running server; stops when dropped or on [`RunningServer::shutdown`].
pub struct RunningServer {
    pub addr: SocketAddr,
    pub emulator: Option<Arc<partitions::Emulator>>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Opens the store, binds, and serves on the current tokio runtime.
pub async fn start(cfg: ServerConfig) -> std::io::Result<RunningServer> {
    let store = Arc::new(DiskStore::open(&cfg.data_dir)?);
    for b in &cfg.buckets {
        match store.create_bucket(b) {
            Ok(()) | Err(disk::DiskError::BucketExists) => {}
            Err(e) => return Err(std::io::Error::other(format!("creating bucket {b}: {e}"))),
        }
    }
    let emulator = cfg.emulator.clone().map(|c| Arc::new(partitions::Emulator::new(c)));
    let service = {
        let mut b = S3ServiceBuilder::new(s3impl::S3Store::new(store, cfg.faults.clone(), emulator.clone()));
        b.set_auth(SimpleAuth::from_single(cfg.access_key.clone(), cfg.secret_key.clone()));
        b.build()
    };
    let listener = TcpListener::bind(cfg.addr).await?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let socket = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped.changed() => break,
            };
            let _ = socket.set_nodelay(true);
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            let mut stop_conn = stopped.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = conn => {}
                    _ = stop_conn.changed() => {}
                }
            });
        }
    });
    tracing::info!(%addr, dir = %cfg.data_dir.display(), "embedded S3 server listening");
    Ok(RunningServer {
        addr,
        emulator,
        stop,
        task: Some(task),
    })
}
