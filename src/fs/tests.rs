//! The request budget of each operation (docs/REQUESTS.md), checked on the request counters
//! of a [`Core`] over the in-memory store: deterministic, no mount, no timing.
//!
//! Each test drives the core the way the kernel does for one user-level operation (the
//! lookups first, then the call) and asserts exactly what it sent to S3.

use super::cache::Kind;
use super::inodes::ROOT_INO;
use super::{AttrChanges, Core, FsConfig};
use crate::layout::{Layout, RelPath};
use crate::store::deferred::DeferredDeletes;
use crate::store::memory::MemoryStore;
use crate::store::retry::{RetryConfig, RetryingStore};
use crate::store::stats::RequestStats;
use crate::store::{ObjectStore, OpKind, UserMeta};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

mod model;
mod namespace;
mod others;
mod requests;
mod semantics;
mod xattrs;

const PREFIXES: u32 = 16;

struct Rig {
    core: Arc<Core>,
    s3: Arc<RetryingStore<MemoryStore>>,
    stats: Arc<RequestStats>,
    layout: Layout,
    _dir: tempfile::TempDir,
}

/// Requests by kind sent since the last call.
struct Meter<'a> {
    stats: &'a RequestStats,
    last: BTreeMap<&'static str, u64>,
}

impl Meter<'_> {
    fn take(&mut self) -> BTreeMap<&'static str, u64> {
        let now: BTreeMap<_, _> = self.stats.snapshot().requests.into_iter().collect();
        let delta = now
            .iter()
            .map(|(k, v)| (*k, v - self.last.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        self.last = now;
        delta
    }
}

fn counts(pairs: &[(OpKind, u64)]) -> BTreeMap<&'static str, u64> {
    pairs.iter().map(|(k, n)| (k.name(), *n)).collect()
}

fn rig_with(cfg: impl FnOnce(&mut FsConfig)) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new("data", PREFIXES).expect("layout");
    let stats = Arc::new(RequestStats::default());
    let l = layout.clone();
    let prefix: crate::store::PrefixFn = Arc::new(move |k: &str| l.prefix_label(k));
    let s3 = Arc::new(RetryingStore::new(
        MemoryStore::new(),
        RetryConfig::default(),
        stats.clone(),
        prefix.clone(),
    ));
    let store: Arc<dyn ObjectStore> = Arc::new(DeferredDeletes::new(
        s3.clone(),
        None,
        prefix,
        crate::store::delete::DeleteConditions::S3,
    ));
    let mut fs = FsConfig::default();
    fs.names.metadata_ttl = Duration::from_secs(60);
    fs.files.cache_dir = dir.path().to_path_buf();
    cfg(&mut fs);
    let core = Core::new(layout.clone(), store, stats.clone(), fs);
    Rig {
        core,
        s3,
        stats,
        layout,
        _dir: dir,
    }
}

fn rig() -> Rig {
    rig_with(|_| {})
}

impl Rig {
    /// The bucket itself, behind the counters.
    fn mem(&self) -> &MemoryStore {
        self.s3.inner()
    }

    fn meter(&self) -> Meter<'_> {
        let mut m = Meter {
            stats: &self.stats,
            last: BTreeMap::new(),
        };
        m.take();
        m
    }

    /// An object written by someone else (no POSIX metadata unless given).
    async fn plant(&self, path: &str, body: &[u8]) {
        let p = crate::layout::RelPath::parse(path).unwrap();
        let key = self.layout.file_key(&p).unwrap();
        self.mem()
            .put(&key, Bytes::copy_from_slice(body), &UserMeta::new())
            .await
            .unwrap();
    }

    async fn plant_dir(&self, path: &str) {
        let p = crate::layout::RelPath::parse(path).unwrap();
        let key = self.layout.dir_marker_key(&p).unwrap();
        self.mem().put(&key, Bytes::new(), &UserMeta::new()).await.unwrap();
    }

    /// What `ls` does: opendir, readdir to the end, releasedir.
    async fn list(&self, ino: u64) -> Vec<super::DirEntry> {
        let fh = self.core.opendir(ino).await.unwrap();
        let entries = self.core.readdir(fh).unwrap().all_entries().await.unwrap();
        self.core.release_handle(fh);
        entries
    }

    /// The names an open directory handle lists (without `.` and `..`).
    async fn handle_names(&self, fh: u64) -> Vec<String> {
        let entries = self.core.readdir(fh).unwrap().all_entries().await.unwrap();
        entries.iter().skip(2).map(|e| e.name.clone()).collect()
    }

    async fn ino(&self, path: &str) -> u64 {
        let mut ino = ROOT_INO;
        for name in path.split('/') {
            ino = self.core.lookup(ino, OsStr::new(name)).await.unwrap().ino;
        }
        ino
    }

    /// `creat(NAME)` by root with mode 0644; the new file's handle.
    async fn create(&self, parent: u64, name: &str) -> u64 {
        let (_, fh) = self
            .core
            .create(parent, OsStr::new(name), 0o644, 0, 0, false)
            .await
            .unwrap();
        fh
    }

    /// What `echo x > NAME` does: a negative lookup, create, the shell's close of the
    /// duplicate descriptor, the write, the last close.
    async fn echo_into(&self, parent: u64, name: &str, body: &[u8]) {
        let err = self.core.lookup(parent, OsStr::new(name)).await.unwrap_err();
        assert_eq!(err.errno, libc::ENOENT);
        let (attr, fh) = self
            .core
            .create(parent, OsStr::new(name), 0o644, 0, 0, false)
            .await
            .unwrap();
        self.core.flush(fh, false).await.unwrap();
        assert_eq!(self.core.write(fh, 0, body).await.unwrap() as usize, body.len());
        self.core.flush(fh, false).await.unwrap();
        self.core.release(fh).await.unwrap();
        assert_eq!(attr.kind, Kind::File);
    }

    /// `mkdir NAME` at the root; its inode.
    async fn ino_after_mkdir(&self, name: &str) -> u64 {
        self.core
            .mkdir(ROOT_INO, OsStr::new(name), 0o755, 0, 0)
            .await
            .unwrap()
            .ino
    }

    /// Forgets every cached answer, as if the TTL had run out.
    fn expire(&self) {
        self.core.ns.cache().clear();
    }
}
