//! The defaults of the mount's bounds, in one place: [`crate::fs::FsConfig::default`] and the
//! command line's `default_value_t`s both read them.

pub const METADATA_TTL_SECS: f64 = 5.0;
pub const CACHE_ENTRIES: usize = 100_000;
pub const FANOUT: usize = 16;
/// Measured (`PREFETCH_SWEEP=64,128,256,512 cargo bench --bench ls_l`, 20,000 entries at
/// 20 ms per answer, 2026-12-05): cold `ls -l` 8.45 / 5.37 / 4.43 / 4.33 s. 256 takes
/// most of the gain; S3 serves 5,500 HEADs a second per partition, so 256 in flight
/// over 16 prefixes at 20 to 60 ms stays well inside what the prefixes can take.
pub const ATTR_PREFETCH: usize = 256;
pub const PART_SIZE_MIB: usize = 8;
pub const UPLOAD_PARTS: usize = 8;
pub const READ_AHEAD_MIB: u64 = 64;
pub const READ_MEMORY_MIB: u64 = 128;
pub const CACHE_SIZE_MIB: u64 = 10 * 1024;
/// The data cache's size (`--data-cache-size-mib`): blocks kept across remounts.
pub const DATA_CACHE_MIB: u64 = 4 * 1024;
/// How long a settled directory is trusted (`--settled-ttl`): an hour.
pub const SETTLED_TTL_SECS: f64 = 3600.0;
