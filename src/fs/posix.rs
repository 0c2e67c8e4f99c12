//! POSIX metadata kept as S3 user metadata, in s3fs-fuse's headers so that buckets are
//! interchangeable: `x-amz-meta-mode` (st_mode, decimal, type bits included), `-uid`, `-gid`,
//! `-mtime` (seconds), and `-rdev` (a device's number) for the special files s3fs keeps as
//! empty objects (FIFOs, sockets, devices: the type bits of `mode` say which). prefixfs adds `-mtime-ns` (nanoseconds of the same instant) so that
//! `rsync -a` and `cp -p` round-trip sub-second times; readers that do not know it ignore it.
//! Objects without these headers get the mount's defaults.

use crate::store::UserMeta;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The latest mtime accepted from metadata: 9999-12-31T23:59:59Z. Later values are ignored
/// (the object's LastModified is shown instead).
pub const MAX_MTIME_SECS: u64 = 253_402_300_799;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Posix {
    /// Full st_mode (type and permission bits), when stored.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
    /// s3fs's `x-amz-meta-atime` and `-ctime` (seconds, or seconds with a fraction), when an
    /// object has them: shown where this mount has no time of its own. Read, never written
    /// by [`Posix::to_meta`] (a metadata change of the mount moves an existing `ctime` key,
    /// see `fs::changes`).
    pub atime: Option<SystemTime>,
    pub ctime: Option<SystemTime>,
    /// s3fs's `x-amz-meta-rdev`: a character or block device's number.
    pub rdev: Option<u32>,
}

impl Posix {
    pub fn from_meta(meta: &UserMeta) -> Posix {
        // Anything in the bucket may be hostile: every value is parsed and checked, never
        // trusted to fit (an mtime of 2^63 seconds used to overflow and panic).
        let num = |k: &str| meta.get(k).and_then(|v| v.trim().parse::<u64>().ok());
        let mtime = match (num("mtime-ns"), num("mtime")) {
            (Some(ns), Some(s)) if ns / 1_000_000_000 == s && s <= MAX_MTIME_SECS => {
                UNIX_EPOCH.checked_add(Duration::from_nanos(ns))
            }
            (_, Some(s)) if s <= MAX_MTIME_SECS => UNIX_EPOCH.checked_add(Duration::from_secs(s)),
            _ => None,
        };
        Posix {
            mode: num("mode").and_then(|m| u32::try_from(m).ok()),
            uid: num("uid").and_then(|m| u32::try_from(m).ok()),
            gid: num("gid").and_then(|m| u32::try_from(m).ok()),
            mtime,
            atime: seconds(meta.get("atime")),
            ctime: seconds(meta.get("ctime")),
            rdev: num("rdev").and_then(|m| u32::try_from(m).ok()),
        }
    }

    /// The user metadata keys the mount owns: what [`Posix::to_meta`] writes, and a
    /// conditional write's nonce (`store::retry::WRITE_NONCE`, meaningful to that write
    /// alone); every other key of an object belongs to someone else and is kept.
    pub const OWNED_KEYS: &[&str] = &["mode", "uid", "gid", "mtime", "mtime-ns", "rdev", "prefixfs-write"];

    pub fn to_meta(&self) -> UserMeta {
        let mut m = UserMeta::new();
        if let Some(mode) = self.mode {
            m.insert("mode".into(), mode.to_string());
        }
        if let Some(uid) = self.uid {
            m.insert("uid".into(), uid.to_string());
        }
        if let Some(gid) = self.gid {
            m.insert("gid".into(), gid.to_string());
        }
        if let Some(t) = self.mtime {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            m.insert("mtime".into(), d.as_secs().to_string());
            m.insert("mtime-ns".into(), d.as_nanos().to_string());
        }
        if let Some(rdev) = self.rdev {
            m.insert("rdev".into(), rdev.to_string());
        }
        m
    }

    /// The type bits of a special file (FIFO, socket, character or block device) when the
    /// mode says it is one.
    pub fn special(&self) -> Option<u32> {
        self.mode.map(|m| m & libc::S_IFMT).filter(|t| is_special(*t))
    }

    pub fn is_symlink(&self) -> bool {
        self.mode.is_some_and(|m| m & libc::S_IFMT == libc::S_IFLNK)
    }

    pub fn is_dir(&self) -> bool {
        self.mode.is_some_and(|m| m & libc::S_IFMT == libc::S_IFDIR)
    }
}

/// True for the type bits of the special files: FIFOs, sockets, character and block
/// devices (kept as empty objects, as s3fs does; the kernel gives them their behaviour).
pub fn is_special(type_bits: u32) -> bool {
    matches!(
        type_bits,
        libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK
    )
}

/// A time as s3fs writes it: decimal seconds, perhaps with a fraction; None when it does not
/// parse or lies past [`MAX_MTIME_SECS`].
fn seconds(v: Option<&String>) -> Option<SystemTime> {
    let v = v?.trim();
    let (s, frac) = v.split_once('.').unwrap_or((v, ""));
    let s: u64 = s.parse().ok().filter(|s| *s <= MAX_MTIME_SECS)?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        let n: u32 = digits.parse().ok()?;
        n * 10u32.pow(9 - digits.len() as u32)
    };
    UNIX_EPOCH.checked_add(Duration::new(s, nanos))
}

/// What an object's user metadata holds that the mount does not own (every key but
/// [`Posix::OWNED_KEYS`]), as a change of the object keeps it: an s3fs `ctime` key moves to
/// now.
pub fn foreign_meta(mut meta: UserMeta) -> UserMeta {
    for k in Posix::OWNED_KEYS {
        meta.remove(*k);
    }
    touch_ctime(&mut meta, SystemTime::now());
    meta
}

/// s3fs's own time keys: a metadata change moves `ctime` where the object has one.
pub fn touch_ctime(meta: &mut UserMeta, now: SystemTime) {
    if let Some(c) = meta.get_mut("ctime") {
        *c = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs().to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_nonce_is_owned() {
        assert!(Posix::OWNED_KEYS.contains(&crate::store::retry::WRITE_NONCE));
    }

    #[test]
    fn round_trips_and_reads_s3fs_headers() {
        let p = Posix {
            mode: Some(libc::S_IFREG | 0o640),
            uid: Some(1000),
            gid: Some(100),
            mtime: Some(UNIX_EPOCH + Duration::new(1_486_512_000, 123_456_789)),
            ..Default::default()
        };
        assert_eq!(Posix::from_meta(&p.to_meta()), p);
        // A device as s3fs keeps it: the type in the mode, the number in `rdev`.
        let dev = Posix {
            mode: Some(libc::S_IFCHR | 0o600),
            rdev: Some(0x0501),
            ..p
        };
        assert_eq!(Posix::from_meta(&dev.to_meta()), dev);
        assert_eq!((dev.special(), p.special()), (Some(libc::S_IFCHR), None));
        // s3fs's atime and ctime, whole seconds or with a fraction; nonsense is ignored.
        let times: UserMeta = [("atime", "1486512100"), ("ctime", "1486512200.5")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let t = Posix::from_meta(&times);
        assert_eq!(t.atime, Some(UNIX_EPOCH + Duration::from_secs(1_486_512_100)));
        assert_eq!(t.ctime, Some(UNIX_EPOCH + Duration::from_millis(1_486_512_200_500)));
        let bad: UserMeta = [("atime", "99999999999999"), ("ctime", "1.x")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            (Posix::from_meta(&bad).atime, Posix::from_meta(&bad).ctime),
            (None, None)
        );
        // What s3fs-fuse writes: decimal mode with type bits, seconds.
        let s3fs: UserMeta = [("mode", "33188"), ("uid", "0"), ("gid", "0"), ("mtime", "1486512000")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let q = Posix::from_meta(&s3fs);
        assert_eq!(q.mode, Some(libc::S_IFREG | 0o644));
        assert_eq!(q.mtime, Some(UNIX_EPOCH + Duration::from_secs(1_486_512_000)));
        assert_eq!(Posix::from_meta(&UserMeta::new()), Posix::default());
    }

    #[test]
    fn hostile_values_are_ignored_not_trusted() {
        let meta = |pairs: &[(&str, &str)]| -> UserMeta {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        for m in [
            meta(&[("mtime", "9223372036854775808")]),
            meta(&[("mtime", "18446744073709551615")]),
            meta(&[("mtime", "253402300800"), ("mtime-ns", "253402300800000000000")]),
            meta(&[
                ("mtime", "-1"),
                ("mode", "99999999999"),
                ("uid", "x"),
                ("gid", "4294967296"),
            ]),
        ] {
            let p = Posix::from_meta(&m);
            assert_eq!((p.mtime, p.mode, p.uid, p.gid), (None, None, None, None), "{m:?}");
        }
    }
}
