//! The embedded server's object store: a flat key namespace on a local directory.
//!
//! Unlike `s3s-fs`, keys are not mapped to paths: every object is one file named by the
//! SHA-256 of its key, so `x/`, `f` beside `f/g`, and any other S3 key are all storable.
//! Invariants:
//! - An object file holds the body, then a JSON trailer (key, size, ETag, mtime, user
//!   metadata), then the trailer's length and a magic; body and metadata are written together
//!   to a temporary file and renamed into place, so a write is atomic.
//! - The in-memory index (`BTreeMap` per bucket) is rebuilt from the files on start and
//!   updated under the bucket lock together with the rename, so listings are strongly
//!   consistent with reads, as on S3.
//! - Multipart uploads live under `uploads/<id>/` until completed or aborted, and survive a
//!   restart (ListMultipartUploads finds them).

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 8] = b"PFSOBJ01";
/// S3's minimum size of every part but the last.
pub use crate::limits::MIN_PART as MIN_PART_SIZE;

/// What a store operation can fail with, mapped to S3 error codes by the protocol layer.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("no such bucket")]
    NoSuchBucket,
    #[error("bucket already exists")]
    BucketExists,
    #[error("bucket not empty")]
    BucketNotEmpty,
    #[error("no such key")]
    NoSuchKey,
    #[error("no such upload")]
    NoSuchUpload,
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("invalid part: {0}")]
    InvalidPart(String),
    #[error("part too small")]
    EntityTooSmall,
    /// A copy (CopyObject, or one UploadPartCopy part) of more bytes than the server copies
    /// in one request.
    #[error("copy source larger than {0} bytes")]
    CopyTooLarge(u64),
    /// A checksum that does not match the bytes it was sent with.
    #[error("the checksum does not match the data")]
    BadDigest,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

pub type DiskResult<T> = Result<T, DiskError>;

/// An object's metadata, as kept in its trailer and in the index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub mtime_ns: u64,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub content_type: Option<String>,
    /// The tags, as `x-amz-tagging` carries them (`k=v&k2=v2`).
    #[serde(default)]
    pub tagging: Option<String>,
    /// The storage class the write named (None: STANDARD).
    #[serde(default)]
    pub storage_class: Option<String>,
    #[serde(default)]
    pub sse: Option<Sse>,
    #[serde(default)]
    pub checksum: Option<ObjectChecksum>,
}

/// What an object carries besides its bytes: user metadata, Content-Type, tags, its
/// encryption and checksum.
#[derive(Debug, Clone, Default)]
pub struct Attrs {
    pub meta: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub tagging: Option<String>,
    pub storage_class: Option<String>,
    pub sse: Option<Sse>,
    pub checksum: Option<ObjectChecksum>,
}

/// How the write said to encrypt an object: S3 answers it on every GET and HEAD, and an
/// SSE-C object is read only with its key (kept, as S3 keeps it, by its MD5 alone). The
/// bytes on this disk are not encrypted: the store is private to its user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sse {
    /// `aws:kms`, `aws:kms:dsse`, `AES256`; for SSE-C, the customer algorithm (`AES256`).
    pub algorithm: String,
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// SSE-C: the base64 MD5 of the customer's key.
    #[serde(default)]
    pub customer_key_md5: Option<String>,
}

/// An object's checksum, as S3 keeps it: the algorithm's name (`CRC32C`, ...), the base64
/// value (`…-N` for a composite one), and whether it covers the whole object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectChecksum {
    pub algorithm: String,
    pub value: String,
    pub full_object: bool,
}

impl Entry {
    pub fn modified(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.mtime_ns)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upload {
    pub id: String,
    pub key: String,
    pub initiated_ns: u64,
    pub meta: BTreeMap<String, String>,
    pub content_type: Option<String>,
    #[serde(default)]
    pub tagging: Option<String>,
    #[serde(default)]
    pub storage_class: Option<String>,
    #[serde(default)]
    pub sse: Option<Sse>,
    /// The checksum algorithm the upload was created with, and whether its object's checksum
    /// is a full-object one (else composite).
    #[serde(default)]
    pub checksum: Option<(String, bool)>,
}

pub struct DiskStore {
    root: PathBuf,
    buckets: RwLock<BTreeMap<String, Arc<Bucket>>>,
}

pub struct Bucket {
    dir: PathBuf,
    pub created: SystemTime,
    index: RwLock<BTreeMap<String, Entry>>,
    uploads: Mutex<BTreeMap<String, Upload>>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

impl DiskStore {
    /// Opens (creating if needed) a store rooted at `root`, loading every bucket's index.
    pub fn open(root: &Path) -> io::Result<DiskStore> {
        fs::create_dir_all(root)?;
        let mut buckets = BTreeMap::new();
        for entry in fs::read_dir(root)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            buckets.insert(name, Arc::new(Bucket::load(entry.path())?));
        }
        Ok(DiskStore {
            root: root.to_path_buf(),
            buckets: RwLock::new(buckets),
        })
    }

    pub fn create_bucket(&self, name: &str) -> DiskResult<()> {
        let mut buckets = write_lock(&self.buckets);
        if buckets.contains_key(name) {
            return Err(DiskError::BucketExists);
        }
        let dir = self.root.join(name);
        fs::create_dir_all(&dir)?;
        buckets.insert(name.to_string(), Arc::new(Bucket::load(dir)?));
        Ok(())
    }

    pub fn delete_bucket(&self, name: &str) -> DiskResult<()> {
        let mut buckets = write_lock(&self.buckets);
        let b = buckets.get(name).ok_or(DiskError::NoSuchBucket)?;
        if !read_lock(&b.index).is_empty() {
            return Err(DiskError::BucketNotEmpty);
        }
        fs::remove_dir_all(&b.dir)?;
        buckets.remove(name);
        Ok(())
    }

    pub fn bucket(&self, name: &str) -> DiskResult<Arc<Bucket>> {
        read_lock(&self.buckets)
            .get(name)
            .cloned()
            .ok_or(DiskError::NoSuchBucket)
    }

    pub fn bucket_names(&self) -> Vec<(String, SystemTime)> {
        read_lock(&self.buckets)
            .iter()
            .map(|(n, b)| (n.clone(), b.created))
            .collect()
    }
}

/// Where the listing resumes: strictly after a key, or after everything under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    AfterKey(String),
    AfterPrefix(String),
}

impl Resume {
    pub fn encode(&self) -> String {
        match self {
            Resume::AfterKey(k) => format!("k{}", hex::encode(k)),
            Resume::AfterPrefix(p) => format!("p{}", hex::encode(p)),
        }
    }

    pub fn decode(token: &str) -> Option<Resume> {
        let (tag, rest) = token.split_at_checked(1)?;
        let s = String::from_utf8(hex::decode(rest).ok()?).ok()?;
        match tag {
            "k" => Some(Resume::AfterKey(s)),
            "p" => Some(Resume::AfterPrefix(s)),
            _ => None,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Listing {
    pub objects: Vec<Entry>,
    pub prefixes: Vec<String>,
    pub next: Option<Resume>,
}

/// Conditions S3 checks on a write, against the current object.
#[derive(Debug, Default, Clone)]
pub struct WriteCondition {
    /// `If-None-Match: *`: fail if the key exists.
    pub if_none_match_any: bool,
    /// `If-Match: etag`: fail unless the current ETag matches.
    pub if_match: Option<String>,
}

impl Bucket {
    fn load(dir: PathBuf) -> io::Result<Bucket> {
        for sub in ["objects", "tmp", "uploads"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        for e in fs::read_dir(dir.join("tmp"))? {
            let _ = fs::remove_file(e?.path());
        }
        let mut index = BTreeMap::new();
        for shard in fs::read_dir(dir.join("objects"))? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(shard.path())? {
                let path = f?.path();
                match File::open(&path).and_then(|mut f| read_trailer(&mut f)) {
                    Ok(entry) => {
                        index.insert(entry.key.clone(), entry);
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "skipping unreadable object file")
                    }
                }
            }
        }
        let mut uploads = BTreeMap::new();
        for u in fs::read_dir(dir.join("uploads"))? {
            let p = u?.path().join("upload.json");
            if let Ok(text) = fs::read(&p)
                && let Ok(up) = serde_json::from_slice::<Upload>(&text)
            {
                uploads.insert(up.id.clone(), up);
            }
        }
        let created = fs::metadata(&dir)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        Ok(Bucket {
            dir,
            created,
            index: RwLock::new(index),
            uploads: Mutex::new(uploads),
        })
    }

    fn object_path(&self, key: &str) -> PathBuf {
        let h = hex::encode(Sha256::digest(key.as_bytes()));
        self.dir.join("objects").join(&h[..2]).join(&h)
    }

    pub fn stage(&self) -> io::Result<Staged> {
        let path = self.dir.join("tmp").join(uuid::Uuid::new_v4().to_string());
        let file = File::create(&path)?;
        Ok(Staged {
            path,
            file,
            md5: Md5::new(),
            size: 0,
        })
    }

    /// Commits a staged body as `key`, checking `cond` atomically with the replacement.
    pub fn commit(
        &self,
        mut staged: Staged,
        key: &str,
        etag: Option<String>,
        attrs: Attrs,
        cond: &WriteCondition,
    ) -> DiskResult<Entry> {
        let md5 = staged.finish_md5();
        let entry = Entry {
            key: key.to_string(),
            size: staged.size,
            etag: etag.unwrap_or_else(|| hex::encode(md5)),
            mtime_ns: now_ns(),
            meta: attrs.meta,
            content_type: attrs.content_type,
            tagging: attrs.tagging,
            storage_class: attrs.storage_class,
            sse: attrs.sse,
            checksum: attrs.checksum,
        };
        write_trailer(&mut staged.file, &entry)?;
        let dst = self.object_path(key);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut index = write_lock(&self.index);
        let current = index.get(key);
        if cond.if_none_match_any && current.is_some() {
            return Err(DiskError::PreconditionFailed);
        }
        if let Some(want) = &cond.if_match {
            match current {
                Some(c) if etag_eq(&c.etag, want) => {}
                _ => return Err(DiskError::PreconditionFailed),
            }
        }
        fs::rename(&staged.path, &dst)?;
        index.insert(key.to_string(), entry.clone());
        Ok(entry)
    }

    pub fn lookup(&self, key: &str) -> Option<Entry> {
        read_lock(&self.index).get(key).cloned()
    }

    /// Opens an object for reading: the file positioned at the start of the body, and the
    /// entry read from the file itself (so a concurrent replacement cannot mix versions).
    pub fn open(&self, key: &str) -> DiskResult<(File, Entry)> {
        let mut f = match File::open(self.object_path(key)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(DiskError::NoSuchKey),
            Err(e) => return Err(e.into()),
        };
        let entry = read_trailer(&mut f)?;
        if entry.key != key {
            return Err(DiskError::NoSuchKey);
        }
        f.seek(SeekFrom::Start(0))?;
        Ok((f, entry))
    }

    pub fn delete(&self, key: &str, if_match: Option<&str>) -> DiskResult<()> {
        let mut index = write_lock(&self.index);
        // S3: a conditional delete of a key that holds nothing answers NoSuchKey; one that
        // holds another version, PreconditionFailed.
        if let Some(want) = if_match {
            match index.get(key) {
                Some(c) if etag_eq(&c.etag, want) => {}
                Some(_) => return Err(DiskError::PreconditionFailed),
                None => return Err(DiskError::NoSuchKey),
            }
        }
        if index.remove(key).is_some() {
            match fs::remove_file(self.object_path(key)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        read_lock(&self.index).is_empty()
    }

    /// ListObjectsV2 over the index: keys under `prefix`, strictly after `resume`, rolled up
    /// at the first `delimiter` after the prefix, at most `max` items (objects + prefixes).
    pub fn list(&self, prefix: &str, delimiter: Option<&str>, resume: Option<Resume>, max: usize) -> Listing {
        use std::ops::Bound;
        let index = read_lock(&self.index);
        let mut out = Listing::default();
        let mut lower: Bound<String> = Bound::Included(prefix.to_string());
        match &resume {
            Some(Resume::AfterKey(k)) if k.as_str() >= prefix => lower = Bound::Excluded(k.clone()),
            Some(Resume::AfterPrefix(p)) if p.as_str() >= prefix => lower = prefix_successor(p),
            _ => {}
        }
        let mut count = 0;
        loop {
            let mut range = index.range::<String, _>((lower.clone(), Bound::Unbounded));
            let Some((key, entry)) = range.next() else {
                break;
            };
            if !key.starts_with(prefix) {
                break;
            }
            let rolled = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                key[prefix.len()..]
                    .find(d)
                    .map(|i| key[..prefix.len() + i + d.len()].to_string())
            });
            if count == max {
                out.next = match (out.objects.last(), out.prefixes.last()) {
                    (Some(o), Some(p)) if o.key > *p => Some(Resume::AfterKey(o.key.clone())),
                    (_, Some(p)) => Some(Resume::AfterPrefix(p.clone())),
                    (Some(o), None) => Some(Resume::AfterKey(o.key.clone())),
                    (None, None) => None,
                };
                break;
            }
            count += 1;
            match rolled {
                Some(cp) => {
                    lower = prefix_successor(&cp);
                    out.prefixes.push(cp);
                }
                None => {
                    lower = Bound::Excluded(key.clone());
                    out.objects.push(entry.clone());
                }
            }
        }
        out
    }

    /// Copies `range` (else the whole) of `src`'s body into a new staged body: at most
    /// `max` bytes, as S3 copies at most 5 GiB in one request.
    pub fn stage_copy(&self, src: &str, range: Option<std::ops::Range<u64>>, max: u64) -> DiskResult<(Staged, Entry)> {
        let (mut f, entry) = self.open(src)?;
        let r = range.unwrap_or(0..entry.size);
        if r.end > entry.size || r.start > r.end {
            return Err(DiskError::InvalidPart("copy range outside the source".into()));
        }
        if r.end - r.start > max {
            return Err(DiskError::CopyTooLarge(max));
        }
        f.seek(SeekFrom::Start(r.start))?;
        let mut staged = self.stage()?;
        copy_into(&mut f, &mut staged, r.end - r.start)?;
        Ok((staged, entry))
    }
}

/// The smallest bound above every key that starts with `p`.
fn prefix_successor(p: &str) -> std::ops::Bound<String> {
    use std::ops::Bound;
    let mut bytes = p.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            if let Ok(s) = String::from_utf8(bytes) {
                return Bound::Included(s);
            }
            break;
        }
    }
    // Non-ASCII tail: exclude the prefix followed by the highest char, close enough.
    Bound::Excluded(format!("{p}\u{10FFFF}"))
}

pub fn etag_eq(a: &str, b: &str) -> bool {
    a.trim().trim_matches('"') == b.trim().trim_matches('"')
}

fn write_trailer(f: &mut File, entry: &Entry) -> io::Result<()> {
    let json = serde_json::to_vec(entry).map_err(io::Error::other)?;
    f.write_all(&json)?;
    f.write_all(&(json.len() as u64).to_le_bytes())?;
    f.write_all(MAGIC)?;
    f.flush()
}

fn read_trailer(f: &mut File) -> io::Result<Entry> {
    let len = f.metadata()?.len();
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a prefixfs object file");
    if len < 16 {
        return Err(bad());
    }
    f.seek(SeekFrom::Start(len - 16))?;
    let mut tail = [0u8; 16];
    f.read_exact(&mut tail)?;
    if &tail[8..] != MAGIC {
        return Err(bad());
    }
    let json_len = u64::from_le_bytes(tail[..8].try_into().map_err(|_| bad())?);
    if json_len + 16 > len {
        return Err(bad());
    }
    f.seek(SeekFrom::Start(len - 16 - json_len))?;
    let mut json = vec![0u8; json_len as usize];
    f.read_exact(&mut json)?;
    let entry: Entry = serde_json::from_slice(&json).map_err(|_| bad())?;
    if entry.size != len - 16 - json_len {
        return Err(bad());
    }
    Ok(entry)
}

mod staged;
#[cfg(test)]
mod tests;
mod uploads;
use staged::copy_into;
pub use staged::{Staged, hasher};
pub use uploads::CompletedPartInfo;
