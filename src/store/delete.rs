//! Removing objects by version, in bulk: the one place DeleteObjects batches are made for
//! what names the versions it removes (a mount's retried deletes, the journal's replay,
//! `migrate --delete-source`, `prefixfs rm`, a mount's `remove_tree`).
//!
//! 1. Keys are interleaved across prefixes and sent up to 1,000 to a request, `jobs`
//!    requests at once: consecutive deletes land on different partitions.
//! 2. A key that names a version (its ETag) is removed only while it holds that version.
//!    S3 checks the ETag of each key of a DeleteObjects (general purpose buckets, since
//!    September 2025), and DeleteObject's `If-Match`. A server that ignores the per-key ETag
//!    ([`DeleteConditions::batch`] false, probed at start: moto) gets those keys one
//!    DeleteObject with `If-Match` each; one that ignores both gets a HEAD before each and
//!    the delete only if the ETag still matches. That last fallback leaves a window of one
//!    round trip in which another writer's object can be deleted (README, "Many hosts").
//! 3. Each key ends [`Removed::deleted`] (or held nothing already), [`Removed::kept`]
//!    (another version is there: someone else wrote it, and their object stays; logged), or
//!    [`Removed::failed`] (S3 refused or the attempts ran out: the caller keeps it).

use super::{DeleteFailure, DeleteTarget, ObjectStore, PrefixFn, StoreError, StoreResult, UserMeta, WriteIf};
use futures::{StreamExt, TryStreamExt};

/// Which of S3's conditions on deletes the server honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteConditions {
    /// DeleteObject with `If-Match: ETAG`.
    pub single: bool,
    /// The `ETag` of each key of a DeleteObjects.
    pub batch: bool,
}

impl DeleteConditions {
    /// What S3 does: both.
    pub const S3: DeleteConditions = DeleteConditions {
        single: true,
        batch: true,
    };
}

/// What [`delete_versions`] did, key by key.
#[derive(Debug, Default)]
pub struct Removed {
    pub deleted: usize,
    /// Keys that hold another version than the one named: someone else wrote them.
    pub kept: Vec<String>,
    pub failed: Vec<DeleteFailure>,
}

impl Removed {
    fn absorb(&mut self, failures: Vec<DeleteFailure>, sent: usize) {
        let mut deleted = sent;
        for f in failures {
            if f.is_gone() {
                continue;
            }
            deleted = deleted.saturating_sub(1);
            if f.is_precondition() {
                tracing::info!(key = %crate::layout::escape_controls(&f.key), "not deleted: another version is there (someone else wrote it), and it stays");
                self.kept.push(f.key);
            } else {
                self.failed.push(f);
            }
        }
        self.deleted += deleted;
    }

    /// The first failure as an error, for callers that stop at one.
    pub fn into_result(self) -> StoreResult<Removed> {
        match self.failed.first() {
            None => Ok(self),
            Some(f) => Err(StoreError::DeletesFailed {
                key: f.key.clone(),
                count: self.failed.len(),
                code: f.code.clone(),
                message: f.message.clone(),
            }),
        }
    }
}

/// Deletes `targets`, each only at the version it names (see the module doc), interleaved
/// across prefixes by `prefix`, `jobs` DeleteObjects at once.
pub async fn delete_versions(
    store: &dyn ObjectStore,
    targets: Vec<DeleteTarget>,
    conds: DeleteConditions,
    prefix: &PrefixFn,
    jobs: usize,
) -> StoreResult<Removed> {
    let (batched, single): (Vec<_>, Vec<_>) = targets.into_iter().partition(|t| t.etag.is_none() || conds.batch);
    let mut out = Removed::default();
    let batched = crate::layout::interleave_by(batched, |t| prefix(&t.key));
    let batches: Vec<Vec<DeleteTarget>> = batched
        .chunks(crate::limits::MAX_DELETE_BATCH)
        .map(<[DeleteTarget]>::to_vec)
        .collect();
    let results: Vec<(Vec<DeleteFailure>, usize)> = futures::stream::iter(batches)
        .map(|batch| send_batch(store, batch))
        .buffer_unordered(jobs.clamp(1, 16))
        .try_collect()
        .await?;
    for (failures, sent) in results {
        out.absorb(failures, sent);
    }
    let sent = single.len();
    let results: Vec<DeleteFailure> = futures::stream::iter(single)
        .map(|t| async move { delete_one(store, t, conds).await })
        .buffer_unordered(16 * jobs.clamp(1, 16))
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    out.absorb(results, sent);
    Ok(out)
}

async fn send_batch(store: &dyn ObjectStore, batch: Vec<DeleteTarget>) -> StoreResult<(Vec<DeleteFailure>, usize)> {
    Ok((store.delete_many(&batch).await?, batch.len()))
}

/// One key at its version, where batches cannot carry the condition (module doc, 2).
async fn delete_one(store: &dyn ObjectStore, t: DeleteTarget, conds: DeleteConditions) -> Result<(), DeleteFailure> {
    let fail = |e: StoreError| match e {
        StoreError::PreconditionFailed { .. } => {
            DeleteFailure::new(t.key.clone(), "PreconditionFailed", "another version is there")
        }
        // Gone already (S3 answers a conditional delete of a missing key so).
        e if e.is_not_found() => DeleteFailure::new(t.key.clone(), "NoSuchKey", ""),
        e => DeleteFailure::new(t.key.clone(), "RequestFailed", e.to_string()),
    };
    let etag = t.etag.as_deref();
    if !conds.single {
        match store.head(&t.key).await {
            Ok(m) if m.etag.as_deref().map(|e| e.trim_matches('"')) == etag.map(|e| e.trim_matches('"')) => {}
            Ok(_) => {
                return Err(DeleteFailure::new(
                    t.key.clone(),
                    "PreconditionFailed",
                    "another version is there",
                ));
            }
            Err(e) if e.is_not_found() => return Err(DeleteFailure::new(t.key.clone(), "NoSuchKey", "")),
            Err(e) => return Err(fail(e)),
        }
        return store.delete(&t.key, None).await.map_err(fail);
    }
    store.delete(&t.key, etag).await.map_err(fail)
}

/// Sent once per mount (or bucket command) that deletes: which delete conditions the server
/// honours. A probe object is written, a DeleteObjects and a DeleteObject name a wrong ETag
/// (each must leave it), then it is deleted at its own ETag. Costs 1 PUT, 1 DeleteObjects and
/// 2 DELETEs; None when the probe itself fails (then the caller assumes neither).
pub async fn probe_delete_conditions(store: &dyn ObjectStore, key: &str) -> Option<DeleteConditions> {
    let wrong = "\"00000000000000000000000000000000\"";
    store
        .put_if(key, bytes::Bytes::new(), &UserMeta::new(), Some(&WriteIf::Absent))
        .await
        .ok()?;
    let batch = match store
        .delete_many(&[DeleteTarget::version(key, Some(wrong.into()))])
        .await
    {
        Ok(failed) => failed.iter().any(|f| f.is_precondition()),
        Err(_) => return None,
    };
    if !batch {
        // It was deleted: put it back for the single probe.
        store.put(key, bytes::Bytes::new(), &UserMeta::new()).await.ok()?;
    }
    let single = matches!(
        store.delete(key, Some(wrong)).await,
        Err(StoreError::PreconditionFailed { .. })
    );
    let _ = store.delete(key, None).await;
    Some(DeleteConditions { single, batch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use bytes::Bytes;

    #[tokio::test]
    async fn only_the_named_version_is_deleted_and_another_stays() {
        let mem = MemoryStore::new();
        let mut targets = Vec::new();
        for k in ["a/1", "b/2", "c/3"] {
            let etag = mem.put_if(k, Bytes::from(k), &UserMeta::new(), None).await.unwrap();
            targets.push(DeleteTarget::version(k, etag));
        }
        // Someone else rewrote b/2 after its version was seen.
        mem.put("b/2", Bytes::from_static(b"theirs"), &UserMeta::new())
            .await
            .unwrap();
        targets.push(DeleteTarget::version("gone/4", Some("\"x\"".into())));
        for conds in [
            DeleteConditions::S3,
            DeleteConditions {
                single: true,
                batch: false,
            },
            DeleteConditions {
                single: false,
                batch: false,
            },
        ] {
            let r = delete_versions(&mem, targets.clone(), conds, &crate::store::first_segment(), 2)
                .await
                .unwrap();
            assert_eq!(r.kept, ["b/2"], "{conds:?}");
            assert!(r.failed.is_empty(), "{conds:?}");
            assert_eq!(mem.keys(), ["b/2"], "{conds:?}");
            assert_eq!(&mem.get("b/2", None, None).await.unwrap()[..], b"theirs");
            for k in ["a/1", "c/3"] {
                mem.put(k, Bytes::from(k), &UserMeta::new()).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn the_probe_tells_what_the_server_honours() {
        let mem = MemoryStore::new();
        assert_eq!(probe_delete_conditions(&mem, "p").await, Some(DeleteConditions::S3));
        assert!(mem.keys().is_empty(), "the probe leaves nothing behind");
    }
}
