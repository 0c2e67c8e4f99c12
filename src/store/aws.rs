//! The aws-sdk-s3 implementation of [`ObjectStore`].
//!
//! Credentials come from the standard `aws-config` chain (environment, profile, IMDS) unless
//! static ones are given (the embedded server). The SDK's own retries are disabled: retries
//! and their counting live in [`super::retry`].

mod options;
pub use options::{BucketOptions, Checksum, CustomerKey, Encryption, SSE_ALGORITHMS};
use options::{encrypted, keyed, part_receipt, read_receipt, source_keyed};

use super::urlenc;
use super::{
    CopySpec, DeleteTarget, Headers, ListPage, ObjectMeta, ObjectStore, StoreError, StoreResult, Unreachable,
    UploadInfo, UserMeta, WriteIf,
};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::{Bytes, BytesMut};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How to reach S3.
#[derive(Debug, Clone, Default)]
pub struct AwsConfig {
    pub bucket: String,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    pub profile: Option<String>,
    /// Static (access key, secret key); otherwise the default credential chain.
    pub static_credentials: Option<(String, String)>,
    /// New objects (PutObject, CreateMultipartUpload) without a Content-Type get the one
    /// their name's extension says (`--content-type auto`); copies keep their source's.
    pub content_type_auto: bool,
    /// The storage class of new objects (`--storage-class`); None: the bucket's default.
    pub storage_class: Option<String>,
    /// Encryption, requester pays, the expected owner, upload checksums.
    pub options: BucketOptions,
    /// Anonymous requests (`--no-sign-request`), for public buckets: no credentials looked up.
    pub no_sign_request: bool,
}

#[derive(Clone)]
pub struct AwsStore {
    client: Client,
    bucket: String,
    /// Where requests go, for the errors a person reads (`S3` for AWS's own).
    endpoint: Arc<str>,
    /// `--content-type auto`: a new object (PutObject, CreateMultipartUpload) that is given
    /// no Content-Type gets its name's (see [`content_type_of`]); copies keep their source's.
    content_type_auto: bool,
    /// `--storage-class`: the class of a new object whose headers name none.
    storage_class: Option<String>,
    /// The credentials the client signs with (None: anonymous).
    credentials: Option<aws_sdk_s3::config::SharedCredentialsProvider>,
    /// Whether request bodies are part of the signature (SHA-256 of every byte sent).
    sign_payloads: bool,
    opts: BucketOptions,
}

/// Bodies need the signature's SHA-256 only where nothing else protects them in transit:
/// TLS does on `https` endpoints (AWS's default), and a loopback connection has no wire. Plain
/// HTTP to another host (a LAN MinIO) keeps signing them.
fn payload_signing_needed(endpoint: Option<&str>) -> bool {
    let Some(url) = endpoint else { return false };
    let Some((scheme, rest)) = url.split_once("://") else {
        return true;
    };
    if scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

impl AwsStore {
    pub async fn connect(cfg: &AwsConfig) -> AwsStore {
        use aws_config::BehaviorVersion;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(60))
                    .build(),
            );
        match (&cfg.region, &cfg.endpoint_url) {
            (Some(r), _) => loader = loader.region(aws_config::Region::new(r.clone())),
            // An S3-compatible endpoint: signing needs some region, and looking one up
            // (profile, instance metadata) would only guess.
            (None, Some(_)) if cfg.profile.is_none() => loader = loader.region(aws_config::Region::new("us-east-1")),
            _ => {}
        }
        if let Some(p) = &cfg.profile {
            loader = loader.profile_name(p);
        }
        if let Some(e) = &cfg.endpoint_url {
            loader = loader.endpoint_url(e);
        }
        if cfg.no_sign_request {
            loader = loader.no_credentials();
        } else if let Some((ak, sk)) = &cfg.static_credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(ak, sk, None, None, "prefixfs"));
        } else {
            // The SDK's chain, with instance metadata asked once and briefly: off EC2 its
            // default (4 attempts, 1 s timeouts) kept a user without credentials waiting 4–10 s.
            let imds = aws_config::imds::Client::builder()
                .connect_timeout(Duration::from_millis(500))
                .read_timeout(Duration::from_millis(500))
                .max_attempts(1)
                .build();
            let mut chain =
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder().imds_client(imds);
            if let Some(p) = &cfg.profile {
                chain = chain.profile_name(p);
            }
            if let Some(r) = &cfg.region {
                chain = chain.region(aws_config::Region::new(r.clone()));
            }
            loader = loader.credentials_provider(chain.build().await);
        }
        let shared = loader.load().await;
        let credentials = shared.credentials_provider();
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.force_path_style)
            // Checksums only where S3 requires them: keeps every S3-compatible store working.
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
        if shared.region().is_none() {
            b = b.region(aws_config::Region::new("us-east-1"));
        }
        match options::BucketHeaders::of(&cfg.options) {
            Ok(Some(h)) => b = b.interceptor(h),
            Ok(None) => {}
            // Checked when the options were parsed.
            Err(e) => tracing::warn!(error = %e, "bucket headers left out"),
        }
        AwsStore {
            client: Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            sign_payloads: payload_signing_needed(cfg.endpoint_url.as_deref()),
            endpoint: cfg.endpoint_url.as_deref().unwrap_or("S3").into(),
            credentials,
            content_type_auto: cfg.content_type_auto,
            storage_class: cfg.storage_class.clone(),
            opts: cfg.options.clone(),
        }
    }

    /// The storage class of a new object: one that carries no object's headers (`headers`
    /// from a HEAD describe an object being copied or rewritten, whose class stays, STANDARD
    /// included: S3 names no class for those).
    fn default_class(&self, headers: Option<&Headers>) -> Option<aws_sdk_s3::types::StorageClass> {
        if headers.is_some() {
            return None;
        }
        self.storage_class.as_deref().map(aws_sdk_s3::types::StorageClass::from)
    }

    /// The Content-Type of a new object at `key` (see [`AwsStore::default_class`]).
    fn default_content_type(&self, key: &str, headers: Option<&Headers>) -> Option<&'static str> {
        if !self.content_type_auto || headers.is_some() {
            return None;
        }
        content_type_of(key)
    }

    /// Where the requests go (`S3` for AWS's own endpoints).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The credentials, asked of the provider chain once, within [`CREDENTIALS_WAIT`]:
    /// before the first request, so that a user without any hears so at once, in one line,
    /// instead of after every request's retries. Ok: where they come from and which access
    /// key (masked), as `prefixfs doctor` reports them; None when the client signs nothing.
    pub async fn check_credentials(&self) -> Result<Option<String>, StoreError> {
        use aws_sdk_s3::config::ProvideCredentials;
        let Some(provider) = &self.credentials else {
            return Ok(None);
        };
        let failed = match tokio::time::timeout(CREDENTIALS_WAIT, provider.provide_credentials()).await {
            Ok(Ok(creds)) => return Ok(Some(describe(&creds))),
            Ok(Err(e)) => aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
            Err(_) => format!("no source answered within {CREDENTIALS_WAIT:?}"),
        };
        tracing::debug!(error = %failed, "no credentials");
        Err(StoreError::Unreachable {
            op: "credentials",
            key: String::new(),
            why: Unreachable::NoCredentials,
            endpoint: self.endpoint.to_string(),
        })
    }

    /// The region requests are signed for.
    pub fn region(&self) -> String {
        self.client
            .config()
            .region()
            .map_or_else(|| "us-east-1".to_string(), |r| r.to_string())
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the bucket (used by the embedded server set-up and tests).
    pub async fn create_bucket(&self) -> StoreResult<()> {
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.fail("create_bucket", &self.bucket, e);
                match &err {
                    StoreError::Client { code, .. } if code.starts_with("BucketAlready") => Ok(()),
                    _ => Err(err),
                }
            }
        }
    }
}

impl AwsStore {
    /// [`map_err`] for this store's endpoint.
    fn fail<E, R>(&self, op: &'static str, key: &str, e: SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + HasStatus + 'static,
    {
        map_err(op, key, &self.endpoint, e)
    }
}

/// Credentials as a person may see them: the provider's name (only in their Debug form,
/// where the secret is redacted) and the access key, masked.
fn describe(creds: &aws_sdk_s3::config::Credentials) -> String {
    let debug = format!("{creds:?}");
    let source = debug
        .split("provider_name: \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("a provider");
    let id = creds.access_key_id();
    let shown = match id.len() {
        n if n > 8 => format!("{}…{}", &id[..4], &id[n - 4..]),
        _ => "…".to_string(),
    };
    format!("{source}, access key {shown}")
}

/// Why a request that got no answer got none, when a person can tell from it what to fix;
/// None for the rest (a dropped connection, a timeout: transient).
fn unreachable(e: &(dyn std::error::Error + 'static)) -> Option<Unreachable> {
    let mut text = String::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return Some(Unreachable::Refused);
        }
        text.push_str(&err.to_string().to_ascii_lowercase());
        text.push('\n');
        cur = err.source();
    }
    if text.contains("credentials") && (text.contains("load") || text.contains("provide")) {
        Some(Unreachable::NoCredentials)
    } else if text.contains("connection refused") {
        Some(Unreachable::Refused)
    } else if text.contains("dns error") || text.contains("failed to lookup address") {
        Some(Unreachable::Dns)
    } else if [
        "tls",
        "certificate",
        "invalidcontenttype",
        "corrupt message",
        "handshake",
    ]
    .iter()
    .any(|w| text.contains(w))
    {
        Some(Unreachable::Tls)
    } else {
        None
    }
}

/// An error and its causes, each by its Display, in one line: what a log line at info or
/// warn shows (the SDK's Debug output of the same goes to the debug log).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !text.is_empty() && parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn map_err<E, R>(op: &'static str, key: &str, endpoint: &str, e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus + 'static,
{
    let status = e.raw_response().map(|r| r.status_u16());
    let code = e.code().unwrap_or("").to_string();
    let message = e.message().unwrap_or("").to_string();
    if let Some(region) = region_of_answer(
        status,
        &code,
        &message,
        e.raw_response().and_then(|r| r.header("x-amz-bucket-region")),
    ) {
        return StoreError::Client {
            op,
            key: key.to_string(),
            status: status.unwrap_or(0),
            code: WRONG_REGION.into(),
            message: if region.is_empty() {
                "the bucket is in another region".into()
            } else {
                format!("the bucket is in region {region}")
            },
        };
    }
    // An answer without S3's error document, where S3 always sends one (every request but
    // a HEAD): the endpoint is some other web server.
    if let Some(s) = status
        && code.is_empty()
        && !op.starts_with("head")
        && ((400..500).contains(&s) || s == 501)
    {
        return StoreError::Client {
            op,
            key: key.to_string(),
            status: s,
            code: NOT_S3.into(),
            message: format!("HTTP {s} without an S3 error document"),
        };
    }
    if let SdkError::DispatchFailure(df) = &e
        && let Some(why) = df.as_connector_error().and_then(|c| unreachable(c))
    {
        tracing::debug!(op, key, error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "no answer");
        return StoreError::Unreachable {
            op,
            key: key.to_string(),
            why,
            endpoint: endpoint.to_string(),
        };
    }
    match (status, &e) {
        (Some(s), SdkError::ServiceError(_)) => StoreError::from_response(op, key, s, &code, &message),
        // A successful answer the SDK cannot parse (a listing with a key XML cannot carry, a
        // server that is not S3): the same bytes come back on a retry, so it is not retried.
        // A body cut off on the way is a transport failure, retried.
        (Some(s), SdkError::ResponseError(_)) if (200..300).contains(&s) => {
            let message = aws_smithy_types::error::display::DisplayErrorContext(&e).to_string();
            if message.to_ascii_lowercase().contains("xml") {
                StoreError::Client {
                    op,
                    key: key.to_string(),
                    status: s,
                    code: "UnreadableResponse".into(),
                    message,
                }
            } else {
                StoreError::Transport {
                    op,
                    key: key.to_string(),
                    message,
                }
            }
        }
        (Some(s), SdkError::ResponseError(_)) => StoreError::from_response(op, key, s, &code, &message),
        (_, SdkError::ConstructionFailure(_)) => StoreError::Client {
            op,
            key: key.to_string(),
            status: 0,
            code: "ConstructionFailure".into(),
            message: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
        },
        _ => {
            tracing::debug!(op, key, error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "transport error");
            StoreError::Transport {
                op,
                key: key.to_string(),
                message: causes(&e),
            }
        }
    }
}

/// The Content-Type a key's extension says, if it says one (`--content-type auto`).
fn content_type_of(key: &str) -> Option<&'static str> {
    let name = key.rsplit('/').next()?;
    let ext = name.rsplit_once('.')?.1;
    if ext.is_empty() {
        return None;
    }
    mime_guess::from_ext(ext).first_raw()
}

/// How long [`AwsStore::check_credentials`] waits for the provider chain.
pub const CREDENTIALS_WAIT: Duration = Duration::from_millis(1500);

/// The code of [`StoreError::Client`] for a GET whose bytes do not match the checksum S3
/// answered with them.
pub const CHECKSUM_MISMATCH: &str = "ChecksumMismatch";

/// The code of [`StoreError::Client`] for an answer that is not S3's (see [`map_err`]).
pub const NOT_S3: &str = "NotS3";

/// The code of [`StoreError::Client`] for a bucket in another region than the client's; its
/// message ends with the bucket's region when S3 said it.
pub const WRONG_REGION: &str = "WrongRegion";

/// Status and headers of a raw HTTP response, whatever its type.
trait HasStatus {
    fn status_u16(&self) -> u16;
    fn header(&self, name: &str) -> Option<String>;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_u16(&self) -> u16 {
        self.status().as_u16()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers().get(name).map(str::to_string)
    }
}

/// The region a wrong-region answer names: S3's `x-amz-bucket-region` header (a 301
/// PermanentRedirect), or the message of an AuthorizationHeaderMalformed ("... expecting
/// 'eu-west-1'").
fn region_of_answer(status: Option<u16>, code: &str, message: &str, header: Option<String>) -> Option<String> {
    let from_message = || {
        let rest = message.split("expecting '").nth(1)?;
        Some(rest.split('\'').next()?.to_string())
    };
    match (status, code) {
        (Some(301), _) | (_, "PermanentRedirect") | (_, "IllegalLocationConstraintException") => {
            Some(header.or_else(from_message).unwrap_or_default())
        }
        (_, "AuthorizationHeaderMalformed") => from_message(),
        _ => None,
    }
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|d| SystemTime::try_from(*d).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Sets the standard headers `$h` (a [`Headers`](super::Headers)) on a PutObject,
/// CreateMultipartUpload or CopyObject request: three builder types with the same setters.
/// Not the tags: a copy keeps the source's (PUT and CreateMultipartUpload add them).
macro_rules! with_headers {
    ($req:expr, $h:expr) => {
        $req.set_content_type($h.content_type.clone())
            .set_content_encoding($h.content_encoding.clone())
            .set_cache_control($h.cache_control.clone())
            .set_content_disposition($h.content_disposition.clone())
            .set_content_language($h.content_language.clone())
            .set_storage_class($h.storage_class.as_deref().map(aws_sdk_s3::types::StorageClass::from))
    };
}

/// Percent-encodes a key for `x-amz-copy-source`, keeping `/`.
fn encode_copy_source(bucket: &str, key: &str) -> String {
    format!("{bucket}/{}", urlenc::encode(key, b"/"))
}

#[async_trait]
impl ObjectStore for AwsStore {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let req = self.client.head_object().bucket(&self.bucket).key(key);
        let r = keyed!(req, self.opts).send().await;
        let r = r.map_err(|e| self.fail("head", key, e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: r.content_length().unwrap_or(0).max(0) as u64,
            last_modified: to_system_time(r.last_modified()),
            etag: r.e_tag().map(str::to_string),
            user_meta: r
                .metadata()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            headers: super::Headers {
                content_type: r.content_type().map(str::to_string),
                content_encoding: r.content_encoding().map(str::to_string),
                cache_control: r.cache_control().map(str::to_string),
                content_disposition: r.content_disposition().map(str::to_string),
                content_language: r.content_language().map(str::to_string),
                storage_class: r.storage_class().map(|s| s.as_str().to_string()),
                // A HEAD does not tell the tags (GetObjectTagging does).
                tagging: None,
            },
        })
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>, version: Option<&str>) -> StoreResult<Bytes> {
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_match(version.map(str::to_string));
        req = keyed!(req, self.opts);
        match &range {
            Some(r) if r.start >= r.end => return Ok(Bytes::new()),
            Some(r) => req = req.range(format!("bytes={}-{}", r.start, r.end - 1)),
            // S3 answers the object's checksum to a whole-object GET only, and only when
            // asked; the SDK then checks the bytes against it (a multipart object's
            // composite checksum it cannot, and skips).
            None => req = req.checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled),
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let err = self.fail("get", key, e);
                // A range starting at or past the end: nothing to read.
                if let StoreError::Client { status: 416, .. } = err {
                    return Ok(Bytes::new());
                }
                return Err(err);
            }
        };
        // Into one buffer of the announced size: collecting the chunks and joining them
        // would hold every large read twice.
        let mut out = BytesMut::with_capacity(resp.content_length().unwrap_or(0).clamp(0, 1 << 30) as usize);
        let mut body = resp.body;
        loop {
            match body.try_next().await {
                Ok(Some(chunk)) => out.extend_from_slice(&chunk),
                Ok(None) => return Ok(out.freeze()),
                Err(e) => {
                    let message = causes(&e);
                    // The bytes are not the object S3 holds a checksum of: corrupt where they
                    // are kept, or on the way; either way not worth ten more GETs.
                    if message.to_ascii_lowercase().contains("checksum mismatch") {
                        return Err(StoreError::Client {
                            op: "get",
                            key: key.to_string(),
                            status: 200,
                            code: CHECKSUM_MISMATCH.into(),
                            message,
                        });
                    }
                    return Err(StoreError::Transport {
                        op: "get",
                        key: key.to_string(),
                        message,
                    });
                }
            }
        }
    }

    async fn put_with(
        &self,
        key: &str,
        body: Bytes,
        meta: &UserMeta,
        headers: Option<&Headers>,
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body.clone()));
        let body_for_crc = body;
        for (k, v) in meta {
            req = req.metadata(k, v);
        }
        if let Some(h) = headers {
            req = with_headers!(req, h).set_tagging(h.tagging.clone());
        }
        if let Some(t) = self.default_content_type(key, headers) {
            req = req.content_type(t);
        }
        if let Some(c) = self.default_class(headers) {
            req = req.storage_class(c);
        }
        req = encrypted!(req, self.opts);
        req = match self.opts.checksum {
            Some(c @ Checksum::Crc32c) => req.checksum_crc32_c(c.of(&body_for_crc)),
            Some(c @ Checksum::Crc64Nvme) => req.checksum_crc64_nvme(c.of(&body_for_crc)),
            None => req,
        };
        req = match cond {
            Some(WriteIf::Absent) => req.if_none_match("*"),
            Some(WriteIf::Matches(etag)) => req.if_match(etag),
            None => req,
        };
        let out = if self.sign_payloads {
            req.send().await
        } else {
            req.customize().disable_payload_signing().send().await
        };
        let out = out.map_err(|e| self.fail("put", key, e))?;
        Ok(out.e_tag().map(str::to_string))
    }

    async fn delete(&self, key: &str, version: Option<&str>) -> StoreResult<()> {
        let r = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_match(version.map(str::to_string))
            .send()
            .await;
        match r.map_err(|e| self.fail("delete", key, e)) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_many(&self, targets: &[DeleteTarget]) -> StoreResult<Vec<crate::store::DeleteFailure>> {
        let first = targets.first().map(|t| t.key.clone()).unwrap_or_default();
        let mut ids = Vec::with_capacity(targets.len());
        for t in targets {
            let k = &t.key;
            let id = ObjectIdentifier::builder()
                .key(k)
                .set_e_tag(t.etag.clone())
                .build()
                .map_err(|e| StoreError::Client {
                    op: "delete_objects",
                    key: k.clone(),
                    status: 0,
                    code: "Build".into(),
                    message: e.to_string(),
                })?;
            ids.push(id);
        }
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| StoreError::Client {
                op: "delete_objects",
                key: first.clone(),
                status: 0,
                code: "Build".into(),
                message: e.to_string(),
            })?;
        let r = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await;
        let r = r.map_err(|e| self.fail("delete_objects", &first, e))?;
        Ok(r.errors()
            .iter()
            .map(|e| {
                crate::store::DeleteFailure::new(
                    e.key().unwrap_or(""),
                    e.code().unwrap_or(""),
                    e.message().unwrap_or(""),
                )
            })
            .collect())
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        let r = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .set_continuation_token(token.map(str::to_string))
            .set_max_keys(max_keys)
            // Keys come URL-encoded: a key with a character XML 1.0 cannot carry (a control
            // character) would otherwise make the whole page unreadable.
            .encoding_type(aws_sdk_s3::types::EncodingType::Url)
            .send()
            .await
            .map_err(|e| self.fail("list", prefix, e))?;
        let url = r.encoding_type().is_some();
        let decode = |s: &str| if url { urlenc::decode(s) } else { s.to_string() };
        Ok(ListPage {
            objects: r
                .contents()
                .iter()
                .map(|o| ObjectMeta {
                    key: decode(o.key().unwrap_or("")),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: to_system_time(o.last_modified()),
                    etag: o.e_tag().map(str::to_string),
                    user_meta: UserMeta::new(),
                    // A listing names the storage class (a rename's copy must ask for it).
                    headers: Headers {
                        storage_class: o
                            .storage_class()
                            .map(|c| c.as_str().to_string())
                            .filter(|c| c != "STANDARD"),
                        ..Default::default()
                    },
                })
                .collect(),
            common_prefixes: r
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(decode))
                .collect(),
            next_token: if r.is_truncated().unwrap_or(false) {
                r.next_continuation_token().map(str::to_string)
            } else {
                None
            },
        })
    }

    async fn copy(&self, c: &CopySpec<'_>) -> StoreResult<Option<String>> {
        let (src, dst) = (c.src, c.dst);
        let mut req = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(dst)
            .copy_source(encode_copy_source(&self.bucket, src))
            .set_copy_source_if_match(c.src_etag.map(str::to_string));
        req = match c.dst_if {
            Some(WriteIf::Absent) => req.if_none_match("*"),
            Some(WriteIf::Matches(etag)) => req.if_match(etag),
            None => req,
        };
        if let Some(meta) = c.meta {
            req = req.metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace);
            for (k, v) in meta {
                req = req.metadata(k, v);
            }
            if let Some(h) = c.headers {
                req = with_headers!(req, h);
            }
        } else if let Some(class) = c.headers.and_then(|h| h.storage_class.as_deref()) {
            // A copy keeps the metadata and headers, but not the storage class: S3 makes it
            // STANDARD unless told.
            req = req.storage_class(aws_sdk_s3::types::StorageClass::from(class));
        }
        // No checksum algorithm: S3 gives a copy its source's (moto 5.2 answers a wrong
        // checksum for a copy that names one).
        req = source_keyed!(encrypted!(req, self.opts), self.opts);
        let r = req.send().await.map_err(|e| self.fail("copy", src, e))?;
        Ok(r.copy_object_result().and_then(|c| c.e_tag()).map(str::to_string))
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part: i32,
        src: &str,
        range: Range<u64>,
        src_etag: Option<&str>,
    ) -> StoreResult<String> {
        let req = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part)
            .copy_source(encode_copy_source(&self.bucket, src))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end.saturating_sub(1)))
            .set_copy_source_if_match(src_etag.map(str::to_string));
        let r = source_keyed!(keyed!(req, self.opts), self.opts)
            .send()
            .await
            .map_err(|e| self.fail("upload_part_copy", src, e))?;
        let result = r.copy_part_result();
        let crc = result.and_then(|c| match self.opts.checksum? {
            Checksum::Crc32c => c.checksum_crc32_c(),
            Checksum::Crc64Nvme => c.checksum_crc64_nvme(),
        });
        Ok(part_receipt(result.and_then(|c| c.e_tag()).unwrap_or(""), crc))
    }

    async fn create_multipart_with(
        &self,
        key: &str,
        meta: &UserMeta,
        headers: Option<&Headers>,
    ) -> StoreResult<String> {
        let mut req = self.client.create_multipart_upload().bucket(&self.bucket).key(key);
        for (k, v) in meta {
            req = req.metadata(k, v);
        }
        if let Some(h) = headers {
            req = with_headers!(req, h).set_tagging(h.tagging.clone());
        }
        if let Some(t) = self.default_content_type(key, headers) {
            req = req.content_type(t);
        }
        if let Some(c) = self.default_class(headers) {
            req = req.storage_class(c);
        }
        req = encrypted!(req, self.opts);
        if let Some(c) = self.opts.checksum {
            req = req.checksum_algorithm(c.algorithm()).checksum_type(c.multipart_type());
        }
        let r = req.send().await.map_err(|e| self.fail("create_multipart", key, e))?;
        r.upload_id().map(str::to_string).ok_or_else(|| StoreError::Server {
            op: "create_multipart",
            key: key.to_string(),
            status: 200,
            code: "NoUploadId".into(),
            message: "response had no upload id".into(),
        })
    }

    async fn upload_part(&self, key: &str, upload_id: &str, part: i32, body: Bytes) -> StoreResult<String> {
        let req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part)
            .body(ByteStream::from(body.clone()));
        let req = keyed!(req, self.opts);
        let crc = self.opts.checksum.map(|c| c.of(&body));
        let req = match self.opts.checksum {
            Some(Checksum::Crc32c) => req.set_checksum_crc32_c(crc.clone()),
            Some(Checksum::Crc64Nvme) => req.set_checksum_crc64_nvme(crc.clone()),
            None => req,
        };
        let r = if self.sign_payloads {
            req.send().await
        } else {
            req.customize().disable_payload_signing().send().await
        };
        let r = r.map_err(|e| self.fail("upload_part", key, e))?;
        Ok(part_receipt(r.e_tag().unwrap_or(""), crc.as_deref()))
    }

    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
        cond: Option<&WriteIf>,
    ) -> StoreResult<Option<String>> {
        let parts = parts
            .iter()
            .map(|(n, receipt)| {
                let (etag, crc) = read_receipt(receipt);
                let part = CompletedPart::builder().part_number(*n).e_tag(etag);
                match (self.opts.checksum, crc) {
                    (Some(Checksum::Crc32c), Some(c)) => part.checksum_crc32_c(c),
                    (Some(Checksum::Crc64Nvme), Some(c)) => part.checksum_crc64_nvme(c),
                    _ => part,
                }
                .build()
            })
            .collect::<Vec<_>>();
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        req = keyed!(req, self.opts);
        if let Some(c) = self.opts.checksum {
            req = req.checksum_type(c.multipart_type());
        }
        let req = match cond {
            Some(WriteIf::Absent) => req.if_none_match("*"),
            Some(WriteIf::Matches(etag)) => req.if_match(etag),
            None => req,
        };
        let r = req.send().await.map_err(|e| self.fail("complete_multipart", key, e))?;
        Ok(r.e_tag().map(str::to_string))
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let r = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        match r.map_err(|e| self.fail("abort_multipart", key, e)) {
            Ok(_) => Ok(()),
            // Already completed or aborted: nothing left to clean up.
            Err(StoreError::Client { code, .. }) if code == "NoSuchUpload" => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn get_tagging(&self, key: &str) -> StoreResult<Option<String>> {
        let r = self
            .client
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.fail("get_tagging", key, e))?;
        let tags = r.tag_set();
        Ok((!tags.is_empty()).then(|| urlenc::encode_tags(tags.iter().map(|t| (t.key(), t.value())))))
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<UploadInfo>> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let r = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.fail("list_uploads", prefix, e))?;
            for u in r.uploads() {
                out.push(UploadInfo {
                    key: u.key().unwrap_or("").to_string(),
                    upload_id: u.upload_id().unwrap_or("").to_string(),
                    initiated: u.initiated().and_then(|d| SystemTime::try_from(*d).ok()),
                });
            }
            if !r.is_truncated().unwrap_or(false) {
                return Ok(out);
            }
            key_marker = r.next_key_marker().map(str::to_string);
            id_marker = r.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_name_s_extension_says_its_content_type() {
        use super::content_type_of as ct;
        assert_eq!(ct("root/3/site/index.html"), Some("text/html"));
        assert_eq!(ct("a.b.JSON"), Some("application/json"));
        assert_eq!(ct("photo.jpg"), Some("image/jpeg"));
        assert_eq!(ct("README"), None);
        assert_eq!(ct("trailing."), None);
        assert_eq!(ct("x.unknownext"), None);
    }

    #[test]
    fn a_wrong_region_answer_names_the_bucket_s_region() {
        use super::region_of_answer as r;
        assert_eq!(r(Some(301), "", "", Some("eu-west-1".into())), Some("eu-west-1".into()));
        assert_eq!(r(Some(301), "PermanentRedirect", "", None), Some(String::new()));
        let malformed =
            "The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'ap-south-1'";
        assert_eq!(
            r(Some(400), "AuthorizationHeaderMalformed", malformed, None),
            Some("ap-south-1".into())
        );
        assert_eq!(r(Some(400), "AuthorizationHeaderMalformed", "other", None), None);
        assert_eq!(r(Some(404), "NoSuchKey", "", None), None);
    }

    #[test]
    fn payloads_are_signed_only_where_nothing_else_protects_them() {
        use super::payload_signing_needed as signed;
        assert!(!signed(None), "AWS: https");
        assert!(!signed(Some("https://minio.example.com:9000")));
        assert!(!signed(Some("http://127.0.0.1:9000")));
        assert!(!signed(Some("http://localhost:9000/")));
        assert!(!signed(Some("http://[::1]:9000")));
        assert!(signed(Some("http://10.0.0.5:9000")));
        assert!(signed(Some("http://minio.lan")));
        assert!(signed(Some("minio.lan:9000")));
    }

    use super::*;

    #[test]
    fn listed_keys_are_url_decoded() {
        assert_eq!(
            urlenc::decode("2017/a%01b+c%2Bd%25%C3%A9.txt"),
            "2017/a\u{1}b c+d%é.txt"
        );
        assert_eq!(urlenc::decode("50%"), "50%", "a cut escape stays as it is");
        assert_eq!(urlenc::decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn copy_source_is_percent_encoded() {
        assert_eq!(encode_copy_source("b", "a/b c+d%é.txt"), "b/a/b%20c%2Bd%25%C3%A9.txt");
    }
}
