//! The conversions between the store's types and s3s's DTOs, and the request checks
//! (conditions, copy sources and ranges) the handlers share.

use super::super::disk::{Bucket, DiskError, Entry, Staged, WriteCondition, etag_eq};
use futures::StreamExt;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Result, s3_error};
use std::collections::BTreeMap;

pub(super) fn to_s3(e: DiskError) -> S3Error {
    match e {
        DiskError::NoSuchBucket => s3_error!(NoSuchBucket),
        DiskError::BucketExists => s3_error!(BucketAlreadyOwnedByYou),
        DiskError::BucketNotEmpty => s3_error!(BucketNotEmpty),
        DiskError::NoSuchKey => s3_error!(NoSuchKey),
        DiskError::NoSuchUpload => s3_error!(NoSuchUpload),
        DiskError::PreconditionFailed => s3_error!(PreconditionFailed),
        DiskError::InvalidPart(m) => S3Error::with_message(S3ErrorCode::InvalidPart, m),
        DiskError::EntityTooSmall => s3_error!(EntityTooSmall),
        DiskError::BadDigest => s3_error!(BadDigest),
        // S3's words, which clients may go by.
        DiskError::CopyTooLarge(max) => S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            format!("The specified copy source is larger than the maximum allowable size for a copy source: {max}"),
        ),
        DiskError::Io(e) => S3Error::with_message(S3ErrorCode::InternalError, e.to_string()),
    }
}

pub(super) fn io_err(e: std::io::Error) -> S3Error {
    S3Error::with_message(S3ErrorCode::InternalError, e.to_string())
}

/// Streams a request body into a staged file.
pub(super) async fn stage_body(bucket: &Bucket, body: Option<StreamingBlob>) -> S3Result<Staged> {
    let mut staged = bucket.stage().map_err(io_err)?;
    if let Some(mut body) = body {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| S3Error::with_message(S3ErrorCode::IncompleteBody, e.to_string()))?;
            staged.write(&chunk).map_err(io_err)?;
        }
    }
    Ok(staged)
}

pub(super) fn etag_of(e: &Entry) -> ETag {
    ETag::Strong(e.etag.clone())
}

pub(super) fn cond_matches(cond: &ETagCondition, etag: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(t) => etag_eq(t.value(), etag),
    }
}

/// A copy's preconditions on its source (`x-amz-copy-source-if-match`, `-if-none-match`),
/// for CopyObject and UploadPartCopy alike: 412 when they do not hold.
pub(super) fn check_copy_source(
    if_match: &Option<ETagCondition>,
    if_none_match: &Option<ETagCondition>,
    src: &Entry,
) -> S3Result<()> {
    let refused = if_match.as_ref().is_some_and(|c| !cond_matches(c, &src.etag))
        || if_none_match.as_ref().is_some_and(|c| cond_matches(c, &src.etag));
    if refused {
        return Err(s3_error!(PreconditionFailed));
    }
    Ok(())
}

/// S3's read preconditions: If-Match / If-Unmodified-Since (412) and If-None-Match /
/// If-Modified-Since (304).
pub(super) fn check_read_conditions(
    e: &Entry,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let modified = time::OffsetDateTime::from(e.modified())
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    if let Some(c) = if_match {
        if !cond_matches(c, &e.etag) {
            return Err(s3_error!(PreconditionFailed));
        }
    } else if let Some(t) = if_unmodified_since
        && modified > time::OffsetDateTime::from(t.clone())
    {
        return Err(s3_error!(PreconditionFailed));
    }
    if let Some(c) = if_none_match {
        if cond_matches(c, &e.etag) {
            return Err(s3_error!(NotModified));
        }
    } else if let Some(t) = if_modified_since
        && modified <= time::OffsetDateTime::from(t.clone())
    {
        return Err(s3_error!(NotModified));
    }
    Ok(())
}

pub(super) fn write_condition(
    if_none_match: Option<&ETagCondition>,
    if_match: Option<&ETagCondition>,
) -> WriteCondition {
    WriteCondition {
        if_none_match_any: matches!(if_none_match, Some(ETagCondition::Any)),
        if_match: match if_match {
            Some(ETagCondition::ETag(t)) => Some(t.value().to_string()),
            _ => None,
        },
    }
}

pub(super) fn source(cs: &CopySource) -> S3Result<(&str, &str)> {
    match cs {
        CopySource::Bucket { bucket, key, .. } => Ok((bucket, key)),
        _ => Err(s3_error!(NotImplemented)),
    }
}

pub(super) fn meta_map(m: Option<Metadata>) -> BTreeMap<String, String> {
    m.map(|m| m.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect())
        .unwrap_or_default()
}

pub(super) fn to_metadata(m: &BTreeMap<String, String>) -> Option<Metadata> {
    if m.is_empty() {
        None
    } else {
        Some(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

/// Percent-encoding for `encoding-type=url` listings.
pub(super) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn parse_copy_range(r: &str) -> S3Result<std::ops::Range<u64>> {
    let bad = || S3Error::with_message(S3ErrorCode::InvalidArgument, "bad x-amz-copy-source-range");
    let (a, b) = r
        .strip_prefix("bytes=")
        .and_then(|s| s.split_once('-'))
        .ok_or_else(bad)?;
    let first: u64 = a.parse().map_err(|_| bad())?;
    let last: u64 = b.parse().map_err(|_| bad())?;
    if last < first {
        return Err(bad());
    }
    Ok(first..last + 1)
}
