//! prefixfs: mount an S3 bucket as a directory tree whose files are stored under
//! hash-prefixed keys. See `ARCHITECTURE.md` for how the modules fit together.
//!
//! A request flows one way: kernel → [`fuse`] → [`fs`] (namespace, metadata cache) →
//! [`data`] (reads, uploads) → [`store`] (S3 trait, retries, counters) → the wire.

pub mod adhoc;
pub mod bucket;
pub mod check;
pub mod cli;
pub mod commands;
pub mod data;
pub mod defaults;
pub mod doctor;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod invalid;
pub mod layout;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod mount;
pub mod private;
pub mod server;
pub mod store;

/// Reads a running mount's request counters (from its stats socket, see
/// [`mount::stats_socket`]).
pub fn read_stats(mountpoint: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let path = mount::stats_socket(mountpoint);
    let mut conn = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{}: no prefixfs mount of this user answers there ({e})", path.display()),
        )
    })?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    Ok(text)
}
