//! The soak: a seeded mixed workload through a mount against a server that fails about one
//! request in eight (500s and 503s, lost answers, dropped connections, cut-off bodies) and
//! restarts halfway. Every operation that returned success is mirrored in a reference model;
//! one that failed marks the paths it touched as "old or new". After a clean remount with the
//! faults off, every path holds what the model says: no acknowledged write lost or corrupted.
//!
//! SOAK_OPS (default 2,000) and SOAK_SEED (default 1) make a longer or different run.

mod common;

use common::*;
use prefixfs::server::faults::{FaultKind, FaultPlan};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What a path may hold: any of these contents (`None`: absent).
type Outcomes = Vec<Option<Vec<u8>>>;

struct Model {
    files: BTreeMap<String, Outcomes>,
    dirs: BTreeSet<String>,
}

impl Model {
    fn certain(&self, path: &str) -> Option<&Vec<u8>> {
        match self.files.get(path).map(Vec::as_slice) {
            Some([Some(c)]) => Some(c),
            _ => None,
        }
    }

    /// After a failed operation on `path`: it holds its old state or `new`.
    fn either(&mut self, path: &str, new: Option<Vec<u8>>) {
        let e = self.files.entry(path.to_string()).or_insert_with(|| vec![None]);
        if !e.contains(&new) {
            e.push(new);
        }
    }

    fn set(&mut self, path: &str, content: Option<Vec<u8>>) {
        self.files.insert(path.to_string(), vec![content]);
    }
}

fn body(rng: &mut fastrand::Rng, big: bool) -> Vec<u8> {
    let len = if big {
        rng.usize(6 << 20..12 << 20)
    } else {
        rng.usize(0..20_000)
    };
    let seed = rng.u8(..);
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn a_mixed_workload_under_faults_and_a_restart_keeps_every_acknowledged_change() {
    let ops: usize = std::env::var("SOAK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rules = [
        "503:0.04",
        "500:0.02",
        "reset:0.02",
        "500:0.03:PutObject:after",
        "500:0.03:CopyObject:after",
        "500:0.1:CompleteMultipartUpload:after",
        "500:0.05:DeleteObjects:after",
        "truncate:0.05:GetObject",
    ];
    let plan = Arc::new(FaultPlan::new(
        rules.iter().map(|r| r.parse().expect("rule")).collect(),
        seed,
        Duration::ZERO,
    ));
    let mut env = Env::embedded_config(|c| c.fault_plan = Some(plan.clone()));
    let mut m = env.mount(16, &["--part-size-mib", "5"]);
    let root = m.path.clone();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model = Model {
        files: BTreeMap::new(),
        dirs: BTreeSet::from([String::new()]),
    };
    let (mut failed, mut done) = (0usize, 0usize);
    let full = |p: &str| root.join(p);
    for n in 0..ops {
        if n == ops / 2 {
            // Deletes queued just before S3 goes away for a second.
            if let Some(f) = model.files.keys().find(|f| model.certain(f).is_some()).cloned()
                && std::fs::remove_file(full(&f)).is_ok()
            {
                model.set(&f, None);
            }
            env.restart_embedded(Duration::from_secs(1), Some(plan.clone()));
        }
        let dirs: Vec<String> = model.dirs.iter().cloned().collect();
        let certain: Vec<String> = model
            .files
            .keys()
            .filter(|f| model.certain(f).is_some())
            .cloned()
            .collect();
        let pick = |rng: &mut fastrand::Rng, v: &[String]| v[rng.usize(..v.len())].clone();
        let dir = pick(&mut rng, &dirs);
        let join = |d: &str, name: &str| {
            if d.is_empty() {
                name.to_string()
            } else {
                format!("{d}/{name}")
            }
        };
        let op = rng.u32(..100);
        let ok = match op {
            // create or replace a file (2% multipart-sized)
            0..=24 => {
                let path = join(&dir, &format!("f{}", rng.u32(..40)));
                if model.dirs.contains(&path) {
                    continue;
                }
                let big = rng.u32(..100) < 2;
                let content = body(&mut rng, big);
                let ok = std::fs::write(full(&path), &content).is_ok();
                if ok {
                    model.set(&path, Some(content))
                } else {
                    model.either(&path, Some(content))
                }
                ok
            }
            // append
            25..=34 if !certain.is_empty() => {
                let path = pick(&mut rng, &certain);
                let extra = body(&mut rng, false);
                let mut new = model.certain(&path).cloned().unwrap_or_default();
                new.extend_from_slice(&extra);
                let ok = std::fs::OpenOptions::new()
                    .append(true)
                    .open(full(&path))
                    .and_then(|mut f| f.write_all(&extra).and_then(|_| f.sync_all()))
                    .is_ok();
                if ok {
                    model.set(&path, Some(new))
                } else {
                    model.either(&path, Some(new))
                }
                ok
            }
            // overwrite in place
            35..=44 if !certain.is_empty() => {
                let path = pick(&mut rng, &certain);
                let mut new = model.certain(&path).cloned().unwrap_or_default();
                let at = rng.usize(..=new.len());
                let patch = body(&mut rng, false);
                let patch = &patch[..patch.len().min(3000)];
                if new.len() < at + patch.len() {
                    new.resize(at + patch.len(), 0);
                }
                new[at..at + patch.len()].copy_from_slice(patch);
                let ok = std::fs::OpenOptions::new()
                    .write(true)
                    .open(full(&path))
                    .and_then(|mut f| {
                        f.seek(SeekFrom::Start(at as u64))?;
                        f.write_all(patch)?;
                        f.sync_all()
                    })
                    .is_ok();
                if ok {
                    model.set(&path, Some(new))
                } else {
                    model.either(&path, Some(new))
                }
                ok
            }
            // rename a file (over another, or to a new name)
            45..=54 if !certain.is_empty() => {
                let from = pick(&mut rng, &certain);
                let to = join(&dir, &format!("f{}", rng.u32(..40)));
                if to == from || model.dirs.contains(&to) || model.files.get(&to).is_some_and(|o| o.len() > 1) {
                    continue;
                }
                let content = model.certain(&from).cloned();
                let ok = std::fs::rename(full(&from), full(&to)).is_ok();
                if ok {
                    model.set(&from, None);
                    model.set(&to, content);
                } else {
                    model.either(&from, None);
                    model.either(&to, content);
                }
                ok
            }
            // unlink
            55..=64 if !certain.is_empty() => {
                let path = pick(&mut rng, &certain);
                let ok = std::fs::remove_file(full(&path)).is_ok();
                if ok {
                    model.set(&path, None)
                } else {
                    model.either(&path, None)
                }
                ok
            }
            // mkdir (at most two levels)
            65..=72 if dir.matches('/').count() < 1 => {
                let path = join(&dir, &format!("d{}", rng.u32(..6)));
                if model.dirs.contains(&path) || model.files.contains_key(&path) {
                    continue;
                }
                let ok = std::fs::create_dir(full(&path)).is_ok();
                // A failed mkdir may have made it: keep it out of the workload.
                if ok {
                    model.dirs.insert(path);
                }
                ok
            }
            // rename a directory whose files are all certain, to a new name at the root
            73..=76 => {
                let Some(from) = dirs
                    .iter()
                    .filter(|d| !d.is_empty() && !d.contains('/'))
                    .nth(rng.usize(..4))
                    .cloned()
                else {
                    continue;
                };
                let to = format!("r{}", rng.u32(..1000));
                let under = |p: &str, d: &str| p.starts_with(&format!("{d}/"));
                if model.dirs.iter().any(|d| *d == to || under(d, &to))
                    || model.files.iter().any(|(p, o)| under(p, &from) && o.len() > 1)
                {
                    continue;
                }
                let ok = std::fs::rename(full(&from), full(&to)).is_ok();
                let moved: Vec<(String, Outcomes)> = model
                    .files
                    .iter()
                    .filter(|(p, _)| under(p, &from))
                    .map(|(p, o)| (p.clone(), o.clone()))
                    .collect();
                let moved_dirs: Vec<String> = model
                    .dirs
                    .iter()
                    .filter(|d| **d == from || under(d, &from))
                    .cloned()
                    .collect();
                if ok {
                    for (p, o) in moved {
                        model.files.remove(&p);
                        model.files.insert(format!("{to}{}", &p[from.len()..]), o);
                    }
                    for d in moved_dirs {
                        model.dirs.remove(&d);
                        model.dirs.insert(format!("{to}{}", &d[from.len()..]));
                    }
                } else {
                    // Old or new place; the directories leave the workload.
                    for (p, o) in moved {
                        let c = o.first().cloned().flatten();
                        model.either(&p, None);
                        model.either(&format!("{to}{}", &p[from.len()..]), c);
                    }
                    for d in moved_dirs {
                        model.dirs.remove(&d);
                    }
                }
                ok
            }
            // list: every certain file of the directory is there, no removed one
            77..=86 => match std::fs::read_dir(full(&dir)) {
                Ok(rd) => {
                    let names: BTreeSet<String> = rd
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    for (p, o) in &model.files {
                        let parent = Path::new(p)
                            .parent()
                            .map(|x| x.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let name = Path::new(p)
                            .file_name()
                            .map(|x| x.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        if parent != dir || o.len() != 1 {
                            continue;
                        }
                        assert_eq!(names.contains(&name), o[0].is_some(), "op {n}: listing of /{dir}: {p}");
                    }
                    true
                }
                Err(_) => false,
            },
            // read a certain file back
            _ if !certain.is_empty() => {
                let path = pick(&mut rng, &certain);
                match std::fs::read(full(&path)) {
                    Ok(got) => {
                        assert!(
                            Some(&got) == model.certain(&path),
                            "op {n}: {path} reads back something else ({} bytes)",
                            got.len()
                        );
                        true
                    }
                    Err(_) => false,
                }
            }
            _ => continue,
        };
        done += 1;
        if !ok {
            failed += 1;
        }
    }
    // What is still queued (batched deletes) is sent at unmount, with the faults off.
    plan.set_on(false);
    m.unmount();
    let mut m = env.mount(16, &[]);
    let mut checked = 0;
    for (path, outcomes) in &model.files {
        let got = std::fs::read(m.p(path)).ok();
        assert!(
            outcomes.contains(&got),
            "{path}: holds {:?} bytes, the model allows {:?}",
            got.as_ref().map(Vec::len),
            outcomes.iter().map(|o| o.as_ref().map(Vec::len)).collect::<Vec<_>>()
        );
        checked += 1;
    }
    m.assert_alive();
    let fired: u64 = [
        FaultKind::InternalError,
        FaultKind::SlowDown,
        FaultKind::Reset,
        FaultKind::Truncate,
    ]
    .iter()
    .map(|k| plan.fired(*k))
    .sum();
    println!("soak: {done} operations, {failed} returned an error, {fired} faults injected, {checked} paths checked");
    assert!(fired > 50, "the faults fired ({fired})");
}
