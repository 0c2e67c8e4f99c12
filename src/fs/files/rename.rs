//! An open file renamed: alone (its object moves, the state follows it) or with the
//! directory it is in.

use super::state::{OpenState, State};
use super::{Body, OpenFiles};
use crate::data::staging::Base;
use crate::fs::cache::EntryInfo;
use crate::fs::error::{FsError, FsResult};
use crate::layout::RelPath;
use crate::store::{CopySpec, DeleteTarget, StoreError};

impl OpenFiles {
    /// Renames a file that is open here: its pending data is uploaded first, then the object
    /// moves, and the open state follows it to the new key. The copy replaces only what the
    /// rename's check saw at `to` (`dst`), as a closed file's does
    /// (`Namespace::target_condition`). False when `ino` has no open state.
    pub(in crate::fs) async fn rename_open_file(
        &self,
        ino: u64,
        from: &RelPath,
        to: &RelPath,
        dst_info: Option<&EntryInfo>,
        noreplace: bool,
    ) -> FsResult<bool> {
        let Some(open) = self.get(ino) else {
            return Ok(false);
        };
        let mut st = open.lock().await;
        self.flush_held(from, &open, &mut st).await?;
        let (src, dst) = (st.key.clone(), self.ns.layout().file_key(to)?);
        // The version just uploaded (or opened) is the one moved, and the one removed.
        let version = st.version();
        let target = self.ns.target_condition(dst_info, noreplace);
        let class = st.class_headers();
        let copy = CopySpec::new(&src, &dst)
            .from_version(version.as_deref())
            .only_if(target.as_ref())
            .with_headers(class.as_ref());
        let etag = match self.ns.copy_object(&copy, open.size()).await {
            Err(e @ StoreError::PreconditionFailed { .. }) => {
                let errno = if noreplace { libc::EEXIST } else { libc::ESTALE };
                return Err(FsError::new(
                    errno,
                    format!("rename {from} -> {to}: another client wrote one of them meanwhile; nothing was moved"),
                )
                .caused_by(e));
            }
            r => r?,
        };
        self.ns.delete_keys(vec![DeleteTarget::version(src, version)]).await?;
        st.wrote(etag.as_deref());
        self.reanchor(ino, &open, &mut st, to)?;
        Ok(true)
    }

    /// Points an open file's state at the object now at `to` (after a rename moved it).
    fn reanchor(&self, ino: u64, open: &OpenState, st: &mut State, to: &RelPath) -> FsResult<()> {
        let dst = self.ns.layout().file_key(to)?;
        let size = open.size();
        let staged = self.staging_file(
            to,
            Some(Base {
                key: dst.clone(),
                size,
                etag: st.version(),
            }),
        )?;
        if let Body::Staged(old) = &st.body {
            self.staging.release(old.size());
        }
        self.staging.take(size);
        st.body = Body::Staged(staged);
        st.key = dst;
        if let Some(f) = self.files().get_mut(&ino) {
            f.path = to.clone();
        }
        Ok(())
    }

    /// Before a directory rename: uploads every open file below `dir`; returns them.
    pub(in crate::fs) async fn flush_open_under(&self, dir: &RelPath) -> FsResult<Vec<(u64, RelPath)>> {
        let open: Vec<(u64, RelPath)> = self
            .files()
            .iter()
            .filter(|(_, f)| f.path.starts_with(dir) && f.linked())
            .map(|(ino, f)| (*ino, f.path.clone()))
            .collect();
        for (ino, _) in &open {
            self.flush(*ino, true).await?;
        }
        Ok(open)
    }

    /// After a directory rename: open files below it follow their objects.
    pub(in crate::fs) async fn reanchor_moved(
        &self,
        moved: Vec<(u64, RelPath)>,
        from: &RelPath,
        to: &RelPath,
    ) -> FsResult<()> {
        for (ino, path) in moved {
            let Some(open) = self.get(ino) else { continue };
            let mut st = open.lock().await;
            // The copy's ETag is not passed up from the directory rename: the next upload
            // of this file goes without a condition (README, "Versions named").
            st.wrote(None);
            self.reanchor(ino, &open, &mut st, &path.rebase(from, to))?;
        }
        Ok(())
    }
}
