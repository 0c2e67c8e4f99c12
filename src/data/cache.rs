//! The data cache on local disk (`--data-cache DIR`): blocks of object content, kept across
//! remounts and restarts, so a second read of a file costs no GET.
//!
//! Invariants:
//! 1. A block is keyed by the object's key, its **ETag** and its index: a reader pinned to
//!    one version (the ETag the mount's metadata names, from a HEAD or a listing) can only
//!    ever find blocks of that version. A replaced object has another ETag, so its new
//!    version never reads an old block, and the old blocks age out.
//! 2. A block file is written to `tmp/` and renamed into place, and carries a header with
//!    its length and the CRC32C of its bytes: a block torn by a crash (kill -9, power loss)
//!    fails the check when read, is deleted, and is fetched again. Nothing half-written is
//!    ever served.
//! 3. Private: the directory is 0700 and ours (another user's is refused), block files are
//!    0600 ([`crate::private`]).
//! 4. Bounded: the blocks' bytes stay within `size` (least recently used evicted first), and
//!    the disk keeps [`FREE_FLOOR`] of its space free whatever `size` says.
//! 5. Shared: two mounts of one host may use one directory. Each keeps its own index (built
//!    by scanning the directory at start); a block the other mount evicted is a miss here
//!    (fetched again), a block it added is found on disk. Renames are atomic, so neither
//!    ever reads a partial block.

use super::read::slice;
use crate::private;
use crate::store::{ObjectStore, StoreResult};
use bytes::Bytes;
use bytes::BytesMut;
use lru::LruCache;
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes per block (as mountpoint-s3's cache): a random read of a few bytes fetches one
/// block, a sequential reader's parts are whole blocks.
pub const BLOCK: u64 = 1 << 20;

/// Fraction of the disk that stays free: no block is added when less would remain.
pub const FREE_FLOOR: f64 = 0.05;

const MAGIC: &[u8; 8] = b"PFXBLK01";
/// Magic, the block's length (u64 LE), its CRC32C (u32 LE), the id's digest (32 bytes).
const HEADER: usize = 8 + 8 + 4 + 32;

/// Which block: of the object `key` at version `etag`, the `index`-th [`BLOCK`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockId {
    digest: [u8; 32],
}

impl BlockId {
    pub fn new(key: &str, etag: &str, index: u64) -> Self {
        let mut h = Sha256::new();
        h.update(key.as_bytes());
        h.update([0]);
        h.update(etag.as_bytes());
        h.update([0]);
        h.update(index.to_le_bytes());
        BlockId {
            digest: h.finalize().into(),
        }
    }

    fn name(&self) -> String {
        hex::encode(self.digest)
    }

    fn from_name(name: &str) -> Option<Self> {
        let bytes = hex::decode(name).ok()?;
        Some(BlockId {
            digest: bytes.try_into().ok()?,
        })
    }
}

/// What the cache did, for `prefixfs stats` and the tests.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Blocks found torn or damaged, deleted.
    pub discarded: AtomicU64,
    pub evicted: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BlockCache({}, {} of {} bytes)",
            self.dir.display(),
            self.used(),
            self.limit
        )
    }
}

pub struct BlockCache {
    dir: PathBuf,
    limit: u64,
    /// Blocks this mount knows of, least recently used first, with their sizes on disk.
    index: Mutex<LruCache<BlockId, u64>>,
    used: AtomicU64,
    pub counters: CacheCounters,
}

impl BlockCache {
    /// Opens (or creates) the cache in `dir`, holding at most `limit` bytes of blocks, and
    /// indexes the blocks already there (oldest modification first), removing files left in
    /// `tmp/` by a writer that died.
    pub fn open(dir: &Path, limit: u64) -> io::Result<BlockCache> {
        private::ensure_dir(dir)?;
        let tmp = dir.join("tmp");
        private::ensure_dir(&tmp)?;
        for e in std::fs::read_dir(&tmp)?.flatten() {
            // Another mount's block being written now is lost too: it writes it again.
            let _ = std::fs::remove_file(e.path());
        }
        let mut found = Vec::new();
        for shard in std::fs::read_dir(dir)?.flatten() {
            let name = shard.file_name();
            if name.len() != 2 || !shard.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for e in std::fs::read_dir(shard.path())?.flatten() {
                let Some(id) = e.file_name().to_str().and_then(BlockId::from_name) else {
                    continue;
                };
                if let Ok(m) = e.metadata() {
                    found.push((m.modified().ok(), id, m.len()));
                }
            }
        }
        found.sort_by_key(|f| f.0);
        let mut index = LruCache::unbounded();
        let mut used = 0;
        for (_, id, len) in found {
            used += len;
            index.put(id, len);
        }
        let cache = BlockCache {
            dir: dir.to_path_buf(),
            limit,
            index: Mutex::new(index),
            used: AtomicU64::new(used),
            counters: CacheCounters::default(),
        };
        // Trimmed to the limit at once (a smaller --data-cache-size-mib than last time).
        cache.reserve(0);
        Ok(cache)
    }

    /// Bytes of blocks this mount counts in the cache.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn path(&self, id: &BlockId) -> PathBuf {
        let name = id.name();
        self.dir.join(&name[..2]).join(name)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, LruCache<BlockId, u64>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this mount knows block `id` to be on disk (no disk access; another mount's
    /// blocks are found by [`BlockCache::get`] only).
    pub fn contains(&self, id: &BlockId) -> bool {
        self.index().contains(id)
    }

    /// The block `id`, when it is on disk whole. A damaged one is deleted (a miss).
    pub fn get(&self, id: &BlockId) -> Option<Bytes> {
        let path = self.path(id);
        match read_block(&path, id) {
            Ok(Some(data)) => {
                self.index().get(id);
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                Some(data)
            }
            Ok(None) => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(why) => {
                tracing::warn!(path = %path.display(), %why, "a damaged data cache block was discarded");
                self.counters.discarded.fetch_add(1, Ordering::Relaxed);
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                let _ = std::fs::remove_file(&path);
                self.forget(id);
                None
            }
        }
    }

    /// Keeps `data` as block `id` (a complete block: [`BLOCK`] bytes, or the object's last
    /// one). A failure to write is logged and costs only the next read's GET.
    pub fn put(&self, id: &BlockId, data: &[u8]) {
        let len = (HEADER + data.len()) as u64;
        // Room is made and reserved at once, so blocks written together stay within the
        // limit.
        if !self.reserve(len) {
            return;
        }
        match self.write(id, data) {
            Ok(()) => {
                if let Some(old) = self.index().put(id.clone(), len) {
                    self.used.fetch_sub(old, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.used.fetch_sub(len, Ordering::Relaxed);
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not write a data cache block");
            }
        }
    }

    /// Keeps all of `data`, the whole object `key` at version `etag` (a file this mount just
    /// wrote), block by block.
    pub fn put_object(&self, key: &str, etag: &str, data: &[u8]) {
        for (i, block) in data.chunks(BLOCK as usize).enumerate() {
            self.put(&BlockId::new(key, etag, i as u64), block);
        }
    }

    /// Keeps the whole object `key` at version `etag` from a local file holding exactly its
    /// bytes (a multipart upload's spool), block by block; stops at the first read error.
    pub fn put_file(&self, key: &str, etag: &str, path: &Path) {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(file = %path.display(), error = %e, "upload copy gone before the data cache took it");
                return;
            }
        };
        let mut buf = vec![0u8; BLOCK as usize];
        for i in 0.. {
            let mut got = 0;
            while got < buf.len() {
                match f.read(&mut buf[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
            if got == 0 {
                return;
            }
            self.put(&BlockId::new(key, etag, i), &buf[..got]);
            if got < buf.len() {
                return;
            }
        }
    }

    fn write(&self, id: &BlockId, data: &[u8]) -> io::Result<()> {
        let final_path = self.path(id);
        if let Some(shard) = final_path.parent() {
            private::ensure_dir(shard)?;
        }
        let tmp = self.dir.join("tmp").join(uuid::Uuid::new_v4().simple().to_string());
        let mut f = private::file_options().create_new(true).write(true).open(&tmp)?;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(data.len() as u64).to_le_bytes());
        header.extend_from_slice(&crc32c(data).to_le_bytes());
        header.extend_from_slice(&id.digest);
        let written = f.write_all(&header).and_then(|()| f.write_all(data));
        drop(f);
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &final_path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(())
    }

    fn forget(&self, id: &BlockId) {
        if let Some(len) = self.index().pop(id) {
            self.used.fetch_sub(len, Ordering::Relaxed);
        }
    }

    /// Makes room for `incoming` bytes and counts them as used: least recently used blocks
    /// go until the cache fits its limit and the disk its free floor. False when that
    /// cannot be done (a block larger than the limit, a disk full of other things): the
    /// block is not kept.
    fn reserve(&self, incoming: u64) -> bool {
        if incoming > self.limit {
            return false;
        }
        let mut gone = Vec::new();
        let kept = {
            let mut index = self.index();
            // What the disk lacks is asked once: the blocks evicted here leave it only after
            // the loop, so the disk would not show them gone.
            let mut short = if incoming > 0 { self.disk_shortfall(incoming) } else { 0 };
            loop {
                let over = self.used() + incoming > self.limit;
                if !over && short == 0 {
                    self.used.fetch_add(incoming, Ordering::Relaxed);
                    break true;
                }
                let Some((id, len)) = index.pop_lru() else { break false };
                self.used.fetch_sub(len, Ordering::Relaxed);
                short = short.saturating_sub(len);
                self.counters.evicted.fetch_add(1, Ordering::Relaxed);
                gone.push(id);
            }
        };
        for id in gone {
            let _ = std::fs::remove_file(self.path(&id));
        }
        kept
    }

    /// Bytes to free so that the disk keeps its free floor after `incoming` more (0: none).
    fn disk_shortfall(&self, incoming: u64) -> u64 {
        let Ok(c) = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()) else {
            return 0;
        };
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: the path is NUL-terminated and the buffer is ours; statvfs fills it on 0.
        if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
            return 0;
        }
        // SAFETY: statvfs returned 0.
        let st = unsafe { st.assume_init() };
        let frsize = st.f_frsize;
        let floor = (st.f_blocks * frsize) as f64 * FREE_FLOOR;
        let free = st.f_bavail * frsize;
        (floor as u64 + incoming).saturating_sub(free)
    }
}

/// `range` (not empty) of version `etag` of the object `key` (`size` bytes) through the
/// data cache: from disk when every block it touches is there (no request); else one GET
/// of those blocks' span, whose blocks are kept (a complete answer only) before the read
/// returns. A random read of a few bytes so fetches one block (1 MiB): the price of
/// finding it on disk next time.
pub(super) async fn cached_get(
    store: &dyn ObjectStore,
    cache: &Arc<BlockCache>,
    key: &str,
    etag: &str,
    range: Range<u64>,
    size: u64,
) -> StoreResult<Bytes> {
    let (first, last) = (range.start / BLOCK, (range.end - 1) / BLOCK);
    let ids: Vec<BlockId> = (first..=last).map(|i| BlockId::new(key, etag, i)).collect();
    let span = first * BLOCK..((last + 1) * BLOCK).min(size);
    let disk: Vec<Option<Bytes>> = {
        let n = ids.len();
        let (cache, ids) = (cache.clone(), ids.clone());
        tokio::task::spawn_blocking(move || ids.iter().map(|id| cache.get(id)).collect())
            .await
            .unwrap_or_else(|_| vec![None; n])
    };
    let missing: Vec<usize> = (0..ids.len()).filter(|&i| disk[i].is_none()).collect();
    let fetched = match (missing.first(), missing.last()) {
        (Some(&a), Some(&b)) => {
            // One GET from the first missing block to the last (blocks between them that are
            // on disk come again: rare, and cheaper than a second request).
            let want = (first + a as u64) * BLOCK..((first + b as u64 + 1) * BLOCK).min(size);
            let r = (want.start > 0 || want.end < size).then(|| want.clone());
            let data = store.get(key, r, Some(etag)).await?;
            if data.len() as u64 == want.end - want.start {
                let (cache, kept, ids) = (cache.clone(), data.clone(), ids[a..=b].to_vec());
                let _ = tokio::task::spawn_blocking(move || {
                    for (id, block) in ids.iter().zip(kept.chunks(BLOCK as usize)) {
                        cache.put(id, block);
                    }
                })
                .await;
            }
            Some((a, data))
        }
        _ => None,
    };
    // One part, one block (see `ObjectReads::aligned`): handed out as it is, no copy.
    match (&disk[..], &fetched) {
        ([Some(b)], _) => return Ok(slice(b, span.start, range)),
        (_, Some((0, data))) if missing.len() == disk.len() => return Ok(slice(data, span.start, range)),
        _ => {}
    }
    let mut all = BytesMut::with_capacity((span.end - span.start) as usize);
    for (i, block) in disk.iter().enumerate() {
        match (block, &fetched) {
            (Some(b), _) => all.extend_from_slice(b),
            (None, Some((a, data))) => {
                let at = (i - a) * BLOCK as usize;
                all.extend_from_slice(&data[at.min(data.len())..(at + BLOCK as usize).min(data.len())]);
            }
            (None, None) => {}
        }
    }
    let data = all.freeze();
    Ok(slice(&data, span.start, range))
}

/// Why a block file cannot be used.
#[derive(Debug, thiserror::Error)]
enum Damaged {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no block header")]
    NoHeader,
    #[error("the file holds another block")]
    Foreign,
    #[error("{have} bytes of {want}: torn")]
    Torn { have: usize, want: usize },
    #[error("the CRC32C does not match")]
    Crc,
}

/// A block file's bytes: Ok(None) when there is none, an error when it is damaged.
fn read_block(path: &Path, id: &BlockId) -> Result<Option<Bytes>, Damaged> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // Sized once from the file: growing by doubling would copy each block three times more.
    let len = f.metadata().map_or(0, |m| m.len() as usize);
    let mut all = Vec::with_capacity(len.min(HEADER + BLOCK as usize) + 1);
    f.read_to_end(&mut all)?;
    if all.len() < HEADER || &all[..8] != MAGIC {
        return Err(Damaged::NoHeader);
    }
    let want = u64::from_le_bytes(all[8..16].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(all[16..20].try_into().unwrap_or_default());
    if all[20..HEADER] != id.digest {
        return Err(Damaged::Foreign);
    }
    let have = all.len() - HEADER;
    if have != want {
        return Err(Damaged::Torn { have, want });
    }
    let data = Bytes::from(all).slice(HEADER..);
    if crc32c(&data) != crc {
        return Err(Damaged::Crc);
    }
    Ok(Some(data))
}

fn crc32c(data: &[u8]) -> u32 {
    let mut h = aws_smithy_checksums::ChecksumAlgorithm::Crc32c.into_impl();
    h.update(data);
    let sum = h.finalize();
    u32::from_be_bytes(sum[..4].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    #[test]
    fn a_block_is_kept_across_reopening_and_found_only_for_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("c");
        let id = BlockId::new("0/2017/a.bin", "\"e1\"", 3);
        {
            let c = BlockCache::open(&d, 64 << 20).unwrap();
            assert!(c.get(&id).is_none());
            c.put(&id, &block(1, 1000));
        }
        let c = BlockCache::open(&d, 64 << 20).unwrap();
        assert_eq!(c.used(), (HEADER + 1000) as u64);
        assert_eq!(c.get(&id).unwrap(), block(1, 1000));
        assert!(
            c.get(&BlockId::new("0/2017/a.bin", "\"e2\"", 3)).is_none(),
            "another version"
        );
        assert!(
            c.get(&BlockId::new("0/2017/a.bin", "\"e1\"", 4)).is_none(),
            "another block"
        );
    }

    #[test]
    fn a_torn_or_flipped_block_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let c = BlockCache::open(dir.path(), 64 << 20).unwrap();
        let (a, b) = (BlockId::new("k", "e", 0), BlockId::new("k", "e", 1));
        c.put(&a, &block(2, 5000));
        c.put(&b, &block(3, 5000));
        let f = std::fs::OpenOptions::new().write(true).open(c.path(&a)).unwrap();
        f.set_len(2000).unwrap();
        let mut bytes = std::fs::read(c.path(&b)).unwrap();
        bytes[HEADER + 10] ^= 1;
        std::fs::write(c.path(&b), bytes).unwrap();
        assert!(c.get(&a).is_none());
        assert!(c.get(&b).is_none());
        assert_eq!(c.counters.discarded.load(Ordering::Relaxed), 2);
        assert!(!c.path(&a).exists() && !c.path(&b).exists());
        assert_eq!(c.used(), 0);
    }

    #[test]
    fn eviction_keeps_the_limit_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let one = (HEADER + 4096) as u64;
        let c = BlockCache::open(dir.path(), 3 * one).unwrap();
        let ids: Vec<BlockId> = (0..5).map(|i| BlockId::new("k", "e", i)).collect();
        c.put(&ids[0], &block(0, 4096));
        c.put(&ids[1], &block(1, 4096));
        c.put(&ids[2], &block(2, 4096));
        assert!(c.get(&ids[0]).is_some(), "0 is now the most recent");
        c.put(&ids[3], &block(3, 4096));
        c.put(&ids[4], &block(4, 4096));
        assert!(c.used() <= 3 * one);
        assert!(c.get(&ids[1]).is_none() && c.get(&ids[2]).is_none());
        assert!(c.get(&ids[0]).is_some() && c.get(&ids[3]).is_some() && c.get(&ids[4]).is_some());
        assert_eq!(c.counters.evicted.load(Ordering::Relaxed), 2);
        // Reopened smaller: trimmed at once.
        drop(c);
        let c = BlockCache::open(dir.path(), one).unwrap();
        assert!(c.used() <= one);
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("theirs");
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        assert!(BlockCache::open(&d, 1 << 20).is_err());
    }
}
