//! Server-side copies of any size. CopyObject copies at most 5 GiB in one request; a larger
//! object is copied as a multipart upload whose parts are UploadPartCopy ranges of the
//! source, sent in parallel. A rename, a chmod or utimens of a closed file (a self-copy with
//! new metadata) and `migrate` go through here.

use super::{CopySpec, ObjectStore, StoreError, StoreResult, UserMeta};
use crate::limits::{MAX_COPY_OBJECT, MAX_PARTS, MIN_PART};
use futures::{StreamExt, TryStreamExt, stream};
use std::ops::Range;

/// How copies are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyLimits {
    /// The largest object copied with one CopyObject (S3: 5 GiB; some S3-compatible stores
    /// allow less).
    pub object_max: u64,
    /// The part size of a multipart copy, at most: parts are never larger than `object_max`
    /// (UploadPartCopy has CopyObject's limit) and grow when 10,000 would not hold the object.
    pub part: u64,
    /// UploadPartCopy requests of one copy in flight at once.
    pub parallel: usize,
}

/// Part size of a multipart copy: fewer, larger parts cost fewer requests, and each part
/// is copied inside S3 at its own speed.
pub const COPY_PART: u64 = 512 << 20;

impl Default for CopyLimits {
    fn default() -> Self {
        CopyLimits {
            object_max: MAX_COPY_OBJECT,
            part: COPY_PART,
            parallel: 8,
        }
    }
}

impl CopyLimits {
    /// The byte ranges of a multipart copy of `size` bytes, numbered from 1.
    pub fn ranges(&self, size: u64) -> Vec<(i32, Range<u64>)> {
        let part = self
            .part
            .min(self.object_max)
            .max(MIN_PART)
            .max(size.div_ceil(MAX_PARTS));
        (0..size.div_ceil(part))
            .map(|n| (n as i32 + 1, n * part..((n + 1) * part).min(size)))
            .collect()
    }
}

/// Copies `c.src` (believed `size` bytes) to `c.dst` under `c`'s conditions: one CopyObject
/// up to `limits.object_max`, else a multipart copy. Metadata: `c.meta` when given, else the
/// source's. A multipart copy first HEADs the source for its true size (and metadata when
/// `c.meta` is None): copying a stale size would cut the object short; a source that is no
/// longer the version `c.src_etag` names fails it (PreconditionFailed), as CopyObject would.
/// A CopyObject refused because the object grew past the limit (another host wrote it) goes
/// part by part the same way. Returns the copy's ETag when S3 said it (CopyObject does; a
/// multipart copy's completion too).
pub async fn copy_object(
    store: &dyn ObjectStore,
    c: &CopySpec<'_>,
    size: u64,
    limits: &CopyLimits,
) -> StoreResult<Option<String>> {
    if size <= limits.object_max {
        match store.copy(c).await {
            Err(e) if e.is_copy_too_large() => {
                tracing::debug!(key = %c.src, "larger than this mount knew: copied part by part")
            }
            done => return done,
        }
    }
    let head = store.head(c.src).await?;
    if let Some(want) = c.src_etag
        && head.etag.as_deref().map(|e| e.trim_matches('"')) != Some(want.trim_matches('"'))
    {
        return Err(StoreError::PreconditionFailed {
            op: "copy",
            key: c.src.to_string(),
        });
    }
    // Metadata and headers copied (COPY) are the source's, but the storage class: S3 makes a
    // copy STANDARD unless the request names one.
    let (meta, headers) = match c.meta {
        Some(m) => (m.clone(), c.headers.cloned()),
        None => (
            head.user_meta,
            Some(super::Headers {
                storage_class: c.headers.and_then(|h| h.storage_class.clone()),
                ..head.headers
            }),
        ),
    };
    let etag = head.etag.as_deref();
    let c = c
        .from_version(etag)
        .with_meta(Some(&meta))
        .with_headers(headers.as_ref());
    if head.size <= limits.object_max {
        return store.copy(&c).await;
    }
    copy_parts(store, &c, head.size, limits).await
}

/// A multipart copy of the `size` bytes of `c.src` (every part only while the source still
/// has the ETag `c.src_etag`, so an object replaced midway fails the copy instead of mixing
/// two versions) to `c.dst` with `c.meta` (else none), completed only if `c.dst_if` holds;
/// the upload is aborted when a part or the completion fails, so no half copy is left behind.
pub async fn copy_parts(
    store: &dyn ObjectStore,
    c: &CopySpec<'_>,
    size: u64,
    limits: &CopyLimits,
) -> StoreResult<Option<String>> {
    let (src, dst, etag) = (c.src, c.dst, c.src_etag);
    let none = UserMeta::new();
    let id = store
        .create_multipart_with(dst, c.meta.unwrap_or(&none), c.headers)
        .await?;
    let parts: StoreResult<Vec<(i32, String)>> = stream::iter(limits.ranges(size))
        .map(|(n, r)| {
            let id = &id;
            async move { Ok((n, store.upload_part_copy(dst, id, n, src, r, etag).await?)) }
        })
        .buffer_unordered(limits.parallel.max(1))
        .try_collect()
        .await;
    let done = match parts {
        Ok(mut parts) => {
            parts.sort_by_key(|p| p.0);
            store.complete_multipart_if(dst, &id, &parts, c.dst_if).await
        }
        Err(e) => Err(e),
    };
    if done.is_err()
        && let Err(a) = store.abort_multipart(dst, &id).await
    {
        tracing::warn!(key = %dst, error = %a, "could not abort a failed multipart copy");
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::retry::{RetryConfig, RetryingStore};
    use crate::store::stats::RequestStats;
    use crate::store::{OpKind, one_prefix};
    use bytes::Bytes;
    use std::sync::Arc;

    fn limits(object_max: u64) -> CopyLimits {
        CopyLimits {
            object_max,
            part: COPY_PART,
            parallel: 4,
        }
    }

    #[test]
    fn parts_cover_the_object_within_the_limits() {
        let l = limits(MIN_PART);
        let r = l.ranges(2 * MIN_PART + 1);
        assert_eq!(
            r,
            [
                (1, 0..MIN_PART),
                (2, MIN_PART..2 * MIN_PART),
                (3, 2 * MIN_PART..2 * MIN_PART + 1)
            ]
        );
        // S3's limits: 512 MiB parts, more when 10,000 would not hold the object.
        let big = CopyLimits::default();
        assert_eq!(big.ranges(6 << 30).len(), 12);
        let huge = 5u64 << 40;
        let r = big.ranges(huge);
        assert_eq!(r.len() as u64, MAX_PARTS);
        assert_eq!(r.last().map(|p| p.1.end), Some(huge));
    }

    #[tokio::test]
    async fn a_copy_over_the_limit_goes_part_by_part_with_the_metadata() {
        let stats = Arc::new(RequestStats::default());
        let store = RetryingStore::new(MemoryStore::new(), RetryConfig::default(), stats.clone(), one_prefix());
        let body: Bytes = (0..(2 * MIN_PART + 7))
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let meta = UserMeta::from([("mode".to_string(), "100600".to_string())]);
        store.put("a", body.clone(), &meta).await.expect("put");
        // The size the caller believed is stale: the HEAD's is copied.
        copy_object(&store, &CopySpec::new("a", "b"), MIN_PART + 1, &limits(MIN_PART))
            .await
            .expect("copy");
        assert_eq!(stats.snapshot().get(OpKind::Head), 1, "the true size");
        assert_eq!(stats.snapshot().get(OpKind::UploadPartCopy), 3);
        assert_eq!(stats.snapshot().get(OpKind::CompleteMultipart), 1);
        assert_eq!(stats.snapshot().get(OpKind::Copy), 0);
        assert_eq!(store.get("b", None, None).await.expect("get"), body);
        assert_eq!(store.head("b").await.expect("head").user_meta, meta);
        // New metadata, onto itself (chmod of a large closed file).
        let chmod = UserMeta::from([("mode".to_string(), "100644".to_string())]);
        copy_object(
            &store,
            &CopySpec::new("a", "a").with_meta(Some(&chmod)),
            body.len() as u64,
            &limits(MIN_PART),
        )
        .await
        .expect("self copy");
        assert_eq!(store.get("a", None, None).await.expect("get"), body);
        assert_eq!(store.head("a").await.expect("head").user_meta, chmod);
        // Under the limit: one CopyObject.
        copy_object(&store, &CopySpec::new("a", "c"), body.len() as u64, &limits(1 << 30))
            .await
            .expect("copy");
        assert_eq!(stats.snapshot().get(OpKind::Copy), 1);
        assert_eq!(
            stats.snapshot().get(OpKind::UploadPartCopy),
            6,
            "two multipart copies of 3 parts"
        );
        // A source that no longer has the ETag the copy started from fails it, and the
        // upload is aborted: no object, no upload left.
        let stale = CopySpec::new("a", "d")
            .from_version(Some("\"stale\""))
            .with_meta(Some(&meta));
        let e = copy_parts(&store, &stale, body.len() as u64, &limits(MIN_PART))
            .await
            .expect_err("stale");
        assert!(matches!(e, crate::store::StoreError::PreconditionFailed { .. }), "{e}");
        assert!(store.head("d").await.is_err_and(|e| e.is_not_found()));
        assert!(store.list_uploads("").await.expect("uploads").is_empty());
    }
}
