//! Settled listings on disk, per bucket and layout (the scope): a snapshot of every settled
//! listing (`<scope>.json`, written whole to a temporary file and renamed), and a log of the
//! directories this mount changed or forgot since (`<scope>.log`, one line each, appended
//! once the change is made in memory and before it is acknowledged), which a load applies
//! to the snapshot: a write that a crash leaves out of the last snapshot is never hidden
//! behind a settled listing. A flush rotates the log to `<scope>.log.old` first, writes the
//! snapshot, then removes the old log; a load applies both.
//!
//! One mount of a scope keeps the files at a time (`<scope>.lock`, flock); a second mount
//! of the same bucket on this host settles in memory only and says so. A file that does not
//! parse is discarded whole with a log line.

use crate::fs::cache::{DirFacts, EntryInfo, Kind, LegacyDir, lock};
use crate::fs::posix::Posix;
use crate::layout::RelPath;
use crate::store::{ETag, StorageClass};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const VERSION: u32 = 1;

/// A settled listing as kept on disk.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredDir {
    pub path: String,
    /// When S3 answered the listing (ms since the epoch).
    pub validated_ms: u64,
    /// The newest object at or below the directory (ms since the epoch).
    pub newest_ms: u64,
    pub facts: Option<StoredFacts>,
    pub entries: Vec<(String, StoredEntry)>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredFacts {
    marker: Option<u64>,
    marker_etag: Option<String>,
    foreign: bool,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    dirs: Vec<StoredDir>,
}

/// One entry, every field of [`EntryInfo`]; times in ns since the epoch.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredEntry {
    kind: u8,
    size: u64,
    mtime: u64,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    pmtime: Option<u64>,
    atime: Option<u64>,
    ctime: Option<u64>,
    rdev: Option<u32>,
    full: bool,
    s3_modified: u64,
    checked: Option<u64>,
    etag: Option<String>,
    plain: bool,
    tagless: bool,
    class: Option<String>,
    /// None: not known; Some(None): no xattr header.
    xattrs: Option<Option<String>>,
    /// (`_$folder$`, its ETag, confirmed).
    legacy: Option<(bool, Option<String>, bool)>,
}

fn ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

pub(super) fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl StoredEntry {
    pub fn of(i: &EntryInfo) -> Self {
        StoredEntry {
            kind: match i.kind {
                Kind::File => 0,
                Kind::Dir => 1,
                Kind::Symlink => 2,
            },
            size: i.size,
            mtime: ns(i.mtime),
            mode: i.posix.mode,
            uid: i.posix.uid,
            gid: i.posix.gid,
            pmtime: i.posix.mtime.map(ns),
            atime: i.posix.atime.map(ns),
            ctime: i.posix.ctime.map(ns),
            rdev: i.posix.rdev,
            full: i.full,
            s3_modified: ns(i.s3_modified),
            checked: i.checked.map(ns),
            etag: i.etag.map(|e| e.as_str().to_string()),
            plain: i.plain,
            tagless: i.tagless,
            class: i.class.name().map(str::to_string),
            xattrs: match &i.xattrs {
                crate::fs::xattr::Header::Unknown => None,
                crate::fs::xattr::Header::Known(h) => Some(h.as_deref().map(str::to_string)),
            },
            legacy: i
                .legacy
                .map(|l| (l.folder_suffix, l.etag.map(|e| e.as_str().to_string()), l.confirmed)),
        }
    }

    /// The entry, or None when it is not one this version of prefixfs wrote.
    pub fn to_info(&self) -> Option<EntryInfo> {
        let kind = match self.kind {
            0 => Kind::File,
            1 => Kind::Dir,
            2 => Kind::Symlink,
            _ => return None,
        };
        let mut info = EntryInfo::new(kind, self.size, time(self.mtime));
        info.posix = Posix {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.pmtime.map(time),
            atime: self.atime.map(time),
            ctime: self.ctime.map(time),
            rdev: self.rdev,
        };
        info.full = self.full;
        info.s3_modified = time(self.s3_modified);
        info.checked = self.checked.map(time);
        info.etag = ETag::of(self.etag.as_deref());
        info.plain = self.plain;
        info.tagless = self.tagless;
        info.class = StorageClass::of(self.class.as_deref());
        info.xattrs = match &self.xattrs {
            None => crate::fs::xattr::Header::Unknown,
            Some(h) => crate::fs::xattr::Header::of(h.as_deref()),
        };
        info.legacy = self.legacy.as_ref().map(|(folder_suffix, etag, confirmed)| LegacyDir {
            folder_suffix: *folder_suffix,
            etag: ETag::of(etag.as_deref()),
            confirmed: *confirmed,
        });
        Some(info)
    }
}

impl StoredFacts {
    pub fn of(f: &DirFacts) -> Self {
        StoredFacts {
            marker: f.marker,
            marker_etag: f.marker_etag.map(|e| e.as_str().to_string()),
            foreign: f.foreign,
        }
    }

    pub fn to_facts(&self) -> DirFacts {
        DirFacts {
            marker: self.marker,
            marker_etag: ETag::of(self.marker_etag.as_deref()),
            foreign: self.foreign,
        }
    }
}

/// A settled listing read back: its path, entries, facts, when S3 answered it and the
/// newest object below it.
pub(super) struct Loaded {
    pub dir: RelPath,
    pub entries: BTreeMap<String, EntryInfo>,
    pub facts: Option<DirFacts>,
    pub validated: SystemTime,
    pub newest: SystemTime,
}

/// The files of one scope (see the module doc).
pub(super) struct SettledFiles {
    base: PathBuf,
    /// Held for the mount's life: this mount owns the files.
    _lock: File,
    /// The change log, appended to (rotated by a flush).
    log: Mutex<File>,
}

fn with_ext(base: &std::path::Path, ext: &str) -> PathBuf {
    let mut p = base.as_os_str().to_owned();
    p.push(ext);
    PathBuf::from(p)
}

fn open_private(path: &std::path::Path, append: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .append(append)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl SettledFiles {
    /// Takes the files at `base` (its directory must be private), or None when another
    /// mount holds them.
    pub fn open(base: &std::path::Path) -> std::io::Result<Option<SettledFiles>> {
        let lock = open_private(&with_ext(base, ".lock"), false)?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => Ok(None),
                _ => Err(e),
            };
        }
        let log = open_private(&with_ext(base, ".log"), true)?;
        Ok(Some(SettledFiles {
            base: base.to_path_buf(),
            _lock: lock,
            log: Mutex::new(log),
        }))
    }

    /// The settled listings kept, less what the logs say changed since.
    pub fn load(&self) -> Vec<Loaded> {
        let path = with_ext(&self.base, ".json");
        let snapshot: Snapshot = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "settled listings unreadable: discarded");
                    return Vec::new();
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "settled listings unreadable: discarded");
                return Vec::new();
            }
        };
        if snapshot.version != VERSION {
            return Vec::new();
        }
        let mut drops = Vec::new();
        for ext in [".log.old", ".log"] {
            if let Ok(f) = File::open(with_ext(&self.base, ext)) {
                for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                    if let Some(d) = Dropped::parse(&line) {
                        drops.push(d);
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(snapshot.dirs.len());
        for d in snapshot.dirs {
            let Ok(dir) = RelPath::parse(&d.path) else { continue };
            if drops.iter().any(|x| x.covers(&dir)) {
                continue;
            }
            let mut entries = BTreeMap::new();
            let mut ok = true;
            for (name, e) in &d.entries {
                match (crate::layout::validate_name(name), e.to_info()) {
                    (Ok(()), Some(info)) => {
                        entries.insert(name.clone(), info);
                    }
                    _ => ok = false,
                }
            }
            if !ok {
                tracing::warn!(dir = %dir, "a settled listing with entries this version cannot read: discarded");
                continue;
            }
            out.push(Loaded {
                dir,
                entries,
                facts: d.facts.as_ref().map(StoredFacts::to_facts),
                validated: from_ms(d.validated_ms),
                newest: from_ms(d.newest_ms),
            });
        }
        out
    }

    /// Records that `dir` (with `subtree`, everything below it too) is no longer as kept.
    pub fn log_drop(&self, dir: &RelPath, subtree: bool) {
        // The path as a JSON string: a name may hold a newline.
        let path = serde_json::Value::String(dir.as_str().to_string());
        let line = format!("{} {path}\n", if subtree { 'T' } else { 'D' });
        let mut log = lock(&self.log);
        if let Err(e) = log.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "cannot log a change of a settled directory");
        }
    }

    /// Starts a flush: the log so far is what the snapshot about to be taken covers.
    pub fn rotate(&self) -> std::io::Result<()> {
        let mut log = lock(&self.log);
        std::fs::rename(with_ext(&self.base, ".log"), with_ext(&self.base, ".log.old"))?;
        *log = open_private(&with_ext(&self.base, ".log"), true)?;
        Ok(())
    }

    /// Writes the snapshot (after [`SettledFiles::rotate`]) and drops the old log.
    pub fn write(&self, dirs: Vec<StoredDir>) -> std::io::Result<()> {
        let tmp = with_ext(&self.base, ".json.tmp");
        {
            let f = open_private(&tmp, false)?;
            f.set_len(0)?;
            let mut w = std::io::BufWriter::new(f);
            serde_json::to_writer(&mut w, &Snapshot { version: VERSION, dirs }).map_err(std::io::Error::other)?;
            w.flush()?;
        }
        std::fs::rename(&tmp, with_ext(&self.base, ".json"))?;
        match std::fs::remove_file(with_ext(&self.base, ".log.old")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// One line of the change log.
struct Dropped {
    dir: RelPath,
    subtree: bool,
}

impl Dropped {
    fn parse(line: &str) -> Option<Dropped> {
        let (kind, path) = line.split_once(' ')?;
        Some(Dropped {
            dir: RelPath::parse(&serde_json::from_str::<String>(path).ok()?).ok()?,
            subtree: match kind {
                "T" => true,
                "D" => false,
                _ => return None,
            },
        })
    }

    fn covers(&self, dir: &RelPath) -> bool {
        *dir == self.dir || (self.subtree && dir.starts_with(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_the_round_trip_whole() {
        let mut i = EntryInfo::new(Kind::Symlink, 12, UNIX_EPOCH + Duration::from_secs(1_600_000_000))
            .with_etag(Some("\"abc\""))
            .with_class(Some("GLACIER"))
            .with_xattrs(Some("{}"))
            .checked_now();
        i.posix.mode = Some(0o120777);
        i.posix.uid = Some(7);
        i.plain = true;
        i.legacy = Some(LegacyDir {
            folder_suffix: true,
            etag: ETag::of(Some("\"x\"")),
            confirmed: false,
        });
        let back = StoredEntry::of(&i).to_info().expect("readable");
        assert_eq!(back, i);
    }

    #[test]
    fn the_log_drops_what_changed_after_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("scope");
        let files = SettledFiles::open(&base).unwrap().expect("not locked");
        let stored = |p: &str| StoredDir {
            path: p.into(),
            validated_ms: 1,
            newest_ms: 1,
            facts: None,
            entries: vec![("f".into(), StoredEntry::of(&EntryInfo::new(Kind::File, 1, UNIX_EPOCH)))],
        };
        files.rotate().unwrap();
        files
            .write(vec![stored("a"), stored("a/b"), stored("c"), stored("c/d")])
            .unwrap();
        files.log_drop(&RelPath::parse("a").unwrap(), true);
        files.log_drop(&RelPath::parse("c").unwrap(), false);
        let kept: Vec<String> = files.load().into_iter().map(|l| l.dir.as_str().to_string()).collect();
        assert_eq!(kept, vec!["c/d".to_string()]);
        // A second mount of the same scope does not get the files.
        assert!(SettledFiles::open(&base).unwrap().is_none());
    }
}
