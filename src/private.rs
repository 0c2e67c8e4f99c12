//! Where prefixfs keeps local state (cache and staging, the upload journal, the embedded
//! store's data, logs), and making sure nobody else can read or plant anything there.
//!
//! Invariants:
//! 1. Every directory prefixfs keeps state in is owned by the effective uid and has mode 0700;
//!    one owned by anyone else (or a symlink) is refused, never used.
//! 2. Every file there is created with mode 0600.
//! 3. Defaults never fall back to a directory shared between users (`/tmp/prefixfs` could be
//!    created first by another user): systemd's `CacheDirectory=`/`StateDirectory=`/
//!    `LogsDirectory=`, then the XDG variables and `$HOME`, then a system path for root
//!    (`/var/cache/prefixfs`...) or the per-user runtime directory.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Kinds of local state, each with its own default base.
#[derive(Debug, Clone, Copy)]
pub enum Place {
    /// Staging files, lost+found, the upload journal.
    Cache,
    /// The embedded store's objects.
    Data,
    /// Logs of background mounts.
    Logs,
}

impl Place {
    /// (systemd's variable, XDG variable, below $HOME, system path for root)
    fn sources(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Place::Cache => ("CACHE_DIRECTORY", "XDG_CACHE_HOME", ".cache", "/var/cache"),
            Place::Data => ("STATE_DIRECTORY", "XDG_DATA_HOME", ".local/share", "/var/lib"),
            Place::Logs => ("LOGS_DIRECTORY", "XDG_STATE_HOME", ".local/state", "/var/log"),
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The default directory for `place`, named `prefixfs` below its base.
pub fn default_dir(place: Place) -> PathBuf {
    let (systemd, xdg, home_rel, system) = place.sources();
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    // systemd creates these for the unit, owned by it, and names them exactly.
    if let Some(dir) = var(systemd) {
        // Several directories may be listed, separated by ':'; the first is ours.
        let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return PathBuf::from(first);
    }
    if let Some(base) = var(xdg).or_else(|| var("HOME").map(|h| h.join(home_rel))) {
        return base.join("prefixfs");
    }
    if euid() == 0 {
        return Path::new(system).join("prefixfs");
    }
    match var("XDG_RUNTIME_DIR") {
        Some(run) => run.join("prefixfs"),
        None => PathBuf::from(format!("/run/user/{}/prefixfs", euid())),
    }
}

/// Where a running mount keeps its sockets, the same for the daemon and for `prefixfs stats`
/// whatever their environments (a systemd unit and a login shell differ): `/run/prefixfs`
/// for root, else `/run/user/<uid>/prefixfs` when that user's runtime directory exists, else
/// `run/` below the default cache directory.
pub fn runtime_dir() -> PathBuf {
    let uid = euid();
    if uid == 0 {
        return PathBuf::from("/run/prefixfs");
    }
    let user_run = PathBuf::from(format!("/run/user/{uid}"));
    if user_run.is_dir() {
        return user_run.join("prefixfs");
    }
    default_dir(Place::Cache).join("run")
}

/// Creates `dir` (and missing parents) with mode 0700, or checks an existing one: it must be
/// a real directory owned by this user; group and other permissions are removed.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("creating {}: {e}", dir.display()))),
    }
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory (a symlink?): refusing to keep state there",
            dir.display()
        )));
    }
    if m.uid() != euid() {
        return Err(io::Error::other(format!(
            "{} belongs to uid {}, not to uid {}: refusing to keep state where another user can plant files",
            dir.display(),
            m.uid(),
            euid()
        )));
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Opens options that create files with mode 0600.
pub fn file_options() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.mode(0o600);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_made_private_and_foreign_ones_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        ensure_dir(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().mode() & 0o777,
            0o700,
            "opened up again: closed"
        );
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(ensure_dir(&link).is_err(), "a symlink is refused");
        if euid() == 0 {
            let foreign = t.path().join("foreign");
            std::fs::create_dir(&foreign).unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
            assert!(ensure_dir(&foreign).is_err(), "another user's directory is refused");
        }
        let f = t.path().join("f");
        file_options().write(true).create_new(true).open(&f).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn defaults_never_use_a_shared_directory() {
        for place in [Place::Cache, Place::Data, Place::Logs] {
            let d = default_dir(place);
            assert!(!d.starts_with("/tmp"), "{d:?}");
        }
    }
}
