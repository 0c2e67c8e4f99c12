//! The `prefixfs` binary: flags → validated config, logging, daemonising, then the library.

use clap::Parser;
use prefixfs::cli::{Cli, Command, MountArgs};
use prefixfs::layout::{Layout, RelPath};
use prefixfs::mount;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_file = match &cli.command {
        Command::Mount(m) if !m.foreground => None, // the parent only waits; the child logs
        _ => Some(()),
    };
    if log_file.is_some() {
        init_logging(&cli.log_level);
    }
    let result = match cli.command {
        Command::Mount(m) if !m.foreground => daemonize(&m),
        Command::Mount(m) => run_mount(*m),
        Command::Init(a) => run_init(a),
        Command::Key(a) => run_key(a),
        Command::Serve(a) => run_serve(a),
        Command::Stats(a) => run_stats(a),
        Command::Rm(a) => run_rm(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("prefixfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn run_mount(mut m: MountArgs) -> Result<(), String> {
    // Part buffers are allocated on FUSE threads and freed on runtime threads; with glibc's
    // default of an arena per thread that fragments into hundreds of MiB of resident memory
    // during a large write (measured: 300 MiB for a 2 GiB write). One arena keeps it near the
    // real working set (parts in flight), and was no slower.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    m.apply_options()?;
    let plan = m.plan()?;
    mount::run(plan, &m.conn, m.init, m.data_dir.clone())
}

/// Re-runs this command in the foreground as a detached child, and returns once it has
/// mounted (or reports why it could not).
fn daemonize(m: &MountArgs) -> Result<(), String> {
    let mut m = m.clone();
    m.apply_options()?;
    m.plan()?; // report bad flags here, not in a log file
    let log = m.log_file.clone().unwrap_or_else(default_log_file);
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("opening log file {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    // SAFETY: rfd is ours; mark it close-on-exec so only the write end reaches the child.
    unsafe { libc::fcntl(rfd, libc::F_SETFD, libc::FD_CLOEXEC) };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("--foreground".into());
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .env(mount::READY_FD_ENV, wfd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("starting the daemon: {e}"))?;
    // SAFETY: wfd belongs to us; the child has its copy.
    unsafe { libc::close(wfd) };
    // SAFETY: rfd is an open pipe end we own.
    let mut reader = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(rfd) };
    let mut buf = String::new();
    let _ = reader.read_to_string(&mut buf);
    if buf.starts_with("ready") {
        return Ok(());
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let tail = std::fs::read_to_string(&log).unwrap_or_default();
    let last: Vec<&str> = tail
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(format!(
        "mount failed ({status}); log {}:\n{}",
        log.display(),
        last.join("\n")
    ))
}

fn default_log_file() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("prefixfs").join("prefixfs.log")
}

fn run_init(a: prefixfs::cli::InitArgs) -> Result<(), String> {
    let (bucket, root) = prefixfs::cli::parse_s3_url(&a.target)?;
    let layout = Layout::new(&root, a.prefix_count).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let c = mount::connect(Some(&bucket), a.conn.aws_config(&bucket), a.conn.retry_config()?, None).await?;
        match mount::resolve_layout(c.store.as_ref(), &root, Some(a.prefix_count), false).await {
            Ok(_) => {
                println!(
                    "s3://{bucket}/{root} already has this layout ({} prefixes)",
                    a.prefix_count
                );
                Ok(())
            }
            Err(e) if e.contains("no prefixfs layout") => {
                mount::write_descriptor(c.store.as_ref(), &layout).await?;
                println!("wrote {} ({} prefixes)", layout.descriptor_key(), a.prefix_count);
                Ok(())
            }
            Err(e) => Err(e),
        }
    })
}

fn run_key(a: prefixfs::cli::KeyArgs) -> Result<(), String> {
    let layout = Layout::new(&a.root, a.prefix_count).map_err(|e| e.to_string())?;
    let path = RelPath::parse(&a.path).map_err(|e| e.to_string())?;
    if path.is_root() {
        return Err("the mount root has no key".into());
    }
    let key = if a.path.ends_with('/') {
        layout.dir_marker_key(&path)
    } else {
        layout.file_key(&path)
    };
    println!("{}", key.map_err(|e| e.to_string())?);
    Ok(())
}

fn run_serve(a: prefixfs::cli::ServeArgs) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut cfg = prefixfs::server::ServerConfig::local(a.data_dir.clone());
        cfg.addr = a.addr;
        cfg.buckets = a.bucket.clone();
        cfg.emulator = a.emulator();
        let srv = prefixfs::server::start(cfg).await.map_err(|e| e.to_string())?;
        if let (Some(addr), Some(emu)) = (a.stats_addr, srv.emulator.clone()) {
            let render: prefixfs::metrics::Render = std::sync::Arc::new(move |path| {
                (path == "/partitions").then(|| ("application/json", emu.snapshot_json()))
            });
            let bound = prefixfs::metrics::serve(addr, render)
                .await
                .map_err(|e| format!("--stats-addr {addr}: {e}"))?;
            println!("partition counters at http://{bound}/partitions");
        }
        println!(
            "serving S3 at {} (access key {}, secret key {}); Ctrl-C stops",
            srv.endpoint(),
            prefixfs::server::DEFAULT_ACCESS_KEY,
            prefixfs::server::DEFAULT_SECRET_KEY
        );
        let _ = tokio::signal::ctrl_c().await;
        srv.shutdown().await;
        Ok(())
    })
}

fn run_rm(a: prefixfs::cli::RmArgs) -> Result<(), String> {
    let (bucket, root) = prefixfs::cli::parse_s3_url(&a.target)?;
    let path = RelPath::parse(&a.path).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let c = mount::connect(Some(&bucket), a.conn.aws_config(&bucket), a.conn.retry_config()?, None).await?;
        let layout = mount::resolve_layout(c.store.as_ref(), &root, None, false).await?;
        let store = c.paced(&layout, Default::default());
        let cfg = prefixfs::fs::FsConfig {
            cache_dir: std::env::temp_dir().join(format!("prefixfs-rm-{}", std::process::id())),
            ..Default::default()
        };
        let core = prefixfs::fs::Core::new(layout, store, c.stats.clone(), cfg);
        match core.stat(&path).await.map_err(|e| e.to_string())? {
            None => return Err(format!("{}: no such file or directory", a.path)),
            Some(info) if info.kind == prefixfs::fs::cache::Kind::Dir && !a.recursive => {
                return Err(format!("{}: is a directory (use -r)", a.path));
            }
            _ => {}
        }
        let n = core.remove_tree(&path).await.map_err(|e| e.to_string())?;
        let s = c.stats.snapshot();
        println!(
            "deleted {n} objects with {} DeleteObjects requests ({} throttled keys retried)",
            s.get(prefixfs::store::OpKind::DeleteMany),
            s.throttles
        );
        Ok(())
    })
}

fn run_stats(a: prefixfs::cli::StatsArgs) -> Result<(), String> {
    let text = prefixfs::read_stats(&a.mountpoint)
        .map_err(|e| format!("{}: {e} (is it a prefixfs mount?)", a.mountpoint.display()))?;
    print!("{text}");
    Ok(())
}
