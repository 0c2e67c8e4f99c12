//! prefixfs: mount an S3 bucket as a directory tree whose files are stored under
//! hash-prefixed keys. See `ARCHITECTURE.md` for how the modules fit together.
//!
//! A request flows one way: kernel → [`fuse`] → [`fs`] (namespace, metadata cache) →
//! [`data`] (reads, uploads) → [`store`] (S3 trait, retries, counters) → the wire.

pub mod cli;
pub mod data;
pub mod fs;
pub mod fuse;
pub mod layout;
pub mod metrics;
pub mod mount;
pub mod private;
pub mod server;
pub mod store;

/// Reads a mount's request counters (the `user.prefixfs.stats` xattr of its root).
pub fn read_stats(mountpoint: &std::path::Path) -> std::io::Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let name = std::ffi::CString::new(fuse::STATS_XATTR).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: both strings are NUL-terminated and buf is writable for its length.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).map_err(std::io::Error::other)
}
