//! Multipart uploads of the embedded store: each under `uploads/<id>/` (its description
//! and one file per part, with the part's ETag beside it) until completed into an object
//! or aborted; they survive a restart.

use super::{
    Attrs, Bucket, DiskError, DiskResult, Entry, MIN_PART_SIZE, ObjectChecksum, Staged, Upload, WriteCondition,
    etag_eq, lock, now_ns,
};

/// A part as a completion lists it.
#[derive(Debug, Clone, Default)]
pub struct CompletedPartInfo {
    pub number: i32,
    pub etag: String,
    /// The part's checksum by the upload's algorithm, when the request gives one.
    pub checksum: Option<String>,
}
use md5::{Digest, Md5};
use std::fs::{self, File};
use std::io;
use std::path::PathBuf;

impl Bucket {
    /// A new upload of `key`; with `checksum` (algorithm, full object), every part's checksum
    /// is kept and the object gets one.
    pub fn create_upload(&self, key: &str, attrs: Attrs, checksum: Option<(String, bool)>) -> DiskResult<Upload> {
        let up = Upload {
            id: uuid::Uuid::new_v4().simple().to_string(),
            key: key.to_string(),
            initiated_ns: now_ns(),
            meta: attrs.meta,
            content_type: attrs.content_type,
            tagging: attrs.tagging,
            storage_class: attrs.storage_class,
            sse: attrs.sse,
            checksum,
        };
        let dir = self.dir.join("uploads").join(&up.id);
        fs::create_dir_all(&dir)?;
        let json = serde_json::to_vec(&up).map_err(io::Error::other)?;
        fs::write(dir.join("upload.json"), json)?;
        lock(&self.uploads).insert(up.id.clone(), up.clone());
        Ok(up)
    }

    pub fn upload(&self, key: &str, id: &str) -> DiskResult<Upload> {
        match lock(&self.uploads).get(id) {
            Some(u) if u.key == key => Ok(u.clone()),
            _ => Err(DiskError::NoSuchUpload),
        }
    }

    fn part_path(&self, id: &str, part: i32) -> PathBuf {
        self.dir.join("uploads").join(id).join(format!("part-{part:05}"))
    }

    /// Stores a staged body as part `part` of an upload; returns its ETag and, when the
    /// upload keeps checksums, the part's (which must be `given`, when one is given).
    pub fn put_part(
        &self,
        key: &str,
        id: &str,
        part: i32,
        mut staged: Staged,
        given: Option<&str>,
    ) -> DiskResult<(String, Option<String>)> {
        let up = self.upload(key, id)?;
        if !(1..=crate::limits::MAX_PARTS as i32).contains(&part) {
            return Err(DiskError::InvalidPart(format!("part number {part} outside 1..=10000")));
        }
        let crc = match &up.checksum {
            Some((algorithm, _)) => staged.checksum(algorithm)?,
            None => None,
        };
        if let (Some(want), Some(got)) = (given, &crc)
            && want != got
        {
            return Err(DiskError::BadDigest);
        }
        let etag = hex::encode(staged.finish_md5());
        let path = self.part_path(id, part);
        fs::write(path.with_extension("etag"), &etag)?;
        match &crc {
            Some(c) => fs::write(path.with_extension("crc"), c)?,
            None => {
                let _ = fs::remove_file(path.with_extension("crc"));
            }
        }
        fs::rename(&staged.path, &path)?;
        Ok((etag, crc))
    }

    pub fn complete_upload(
        &self,
        key: &str,
        id: &str,
        parts: &[CompletedPartInfo],
        cond: &WriteCondition,
        whole: Option<&(String, String)>,
    ) -> DiskResult<Entry> {
        let up = self.upload(key, id)?;
        let mut crcs = Vec::new();
        if parts.is_empty() {
            return Err(DiskError::InvalidPart("no parts".into()));
        }
        let mut staged = self.stage()?;
        let mut md5s = Vec::new();
        let mut last = 0;
        for (
            i,
            CompletedPartInfo {
                number: n,
                etag: want,
                checksum,
            },
        ) in parts.iter().enumerate()
        {
            if *n <= last {
                return Err(DiskError::InvalidPart("parts not in ascending order".into()));
            }
            last = *n;
            let path = self.part_path(id, *n);
            let etag = fs::read_to_string(path.with_extension("etag"))
                .map_err(|_| DiskError::InvalidPart(format!("part {n} missing")))?;
            if !etag_eq(&etag, want) {
                return Err(DiskError::InvalidPart(format!("part {n} etag mismatch")));
            }
            if let Some((_, full_object)) = &up.checksum {
                let kept = fs::read_to_string(path.with_extension("crc")).ok();
                match (checksum, &kept) {
                    (Some(c), Some(k)) if c != k => {
                        return Err(DiskError::InvalidPart(format!("part {n}: checksum does not match")));
                    }
                    // S3 wants every part's checksum in a composite upload's completion.
                    (None, _) if !full_object => {
                        return Err(DiskError::InvalidPart(format!("part {n}: no checksum")));
                    }
                    _ => {}
                }
                crcs.push(kept.unwrap_or_default());
            }
            let mut f = File::open(&path)?;
            let len = f.metadata()?.len();
            if len < MIN_PART_SIZE && i + 1 < parts.len() {
                return Err(DiskError::EntityTooSmall);
            }
            staged.append_unhashed(&mut f, len)?;
            md5s.extend(hex::decode(etag.trim()).map_err(|_| DiskError::InvalidPart("bad etag".into()))?);
        }
        let etag = format!("{}-{}", hex::encode(Md5::digest(&md5s)), parts.len());
        let checksum = match &up.checksum {
            Some((algorithm, true)) => staged.checksum(algorithm)?.map(|value| ObjectChecksum {
                algorithm: algorithm.clone(),
                value,
                full_object: true,
            }),
            // S3's composite checksum: the checksum of the parts' checksums, and their count.
            Some((algorithm, false)) => {
                let mut h = super::hasher(algorithm).ok_or(DiskError::BadDigest)?;
                for c in &crcs {
                    h.update(&aws_smithy_types::base64::decode(c).map_err(|_| DiskError::BadDigest)?);
                }
                let sum = h.finalize();
                [
                    sum.checksum_crc32,
                    sum.checksum_crc32c,
                    sum.checksum_sha1,
                    sum.checksum_sha256,
                ]
                .into_iter()
                .flatten()
                .next()
                .map(|v| ObjectChecksum {
                    algorithm: algorithm.clone(),
                    value: format!("{v}-{}", parts.len()),
                    full_object: false,
                })
            }
            None => None,
        };
        // The whole object's checksum, when the completion gives one, must be the parts'.
        if let Some((algorithm, value)) = whole
            && checksum
                .as_ref()
                .is_none_or(|c| c.algorithm != *algorithm || c.value != *value)
        {
            return Err(DiskError::BadDigest);
        }
        let attrs = Attrs {
            meta: up.meta.clone(),
            content_type: up.content_type.clone(),
            tagging: up.tagging.clone(),
            storage_class: up.storage_class.clone(),
            sse: up.sse.clone(),
            checksum,
        };
        let entry = self.commit(staged, key, Some(etag), attrs, cond)?;
        self.remove_upload(id);
        Ok(entry)
    }

    pub fn abort_upload(&self, key: &str, id: &str) -> DiskResult<()> {
        self.upload(key, id)?;
        self.remove_upload(id);
        Ok(())
    }

    fn remove_upload(&self, id: &str) {
        lock(&self.uploads).remove(id);
        let _ = fs::remove_dir_all(self.dir.join("uploads").join(id));
    }

    pub fn uploads(&self, prefix: &str) -> Vec<Upload> {
        let mut v: Vec<Upload> = lock(&self.uploads)
            .values()
            .filter(|u| u.key.starts_with(prefix))
            .cloned()
            .collect();
        v.sort_by(|a, b| (&a.key, a.initiated_ns).cmp(&(&b.key, b.initiated_ns)));
        v
    }
}
