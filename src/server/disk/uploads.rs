//! Multipart uploads of the embedded store: each under `uploads/<id>/` (its description
//! and one file per part, with the part's ETag beside it) until completed into an object
//! or aborted; they survive a restart.

use super::{
    Attrs, Bucket, DiskError, DiskResult, Entry, MIN_PART_SIZE, Staged, Upload, WriteCondition, etag_eq, lock, now_ns,
};
use md5::{Digest, Md5};
use std::fs::{self, File};
use std::io;
use std::path::PathBuf;

impl Bucket {
    pub fn create_upload(&self, key: &str, attrs: Attrs) -> DiskResult<Upload> {
        let up = Upload {
            id: uuid::Uuid::new_v4().simple().to_string(),
            key: key.to_string(),
            initiated_ns: now_ns(),
            meta: attrs.meta,
            content_type: attrs.content_type,
            tagging: attrs.tagging,
            storage_class: attrs.storage_class,
        };
        let dir = self.dir.join("uploads").join(&up.id);
        fs::create_dir_all(&dir)?;
        let json = serde_json::to_vec(&up).map_err(io::Error::other)?;
        fs::write(dir.join("upload.json"), json)?;
        lock(&self.uploads).insert(up.id.clone(), up.clone());
        Ok(up)
    }

    fn upload(&self, key: &str, id: &str) -> DiskResult<Upload> {
        match lock(&self.uploads).get(id) {
            Some(u) if u.key == key => Ok(u.clone()),
            _ => Err(DiskError::NoSuchUpload),
        }
    }

    fn part_path(&self, id: &str, part: i32) -> PathBuf {
        self.dir.join("uploads").join(id).join(format!("part-{part:05}"))
    }

    /// Stores a staged body as part `part` of an upload; returns its ETag.
    pub fn put_part(&self, key: &str, id: &str, part: i32, mut staged: Staged) -> DiskResult<String> {
        self.upload(key, id)?;
        if !(1..=crate::limits::MAX_PARTS as i32).contains(&part) {
            return Err(DiskError::InvalidPart(format!("part number {part} outside 1..=10000")));
        }
        let etag = hex::encode(staged.finish_md5());
        let path = self.part_path(id, part);
        fs::write(path.with_extension("etag"), &etag)?;
        fs::rename(&staged.path, &path)?;
        Ok(etag)
    }

    pub fn complete_upload(
        &self,
        key: &str,
        id: &str,
        parts: &[(i32, String)],
        cond: &WriteCondition,
    ) -> DiskResult<Entry> {
        let up = self.upload(key, id)?;
        if parts.is_empty() {
            return Err(DiskError::InvalidPart("no parts".into()));
        }
        let mut staged = self.stage()?;
        let mut md5s = Vec::new();
        let mut last = 0;
        for (i, (n, want)) in parts.iter().enumerate() {
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
            let mut f = File::open(&path)?;
            let len = f.metadata()?.len();
            if len < MIN_PART_SIZE && i + 1 < parts.len() {
                return Err(DiskError::EntityTooSmall);
            }
            staged.append_unhashed(&mut f, len)?;
            md5s.extend(hex::decode(etag.trim()).map_err(|_| DiskError::InvalidPart("bad etag".into()))?);
        }
        let etag = format!("{}-{}", hex::encode(Md5::digest(&md5s)), parts.len());
        let attrs = Attrs {
            meta: up.meta.clone(),
            content_type: up.content_type.clone(),
            tagging: up.tagging.clone(),
            storage_class: up.storage_class.clone(),
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
