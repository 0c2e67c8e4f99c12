//! Reading objects: many ranged GETs in flight ahead of each sequential reader.
//!
//! S3 answers after tens of milliseconds and gives one connection ~90 MiB/s, so a reader that
//! asks for the next range only once the last one arrived is slow however large the ranges
//! are. One [`ObjectReads`] serves every read of one object (all open handles of the file
//! share it, so two readers of one file share what is fetched):
//!
//! 1. A read that continues a **stream** (it starts where that stream's last read ended, or
//!    inside what the stream has fetched) is sequential. The stream keeps `ahead` bytes
//!    requested past the read position as several ranged GETs in flight, each spawned so it
//!    proceeds while the reader waits for an earlier one. `ahead` starts small (time to first
//!    byte, and little waste for a reader that stops early) and doubles each time the reader
//!    consumes a whole part, up to [`ReadConfig::window`]. A part is a quarter of `ahead`,
//!    between [`ReadConfig::first_request`] and [`ReadConfig::max_request`] (4 MiB): a
//!    connection gives ~90 MiB/s after ~20 ms, so many mid-sized GETs beat fewer large ones
//!    (a 64 MiB window in 8 MiB parts caps a reader near 590 MiB/s, in 4 MiB parts near
//!    1,000 MiB/s) for one more GET per 4 MiB (a GET costs a twelfth of a LIST).
//! 2. Any other read (a seek, a first read) fetches exactly what it asks for: random reads
//!    waste nothing. That range becomes the first part of a new stream, which prefetches only
//!    if a later read continues it. An object keeps at most [`MAX_STREAMS`] streams; the least recently used one goes,
//!    and with it what it fetched.
//! 3. Every byte requested ahead and not yet consumed holds a share of the mount's
//!    [`ReadBudget`]. When the budget is spent, streams stop reading ahead (backpressure) and
//!    reads fetch only what they need, so 100 open files cannot take the machine's memory.
//!    Parts behind the read position are dropped, except the last one consumed (the kernel's
//!    concurrent readahead may deliver reads slightly out of order).

use super::cache::{BLOCK, BlockCache, BlockId, cached_get};
use crate::data::memory::{Lease, MemoryTarget, Use};
use crate::store::{ObjectStore, StoreResult};
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

/// Streams kept per object: several readers of one file each keep their own.
pub const MAX_STREAMS: usize = 4;

/// The budget is counted in units of this many bytes (a semaphore's permits are `u32`).
const UNIT: u64 = 4096;

/// How far and in what pieces sequential readers are read ahead.
#[derive(Debug, Clone, Copy)]
pub struct ReadConfig {
    /// The first prefetch after a stream starts, and the smallest part.
    pub first_request: u64,
    /// The largest ranged GET.
    pub max_request: u64,
    /// Bytes requested ahead of one sequential reader at most.
    pub window: u64,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            first_request: 256 * 1024,
            max_request: 4 * 1024 * 1024,
            window: crate::defaults::READ_AHEAD_MIB << 20,
        }
    }
}

/// Bytes the whole mount may hold read ahead (requested or fetched, not yet consumed), also
/// drawn from the mount's memory target when it has one.
#[derive(Clone)]
pub struct ReadBudget {
    sem: Arc<Semaphore>,
    units: u64,
    target: Option<MemoryTarget>,
}

/// Read-ahead of one part: its share of the budget and of the memory target.
struct ReadPermit {
    _budget: OwnedSemaphorePermit,
    _memory: Option<Lease>,
}

impl ReadBudget {
    pub fn new(bytes: u64) -> Self {
        let units = (bytes / UNIT).clamp(1, u32::MAX as u64 / 2);
        ReadBudget {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
            target: None,
        }
    }

    /// Read-ahead also draws from `target` (see [`crate::data::memory`]).
    pub fn within(mut self, target: MemoryTarget) -> Self {
        self.target = Some(target);
        self
    }

    fn try_take(&self, bytes: u64) -> Option<ReadPermit> {
        let n = bytes.div_ceil(UNIT).min(self.units) as u32;
        let budget = self.sem.clone().try_acquire_many_owned(n).ok()?;
        let memory = match &self.target {
            Some(t) => Some(t.try_lease(bytes, Use::ReadAhead)?),
            None => None,
        };
        Some(ReadPermit {
            _budget: budget,
            _memory: memory,
        })
    }

    /// Bytes held by read-ahead now.
    pub fn in_use(&self) -> u64 {
        (self.units - self.sem.available_permits() as u64) * UNIT
    }
}

type Fetch = Shared<BoxFuture<'static, StoreResult<Bytes>>>;

/// One ranged GET, in flight or done.
struct Part {
    range: Range<u64>,
    data: Fetch,
    abort: AbortHandle,
    _permit: Option<ReadPermit>,
}

impl Drop for Part {
    fn drop(&mut self) {
        // Nobody else waits for it: stop the transfer. A reader holding a clone still gets it.
        if self.data.strong_count().is_none_or(|n| n <= 1) {
            self.abort.abort();
        }
    }
}

struct Stream {
    /// Contiguous, in order.
    parts: VecDeque<Part>,
    /// Where the reader is expected next: the end of its last read.
    next: u64,
    ahead: u64,
    used: u64,
}

impl Stream {
    fn expects(&self, offset: u64) -> bool {
        offset == self.next || self.parts.iter().any(|p| p.range.contains(&offset))
    }

    /// Where the next part starts: after the last one, or at `offset` when nothing is ahead.
    fn end(&self, offset: u64) -> u64 {
        self.parts.back().map_or(offset, |p| p.range.end.max(offset))
    }
}

/// The reads of one object of `size` bytes; see the module doc.
pub struct ObjectReads {
    store: Arc<dyn ObjectStore>,
    key: String,
    size: u64,
    /// The version read (its ETag), when known: every GET names it (`If-Match`), so a
    /// reader gets bytes of one version or PreconditionFailed, never a mix.
    etag: Option<String>,
    /// Some bytes were handed to a reader: from then on these reads stay on this version.
    served: std::sync::atomic::AtomicBool,
    cfg: ReadConfig,
    budget: ReadBudget,
    /// The data cache on disk, when the mount has one: reads of a known version go through it.
    cache: Option<Arc<BlockCache>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    streams: Vec<Stream>,
    tick: u64,
}

impl Drop for ObjectReads {
    fn drop(&mut self) {
        self.store.unpin(&self.key);
    }
}

impl ObjectReads {
    /// Reads of `key`, pinned in `store` while they exist ([`ObjectStore::pin`]): an unlink
    /// meanwhile leaves the object in S3 until the last reader is gone.
    pub fn new(store: Arc<dyn ObjectStore>, key: String, size: u64, cfg: ReadConfig, budget: ReadBudget) -> Self {
        store.pin(&key);
        ObjectReads {
            store,
            key,
            size,
            etag: None,
            served: Default::default(),
            cfg,
            budget,
            cache: None,
            state: Mutex::new(State::default()),
        }
    }

    /// Reads only the version with this ETag.
    pub fn pinned(mut self, etag: Option<String>) -> Self {
        self.etag = etag;
        self
    }

    /// Reads through the data cache `cache` (a version known only: see [`cached_get`]).
    pub fn cached(mut self, cache: Option<Arc<BlockCache>>) -> Self {
        self.cache = cache;
        self
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// Whether any byte was handed out yet (see [`ObjectReads::read`]).
    pub fn served(&self) -> bool {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn read(&self, offset: u64, len: usize) -> StoreResult<Bytes> {
        let r = self.read_range(offset, len).await;
        if r.as_ref().is_ok_and(|b| !b.is_empty()) {
            self.served.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    async fn read_range(&self, offset: u64, len: usize) -> StoreResult<Bytes> {
        let end = offset.saturating_add(len as u64).min(self.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let fetches = self.plan(offset, end);
        if let [(range, fetch)] = &fetches[..] {
            let data = fetch.clone().await?;
            return Ok(slice(&data, range.start, offset..end));
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (range, fetch) in fetches {
            let data = fetch.await?;
            out.extend_from_slice(&slice(&data, range.start, offset.max(range.start)..end.min(range.end)));
        }
        Ok(out.freeze())
    }

    /// The parts that hold `offset..end`, after topping up the stream that expected this read
    /// (or starting one with exactly this range).
    fn plan(&self, offset: u64, end: u64) -> Vec<(Range<u64>, Fetch)> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.tick += 1;
        let tick = st.tick;
        let Some(s) = st.streams.iter_mut().find(|s| s.expects(offset)) else {
            if st.streams.len() >= MAX_STREAMS
                && let Some(lru) = (0..st.streams.len()).min_by_key(|&i| st.streams[i].used)
            {
                st.streams.swap_remove(lru);
            }
            // Exactly what was asked for, kept in the new stream: a second reader starting
            // at the same place (two `cat`s of one file) finds it there.
            let range = self.aligned(offset..end);
            let part = self.fetch(range.clone(), self.budget.try_take(range.end - range.start));
            let fetch = (part.range.clone(), part.data.clone());
            st.streams.push(Stream {
                parts: VecDeque::from([part]),
                next: end,
                ahead: self.cfg.first_request * 4,
                used: tick,
            });
            return vec![fetch];
        };
        s.used = tick;
        // Drop what lies behind the reader but the last part it consumed.
        while let Some(front) = s.parts.front() {
            let behind = front.range.end <= offset;
            let next_behind = s.parts.get(1).is_none_or(|p| p.range.end <= offset);
            if !(behind && next_behind) {
                break;
            }
            s.parts.pop_front();
            s.ahead = (s.ahead * 2).min(self.cfg.window.max(self.cfg.first_request));
        }
        s.next = s.next.max(end);
        // Keep `ahead` bytes requested past this read; what this read needs is fetched
        // whatever the budget says.
        let limit = end.saturating_add(s.ahead).min(self.size);
        loop {
            let start = s.end(offset);
            if start >= limit {
                break;
            }
            let piece = (s.ahead / 4).clamp(self.cfg.first_request, self.cfg.max_request);
            // A block the data cache holds is a part of its own, read from disk without a
            // copy; what it lacks is fetched in parts as large as ever (one GET per 4 MiB).
            let piece = match (&self.cache, &self.etag) {
                (Some(c), Some(etag)) if c.contains(&BlockId::new(&self.key, etag, start / BLOCK)) => BLOCK,
                _ => piece,
            };
            let stop = self.aligned(start..(start + piece).min(self.size)).end;
            let permit = match self.budget.try_take(stop - start) {
                Some(p) => Some(p),
                None if start < end => None,
                None => break,
            };
            let stop = if permit.is_none() {
                self.aligned(start..end).end
            } else {
                stop
            };
            s.parts.push_back(self.fetch(start..stop, permit));
        }
        s.parts
            .iter()
            .filter(|p| p.range.start < end && p.range.end > offset)
            .map(|p| (p.range.clone(), p.data.clone()))
            .collect()
    }

    /// `range` widened to whole data cache blocks when reads go through the cache (so each
    /// block is fetched by one part, not by the two parts around its middle), else as is.
    fn aligned(&self, range: Range<u64>) -> Range<u64> {
        match self.through_cache() {
            true => range.start / BLOCK * BLOCK..range.end.div_ceil(BLOCK).saturating_mul(BLOCK).min(self.size),
            false => range,
        }
    }

    /// Reads go through the data cache (it is on, and the version is known).
    fn through_cache(&self) -> bool {
        self.cache.is_some() && self.etag.is_some()
    }

    fn fetch(&self, range: Range<u64>, permit: Option<ReadPermit>) -> Part {
        let (store, key, etag) = (self.store.clone(), self.key.clone(), self.etag.clone());
        // The whole object in one GET goes without a range: S3 then answers the object's
        // checksum, and the client checks the bytes against it.
        let r = (range.start > 0 || range.end < self.size).then(|| range.clone());
        let task = match (&self.cache, etag) {
            (Some(cache), Some(etag)) => {
                let (cache, range, size) = (cache.clone(), range.clone(), self.size);
                tokio::spawn(async move { cached_get(store.as_ref(), &cache, &key, &etag, range, size).await })
            }
            (_, etag) => tokio::spawn(async move { store.get(&key, r, etag.as_deref()).await }),
        };
        let abort = task.abort_handle();
        let key = self.key.clone();
        let data = async move {
            task.await.unwrap_or_else(|e| {
                Err(crate::store::StoreError::Transport {
                    op: "get",
                    key,
                    message: format!("read-ahead stopped: {e}"),
                })
            })
        }
        .boxed()
        .shared();
        Part {
            range,
            data,
            abort,
            _permit: permit,
        }
    }
}

/// `want` out of `data`, which holds the bytes from `start` on (S3 may return fewer).
pub(super) fn slice(data: &Bytes, start: u64, want: Range<u64>) -> Bytes {
    let s = ((want.start - start) as usize).min(data.len());
    let e = ((want.end - start) as usize).min(data.len());
    data.slice(s..e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{GetGauge, MemoryStore};
    use crate::store::retry::{RetryConfig, RetryingStore};
    use crate::store::stats::RequestStats;
    use crate::store::{OpKind, UserMeta};
    use std::time::Duration;

    const MIB: u64 = 1024 * 1024;

    async fn object(size: usize, delay: Duration) -> (Arc<GetGauge>, Arc<dyn ObjectStore>, Arc<RequestStats>, Vec<u8>) {
        let mem = MemoryStore::new();
        let gauge = mem.gets();
        gauge.set_delay(delay);
        let stats = Arc::new(RequestStats::default());
        let store: Arc<dyn ObjectStore> = Arc::new(RetryingStore::new(
            mem,
            RetryConfig::default(),
            stats.clone(),
            crate::store::one_prefix(),
        ));
        let body: Vec<u8> = (0..size as u32).map(|i| (i % 251) as u8).collect();
        store
            .put("k", Bytes::from(body.clone()), &UserMeta::new())
            .await
            .unwrap();
        (gauge, store, stats, body)
    }

    #[tokio::test]
    async fn a_sequential_read_keeps_several_gets_in_flight_and_sends_few_requests() {
        let (mem, store, stats, body) = object(64 * MIB as usize, Duration::from_millis(5)).await;
        let reads = ObjectReads::new(
            store,
            "k".into(),
            body.len() as u64,
            ReadConfig::default(),
            ReadBudget::new(128 * MIB),
        );
        let (mut off, mut got, mut calls) = (0u64, Vec::new(), 0);
        loop {
            let b = reads.read(off, 128 * 1024).await.unwrap();
            if b.is_empty() {
                break;
            }
            calls += 1;
            off += b.len() as u64;
            got.extend_from_slice(&b);
        }
        assert!(got == body, "the bytes read are the object's");
        let gets = stats.snapshot().get(OpKind::Get);
        assert_eq!(calls, 512);
        // Parts of up to 4 MiB once the window is open (16 in flight), smaller while it
        // opens: still one GET per ten kernel reads at most.
        assert!(gets * 10 <= calls, "{gets} GETs for {calls} kernel reads");
        let peak = mem.max_in_flight();
        assert!(peak >= 4, "at most {peak} GETs were in flight at once");
        assert_eq!(mem.bytes(), body.len() as u64, "every byte fetched once");
    }

    #[tokio::test]
    async fn random_reads_fetch_only_what_they_ask_for() {
        let (mem, store, stats, body) = object(32 * MIB as usize, Duration::ZERO).await;
        let reads = ObjectReads::new(
            store,
            "k".into(),
            body.len() as u64,
            ReadConfig::default(),
            ReadBudget::new(128 * MIB),
        );
        let offsets = [7 * MIB, 123, 20 * MIB + 5, 3 * MIB, 31 * MIB, 9 * MIB + 77];
        for &o in &offsets {
            let b = reads.read(o, 4096).await.unwrap();
            assert!(b[..] == body[o as usize..o as usize + 4096]);
        }
        assert_eq!(stats.snapshot().get(OpKind::Get), offsets.len() as u64);
        assert_eq!(mem.bytes(), offsets.len() as u64 * 4096, "no window is fetched");
    }

    #[tokio::test]
    async fn read_ahead_stays_within_the_mount_budget() {
        let (_mem, store, _stats, body) = object(48 * MIB as usize, Duration::from_millis(2)).await;
        let budget = ReadBudget::new(16 * MIB);
        let files: Vec<ObjectReads> = (0..3)
            .map(|_| {
                ObjectReads::new(
                    store.clone(),
                    "k".into(),
                    body.len() as u64,
                    ReadConfig::default(),
                    budget.clone(),
                )
            })
            .collect();
        // Three sequential readers interleaved; the budget never goes over, and the bytes are right.
        let mut off = [0u64; 3];
        let mut peak = 0;
        for round in 0..300 {
            let i = round % 3;
            let b = files[i].read(off[i], 128 * 1024).await.unwrap();
            assert!(b[..] == body[off[i] as usize..off[i] as usize + b.len()]);
            off[i] += b.len() as u64;
            peak = peak.max(budget.in_use());
            assert!(budget.in_use() <= 16 * MIB, "{} bytes read ahead", budget.in_use());
        }
        assert!(peak >= 8 * MIB, "the readers used the budget ({peak} bytes)");
        drop(files);
        assert_eq!(budget.in_use(), 0, "closing the files returns their read-ahead");
    }

    /// docs/REQUESTS.md, the data cache row: a first sequential read through the cache
    /// fetches every byte once, in parts as large as without it; a second (another
    /// `ObjectReads`, as after a remount) sends no GET; another version sends GETs again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_read_through_the_data_cache_sends_no_get() {
        let (mem, store, stats, body) = object(20 * MIB as usize + 12345, Duration::from_millis(1)).await;
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlockCache::open(dir.path(), 64 * MIB).unwrap());
        let etag = store.head("k").await.unwrap().etag.unwrap();
        let read_all = |etag: String| {
            let reads = cached_reads(&store, &cache, body.len(), etag);
            async move {
                let (mut off, mut got) = (0u64, Vec::new());
                loop {
                    let b = reads.read(off, 128 * 1024).await.unwrap();
                    if b.is_empty() {
                        break got;
                    }
                    off += b.len() as u64;
                    got.extend_from_slice(&b);
                }
            }
        };
        assert!(read_all(etag.clone()).await == body);
        let first = stats.snapshot().get(OpKind::Get);
        // Parts grow to 4 MiB as without the cache (1 MiB blocks, whole): ~size/4 MiB + the ramp.
        assert!(first <= 16, "{first} GETs for 20 MiB");
        assert_eq!(mem.bytes(), body.len() as u64, "every byte fetched once");
        assert!(read_all(etag.clone()).await == body);
        assert_eq!(
            stats.snapshot().get(OpKind::Get),
            first,
            "the second read is all on disk"
        );
        // A version the cache does not hold is fetched, and the GET names it (If-Match): here
        // S3 has another, so the read fails rather than serve the blocks it has.
        let wrong = "\"not-this-version\"".to_string();
        assert!(reads_fail_or_fetch(&store, &cache, &body, wrong).await);
    }

    /// A read pinned to a version S3 does not have fails its If-Match: nothing is served
    /// from blocks of another version.
    async fn reads_fail_or_fetch(
        store: &Arc<dyn ObjectStore>,
        cache: &Arc<BlockCache>,
        body: &[u8],
        etag: String,
    ) -> bool {
        let reads = cached_reads(store, cache, body.len(), etag);
        reads.read(0, 4096).await.is_err()
    }

    /// The reads of object `k` (`len` bytes) at version `etag`, through `cache`.
    fn cached_reads(store: &Arc<dyn ObjectStore>, cache: &Arc<BlockCache>, len: usize, etag: String) -> ObjectReads {
        ObjectReads::new(
            store.clone(),
            "k".into(),
            len as u64,
            ReadConfig::default(),
            ReadBudget::new(128 * MIB),
        )
        .pinned(Some(etag))
        .cached(Some(cache.clone()))
    }

    #[tokio::test]
    async fn two_readers_of_one_file_share_what_is_fetched() {
        let (mem, store, _stats, body) = object(16 * MIB as usize, Duration::ZERO).await;
        let reads = ObjectReads::new(
            store,
            "k".into(),
            body.len() as u64,
            ReadConfig::default(),
            ReadBudget::new(128 * MIB),
        );
        let mut off = 0u64;
        while off < body.len() as u64 {
            // Two handles reading in step, as two `cat`s of one file do.
            let a = reads.read(off, 128 * 1024).await.unwrap();
            let b = reads.read(off, 128 * 1024).await.unwrap();
            assert!(a == b && a[..] == body[off as usize..off as usize + a.len()]);
            off += a.len() as u64;
        }
        assert_eq!(mem.bytes(), body.len() as u64);
    }
}
