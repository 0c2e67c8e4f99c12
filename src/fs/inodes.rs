//! The inode table: kernel inode numbers ⇄ paths, with the kernel's lookup counts.
//!
//! Invariants: inode 1 is the root and is never forgotten; an inode stays while the kernel
//! holds lookups on it (`forget` drops them); a rename rewrites the paths of the renamed
//! inode and of every inode below it, so open handles keep working. The table also keeps the
//! times S3 has nowhere to store: when this mount last changed an inode's attributes (ctime)
//! or a directory's entries (its mtime and ctime); they live as long as the inode.

use super::cache::Kind;
use crate::layout::RelPath;
use std::collections::HashMap;
use std::time::SystemTime;

/// The tables' hasher: paths come from the bucket, so it is seeded per process (foldhash,
/// hashbrown's own), and it is several times cheaper than SipHash on the 10,000 names a
/// readdirplus of a big directory adds.
type Hasher = foldhash::fast::RandomState;

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone)]
pub struct Inode {
    pub path: RelPath,
    pub kind: Kind,
    lookups: u64,
    /// This mount last changed its attributes (chmod, chown, truncate, rename...).
    changed: Option<SystemTime>,
    /// This mount last created, removed or renamed an entry in it (a directory).
    entries_changed: Option<SystemTime>,
    /// An atime set here (utimens); else atime reads as mtime (reads do not move it).
    accessed: Option<SystemTime>,
}

#[derive(Debug)]
pub struct Inodes {
    by_ino: HashMap<u64, Inode, Hasher>,
    by_path: HashMap<RelPath, u64, Hasher>,
    next: u64,
}

/// The times this mount keeps for an inode (see [`Inodes::times`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Times {
    /// Its attributes last changed here (its ctime in this mount's view).
    pub changed: Option<SystemTime>,
    /// An entry was last created, removed or renamed in it here (a directory's mtime).
    pub entries_changed: Option<SystemTime>,
    /// An atime set here (utimens).
    pub accessed: Option<SystemTime>,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            by_ino: HashMap::default(),
            by_path: HashMap::default(),
            next: ROOT_INO + 1,
        };
        t.by_ino.insert(
            ROOT_INO,
            Inode {
                path: RelPath::root(),
                kind: Kind::Dir,
                lookups: 1,
                changed: None,
                entries_changed: None,
                accessed: None,
            },
        );
        t.by_path.insert(RelPath::root(), ROOT_INO);
        t
    }
}

impl Inodes {
    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.by_ino.get(&ino)
    }

    /// The inode of `path`, created if needed, with one more kernel lookup counted.
    pub fn lookup(&mut self, path: &RelPath, kind: Kind) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(i) = self.by_ino.get_mut(&ino) {
                i.lookups += 1;
                i.kind = kind;
            }
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(
            ino,
            Inode {
                path: path.clone(),
                kind,
                lookups: 1,
                changed: None,
                entries_changed: None,
                accessed: None,
            },
        );
        self.by_path.insert(path.clone(), ino);
        ino
    }

    /// Records a change of `ino`'s attributes at `at` (its ctime in this mount's view).
    pub fn changed(&mut self, ino: u64, at: SystemTime) {
        if let Some(i) = self.by_ino.get_mut(&ino) {
            i.changed = Some(at);
        }
    }

    /// Records an entry created, removed or renamed in the directory `dir` at `at`.
    pub fn entries_changed(&mut self, dir: &RelPath, at: SystemTime) {
        if let Some(i) = self.by_path.get(dir).and_then(|ino| self.by_ino.get_mut(ino)) {
            i.changed = Some(at);
            i.entries_changed = Some(at);
        }
    }

    /// Records an atime set on `ino`.
    pub fn accessed(&mut self, ino: u64, at: SystemTime) {
        if let Some(i) = self.by_ino.get_mut(&ino) {
            i.accessed = Some(at);
        }
    }

    /// The atime set on `ino` in this mount, if any.
    pub fn atime(&self, ino: u64) -> Option<SystemTime> {
        self.by_ino.get(&ino).and_then(|i| i.accessed)
    }

    /// The times this mount set or changed on `ino`, if it did.
    pub fn times(&self, ino: u64) -> Times {
        self.by_ino.get(&ino).map_or(Times::default(), |i| Times {
            changed: i.changed,
            entries_changed: i.entries_changed,
            accessed: i.accessed,
        })
    }

    /// The inode of `path` if the kernel knows it, without counting a lookup.
    pub fn find(&self, path: &RelPath) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let remove = match self.by_ino.get_mut(&ino) {
            Some(i) => {
                i.lookups = i.lookups.saturating_sub(n);
                i.lookups == 0
            }
            None => false,
        };
        if remove
            && let Some(i) = self.by_ino.remove(&ino)
            && self.by_path.get(&i.path) == Some(&ino)
        {
            self.by_path.remove(&i.path);
        }
    }

    /// Moves `from` (and everything below it) to `to`. An inode already at `to` loses its path.
    /// `from` moved to `to`. The inode `to` named before is no longer reachable by name;
    /// with `detach_replaced` (it is open for writing here) it is pointed nowhere, so its
    /// last close cannot write over what was moved there. Otherwise it keeps `to` as its
    /// path: a reader whose lookup found it just before the rename opens and reads what
    /// `to` holds now (S3 keeps no old version to show), never ENOENT: the name shows the
    /// old or the new file at every instant.
    pub fn rename(&mut self, from: &RelPath, to: &RelPath, detach_replaced: bool) {
        if let Some(old) = self.by_path.remove(to)
            && detach_replaced
            && let Some(i) = self.by_ino.get_mut(&old)
        {
            i.path = RelPath::parse(&format!(".prefixfs-unlinked-{old}")).unwrap_or_default();
        }
        // Only the inode a path names moves the name with it; one replaced earlier that still
        // keeps the path (see above) follows without claiming it.
        let moved: Vec<(u64, RelPath, bool)> = self
            .by_ino
            .iter()
            .filter(|(_, i)| i.path.starts_with(from) && !from.is_root())
            .map(|(ino, i)| (*ino, i.path.rebase(from, to), self.by_path.get(&i.path) == Some(ino)))
            .collect();
        for (ino, new_path, named) in moved {
            if !named {
                if let Some(i) = self.by_ino.get_mut(&ino) {
                    i.path = new_path;
                }
                continue;
            }
            if let Some(i) = self.by_ino.get_mut(&ino) {
                self.by_path.remove(&i.path);
                i.path = new_path.clone();
                self.by_path.insert(new_path, ino);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn forget_drops_inode_after_all_lookups() {
        let mut t = Inodes::default();
        let a = t.lookup(&p("a"), Kind::File);
        assert_eq!(t.lookup(&p("a"), Kind::File), a);
        t.forget(a, 1);
        assert!(t.get(a).is_some());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert_eq!(t.find(&p("a")), None);
        t.forget(ROOT_INO, 100);
        assert!(t.get(ROOT_INO).is_some());
    }

    #[test]
    fn rename_moves_subtree_paths() {
        let mut t = Inodes::default();
        let d = t.lookup(&p("d"), Kind::Dir);
        let f = t.lookup(&p("d/x/f"), Kind::File);
        let other = t.lookup(&p("dd/f"), Kind::File);
        t.rename(&p("d"), &p("e/d2"), true);
        assert_eq!(t.get(d).unwrap().path, p("e/d2"));
        assert_eq!(t.get(f).unwrap().path, p("e/d2/x/f"));
        assert_eq!(t.get(other).unwrap().path, p("dd/f"));
        assert_eq!(t.find(&p("e/d2/x/f")), Some(f));
        assert_eq!(t.find(&p("d/x/f")), None);
    }
}
