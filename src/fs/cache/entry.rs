//! What the cache knows of one name: its kind, size, times, version and POSIX metadata
//! ([`EntryInfo`]), whether it is complete or from a listing only, and s3fs's legacy
//! directory objects (`_$folder$`, `dir/`) folded into directories.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// What the cache knows of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub kind: Kind,
    pub size: u64,
    /// S3's LastModified, unless `posix.mtime` says otherwise.
    pub mtime: SystemTime,
    pub posix: Posix,
    /// False for entries known only from a listing (no user metadata): attributes need a HEAD.
    pub full: bool,
    /// S3's LastModified of the object (the version these attributes describe).
    pub s3_modified: SystemTime,
    /// When a HEAD answered with these attributes (None: not from a HEAD).
    pub checked: Option<SystemTime>,
    /// The version (ETag) these attributes describe, when S3 said (HEAD and listings do).
    pub etag: Option<ETag>,
    /// A HEAD (or this mount's own upload) showed that the object holds nothing a rewrite
    /// must keep (no user metadata but the mount's, default headers): opening it for
    /// writing needs no HEAD. False when not known.
    pub plain: bool,
    /// This mount made this version with no tags: a rewrite needs no GetObjectTagging (a
    /// HEAD cannot tell tags, so only the mount's own uploads set this).
    pub tagless: bool,
    /// The object's storage class (from its listing or HEAD), which a rename's copy asks
    /// for: S3 makes a copy STANDARD unless told.
    pub class: crate::store::StorageClass,
    /// Its extended attributes (s3fs's `xattr` header), when a HEAD or this mount's own
    /// change said.
    pub xattrs: crate::fs::xattr::Header,
    /// A directory that older tools marked with an object of its own outside its prefix
    /// (see [`LegacyDir`]): rmdir removes that too.
    pub legacy: Option<LegacyDir>,
}

/// A directory as s3fs-fuse's older versions and other tools mark it: an empty object named
/// like the directory without the trailing slash (Content-Type `application/x-directory`, or
/// a directory mode in s3fs's `mode` header), or an empty `NAME_$folder$`. Shown as the
/// directory; removed with it; a rename of one is EXDEV (`mv` then copies and removes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyDir {
    /// `NAME_$folder$` (else the object `NAME`).
    pub folder_suffix: bool,
    /// That object's version.
    pub etag: Option<ETag>,
    /// Known to mark the directory (its name or a HEAD said); else an empty object the
    /// directory shadows in a listing, which rmdir HEADs before it removes it.
    pub confirmed: bool,
}

impl LegacyDir {
    /// What a directory `dir` shadowing `file` (the same name, in a listing) may be marked
    /// by: an empty object there might be an older tool's directory object.
    pub fn shadowed(dir: EntryInfo, file: Option<&EntryInfo>) -> EntryInfo {
        match file {
            Some(f) if f.kind == Kind::File && f.size == 0 && dir.legacy.is_none() => EntryInfo {
                legacy: Some(LegacyDir {
                    folder_suffix: false,
                    etag: f.etag,
                    confirmed: false,
                }),
                ..dir
            },
            Some(d) if d.kind == Kind::Dir && d.legacy.is_some() && dir.legacy.is_none() => EntryInfo {
                legacy: d.legacy,
                ..dir
            },
            _ => dir,
        }
    }
}

/// The suffix of the legacy directory objects (see [`LegacyDir`]).
pub const FOLDER_SUFFIX: &str = "_$folder$";

/// Folds the `NAME_$folder$` objects of a directory's listing into directories `NAME` (see
/// [`LegacyDir`]).
pub fn fold_legacy_dirs(listing: &mut BTreeMap<String, EntryInfo>, mount_time: SystemTime) {
    let folders: Vec<String> = listing
        .iter()
        .filter(|(n, i)| {
            i.kind == Kind::File && i.size == 0 && n.len() > FOLDER_SUFFIX.len() && n.ends_with(FOLDER_SUFFIX)
        })
        .map(|(n, _)| n.clone())
        .collect();
    for folder in folders {
        let Some(marker) = listing.remove(&folder) else {
            continue;
        };
        let name = folder[..folder.len() - FOLDER_SUFFIX.len()].to_string();
        let legacy = LegacyDir {
            folder_suffix: true,
            etag: marker.etag,
            confirmed: true,
        };
        match listing.get_mut(&name) {
            Some(d) if d.kind == Kind::Dir => d.legacy = d.legacy.or(Some(legacy)),
            _ => {
                let mut d = EntryInfo::new(Kind::Dir, 0, mount_time);
                d.legacy = Some(legacy);
                listing.insert(name, d);
            }
        }
    }
}

impl EntryInfo {
    pub fn new(kind: Kind, size: u64, mtime: SystemTime) -> Self {
        EntryInfo {
            kind,
            size,
            mtime,
            posix: Posix::default(),
            full: true,
            s3_modified: mtime,
            checked: None,
            etag: None,
            plain: false,
            tagless: false,
            class: Default::default(),
            xattrs: Default::default(),
            legacy: None,
        }
    }

    /// The `xattr` header of the object, as a HEAD or this mount's change said.
    pub fn with_xattrs(mut self, header: Option<&str>) -> Self {
        self.xattrs = crate::fs::xattr::Header::of(header);
        self
    }

    /// The type bits of a special file (FIFO, socket, device: an empty object whose mode
    /// says so, as s3fs keeps them), else None.
    pub fn special(&self) -> Option<u32> {
        match (self.kind, self.size) {
            (Kind::File, 0) => self.posix.special(),
            _ => None,
        }
    }

    pub fn with_class(mut self, class: Option<&str>) -> Self {
        self.class = crate::store::StorageClass::of(class);
        self
    }

    pub fn with_tagless(mut self, tagless: bool) -> Self {
        self.tagless = tagless;
        self
    }

    pub fn with_plain(mut self, plain: bool) -> Self {
        self.plain = plain;
        self
    }

    /// The version S3 named for these attributes.
    pub fn with_etag(mut self, etag: Option<&str>) -> Self {
        self.etag = ETag::of(etag);
        self
    }

    /// The ETag as a string, for the requests that name this version.
    pub fn version(&self) -> Option<&str> {
        self.etag.as_ref().map(ETag::as_str)
    }

    /// Marks attributes as just answered by a HEAD.
    pub fn checked_now(mut self) -> Self {
        self.checked = Some(SystemTime::now());
        self
    }

    /// True when `self` (full attributes from a HEAD) still describes the object a newer
    /// listing shows as `listed`: same size and LastModified, and the HEAD came at least
    /// [`SAME_VERSION_MARGIN`] after that LastModified. LastModified has one-second
    /// resolution and any change of an object (metadata included: a copy onto itself)
    /// gives it a new one; the margin rules out a change within the same second.
    /// With both ETags known, they decide.
    pub fn still_describes(&self, listed: &EntryInfo) -> bool {
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).ok();
        if let (Some(a), Some(b)) = (&self.etag, &listed.etag) {
            return self.full
                && self.kind != Kind::Dir
                && listed.kind == Kind::File
                && self.size == listed.size
                && a.matches(b.as_str());
        }
        self.full
            && self.kind != Kind::Dir
            && listed.kind == Kind::File
            && self.size == listed.size
            && secs(self.s3_modified).is_some()
            && secs(self.s3_modified) == secs(listed.s3_modified)
            && self.checked.is_some_and(|c| {
                c.duration_since(self.s3_modified)
                    .is_ok_and(|d| d >= SAME_VERSION_MARGIN)
            })
    }

    pub fn with_posix(mut self, posix: Posix) -> Self {
        self.posix = posix;
        if let Some(t) = posix.mtime {
            self.mtime = t;
        }
        // A symlink's target fits in PATH_MAX; a bigger object is a file whatever its
        // metadata says (readlink never reads more than that).
        if posix.is_symlink() && self.size < SYMLINK_MAX as u64 {
            self.kind = Kind::Symlink;
        }
        self
    }

    pub fn partial(mut self) -> Self {
        self.full = false;
        self
    }
}

/// PATH_MAX: the longest symlink target, terminating NUL included.
pub const SYMLINK_MAX: usize = libc::PATH_MAX as usize;

/// How long after an object's LastModified a HEAD must have been answered for its attributes
/// to be reused for a listing entry with the same size and LastModified (one-second
/// resolution, plus clock skew).
pub const SAME_VERSION_MARGIN: Duration = Duration::from_secs(3);
