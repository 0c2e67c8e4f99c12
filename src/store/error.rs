//! What a store call can fail with, once for every store: [`StoreError`] (S3's answers by
//! kind, with a matchable `NotFound` and `PreconditionFailed`; no answer and why; retries
//! exhausted), the per-key failures of a bulk delete, and the kinds of request the counters
//! and the retry policy go by.

/// The kinds of request, for counters and for the retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Head,
    Get,
    Put,
    List,
    Delete,
    DeleteMany,
    Copy,
    CreateMultipart,
    UploadPart,
    UploadPartCopy,
    CompleteMultipart,
    AbortMultipart,
    ListUploads,
    GetTagging,
}

impl OpKind {
    pub const ALL: [OpKind; 14] = [
        OpKind::Head,
        OpKind::Get,
        OpKind::Put,
        OpKind::List,
        OpKind::Delete,
        OpKind::DeleteMany,
        OpKind::Copy,
        OpKind::CreateMultipart,
        OpKind::UploadPart,
        OpKind::UploadPartCopy,
        OpKind::CompleteMultipart,
        OpKind::AbortMultipart,
        OpKind::ListUploads,
        OpKind::GetTagging,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Head => "head",
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::List => "list",
            OpKind::Delete => "delete",
            OpKind::DeleteMany => "delete_objects",
            OpKind::Copy => "copy",
            OpKind::CreateMultipart => "create_multipart",
            OpKind::UploadPart => "upload_part",
            OpKind::UploadPartCopy => "upload_part_copy",
            OpKind::CompleteMultipart => "complete_multipart",
            OpKind::AbortMultipart => "abort_multipart",
            OpKind::ListUploads => "list_uploads",
            OpKind::GetTagging => "get_tagging",
        }
    }

    pub fn index(self) -> usize {
        OpKind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// A failed request. `NotFound` is the one callers match on; the rest carry enough to log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {key}: not found")]
    NotFound { op: &'static str, key: String },
    #[error("{op} {key}: precondition failed")]
    PreconditionFailed { op: &'static str, key: String },
    #[error("{op} {key}: throttled (SlowDown)")]
    Throttled { op: &'static str, key: String },
    #[error("{op} {key}: server error {status} {code}: {message}")]
    Server {
        op: &'static str,
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{op} {key}: request rejected {status} {code}: {message}")]
    Client {
        op: &'static str,
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{op} {key}: transport error: {message}")]
    Transport {
        op: &'static str,
        key: String,
        message: String,
    },
    #[error(
        "{count} deletes not confirmed by S3 (first: {key}): {message}; they stay deleted in this mount and are tried again"
    )]
    DeletesUnconfirmed { key: String, count: usize, message: String },
    /// Keys of a bulk delete that S3 answered with an error of their own (DeleteObjects
    /// answers 200 and lists them): the first one's code and message.
    #[error("{count} keys not deleted (first: {key}: {code} {message})")]
    DeletesFailed {
        key: String,
        count: usize,
        code: String,
        message: String,
    },
    /// No answer at all, for a reason a person has to fix before any request can work
    /// (see [`Unreachable`]); `endpoint` is where the requests went.
    #[error("{op} {key}: {why} ({endpoint})")]
    Unreachable {
        op: &'static str,
        key: String,
        why: Unreachable,
        endpoint: String,
    },
    #[error("{op} {key}: gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        op: &'static str,
        key: String,
        attempts: u32,
        last: Box<StoreError>,
    },
}

/// Why a request got no answer, when the cause is one a person fixes (the SDK's own
/// description, a page of Debug output, goes to the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// No credential source gave credentials.
    NoCredentials,
    /// Nothing listens at the endpoint's address and port.
    Refused,
    /// The endpoint's host name does not resolve.
    Dns,
    /// The TLS handshake failed (an `https://` URL on a plain-HTTP port, or a certificate
    /// this host does not trust).
    Tls,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unreachable::NoCredentials => "no AWS credentials",
            Unreachable::Refused => "connection refused",
            Unreachable::Dns => "the host name does not resolve",
            Unreachable::Tls => "TLS handshake failed",
        })
    }
}

impl StoreError {
    /// Errors worth another attempt: throttling, 5xx, broken connections. An endpoint that
    /// cannot be reached may come back (a restarted server), so that is one too, but see
    /// [`StoreError::is_unreachable`].
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Throttled { .. }
                | StoreError::Server { .. }
                | StoreError::Transport { .. }
                | StoreError::Unreachable { .. }
        )
    }

    /// No answer, for a reason a person has to fix: worth a long wait only once the
    /// endpoint has answered before (see [`retry`]).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Unreachable { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    pub fn is_throttle(&self) -> bool {
        matches!(self, StoreError::Throttled { .. })
    }

    /// S3 refusing a CopyObject whose source is larger than one copy may be (5 GiB).
    pub fn is_copy_too_large(&self) -> bool {
        matches!(self, StoreError::Client { code, message, .. }
            if code == "InvalidRequest" && message.contains("larger than the maximum allowable size"))
    }

    /// Classifies an S3 error response.
    pub fn from_response(op: &'static str, key: &str, status: u16, code: &str, message: &str) -> StoreError {
        let key = key.to_string();
        match (status, code) {
            (_, "NoSuchBucket") | (_, "NoSuchUpload") => StoreError::Client {
                op,
                key,
                status,
                code: code.to_string(),
                message: message.to_string(),
            },
            (404, _) | (_, "NoSuchKey") | (_, "NotFound") => StoreError::NotFound { op, key },
            // 409: another conditional write to the key was in progress; it won.
            (412, _) | (_, "PreconditionFailed") | (409, "ConditionalRequestConflict") => {
                StoreError::PreconditionFailed { op, key }
            }
            (503, _) | (_, "SlowDown") | (_, "Throttling") | (_, "RequestLimitExceeded") => {
                StoreError::Throttled { op, key }
            }
            // A 200 whose body is an error (CompleteMultipartUpload, CopyObject: S3 sends 200
            // first and the outcome later; the SDK may not even read the code behind the
            // keep-alive whitespace): S3 documents these as retryable.
            (s, _) if s >= 500 || s == 200 || code == "InternalError" || code == "RequestTimeout" => {
                StoreError::Server {
                    op,
                    key,
                    status,
                    code: code.to_string(),
                    message: message.to_string(),
                }
            }
            _ => StoreError::Client {
                op,
                key,
                status,
                code: code.to_string(),
                message: message.to_string(),
            },
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A key DeleteObjects did not delete, with S3's error code and message for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteFailure {
    pub key: String,
    pub code: String,
    pub message: String,
}

impl DeleteFailure {
    pub fn new(key: impl Into<String>, code: impl Into<String>, message: impl Into<String>) -> Self {
        DeleteFailure {
            key: key.into(),
            code: code.into(),
            message: message.into(),
        }
    }

    /// The partition refused it for now (SlowDown): worth sending again, and a signal to
    /// pace that prefix.
    pub fn is_throttle(&self) -> bool {
        self.code == "SlowDown"
    }

    /// The key holds another version than the one named (someone else wrote it): the
    /// object stays, and that is the outcome, not a failure to retry.
    pub fn is_precondition(&self) -> bool {
        self.code == "PreconditionFailed"
    }

    /// The key holds nothing: deleted already.
    pub fn is_gone(&self) -> bool {
        self.code == "NoSuchKey"
    }

    /// Worth sending again: a throttle or a server-side failure.
    pub fn is_retryable(&self) -> bool {
        self.is_throttle() || self.code == "InternalError" || self.code == "ServiceUnavailable"
    }
}

impl std::fmt::Display for DeleteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {}", self.key, self.code, self.message)
    }
}

impl StoreError {
    /// A server error that carries no S3 error code.
    pub fn code_is_empty(&self) -> bool {
        matches!(self, StoreError::Server { code, .. } if code.is_empty())
    }

    /// The errno a program should see for this failure: ENOENT for a missing object, else
    /// EIO.
    pub fn errno(&self) -> i32 {
        match self {
            e if e.is_not_found() => libc::ENOENT,
            _ => libc::EIO,
        }
    }

    /// S3's answer for an upload id it does not know (completed, aborted, or never made).
    pub fn is_no_such_upload(&self) -> bool {
        matches!(self, StoreError::Client { code, .. } if code == "NoSuchUpload")
    }
}
