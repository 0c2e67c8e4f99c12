//! Data that could not be uploaded, kept in `lost+found/` for its owner to recover.
//!
//! Invariants:
//! 1. A kept file never replaces another: two failures of one path get two names.
//! 2. [`Kept`] says exactly what the file holds: the whole content, or which byte ranges are
//!    missing (zeros, or cut off), and the log line is made from it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What was kept of a file whose upload failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub path: PathBuf,
    /// The file's size as the program wrote it.
    pub size: u64,
    /// Ranges of that content not in the kept file (zeros there, or beyond its end).
    pub missing: Vec<Range<u64>>,
}

impl Kept {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_complete() {
            return write!(f, "all {} bytes kept at {}", self.size, self.path.display());
        }
        let lost: u64 = self.missing.iter().map(|r| r.end - r.start).sum();
        write!(
            f,
            "{} of {} bytes kept at {}; missing (zeros or cut off): ",
            self.size - lost,
            self.size,
            self.path.display()
        )?;
        for (i, r) in self.missing.iter().enumerate() {
            write!(f, "{}{}..{}", if i > 0 { ", " } else { "" }, r.start, r.end)?;
        }
        Ok(())
    }
}

/// The name a kept copy of `rel` gets: the UTC time, then the path with `/` as `%2F`.
pub fn name_for(rel: &str) -> String {
    let stamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!("{stamp}-{}", rel.replace('%', "%25").replace('/', "%2F"))
}

/// Moves `src` into `dir` (created private) as `name`, or `name.1`, `name.2`... whichever is
/// free: a hard link never replaces an existing file (invariant 1).
pub fn move_into(src: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    crate::private::ensure_dir(dir)?;
    for n in 0..10_000u32 {
        let dest = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{name}.{n}"))
        };
        match std::fs::hard_link(src, &dest) {
            Ok(()) => {
                let _ = std::fs::remove_file(src);
                return Ok(dest);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "no free name for {name} in {}",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_copy_of_one_path_does_not_replace_the_first() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("lost+found");
        let name = name_for("a/b%c.txt");
        assert!(name.ends_with("-a%2Fb%25c.txt"), "{name}");
        let mut kept = Vec::new();
        for body in ["one", "two"] {
            let src = t.path().join(body);
            std::fs::write(&src, body).unwrap();
            kept.push(move_into(&src, &dir, &name).unwrap());
            assert!(!src.exists());
        }
        assert_ne!(kept[0], kept[1]);
        assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(&kept[1]).unwrap(), "two");
    }

    #[test]
    fn the_description_says_what_is_missing() {
        let k = Kept {
            path: "/c/lost+found/x".into(),
            size: 100,
            missing: vec![10..20, 90..100],
        };
        assert_eq!(
            k.to_string(),
            "80 of 100 bytes kept at /c/lost+found/x; missing (zeros or cut off): 10..20, 90..100"
        );
    }
}
