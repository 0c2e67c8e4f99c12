//! Failures as a person reads them: every SDK error becomes one [`StoreError`], classified
//! once, here (unreachable and why, an answer that is not S3's, a bucket in another region,
//! S3's own codes), its causes in one line; the SDK's Debug output goes to the debug log only.

use super::AwsStore;
use crate::store::{StoreError, Unreachable};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

impl AwsStore {
    /// [`map_err`] for this store's endpoint.
    pub(super) fn fail<E, R>(&self, op: &'static str, key: &str, e: SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + HasStatus + 'static,
    {
        map_err(op, key, &self.endpoint, e)
    }
}

/// Why a request that got no answer got none, when a person can tell from it what to fix;
/// None for the rest (a dropped connection, a timeout: transient).
pub(super) fn unreachable(e: &(dyn std::error::Error + 'static)) -> Option<Unreachable> {
    let mut text = String::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return Some(Unreachable::Refused);
        }
        text.push_str(&err.to_string().to_ascii_lowercase());
        text.push('\n');
        cur = err.source();
    }
    if text.contains("credentials") && (text.contains("load") || text.contains("provide")) {
        Some(Unreachable::NoCredentials)
    } else if text.contains("connection refused") {
        Some(Unreachable::Refused)
    } else if text.contains("dns error") || text.contains("failed to lookup address") {
        Some(Unreachable::Dns)
    } else if [
        "tls",
        "certificate",
        "invalidcontenttype",
        "corrupt message",
        "handshake",
    ]
    .iter()
    .any(|w| text.contains(w))
    {
        Some(Unreachable::Tls)
    } else {
        None
    }
}

/// An error and its causes, each by its Display, in one line: what a log line at info or
/// warn shows (the SDK's Debug output of the same goes to the debug log).
pub(super) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !text.is_empty() && parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

pub(super) fn map_err<E, R>(op: &'static str, key: &str, endpoint: &str, e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus + 'static,
{
    let status = e.raw_response().map(|r| r.status_u16());
    let code = e.code().unwrap_or("").to_string();
    let message = e.message().unwrap_or("").to_string();
    if let Some(region) = region_of_answer(
        status,
        &code,
        &message,
        e.raw_response().and_then(|r| r.header("x-amz-bucket-region")),
    ) {
        return StoreError::Client {
            op,
            key: key.to_string(),
            status: status.unwrap_or(0),
            code: WRONG_REGION.into(),
            message: if region.is_empty() {
                "the bucket is in another region".into()
            } else {
                format!("the bucket is in region {region}")
            },
        };
    }
    // An answer without S3's error document, where S3 always sends one (every request but
    // a HEAD): the endpoint is some other web server.
    if let Some(s) = status
        && code.is_empty()
        && !op.starts_with("head")
        && ((400..500).contains(&s) || s == 501)
    {
        return StoreError::Client {
            op,
            key: key.to_string(),
            status: s,
            code: NOT_S3.into(),
            message: format!("HTTP {s} without an S3 error document"),
        };
    }
    if let SdkError::DispatchFailure(df) = &e
        && let Some(why) = df.as_connector_error().and_then(|c| unreachable(c))
    {
        tracing::debug!(op, key, error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "no answer");
        return StoreError::Unreachable {
            op,
            key: key.to_string(),
            why,
            endpoint: endpoint.to_string(),
        };
    }
    match (status, &e) {
        (Some(s), SdkError::ServiceError(_)) => StoreError::from_response(op, key, s, &code, &message),
        // A successful answer the SDK cannot parse (a listing with a key XML cannot carry, a
        // server that is not S3): the same bytes come back on a retry, so it is not retried.
        // A body cut off on the way is a transport failure, retried.
        (Some(s), SdkError::ResponseError(_)) if (200..300).contains(&s) => {
            let message = aws_smithy_types::error::display::DisplayErrorContext(&e).to_string();
            if message.to_ascii_lowercase().contains("xml") {
                StoreError::Client {
                    op,
                    key: key.to_string(),
                    status: s,
                    code: "UnreadableResponse".into(),
                    message,
                }
            } else {
                StoreError::Transport {
                    op,
                    key: key.to_string(),
                    message,
                }
            }
        }
        (Some(s), SdkError::ResponseError(_)) => StoreError::from_response(op, key, s, &code, &message),
        (_, SdkError::ConstructionFailure(_)) => StoreError::Client {
            op,
            key: key.to_string(),
            status: 0,
            code: "ConstructionFailure".into(),
            message: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
        },
        _ => {
            tracing::debug!(op, key, error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "transport error");
            StoreError::Transport {
                op,
                key: key.to_string(),
                message: causes(&e),
            }
        }
    }
}

/// The code of [`StoreError::Client`] for a GET whose bytes do not match the checksum S3
/// answered with them.
pub const CHECKSUM_MISMATCH: &str = "ChecksumMismatch";

/// The code of [`StoreError::Client`] for an answer that is not S3's (see [`map_err`]).
pub const NOT_S3: &str = "NotS3";

/// The code of [`StoreError::Client`] for a bucket in another region than the client's; its
/// message ends with the bucket's region when S3 said it.
pub const WRONG_REGION: &str = "WrongRegion";

/// Status and headers of a raw HTTP response, whatever its type.
pub(super) trait HasStatus {
    fn status_u16(&self) -> u16;
    fn header(&self, name: &str) -> Option<String>;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_u16(&self) -> u16 {
        self.status().as_u16()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers().get(name).map(str::to_string)
    }
}

/// The region a wrong-region answer names: S3's `x-amz-bucket-region` header (a 301
/// PermanentRedirect), or the message of an AuthorizationHeaderMalformed ("... expecting
/// 'eu-west-1'").
pub(super) fn region_of_answer(
    status: Option<u16>,
    code: &str,
    message: &str,
    header: Option<String>,
) -> Option<String> {
    let from_message = || {
        let rest = message.split("expecting '").nth(1)?;
        Some(rest.split('\'').next()?.to_string())
    };
    match (status, code) {
        (Some(301), _) | (_, "PermanentRedirect") | (_, "IllegalLocationConstraintException") => {
            Some(header.or_else(from_message).unwrap_or_default())
        }
        (_, "AuthorizationHeaderMalformed") => from_message(),
        _ => None,
    }
}
