//! Ad hoc use without a mount (containers without /dev/fuse, scripts, CI jobs): `prefixfs
//! ls`, `cat`, `cp`, `du` and `find` on `s3://BUCKET/ROOT/PATH`, speaking the mount's paths.
//!
//! They run on the same namespace as a mount (listings fanned out over every prefix and cached,
//! subtree walks in one LIST per prefix, foreign keys hidden), over the same paced and
//! retrying store, so they cost what the same operation through a mount costs: `ls`, `du`
//! and `find` the LISTs only; `ls -l` and `cp` out a HEAD per entry too (its POSIX metadata,
//! as the mount's `ls -l` sends), many in flight.

use crate::data::upload::Upload;
use crate::error::{During, PathProblem, ToolError, ToolResult};
use crate::fs::Namespace;
use crate::fs::cache::{EntryInfo, Kind};
use crate::fs::posix::Posix;
use crate::layout::{Layout, RelPath};
use crate::migrate::Progress;
use crate::store::ObjectStore;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes per ranged GET when reading a file out, and per part when writing one in.
const CHUNK: u64 = 8 << 20;
/// Ranged GETs (and upload parts) of one file in flight.
const FILE_PARALLEL: usize = 8;
/// HEADs in flight while entries are described.
const HEADS_PARALLEL: usize = 64;
/// Files copied at once.
const FILES_PARALLEL: usize = 16;

/// A bucket layout opened for ad hoc commands.
pub struct Bucket {
    pub ns: Arc<Namespace>,
    pub store: Arc<dyn ObjectStore>,
    pub layout: Layout,
}

/// One entry met by a walk: its path, kind and what the listing says of it.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: RelPath,
    pub info: EntryInfo,
}

impl Bucket {
    /// The namespace of `layout` in `store`, as a mount shows it, without one: nothing is
    /// staged locally (ad hoc writes go straight to S3).
    pub fn open(store: Arc<dyn ObjectStore>, layout: Layout, stats: Arc<crate::store::stats::RequestStats>) -> Bucket {
        let ns = Namespace::new(
            layout.clone(),
            store.clone(),
            stats,
            crate::fs::NamespaceConfig::default(),
        );
        Bucket { ns, store, layout }
    }

    pub async fn stat(&self, path: &RelPath) -> ToolResult<EntryInfo> {
        match self.ns.stat(path).await.during(path)? {
            Some(info) => Ok(info),
            None => Err(ToolError::path(show(path), PathProblem::NotFound)),
        }
    }

    /// The entries of directory `dir`, by name.
    pub async fn list(&self, dir: &RelPath) -> ToolResult<Vec<Found>> {
        let listing = self.ns.list_dir(dir).await.during(show(dir))?;
        listing
            .iter()
            .map(|(name, info)| {
                Ok(Found {
                    path: dir.join(name)?,
                    info: info.clone(),
                })
            })
            .collect()
    }

    /// The entries with their POSIX metadata (mode, owner, mtime): a HEAD for each entry the
    /// listing could not describe, `HEADS_PARALLEL` at once.
    pub async fn described(&self, found: Vec<Found>) -> ToolResult<Vec<Found>> {
        stream::iter(found)
            .map(|f| async move {
                if f.info.full {
                    return Ok(f);
                }
                let info = self.stat(&f.path).await?;
                Ok(Found { path: f.path, info })
            })
            .buffered(HEADS_PARALLEL)
            .try_collect()
            .await
    }

    /// `path` and everything below it, depth first, each directory's entries in name order.
    /// The namespace lists a whole subtree at once once it sees a walk (one LIST per prefix).
    pub async fn walk(&self, path: &RelPath) -> ToolResult<Vec<Found>> {
        let info = self.stat(path).await?;
        let mut out = vec![Found {
            path: path.clone(),
            info,
        }];
        let mut i = 0;
        while i < out.len() {
            if out[i].info.kind == Kind::Dir {
                let below = self.list(&out[i].path).await?;
                out.splice(i + 1..i + 1, below);
            }
            i += 1;
        }
        Ok(out)
    }

    /// Writes file `path` (as `info` describes it) to `out`: ranged GETs, several in flight,
    /// written in order, each only of the version `info` names (a file replaced meanwhile
    /// fails the read instead of mixing two versions).
    pub async fn read_to(&self, path: &RelPath, info: &EntryInfo, out: &mut dyn Write) -> ToolResult<()> {
        let (size, version) = (info.size, info.version());
        let key = self.layout.file_key(path)?;
        let ranges: Vec<std::ops::Range<u64>> = (0..size.div_ceil(CHUNK).max(1))
            .map(|i| i * CHUNK..((i + 1) * CHUNK).min(size))
            .collect();
        let mut chunks = stream::iter(ranges)
            .map(|r| {
                let (store, key) = (&self.store, &key);
                async move {
                    let range = (size > 0).then_some(r);
                    store.get(key, range, version).await.during(show(path))
                }
            })
            .buffered(FILE_PARALLEL);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            local_io(|| out.write_all(&chunk))
                .map_err(ToolError::Output)
                .during(show(path))?;
        }
        Ok(())
    }

    /// Copies bucket file `path` to local `dest`, with its mode and mtime when stored.
    async fn download(&self, path: &RelPath, info: &EntryInfo, dest: &Path) -> ToolResult<()> {
        let mut file = std::fs::File::create(dest).map_err(ToolError::local(dest))?;
        self.read_to(path, info, &mut file).await?;
        if let Some(mode) = info.posix.mode {
            use std::os::unix::fs::PermissionsExt;
            let _ = file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777));
        }
        file.set_modified(info.mtime).map_err(ToolError::local(dest))?;
        Ok(())
    }

    /// Copies local file `src` to bucket path `path` (one PUT, or a multipart upload with
    /// parts in parallel), with its mode and mtime as POSIX metadata.
    async fn upload(&self, src: &Path, path: &RelPath) -> ToolResult<u64> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let key = self.layout.file_key(path)?;
        let mut file = std::fs::File::open(src).map_err(ToolError::local(src))?;
        let meta = file.metadata().map_err(ToolError::local(src))?;
        let posix = Posix {
            mode: Some(meta.mode()),
            uid: Some(meta.uid()),
            gid: Some(meta.gid()),
            mtime: meta.modified().ok(),
            ..Default::default()
        };
        let mut up = Upload::new(self.store.clone(), key, posix.to_meta(), CHUNK as usize, FILE_PARALLEL);
        let mut buf = vec![0u8; CHUNK as usize];
        let mut offset = 0u64;
        loop {
            let n = local_io(|| file.read(&mut buf)).map_err(ToolError::local(src))?;
            if n == 0 {
                break;
            }
            up.write(offset, &buf[..n]).await.during(show(path))?;
            offset += n as u64;
        }
        up.finish(None).await.during(show(path))?;
        Ok(offset)
    }

    /// An empty directory marker at `path`, as `mkdir` through a mount writes it.
    async fn mkdir(&self, path: &RelPath, mode: u32) -> ToolResult<()> {
        let key = self.layout.dir_marker_key(path)?;
        let posix = Posix {
            mode: Some(libc::S_IFDIR | (mode & 0o7777)),
            ..Default::default()
        };
        self.store
            .put(&key, bytes::Bytes::new(), &posix.to_meta())
            .await
            .during(show(path))
    }

    /// `cp [-r] s3://.../PATH LOCAL`: returns the files and bytes copied.
    pub async fn copy_out(
        &self,
        path: &RelPath,
        dest: &Path,
        recursive: bool,
        progress: &dyn Progress,
    ) -> ToolResult<(u64, u64)> {
        let info = self.stat(path).await?;
        let dest = if dest.is_dir() {
            dest.join(if path.is_root() { "." } else { path.name() })
        } else {
            dest.to_path_buf()
        };
        if info.kind != Kind::Dir {
            progress.phase("copying", 1, info.size);
            self.download(path, &info, &dest).await?;
            progress.advance(1, info.size);
            progress.done();
            return Ok((1, info.size));
        }
        if !recursive {
            return Err(ToolError::path(show(path), PathProblem::IsDir { hint: " (use -r)" }));
        }
        let tree = self.walk(path).await?;
        let base = path.as_str().len();
        let local = |p: &RelPath| {
            let rel = p.as_str()[base..].trim_start_matches('/');
            if rel.is_empty() { dest.clone() } else { dest.join(rel) }
        };
        for d in tree.iter().filter(|f| f.info.kind == Kind::Dir) {
            std::fs::create_dir_all(local(&d.path)).map_err(ToolError::local(local(&d.path)))?;
        }
        let files = self
            .described(tree.into_iter().filter(|f| f.info.kind != Kind::Dir).collect())
            .await?;
        let bytes = files.iter().map(|f| f.info.size).sum();
        progress.phase("copying", files.len() as u64, bytes);
        stream::iter(files.iter())
            .map(|f| async move {
                self.download(&f.path, &f.info, &local(&f.path)).await?;
                progress.advance(1, f.info.size);
                Ok::<_, ToolError>(())
            })
            .buffer_unordered(FILES_PARALLEL)
            .try_collect::<()>()
            .await?;
        progress.done();
        Ok((files.len() as u64, bytes))
    }

    /// `cp [-r] LOCAL s3://.../PATH`: returns the files and bytes copied.
    pub async fn copy_in(
        &self,
        src: &Path,
        path: &RelPath,
        recursive: bool,
        progress: &dyn Progress,
    ) -> ToolResult<(u64, u64)> {
        let name = src
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ToolError::path(src.display(), PathProblem::NoName))?;
        let target = match self.ns.stat(path).await? {
            Some(i) if i.kind == Kind::Dir => path.join(name)?,
            _ => path.clone(),
        };
        let meta = std::fs::metadata(src).map_err(ToolError::local(src))?;
        if !meta.is_dir() {
            progress.phase("copying", 1, meta.len());
            let n = self.upload(src, &target).await?;
            progress.advance(1, n);
            progress.done();
            return Ok((1, n));
        }
        if !recursive {
            return Err(ToolError::path(src.display(), PathProblem::IsDir { hint: " (use -r)" }));
        }
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        local_tree(src, &target, &mut dirs, &mut files)?;
        // The directories' markers (as mkdir through a mount writes them), in parallel.
        stream::iter(dirs.iter())
            .map(|(local, p)| {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(local)
                    .map(|m| m.permissions().mode())
                    .unwrap_or(0o755);
                self.mkdir(p, mode)
            })
            .buffer_unordered(FILES_PARALLEL)
            .try_collect::<()>()
            .await?;
        let total = files
            .iter()
            .map(|(local, _)| std::fs::metadata(local).map(|m| m.len()).unwrap_or(0))
            .sum();
        progress.phase("copying", files.len() as u64, total);
        let bytes: u64 = stream::iter(files.iter())
            .map(|(local, p)| async move {
                let n = self.upload(local, p).await?;
                progress.advance(1, n);
                Ok::<_, ToolError>(n)
            })
            .buffer_unordered(FILES_PARALLEL)
            .try_fold(0, |a, n| async move { Ok(a + n) })
            .await?;
        progress.done();
        Ok((files.len() as u64, bytes))
    }
}

/// The directories and files below local `dir`, paired with their bucket paths under `at`.
fn local_tree(
    dir: &Path,
    at: &RelPath,
    dirs: &mut Vec<(PathBuf, RelPath)>,
    files: &mut Vec<(PathBuf, RelPath)>,
) -> ToolResult<()> {
    dirs.push((dir.to_path_buf(), at.clone()));
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(ToolError::local(dir))?
        .collect::<Result<_, _>>()
        .map_err(ToolError::local(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| ToolError::path(e.path().display(), PathProblem::NotUtf8))?;
        let p = at.join(name).during(e.path().display())?;
        let kind = e.file_type().map_err(ToolError::local(e.path()))?;
        if kind.is_dir() {
            local_tree(&e.path(), &p, dirs, files)?;
        } else if kind.is_file() {
            files.push((e.path(), p));
        } else {
            tracing::warn!(path = %e.path().display(), "not a regular file or directory: skipped");
        }
    }
    Ok(())
}

/// A path as the commands print it: `.` for the root.
pub fn show(p: &RelPath) -> &str {
    if p.is_root() { "." } else { p.as_str() }
}

/// `ls -l`'s line for an entry: type and permissions, size, mtime, name.
pub fn long_line(f: &Found, name: &str) -> String {
    let (t, default) = match f.info.kind {
        Kind::Dir => ('d', 0o755),
        Kind::Symlink => ('l', 0o777),
        Kind::File => ('-', 0o644),
    };
    let mode = f.info.posix.mode.map(|m| m & 0o7777).unwrap_or(default);
    let mut perm = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        perm.push(if bits & 4 != 0 { 'r' } else { '-' });
        perm.push(if bits & 2 != 0 { 'w' } else { '-' });
        perm.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let when = time::OffsetDateTime::from(f.info.mtime);
    format!(
        "{t}{perm} {:>12} {:04}-{:02}-{:02} {:02}:{:02} {name}",
        f.info.size,
        when.year(),
        u8::from(when.month()),
        when.day(),
        when.hour(),
        when.minute()
    )
}

/// Whether `name` matches the shell pattern `pattern` (`*`, `?`, `[...]`), as `find -name`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let (Ok(p), Ok(n)) = (std::ffi::CString::new(pattern), std::ffi::CString::new(name)) else {
        return false;
    };
    // SAFETY: both are valid NUL-terminated strings for the duration of the call.
    unsafe { libc::fnmatch(p.as_ptr(), n.as_ptr(), 0) == 0 }
}

/// Runs `f`, a read or write of a local file or of standard output, without holding up the
/// runtime's other tasks (the S3 requests of the parts and files in flight) while it blocks:
/// a cold disk or a slow pipe reader can take milliseconds per call.
fn local_io<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Finds the layout a `s3://BUCKET/REST` target lies in: the shallowest prefix of REST that
/// holds a layout descriptor (one GET per level tried), or `root` when given. Returns the
/// layout's root and the path below it.
pub async fn split_target(store: &dyn ObjectStore, rest: &str, root: Option<&str>) -> ToolResult<(String, RelPath)> {
    let rest = rest.trim_matches('/');
    let path_below = |root: &str| -> ToolResult<RelPath> {
        let below = if root.is_empty() {
            Some(rest)
        } else if rest == root {
            Some("")
        } else {
            rest.strip_prefix(root).and_then(|r| r.strip_prefix('/'))
        };
        let below = below.ok_or_else(|| ToolError::path(rest, PathProblem::NotBelow { root: root.into() }))?;
        Ok(RelPath::parse(below)?)
    };
    if let Some(root) = root {
        let root = root.trim_matches('/');
        return Ok((root.to_string(), path_below(root)?));
    }
    let segments: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    for n in 0..=segments.len() {
        let root = segments[..n].join("/");
        if crate::bucket::read_descriptor(store, &root).await?.is_some() {
            return Ok((root.clone(), path_below(&root)?));
        }
    }
    Err(ToolError::path(format!("s3://…/{rest}"), PathProblem::NoLayout))
}

/// `ls [-l] [-R]`.
pub async fn ls(b: &Bucket, path: &RelPath, long: bool, recursive: bool, out: &mut dyn Write) -> ToolResult<()> {
    let info = b.stat(path).await?;
    let line = |f: &Found, name: &str| if long { long_line(f, name) } else { name.to_string() };
    let io = ToolError::Output;
    if info.kind != Kind::Dir {
        let f = Found {
            path: path.clone(),
            info,
        };
        return writeln!(out, "{}", line(&f, show(path))).map_err(io);
    }
    let dirs = if recursive {
        b.walk(path)
            .await?
            .into_iter()
            .filter(|f| f.info.kind == Kind::Dir)
            .collect()
    } else {
        vec![Found {
            path: path.clone(),
            info,
        }]
    };
    for (i, d) in dirs.iter().enumerate() {
        if recursive {
            if i > 0 {
                writeln!(out).map_err(io)?;
            }
            writeln!(out, "{}:", show(&d.path)).map_err(io)?;
        }
        let entries = b.list(&d.path).await?;
        let entries = if long { b.described(entries).await? } else { entries };
        for f in entries {
            writeln!(out, "{}", line(&f, f.path.name())).map_err(io)?;
        }
    }
    Ok(())
}

/// `du [-s]`: apparent bytes of every directory below `path` (children first), or only the
/// total.
pub async fn du(b: &Bucket, path: &RelPath, summarize: bool, out: &mut dyn Write) -> ToolResult<()> {
    let tree = b.walk(path).await?;
    let mut totals: std::collections::BTreeMap<RelPath, u64> = std::collections::BTreeMap::new();
    for f in &tree {
        if f.info.kind == Kind::Dir {
            totals.entry(f.path.clone()).or_default();
            continue;
        }
        let mut p = f.path.parent();
        while let Some(d) = p {
            if !d.starts_with(path) {
                break;
            }
            *totals.entry(d.clone()).or_default() += f.info.size;
            if d == *path {
                break;
            }
            p = d.parent();
        }
    }
    let io = ToolError::Output;
    if tree.len() == 1 && tree[0].info.kind != Kind::Dir {
        return writeln!(out, "{}\t{}", tree[0].info.size, show(path)).map_err(io);
    }
    if !summarize {
        // Deepest first, as du prints.
        let mut dirs: Vec<(&RelPath, &u64)> = totals.iter().filter(|(d, _)| *d != path).collect();
        dirs.sort_by(|a, b| {
            b.0.as_str()
                .matches('/')
                .count()
                .cmp(&a.0.as_str().matches('/').count())
                .then(a.0.cmp(b.0))
        });
        for (d, n) in dirs {
            writeln!(out, "{n}\t{}", show(d)).map_err(io)?;
        }
    }
    writeln!(out, "{}\t{}", totals.get(path).copied().unwrap_or(0), show(path)).map_err(io)
}

/// `find [-name PATTERN] [-type f|d]`.
pub async fn find(
    b: &Bucket,
    path: &RelPath,
    name: Option<&str>,
    kind: Option<char>,
    out: &mut dyn Write,
) -> ToolResult<()> {
    for f in b.walk(path).await? {
        let fname = if f.path.is_root() { "." } else { f.path.name() };
        let type_ok = match kind {
            Some('d') => f.info.kind == Kind::Dir,
            Some('f') => f.info.kind == Kind::File,
            Some('l') => f.info.kind == Kind::Symlink,
            _ => true,
        };
        if type_ok && name.is_none_or(|p| name_matches(p, fname)) {
            writeln!(out, "{}", show(&f.path)).map_err(ToolError::Output)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_names_match_like_the_shell() {
        assert!(name_matches("*.log", "f000.log"));
        assert!(name_matches("f0?[0-9].log", "f001.log"));
        assert!(!name_matches("*.log", "f000.txt"));
    }
}
