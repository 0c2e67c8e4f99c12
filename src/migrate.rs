//! `prefixfs migrate`: copies one layout of a bucket into another, server-side. From a plain
//! layout (date-shaped keys, prefix count 1) into the hashed one, or back to leave prefixfs.
//!
//! Every step is a bulk operation of the kind the layout exists for: listings fan out over
//! every prefix in parallel; copies and deletes go out interleaved across the destination's
//! prefixes (never in sorted order), paced per prefix by the store stack. A rerun copies only
//! what is missing (size and ETag compared), so an interrupted migration resumes where it
//! stopped. The source is deleted only after every copy was verified.

use crate::layout::{Layout, RelPath};
use crate::store::copy::{COPY_PART, CopyLimits, copy_parts};
use crate::store::delete::{DeleteConditions, Removed};
use crate::store::{CopySpec, DeleteTarget, ObjectMeta, ObjectStore, UserMeta};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CopyObject copies objects up to 5 GiB; larger ones are copied part by part.
pub const COPY_OBJECT_MAX: u64 = crate::limits::MAX_COPY_OBJECT;
/// Keys per DeleteObjects.
const DELETE_BATCH: usize = crate::limits::MAX_DELETE_BATCH;
/// User metadata a multipart copy carries: the source's ETag, which a multipart copy does
/// not keep, so that a rerun and the verification can tell the copy is whole.
pub const SOURCE_ETAG_META: &str = "prefixfs-source-etag";

#[derive(Debug, Clone)]
pub struct Options {
    /// Copies (and DeleteObjects) in flight at once.
    pub jobs: usize,
    pub dry_run: bool,
    pub delete_source: bool,
    /// Objects above this many bytes are copied with UploadPartCopy.
    pub copy_object_max: u64,
    /// Part size of those copies (at least; more when 10,000 parts would not do).
    pub copy_part: u64,
    /// Write the destination's layout descriptor once every copy is verified (so a mount
    /// of the new layout never starts on half of it; in place, it switches the layout).
    pub write_descriptor: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: 64,
            dry_run: false,
            delete_source: false,
            copy_object_max: COPY_OBJECT_MAX,
            copy_part: COPY_PART,
            write_descriptor: true,
        }
    }
}

/// What a migration found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Objects of the source layout (files and directory markers), and their bytes.
    pub objects: u64,
    pub bytes: u64,
    /// Of those, copied by this run.
    pub copied: u64,
    pub copied_bytes: u64,
    /// Of those, already in the destination from an earlier run.
    pub present: u64,
    /// Keys under the source root that are not of its layout: left alone.
    pub foreign: u64,
    /// Source objects deleted (`--delete-source`).
    pub deleted: u64,
    /// Source objects not deleted because they were written again after the verification
    /// listing (their new version stays; a second run copies it).
    pub kept: Vec<String>,
}

/// One object to carry over.
#[derive(Debug, Clone)]
struct Item {
    src: String,
    dst: String,
    size: u64,
    etag: Option<String>,
    /// The destination prefix, for interleaving.
    prefix: u32,
}

/// Reports progress: a bar on a terminal, a plain line every few seconds otherwise.
pub trait Progress: Send + Sync {
    fn phase(&self, name: &str, total: u64, bytes: u64);
    fn advance(&self, objects: u64, bytes: u64);
    fn done(&self);
}

/// Runs the migration from `from` to `to` (same bucket). `store` is the paced, retrying
/// stack; its prefix labels should be `to`'s, so copies are paced per destination prefix.
/// Why a migration stopped; what it wrote before is said in each case.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the source and the destination are the same layout: nothing to migrate")]
    SameLayout,
    #[error(
        "{count} objects would be copied onto keys that other source objects hold (first: {} would overwrite {}); nothing was written. Migrate to another root instead",
        crate::layout::escape_controls(.src),
        crate::layout::escape_controls(.dst)
    )]
    Collisions { count: usize, src: String, dst: String },
    #[error(
        "verification failed: {missing} of {total} objects are not in the destination as in the source (first: {first}); the source is left as it is"
    )]
    Unverified {
        missing: usize,
        total: usize,
        first: String,
    },
    #[error("{count} source keys not deleted (first: {first})")]
    NotDeleted { count: usize, first: String },
    #[error("{path}: {source}")]
    Path {
        path: crate::layout::RelPath,
        #[source]
        source: crate::layout::LayoutError,
    },
    #[error("{context}: {source}")]
    Store {
        context: String,
        #[source]
        source: crate::store::StoreError,
    },
    #[error(transparent)]
    Descriptor(#[from] crate::bucket::LayoutCheck),
}

impl MigrateError {
    fn store(context: impl Into<String>) -> impl FnOnce(crate::store::StoreError) -> MigrateError {
        let context = context.into();
        move |source| MigrateError::Store { context, source }
    }
}

pub async fn migrate(
    store: Arc<dyn ObjectStore>,
    from: &Layout,
    to: &Layout,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Report, MigrateError> {
    if from.root() == to.root() && from.prefix_count() == to.prefix_count() {
        return Err(MigrateError::SameLayout);
    }
    let mut report = Report::default();
    let ((items, foreign), present) = survey(store.as_ref(), from, to).await?;
    report.foreign = foreign;
    report.objects = items.len() as u64;
    report.bytes = items.iter().map(|i| i.size).sum();
    let (done, todo) = sort_out(store.as_ref(), &present, items, opts).await?;
    refuse_collisions(&todo, &present, from.root() == to.root())?;
    report.present = done.len() as u64;
    let todo = interleave(todo, to.prefix_count());
    report.copied = todo.len() as u64;
    report.copied_bytes = todo.iter().map(|i| i.size).sum();
    if opts.dry_run {
        return Ok(report);
    }
    if !todo.is_empty() {
        progress.phase("copying", report.copied, report.copied_bytes);
    }
    stream::iter(todo.iter())
        .map(|item| {
            let store = store.clone();
            async move {
                copy(&store, item, opts).await?;
                progress.advance(1, item.size);
                Ok::<_, MigrateError>(())
            }
        })
        .buffer_unordered(opts.jobs.max(1))
        .try_collect::<()>()
        .await?;
    if !todo.is_empty() {
        progress.done();
    }
    // Verify every object against a fresh listing of the destination before anything of
    // the source may go.
    let ((items, _), present) = survey(store.as_ref(), from, to).await?;
    let (items, missing) = sort_out(store.as_ref(), &present, items, opts).await?;
    if let Some(first) = missing.first() {
        return Err(MigrateError::Unverified {
            missing: missing.len(),
            total: items.len() + missing.len(),
            first: first.src.clone(),
        });
    }
    if opts.write_descriptor {
        crate::bucket::write_descriptor(store.as_ref(), to).await?;
    }
    if opts.delete_source {
        let items = interleave(items, to.prefix_count());
        progress.phase("deleting the source", items.len() as u64, 0);
        // Each source key only at the version verified: one written after the verification
        // listing stays (S3 checks the ETag of each key; where a server cannot, see
        // store::delete).
        let targets: Vec<DeleteTarget> = items
            .into_iter()
            .map(|i| DeleteTarget::version(i.src, i.etag))
            .collect();
        let conds = crate::store::delete::probe_delete_conditions(store.as_ref(), &probe_key(from))
            .await
            .unwrap_or(DeleteConditions {
                single: false,
                batch: false,
            });
        let removed = delete_all(store.as_ref(), targets, conds, opts.jobs, progress).await?;
        report.deleted = removed.deleted as u64;
        report.kept = removed.kept;
        progress.done();
    }
    Ok(report)
}

/// In place (or with nested roots), an object's new key can be another object's key of the
/// source layout (the plain `0/name0.txt` is where `name0.txt` goes under prefix `0`): the
/// copy would overwrite an object not yet carried over. In place, a key of the new layout's
/// shape is taken for an earlier run's copy, so one that holds something else than its
/// source (`todo` with its key `present`) is such a clash. Refused before anything is
/// written: move that object aside first.
fn refuse_collisions(todo: &[Item], present: &HashMap<String, ObjectMeta>, in_place: bool) -> Result<(), MigrateError> {
    let sources: std::collections::HashSet<&str> = todo.iter().map(|i| i.src.as_str()).collect();
    let clashes: Vec<&Item> = todo
        .iter()
        .filter(|i| i.dst != i.src && (sources.contains(i.dst.as_str()) || (in_place && present.contains_key(&i.dst))))
        .collect();
    match clashes.first() {
        None => Ok(()),
        Some(first) => Err(MigrateError::Collisions {
            count: clashes.len(),
            src: first.src.clone(),
            dst: first.dst.clone(),
        }),
    }
}

/// [`plan`], and what the destination holds (by key), listed at the same time.
async fn survey(
    store: &dyn ObjectStore,
    from: &Layout,
    to: &Layout,
) -> Result<((Vec<Item>, u64), HashMap<String, ObjectMeta>), MigrateError> {
    futures::try_join!(plan(store, from, to), scan(store, to))
}

/// The source's objects with their destination keys, and the count of foreign keys.
async fn plan(store: &dyn ObjectStore, from: &Layout, to: &Layout) -> Result<(Vec<Item>, u64), MigrateError> {
    let objects = scan(store, from).await?;
    let reserved = format!("{}{}/", from.root_slash(), crate::layout::RESERVED_NAME);
    let nested = !to.root().is_empty() && to.root() != from.root();
    let mut items = Vec::with_capacity(objects.len());
    let mut foreign = 0;
    for (key, o) in objects {
        // The destination's own keys, where it lies inside the source's root, and the
        // source's descriptor are not part of what moves.
        if key.starts_with(&reserved)
            || (nested && key.starts_with(&to.root_slash()))
            || (from.root() == to.root() && to.key_to_path(&key).is_some())
        {
            continue;
        }
        let Some((path, is_dir)) = from.key_to_path(&key).filter(|(_, d)| !d || o.size == 0) else {
            tracing::debug!(key = %crate::layout::escape_controls(&key), "not of the source layout: left alone");
            foreign += 1;
            continue;
        };
        let dst = if is_dir {
            to.dir_marker_key(&path)
        } else {
            to.file_key(&path)
        }
        .map_err(|source| MigrateError::Path {
            path: path.clone(),
            source,
        })?;
        items.push(Item {
            src: key,
            dst,
            size: o.size,
            etag: o.etag,
            prefix: to.prefix_index(&path),
        });
    }
    Ok((items, foreign))
}

/// Every key under a layout's root, by key: one paginated LIST per prefix, in parallel.
async fn scan(store: &dyn ObjectStore, layout: &Layout) -> Result<HashMap<String, ObjectMeta>, MigrateError> {
    let root = RelPath::root();
    let pages: Vec<Vec<ObjectMeta>> = stream::iter(0..layout.prefix_count())
        .map(|q| {
            let prefix = layout.dir_list_prefix(q, &root);
            async move {
                let listing = format!("listing {}", crate::layout::escape_controls(&prefix));
                let (objects, _) = store
                    .list_all(&prefix, None)
                    .await
                    .map_err(MigrateError::store(listing))?;
                Ok::<_, MigrateError>(objects)
            }
        })
        .buffer_unordered(layout.prefix_count().min(64) as usize)
        .try_collect()
        .await?;
    Ok(pages.into_iter().flatten().map(|o| (o.key.clone(), o)).collect())
}

/// Splits `items` into those the destination holds already and those still to copy, by a
/// fresh listing of the destination (`present`) and a HEAD for each multipart copy, `jobs`
/// at once.
async fn sort_out(
    store: &dyn ObjectStore,
    present: &HashMap<String, ObjectMeta>,
    items: Vec<Item>,
    opts: &Options,
) -> Result<(Vec<Item>, Vec<Item>), MigrateError> {
    let checked: Vec<(Item, bool)> = stream::iter(items)
        .map(|item| async move {
            let done = copied_already(store, &item, present.get(&item.dst), opts).await?;
            Ok::<_, MigrateError>((item, done))
        })
        .buffered(opts.jobs.max(1))
        .try_collect()
        .await?;
    let (done, todo): (Vec<_>, Vec<_>) = checked.into_iter().partition(|(_, d)| *d);
    Ok((
        done.into_iter().map(|(i, _)| i).collect(),
        todo.into_iter().map(|(i, _)| i).collect(),
    ))
}

/// Whether `dst` holds `item` whole: the same size, and the same ETag (CopyObject keeps it)
/// or, for a multipart copy, the source's ETag in its metadata (one HEAD).
async fn copied_already(
    store: &dyn ObjectStore,
    item: &Item,
    dst: Option<&ObjectMeta>,
    opts: &Options,
) -> Result<bool, MigrateError> {
    let Some(dst) = dst else { return Ok(false) };
    if dst.size != item.size {
        return Ok(false);
    }
    if item.etag.is_some() && dst.etag == item.etag {
        return Ok(true);
    }
    if item.size <= opts.copy_object_max {
        return Ok(false);
    }
    let head = match store.head(&item.dst).await {
        Ok(h) => h,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(MigrateError::store(format!("checking the copy {}", item.dst))(e)),
    };
    Ok(item.etag.as_deref().map(strip_quotes) == head.user_meta.get(SOURCE_ETAG_META).map(|s| strip_quotes(s)))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn strip_quotes(s: &str) -> &str {
    s.trim_matches('"')
}

/// Orders items round-robin over the destination's prefixes.
fn interleave(items: Vec<Item>, prefixes: u32) -> Vec<Item> {
    let mut by_prefix: Vec<std::collections::VecDeque<Item>> = (0..prefixes).map(|_| Default::default()).collect();
    let n = items.len();
    for i in items {
        by_prefix[i.prefix as usize].push_back(i);
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        for q in by_prefix.iter_mut() {
            if let Some(i) = q.pop_front() {
                out.push(i);
            }
        }
    }
    out
}

/// One object: CopyObject (metadata with it), or UploadPartCopy parts in parallel above
/// `copy_object_max`, with the source's metadata and ETag.
async fn copy(store: &Arc<dyn ObjectStore>, item: &Item, opts: &Options) -> Result<(), MigrateError> {
    let context = || format!("copying {} to {}", item.src, item.dst);
    if item.size <= opts.copy_object_max {
        let c = CopySpec::new(&item.src, &item.dst).from_version(item.etag.as_deref());
        return store.copy(&c).await.map(|_| ()).map_err(MigrateError::store(context()));
    }
    let head = store.head(&item.src).await.map_err(MigrateError::store(context()))?;
    let mut meta: UserMeta = head.user_meta.clone();
    if let Some(etag) = &head.etag {
        meta.insert(SOURCE_ETAG_META.into(), strip_quotes(etag).to_string());
    }
    let limits = CopyLimits {
        object_max: opts.copy_object_max,
        part: opts.copy_part,
        parallel: 8,
    };
    let c = CopySpec::new(&item.src, &item.dst)
        .from_version(head.etag.as_deref())
        .with_meta(Some(&meta));
    copy_parts(store.as_ref(), &c, head.size, &limits)
        .await
        .map(|_| ())
        .map_err(MigrateError::store(context()))
}

/// Deletes `targets` (interleaved already) in DeleteObjects batches, `jobs` at once, each
/// key only at the version it names; each batch spans many prefixes.
async fn delete_all(
    store: &dyn ObjectStore,
    targets: Vec<DeleteTarget>,
    conds: DeleteConditions,
    jobs: usize,
    progress: &dyn Progress,
) -> Result<Removed, MigrateError> {
    let mut all = Removed::default();
    // In slices, for progress; each slice goes out `jobs` batches at once.
    let slice = DELETE_BATCH * jobs.clamp(1, 16);
    let one_prefix: crate::store::PrefixFn = Arc::new(|_: &str| String::new());
    for chunk in targets.chunks(slice) {
        let r = crate::store::delete::delete_versions(store, chunk.to_vec(), conds, &one_prefix, jobs)
            .await
            .map_err(MigrateError::store("deleting the source"))?;
        progress.advance(chunk.len() as u64, 0);
        all.deleted += r.deleted;
        all.kept.extend(r.kept);
        all.failed.extend(r.failed);
    }
    if let Some(f) = all.failed.first() {
        return Err(MigrateError::NotDeleted {
            count: all.failed.len(),
            first: f.to_string(),
        });
    }
    Ok(all)
}

/// Where `migrate` probes which delete conditions the server honours.
fn probe_key(layout: &Layout) -> String {
    format!(
        "{}{}/probe-delete-{}",
        layout.root_slash(),
        crate::layout::RESERVED_NAME,
        uuid::Uuid::new_v4().simple()
    )
}

/// A bar on a terminal, plain lines every 5 s otherwise (logs, pipes, CI).
pub fn progress_for_stderr() -> Box<dyn Progress> {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        Box::new(Bar::new())
    } else {
        Box::new(Lines::new(Duration::from_secs(5)))
    }
}

/// Progress as plain lines on stderr, at most one every `every` (logs, pipes, CI).
pub struct Lines {
    every: Duration,
    state: std::sync::Mutex<LineState>,
}

struct LineState {
    name: String,
    total: u64,
    bytes: u64,
    done: u64,
    done_bytes: u64,
    start: Instant,
    last: Instant,
}

impl Lines {
    pub fn new(every: Duration) -> Self {
        let now = Instant::now();
        Lines {
            every,
            state: std::sync::Mutex::new(LineState {
                name: String::new(),
                total: 0,
                bytes: 0,
                done: 0,
                done_bytes: 0,
                start: now,
                last: now,
            }),
        }
    }

    fn print(s: &LineState) {
        let secs = s.start.elapsed().as_secs_f64().max(1e-3);
        let rate = s.done as f64 / secs;
        let eta = if rate > 0.0 {
            format!("{:.0} s", (s.total.saturating_sub(s.done)) as f64 / rate)
        } else {
            "unknown".into()
        };
        eprintln!(
            "{}: {}/{} objects, {}/{} MiB, {:.0} objects/s, {:.1} MiB/s, ETA {eta}",
            s.name,
            s.done,
            s.total,
            s.done_bytes >> 20,
            s.bytes >> 20,
            rate,
            s.done_bytes as f64 / secs / (1 << 20) as f64
        );
    }
}

impl Progress for Lines {
    fn phase(&self, name: &str, total: u64, bytes: u64) {
        let mut s = lock(&self.state);
        let now = Instant::now();
        *s = LineState {
            name: name.to_string(),
            total,
            bytes,
            done: 0,
            done_bytes: 0,
            start: now,
            last: now,
        };
    }

    fn advance(&self, objects: u64, bytes: u64) {
        let mut s = lock(&self.state);
        s.done += objects;
        s.done_bytes += bytes;
        if s.last.elapsed() >= self.every {
            s.last = Instant::now();
            Self::print(&s);
        }
    }

    fn done(&self) {
        Self::print(&lock(&self.state));
    }
}

/// Progress as a bar with rate and ETA, for a person at a terminal.
pub struct Bar(indicatif::ProgressBar);

impl Bar {
    pub fn new() -> Self {
        Bar(indicatif::ProgressBar::hidden())
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: u64, _bytes: u64) {
        self.0.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        self.0.reset();
        self.0.set_length(total);
        self.0.set_message(name.to_string());
        let style =
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} objects, {per_sec}, ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        self.0.set_style(style);
    }

    fn advance(&self, objects: u64, _bytes: u64) {
        self.0.inc(objects);
    }

    fn done(&self) {
        self.0.finish();
    }
}

#[cfg(test)]
mod tests;
