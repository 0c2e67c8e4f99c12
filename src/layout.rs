//! The on-bucket layout: how a path inside the mount becomes an S3 key, and back.
//!
//! This module is pure (no I/O) and is the public contract documented in `docs/LAYOUT.md`:
//!
//! 1. A file at relative path `P` (UTF-8, no leading slash) is stored at
//!    `ROOT/<prefix(P)>/P`; with a prefix count of 1 the prefix segment is omitted, which is
//!    exactly the plain layout a bucket would have without prefixfs.
//! 2. `prefix(P)` = the first 8 hex digits of SHA-256(P) read as a big-endian `u32`, modulo the
//!    prefix count, printed as lowercase hex zero-padded to the width of `count - 1`.
//! 3. A directory `D` may have a marker object `ROOT/<prefix(D)>/D/` (empty body), so that an
//!    empty directory survives; a directory also exists implicitly while any key lies under
//!    `ROOT/<q>/D/` for any prefix `q`.
//! 4. The descriptor lives at `ROOT/.prefixfs/layout.json`; the top-level name `.prefixfs` is
//!    reserved and never shown in the mount.
//!
//! Every function here is deterministic forever: changing one is a format break.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// S3's hard limit on the length of a key, in bytes.
pub use crate::limits::MAX_KEY_BYTES;
/// Longest single name we accept (Linux NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;
/// The reserved top-level name under which the descriptor lives.
pub const RESERVED_NAME: &str = ".prefixfs";
/// Default number of prefixes.
pub const DEFAULT_PREFIX_COUNT: u32 = 16;
/// Largest prefix count allowed.
pub const MAX_PREFIX_COUNT: u32 = 4096;
/// The only hash this format version knows.
pub const HASH_NAME: &str = "sha256-u32be-mod";
/// Format version of the descriptor and of the key scheme.
pub const FORMAT_VERSION: u32 = 1;

/// Why a path or name cannot be represented as a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("name is not valid UTF-8")]
    NotUtf8,
    #[error("name {0:?} is longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong(String),
    #[error("key for {0:?} would exceed S3's {MAX_KEY_BYTES}-byte limit")]
    KeyTooLong(String),
    #[error("name {0:?} is not allowed (empty, '.', '..', contains '/' or NUL)")]
    InvalidName(String),
    #[error("name {0:?} is reserved for prefixfs")]
    Reserved(String),
    #[error("prefix count {0} is outside 1..={MAX_PREFIX_COUNT}")]
    BadPrefixCount(u32),
    #[error("root {0:?} is not a valid key prefix (no empty segments, no leading '/')")]
    BadRoot(String),
}

/// A validated relative path inside the mount: UTF-8, components joined by `/`, no empty,
/// `.` or `..` component. The empty path is the mount root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelPath(String);

impl RelPath {
    pub fn root() -> Self {
        RelPath(String::new())
    }

    /// Parses a path such as `2017/02/08/a.txt` (leading and trailing slashes are ignored).
    pub fn parse(s: &str) -> Result<Self, LayoutError> {
        let mut p = RelPath::root();
        for comp in s.split('/').filter(|c| !c.is_empty()) {
            p = p.join(comp)?;
        }
        Ok(p)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The child `name` of this directory; validates the name.
    pub fn join(&self, name: &str) -> Result<Self, LayoutError> {
        validate_name(name)?;
        if self.is_root() && name == RESERVED_NAME {
            return Err(LayoutError::Reserved(name.to_string()));
        }
        if self.is_root() {
            Ok(RelPath(name.to_string()))
        } else {
            Ok(RelPath(format!("{}/{}", self.0, name)))
        }
    }

    /// The last component, or "" for the root.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    pub fn parent(&self) -> Option<RelPath> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => RelPath(self.0[..i].to_string()),
            None => RelPath::root(),
        })
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// Replaces the leading `from` with `to` (`self` must start with `from`).
    pub fn rebase(&self, from: &RelPath, to: &RelPath) -> RelPath {
        let rest = if from.is_root() {
            &self.0[..]
        } else {
            self.0[from.0.len()..].trim_start_matches('/')
        };
        if rest.is_empty() {
            to.clone()
        } else if to.is_root() {
            RelPath(rest.to_string())
        } else {
            RelPath(format!("{}/{}", to.0, rest))
        }
    }
}

/// For people and logs: control characters escaped (`\n` in a name must not forge a log
/// line). Keys use [`RelPath::as_str`].
impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", escape_controls(&self.0))
    }
}

/// `s` with control characters escaped as `\n`, `\u{1b}`...: safe to put in a log line.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Validates one path component.
pub fn validate_name(name: &str) -> Result<(), LayoutError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(LayoutError::InvalidName(name.to_string()));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(LayoutError::NameTooLong(name.to_string()));
    }
    Ok(())
}

/// The prefix set and the key scheme of one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: String,
    prefix_count: u32,
    width: usize,
}

/// The descriptor object stored at `ROOT/.prefixfs/layout.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    pub format: u32,
    pub hash: String,
    pub prefix_count: u32,
}

impl Layout {
    /// `root` is the key prefix the mount covers (`""` for the whole bucket, else e.g.
    /// `data/2024`, stored without surrounding slashes).
    pub fn new(root: &str, prefix_count: u32) -> Result<Self, LayoutError> {
        if prefix_count == 0 || prefix_count > MAX_PREFIX_COUNT {
            return Err(LayoutError::BadPrefixCount(prefix_count));
        }
        let trimmed = root.trim_matches('/');
        if trimmed.split('/').any(|s| s.is_empty()) && !trimmed.is_empty() {
            return Err(LayoutError::BadRoot(root.to_string()));
        }
        let width = format!("{:x}", prefix_count - 1).len();
        Ok(Layout {
            root: trimmed.to_string(),
            prefix_count,
            width,
        })
    }

    pub fn prefix_count(&self) -> u32 {
        self.prefix_count
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            format: FORMAT_VERSION,
            hash: HASH_NAME.to_string(),
            prefix_count: self.prefix_count,
        }
    }

    /// The key of the layout descriptor.
    pub fn descriptor_key(&self) -> String {
        format!("{}{RESERVED_NAME}/layout.json", self.root_slash())
    }

    /// `ROOT/` or `""`.
    pub fn root_slash(&self) -> String {
        if self.root.is_empty() {
            String::new()
        } else {
            format!("{}/", self.root)
        }
    }

    /// The prefix index of a path (the hash, reduced to the prefix count).
    pub fn prefix_index(&self, path: &RelPath) -> u32 {
        let digest = Sha256::digest(path.as_str().as_bytes());
        let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        head % self.prefix_count
    }

    /// The prefix segment a key lies in (`"all"` for the plain layout), for per-prefix
    /// counters and pacing; keys outside the prefix set give `"other"`.
    pub fn prefix_label(&self, key: &str) -> String {
        if self.prefix_count == 1 {
            return "all".into();
        }
        key.strip_prefix(&self.root_slash())
            .and_then(|r| r.split_once('/'))
            .map(|(p, _)| p)
            .filter(|p| p.len() == self.width && u32::from_str_radix(p, 16).is_ok_and(|i| i < self.prefix_count))
            .map(str::to_string)
            .unwrap_or_else(|| "other".into())
    }

    /// The printed form of prefix `index`.
    pub fn prefix_name(&self, index: u32) -> String {
        format!("{:0width$x}", index, width = self.width)
    }

    /// `ROOT/<q>/` for prefix `q`, or `ROOT/` when the layout is plain.
    pub fn prefix_base(&self, index: u32) -> String {
        if self.prefix_count == 1 {
            self.root_slash()
        } else {
            format!("{}{}/", self.root_slash(), self.prefix_name(index))
        }
    }

    /// All prefix bases, in index order.
    pub fn prefix_bases(&self) -> Vec<String> {
        (0..self.prefix_count).map(|i| self.prefix_base(i)).collect()
    }

    /// The key of the file at `path` (must not be the root).
    pub fn file_key(&self, path: &RelPath) -> Result<String, LayoutError> {
        let key = format!("{}{}", self.prefix_base(self.prefix_index(path)), path.as_str());
        check_key_len(key, path)
    }

    /// The key of the directory marker of `path` (must not be the root).
    pub fn dir_marker_key(&self, path: &RelPath) -> Result<String, LayoutError> {
        let key = format!("{}{}/", self.prefix_base(self.prefix_index(path)), path.as_str());
        check_key_len(key, path)
    }

    /// The listing prefix of directory `dir` within prefix `index`: `ROOT/<q>/dir/`.
    pub fn dir_list_prefix(&self, index: u32, dir: &RelPath) -> String {
        if dir.is_root() {
            self.prefix_base(index)
        } else {
            format!("{}{}/", self.prefix_base(index), dir.as_str())
        }
    }

    /// Inverse of the key scheme: the path a key stands for, and whether it is a directory
    /// marker. `None` for keys outside the prefix set, keys whose prefix does not match their
    /// hash, the descriptor, and anything that is not a valid path.
    pub fn key_to_path(&self, key: &str) -> Option<(RelPath, bool)> {
        let rest = key.strip_prefix(&self.root_slash())?;
        let (index, rel) = if self.prefix_count == 1 {
            (0, rest)
        } else {
            let (p, rel) = rest.split_once('/')?;
            if p.len() != self.width {
                return None;
            }
            let index = u32::from_str_radix(p, 16).ok()?;
            if self.prefix_name(index) != p || index >= self.prefix_count {
                return None;
            }
            (index, rel)
        };
        let is_dir = rel.ends_with('/');
        let path = RelPath::parse(rel).ok()?;
        if path.is_root() || path.as_str() != rel.trim_end_matches('/') {
            return None;
        }
        if self.prefix_index(&path) != index {
            return None;
        }
        Some((path, is_dir))
    }

    /// Orders keys so that consecutive ones fall in different prefixes wherever possible
    /// (round-robin over the prefixes, each prefix's keys in their given order): bulk deletes
    /// and copies then spread over S3's partitions instead of walking one at a time.
    pub fn interleave_by_prefix(&self, keys: Vec<String>) -> Vec<String> {
        interleave_by(keys, |k: &String| self.prefix_label(k))
    }
}

/// Round-robin over the groups `label` puts keys in (groups in order of first appearance,
/// each group's keys in their given order): consecutive keys fall in different groups while
/// more than one group has keys left.
pub fn interleave_by<T>(keys: Vec<T>, label: impl Fn(&T) -> String) -> Vec<T> {
    let mut groups: Vec<(String, std::collections::VecDeque<T>)> = Vec::new();
    for k in keys {
        let l = label(&k);
        match groups.iter_mut().find(|(g, _)| *g == l) {
            Some((_, q)) => q.push_back(k),
            None => groups.push((l, std::collections::VecDeque::from([k]))),
        }
    }
    let mut out = Vec::new();
    while !groups.is_empty() {
        for (_, q) in groups.iter_mut() {
            if let Some(k) = q.pop_front() {
                out.push(k);
            }
        }
        groups.retain(|(_, q)| !q.is_empty());
    }
    out
}

fn check_key_len(key: String, path: &RelPath) -> Result<String, LayoutError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(LayoutError::KeyTooLong(path.as_str().to_string()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    /// The golden vectors published in docs/LAYOUT.md. If one of these changes, existing
    /// buckets become unreadable: never edit them to make a test pass.
    #[test]
    fn golden_vectors_match_docs() {
        let l16 = Layout::new("", 16).unwrap();
        let l256 = Layout::new("data", 256).unwrap();
        let l1 = Layout::new("logs", 1).unwrap();
        let cases = [
            (&l16, "2017/02/08/file.txt", "a/2017/02/08/file.txt"),
            (&l16, "a.txt", "9/a.txt"),
            (&l256, "2017/02/08/file.txt", "data/3a/2017/02/08/file.txt"),
            (&l256, "héllo wörld.txt", "data/b0/héllo wörld.txt"),
            (&l1, "2017/02/08/file.txt", "logs/2017/02/08/file.txt"),
        ];
        for (layout, path, key) in cases {
            assert_eq!(layout.file_key(&p(path)).unwrap(), key, "path {path}");
            assert_eq!(layout.key_to_path(key), Some((p(path), false)));
        }
        let l4096 = Layout::new("", 4096).unwrap();
        assert_eq!(
            l4096.file_key(&p("2017/02/08/file.txt")).unwrap(),
            "43a/2017/02/08/file.txt"
        );
    }

    /// Every row of the golden table in docs/LAYOUT.md holds for this code.
    #[test]
    fn docs_golden_table_holds() {
        let doc = include_str!("../docs/LAYOUT.md");
        let table = doc.split("## Golden vectors").nth(1).expect("golden section");
        let mut rows = 0;
        for line in table.lines().filter(|l| l.starts_with("| ") && l.contains('`')) {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let root = if cells[0] == "(none)" {
                ""
            } else {
                cells[0].trim_matches('`')
            };
            let layout = Layout::new(root, cells[1].parse().unwrap()).unwrap();
            let key = cells[3].trim_matches('`');
            let got = if let Some(dir) = cells[2].strip_prefix("directory ") {
                layout.dir_marker_key(&p(dir.split('`').nth(1).unwrap())).unwrap()
            } else {
                layout.file_key(&p(cells[2].trim_matches('`'))).unwrap()
            };
            assert_eq!(got, key, "{line}");
            rows += 1;
        }
        assert_eq!(rows, 7);
    }

    #[test]
    fn dir_marker_sits_in_the_directory_own_prefix() {
        let l = Layout::new("r", 16).unwrap();
        let d = p("2017/02");
        let q = l.prefix_index(&d);
        assert_eq!(
            l.dir_marker_key(&d).unwrap(),
            format!("r/{}/2017/02/", l.prefix_name(q))
        );
        assert_eq!(l.key_to_path(&l.dir_marker_key(&d).unwrap()), Some((d, true)));
    }

    #[test]
    fn keys_outside_the_prefix_set_are_not_paths() {
        let l = Layout::new("", 16).unwrap();
        assert_eq!(l.key_to_path(".prefixfs/layout.json"), None);
        assert_eq!(l.key_to_path("zz/a.txt"), None);
        assert_eq!(l.key_to_path("a.txt"), None);
        // right shape, wrong prefix for the hash
        let wrong = (l.prefix_index(&p("a.txt")) + 1) % 16;
        assert_eq!(l.key_to_path(&format!("{}/a.txt", l.prefix_name(wrong))), None);
        assert_eq!(l.key_to_path("2/2017//02"), None);
    }

    #[test]
    fn names_are_validated() {
        assert!(matches!(
            RelPath::root().join(".prefixfs"),
            Err(LayoutError::Reserved(_))
        ));
        assert!(p("a").join(".prefixfs").is_ok());
        assert!(matches!(
            RelPath::root().join(&"x".repeat(256)),
            Err(LayoutError::NameTooLong(_))
        ));
        assert!(matches!(RelPath::root().join(".."), Err(LayoutError::InvalidName(_))));
        let l = Layout::new("", 16).unwrap();
        let deep = (0..5).map(|_| "y".repeat(250)).collect::<Vec<_>>().join("/");
        assert!(matches!(l.file_key(&p(&deep)), Err(LayoutError::KeyTooLong(_))));
    }

    #[test]
    fn prefix_widths_and_counts() {
        assert_eq!(Layout::new("", 16).unwrap().prefix_name(3), "3");
        assert_eq!(Layout::new("", 17).unwrap().prefix_name(3), "03");
        assert_eq!(Layout::new("", 4096).unwrap().prefix_name(3), "003");
        assert!(Layout::new("", 0).is_err());
        assert!(Layout::new("", 4097).is_err());
        assert_eq!(Layout::new("", 1).unwrap().prefix_bases(), vec![String::new()]);
        assert_eq!(
            Layout::new("/a/b/", 2).unwrap().prefix_bases(),
            vec!["a/b/0/", "a/b/1/"]
        );
    }

    #[test]
    fn interleaving_alternates_prefixes() {
        let l = Layout::new("r", 16).unwrap();
        let keys: Vec<String> = ["r/0/a", "r/0/b", "r/0/c", "r/1/a", "r/2/a", "r/2/b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = l.interleave_by_prefix(keys.clone());
        assert_eq!(out, vec!["r/0/a", "r/1/a", "r/2/a", "r/0/b", "r/2/b", "r/0/c"]);
        let mut sorted = out.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
    }

    #[test]
    fn relpath_helpers() {
        let a = p("x/y/z");
        assert_eq!(a.name(), "z");
        assert_eq!(a.parent(), Some(p("x/y")));
        assert!(a.starts_with(&p("x")));
        assert!(!p("xy/z").starts_with(&p("x")));
        assert_eq!(a.rebase(&p("x/y"), &p("q")), p("q/z"));
        assert_eq!(a.rebase(&p("x"), &RelPath::root()), p("y/z"));
    }
}
