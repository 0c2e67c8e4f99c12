//! What the kernel's tables say about mounts: the mount points in /proc/self/mountinfo
//! (octal escapes decoded), and the locks in /proc/locks on a mount (logged once: `flock`
//! and `fcntl` locks are this host's only).

use std::path::PathBuf;

/// The mount points listed in a /proc/self/mountinfo text (octal escapes decoded).
pub(super) fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mounts(mountinfo).map(|(p, _)| p)
}

/// The mounts listed in a /proc/self/mountinfo text: each mount point (octal escapes
/// decoded) with its device (`major:minor`).
pub(super) fn mounts(mountinfo: &str) -> impl Iterator<Item = (PathBuf, &str)> + '_ {
    mountinfo.lines().filter_map(|line| {
        let dev = line.split(' ').nth(2)?;
        let field = line.split(' ').nth(4)?;
        let mut out = Vec::with_capacity(field.len());
        let b = field.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        use std::os::unix::ffi::OsStringExt;
        Some((PathBuf::from(std::ffi::OsString::from_vec(out)), dev))
    })
}

/// The `/proc/locks` form of the device of the mount at `mountpoint` (`MAJOR:MINOR:` in
/// hex, as the kernel prints it before the inode number), once it is mounted.
pub(super) fn lock_tag(mountinfo: &str, mountpoint: &std::path::Path) -> Option<String> {
    let (_, dev) = mounts(mountinfo).filter(|(p, _)| p == mountpoint).last()?;
    let (major, minor) = dev.split_once(':')?;
    Some(format!(
        "{:02x}:{:02x}:",
        major.parse::<u32>().ok()?,
        minor.parse::<u32>().ok()?
    ))
}

/// The first lock in a `/proc/locks` text on the device `tag` names: its kind (FLOCK,
/// POSIX, OFDLCK) and the pid holding it.
pub(super) fn lock_on<'a>(locks: &'a str, tag: &str) -> Option<(&'a str, &'a str)> {
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().filter(|f| *f != "->").collect();
        f.get(5).filter(|d| d.starts_with(tag))?;
        Some((*f.get(1)?, *f.get(4)?))
    })
}

/// Logs once, the first time a program holds a flock or fcntl lock on the mount at
/// `mountpoint`, that the lock does not reach other hosts. The kernel keeps these locks
/// (the filesystem does not take FUSE's lock calls), so /proc/locks is where they show: a
/// glance at it every two seconds, local and cheap; no request.
pub(super) async fn log_first_lock(mountpoint: PathBuf) {
    let canonical = std::fs::canonicalize(&mountpoint).unwrap_or(mountpoint);
    let mut tag = None;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        if tag.is_none() {
            tag = lock_tag(
                &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
                &canonical,
            );
        }
        let Some(tag) = &tag else { continue };
        if let Some((kind, pid)) = lock_on(&std::fs::read_to_string("/proc/locks").unwrap_or_default(), tag) {
            tracing::warn!(
                kind,
                pid,
                "a program holds a file lock on this mount: flock and fcntl locks are this host's only, so another host mounting the bucket neither sees nor waits for it (README, \"Many hosts\"); logged once"
            );
            return;
        }
    }
}
