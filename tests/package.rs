//! prefixfs as a system tool. The Debian package, as installed by the test script
//! (`scripts/deb.sh`, then `dpkg -i`): its files, its man pages, and a mount through mount(8)
//! from an fstab line. Logs: a log file logrotate can rotate (SIGHUP), lines for journald.

mod common;

use common::{BUCKET, Env, run_sh};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(script: &str) -> common::Output {
    run_sh(Path::new("/"), script)
}

/// Unmounts on drop (the daemon mount(8) started detaches from us).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if common::is_mounted(&self.0) {
            let _ = Command::new("umount").arg(&self.0).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while common::is_mounted(&self.0) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if common::is_mounted(&self.0) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }
}

#[test]
fn the_package_installs_the_binary_the_mount_helper_man_pages_and_completions() {
    let status = sh("dpkg-query -W -f='${Status} ${Version}' prefixfs");
    assert_eq!(
        status.stdout,
        format!("install ok installed {}-1", env!("CARGO_PKG_VERSION")),
        "scripts/test.sh builds the package and installs it with dpkg -i: {}",
        status.stderr
    );
    let files = sh("dpkg-query -L prefixfs").stdout;
    for f in [
        "/usr/bin/prefixfs",
        "/sbin/mount.prefixfs",
        "/lib/systemd/system/prefixfs@.service",
        "/usr/share/man/man1/prefixfs.1.gz",
        "/usr/share/man/man1/prefixfs-mount.1.gz",
        "/usr/share/man/man1/prefixfs-migrate.1.gz",
        "/usr/share/bash-completion/completions/prefixfs",
        "/usr/share/zsh/vendor-completions/_prefixfs",
        "/usr/share/fish/vendor_completions.d/prefixfs.fish",
        "/usr/share/doc/prefixfs/copyright",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} is in the package:\n{files}");
    }
    let version = sh("/usr/bin/prefixfs --version").stdout;
    assert_eq!(version.trim(), format!("prefixfs {}", env!("CARGO_PKG_VERSION")));
    // The man pages render, and say what the CLI says.
    let man = sh("MANWIDTH=100 man -P cat prefixfs 2>&1");
    assert_eq!(man.code, 0, "{}", man.stdout);
    for sub in ["mount", "migrate", "fsck", "info", "rm"] {
        assert!(
            man.stdout.contains(&format!("prefixfs-{sub}(1)")),
            "{sub} in\n{}",
            man.stdout
        );
    }
    let mount = sh("MANWIDTH=100 man -P cat prefixfs-mount 2>&1").stdout;
    assert!(
        mount.contains("--metadata-ttl") && mount.contains("--trust-listing"),
        "{mount}"
    );
    // Bash completion knows the subcommands.
    let completion = sh("bash -c 'source /usr/share/bash-completion/completions/prefixfs; complete -p prefixfs'");
    assert_eq!(completion.code, 0, "{}", completion.stderr);
}

#[test]
fn an_fstab_line_mounts_through_mount_8_with_every_kind_of_option() {
    let env = Env::embedded();
    env.put(
        "data/.prefixfs/layout.json",
        br#"{"format":1,"hash":"sha256-u32be-mod","prefix_count":16}"#,
    );
    let layout = env.layout(16);
    let key = layout
        .file_key(&prefixfs::layout::RelPath::parse("2017/02/08/a.txt").expect("path"))
        .expect("key");
    env.put(&key, b"hello\n");
    let mnt = env.subdir("mnt");
    let log = env.dir.path().join("daemon.log");
    // Kinds of option: generic ones mount(8) and systemd use (ignored), a flag, `name=value`
    // with `_` for `-`, `ro`, and a quoted-free path value.
    let options = [
        "_netdev",
        "nofail",
        "x-systemd.automount",
        "x-systemd.idle-timeout=60",
        "ro",
        "force_path_style",
        "trust_listing",
        &format!("endpoint_url={}", env.endpoint),
        "region=us-east-1",
        "prefix_count=16",
        "metadata_ttl=30",
        "max_attempts=3",
        "file_mode=640",
        &format!("cache_dir={}", env.dir.path().join("cache").display()),
        &format!("log_file={}", log.display()),
    ]
    .join(",");
    let fstab = env.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!("s3://{BUCKET}/data  {}  prefixfs  {options}  0  0\n", mnt.display()),
    )
    .expect("fstab");
    let _guard = Unmount(mnt.clone());
    let out = env
        .command("timeout")
        .args(["60", "mount", "-T"])
        .arg(&fstab)
        .arg(&mnt)
        .output()
        .expect("mount");
    assert!(
        out.status.success(),
        "mount -T fstab failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(common::is_mounted(&mnt), "mounted");
    let listed = run_sh(&mnt, "ls -l 2017/02/08 && cat 2017/02/08/a.txt");
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        listed.stdout.contains("-rw-r----- "),
        "file_mode=640: {}",
        listed.stdout
    );
    assert!(listed.stdout.ends_with("hello\n"), "{}", listed.stdout);
    let write = run_sh(&mnt, "touch new.txt");
    assert!(write.stderr.contains("Read-only file system"), "ro: {}", write.stderr);
    let umount = Command::new("umount").arg(&mnt).status().expect("umount");
    assert!(umount.success());
    assert!(!common::is_mounted(&mnt));
    // The same by hand: mount -t prefixfs SOURCE MOUNTPOINT -o OPTIONS.
    let out = env
        .command("timeout")
        .args(["60", "mount", "-t", "prefixfs", &format!("s3://{BUCKET}/data")])
        .arg(&mnt)
        .args(["-o", &options.replace(",ro,", ",rw,")])
        .output()
        .expect("mount -t");
    assert!(
        out.status.success(),
        "mount -t prefixfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = run_sh(&mnt, "echo new > 2017/02/08/b.txt && cat 2017/02/08/b.txt");
    assert_eq!(written.stdout, "new\n", "{}", written.stderr);
    assert!(Command::new("umount").arg(&mnt).status().expect("umount").success());
    assert_eq!(
        env.get(
            &layout
                .file_key(&prefixfs::layout::RelPath::parse("2017/02/08/b.txt").expect("path"))
                .expect("key")
        ),
        b"new\n"
    );
}

#[test]
fn the_log_file_is_private_plain_and_reopened_on_sighup() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::embedded();
    let log = env.dir.path().join("logs/prefixfs.log");
    let mut m = env.mount(16, &["--log-file", log.to_str().expect("path")]);
    m.ok("mkdir d && echo x > d/f && ls -l d");
    let first = std::fs::read_to_string(&log).expect("the log file");
    assert!(first.contains("layout"), "{first}");
    assert!(!first.contains('\x1b'), "no colour codes in a file");
    let mode = std::fs::metadata(&log).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private to its owner");
    // logrotate: move the file away, then SIGHUP.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    let pid = m.child.as_ref().expect("daemon").id();
    assert_eq!(sh(&format!("kill -HUP {pid}")).code, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("SIGHUP: log file reopened")) {
        assert!(Instant::now() < deadline, "no new log file after SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    m.ok("cat d/f && touch d/g");
    let mode = std::fs::metadata(&log).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let old = std::fs::read_to_string(&rotated).expect("rotated");
    assert!(!old.contains("SIGHUP"), "later lines go to the new file only");
    m.assert_alive();
    // `umount` is the normal way out: the log says so, with no warning about it.
    m.unmount();
    let last = std::fs::read_to_string(&log).expect("the log file");
    assert!(last.contains("unmounted"), "{last}");
    assert!(
        !last.contains("WARN") && !last.contains("ERROR"),
        "an unmount by umount is no failure: {last}"
    );
}

#[test]
fn a_reply_the_kernel_stopped_waiting_for_is_no_error() {
    // Every answer comes 1 s late, so a lookup is still being answered when `umount -f`
    // ends the connection (as a plain umount does under a release the kernel never waits
    // for): the reply finds no request, which is no failure of the daemon.
    let env = Env::embedded_config(|c| c.latency = Duration::from_millis(1000));
    let mut m = env.mount(4, &[]);
    let path = m.path.clone();
    let stat = Command::new("timeout")
        .args(["30", "stat"])
        .arg(path.join("not-there"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("stat");
    std::thread::sleep(Duration::from_millis(300));
    // The abort comes first; the unmount itself may then fail as busy until `stat` returns.
    let _ = Command::new("umount").arg("-f").arg(&path).status().expect("umount -f");
    let mut stat = stat;
    let _ = stat.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !m.log_text().contains("unmounted") {
        assert!(Instant::now() < deadline, "the daemon did not end: {}", m.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    m.unmount();
    let log = m.log_text();
    assert!(
        log.contains("/not-there"),
        "the lookup was answered after the unmount: {log}"
    );
    assert!(!log.contains("Failed to send FUSE reply"), "{log}");
}

#[test]
fn under_systemd_log_lines_carry_their_priority_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::embedded();
    let out = env.dir.path().join("journal");
    let file = std::fs::File::create(&out).expect("stream");
    let st = file.metadata().expect("stat");
    // The journal's stream, as systemd announces it to a service.
    let mut serve = env
        .prefixfs()
        .args(["serve", "--addr", &format!("127.0.0.1:{}", common::free_port())])
        .arg("--data-dir")
        .arg(env.dir.path().join("s3"))
        .args(["--bucket", "journal-test"])
        .env("JOURNAL_STREAM", format!("{}:{}", st.dev(), st.ino()))
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .expect("serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&out).is_ok_and(|t| t.contains("listening")) {
        assert!(Instant::now() < deadline, "serve logged nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = serve.kill();
    let _ = serve.wait();
    let text = std::fs::read_to_string(&out).expect("read");
    let line = text.lines().find(|l| l.contains("listening")).expect("line");
    // `<6> INFO embedded S3 server listening ...`: the priority, then the level at once.
    assert!(line.starts_with("<6> INFO "), "priority 6, no timestamp: {line}");
    assert!(!line.contains('\x1b'), "no colour: {line}");
}
