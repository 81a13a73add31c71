//! The delta chain as verified TUF metadata names it: which deltas continue where a state (or
//! a bundle) is, in which order, and whether a delta's bytes say what its metadata says.
//!
//! Every delta is a target named `000000000042.delta` whose custom metadata ([`DeltaMeta`])
//! carries its seq, its parent's seq and digest, the dataset, the model fingerprint and the
//! db schema it was built for. A chain continues a position when the targets after it are
//! contiguous, each naming the previous one's sha256 as its parent, the first naming the
//! position's digest. Only deltas named by verified metadata are ever applied: nothing is
//! found by listing the store.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::format::{DeltaBatch, DeltaError, delta_body};
use crate::bundle::Manifest;
use crate::tuf::client::{TargetInfo, TrustError};

/// Where a chain continues from: a bundle, or a state that applied deltas up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPosition {
    /// Dataset.
    pub dataset: String,
    /// The seq already included.
    pub seq: u64,
    /// The digest the next delta must name as its parent.
    pub digest: String,
    /// The length of that parent object (0 for a bundle built from items).
    pub len: u64,
    /// Model fingerprint deltas must be built for.
    pub model_fingerprint: String,
    /// The newest db schema version this binary understands.
    pub max_schema_version: u32,
    /// What holds this position, for messages: "bundle DIR", "state dir version NAME"
    /// (empty: "this position").
    #[serde(default)]
    pub holder: String,
}

impl ChainPosition {
    /// The position after `seq`, whose last object has `digest` and `len`, for a chain of
    /// `dataset` built for the model `model_fingerprint`; deltas of any db schema this binary
    /// knows continue it.
    pub fn new(dataset: &str, seq: u64, digest: &str, len: u64, model_fingerprint: &str) -> Self {
        ChainPosition {
            dataset: dataset.to_owned(),
            seq,
            digest: digest.to_owned(),
            len,
            model_fingerprint: model_fingerprint.to_owned(),
            max_schema_version: crate::db::migrate::SCHEMA_VERSION,
            holder: String::new(),
        }
    }

    /// The same position, saying in messages that `holder` holds it.
    pub fn held_by(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    /// Where a chain continues from a bundle.
    pub fn of_bundle(manifest: &Manifest) -> Self {
        Self::new(
            &manifest.dataset,
            manifest.seq,
            &manifest.chain_digest,
            manifest.chain_len,
            &manifest.model_fingerprint,
        )
        .held_by("the bundle")
    }
}

/// What a delta target's custom metadata says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaMeta {
    /// Its seq.
    pub seq: u64,
    /// The seq it follows.
    pub parent_seq: u64,
    /// The sha256 of the delta it follows, or the chain digest of the base.
    pub parent_digest: String,
    /// The length of the delta it follows (0 after a base built from items).
    pub parent_len: u64,
    /// Dataset.
    pub dataset: String,
    /// Model fingerprint it was built for.
    pub model_fingerprint: String,
    /// Db schema version it was built for.
    pub schema_version: u32,
    /// When it was published (seconds since the epoch).
    pub created_at: u64,
    /// Its record count.
    pub n_records: u64,
    /// When it was published, in milliseconds since the epoch (0 in metadata written before
    /// this field): what freshness is measured from.
    #[serde(default)]
    pub published_at_ms: u64,
}

impl DeltaMeta {
    /// When it was published, in milliseconds since the epoch.
    pub fn published_ms(&self) -> u64 {
        if self.published_at_ms > 0 {
            self.published_at_ms
        } else {
            self.created_at * 1000
        }
    }

    /// What a delta's header says, as the custom metadata of its target.
    pub fn of_batch(batch: &DeltaBatch) -> Self {
        let h = &batch.header;
        DeltaMeta {
            seq: h.seq,
            parent_seq: h.parent_seq,
            parent_digest: h.parent_digest.clone(),
            parent_len: h.parent_len,
            dataset: h.dataset.clone(),
            model_fingerprint: h.model_fingerprint.clone(),
            schema_version: h.schema_version,
            created_at: h.created_at,
            n_records: h.n_records,
            published_at_ms: h.created_at * 1000,
        }
    }

    /// As a target's custom map.
    pub fn to_custom(&self) -> HashMap<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
            _ => HashMap::new(),
        }
    }
}

/// The name of the target holding delta `seq`.
pub fn delta_target_name(seq: u64) -> String {
    format!("{seq:012}.delta")
}

/// A delta target as verified metadata names it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaTarget {
    /// Its target name.
    pub name: String,
    /// Its sha256, hex: the digest the next delta names as its parent.
    pub digest: String,
    /// Its length.
    pub len: u64,
    /// Its custom metadata.
    pub meta: DeltaMeta,
}

/// A delta whose bytes were checked against its metadata and decoded.
#[derive(Debug, Clone)]
pub struct VerifiedDelta {
    /// Its seq.
    pub seq: u64,
    /// Its sha256, hex.
    pub digest: String,
    /// Its length.
    pub len: u64,
    /// Its header and records.
    pub batch: DeltaBatch,
}

/// Why a chain (or one delta) was refused. Each names the object and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The repository could not be read, or its metadata did not verify.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// A delta's bytes or metadata were refused.
    #[error("{object}: {reason}")]
    Refused {
        /// The target.
        object: String,
        /// Why.
        reason: String,
    },
    /// Another dataset or model than the bundle's (or the state dir version's).
    #[error("{}", binding_message(object, field, expected, found, holder))]
    Binding {
        /// The target.
        object: String,
        /// Which binding.
        field: &'static str,
        /// What the position has.
        expected: String,
        /// What the target has.
        found: String,
        /// What holds the position ("bundle DIR", "state dir version NAME").
        holder: String,
    },
    /// Built for a db layout newer than this binary knows.
    #[error(
        "{object}: built for db schema version {found}, newer than this binary's {supported}: \
         upgrade deltacache on this instance (the delta was not applied)"
    )]
    NewerSchema {
        /// The target.
        object: String,
        /// The delta's schema version.
        found: u32,
        /// The newest this binary knows.
        supported: u32,
    },
    /// The chain does not continue where this instance is.
    #[error("{object}: {message}")]
    Sequence {
        /// The target (or the repository).
        object: String,
        /// What is wrong.
        message: String,
    },
    /// The repository names no delta as new as this instance's data: it is behind (a
    /// replayed or wrong store).
    #[error(
        "the repository's newest delta is seq {newest}, older than this instance's seq {seq}: a replayed repository, or the wrong delta store for this bundle"
    )]
    Behind {
        /// The newest delta named.
        newest: u64,
        /// The instance's seq.
        seq: u64,
    },
}

impl ChainError {
    /// A short label, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ChainError::Trust(error) => error.reason(),
            ChainError::Behind { .. } => "rollback",
            _ => "refused",
        }
    }
}

/// `target`'s custom metadata as a `T` (`what`: whose metadata it should be, for the
/// refusal), refused by name unless its seq gives the target's name (`name_for`).
pub fn custom_of<T: serde::de::DeserializeOwned>(
    target: &TargetInfo,
    what: &str,
    seq_of: impl Fn(&T) -> u64,
    name_for: impl Fn(u64) -> String,
) -> Result<T, ChainError> {
    let custom = serde_json::Value::Object(target.custom.clone().into_iter().collect());
    let meta: T = serde_json::from_value(custom).map_err(|e| ChainError::Refused {
        object: target.name.clone(),
        reason: format!("its custom metadata is not {what}: {e}"),
    })?;
    let seq = seq_of(&meta);
    if target.name != name_for(seq) {
        return Err(ChainError::Refused {
            object: target.name.clone(),
            reason: format!("its metadata places it at seq {seq}"),
        });
    }
    Ok(meta)
}

/// The delta targets among `targets`, by seq (other targets, such as a fleet policy, are not
/// deltas). A `.delta` target whose custom metadata does not parse is refused by name.
pub fn delta_targets(targets: &[TargetInfo]) -> Result<Vec<DeltaTarget>, ChainError> {
    let mut deltas = Vec::new();
    for target in targets.iter().filter(|t| t.name.ends_with(".delta")) {
        let meta: DeltaMeta = custom_of(
            target,
            "a delta's",
            |m: &DeltaMeta| m.seq,
            delta_target_name,
        )?;
        deltas.push(DeltaTarget {
            name: target.name.clone(),
            digest: target.sha256.clone(),
            len: target.length,
            meta,
        });
    }
    deltas.sort_by_key(|d| d.meta.seq);
    Ok(deltas)
}

/// The deltas that continue `position`, in apply order, after checking the whole chain's
/// metadata: the delta at the position's seq (if the repository has one) is the one the
/// position holds; the ones after it are contiguous, each naming its predecessor; every one
/// is of this dataset, model and a schema this binary knows. Nothing is downloaded.
pub fn plan(
    deltas: &[DeltaTarget],
    position: &ChainPosition,
) -> Result<Vec<DeltaTarget>, ChainError> {
    let newest = deltas.last().map_or(0, |d| d.meta.seq);
    if newest < position.seq {
        return Err(ChainError::Behind {
            newest,
            seq: position.seq,
        });
    }
    if let Some(same) = deltas.iter().find(|d| d.meta.seq == position.seq)
        && same.digest != position.digest
    {
        return Err(ChainError::Sequence {
            object: same.name.clone(),
            message: format!(
                "this instance holds seq {} with digest {}, but the repository names {}: the chain forked",
                position.seq, position.digest, same.digest
            ),
        });
    }
    let mut planned = Vec::new();
    let (mut seq, mut digest, mut len) = (position.seq, position.digest.clone(), position.len);
    for delta in deltas.iter().filter(|d| d.meta.seq > position.seq) {
        check_meta(delta, position)?;
        if delta.meta.seq != seq + 1 {
            return Err(ChainError::Sequence {
                object: delta.name.clone(),
                message: format!(
                    "seq gap: seq {} follows seq {seq}, so seqs {}..{} are missing",
                    delta.meta.seq,
                    seq + 1,
                    delta.meta.seq
                ),
            });
        }
        if delta.meta.parent_seq != seq
            || delta.meta.parent_digest != digest
            || delta.meta.parent_len != len
        {
            return Err(ChainError::Sequence {
                object: delta.name.clone(),
                message: format!(
                    "its parent is seq {} digest {}, but it must follow seq {seq} digest {digest}",
                    delta.meta.parent_seq, delta.meta.parent_digest
                ),
            });
        }
        (seq, digest, len) = (delta.meta.seq, delta.digest.clone(), delta.len);
        planned.push(delta.clone());
    }
    Ok(planned)
}

fn check_meta(delta: &DeltaTarget, position: &ChainPosition) -> Result<(), ChainError> {
    let binding = |field: &'static str, expected: &str, found: &str| {
        if expected == found {
            Ok(())
        } else {
            Err(ChainError::Binding {
                object: delta.name.clone(),
                field,
                expected: expected.to_owned(),
                found: found.to_owned(),
                holder: position.holder.clone(),
            })
        }
    };
    binding("dataset", &position.dataset, &delta.meta.dataset)?;
    binding(
        "model fingerprint",
        &position.model_fingerprint,
        &delta.meta.model_fingerprint,
    )?;
    if delta.meta.schema_version > position.max_schema_version {
        return Err(ChainError::NewerSchema {
            object: delta.name.clone(),
            found: delta.meta.schema_version,
            supported: position.max_schema_version,
        });
    }
    Ok(())
}

/// The message of [`ChainError::Binding`]: what the store's chain and the bundle (or
/// version) each have, and the one thing that fixes it.
fn binding_message(object: &str, field: &str, expected: &str, found: &str, holder: &str) -> String {
    let holder = if holder.is_empty() {
        "this position"
    } else {
        holder
    };
    let short = |f: &str| f[..16.min(f.len())].to_owned();
    match field {
        "dataset" => format!(
            "{object}: the delta store's chain is of dataset {found:?}, but {holder} has dataset {expected:?}: build the bundle again with `build-base --dataset {found}` (deltas continue only a bundle of the dataset their chain started with), or point --store at the store of dataset {expected:?}"
        ),
        "model fingerprint" => format!(
            "{object}: the delta store's chain is of model {}, but {holder} has model {}: pass --bundle with the bundle the chain started from, or one `deltacache compact` made from it (its manifest.json has \"model_fingerprint\": \"{found}\"); a build with other --max-features, --stop-words or --sklearn-model, or of other items, has another model",
            short(found),
            short(expected)
        ),
        _ => format!("{object}: built for {field} {found:?}, but {holder} has {expected:?}"),
    }
}

/// Decodes a delta's bytes (already checked against its length and sha256 by the TUF
/// client) within `max_records_bytes`, and checks that its header says what its metadata
/// says.
pub fn verify_delta(
    bytes: &[u8],
    target: &DeltaTarget,
    max_records_bytes: u64,
) -> Result<VerifiedDelta, ChainError> {
    let refused = |reason: DeltaError| ChainError::Refused {
        object: target.name.clone(),
        reason: reason.to_string(),
    };
    let body = delta_body(bytes).map_err(refused)?;
    let batch = DeltaBatch::parse_within(body, max_records_bytes).map_err(refused)?;
    let mut from_header = DeltaMeta::of_batch(&batch);
    // Its publish time and record count are informational; the rest binds.
    from_header.created_at = target.meta.created_at;
    from_header.n_records = target.meta.n_records;
    from_header.published_at_ms = target.meta.published_at_ms;
    if from_header != target.meta {
        return Err(ChainError::Refused {
            object: target.name.clone(),
            reason: format!(
                "its header says {from_header:?} but its metadata says {:?}",
                target.meta
            ),
        });
    }
    Ok(VerifiedDelta {
        seq: target.meta.seq,
        digest: target.digest.clone(),
        len: target.len,
        batch,
    })
}
