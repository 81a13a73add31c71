//! The delta store format before the repository was a TUF repository, read only to adopt
//! such a store (`deltacache repo init --adopt-trusted-keys`): a signed `head` naming the
//! newest delta, and `deltas/<seq>-<sha256>.delta` objects in a signed framing, each naming
//! its parent by digest, verified against a trusted-keys file of `.pub` lines.
//!
//! ```text
//! offset  size   field
//! 0       8      magic "DCSIGNED"
//! 8       2      format version (u16 LE) = 1
//! 10      1      kind: 1 = delta, 2 = head
//! 11      1      reserved, 0
//! 12      8      key id (first 8 bytes of sha256 of the signer's public key)
//! 20      8      body length (u64 LE)
//! 28      n      body
//! 28+n    64     Ed25519 signature over bytes [0, 28+n)
//! ```
//! Signatures are checked with `verify_strict`; weak keys are refused when loaded.

use std::path::Path;

use anyhow::{Context, bail};
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::format::DeltaBatch;
use crate::delta_store::DeltaStore;

/// Magic number of every signed object of the earlier format.
pub const MAGIC: &[u8; 8] = b"DCSIGNED";
const HEADER_LEN: usize = 28;
const SIGNATURE_LEN: usize = 64;
const PUBLIC_PREFIX: &str = "deltacache-ed25519";
const MAX_HEAD_BYTES: u64 = 64 * 1024;

/// The keys a store of the earlier format was signed with: `.pub` lines, id → key.
#[derive(Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<([u8; 8], VerifyingKey)>,
}

fn key_id(key: &VerifyingKey) -> [u8; 8] {
    let digest = Sha256::digest(key.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

impl TrustedKeys {
    /// Loads a trusted-keys file; weak keys and ids that do not match their keys are refused.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read trusted keys {}", path.display()))?;
        let mut keys = TrustedKeys::default();
        for (line_idx, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(&PUBLIC_PREFIX), Some(hex_key)) = (fields.first(), fields.get(1)) else {
                bail!(
                    "{} line {}: expected `{PUBLIC_PREFIX} <hex key> <key id>`",
                    path.display(),
                    line_idx + 1
                );
            };
            let bytes: [u8; 32] = hex::decode(hex_key)
                .ok()
                .and_then(|b| b.try_into().ok())
                .with_context(|| format!("{} line {}: not a key", path.display(), line_idx + 1))?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|_| {
                anyhow::anyhow!("{} line {}: not a key", path.display(), line_idx + 1)
            })?;
            if key.is_weak() {
                bail!("{} line {}: weak public key", path.display(), line_idx + 1);
            }
            if let Some(id) = fields.get(2)
                && *id != hex::encode(key_id(&key))
            {
                bail!(
                    "{} line {}: key id {id} does not match the key",
                    path.display(),
                    line_idx + 1
                );
            }
            keys.keys.push((key_id(&key), key));
        }
        if keys.keys.is_empty() {
            bail!("trusted keys {} holds no key", path.display());
        }
        Ok(keys)
    }
}

/// The body inside a signed object's framing (its signature is not checked here: the TUF
/// metadata naming the object pins its bytes).
pub fn unwrap_body(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < HEADER_LEN + SIGNATURE_LEN {
        return Err("shorter than its framing".into());
    }
    let body_len = u64::from_le_bytes(bytes[20..28].try_into().expect("8 bytes")) as usize;
    if HEADER_LEN
        .checked_add(body_len)
        .and_then(|n| n.checked_add(SIGNATURE_LEN))
        != Some(bytes.len())
    {
        return Err("its framing's body length does not add up".into());
    }
    Ok(&bytes[HEADER_LEN..HEADER_LEN + body_len])
}

/// Verifies a signed object of `kind` (1 delta, 2 head) and returns its body.
fn verify<'a>(
    bytes: &'a [u8],
    kind: u8,
    trusted: &TrustedKeys,
    what: &str,
) -> anyhow::Result<&'a [u8]> {
    let body = unwrap_body(bytes).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    let signed_len = bytes.len() - SIGNATURE_LEN;
    let id: [u8; 8] = bytes[12..20].try_into().expect("8 bytes");
    let key = trusted
        .keys
        .iter()
        .find(|(k, _)| *k == id)
        .map(|(_, key)| key)
        .with_context(|| {
            format!(
                "{what}: signed by key {}, which is not in the trusted keys",
                hex::encode(id)
            )
        })?;
    let signature =
        ed25519_dalek::Signature::from_bytes(bytes[signed_len..].try_into().expect("64 bytes"));
    key.verify_strict(&bytes[..signed_len], &signature)
        .map_err(|_| anyhow::anyhow!("{what}: the signature does not verify"))?;
    if &bytes[..8] != MAGIC || bytes[8..10] != [1, 0] || bytes[10] != kind {
        bail!("{what}: not a signed object of the expected kind");
    }
    Ok(body)
}

#[derive(Deserialize)]
struct Head {
    dataset: String,
    seq: u64,
    delta_digest: String,
    delta_len: u64,
    model_fingerprint: String,
}

/// One delta of an earlier-format chain: its exact bytes (which the TUF repository will
/// name, so instances that applied it keep their chain digests) and its decoded batch.
pub struct LegacyDelta {
    /// Its bytes, as stored.
    pub bytes: Vec<u8>,
    /// Its sha256, hex.
    pub digest: String,
    /// Its header and records.
    pub batch: DeltaBatch,
}

/// Reads and verifies the whole earlier-format chain of `store`: the head, then each delta
/// back to the first by parent digests. Oldest first; empty when the store has no head.
pub async fn read_chain(
    store: &DeltaStore,
    trusted: &TrustedKeys,
) -> anyhow::Result<Vec<LegacyDelta>> {
    let Some(head) = store.get("head", MAX_HEAD_BYTES).await? else {
        return Ok(Vec::new());
    };
    let head: Head = serde_json::from_slice(verify(&head.bytes, 2, trusted, "head")?)
        .context("parse the head")?;
    let mut chain = Vec::new();
    let (mut seq, mut digest, mut len) = (head.seq, head.delta_digest, head.delta_len);
    loop {
        let name = format!("deltas/{seq:012}-{digest}.delta");
        let bytes = store
            .get(&name, len)
            .await?
            .with_context(|| format!("{name} is missing: the chain is broken"))?
            .bytes;
        if crate::digest::sha256_hex(&bytes) != digest {
            bail!("{name}: its digest does not match the name its successor gives it");
        }
        let body = verify(&bytes, 1, trusted, &name)?;
        let batch = DeltaBatch::parse(body).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let header = &batch.header;
        if header.seq != seq
            || header.dataset != head.dataset
            || header.model_fingerprint != head.model_fingerprint
        {
            bail!("{name}: its header does not match the chain (seq, dataset or model)");
        }
        let parent = (
            header.parent_seq,
            header.parent_digest.clone(),
            header.parent_len,
        );
        chain.push(LegacyDelta {
            bytes,
            digest,
            batch,
        });
        if parent.2 == 0 || parent.0 == 0 {
            break;
        }
        (seq, digest, len) = parent;
    }
    chain.reverse();
    Ok(chain)
}
