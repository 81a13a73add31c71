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
        }
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
        match self.store.get(&name, cap).await {
            Ok(Some(fetched)) => {
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
