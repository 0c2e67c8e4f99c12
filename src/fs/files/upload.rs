//! Uploads of an open file: what changed since the last one goes to S3 (the stream
//! finished, the staging file sent, or only the metadata copied onto the object), under the
//! version the state names, and the namespace learns the result.

use super::OpenFiles;
use super::state::{Body, Life, OpenState, State, stream_meta};
use crate::data::upload::UploadError;
use crate::fs::cache::{EntryInfo, Kind};
use crate::fs::error::{FsResult, staging_err, store_err, upload_err};
use crate::fs::posix::Posix;
use crate::layout::RelPath;
use crate::store::StoreError;

impl OpenFiles {
    /// `close` (`sync` false) and `fsync` (`sync` true) of a handle of `ino`: uploads what
    /// changed in its open state; the error is the upload's. A close of a file nobody has
    /// written to since it was created or truncated uploads nothing (see
    /// [`Core::flush`](crate::fs::Core::flush)).
    pub(in crate::fs) async fn flush(&self, ino: u64, sync: bool) -> FsResult<()> {
        let Some((open, path)) = self.files().get(&ino).map(|f| (f.state.clone(), f.path.clone())) else {
            return Ok(());
        };
        let mut st = open.lock().await;
        if !sync && st.body.untouched() {
            return Ok(());
        }
        self.flush_held(&path, &open, &mut st).await
    }

    /// Uploads what changed in an open file whose state the caller holds, and tells the
    /// namespace what S3 now has.
    pub(super) async fn flush_held(&self, path: &RelPath, open: &OpenState, st: &mut State) -> FsResult<()> {
        if open.life() == Life::Unlinked {
            return Ok(());
        }
        let store = self.ns.store();
        let key = st.key.clone();
        let posix = open.posix();
        let (meta_dirty, xattrs_dirty) = (st.dirty.meta, st.dirty.xattrs);
        let expect = st.expect.clone();
        let attrs = match &st.body {
            Body::Stream(_) => Some(stream_meta(&posix)),
            Body::Staged(s) if s.is_modified() => Some(posix.to_meta()),
            Body::Staged(_) => None,
        };
        let attrs = match attrs {
            Some(own) => Some(st.upload_attrs(store, path, own).await?),
            None => None,
        };
        match (&mut st.body, attrs) {
            (Body::Stream(up), Some((meta, headers))) => {
                // Changed extended attributes reach S3 with the upload still to finish; after
                // it (an earlier flush sent it), by the metadata update. So does a POSIX
                // change: the stream's metadata leaves the mtime to LastModified.
                let finished_before = up.is_finished();
                let late_meta = !up.set_attrs(meta, headers) || meta_dirty || (xattrs_dirty && finished_before);
                if !up.is_finished() {
                    if let Err(e) = up.finish(expect.as_ref()).await {
                        // Another host or client wrote the name since this mount saw it: this
                        // write must never replace theirs (the last close keeps it in
                        // lost+found instead).
                        let replaced = matches!(&e, UploadError::Store(StoreError::PreconditionFailed { .. }));
                        let small = !up.has_multipart();
                        let err = upload_err(path, e);
                        // Keep the bytes: a small file moves to staging, so the next flush or
                        // close tries again and nothing is lost.
                        if small && !replaced {
                            let _ = self.staged(path, st).await;
                        }
                        return Err(err);
                    }
                    let etag = up.written_etag().map(str::to_string);
                    // A file written in one PUT is in memory whole: the data cache keeps it as
                    // the new version, so reading it back (after a remount too) costs no GET.
                    let whole = match (&self.cfg.data_cache, up.has_multipart()) {
                        (Some(_), false) => Some(bytes::Bytes::copy_from_slice(up.buffered())),
                        _ => None,
                    };
                    let copy = up.take_whole_copy();
                    st.wrote(etag.as_deref());
                    if let (Some(cache), Some(etag), Some(data)) = (&self.cfg.data_cache, &etag, whole) {
                        let (cache, key, etag) = (cache.clone(), key.clone(), etag.clone());
                        let _ = tokio::task::spawn_blocking(move || cache.put_object(&key, &etag, &data)).await;
                    }
                    // A multipart upload's local copy is whole: the data cache takes the new
                    // version from it after the close returned, then the copy goes.
                    match (&self.cfg.data_cache, &etag, copy) {
                        (Some(cache), Some(etag), Some(copy)) => {
                            let (cache, key, etag) = (cache.clone(), key.clone(), etag.clone());
                            tokio::task::spawn_blocking(move || {
                                cache.put_file(&key, &etag, &copy);
                                let _ = std::fs::remove_file(&copy);
                            });
                        }
                        (_, _, Some(copy)) => {
                            let _ = std::fs::remove_file(copy);
                        }
                        _ => {}
                    }
                }
                if late_meta {
                    self.update_meta(path, st, &key, &posix).await?;
                }
            }
            (Body::Staged(staged), Some((meta, headers))) => {
                let (_, etag) = staged
                    .upload(store, &key, &meta, headers.as_ref(), expect.as_ref())
                    .await
                    .map_err(|e| staging_err(path, "upload", e))?;
                st.wrote(etag.as_deref());
            }
            (_, _) if meta_dirty || xattrs_dirty => self.update_meta(path, st, &key, &posix).await?,
            (_, _) => {}
        }
        st.dirty = Default::default();
        let plain = st.carries_nothing();
        let info = EntryInfo::new(Kind::File, open.size(), std::time::SystemTime::now())
            .with_posix(posix)
            .with_etag(st.version().as_deref())
            .with_plain(plain)
            .with_tagless(plain);
        self.ns.learned(path, info);
        Ok(())
    }

    /// Writes an open file's POSIX metadata and extended attributes onto the version it last
    /// uploaded (a copy onto itself).
    async fn update_meta(&self, path: &RelPath, st: &mut State, key: &str, posix: &Posix) -> FsResult<()> {
        let version = st.version();
        let xattr = st.xattr_header(self.ns.store(), path).await?;
        let etag = self
            .ns
            .replace_posix_meta(key, posix, version.as_deref(), Some(xattr))
            .await
            .map_err(|e| store_err(path, "metadata update", e))?;
        st.wrote(etag.as_deref());
        Ok(())
    }
}
