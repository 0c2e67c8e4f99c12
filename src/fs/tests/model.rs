//! A property test of the core: random sequences of mkdir, create/write, truncate, rename,
//! unlink and rmdir, sometimes with the cache dropped (so the state comes back from S3),
//! run against a `BTreeMap` model of the tree; after every step each directory's listing
//! and each file's bytes must be what the model says.

use super::{AttrChanges, ROOT_INO, Rig, rig};
use crate::fs::cache::Kind;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

/// Paths of one or two components over three names: enough for collisions.
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=2).prop_map(|v| v.join("/"))
}

#[derive(Debug, Clone)]
enum Op {
    Mkdir(String),
    Write(String, u8, u8, u8),
    Truncate(String, u8),
    Rename(String, String),
    Unlink(String),
    Rmdir(String),
    DropCache,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        path().prop_map(Op::Mkdir),
        (path(), any::<u8>(), 0..40u8, 1..40u8).prop_map(|(p, b, off, len)| Op::Write(p, b, off, len)),
        (path(), 0..60u8).prop_map(|(p, n)| Op::Truncate(p, n)),
        (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        path().prop_map(Op::Unlink),
        path().prop_map(Op::Rmdir),
        Just(Op::DropCache),
    ]
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

fn name(p: &str) -> &str {
    p.rsplit_once('/').map_or(p, |(_, n)| n)
}

fn is_dir(m: &BTreeMap<String, Node>, p: &str) -> bool {
    p.is_empty() || m.get(p) == Some(&Node::Dir)
}

fn children<'a>(m: &'a BTreeMap<String, Node>, dir: &str) -> impl Iterator<Item = (&'a String, &'a Node)> {
    let dir = dir.to_string();
    m.iter().filter(move |(p, _)| parent(p) == dir)
}

async fn ino(r: &Rig, p: &str) -> u64 {
    if p.is_empty() { ROOT_INO } else { r.ino(p).await }
}

/// Applies `op` to the model and the core when the model says it is valid; skips it
/// otherwise (errno behaviour has its own tests).
async fn step(r: &Rig, m: &mut BTreeMap<String, Node>, op: &Op) {
    match op {
        Op::Mkdir(p) if is_dir(m, parent(p)) && !m.contains_key(p) => {
            let d = ino(r, parent(p)).await;
            r.core.mkdir(d, OsStr::new(name(p)), 0o755, 0, 0).await.unwrap();
            m.insert(p.clone(), Node::Dir);
        }
        Op::Write(p, byte, off, len) if is_dir(m, parent(p)) && !is_dir(m, p) => {
            let d = ino(r, parent(p)).await;
            let fh = match m.get(p) {
                None => {
                    r.core
                        .create(d, OsStr::new(name(p)), 0o644, 0, 0, false)
                        .await
                        .unwrap()
                        .1
                }
                Some(_) => {
                    let f = r.core.lookup(d, OsStr::new(name(p))).await.unwrap();
                    r.core.open(f.ino, libc::O_WRONLY).await.unwrap()
                }
            };
            let data = vec![*byte; *len as usize];
            r.core.write(fh, *off as u64, &data).await.unwrap();
            r.core.flush(fh, false).await.unwrap();
            r.core.release(fh).await.unwrap();
            let Node::File(body) = m.entry(p.clone()).or_insert(Node::File(Vec::new())) else {
                unreachable!()
            };
            let end = *off as usize + data.len();
            if body.len() < end {
                body.resize(end, 0);
            }
            body[*off as usize..end].copy_from_slice(&data);
        }
        Op::Truncate(p, n) if matches!(m.get(p), Some(Node::File(_))) => {
            let f = ino(r, p).await;
            r.core.setattr(f, AttrChanges::truncate(*n as u64)).await.unwrap();
            if let Some(Node::File(body)) = m.get_mut(p) {
                body.resize(*n as usize, 0);
            }
        }
        Op::Rename(a, b)
            if m.contains_key(a)
                && a != b
                && !b.starts_with(&format!("{a}/"))
                && is_dir(m, parent(b))
                && (!m.contains_key(b)
                    || (!is_dir(m, a) && !is_dir(m, b))
                    || (is_dir(m, a) && is_dir(m, b) && children(m, b).next().is_none())) =>
        {
            let (da, db) = (ino(r, parent(a)).await, ino(r, parent(b)).await);
            r.core
                .rename(da, OsStr::new(name(a)), db, OsStr::new(name(b)), 0)
                .await
                .unwrap();
            let moved: Vec<(String, Node)> = m
                .iter()
                .filter(|(p, _)| *p == a || p.starts_with(&format!("{a}/")))
                .map(|(p, n)| (format!("{b}{}", &p[a.len()..]), n.clone()))
                .collect();
            m.retain(|p, _| p != a && p != b && !p.starts_with(&format!("{a}/")));
            m.extend(moved);
        }
        Op::Unlink(p) if matches!(m.get(p), Some(Node::File(_))) => {
            let d = ino(r, parent(p)).await;
            r.core.unlink(d, OsStr::new(name(p))).await.unwrap();
            m.remove(p);
        }
        Op::Rmdir(p) if m.get(p) == Some(&Node::Dir) && children(m, p).next().is_none() => {
            let d = ino(r, parent(p)).await;
            r.core.rmdir(d, OsStr::new(name(p))).await.unwrap();
            m.remove(p);
        }
        Op::DropCache => r.expire(),
        _ => {}
    }
}

/// Every directory lists what the model holds, and every file reads back its bytes.
async fn check(r: &Rig, m: &BTreeMap<String, Node>, after: &Op) {
    let dirs: Vec<String> = std::iter::once(String::new())
        .chain(m.iter().filter(|(_, n)| **n == Node::Dir).map(|(p, _)| p.clone()))
        .collect();
    for d in dirs {
        let listed: BTreeMap<String, Kind> = r
            .list(ino(r, &d).await)
            .await
            .into_iter()
            .filter(|e| e.name != "." && e.name != "..")
            .map(|e| (e.name, e.kind))
            .collect();
        let want: BTreeMap<String, Kind> = children(m, &d)
            .map(|(p, n)| {
                (
                    name(p).to_string(),
                    if *n == Node::Dir { Kind::Dir } else { Kind::File },
                )
            })
            .collect();
        assert_eq!(listed, want, "listing of {d:?} after {after:?}");
    }
    for (p, n) in m {
        if let Node::File(body) = n {
            let f = ino(r, p).await;
            let fh = r.core.open(f, libc::O_RDONLY).await.unwrap();
            let got = r.core.read(fh, 0, 4096).await.unwrap();
            r.core.release(fh).await.unwrap();
            assert_eq!(&got[..], &body[..], "{p} after {after:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_core_behaves_like_a_tree_of_files(ops in prop::collection::vec(op(), 1..25)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let r = rig();
            let mut m = BTreeMap::new();
            for op in &ops {
                step(&r, &mut m, op).await;
                check(&r, &m, op).await;
            }
        });
    }
}
