//! What a rewrite keeps of the object it replaces ([`Carried`]): another client's user
//! metadata, standard headers and tags, learnt once per open file and sent with each of its
//! uploads.

use super::super::posix::Posix;
use crate::store::{Headers, ObjectMeta, ObjectStore, StoreError, StoreResult, UserMeta};
use std::sync::Arc;

/// True when the object `m` describes holds nothing a rewrite must keep ([`Carried`]): no
/// user metadata but the mount's, and the headers S3 gives an object nobody set them on.
pub(in crate::fs) fn nothing_to_carry(m: &ObjectMeta) -> bool {
    m.user_meta.keys().all(|k| Posix::OWNED_KEYS.contains(&k.as_str())) && default_headers(&m.headers)
}

/// The headers S3 gives an object nobody set them on.
pub(super) fn default_headers(h: &Headers) -> bool {
    matches!(
        h.content_type.as_deref(),
        None | Some("binary/octet-stream" | "application/octet-stream")
    ) && h.content_encoding.is_none()
        && h.cache_control.is_none()
        && h.content_disposition.is_none()
        && h.content_language.is_none()
        && matches!(h.storage_class.as_deref(), None | Some("STANDARD"))
        && h.tagging.is_none()
}

/// What a rewrite keeps of the object it replaces: every user metadata key the mount does
/// not own, the standard headers (Content-Type, Content-Encoding, Cache-Control, storage
/// class...) and the tags, which another client put there. Learnt from a HEAD and a
/// GetObjectTagging (each only when the cache cannot tell), sent at once when the file is
/// opened for writing and awaited by the first upload (or the first write that could start
/// one); a new file has none.
pub(super) enum Carried {
    Nothing,
    /// Being fetched (a HEAD when the first flag says, the tags when the second does).
    Pending(tokio::task::JoinHandle<StoreResult<(UserMeta, Headers)>>, (bool, bool)),
    /// A fetch failed: the next upload tries again (it must not go without).
    Failed((bool, bool)),
    Known(Box<(UserMeta, Headers)>),
}

impl Carried {
    /// What the object at `key` holds, fetched from now on (see [`carried_of`]).
    pub(super) fn fetch(store: &Arc<dyn ObjectStore>, key: &str, head: bool, tags: bool) -> Carried {
        if !head && !tags {
            return Carried::Nothing;
        }
        let (store, key) = (store.clone(), key.to_string());
        let task = tokio::spawn(async move { carried_of(store.as_ref(), &key, head, tags).await });
        Carried::Pending(task, (head, tags))
    }
}

/// What a rewrite keeps of the object at `key`: its foreign metadata and headers (a HEAD)
/// when `head`, its tags (GetObjectTagging) when `tags`, both in flight together.
pub(super) async fn carried_of(
    store: &dyn ObjectStore,
    key: &str,
    head: bool,
    tags: bool,
) -> StoreResult<(UserMeta, Headers)> {
    let (m, t) = tokio::join!(
        async {
            match head {
                true => store.head(key).await.map(Some),
                false => Ok(None),
            }
        },
        async {
            match tags {
                true => tags_of(store, key).await,
                false => Ok(None),
            }
        }
    );
    let (meta, mut headers) = m?
        .map(|m: ObjectMeta| (super::super::posix::foreign_meta(m.user_meta), m.headers))
        .unwrap_or_default();
    headers.tagging = t?;
    Ok((meta, headers))
}

/// The tags of `key`; none where the server does not keep tags (NotImplemented) or the
/// credentials may not read them (AccessDenied: a policy without s3:GetObjectTagging),
/// said once in the log, rather than fail every rewrite.
async fn tags_of(store: &dyn ObjectStore, key: &str) -> StoreResult<Option<String>> {
    static NO_TAGS: std::sync::Once = std::sync::Once::new();
    static DENIED: std::sync::Once = std::sync::Once::new();
    match store.get_tagging(key).await {
        Err(StoreError::Client { code, .. } | StoreError::Server { code, .. }) if code == "NotImplemented" => {
            NO_TAGS.call_once(|| {
                tracing::warn!(
                    "this S3 server does not keep object tags (GetObjectTagging: NotImplemented): rewrites carry none"
                )
            });
            Ok(None)
        }
        Err(e @ StoreError::Client { status: 403, .. }) => {
            DENIED.call_once(|| {
                tracing::warn!(error = %e, "these credentials may not read object tags (s3:GetObjectTagging): a rewrite of a tagged object drops its tags; grant the permission, or pass --drop-tags-on-rewrite to say so")
            });
            Ok(None)
        }
        r => r,
    }
}
