//! Delta stores: where the TUF repository of deltas is published (see `crate::tuf` for
//! its layout). One interface, two backends: a local directory (`file:///dir`) and S3 or any
//! S3-compatible server (`s3://bucket/prefix`). Objects are read whole, created only if
//! absent, or replaced only if unchanged since they were read (compare-and-swap).
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

/// The condition for replacing an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Only if there is no such object yet.
    Absent,
    /// Only if the object still has this tag (the [`Fetched::etag`] it was read with).
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

    /// Reads an object whole (at most `cap` bytes), if it exists.
    pub async fn get(&self, name: &str, cap: u64) -> Result<Option<Fetched>, FetchError> {
        match self {
            DeltaStore::File(store) => store.get(name, cap).await,
            DeltaStore::S3(store) => store.get(name, cap).await,
        }
    }

    /// Reads `len` bytes of an object from `offset` (fewer at its end), if it exists: how
    /// a large target is downloaded in pieces that survive a restart.
    pub async fn get_range(
        &self,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Fetched>, FetchError> {
        match self {
            DeltaStore::File(store) => store.get_range(name, offset, len).await,
            DeltaStore::S3(store) => store.get_range(name, offset, len).await,
        }
    }

    /// Creates an object; fails with [`PutError::Conflict`] if it exists.
    pub async fn create(&self, name: &str, bytes: &[u8]) -> Result<(), PutError> {
        match self {
            DeltaStore::File(store) => store.create(name, bytes).await,
            DeltaStore::S3(store) => store.create(name, bytes).await,
        }
    }

    /// Creates or replaces an object if `condition` holds; fails with
    /// [`PutError::Conflict`] otherwise.
    pub async fn replace(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition,
    ) -> Result<(), PutError> {
        match self {
            DeltaStore::File(store) => store.replace(name, bytes, condition).await,
            DeltaStore::S3(store) => store.replace(name, bytes, condition).await,
        }
    }

    /// The names of the objects under `prefix` (a folder such as `metadata/`), sorted.
    pub async fn list(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        match self {
            DeltaStore::File(store) => store.list(prefix).await,
            DeltaStore::S3(store) => store.list(prefix).await,
        }
    }

    /// Removes an object (only `repo gc` does, and only what no live metadata names).
    pub async fn remove(&self, name: &str) -> anyhow::Result<()> {
        match self {
            DeltaStore::File(store) => store.remove(name).await,
            DeltaStore::S3(store) => store.remove(name).await,
        }
    }
}
