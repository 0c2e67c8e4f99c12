//! What a mount asks the server at start: which of S3's conditions it enforces (exclusive
//! creates, copies and deletes naming a version), and whether an anonymous mount may write.
//! Each probe works on a scratch key under the root's `.prefixfs/` and removes it.

use crate::layout::Layout;
use crate::store::delete::DeleteConditions;
use crate::store::{ObjectStore, UserMeta};

/// Whether the bucket takes an anonymous write (`--no-sign-request`): one exclusive PUT of
/// a probe key, deleted by its version after.
pub(super) async fn anonymous_writes(store: &dyn ObjectStore, layout: &Layout) -> bool {
    let key = format!(
        "{}.prefixfs/probe-anonymous-{}",
        layout.root_slash(),
        uuid::Uuid::new_v4().simple()
    );
    let meta = UserMeta::new();
    let put = store.put_if(&key, bytes::Bytes::new(), &meta, Some(&crate::store::WriteIf::Absent));
    match put.await {
        Ok(etag) => {
            let _ = store.delete(&key, etag.as_deref()).await;
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "anonymous write refused");
            false
        }
    }
}

/// Whether the server refuses a second `If-None-Match: *` PUT of `key` (Some(true)), takes
/// it (Some(false)), or could not be asked (None). Removes `key` after.
pub async fn probe_exclusive_create(store: &dyn ObjectStore, key: &str) -> Option<bool> {
    probe_writes(store, key, false).await.create
}

/// What [`probe_writes`] found: Some(true) where the server enforces the condition, Some(false)
/// where it ignores it, None where it could not be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteProbe {
    /// `If-None-Match: *` on PUT.
    pub create: Option<bool>,
    /// `x-amz-copy-source-if-match` on CopyObject (asked only when `copies` was).
    pub copy: Option<bool>,
}

/// Two conditional PUTs of `key` (the second must be refused), and with `copies`, between
/// them and the delete, a CopyObject of `key` naming another version of it than it holds
/// (it must be refused: 1 COPY more; where it is not, its copy is deleted too). Removes
/// `key` after, at the version written last.
pub async fn probe_writes(store: &dyn ObjectStore, key: &str, copies: bool) -> WriteProbe {
    use crate::store::{CopySpec, StoreError, WriteIf};
    let meta = UserMeta::new();
    let put = || store.put_if(key, bytes::Bytes::new(), &meta, Some(&WriteIf::Absent));
    let first = match put().await {
        Ok(etag) => etag,
        Err(_) => {
            return WriteProbe {
                create: None,
                copy: None,
            };
        }
    };
    let (create, now) = match put().await {
        Err(StoreError::PreconditionFailed { .. }) => (Some(true), first),
        Ok(etag) => (Some(false), etag),
        Err(_) => (None, first),
    };
    let copy = if copies {
        let dst = format!("{key}-copy");
        let other = "\"00000000000000000000000000000000\"";
        match store
            .copy(&CopySpec {
                src_etag: Some(other),
                ..CopySpec::new(key, &dst)
            })
            .await
        {
            Err(StoreError::PreconditionFailed { .. }) => Some(true),
            Ok(made) => {
                let _ = store.delete(&dst, made.as_deref()).await;
                Some(false)
            }
            Err(_) => None,
        }
    } else {
        None
    };
    // The version this probe wrote last, by its ETag.
    let _ = store.delete(key, now.as_deref()).await;
    WriteProbe { create, copy }
}

/// Says at start which of S3's conditions the server enforces: `If-None-Match: *` on PUT,
/// on which exclusive creates (`O_EXCL`, `set -C`) and `mkdir` races across hosts rely (two
/// conditional PUTs of one probe key: the second must be refused), and the ETag conditions of
/// deletes ([`crate::store::delete::probe_delete_conditions`]), on which an unlink removing
/// only the version it saw relies. Costs 3 PUTs, 1 DeleteObjects and 3 DELETEs per mount.
pub(super) async fn probe_conditions(store: &dyn ObjectStore, layout: &Layout) -> DeleteConditions {
    let key = |what: &str| {
        format!(
            "{}.prefixfs/probe-{what}-{}",
            layout.root_slash(),
            uuid::Uuid::new_v4().simple()
        )
    };
    let probed = probe_writes(store, &key("create"), true).await;
    match probed.copy {
        Some(true) | None => {}
        Some(false) => tracing::warn!(
            "this S3 server ignores x-amz-copy-source-if-match: a rename or chmod copies what the object holds when the copy lands, so an object another client replaced a moment before is copied in its new version (README, \"Many hosts\")"
        ),
    }
    match probed.create {
        Some(true) => tracing::info!("exclusive creates are enforced: the server honours If-None-Match"),
        Some(false) => tracing::warn!(
            "this S3 server ignores If-None-Match: exclusive creates (O_EXCL, set -C) and mkdir are decided by each mount's own view, so two hosts can both win"
        ),
        None => tracing::warn!("could not probe whether the server honours If-None-Match"),
    }
    let probed = crate::store::delete::probe_delete_conditions(store, &key("delete")).await;
    match probed {
        Some(DeleteConditions { batch: true, .. }) => {
            tracing::info!("deletes name their version: the server honours ETags in DeleteObjects")
        }
        Some(DeleteConditions { single: true, .. }) => tracing::warn!(
            "this S3 server ignores the ETags of DeleteObjects (DeleteObject's If-Match it honours): a delete retried after a failure goes alone, with If-Match; a first attempt removes what the key holds when it lands"
        ),
        Some(_) => tracing::warn!(
            "this S3 server ignores If-Match on deletes: a delete retried after a failure checks the version with a HEAD first, and an object written between that HEAD and the delete is lost"
        ),
        None => tracing::warn!("could not probe whether the server honours If-Match on deletes"),
    }
    probed.unwrap_or(DeleteConditions {
        single: false,
        batch: false,
    })
}
