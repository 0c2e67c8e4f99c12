//! Extended attributes, kept as s3fs-fuse keeps them so that the two share a bucket: one user
//! metadata key, `x-amz-meta-xattr`, holding a JSON object of name → base64 value, the whole
//! percent-encoded (`%7B%22user.k%22%3A%22dg%3D%3D%22%7D` is `{"user.k":"dg=="}`).
//!
//! Which names are kept:
//! - `user.*` and `trusted.*` (the kernel lets only root touch `trusted.*`): stored.
//! - `security.*` and `system.*` are not: a read answers ENODATA and a write EOPNOTSUPP, with
//!   no request. The kernel asks for `security.capability` before every write to a file and
//!   `ls -l` asks for `system.posix_acl_access` of each entry; answering those from S3 would
//!   cost a HEAD per file. POSIX ACLs would need the kernel's ACL support through the mount
//!   (FUSE_POSIX_ACL), which prefixfs does not turn on: permissions are the mode bits.
//!   Such names written by s3fs stay on the object (every rewrite keeps the header) but are
//!   not listed.
//!
//! S3 allows 2 KiB of user metadata per object (keys and values): a change that would pass it
//! fails with ENOSPC and a log line, as a full ext4 inode's xattr space does.

use super::Core;
use super::cache::{EntryInfo, Kind};
use super::error::{FsError, FsResult};
use crate::layout::RelPath;
use crate::store::UserMeta;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;

/// The user metadata key (`x-amz-meta-xattr`).
pub const KEY: &str = "xattr";

/// S3's limit on an object's user metadata: the bytes of every key and value.
pub const USER_META_MAX: usize = 2048;

/// What is known of an object's `xattr` header: a HEAD (or this mount's own change) says;
/// a listing cannot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Header {
    #[default]
    Unknown,
    Known(Option<Arc<str>>),
}

impl Header {
    pub fn of(value: Option<&str>) -> Header {
        Header::Known(value.map(Arc::from))
    }
}

/// How a name is treated (see the module doc).
#[derive(Debug, PartialEq, Eq)]
pub enum Name<'a> {
    Stored(&'a str),
    /// `security.*`, `system.*`: never stored, answered without a request.
    NotKept,
    /// Not a name this mount can keep in s3fs's format.
    Invalid(&'static str),
}

pub fn classify(name: &str) -> Name<'_> {
    if name.starts_with("security.") || name.starts_with("system.") {
        return Name::NotKept;
    }
    if !(name.starts_with("user.") || name.starts_with("trusted.")) {
        return Name::Invalid("only the user.* and trusted.* namespaces are kept");
    }
    // s3fs splits its object at commas and strips quotes: such names would not read back.
    if name
        .bytes()
        .any(|b| b < 0x20 || matches!(b, b'"' | b',' | b'\\' | 0x7f))
    {
        return Name::Invalid("a name with a quote, comma, backslash or control character cannot be kept");
    }
    Name::Stored(name)
}

/// The attributes an `xattr` header holds, by name.
pub type Attrs = BTreeMap<String, Vec<u8>>;

/// Why an `xattr` header another tool wrote cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("the xattr header is not s3fs's JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("xattr {name}: bad base64: {why}")]
    BadValue { name: String, why: String },
}

/// Parses a header as s3fs writes it. Anything in the bucket may be hostile: a header that
/// does not parse is an error (the caller says so and leaves it alone), never a panic.
pub fn parse(header: &str) -> Result<Attrs, HeaderError> {
    let json = crate::store::urlenc::decode_percent(header);
    let map: BTreeMap<String, String> = serde_json::from_str(json.trim()).map_err(HeaderError::NotJson)?;
    map.into_iter()
        .map(|(name, v)| match aws_smithy_types::base64::decode(&v) {
            Ok(value) => Ok((name, value)),
            Err(e) => Err(HeaderError::BadValue {
                name,
                why: e.to_string(),
            }),
        })
        .collect()
}

/// The header for `attrs`, as s3fs writes it; None when there are none (the key goes).
pub fn encode(attrs: &Attrs) -> Option<String> {
    if attrs.is_empty() {
        return None;
    }
    let map: BTreeMap<&str, String> = attrs
        .iter()
        .map(|(k, v)| (k.as_str(), aws_smithy_types::base64::encode(v)))
        .collect();
    let json = serde_json::to_string(&map).unwrap_or_default();
    Some(crate::store::urlenc::encode(&json, b""))
}

/// The attributes of a header, or an error naming `what` when it does not parse.
pub fn attrs_of(header: Option<&str>, what: &dyn std::fmt::Display) -> FsResult<Attrs> {
    match header {
        None => Ok(Attrs::new()),
        Some(h) => parse(h).map_err(|e| FsError::new(libc::EIO, format!("{what}: {e}; left as it is"))),
    }
}

/// The names `listxattr` shows: the stored ones, each NUL-terminated.
pub fn list(attrs: &Attrs) -> Vec<u8> {
    let mut out = Vec::new();
    for k in attrs.keys().filter(|k| matches!(classify(k), Name::Stored(_))) {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
    }
    out
}

/// One change of an object's attributes: `setxattr` (with its `XATTR_CREATE` /
/// `XATTR_REPLACE` flags) or `removexattr` (value None).
pub struct Change<'a> {
    pub name: &'a str,
    pub value: Option<&'a [u8]>,
    pub flags: i32,
}

impl Change<'_> {
    /// The header after this change, from the header before it; `what` names the file.
    pub fn apply(&self, header: Option<&str>, what: &dyn std::fmt::Display) -> FsResult<Option<String>> {
        let mut attrs = attrs_of(header, what)?;
        let exists = attrs.contains_key(self.name);
        match self.value {
            Some(v) => {
                if self.flags & libc::XATTR_CREATE != 0 && exists {
                    return Err(FsError::new(
                        libc::EEXIST,
                        format!("{what}: xattr {} exists", self.name),
                    ));
                }
                if self.flags & libc::XATTR_REPLACE != 0 && !exists {
                    return Err(FsError::new(libc::ENODATA, format!("{what}: no xattr {}", self.name)));
                }
                attrs.insert(self.name.to_string(), v.to_vec());
            }
            None => {
                if attrs.remove(self.name).is_none() {
                    return Err(FsError::new(libc::ENODATA, format!("{what}: no xattr {}", self.name)));
                }
            }
        }
        Ok(encode(&attrs))
    }
}

/// `meta` with its `xattr` header set to `header` (removed for None), checked against S3's
/// limit on user metadata.
pub fn with_header(mut meta: UserMeta, header: Option<String>, what: &dyn std::fmt::Display) -> FsResult<UserMeta> {
    match header {
        Some(h) => meta.insert(KEY.to_string(), h),
        None => meta.remove(KEY),
    };
    let size: usize = meta.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > USER_META_MAX {
        return Err(FsError::new(
            libc::ENOSPC,
            format!(
                "{what}: extended attributes do not fit S3's {USER_META_MAX} bytes of user metadata ({size} bytes)"
            ),
        ));
    }
    Ok(meta)
}

impl Core {
    /// `getxattr`: a stored name's value, from what the mount knows of the object (the HEAD
    /// that gave its attributes; an open file's state), else one HEAD.
    pub async fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let path = self.path_of(ino)?;
        let name = match name.to_str().map(classify) {
            Some(Name::Stored(n)) => n,
            _ => {
                return Err(FsError::new(
                    libc::ENODATA,
                    format!("{path}: no xattr {}", name.to_string_lossy()),
                ));
            }
        };
        let attrs = attrs_of(self.xattr_header(ino, &path).await?.as_deref(), &path)?;
        attrs
            .get(name)
            .cloned()
            .ok_or_else(|| FsError::new(libc::ENODATA, format!("{path}: no xattr {name}")))
    }

    /// `listxattr`: the stored names, NUL-terminated.
    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let path = self.path_of(ino)?;
        Ok(list(&attrs_of(self.xattr_header(ino, &path).await?.as_deref(), &path)?))
    }

    /// The `xattr` header of `path` (`ino`): an open file's own, else the cached one, else a
    /// HEAD's.
    async fn xattr_header(&self, ino: u64, path: &RelPath) -> FsResult<Option<String>> {
        if let Some(header) = self.files.xattr_header(ino, path).await? {
            return Ok(header);
        }
        if path.is_root() {
            return Ok(None);
        }
        let info = self.stat(path).await?.ok_or_else(|| FsError::not_found(path))?;
        let known = match info.xattrs {
            Header::Known(h) => h,
            Header::Unknown => match self.ns.fetch_stat(path, Some(info.kind)).await? {
                Some(EntryInfo {
                    xattrs: Header::Known(h),
                    ..
                }) => h,
                // An implicit directory (no marker) holds none.
                Some(_) => None,
                None => return Err(FsError::not_found(path)),
            },
        };
        Ok(known.map(|h| h.to_string()))
    }

    /// `setxattr` (`value`, with its XATTR_CREATE / XATTR_REPLACE `flags`) or `removexattr`
    /// (`value` None). A file open for writing keeps the change for its next upload; any
    /// other object is copied onto itself (a directory's marker PUT anew) with the new
    /// header, only over the version a fresh HEAD saw.
    pub async fn setxattr(&self, ino: u64, name: &OsStr, value: Option<&[u8]>, flags: i32) -> FsResult<()> {
        let path = self.path_of(ino)?;
        let shown = name.to_string_lossy();
        let name = match name.to_str().map(classify) {
            Some(Name::Stored(n)) => n,
            Some(Name::NotKept) => {
                return Err(FsError::new(
                    libc::EOPNOTSUPP,
                    format!("{path}: {shown}: security.* and system.* attributes are not kept (see README)"),
                ));
            }
            Some(Name::Invalid(why)) => return Err(FsError::new(libc::EOPNOTSUPP, format!("{path}: {shown}: {why}"))),
            None => return Err(FsError::new(libc::EOPNOTSUPP, format!("{path}: {shown}: not UTF-8"))),
        };
        if path.is_root() {
            return Err(FsError::new(
                libc::EOPNOTSUPP,
                "the mount root has no object to keep extended attributes in",
            ));
        }
        self.check_writable(&path)?;
        let change = Change { name, value, flags };
        if self.files.change_xattrs(ino, &path, &change).await? {
            self.attributes_changed(ino);
            return Ok(());
        }
        let info = self.stat(&path).await?.ok_or_else(|| FsError::not_found(&path))?;
        let (etag, header) = self.ns.change_xattrs(&path, &info, &change).await?;
        let plain = info.plain && header.is_none();
        let mut new = info.with_xattrs(header.as_deref()).with_plain(plain);
        if new.kind != Kind::Dir {
            new = new.with_etag(etag.as_deref());
        }
        self.ns.learned(&path, new);
        self.attributes_changed(ino);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_s3fs_headers() {
        // What s3fs-fuse writes for user.foo = "bar" (its own test: {"foo":"YmFy"}).
        let s3fs = "%7B%22user.foo%22%3A%22YmFy%22%7D";
        let attrs = parse(s3fs).expect("parses");
        assert_eq!(attrs.get("user.foo").map(Vec::as_slice), Some(&b"bar"[..]));
        let back = encode(&attrs).expect("one attribute");
        assert_eq!(parse(&back).expect("round trip"), attrs);
        assert_eq!(crate::store::urlenc::decode_percent(&back), r#"{"user.foo":"YmFy"}"#);
        // A raw `+` of base64 stays a `+` (s3fs decodes no `+` to a space).
        let plus = parse(r#"{"user.b":"+/8="}"#).expect("unencoded JSON");
        assert_eq!(plus["user.b"], vec![0xfb, 0xff]);
        assert_eq!(encode(&Attrs::new()), None);
    }

    #[test]
    fn hostile_headers_are_errors_not_panics() {
        for h in [
            "",
            "%7B",
            "{\"user.a\":1}",
            "{\"user.a\":\"!!\"}",
            "[]",
            "%ZZ",
            "{\"user.a\":\"YQ==\"",
        ] {
            assert!(parse(h).is_err(), "{h:?}");
        }
        let e = attrs_of(Some("junk"), &"f").expect_err("junk");
        assert_eq!(e.errno, libc::EIO);
    }

    #[test]
    fn names_flags_and_the_size_limit() {
        assert_eq!(classify("user.x"), Name::Stored("user.x"));
        assert_eq!(classify("trusted.x"), Name::Stored("trusted.x"));
        assert_eq!(classify("security.capability"), Name::NotKept);
        assert_eq!(classify("system.posix_acl_access"), Name::NotKept);
        assert!(matches!(classify("user.a,b"), Name::Invalid(_)));
        assert!(matches!(classify("other.x"), Name::Invalid(_)));
        let set = |name, value: &'static [u8], flags| Change {
            name,
            value: Some(value),
            flags,
        };
        let h = set("user.a", b"1", 0).apply(None, &"f").expect("set").expect("header");
        let errno = |r: FsResult<Option<String>>| r.expect_err("refused").errno;
        assert_eq!(
            errno(set("user.a", b"2", libc::XATTR_CREATE).apply(Some(&h), &"f")),
            libc::EEXIST
        );
        assert_eq!(
            errno(set("user.b", b"2", libc::XATTR_REPLACE).apply(Some(&h), &"f")),
            libc::ENODATA
        );
        let remove = |name| Change {
            name,
            value: None,
            flags: 0,
        };
        assert_eq!(errno(remove("user.b").apply(Some(&h), &"f")), libc::ENODATA);
        assert_eq!(remove("user.a").apply(Some(&h), &"f").expect("removed"), None);
        let list = list(&parse(&h).expect("parses"));
        assert_eq!(list, b"user.a\0");
        // 2 KiB of user metadata at most.
        let big = set("user.big", &[7u8; 1600], 0).apply(None, &"f").expect("encodes");
        assert_eq!(
            with_header(UserMeta::new(), big, &"f").expect_err("too big").errno,
            libc::ENOSPC
        );
        let meta = with_header(UserMeta::new(), Some(h), &"f").expect("fits");
        assert!(with_header(meta, None, &"f").expect("removed").is_empty());
    }
}
