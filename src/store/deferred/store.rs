//! The [`ObjectStore`] face of [`DeferredDeletes`]: every call sees a queued delete as done
//! (invariant 1), and a write to a key with a delete pending holds it (invariant 2).

use super::*;

fn gone(op: &'static str, key: &str) -> StoreError {
    StoreError::NotFound {
        op,
        key: key.to_string(),
    }
}

#[async_trait]
impl ObjectStore for DeferredDeletes {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        if self.hidden(key) {
            return Err(gone("head", key));
        }
        self.s.inner.head(key).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>, version: Option<&str>) -> StoreResult<Bytes> {
        if self.hidden(key) {
            // A reader that held the file open when it was unlinked still reads the version
            // it opened: the delete waits for its last close (see `pin`).
            let parked = self.s.lock().parked.contains(key);
            if !parked {
                return Err(gone("get", key));
            }
        }
        self.s.inner.get(key, range, version).await
    }

    async fn put_with(
        &self,
        key: &str,
        body: Bytes,
        meta: &UserMeta,
        headers: Option<&Headers>,
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        match cond {
            Some(WriteIf::Absent) if self.hidden(key) => {
                self.create_over_pending_delete(key, |cond| {
                    let body = body.clone();
                    async move { self.s.inner.put_with(key, body, meta, headers, Some(&cond)).await }
                })
                .await
            }
            Some(_) => {
                self.before_conditional(key).await?;
                self.s.inner.put_with(key, body, meta, headers, cond).await
            }
            None => {
                self.write(key, self.s.inner.put_with(key, body, meta, headers, cond))
                    .await
            }
        }
    }

    async fn delete(&self, key: &str, version: Option<&str>) -> StoreResult<()> {
        // Journalled before it is acknowledged (invariant 3).
        self.s.journal(&[Record::DeleteQueued {
            key: key.to_string(),
            at_ms: crate::store::journal::now_ms(),
            etag: version.map(str::to_string),
        }]);
        {
            let mut q = self.s.lock();
            if let Some(h) = q.held.get_mut(key) {
                // A write of the key is in flight: this delete goes out after it.
                h.unlinked_again = true;
                return Ok(());
            }
            if q.pins.contains_key(key) {
                // Open for reading here: it goes out at the last reader's unpin.
                q.versions.insert(key.to_string(), version.map(str::to_string));
                q.parked.insert(key.to_string());
                return Ok(());
            }
            q.failed.remove(key);
            q.versions.insert(key.to_string(), version.map(str::to_string));
            q.enqueue(key.to_string());
        }
        self.s.spawn_flusher();
        Ok(())
    }

    async fn delete_many(&self, targets: &[DeleteTarget]) -> StoreResult<Vec<DeleteFailure>> {
        // A key open for reading here (a file renamed away while a program reads it) is
        // deleted like an unlinked one: journalled and hidden now, sent at its last
        // reader's unpin, so the reader keeps reading the version it opened.
        let (pinned, now): (Vec<&DeleteTarget>, Vec<&DeleteTarget>) = {
            let q = self.s.lock();
            targets.iter().partition(|t| q.pins.contains_key(&t.key))
        };
        for t in pinned {
            self.delete(&t.key, t.etag.as_deref()).await?;
        }
        if now.is_empty() {
            return Ok(Vec::new());
        }
        // A bulk delete supersedes what is pending for its keys; it waits for batches
        // deleting them, and releases nothing it did not hold.
        for t in &now {
            if self.hold(&t.key).await {
                self.release(&t.key, true);
            }
        }
        let now: Vec<DeleteTarget> = now.into_iter().cloned().collect();
        self.s.inner.delete_many(&now).await
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        // Keys pending when the request leaves may be deleted while it is answered, and then
        // no longer be pending when the answer arrives: hide both.
        let before = self.hidden_below(prefix);
        let mut page = self.s.inner.list(prefix, delimiter, token, max_keys).await?;
        let mut hidden = self.hidden_below(prefix);
        hidden.extend(before);
        page.objects.retain(|o| !hidden.contains(&o.key));
        // A subdirectory S3 shows because of keys whose delete is pending (`rm -r d`, then
        // `ls` of its parent) may hold nothing else: then it is not there either.
        if let Some(delimiter) = delimiter.filter(|d| !d.is_empty())
            && !hidden.is_empty()
        {
            // The subdirectory each hidden key lies in (prefix, next segment, delimiter).
            let under: HashSet<&str> = hidden
                .iter()
                .filter_map(|k| {
                    let end = k[prefix.len()..].find(delimiter)? + prefix.len() + delimiter.len();
                    Some(&k[..end])
                })
                .collect();
            // The subdirectories to check are asked about at once, not one after another.
            let checks = page.common_prefixes.iter().map(|cp| async {
                Ok::<_, StoreError>(!under.contains(cp.as_str()) || self.holds_more(cp, &hidden).await?)
            });
            let keep = futures::future::try_join_all(checks).await?;
            let mut keep = keep.into_iter();
            page.common_prefixes.retain(|_| keep.next().unwrap_or(true));
        }
        Ok(page)
    }

    async fn copy(&self, c: &CopySpec<'_>) -> StoreResult<Option<String>> {
        if self.hidden(c.src) {
            return Err(gone("copy", c.src));
        }
        match c.dst_if {
            Some(WriteIf::Absent) if self.hidden(c.dst) => {
                self.create_over_pending_delete(c.dst, |cond| async move {
                    self.s.inner.copy(&c.only_if(Some(&cond))).await
                })
                .await
            }
            Some(_) => {
                self.before_conditional(c.dst).await?;
                self.s.inner.copy(c).await
            }
            None => self.write(c.dst, self.s.inner.copy(c)).await,
        }
    }

    async fn create_multipart_with(
        &self,
        key: &str,
        meta: &UserMeta,
        headers: Option<&Headers>,
    ) -> StoreResult<String> {
        // The delete stays held from here to the completion (or the abort) of the upload.
        let held = self.hold(key).await;
        let r = self.s.inner.create_multipart_with(key, meta, headers).await;
        if held && r.is_err() {
            self.release(key, false);
        }
        r
    }

    async fn upload_part(&self, key: &str, upload_id: &str, part: i32, body: Bytes) -> StoreResult<String> {
        self.s.inner.upload_part(key, upload_id, part, body).await
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
        self.s
            .inner
            .upload_part_copy(key, upload_id, part, src, range, src_etag)
            .await
    }

    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        // A create over this mount's pending delete of a named version replaces that version
        // (see `create_over_pending_delete`), with the delete the upload's creation held.
        let over = match cond {
            Some(WriteIf::Absent) => self.held_version(key).map(WriteIf::Matches),
            _ => None,
        };
        if over.is_some() {
            let r = self
                .s
                .inner
                .complete_multipart_if(key, upload_id, parts, over.as_ref())
                .await;
            self.release(key, r.is_ok());
            if !refused(&r) {
                return r;
            }
            self.before_conditional(key).await?;
            return self.s.inner.complete_multipart_if(key, upload_id, parts, cond).await;
        }
        if cond.is_some() {
            // A conditional completion is checked against S3 with the delete landed: the
            // delete the upload's creation held goes out first.
            if self.s.lock().held.contains_key(key) {
                self.release(key, false);
            }
            self.before_conditional(key).await?;
        }
        let r = self.s.inner.complete_multipart_if(key, upload_id, parts, cond).await;
        if r.is_ok() {
            self.release(key, true);
        }
        r
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let r = self.s.inner.abort_multipart(key, upload_id).await;
        self.release(key, false);
        r
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<UploadInfo>> {
        self.s.inner.list_uploads(prefix).await
    }

    async fn get_tagging(&self, key: &str) -> StoreResult<Option<String>> {
        if self.hidden(key) {
            return Err(gone("get_tagging", key));
        }
        self.s.inner.get_tagging(key).await
    }

    async fn flush(&self) -> StoreResult<()> {
        self.settle().await
    }

    fn pin(&self, key: &str) {
        *self.s.lock().pins.entry(key.to_string()).or_default() += 1;
    }

    fn unpin(&self, key: &str) {
        let queue = {
            let mut q = self.s.lock();
            let Some(n) = q.pins.get_mut(key) else { return };
            *n -= 1;
            if *n > 0 {
                return;
            }
            q.pins.remove(key);
            let parked = q.parked.remove(key);
            if parked {
                q.enqueue(key.to_string());
            }
            parked
        };
        // A reader may go outside the runtime (at teardown): the delete then stays queued
        // for the next batch or the unmount's settle.
        if queue && tokio::runtime::Handle::try_current().is_ok() {
            self.s.spawn_flusher();
        }
    }
}
