//! `prefixfs doctor s3://BUCKET[/ROOT]`: what a user runs when a mount misbehaves. Each
//! thing a mount needs, tried the way the mount does it, on scratch keys under the root's
//! `.prefixfs/` (removed after): credentials and their source, the region, the descriptor,
//! each permission (list, get, put, copy, multipart, delete), whether the server honours
//! conditional writes and deletes, the round-trip latency and one connection's throughput.
//! Prints a table; exit status 0 only when a mount would work.

use crate::layout::Layout;
use crate::store::{CopySpec, ObjectStore, UserMeta, WriteIf};
use bytes::Bytes;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, with a caveat a mount lives with (a condition the server ignores).
    Warn,
    /// A mount would not work.
    Fail,
    /// Not tried: an earlier failure makes it meaningless.
    Skipped,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

/// The table, and whether a mount would work (no Fail).
pub fn render(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        let v = match r.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "-",
        };
        out.push_str(&format!("{:width$}  {v:4}  {}\n", r.check, r.detail));
    }
    out
}

fn row(check: &'static str, verdict: Verdict, detail: impl Into<String>) -> Row {
    Row {
        check,
        verdict,
        detail: detail.into(),
    }
}

/// A store failure as the row's detail: the one line of [`crate::bucket::explain`] when
/// there is one.
fn why(e: &crate::store::StoreError) -> String {
    crate::bucket::explain(e).unwrap_or_else(|| e.to_string())
}

/// Size of the throughput probe (one PUT, one GET, on one connection).
const PROBE_BYTES: usize = 8 << 20;

/// `rows` with the bucket options the requests carry (`--sse`, `--upload-checksum`, ...)
/// after the credentials.
pub fn with_options(mut rows: Vec<Row>, options: String) -> Vec<Row> {
    let at = rows.len().min(2);
    rows.insert(at, row("options", Verdict::Ok, options));
    rows
}

/// The table when the bucket cannot even be opened (no credentials): why, in one line.
pub fn unusable(endpoint: &str, region: &str, line: String) -> Vec<Row> {
    vec![
        row("endpoint", Verdict::Ok, format!("{endpoint}, region {region}")),
        row("credentials", Verdict::Fail, line),
    ]
}

/// Runs every check against `store` (retried as a mount's set-up requests are) at `root`;
/// `credentials`: where they came from.
pub async fn examine(
    store: &dyn ObjectStore,
    root: &str,
    endpoint: &str,
    region: &str,
    credentials: String,
) -> Vec<Row> {
    let mut rows = vec![
        row("endpoint", Verdict::Ok, format!("{endpoint}, region {region}")),
        row("credentials", Verdict::Ok, credentials),
    ];
    let Ok(layout) = Layout::new(root, 1) else {
        rows.push(row("descriptor", Verdict::Fail, format!("{root}: not a valid root")));
        return rows;
    };
    let desc_key = layout.descriptor_key();
    // The descriptor: the first request, as at every mount; its time is one round trip.
    let start = Instant::now();
    match crate::bucket::read_descriptor(store, root).await {
        Ok(Some(n)) => rows.push(row("descriptor", Verdict::Ok, format!("{desc_key}: {n} prefixes"))),
        Ok(None) => rows.push(row(
            "descriptor",
            Verdict::Fail,
            format!("no layout at {desc_key}: run `prefixfs init`, or mount with --init"),
        )),
        Err(crate::bucket::LayoutCheck::Store { source, .. }) => {
            rows.push(row("descriptor", Verdict::Fail, why(&source)));
            return rows;
        }
        Err(e) => rows.push(row("descriptor", Verdict::Fail, e.to_string())),
    }
    let first = start.elapsed();
    let scratch = |what: &str| {
        format!(
            "{}.prefixfs/doctor-{what}-{}",
            layout.root_slash(),
            uuid::Uuid::new_v4().simple()
        )
    };
    let (a, b, big) = (scratch("a"), scratch("b"), scratch("throughput"));
    let meta = UserMeta::new();

    // Permissions, in the order a mount uses them.
    let listed = store
        .list(&format!("{}.prefixfs/", layout.root_slash()), Some("/"), None, Some(1))
        .await;
    rows.push(match &listed {
        Ok(_) => row("list", Verdict::Ok, "ListObjectsV2"),
        Err(e) => row("list", Verdict::Fail, why(e)),
    });
    let put = store
        .put_if(&a, Bytes::from_static(b"doctor\n"), &meta, Some(&WriteIf::Absent))
        .await;
    let wrote = put.is_ok();
    rows.push(match &put {
        Ok(_) => row("put", Verdict::Ok, format!("PutObject of {a}")),
        Err(e) => row("put", Verdict::Fail, why(e)),
    });
    match put {
        // The rest needs an object: each step on its own keys, all in flight together; every
        // read, copy and delete names the version it acts on.
        Ok(etag) => {
            let etag = etag.as_deref();
            let get = async {
                match store.get(&a, None, etag).await {
                    Ok(body) if body.as_ref() == b"doctor\n" => row("get", Verdict::Ok, "GetObject"),
                    Ok(_) => row("get", Verdict::Fail, "GetObject answered other bytes than were put"),
                    Err(e) => row("get", Verdict::Fail, why(&e)),
                }
            };
            let spec = CopySpec {
                src: &a,
                dst: &b,
                src_etag: etag,
                dst_if: Some(&WriteIf::Absent),
                meta: None,
                headers: None,
            };
            let copy = store.copy(&spec);
            let (multipart_key, create_key, delete_key) = (scratch("multipart"), scratch("create"), scratch("delete"));
            let (got, copied, multipart, create, deletes) = futures::join!(
                get,
                copy,
                multipart(store, &multipart_key),
                crate::mount::probe_exclusive_create(store, &create_key),
                crate::store::delete::probe_delete_conditions(store, &delete_key),
            );
            rows.push(got);
            let copied = match copied {
                Ok(copy_etag) => {
                    rows.push(row("copy", Verdict::Ok, "CopyObject (renames)"));
                    Some(copy_etag)
                }
                Err(e) => {
                    rows.push(row("copy", Verdict::Fail, why(&e)));
                    None
                }
            };
            rows.push(multipart);
            let deleted = async {
                store.delete(&a, etag).await?;
                match &copied {
                    Some(copy_etag) => store.delete(&b, copy_etag.as_deref()).await,
                    None => Ok(()),
                }
            }
            .await;
            rows.push(match deleted {
                Ok(()) => row("delete", Verdict::Ok, "DeleteObject, at the version written"),
                Err(e) => row("delete", Verdict::Fail, why(&e)),
            });
            // The conditions a mount relies on across hosts.
            rows.push(match create {
                Some(true) => row(
                    "conditional writes",
                    Verdict::Ok,
                    "If-None-Match honoured: exclusive creates hold across hosts",
                ),
                Some(false) => row(
                    "conditional writes",
                    Verdict::Warn,
                    "If-None-Match ignored: two hosts can both create one name (O_EXCL, mkdir)",
                ),
                None => row("conditional writes", Verdict::Warn, "could not be tried"),
            });
            rows.push(match deletes {
                Some(c) if c.batch => row(
                    "conditional deletes",
                    Verdict::Ok,
                    "If-Match honoured, in DeleteObjects too",
                ),
                Some(c) if c.single => row(
                    "conditional deletes",
                    Verdict::Warn,
                    "If-Match honoured by DeleteObject only: retried deletes go one by one",
                ),
                Some(_) => row(
                    "conditional deletes",
                    Verdict::Warn,
                    "If-Match ignored: a delete may remove a version another host wrote meanwhile",
                ),
                None => row("conditional deletes", Verdict::Warn, "could not be tried"),
            });
        }
        Err(_) => {
            for check in ["get", "copy", "multipart", "delete"] {
                rows.push(row(check, Verdict::Skipped, "needs put"));
            }
        }
    }

    // Latency: the median of a few HEADs of the descriptor (404 or not, one round trip each).
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let _ = store.head(&desc_key).await;
        times.push(start.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    rows.push(row(
        "latency",
        Verdict::Ok,
        format!(
            "{:.1} ms a round trip (median of 5 HEADs; the first request took {:.1} ms)",
            ms(median),
            ms(first)
        ),
    ));
    if wrote {
        rows.push(throughput(store, &big).await);
    }
    rows
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One small part, completed, then removed: what a large write does.
async fn multipart(store: &dyn ObjectStore, key: &str) -> Row {
    let meta = UserMeta::new();
    let id = match store.create_multipart(key, &meta).await {
        Ok(id) => id,
        Err(e) => return row("multipart", Verdict::Fail, why(&e)),
    };
    let done = async {
        let etag = store.upload_part(key, &id, 1, Bytes::from_static(b"part\n")).await?;
        store.complete_multipart(key, &id, &[(1, etag)]).await
    }
    .await;
    match done {
        Ok(etag) => {
            let _ = store.delete(key, etag.as_deref()).await;
            row("multipart", Verdict::Ok, "CreateMultipartUpload, UploadPart, Complete")
        }
        Err(e) => {
            let _ = store.abort_multipart(key, &id).await;
            row("multipart", Verdict::Fail, why(&e))
        }
    }
}

/// One PUT and one GET of [`PROBE_BYTES`]: what one connection moves each way.
async fn throughput(store: &dyn ObjectStore, key: &str) -> Row {
    let body = Bytes::from(vec![0x5a; PROBE_BYTES]);
    let mib = PROBE_BYTES as f64 / (1 << 20) as f64;
    let start = Instant::now();
    let etag = match store.put_if(key, body, &UserMeta::new(), Some(&WriteIf::Absent)).await {
        Ok(etag) => etag,
        Err(e) => return row("throughput", Verdict::Fail, why(&e)),
    };
    let up = start.elapsed();
    let start = Instant::now();
    let got = store.get(key, None, etag.as_deref()).await;
    let down = start.elapsed();
    let _ = store.delete(key, etag.as_deref()).await;
    match got {
        Ok(b) if b.len() == PROBE_BYTES => row(
            "throughput",
            Verdict::Ok,
            format!(
                "one connection: {:.0} MiB/s up, {:.0} MiB/s down ({mib:.0} MiB each way)",
                mib / up.as_secs_f64(),
                mib / down.as_secs_f64()
            ),
        ),
        Ok(b) => row(
            "throughput",
            Verdict::Fail,
            format!("GET answered {} bytes of {PROBE_BYTES}", b.len()),
        ),
        Err(e) => row("throughput", Verdict::Fail, why(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up_and_says_each_verdict() {
        let t = render(&[
            row("credentials", Verdict::Ok, "Environment"),
            row("put", Verdict::Fail, "access denied"),
            row("copy", Verdict::Skipped, "needs put"),
            row("conditional deletes", Verdict::Warn, "ignored"),
        ]);
        assert_eq!(
            t,
            "credentials          ok    Environment\n\
             put                  FAIL  access denied\n\
             copy                 -     needs put\n\
             conditional deletes  WARN  ignored\n"
        );
    }
}
