//! Open directories. A directory whose listing is being fetched is read while it fills: each
//! prefix's pages are handed to it as they arrive, so `ls` starts on the first page instead of
//! waiting for the slowest prefix's last one (S3 answers each LIST after 20–60 ms, and a big
//! directory takes several pages per prefix).

use super::cache::{EntryInfo, Kind};
use super::error::{FsError, FsResult};
use crate::layout::RelPath;
use std::collections::HashSet;
use std::sync::Mutex;
use tokio::sync::Notify;

/// One name of an open directory.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub kind: Kind,
    /// The inode of `.` and `..`; `u64::MAX` for a listed entry (readdir asks the inode table
    /// when it replies: [`Core::entry_ino`](super::Core::entry_ino)).
    pub ino: u64,
    /// What the listing (or the HEAD that typed it) said; complete when `info.full`.
    pub(super) info: Option<EntryInfo>,
}

impl DirEntry {
    /// A name from the directory's listing, of `kind`, with what the listing said of it.
    pub(super) fn listed(name: String, kind: Kind, info: EntryInfo) -> Self {
        DirEntry {
            name,
            kind,
            ino: u64::MAX,
            info: Some(info),
        }
    }

    /// A special file's type bits, when the listing's entry knew its metadata (d_type of a
    /// FIFO known only by name says regular until a lookup HEADs it).
    pub fn special(&self) -> u32 {
        self.info
            .as_ref()
            .filter(|i| i.full)
            .and_then(EntryInfo::special)
            .unwrap_or(0)
    }
}

/// A directory as `opendir` saw it; readdir and readdirplus page through it.
pub struct OpenDir {
    pub(super) path: RelPath,
    feed: Mutex<Feed>,
    grew: Notify,
}

#[derive(Default)]
struct Feed {
    entries: Vec<DirEntry>,
    /// Seeded per process (names come from the bucket), cheaper than SipHash.
    names: HashSet<String, foldhash::fast::RandomState>,
    /// Set once nothing more will come: Ok, or the errno and message of the failed listing.
    end: Option<Result<(), (i32, String)>>,
}

impl OpenDir {
    /// A directory whose entries are still to come (`push`, then `finish`).
    pub(super) fn filling(path: RelPath, first: Vec<DirEntry>) -> Self {
        let dir = OpenDir {
            path,
            feed: Mutex::default(),
            grew: Notify::new(),
        };
        dir.push(first);
        dir
    }

    /// Adds entries whose names are not there yet (a name is given out once: offsets stay
    /// stable) and wakes the readers waiting for them.
    pub(super) fn push(&self, entries: Vec<DirEntry>) {
        let mut feed = super::lock(&self.feed);
        for e in entries {
            if feed.names.insert(e.name.clone()) {
                feed.entries.push(e);
            }
        }
        drop(feed);
        self.grew.notify_waiters();
    }

    /// Whether `name` was given out already.
    pub(super) fn has(&self, name: &str) -> bool {
        super::lock(&self.feed).names.contains(name)
    }

    /// Nothing more will come; a failed listing fails the reads past what was given out.
    pub(super) fn finish(&self, result: FsResult<()>) {
        super::lock(&self.feed).end = Some(result.map_err(|e| (e.errno, e.message)));
        self.grew.notify_waiters();
    }

    /// Up to `max` entries from `offset` on, waiting while the listing is still coming in.
    /// Empty at the end.
    pub async fn entries_from(&self, offset: usize, max: usize) -> FsResult<Vec<DirEntry>> {
        loop {
            let grew = self.grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            {
                let feed = super::lock(&self.feed);
                if feed.entries.len() > offset {
                    let end = feed.entries.len().min(offset.saturating_add(max));
                    return Ok(feed.entries[offset..end].to_vec());
                }
                match &feed.end {
                    Some(Ok(())) => return Ok(Vec::new()),
                    Some(Err((errno, message))) => return Err(FsError::new(*errno, message.clone())),
                    None => {}
                }
            }
            grew.await;
        }
    }

    /// Up to `max` entries from `offset` on that have arrived, without waiting.
    pub fn entries_ready(&self, offset: usize, max: usize) -> Vec<DirEntry> {
        let feed = super::lock(&self.feed);
        let end = feed.entries.len().min(offset.saturating_add(max));
        feed.entries
            .get(offset..end)
            .map(<[DirEntry]>::to_vec)
            .unwrap_or_default()
    }

    /// Every entry, once the listing is complete.
    pub async fn all_entries(&self) -> FsResult<Vec<DirEntry>> {
        let mut out = Vec::new();
        loop {
            let more = self.entries_from(out.len(), usize::MAX).await?;
            if more.is_empty() {
                return Ok(out);
            }
            out.extend(more);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn entry(name: &str) -> DirEntry {
        DirEntry {
            name: name.into(),
            kind: Kind::File,
            ino: u64::MAX,
            info: None,
        }
    }

    #[test]
    fn entries_ready_gives_what_has_arrived_without_waiting() {
        let dir = OpenDir::filling(RelPath::root(), vec![entry("."), entry("..")]);
        assert_eq!(dir.entries_ready(2, 32).len(), 0, "nothing more yet: no wait");
        dir.push((0..40).map(|i| entry(&format!("f{i}"))).collect());
        let chunk: Vec<String> = dir.entries_ready(2, 32).into_iter().map(|e| e.name).collect();
        assert_eq!((chunk.len(), chunk[0].as_str(), chunk[31].as_str()), (32, "f0", "f31"));
        assert_eq!(dir.entries_ready(34, 32).len(), 8, "the rest");
        assert!(dir.entries_ready(100, 32).is_empty(), "past the end");
    }

    #[tokio::test]
    async fn a_reader_gets_entries_as_they_arrive_and_each_name_once() {
        let dir = Arc::new(OpenDir::filling(RelPath::root(), vec![entry(".")]));
        assert_eq!(dir.entries_from(0, 10).await.unwrap().len(), 1);
        let reader = {
            let dir = dir.clone();
            tokio::spawn(async move { dir.entries_from(1, 10).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!reader.is_finished(), "a reader past the entries waits for more");
        dir.push(vec![entry("a"), entry("b"), entry("a")]);
        let got: Vec<String> = reader.await.unwrap().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(got, ["a", "b"]);
        dir.push(vec![entry("b"), entry("c")]);
        dir.finish(Ok(()));
        let names: Vec<String> = dir.all_entries().await.unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, [".", "a", "b", "c"]);
        assert!(dir.entries_from(4, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_listing_fails_the_reads_past_what_was_given_out() {
        let dir = OpenDir::filling(RelPath::root(), vec![entry("."), entry("a")]);
        dir.finish(Err(FsError::new(libc::EIO, "LIST failed")));
        assert_eq!(dir.entries_from(0, 10).await.unwrap().len(), 2);
        assert_eq!(dir.entries_from(2, 10).await.unwrap_err().errno, libc::EIO);
    }
}
