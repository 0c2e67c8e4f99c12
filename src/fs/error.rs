//! The filesystem's error type: an errno for the kernel plus a message for the log.
//!
//! Built once, where the failure is understood, and converted at the FUSE edge.

use crate::data::staging::StagingError;
use crate::data::upload::UploadError;
use crate::layout::{LayoutError, RelPath};
use crate::store::StoreError;

/// How loudly a failure is logged where it reaches the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// An answer programs expect (ENOENT on lookup, EEXIST, ENOTEMPTY...): debug.
    Expected,
    /// Something went wrong that the user may need to know: warn.
    Failure,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FsError {
    pub errno: i32,
    pub message: String,
    pub level: LogLevel,
    /// What failed underneath (an S3 error, a layout rule), for the log and for callers that
    /// look deeper than the errno.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// The level follows the errno ([`FsError::expected_errno`]).
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        FsError {
            errno,
            message: message.into(),
            level: if Self::expected_errno(errno) {
                LogLevel::Expected
            } else {
                LogLevel::Failure
            },
            source: None,
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        FsError::new(libc::ENOENT, format!("{what}: no such file or directory"))
    }

    /// Keeps `source` as the cause.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Errnos that are ordinary answers, not failures.
    fn expected_errno(errno: i32) -> bool {
        matches!(errno, libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::ENODATA)
    }

    pub fn is_expected(&self) -> bool {
        self.level == LogLevel::Expected
    }

    /// The S3 error underneath, if that is what failed.
    pub fn store_error(&self) -> Option<&StoreError> {
        self.source.as_deref().and_then(|s| s.downcast_ref::<StoreError>())
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        // A missing object found mid-operation is a race with another writer: ENOENT is
        // honest. Everything else (including exhausted retries on SlowDown) is EIO, never
        // ENOENT, so programs do not conclude that a file is gone when S3 was only busy.
        FsError::new(e.errno(), e.to_string()).caused_by(e)
    }
}

impl From<LayoutError> for FsError {
    fn from(e: LayoutError) -> Self {
        let errno = match e {
            LayoutError::NameTooLong(_) | LayoutError::KeyTooLong(_) => libc::ENAMETOOLONG,
            LayoutError::Reserved(_) => libc::EPERM,
            _ => libc::EINVAL,
        };
        FsError::new(errno, e.to_string()).caused_by(e)
    }
}

/// An upload's failure: a write out of sequence (EINVAL) or the store's.
pub(super) fn upload_err(path: &RelPath, e: UploadError) -> FsError {
    match e {
        UploadError::NotSequential { .. } | UploadError::Finished => FsError::new(libc::EINVAL, format!("{path}: {e}")),
        UploadError::Store(s) => store_err(path, "upload", s),
    }
}

/// A staged file's failure: the local disk's errno (ENOSPC...) or the store's.
pub(super) fn staging_err(path: &RelPath, what: &str, e: StagingError) -> FsError {
    match e {
        StagingError::Store(s) => store_err(path, what, s),
        local => FsError::new(local.errno(), format!("{path}: {what} failed: {local}")).caused_by(local),
    }
}

/// A store failure of an operation on `path`, with what was being done; a refused
/// conditional write says another host or client wrote the file, and that theirs stays.
pub(super) fn store_err(path: &RelPath, what: &str, e: StoreError) -> FsError {
    let errno = e.errno();
    if matches!(e, StoreError::PreconditionFailed { .. }) {
        return FsError::new(
            errno,
            format!(
                "{path}: {what} refused: another host or S3 client wrote the file since this mount saw it, and their version stays ({e})"
            ),
        )
        .caused_by(e);
    }
    FsError::new(errno, format!("{path}: {what} failed: {e}")).caused_by(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_failure_keeps_its_cause_and_is_logged_as_a_failure() {
        let e: FsError = StoreError::Throttled {
            op: "head",
            key: "3/a".into(),
        }
        .into();
        assert_eq!((e.errno, e.level), (libc::EIO, LogLevel::Failure));
        assert!(matches!(e.store_error(), Some(StoreError::Throttled { .. })));
        assert!(std::error::Error::source(&e).is_some());
        let gone: FsError = StoreError::NotFound {
            op: "head",
            key: "3/a".into(),
        }
        .into();
        assert_eq!((gone.errno, gone.level), (libc::ENOENT, LogLevel::Expected));
        let long: FsError = LayoutError::NameTooLong("x".repeat(300)).into();
        assert_eq!(long.errno, libc::ENAMETOOLONG);
        assert!(long.store_error().is_none() && long.source.is_some());
    }
}
