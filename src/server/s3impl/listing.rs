//! Listings of the embedded server: ListObjectsV2 and ListObjects (v1), with and without a
//! delimiter, page by page, keys URL-encoded when asked. The `S3` impl in the parent hands
//! each request here.

use super::convert::*;
use super::{MAX_PAGE, S3Store};
use crate::server::disk::Resume;
use crate::server::partitions::Access;
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

impl S3Store {
    pub(super) async fn listing_list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.admit(Access::Read, req.input.prefix.as_deref().unwrap_or(""))?;
        let input = req.input;
        let b = self.bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = input.max_keys.unwrap_or(MAX_PAGE).clamp(0, MAX_PAGE) as usize;
        let resume = match (&input.continuation_token, &input.start_after) {
            (Some(t), _) => {
                Some(Resume::decode(t).ok_or_else(|| s3_error!(InvalidArgument, "bad continuation token"))?)
            }
            (None, Some(sa)) => Some(Resume::AfterKey(sa.clone())),
            (None, None) => None,
        };
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: &str| if url { url_encode(s) } else { s.to_string() };
        let page = if max == 0 {
            Default::default()
        } else {
            b.list(&prefix, input.delimiter.as_deref(), resume, max)
        };
        let key_count = (page.objects.len() + page.prefixes.len()) as i32;
        let contents = page
            .objects
            .iter()
            .map(|e| Object {
                key: Some(enc(&e.key)),
                size: Some(e.size as i64),
                e_tag: Some(etag_of(e)),
                last_modified: Some(Timestamp::from(e.modified())),
                storage_class: Some(
                    e.storage_class
                        .clone()
                        .map(ObjectStorageClass::from)
                        .unwrap_or_else(|| ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
                ),
                ..Default::default()
            })
            .collect();
        let common_prefixes = page
            .prefixes
            .iter()
            .map(|p| CommonPrefix { prefix: Some(enc(p)) })
            .collect();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc(&prefix)),
            delimiter: input.delimiter.map(|d| enc(&d)),
            max_keys: Some(max as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after.map(|s| enc(&s)),
            is_truncated: Some(page.next.is_some()),
            next_continuation_token: page.next.map(|r| r.encode()),
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    pub(super) async fn listing_list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let marker = req.input.marker.clone();
        let v2 = req.map_input(|i| ListObjectsV2Input {
            bucket: i.bucket,
            delimiter: i.delimiter,
            encoding_type: i.encoding_type,
            max_keys: i.max_keys,
            prefix: i.prefix,
            start_after: i.marker,
            ..Default::default()
        });
        let out = self.listing_list_objects_v2(v2).await?;
        Ok(out.map_output(|o| {
            let next_marker = if o.is_truncated == Some(true) {
                let last_obj = o.contents.as_ref().and_then(|c| c.last()).and_then(|c| c.key.clone());
                let last_cp = o
                    .common_prefixes
                    .as_ref()
                    .and_then(|c| c.last())
                    .and_then(|c| c.prefix.clone());
                last_obj.max(last_cp)
            } else {
                None
            };
            ListObjectsOutput {
                name: o.name,
                prefix: o.prefix,
                delimiter: o.delimiter,
                max_keys: o.max_keys,
                is_truncated: o.is_truncated,
                contents: o.contents,
                common_prefixes: o.common_prefixes,
                encoding_type: o.encoding_type,
                marker,
                next_marker,
                ..Default::default()
            }
        }))
    }
}
