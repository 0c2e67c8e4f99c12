//! The bucket tools' runners: `rm`, `migrate`, `info`, `fsck`, `doctor`, `init`, and the ad
//! hoc `ls`, `cat`, `cp`, `du`, `find` (through [`crate::adhoc`]). Each opens its bucket
//! through [`crate::bucket`] and prints its outcome.

use super::{block_on, stdout};
use crate::error::{PathProblem, ToolError, ToolResult};
use crate::invalid::Invalid;
use crate::layout::{Layout, RelPath};
use crate::store::Deletes;
use std::process::ExitCode;

pub(super) fn run_rm(a: crate::cli::RmArgs) -> ToolResult<()> {
    let path = RelPath::parse(&a.path)?;
    let at = crate::cli::AdhocConn {
        root: Some(crate::cli::parse_s3_url(&a.target)?.1),
        conn: a.conn.clone(),
    };
    adhoc(&a.target, &at, async |b, _| {
        match b.ns.stat(&path).await? {
            None => return Err(ToolError::path(&a.path, PathProblem::NotFound)),
            Some(info) if info.kind == crate::fs::cache::Kind::Dir && !a.recursive => {
                return Err(ToolError::path(&a.path, PathProblem::IsDir { hint: " (use -r)" }));
            }
            _ => {}
        }
        let n = b.ns.remove_tree(&path).await?;
        let s = b.ns.stats().snapshot();
        println!(
            "deleted {n} objects with {} DeleteObjects requests ({} throttled keys retried)",
            s.get(crate::store::OpKind::DeleteMany),
            s.throttles
        );
        Ok(())
    })
}

pub(super) fn run_migrate(a: crate::cli::MigrateArgs) -> ToolResult<()> {
    use crate::migrate;
    let (bucket, from_root) = crate::cli::parse_s3_url(&a.from)?;
    let (to_bucket, to_root) = crate::cli::parse_s3_url(&a.to)?;
    if to_bucket != bucket {
        return Err(Invalid::new(
            format!("{} and {}", a.from, a.to),
            "in different buckets; migrate copies server-side within one bucket",
        )
        .into());
    }
    block_on(async {
        let c = crate::bucket::connect_to(&bucket, &a.conn).await?;
        // Each side's descriptor says its layout; a flag only stands in where there is none.
        // In place (one root), the descriptor is the layout being left until the migration
        // is verified, and then the new one.
        let side = |found: Option<u32>, flag: Option<u32>, default: u32, what: &str| match (found, flag) {
            (Some(n), Some(f)) if n != f => Err(Invalid::new(
                format!("--{what}-prefix-count {f}"),
                format!("disagrees with the {what} layout's descriptor ({n} prefixes)"),
            )),
            (Some(n), _) => Ok(n),
            (None, f) => Ok(f.unwrap_or(default)),
        };
        let to_found = crate::bucket::read_descriptor(c.store.as_ref(), &to_root).await?;
        let (from_n, to_n) = if from_root == to_root {
            // The root's descriptor names the layout being left, unless it already names
            // the one asked for (a migration resumed after its verification wrote it).
            let from_n = match (to_found, a.from_prefix_count) {
                // The descriptor already names the destination (an earlier run verified the
                // copies and wrote it): the source is the plain (or given) layout.
                (Some(n), f)
                    if a.to_prefix_count.unwrap_or(crate::layout::DEFAULT_PREFIX_COUNT) == n && f != Some(n) =>
                {
                    f.unwrap_or(1)
                }
                (Some(n), Some(f)) if f != n => {
                    return Err(Invalid::new(
                        format!("--from-prefix-count {f}"),
                        format!(
                            "disagrees with the layout's descriptor at {}: it has {n} prefixes, and its keys would be taken for paths",
                            a.from
                        ),
                    )
                    .into());
                }
                (Some(n), _) => n,
                (None, f) => f.unwrap_or(1),
            };
            let to_n = match (to_found, a.to_prefix_count) {
                (_, Some(f)) => f,
                (Some(n), None) if n != from_n => n,
                _ => crate::layout::DEFAULT_PREFIX_COUNT,
            };
            (from_n, to_n)
        } else {
            let from_found = crate::bucket::read_descriptor(c.store.as_ref(), &from_root).await?;
            (
                side(from_found, a.from_prefix_count, 1, "from")?,
                side(to_found, a.to_prefix_count, crate::layout::DEFAULT_PREFIX_COUNT, "to")?,
            )
        };
        let from = Layout::new(&from_root, from_n)?;
        let to = Layout::new(&to_root, to_n)?;
        // Paced per destination prefix: that is where the copies land.
        let store = c.stack(&to, Default::default(), Deletes::Direct);
        let opts = migrate::Options {
            jobs: a.jobs,
            dry_run: a.dry_run,
            delete_source: a.delete_source,
            copy_object_max: a.copy_object_max,
            copy_part: a.copy_part_mib << 20,
            write_descriptor: to_found != Some(to_n),
        };
        let progress = migrate::progress_for_stderr();
        println!(
            "migrating s3://{bucket}/{from_root} ({from_n} prefixes) to s3://{bucket}/{to_root} ({to_n} prefixes)"
        );
        let r = migrate::migrate(store, &from, &to, &opts, progress.as_ref()).await?;
        let verb = if a.dry_run { "would copy" } else { "copied" };
        println!(
            "{} objects ({} bytes) in the source; {verb} {} ({} bytes); {} already in place; {} foreign keys left alone",
            r.objects, r.bytes, r.copied, r.copied_bytes, r.present, r.foreign
        );
        if !a.dry_run {
            println!("verified: every object is in the destination with its size and ETag");
        }
        if a.delete_source {
            println!("deleted {} source objects", r.deleted);
            if !r.kept.is_empty() {
                println!(
                    "kept {} source objects written again after verification (first: {}); run migrate again to copy them",
                    r.kept.len(),
                    crate::layout::escape_controls(&r.kept[0])
                );
            }
        }
        let s = c.stats.snapshot();
        println!(
            "requests: {} LIST, {} COPY, {} HEAD, {} DeleteObjects; {} throttled (retried)",
            s.get(crate::store::OpKind::List),
            s.get(crate::store::OpKind::Copy),
            s.get(crate::store::OpKind::Head),
            s.get(crate::store::OpKind::DeleteMany),
            s.throttles
        );
        Ok(())
    })
}

/// Connects to s3://BUCKET[/ROOT] and reads its layout; `f` runs with the paced store.
pub(super) fn with_layout<T>(
    target: &str,
    conn: &crate::cli::ConnArgs,
    f: impl AsyncFnOnce(std::sync::Arc<dyn crate::store::ObjectStore>, Layout) -> ToolResult<T>,
) -> ToolResult<T> {
    let (bucket, root) = crate::cli::parse_s3_url(target)?;
    block_on(async {
        let o = crate::bucket::open(&bucket, &root, conn).await?;
        f(o.store, o.layout).await
    })
}

pub(super) fn run_info(a: crate::cli::InfoArgs) -> ToolResult<()> {
    with_layout(&a.target, &a.conn, async |store, layout| {
        let inv = crate::check::scan(store.as_ref(), &layout, a.jobs).await?;
        let d = layout.descriptor();
        println!(
            "{}: layout format {}, hash {}, {} prefixes (descriptor {})",
            a.target,
            d.format,
            d.hash,
            layout.prefix_count(),
            layout.descriptor_key()
        );
        println!("objects {} ({} bytes)", inv.objects(), inv.bytes());
        for (q, (n, bytes)) in inv.per_prefix.iter().enumerate() {
            println!("prefix {}: {n} objects, {bytes} bytes", layout.prefix_name(q as u32));
        }
        println!("skew {:.2} (the fullest prefix's objects over the mean)", inv.skew());
        println!(
            "misplaced {}, foreign {}, incomplete uploads {} (prefixfs fsck lists them)",
            inv.misplaced.len(),
            inv.foreign.len(),
            inv.uploads.len()
        );
        Ok(())
    })
}

pub(super) fn run_fsck(a: crate::cli::FsckArgs) -> ToolResult<ExitCode> {
    use crate::layout::escape_controls;
    with_layout(&a.target, &a.conn, async |store, layout| {
        let inv = crate::check::scan(store.as_ref(), &layout, a.jobs).await?;
        println!(
            "{}: {} prefixes, {} objects ({} bytes) of the layout",
            a.target,
            layout.prefix_count(),
            inv.objects(),
            inv.bytes()
        );
        for (wrong, right) in &inv.misplaced {
            println!(
                "misplaced: {} (belongs at {})",
                escape_controls(wrong),
                escape_controls(right)
            );
        }
        for (key, why) in &inv.foreign {
            println!("foreign: {} ({why})", escape_controls(key));
        }
        let cutoff = std::time::SystemTime::now()
            - std::time::Duration::from_secs_f64(a.abort_uploads_older_than.max(0.0) * 3600.0);
        for u in &inv.uploads {
            let age = u
                .initiated
                .and_then(|t| t.elapsed().ok())
                .map(|d| format!("{} s old", d.as_secs()));
            println!(
                "incomplete upload: {} ({})",
                escape_controls(&u.key),
                age.unwrap_or_else(|| "age unknown".into())
            );
        }
        let mut left = inv.misplaced.len() + inv.foreign.len() + inv.uploads.len();
        let mut repaired = 0;
        if a.repair {
            let r = crate::check::repair(store.as_ref(), &layout, &inv, a.jobs).await?;
            for c in &r.conflicts {
                println!("not moved: {} (its right key holds another object)", escape_controls(c));
            }
            let mut aborted = 0;
            for u in inv.uploads.iter().filter(|u| u.initiated.is_some_and(|t| t < cutoff)) {
                store.abort_multipart(&u.key, &u.upload_id).await?;
                aborted += 1;
            }
            println!("repaired: moved {} misplaced keys, aborted {aborted} uploads", r.moved);
            repaired = r.moved as usize + aborted;
            left -= repaired;
        }
        println!(
            "{left} problems left ({} foreign keys are never touched)",
            inv.foreign.len()
        );
        Ok(match (left, repaired) {
            (0, 0) => ExitCode::SUCCESS,
            (0, _) => ExitCode::from(1),
            _ => ExitCode::from(4),
        })
    })
}

/// Opens the layout an ad hoc command's `s3://` target lies in and runs `f` on it with the
/// path below the layout's root.
pub(super) fn adhoc<T>(
    target: &str,
    at: &crate::cli::AdhocConn,
    f: impl AsyncFnOnce(crate::adhoc::Bucket, RelPath) -> ToolResult<T>,
) -> ToolResult<T> {
    let (bucket, rest) = crate::cli::parse_s3_url(target)?;
    block_on(async {
        let c = crate::bucket::connect_to(&bucket, &at.conn).await?;
        let (root, path) = crate::adhoc::split_target(c.store.as_ref(), &rest, at.root.as_deref()).await?;
        let o = crate::bucket::open_layout(c, &root).await?;
        let b = crate::adhoc::Bucket::open(o.store, o.layout, o.connected.stats.clone());
        f(b, path).await
    })
}

pub(super) fn run_cat(a: crate::cli::CatArgs) -> ToolResult<()> {
    let (bucket, _) = crate::cli::parse_s3_url(&a.targets[0])?;
    for t in &a.targets {
        if crate::cli::parse_s3_url(t)?.0 != bucket {
            return Err(Invalid::new(t, "cat: every file must be in the same bucket").into());
        }
    }
    adhoc(&a.targets[0], &a.at, async |b, _| {
        let root = b.layout.root().to_string();
        for t in &a.targets {
            let (_, rest) = crate::cli::parse_s3_url(t)?;
            let (_, path) = crate::adhoc::split_target(b.store.as_ref(), &rest, Some(&root)).await?;
            let info = b.stat(&path).await?;
            if info.kind == crate::fs::cache::Kind::Dir {
                return Err(ToolError::path(
                    crate::adhoc::show(&path),
                    PathProblem::IsDir { hint: "" },
                ));
            }
            b.read_to(&path, &info, &mut stdout()).await?;
        }
        Ok(())
    })
}

pub(super) fn run_cp(a: crate::cli::CpArgs) -> ToolResult<()> {
    let (remote, local, inward) = match (a.src.starts_with("s3://"), a.dst.starts_with("s3://")) {
        (true, false) => (&a.src, &a.dst, false),
        (false, true) => (&a.dst, &a.src, true),
        _ => {
            return Err(Invalid::new(
                format!("cp {} {}", a.src, a.dst),
                "exactly one side is s3://BUCKET/ROOT/PATH, the other a local path",
            )
            .into());
        }
    };
    let local = std::path::PathBuf::from(local);
    let progress = crate::migrate::progress_for_stderr();
    adhoc(remote, &a.at, async |b, path| {
        let (files, bytes) = if inward {
            b.copy_in(&local, &path, a.recursive, progress.as_ref()).await?
        } else {
            b.copy_out(&path, &local, a.recursive, progress.as_ref()).await?
        };
        eprintln!("copied {files} files, {bytes} bytes");
        Ok(())
    })
}

/// `prefixfs doctor`: the table on standard output; 0 when a mount would work, 1 when not,
/// 8 when the check itself could not run.
pub(super) fn run_doctor(a: crate::cli::DoctorArgs) -> ExitCode {
    use crate::doctor::{Verdict, examine, render, unusable, with_options};
    let run = || -> ToolResult<Vec<crate::doctor::Row>> {
        let (bucket, root) = crate::cli::parse_s3_url(&a.target)?;
        let endpoint = a.conn.endpoint_url.clone().unwrap_or_else(|| "AWS S3".into());
        block_on(async {
            match crate::bucket::connect_to(&bucket, &a.conn).await {
                Err(crate::bucket::OpenError::Unusable(line)) => {
                    let region = a.conn.region.as_deref().unwrap_or("not resolved");
                    Ok(unusable(&endpoint, region, line))
                }
                Err(e) => Err(e.into()),
                Ok(c) => {
                    let source = c
                        .credentials
                        .clone()
                        .unwrap_or_else(|| "none: requests go unsigned".into());
                    let rows = examine(c.store.as_ref(), &root, &endpoint, &c.aws().region(), source).await;
                    Ok(with_options(rows, a.conn.aws_config(&bucket).options.describe()))
                }
            }
        })
    };
    match run() {
        Ok(rows) => {
            print!("{}", render(&rows));
            if rows.iter().any(|r| r.verdict == Verdict::Fail) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(msg) => {
            eprintln!("prefixfs: {msg}");
            ExitCode::from(8)
        }
    }
}

pub(super) fn run_init(a: crate::cli::InitArgs) -> ToolResult<()> {
    let (bucket, root) = crate::cli::parse_s3_url(&a.target)?;
    let layout = Layout::new(&root, a.prefix_count)?;
    block_on(async {
        let c = crate::bucket::connect_to(&bucket, &a.conn).await?;
        match crate::bucket::read_descriptor(c.store.as_ref(), &root).await? {
            Some(n) if n == a.prefix_count => {
                println!("s3://{bucket}/{root} already has this layout ({n} prefixes)");
                Ok(())
            }
            Some(n) => Err(Invalid::new(
                format!("--prefix-count {}", a.prefix_count),
                format!(
                    "disagrees with the bucket's layout ({n} prefixes, in {})",
                    layout.descriptor_key()
                ),
            )
            .into()),
            None => {
                crate::bucket::write_descriptor(c.store.as_ref(), &layout).await?;
                println!("wrote {} ({} prefixes)", layout.descriptor_key(), a.prefix_count);
                Ok(())
            }
        }
    })
}
