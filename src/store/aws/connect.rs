//! Making the client: the credentials chain (instance metadata asked once, briefly), the
//! region, the endpoint, payload signing, the bucket options' interceptor; and asking the
//! chain for credentials once, before the first request.

use super::{AwsConfig, AwsStore, Headers, StoreError, StoreResult, Unreachable, options};
use aws_sdk_s3::Client;
use std::time::Duration;

/// Bodies need the signature's SHA-256 only where nothing else protects them in transit:
/// TLS does on `https` endpoints (AWS's default), and a loopback connection has no wire. Plain
/// HTTP to another host (a LAN MinIO) keeps signing them.
pub(super) fn payload_signing_needed(endpoint: Option<&str>) -> bool {
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
    pub(super) fn default_class(&self, headers: Option<&Headers>) -> Option<aws_sdk_s3::types::StorageClass> {
        if headers.is_some() {
            return None;
        }
        self.storage_class.as_deref().map(aws_sdk_s3::types::StorageClass::from)
    }

    /// The Content-Type of a new object at `key` (see [`AwsStore::default_class`]).
    pub(super) fn default_content_type(&self, key: &str, headers: Option<&Headers>) -> Option<&'static str> {
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

/// The Content-Type a key's extension says, if it says one (`--content-type auto`).
pub(super) fn content_type_of(key: &str) -> Option<&'static str> {
    let name = key.rsplit('/').next()?;
    let ext = name.rsplit_once('.')?.1;
    if ext.is_empty() {
        return None;
    }
    mime_guess::from_ext(ext).first_raw()
}

/// How long [`AwsStore::check_credentials`] waits for the provider chain.
pub const CREDENTIALS_WAIT: Duration = Duration::from_millis(1500);
