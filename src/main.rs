//! The `prefixfs` binary: flags → validated config, logging, daemonising, then the library.

use clap::Parser;
use prefixfs::cli::{Cli, Command, MountArgs};
use prefixfs::layout::{Layout, RelPath};
use prefixfs::mount;
use std::io::Read;
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
        Command::Rm(a) => run_rm(a),
        Command::Migrate(a) => run_migrate(a),
        Command::Info(a) => run_info(a),
        Command::Ls(a) => adhoc(&a.target, &a.at, async |b, p| {
            prefixfs::adhoc::ls(&b, &p, a.long, a.recursive, &mut std::io::stdout().lock()).await
        }),
        Command::Cat(a) => run_cat(a),
        Command::Cp(a) => run_cp(a),
        Command::Du(a) => adhoc(&a.target, &a.at, async |b, p| {
            prefixfs::adhoc::du(&b, &p, a.summarize, &mut std::io::stdout().lock()).await
        }),
        Command::Find(a) => adhoc(&a.target, &a.at, async |b, p| {
            let kind = a.kind.as_deref().and_then(|k| k.chars().next());
            prefixfs::adhoc::find(&b, &p, a.name.as_deref(), kind, &mut std::io::stdout().lock()).await
        }),
        Command::Generate(a) => prefixfs::cli::generate(&a.out).map_err(|e| format!("{}: {e}", a.out.display())),
        Command::Fsck(a) => {
            return match run_fsck(a) {
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
    if let Some(path) = &m.log_file {
        prefixfs::logging::log_to(path).map_err(|e| format!("--log-file {}: {e}", path.display()))?;
    }
    let plan = m.plan()?;
    mount::run(plan, &m.conn, m.init, m.data_dir.clone())
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
        cfg.fault_plan = a.fault_plan();
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

fn run_rm(a: prefixfs::cli::RmArgs) -> Result<(), String> {
    let path = RelPath::parse(&a.path).map_err(|e| e.to_string())?;
    let at = prefixfs::cli::AdhocConn {
        root: Some(prefixfs::cli::parse_s3_url(&a.target)?.1),
        conn: a.conn.clone(),
    };
    adhoc(&a.target, &at, async |b, _| {
        match b.core.stat(&path).await.map_err(|e| e.to_string())? {
            None => return Err(format!("{}: no such file or directory", a.path)),
            Some(info) if info.kind == prefixfs::fs::cache::Kind::Dir && !a.recursive => {
                return Err(format!("{}: is a directory (use -r)", a.path));
            }
            _ => {}
        }
        let n = b.core.remove_tree(&path).await.map_err(|e| e.to_string())?;
        let s = b.core.stats().snapshot();
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

fn run_migrate(a: prefixfs::cli::MigrateArgs) -> Result<(), String> {
    use prefixfs::migrate;
    let (bucket, from_root) = prefixfs::cli::parse_s3_url(&a.from)?;
    let (to_bucket, to_root) = prefixfs::cli::parse_s3_url(&a.to)?;
    if to_bucket != bucket {
        return Err(format!(
            "migrate copies server-side within one bucket; {} and {} are in different buckets",
            a.from, a.to
        ));
    }
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let c = mount::connect(Some(&bucket), a.conn.aws_config(&bucket), a.conn.retry_config()?, None).await?;
        // Each side's descriptor says its layout; a flag only stands in where there is none.
        // In place (one root), the descriptor is the layout being left until the migration
        // is verified, and then the new one.
        let side = |found: Option<u32>, flag: Option<u32>, default: u32, what: &str| match (found, flag) {
            (Some(n), Some(f)) if n != f => Err(format!(
                "--{what}-prefix-count {f} disagrees with the {what} layout's descriptor ({n} prefixes)"
            )),
            (Some(n), _) => Ok(n),
            (None, f) => Ok(f.unwrap_or(default)),
        };
        let to_found = mount::read_descriptor(c.store.as_ref(), &to_root).await?;
        let (from_n, to_n) = if from_root == to_root {
            let from_n = a.from_prefix_count.unwrap_or(1);
            let to_n = match (to_found, a.to_prefix_count) {
                (_, Some(f)) => f,
                (Some(n), None) if n != from_n => n,
                _ => prefixfs::layout::DEFAULT_PREFIX_COUNT,
            };
            (from_n, to_n)
        } else {
            let from_found = mount::read_descriptor(c.store.as_ref(), &from_root).await?;
            (
                side(from_found, a.from_prefix_count, 1, "from")?,
                side(to_found, a.to_prefix_count, prefixfs::layout::DEFAULT_PREFIX_COUNT, "to")?,
            )
        };
        let from = Layout::new(&from_root, from_n).map_err(|e| e.to_string())?;
        let to = Layout::new(&to_root, to_n).map_err(|e| e.to_string())?;
        // Paced per destination prefix: that is where the copies land.
        let store = c.paced(&to, Default::default());
        let opts = migrate::Options {
            jobs: a.jobs,
            dry_run: a.dry_run,
            delete_source: a.delete_source,
            copy_object_max: a.copy_object_max,
            copy_part: a.copy_part_mib << 20,
            write_descriptor: to_found != Some(to_n),
        };
        let progress: Box<dyn migrate::Progress> = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Box::new(migrate::Bar::new())
        } else {
            Box::new(migrate::Lines::new(std::time::Duration::from_secs(5)))
        };
        println!(
            "migrating s3://{bucket}/{from_root} ({from_n} prefixes) to s3://{bucket}/{to_root} ({to_n} prefixes)"
        );
        let r = migrate::migrate(store, &from, &to, &opts, progress.as_ref()).await?;
        let verb = if a.dry_run { "would copy" } else { "copied" };
        println!(
            "{} objects ({} bytes) in the source; {verb} {} ({} bytes); {} already in place; {} foreign keys left alone",
            r.objects, r.bytes, r.copied, r.copied_bytes, r.present, r.foreign
        );
        if !a.dry_run {
            println!("verified: every object is in the destination with its size and ETag");
        }
        if a.delete_source {
            println!("deleted {} source objects", r.deleted);
        }
        let s = c.stats.snapshot();
        println!(
            "requests: {} LIST, {} COPY, {} HEAD, {} DeleteObjects; {} throttled (retried)",
            s.get(prefixfs::store::OpKind::List),
            s.get(prefixfs::store::OpKind::Copy),
            s.get(prefixfs::store::OpKind::Head),
            s.get(prefixfs::store::OpKind::DeleteMany),
            s.throttles
        );
        Ok(())
    })
}

/// Connects to s3://BUCKET[/ROOT] and reads its layout; `f` runs with the paced store.
fn with_layout<T>(
    target: &str,
    conn: &prefixfs::cli::ConnArgs,
    f: impl AsyncFnOnce(std::sync::Arc<dyn prefixfs::store::ObjectStore>, Layout) -> Result<T, String>,
) -> Result<T, String> {
    let (bucket, root) = prefixfs::cli::parse_s3_url(target)?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let c = mount::connect(Some(&bucket), conn.aws_config(&bucket), conn.retry_config()?, None).await?;
        let layout = mount::resolve_layout(c.store.as_ref(), &root, None, false).await?;
        let store = c.paced(&layout, Default::default());
        f(store, layout).await
    })
}

fn run_info(a: prefixfs::cli::InfoArgs) -> Result<(), String> {
    with_layout(&a.target, &a.conn, async |store, layout| {
        let inv = prefixfs::check::scan(store.as_ref(), &layout, a.jobs).await?;
        let d = layout.descriptor();
        println!(
            "{}: layout format {}, hash {}, {} prefixes (descriptor {})",
            a.target,
            d.format,
            d.hash,
            layout.prefix_count(),
            layout.descriptor_key()
        );
        println!("objects {} ({} bytes)", inv.objects(), inv.bytes());
        for (q, (n, bytes)) in inv.per_prefix.iter().enumerate() {
            println!("prefix {}: {n} objects, {bytes} bytes", layout.prefix_name(q as u32));
        }
        println!("skew {:.2} (the fullest prefix's objects over the mean)", inv.skew());
        println!(
            "misplaced {}, foreign {}, incomplete uploads {} (prefixfs fsck lists them)",
            inv.misplaced.len(),
            inv.foreign.len(),
            inv.uploads.len()
        );
        Ok(())
    })
}

fn run_fsck(a: prefixfs::cli::FsckArgs) -> Result<ExitCode, String> {
    use prefixfs::layout::escape_controls;
    with_layout(&a.target, &a.conn, async |store, layout| {
        let inv = prefixfs::check::scan(store.as_ref(), &layout, a.jobs).await?;
        println!(
            "{}: {} prefixes, {} objects ({} bytes) of the layout",
            a.target,
            layout.prefix_count(),
            inv.objects(),
            inv.bytes()
        );
        for (wrong, right) in &inv.misplaced {
            println!(
                "misplaced: {} (belongs at {})",
                escape_controls(wrong),
                escape_controls(right)
            );
        }
        for (key, why) in &inv.foreign {
            println!("foreign: {} ({why})", escape_controls(key));
        }
        let cutoff = std::time::SystemTime::now()
            - std::time::Duration::from_secs_f64(a.abort_uploads_older_than.max(0.0) * 3600.0);
        for u in &inv.uploads {
            let age = u
                .initiated
                .and_then(|t| t.elapsed().ok())
                .map(|d| format!("{} s old", d.as_secs()));
            println!(
                "incomplete upload: {} ({})",
                escape_controls(&u.key),
                age.unwrap_or_else(|| "age unknown".into())
            );
        }
        let mut left = inv.misplaced.len() + inv.foreign.len() + inv.uploads.len();
        let mut repaired = 0;
        if a.repair {
            let r = prefixfs::check::repair(store.as_ref(), &layout, &inv, a.jobs).await?;
            for c in &r.conflicts {
                println!("not moved: {} (its right key holds another object)", escape_controls(c));
            }
            let mut aborted = 0;
            for u in inv.uploads.iter().filter(|u| u.initiated.is_some_and(|t| t < cutoff)) {
                store
                    .abort_multipart(&u.key, &u.upload_id)
                    .await
                    .map_err(|e| e.to_string())?;
                aborted += 1;
            }
            println!("repaired: moved {} misplaced keys, aborted {aborted} uploads", r.moved);
            repaired = r.moved as usize + aborted;
            left -= repaired;
        }
        println!(
            "{left} problems left ({} foreign keys are never touched)",
            inv.foreign.len()
        );
        Ok(match (left, repaired) {
            (0, 0) => ExitCode::SUCCESS,
            (0, _) => ExitCode::from(1),
            _ => ExitCode::from(4),
        })
    })
}

/// Opens the layout an ad hoc command's `s3://` target lies in and runs `f` on it with the
/// path below the layout's root.
fn adhoc<T>(
    target: &str,
    at: &prefixfs::cli::AdhocConn,
    f: impl AsyncFnOnce(prefixfs::adhoc::Bucket, RelPath) -> Result<T, String>,
) -> Result<T, String> {
    let (bucket, rest) = prefixfs::cli::parse_s3_url(target)?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let c = mount::connect(
            Some(&bucket),
            at.conn.aws_config(&bucket),
            at.conn.retry_config()?,
            None,
        )
        .await?;
        let (root, path) = prefixfs::adhoc::split_target(c.store.as_ref(), &rest, at.root.as_deref()).await?;
        let layout = mount::resolve_layout(c.store.as_ref(), &root, None, false).await?;
        let store = c.paced(&layout, Default::default());
        let b = prefixfs::adhoc::Bucket::open(store, layout, c.stats.clone())?;
        f(b, path).await
    })
}

fn run_cat(a: prefixfs::cli::CatArgs) -> Result<(), String> {
    let (bucket, _) = prefixfs::cli::parse_s3_url(&a.targets[0])?;
    for t in &a.targets {
        if prefixfs::cli::parse_s3_url(t)?.0 != bucket {
            return Err("cat: every file must be in the same bucket".into());
        }
    }
    adhoc(&a.targets[0], &a.at, async |b, _| {
        let root = b.layout.root().to_string();
        for t in &a.targets {
            let (_, rest) = prefixfs::cli::parse_s3_url(t)?;
            let (_, path) = prefixfs::adhoc::split_target(b.store.as_ref(), &rest, Some(&root)).await?;
            let info = b.stat(&path).await?;
            if info.kind == prefixfs::fs::cache::Kind::Dir {
                return Err(format!("{}: is a directory", prefixfs::adhoc::show(&path)));
            }
            b.read_to(&path, info.size, &mut std::io::stdout().lock()).await?;
        }
        Ok(())
    })
}

fn run_cp(a: prefixfs::cli::CpArgs) -> Result<(), String> {
    let (remote, local, inward) = match (a.src.starts_with("s3://"), a.dst.starts_with("s3://")) {
        (true, false) => (&a.src, &a.dst, false),
        (false, true) => (&a.dst, &a.src, true),
        _ => return Err("cp: exactly one side is s3://BUCKET/ROOT/PATH, the other a local path".into()),
    };
    let local = std::path::PathBuf::from(local);
    adhoc(remote, &a.at, async |b, path| {
        let (files, bytes) = if inward {
            b.copy_in(&local, &path, a.recursive).await?
        } else {
            b.copy_out(&path, &local, a.recursive).await?
        };
        eprintln!("copied {files} files, {bytes} bytes");
        Ok(())
    })
}
