//! Sequential-friendly reads: each handle keeps one window of the object in memory and
//! doubles the window while reads stay sequential (up to `max_window`), so `cat` or `dd` of
//! a large file costs a few large ranged GETs instead of one per kernel read.

use crate::store::{ObjectStore, StoreResult};
use bytes::Bytes;
use std::sync::Arc;

pub struct Reader {
    store: Arc<dyn ObjectStore>,
    key: String,
    size: u64,
    window: usize,
    min_window: usize,
    max_window: usize,
    buf_start: u64,
    buf: Bytes,
}

impl Reader {
    pub fn new(store: Arc<dyn ObjectStore>, key: String, size: u64, min_window: usize, max_window: usize) -> Self {
        Reader {
            store,
            key,
            size,
            window: min_window,
            min_window,
            max_window,
            buf_start: 0,
            buf: Bytes::new(),
        }
    }

    pub async fn read(&mut self, offset: u64, len: usize) -> StoreResult<Bytes> {
        if offset >= self.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + len as u64).min(self.size);
        let buf_end = self.buf_start + self.buf.len() as u64;
        if offset >= self.buf_start && end <= buf_end {
            let s = (offset - self.buf_start) as usize;
            return Ok(self.buf.slice(s..s + (end - offset) as usize));
        }
        // Sequential when this read starts where the window ended (or inside it).
        if offset >= self.buf_start && offset <= buf_end && !self.buf.is_empty() {
            self.window = (self.window * 2).min(self.max_window);
        } else {
            self.window = self.min_window;
        }
        let fetch_end = (offset + (self.window as u64).max(len as u64)).min(self.size);
        let data = self.store.get(&self.key, Some(offset..fetch_end)).await?;
        self.buf_start = offset;
        self.buf = data;
        let n = ((end - offset) as usize).min(self.buf.len());
        Ok(self.buf.slice(..n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::retry::{RetryConfig, RetryingStore};
    use crate::store::stats::RequestStats;
    use crate::store::{OpKind, UserMeta};

    #[tokio::test]
    async fn sequential_reads_use_growing_windows() {
        let stats = Arc::new(RequestStats::default());
        let store = Arc::new(RetryingStore::new(
            MemoryStore::new(),
            RetryConfig::default(),
            stats.clone(),
        ));
        let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        store
            .put("k", Bytes::from(body.clone()), &UserMeta::new())
            .await
            .unwrap();
        let mut r = Reader::new(store, "k".into(), body.len() as u64, 4096, 256 * 1024);
        let mut got = Vec::new();
        let mut off = 0;
        loop {
            let b = r.read(off, 4096).await.unwrap();
            if b.is_empty() {
                break;
            }
            off += b.len() as u64;
            got.extend_from_slice(&b);
        }
        assert_eq!(got, body);
        let gets = stats.snapshot().get(OpKind::Get);
        assert!(gets < 15, "{gets} GETs for a sequential read");
        // a random read resets and still returns the right bytes
        assert_eq!(&r.read(10, 5).await.unwrap()[..], &body[10..15]);
    }
}
