//! Putting a mount together: connect to S3 (or start the embedded store), check the layout
//! descriptor, build the core, run the FUSE session until unmount or a signal.

use crate::bucket::{EMBEDDED_BUCKET, connect, resolve_layout};
use crate::cli::MountPlan;
use crate::fs::Core;
use crate::fuse::FuseFs;
use crate::layout::Layout;
use crate::store::delete::DeleteConditions;
use crate::store::{Deletes, ObjectStore};
use std::path::PathBuf;
use std::sync::Arc;

/// Why a mount could not start, or ended with work not done: what `prefixfs mount` prints
/// (and `mount -t prefixfs` shows) before it exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{} is already a mount point; unmount it first (umount {})", .mountpoint.display(), .canonical.display())]
    AlreadyMounted { mountpoint: PathBuf, canonical: PathBuf },
    #[error("mountpoint {}: {source}", .path.display())]
    Mountpoint { path: PathBuf, source: std::io::Error },
    /// A bad option value.
    #[error(transparent)]
    Option(#[from] crate::invalid::Invalid),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Open(#[from] crate::bucket::OpenError),
    #[error(transparent)]
    Layout(#[from] crate::bucket::LayoutCheck),
    /// The cache directory (staging, lost+found, the upload journal) cannot be made private
    /// to this user, or the journal cannot be created in it.
    #[error("--cache-dir {}: {source}", .path.display())]
    CacheDir { path: PathBuf, source: std::io::Error },
    /// The data cache directory cannot be made private to this user, or read.
    #[error("--data-cache {}: {source}", .path.display())]
    DataCache { path: PathBuf, source: std::io::Error },
    #[error("--metrics-addr {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("mounting at {}: {source}", .mountpoint.display())]
    Fuse {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
    #[error("FUSE session ended with an error: {0}")]
    Session(std::io::Error),
    /// Unmounted, but uploads or deletes acknowledged to programs did not reach S3.
    #[error("some work acknowledged to programs did not reach S3 (see the log above); what could be kept is in {}", .cache_dir.display())]
    Unsaved { cache_dir: PathBuf },
}

impl From<MountError> for String {
    fn from(e: MountError) -> String {
        e.to_string()
    }
}

/// Refuses a mountpoint that is already a mount point: mounting over it would stack a
/// second filesystem there, and a later `umount` would take the wrong one down.
/// The descriptor of a mount point given as `/dev/fd/N` (see [`MountPlan::fuse_fd`]): Ok(None)
/// for a path; an error when N is not an open /dev/fuse descriptor.
pub fn passed_fuse_fd(mountpoint: &std::path::Path) -> Result<Option<i32>, crate::invalid::Invalid> {
    let bad = |why: String| crate::invalid::Invalid::new(mountpoint.display().to_string(), why);
    let Some(n) = mountpoint.to_str().and_then(|p| p.strip_prefix("/dev/fd/")) else {
        return Ok(None);
    };
    let fd: i32 = n.parse().map_err(|_| bad("not a descriptor number".into()))?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes into the buffer we own; an fd that is not open fails with EBADF.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(bad(format!(
            "{} (pass an open /dev/fuse descriptor)",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fstat succeeded, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    // /dev/fuse is character device 10:229.
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || (libc::major(st.st_rdev), libc::minor(st.st_rdev)) != (10, 229) {
        return Err(bad("not a /dev/fuse descriptor".into()));
    }
    Ok(Some(fd))
}

pub fn check_not_mounted(mountpoint: &std::path::Path) -> Result<(), MountError> {
    // A passed descriptor is mounted already, by whoever passed it.
    if passed_fuse_fd(mountpoint).is_ok_and(|fd| fd.is_some()) {
        return Ok(());
    }
    let canonical = std::fs::canonicalize(mountpoint).map_err(|source| MountError::Mountpoint {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mount_points(&table).any(|p| p == canonical) {
        return Err(MountError::AlreadyMounted {
            mountpoint: mountpoint.to_path_buf(),
            canonical,
        });
    }
    Ok(())
}

/// Mounts and serves until unmounted (umount, fusermount3 -u, SIGINT, SIGTERM).
pub fn run(
    mut plan: MountPlan,
    conn: &crate::cli::ConnArgs,
    init: bool,
    data_dir: Option<PathBuf>,
) -> Result<(), MountError> {
    check_not_mounted(&plan.mountpoint)?;
    // A worker per core: more only add context switches to every request (a cold `ls -l` of
    // 10,000 files took 1.6–2.0 s with 4 workers on 2 cores, 1.3–1.5 s with 2).
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("prefixfs-rt")
        .build()
        .map_err(MountError::Runtime)?;
    let (bucket_name, root) = match &plan.bucket {
        Some((b, r)) => (Some(b.clone()), r.clone()),
        None => (None, String::new()),
    };
    // What the settled listings are kept for (this endpoint, bucket and store).
    let scope = format!(
        "{}\n{}\n{}",
        conn.endpoint_url.as_deref().unwrap_or("aws"),
        bucket_name.as_deref().unwrap_or(EMBEDDED_BUCKET),
        data_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default()
    );
    let retry = conn.retry_config().map_err(MountError::Option)?;
    let aws = conn.aws_config(bucket_name.as_deref().unwrap_or(EMBEDDED_BUCKET));
    let connected = rt.block_on(connect(bucket_name.as_deref(), aws, retry, data_dir))?;
    let embedded = connected.server.is_some();
    let layout = rt.block_on(resolve_layout(
        connected.store.as_ref(),
        &root,
        plan.prefix_count,
        init || embedded,
    ))?;
    tracing::info!(prefixes = layout.prefix_count(), root = layout.root(), "layout");
    if conn.no_sign_request && !plan.fs.read_only && !rt.block_on(anonymous_writes(connected.store.as_ref(), &layout)) {
        tracing::warn!("--no-sign-request: the bucket refuses anonymous writes, so the mount is read-only");
        plan.fs.read_only = true;
    }
    let conds = if plan.fs.read_only {
        DeleteConditions::S3
    } else {
        rt.block_on(probe_conditions(connected.store.as_ref(), &layout))
    };
    let journal = rt.block_on(open_journal(&plan, connected.store.as_ref(), &layout, conds))?;
    let store = connected.stack(
        &layout,
        plan.pacing.clone(),
        Deletes::Deferred(Some(journal.clone()), conds),
    );
    if let Some((dir, size)) = &plan.data_cache {
        let cache = crate::data::cache::BlockCache::open(dir, *size).map_err(|source| MountError::DataCache {
            path: dir.clone(),
            source,
        })?;
        tracing::info!(dir = %dir.display(), bytes = cache.used(), limit = size, "data cache");
        plan.fs.files.data_cache = Some(Arc::new(cache));
    }
    if let Some(settled) = plan.fs.names.settled.as_mut() {
        let dir = plan.fs.files.cache_dir.join("settled");
        crate::private::ensure_dir(&dir).map_err(|source| MountError::CacheDir {
            path: dir.clone(),
            source,
        })?;
        settled.file = Some(dir.join(settled_scope(&scope, &layout)));
    }
    let core = Core::new(layout, store, connected.stats.clone(), plan.fs.clone());
    if let Some(addr) = plan.metrics_addr {
        rt.block_on(serve_metrics(addr, core.clone()))?;
    }
    if plan.fs.names.settled.is_some() {
        rt.spawn(flush_settled_every(core.clone(), SETTLED_FLUSH_EVERY));
    }
    let config = fuse_config(&plan);
    let fs = FuseFs::new(core.clone(), rt.handle().clone(), plan.xattr);
    // Answering before the mount shows up: whoever sees it mounted can ask at once.
    let socket = stats_socket(&plan.mountpoint);
    serve_stats(&rt, socket.clone(), core.clone());
    let session = match plan.fuse_fd {
        Some(fd) => {
            // SAFETY: the descriptor was checked to be an open /dev/fuse (`passed_fuse_fd`)
            // and is handed to this process to own; nothing else here uses it.
            let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let acl = config.acl;
            fuser::Session::from_fd(fs, owned, acl, config)
        }
        None => fuser::Session::new(fs, &plan.mountpoint, &config),
    };
    let mut session = session.map_err(|source| {
        let _ = std::fs::remove_file(&socket);
        MountError::Fuse {
            mountpoint: plan.mountpoint.clone(),
            source,
        }
    })?;
    let mut unmounter = session.unmount_callable();
    let mountpoint = plan.mountpoint.clone();
    rt.spawn(crate::logging::reopen_on_sighup(plan.log_file.clone()));
    let signal_core = core.clone();
    let passed_fd = plan.fuse_fd.is_some();
    let signal_socket = stats_socket(&plan.mountpoint);
    rt.spawn(async move {
        wait_for_signal().await;
        tracing::info!(mountpoint = %mountpoint.display(), "signal received: uploading open files and unmounting");
        let saved = signal_core.flush_all().await;
        if passed_fd {
            // Whoever passed the descriptor mounted it and unmounts it; this process ends
            // once its work is in S3 (the kernel then fails requests until the unmount).
            signal_core.clean_staging();
            let _ = std::fs::remove_file(&signal_socket);
            tracing::info!("exiting; the mount's owner unmounts it");
            std::process::exit(if saved { 0 } else { 1 });
        }
        if let Err(e) = tokio::task::spawn_blocking(move || unmounter.unmount())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        {
            tracing::error!(error = %e, "unmount failed");
        }
    });
    tracing::info!(mountpoint = %plan.mountpoint.display(), "mounted");
    // The kernel keeps flock/fcntl locks (this filesystem does not take FUSE's lock calls):
    // say what they do not do, and again when a program first takes one.
    tracing::info!(
        "flock and fcntl locks on this mount are this host's only: other hosts mounting the bucket do not see them"
    );
    rt.spawn(log_first_lock(plan.mountpoint.clone()));
    notify_ready();
    let mut result = session.run().map_err(MountError::Session);
    if !rt.block_on(core.flush_all()) && result.is_ok() {
        result = Err(MountError::Unsaved {
            cache_dir: plan.fs.files.cache_dir.clone(),
        });
    }
    core.flush_settled();
    core.clean_staging();
    let _ = std::fs::remove_file(&socket);
    tracing::info!("unmounted");
    if let Some(srv) = connected.server {
        rt.block_on(srv.shutdown());
    }
    result
}

/// The cache directory made private, the work of earlier mounts finished (their journals:
/// uploads to abort, deletes to send), stale uploads aborted (`--abort-uploads-older-than`),
/// and this mount's journal.
async fn open_journal(
    plan: &MountPlan,
    store: &dyn ObjectStore,
    layout: &Layout,
    conds: DeleteConditions,
) -> Result<Arc<crate::store::journal::Journal>, MountError> {
    // Staging, lost+found and the upload journal: private to this user (a journal planted by
    // someone else would make this daemon abort uploads that are not its own).
    let cache_dir = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| MountError::CacheDir { path, source }
    };
    crate::private::ensure_dir(&plan.fs.files.cache_dir).map_err(cache_dir(&plan.fs.files.cache_dir))?;
    let journal_dir = plan.fs.files.cache_dir.join("uploads");
    crate::private::ensure_dir(&journal_dir).map_err(cache_dir(&journal_dir))?;
    let l = layout.clone();
    let prefix: crate::store::PrefixFn = Arc::new(move |k: &str| l.prefix_label(k));
    let recovered = crate::store::journal::recover(store, &journal_dir, conds, &prefix).await;
    if recovered != Default::default() {
        tracing::info!(
            uploads_aborted = recovered.uploads_aborted,
            deletes_sent = recovered.deletes_sent,
            deletes_superseded = recovered.deletes_superseded,
            "finished the work an earlier mount left"
        );
    }
    let journal = Arc::new(crate::store::journal::Journal::create(&journal_dir).map_err(cache_dir(&journal_dir))?);
    // A read-only mount (anonymous, or `--read-only`) aborts nothing of anyone's.
    if let Some(age) = plan.abort_uploads_older_than.filter(|_| !plan.fs.read_only) {
        let stale =
            crate::store::journal::abort_stale(store, &layout.root_slash(), age, |k| layout.key_to_path(k).is_some())
                .await;
        match stale {
            Ok(v) if !v.is_empty() => {
                tracing::info!(aborted = v.len(), ?age, "aborted stale incomplete multipart uploads")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not list incomplete multipart uploads"),
        }
    }
    Ok(journal)
}

/// How often the settled listings are written to disk when they changed (and at unmount):
/// a crash costs at most this much of what HEADs added to them.
const SETTLED_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The file name of the settled listings of one bucket, store and layout (`scope` names
/// the endpoint, the bucket and the embedded store's directory).
fn settled_scope(scope: &str, layout: &Layout) -> String {
    use sha2::{Digest, Sha256};
    let id = format!("{scope}\n{}\n{}", layout.root(), layout.prefix_count());
    hex::encode(&Sha256::digest(id.as_bytes())[..12])
}

async fn flush_settled_every(core: Arc<Core>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        let core = core.clone();
        let _ = tokio::task::spawn_blocking(move || core.flush_settled()).await;
    }
}

/// Serves the request counters as Prometheus metrics at `addr` (`--metrics-addr`).
async fn serve_metrics(addr: std::net::SocketAddr, core: Arc<Core>) -> Result<(), MountError> {
    let render: crate::metrics::Render =
        Arc::new(move |path| (path == "/metrics").then(|| ("text/plain; version=0.0.4", core.prometheus())));
    let bound = crate::metrics::serve(addr, render)
        .await
        .map_err(|source| MountError::Metrics { addr, source })?;
    tracing::info!(%bound, "serving Prometheus metrics at /metrics");
    Ok(())
}

/// The FUSE session's options: the source shown in /proc/mounts, permissions checked by
/// the kernel, no atime, `nodev` and `nosuid` (a device node or a set-user-ID program in
/// the bucket gives nobody a device or a privilege); read-only, other users, worker threads
/// as planned.
fn fuse_config(plan: &MountPlan) -> fuser::Config {
    let fsname = match &plan.bucket {
        Some((b, r)) if r.is_empty() => format!("prefixfs:{b}"),
        Some((b, r)) => format!("prefixfs:{b}/{r}"),
        None => "prefixfs:embedded".to_string(),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(fsname),
        fuser::MountOption::Subtype("prefixfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if plan.fs.read_only {
        config.mount_options.push(fuser::MountOption::RO);
    }
    if plan.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(plan.threads);
    config.clone_fd = true;
    config
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot install signal handlers; unmount with umount or fusermount3 -u");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Where the mount at `mountpoint` serves its request counters: a Unix socket in this user's
/// private runtime directory, named by a hash of the canonical mount point. (Not an xattr:
/// `ls -l` asks every file for two xattrs, and only a filesystem that answers getxattr with
/// ENOSYS is spared those round trips.)
pub fn stats_socket(mountpoint: &std::path::Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let canonical = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let hash = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    crate::private::runtime_dir().join(format!("stats-{}.sock", &hex::encode(hash)[..16]))
}

/// Answers every connection to `path` with the counters, until the runtime ends.
fn serve_stats(rt: &tokio::runtime::Runtime, path: PathBuf, core: Arc<Core>) {
    if let Some(dir) = path.parent()
        && let Err(e) = crate::private::ensure_dir(dir)
    {
        tracing::warn!(error = %e, "no stats socket: `prefixfs stats` will not reach this mount");
        return;
    }
    let _ = std::fs::remove_file(&path); // left by a mount that died
    let listener = {
        let _guard = rt.enter();
        match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "no stats socket: `prefixfs stats` will not reach this mount");
                return;
            }
        }
    };
    rt.spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut conn, _)) = listener.accept().await {
            let text = core.stats_text();
            tokio::spawn(async move {
                let _ = conn.write_all(text.as_bytes()).await;
            });
        }
    });
}

/// Environment variable naming the fd a background parent waits on for "mounted".
pub const READY_FD_ENV: &str = "PREFIXFS_READY_FD";

fn notify_ready() {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let Some(fd) = std::env::var(READY_FD_ENV).ok().and_then(|v| v.parse::<i32>().ok()) else {
        return;
    };
    // SAFETY: the parent created this pipe end for us and nothing else in this process owns it.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = f.write_all(b"ready\n");
}

mod mountinfo;
mod probes;
#[cfg(test)]
use mountinfo::{lock_on, lock_tag};
use mountinfo::{log_first_lock, mount_points};
pub use probes::{WriteProbe, probe_exclusive_create, probe_writes};
use probes::{anonymous_writes, probe_conditions};

#[cfg(test)]
mod tests;
