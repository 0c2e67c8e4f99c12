//! The `s3s::S3` trait over [`DiskStore`]: request DTOs in, store calls, response DTOs out.

use super::disk::{Attrs, Bucket, DiskError, DiskStore, WriteCondition};
use super::partitions::{Access, Emulator};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use std::io::{Seek, SeekFrom};
use std::sync::Arc;

mod convert;
mod protect;
use convert::*;
use protect::{CustomerKey, checked, checksum_answer, given, sse_answer, sse_of};
pub use protect::{Policy, Signed};

/// The checksum fields of an input DTO, as one [`Checksum`].
macro_rules! sums {
    ($i:expr) => {
        Checksum {
            checksum_crc32: $i.checksum_crc32.clone(),
            checksum_crc32c: $i.checksum_crc32c.clone(),
            checksum_crc64nvme: $i.checksum_crc64nvme.clone(),
            checksum_sha1: $i.checksum_sha1.clone(),
            checksum_sha256: $i.checksum_sha256.clone(),
            checksum_type: None,
        }
    };
}

/// An output DTO with the SSE and checksum fields every object answer carries filled in:
/// `answered!(Output { .. }, entry, checksum_answer(..))`.
macro_rules! answered {
    ($out:expr, $entry:expr, $sums:expr) => {{
        let mut out = $out;
        (
            out.server_side_encryption,
            out.ssekms_key_id,
            out.sse_customer_algorithm,
            out.sse_customer_key_md5,
        ) = sse_answer($entry);
        let (sums, checksum_type) = $sums;
        out.checksum_crc32 = sums.checksum_crc32;
        out.checksum_crc32c = sums.checksum_crc32c;
        out.checksum_crc64nvme = sums.checksum_crc64nvme;
        out.checksum_sha1 = sums.checksum_sha1;
        out.checksum_sha256 = sums.checksum_sha256;
        out.checksum_type = checksum_type;
        out
    }};
}

/// The SSE-C key headers of an input DTO (`copy_source_…` with `source`).
macro_rules! customer_key {
    ($i:expr) => {
        CustomerKey {
            algorithm: $i.sse_customer_algorithm.as_ref(),
            key: $i.sse_customer_key.as_ref(),
            md5: $i.sse_customer_key_md5.as_ref(),
        }
    };
    (source $i:expr) => {
        CustomerKey {
            algorithm: $i.copy_source_sse_customer_algorithm.as_ref(),
            key: $i.copy_source_sse_customer_key.as_ref(),
            md5: $i.copy_source_sse_customer_key_md5.as_ref(),
        }
    };
}

mod listing;
// After the macros, which it uses.
mod multipart;

/// Keys per ListObjectsV2 page and uploads per ListMultipartUploads page, at most.
const MAX_PAGE: i32 = crate::limits::MAX_LIST_PAGE as i32;

pub struct S3Store {
    store: Arc<DiskStore>,
    faults: Arc<super::Faults>,
    emulator: Option<Arc<Emulator>>,
    /// Bytes one CopyObject or UploadPartCopy copies at most (S3: 5 GiB).
    copy_max: u64,
    policy: Policy,
}

impl S3Store {
    pub fn new(
        store: Arc<DiskStore>,
        faults: Arc<super::Faults>,
        emulator: Option<Arc<Emulator>>,
        copy_max: u64,
        policy: Policy,
    ) -> Self {
        S3Store {
            store,
            faults,
            emulator,
            copy_max,
            policy,
        }
    }

    /// The partition emulator's verdict on one access.
    fn admit(&self, access: Access, key: &str) -> S3Result<()> {
        match &self.emulator {
            Some(e) if !e.admit(access, key) => Err(S3Error::with_message(
                S3ErrorCode::SlowDown,
                "Please reduce your request rate.",
            )),
            _ => Ok(()),
        }
    }

    fn check_write_allowed(&self) -> S3Result<()> {
        if self.faults.take_write() {
            return Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                "writes are switched off (fault injection)",
            ));
        }
        Ok(())
    }

    fn check_delete_allowed(&self) -> S3Result<()> {
        if self.faults.deletes_fail() {
            return Err(S3Error::with_message(
                S3ErrorCode::InternalError,
                "deletes are failing (fault injection)",
            ));
        }
        Ok(())
    }

    fn bucket(&self, name: &str) -> S3Result<Arc<Bucket>> {
        self.store.bucket(name).map_err(to_s3)
    }
}

#[async_trait::async_trait]
impl S3 for S3Store {
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.store.create_bucket(&req.input.bucket).map_err(to_s3)?;
        Ok(S3Response::new(CreateBucketOutput::default()))
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.store.delete_bucket(&req.input.bucket).map_err(to_s3)?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn list_buckets(&self, _req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self
            .store
            .bucket_names()
            .into_iter()
            .map(|(name, created)| Bucket_ {
                name: Some(name),
                creation_date: Some(Timestamp::from(created)),
                bucket_region: None,
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.check_write_allowed()?;
        self.admit(Access::Write, &req.input.key)?;
        let input = req.input;
        let sse = sse_of(
            input.server_side_encryption.as_ref(),
            input.ssekms_key_id.as_ref(),
            customer_key!(input),
        )?;
        self.policy.check_sse(sse.as_ref())?;
        let sums = sums!(input);
        self.policy.check_checksum(given(&sums))?;
        let b = self.bucket(&input.bucket)?;
        let staged = stage_body(&b, input.body).await?;
        if let Some(len) = input.content_length
            && len >= 0
            && staged.size() != len as u64
        {
            return Err(s3_error!(IncompleteBody));
        }
        let checksum = checked(&staged, given(&sums), None)?;
        let cond = write_condition(input.if_none_match.as_ref(), input.if_match.as_ref());
        let entry = b
            .commit(
                staged,
                &input.key,
                None,
                Attrs {
                    meta: meta_map(input.metadata),
                    content_type: input.content_type.map(|c| c.to_string()),
                    tagging: input.tagging,
                    storage_class: class_named(input.storage_class.as_ref()),
                    sse,
                    checksum,
                },
                &cond,
            )
            .map_err(to_s3)?;
        Ok(S3Response::new(answered!(
            PutObjectOutput {
                e_tag: Some(etag_of(&entry)),
                ..Default::default()
            },
            &entry,
            checksum_answer(&entry, true)
        )))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        self.admit(Access::Read, &req.input.key)?;
        let input = req.input;
        let b = self.bucket(&input.bucket)?;
        let (mut file, e) = b.open(&input.key).map_err(to_s3)?;
        customer_key!(input).opens(e.sse.as_ref())?;
        check_read_conditions(
            &e,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let (range, content_range) = match &input.range {
            None => (0..e.size, None),
            Some(r) => {
                let r = r.check(e.size).map_err(|_| s3_error!(InvalidRange))?;
                let cr = format!("bytes {}-{}/{}", r.start, r.end.saturating_sub(1), e.size);
                (r, Some(cr))
            }
        };
        file.seek(SeekFrom::Start(range.start)).map_err(io_err)?;
        let len = range.end - range.start;
        let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), len);
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024);
        // The checksum describes the whole object: S3 answers it to a whole-object GET only.
        let asked = input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let sums = checksum_answer(&e, asked && content_range.is_none());
        Ok(S3Response::new(answered!(
            GetObjectOutput {
                body: Some(StreamingBlob::wrap(stream)),
                content_length: Some(len as i64),
                content_range,
                accept_ranges: Some("bytes".into()),
                last_modified: Some(Timestamp::from(e.modified())),
                e_tag: Some(etag_of(&e)),
                metadata: to_metadata(&e.meta),
                content_type: e.content_type.as_deref().and_then(|c| c.parse().ok()),
                storage_class: e.storage_class.clone().map(StorageClass::from),
                ..Default::default()
            },
            &e,
            sums
        )))
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        self.admit(Access::Read, &req.input.key)?;
        let input = req.input;
        let b = self.bucket(&input.bucket)?;
        let e = b.lookup(&input.key).ok_or_else(|| s3_error!(NoSuchKey))?;
        let tag_set = crate::store::urlenc::decode_tags(e.tagging.as_deref().unwrap_or(""))
            .into_iter()
            .map(|(k, v)| Tag {
                key: Some(k),
                value: Some(v),
            })
            .collect();
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set,
            version_id: None,
        }))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.admit(Access::Read, &req.input.key)?;
        let input = req.input;
        let b = self.bucket(&input.bucket)?;
        let e = b.lookup(&input.key).ok_or_else(|| s3_error!(NoSuchKey))?;
        customer_key!(input).opens(e.sse.as_ref())?;
        check_read_conditions(
            &e,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let asked = input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let sums = checksum_answer(&e, asked);
        Ok(S3Response::new(answered!(
            HeadObjectOutput {
                content_length: Some(e.size as i64),
                accept_ranges: Some("bytes".into()),
                last_modified: Some(Timestamp::from(e.modified())),
                e_tag: Some(etag_of(&e)),
                metadata: to_metadata(&e.meta),
                content_type: e.content_type.as_deref().and_then(|c| c.parse().ok()),
                storage_class: e.storage_class.clone().map(StorageClass::from),
                ..Default::default()
            },
            &e,
            sums
        )))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.check_delete_allowed()?;
        self.admit(Access::Write, &req.input.key)?;
        let input = req.input;
        let b = self.bucket(&input.bucket)?;
        let if_match = match &input.if_match {
            Some(ETagCondition::ETag(t)) => Some(t.value().to_string()),
            _ => None,
        };
        b.delete(&input.key, if_match.as_deref()).map_err(to_s3)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.check_delete_allowed()?;
        let input = req.input;
        let b = self.bucket(&input.bucket)?;
        if input.delete.objects.len() > crate::limits::MAX_DELETE_BATCH {
            return Err(S3Error::with_message(S3ErrorCode::MalformedXML, "more than 1000 keys"));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for o in input.delete.objects {
            // Every key is one write against its partition; a throttled key is reported in
            // the response, the others go ahead.
            if self.admit(Access::Write, &o.key).is_err() {
                errors.push(Error {
                    key: Some(o.key),
                    code: Some("SlowDown".into()),
                    message: Some("Please reduce your request rate.".into()),
                    version_id: None,
                });
                continue;
            }
            // The key's ETag, when given, names the only version to delete (S3, general
            // purpose buckets, since September 2025).
            let if_match = o.e_tag.as_ref().map(|t| match t {
                ETag::Strong(v) | ETag::Weak(v) => v.clone(),
            });
            match b.delete(&o.key, if_match.as_deref()) {
                Ok(()) if !quiet => deleted.push(DeletedObject {
                    key: Some(o.key),
                    ..Default::default()
                }),
                Ok(()) => {}
                Err(e) => {
                    let code = match e {
                        DiskError::PreconditionFailed => "PreconditionFailed",
                        DiskError::NoSuchKey => "NoSuchKey",
                        _ => "InternalError",
                    };
                    errors.push(Error {
                        key: Some(o.key),
                        code: Some(code.into()),
                        message: Some(e.to_string()),
                        version_id: None,
                    })
                }
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: if errors.is_empty() { None } else { Some(errors) },
            ..Default::default()
        }))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.check_write_allowed()?;
        self.admit(Access::Write, &req.input.key)?;
        let headers = req.headers;
        let input = req.input;
        let (src_bucket, src_key) = source(&input.copy_source)?;
        let src = self.bucket(src_bucket)?;
        let dst = self.bucket(&input.bucket)?;
        // A copy is encrypted as it says, not as its source was.
        let sse = sse_of(
            input.server_side_encryption.as_ref(),
            input.ssekms_key_id.as_ref(),
            customer_key!(input),
        )?;
        self.policy.check_sse(sse.as_ref())?;
        let (staged, src_entry) = src.stage_copy(src_key, None, self.copy_max).map_err(to_s3)?;
        customer_key!(source input).opens(src_entry.sse.as_ref())?;
        // The checksum algorithm the copy asks for, else its source's.
        let algorithm = input
            .checksum_algorithm
            .as_ref()
            .map(|a| a.as_str().to_string())
            .or_else(|| src_entry.checksum.as_ref().map(|c| c.algorithm.clone()));
        let checksum = checked(&staged, None, algorithm.as_deref())?;
        check_copy_source(
            &input.copy_source_if_match,
            &input.copy_source_if_none_match,
            &src_entry,
        )?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let (meta, content_type) = if replace {
            (meta_map(input.metadata), input.content_type.map(|c| c.to_string()))
        } else {
            (src_entry.meta.clone(), src_entry.content_type.clone())
        };
        // The tags are the source's unless the tagging directive says REPLACE.
        let tagging = match input.tagging_directive.as_ref().map(|d| d.as_str()) {
            Some(d) if d == TaggingDirective::REPLACE => input.tagging,
            _ => src_entry.tagging.clone(),
        };
        // A copy is STANDARD unless the request names a class, as on S3.
        let attrs = Attrs {
            meta,
            content_type,
            tagging,
            storage_class: class_named(input.storage_class.as_ref()),
            sse,
            checksum,
        };
        // A multipart ETag is not the MD5 of the body; a copy keeps it, as S3 does.
        let etag = src_entry.etag.contains('-').then(|| src_entry.etag.clone());
        // The destination's own conditions (If-None-Match / If-Match on CopyObject), which
        // this s3s version does not parse: read from the headers.
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let cond = WriteCondition {
            if_none_match_any: header("if-none-match") == Some("*"),
            if_match: header("if-match").map(str::to_string),
        };
        let entry = dst.commit(staged, &input.key, etag, attrs, &cond).map_err(to_s3)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag_of(&entry)),
                last_modified: Some(Timestamp::from(entry.modified())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.listing_list_objects_v2(req).await
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        self.listing_list_objects(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.multipart_create_multipart_upload(req).await
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.multipart_upload_part(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.multipart_upload_part_copy(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.multipart_complete_multipart_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.multipart_abort_multipart_upload(req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.multipart_list_multipart_uploads(req).await
    }
}

type Bucket_ = s3s::dto::Bucket;

/// The storage class a write names, STANDARD as none (S3 answers no `x-amz-storage-class`
/// for a STANDARD object).
fn class_named(class: Option<&StorageClass>) -> Option<String> {
    class
        .map(|c| c.as_str().to_string())
        .filter(|c| c != StorageClass::STANDARD)
}
