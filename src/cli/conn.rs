//! How to reach the bucket, for every command alike: the endpoint, region, profile and
//! credentials, the bucket options (encryption, requester pays, owner, checksums, anonymous
//! access, Content-Type, storage class), and retries.

use crate::invalid::Invalid;
use crate::store::aws::{AwsConfig, BucketOptions, Checksum, Encryption};
use crate::store::retry::RetryConfig;
use clap::Args;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ContentTypeMode {
    #[default]
    Auto,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UploadChecksum {
    #[default]
    Crc32c,
    Crc64nvme,
    Off,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ConnArgs {
    /// S3 endpoint, e.g. http://127.0.0.1:9000 for a local store.
    #[arg(long, value_parser = parse_endpoint)]
    pub endpoint_url: Option<String>,
    /// The bucket's AWS region (e.g. eu-west-1); else from AWS_REGION, the profile, or
    /// us-east-1.
    #[arg(long)]
    pub region: Option<String>,
    /// Address buckets as http://host/bucket instead of http://bucket.host.
    #[arg(long)]
    pub force_path_style: bool,
    /// Profile in ~/.aws/config to take credentials and region from.
    #[arg(long)]
    pub profile: Option<String>,
    /// Content-Type of new objects: `auto`, from the name's extension (a.html: text/html),
    /// as s3fs does; `none`, S3's default (binary/octet-stream). Renames and copies keep
    /// the object's own.
    #[arg(long, value_enum, default_value_t = ContentTypeMode::Auto)]
    pub content_type: ContentTypeMode,
    /// Storage class of new objects (PUT, multipart uploads); renames and copies keep each
    /// object's own. Only classes read without a restore.
    #[arg(long, value_parser = [
        "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR",
        "REDUCED_REDUNDANCY", "EXPRESS_ONEZONE",
    ])]
    pub storage_class: Option<String>,
    /// Server-side encryption of new objects and of copies (renames, chmod): `aws:kms`
    /// (SSE-KMS), `aws:kms:dsse` (DSSE-KMS) or `AES256` (SSE-S3). Unset: the bucket's default.
    #[arg(long, value_parser = crate::store::aws::SSE_ALGORITHMS)]
    pub sse: Option<String>,
    /// The KMS key (id, ARN or alias) of `--sse aws:kms` (which it implies) or
    /// `aws:kms:dsse`; unset: the account's AWS-managed key.
    #[arg(long, conflicts_with = "sse_c_key_file")]
    pub sse_kms_key_id: Option<String>,
    /// SSE-C: encrypt every object with this key (a file of 32 bytes, or their base64, that
    /// only its owner can read), sent with every write, read and copy. Objects written with
    /// another key (or none) cannot be read.
    #[arg(long, conflicts_with = "sse", value_parser = parse_sse_c_key)]
    pub sse_c_key_file: Option<crate::store::aws::CustomerKey>,
    /// The bucket is requester pays: every request says the requester pays
    /// (`x-amz-request-payer`), as S3 demands of anyone but the owner.
    #[arg(long)]
    pub requester_pays: bool,
    /// The account id that must own the bucket (`x-amz-expected-bucket-owner` on every
    /// request): S3 refuses the request if someone else does.
    #[arg(long, value_parser = parse_account_id)]
    pub expected_bucket_owner: Option<String>,
    /// Anonymous requests, for public buckets: no credentials looked up. The mount is
    /// read-only unless the bucket takes anonymous writes.
    #[arg(long, conflicts_with = "profile")]
    pub no_sign_request: bool,
    /// The checksum every upload carries (each PUT and part), which S3 checks and keeps:
    /// whole-object reads are checked against it. `off` for S3-compatible stores that
    /// refuse the headers.
    #[arg(long, value_enum, default_value_t = UploadChecksum::Crc32c)]
    pub upload_checksum: UploadChecksum,
    /// Attempts per request before an operation fails with EIO.
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
}

/// `s3://bucket/root/` → ("bucket", "root").
/// `--endpoint-url`: an http:// or https:// URL with a host, refused at once otherwise
/// (without a scheme, every request would fail the same way, ten times).
pub fn parse_endpoint(s: &str) -> Result<String, Invalid> {
    let uri: http::Uri = s.parse().map_err(|e| Invalid::new(s, format!("not a URL ({e})")))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(h)) if !h.is_empty() => Ok(s.to_string()),
        (None, _) => Err(Invalid::new(
            s,
            format!("no scheme: did you mean http://{s} (or https://{s})?"),
        )),
        (Some(other), Some(_)) if other != "http" && other != "https" => Err(Invalid::new(
            s,
            format!("scheme {other}: S3 speaks http:// or https://"),
        )),
        _ => Err(Invalid::new(s, "no host in the URL")),
    }
}

pub(super) fn parse_sse_c_key(path: &str) -> Result<crate::store::aws::CustomerKey, Invalid> {
    crate::store::aws::CustomerKey::load(std::path::Path::new(path))
}

/// An AWS account id: twelve digits.
pub(super) fn parse_account_id(s: &str) -> Result<String, Invalid> {
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_string())
    } else {
        Err(Invalid::new(format!("{s:?}"), "not an account id (twelve digits)"))
    }
}

impl ConnArgs {
    pub fn aws_config(&self, bucket: &str) -> AwsConfig {
        AwsConfig {
            bucket: bucket.to_string(),
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            force_path_style: self.force_path_style,
            profile: self.profile.clone(),
            static_credentials: None,
            content_type_auto: self.content_type == ContentTypeMode::Auto,
            storage_class: self.storage_class.clone(),
            options: self.bucket_options(),
            no_sign_request: self.no_sign_request,
        }
    }

    fn bucket_options(&self) -> BucketOptions {
        let encryption = match (&self.sse, &self.sse_c_key_file) {
            (_, Some(key)) => Some(Encryption::Customer(key.clone())),
            (Some(algorithm), None) => Some(Encryption::Managed {
                algorithm: algorithm.clone(),
                kms_key_id: self.sse_kms_key_id.clone(),
            }),
            (None, None) => self.sse_kms_key_id.as_ref().map(|key| Encryption::Managed {
                algorithm: "aws:kms".into(),
                kms_key_id: Some(key.clone()),
            }),
        };
        BucketOptions {
            encryption,
            requester_pays: self.requester_pays,
            expected_owner: self.expected_bucket_owner.clone(),
            checksum: match self.upload_checksum {
                UploadChecksum::Crc32c => Some(Checksum::Crc32c),
                UploadChecksum::Crc64nvme => Some(Checksum::Crc64Nvme),
                UploadChecksum::Off => None,
            },
        }
    }

    pub fn retry_config(&self) -> Result<RetryConfig, Invalid> {
        if self.max_attempts == 0 {
            return Err(Invalid::new("--max-attempts 0", "must be at least 1"));
        }
        Ok(RetryConfig {
            max_attempts: self.max_attempts,
            ..RetryConfig::default()
        })
    }
}
