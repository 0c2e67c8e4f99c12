//! The layout descriptor at a bucket's root (`.prefixfs.json`, docs/LAYOUT.md): read,
//! checked against what is asked, written by `init`.

use crate::layout::{Descriptor, Layout};
use crate::store::{ObjectStore, UserMeta};
use bytes::Bytes;

/// Why the layout at a root cannot be used as asked: each case is one a caller may want to
/// handle (`init` writes a missing descriptor; the bucket tools probe for one).
#[derive(Debug, thiserror::Error)]
pub enum LayoutCheck {
    #[error("no prefixfs layout at {key}: run `prefixfs init` first, or mount with --init to create one")]
    Missing { key: String },
    #[error(
        "--prefix-count {requested} disagrees with the bucket's layout ({found} prefixes, in {key}); refusing to mount"
    )]
    Disagrees { key: String, requested: u32, found: u32 },
    #[error("layout descriptor {key} is unreadable: {message}")]
    Unreadable { key: String, message: String },
    #[error("layout descriptor {key} has format {format} / hash {hash:?}, which this prefixfs does not know")]
    Unknown { key: String, format: u32, hash: String },
    #[error("{}", crate::bucket::explain(.source).unwrap_or_else(|| format!("layout descriptor {key}: {source}")))]
    Store {
        key: String,
        #[source]
        source: crate::store::StoreError,
    },
    #[error(transparent)]
    Invalid(#[from] crate::layout::LayoutError),
}

impl From<LayoutCheck> for String {
    fn from(e: LayoutCheck) -> String {
        e.to_string()
    }
}

/// Reads the descriptor and checks it against the requested prefix count; writes it when
/// `init` is set and there is none.
pub async fn resolve_layout(
    store: &dyn ObjectStore,
    root: &str,
    requested: Option<u32>,
    init: bool,
) -> Result<Layout, LayoutCheck> {
    let key = Layout::new(root, 1)?.descriptor_key();
    match read_descriptor(store, root).await? {
        Some(found) => match requested {
            Some(requested) if requested != found => Err(LayoutCheck::Disagrees { key, requested, found }),
            _ => Ok(Layout::new(root, found)?),
        },
        None if !init => Err(LayoutCheck::Missing { key }),
        None => {
            let layout = Layout::new(root, requested.unwrap_or(crate::layout::DEFAULT_PREFIX_COUNT))?;
            write_descriptor(store, &layout).await?;
            Ok(layout)
        }
    }
}

/// The prefix count the layout descriptor at `root` records; None when there is none.
pub async fn read_descriptor(store: &dyn ObjectStore, root: &str) -> Result<Option<u32>, LayoutCheck> {
    let key = Layout::new(root, 1)?.descriptor_key();
    match store.get(&key, None, None).await {
        Ok(body) => {
            let d: Descriptor = serde_json::from_slice(&body).map_err(|e| LayoutCheck::Unreadable {
                key: key.clone(),
                message: e.to_string(),
            })?;
            if d.format != crate::layout::FORMAT_VERSION || d.hash != crate::layout::HASH_NAME {
                return Err(LayoutCheck::Unknown {
                    key,
                    format: d.format,
                    hash: d.hash,
                });
            }
            Ok(Some(d.prefix_count))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(source) => Err(LayoutCheck::Store { key, source }),
    }
}

pub async fn write_descriptor(store: &dyn ObjectStore, layout: &Layout) -> Result<(), LayoutCheck> {
    let key = layout.descriptor_key();
    let body = serde_json::to_vec_pretty(&layout.descriptor()).map_err(|e| LayoutCheck::Unreadable {
        key: key.clone(),
        message: e.to_string(),
    })?;
    store
        .put(&key, Bytes::from(body), &UserMeta::new())
        .await
        .map_err(|source| LayoutCheck::Store { key, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_layout_check_says_what_is_wrong() {
        let mem = crate::store::memory::MemoryStore::new();
        assert!(matches!(
            resolve_layout(&mem, "logs", None, false).await,
            Err(LayoutCheck::Missing { .. })
        ));
        let made = resolve_layout(&mem, "logs", Some(8), true).await.unwrap();
        assert_eq!(made.prefix_count(), 8);
        assert_eq!(
            resolve_layout(&mem, "logs", None, false).await.unwrap().prefix_count(),
            8
        );
        assert!(matches!(
            resolve_layout(&mem, "logs", Some(16), false).await,
            Err(LayoutCheck::Disagrees {
                requested: 16,
                found: 8,
                ..
            })
        ));
        mem.put(
            &made.descriptor_key(),
            Bytes::from_static(b"{not json"),
            &UserMeta::new(),
        )
        .await
        .unwrap();
        assert!(matches!(
            read_descriptor(&mem, "logs").await,
            Err(LayoutCheck::Unreadable { .. })
        ));
        mem.fail_next(1, |k| crate::store::StoreError::Throttled {
            op: "get",
            key: k.to_string(),
        });
        assert!(matches!(
            read_descriptor(&mem, "logs").await,
            Err(LayoutCheck::Store { .. })
        ));
    }
}
