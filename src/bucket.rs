//! Opening a bucket, one way for the mount and every bucket tool: connect (or start the
//! embedded store) and check the credentials ([`connect`]); read, check or write the
//! layout's descriptor ([`descriptor`]); build the store stack for that layout
//! ([`Connected::stack`]); and for the tools, all of it from an `s3://BUCKET/ROOT` target
//! ([`open`]). Failures a person has to fix are said in one line ([`explain`]).

mod descriptor;
mod explain;

pub use descriptor::{LayoutCheck, read_descriptor, resolve_layout, write_descriptor};
pub use explain::explain;

use crate::layout::Layout;
use crate::server::{self, RunningServer, ServerConfig};
use crate::store::aws::{AwsConfig, AwsStore};
use crate::store::pacing::PacingConfig;
use crate::store::retry::{RetryConfig, RetryingStore};
use crate::store::stats::RequestStats;
use crate::store::{Deletes, ObjectStore, StackConfig, one_prefix};
use std::path::PathBuf;
use std::sync::Arc;

/// The bucket name the embedded store serves.
pub const EMBEDDED_BUCKET: &str = "prefixfs";

/// Why a bucket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("starting the embedded S3 store in {}: {source}", .dir.display())]
    EmbeddedStore { dir: PathBuf, source: std::io::Error },
    /// The bucket cannot be used as set up (no credentials...): one line, from [`explain`].
    #[error("{0}")]
    Unusable(String),
    /// A connection option is wrong.
    #[error(transparent)]
    Option(#[from] crate::invalid::Invalid),
    #[error(transparent)]
    Layout(#[from] LayoutCheck),
}

impl From<OpenError> for String {
    fn from(e: OpenError) -> String {
        e.to_string()
    }
}

/// The default data directory of the embedded store.
pub fn default_data_dir() -> PathBuf {
    crate::private::default_dir(crate::private::Place::Data)
}

pub struct Connected {
    /// Retries only: for set-up requests made before the layout is known.
    pub store: Arc<RetryingStore<AwsStore>>,
    pub stats: Arc<RequestStats>,
    pub server: Option<RunningServer>,
    /// Where the credentials came from (the provider, the access key masked); None when
    /// requests go unsigned.
    pub credentials: Option<String>,
    aws: AwsStore,
    retry: RetryConfig,
}

impl Connected {
    /// The SDK client under the stack (for `prefixfs doctor`).
    pub fn aws(&self) -> &AwsStore {
        &self.aws
    }

    /// The store for `layout` ([`crate::store::stack`]): paced, retried and counted by the
    /// layout's prefixes.
    pub fn stack(&self, layout: &Layout, pacing: PacingConfig, deletes: Deletes) -> Arc<dyn ObjectStore> {
        let l = layout.clone();
        let cfg = StackConfig {
            prefix: Arc::new(move |k: &str| l.prefix_label(k)),
            pacing,
            retry: self.retry.clone(),
            deletes,
        };
        crate::store::stack(self.aws.clone(), &self.stats, cfg)
    }
}

/// Connects to the bucket, or starts the embedded server and connects to it.
pub async fn connect(
    bucket: Option<&str>,
    aws: AwsConfig,
    retry: RetryConfig,
    data_dir: Option<PathBuf>,
) -> Result<Connected, OpenError> {
    let stats = Arc::new(RequestStats::default());
    let (cfg, server) = match bucket {
        Some(_) => (aws, None),
        None => {
            let dir = data_dir.unwrap_or_else(default_data_dir);
            let mut sc = ServerConfig::local(dir.clone());
            sc.buckets.push(EMBEDDED_BUCKET.into());
            let srv = server::start(sc).await.map_err(|source| OpenError::EmbeddedStore {
                dir: dir.clone(),
                source,
            })?;
            tracing::info!(endpoint = %srv.endpoint(), data = %dir.display(), "no bucket given: using the embedded S3 store");
            let cfg = AwsConfig {
                bucket: EMBEDDED_BUCKET.into(),
                endpoint_url: Some(srv.endpoint()),
                region: Some("us-east-1".into()),
                force_path_style: true,
                profile: None,
                static_credentials: Some((srv.credentials.access_key.clone(), srv.credentials.secret_key.clone())),
                content_type_auto: aws.content_type_auto,
                storage_class: aws.storage_class.clone(),
                options: aws.options.clone(),
                no_sign_request: false,
            };
            (cfg, Some(srv))
        }
    };
    let aws = AwsStore::connect(&cfg).await;
    let credentials = aws
        .check_credentials()
        .await
        .map_err(|e| OpenError::Unusable(explain(&e).unwrap_or_else(|| e.to_string())))?;
    let store = Arc::new(RetryingStore::new(
        aws.clone(),
        retry.clone(),
        stats.clone(),
        one_prefix(),
    ));
    Ok(Connected {
        store,
        stats,
        server,
        credentials,
        aws,
        retry,
    })
}

/// Connects a bucket tool to `bucket` with its connection flags.
pub async fn connect_to(bucket: &str, conn: &crate::cli::ConnArgs) -> Result<Connected, OpenError> {
    let retry = conn.retry_config().map_err(OpenError::Option)?;
    connect(Some(bucket), conn.aws_config(bucket), retry, None).await
}

/// A bucket tool's layout, opened: connected, the layout at the root its descriptor
/// records, and the store stack for it (deletes sent at once).
pub struct Opened {
    pub connected: Connected,
    pub layout: Layout,
    pub store: Arc<dyn ObjectStore>,
}

/// Opens the layout at `root` in `bucket` (its descriptor must be there).
pub async fn open(bucket: &str, root: &str, conn: &crate::cli::ConnArgs) -> Result<Opened, OpenError> {
    let connected = connect_to(bucket, conn).await?;
    open_layout(connected, root).await
}

/// Opens the layout at `root` over a connection already made.
pub async fn open_layout(connected: Connected, root: &str) -> Result<Opened, OpenError> {
    let layout = resolve_layout(connected.store.as_ref(), root, None, false).await?;
    let store = connected.stack(&layout, Default::default(), Deletes::Direct);
    Ok(Opened {
        connected,
        layout,
        store,
    })
}
