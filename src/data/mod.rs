//! The data path: reading object bodies with a growing prefetch window, and uploading new
//! bodies (one PUT for small files, a streamed multipart upload for large ones), and keeping
//! what could not be uploaded; the data cache on local disk ([`cache`]); the mount's memory
//! target that read-ahead and part buffers draw from ([`memory`]).
//! Knows keys and bytes; nothing of directories.

pub mod cache;
pub mod kept;
pub mod memory;
pub mod read;
pub mod spool;
pub mod staging;
pub mod upload;
