//! Command-line flags and their validation into the library's config structs.

use crate::defaults;
use crate::fs::{FilesConfig, FsConfig, NamespaceConfig};
use crate::invalid::Invalid;
use crate::layout::{DEFAULT_PREFIX_COUNT, MAX_PREFIX_COUNT};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

mod conn;
mod tools;
use conn::parse_account_id;
pub use conn::*;
pub use tools::*;

#[derive(Debug, Parser)]
#[command(
    name = "prefixfs",
    version,
    about = "Mount an S3 bucket as a directory tree stored under hash-prefixed keys"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter); RUST_LOG also works.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount s3://BUCKET[/ROOT] at MOUNTPOINT; with no bucket, an embedded local S3 store.
    ///
    /// Several hosts may mount one bucket: exclusive creates and mkdir are decided by S3, and
    /// every change names the object version it acts on. flock and fcntl locks are this
    /// host's only: they do not reach other hosts, so two hosts can both hold one.
    Mount(Box<MountArgs>),
    /// Write the layout descriptor to s3://BUCKET[/ROOT] (once, before the first mount).
    Init(InitArgs),
    /// Print the S3 key a path inside the mount is stored under.
    Key(KeyArgs),
    /// Run the embedded S3-compatible server on its own.
    Serve(ServeArgs),
    /// Print the request counters of a running mount.
    Stats(StatsArgs),
    /// Delete a path (with -r, a whole tree) from a bucket in bulk, without mounting:
    /// DeleteObjects batches with keys interleaved across prefixes.
    Rm(RmArgs),
    /// Copy a layout into another, server-side, in the same bucket: plain date-shaped keys
    /// into the hashed layout (or back). Resumable; verified; --delete-source after that.
    Migrate(MigrateArgs),
    /// Check every key under s3://BUCKET[/ROOT] against the layout: misplaced keys (wrong
    /// prefix), foreign keys, incomplete multipart uploads. Exit 0: clean; 1: all repaired;
    /// 4: problems left.
    Fsck(FsckArgs),
    /// The layout of s3://BUCKET[/ROOT]: its descriptor, objects and bytes per prefix, skew.
    Info(InfoArgs),
    /// Check everything a mount of s3://BUCKET[/ROOT] needs (credentials, region, the
    /// descriptor, each permission on scratch keys, conditional writes and deletes, latency,
    /// throughput): a table; exit 0 only when a mount would work. Cleans up after itself.
    Doctor(DoctorArgs),
    /// List s3://BUCKET/ROOT/PATH as the mount would show it, without mounting.
    Ls(LsArgs),
    /// Print files of s3://BUCKET/ROOT/PATH, without mounting.
    Cat(CatArgs),
    /// Copy between the local disk and s3://BUCKET/ROOT/PATH (either way; -r for trees).
    Cp(CpArgs),
    /// Bytes below s3://BUCKET/ROOT/PATH, per directory (apparent sizes, as du -b).
    Du(DuArgs),
    /// Paths below s3://BUCKET/ROOT/PATH, by name pattern and type.
    Find(FindArgs),
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// s3://BUCKET[/ROOT]
    pub target: String,
    /// Path inside the layout, e.g. 2017/02
    pub path: String,
    /// Remove directories and their contents.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args, Clone)]
pub struct MountArgs {
    /// s3://BUCKET[/ROOT] then MOUNTPOINT; MOUNTPOINT alone mounts the embedded store.
    /// MOUNTPOINT may be /dev/fd/N: a /dev/fuse descriptor another process opened and
    /// mounted (with default_permissions); it unmounts, and SIGTERM ends this process.
    #[arg(num_args = 1..=2, required = true)]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Number of hash prefixes (1 to 4096). Must match the bucket's descriptor.
    #[arg(long)]
    pub prefix_count: Option<u32>,
    /// Write the layout descriptor if the bucket has none (instead of refusing to mount).
    #[arg(long)]
    pub init: bool,
    /// Seconds attributes and listings are cached (0 disables the cache).
    #[arg(long, default_value_t = defaults::METADATA_TTL_SECS)]
    pub metadata_ttl: f64,
    /// Cached path entries at most.
    #[arg(long, default_value_t = defaults::CACHE_ENTRIES)]
    pub cache_entries: usize,
    /// Concurrent requests of one listing fan-out.
    #[arg(long, default_value_t = defaults::FANOUT)]
    pub fanout: usize,
    /// HEADs in flight while a directory's entries are looked up in listing order (`ls -l`,
    /// `find`): each entry is HEADed once either way, in parallel instead of in series. 0: off.
    #[arg(long, default_value_t = defaults::ATTR_PREFETCH)]
    pub attr_prefetch: usize,
    /// Take size and LastModified from listings and send no HEAD for listed entries: `ls -l`
    /// and `find` cost their LISTs only. For buckets without POSIX metadata: modes and owners
    /// are the mount's defaults and symlinks show as files.
    #[arg(long)]
    pub trust_listing: bool,
    /// Decide O_EXCL creates by this mount's view instead of by S3: one PUT per new file
    /// instead of two (`cp` creates every new file with O_EXCL), but lock files and `set -C`
    /// no longer exclude other hosts. For buckets only this host writes.
    #[arg(long)]
    pub local_exclusive_creates: bool,
    /// Let a rewrite of an existing object (an append, an edit, `O_TRUNC`) drop the object's
    /// tags instead of keeping them: saves the GetObjectTagging each such rewrite costs (a
    /// HEAD cannot tell the tags), for buckets whose objects carry no tags that matter.
    #[arg(long)]
    pub drop_tags_on_rewrite: bool,
    /// FUSE worker threads (= requests served at once).
    #[arg(long, default_value_t = 16)]
    pub threads: usize,
    /// First multipart part size in MiB (grows every 1,000 parts).
    #[arg(long, default_value_t = defaults::PART_SIZE_MIB)]
    pub part_size_mib: usize,
    /// Multipart parts of one file uploading at once: a file's upload is not held to one
    /// connection's bandwidth (S3 gives each ~90 MiB/s). Memory: (this + 1) × part size per
    /// file being written.
    #[arg(long, default_value_t = defaults::UPLOAD_PARTS)]
    pub upload_parts: usize,
    /// Objects larger than this many MiB are copied part by part (UploadPartCopy, in
    /// parallel) when renamed or when their mode or times change: S3's CopyObject copies at
    /// most 5 GiB; lower it for an S3-compatible store whose limit is smaller.
    #[arg(long, default_value_t = crate::limits::MAX_COPY_OBJECT >> 20)]
    pub copy_object_max_mib: u64,
    /// How far ahead of a sequential reader ranged GETs are sent, in MiB (per reader; the
    /// window grows to this while the reader keeps up).
    #[arg(long, default_value_t = defaults::READ_AHEAD_MIB)]
    pub read_ahead_mib: u64,
    /// Bytes read ahead by the whole mount at most, in MiB: when spent, readers fetch only
    /// what they ask for until others consume theirs.
    #[arg(long, default_value_t = defaults::READ_MEMORY_MIB)]
    pub read_memory_mib: u64,
    /// The memory the whole mount aims to stay within, in MiB (default: 95% of the
    /// machine's memory, or of the cgroup's limit when lower). A quarter bounds the metadata
    /// caches; read-ahead and the part buffers of every writer draw from the rest, and a
    /// writer waits for memory rather than grow the process.
    #[arg(long, visible_alias = "memory-target")]
    pub memory_target_mib: Option<u64>,
    /// Mount read-only: no request that writes is ever sent.
    #[arg(long)]
    pub read_only: bool,
    /// Let other users access the mount (needs user_allow_other for non-root).
    #[arg(long)]
    pub allow_other: bool,
    /// Extended attributes (user.* and trusted.*), kept in s3fs's `x-amz-meta-xattr` as
    /// s3fs's `-o use_xattr` does. Off by default, as in s3fs: with them the kernel asks
    /// the daemon for two attributes of every file `ls -l` shows (no S3 request, but a
    /// round trip each: a warm `ls -l` of 10,000 files takes 0.4 s instead of 0.08 s).
    #[arg(long)]
    pub xattr: bool,
    /// Owner of files and directories whose objects name none (and of the mount root);
    /// default: the user who mounts.
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group of files and directories whose objects name none (and of the mount root);
    /// default: the group of the user who mounts.
    #[arg(long)]
    pub gid: Option<u32>,
    /// Permission bits of files, octal.
    #[arg(long, default_value = "644")]
    pub file_mode: String,
    /// Permission bits of directories, octal.
    #[arg(long, default_value = "755")]
    pub dir_mode: String,
    /// Stay in the foreground (Ctrl-C uploads open files and unmounts).
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Where files being modified are staged (default ~/.cache/prefixfs).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Staged bytes at most, in MiB; writes beyond fail with ENOSPC.
    #[arg(long, default_value_t = defaults::CACHE_SIZE_MIB)]
    pub cache_size_mib: u64,
    /// Keep what is read in 1 MiB blocks on local disk in this directory (private to this
    /// user), across remounts and restarts: a block is used only for the object version the
    /// mount's metadata names. Off by default (on for the embedded store, in the cache
    /// directory).
    #[arg(long)]
    pub data_cache: Option<PathBuf>,
    /// Bytes of the data cache at most, in MiB (least recently used blocks go first; 5% of
    /// the disk always stays free).
    #[arg(long, default_value_t = defaults::DATA_CACHE_MIB)]
    pub data_cache_size_mib: u64,
    /// Settle directories whose newest object, at any depth, is older than this many hours
    /// and that this mount has not changed: trusted for --settled-ttl instead of
    /// --metadata-ttl, their listings and attributes kept in the cache directory across
    /// remounts. Another host's change there shows within --settled-ttl. Off by default.
    #[arg(long)]
    pub settled_after: Option<f64>,
    /// Seconds a settled directory is trusted before it is listed again.
    #[arg(long, default_value_t = defaults::SETTLED_TTL_SECS)]
    pub settled_ttl: f64,
    /// At mount, abort incomplete multipart uploads in this layout older than this many
    /// hours (uploads a crash of this host left are aborted regardless); negative: never.
    #[arg(long, default_value_t = 24.0, allow_negative_numbers = true)]
    pub abort_uploads_older_than: f64,
    /// Serve Prometheus metrics (requests, throttles, retries, latency per prefix) here.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where the embedded store keeps its data (no bucket given).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Log file (default for the background daemon: the private log directory, e.g.
    /// ~/.local/state/prefixfs/prefixfs.log); reopened on SIGHUP, for logrotate.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
}

/// mount(8) options that say nothing to prefixfs (fstab and systemd pass them along).
const GENERIC_OPTIONS: &[&str] = &[
    "", "rw", "defaults", "auto", "noauto", "user", "users", "nouser", "_netdev", "nofail", "dev", "nodev", "suid",
    "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "sync", "async",
];

/// Turns `prefixfs mount ... -o a=b,c` (as mount(8) and fstab pass options) into flags,
/// `--a=b --c`, before parsing: every long flag of `mount` is a mount option by construction,
/// and an unknown one is refused by the same parser. `ro` is `--read-only`; the generic
/// options of mount(8) and `x-*` (systemd's) are dropped.
pub fn expand_mount_options<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> Vec<std::ffi::OsString> {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    if args.get(1).is_none_or(|a| a != "mount") {
        return args;
    }
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let list = match a.to_str() {
            Some("-o") => match it.next() {
                Some(v) => v,
                None => {
                    out.push(a);
                    continue;
                }
            },
            Some(s) if s.starts_with("-o") && s.len() > 2 => s[2..].into(),
            _ => {
                out.push(a);
                continue;
            }
        };
        for opt in list.to_string_lossy().split(',') {
            let (name, value) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (opt, None),
            };
            if GENERIC_OPTIONS.contains(&name) || name.starts_with("x-") || name == "comment" {
                continue;
            }
            let flag = if name == "ro" {
                "--read-only".to_string()
            } else {
                format!("--{}", name.replace('_', "-"))
            };
            out.push(match value {
                Some(v) => format!("{flag}={v}").into(),
                None => flag.into(),
            });
        }
    }
    out
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// s3://BUCKET[/ROOT]
    pub target: String,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Number of hash prefixes of the new layout (1 to 4096).
    #[arg(long, default_value_t = DEFAULT_PREFIX_COUNT)]
    pub prefix_count: u32,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Path inside the mount, e.g. 2017/02/08/a.txt
    pub path: String,
    /// Number of hash prefixes of the layout.
    #[arg(long, default_value_t = DEFAULT_PREFIX_COUNT)]
    pub prefix_count: u32,
    /// The mount's ROOT inside the bucket.
    #[arg(long, default_value = "")]
    pub root: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the objects are kept (made private to this user; one directory per bucket).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to listen on (beyond loopback only with care: plain HTTP).
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub addr: std::net::SocketAddr,
    /// Buckets to create at start.
    #[arg(long)]
    pub bucket: Vec<String>,
    /// Throttle like S3's partitions: token buckets per key range, 503 SlowDown, splits.
    #[arg(long)]
    pub emulate_partitions: bool,
    /// Writes per second per partition (S3: 3500).
    #[arg(long, default_value_t = 3500.0)]
    pub write_rate: f64,
    /// Reads per second per partition (S3: 5500).
    #[arg(long, default_value_t = 5500.0)]
    pub read_rate: f64,
    /// When a partition splits: `demand` (after running hot for --split-after-ms) or
    /// `throttles:K/W` (after answering SlowDown in K distinct seconds within W seconds).
    #[arg(long, default_value = "demand")]
    pub split_policy: crate::server::partitions::SplitPolicy,
    /// Under the demand policy: a partition running hot this long splits.
    #[arg(long, default_value_t = 2000)]
    pub split_after_ms: u64,
    /// Partitions the emulator splits a bucket into at most.
    #[arg(long, default_value_t = 256)]
    pub max_partitions: usize,
    /// Initial partition boundaries (start keys), besides the empty key.
    #[arg(long)]
    pub boundary: Vec<String>,
    /// Serve the emulator's counters as JSON at http://ADDR/partitions.
    #[arg(long)]
    pub stats_addr: Option<std::net::SocketAddr>,
    /// Access key clients must sign with (with --secret-key). Default: random keys kept in
    /// DATA_DIR/credentials.json (mode 0600), made on first start.
    #[arg(long, env = "PREFIXFS_ACCESS_KEY", requires = "secret_key", hide_env_values = true)]
    pub access_key: Option<String>,
    /// Secret key clients must sign with (with --access-key).
    #[arg(long, env = "PREFIXFS_SECRET_KEY", requires = "access_key", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Milliseconds added before every answer, to try a workload at S3's latency (20–60 ms).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// MiB/s each connection may move each way (S3 gives one connection about 80–100).
    #[arg(long)]
    pub connection_mibps: Option<f64>,
    /// MiB one CopyObject (or UploadPartCopy part) copies at most, as S3's 5 GiB: lower, to
    /// try what a client does with objects too large for one copy.
    #[arg(long, default_value_t = crate::limits::MAX_COPY_OBJECT >> 20)]
    pub copy_object_max_mib: u64,
    /// Inject faults, to soak-test a client: KIND:RATE[:OPERATION][:after], repeatable. KIND
    /// is 500, 503, reset (connection dropped), stall (answer --fault-stall-ms late) or
    /// truncate (body cut off halfway); RATE a probability per request; OPERATION an S3
    /// operation name (PutObject, CompleteMultipartUpload, …); `after`: apply the request,
    /// then lose its answer. Example: --fault 503:0.05 --fault 500:0.2:CompleteMultipartUpload:after
    #[arg(long = "fault", value_parser = clap::value_parser!(crate::server::faults::FaultRule))]
    pub faults: Vec<crate::server::faults::FaultRule>,
    /// Seed of the fault dice (the same seed and requests give the same faults).
    #[arg(long, default_value_t = 1)]
    pub fault_seed: u64,
    /// How late a `stall` fault answers, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub fault_stall_ms: u64,
    /// Refuse (403 AccessDenied) every write that makes an object (PUT, multipart upload,
    /// copy) without this encryption, as a bucket policy on `s3:x-amz-server-side-encryption`
    /// does. `SSE-C`: a customer key.
    #[arg(long, value_parser = ["aws:kms", "aws:kms:dsse", "AES256", "SSE-C"])]
    pub require_sse: Option<String>,
    /// Refuse (400) every PUT and part that carries no checksum.
    #[arg(long)]
    pub require_checksum: bool,
    /// A requester-pays bucket: refuse (403) every request without `x-amz-request-payer`.
    #[arg(long)]
    pub requester_pays: bool,
    /// The account that owns the buckets: refuse (403) every request that does not name it
    /// in `x-amz-expected-bucket-owner`.
    #[arg(long, value_parser = parse_account_id)]
    pub bucket_owner: Option<String>,
    /// Public buckets: unsigned requests may read (GET, HEAD, list) and nothing else.
    #[arg(long)]
    pub public_read: bool,
}

impl ServeArgs {
    /// What the flags say the bucket's policy demands.
    pub fn policy(&self) -> crate::server::Policy {
        crate::server::Policy {
            require_sse: self.require_sse.clone(),
            require_checksum: self.require_checksum,
            requester_pays: self.requester_pays,
            bucket_owner: self.bucket_owner.clone(),
            public_read: self.public_read,
        }
    }

    /// The fault plan of the flags, if any rule is given.
    pub fn fault_plan(&self) -> Option<std::sync::Arc<crate::server::faults::FaultPlan>> {
        (!self.faults.is_empty()).then(|| {
            std::sync::Arc::new(crate::server::faults::FaultPlan::new(
                self.faults.clone(),
                self.fault_seed,
                std::time::Duration::from_millis(self.fault_stall_ms),
            ))
        })
    }

    pub fn credentials(&self) -> Option<crate::server::Credentials> {
        match (&self.access_key, &self.secret_key) {
            (Some(a), Some(s)) => Some(crate::server::Credentials {
                access_key: a.clone(),
                secret_key: s.clone(),
            }),
            _ => None,
        }
    }

    pub fn emulator(&self) -> Option<crate::server::partitions::EmulatorConfig> {
        self.emulate_partitions
            .then(|| crate::server::partitions::EmulatorConfig {
                write_rate: self.write_rate,
                read_rate: self.read_rate,
                split_policy: self.split_policy,
                split_after: Duration::from_millis(self.split_after_ms),
                max_partitions: self.max_partitions.max(1),
                boundaries: self.boundary.clone(),
            })
    }
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    pub mountpoint: PathBuf,
}

pub fn parse_s3_url(s: &str) -> Result<(String, String), Invalid> {
    let rest = s
        .strip_prefix("s3://")
        .ok_or_else(|| Invalid::new(format!("{s:?}"), "not an s3://BUCKET[/ROOT] URL"))?;
    let (bucket, root) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Invalid::new(format!("{s:?}"), "names no bucket"));
    }
    Ok((bucket.to_string(), root.trim_matches('/').to_string()))
}

fn default_cache_dir() -> PathBuf {
    crate::private::default_dir(crate::private::Place::Cache)
}

fn parse_mode(s: &str, what: &str) -> Result<u16, Invalid> {
    u16::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| Invalid::new(format!("--{what} {s:?}"), "not an octal mode"))
}

/// A validated mount request.
#[derive(Debug, Clone)]
pub struct MountPlan {
    /// `None`: the embedded store.
    pub bucket: Option<(String, String)>,
    pub mountpoint: PathBuf,
    /// `/dev/fd/N` as the mount point: a /dev/fuse descriptor a privileged helper (a
    /// container runtime, a CSI driver) opened and mounted; this process only serves it.
    pub fuse_fd: Option<i32>,
    pub fs: FsConfig,
    pub prefix_count: Option<u32>,
    pub threads: usize,
    pub allow_other: bool,
    /// Extended attributes answered (else ENOSYS: the kernel stops asking).
    pub xattr: bool,
    pub abort_uploads_older_than: Option<Duration>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub pacing: crate::store::pacing::PacingConfig,
    /// Reopened on SIGHUP.
    pub log_file: Option<PathBuf>,
    /// The data cache's directory and size, opened when the mount starts.
    pub data_cache: Option<(PathBuf, u64)>,
}

impl MountArgs {
    pub fn plan(&self) -> Result<MountPlan, Invalid> {
        let (bucket, mountpoint) = match self.targets.as_slice() {
            [m] => (None, m),
            [b, m] => (Some(parse_s3_url(b)?), m),
            _ => {
                return Err(Invalid::new(
                    "the arguments",
                    "usage: prefixfs mount [s3://BUCKET[/ROOT]] MOUNTPOINT",
                ));
            }
        };
        let mountpoint = PathBuf::from(mountpoint);
        let fuse_fd = crate::mount::passed_fuse_fd(&mountpoint)?;
        if fuse_fd.is_none() && !mountpoint.is_dir() {
            return Err(Invalid::new(
                format!("mount point {}", mountpoint.display()),
                "not a directory",
            ));
        }
        if let Some(n) = self.prefix_count
            && (n == 0 || n > MAX_PREFIX_COUNT)
        {
            return Err(Invalid::new(
                format!("--prefix-count {n}"),
                format!("outside 1..={MAX_PREFIX_COUNT}"),
            ));
        }
        if !(self.metadata_ttl >= 0.0 && self.metadata_ttl.is_finite()) {
            return Err(Invalid::new(
                format!("--metadata-ttl {}", self.metadata_ttl),
                "must be a number of seconds >= 0",
            ));
        }
        let hours = self.settled_after.unwrap_or(0.0);
        if !(hours >= 0.0 && hours.is_finite() && self.settled_ttl >= 0.0 && self.settled_ttl.is_finite()) {
            return Err(Invalid::new(
                format!("--settled-after {hours} --settled-ttl {}", self.settled_ttl),
                "must be numbers >= 0 (hours, seconds)",
            ));
        }
        if self.fanout == 0 || self.threads == 0 {
            return Err(Invalid::new("--fanout and --threads", "must be at least 1"));
        }
        if !(5..=5 * 1024).contains(&self.part_size_mib) {
            return Err(Invalid::new(
                format!("--part-size-mib {}", self.part_size_mib),
                "outside S3's 5..=5120",
            ));
        }
        if self.upload_parts == 0 {
            return Err(Invalid::new("--upload-parts 0", "must be at least 1"));
        }
        if !((crate::limits::MIN_PART >> 20)..=(crate::limits::MAX_COPY_OBJECT >> 20))
            .contains(&self.copy_object_max_mib)
        {
            return Err(Invalid::new(
                format!("--copy-object-max-mib {}", self.copy_object_max_mib),
                "outside S3's 5..=5120",
            ));
        }
        let mib = 1024 * 1024;
        let target = self
            .memory_target_mib
            .map_or_else(crate::data::memory::default_target, |m| m.saturating_mul(mib));
        // The metadata caches' share, half for path entries, half for names in listings.
        let meta = target / crate::data::memory::METADATA_SHARE;
        let meta_entries = (meta / 2 / crate::data::memory::ENTRY_BYTES).max(1000) as usize;
        let read = crate::data::read::ReadConfig {
            window: self.read_ahead_mib.saturating_mul(mib),
            ..Default::default()
        };
        let (read_only, allow_other) = (self.read_only, self.allow_other);
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let fs = FsConfig {
            names: NamespaceConfig {
                metadata_ttl: Duration::from_secs_f64(self.metadata_ttl),
                cache_capacity: self.cache_entries.clamp(1, meta_entries),
                listed_entries: meta_entries,
                fanout: self.fanout,
                attr_prefetch: self.attr_prefetch,
                trust_listing: self.trust_listing,
                local_exclusive_creates: self.local_exclusive_creates,
                // Kept on disk where the mount starts (it knows the bucket).
                settled: self.settled_after.map(|h| crate::fs::cache::SettledConfig {
                    after: Duration::from_secs_f64(h * 3600.0),
                    ttl: Duration::from_secs_f64(self.settled_ttl),
                    file: None,
                }),
                copy: crate::store::copy::CopyLimits {
                    object_max: self.copy_object_max_mib << 20,
                    ..Default::default()
                },
            },
            files: FilesConfig {
                keep_tags: !self.drop_tags_on_rewrite,
                part_size: self.part_size_mib * 1024 * 1024,
                upload_inflight: self.upload_parts,
                read,
                read_budget: self.read_memory_mib.saturating_mul(mib),
                memory_target: Some((target, target - meta)),
                cache_dir: self.cache_dir.clone().unwrap_or_else(default_cache_dir),
                cache_size: self.cache_size_mib.saturating_mul(1024 * 1024),
                // Opened when the mount starts (MountPlan::data_cache).
                data_cache: None,
            },
            uid: self.uid.unwrap_or(uid),
            gid: self.gid.unwrap_or(gid),
            file_mode: parse_mode(&self.file_mode, "file-mode")?,
            dir_mode: parse_mode(&self.dir_mode, "dir-mode")?,
            read_only,
        };
        let abort_uploads_older_than = (self.abort_uploads_older_than >= 0.0
            && self.abort_uploads_older_than.is_finite())
        .then(|| Duration::from_secs_f64(self.abort_uploads_older_than * 3600.0));
        let data_cache = match (&self.data_cache, &bucket) {
            (Some(dir), _) => Some(dir.clone()),
            // The demo mount (the embedded store) caches in the cache directory.
            (None, None) => Some(self.cache_dir.clone().unwrap_or_else(default_cache_dir).join("data")),
            (None, Some(_)) => None,
        }
        .map(|d| (d, self.data_cache_size_mib.saturating_mul(mib)));
        Ok(MountPlan {
            bucket,
            mountpoint,
            fuse_fd,
            fs,
            prefix_count: self.prefix_count,
            threads: self.threads,
            allow_other,
            xattr: self.xattr,
            abort_uploads_older_than,
            metrics_addr: self.metrics_addr,
            pacing: crate::store::pacing::PacingConfig::default(),
            log_file: self.log_file.clone(),
            data_cache,
        })
    }
}

#[cfg(test)]
mod tests;
