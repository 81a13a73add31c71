//! How `tough` reads the delta store: a [`tough::Transport`] over [`DeltaStore`] for URLs
//! `tufstore:///metadata/...` and `tufstore:///targets/...`.
//!
//! tough gives `fetch` no size hint and caps the stream itself; since the stores read whole
//! objects, every read here has its own cap (snapshot metadata, other metadata and targets
//! separately), so endless data cannot exhaust memory before tough's check runs. The
//! snapshot's cap is also the only one that holds for it: tough reads a snapshot up to the
//! length the timestamp states, not up to its own `max_snapshot_size`.
//!
//! tough ends its root update at the first error fetching `N+1.root.json`, whatever the
//! error, and then fails later with a misleading signature error. The transport remembers a
//! root fetch that failed for any reason but absence ([`StoreTransport::root_failure`]), so
//! the caller reports the store as unreachable instead.
//!
//! tough fetches the snapshot and targets metadata the timestamp names on every load, even
//! when they are the versions it already trusts; on a poll with nothing new that is most of
//! what is read (the targets file grows with the chain). Given the datastore directory, the
//! transport keeps the bytes of the snapshot and targets files it read there
//! (`fetched.snapshot.json`, `fetched.targets.json`: tough's own copies are re-serialised,
//! so their hashes differ), and answers a request for `N.snapshot.json` or `N.targets.json`
//! with the kept bytes when they are that version. tough verifies them as it would the
//! store's, and the datastore is kept only after a sync succeeds, so a poll with nothing new
//! reads only the timestamp and probes for the next root.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tough::{Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

use crate::delta_store::DeltaStore;

/// The URL scheme the transport answers.
pub const SCHEME: &str = "tufstore";

/// The metadata base URL given to tough.
pub fn metadata_url() -> Url {
    Url::parse("tufstore:///metadata/").expect("a valid URL")
}

/// The targets base URL given to tough.
pub fn targets_url() -> Url {
    Url::parse("tufstore:///targets/").expect("a valid URL")
}

/// A transport over a delta store.
#[derive(Debug, Clone)]
pub struct StoreTransport {
    /// Where the bytes come from.
    store: Arc<DeltaStore>,
    /// The largest snapshot metadata file read.
    snapshot_cap: u64,
    /// The largest other metadata file read (root, timestamp, targets).
    metadata_cap: u64,
    /// The largest target read.
    targets_cap: u64,
    /// The first failure (other than absence) fetching a root version.
    root_failure: Arc<Mutex<Option<String>>>,
    /// The datastore of trusted metadata, whose snapshot and targets are reused when the
    /// timestamp names the same versions.
    trusted: Option<PathBuf>,
}

impl StoreTransport {
    /// A transport reading `store` with the given caps: snapshot metadata, other metadata,
    /// targets.
    pub fn new(
        store: Arc<DeltaStore>,
        snapshot_cap: u64,
        metadata_cap: u64,
        targets_cap: u64,
    ) -> Self {
        StoreTransport {
            store,
            snapshot_cap,
            metadata_cap,
            targets_cap,
            root_failure: Arc::default(),
            trusted: None,
        }
    }

    /// Answers requests for the snapshot and targets versions already trusted in
    /// `datastore` from there.
    pub fn reusing(mut self, datastore: PathBuf) -> Self {
        self.trusted = Some(datastore);
        self
    }

    /// Where the bytes of `name` (`metadata/N.snapshot.json` or `metadata/N.targets.json`)
    /// are kept, and its version N.
    fn kept_path(&self, name: &str) -> Option<(PathBuf, u64)> {
        let file = name.strip_prefix("metadata/")?;
        let (version, role) = file.split_once('.')?;
        let version: u64 = version.parse().ok()?;
        if role != "snapshot.json" && role != "targets.json" {
            return None;
        }
        Some((
            self.trusted.as_ref()?.join(format!("fetched.{role}")),
            version,
        ))
    }

    /// The kept bytes of `name` if they are the version it names.
    fn trusted_copy(&self, name: &str) -> Option<Vec<u8>> {
        #[derive(serde::Deserialize)]
        struct Versioned {
            signed: Version,
        }
        #[derive(serde::Deserialize)]
        struct Version {
            version: u64,
        }
        let (path, version) = self.kept_path(name)?;
        let bytes = std::fs::read(path).ok()?;
        let trusted: Versioned = serde_json::from_slice(&bytes).ok()?;
        (trusted.signed.version == version).then_some(bytes)
    }

    /// Why a root version could not be read, if one could not (absence is not a failure:
    /// it ends the root chain).
    pub fn root_failure(&self) -> Option<String> {
        self.root_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait]
impl Transport for StoreTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        if url.scheme() != SCHEME {
            return Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            ));
        }
        let name = url.path().trim_start_matches('/').to_owned();
        let cap = if name.starts_with("targets/") {
            self.targets_cap
        } else if name.ends_with(".snapshot.json") {
            self.snapshot_cap
        } else {
            self.metadata_cap
        };
        let copy = {
            let (this, name) = (self.clone(), name.clone());
            tokio::task::spawn_blocking(move || this.trusted_copy(&name))
                .await
                .ok()
                .flatten()
        };
        if let Some(bytes) = copy {
            metrics::counter!("deltacache_metadata_reused_total").increment(1);
            let item: Result<Bytes, TransportError> = Ok(Bytes::from(bytes));
            return Ok(Box::pin(futures::stream::iter(std::iter::once(item))));
        }
        match self.store.get(&name, cap).await {
            Ok(Some(fetched)) => {
                if let Some((path, _)) = self.kept_path(&name) {
                    let bytes = fetched.bytes.clone();
                    // Only a cache: a copy that cannot be written is read from the store
                    // next time.
                    let _ = tokio::task::spawn_blocking(move || std::fs::write(path, bytes)).await;
                }
                let item: Result<Bytes, TransportError> = Ok(Bytes::from(fetched.bytes));
                Ok(Box::pin(futures::stream::iter(std::iter::once(item))))
            }
            // Absence is how tough learns that N+1.root.json does not exist.
            Ok(None) => Err(TransportError::new(TransportErrorKind::FileNotFound, url)),
            Err(error) => {
                if name.ends_with(".root.json") {
                    self.root_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(|| error.to_string());
                }
                Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    url,
                    error,
                ))
            }
        }
    }
}
