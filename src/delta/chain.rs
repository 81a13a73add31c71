//! Walking and checking a delta chain: the head, then each delta back to where a state
//! (or a bundle) already is, in the fixed order size cap → signature → digest → parse →
//! chain checks.

use serde::{Deserialize, Serialize};

use super::format::{
    DeltaBatch, DeltaHeader, Head, MAX_HEAD_BYTES, ObjectKind, VerifyError, verify_object,
};
use super::keys::TrustedKeys;
use crate::bundle::Manifest;
use crate::delta_store::{DeltaStore, FetchError, delta_name};

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
        }
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
    }
}

/// A head whose signature, freshness and binding were checked.
#[derive(Debug, Clone)]
pub struct VerifiedHead {
    /// The head's contents.
    pub head: Head,
    /// sha256 of the head object.
    pub digest: String,
    /// The store's tag for conditional replacement.
    pub etag: String,
}

/// A delta whose signature, digest, parse and chain links were checked.
#[derive(Debug, Clone)]
pub struct VerifiedDelta {
    /// Its seq.
    pub seq: u64,
    /// sha256 of the delta object.
    pub digest: String,
    /// Length of the delta object.
    pub len: u64,
    /// Who signed it.
    pub key_id: String,
    /// Its header and records.
    pub batch: DeltaBatch,
}

/// Why a head or chain was refused. Each names the object and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The store could not be read.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// An object failed verification.
    #[error("{object}: {reason}")]
    Refused {
        /// Object name.
        object: String,
        /// Why.
        reason: VerifyError,
    },
    /// The head has expired: it may be frozen or replayed.
    #[error(
        "head: expired at {expires_at} (now {now}); the publisher must publish or re-sign the head"
    )]
    Expired {
        /// Expiry time.
        expires_at: u64,
        /// Now.
        now: u64,
    },
    /// The head is older than one already accepted.
    #[error(
        "head: seq {seq} issued at {issued_at} is older than the head already accepted (seq {seen_seq} issued at {seen_issued_at}): refusing a rollback"
    )]
    Rollback {
        /// Offered seq.
        seq: u64,
        /// Offered issue time.
        issued_at: u64,
        /// Accepted seq.
        seen_seq: u64,
        /// Accepted issue time.
        seen_issued_at: u64,
    },
    /// An object the chain names is missing.
    #[error("{object}: missing from the delta store; the chain is broken")]
    Missing {
        /// Object name.
        object: String,
    },
    /// Another dataset, model or schema than the state's.
    #[error("{object}: built for {field} {found:?}, but this state has {expected:?}")]
    Binding {
        /// Object name.
        object: String,
        /// Which binding.
        field: &'static str,
        /// What the state has.
        expected: String,
        /// What the object has.
        found: String,
    },
    /// Built for a db layout newer than this binary knows.
    #[error(
        "{object}: built for db schema version {found}, newer than this binary's {supported}: \
         upgrade deltacache on this instance (the delta was not applied; the last good version keeps serving)"
    )]
    NewerSchema {
        /// Object name.
        object: String,
        /// The delta's schema version.
        found: u32,
        /// The newest this binary knows.
        supported: u32,
    },
    /// A seq out of line.
    #[error("{object}: {message}")]
    Sequence {
        /// Object name.
        object: String,
        /// What is wrong.
        message: String,
    },
    /// A parent digest that does not match.
    #[error(
        "{object}: parent digest {found} does not match {expected}, the digest of what it must follow"
    )]
    ParentMismatch {
        /// Object name.
        object: String,
        /// What the state or previous delta has.
        expected: String,
        /// What the delta names.
        found: String,
    },
}

/// Reads and verifies the head: cap, signature, parse, binding, freshness, watermark.
/// `Ok(None)` when no head has been published yet.
pub async fn fetch_head(
    store: &DeltaStore,
    trusted: &TrustedKeys,
    position: &ChainPosition,
    not_older_than: Option<(u64, u64)>,
    now: u64,
    allow_expired: bool,
) -> Result<Option<VerifiedHead>, ChainError> {
    let Some(fetched) = store.get_head(MAX_HEAD_BYTES).await? else {
        return Ok(None);
    };
    let head = verify_head_bytes(
        &fetched.bytes,
        trusted,
        position,
        not_older_than,
        now,
        allow_expired,
    )?;
    Ok(Some(VerifiedHead {
        head: head.0,
        digest: head.1,
        etag: fetched.etag,
    }))
}

/// The checks of [`fetch_head`] on bytes already fetched. `not_older_than` is the (seq, issue
/// time) of the highest head already accepted: an older one is a rollback.
pub fn verify_head_bytes(
    bytes: &[u8],
    trusted: &TrustedKeys,
    position: &ChainPosition,
    not_older_than: Option<(u64, u64)>,
    now: u64,
    allow_expired: bool,
) -> Result<(Head, String), ChainError> {
    let refused = |reason| ChainError::Refused {
        object: "head".into(),
        reason,
    };
    let verified =
        verify_object(bytes, ObjectKind::Head, MAX_HEAD_BYTES, None, trusted).map_err(refused)?;
    let head = Head::parse(verified.body).map_err(refused)?;
    check_binding("head", "dataset", &position.dataset, &head.dataset)?;
    check_binding(
        "head",
        "model fingerprint",
        &position.model_fingerprint,
        &head.model_fingerprint,
    )?;
    if !allow_expired && head.expires_at <= now {
        return Err(ChainError::Expired {
            expires_at: head.expires_at,
            now,
        });
    }
    if let Some((seen_seq, seen_issued_at)) = not_older_than
        && (head.seq, head.issued_at) < (seen_seq, seen_issued_at)
    {
        return Err(ChainError::Rollback {
            seq: head.seq,
            issued_at: head.issued_at,
            seen_seq,
            seen_issued_at,
        });
    }
    Ok((head, verified.digest))
}

fn check_binding(
    object: &str,
    field: &'static str,
    expected: &str,
    found: &str,
) -> Result<(), ChainError> {
    if expected != found {
        return Err(ChainError::Binding {
            object: object.to_owned(),
            field,
            expected: expected.to_owned(),
            found: found.to_owned(),
        });
    }
    Ok(())
}

/// What one delta may cost: its size as stored, and its records decoded (memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaLimits {
    /// The largest delta object accepted.
    pub max_delta_bytes: u64,
    /// The largest decoded record payload accepted (the memory one delta may take).
    pub max_records_bytes: u64,
}

impl DeltaLimits {
    /// Limits with `max_delta_bytes` and the largest record payload the format allows.
    pub fn new(max_delta_bytes: u64) -> Self {
        DeltaLimits {
            max_delta_bytes,
            max_records_bytes: super::format::MAX_RECORDS_BYTES,
        }
    }
}

/// One delta of a chain, by what names it: placed at `seq`, with this digest and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    /// Its seq.
    pub seq: u64,
    /// sha256 of the delta object.
    pub digest: String,
    /// Length of the delta object.
    pub len: u64,
}

/// Verifies one delta's bytes against what its successor (or the head) states.
pub fn verify_delta_bytes(
    bytes: &[u8],
    seq: u64,
    digest: &str,
    stated_len: u64,
    max_delta_bytes: u64,
    trusted: &TrustedKeys,
    position: &ChainPosition,
) -> Result<VerifiedDelta, ChainError> {
    let link = ChainLink {
        seq,
        digest: digest.to_owned(),
        len: stated_len,
    };
    verify_delta_within(
        bytes,
        &link,
        DeltaLimits::new(max_delta_bytes),
        trusted,
        position,
    )
}

/// Verifies one delta's bytes against its link, decoding its records within `limits`.
pub fn verify_delta_within(
    bytes: &[u8],
    link: &ChainLink,
    limits: DeltaLimits,
    trusted: &TrustedKeys,
    position: &ChainPosition,
) -> Result<VerifiedDelta, ChainError> {
    let (verified, _) = verify_delta_header(bytes, link, limits, trusted, position)?;
    let batch =
        DeltaBatch::parse_within(verified.body, limits.max_records_bytes).map_err(|reason| {
            ChainError::Refused {
                object: delta_name(link.seq, &link.digest),
                reason,
            }
        })?;
    Ok(VerifiedDelta {
        seq: link.seq,
        digest: verified.digest,
        len: bytes.len() as u64,
        key_id: verified.key_id.to_string(),
        batch,
    })
}

/// The checks of a delta that need only its header: cap, signature, digest, binding, seq.
fn verify_delta_header<'a>(
    bytes: &'a [u8],
    link: &ChainLink,
    limits: DeltaLimits,
    trusted: &TrustedKeys,
    position: &ChainPosition,
) -> Result<(super::format::VerifiedObject<'a>, DeltaHeader), ChainError> {
    let (seq, digest) = (link.seq, link.digest.as_str());
    let object = delta_name(seq, digest);
    let refused = |reason| ChainError::Refused {
        object: object.clone(),
        reason,
    };
    let cap = link.len.min(limits.max_delta_bytes);
    let verified =
        verify_object(bytes, ObjectKind::Delta, cap, Some(digest), trusted).map_err(refused)?;
    let (header, _) = DeltaBatch::parse_header(verified.body).map_err(refused)?;
    check_binding(&object, "dataset", &position.dataset, &header.dataset)?;
    check_binding(
        &object,
        "model fingerprint",
        &position.model_fingerprint,
        &header.model_fingerprint,
    )?;
    if header.schema_version > position.max_schema_version {
        return Err(ChainError::NewerSchema {
            object,
            found: header.schema_version,
            supported: position.max_schema_version,
        });
    }
    if header.seq != seq {
        return Err(ChainError::Sequence {
            object,
            message: format!(
                "claims seq {} but the chain places it at seq {seq}",
                header.seq
            ),
        });
    }
    if header.records_len > limits.max_records_bytes {
        return Err(refused(VerifyError::OverBudget {
            records_len: header.records_len,
            budget: limits.max_records_bytes,
        }));
    }
    Ok((verified, header))
}

/// The deltas after `position` up to the head, oldest first, found by walking back from the
/// head by parent digests. Each delta is fetched and its header verified (signature, digest,
/// binding, seq, parent link), then dropped: memory holds one delta at a time. Apply them
/// with [`fetch_link`], which fetches each again and checks it against its digest.
pub async fn plan_chain(
    store: &DeltaStore,
    trusted: &TrustedKeys,
    head: &Head,
    position: &ChainPosition,
    limits: DeltaLimits,
) -> Result<Vec<ChainLink>, ChainError> {
    if head.seq <= position.seq {
        check_same_position(head, position)?;
        return Ok(Vec::new());
    }
    let mut links = Vec::new();
    let mut link = ChainLink {
        seq: head.seq,
        digest: head.delta_digest.clone(),
        len: head.delta_len,
    };
    loop {
        let object = delta_name(link.seq, &link.digest);
        let bytes = store
            .get_delta(link.seq, &link.digest, link.len.min(limits.max_delta_bytes))
            .await?
            .ok_or_else(|| ChainError::Missing {
                object: object.clone(),
            })?;
        let (_, header) = verify_delta_header(&bytes, &link, limits, trusted, position)?;
        check_parent_seq(&object, header.parent_seq, link.seq)?;
        let next = ChainLink {
            seq: header.parent_seq,
            digest: header.parent_digest.clone(),
            len: header.parent_len,
        };
        links.push(link);
        if header.parent_seq <= position.seq {
            if header.parent_seq != position.seq || header.parent_digest != position.digest {
                return Err(ChainError::ParentMismatch {
                    object,
                    expected: position.digest.clone(),
                    found: header.parent_digest,
                });
            }
            break;
        }
        link = next;
    }
    links.reverse();
    Ok(links)
}

/// Fetches and fully verifies one planned delta.
pub async fn fetch_link(
    store: &DeltaStore,
    trusted: &TrustedKeys,
    link: &ChainLink,
    position: &ChainPosition,
    limits: DeltaLimits,
) -> Result<VerifiedDelta, ChainError> {
    let bytes = store
        .get_delta(link.seq, &link.digest, link.len.min(limits.max_delta_bytes))
        .await?
        .ok_or_else(|| ChainError::Missing {
            object: delta_name(link.seq, &link.digest),
        })?;
    verify_delta_within(&bytes, link, limits, trusted, position)
}

/// A head at (or before) the position must name what the position already has.
fn check_same_position(head: &Head, position: &ChainPosition) -> Result<(), ChainError> {
    if head.seq == position.seq && head.delta_digest != position.digest {
        return Err(ChainError::ParentMismatch {
            object: "head".into(),
            expected: position.digest.clone(),
            found: head.delta_digest.clone(),
        });
    }
    Ok(())
}

/// Fetches and verifies every delta after `position` up to the head, walking back from the
/// head by parent digests. Returned in apply order (oldest first). Every delta is held in
/// memory; each is capped at the length its successor states and `max_delta_bytes`.
pub async fn fetch_chain(
    store: &DeltaStore,
    trusted: &TrustedKeys,
    head: &Head,
    position: &ChainPosition,
    max_delta_bytes: u64,
) -> Result<Vec<VerifiedDelta>, ChainError> {
    if head.seq <= position.seq {
        check_same_position(head, position)?;
        return Ok(Vec::new());
    }
    let chain = walk(store, trusted, head, position, max_delta_bytes, |header| {
        header.parent_seq <= position.seq
    })
    .await?;
    if let Some(first) = chain.first() {
        let header = &first.batch.header;
        if header.parent_seq != position.seq || header.parent_digest != position.digest {
            return Err(ChainError::ParentMismatch {
                object: delta_name(first.seq, &first.digest),
                expected: position.digest.clone(),
                found: header.parent_digest.clone(),
            });
        }
    }
    Ok(chain)
}

/// What `verify` found: the head and every delta back to the bundle (or to the base the
/// chain starts from).
#[derive(Debug, Clone)]
pub struct ChainReport {
    /// The verified head, if the store has one.
    pub head: Option<VerifiedHead>,
    /// Every delta, oldest first.
    pub deltas: Vec<VerifiedDelta>,
    /// Seq and digest of what the oldest delta follows.
    pub base: (u64, String),
}

/// Verifies a whole chain: the head (including expiry) and every delta back to `position`
/// when given (a bundle), or otherwise back to the first delta after a base.
pub async fn verify_chain(
    store: &DeltaStore,
    trusted: &TrustedKeys,
    position: Option<&ChainPosition>,
    max_delta_bytes: u64,
    now: u64,
) -> Result<ChainReport, ChainError> {
    let Some(fetched) = store.get_head(MAX_HEAD_BYTES).await? else {
        return Ok(ChainReport {
            head: None,
            deltas: Vec::new(),
            base: (position.map_or(0, |p| p.seq), String::new()),
        });
    };
    // Without a bundle the head's own dataset and model are the binding every delta must share.
    let unverified_binding;
    let binding = match position {
        Some(position) => position,
        None => {
            let verified = verify_object(
                &fetched.bytes,
                ObjectKind::Head,
                MAX_HEAD_BYTES,
                None,
                trusted,
            )
            .map_err(|reason| ChainError::Refused {
                object: "head".into(),
                reason,
            })?;
            let head = Head::parse(verified.body).map_err(|reason| ChainError::Refused {
                object: "head".into(),
                reason,
            })?;
            unverified_binding =
                ChainPosition::new(&head.dataset, 0, "", 0, &head.model_fingerprint);
            &unverified_binding
        }
    };
    let (head, digest) = verify_head_bytes(&fetched.bytes, trusted, binding, None, now, false)?;
    let head = VerifiedHead {
        head,
        digest,
        etag: fetched.etag,
    };
    let deltas = match position {
        Some(position) => {
            fetch_chain(store, trusted, &head.head, position, max_delta_bytes).await?
        }
        None => {
            walk(
                store,
                trusted,
                &head.head,
                binding,
                max_delta_bytes,
                |header| header.parent_len == 0,
            )
            .await?
        }
    };
    let base = match deltas.first() {
        Some(first) => (
            first.batch.header.parent_seq,
            first.batch.header.parent_digest.clone(),
        ),
        None => (head.head.seq, head.head.delta_digest.clone()),
    };
    Ok(ChainReport {
        head: Some(head),
        deltas,
        base,
    })
}

/// Walks back from the head by parent digests, verifying each delta, until `stop` says the
/// delta just read is the oldest wanted. Returns the deltas oldest first.
async fn walk(
    store: &DeltaStore,
    trusted: &TrustedKeys,
    head: &Head,
    binding: &ChainPosition,
    max_delta_bytes: u64,
    stop: impl Fn(&super::format::DeltaHeader) -> bool,
) -> Result<Vec<VerifiedDelta>, ChainError> {
    let mut chain = Vec::new();
    let (mut seq, mut digest, mut len) = (head.seq, head.delta_digest.clone(), head.delta_len);
    loop {
        let object = delta_name(seq, &digest);
        let bytes = store
            .get_delta(seq, &digest, len.min(max_delta_bytes))
            .await?
            .ok_or_else(|| ChainError::Missing {
                object: object.clone(),
            })?;
        let delta =
            verify_delta_bytes(&bytes, seq, &digest, len, max_delta_bytes, trusted, binding)?;
        let header = &delta.batch.header;
        check_parent_seq(&object, header.parent_seq, seq)?;
        let done = stop(header);
        let next = (
            header.parent_seq,
            header.parent_digest.clone(),
            header.parent_len,
        );
        chain.push(delta);
        if done {
            break;
        }
        (seq, digest, len) = next;
    }
    chain.reverse();
    Ok(chain)
}

fn check_parent_seq(object: &str, parent_seq: u64, seq: u64) -> Result<(), ChainError> {
    if parent_seq >= seq {
        return Err(ChainError::Sequence {
            object: object.to_owned(),
            message: format!("duplicate seq: it follows seq {parent_seq}, not an earlier one"),
        });
    }
    if parent_seq + 1 != seq {
        return Err(ChainError::Sequence {
            object: object.to_owned(),
            message: format!(
                "seq gap: it follows seq {parent_seq}, so seqs {}..{seq} are missing",
                parent_seq + 1
            ),
        });
    }
    Ok(())
}
