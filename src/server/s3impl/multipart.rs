//! Multipart uploads of the embedded server: create, parts (sent or copied), complete,
//! abort and list, with their checksums and SSE-C keys (see `protect`). The `S3` impl in
//! the parent hands each request here.

use super::convert::*;
use super::protect::{CustomerKey, checked, checksum_fields, given, sse_of};
use super::{MAX_PAGE, S3Store, class_named};
use crate::server::disk::{Attrs, CompletedPartInfo};
use crate::server::partitions::Access;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use std::time::SystemTime;

impl S3Store {
    pub(super) async fn multipart_create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.check_write_allowed()?;
        self.admit(Access::Write, &req.input.key)?;
        let input = req.input;
        let sse = sse_of(
            input.server_side_encryption.as_ref(),
            input.ssekms_key_id.as_ref(),
            customer_key!(input),
        )?;
        self.policy.check_sse(sse.as_ref())?;
        // S3: CRC64NVME is always a full-object checksum; the others are composite unless
        // the upload says FULL_OBJECT.
        let checksum = input.checksum_algorithm.as_ref().map(|a| {
            let a = a.as_str().to_ascii_uppercase();
            let full = a == "CRC64NVME"
                || input
                    .checksum_type
                    .as_ref()
                    .is_some_and(|t| t.as_str() == ChecksumType::FULL_OBJECT);
            (a, full)
        });
        let b = self.bucket(&input.bucket)?;
        let up = b
            .create_upload(
                &input.key,
                Attrs {
                    meta: meta_map(input.metadata),
                    content_type: input.content_type.map(|c| c.to_string()),
                    tagging: input.tagging,
                    storage_class: class_named(input.storage_class.as_ref()),
                    sse,
                    checksum: None,
                },
                checksum,
            )
            .map_err(to_s3)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(up.id),
            ..Default::default()
        }))
    }

    pub(super) async fn multipart_upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.check_write_allowed()?;
        self.admit(Access::Write, &req.input.key)?;
        let input = req.input;
        let b = self.bucket(&input.bucket)?;
        let up = b.upload(&input.key, &input.upload_id).map_err(to_s3)?;
        customer_key!(input).opens(up.sse.as_ref())?;
        let sums = sums!(input);
        let given = given(&sums);
        self.policy.check_checksum(given)?;
        let staged = stage_body(&b, input.body).await?;
        // A checksum by another algorithm than the upload's is still checked.
        if let Some((name, _)) = given
            && up.checksum.as_ref().is_none_or(|(a, _)| a != name)
        {
            checked(&staged, given, None)?;
        }
        let (etag, crc) = b
            .put_part(
                &input.key,
                &input.upload_id,
                input.part_number,
                staged,
                given.map(|(_, v)| v),
            )
            .map_err(to_s3)?;
        let sums = match (&up.checksum, crc) {
            (Some((a, _)), Some(c)) => checksum_fields(a, Some(c)),
            _ => Checksum::default(),
        };
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(etag)),
            checksum_crc32: sums.checksum_crc32,
            checksum_crc32c: sums.checksum_crc32c,
            checksum_crc64nvme: sums.checksum_crc64nvme,
            checksum_sha1: sums.checksum_sha1,
            checksum_sha256: sums.checksum_sha256,
            ..Default::default()
        }))
    }

    pub(super) async fn multipart_upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.check_write_allowed()?;
        self.admit(Access::Write, &req.input.key)?;
        let input = req.input;
        let (src_bucket, src_key) = source(&input.copy_source)?;
        let src = self.bucket(src_bucket)?;
        let dst = self.bucket(&input.bucket)?;
        let range = input.copy_source_range.as_deref().map(parse_copy_range).transpose()?;
        let up = dst.upload(&input.key, &input.upload_id).map_err(to_s3)?;
        customer_key!(input).opens(up.sse.as_ref())?;
        let (staged, src_entry) = src.stage_copy(src_key, range, self.copy_max).map_err(to_s3)?;
        customer_key!(source input).opens(src_entry.sse.as_ref())?;
        check_copy_source(
            &input.copy_source_if_match,
            &input.copy_source_if_none_match,
            &src_entry,
        )?;
        let (etag, crc) = dst
            .put_part(&input.key, &input.upload_id, input.part_number, staged, None)
            .map_err(to_s3)?;
        let sums = match (&up.checksum, crc) {
            (Some((a, _)), Some(c)) => checksum_fields(a, Some(c)),
            _ => Checksum::default(),
        };
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(Timestamp::from(SystemTime::now())),
                checksum_crc32: sums.checksum_crc32,
                checksum_crc32c: sums.checksum_crc32c,
                checksum_crc64nvme: sums.checksum_crc64nvme,
                checksum_sha1: sums.checksum_sha1,
                checksum_sha256: sums.checksum_sha256,
            }),
            ..Default::default()
        }))
    }

    pub(super) async fn multipart_complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.check_write_allowed()?;
        if let Err(slow_down) = self.admit(Access::Write, &req.input.key) {
            // As S3 does for a completion: 200 OK, then the error in the body.
            let future = async move { Err(slow_down) };
            return Ok(S3Response::new(CompleteMultipartUploadOutput {
                future: Some(Box::pin(future)),
                ..Default::default()
            }));
        }
        let input = req.input;
        let b = self.bucket(&input.bucket)?;
        // The key, needed with every part, is optional here; a wrong one is refused.
        let up = b.upload(&input.key, &input.upload_id).map_err(to_s3)?;
        if input.sse_customer_key.is_some() {
            customer_key!(input).opens(up.sse.as_ref())?;
        }
        let mut parts = Vec::new();
        for p in input.multipart_upload.and_then(|m| m.parts).unwrap_or_default() {
            let n = p
                .part_number
                .ok_or_else(|| s3_error!(InvalidPart, "part without number"))?;
            let checksum = given(&sums!(p)).map(|(_, v)| v.to_string());
            let etag = p.e_tag.map(|e| e.value().to_string()).unwrap_or_default();
            parts.push(CompletedPartInfo {
                number: n,
                etag,
                checksum,
            });
        }
        // A whole object's checksum the completion gives must be the one the parts make.
        let whole = given(&sums!(input)).map(|(a, v)| (a.to_string(), v.to_string()));
        let cond = write_condition(input.if_none_match.as_ref(), input.if_match.as_ref());
        let entry = b
            .complete_upload(&input.key, &input.upload_id, &parts, &cond, whole.as_ref())
            .map_err(to_s3)?;
        if self.faults.take_lost_completion() {
            return Err(S3Error::with_message(
                S3ErrorCode::InternalError,
                "the upload was completed and this answer lost (fault injection)",
            ));
        }
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(etag_of(&entry)),
            ..Default::default()
        }))
    }

    pub(super) async fn multipart_abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.admit(Access::Write, &req.input.key)?;
        let input = req.input;
        let b = self.bucket(&input.bucket)?;
        b.abort_upload(&input.key, &input.upload_id).map_err(to_s3)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    pub(super) async fn multipart_list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.admit(Access::Read, req.input.prefix.as_deref().unwrap_or(""))?;
        let input = req.input;
        let b = self.bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = input.max_uploads.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE) as usize;
        let after = input.key_marker.clone();
        let mut all: Vec<_> = b
            .uploads(&prefix)
            .into_iter()
            .filter(|u| after.as_ref().is_none_or(|m| u.key > *m))
            .collect();
        let truncated = all.len() > max;
        all.truncate(max);
        let next_key_marker = truncated.then(|| all.last().map(|u| u.key.clone())).flatten();
        let uploads = all
            .into_iter()
            .map(|u| MultipartUpload {
                key: Some(u.key),
                upload_id: Some(u.id),
                initiated: Some(Timestamp::from(
                    std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u.initiated_ns),
                )),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(truncated),
            next_key_marker,
            uploads: Some(uploads),
            ..Default::default()
        }))
    }
}
