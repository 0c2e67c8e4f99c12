//! The filesystem's error type: an errno for the kernel plus a message for the log.
//!
//! Built once, where the failure is understood, and converted at the FUSE edge.

use crate::layout::LayoutError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FsError {
    pub errno: i32,
    pub message: String,
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        FsError {
            errno,
            message: message.into(),
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        FsError::new(libc::ENOENT, format!("{what}: no such file or directory"))
    }

    /// Expected outcomes (ENOENT on lookup, EEXIST...) log at debug; the rest at warn.
    pub fn is_expected(&self) -> bool {
        matches!(
            self.errno,
            libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::ENODATA
        )
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        // A missing object found mid-operation is a race with another writer: ENOENT is
        // honest. Everything else (including exhausted retries on SlowDown) is EIO, never
        // ENOENT, so programs do not conclude that a file is gone when S3 was only busy.
        FsError::new(e.errno(), e.to_string())
    }
}

impl From<LayoutError> for FsError {
    fn from(e: LayoutError) -> Self {
        let errno = match e {
            LayoutError::NameTooLong(_) | LayoutError::KeyTooLong(_) => libc::ENAMETOOLONG,
            LayoutError::Reserved(_) => libc::EPERM,
            _ => libc::EINVAL,
        };
        FsError::new(errno, e.to_string())
    }
}
