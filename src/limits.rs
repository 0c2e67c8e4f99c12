//! S3's limits, in one place, under one name each
//! (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html>).

/// The smallest part of a multipart upload, except the last.
pub const MIN_PART: u64 = 5 << 20;
/// The largest part of a multipart upload.
pub const MAX_PART: u64 = 5 << 30;
/// Parts of one multipart upload, numbered 1 to this.
pub const MAX_PARTS: u64 = 10_000;
/// The largest object a multipart upload can describe (10,000 parts of 5 GiB); S3 may
/// refuse less (its documented maximum object size), at the upload.
pub const MAX_OBJECT: u64 = MAX_PARTS * MAX_PART;
/// The largest object CopyObject copies in one request (larger: UploadPartCopy).
pub const MAX_COPY_OBJECT: u64 = 5 << 30;
/// Keys per DeleteObjects request.
pub const MAX_DELETE_BATCH: usize = 1000;
/// Keys (and common prefixes) per ListObjectsV2 page, and uploads per ListMultipartUploads.
pub const MAX_LIST_PAGE: usize = 1000;
/// Bytes of a key, UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;
