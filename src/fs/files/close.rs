//! The end of an open file: the last close uploads what changed and takes the state out of
//! the table ([`OpenFiles::release`]); what cannot be uploaded then is kept in `lost+found/`;
//! an unlink while open stops its uploads; unmount uploads every open file.

use super::state::{Body, Life, State};
use super::{OpenFiles, lock};
use crate::fs::error::{FsError, FsResult};
use crate::layout::RelPath;
use std::sync::Arc;

impl OpenFiles {
    /// The last close of a handle of `ino` for writing: when it was the last one, uploads
    /// what changed and drops the state; data that cannot be uploaded goes to lost+found.
    pub(in crate::fs) async fn release(&self, ino: u64) -> FsResult<()> {
        let last = match self.files().get_mut(&ino) {
            Some(f) => {
                f.handles -= 1;
                f.handles == 0
            }
            None => false,
        };
        if !last {
            return Ok(());
        }
        let result = self.flush(ino, true).await;
        // Another open may have attached while we were uploading: then the state stays.
        let Some((open, path)) = (match self.files().get(&ino) {
            Some(f) if f.handles == 0 => Some((f.state.clone(), f.path.clone())),
            _ => None,
        }) else {
            return result;
        };
        // The state's lock is held until the state has left the table: an unlink or a
        // truncate by path that finds the state waits for what follows; one that comes later
        // finds the file closed.
        let mut st = open.lock().await;
        // A truncate or chmod by path (no handle) may have changed the state between the
        // upload above and now (the kernel sends `release` after `close` returned): upload
        // that too, or it would be silently undone.
        let changed = st.dirty.meta || st.dirty.xattrs || st.body.unsent();
        let result = match result {
            Ok(()) if changed => self.flush_held(&path, &open, &mut st).await,
            r => r,
        };
        let removed = {
            let mut files = self.files();
            match files.get(&ino) {
                Some(f) if f.handles == 0 && Arc::ptr_eq(&f.state, &open) => files.remove(&ino),
                _ => None,
            }
        };
        let Some(file) = removed else { return result };
        let unlinked = open.life() == Life::Unlinked;
        open.enter(Life::Closed);
        if unlinked && let Body::Stream(up) = &mut st.body {
            // Unlinked while open: none of it is to reach S3, and the parts already sent
            // would stay as an incomplete upload (stored, and billed) until aborted.
            up.abort().await;
        }
        if let Body::Staged(s) = &st.body {
            self.staging.release(s.size());
        }
        if let Err(e) = &result {
            self.keep_in_lost_found(&file.path, &mut st, e).await;
        }
        result
    }

    /// The last close could not upload `path`: its data goes to `lost+found/` in the cache
    /// directory (whole, or as much as could be kept, as the log says).
    async fn keep_in_lost_found(&self, path: &RelPath, st: &mut State, e: &FsError) {
        let dir = self.cfg.cache_dir.join("lost+found");
        let name = crate::data::kept::name_for(path.as_str());
        let kept = match &mut st.body {
            Body::Staged(s) => s.keep(self.ns.store().as_ref(), &dir, &name).await,
            Body::Stream(up) => {
                let kept = up.keep(&dir, &name).await;
                up.abort().await;
                kept
            }
        };
        match kept {
            Ok(k) if k.is_complete() => tracing::error!(%path, error = %e, "could not upload at close; {k}"),
            Ok(k) => {
                tracing::error!(%path, error = %e, "could not upload at close; only part of the data could be kept: {k}")
            }
            Err(io) => {
                tracing::error!(%path, error = %e, io = %io, "could not upload at close, nor keep the data locally: the write is lost")
            }
        }
        // What S3 has is what it had before (or nothing): ask it again, rather than take the
        // path for removed.
        self.ns.forget(path);
    }

    /// Marks `ino`'s open state as unlinked (its handles stay usable, nothing more is
    /// uploaded), and waits for an upload of it already under way to end.
    pub(in crate::fs) async fn unlink(&self, ino: u64) {
        let Some(open) = self.get(ino) else { return };
        open.enter(Life::Unlinked);
        // Uploads hold the state's lock from their start to the cache update after them.
        drop(open.lock().await);
    }

    /// Uploads every open file (before unmount); false if one failed (each is logged).
    pub(in crate::fs) async fn flush_open_files(&self) -> bool {
        let inos: Vec<u64> = lock(&self.table.0).keys().copied().collect();
        let mut all = true;
        for ino in inos {
            if let Err(e) = self.flush(ino, true).await {
                all = false;
                tracing::error!(ino, error = %e, "could not upload an open file at unmount");
            }
        }
        all
    }
}
