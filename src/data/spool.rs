//! The local copy of a multipart upload's bytes (see [`super::upload`]): parts sent to S3
//! cannot be read back before the upload completes, so each is also appended here, and a
//! failed upload is kept whole from it.
//!
//! The copy must not cost what the upload costs. Written through the page cache it took a
//! fifth of all the CPU of a `dd` into the mount (one more copy of every byte, into freshly
//! allocated page-cache pages); so parts are kept at page-aligned addresses ([`PartBuf`])
//! and written with `O_DIRECT` (the disk reads them from memory), each by a blocking task
//! while the next part fills. Where `O_DIRECT` is refused (tmpfs, some filesystems) or a
//! write is not whole pages (the tail), the copy goes through the page cache as before.

use bytes::Bytes;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use tokio::task::JoinHandle;

/// What `O_DIRECT` needs of addresses, lengths and file offsets (the page size covers every
/// logical block size in use).
const ALIGN: usize = 4096;

/// Bytes of one part, at a page-aligned address. Grows like a `Vec` (a small file's buffer
/// starts small); a part's buffer is made at its full size once.
pub struct PartBuf {
    v: Vec<u8>,
    /// Where the bytes start in `v`: the first aligned address.
    off: usize,
}

impl PartBuf {
    pub fn with_capacity(n: usize) -> Self {
        // Room for the alignment: filling up to `off` never reallocates, so the address holds.
        let mut v: Vec<u8> = Vec::with_capacity(n + ALIGN);
        let off = v.as_ptr().align_offset(ALIGN);
        v.resize(off, 0);
        PartBuf { v, off }
    }

    pub fn len(&self) -> usize {
        self.v.len() - self.off
    }

    /// Nothing allocated yet.
    pub fn unallocated(&self) -> bool {
        self.v.capacity() == 0
    }

    /// Bytes allocated once `extra` more are appended (what the allocation costs).
    pub fn allocated_after(&self, extra: usize) -> usize {
        if self.v.len() + extra > self.v.capacity() {
            (self.len() + extra).max(2 * self.len()) + ALIGN
        } else {
            self.v.capacity()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.v[self.off..]
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        if self.v.len() + data.len() > self.v.capacity() {
            // Growing would move the bytes to wherever the allocator puts them: move them to
            // a new aligned buffer instead, doubling.
            let mut bigger = PartBuf::with_capacity((self.len() + data.len()).max(2 * self.len()));
            bigger.v.extend_from_slice(self.as_slice());
            *self = bigger;
        }
        self.v.extend_from_slice(data);
    }

    pub fn clear(&mut self) {
        self.v.truncate(self.off);
    }

    /// The bytes, without a copy (the address stays aligned).
    pub fn freeze(self) -> Bytes {
        Bytes::from(self.v).slice(self.off..)
    }
}

impl Default for PartBuf {
    /// Empty, with nothing allocated (a file opened for writing that is never written costs
    /// no buffer); the first write allocates an aligned one.
    fn default() -> Self {
        PartBuf { v: Vec::new(), off: 0 }
    }
}

pub enum Spool {
    Off,
    /// To be made at this path when the multipart upload starts, holding at most `limit`.
    Planned(PathBuf, u64),
    On {
        path: PathBuf,
        file: std::fs::File,
        len: u64,
        limit: u64,
        /// Written with `O_DIRECT` so far (every write whole pages at aligned offsets).
        direct: bool,
    },
    /// Writing failed after `len` bytes: those are kept, the rest is lost.
    Broken {
        path: PathBuf,
        len: u64,
    },
    /// A part being written; the task hands back the state after it.
    Busy(JoinHandle<Spool>),
}

impl Spool {
    pub fn path(&self) -> Option<&Path> {
        match self {
            Spool::On { path, .. } | Spool::Broken { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Waits for the part being written, if any.
    pub async fn settle(&mut self) {
        if let Spool::Busy(_) = self
            && let Spool::Busy(h) = std::mem::replace(self, Spool::Off)
        {
            *self = h.await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the local copy of an upload failed: nothing of it can be kept");
                Spool::Off
            });
        }
    }

    /// Appends `data` in the background, after the part before it (made on first use).
    pub async fn append(&mut self, data: Bytes, key: &str) {
        self.settle().await;
        if let Spool::Planned(path, limit) = self {
            let (path, limit) = (path.clone(), *limit);
            *self = match open(&path) {
                Ok((file, direct)) => Spool::On {
                    path,
                    file,
                    len: 0,
                    limit,
                    direct,
                },
                Err(e) => {
                    tracing::warn!(key, error = %e, "cannot make a local copy of an upload; should it fail, nothing can be kept");
                    Spool::Off
                }
            };
        }
        if let Spool::On { .. } = self {
            let state = std::mem::replace(self, Spool::Off);
            let key = key.to_string();
            *self = Spool::Busy(tokio::task::spawn_blocking(move || state.write(&data, &key)));
        }
    }

    /// The state after appending `data` to a spool that is `On` (others are handed back as
    /// they are); past its limit, or on a write error, it becomes `Broken` where it is whole.
    fn write(self, data: &[u8], key: &str) -> Spool {
        let Spool::On {
            path,
            file,
            len,
            limit,
            mut direct,
        } = self
        else {
            return self;
        };
        if len + data.len() as u64 > limit {
            tracing::warn!(
                key,
                at = len,
                "the file outgrows the cache size: its local copy stops here; should the upload fail, only this much can be kept"
            );
            return Spool::Broken { path, len };
        }
        match write_at(&file, &mut direct, data, len) {
            Ok(()) => Spool::On {
                path,
                file,
                len: len + data.len() as u64,
                limit,
                direct,
            },
            Err(e) => {
                tracing::warn!(key, error = %e, at = len, "the local copy of an upload stops here; should the upload fail, only this much can be kept");
                // A write cut short leaves a torn tail: the copy ends where it is whole.
                let _ = file.set_len(len);
                Spool::Broken { path, len }
            }
        }
    }

    /// Removes the file (once its last part is written, when one is being written).
    /// The copy's path, handed over (no longer removed with the spool), when it holds all
    /// `size` bytes.
    pub fn take_whole(&mut self, size: u64) -> Option<PathBuf> {
        match self {
            Spool::On { len, .. } if *len == size => match std::mem::replace(self, Spool::Off) {
                Spool::On { path, .. } => Some(path),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn remove(&mut self) {
        match std::mem::replace(self, Spool::Off) {
            Spool::Busy(h) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Ok(done) = h.await
                            && let Some(p) = done.path()
                        {
                            let _ = std::fs::remove_file(p);
                        }
                    });
                }
            }
            done => {
                if let Some(p) = done.path() {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}

/// Makes the spool file (private), with `O_DIRECT` when the filesystem takes it.
fn open(path: &Path) -> std::io::Result<(std::fs::File, bool)> {
    if let Some(dir) = path.parent() {
        crate::private::ensure_dir(dir)?;
    }
    let mut o = crate::private::file_options();
    o.write(true).create_new(true);
    match o.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok((f, true)),
        // Some filesystems refuse the flag only after O_CREAT made the (private, fresh)
        // file: open what is there, or make it.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let f = crate::private::file_options().write(true).create(true).open(path)?;
            Ok((f, false))
        }
        Err(e) => Err(e),
    }
}

/// Writes `data` at `at`: whole pages from an aligned address with `O_DIRECT` while the file
/// has it, the rest (and everything once a write could not be direct) through the page cache.
fn write_at(file: &std::fs::File, direct: &mut bool, data: &[u8], at: u64) -> std::io::Result<()> {
    let whole = if *direct && data.as_ptr().align_offset(ALIGN) == 0 && at.is_multiple_of(ALIGN as u64) {
        data.len() / ALIGN * ALIGN
    } else {
        0
    };
    if whole > 0 {
        match file.write_all_at(&data[..whole], at) {
            Ok(()) => {}
            // Refused after all (a filesystem that accepts the flag but not this write):
            // nothing was written; the page cache takes it.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return buffered(file, direct, data, at),
            Err(e) => return Err(e),
        }
    }
    if whole < data.len() {
        return buffered(file, direct, &data[whole..], at + whole as u64);
    }
    Ok(())
}

fn buffered(file: &std::fs::File, direct: &mut bool, data: &[u8], at: u64) -> std::io::Result<()> {
    if *direct {
        // SAFETY: fcntl on a descriptor this File owns; F_GETFL/F_SETFL take no pointers.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        *direct = false;
    }
    file.write_all_at(data, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_buffer_stays_aligned_as_it_grows_and_when_frozen() {
        let mut b = PartBuf::default();
        assert_eq!(b.v.capacity(), 0, "nothing allocated until the first write");
        assert!(b.is_empty() && b.as_slice().is_empty());
        let data: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        for chunk in data.chunks(777) {
            b.extend_from_slice(chunk);
            assert_eq!(b.as_slice().as_ptr().align_offset(ALIGN), 0);
        }
        assert_eq!(b.as_slice(), &data[..]);
        let frozen = b.freeze();
        assert_eq!(frozen.as_ptr().align_offset(ALIGN), 0);
        assert_eq!(&frozen[..], &data[..]);
        let mut sized = PartBuf::with_capacity(3 * ALIGN);
        let before = sized.as_slice().as_ptr();
        sized.extend_from_slice(&data[..3 * ALIGN]);
        assert_eq!(
            sized.as_slice().as_ptr(),
            before,
            "a buffer made at its size does not move"
        );
        sized.clear();
        assert!(sized.is_empty());
    }

    #[tokio::test]
    async fn whole_pages_go_direct_and_an_uneven_tail_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let direct_here = open(&dir.path().join("probe")).unwrap().1;
        let mut s = Spool::Planned(path.clone(), u64::MAX);
        let mut expect = Vec::new();
        for (n, len) in [(1u8, 2 * ALIGN), (2, 3 * ALIGN), (3, 1000)] {
            let mut b = PartBuf::with_capacity(len);
            b.extend_from_slice(&vec![n; len]);
            expect.extend_from_slice(b.as_slice());
            s.append(b.freeze(), "k").await;
            s.settle().await;
            if let Spool::On { direct, .. } = &s
                && n < 3
            {
                assert_eq!(
                    *direct, direct_here,
                    "whole pages stay direct where the filesystem allows it"
                );
            }
        }
        let Spool::On { len, direct, .. } = &s else {
            panic!("the spool broke")
        };
        assert_eq!(*len, expect.len() as u64);
        assert!(!direct, "the uneven tail turned O_DIRECT off");
        assert_eq!(std::fs::read(&path).unwrap(), expect);
        // Unaligned data (a slice one byte in) after direct writes is written whole too.
        let mut s2 = Spool::Planned(dir.path().join("spool2"), u64::MAX);
        let mut b = PartBuf::with_capacity(2 * ALIGN + 1);
        b.extend_from_slice(&vec![7; 2 * ALIGN + 1]);
        let odd = b.freeze().slice(1..);
        s2.append(odd.clone(), "k").await;
        s2.settle().await;
        assert_eq!(std::fs::read(dir.path().join("spool2")).unwrap(), &odd[..]);
        s.remove();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn the_spool_stops_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::Planned(dir.path().join("spool"), 5000);
        s.append(Bytes::from(vec![1; 4096]), "k").await;
        s.append(Bytes::from(vec![2; 4096]), "k").await;
        s.settle().await;
        assert!(matches!(s, Spool::Broken { len: 4096, .. }));
    }
}
