//! The publisher's side: read the repository as it stands, sign new metadata with tough's
//! editor, and write it so that racing publishers and lost responses can never break it.
//!
//! Order of writes: the target (named by its hash, so a repeat is harmless), then
//! `N.targets.json` and `N.snapshot.json` (created only if absent, versions past every one
//! listed), then `timestamp.json` last, replaced only if it is still the one that was read.
//! A conflict, or a write whose answer never came (a transport error once the retries ran
//! out), is resolved by reading what the store now says: bytes equal to ours mean our own
//! write landed and its answer was lost; anything else means another publisher won (after
//! a conflict) or the write is reported as failed (after a transport error). Nothing a
//! published metadata file names is ever deleted here; `repo gc` removes only targets no
//! live metadata names.
//!
//! The publisher reads the repository itself rather than through tough's client: after a
//! key rotation the current metadata is signed by a key the newest root no longer lists, and
//! tough's client would refuse the very repository that must be re-signed. Each role is
//! accepted when a threshold of some root in the verified chain signed it.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;

use anyhow::{Context, bail};
use aws_lc_rs::rand::SystemRandom;
use serde::Serialize;
use sha2::Digest;
use tough::editor::RepositoryEditor;
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::{
    Hashes, KeyHolder, Metafile, Role as TufRole, Root, Signed, Snapshot, Target, Targets,
    Timestamp,
};

use super::root::{check_root, parse_root, role_key_ids, role_threshold};
use super::{METADATA_DIR, Role, SPEC_VERSION, TARGETS_DIR, whole_seconds};
use crate::delta_store::{Condition, DeltaStore, PutError};

/// The largest metadata file the publisher reads.
const MAX_METADATA_BYTES: u64 = 64 << 20;
/// The largest target the publisher reads back (to compare after a conflict).
const MAX_TARGET_BYTES: u64 = 1 << 30;

/// The repository as it stands, verified from a trusted root.
#[derive(Debug)]
pub struct RepoState {
    /// The store URL, for messages.
    pub store: String,
    /// The verified root chain, oldest first.
    pub roots: Vec<Signed<Root>>,
    /// The newest root's bytes.
    pub root_bytes: Vec<u8>,
    /// The current timestamp (with the tag to replace it), snapshot and targets; `None`
    /// before `repo init`.
    pub current: Option<Current>,
    /// The highest targets and snapshot versions present (orphans of lost races included).
    pub highest: (u64, u64),
}

/// The current top-level metadata.
#[derive(Debug, Clone)]
pub struct Current {
    /// timestamp.json.
    pub timestamp: Signed<Timestamp>,
    /// Its tag, for the compare-and-swap.
    pub timestamp_etag: String,
    /// The snapshot it names.
    pub snapshot: Signed<Snapshot>,
    /// The targets the snapshot names.
    pub targets: Signed<Targets>,
}

impl RepoState {
    /// The newest trusted root.
    pub fn root(&self) -> &Root {
        &self
            .roots
            .last()
            .expect("a verified chain is never empty")
            .signed
    }

    /// Reads and verifies the repository in `store`, trusting `trusted_root` (the root an
    /// instance bakes, or the store's first root when the publisher pins none).
    pub async fn read(store: &DeltaStore, trusted_root: Option<&[u8]>) -> anyhow::Result<Self> {
        let (roots, root_bytes) = root_chain(store, trusted_root).await?;
        let highest = highest_versions(store).await?;
        let mut state = RepoState {
            store: store.describe(),
            roots,
            root_bytes,
            current: None,
            highest,
        };
        let Some(fetched) = store
            .get(&metadata_name("timestamp.json"), MAX_METADATA_BYTES)
            .await?
        else {
            return Ok(state);
        };
        let timestamp: Signed<Timestamp> = parse(&fetched.bytes, "metadata/timestamp.json")?;
        state.verify_any(&timestamp, "timestamp.json")?;
        let snapshot_meta = timestamp
            .signed
            .meta
            .get("snapshot.json")
            .context("metadata/timestamp.json names no snapshot.json")?;
        let name = format!("{}.snapshot.json", snapshot_meta.version);
        let snapshot: Signed<Snapshot> =
            parse(&read_pinned(store, &name, snapshot_meta).await?, &name)?;
        state.verify_any(&snapshot, &name)?;
        let targets_meta = snapshot
            .signed
            .meta
            .get("targets.json")
            .with_context(|| format!("metadata/{name} names no targets.json"))?;
        let name = format!("{}.targets.json", targets_meta.version);
        let targets: Signed<Targets> =
            parse(&read_pinned(store, &name, targets_meta).await?, &name)?;
        state.verify_any(&targets, &name)?;
        state.current = Some(Current {
            timestamp,
            timestamp_etag: fetched.etag,
            snapshot,
            targets,
        });
        Ok(state)
    }

    fn verify_any<T: TufRole + Serialize>(
        &self,
        role: &Signed<T>,
        name: &str,
    ) -> anyhow::Result<()> {
        if self
            .roots
            .iter()
            .rev()
            .any(|r| r.signed.verify_role(role).is_ok())
        {
            return Ok(());
        }
        bail!(
            "metadata/{name} in {} is not signed by a threshold of the {} role's keys of any trusted root: the repository is damaged or was written with other keys",
            self.store,
            T::TYPE
        )
    }

    /// Refuses, before anything is written, keys the newest root does not authorise for the
    /// roles a publish signs: names the keys given and the keys the root lists.
    pub fn check_authorised(&self, key_ids: &[String], roles: &[Role]) -> anyhow::Result<()> {
        let root = self.root();
        for role in roles {
            let listed = role_key_ids(root, *role);
            let threshold = role_threshold(root, *role);
            let n_authorised = key_ids.iter().filter(|id| listed.contains(id)).count();
            if (n_authorised as u64) < threshold {
                bail!(
                    "root version {} of {} authorises key {} for the {} role (threshold {threshold}), and the key(s) given ({}) do not meet it: pass the right key, or rotate the root first (`deltacache root rotate`); nothing was written",
                    root.version,
                    self.store,
                    listed.join(", "),
                    role.name(),
                    key_ids.join(", ")
                );
            }
        }
        Ok(())
    }
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], name: &str) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).with_context(|| format!("parse metadata/{name}"))
}

fn metadata_name(file: &str) -> String {
    format!("{METADATA_DIR}/{file}")
}

/// The store name of a target under consistent snapshots: `targets/<sha256>.<name>`.
pub fn target_object(sha256_hex: &str, name: &str) -> String {
    format!("{TARGETS_DIR}/{sha256_hex}.{name}")
}

/// Reads a metadata file named by other signed metadata, checking its length and hash.
async fn read_pinned(store: &DeltaStore, name: &str, meta: &Metafile) -> anyhow::Result<Vec<u8>> {
    let cap = meta.length.unwrap_or(MAX_METADATA_BYTES);
    let fetched = store
        .get(&metadata_name(name), cap)
        .await?
        .with_context(|| format!("metadata/{name} is missing from {}", store.describe()))?;
    if let Some(hashes) = &meta.hashes
        && sha2::Sha256::digest(&fetched.bytes).as_slice() != &*hashes.sha256
    {
        bail!("metadata/{name} does not match the hash the metadata naming it states");
    }
    Ok(fetched.bytes)
}

/// Follows `N+1.root.json` from the trusted root while each verifies; a root version that
/// exists but does not verify is refused by name.
async fn root_chain(
    store: &DeltaStore,
    trusted_root: Option<&[u8]>,
) -> anyhow::Result<(Vec<Signed<Root>>, Vec<u8>)> {
    let first = match trusted_root {
        Some(bytes) => bytes.to_vec(),
        None => store
            .get(&metadata_name("1.root.json"), MAX_METADATA_BYTES)
            .await?
            .with_context(|| {
                format!(
                    "{} holds no TUF repository (no metadata/1.root.json): check the store URL, or create it with `deltacache repo init`",
                    store.describe()
                )
            })?
            .bytes,
    };
    let mut root = parse_root(&first, "the trusted root")?;
    check_root(&root, None)?;
    let mut bytes = first;
    let mut chain = vec![root.clone()];
    loop {
        let next = root.signed.version.get() + 1;
        let name = format!("{next}.root.json");
        let Some(fetched) = store.get(&metadata_name(&name), MAX_METADATA_BYTES).await? else {
            break;
        };
        let newer = parse_root(&fetched.bytes, &format!("metadata/{name}"))?;
        check_root(&newer, Some(&root.signed))
            .with_context(|| format!("metadata/{name} in {}", store.describe()))?;
        chain.push(newer.clone());
        root = newer;
        bytes = fetched.bytes;
    }
    Ok((chain, bytes))
}

/// The highest `N` of `N.targets.json` and of `N.snapshot.json` in the store.
async fn highest_versions(store: &DeltaStore) -> anyhow::Result<(u64, u64)> {
    let mut highest = (0, 0);
    for name in store.list(&format!("{METADATA_DIR}/")).await? {
        let file = name.rsplit('/').next().unwrap_or(&name);
        let Some((version, role)) = file.split_once('.') else {
            continue;
        };
        let Ok(version) = version.parse::<u64>() else {
            continue;
        };
        match role {
            "targets.json" => highest.0 = highest.0.max(version),
            "snapshot.json" => highest.1 = highest.1.max(version),
            _ => {}
        }
    }
    Ok(highest)
}

/// A target to add.
#[derive(Debug, Clone)]
pub struct NewTarget {
    /// Its name (flat: no `/`).
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its custom metadata.
    pub custom: HashMap<String, serde_json::Value>,
}

/// How long the metadata a publish signs stays valid.
pub use super::Expiries;

/// Why a publish did not land.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Another publisher wrote the same metadata version or moved the timestamp first;
    /// nothing this publish wrote is named by the repository.
    #[error(
        "another publisher changed {store} ({what}) while this one published: nothing this run wrote is named by the repository; re-run to publish on top of it"
    )]
    LostRace {
        /// The store.
        store: String,
        /// What was found changed.
        what: String,
    },
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The versions a publish or refresh wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// targets.json version.
    pub targets: u64,
    /// snapshot.json version.
    pub snapshot: u64,
    /// timestamp.json version.
    pub timestamp: u64,
}

/// Adds `new_targets` and publishes new targets, snapshot and timestamp metadata signed with
/// `keys` (each role by the keys the newest root lists for it).
pub async fn publish(
    store: &DeltaStore,
    state: &RepoState,
    keys: &[Box<dyn KeySource>],
    new_targets: Vec<NewTarget>,
    expiries: Expiries,
) -> Result<Published, PublishError> {
    publish_reporting(store, state, keys, new_targets, expiries, &|_| {}).await
}

/// What a publish has written so far, told as it goes (for a report when it is interrupted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishStep {
    /// The target objects are in the store (named by no metadata yet).
    TargetsUploaded(Vec<String>),
    /// The new targets and snapshot metadata are in the store (the timestamp does not name
    /// them yet).
    MetadataUploaded,
    /// The timestamp names them: published.
    TimestampReplaced,
}

/// [`publish`], telling `step` what has been written as it goes.
pub async fn publish_reporting(
    store: &DeltaStore,
    state: &RepoState,
    keys: &[Box<dyn KeySource>],
    new_targets: Vec<NewTarget>,
    expiries: Expiries,
    step: &(dyn Fn(PublishStep) + Sync),
) -> Result<Published, PublishError> {
    let (signed_dir, versions, objects) = sign(state, keys, new_targets, expiries).await?;
    let names: Vec<String> = objects.iter().map(|(name, _)| name.clone()).collect();
    for (name, bytes) in objects {
        create_or_same(store, &name, &bytes, MAX_TARGET_BYTES).await?;
    }
    step(PublishStep::TargetsUploaded(names));
    crate::failpoint::pause("publish-after-targets").await;
    for file in [
        format!("{}.targets.json", versions.targets),
        format!("{}.snapshot.json", versions.snapshot),
    ] {
        let bytes = read_signed(&signed_dir, &file).await?;
        if !create_or_same(store, &metadata_name(&file), &bytes, MAX_METADATA_BYTES).await? {
            return Err(PublishError::LostRace {
                store: state.store.clone(),
                what: format!("metadata/{file} exists with other contents"),
            });
        }
    }
    step(PublishStep::MetadataUploaded);
    let timestamp = read_signed(&signed_dir, "timestamp.json").await?;
    let condition = match &state.current {
        Some(current) => Condition::Matches(current.timestamp_etag.clone()),
        None => Condition::Absent,
    };
    replace_timestamp(store, state, &timestamp, condition).await?;
    step(PublishStep::TimestampReplaced);
    Ok(versions)
}

/// Signs the next targets, snapshot and timestamp into a temporary directory; returns it,
/// the versions, and the target objects to upload.
async fn sign(
    state: &RepoState,
    keys: &[Box<dyn KeySource>],
    new_targets: Vec<NewTarget>,
    expiries: Expiries,
) -> anyhow::Result<(tempfile::TempDir, Published, Vec<(String, Vec<u8>)>)> {
    let staging = tempfile::tempdir().context("create a scratch directory")?;
    let root_path = staging.path().join("root.json");
    tokio::fs::write(&root_path, &state.root_bytes).await?;
    let mut editor = RepositoryEditor::new(&root_path)
        .await
        .context("read the newest root")?;
    let (targets_version, snapshot_version, timestamp_version) = match &state.current {
        Some(current) => {
            let mut targets = current.targets.clone();
            // tough's editor takes spec version 1.0.0 only (python-tuf writes 1.0.31); the
            // targets are signed again anyway.
            targets.signed.spec_version = SPEC_VERSION.to_owned();
            let versions = (
                current.targets.signed.version.get(),
                current.snapshot.signed.version.get(),
                current.timestamp.signed.version.get(),
            );
            editor.targets(targets).context("carry the targets over")?;
            versions
        }
        None => (0, 0, 0),
    };
    let versions = Published {
        targets: targets_version.max(state.highest.0) + 1,
        snapshot: snapshot_version.max(state.highest.1) + 1,
        timestamp: timestamp_version + 1,
    };
    let version = |v: u64| NonZeroU64::new(v).expect("a version after another is not zero");
    editor
        .targets_version(version(versions.targets))?
        .targets_expires(Role::Targets.expires_in(expiries.targets)?)?
        .snapshot_version(version(versions.snapshot))
        .snapshot_expires(Role::Snapshot.expires_in(expiries.snapshot)?)
        .timestamp_version(version(versions.timestamp))
        .timestamp_expires(Role::Timestamp.expires_in(expiries.timestamp)?);
    let mut objects = Vec::new();
    for target in new_targets {
        let sha = sha2::Sha256::digest(&target.bytes);
        editor.add_target(
            target.name.as_str(),
            Target {
                length: target.bytes.len() as u64,
                hashes: Hashes {
                    sha256: sha.to_vec().into(),
                    _extra: HashMap::new(),
                },
                custom: target.custom,
                _extra: HashMap::new(),
            },
        )?;
        objects.push((target_object(&hex::encode(sha), &target.name), target.bytes));
    }
    let signed = editor.sign(keys).await.context("sign the metadata")?;
    signed
        .write(staging.path().join("metadata"))
        .await
        .context("write the signed metadata")?;
    Ok((staging, versions, objects))
}

async fn read_signed(dir: &tempfile::TempDir, file: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.path().join("metadata").join(file);
    tokio::fs::read(&path)
        .await
        .with_context(|| format!("read {}", path.display()))
}

/// Creates `name`; when it exists, says whether it holds exactly `bytes` (our own earlier
/// write whose answer was lost, or the same content-addressed object).
async fn create_or_same(
    store: &DeltaStore,
    name: &str,
    bytes: &[u8],
    cap: u64,
) -> anyhow::Result<bool> {
    match store.create(name, bytes).await {
        Ok(()) => Ok(true),
        Err(PutError::Conflict { .. }) => {
            let found = store
                .get(name, cap.max(bytes.len() as u64))
                .await?
                .map(|f| f.bytes);
            Ok(found.as_deref() == Some(bytes))
        }
        Err(PutError::Other(error)) if holds(store, name, bytes, cap).await => {
            tracing::info!(store = %store.describe(), name, error = format!("{error:#}"), "the write's answer was lost, and the store holds it");
            Ok(true)
        }
        Err(PutError::Other(error)) => Err(error.context(format!("write {name}"))),
    }
}

/// Whether `name` now holds exactly `bytes`: after a write that failed without an answer,
/// whether it landed all the same (a failed read counts as not).
async fn holds(store: &DeltaStore, name: &str, bytes: &[u8], cap: u64) -> bool {
    match store.get(name, cap.max(bytes.len() as u64)).await {
        Ok(Some(found)) => found.bytes == bytes,
        _ => false,
    }
}

/// Replaces `timestamp.json` if it is still the one read. A conflict, or a failure without
/// an answer, is resolved by reading it: our own bytes mean the write landed and its answer
/// was lost.
async fn replace_timestamp(
    store: &DeltaStore,
    state: &RepoState,
    bytes: &[u8],
    condition: Condition,
) -> Result<(), PublishError> {
    let name = metadata_name("timestamp.json");
    match store.replace(&name, bytes, condition).await {
        Ok(()) => Ok(()),
        Err(PutError::Conflict { .. }) => {
            let now = store
                .get(&name, MAX_METADATA_BYTES)
                .await
                .map_err(anyhow::Error::from)?;
            if now.as_ref().map(|f| f.bytes.as_slice()) == Some(bytes) {
                tracing::info!(store = %state.store, "timestamp.json already holds this publish (an earlier answer was lost)");
                Ok(())
            } else {
                Err(PublishError::LostRace {
                    store: state.store.clone(),
                    what: "metadata/timestamp.json was replaced".into(),
                })
            }
        }
        Err(PutError::Other(error)) if holds(store, &name, bytes, MAX_METADATA_BYTES).await => {
            tracing::info!(store = %state.store, error = format!("{error:#}"), "timestamp.json already holds this publish (the write's answer was lost)");
            Ok(())
        }
        Err(PutError::Other(error)) => Err(error.context("replace metadata/timestamp.json").into()),
    }
}

/// Signs timestamp (and with `snapshot`, a new snapshot naming the same targets) again with
/// new expiries, so a quiet repository does not expire; needs only the online key.
pub async fn refresh(
    store: &DeltaStore,
    state: &RepoState,
    keys: &[Box<dyn KeySource>],
    snapshot: bool,
    expiries: Expiries,
) -> Result<Published, PublishError> {
    let current = state.current.as_ref().with_context(|| {
        format!(
            "{} holds no published metadata yet: run `deltacache repo init`",
            state.store
        )
    })?;
    let holder = KeyHolder::Root(state.root().clone());
    let rng = SystemRandom::new();
    let mut snapshot_version = current.snapshot.signed.version.get();
    let snapshot_meta = if snapshot {
        snapshot_version = snapshot_version.max(state.highest.1) + 1;
        let mut new = Snapshot::new(
            SPEC_VERSION.to_owned(),
            NonZeroU64::new(snapshot_version).expect("not zero"),
            Role::Snapshot.expires_in(expiries.snapshot)?,
        );
        new.meta = current.snapshot.signed.meta.clone();
        let signed = SignedRole::new(new, &holder, keys, &rng)
            .await
            .context("sign snapshot.json (with a key the root lists for the snapshot role)")?;
        let name = metadata_name(&format!("{snapshot_version}.snapshot.json"));
        if !create_or_same(store, &name, signed.buffer(), MAX_METADATA_BYTES).await? {
            return Err(PublishError::LostRace {
                store: state.store.clone(),
                what: format!("{name} exists with other contents"),
            });
        }
        metafile(signed.buffer(), snapshot_version)
    } else {
        current.timestamp.signed.meta["snapshot.json"].clone()
    };
    let timestamp_version = current.timestamp.signed.version.get() + 1;
    let mut timestamp = Timestamp::new(
        SPEC_VERSION.to_owned(),
        NonZeroU64::new(timestamp_version).expect("not zero"),
        whole_seconds(Role::Timestamp.expires_in(expiries.timestamp)?),
    );
    timestamp
        .meta
        .insert("snapshot.json".to_owned(), snapshot_meta);
    let signed = SignedRole::new(timestamp, &holder, keys, &rng)
        .await
        .context("sign timestamp.json (with a key the root lists for the timestamp role)")?;
    replace_timestamp(
        store,
        state,
        signed.buffer(),
        Condition::Matches(current.timestamp_etag.clone()),
    )
    .await?;
    Ok(Published {
        targets: current.targets.signed.version.get(),
        snapshot: snapshot_version,
        timestamp: timestamp_version,
    })
}

fn metafile(bytes: &[u8], version: u64) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: sha2::Sha256::digest(bytes).to_vec().into(),
            _extra: HashMap::new(),
        }),
        version: NonZeroU64::new(version).expect("not zero"),
        _extra: HashMap::new(),
    }
}

/// Creates a repository: root 1, then targets (`targets`, usually none), snapshot and
/// timestamp, version 1. Refused when the store already holds a repository, so a mistyped
/// URL never overwrites one, and refused before anything is written when `key_ids` are not
/// the keys the root lists for targets, snapshot and timestamp.
pub async fn init(
    store: Arc<DeltaStore>,
    root_bytes: &[u8],
    keys: &[Box<dyn KeySource>],
    key_ids: &[String],
    targets: Vec<NewTarget>,
    expiries: Expiries,
) -> Result<Published, PublishError> {
    let root = parse_root(root_bytes, "the root")?;
    check_root(&root, None)?;
    if root.signed.version.get() != 1 {
        return Err(anyhow::anyhow!(
            "repo init takes root version 1 (this root is version {}); publish newer roots with `deltacache root publish`",
            root.signed.version
        )
        .into());
    }
    let unwritten = RepoState {
        store: store.describe(),
        roots: vec![root.clone()],
        root_bytes: root_bytes.to_vec(),
        current: None,
        highest: (0, 0),
    };
    unwritten.check_authorised(key_ids, &[Role::Targets, Role::Snapshot, Role::Timestamp])?;
    for existing in ["timestamp.json", "1.root.json"] {
        if store
            .get(&metadata_name(existing), MAX_METADATA_BYTES)
            .await
            .map_err(anyhow::Error::from)?
            .is_some()
        {
            return Err(anyhow::anyhow!(
                "{} already holds a repository (metadata/{existing} exists): nothing was written",
                store.describe()
            )
            .into());
        }
    }
    if !create_or_same(
        &store,
        &metadata_name("1.root.json"),
        root_bytes,
        MAX_METADATA_BYTES,
    )
    .await?
    {
        return Err(PublishError::LostRace {
            store: store.describe(),
            what: "metadata/1.root.json was created by someone else".into(),
        });
    }
    let state = RepoState::read(&store, Some(root_bytes)).await?;
    publish(&store, &state, keys, targets, expiries).await
}

/// Publishes root version N+1 (signed by a threshold of root N's root keys and of its own)
/// so that instances rotate to it at their next sync.
pub async fn publish_root(
    store: &DeltaStore,
    state: &RepoState,
    root_bytes: &[u8],
) -> anyhow::Result<u64> {
    let root = parse_root(root_bytes, "the new root")?;
    let version = root.signed.version.get();
    if version == state.root().version.get() {
        let name = metadata_name(&format!("{version}.root.json"));
        let same = store
            .get(&name, MAX_METADATA_BYTES)
            .await?
            .is_some_and(|found| found.bytes == root_bytes);
        if same {
            return Ok(version);
        }
        bail!(
            "{} already has root version {version}, with other contents: make the next root with `deltacache root rotate --previous` the newest one",
            state.store
        );
    }
    check_root(&root, Some(state.root()))?;
    let name = metadata_name(&format!("{version}.root.json"));
    if !create_or_same(store, &name, root_bytes, MAX_METADATA_BYTES).await? {
        bail!(
            "{name} already exists with other contents in {}",
            state.store
        );
    }
    Ok(version)
}

/// The target objects in the store that no current metadata names (left by a publish that
/// lost a race or died).
pub async fn unnamed_targets(store: &DeltaStore, state: &RepoState) -> anyhow::Result<Vec<String>> {
    let mut named = std::collections::HashSet::new();
    if let Some(current) = &state.current {
        for (name, target) in &current.targets.signed.targets {
            named.insert(target_object(
                &hex::encode(&target.hashes.sha256),
                name.raw(),
            ));
        }
    }
    Ok(store
        .list(&format!("{TARGETS_DIR}/"))
        .await?
        .into_iter()
        .filter(|object| !named.contains(object))
        .collect())
}

/// Removes the targets no current metadata names; returns their names. Run it when no
/// publish is in progress (a publish writes its target before the metadata naming it).
pub async fn gc(store: &DeltaStore, state: &RepoState) -> anyhow::Result<Vec<String>> {
    let unnamed = unnamed_targets(store, state).await?;
    for object in &unnamed {
        store.remove(object).await?;
    }
    Ok(unnamed)
}
