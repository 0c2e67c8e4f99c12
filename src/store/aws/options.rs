//! The bucket's options, and which requests carry them (the peers' bucket options; a bucket
//! whose policy demands one refuses every request without it):
//!
//! 1. Server-side encryption (`--sse`, `--sse-kms-key-id`): named on every request that makes
//!    an object (PutObject, CreateMultipartUpload, CopyObject, so renames and chmods too; a
//!    copy that names none gets the bucket's default, not its source's).
//! 2. SSE-C (`--sse-c-key-file`): the key goes with every request that writes or reads an
//!    object's bytes or headers (PUT, multipart, copies, GET, HEAD), and a copy names it twice
//!    (source and destination). S3 keeps only the key's MD5.
//! 3. Requester pays and the expected bucket owner: on every request ([`BucketHeaders`]).
//! 4. Upload checksums (`--upload-checksum`): each PUT and part carries its CRC, computed
//!    here from the bytes sent, and the completion lists every part's CRC. A CRC32C
//!    multipart object gets a composite checksum (the CRC of the parts' CRCs, `…-N`), which
//!    every S3-compatible store with checksums supports (moto 5.2 computes FULL_OBJECT ones
//!    wrongly for copied parts); CRC64NVME is FULL_OBJECT only, by S3's rule. A copy gets
//!    its source's algorithm from S3. A whole-object GET asks for the checksum and the SDK
//!    checks it (a composite one it cannot, and skips).

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::types::ChecksumAlgorithm;

/// What the bucket asks of every request (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketOptions {
    pub encryption: Option<Encryption>,
    /// `x-amz-request-payer: requester` (`--requester-pays`).
    pub requester_pays: bool,
    /// `x-amz-expected-bucket-owner` (`--expected-bucket-owner`): S3 refuses a request when
    /// the bucket belongs to another account (a deleted bucket's name taken by someone else).
    pub expected_owner: Option<String>,
    /// The CRC every upload carries (`--upload-checksum`); None: none.
    pub checksum: Option<Checksum>,
}

impl BucketOptions {
    /// What the requests carry, for a person (`prefixfs doctor`): "none" when nothing.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.encryption {
            Some(Encryption::Managed { algorithm, kms_key_id }) => parts.push(match kms_key_id {
                Some(k) => format!("SSE {algorithm} (key {k})"),
                None => format!("SSE {algorithm}"),
            }),
            Some(Encryption::Customer(k)) => parts.push(format!("SSE-C (key MD5 {})", k.md5())),
            None => {}
        }
        match self.checksum {
            Some(Checksum::Crc32c) => parts.push("checksums CRC32C".into()),
            Some(Checksum::Crc64Nvme) => parts.push("checksums CRC64NVME".into()),
            None => parts.push("no checksums".into()),
        }
        if self.requester_pays {
            parts.push("requester pays".into());
        }
        if let Some(o) = &self.expected_owner {
            parts.push(format!("bucket owner {o}"));
        }
        parts.join(", ")
    }
}

/// How new objects are encrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// SSE-S3 (`AES256`), SSE-KMS (`aws:kms`) or DSSE-KMS (`aws:kms:dsse`), with the KMS key
    /// (None: the account's AWS-managed key).
    Managed {
        algorithm: String,
        kms_key_id: Option<String>,
    },
    /// SSE-C: the mount's own key.
    Customer(CustomerKey),
}

/// The algorithms `--sse` accepts.
pub const SSE_ALGORITHMS: [&str; 3] = ["aws:kms", "aws:kms:dsse", "AES256"];

/// An SSE-C key: 32 bytes, kept as S3's headers carry them (base64, and the base64 of its
/// MD5). Its Debug form shows the MD5 only.
#[derive(Clone, PartialEq, Eq)]
pub struct CustomerKey {
    key: String,
    md5: String,
}

/// Why the bytes of a key file are not an SSE-C key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("neither 32 bytes nor base64 text")]
    NotAKey,
    #[error("an SSE-C key is 32 bytes (AES-256), this one is {0}")]
    Length(usize),
}

impl std::fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomerKey(md5 {})", self.md5)
    }
}

impl CustomerKey {
    /// A key from a file's bytes: 32 raw bytes, or their base64 (surrounding white space
    /// ignored).
    pub fn from_bytes(raw: &[u8]) -> Result<CustomerKey, KeyError> {
        use md5::{Digest, Md5};
        let key = if raw.len() == 32 {
            raw.to_vec()
        } else {
            let text = std::str::from_utf8(raw).map_err(|_| KeyError::NotAKey)?;
            aws_smithy_types::base64::decode(text.trim()).map_err(|_| KeyError::NotAKey)?
        };
        if key.len() != 32 {
            return Err(KeyError::Length(key.len()));
        }
        Ok(CustomerKey {
            key: aws_smithy_types::base64::encode(&key),
            md5: aws_smithy_types::base64::encode(Md5::digest(&key)),
        })
    }

    /// The key in `path`, a file only its owner may read (as ssh asks of a private key): a
    /// key others can read is no secret, and one someone else owns could be theirs.
    pub fn load(path: &std::path::Path) -> Result<CustomerKey, crate::invalid::Invalid> {
        use std::os::unix::fs::MetadataExt;
        let bad = |why: String| crate::invalid::Invalid::new(path.display().to_string(), why);
        let m = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !m.is_file() || m.uid() != me || m.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "must be a regular file owned by uid {me} that only its owner can read (chmod 600)"
            )));
        }
        let raw = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        CustomerKey::from_bytes(&raw).map_err(|e| bad(e.to_string()))
    }

    /// The base64 of the key's MD5, as S3 keeps and answers it.
    pub fn md5(&self) -> &str {
        &self.md5
    }
}

/// The CRC of `--upload-checksum`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    Crc32c,
    Crc64Nvme,
}

impl Checksum {
    pub fn algorithm(self) -> ChecksumAlgorithm {
        match self {
            Checksum::Crc32c => ChecksumAlgorithm::Crc32C,
            Checksum::Crc64Nvme => ChecksumAlgorithm::Crc64Nvme,
        }
    }

    /// The checksum type of a multipart upload (see the module doc).
    pub fn multipart_type(self) -> aws_sdk_s3::types::ChecksumType {
        match self {
            Checksum::Crc32c => aws_sdk_s3::types::ChecksumType::Composite,
            Checksum::Crc64Nvme => aws_sdk_s3::types::ChecksumType::FullObject,
        }
    }

    /// The base64 of `data`'s CRC, as its `x-amz-checksum-*` header carries it.
    pub fn of(self, data: &[u8]) -> String {
        let algorithm = match self {
            Checksum::Crc32c => aws_smithy_checksums::ChecksumAlgorithm::Crc32c,
            Checksum::Crc64Nvme => aws_smithy_checksums::ChecksumAlgorithm::Crc64Nvme,
        };
        let mut sum = algorithm.into_impl();
        sum.update(data);
        aws_smithy_types::base64::encode(sum.finalize())
    }
}

/// What [`super::AwsStore::upload_part`] returns: the part's ETag and, with upload checksums,
/// its CRC, which the completion must list. Opaque to the callers, who only hand it back.
pub(super) fn part_receipt(etag: &str, crc: Option<&str>) -> String {
    match crc {
        Some(c) => format!("{etag}\n{c}"),
        None => etag.to_string(),
    }
}

/// The ETag and CRC of a [`part_receipt`].
pub(super) fn read_receipt(receipt: &str) -> (&str, Option<&str>) {
    match receipt.split_once('\n') {
        Some((etag, crc)) => (etag, Some(crc)),
        None => (receipt, None),
    }
}

/// Sets the encryption headers of a request that makes an object (PutObject,
/// CreateMultipartUpload, CopyObject: the same setters).
macro_rules! encrypted {
    ($req:expr, $opts:expr) => {
        match &$opts.encryption {
            Some($crate::store::aws::Encryption::Managed { algorithm, kms_key_id }) => $req
                .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::from(algorithm.as_str()))
                .set_ssekms_key_id(kms_key_id.clone()),
            Some($crate::store::aws::Encryption::Customer(k)) => k.sign($req),
            None => $req,
        }
    };
}
pub(super) use encrypted;

/// Sets the SSE-C key of a request that reads or adds to an object (GET, HEAD, UploadPart,
/// UploadPartCopy, CompleteMultipartUpload); nothing for the other encryptions.
macro_rules! keyed {
    ($req:expr, $opts:expr) => {
        match &$opts.encryption {
            Some($crate::store::aws::Encryption::Customer(k)) => k.sign($req),
            _ => $req,
        }
    };
}
pub(super) use keyed;

/// Sets the SSE-C key of a copy's source (CopyObject, UploadPartCopy).
macro_rules! source_keyed {
    ($req:expr, $opts:expr) => {
        match &$opts.encryption {
            Some($crate::store::aws::Encryption::Customer(k)) => $req
                .copy_source_sse_customer_algorithm("AES256")
                .copy_source_sse_customer_key(k.key_b64())
                .copy_source_sse_customer_key_md5(k.md5()),
            _ => $req,
        }
    };
}
pub(super) use source_keyed;

/// The three SSE-C setters every request builder that takes them has.
pub(super) trait SseCustomer: Sized {
    fn sse_c(self, algorithm: &str, key: &str, md5: &str) -> Self;
}

macro_rules! sse_customer_for {
    ($($builder:ty),*) => {$(
        impl SseCustomer for $builder {
            fn sse_c(self, algorithm: &str, key: &str, md5: &str) -> Self {
                self.sse_customer_algorithm(algorithm).sse_customer_key(key).sse_customer_key_md5(md5)
            }
        }
    )*};
}

use aws_sdk_s3::operation as op;
sse_customer_for!(
    op::put_object::builders::PutObjectFluentBuilder,
    op::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder,
    op::copy_object::builders::CopyObjectFluentBuilder,
    op::get_object::builders::GetObjectFluentBuilder,
    op::head_object::builders::HeadObjectFluentBuilder,
    op::upload_part::builders::UploadPartFluentBuilder,
    op::upload_part_copy::builders::UploadPartCopyFluentBuilder,
    op::complete_multipart_upload::builders::CompleteMultipartUploadFluentBuilder
);

impl CustomerKey {
    pub(super) fn sign<B: SseCustomer>(&self, req: B) -> B {
        req.sse_c("AES256", &self.key, &self.md5)
    }

    pub(super) fn key_b64(&self) -> &str {
        &self.key
    }
}

/// Adds the headers every request carries: `x-amz-request-payer` and
/// `x-amz-expected-bucket-owner` (and, on a copy, `x-amz-source-expected-bucket-owner`:
/// the source is in the same bucket). Before signing, so the signature covers them.
#[derive(Debug)]
pub(super) struct BucketHeaders {
    requester_pays: bool,
    owner: Option<http::HeaderValue>,
}

impl BucketHeaders {
    /// None when the options add no header.
    pub(super) fn of(opts: &BucketOptions) -> Result<Option<BucketHeaders>, crate::invalid::Invalid> {
        let owner = match &opts.expected_owner {
            Some(o) => Some(http::HeaderValue::from_str(o).map_err(|_| {
                crate::invalid::Invalid::new(format!("--expected-bucket-owner {o:?}"), "not a header value")
            })?),
            None => None,
        };
        Ok((opts.requester_pays || owner.is_some()).then_some(BucketHeaders {
            requester_pays: opts.requester_pays,
            owner,
        }))
    }
}

impl Intercept for BucketHeaders {
    fn name(&self) -> &'static str {
        "prefixfs bucket headers"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let headers = context.request_mut().headers_mut();
        if self.requester_pays {
            headers.insert("x-amz-request-payer", "requester");
        }
        if let Some(owner) = &self.owner {
            let owner = owner.to_str().unwrap_or_default().to_string();
            if headers.contains_key("x-amz-copy-source") {
                headers.insert("x-amz-source-expected-bucket-owner", owner.clone());
            }
            headers.insert("x-amz-expected-bucket-owner", owner);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sse_c_key_is_32_bytes_raw_or_in_base64() {
        let raw = [7u8; 32];
        let a = CustomerKey::from_bytes(&raw).unwrap();
        let text = format!("{}\n", aws_smithy_types::base64::encode(raw));
        let b = CustomerKey::from_bytes(text.as_bytes()).unwrap();
        assert_eq!(a, b);
        assert!(CustomerKey::from_bytes(&[1u8; 16]).is_err());
        assert!(CustomerKey::from_bytes(b"not base64 at all!").is_err());
        assert!(!format!("{a:?}").contains(a.key_b64()), "Debug hides the key");
    }

    #[test]
    fn an_sse_c_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, [9u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(CustomerKey::load(&path).unwrap_err().to_string().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(CustomerKey::load(&path).is_ok());
    }

    #[test]
    fn checksums_are_s3_s() {
        // S3's documented values for "Hello world" are not published; these are the CRCs
        // of the ASCII digits 1–9, the catalogue's check values, in S3's base64 form.
        let crc32c = Checksum::Crc32c.of(b"123456789");
        assert_eq!(crc32c, aws_smithy_types::base64::encode(0xe306_9283u32.to_be_bytes()));
        let crc64 = Checksum::Crc64Nvme.of(b"123456789");
        assert_eq!(
            crc64,
            aws_smithy_types::base64::encode(0xae8b_1486_0a79_9888u64.to_be_bytes())
        );
    }

    #[test]
    fn a_part_receipt_carries_its_crc() {
        assert_eq!(
            read_receipt(&part_receipt("\"e\"", Some("abc="))),
            ("\"e\"", Some("abc="))
        );
        assert_eq!(read_receipt(&part_receipt("\"e\"", None)), ("\"e\"", None));
    }
}
