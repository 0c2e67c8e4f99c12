//! A body on its way into the store: written to a temporary file in the bucket's `tmp/`,
//! its MD5 computed as it comes (the ETag), its checksums read back when asked; renamed
//! into place by a commit, removed if abandoned.

use md5::{Digest, Md5};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// A body being written to a temporary file, hashed on the way.
pub struct Staged {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) md5: Md5,
    pub(super) size: u64,
}

impl Staged {
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.md5.update(data);
        self.size += data.len() as u64;
        self.file.write_all(data)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `len` bytes of `src` in the kernel (copy_file_range), without hashing them:
    /// for bodies whose ETag is already known (a completed multipart upload's).
    pub(super) fn append_unhashed(&mut self, src: &mut File, len: u64) -> io::Result<()> {
        let n = io::copy(&mut src.take(len), &mut self.file)?;
        if n != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source shorter than expected",
            ));
        }
        self.size += len;
        Ok(())
    }

    /// The base64 checksum of the bytes written so far by `algorithm` (S3's name), read
    /// back from the file; None for an algorithm this store does not know.
    pub fn checksum(&self, algorithm: &str) -> io::Result<Option<String>> {
        let Some(mut hasher) = hasher(algorithm) else {
            return Ok(None);
        };
        let mut f = File::open(&self.path)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match f.read(&mut buf)? {
                0 => break,
                n => hasher.update(&buf[..n]),
            }
        }
        let sum = hasher.finalize();
        Ok([
            sum.checksum_crc32,
            sum.checksum_crc32c,
            sum.checksum_crc64nvme,
            sum.checksum_sha1,
            sum.checksum_sha256,
        ]
        .into_iter()
        .flatten()
        .next())
    }

    pub(super) fn finish_md5(&mut self) -> [u8; 16] {
        std::mem::take(&mut self.md5).finalize().into()
    }
}

/// A hasher for one of S3's checksum algorithms, by its name.
pub fn hasher(algorithm: &str) -> Option<s3s::checksum::ChecksumHasher> {
    use s3s::crypto::{Checksum as _, Crc32, Crc32c, Crc64Nvme, Sha1, Sha256};
    let mut h = s3s::checksum::ChecksumHasher::default();
    match algorithm.to_ascii_uppercase().as_str() {
        "CRC32" => h.crc32 = Some(Crc32::new()),
        "CRC32C" => h.crc32c = Some(Crc32c::new()),
        "CRC64NVME" => h.crc64nvme = Some(Crc64Nvme::new()),
        "SHA1" => h.sha1 = Some(Sha1::new()),
        "SHA256" => h.sha256 = Some(Sha256::new()),
        _ => return None,
    }
    Some(h)
}

impl Drop for Staged {
    fn drop(&mut self) {
        // A committed file has been renamed away; an abandoned one is removed.
        let _ = fs::remove_file(&self.path);
    }
}

pub(super) fn copy_into(src: &mut File, dst: &mut Staged, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = src.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source shorter than expected",
            ));
        }
        dst.write(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}
