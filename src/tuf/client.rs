//! The instance's side: load the repository from a trusted root with tough (root chain,
//! timestamp, snapshot, targets: signatures, thresholds, versions, expiry, hashes), list the
//! targets with their custom metadata, and read a target's bytes (hash- and length-checked).
//!
//! tough keeps what it trusted in a datastore directory (root, timestamp, snapshot, targets,
//! the latest time seen), which is what refuses a replayed or rolled-back repository across
//! restarts. tough starts from the root bytes it is given and never reads the datastore's
//! root back, so [`load`] starts from whichever is newer: the baked root or the datastore's.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tough::{ExpirationEnforcement, IntoVec, Limits, Repository, RepositoryLoader, TargetName};

use super::transport::{StoreTransport, metadata_url, targets_url};
use crate::delta_store::{DeltaStore, FetchError};

/// Caps on what loading a repository reads.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// The largest root, timestamp or snapshot file.
    pub max_metadata_bytes: u64,
    /// The largest targets file (it grows by a few hundred bytes per delta).
    pub max_targets_metadata_bytes: u64,
    /// The largest target.
    pub max_target_bytes: u64,
    /// The most root versions followed in one load.
    pub max_root_updates: u64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_metadata_bytes: 1 << 20,
            max_targets_metadata_bytes: 64 << 20,
            max_target_bytes: 512 << 20,
            max_root_updates: 1024,
        }
    }
}

/// Why a repository could not be loaded or a target read. Callers branch on the variant (a
/// sync reports `unreachable` and retries; `refused` is an attack or a mistake).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The store could not be read; worth retrying.
    #[error("the delta store could not be read: {0}")]
    Unreachable(String),
    /// The store holds no repository (no timestamp).
    #[error(
        "{0} holds no TUF repository (no metadata/timestamp.json): check the store URL, or create it with `deltacache repo init`"
    )]
    NoRepository(String),
    /// Metadata expired: the repository is frozen, replayed or not refreshed. The role, and
    /// when it expired (seconds since the epoch) when the store still says.
    #[error("{0} metadata has expired{at}: the repository is frozen or replayed, or nobody renewed it ({advice})", at = expired_at(*.1), advice = renew_advice(.0))]
    Expired(String, Option<u64>),
    /// Metadata older than what was trusted before: a rollback.
    #[error("refusing a rollback: {0}")]
    Rollback(String),
    /// Anything else that did not verify: signatures, thresholds, hashes, lengths, parses.
    #[error("refused: {0}")]
    Refused(String),
}

/// ` at 2026-12-01T18:00:00Z (3h 2m ago)`, or nothing when the time is not known.
fn expired_at(at: Option<u64>) -> String {
    at.map(|at| format!(" at {}", crate::clock::describe_secs(at)))
        .unwrap_or_default()
}

/// When the store's current metadata of `role` (timestamp, snapshot or targets) expires:
/// read again after tough refused it as expired, whose error does not say.
async fn expiry_in_store(store: &DeltaStore, role: &str, limits: &ClientLimits) -> Option<u64> {
    let read = |name: String, cap: u64| async move {
        let fetched = store.get(&name, cap).await.ok()??;
        serde_json::from_slice::<serde_json::Value>(&fetched.bytes).ok()
    };
    let small = limits.max_metadata_bytes;
    let timestamp = read("metadata/timestamp.json".into(), small).await?;
    let document = match role {
        "timestamp" => timestamp,
        "snapshot" | "targets" => {
            let version = timestamp["signed"]["meta"]["snapshot.json"]["version"].as_u64()?;
            let snapshot = read(format!("metadata/{version}.snapshot.json"), small).await?;
            if role == "snapshot" {
                snapshot
            } else {
                let version = snapshot["signed"]["meta"]["targets.json"]["version"].as_u64()?;
                let cap = limits.max_targets_metadata_bytes;
                read(format!("metadata/{version}.targets.json"), cap).await?
            }
        }
        _ => return None,
    };
    let expires: jiff::Timestamp = document["signed"]["expires"].as_str()?.parse().ok()?;
    u64::try_from(expires.as_second()).ok()
}

/// How the publisher renews expired metadata of `role`.
fn renew_advice(role: &str) -> &'static str {
    match role {
        "root" => {
            "renew the newest root: `deltacache root rotate --previous ROOT --out NEW` with no change, signed by enough root keys, then `deltacache root publish --root NEW`"
        }
        "targets" => {
            "publish a delta or `deltacache fleet set`, which sign new targets metadata with the targets key"
        }
        _ => "`deltacache repo refresh --snapshot` with the online key",
    }
}

impl TrustError {
    /// A short label, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TrustError::Unreachable(_) => "unreachable",
            TrustError::NoRepository(_) => "no-repository",
            TrustError::Expired(..) => "expired",
            TrustError::Rollback(_) => "rollback",
            TrustError::Refused(_) => "refused",
        }
    }
}

/// One target as the verified targets metadata lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetInfo {
    /// Its name.
    pub name: String,
    /// Its length in bytes.
    pub length: u64,
    /// Its sha256, hex.
    pub sha256: String,
    /// Its custom metadata.
    pub custom: HashMap<String, serde_json::Value>,
}

/// A repository whose metadata verified from a trusted root.
#[derive(Debug)]
pub struct TrustedRepo {
    /// tough's verified view.
    repo: Repository,
}

/// Loads the repository in `store` starting from `trusted_root` (or the newer root in
/// `datastore`), keeping tough's trusted metadata in `datastore` (which must exist).
pub async fn load(
    store: Arc<DeltaStore>,
    trusted_root: &[u8],
    datastore: &Path,
    limits: ClientLimits,
) -> Result<TrustedRepo, TrustError> {
    let root = starting_root(trusted_root, datastore);
    let transport = StoreTransport::new(
        store.clone(),
        limits.max_metadata_bytes,
        limits.max_targets_metadata_bytes,
        limits.max_target_bytes,
    )
    .reusing(datastore.to_path_buf());
    let loaded = RepositoryLoader::new(&root, metadata_url(), targets_url())
        .transport(transport.clone())
        .limits(Limits {
            max_root_size: limits.max_metadata_bytes,
            max_targets_size: limits.max_targets_metadata_bytes,
            max_timestamp_size: limits.max_metadata_bytes,
            max_snapshot_size: limits.max_metadata_bytes,
            max_root_updates: limits.max_root_updates,
        })
        .datastore(datastore)
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await;
    if let Some(failure) = transport.root_failure() {
        return Err(TrustError::Unreachable(format!(
            "a newer root version could not be read: {failure}"
        )));
    }
    match loaded {
        Ok(repo) => Ok(TrustedRepo { repo }),
        Err(error) => match classify(&error, &store.describe()) {
            TrustError::Expired(role, None) => {
                let at = expiry_in_store(&store, &role, &limits).await;
                Err(TrustError::Expired(role, at))
            }
            refused => Err(refused),
        },
    }
}

/// The root to start from: the datastore's when it is newer than the baked one.
fn starting_root(trusted_root: &[u8], datastore: &Path) -> Vec<u8> {
    let version = |bytes: &[u8]| {
        serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(bytes)
            .ok()
            .map(|root| root.signed.version.get())
    };
    match std::fs::read(datastore.join("root.json")) {
        Ok(kept) if version(&kept) > version(trusted_root) => kept,
        _ => trusted_root.to_vec(),
    }
}

/// Every target `targets` metadata lists, with its custom metadata (the client's view and
/// the publisher's read the same way).
pub fn target_infos(targets: &tough::schema::Signed<tough::schema::Targets>) -> Vec<TargetInfo> {
    targets
        .signed
        .targets
        .iter()
        .map(|(name, target)| TargetInfo {
            name: name.raw().to_owned(),
            length: target.length,
            sha256: hex::encode(&target.hashes.sha256),
            custom: target.custom.clone(),
        })
        .collect()
}

impl TrustedRepo {
    /// Every target, with its custom metadata.
    pub fn targets(&self) -> Vec<TargetInfo> {
        target_infos(self.repo.targets())
    }

    /// The trusted root's version.
    pub fn root_version(&self) -> u64 {
        self.repo.root().signed.version.get()
    }

    /// The trusted timestamp's version.
    pub fn timestamp_version(&self) -> u64 {
        self.repo.timestamp().signed.version.get()
    }

    /// The trusted targets' version.
    pub fn targets_version(&self) -> u64 {
        self.repo.targets().signed.version.get()
    }

    /// When the trusted timestamp expires (seconds since the epoch).
    pub fn timestamp_expires(&self) -> i64 {
        self.repo.timestamp().signed.expires.as_second()
    }

    /// Reads a listed target's bytes; tough checks them against its length and sha256.
    pub async fn read_target(&self, name: &str) -> Result<Vec<u8>, TrustError> {
        let target_name = TargetName::new(name)
            .map_err(|e| TrustError::Refused(format!("target name {name:?}: {e}")))?;
        let stream = self
            .repo
            .read_target(&target_name)
            .await
            .map_err(|e| classify(&e, name))?
            .ok_or_else(|| TrustError::Refused(format!("{name} is not a listed target")))?;
        stream.into_vec().await.map_err(|e| classify(&e, name))
    }
}

/// Sorts a tough error into what a sync does about it. Hash and size failures arrive wrapped
/// in transport errors, so the whole chain of sources is read; an object the store found
/// larger than its cap is refused (retrying cannot shrink it), not unreachable.
fn classify(error: &tough::error::Error, what: &str) -> TrustError {
    use tough::error::Error as E;
    let message = error_chain(error);
    let mut transport_kind = None;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(tough_error) = e.downcast_ref::<E>() {
            match tough_error {
                E::ExpiredMetadata { role, .. } => {
                    return TrustError::Expired(role.to_string(), None);
                }
                // A snapshot older than the trusted one named by a newer timestamp, and
                // targets older than the trusted ones named by a newer snapshot, are
                // rollbacks too; tough names them with variants of their own.
                E::OlderMetadata { .. }
                | E::OlderSnapshotInTimestamp { .. }
                | E::SnapshotRoleRollback { .. } => return TrustError::Rollback(message),
                E::HashMismatch { .. }
                | E::MaxSizeExceeded { .. }
                | E::VerifyMetadata { .. }
                | E::VerifyTrustedMetadata { .. }
                | E::VersionMismatch { .. }
                | E::ParseMetadata { .. } => return TrustError::Refused(message),
                _ => {}
            }
        }
        if e.downcast_ref::<FetchError>()
            .is_some_and(FetchError::is_permanent)
        {
            return TrustError::Refused(message);
        }
        if let Some(transport) = e.downcast_ref::<tough::TransportError>() {
            transport_kind.get_or_insert(transport.kind());
        }
        current = e.source();
    }
    match transport_kind {
        Some(tough::TransportErrorKind::FileNotFound) if message.contains("timestamp.json") => {
            TrustError::NoRepository(what.to_owned())
        }
        Some(tough::TransportErrorKind::FileNotFound) => TrustError::Refused(message),
        Some(_) => TrustError::Unreachable(message),
        None => TrustError::Refused(message),
    }
}

/// An error and its sources, joined.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut current = error.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}
