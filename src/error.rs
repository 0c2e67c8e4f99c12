//! The errors of the commands ([`ToolError`]): each layer's own typed error, wrapped with
//! the context a person needs (the path, the local file, the step), said once where the
//! command prints it (`prefixfs: ...` and a non-zero exit).

use crate::bucket::{LayoutCheck, OpenError};
use crate::fs::error::FsError;
use crate::invalid::Invalid;
use crate::layout::LayoutError;
use crate::migrate::MigrateError;
use crate::mount::MountError;
use crate::store::StoreError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A value the person gave that cannot be used.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// What a path in the bucket is does not fit the command.
    #[error("{path}: {problem}")]
    Path { path: String, problem: PathProblem },
    #[error(transparent)]
    Open(Box<OpenError>),
    #[error(transparent)]
    Layout(Box<LayoutCheck>),
    #[error(transparent)]
    Names(#[from] LayoutError),
    #[error(transparent)]
    Mount(Box<MountError>),
    #[error(transparent)]
    Migrate(Box<MigrateError>),
    /// A namespace operation (its message names the path).
    #[error(transparent)]
    Fs(Box<FsError>),
    #[error("{}", crate::bucket::explain(.0).unwrap_or_else(|| .0.to_string()))]
    Store(Box<StoreError>),
    #[error(transparent)]
    Upload(Box<crate::data::upload::UploadError>),
    /// A step on the bucket failed: `context` says which (`reading 2017/a.txt`).
    #[error("{context}: {source}")]
    In {
        context: String,
        #[source]
        source: Box<ToolError>,
    },
    /// A local file or directory (`cp`'s other side, an output).
    #[error("{}: {source}", .path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the output: {0}")]
    Output(std::io::Error),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    /// Starting the mount in the background.
    #[error("{step}: {source}")]
    Daemon {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The background mount exited before it was ready: the end of its log says why.
    #[error("mount failed ({status}); log {}:\n{tail}", .log.display())]
    MountFailed {
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("starting the S3 server: {0}")]
    Serve(std::io::Error),
    #[error("{}: {source} (is it a prefixfs mount?)", .mountpoint.display())]
    Stats {
        mountpoint: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a path in the bucket (or a local one) does not fit a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    #[error("no such file or directory")]
    NotFound,
    /// A directory where a file is needed; the hint says how to ask for the tree.
    #[error("is a directory{hint}")]
    IsDir { hint: &'static str },
    #[error("not UTF-8, S3 keys are")]
    NotUtf8,
    #[error("no file name")]
    NoName,
    #[error("not below the root {root}")]
    NotBelow { root: String },
    #[error("no prefixfs layout descriptor at or above it (give --root, or run prefixfs init)")]
    NoLayout,
}

/// The layers' errors, boxed: a command's result stays small on the happy path.
macro_rules! boxed_from {
    ($($variant:ident($t:ty)),* $(,)?) => {$(
        impl From<$t> for ToolError {
            fn from(e: $t) -> ToolError {
                ToolError::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    Open(OpenError),
    Layout(LayoutCheck),
    Mount(MountError),
    Migrate(MigrateError),
    Fs(FsError),
    Store(StoreError),
    Upload(crate::data::upload::UploadError),
);

impl ToolError {
    pub fn path(path: impl std::fmt::Display, problem: PathProblem) -> ToolError {
        ToolError::Path {
            path: path.to_string(),
            problem,
        }
    }

    /// A local file's error.
    pub fn local(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ToolError {
        let path = path.into();
        move |source| ToolError::Local { path, source }
    }

    /// `self`, in the step `context` says.
    pub fn during(self, context: impl std::fmt::Display) -> ToolError {
        ToolError::In {
            context: context.to_string(),
            source: Box::new(self),
        }
    }
}

/// Context for the result of a step: `.during("reading 2017/a.txt")?`.
pub trait During<T> {
    fn during(self, context: impl std::fmt::Display) -> Result<T, ToolError>;
}

impl<T, E: Into<ToolError>> During<T> for Result<T, E> {
    fn during(self, context: impl std::fmt::Display) -> Result<T, ToolError> {
        self.map_err(|e| e.into().during(context))
    }
}

pub type ToolResult<T> = Result<T, ToolError>;
