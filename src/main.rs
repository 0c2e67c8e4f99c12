//! The `prefixfs` binary: flags → validated config, logging, daemonising, then the library.

use clap::Parser;
use prefixfs::cli::{Cli, Command, MountArgs};
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
        Command::Init(a) => commands::run_init(a),
        Command::Key(a) => commands::run_key(a),
        Command::Serve(a) => commands::run_serve(a),
        Command::Stats(a) => commands::run_stats(a),
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
