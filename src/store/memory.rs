//! An in-memory [`ObjectStore`] double with S3's flat-namespace semantics, for unit tests of
//! the layers above. It can be told to fail the next N requests (fault injection).

use super::{
    CopySpec, DeleteFailure, DeleteTarget, Headers, ListPage, ObjectMeta, ObjectStore, StoreError, StoreResult,
    UploadInfo, UserMeta, WriteIf,
};
use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

type FailFn = Box<dyn Fn(&str) -> StoreError + Send + Sync>;

struct MemUpload {
    key: String,
    meta: UserMeta,
    headers: Option<super::Headers>,
    parts: BTreeMap<i32, Bytes>,
}

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Bytes, ObjectMeta)>>,
    uploads: Mutex<HashMap<String, MemUpload>>,
    failures: Mutex<Option<(u32, FailFn)>>,
    /// Requests for these keys fail, every time, until the test clears them.
    key_failures: Mutex<HashMap<String, FailFn>>,
    gets: Arc<GetGauge>,
    gates: Mutex<Vec<Hold>>,
    /// Writes applied whose answer is then lost (a 500 after the fact), counted down.
    lost_answers: AtomicUsize,
    /// Completions take parts below S3's 5 MiB minimum (tests of tiny parts).
    small_parts: std::sync::atomic::AtomicBool,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets completions take parts of any size: for tests that try multipart logic with tiny
    /// parts (S3 refuses a part below 5 MiB that is not the last with EntityTooSmall).
    pub fn allow_small_parts(&self) {
        self.small_parts.store(true, Ordering::Relaxed);
    }

    /// The next `n` requests fail with `make(key)`.
    pub fn fail_next(&self, n: u32, make: impl Fn(&str) -> StoreError + Send + Sync + 'static) {
        *self.failures.lock().unwrap_or_else(|e| e.into_inner()) = Some((n, Box::new(make)));
    }

    /// Every request for `key` (for a copy: its destination) fails with `make(key)`.
    /// The next `n` PUTs are applied, then answered with a 500, as when S3's answer is lost
    /// on the way back.
    pub fn lose_next_answers(&self, n: usize) {
        self.lost_answers.store(n, Ordering::SeqCst);
    }

    fn answer_lost(&self, op: &'static str, key: &str) -> StoreResult<()> {
        let lost = self
            .lost_answers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            return Err(StoreError::from_response(op, key, 500, "InternalError", "answer lost"));
        }
        Ok(())
    }

    pub fn fail_key(&self, key: &str, make: impl Fn(&str) -> StoreError + Send + Sync + 'static) {
        self.key_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), Box::new(make));
    }

    /// What this store's GETs cost (shared: it outlives moving the store into a wrapper).
    pub fn gets(&self) -> Arc<GetGauge> {
        self.gets.clone()
    }

    /// Requests `op` (`"list"` and `"put"`: before they are answered, a PUT before it lands;
    /// `"head"`: answered, then held, as an answer still on the wire) for keys starting with `prefix` wait at the returned gate,
    /// one permit each, so a test can hold one prefix's answer back.
    pub fn hold(&self, op: &'static str, prefix: &str) -> Arc<Gate> {
        let gate = Arc::new(Gate::new());
        self.gates.lock().unwrap_or_else(|e| e.into_inner()).push(Hold {
            op,
            prefix: prefix.to_string(),
            gate: gate.clone(),
        });
        gate
    }

    async fn gate(&self, op: &'static str, key: &str) -> StoreResult<()> {
        let gate = self
            .gates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|h| h.op == op && key.starts_with(&h.prefix))
            .map(|h| h.gate.clone());
        match gate {
            Some(g) => g.pass(op, key).await,
            None => Ok(()),
        }
    }

    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Bytes, ObjectMeta)>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn injected(&self, key: &str) -> StoreResult<()> {
        if let Some(make) = self.key_failures.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Err(make(key));
        }
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, make)) = f.as_mut()
            && *n > 0
        {
            *n -= 1;
            return Err(make(key));
        }
        Ok(())
    }

    fn insert_tagged(&self, key: &str, body: Bytes, meta: &UserMeta, etag: String) {
        let m = ObjectMeta {
            key: key.to_string(),
            size: body.len() as u64,
            last_modified: SystemTime::now(),
            etag: Some(etag),
            user_meta: meta.clone(),
            headers: Default::default(),
        };
        self.lock().insert(key.to_string(), (body, m));
    }

    /// Gives the object at `key` these standard headers (as another client's PUT would).
    pub fn set_headers(&self, key: &str, headers: super::Headers) {
        if let Some((_, m)) = self.lock().get_mut(key) {
            m.headers = headers;
        }
    }
}

impl MemoryStore {
    /// A conditional write's check (the double is not meant for concurrent writers).
    fn check(&self, key: &str, cond: &WriteIf) -> StoreResult<()> {
        let objects = self.lock();
        let holds = match cond {
            WriteIf::Absent => !objects.contains_key(key),
            WriteIf::Matches(want) => holds_version(&objects, key, want),
        };
        if holds {
            Ok(())
        } else {
            Err(StoreError::PreconditionFailed {
                op: "put",
                key: key.to_string(),
            })
        }
    }

    /// `If-Match` of a read or a copy source: PreconditionFailed unless `key` has `version`.
    fn check_version(&self, op: &'static str, key: &str, version: Option<&str>) -> StoreResult<()> {
        match version {
            Some(want) if !holds_version(&self.lock(), key, want) => Err(StoreError::PreconditionFailed {
                op,
                key: key.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// S3's conditional delete: gone already is done, another version stays (412).
    fn remove_version(
        objects: &mut BTreeMap<String, (Bytes, ObjectMeta)>,
        key: &str,
        version: Option<&str>,
    ) -> Result<(), &'static str> {
        match (objects.get(key), version) {
            (None, _) => Ok(()),
            (Some(_), Some(want)) if !holds_version(objects, key, want) => Err("PreconditionFailed"),
            _ => {
                objects.remove(key);
                Ok(())
            }
        }
    }
}

fn holds_version(objects: &BTreeMap<String, (Bytes, ObjectMeta)>, key: &str, want: &str) -> bool {
    objects
        .get(key)
        .and_then(|(_, m)| m.etag.as_deref())
        .is_some_and(|e| e.trim_matches('"') == want.trim_matches('"'))
}

fn no_such_upload(op: &'static str, key: &str) -> StoreError {
    StoreError::from_response(op, key, 404, "NoSuchUpload", "The specified upload does not exist")
}

fn not_found(op: &'static str, key: &str) -> StoreError {
    StoreError::NotFound {
        op,
        key: key.to_string(),
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.injected(key)?;
        // As S3's: the tags are not in a HEAD's answer.
        let answer = self
            .lock()
            .get(key)
            .map(|(_, m)| ObjectMeta {
                headers: super::Headers {
                    tagging: None,
                    ..m.headers.clone()
                },
                ..m.clone()
            })
            .ok_or_else(|| not_found("head", key));
        self.gate("head", key).await?;
        answer
    }

    async fn get_tagging(&self, key: &str) -> StoreResult<Option<String>> {
        self.injected(key)?;
        self.lock()
            .get(key)
            .map(|(_, m)| m.headers.tagging.clone())
            .ok_or_else(|| not_found("get_tagging", key))
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>, version: Option<&str>) -> StoreResult<Bytes> {
        self.injected(key)?;
        self.gate("get", key).await?;
        let g = &self.gets;
        let now = g.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        g.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let delay = *g.delay.lock().unwrap_or_else(|e| e.into_inner());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        g.in_flight.fetch_sub(1, Ordering::Relaxed);
        let body = self
            .lock()
            .get(key)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| not_found("get", key))?;
        self.check_version("get", key, version)?;
        let body = match range {
            None => body,
            Some(r) => {
                let end = (r.end as usize).min(body.len());
                let start = (r.start as usize).min(end);
                body.slice(start..end)
            }
        };
        g.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(body)
    }

    async fn put_with(
        &self,
        key: &str,
        body: Bytes,
        meta: &UserMeta,
        headers: Option<&Headers>,
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        self.injected(key)?;
        self.gate("put", key).await?;
        if let Some(cond) = cond {
            self.check(key, cond)?;
        }
        let etag = hex::encode(Md5::digest(&body));
        self.insert_tagged(key, body, meta, etag.clone());
        if let Some(h) = headers {
            self.set_headers(key, h.clone());
        }
        self.answer_lost("put", key)?;
        Ok(Some(format!("\"{etag}\"")))
    }

    async fn delete(&self, key: &str, version: Option<&str>) -> StoreResult<()> {
        self.injected(key)?;
        self.gate("delete", key).await?;
        Self::remove_version(&mut self.lock(), key, version).map_err(|_| StoreError::PreconditionFailed {
            op: "delete",
            key: key.to_string(),
        })
    }

    async fn delete_many(&self, targets: &[DeleteTarget]) -> StoreResult<Vec<DeleteFailure>> {
        let first = targets.first().map(|t| t.key.as_str()).unwrap_or("");
        self.injected(first)?;
        self.gate("delete_objects", first).await?;
        let mut objects = self.lock();
        Ok(targets
            .iter()
            .filter_map(|t| {
                Self::remove_version(&mut objects, &t.key, t.etag.as_deref())
                    .err()
                    .map(|code| {
                        DeleteFailure::new(
                            t.key.clone(),
                            code,
                            "At least one of the pre-conditions you specified did not hold",
                        )
                    })
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
        self.gate("list", prefix).await?;
        self.injected(prefix)?;
        let page = crate::limits::MAX_LIST_PAGE as i32;
        let max = max_keys.unwrap_or(page).clamp(1, page) as usize;
        let objects = self.lock();
        let mut page = ListPage::default();
        let mut count = 0;
        let mut last_prefix: Option<String> = None;
        for (key, (_, meta)) in objects.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if let Some(t) = token
                && (key.as_str() <= t || key.starts_with(t) && t.ends_with(delimiter.unwrap_or("\0")))
            {
                continue;
            }
            let rest = &key[prefix.len()..];
            let item = match delimiter.and_then(|d| rest.find(d).map(|i| (i, d.len()))) {
                Some((i, dl)) => {
                    let cp = key[..prefix.len() + i + dl].to_string();
                    if last_prefix.as_deref() == Some(cp.as_str()) {
                        continue;
                    }
                    last_prefix = Some(cp.clone());
                    Err(cp)
                }
                None => Ok(meta.clone()),
            };
            if count == max {
                page.next_token = Some(match (&page.objects.last(), &page.common_prefixes.last()) {
                    (Some(o), Some(p)) => o.key.clone().max((*p).clone()),
                    (Some(o), None) => o.key.clone(),
                    (None, Some(p)) => (*p).clone(),
                    (None, None) => String::new(),
                });
                break;
            }
            count += 1;
            match item {
                Ok(m) => page.objects.push(m),
                Err(cp) => page.common_prefixes.push(cp),
            }
        }
        Ok(page)
    }

    async fn copy(&self, c: &CopySpec<'_>) -> StoreResult<Option<String>> {
        self.injected(c.dst)?;
        self.gate("copy", c.dst).await?;
        let (body, old) = self
            .lock()
            .get(c.src)
            .cloned()
            .ok_or_else(|| not_found("copy", c.src))?;
        self.check_version("copy", c.src, c.src_etag)?;
        if let Some(cond) = c.dst_if {
            self.check(c.dst, cond)?;
        }
        // A copy keeps the source's ETag (a multipart one too), as S3 does.
        let etag = old.etag.clone().unwrap_or_else(|| hex::encode(Md5::digest(&body)));
        self.insert_tagged(c.dst, body, c.meta.unwrap_or(&old.user_meta), etag.clone());
        // REPLACE keeps only the headers it sends; COPY keeps the source's but its storage
        // class, which S3 makes STANDARD unless the request names one.
        let headers = match c.meta {
            // The tags are kept either way (the tagging directive is COPY).
            Some(_) => Headers {
                tagging: old.headers.tagging.clone(),
                ..c.headers.cloned().unwrap_or_default()
            },
            None => Headers {
                storage_class: c.headers.and_then(|h| h.storage_class.clone()),
                ..old.headers
            },
        };
        self.set_headers(c.dst, headers);
        Ok(Some(format!("\"{}\"", etag.trim_matches('"'))))
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
        let body = self.get(src, Some(range), src_etag).await?;
        self.upload_part(key, upload_id, part, body).await
    }

    async fn create_multipart_with(
        &self,
        key: &str,
        meta: &UserMeta,
        headers: Option<&Headers>,
    ) -> StoreResult<String> {
        self.injected(key)?;
        let id = uuid::Uuid::new_v4().to_string();
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id.clone(),
            MemUpload {
                key: key.to_string(),
                meta: meta.clone(),
                headers: headers.cloned(),
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    async fn upload_part(&self, key: &str, upload_id: &str, part: i32, body: Bytes) -> StoreResult<String> {
        self.injected(key)?;
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        let up = uploads
            .get_mut(upload_id)
            .ok_or_else(|| no_such_upload("upload_part", key))?;
        let etag = hex::encode(Md5::digest(&body));
        up.parts.insert(part, body);
        Ok(format!("\"{etag}\""))
    }

    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        if let Some(cond) = cond {
            self.check(key, cond)?;
        }
        self.injected(key)?;
        // A completion that fails leaves the upload, as on S3 (to be aborted or retried).
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        let MemUpload {
            key: k,
            meta,
            headers,
            parts: stored,
        } = uploads
            .get(upload_id)
            .ok_or_else(|| no_such_upload("complete_multipart", key))?;
        let (k, meta, headers) = (k.clone(), meta.clone(), headers.clone());
        let mut body = Vec::new();
        for (i, (n, _)) in parts.iter().enumerate() {
            let part = stored.get(n).ok_or_else(|| not_found("complete_multipart", key))?;
            if i + 1 < parts.len()
                && (part.len() as u64) < crate::limits::MIN_PART
                && !self.small_parts.load(Ordering::Relaxed)
            {
                return Err(StoreError::from_response(
                    "complete_multipart",
                    key,
                    400,
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed object size.",
                ));
            }
            body.extend_from_slice(part);
        }
        uploads.remove(upload_id);
        drop(uploads);
        let etag = super::multipart_etag(parts.iter().map(|(_, e)| e.as_str())).unwrap_or_default();
        let etag = format!("\"{etag}\"");
        self.insert_tagged(&k, Bytes::from(body), &meta, etag.clone());
        if let Some(h) = headers {
            self.set_headers(&k, h);
        }
        Ok(Some(etag))
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.injected(key)?;
        match self.uploads.lock().unwrap_or_else(|e| e.into_inner()).remove(upload_id) {
            Some(_) => Ok(()),
            None => Err(no_such_upload("abort_multipart", key)),
        }
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<UploadInfo>> {
        self.injected(prefix)?;
        let uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        Ok(uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| UploadInfo {
                key: u.key.clone(),
                upload_id: id.clone(),
                initiated: None,
            })
            .collect())
    }
}

mod gates;
use gates::Hold;
pub use gates::{Gate, GetGauge};

#[cfg(test)]
mod tests;
