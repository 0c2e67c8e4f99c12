//! Extended attributes of closed files and directories, changed in S3: the `xattr` header
//! written by a copy of the object onto itself (a directory's marker PUT anew), only over
//! the version a fresh HEAD saw.

use super::Namespace;
use crate::fs::cache::{EntryInfo, Kind};
use crate::fs::error::{FsError, FsResult};
use crate::fs::xattr::{Change, KEY, with_header};
use crate::layout::RelPath;
use crate::store::{CopySpec, StoreError, UserMeta, WriteIf};
use bytes::Bytes;

impl Namespace {
    /// Applies `change` to the extended attributes of `path` in S3 (see [`Core::setxattr`](crate::fs::Core::setxattr)):
    /// the new version's ETag and header. Another client's write in between stays theirs:
    /// this fails (ESTALE).
    pub(in crate::fs) async fn change_xattrs(
        &self,
        path: &RelPath,
        info: &EntryInfo,
        change: &Change<'_>,
    ) -> FsResult<(Option<String>, Option<String>)> {
        let r = self.change_xattrs_in_s3(path, info, change).await;
        if r.as_ref()
            .err()
            .and_then(FsError::store_error)
            .is_some_and(|e| matches!(e, StoreError::PreconditionFailed { .. }))
        {
            self.cache.forget(path);
            return Err(super::replaced_elsewhere(path));
        }
        r
    }

    async fn change_xattrs_in_s3(
        &self,
        path: &RelPath,
        info: &EntryInfo,
        change: &Change<'_>,
    ) -> FsResult<(Option<String>, Option<String>)> {
        // The object's metadata with the new header; the nonce of the write that made it
        // means nothing to this one, an s3fs `ctime` moves to now.
        let edit = |meta: UserMeta| -> FsResult<(UserMeta, Option<String>)> {
            let header = change.apply(meta.get(KEY).map(String::as_str), path)?;
            let mut meta = with_header(meta, header.clone(), path)?;
            meta.remove(crate::store::retry::WRITE_NONCE);
            crate::fs::posix::touch_ctime(&mut meta, std::time::SystemTime::now());
            Ok((meta, header))
        };
        if info.kind == Kind::Dir {
            // Its marker changes version: the listing's word on it no longer holds.
            self.cache.forget_facts(path);
            let key = self.layout.dir_marker_key(path)?;
            return match self.store.head(&key).await {
                Ok(head) => {
                    let (meta, header) = edit(head.user_meta)?;
                    let cond = head.etag.map(WriteIf::Matches);
                    let etag = self
                        .store
                        .put_with(&key, Bytes::new(), &meta, Some(&head.headers), cond.as_ref())
                        .await?;
                    Ok((etag, header))
                }
                // A directory without a marker gets one, to hold them.
                Err(e) if e.is_not_found() => {
                    let (meta, header) = edit(info.posix.to_meta())?;
                    let etag = self
                        .store
                        .put_with(&key, Bytes::new(), &meta, None, Some(&WriteIf::Absent))
                        .await?;
                    Ok((etag, header))
                }
                Err(e) => Err(e.into()),
            };
        }
        let key = self.layout.file_key(path)?;
        let head = self.store.head(&key).await?;
        let now = head.etag.as_deref();
        if let (Some(want), Some(now)) = (info.version(), now)
            && want.trim_matches('"') != now.trim_matches('"')
        {
            return Err(StoreError::PreconditionFailed {
                op: "copy",
                key: key.clone(),
            }
            .into());
        }
        let (meta, header) = edit(head.user_meta.clone())?;
        let same = now.map(|e| WriteIf::Matches(e.to_string()));
        let copy = CopySpec::new(&key, &key)
            .from_version(now)
            .only_if(same.as_ref())
            .with_meta(Some(&meta))
            .with_headers(Some(&head.headers));
        let etag = self.copy_object(&copy, head.size).await?;
        Ok((etag, header))
    }
}
