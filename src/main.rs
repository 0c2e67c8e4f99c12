//! The `prefixfs` binary: flags → validated config, logging, daemonising, then the library.

use clap::Parser;
use prefixfs::cli::{Cli, Command, MountArgs};
use prefixfs::layout::{Layout, RelPath};
use prefixfs::{commands, mount};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse_from(prefixfs::cli::expand_mount_options(std::env::args_os()));
    let log_file = match &cli.command {
        Command::Mount(m) if !m.foreground => None, // the parent only waits; the child logs
        _ => Some(()),
    };
    if log_file.is_some() {
        prefixfs::logging::init(&cli.log_level);
    }
    let result = match cli.command {
        Command::Mount(m) if !m.foreground => daemonize(&m),
        Command::Mount(m) => run_mount(*m),
        Command::Init(a) => run_init(a),
        Command::Key(a) => run_key(a),
        Command::Serve(a) => run_serve(a),
        Command::Stats(a) => run_stats(a),
        Command::Rm(a) => commands::run_rm(a),
        Command::Migrate(a) => commands::run_migrate(a),
        Command::Info(a) => commands::run_info(a),
        Command::Doctor(a) => return commands::run_doctor(a),
        Command::Ls(a) => commands::adhoc(&a.target, &a.at, async |b, p| {
            prefixfs::adhoc::ls(&b, &p, a.long, a.recursive, &mut commands::stdout()).await
        }),
        Command::Cat(a) => commands::run_cat(a),
        Command::Cp(a) => commands::run_cp(a),
        Command::Du(a) => commands::adhoc(&a.target, &a.at, async |b, p| {
            prefixfs::adhoc::du(&b, &p, a.summarize, &mut commands::stdout()).await
        }),
        Command::Find(a) => commands::adhoc(&a.target, &a.at, async |b, p| {
            let kind = a.kind.as_deref().and_then(|k| k.chars().next());
            prefixfs::adhoc::find(&b, &p, a.name.as_deref(), kind, &mut commands::stdout()).await
        }),
        Command::Generate(a) => prefixfs::cli::generate(&a.out).map_err(|e| format!("{}: {e}", a.out.display())),
        Command::Fsck(a) => {
            return match commands::run_fsck(a) {
                Ok(code) => code,
                Err(msg) => {
                    eprintln!("prefixfs: {msg}");
                    ExitCode::from(8)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("prefixfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run_mount(m: MountArgs) -> Result<(), String> {
    // Part buffers are allocated on FUSE threads and freed on runtime threads; with glibc's
    // default of an arena per thread that fragments into hundreds of MiB of resident memory
    // during a large write (measured: 300 MiB for a 2 GiB write). One arena keeps it near the
    // real working set (parts in flight), and was no slower.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // `--foreground --log-file F` run by a person: why the mount could not start goes to
    // their terminal as well as to F. (A daemon started by `daemonize` has the log file as
    // its standard error already; its parent shows the failure.)
    let terminal = match &m.log_file {
        Some(_) if std::env::var_os(mount::READY_FD_ENV).is_none() => std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(std::fs::File::from),
        _ => None,
    };
    if let Some(path) = &m.log_file {
        prefixfs::logging::log_to(path).map_err(|e| format!("--log-file {}: {e}", path.display()))?;
    }
    let plan = m.plan()?;
    let result = mount::run(plan, &m.conn, m.init, m.data_dir.clone());
    if let (Err(e), Some(mut term)) = (&result, terminal) {
        use std::io::Write;
        let _ = writeln!(term, "prefixfs: {e}");
    }
    Ok(result?)
}

/// Re-runs this command in the foreground as a detached child, and returns once it has
/// mounted (or reports why it could not).
fn daemonize(m: &MountArgs) -> Result<(), String> {
    // Report bad flags and a mounted mountpoint here, not in a log file.
    prefixfs::mount::check_not_mounted(&m.plan()?.mountpoint)?;
    let log = match &m.log_file {
        Some(l) => {
            if let Some(dir) = l.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            l.clone()
        }
        None => {
            let dir = prefixfs::private::default_dir(prefixfs::private::Place::Logs);
            prefixfs::private::ensure_dir(&dir).map_err(|e| format!("log directory: {e}"))?;
            dir.join("prefixfs.log")
        }
    };
    let out = prefixfs::private::file_options()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("opening log file {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    // What this mount writes starts here: on failure, show only its lines.
    let start = out.metadata().map(|m| m.len()).unwrap_or(0);
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
    if m.log_file.is_none() {
        // The daemon reopens its log file on SIGHUP: it has to know which.
        args.push("--log-file".into());
        args.push(log.to_string_lossy().into_owned());
    }
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
    let tail = std::fs::read(&log).unwrap_or_default();
    let ours = String::from_utf8_lossy(tail.get(start as usize..).unwrap_or_default());
    let last: Vec<&str> = ours
        .lines()
        .rev()
        .take(8)
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

fn run_init(a: prefixfs::cli::InitArgs) -> Result<(), String> {
    let (bucket, root) = prefixfs::cli::parse_s3_url(&a.target)?;
    let layout = Layout::new(&root, a.prefix_count).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let c = mount::connect(Some(&bucket), a.conn.aws_config(&bucket), a.conn.retry_config()?, None).await?;
        match mount::read_descriptor(c.store.as_ref(), &root).await? {
            Some(n) if n == a.prefix_count => {
                println!("s3://{bucket}/{root} already has this layout ({n} prefixes)");
                Ok(())
            }
            Some(n) => Err(format!(
                "--prefix-count {} disagrees with the bucket's layout ({n} prefixes, in {})",
                a.prefix_count,
                layout.descriptor_key()
            )),
            None => {
                mount::write_descriptor(c.store.as_ref(), &layout).await?;
                println!("wrote {} ({} prefixes)", layout.descriptor_key(), a.prefix_count);
                Ok(())
            }
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
        cfg.credentials = a.credentials();
        cfg.latency = std::time::Duration::from_millis(a.latency_ms);
        cfg.connection_rate = a.connection_mibps.map(|m| m * 1024.0 * 1024.0);
        cfg.copy_object_max = a.copy_object_max_mib << 20;
        cfg.fault_plan = a.fault_plan();
        cfg.policy = a.policy();
        if cfg.fault_plan.is_some() {
            tracing::warn!(rules = ?a.faults, seed = a.fault_seed, "injecting faults (--fault)");
        }
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
        match &srv.credentials_file {
            Some(f) => println!(
                "serving S3 at {} (access key {}; both keys are in {}); Ctrl-C stops",
                srv.endpoint(),
                srv.credentials.access_key,
                f.display()
            ),
            None => println!(
                "serving S3 at {} (access key {}, the secret key you gave); Ctrl-C stops",
                srv.endpoint(),
                srv.credentials.access_key
            ),
        }
        let _ = tokio::signal::ctrl_c().await;
        srv.shutdown().await;
        Ok(())
    })
}

fn run_stats(a: prefixfs::cli::StatsArgs) -> Result<(), String> {
    let text = prefixfs::read_stats(&a.mountpoint)
        .map_err(|e| format!("{}: {e} (is it a prefixfs mount?)", a.mountpoint.display()))?;
    print!("{text}");
    Ok(())
}
