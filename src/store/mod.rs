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
pub mod journal;
pub mod memory;
pub mod pacing;
pub mod retry;
pub mod stats;

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
    /// uploads in flight, and a crash loses neither.
    Deferred(Option<Arc<journal::Journal>>),
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
        Deletes::Deferred(journal) => {
            let deferred = Arc::new(deferred::DeferredDeletes::new(retrying, journal.clone(), cfg.prefix));
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

            async fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes> {
                self.$around(OpKind::Get, key, || self.inner.get(key, range.clone())).await
            }

            async fn delete(&self, key: &str) -> StoreResult<()> {
                self.$around(OpKind::Delete, key, || self.inner.delete(key)).await
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

            async fn copy(&self, src: &str, dst: &str, meta: Option<&UserMeta>) -> StoreResult<()> {
                self.$around(OpKind::Copy, dst, || self.inner.copy(src, dst, meta)).await
            }

            async fn create_multipart(&self, key: &str, meta: &UserMeta) -> StoreResult<String> {
                self.$around(OpKind::CreateMultipart, key, || self.inner.create_multipart(key, meta))
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

            $($own)*
        }
    };
}
pub(crate) use around_each_call;

/// User metadata (`x-amz-meta-*`, names without the prefix, lower case).
pub type UserMeta = BTreeMap<String, String>;

/// What HEAD (or a listing) says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
    pub etag: Option<String>,
    pub user_meta: UserMeta,
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

/// The kinds of request, for counters and for the retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Head,
    Get,
    Put,
    List,
    Delete,
    DeleteMany,
    Copy,
    CreateMultipart,
    UploadPart,
    UploadPartCopy,
    CompleteMultipart,
    AbortMultipart,
    ListUploads,
}

impl OpKind {
    pub const ALL: [OpKind; 13] = [
        OpKind::Head,
        OpKind::Get,
        OpKind::Put,
        OpKind::List,
        OpKind::Delete,
        OpKind::DeleteMany,
        OpKind::Copy,
        OpKind::CreateMultipart,
        OpKind::UploadPart,
        OpKind::UploadPartCopy,
        OpKind::CompleteMultipart,
        OpKind::AbortMultipart,
        OpKind::ListUploads,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Head => "head",
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::List => "list",
            OpKind::Delete => "delete",
            OpKind::DeleteMany => "delete_objects",
            OpKind::Copy => "copy",
            OpKind::CreateMultipart => "create_multipart",
            OpKind::UploadPart => "upload_part",
            OpKind::UploadPartCopy => "upload_part_copy",
            OpKind::CompleteMultipart => "complete_multipart",
            OpKind::AbortMultipart => "abort_multipart",
            OpKind::ListUploads => "list_uploads",
        }
    }

    pub fn index(self) -> usize {
        OpKind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// A failed request. `NotFound` is the one callers match on; the rest carry enough to log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {key}: not found")]
    NotFound { op: &'static str, key: String },
    #[error("{op} {key}: precondition failed")]
    PreconditionFailed { op: &'static str, key: String },
    #[error("{op} {key}: throttled (SlowDown)")]
    Throttled { op: &'static str, key: String },
    #[error("{op} {key}: server error {status} {code}: {message}")]
    Server {
        op: &'static str,
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{op} {key}: request rejected {status} {code}: {message}")]
    Client {
        op: &'static str,
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{op} {key}: transport error: {message}")]
    Transport {
        op: &'static str,
        key: String,
        message: String,
    },
    #[error(
        "{count} deletes not confirmed by S3 (first: {key}): {message}; they stay deleted in this mount and are tried again"
    )]
    DeletesUnconfirmed { key: String, count: usize, message: String },
    #[error("{op} {key}: gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        op: &'static str,
        key: String,
        attempts: u32,
        last: Box<StoreError>,
    },
}

impl StoreError {
    /// Errors worth another attempt: throttling, 5xx, broken connections.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Throttled { .. } | StoreError::Server { .. } | StoreError::Transport { .. }
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    pub fn is_throttle(&self) -> bool {
        matches!(self, StoreError::Throttled { .. })
    }

    /// S3 refusing a CopyObject whose source is larger than one copy may be (5 GiB).
    pub fn is_copy_too_large(&self) -> bool {
        matches!(self, StoreError::Client { code, message, .. }
            if code == "InvalidRequest" && message.contains("larger than the maximum allowable size"))
    }

    /// Classifies an S3 error response.
    pub fn from_response(op: &'static str, key: &str, status: u16, code: &str, message: &str) -> StoreError {
        let key = key.to_string();
        match (status, code) {
            (_, "NoSuchBucket") | (_, "NoSuchUpload") => StoreError::Client {
                op,
                key,
                status,
                code: code.to_string(),
                message: message.to_string(),
            },
            (404, _) | (_, "NoSuchKey") | (_, "NotFound") => StoreError::NotFound { op, key },
            // 409: another conditional write to the key was in progress; it won.
            (412, _) | (_, "PreconditionFailed") | (409, "ConditionalRequestConflict") => {
                StoreError::PreconditionFailed { op, key }
            }
            (503, _) | (_, "SlowDown") | (_, "Throttling") | (_, "RequestLimitExceeded") => {
                StoreError::Throttled { op, key }
            }
            // A 200 whose body is an error (CompleteMultipartUpload, CopyObject: S3 sends 200
            // first and the outcome later; the SDK may not even read the code behind the
            // keep-alive whitespace): S3 documents these as retryable.
            (s, _) if s >= 500 || s == 200 || code == "InternalError" || code == "RequestTimeout" => {
                StoreError::Server {
                    op,
                    key,
                    status,
                    code: code.to_string(),
                    message: message.to_string(),
                }
            }
            _ => StoreError::Client {
                op,
                key,
                status,
                code: code.to_string(),
                message: message.to_string(),
            },
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A key DeleteObjects did not delete, with S3's error code and message for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteFailure {
    pub key: String,
    pub code: String,
    pub message: String,
}

impl DeleteFailure {
    pub fn new(key: impl Into<String>, code: impl Into<String>, message: impl Into<String>) -> Self {
        DeleteFailure {
            key: key.into(),
            code: code.into(),
            message: message.into(),
        }
    }

    /// The partition refused it for now (SlowDown): worth sending again, and a signal to
    /// pace that prefix.
    pub fn is_throttle(&self) -> bool {
        self.code == "SlowDown"
    }

    /// Worth sending again: a throttle or a server-side failure.
    pub fn is_retryable(&self) -> bool {
        self.is_throttle() || self.code == "InternalError" || self.code == "ServiceUnavailable"
    }
}

impl std::fmt::Display for DeleteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {}", self.key, self.code, self.message)
    }
}

impl StoreError {
    /// A server error that carries no S3 error code.
    pub fn code_is_empty(&self) -> bool {
        matches!(self, StoreError::Server { code, .. } if code.is_empty())
    }

    /// The errno a program should see for this failure: ENOENT for a missing object, else
    /// EIO.
    pub fn errno(&self) -> i32 {
        match self {
            e if e.is_not_found() => libc::ENOENT,
            _ => libc::EIO,
        }
    }

    /// S3's answer for an upload id it does not know (completed, aborted, or never made).
    pub fn is_no_such_upload(&self) -> bool {
        matches!(self, StoreError::Client { code, .. } if code == "NoSuchUpload")
    }
}

/// The ETag S3 gives an object made by CompleteMultipartUpload from parts with these ETags:
/// the MD5 of the parts' binary MD5s, then `-` and the part count. None when a part's ETag is
/// not a plain MD5 (SSE-KMS and SSE-C objects have other ETags).
pub fn multipart_etag<'a>(part_etags: impl IntoIterator<Item = &'a str>) -> Option<String> {
    use md5::{Digest, Md5};
    let mut md5s = Vec::new();
    let mut n = 0;
    for e in part_etags {
        let raw = hex::decode(e.trim_matches('"')).ok().filter(|b| b.len() == 16)?;
        md5s.extend(raw);
        n += 1;
    }
    Some(format!("{}-{n}", hex::encode(Md5::digest(&md5s))))
}

/// The S3 operations the filesystem needs. Keys are full keys (the layout applied already).
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta>;
    /// GET of the whole object or of `range` (clamped to the object by the server).
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<Bytes>;
    /// PUT, only if `cond` holds when one is given; the new object's ETag (when S3 gives one).
    async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        meta: &UserMeta,
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>>;
    async fn put(&self, key: &str, body: Bytes, meta: &UserMeta) -> StoreResult<()> {
        self.put_if(key, body, meta, None).await.map(|_| ())
    }
    /// The one call a layer may defer: a stack with [`Deletes::Deferred`] answers once the
    /// delete is queued (journalled when there is a journal) and hides the key from every
    /// later call of this store at once; [`ObjectStore::flush`] waits until it reached S3.
    /// Every other call has reached S3 when it returns.
    async fn delete(&self, key: &str) -> StoreResult<()>;
    /// DeleteObjects of up to 1000 keys; returns the keys that failed, with their errors.
    async fn delete_many(&self, keys: &[String]) -> StoreResult<Vec<DeleteFailure>>;
    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage>;
    /// Server-side copy of a whole object: metadata copied with it, or replaced by `meta`.
    async fn copy(&self, src: &str, dst: &str, meta: Option<&UserMeta>) -> StoreResult<()>;
    async fn create_multipart(&self, key: &str, meta: &UserMeta) -> StoreResult<String>;
    async fn upload_part(&self, key: &str, upload_id: &str, part: i32, body: Bytes) -> StoreResult<String>;
    /// UploadPartCopy: part `part` is bytes `range` of the object `src`, copied server-side;
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
    /// CompleteMultipartUpload, only if `cond` holds when one is given.
    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
        cond: Option<&WriteIf>,
    ) -> StoreResult<()>;
    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(i32, String)]) -> StoreResult<()> {
        self.complete_multipart_if(key, upload_id, parts, None).await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()>;
    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<UploadInfo>>;
    /// A barrier: work a layer deferred (queued deletes) has reached S3 when this returns.
    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }
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
