//! The embedded S3-compatible server, for the demo mount and the tests.
//!
//! The protocol (SigV4, XML, routing) is the `s3s` crate's; the store is [`disk::DiskStore`],
//! the project's own flat-namespace store. Sockets get TCP_NODELAY (without it each GET stalls
//! ~40 ms on delayed ACKs). Nothing here knows about the filesystem.

pub mod disk;
pub mod faults;
pub mod partitions;
mod s3impl;
pub mod wan;

pub use s3impl::Policy;
use s3impl::Signed;

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

/// The file in a data directory that holds the store's credentials (mode 0600).
pub const CREDENTIALS_FILE: &str = "credentials.json";

/// The keys requests must be signed with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl Credentials {
    /// Fresh random keys (from the OS's random source, through uuid v4).
    pub fn random() -> Credentials {
        Credentials {
            access_key: format!("PFS{}", uuid::Uuid::new_v4().simple()).to_uppercase(),
            secret_key: format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()),
        }
    }

    /// The credentials of the store in `data_dir`: read from its credentials file, or made
    /// at random and written there (0600) on first use. A file another user could read or
    /// replace is refused.
    pub fn load_or_create(data_dir: &std::path::Path) -> std::io::Result<Credentials> {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        let path = data_dir.join(CREDENTIALS_FILE);
        match std::fs::symlink_metadata(&path) {
            Ok(m) => {
                // SAFETY: geteuid has no preconditions.
                let me = unsafe { libc::geteuid() };
                if !m.is_file() || m.uid() != me || m.mode() & 0o077 != 0 {
                    return Err(std::io::Error::other(format!(
                        "{} must be a regular file owned by uid {me} with mode 0600; refusing to use it",
                        path.display()
                    )));
                }
                let text = std::fs::read_to_string(&path)?;
                serde_json::from_str(&text)
                    .map_err(|e| std::io::Error::other(format!("{} is unreadable: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let c = Credentials::random();
                let mut f = crate::private::file_options()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                f.write_all(
                    serde_json::to_string_pretty(&c)
                        .map_err(std::io::Error::other)?
                        .as_bytes(),
                )?;
                f.sync_all()?;
                Ok(c)
            }
            Err(e) => Err(e),
        }
    }
}

/// Faults a test can switch on in a running server.
#[derive(Debug)]
pub struct Faults {
    /// Writes (PUT, parts, copies, completions) still accepted before every further one is
    /// refused with 403 AccessDenied; negative: no limit.
    writes_left: std::sync::atomic::AtomicI64,
    /// DeleteObject and DeleteObjects answer 500 InternalError without deleting anything.
    fail_deletes: std::sync::atomic::AtomicBool,
    /// CompleteMultipartUploads still to be applied and then answered 500 InternalError, as
    /// when S3 completed the upload and the answer was lost on the way.
    lose_completions: std::sync::atomic::AtomicU32,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            writes_left: std::sync::atomic::AtomicI64::new(-1),
            fail_deletes: Default::default(),
            lose_completions: Default::default(),
        }
    }
}

impl Faults {
    pub fn set_fail_deletes(&self, on: bool) {
        self.fail_deletes.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn deletes_fail(&self) -> bool {
        self.fail_deletes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The next `n` completions are applied and their answers lost.
    pub fn lose_completion_answers(&self, n: u32) {
        self.lose_completions.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this completion's answer is to be lost (counts it).
    pub fn take_lost_completion(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.lose_completions
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

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
    /// The keys clients sign with; None: the data directory's own random ones
    /// ([`Credentials::load_or_create`]).
    pub credentials: Option<Credentials>,
    /// Buckets to create at start if missing.
    pub buckets: Vec<String>,
    pub faults: Arc<Faults>,
    /// Throttle like S3's partitions (see [`partitions`]); None: never throttle.
    pub emulator: Option<partitions::EmulatorConfig>,
    /// Added before every answer: S3 answers after 20–60 ms, loopback at once, and code
    /// that waits for one request before sending the next only shows up with this on.
    pub latency: std::time::Duration,
    /// Bytes per second each connection may move each way ([`wan::Capped`]); None: no cap.
    pub connection_rate: Option<f64>,
    /// Faults injected by rate, kind and operation ([`faults`]); None: none.
    pub fault_plan: Option<Arc<faults::FaultPlan>>,
    /// Bytes one CopyObject (or UploadPartCopy part) copies at most; S3's limit is 5 GiB.
    pub copy_object_max: u64,
    /// What the bucket's policy demands of requests ([`Policy`]).
    pub policy: Policy,
}

impl ServerConfig {
    pub fn local(data_dir: PathBuf) -> Self {
        ServerConfig {
            data_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            credentials: None,
            buckets: Vec::new(),
            faults: Arc::default(),
            emulator: None,
            latency: std::time::Duration::ZERO,
            connection_rate: None,
            fault_plan: None,
            copy_object_max: crate::limits::MAX_COPY_OBJECT,
            policy: Policy::default(),
        }
    }
}

/// `resp` with its body cut off halfway, its Content-Length still the whole: the
/// connection ends mid-body, as a dropped transfer does.
async fn truncated(resp: http::Response<s3s::Body>) -> Result<http::Response<s3s::Body>, s3s::HttpError> {
    let (mut parts, mut body) = resp.into_parts();
    let all = body.store_all_limited(usize::MAX).await.map_err(s3s::HttpError::new)?;
    if all.is_empty() {
        return Ok(http::Response::from_parts(parts, s3s::Body::empty()));
    }
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(all.len()));
    // A body of unknown length, so that the header is what hyper goes by and the transfer
    // ends short of it.
    let half = hyper::body::Frame::data(all.slice(..all.len() / 2));
    let stream = futures::stream::iter([Ok::<_, std::convert::Infallible>(half)]);
    let body = s3s::Body::http_body(http_body_util::StreamBody::new(stream));
    Ok(http::Response::from_parts(parts, body))
}

/// A running server; stops when dropped or on [`RunningServer::shutdown`].
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The keys requests must be signed with.
    pub credentials: Credentials,
    /// Where they are kept, when they came from the data directory.
    pub credentials_file: Option<PathBuf>,
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
    for b in &cfg.buckets {
        validate_bucket_name(b).map_err(std::io::Error::other)?;
    }
    // The objects are the files of whoever mounted them: nobody else may read the store,
    // and a data directory someone else owns is refused before anything is read from it.
    crate::private::ensure_dir(&cfg.data_dir)?;
    let store = Arc::new(DiskStore::open(&cfg.data_dir)?);
    let (credentials, credentials_file) = match cfg.credentials.clone() {
        Some(c) => (c, None),
        None => (
            Credentials::load_or_create(&cfg.data_dir)?,
            Some(cfg.data_dir.join(CREDENTIALS_FILE)),
        ),
    };
    if !cfg.addr.ip().is_loopback() {
        tracing::warn!(
            addr = %cfg.addr,
            "the embedded S3 store listens beyond loopback, over plain HTTP: anyone who can reach it and holds its keys can read and replace every object"
        );
    }
    for b in &cfg.buckets {
        match store.create_bucket(b) {
            Ok(()) | Err(disk::DiskError::BucketExists) => {}
            Err(e) => return Err(std::io::Error::other(format!("creating bucket {b}: {e}"))),
        }
    }
    let emulator = cfg.emulator.clone().map(|c| Arc::new(partitions::Emulator::new(c)));
    let service = {
        let mut b = S3ServiceBuilder::new(s3impl::S3Store::new(
            store,
            cfg.faults.clone(),
            emulator.clone(),
            cfg.copy_object_max,
            cfg.policy.clone(),
        ));
        b.set_auth(SimpleAuth::from_single(
            credentials.access_key.clone(),
            credentials.secret_key.clone(),
        ));
        b.set_access(Signed {
            public_read: cfg.policy.public_read,
        });
        b.build()
    };
    let latency = cfg.latency;
    let plan = cfg.fault_plan.clone();
    let policy = Arc::new(cfg.policy.clone());
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let service = service.clone();
        let plan = plan.clone();
        let policy = policy.clone();
        async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            // Headers every operation must carry (requester pays, the bucket owner): checked
            // before the request reaches S3's routing, as S3's front end does.
            if let Some((status, code, message)) = policy.refusal(req.headers()) {
                return Ok(faults::s3_error_response(status, code, &message));
            }
            let fault = plan.as_ref().and_then(|p| {
                let copy = req.headers().contains_key("x-amz-copy-source");
                let op = faults::operation(req.method(), req.uri().path(), req.uri().query().unwrap_or(""), copy);
                p.pick(op).map(|f| (f, p.stall))
            });
            let Some(((kind, after), stall)) = fault else {
                return hyper::service::Service::call(&service, req).await;
            };
            use faults::FaultKind::*;
            let reset = || s3s::HttpError::new("injected fault: connection reset".into());
            if !after {
                match kind {
                    InternalError | SlowDown => return Ok(faults::error_response(kind)),
                    Reset => return Err(reset()),
                    Stall => tokio::time::sleep(stall).await,
                    Truncate => {}
                }
            }
            let resp = hyper::service::Service::call(&service, req).await?;
            match kind {
                InternalError | SlowDown => Ok(faults::error_response(kind)),
                Reset => Err(reset()),
                Stall => {
                    if after {
                        tokio::time::sleep(stall).await;
                    }
                    Ok(resp)
                }
                Truncate => truncated(resp).await,
            }
        }
    });
    let connection_rate = cfg.connection_rate;
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
            let mut stop_conn = stopped.clone();
            let io = TokioIo::new(wan::Capped::new(socket, connection_rate));
            let conn = http.serve_connection(io, service.clone()).into_owned();
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
        credentials,
        credentials_file,
        emulator,
        stop,
        task: Some(task),
    })
}

/// S3's bucket naming rules (3–63 characters of lower-case letters, digits, `.` and `-`,
/// starting and ending with a letter or digit, not an IP address): a name every request
/// would reject is refused at start.
pub fn validate_bucket_name(name: &str) -> Result<(), crate::invalid::Invalid> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || !edge(name.bytes().next())
        || !edge(name.bytes().last())
        || name.contains("..")
        || name.parse::<std::net::Ipv4Addr>().is_ok()
    {
        return Err(crate::invalid::Invalid::new(
            format!("invalid bucket name {name:?}"),
            "3 to 63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3s_rules() {
        for ok in ["test", "my-bucket", "a.b.c", "prefixfs", "b1x"] {
            assert!(validate_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "b1",
            "B1ucket",
            "-abc",
            "abc-",
            "a..b",
            "192.168.0.1",
            "under_score",
            "",
        ] {
            assert!(validate_bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_random_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Credentials::load_or_create(dir.path()).unwrap();
        let b = Credentials::load_or_create(dir.path()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, Credentials::random());
        let path = dir.path().join(CREDENTIALS_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            Credentials::load_or_create(dir.path()).is_err(),
            "a readable file is refused"
        );
    }
}
