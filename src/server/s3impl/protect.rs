//! Encryption and checksums as S3 handles them, and what a bucket policy demands of them
//! ([`Policy`]): so that the tests see every write path send what a production bucket asks.
//!
//! - SSE (`aws:kms`, `aws:kms:dsse`, `AES256`) is kept as the write named it and answered
//!   on GET and HEAD. SSE-C is kept by the key's MD5; a GET, HEAD or copy of such an object
//!   without the key is refused with 400, with another key with 403, and a key given for an
//!   object stored without one is refused with 400, as S3 does.
//! - A checksum sent with a PUT or a part is checked against the bytes (400 BadDigest) and
//!   kept; GET (whole object only) and HEAD answer it when asked (`x-amz-checksum-mode`).

use super::super::disk::{Entry, ObjectChecksum, Sse, Staged};
use s3s::dto::{Checksum, ChecksumType, ServerSideEncryption};
use s3s::{S3Error, S3ErrorCode, S3Result};

/// What the bucket's policy demands (`prefixfs serve --require-sse`, ...).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Writes that make an object (PUT, CreateMultipartUpload, CopyObject) must name this
    /// encryption (`aws:kms`, `aws:kms:dsse`, `AES256`, or `SSE-C`): else 403 AccessDenied,
    /// as a policy denying `s3:PutObject` without `s3:x-amz-server-side-encryption` does.
    pub require_sse: Option<String>,
    /// PUTs and parts must carry a checksum (else 400 InvalidRequest).
    pub require_checksum: bool,
    /// A requester-pays bucket: every request must say `x-amz-request-payer: requester`
    /// (else 403 AccessDenied; every client is taken for a requester, not the owner).
    pub requester_pays: bool,
    /// The bucket's owner: every request must name it in `x-amz-expected-bucket-owner`
    /// (else 403 AccessDenied), so that the tests see each one does.
    pub bucket_owner: Option<String>,
    /// A public bucket: unsigned requests may read (GET, HEAD, list); anything else they ask
    /// is refused with 403.
    pub public_read: bool,
}

/// Who may do what: signed requests anything; unsigned ones only read, and only from a
/// public bucket ([`Policy::public_read`]).
pub struct Signed {
    pub public_read: bool,
}

#[async_trait::async_trait]
impl s3s::access::S3Access for Signed {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        const READS: [&str; 6] = [
            "GetObject",
            "HeadObject",
            "ListObjectsV2",
            "ListObjects",
            "HeadBucket",
            "GetObjectTagging",
        ];
        if cx.credentials().is_some() || (self.public_read && READS.contains(&cx.s3_op().name())) {
            return Ok(());
        }
        Err(S3Error::with_message(
            S3ErrorCode::AccessDenied,
            "Signature is required",
        ))
    }
}

impl Policy {
    /// The refusal of a request (any operation) whose headers this bucket does not accept:
    /// status, code and message.
    pub fn refusal(&self, headers: &http::HeaderMap) -> Option<(u16, &'static str, String)> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if self.requester_pays && header("x-amz-request-payer") != Some("requester") {
            return Some((
                403,
                "AccessDenied",
                "this bucket is requester pays: x-amz-request-payer: requester is required".into(),
            ));
        }
        if let Some(owner) = &self.bucket_owner {
            let named = header("x-amz-expected-bucket-owner");
            let source = header("x-amz-source-expected-bucket-owner");
            let copy = headers.contains_key("x-amz-copy-source");
            if named != Some(owner.as_str()) || (copy && source != Some(owner.as_str())) {
                return Some((
                    403,
                    "AccessDenied",
                    format!("the bucket owner {owner} is not the one the request expects ({named:?})"),
                ));
            }
        }
        None
    }

    /// A write that makes an object with `sse`.
    pub fn check_sse(&self, sse: Option<&Sse>) -> S3Result<()> {
        let Some(want) = &self.require_sse else { return Ok(()) };
        let got = sse.map(|s| match s.customer_key_md5 {
            Some(_) => "SSE-C",
            None => s.algorithm.as_str(),
        });
        if got == Some(want.as_str()) {
            return Ok(());
        }
        Err(S3Error::with_message(
            S3ErrorCode::AccessDenied,
            format!("the bucket policy requires {want} encryption; the request asked for {got:?}"),
        ))
    }

    /// A PUT or part that carries `given` (a checksum or none).
    pub fn check_checksum<T>(&self, given: Option<T>) -> S3Result<()> {
        if self.require_checksum && given.is_none() {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "this bucket requires a checksum (x-amz-checksum-crc32c, -crc64nvme, ...) on every upload",
            ));
        }
        Ok(())
    }
}

/// The SSE-C key headers of a request: algorithm, key (base64), key MD5 (base64).
pub struct CustomerKey<'a> {
    pub algorithm: Option<&'a String>,
    pub key: Option<&'a String>,
    pub md5: Option<&'a String>,
}

impl CustomerKey<'_> {
    /// The key's MD5 when the headers name a well-formed key (400 when they name a bad one).
    fn md5(&self) -> S3Result<Option<String>> {
        use md5::{Digest, Md5};
        let bad = |why: &str| S3Error::with_message(S3ErrorCode::InvalidArgument, why.to_string());
        match (self.algorithm, self.key, self.md5) {
            (None, None, None) => Ok(None),
            (Some(a), Some(k), Some(m)) => {
                if a != "AES256" {
                    return Err(bad("the SSE-C algorithm must be AES256"));
                }
                let key = aws_smithy_types::base64::decode(k).map_err(|_| bad("the SSE-C key is not base64"))?;
                if key.len() != 32 {
                    return Err(bad("the SSE-C key must be 256 bits"));
                }
                if aws_smithy_types::base64::encode(Md5::digest(&key)) != *m {
                    return Err(bad("the SSE-C key's MD5 does not match the key"));
                }
                Ok(Some(m.clone()))
            }
            _ => Err(bad("SSE-C needs the algorithm, the key and its MD5")),
        }
    }

    /// Whether these headers open an object (or upload) encrypted with `sse` (see the
    /// module doc).
    pub fn opens(&self, sse: Option<&Sse>) -> S3Result<()> {
        let given = self.md5()?;
        let kept = sse.and_then(|s| s.customer_key_md5.as_ref());
        match (kept, given) {
            (None, None) => Ok(()),
            (Some(k), Some(g)) if *k == g => Ok(()),
            (Some(_), Some(_)) => Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                "the SSE-C key is not the one the object was written with",
            )),
            (Some(_), None) => Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object.",
            )),
            (None, Some(_)) => Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "The encryption parameters are not applicable to this object.",
            )),
        }
    }
}

/// The encryption a write names: SSE-C by its key headers, or `x-amz-server-side-encryption`.
pub fn sse_of(
    algorithm: Option<&ServerSideEncryption>,
    kms_key_id: Option<&String>,
    customer: CustomerKey<'_>,
) -> S3Result<Option<Sse>> {
    if let Some(md5) = customer.md5()? {
        return Ok(Some(Sse {
            algorithm: "AES256".into(),
            kms_key_id: None,
            customer_key_md5: Some(md5),
        }));
    }
    let Some(a) = algorithm else {
        return Ok(None);
    };
    let a = a.as_str();
    if ![
        ServerSideEncryption::AES256,
        ServerSideEncryption::AWS_KMS,
        "aws:kms:dsse",
    ]
    .contains(&a)
    {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("unknown server-side encryption {a}"),
        ));
    }
    Ok(Some(Sse {
        algorithm: a.to_string(),
        kms_key_id: kms_key_id.filter(|_| a != ServerSideEncryption::AES256).cloned(),
        customer_key_md5: None,
    }))
}

/// The answer headers of an object's encryption: SSE algorithm, KMS key, SSE-C algorithm,
/// SSE-C key MD5.
pub type SseAnswer = (
    Option<ServerSideEncryption>,
    Option<String>,
    Option<String>,
    Option<String>,
);

pub fn sse_answer(e: &Entry) -> SseAnswer {
    match &e.sse {
        Some(Sse {
            customer_key_md5: Some(md5),
            algorithm,
            ..
        }) => (None, None, Some(algorithm.clone()), Some(md5.clone())),
        Some(s) => (
            Some(ServerSideEncryption::from(s.algorithm.clone())),
            s.kms_key_id.clone(),
            None,
            None,
        ),
        None => (None, None, None, None),
    }
}

/// The one checksum a request gives (algorithm name, base64 value).
pub fn given(c: &Checksum) -> Option<(&'static str, &str)> {
    [
        ("CRC32", &c.checksum_crc32),
        ("CRC32C", &c.checksum_crc32c),
        ("CRC64NVME", &c.checksum_crc64nvme),
        ("SHA1", &c.checksum_sha1),
        ("SHA256", &c.checksum_sha256),
    ]
    .into_iter()
    .find_map(|(name, v)| v.as_deref().map(|v| (name, v)))
}

/// `value` under its algorithm's field.
pub fn checksum_fields(algorithm: &str, value: Option<String>) -> Checksum {
    let mut c = Checksum::default();
    match algorithm {
        "CRC32" => c.checksum_crc32 = value,
        "CRC32C" => c.checksum_crc32c = value,
        "CRC64NVME" => c.checksum_crc64nvme = value,
        "SHA1" => c.checksum_sha1 = value,
        "SHA256" => c.checksum_sha256 = value,
        _ => {}
    }
    c
}

/// What an object's checksum answers (with its type), when the request asked for it.
pub fn checksum_answer(e: &Entry, asked: bool) -> (Checksum, Option<ChecksumType>) {
    match (&e.checksum, asked) {
        (Some(c), true) => (
            checksum_fields(&c.algorithm, Some(c.value.clone())),
            Some(ChecksumType::from(
                if c.full_object {
                    ChecksumType::FULL_OBJECT
                } else {
                    ChecksumType::COMPOSITE
                }
                .to_string(),
            )),
        ),
        _ => (Checksum::default(), None),
    }
}

/// The checksum a staged body keeps: the one the request gave, checked against the bytes
/// (400 BadDigest when they differ), or `algorithm`'s, computed (a copy that asks for one).
pub fn checked(
    staged: &Staged,
    given: Option<(&str, &str)>,
    algorithm: Option<&str>,
) -> S3Result<Option<ObjectChecksum>> {
    let io = |e: std::io::Error| S3Error::with_message(S3ErrorCode::InternalError, e.to_string());
    if let Some((name, want)) = given {
        let got = staged.checksum(name).map_err(io)?;
        if got.as_deref() != Some(want) {
            return Err(S3Error::with_message(
                S3ErrorCode::BadDigest,
                format!("The {name} you specified did not match the calculated checksum."),
            ));
        }
        return Ok(Some(ObjectChecksum {
            algorithm: name.to_string(),
            value: want.to_string(),
            full_object: true,
        }));
    }
    let Some(name) = algorithm else { return Ok(None) };
    Ok(staged.checksum(name).map_err(io)?.map(|value| ObjectChecksum {
        algorithm: name.to_ascii_uppercase(),
        value,
        full_object: true,
    }))
}
