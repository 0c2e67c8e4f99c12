//! prefixfs: mount an S3 bucket as a directory tree whose files are stored under
//! hash-prefixed keys. See `ARCHITECTURE.md` for how the modules fit together.

pub mod layout;
pub mod server;
pub mod store;
