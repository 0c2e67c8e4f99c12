//! Retries with exponential backoff and full jitter, and request counting.
//!
//! Every attempt is counted by kind in [`RequestStats`]. Retryable failures (SlowDown, 5xx,
//! transport) sleep `uniform(0, min(cap, base * 2^attempt))` and try again, up to
//! `max_attempts`; then the operation fails with [`StoreError::RetriesExhausted`], which the
//! FUSE edge turns into EIO (never ENOENT). The SDK's own retry is disabled so that what is
//! counted here is what went over the wire.

use super::stats::RequestStats;
use super::{
    CopySpec, DeleteTarget, Headers, ListPage, ObjectMeta, ObjectStore, OpKind, PrefixFn, StoreError, StoreResult,
    UploadInfo, UserMeta, WriteIf,
};
use bytes::Bytes;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// The user-metadata key of a conditional PUT's nonce (`x-amz-meta-prefixfs-write`): which
/// write made the object, so that a retry can tell its own earlier attempt from another
/// host's object (see `put_if`).
pub const WRITE_NONCE: &str = "prefixfs-write";

/// The retry policy.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 10,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryConfig {
    /// The full-jitter delay before attempt `attempt + 1` (attempt counts from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << attempt.min(20));
        let ceiling = exp.min(self.max_delay);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// Wraps a store with retries and counters.
pub struct RetryingStore<S> {
    inner: S,
    config: RetryConfig,
    stats: Arc<RequestStats>,
    prefix: PrefixFn,
}

/// Attempts at a request that finds the endpoint unreachable before it ever answered.
pub const FIRST_CONTACT_ATTEMPTS: u32 = 2;

impl<S: ObjectStore> RetryingStore<S> {
    /// `prefix` labels each key's retries in the per-prefix counters.
    pub fn new(inner: S, config: RetryConfig, stats: Arc<RequestStats>, prefix: PrefixFn) -> Self {
        RetryingStore {
            inner,
            config,
            stats,
            prefix,
        }
    }

    pub fn stats(&self) -> &Arc<RequestStats> {
        &self.stats
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn run<T, F, Fut>(&self, kind: OpKind, key: &str, mut f: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let mut attempt = 1;
        loop {
            self.stats.record_request(kind);
            let err = match f().await {
                Ok(v) => {
                    self.stats.record_answer();
                    return Ok(v);
                }
                Err(e) => e,
            };
            if !err.is_unreachable() {
                self.stats.record_answer();
            }
            if err.is_throttle() {
                self.stats.record_throttle();
            }
            if !err.is_retryable() {
                return Err(err);
            }
            // An endpoint that has never answered and cannot be reached (nothing listens, no
            // such host, no credentials): said at once, not after minutes of backoff.
            if err.is_unreachable() && !self.stats.answered() && attempt >= FIRST_CONTACT_ATTEMPTS {
                self.stats.record_failure();
                return Err(err);
            }
            if attempt >= self.config.max_attempts {
                self.stats.record_failure();
                tracing::warn!(op = kind.name(), key, attempts = attempt, error = %err, "giving up");
                return Err(StoreError::RetriesExhausted {
                    op: kind.name(),
                    key: key.to_string(),
                    attempts: attempt,
                    last: Box::new(err),
                });
            }
            let delay = self.config.backoff(attempt);
            tracing::debug!(op = kind.name(), key, attempt, ?delay, error = %err, "retrying");
            self.stats.record_retry();
            self.stats.record_prefix_retry(&(self.prefix)(key));
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

impl<S: ObjectStore> RetryingStore<S> {
    /// Ok if `key` holds the object that completing `parts` makes (its multipart ETag), else
    /// `err`. Parts whose ETags are not MD5s (SSE-KMS) can only be matched by their count.
    async fn completed_by_an_earlier_attempt(
        &self,
        key: &str,
        parts: &[(i32, String)],
        err: StoreError,
    ) -> StoreResult<Option<String>> {
        let meta = match self.run(OpKind::Head, key, || self.inner.head(key)).await {
            Ok(m) => m,
            Err(head) => {
                tracing::warn!(key, error = %head, "after a lost completion answer, the object could not be checked");
                return Err(err);
            }
        };
        let got = meta.etag.as_deref().unwrap_or("").trim_matches('"').to_string();
        let ours = match super::multipart_etag(parts.iter().map(|(_, e)| e.as_str())) {
            Some(want) => got == want,
            None => got.ends_with(&format!("-{}", parts.len())),
        };
        if ours {
            tracing::info!(
                key,
                etag = got,
                "a CompleteMultipartUpload answer was lost; the object is whole in S3"
            );
            Ok(meta.etag)
        } else {
            Err(err)
        }
    }
}

crate::store::around_each_call!(impl[S: ObjectStore] for RetryingStore<S>, run, {
    /// A conditional PUT carries a nonce of its own in its metadata ([`WRITE_NONCE`]): when
    /// a retry is refused (412), an earlier attempt may have been applied and its answer
    /// lost, and only the nonce tells that object from another writer's with the same bytes
    /// (every empty create has the same MD5). One HEAD, only in that case.
    async fn put_with(
        &self,
        key: &str,
        body: Bytes,
        meta: &UserMeta,
        headers: Option<&Headers>,
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        let nonce = cond.map(|_| uuid::Uuid::new_v4().simple().to_string());
        let tagged;
        let meta = match &nonce {
            Some(n) => {
                let mut m = meta.clone();
                m.insert(WRITE_NONCE.to_string(), n.clone());
                tagged = m;
                &tagged
            }
            None => meta,
        };
        let tries = std::sync::atomic::AtomicU32::new(0);
        let result = self
            .run(OpKind::Put, key, || {
                tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.inner.put_with(key, body.clone(), meta, headers, cond)
            })
            .await;
        match (result, nonce) {
            (Err(e @ StoreError::PreconditionFailed { .. }), Some(nonce))
                if tries.load(std::sync::atomic::Ordering::Relaxed) > 1 =>
            {
                self.stats.record_request(OpKind::Head);
                match self.inner.head(key).await {
                    Ok(m) if m.user_meta.get(WRITE_NONCE) == Some(&nonce) => {
                        tracing::info!(
                            key,
                            "a conditional PUT's answer was lost; the object is the one it wrote"
                        );
                        Ok(m.etag)
                    }
                    _ => Err(e),
                }
            }
            (r, _) => r,
        }
    }

    /// Keys refused with SlowDown (or a 5xx) inside the response are sent again, with the
    /// same backoff, until they are deleted or the attempts run out; keys refused for good
    /// (another version is there, access denied) are answered as they are.
    async fn delete_many(&self, targets: &[DeleteTarget]) -> StoreResult<Vec<crate::store::DeleteFailure>> {
        let mut pending = targets.to_vec();
        let mut refused = Vec::new();
        let mut attempt = 1;
        loop {
            let first = pending.first().map(|t| t.key.clone()).unwrap_or_default();
            let failed = self
                .run(OpKind::DeleteMany, &first, || self.inner.delete_many(&pending))
                .await?;
            let (again, fatal): (Vec<_>, Vec<_>) = failed.into_iter().partition(|f| f.is_retryable());
            refused.extend(fatal);
            if again.is_empty() || attempt >= self.config.max_attempts {
                refused.extend(again);
                return Ok(refused);
            }
            for f in &again {
                self.stats.record_prefix_retry(&(self.prefix)(&f.key));
            }
            self.stats.record_retry();
            tokio::time::sleep(self.config.backoff(attempt)).await;
            attempt += 1;
            let again: std::collections::HashSet<String> = again.into_iter().map(|f| f.key).collect();
            pending.retain(|t| again.contains(&t.key));
        }
    }

    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let result = self
            .run(OpKind::CompleteMultipart, key, || async {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match self.inner.complete_multipart_if(key, upload_id, parts, cond).await {
                    // A 200 that is neither a result the SDK could read nor an error with a
                    // code (moto names its result element differently; S3 may send its
                    // outcome after keep-alive whitespace): the object tells which it was.
                    Err(e @ StoreError::Server { status: 200, .. }) if e.code_is_empty() => {
                        self.completed_by_an_earlier_attempt(key, parts, e).await
                    }
                    r => r,
                }
            })
            .await;
        match result {
            // An earlier attempt may have completed the upload and lost its answer: then the
            // retry finds no upload, and the object tells whether it is ours.
            Err(e) if e.is_no_such_upload() && attempts.into_inner() > 1 => {
                self.completed_by_an_earlier_attempt(key, parts, e).await
            }
            r => r,
        }
    }
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn fast() -> RetryConfig {
        RetryConfig {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    #[tokio::test]
    async fn slowdown_is_retried_until_it_clears() {
        let mem = MemoryStore::new();
        mem.fail_next(2, |key| StoreError::Throttled {
            op: "put",
            key: key.to_string(),
        });
        let stats = Arc::new(RequestStats::default());
        let s = RetryingStore::new(mem, fast(), stats.clone(), crate::store::one_prefix());
        s.put("k", Bytes::from_static(b"v"), &UserMeta::new()).await.unwrap();
        let snap = stats.snapshot();
        assert_eq!(snap.get(OpKind::Put), 3);
        assert_eq!(snap.throttles, 2);
        assert_eq!(snap.retries, 2);
    }

    #[tokio::test]
    async fn retries_exhausted_is_not_not_found() {
        let mem = MemoryStore::new();
        mem.fail_next(100, |key| StoreError::Throttled {
            op: "head",
            key: key.to_string(),
        });
        let stats = Arc::new(RequestStats::default());
        let s = RetryingStore::new(mem, fast(), stats.clone(), crate::store::one_prefix());
        let err = s.head("k").await.unwrap_err();
        assert!(matches!(err, StoreError::RetriesExhausted { attempts: 4, .. }), "{err}");
        assert!(!err.is_not_found());
        assert_eq!(stats.snapshot().failures, 1);
    }

    #[tokio::test]
    async fn a_completion_applied_before_its_answer_was_lost_is_a_success() {
        let mem = MemoryStore::new();
        mem.allow_small_parts();
        let id = mem.create_multipart("k", &UserMeta::new()).await.unwrap();
        let e1 = mem.upload_part("k", &id, 1, Bytes::from_static(b"one")).await.unwrap();
        let e2 = mem.upload_part("k", &id, 2, Bytes::from_static(b"two")).await.unwrap();
        let parts = vec![(1, e1), (2, e2)];
        // The first attempt was applied and its answer lost: S3 has the object, the upload
        // id is gone, and the retry is answered NoSuchUpload.
        mem.complete_multipart("k", &id, &parts).await.unwrap();
        mem.fail_next(1, |key| {
            StoreError::from_response("complete_multipart", key, 500, "InternalError", "")
        });
        let stats = Arc::new(RequestStats::default());
        let s = RetryingStore::new(mem, fast(), stats.clone(), crate::store::one_prefix());
        s.complete_multipart("k", &id, &parts).await.unwrap();
        assert_eq!(stats.snapshot().get(OpKind::Head), 1, "one HEAD checks the object");

        // Another object at the key (not the one these parts make): the error stands.
        s.put("k", Bytes::from_static(b"other"), &UserMeta::new())
            .await
            .unwrap();
        s.inner().fail_next(1, |key| {
            StoreError::from_response("complete_multipart", key, 500, "InternalError", "")
        });
        let err = s.complete_multipart("k", &id, &parts).await.unwrap_err();
        assert!(err.is_no_such_upload(), "{err}");
        // A first attempt that finds no upload was never ours to complete: no HEAD.
        let heads = stats.snapshot().get(OpKind::Head);
        assert!(
            s.complete_multipart("k", "nope", &parts)
                .await
                .unwrap_err()
                .is_no_such_upload()
        );
        assert_eq!(stats.snapshot().get(OpKind::Head), heads);
    }

    #[tokio::test]
    async fn a_conditional_put_applied_before_its_answer_was_lost_is_a_success() {
        let mem = MemoryStore::new();
        // The first attempt is applied and its answer lost; the retry is refused (412).
        mem.lose_next_answers(1);
        let stats = Arc::new(RequestStats::default());
        let s = RetryingStore::new(mem, fast(), stats.clone(), crate::store::one_prefix());
        let etag = s
            .put_if("k", Bytes::new(), &UserMeta::new(), Some(&WriteIf::Absent))
            .await
            .unwrap();
        assert_eq!(etag.as_deref(), s.inner().head("k").await.unwrap().etag.as_deref());
        assert_eq!(stats.snapshot().get(OpKind::Put), 2);
        assert_eq!(stats.snapshot().get(OpKind::Head), 1, "one HEAD reads the nonce");
    }

    #[tokio::test]
    async fn a_retried_create_refused_by_another_hosts_identical_object_loses() {
        let mem = MemoryStore::new();
        // Another host made the same empty object (same MD5, same ETag) while our first
        // attempt failed without being applied: the race is theirs.
        mem.put("k", Bytes::new(), &UserMeta::new()).await.unwrap();
        mem.fail_next(1, |key| StoreError::from_response("put", key, 500, "InternalError", ""));
        let stats = Arc::new(RequestStats::default());
        let s = RetryingStore::new(mem, fast(), stats.clone(), crate::store::one_prefix());
        let err = s
            .put_if("k", Bytes::new(), &UserMeta::new(), Some(&WriteIf::Absent))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::PreconditionFailed { .. }), "{err}");
        assert_eq!(stats.snapshot().get(OpKind::Head), 1);
        // A first refusal is final: no HEAD.
        let err = s
            .put_if("k", Bytes::new(), &UserMeta::new(), Some(&WriteIf::Absent))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::PreconditionFailed { .. }), "{err}");
        assert_eq!(stats.snapshot().get(OpKind::Head), 1, "no HEAD without a retry");
    }

    #[tokio::test]
    async fn not_found_is_not_retried() {
        let stats = Arc::new(RequestStats::default());
        let s = RetryingStore::new(MemoryStore::new(), fast(), stats.clone(), crate::store::one_prefix());
        assert!(s.head("missing").await.unwrap_err().is_not_found());
        assert_eq!(stats.snapshot().get(OpKind::Head), 1);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let c = RetryConfig {
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        };
        for attempt in 1..30 {
            assert!(c.backoff(attempt) <= Duration::from_millis(50));
        }
    }
}
