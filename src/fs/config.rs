//! Tunables of the filesystem core, split by the part that owns them: the namespace's
//! ([`NamespaceConfig`]), the open files' ([`FilesConfig`]) and the mount's own (the
//! attributes it reports, read-only). Every bound on concurrency or memory is here; the
//! defaults are [`crate::defaults`]'.

use crate::data::read::ReadConfig;
use crate::defaults;
use std::path::PathBuf;
use std::time::Duration;

/// A mount's configuration: each part goes to its owner.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub names: NamespaceConfig,
    pub files: FilesConfig,
    /// Owner and modes reported for entries whose object says none.
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// Every change is EROFS.
    pub read_only: bool,
}

/// How the namespace lists, caches and changes paths (the bucket commands use it alone).
#[derive(Debug, Clone)]
pub struct NamespaceConfig {
    /// How long attributes and listings are trusted; 0 disables the cache.
    pub metadata_ttl: Duration,
    /// Cached path entries at most (listings: a tenth of this).
    pub cache_capacity: usize,
    /// Names in all cached listings together at most (the least recently used listings go
    /// first; the one just fetched always stays): their share of the memory target.
    pub listed_entries: usize,
    /// Concurrent requests of one fan-out (listing, emptiness check, directory rename).
    pub fanout: usize,
    /// How server-side copies (rename, chmod of a closed file) are sent: CopyObject up to
    /// its limit, part by part above.
    pub copy: crate::store::copy::CopyLimits,
    /// HEADs in flight while a directory's entries are looked up in listing order (`ls -l`,
    /// `find`, `stat *`): each lookup of an entry the listing knows only by name starts
    /// HEADs for the entries after it. 0 disables the prefetch.
    pub attr_prefetch: usize,
    /// Listed entries are taken as the listing describes them (size, LastModified, a file
    /// or a directory): no HEAD for their POSIX metadata, no symlinks.
    pub trust_listing: bool,
    /// O_EXCL decided by this mount's view (no conditional create in S3).
    pub local_exclusive_creates: bool,
    /// Settled directories (`--settled-after`): trusted for longer, kept on disk.
    pub settled: Option<crate::fs::cache::SettledConfig>,
}

/// How open files are uploaded, staged and read.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// First part size of multipart uploads (grows every 1,000 parts).
    pub part_size: usize,
    /// Parts of one file uploading at once.
    pub upload_inflight: usize,
    /// How sequential readers are read ahead (per stream).
    pub read: ReadConfig,
    /// Bytes read ahead by the whole mount at most (requested or fetched, not yet read).
    pub read_budget: u64,
    /// The mount's memory target and the pool of it that read-ahead and part buffers draw
    /// from (the rest bounds the metadata caches), in bytes; None: no target.
    pub memory_target: Option<(u64, u64)>,
    /// A rewrite of an existing object keeps its tags (one GetObjectTagging per rewrite of
    /// an object this mount did not write tagless itself).
    pub keep_tags: bool,
    /// Where files being modified are staged; `lost+found/` below it keeps data that could
    /// not be uploaded.
    pub cache_dir: PathBuf,
    /// Bytes of staged files at most; writes past it fail with ENOSPC.
    pub cache_size: u64,
    /// The data cache on disk (`--data-cache`): reads of a known version go through it.
    pub data_cache: Option<std::sync::Arc<crate::data::cache::BlockCache>>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            names: NamespaceConfig::default(),
            files: FilesConfig::default(),
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            read_only: false,
        }
    }
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            metadata_ttl: Duration::from_secs_f64(defaults::METADATA_TTL_SECS),
            cache_capacity: defaults::CACHE_ENTRIES,
            listed_entries: usize::MAX,
            fanout: defaults::FANOUT,
            copy: crate::store::copy::CopyLimits::default(),
            attr_prefetch: defaults::ATTR_PREFETCH,
            trust_listing: false,
            local_exclusive_creates: false,
            settled: None,
        }
    }
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            part_size: defaults::PART_SIZE_MIB << 20,
            upload_inflight: defaults::UPLOAD_PARTS,
            read: ReadConfig::default(),
            read_budget: defaults::READ_MEMORY_MIB << 20,
            memory_target: None,
            keep_tags: true,
            // The user's private cache directory, as the mount's `--cache-dir` defaults to:
            // never a shared temporary one (private.rs).
            cache_dir: crate::private::default_dir(crate::private::Place::Cache),
            cache_size: defaults::CACHE_SIZE_MIB << 20,
            data_cache: None,
        }
    }
}
