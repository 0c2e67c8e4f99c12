//! S3 access: the one small trait the filesystem needs, and its implementations.
//!
//! - [`ObjectStore`]: the operations prefixfs sends to S3, free of aws-sdk-s3 types so doubles
//!   and other backends stay simple. Errors are [`StoreError`], with a matchable `NotFound`.
//! - [`aws::AwsStore`]: the aws-sdk-s3 implementation (SDK retries disabled: ours count).
//! - [`retry::RetryingStore`]: backoff with full jitter on SlowDown/5xx/transport errors and
//!   per-kind request counters ([`stats::RequestStats`]).
//! - [`journal::JournalingStore`]: records the multipart uploads in flight, so the next mount
//!   aborts what a crash left behind.
//! - [`memory::MemoryStore`]: an in-memory double for unit tests of the layers above.

pub mod aws;
pub mod copy;
pub mod deferred;
pub mod delete;
mod error;
pub mod journal;
pub mod memory;
pub mod pacing;
pub mod retry;
pub mod stats;
pub mod urlenc;

pub use error::{DeleteFailure, OpKind, StoreError, StoreResult, Unreachable};

use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

/// Which partition a key is on: the label (the layout's `prefix_label`) that pacing,
/// delete interleaving and the per-prefix counters go by.
pub type PrefixFn = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Every key on one partition: for requests outside any layout (set-up, tests).
pub fn one_prefix() -> PrefixFn {
    Arc::new(|_: &str| String::new())
}

/// A key's first segment as its partition (`3/2017/...` → `3`): for tests of the layers that
/// work per prefix, without a layout.
#[cfg(test)]
pub fn first_segment() -> PrefixFn {
    Arc::new(|k: &str| k.split('/').next().unwrap_or("").to_string())
}

/// What a store stack is made of (see [`stack`]).
pub struct StackConfig {
    pub prefix: PrefixFn,
    pub pacing: pacing::PacingConfig,
    pub retry: retry::RetryConfig,
    pub deletes: Deletes,
}

/// How single-key deletes go out.
pub enum Deletes {
    /// At once, one request each (the bucket tools batch their own).
    Direct,
    /// Queued and batched ([`deferred`]); with a journal (a mount), so are the multipart
    /// uploads in flight, and a crash loses neither. The conditions are the server's (probed).
    Deferred(Option<Arc<journal::Journal>>, delete::DeleteConditions),
}

/// The store prefixfs talks to, its layers named once, innermost first: `base` (the SDK),
/// per-prefix pacing, retries, then the deferred deletes and the journal when asked for.
/// Pacing sits under the retries so that every attempt waits its prefix's turn.
pub fn stack<S: ObjectStore + 'static>(
    base: S,
    stats: &Arc<stats::RequestStats>,
    cfg: StackConfig,
) -> Arc<dyn ObjectStore> {
    let paced = pacing::PacedStore::new(base, cfg.pacing, stats.clone(), cfg.prefix.clone());
    let retrying: Arc<dyn ObjectStore> = Arc::new(retry::RetryingStore::new(
        paced,
        cfg.retry,
        stats.clone(),
        cfg.prefix.clone(),
    ));
    match cfg.deletes {
        Deletes::Direct => retrying,
        Deletes::Deferred(journal, conds) => {
            let deferred = Arc::new(deferred::DeferredDeletes::new(
                retrying,
                journal.clone(),
                cfg.prefix,
                conds,
            ));
            match journal {
                Some(j) => Arc::new(journal::JournalingStore::new(deferred, j)),
                None => deferred,
            }
        }
    }
}

/// The `impl ObjectStore` of a layer that wraps every request the same way (pacing,
/// retries): the ten calls that need nothing else go through `self.$around(kind, key, ||
/// self.inner.call(..))`, where `$around` may call the closure more than once (bodies are
/// `Bytes`, cloned per attempt); the layer writes out only the calls it treats apart
/// (`put_if`, `delete_many`, `complete_multipart_if`) in the braces. One expansion with no
/// macro inside it, so that `async_trait` sees every method.
macro_rules! around_each_call {
    (impl[$($gen:tt)*] for $ty:ty, $around:ident, { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl<$($gen)*> $crate::store::ObjectStore for $ty {
            async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
                self.$around(OpKind::Head, key, || self.inner.head(key)).await
            }

            async fn get(&self, key: &str, range: Option<Range<u64>>, version: Option<&str>) -> StoreResult<Bytes> {
                self.$around(OpKind::Get, key, || self.inner.get(key, range.clone(), version)).await
            }

            async fn delete(&self, key: &str, version: Option<&str>) -> StoreResult<()> {
                self.$around(OpKind::Delete, key, || self.inner.delete(key, version)).await
            }

            async fn list(
                &self,
                prefix: &str,
                delimiter: Option<&str>,
                token: Option<&str>,
                max_keys: Option<i32>,
            ) -> StoreResult<ListPage> {
                self.$around(OpKind::List, prefix, || self.inner.list(prefix, delimiter, token, max_keys))
                    .await
            }

            async fn copy(&self, c: &CopySpec<'_>) -> StoreResult<Option<String>> {
                self.$around(OpKind::Copy, c.dst, || self.inner.copy(c)).await
            }

            async fn create_multipart_with(
                &self,
                key: &str,
                meta: &UserMeta,
                headers: Option<&Headers>,
            ) -> StoreResult<String> {
                self.$around(OpKind::CreateMultipart, key, || self.inner.create_multipart_with(key, meta, headers))
                    .await
            }

            async fn upload_part(&self, key: &str, upload_id: &str, part: i32, body: Bytes) -> StoreResult<String> {
                self.$around(OpKind::UploadPart, key, || {
                    self.inner.upload_part(key, upload_id, part, body.clone())
                })
                .await
            }

            async fn upload_part_copy(
                &self,
                key: &str,
                upload_id: &str,
                part: i32,
                src: &str,
                range: Range<u64>,
                src_etag: Option<&str>,
            ) -> StoreResult<String> {
                self.$around(OpKind::UploadPartCopy, key, || {
                    self.inner.upload_part_copy(key, upload_id, part, src, range.clone(), src_etag)
                })
                .await
            }

            async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
                self.$around(OpKind::AbortMultipart, key, || self.inner.abort_multipart(key, upload_id))
                    .await
            }

            async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<UploadInfo>> {
                self.$around(OpKind::ListUploads, prefix, || self.inner.list_uploads(prefix))
                    .await
            }

            async fn get_tagging(&self, key: &str) -> StoreResult<Option<String>> {
                self.$around(OpKind::GetTagging, key, || self.inner.get_tagging(key)).await
            }

            $($own)*
        }
    };
}
pub(crate) use around_each_call;

/// User metadata (`x-amz-meta-*`, names without the prefix, lower case).
pub type UserMeta = BTreeMap<String, String>;

/// An object's ETag as S3 gave it (quotes included), kept inline so that the metadata
/// cache's entries stay `Copy`: the version a cached entry describes, named by every request
/// that acts on that version. Longer than any ETag S3 makes (a multipart one is 40 bytes
/// quoted); a longer one from another server is not kept, and that object's requests then
/// name no version.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ETag {
    len: u8,
    buf: [u8; ETag::MAX],
}

impl ETag {
    pub const MAX: usize = 62;

    pub fn new(s: &str) -> Option<ETag> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > Self::MAX {
            return None;
        }
        let mut buf = [0u8; Self::MAX];
        buf[..b.len()].copy_from_slice(b);
        Some(ETag {
            len: b.len() as u8,
            buf,
        })
    }

    pub fn of(s: Option<&str>) -> Option<ETag> {
        s.and_then(ETag::new)
    }

    pub fn as_str(&self) -> &str {
        // Made from a &str, cut nowhere else.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }

    /// The same version as `other` (S3 quotes ETags; some servers and clients do not).
    pub fn matches(&self, other: &str) -> bool {
        self.as_str().trim_matches('"') == other.trim_matches('"')
    }
}

impl std::fmt::Debug for ETag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

/// What HEAD (or a listing) says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
    pub etag: Option<String>,
    pub user_meta: UserMeta,
    /// The object's standard headers (HEAD only; a listing has none).
    pub headers: Headers,
}

/// The standard headers an object keeps that the mount does not own: a copy that replaces
/// the user metadata (a chmod, a touch) must send them again, or S3 drops them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    /// Absent for STANDARD (S3 leaves the header out then).
    pub storage_class: Option<String>,
    /// The object's tags, URL-encoded as `x-amz-tagging` carries them (`k=v&k2=v2`): sent
    /// with a PUT or CreateMultipartUpload (a rewrite keeps another client's tags), never
    /// with a copy (which keeps the source's tags). A HEAD does not tell them.
    pub tagging: Option<String>,
}

/// An object's storage class, small enough for every cache entry: S3's names, with
/// STANDARD (which S3 leaves out of its answers) the default. A class this table does not
/// know is taken for STANDARD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageClass(u8);

impl StorageClass {
    const NAMES: [&'static str; 11] = [
        "STANDARD",
        "REDUCED_REDUNDANCY",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER",
        "DEEP_ARCHIVE",
        "OUTPOSTS",
        "GLACIER_IR",
        "SNOW",
        "EXPRESS_ONEZONE",
    ];

    pub fn of(name: Option<&str>) -> StorageClass {
        let i = name.and_then(|n| Self::NAMES.iter().position(|k| *k == n)).unwrap_or(0);
        StorageClass(i as u8)
    }

    /// The class to ask for by name; None for STANDARD.
    pub fn name(self) -> Option<&'static str> {
        (self.0 != 0).then(|| Self::NAMES[self.0 as usize])
    }

    /// Headers that ask a copy for this class (S3 makes a copy STANDARD unless told), or
    /// None for STANDARD.
    pub fn copy_headers(self) -> Option<Headers> {
        self.name().map(|n| Headers {
            storage_class: Some(n.to_string()),
            ..Default::default()
        })
    }
}

/// A condition S3 checks before a write (conditional writes, 2024): the write fails with
/// [`StoreError::PreconditionFailed`] when it does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteIf {
    /// `If-None-Match: *`: no object at the key.
    Absent,
    /// `If-Match: ETAG`: the object at the key is still this one.
    Matches(String),
}

/// A key for DeleteObjects, with the version it removes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeleteTarget {
    pub key: String,
    /// `ETag` in the request's object identifier: S3 deletes the key only while it holds
    /// this version (else the key fails with `PreconditionFailed` and the object stays).
    pub etag: Option<String>,
}

impl DeleteTarget {
    /// Whatever the key holds: for keys no version was seen of (the bucket tools' own
    /// planted keys, a directory marker never fetched).
    pub fn any(key: impl Into<String>) -> Self {
        DeleteTarget {
            key: key.into(),
            etag: None,
        }
    }

    /// Only the version with this ETag.
    pub fn version(key: impl Into<String>, etag: Option<String>) -> Self {
        DeleteTarget { key: key.into(), etag }
    }
}

/// A server-side copy (CopyObject), naming the versions it acts on.
#[derive(Debug, Clone, Copy)]
pub struct CopySpec<'a> {
    pub src: &'a str,
    pub dst: &'a str,
    /// Copy only while `src` has this ETag (`x-amz-copy-source-if-match`).
    pub src_etag: Option<&'a str>,
    /// Write `dst` only if this holds (`If-None-Match: *` / `If-Match`).
    pub dst_if: Option<&'a WriteIf>,
    /// Replace the metadata with this (`REPLACE`); else it is copied with the object.
    pub meta: Option<&'a UserMeta>,
    /// With `meta`: the standard headers to keep (S3 drops what a REPLACE does not send).
    /// Without: only its storage class counts (a copy keeps the other headers, but S3 makes
    /// it STANDARD unless the request names a class).
    pub headers: Option<&'a Headers>,
}

impl<'a> CopySpec<'a> {
    /// A copy of whatever `src` holds onto whatever `dst` holds, metadata copied.
    pub fn new(src: &'a str, dst: &'a str) -> Self {
        CopySpec {
            src,
            dst,
            src_etag: None,
            dst_if: None,
            meta: None,
            headers: None,
        }
    }

    pub fn with_headers(mut self, headers: Option<&'a Headers>) -> Self {
        self.headers = headers;
        self
    }

    pub fn from_version(mut self, etag: Option<&'a str>) -> Self {
        self.src_etag = etag;
        self
    }

    pub fn only_if(mut self, cond: Option<&'a WriteIf>) -> Self {
        self.dst_if = cond;
        self
    }

    pub fn with_meta(mut self, meta: Option<&'a UserMeta>) -> Self {
        self.meta = meta;
        self
    }
}

/// One page of ListObjectsV2.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    pub common_prefixes: Vec<String>,
    pub next_token: Option<String>,
}

/// An incomplete multipart upload.
#[derive(Debug, Clone)]
pub struct UploadInfo {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// The ETag S3 gives an object made by CompleteMultipartUpload from parts with these ETags:
/// the MD5 of the parts' binary MD5s, then `-` and the part count. None when a part's ETag is
/// not a plain MD5 (SSE-KMS and SSE-C objects have other ETags).
pub fn multipart_etag<'a>(part_etags: impl IntoIterator<Item = &'a str>) -> Option<String> {
    use md5::{Digest, Md5};
    let mut md5s = Vec::new();
    let mut n = 0;
    for e in part_etags {
        let raw = hex::decode(receipt_etag(e).trim_matches('"'))
            .ok()
            .filter(|b| b.len() == 16)?;
        md5s.extend(raw);
        n += 1;
    }
    Some(format!("{}-{n}", hex::encode(Md5::digest(&md5s))))
}

/// The ETag of a part's receipt ([`ObjectStore::upload_part`]): a store may add what else
/// names the part (its checksum) after a newline, which no ETag holds.
pub fn receipt_etag(receipt: &str) -> &str {
    receipt.split('\n').next().unwrap_or(receipt)
}

/// The S3 operations the filesystem needs. Keys are full keys (the layout applied already).
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta>;
    /// GET of the whole object or of `range` (clamped to the object by the server); with
    /// `version` (an ETag), only of that version (`If-Match`): another one fails with
    /// PreconditionFailed, so a read never mixes two versions.
    async fn get(&self, key: &str, range: Option<Range<u64>>, version: Option<&str>) -> StoreResult<Bytes>;
    /// PUT with `meta` and the standard `headers` (when given), only if `cond` holds when
    /// one is given; the new object's ETag (when S3 gives one).
    async fn put_with(
        &self,
        key: &str,
        body: Bytes,
        meta: &UserMeta,
        headers: Option<&Headers>,
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>>;
    /// PUT, only if `cond` holds when one is given; the new object's ETag (when S3 gives one).
    async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        meta: &UserMeta,
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        self.put_with(key, body, meta, None, cond).await
    }
    async fn put(&self, key: &str, body: Bytes, meta: &UserMeta) -> StoreResult<()> {
        self.put_if(key, body, meta, None).await.map(|_| ())
    }
    /// The one call a layer may defer: a stack with [`Deletes::Deferred`] answers once the
    /// delete is queued (journalled when there is a journal) and hides the key from every
    /// later call of this store at once; [`ObjectStore::flush`] waits until it reached S3.
    /// Every other call has reached S3 when it returns. With `version` (an ETag), only that
    /// version is removed (`If-Match`): another one stays and the delete fails with
    /// PreconditionFailed. A key that holds nothing is deleted already (Ok).
    async fn delete(&self, key: &str, version: Option<&str>) -> StoreResult<()>;
    /// DeleteObjects of up to 1000 keys, each only at its version when it names one;
    /// returns the keys that failed, with their errors (`PreconditionFailed`: another
    /// version is there and stays).
    async fn delete_many(&self, targets: &[DeleteTarget]) -> StoreResult<Vec<DeleteFailure>>;
    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage>;
    /// The pages of the listing of `prefix`, one LIST each, in order, until the last: the
    /// continuation loop, written once. Stops at the first error.
    fn list_pages<'a>(
        &'a self,
        prefix: &'a str,
        delimiter: Option<&'a str>,
    ) -> futures::stream::BoxStream<'a, StoreResult<ListPage>> {
        use futures::StreamExt;
        // The state: the token of the next page (None for the first), or None when done.
        futures::stream::try_unfold(Some(None::<String>), move |next| async move {
            let Some(token) = next else { return Ok(None) };
            let page = self.list(prefix, delimiter, token.as_deref(), None).await?;
            let after = page.next_token.clone().map(Some);
            Ok(Some((page, after)))
        })
        .boxed()
    }
    /// Every object (and, with a delimiter, common prefix) under `prefix`, all pages.
    async fn list_all(&self, prefix: &str, delimiter: Option<&str>) -> StoreResult<(Vec<ObjectMeta>, Vec<String>)> {
        use futures::TryStreamExt;
        let (mut objects, mut dirs) = (Vec::new(), Vec::new());
        let mut pages = self.list_pages(prefix, delimiter);
        while let Some(page) = pages.try_next().await? {
            objects.extend(page.objects);
            dirs.extend(page.common_prefixes);
        }
        Ok((objects, dirs))
    }
    /// Server-side copy of a whole object (CopyObject) under the conditions `c` names:
    /// metadata copied with it, or replaced by `c.meta`.
    async fn copy(&self, c: &CopySpec<'_>) -> StoreResult<Option<String>>;
    /// CreateMultipartUpload: the object will have `meta` and the standard `headers`.
    async fn create_multipart_with(&self, key: &str, meta: &UserMeta, headers: Option<&Headers>)
    -> StoreResult<String>;
    async fn create_multipart(&self, key: &str, meta: &UserMeta) -> StoreResult<String> {
        self.create_multipart_with(key, meta, None).await
    }
    /// UploadPart: the part's receipt, which the completion is handed back as it is (its
    /// ETag, and whatever else the store needs to name the part: the part's checksum).
    async fn upload_part(&self, key: &str, upload_id: &str, part: i32, body: Bytes) -> StoreResult<String>;
    /// UploadPartCopy (its receipt, as [`ObjectStore::upload_part`]): part `part` is bytes `range` of the object `src`, copied server-side;
    /// with `src_etag`, only while `src` still has that ETag (else PreconditionFailed), so
    /// that the parts of one copy all come from one version of the source.
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part: i32,
        src: &str,
        range: Range<u64>,
        src_etag: Option<&str>,
    ) -> StoreResult<String>;
    /// CompleteMultipartUpload, only if `cond` holds when one is given; the new object's
    /// ETag (when S3 gives one).
    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>>;
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> StoreResult<Option<String>> {
        self.complete_multipart_if(key, upload_id, parts, None).await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()>;
    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<UploadInfo>>;
    /// GetObjectTagging: the object's tags, URL-encoded (`k=v&k2=v2`), or None when it has
    /// none.
    async fn get_tagging(&self, key: &str) -> StoreResult<Option<String>>;
    /// A barrier: work a layer deferred (queued deletes) has reached S3 when this returns.
    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }
    /// A reader holds the object at `key` open: a delete of it (an `unlink`) is acknowledged
    /// and hidden at once, but reaches S3 only after the last [`ObjectStore::unpin`], so
    /// reads that name its version keep working, as an unlinked file open on a local disk
    /// does. Only the layer that defers deletes acts on it.
    fn pin(&self, _key: &str) {}
    fn unpin(&self, _key: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_for_retries() {
        // S3 may answer CompleteMultipartUpload and CopyObject with 200 and an error body;
        // the SDK surfaces those as errors with status 200, and they must be retried.
        assert!(StoreError::from_response("complete_multipart", "k", 200, "SlowDown", "").is_throttle());
        assert!(StoreError::from_response("copy", "k", 200, "InternalError", "").is_retryable());
        assert!(StoreError::from_response("complete_multipart", "k", 200, "", "").is_retryable());
        assert!(StoreError::from_response("put", "k", 503, "SlowDown", "").is_throttle());
        assert!(StoreError::from_response("get", "k", 404, "NoSuchKey", "").is_not_found());
        assert!(!StoreError::from_response("get", "k", 404, "NoSuchBucket", "").is_not_found());
        assert!(!StoreError::from_response("put", "k", 403, "AccessDenied", "").is_retryable());
    }
}
