//! Delta stores: where deltas and the head are published. One interface, two backends:
//! a local directory (`file:///dir`) and S3 or any S3-compatible server (`s3://bucket/prefix`).
//!
//! Layout under the store's root or prefix:
//! ```text
//! head                                   the signed head (replaced by compare-and-swap)
//! deltas/000000000042-<sha256>.delta     immutable deltas, created once, never overwritten
//! ```
//! A delta's name carries its seq and digest, so two publishers racing for the same seq
//! write different objects; the head's compare-and-swap decides which one is in the chain.
//!
//! Every read has a size cap that holds even without a Content-Length; every remote call has
//! a timeout and bounded retries with backoff (the SDK's standard retry strategy).

mod file;
mod s3;

use std::time::Duration;

pub use file::FileStore;
pub use s3::S3Store;

/// A fetched object and the tag to replace it conditionally.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The object's bytes (at most the cap).
    pub bytes: Vec<u8>,
    /// Opaque version tag (S3 ETag, or a digest for a directory).
    pub etag: String,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The object is larger than the cap allowed for it.
    #[error("{name} is larger than the {cap}-byte cap")]
    Oversize {
        /// Object name.
        name: String,
        /// The cap.
        cap: u64,
    },
    /// The store could not be reached or answered with an error; worth retrying later.
    #[error("{name}: {message}")]
    Unavailable {
        /// Object name.
        name: String,
        /// What went wrong.
        message: String,
    },
}

impl FetchError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, FetchError::Oversize { .. })
    }
}

/// Why a conditional write failed.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The condition did not hold: another writer got there first.
    #[error("{name} was changed by another writer")]
    Conflict {
        /// Object name.
        name: String,
    },
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The condition for replacing the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadCondition {
    /// Only if there is no head yet.
    Absent,
    /// Only if the head still has this tag.
    Matches(String),
}

/// Timeouts and retries for remote calls.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// Connecting to the store.
    pub connect_timeout: Duration,
    /// One whole operation, retries included.
    pub operation_timeout: Duration,
    /// One attempt of an operation, the reading of the body included: a store that stops
    /// answering (or trickles) fails the attempt, which is retried.
    pub attempt_timeout: Duration,
    /// Attempts per operation (1 = no retry).
    pub max_attempts: u32,
    /// S3 endpoint override (`AWS_ENDPOINT_URL` is used when this is unset).
    pub endpoint_url: Option<String>,
    /// Path-style addressing; default true when an endpoint override is set.
    pub force_path_style: Option<bool>,
    /// Access key id and secret to use instead of the default provider chain (for
    /// S3-compatible servers with fixed keys); `None` uses the chain.
    pub static_credentials: Option<(String, String)>,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            connect_timeout: Duration::from_secs(3),
            operation_timeout: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(15),
            max_attempts: 4,
            endpoint_url: None,
            force_path_style: None,
            static_credentials: None,
        }
    }
}

/// A delta store.
#[derive(Debug, Clone)]
pub enum DeltaStore {
    /// A local directory.
    File(FileStore),
    /// S3 or an S3-compatible server.
    S3(S3Store),
}

/// The name of a delta object.
pub fn delta_name(seq: u64, digest: &str) -> String {
    format!("deltas/{seq:012}-{digest}.delta")
}

/// The name of the head object.
pub const HEAD_NAME: &str = "head";

impl DeltaStore {
    /// Opens a store from its URL: `file:///dir` or `s3://bucket/prefix`.
    pub async fn open(url: &str, settings: &RemoteSettings) -> anyhow::Result<Self> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                anyhow::bail!(
                    "store URL {url:?}: a file store needs an absolute path, as in file:///var/lib/deltas"
                );
            }
            Ok(DeltaStore::File(FileStore::open(
                std::path::Path::new(path),
                settings.attempt_timeout,
            )?))
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                anyhow::bail!("store URL {url:?} names no bucket: use s3://bucket/prefix");
            }
            Ok(DeltaStore::S3(
                S3Store::open(bucket, prefix, settings).await?,
            ))
        } else {
            anyhow::bail!(
                "store URL {url:?} is not supported: use file:///dir or s3://bucket/prefix"
            )
        }
    }

    /// The store's URL, for messages.
    pub fn describe(&self) -> String {
        match self {
            DeltaStore::File(store) => store.describe(),
            DeltaStore::S3(store) => store.describe(),
        }
    }

    /// Reads the head, if there is one.
    pub async fn get_head(&self, cap: u64) -> Result<Option<Fetched>, FetchError> {
        match self {
            DeltaStore::File(store) => store.get(HEAD_NAME, cap).await,
            DeltaStore::S3(store) => store.get(HEAD_NAME, cap).await,
        }
    }

    /// Replaces the head if `condition` holds.
    pub async fn put_head(&self, bytes: &[u8], condition: HeadCondition) -> Result<(), PutError> {
        match self {
            DeltaStore::File(store) => store.put_head(bytes, condition).await,
            DeltaStore::S3(store) => store.put_head(bytes, condition).await,
        }
    }

    /// Reads a delta, if it exists.
    pub async fn get_delta(
        &self,
        seq: u64,
        digest: &str,
        cap: u64,
    ) -> Result<Option<Vec<u8>>, FetchError> {
        let name = delta_name(seq, digest);
        let fetched = match self {
            DeltaStore::File(store) => store.get(&name, cap).await?,
            DeltaStore::S3(store) => store.get(&name, cap).await?,
        };
        Ok(fetched.map(|f| f.bytes))
    }

    /// Creates a delta object; fails with [`PutError::Conflict`] if it exists.
    pub async fn put_delta(&self, seq: u64, digest: &str, bytes: &[u8]) -> Result<(), PutError> {
        let name = delta_name(seq, digest);
        match self {
            DeltaStore::File(store) => store.create(&name, bytes).await,
            DeltaStore::S3(store) => store.create(&name, bytes).await,
        }
    }

    /// The digests of every delta object stored for `seq` (normally one; more after an
    /// interrupted race).
    pub async fn list_deltas(&self, seq: u64) -> anyhow::Result<Vec<String>> {
        let prefix = format!("deltas/{seq:012}-");
        let names = match self {
            DeltaStore::File(store) => store.list(&prefix).await?,
            DeltaStore::S3(store) => store.list(&prefix).await?,
        };
        Ok(names
            .into_iter()
            .filter_map(|name| {
                name.strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(".delta"))
                    .map(str::to_owned)
            })
            .collect())
    }

    /// Removes a delta object that lost a publishing race (best effort; it is unreferenced).
    pub async fn remove_unreferenced_delta(&self, seq: u64, digest: &str) -> anyhow::Result<()> {
        let name = delta_name(seq, digest);
        match self {
            DeltaStore::File(store) => store.remove(&name).await,
            DeltaStore::S3(store) => store.remove(&name).await,
        }
    }
}
