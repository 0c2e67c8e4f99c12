//! `prefixfs mount`: the process around a mount ([`crate::mount::run`] does the mounting):
//! the allocator's arenas, the log file, and daemonising (the command re-runs itself in the
//! foreground, detached, and returns once the child says it is ready).

use crate::cli::MountArgs;
use crate::error::{During, ToolError, ToolResult};
use crate::mount;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;

pub(super) fn run_mount(m: MountArgs) -> ToolResult<()> {
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
        crate::logging::log_to(path)
            .map_err(ToolError::local(path))
            .during("--log-file")?;
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
pub(super) fn daemonize(m: &MountArgs) -> ToolResult<()> {
    // Report bad flags and a mounted mountpoint here, not in a log file.
    crate::mount::check_not_mounted(&m.plan()?.mountpoint)?;
    let log = match &m.log_file {
        Some(l) => {
            if let Some(dir) = l.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            l.clone()
        }
        None => {
            let dir = crate::private::default_dir(crate::private::Place::Logs);
            crate::private::ensure_dir(&dir).map_err(ToolError::local(&dir))?;
            dir.join("prefixfs.log")
        }
    };
    let out = crate::private::file_options()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(ToolError::local(&log))?;
    let err = out.try_clone().map_err(ToolError::local(&log))?;
    // What this mount writes starts here: on failure, show only its lines.
    let start = out.metadata().map(|m| m.len()).unwrap_or(0);
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(ToolError::Daemon {
            step: "pipe",
            source: std::io::Error::last_os_error(),
        });
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    // SAFETY: rfd is ours; mark it close-on-exec so only the write end reaches the child.
    unsafe { libc::fcntl(rfd, libc::F_SETFD, libc::FD_CLOEXEC) };
    let exe = std::env::current_exe().map_err(|source| ToolError::Daemon {
        step: "finding this program",
        source,
    })?;
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
    let mut child = cmd.spawn().map_err(|source| ToolError::Daemon {
        step: "starting the daemon",
        source,
    })?;
    // SAFETY: wfd belongs to us; the child has its copy.
    unsafe { libc::close(wfd) };
    // SAFETY: rfd is an open pipe end we own.
    let mut reader = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(rfd) };
    let mut buf = String::new();
    let _ = reader.read_to_string(&mut buf);
    if buf.starts_with("ready") {
        return Ok(());
    }
    let status = child.wait().map_err(|source| ToolError::Daemon {
        step: "waiting for the daemon",
        source,
    })?;
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
    Err(ToolError::MountFailed {
        status,
        log,
        tail: last.join("\n"),
    })
}
