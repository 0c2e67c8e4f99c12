//! The file operations the kernel asks for, on handles: create, open, read, write, flush,
//! release. Each resolves its handle and inode to a path and hands the work to the open
//! files ([`OpenFiles`](super::files::OpenFiles)) or to a reader of the object.

use super::cache::{EntryInfo, Kind};
use super::error::{FsError, FsResult};
use super::files::Start;
use super::posix::Posix;
use super::{Attr, Core, Handle, lock};
use crate::data::read::ObjectReads;
use crate::layout::RelPath;
use crate::store::{StoreError, WriteIf};
use bytes::Bytes;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::SystemTime;

impl Core {
    /// `creat`/`open(O_CREAT)`. With `exclusive` (`O_EXCL`: lock files, `set -C`) S3 decides,
    /// not this mount's view: the object is created empty with `If-None-Match: *` before this
    /// returns (one more PUT than an ordinary create), a 412 is EEXIST, and the file's
    /// upload later replaces only that object (`If-Match`).
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
    ) -> FsResult<(Attr, u64)> {
        let path = self.child_path(parent, name)?;
        self.check_writable(&path)?;
        let existing = self.stat(&path).await?;
        match existing {
            Some(i) if i.kind == Kind::Dir => {
                return Err(FsError::new(libc::EISDIR, format!("{path}: is a directory")));
            }
            Some(_) if exclusive => return Err(FsError::new(libc::EEXIST, format!("{path}: exists"))),
            _ => {}
        }
        let posix = Posix {
            mode: Some(libc::S_IFREG | (mode & 0o7777)),
            uid: Some(uid),
            gid: Some(gid),
            mtime: Some(SystemTime::now()),
            ..Default::default()
        };
        let created = if exclusive && !self.cfg.names.local_exclusive_creates {
            Some(self.ns.create_exclusive(&path, &posix).await?)
        } else {
            None
        };
        // The upload replaces only what this create saw: nothing (another host's file
        // created meanwhile stays theirs), the empty object of an exclusive create, or the
        // version of the file it truncates.
        // Truncating an object this mount did not just create keeps what it holds besides
        // the bytes (another client's metadata and headers): one HEAD.
        let carry = existing
            .clone()
            .filter(|i| i.version().is_some())
            .map(|i| (!i.plain, !i.tagless));
        let expect = match (&created, existing) {
            (Some(etag), _) => etag.clone().map(WriteIf::Matches),
            (None, None) => self.write_conditions().then_some(WriteIf::Absent),
            (None, Some(i)) => i.version().map(|e| WriteIf::Matches(e.to_string())),
        };
        let ino = lock(&self.inodes).lookup(&path, Kind::File);
        // Another handle had it open: creat() truncates.
        let start = Start::New {
            created: created.is_some(),
        };
        self.files.attach(ino, &path, posix, expect, carry, start, true).await?;
        let info = EntryInfo::new(Kind::File, 0, SystemTime::now()).with_posix(posix);
        self.ns.learned(&path, info.clone());
        let fh = self.new_fh(Handle::File {
            ino,
            reader: None,
            writable: true,
            exec: false,
        });
        self.entry_changed(&path);
        self.attributes_changed(ino);
        Ok((self.attr(ino, info), fh))
    }

    /// Whether writes send S3's conditions (not with `--local-exclusive-creates`, for a
    /// server without conditional writes).
    fn write_conditions(&self) -> bool {
        !self.cfg.names.local_exclusive_creates
    }

    /// `mknod` of a regular file (`S_IFREG`, or no type: what some programs and pjdfstest
    /// use instead of `creat`): an empty file, created as an `O_EXCL` create is (EEXIST when
    /// the name is taken). Special files: [`Core::mknod_special`].
    pub async fn mknod_regular(&self, parent: u64, name: &OsStr, mode: u32, uid: u32, gid: u32) -> FsResult<Attr> {
        let (attr, fh) = self.create(parent, name, mode, uid, gid, true).await?;
        self.release(fh).await?;
        Ok(attr)
    }

    /// `open(2)` of a file; `flags` as the kernel passes them (FMODE_EXEC included).
    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let path = self.path_of(ino)?;
        let info = self.stat(&path).await?.ok_or_else(|| FsError::not_found(&path))?;
        if info.kind == Kind::Dir {
            return Err(FsError::new(libc::EISDIR, format!("{path}: is a directory")));
        }
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let trunc = flags & libc::O_TRUNC != 0;
        if writable {
            self.check_writable(&path)?;
            let expect = info.version().map(|e| WriteIf::Matches(e.to_string()));
            // A rewrite keeps what the object holds besides the bytes: one HEAD, sent now
            // and awaited by the first upload. Not for an object S3 does not have yet.
            let carry = info.version().map(|_| (!info.plain, !info.tagless));
            let start = match trunc || info.size == 0 {
                true => Start::New { created: false },
                false => Start::Over {
                    size: info.size,
                    etag: info.version().map(str::to_string),
                },
            };
            self.files
                .attach(ino, &path, info.posix, expect, carry, start, trunc)
                .await?;
            if trunc {
                self.attributes_changed(ino);
            }
            return Ok(self.new_fh(Handle::File {
                ino,
                reader: None,
                writable: true,
                exec: false,
            }));
        }
        let info = match trunc {
            true => self.truncate_on_read_open(ino, &path, info).await?,
            false => info,
        };
        // A reader of a file open for writing reads the open state (see `read`).
        let reader = self.files.object_reads(ino, &path, &info)?;
        Ok(self.new_fh(Handle::File {
            ino,
            reader: Some(reader),
            writable: false,
            exec: flags & FMODE_EXEC != 0,
        }))
    }

    /// `open(O_RDONLY | O_TRUNC)`: Linux truncates the file, and the kernel (which lets the
    /// filesystem truncate at open: FUSE_ATOMIC_O_TRUNC) has dropped its cached size
    /// already when this returns. Its own "text file busy" check comes only after this
    /// open: a file being executed here is refused now (ETXTBSY), before it is cut under
    /// the running program, as a local disk refuses it.
    async fn truncate_on_read_open(&self, ino: u64, path: &RelPath, info: EntryInfo) -> FsResult<EntryInfo> {
        let executing = lock(&self.handles)
            .values()
            .any(|h| matches!(h, Handle::File { ino: i, exec: true, .. } if *i == ino));
        if executing {
            return Err(FsError::new(libc::ETXTBSY, format!("{path}: being executed")));
        }
        self.check_writable(path)?;
        if info.size == 0 {
            return Ok(info);
        }
        self.setattr(ino, super::AttrChanges::truncate(0)).await?;
        self.stat(path).await?.ok_or_else(|| FsError::not_found(path))
    }

    fn handle_file(&self, fh: u64) -> FsResult<(u64, Option<Arc<ObjectReads>>)> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::File { ino, reader, .. }) => Ok((*ino, reader.clone())),
            _ => Err(FsError::new(libc::EBADF, format!("file handle {fh} is not open"))),
        }
    }

    /// The version `reader` opened was replaced before any of it was read (a rename over
    /// the name, another client's write between `open` and the first `read`): when the new
    /// version has the size the kernel was told, this handle reads it instead, whole. Else
    /// (something was read already, or the size differs and the kernel would cut or pad
    /// it) None: the read fails ESTALE rather than mix two versions.
    async fn newer_version(&self, fh: u64, ino: u64, reader: &Arc<ObjectReads>) -> FsResult<Option<Arc<ObjectReads>>> {
        if reader.served() {
            return Ok(None);
        }
        let path = self.path_of(ino)?;
        let Some(info) = self.ns.stat_fresh(&path).await? else {
            return Ok(None);
        };
        if info.kind != Kind::File || info.size != reader.size() || info.etag.is_none() {
            return Ok(None);
        }
        self.ns.learned(&path, info.clone());
        let newer = self.files.object_reads(ino, &path, &info)?;
        if let Some(Handle::File { reader: r, .. }) = lock(&self.handles).get_mut(&fh) {
            *r = Some(newer.clone());
        }
        Ok(Some(newer))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let (ino, reader) = self.handle_file(fh)?;
        if self.files.is_open(ino) {
            let path = self.path_of(ino)?;
            if let Some(data) = self.files.read(ino, &path, offset, size).await? {
                return Ok(data);
            }
        }
        let mut reader = reader.ok_or_else(|| FsError::new(libc::EBADF, format!("file handle {fh} cannot read")))?;
        let mut result = reader.read(offset, size as usize).await;
        if matches!(result, Err(StoreError::PreconditionFailed { .. }))
            && let Some(newer) = self.newer_version(fh, ino, &reader).await?
        {
            reader = newer;
            result = reader.read(offset, size as usize).await;
        }
        match result {
            Ok(data) => Ok(data),
            // The version this handle reads was replaced by another client: its bytes are
            // gone from S3, and the new version's are not this file's (a torn read).
            Err(e @ StoreError::PreconditionFailed { .. }) => {
                let path = self.path_of(ino)?;
                self.ns.forget(&path);
                Err(FsError::new(
                    libc::ESTALE,
                    format!("{path}: replaced by another client while open for reading; reopen it for the new version"),
                )
                .caused_by(e))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (ino, _) = self.handle_file(fh)?;
        let path = self.path_of(ino)?;
        self.files.write(ino, &path, offset, data).await
    }

    /// `close` (every one; `sync` false) and `fsync` (`sync` true): what was written is in
    /// S3 when this returns Ok.
    ///
    /// A close of a file created (or truncated by `O_TRUNC`) that nobody has written to yet
    /// uploads nothing: the shell's `echo x > f` closes a duplicate of the descriptor before
    /// it writes, and an upload there would cost a second PUT per file. Such a file is
    /// uploaded at its last close (`release`) or at `fsync`.
    pub async fn flush(&self, fh: u64, sync: bool) -> FsResult<()> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::File { writable: true, .. }) => {}
            _ => return Ok(()),
        }
        let (ino, _) = self.handle_file(fh)?;
        self.files.flush(ino, sync).await
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let handle = lock(&self.handles).remove(&fh);
        let Some(Handle::File {
            ino, writable: true, ..
        }) = handle
        else {
            return Ok(());
        };
        self.files.release(ino).await
    }

    /// Uploads every open file and sends every deferred delete (before unmount); false if
    /// something did not reach S3 (each failure is logged).
    pub async fn flush_all(&self) -> bool {
        let mut all = self.files.flush_open_files().await;
        if let Err(e) = self.ns.store().flush().await {
            all = false;
            tracing::error!(error = %e, "deletes acknowledged to programs did not reach S3 before unmount; they are kept in the journal and the next mount of this cache directory sends them");
        }
        all
    }
}

/// The kernel's `__FMODE_EXEC` in the flags of the open `execve` makes.
const FMODE_EXEC: i32 = 0x20;
