//! The FUSE adapter: `fuser::Filesystem` over [`Core`]. Translates, calls the core, replies
//! exactly once, maps errors to errno and logs them.
//!
//! Concurrency design: fuser runs `threads` worker threads (a config value); each request
//! blocks its worker on the tokio runtime while the core talks to S3. The number of FUSE
//! requests in flight is therefore bounded by the thread count, and a slow S3 request never
//! blocks the runtime itself. This is mountpoint-s3's design; it keeps every reply on the
//! thread that received the request.

use crate::fs::cache::Kind;
use crate::fs::error::{FsError, FsResult};
use crate::fs::{AttrChanges, Core, DirEntry, OpenDir};
use crate::layout::escape_controls;
use crate::store::stats::CALLER;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct FuseFs {
    core: Arc<Core>,
    rt: tokio::runtime::Handle,
    ttl: Duration,
    /// `--xattr`: extended attributes answered; else getxattr and listxattr are ENOSYS, so
    /// the kernel stops asking (no round trip per file of `ls -l`).
    xattr: bool,
}

impl FuseFs {
    pub fn new(core: Arc<Core>, rt: tokio::runtime::Handle, xattr: bool) -> Self {
        let ttl = core.config().names.metadata_ttl;
        FuseFs { core, rt, ttl, xattr }
    }

    /// Hands `add` the entries of an open directory from `offset` on (with the offset of the
    /// entry after each), waiting while its listing is still arriving, then those after them
    /// that have arrived, `chunk` at a time, until `add` says the reply is full. Entries are
    /// copied a chunk at a time, so a reply does not copy the thousands a listing may have
    /// ready to send the couple of hundred it holds.
    fn fill_page(
        &self,
        dir: &OpenDir,
        offset: u64,
        chunk: usize,
        mut add: impl FnMut(u64, &DirEntry) -> bool,
    ) -> FsResult<()> {
        let mut next = offset as usize;
        let mut entries = self.rt.block_on(dir.entries_from(next, chunk))?;
        while !entries.is_empty() {
            for e in &entries {
                next += 1;
                if add(next as u64, e) {
                    return Ok(());
                }
            }
            entries = dir.entries_ready(next, chunk);
        }
        Ok(())
    }

    /// Runs one FUSE operation on the runtime; its S3 requests are counted under `op`.
    ///
    /// A panic (a bug, or input nobody foresaw) fails this one request with EIO instead of
    /// ending the session for every program using the mount.
    fn run<T>(&self, op: &'static str, f: impl std::future::Future<Output = FsResult<T>>) -> FsResult<T> {
        self.core.stats().record_call(op);
        let call = std::panic::AssertUnwindSafe(|| self.rt.block_on(CALLER.scope(op, f)));
        std::panic::catch_unwind(call).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !PANICKED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!(op, panic = %escape_controls(&what), "a request handler panicked; answering EIO (later panics log at debug)");
            } else {
                tracing::debug!(op, panic = %escape_controls(&what), "a request handler panicked; answering EIO");
            }
            Err(FsError::new(libc::EIO, format!("{op}: internal error")))
        })
    }

    fn file_attr(&self, a: crate::fs::Attr) -> FileAttr {
        let kind = file_type(a.kind, a.special);
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: a.atime,
            mtime: a.mtime,
            ctime: a.ctime,
            crtime: a.mtime,
            kind,
            perm: a.perm,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: 4096,
            flags: 0,
        }
    }
}

/// A getxattr or listxattr answer: the size when the caller asks for it (`size` 0), the bytes
/// when they fit, else ERANGE.
fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    match u32::try_from(value.len()) {
        Ok(n) if size == 0 => reply.size(n),
        Ok(n) if n <= size => reply.data(value),
        _ => reply.error(Errno::ERANGE),
    }
}

/// Set by the first panic caught in a handler (logged at error once).
static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The errno for `e`, logged: at debug when it is an answer programs expect (ENOENT, EEXIST,
/// a lookup of a name S3 cannot hold...), else at warn. Names are escaped.
fn errno(op: &str, e: FsError) -> Errno {
    let message = escape_controls(&e.message);
    if e.is_expected() || (op == "lookup" && e.errno != libc::EIO) {
        tracing::debug!(op, errno = e.errno, "{message}");
    } else {
        tracing::warn!(op, errno = e.errno, "{message}");
    }
    Errno::from_i32(e.errno)
}

/// The kernel's file type of an entry of `kind`, a special file's type bits `special` (0 for
/// none).
fn file_type(k: Kind, special: u32) -> FileType {
    match (k, special) {
        (Kind::Dir, _) => FileType::Directory,
        (Kind::Symlink, _) => FileType::Symlink,
        (Kind::File, libc::S_IFIFO) => FileType::NamedPipe,
        (Kind::File, libc::S_IFSOCK) => FileType::Socket,
        (Kind::File, libc::S_IFCHR) => FileType::CharDevice,
        (Kind::File, libc::S_IFBLK) => FileType::BlockDevice,
        (Kind::File, _) => FileType::RegularFile,
    }
}

/// Directory entries copied out of an open directory at a time. A reply holds what the
/// kernel asks for: a page or more (behind `ls`'s 32 KiB getdents about 200 entries with
/// attributes, which take 152 bytes and more each; plain ones 32 and more).
const READDIR_CHUNK: usize = 128;
const READDIRPLUS_CHUNK: usize = 32;

impl fuser::Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with open(), so truncate-and-rewrite is one upload, not two.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC);
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.set_max_readahead(1024 * 1024);
        // Hand the kernel each entry's attributes with its name (readdirplus, always, not
        // the kernel's "auto" mode, which asks for them on the first page only): the
        // attributes the listing or opendir's HEADs brought, so `ls -l` sends no lookup
        // per file for them.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS);
        Ok(())
    }

    fn destroy(&mut self) {
        let _ = self.rt.block_on(self.core.flush_all());
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.run("lookup", self.core.lookup(parent.0, name)) {
            Ok(a) => reply.entry(&self.ttl, &self.file_attr(a), Generation(0)),
            Err(e) => reply.error(errno("lookup", e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.run("getattr", self.core.getattr(ino.0)) {
            Ok(a) => reply.attr(&self.ttl, &self.file_attr(a)),
            Err(e) => reply.error(errno("getattr", e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // mtime is stored with the object; atime only in this mount's view (reads do not
        // move it: the mount is noatime).
        let time = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        let changes = AttrChanges {
            size,
            mode,
            uid,
            gid,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        match self.run("setattr", self.core.setattr(ino.0, changes)) {
            Ok(a) => reply.attr(&self.ttl, &self.file_attr(a)),
            Err(e) => reply.error(errno("setattr", e)),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match self.run(
            "mkdir",
            self.core.mkdir(parent.0, name, mode & !umask, req.uid(), req.gid()),
        ) {
            Ok(a) => reply.entry(&self.ttl, &self.file_attr(a), Generation(0)),
            Err(e) => reply.error(errno("mkdir", e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.run("unlink", self.core.unlink(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("unlink", e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.run("rmdir", self.core.rmdir(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rmdir", e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.run(
            "rename",
            self.core.rename(parent.0, name, newparent.0, newname, flags.bits()),
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rename", e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.run("open", self.core.open(ino.0, flags.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("open", e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let exclusive = flags & libc::O_EXCL != 0;
        match self.run(
            "create",
            self.core
                .create(parent.0, name, mode & !umask, req.uid(), req.gid(), exclusive),
        ) {
            Ok((a, fh)) => reply.created(
                &self.ttl,
                &self.file_attr(a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno("create", e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.run("read", self.core.read(fh.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno("read", e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.run("write", self.core.write(fh.0, offset, data)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        match self.run("flush", self.core.flush(fh.0, false)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("flush", e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.run("fallocate", self.core.fallocate(ino.0, offset, length, mode)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fallocate", e)),
        }
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.run("fsync", self.core.flush(fh.0, true)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsync", e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.run("release", self.core.release(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("release", e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.run("opendir", self.core.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", e)),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let filled = self.core.readdir(fh.0).and_then(|dir| {
            self.fill_page(&dir, offset, READDIR_CHUNK, |next, e| {
                reply.add(
                    INodeNo(self.core.entry_ino(&dir, e)),
                    next,
                    file_type(e.kind, e.special()),
                    &e.name,
                )
            })
        });
        match filled {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdir", e)),
        }
    }

    fn readdirplus(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let dir = match self.core.readdir(fh.0) {
            Ok(d) => d,
            Err(e) => return reply.error(errno("readdirplus", e)),
        };
        let filled = self.fill_page(&dir, offset, READDIRPLUS_CHUNK, |next, e| {
            // Every entry but `.` and `..` counts as a lookup of it by the kernel. No entry
            // sends a request: one the mount knows only by name goes with no validity, and
            // the kernel looks it up when a program uses it (`ls` alone never does).
            let dot = e.name == "." || e.name == "..";
            let (attr, ttl) = if dot {
                match self.run("readdirplus", self.core.getattr(e.ino)) {
                    Ok(a) => (a, self.ttl),
                    Err(_) => return false,
                }
            } else {
                match self.core.listed_attr(&dir, e) {
                    Some((a, true)) => (a, self.ttl),
                    Some((a, false)) => (a, Duration::ZERO),
                    None => return false,
                }
            };
            let full = reply.add(
                INodeNo(attr.ino),
                next,
                &e.name,
                &ttl,
                &self.file_attr(attr),
                Generation(0),
            );
            if full && !dot {
                self.core.forget(attr.ino, 1);
            }
            full
        });
        match filled {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdirplus", e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.core.release_handle(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.run("fsyncdir", self.core.sync_deletes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsyncdir", e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.core.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    // Extended attributes in s3fs's format (`fs::xattr`). The names the kernel and `ls -l`
    // ask for on every file (security.capability, system.posix_acl_access) are answered
    // without a request.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.xattr {
            return reply.error(Errno::ENOSYS);
        }
        // The names asked for on every write and by `ls -l` for every entry: answered here,
        // without the filesystem core or a log line (three per file of an `ls -l`).
        if name
            .to_str()
            .is_none_or(|n| !matches!(crate::fs::xattr::classify(n), crate::fs::xattr::Name::Stored(_)))
        {
            return reply.error(Errno::ENODATA);
        }
        match self.run("getxattr", self.core.getxattr(ino.0, name)) {
            Ok(value) => xattr_reply(reply, &value, size),
            Err(e) => reply.error(errno("getxattr", e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if !self.xattr {
            return reply.error(Errno::ENOSYS);
        }
        match self.run("listxattr", self.core.listxattr(ino.0)) {
            Ok(names) => xattr_reply(reply, &names, size),
            Err(e) => reply.error(errno("listxattr", e)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        match self.run(
            "symlink",
            self.core.symlink(parent.0, link_name, target, req.uid(), req.gid()),
        ) {
            Ok(a) => reply.entry(&self.ttl, &self.file_attr(a), Generation(0)),
            Err(e) => reply.error(errno("symlink", e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.run("readlink", self.core.readlink(ino.0)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno("readlink", e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if !self.xattr {
            tracing::debug!(name = %escape_controls(&name.to_string_lossy()), "extended attributes need --xattr");
            return reply.error(Errno::ENOTSUP);
        }
        match self.run("setxattr", self.core.setxattr(ino.0, name, Some(value), flags)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("setxattr", e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if !self.xattr {
            return reply.error(Errno::ENOTSUP);
        }
        match self.run("removexattr", self.core.setxattr(ino.0, name, None, 0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("removexattr", e)),
        }
    }

    /// Programs probe descriptors with ioctls (Python's `open` asks TCGETS to see whether it
    /// is a terminal): answer "not a terminal" quietly.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        tracing::trace!(cmd, "ioctl: not supported");
        reply.error(Errno::ENOTTY);
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        tracing::debug!(name = %escape_controls(&newname.to_string_lossy()), "hard links are not supported on S3: EPERM");
        reply.error(Errno::EPERM);
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let kind = mode & libc::S_IFMT;
        let perm = (mode & 0o7777) & !umask;
        let made = match kind {
            0 | libc::S_IFREG => self.run(
                "mknod",
                self.core.mknod_regular(parent.0, name, perm, req.uid(), req.gid()),
            ),
            _ => self.run(
                "mknod",
                self.core
                    .mknod_special(parent.0, name, kind | perm, rdev, req.uid(), req.gid()),
            ),
        };
        match made {
            Ok(a) => reply.entry(&self.ttl, &self.file_attr(a), Generation(0)),
            Err(e) => reply.error(errno("mknod", e)),
        }
    }
}

#[cfg(test)]
mod tests;
