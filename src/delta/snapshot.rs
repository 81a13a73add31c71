//! Catch-up snapshots: a compacted bundle published as one signed target, so an instance
//! far behind the head downloads it instead of replaying a long chain.
//!
//! A snapshot is a tar of a bundle (its manifest and every file the manifest lists), named
//! `000000000042.snapshot.tar` for the seq it includes. Its custom metadata
//! ([`SnapshotMeta`]) says where in the chain it stands: the seq, and the sha256 and length
//! of the delta at that seq, which the chain's later deltas name as their parent. An
//! instance takes a snapshot only when that delta is the one its own verified chain holds at
//! that seq, checks the unpacked bundle's manifest against the metadata and every file
//! against the manifest, and applies the deltas after it (see `crate::sync`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::chain::{ChainError, ChainPosition, DeltaTarget, custom_of, delta_targets, plan};
use super::fleet::FleetStore;
use super::publish::published_targets;
use crate::bundle::{Bundle, MANIFEST_FILE, Manifest};
use crate::tuf::client::TargetInfo;
use crate::tuf::keys::load_signers;
use crate::tuf::repo::NewTarget;
use crate::tuf::{self, Expiries, Role};

/// What a snapshot target's name ends with.
pub const SNAPSHOT_SUFFIX: &str = ".snapshot.tar";

/// The name of the snapshot target of seq `seq`.
pub fn snapshot_target_name(seq: u64) -> String {
    format!("{seq:012}{SNAPSHOT_SUFFIX}")
}

/// What a snapshot target's custom metadata says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The seq it includes.
    pub seq: u64,
    /// Dataset.
    pub dataset: String,
    /// The model its index was built with.
    pub model_fingerprint: String,
    /// The sha256 of the delta at `seq` (what the next delta names as its parent).
    pub chain_digest: String,
    /// The length of that delta.
    pub chain_len: u64,
    /// The db layout of its database.
    pub schema_version: u32,
    /// Its item count.
    pub n_items: u64,
    /// When it was published, in milliseconds since the epoch.
    pub published_at_ms: u64,
}

impl SnapshotMeta {
    /// What a bundle's manifest says, as a snapshot's metadata.
    pub fn of_manifest(manifest: &Manifest, published_at_ms: u64) -> Self {
        SnapshotMeta {
            seq: manifest.seq,
            dataset: manifest.dataset.clone(),
            model_fingerprint: manifest.model_fingerprint.clone(),
            chain_digest: manifest.chain_digest.clone(),
            chain_len: manifest.chain_len,
            schema_version: manifest.schema_version,
            n_items: manifest.n_items,
            published_at_ms,
        }
    }

    /// Why an unpacked bundle is not the one this metadata describes, if it is not.
    pub fn mismatch(&self, manifest: &Manifest) -> Option<String> {
        let published = SnapshotMeta::of_manifest(manifest, self.published_at_ms);
        (published != *self).then(|| {
            format!(
                "its manifest says seq {} chain digest {} ({} items), but its signed metadata says seq {} chain digest {} ({} items)",
                published.seq,
                published.chain_digest,
                published.n_items,
                self.seq,
                self.chain_digest,
                self.n_items
            )
        })
    }

    fn to_custom(&self) -> HashMap<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
            _ => HashMap::new(),
        }
    }
}

/// A snapshot target as verified metadata names it.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotTarget {
    /// Its target name.
    pub name: String,
    /// Its sha256, hex.
    pub sha256: String,
    /// Its length in bytes.
    pub len: u64,
    /// What its custom metadata says.
    pub meta: SnapshotMeta,
}

impl SnapshotTarget {
    /// Whether it stands where `delta` does in the chain (same seq, same object).
    pub fn continues_as(&self, delta: &DeltaTarget) -> bool {
        self.meta.seq == delta.meta.seq
            && self.meta.chain_digest == delta.digest
            && self.meta.chain_len == delta.len
    }
}

/// The snapshot targets among `targets`, by seq. One whose custom metadata does not parse,
/// or places it at another seq than its name, is refused by name.
pub fn snapshot_targets(targets: &[TargetInfo]) -> Result<Vec<SnapshotTarget>, ChainError> {
    let mut found = Vec::new();
    for target in targets.iter().filter(|t| t.name.ends_with(SNAPSHOT_SUFFIX)) {
        let meta: SnapshotMeta = custom_of(
            target,
            "a snapshot's",
            |m: &SnapshotMeta| m.seq,
            snapshot_target_name,
        )?;
        found.push(SnapshotTarget {
            name: target.name.clone(),
            sha256: target.sha256.clone(),
            len: target.length,
            meta,
        });
    }
    found.sort_by_key(|s| s.meta.seq);
    Ok(found)
}

/// A chain planned across model rollovers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Planned {
    /// The deltas that continue the position, in order.
    pub deltas: Vec<DeltaTarget>,
    /// The rollover snapshots crossed, in order: from each one's seq on, the chain is built
    /// for its model.
    pub rollovers: Vec<SnapshotTarget>,
}

impl Planned {
    /// The model a version at `seq` on this chain has: the newest rollover's at or before
    /// it, else `start`'s.
    pub fn model_at<'a>(&'a self, seq: u64, start: &'a str) -> &'a str {
        self.rollovers
            .iter()
            .rev()
            .find(|r| r.meta.seq <= seq)
            .map_or(start, |r| r.meta.model_fingerprint.as_str())
    }
}

/// The deltas that continue `position`, as [`plan`] checks them, across model rollovers: a
/// snapshot of another model than the chain's, standing on the chain (the delta at its seq
/// is the one the chain holds there), moves the chain to its model, and the deltas after it
/// are checked against that model. A rollover snapshot that does not stand on the chain is
/// refused by name.
pub fn plan_across(
    deltas: &[DeltaTarget],
    snapshots: &[SnapshotTarget],
    position: &ChainPosition,
) -> Result<Planned, ChainError> {
    let mut planned = Planned::default();
    let mut position = position.clone();
    loop {
        let crossed = !planned.rollovers.is_empty();
        let rollover = snapshots.iter().find(|s| {
            (s.meta.seq > position.seq || (s.meta.seq == position.seq && !crossed))
                && s.meta.dataset == position.dataset
                && s.meta.model_fingerprint != position.model_fingerprint
        });
        let Some(rollover) = rollover else {
            planned.deltas.extend(plan(deltas, &position)?);
            return Ok(planned);
        };
        let upto: Vec<DeltaTarget> = deltas
            .iter()
            .filter(|d| d.meta.seq <= rollover.meta.seq)
            .cloned()
            .collect();
        let part = plan(&upto, &position)?;
        let (seq, digest, len) = part.last().map_or(
            (position.seq, position.digest.as_str(), position.len),
            |d| (d.meta.seq, d.digest.as_str(), d.len),
        );
        if seq != rollover.meta.seq
            || digest != rollover.meta.chain_digest
            || len != rollover.meta.chain_len
        {
            return Err(ChainError::Sequence {
                object: rollover.name.clone(),
                message: format!(
                    "it moves the chain to model {} after seq {} digest {}, but the chain holds seq {seq} digest {digest} there",
                    short(&rollover.meta.model_fingerprint),
                    rollover.meta.seq,
                    rollover.meta.chain_digest
                ),
            });
        }
        planned.deltas.extend(part);
        position = ChainPosition::new(
            &position.dataset,
            rollover.meta.seq,
            &rollover.meta.chain_digest,
            rollover.meta.chain_len,
            &rollover.meta.model_fingerprint,
        )
        .held_by(format!("the model rollover {}", rollover.name));
        planned.rollovers.push(rollover.clone());
    }
}

/// The first 16 characters of a fingerprint, for messages.
fn short(fingerprint: &str) -> &str {
    &fingerprint[..16.min(fingerprint.len())]
}

/// A tar of `bundle`: its manifest and the files it lists, in the manifest's order, with
/// fixed modes and times (the same bundle always packs to the same bytes).
pub fn pack(bundle: &Bundle) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    let mut names = vec![MANIFEST_FILE.to_owned()];
    names.extend(bundle.manifest.files.keys().cloned());
    for name in names {
        let path = bundle.dir.join(&name);
        let mut file =
            std::fs::File::open(&path).with_context(|| format!("read {}", path.display()))?;
        builder
            .append_file(&name, &mut file)
            .with_context(|| format!("pack {}", path.display()))?;
    }
    builder.into_inner().context("finish the snapshot tar")
}

/// Unpacks the tar at `archive` into the empty directory `into`, accepting only regular
/// files and directories at relative paths inside it (tar's `unpack_in` refuses `..` and
/// absolute paths).
pub fn unpack(archive: &Path, into: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(archive)
        .with_context(|| format!("open the snapshot {}", archive.display()))?;
    let mut tar = tar::Archive::new(file);
    tar.set_preserve_permissions(false);
    tar.set_preserve_mtime(false);
    for entry in tar
        .entries()
        .with_context(|| format!("read the snapshot {}", archive.display()))?
    {
        let mut entry = entry.with_context(|| format!("read {}", archive.display()))?;
        let kind = entry.header().entry_type();
        let name = entry.path()?.display().to_string();
        if !(kind.is_file() || kind.is_dir()) {
            bail!(
                "snapshot {} holds {name:?}, which is neither a file nor a directory: refusing it",
                archive.display()
            );
        }
        if !entry.unpack_in(into)? {
            bail!(
                "snapshot {} holds {name:?}, a path outside the bundle: refusing it",
                archive.display()
            );
        }
    }
    Ok(())
}

/// What a published snapshot is.
#[derive(Debug, Clone)]
pub struct PublishedSnapshot {
    /// Its target name.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its metadata.
    pub meta: SnapshotMeta,
}

/// Publishes the bundle in `bundle_dir` (made by `compact` from this store's chain) as the
/// snapshot of its seq, signed with `keys`. Refused unless the repository's delta at that
/// seq is the one the bundle's chain digest names, so a snapshot always continues the chain
/// instances verify. A bundle with a new model (`compact --refit`) is a model rollover:
/// published only at the head, after which the chain is built for its model.
pub async fn publish(
    at: &FleetStore,
    keys: &[std::path::PathBuf],
    bundle_dir: &Path,
    expires_in: Duration,
) -> anyhow::Result<PublishedSnapshot> {
    let (signers, key_ids) = load_signers(keys)?;
    let bundle = Bundle::open(bundle_dir)?;
    bundle.verify_files()?;
    let manifest = &bundle.manifest;
    let (store, state) = at.read().await?;
    state.check_authorised(&key_ids, &[Role::Targets, Role::Snapshot, Role::Timestamp])?;
    let targets = published_targets(&state);
    let deltas = delta_targets(&targets)?;
    let Some(delta) = deltas.iter().find(|d| d.meta.seq == manifest.seq) else {
        bail!(
            "{} names no delta of seq {}, the bundle's: a snapshot is made from this store's chain (`deltacache compact --store {}`)",
            store.describe(),
            manifest.seq,
            at.store
        );
    };
    let meta = SnapshotMeta::of_manifest(manifest, crate::clock::now_millis());
    if meta.chain_digest != delta.digest || meta.chain_len != delta.len {
        bail!(
            "bundle {} stands after a delta of sha256 {}, but {} names {} at seq {}: it was not compacted from this chain",
            bundle_dir.display(),
            meta.chain_digest,
            store.describe(),
            delta.digest,
            manifest.seq
        );
    }
    let snapshots = snapshot_targets(&targets)?;
    let in_force = snapshots
        .iter()
        .find(|s| s.meta.seq == manifest.seq && s.continues_as(delta))
        .map_or(delta.meta.model_fingerprint.as_str(), |s| {
            s.meta.model_fingerprint.as_str()
        });
    let head = deltas.last().map_or(0, |d| d.meta.seq);
    if meta.model_fingerprint != in_force && manifest.seq != head {
        bail!(
            "bundle {} has a new model ({}, the chain's is {}) but stands at seq {}, behind the head (seq {head}): a model rollover must be published at the head, or the deltas after it would be built for the old model; run compact --refit again",
            bundle_dir.display(),
            short(&meta.model_fingerprint),
            short(in_force),
            manifest.seq
        );
    }
    let bytes = pack(&bundle)?;
    let name = snapshot_target_name(meta.seq);
    let published = PublishedSnapshot {
        name: name.clone(),
        bytes: bytes.len() as u64,
        meta: meta.clone(),
    };
    let target = NewTarget {
        name,
        bytes,
        custom: meta.to_custom(),
    };
    let expiries = Expiries {
        timestamp: expires_in,
        ..Expiries::default()
    };
    tuf::repo::publish(&store, &state, &signers, vec![target], expiries).await?;
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::chain::{DeltaMeta, delta_target_name};

    /// Delta `seq` of model `model`, following delta `seq - 1` (or the bundle at seq 0).
    fn delta(seq: u64, model: &str) -> DeltaTarget {
        DeltaTarget {
            name: delta_target_name(seq),
            digest: format!("d{seq}"),
            len: 10,
            meta: DeltaMeta {
                seq,
                parent_seq: seq - 1,
                parent_digest: if seq == 1 {
                    "bundle".into()
                } else {
                    format!("d{}", seq - 1)
                },
                parent_len: if seq == 1 { 0 } else { 10 },
                dataset: "ds".into(),
                model_fingerprint: model.into(),
                schema_version: 2,
                created_at: 0,
                n_records: 1,
                published_at_ms: 0,
            },
        }
    }

    fn snapshot(seq: u64, model: &str, chain_digest: &str) -> SnapshotTarget {
        SnapshotTarget {
            name: snapshot_target_name(seq),
            sha256: format!("s{seq}"),
            len: 1000,
            meta: SnapshotMeta {
                seq,
                dataset: "ds".into(),
                model_fingerprint: model.into(),
                chain_digest: chain_digest.into(),
                chain_len: 10,
                schema_version: 2,
                n_items: 5,
                published_at_ms: 0,
            },
        }
    }

    fn seqs(planned: &Planned) -> Vec<u64> {
        planned.deltas.iter().map(|d| d.meta.seq).collect()
    }

    /// Deltas 1..=3 of model A, a rollover to B at 3, deltas 4 and 5 of B.
    fn rolled_chain() -> (Vec<DeltaTarget>, Vec<SnapshotTarget>) {
        let deltas = vec![
            delta(1, "A"),
            delta(2, "A"),
            delta(3, "A"),
            delta(4, "B"),
            delta(5, "B"),
        ];
        (deltas, vec![snapshot(1, "A", "d1"), snapshot(3, "B", "d3")])
    }

    #[test]
    fn a_chain_is_planned_across_a_model_rollover() {
        let (deltas, snapshots) = rolled_chain();
        let bundle = ChainPosition::new("ds", 0, "bundle", 0, "A");
        assert!(matches!(
            plan(&deltas, &bundle),
            Err(ChainError::Binding { .. })
        ));
        let planned = plan_across(&deltas, &snapshots, &bundle).unwrap();
        assert_eq!(seqs(&planned), vec![1, 2, 3, 4, 5]);
        assert_eq!(planned.rollovers.len(), 1);
        assert_eq!(planned.model_at(2, "A"), "A");
        assert_eq!(planned.model_at(3, "A"), "B");
        assert_eq!(planned.model_at(5, "A"), "B");

        // Served at seq 3 on model A: the rollover at that very seq is crossed.
        let at_3 = ChainPosition::new("ds", 3, "d3", 10, "A");
        let planned = plan_across(&deltas, &snapshots, &at_3).unwrap();
        assert_eq!(seqs(&planned), vec![4, 5]);
        assert_eq!(planned.rollovers[0].meta.seq, 3);
        // Already on model B: nothing to cross.
        let rolled = ChainPosition::new("ds", 3, "d3", 10, "B");
        let planned = plan_across(&deltas, &snapshots, &rolled).unwrap();
        assert_eq!(seqs(&planned), vec![4, 5]);
        assert!(planned.rollovers.is_empty());
    }

    #[test]
    fn a_rollover_that_does_not_stand_on_the_chain_is_refused_by_name() {
        let (deltas, _) = rolled_chain();
        let forged = vec![snapshot(3, "B", "elsewhere")];
        let bundle = ChainPosition::new("ds", 0, "bundle", 0, "A");
        let error = plan_across(&deltas, &forged, &bundle).unwrap_err();
        assert!(
            error.to_string().contains("000000000003.snapshot.tar"),
            "{error}"
        );
        // Two rollovers at one seq (A to B, B to A) end, instead of circling.
        let circling = vec![snapshot(3, "B", "d3"), snapshot(3, "A", "d3")];
        let planned = plan_across(&deltas[..3], &circling, &bundle).unwrap();
        assert_eq!(planned.rollovers.len(), 1);
    }
}
