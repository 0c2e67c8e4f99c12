//! The aws-sdk-s3 implementation of [`ObjectStore`].
//!
//! Credentials come from the standard `aws-config` chain (environment, profile, IMDS) unless
//! static ones are given (the embedded server). The SDK's own retries are disabled: retries
//! and their counting live in [`super::retry`].

mod connect;
mod errors;
mod options;
#[cfg(test)]
mod tests;
pub use connect::CREDENTIALS_WAIT;
use errors::causes;
pub use errors::{CHECKSUM_MISMATCH, NOT_S3, WRONG_REGION};
pub use options::{BucketOptions, Checksum, CustomerKey, Encryption, KeyError, SSE_ALGORITHMS};
use options::{encrypted, keyed, part_receipt, read_receipt, source_keyed};

use super::urlenc;
use super::{
    CopySpec, DeleteTarget, Headers, ListPage, ObjectMeta, ObjectStore, StoreError, StoreResult, Unreachable,
    UploadInfo, UserMeta, WriteIf,
};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::{Bytes, BytesMut};
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

/// How to reach S3.
#[derive(Debug, Clone, Default)]
pub struct AwsConfig {
    pub bucket: String,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    pub profile: Option<String>,
    /// Static (access key, secret key); otherwise the default credential chain.
    pub static_credentials: Option<(String, String)>,
    /// New objects (PutObject, CreateMultipartUpload) without a Content-Type get the one
    /// their name's extension says (`--content-type auto`); copies keep their source's.
    pub content_type_auto: bool,
    /// The storage class of new objects (`--storage-class`); None: the bucket's default.
    pub storage_class: Option<String>,
    /// Encryption, requester pays, the expected owner, upload checksums.
    pub options: BucketOptions,
    /// Anonymous requests (`--no-sign-request`), for public buckets: no credentials looked up.
    pub no_sign_request: bool,
}

#[derive(Clone)]
pub struct AwsStore {
    client: Client,
    bucket: String,
    /// Where requests go, for the errors a person reads (`S3` for AWS's own).
    endpoint: Arc<str>,
    /// `--content-type auto`: a new object (PutObject, CreateMultipartUpload) that is given
    /// no Content-Type gets its name's (see [`content_type_of`]); copies keep their source's.
    content_type_auto: bool,
    /// `--storage-class`: the class of a new object whose headers name none.
    storage_class: Option<String>,
    /// The credentials the client signs with (None: anonymous).
    credentials: Option<aws_sdk_s3::config::SharedCredentialsProvider>,
    /// Whether request bodies are part of the signature (SHA-256 of every byte sent).
    sign_payloads: bool,
    opts: BucketOptions,
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|d| SystemTime::try_from(*d).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Sets the standard headers `$h` (a [`Headers`](super::Headers)) on a PutObject,
/// CreateMultipartUpload or CopyObject request: three builder types with the same setters.
/// Not the tags: a copy keeps the source's (PUT and CreateMultipartUpload add them).
macro_rules! with_headers {
    ($req:expr, $h:expr) => {
        $req.set_content_type($h.content_type.clone())
            .set_content_encoding($h.content_encoding.clone())
            .set_cache_control($h.cache_control.clone())
            .set_content_disposition($h.content_disposition.clone())
            .set_content_language($h.content_language.clone())
            .set_storage_class($h.storage_class.as_deref().map(aws_sdk_s3::types::StorageClass::from))
    };
}

/// Percent-encodes a key for `x-amz-copy-source`, keeping `/`.
fn encode_copy_source(bucket: &str, key: &str) -> String {
    format!("{bucket}/{}", urlenc::encode(key, b"/"))
}

#[async_trait]
impl ObjectStore for AwsStore {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let req = self.client.head_object().bucket(&self.bucket).key(key);
        let r = keyed!(req, self.opts).send().await;
        let r = r.map_err(|e| self.fail("head", key, e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: r.content_length().unwrap_or(0).max(0) as u64,
            last_modified: to_system_time(r.last_modified()),
            etag: r.e_tag().map(str::to_string),
            user_meta: r
                .metadata()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            headers: super::Headers {
                content_type: r.content_type().map(str::to_string),
                content_encoding: r.content_encoding().map(str::to_string),
                cache_control: r.cache_control().map(str::to_string),
                content_disposition: r.content_disposition().map(str::to_string),
                content_language: r.content_language().map(str::to_string),
                storage_class: r.storage_class().map(|s| s.as_str().to_string()),
                // A HEAD does not tell the tags (GetObjectTagging does).
                tagging: None,
            },
        })
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>, version: Option<&str>) -> StoreResult<Bytes> {
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_match(version.map(str::to_string));
        req = keyed!(req, self.opts);
        match &range {
            Some(r) if r.start >= r.end => return Ok(Bytes::new()),
            Some(r) => req = req.range(format!("bytes={}-{}", r.start, r.end - 1)),
            // S3 answers the object's checksum to a whole-object GET only, and only when
            // asked; the SDK then checks the bytes against it (a multipart object's
            // composite checksum it cannot, and skips).
            None => req = req.checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled),
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let err = self.fail("get", key, e);
                // A range starting at or past the end: nothing to read.
                if let StoreError::Client { status: 416, .. } = err {
                    return Ok(Bytes::new());
                }
                return Err(err);
            }
        };
        // Into one buffer of the announced size: collecting the chunks and joining them
        // would hold every large read twice.
        let mut out = BytesMut::with_capacity(resp.content_length().unwrap_or(0).clamp(0, 1 << 30) as usize);
        let mut body = resp.body;
        loop {
            match body.try_next().await {
                Ok(Some(chunk)) => out.extend_from_slice(&chunk),
                Ok(None) => return Ok(out.freeze()),
                Err(e) => {
                    let message = causes(&e);
                    // The bytes are not the object S3 holds a checksum of: corrupt where they
                    // are kept, or on the way; either way not worth ten more GETs.
                    if message.to_ascii_lowercase().contains("checksum mismatch") {
                        return Err(StoreError::Client {
                            op: "get",
                            key: key.to_string(),
                            status: 200,
                            code: CHECKSUM_MISMATCH.into(),
                            message,
                        });
                    }
                    return Err(StoreError::Transport {
                        op: "get",
                        key: key.to_string(),
                        message,
                    });
                }
            }
        }
    }

    async fn put_with(
        &self,
        key: &str,
        body: Bytes,
        meta: &UserMeta,
        headers: Option<&Headers>,
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body.clone()));
        let body_for_crc = body;
        for (k, v) in meta {
            req = req.metadata(k, v);
        }
        if let Some(h) = headers {
            req = with_headers!(req, h).set_tagging(h.tagging.clone());
        }
        if let Some(t) = self.default_content_type(key, headers) {
            req = req.content_type(t);
        }
        if let Some(c) = self.default_class(headers) {
            req = req.storage_class(c);
        }
        req = encrypted!(req, self.opts);
        req = match self.opts.checksum {
            Some(c @ Checksum::Crc32c) => req.checksum_crc32_c(c.of(&body_for_crc)),
            Some(c @ Checksum::Crc64Nvme) => req.checksum_crc64_nvme(c.of(&body_for_crc)),
            None => req,
        };
        req = match cond {
            Some(WriteIf::Absent) => req.if_none_match("*"),
            Some(WriteIf::Matches(etag)) => req.if_match(etag),
            None => req,
        };
        let out = if self.sign_payloads {
            req.send().await
        } else {
            req.customize().disable_payload_signing().send().await
        };
        let out = out.map_err(|e| self.fail("put", key, e))?;
        Ok(out.e_tag().map(str::to_string))
    }

    async fn delete(&self, key: &str, version: Option<&str>) -> StoreResult<()> {
        let r = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_match(version.map(str::to_string))
            .send()
            .await;
        match r.map_err(|e| self.fail("delete", key, e)) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_many(&self, targets: &[DeleteTarget]) -> StoreResult<Vec<crate::store::DeleteFailure>> {
        let first = targets.first().map(|t| t.key.clone()).unwrap_or_default();
        let mut ids = Vec::with_capacity(targets.len());
        for t in targets {
            let k = &t.key;
            let id = ObjectIdentifier::builder()
                .key(k)
                .set_e_tag(t.etag.clone())
                .build()
                .map_err(|e| StoreError::Client {
                    op: "delete_objects",
                    key: k.clone(),
                    status: 0,
                    code: "Build".into(),
                    message: e.to_string(),
                })?;
            ids.push(id);
        }
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| StoreError::Client {
                op: "delete_objects",
                key: first.clone(),
                status: 0,
                code: "Build".into(),
                message: e.to_string(),
            })?;
        let r = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await;
        let r = r.map_err(|e| self.fail("delete_objects", &first, e))?;
        Ok(r.errors()
            .iter()
            .map(|e| {
                crate::store::DeleteFailure::new(
                    e.key().unwrap_or(""),
                    e.code().unwrap_or(""),
                    e.message().unwrap_or(""),
                )
            })
            .collect())
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        let r = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .set_continuation_token(token.map(str::to_string))
            .set_max_keys(max_keys)
            // Keys come URL-encoded: a key with a character XML 1.0 cannot carry (a control
            // character) would otherwise make the whole page unreadable.
            .encoding_type(aws_sdk_s3::types::EncodingType::Url)
            .send()
            .await
            .map_err(|e| self.fail("list", prefix, e))?;
        let url = r.encoding_type().is_some();
        let decode = |s: &str| if url { urlenc::decode(s) } else { s.to_string() };
        Ok(ListPage {
            objects: r
                .contents()
                .iter()
                .map(|o| ObjectMeta {
                    key: decode(o.key().unwrap_or("")),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: to_system_time(o.last_modified()),
                    etag: o.e_tag().map(str::to_string),
                    user_meta: UserMeta::new(),
                    // A listing names the storage class (a rename's copy must ask for it).
                    headers: Headers {
                        storage_class: o
                            .storage_class()
                            .map(|c| c.as_str().to_string())
                            .filter(|c| c != "STANDARD"),
                        ..Default::default()
                    },
                })
                .collect(),
            common_prefixes: r
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(decode))
                .collect(),
            next_token: if r.is_truncated().unwrap_or(false) {
                r.next_continuation_token().map(str::to_string)
            } else {
                None
            },
        })
    }

    async fn copy(&self, c: &CopySpec<'_>) -> StoreResult<Option<String>> {
        let (src, dst) = (c.src, c.dst);
        let mut req = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(dst)
            .copy_source(encode_copy_source(&self.bucket, src))
            .set_copy_source_if_match(c.src_etag.map(str::to_string));
        req = match c.dst_if {
            Some(WriteIf::Absent) => req.if_none_match("*"),
            Some(WriteIf::Matches(etag)) => req.if_match(etag),
            None => req,
        };
        if let Some(meta) = c.meta {
            req = req.metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace);
            for (k, v) in meta {
                req = req.metadata(k, v);
            }
            if let Some(h) = c.headers {
                req = with_headers!(req, h);
            }
        } else if let Some(class) = c.headers.and_then(|h| h.storage_class.as_deref()) {
            // A copy keeps the metadata and headers, but not the storage class: S3 makes it
            // STANDARD unless told.
            req = req.storage_class(aws_sdk_s3::types::StorageClass::from(class));
        }
        // No checksum algorithm: S3 gives a copy its source's (moto 5.2 answers a wrong
        // checksum for a copy that names one).
        req = source_keyed!(encrypted!(req, self.opts), self.opts);
        let r = req.send().await.map_err(|e| self.fail("copy", src, e))?;
        Ok(r.copy_object_result().and_then(|c| c.e_tag()).map(str::to_string))
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part: i32,
        src: &str,
        range: Range<u64>,
        src_etag: Option<&str>,
    ) -> StoreResult<String> {
        let req = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part)
            .copy_source(encode_copy_source(&self.bucket, src))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end.saturating_sub(1)))
            .set_copy_source_if_match(src_etag.map(str::to_string));
        let r = source_keyed!(keyed!(req, self.opts), self.opts)
            .send()
            .await
            .map_err(|e| self.fail("upload_part_copy", src, e))?;
        let result = r.copy_part_result();
        let crc = result.and_then(|c| match self.opts.checksum? {
            Checksum::Crc32c => c.checksum_crc32_c(),
            Checksum::Crc64Nvme => c.checksum_crc64_nvme(),
        });
        Ok(part_receipt(result.and_then(|c| c.e_tag()).unwrap_or(""), crc))
    }

    async fn create_multipart_with(
        &self,
        key: &str,
        meta: &UserMeta,
        headers: Option<&Headers>,
    ) -> StoreResult<String> {
        let mut req = self.client.create_multipart_upload().bucket(&self.bucket).key(key);
        for (k, v) in meta {
            req = req.metadata(k, v);
        }
        if let Some(h) = headers {
            req = with_headers!(req, h).set_tagging(h.tagging.clone());
        }
        if let Some(t) = self.default_content_type(key, headers) {
            req = req.content_type(t);
        }
        if let Some(c) = self.default_class(headers) {
            req = req.storage_class(c);
        }
        req = encrypted!(req, self.opts);
        if let Some(c) = self.opts.checksum {
            req = req.checksum_algorithm(c.algorithm()).checksum_type(c.multipart_type());
        }
        let r = req.send().await.map_err(|e| self.fail("create_multipart", key, e))?;
        r.upload_id().map(str::to_string).ok_or_else(|| StoreError::Server {
            op: "create_multipart",
            key: key.to_string(),
            status: 200,
            code: "NoUploadId".into(),
            message: "response had no upload id".into(),
        })
    }

    async fn upload_part(&self, key: &str, upload_id: &str, part: i32, body: Bytes) -> StoreResult<String> {
        let req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part)
            .body(ByteStream::from(body.clone()));
        let req = keyed!(req, self.opts);
        let crc = self.opts.checksum.map(|c| c.of(&body));
        let req = match self.opts.checksum {
            Some(Checksum::Crc32c) => req.set_checksum_crc32_c(crc.clone()),
            Some(Checksum::Crc64Nvme) => req.set_checksum_crc64_nvme(crc.clone()),
            None => req,
        };
        let r = if self.sign_payloads {
            req.send().await
        } else {
            req.customize().disable_payload_signing().send().await
        };
        let r = r.map_err(|e| self.fail("upload_part", key, e))?;
        Ok(part_receipt(r.e_tag().unwrap_or(""), crc.as_deref()))
    }

    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        let parts = parts
            .iter()
            .map(|(n, receipt)| {
                let (etag, crc) = read_receipt(receipt);
                let part = CompletedPart::builder().part_number(*n).e_tag(etag);
                match (self.opts.checksum, crc) {
                    (Some(Checksum::Crc32c), Some(c)) => part.checksum_crc32_c(c),
                    (Some(Checksum::Crc64Nvme), Some(c)) => part.checksum_crc64_nvme(c),
                    _ => part,
                }
                .build()
            })
            .collect::<Vec<_>>();
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        req = keyed!(req, self.opts);
        if let Some(c) = self.opts.checksum {
            req = req.checksum_type(c.multipart_type());
        }
        let req = match cond {
            Some(WriteIf::Absent) => req.if_none_match("*"),
            Some(WriteIf::Matches(etag)) => req.if_match(etag),
            None => req,
        };
        let r = req.send().await.map_err(|e| self.fail("complete_multipart", key, e))?;
        Ok(r.e_tag().map(str::to_string))
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let r = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        match r.map_err(|e| self.fail("abort_multipart", key, e)) {
            Ok(_) => Ok(()),
            // Already completed or aborted: nothing left to clean up.
            Err(StoreError::Client { code, .. }) if code == "NoSuchUpload" => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn get_tagging(&self, key: &str) -> StoreResult<Option<String>> {
        let r = self
            .client
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.fail("get_tagging", key, e))?;
        let tags = r.tag_set();
        Ok((!tags.is_empty()).then(|| urlenc::encode_tags(tags.iter().map(|t| (t.key(), t.value())))))
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<UploadInfo>> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let r = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.fail("list_uploads", prefix, e))?;
            for u in r.uploads() {
                out.push(UploadInfo {
                    key: u.key().unwrap_or("").to_string(),
                    upload_id: u.upload_id().unwrap_or("").to_string(),
                    initiated: u.initiated().and_then(|d| SystemTime::try_from(*d).ok()),
                });
            }
            if !r.is_truncated().unwrap_or(false) {
                return Ok(out);
            }
            key_marker = r.next_key_marker().map(str::to_string);
            id_marker = r.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() {
                return Ok(out);
            }
        }
    }
}
