//! The metadata of files, open or not: chmod, chown, utimens and truncate (setattr), and
//! symlinks (a small object whose POSIX metadata says so).

use super::cache::{EntryInfo, Kind, SYMLINK_MAX};
use super::error::{FsError, FsResult};
use super::posix::Posix;
use super::{Attr, Core, lock};
use crate::layout::RelPath;
use crate::store::{StoreError, WriteIf};
use bytes::Bytes;
use std::ffi::OsStr;
use std::time::SystemTime;

/// What a setattr asks to change (chmod, chown, truncate, utimens); None leaves it alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttrChanges {
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

impl AttrChanges {
    /// A truncate (or extension) to `size` bytes, and nothing else.
    pub fn truncate(size: u64) -> Self {
        AttrChanges {
            size: Some(size),
            ..Default::default()
        }
    }

    /// Whether it changes POSIX metadata (stored with the object), not only the size.
    fn changes_meta(&self) -> bool {
        self.mode.is_some() || self.uid.is_some() || self.gid.is_some() || self.mtime.is_some()
    }

    /// `posix` with these changes applied, for `info`'s object.
    fn apply(&self, info: &EntryInfo, mut posix: Posix) -> Posix {
        let type_bits = match info.kind {
            Kind::Dir => libc::S_IFDIR,
            Kind::File => info.special().unwrap_or(libc::S_IFREG),
            Kind::Symlink => libc::S_IFLNK,
        };
        if let Some(m) = self.mode {
            posix.mode = Some(type_bits | (m & 0o7777));
        }
        posix.uid = self.uid.or(posix.uid);
        posix.gid = self.gid.or(posix.gid);
        posix.mtime = self.mtime.or(posix.mtime);
        posix
    }
}

impl Core {
    /// chmod, chown, utimens and truncate. S3 has nowhere to keep an atime: one set here
    /// lives in the inode (this mount's view), and a change of mtime leaves the atime as it
    /// read before.
    pub async fn setattr(&self, ino: u64, changes: AttrChanges) -> FsResult<Attr> {
        let keep = match changes.atime {
            Some(t) => Some(t),
            None if (changes.mtime.is_some() || changes.size.is_some()) && lock(&self.inodes).atime(ino).is_none() => {
                Some(self.getattr(ino).await?.atime)
            }
            None => None,
        };
        let attr = self.set_attributes(ino, &changes).await?;
        let Some(t) = keep else { return Ok(attr) };
        lock(&self.inodes).accessed(ino, t);
        Ok(Attr { atime: t, ..attr })
    }

    /// [`Core::setattr`] but the atime: through the file's open state when it is open (its
    /// last close uploads the change), else in S3 at once.
    async fn set_attributes(&self, ino: u64, changes: &AttrChanges) -> FsResult<Attr> {
        let path = self.path_of(ino)?;
        let info = self.stat(&path).await?.ok_or_else(|| FsError::not_found(&path))?;
        let meta_change = changes.changes_meta();
        if (meta_change || changes.size.is_some()) && !path.is_root() {
            self.check_writable(&path)?;
        }
        if changes.size.is_some() && info.kind == Kind::Dir {
            return Err(FsError::new(libc::EISDIR, format!("{path}: is a directory")));
        }
        let mut posix = changes.apply(&info, info.posix);
        // A resize moves the mtime, unless the same call sets it.
        let open_posix = match (changes.size, changes.mtime) {
            (Some(_), None) => Posix {
                mtime: Some(SystemTime::now()),
                ..posix
            },
            _ => posix,
        };
        if let Some(info) = self
            .files
            .setattr(ino, &path, changes.size, open_posix, meta_change)
            .await?
        {
            // futimens, fchmod, ftruncate change the ctime as their by-path forms do (else
            // `touch -d` of an open file would leave a ctime before its mtime moved back,
            // earlier than the file itself).
            self.attributes_changed(ino);
            return Ok(self.attr(ino, info));
        }
        if path.is_root() {
            // The root has no object to keep metadata in: a change of its mode, owner or
            // mtime is refused (logged), never a success that changes nothing. An atime
            // lives in this mount's view (`setattr`).
            if meta_change {
                return Err(FsError::new(
                    libc::EPERM,
                    "the mount root has no object to keep a mode, owner or mtime in (use --dir-mode, --uid, --gid)",
                ));
            }
            return self.getattr(ino).await;
        }
        let mut new_size = info.size;
        // The object is a new version now: its ETag when S3 said it, else none (what acts on
        // it next names no version until a HEAD or a listing says which).
        let mut etag = None;
        match changes.size {
            Some(size) if size != info.size && info.kind == Kind::File => {
                if changes.mtime.is_none() {
                    posix.mtime = Some(SystemTime::now());
                }
                etag = self.files.truncate_closed(&path, &info, size, &posix).await?;
                new_size = size;
            }
            _ if meta_change => etag = self.ns.set_metadata(&path, &info, &posix).await?,
            _ => {}
        }
        let new_info = EntryInfo { size: new_size, ..info }
            .with_posix(posix)
            .with_etag(etag.as_deref());
        self.ns.learned(&path, new_info.clone());
        self.attributes_changed(ino);
        Ok(self.attr(ino, new_info))
    }

    /// `fallocate`: mode 0 extends the file to `offset + length` as `posix_fallocate` does
    /// (zeros; never shrinks it); `FALLOC_FL_KEEP_SIZE` has nothing to reserve on S3 (done);
    /// the other modes (punching holes, collapsing, zeroing ranges) are EOPNOTSUPP.
    pub async fn fallocate(&self, ino: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let path = self.path_of(ino)?;
        self.check_writable(&path)?;
        match mode {
            0 => {
                let end = offset
                    .checked_add(length)
                    .filter(|e| *e <= crate::limits::MAX_OBJECT)
                    .ok_or_else(|| FsError::new(libc::EFBIG, format!("{path}: past S3's largest object")))?;
                if end > self.getattr(ino).await?.size {
                    self.setattr(ino, AttrChanges::truncate(end)).await?;
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(FsError::new(
                libc::EOPNOTSUPP,
                format!("{path}: fallocate mode {mode:#x} is not supported (only 0 and FALLOC_FL_KEEP_SIZE)"),
            )),
        }
    }

    /// `symlink`: a small object holding the target, its POSIX mode saying it is a link.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &std::path::Path,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        let target = target
            .to_str()
            .ok_or_else(|| FsError::new(libc::EINVAL, format!("{path}: symlink target is not valid UTF-8")))?;
        if target.len() >= SYMLINK_MAX {
            return Err(FsError::new(
                libc::ENAMETOOLONG,
                format!("{path}: symlink target too long"),
            ));
        }
        let posix = Posix {
            mode: Some(libc::S_IFLNK | 0o777),
            uid: Some(uid),
            gid: Some(gid),
            mtime: Some(SystemTime::now()),
            ..Default::default()
        };
        self.create_object(&path, Bytes::copy_from_slice(target.as_bytes()), posix)
            .await
    }

    /// `mknod` of a FIFO, socket, character or block device: an empty object whose mode says
    /// which (and `rdev` which device), as s3fs keeps them. The kernel gives them their
    /// behaviour (a FIFO on the mount connects two local processes); the mount is `nodev`,
    /// so a device node in the bucket opens nothing.
    pub async fn mknod_special(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        let type_bits = mode & libc::S_IFMT;
        if !super::posix::is_special(type_bits) {
            return Err(FsError::new(
                libc::EINVAL,
                format!("{path}: mknod of file type {type_bits:#o}"),
            ));
        }
        let posix = Posix {
            mode: Some(mode),
            uid: Some(uid),
            gid: Some(gid),
            mtime: Some(SystemTime::now()),
            rdev: matches!(type_bits, libc::S_IFCHR | libc::S_IFBLK).then_some(rdev),
            ..Default::default()
        };
        self.create_object(&path, Bytes::new(), posix).await
    }

    /// Creates `path`, a new name, as an object holding `body` with `posix` as its metadata
    /// (a symlink, a special file): only where nothing is (`If-None-Match: *`), so a name
    /// another client took meanwhile stays theirs (EEXIST).
    async fn create_object(&self, path: &RelPath, body: Bytes, posix: Posix) -> FsResult<Attr> {
        self.check_writable(path)?;
        if self.stat(path).await?.is_some() {
            return Err(FsError::new(libc::EEXIST, format!("{path}: exists")));
        }
        let key = self.ns.layout().file_key(path)?;
        let size = body.len() as u64;
        let etag = match self
            .ns
            .store()
            .put_with(&key, body, &posix.to_meta(), None, Some(&WriteIf::Absent))
            .await
        {
            Err(StoreError::PreconditionFailed { .. }) => {
                self.ns.forget(path);
                return Err(FsError::new(
                    libc::EEXIST,
                    format!("{path}: created by another client meanwhile"),
                ));
            }
            r => r?,
        };
        let info = EntryInfo::new(Kind::File, size, SystemTime::now())
            .with_posix(posix)
            .with_etag(etag.as_deref())
            .with_plain(true)
            .with_tagless(true)
            .with_xattrs(None);
        self.ns.learned(path, info.clone());
        let ino = lock(&self.inodes).lookup(path, info.kind);
        self.entry_changed(path);
        Ok(self.attr(ino, info))
    }

    /// The target of a symlink: at most [`SYMLINK_MAX`] bytes are ever read (an object
    /// claiming to be a larger symlink is shown as a file, see [`EntryInfo::with_posix`]).
    pub async fn readlink(&self, ino: u64) -> FsResult<Bytes> {
        let path = self.path_of(ino)?;
        match self.stat(&path).await? {
            Some(i) if i.kind == Kind::Symlink => {}
            Some(_) => return Err(FsError::new(libc::EINVAL, format!("{path}: not a symlink"))),
            None => return Err(FsError::not_found(&path)),
        }
        let key = self.ns.layout().file_key(&path)?;
        let target = self.ns.store().get(&key, Some(0..SYMLINK_MAX as u64), None).await?;
        if target.len() >= SYMLINK_MAX {
            return Err(FsError::new(libc::EIO, format!("{path}: symlink target too long")));
        }
        Ok(target)
    }
}
