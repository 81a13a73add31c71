//! The signed object format shared by deltas and heads, and their bodies.
//!
//! ```text
//! offset  size      field
//! 0       8         magic "DCSIGNED"
//! 8       2         format version (u16 LE) = 1
//! 10      1         kind: 1 = delta, 2 = head
//! 11      1         reserved, 0
//! 12      8         key id (first 8 bytes of sha256 of the signer's public key)
//! 20      8         body length (u64 LE)
//! 28      n         body
//! 28+n    64        Ed25519 signature over bytes [0, 28+n)
//! ```
//!
//! The signature covers everything before it, the kind byte included, so a head can never
//! pass as a delta or the reverse. The digest of an object is the sha256 of all its bytes.
//!
//! Verification order is fixed ([`verify_object`]): size cap, then the signature over the raw
//! bytes, then the digest, and only then is anything parsed. The only bytes read before the
//! signature check are the framing needed to find the signature and the key id that selects
//! the key; neither is trusted until the signature verifies.
//!
//! Head body: JSON `{"dataset","seq","delta_digest","delta_len","model_fingerprint",
//! "issued_at","expires_at"}`.
//! Delta body: `u32 LE header length | header JSON | zstd frame of JSONL records`, where the
//! header is [`DeltaHeader`] and each record is `{"op":"put","item":{...}}` or
//! `{"op":"delete","id":"..."}`.

use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::keys::{KeyId, PublisherKey, TrustedKeys};

/// Magic number of every signed object.
pub const MAGIC: &[u8; 8] = b"DCSIGNED";
/// The signed object format version this binary writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 28;
/// Bytes of the signature after the body.
pub const SIGNATURE_LEN: usize = 64;
/// The largest head accepted.
pub const MAX_HEAD_BYTES: u64 = 64 * 1024;
/// The largest delta accepted by default (`--max-delta-bytes` changes it).
pub const DEFAULT_MAX_DELTA_BYTES: u64 = 512 * 1024 * 1024;
/// The largest decompressed record payload accepted at all. What one sync accepts is the
/// smaller memory budget it is given ([`DeltaBatch::parse_within`]); no ratio to the
/// compressed size is imposed, since catalogues of near-identical items compress far more
/// than any fixed ratio (a publisher could otherwise sign a delta no instance accepts).
pub const MAX_RECORDS_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// What a signed object claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A delta batch.
    Delta = 1,
    /// The head pointer.
    Head = 2,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Delta => "delta",
            ObjectKind::Head => "head",
        })
    }
}

/// Why a signed object was refused. Callers branch on these (sync reports the reason,
/// tests assert it), so each is its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Larger than the cap allowed for it.
    #[error("{len} bytes is over the {cap}-byte cap for a {kind}")]
    Oversize {
        /// What was expected.
        kind: ObjectKind,
        /// Its length.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// Too short, or its framing does not add up.
    #[error("truncated or malformed framing ({0})")]
    Truncated(String),
    /// Signed by a key that is not trusted.
    #[error("signed by key {0}, which is not in the trusted keys")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the signature does not verify (tampered, or signed by another key with the same id)")]
    BadSignature,
    /// Its digest is not the one the head or chain states.
    #[error("digest {actual} does not match the expected {expected}")]
    DigestMismatch {
        /// Expected digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// A valid signed object of the other kind.
    #[error("is a signed {actual}, not a {expected}")]
    WrongKind {
        /// What was expected.
        expected: ObjectKind,
        /// What it is.
        actual: ObjectKind,
    },
    /// Its records decode to more bytes than the memory budget allows.
    #[error(
        "its records decode to {records_len} bytes, over the memory budget of {budget} bytes: raise apply-memory-budget or publish smaller deltas"
    )]
    OverBudget {
        /// Decoded size the header states.
        records_len: u64,
        /// The budget.
        budget: u64,
    },
    /// Signed, but its contents do not parse.
    #[error("signed contents do not parse: {0}")]
    Malformed(String),
}

/// A signed object whose signature verified: its digest, signer, kind and body.
#[derive(Debug, Clone)]
pub struct VerifiedObject<'a> {
    /// sha256 of the whole object, hex.
    pub digest: String,
    /// The key that signed it.
    pub key_id: KeyId,
    /// The body bytes (a slice of the verified bytes: the very bytes that were checked).
    pub body: &'a [u8],
}

/// Signs `body` as an object of `kind`.
pub fn sign_object(kind: ObjectKind, body: &[u8], key: &PublisherKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + SIGNATURE_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&key.id().0);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let signature = key.sign(&out);
    out.extend_from_slice(&signature.to_bytes());
    out
}

/// Verifies a signed object in the fixed order: size cap → signature → digest → parse of
/// the header fields. `expected_digest` is the digest the head or chain states, if known.
// long: the checks read top to bottom in the order they must run; split, the order would no
// longer be visible in one place.
pub fn verify_object<'a>(
    bytes: &'a [u8],
    expected: ObjectKind,
    cap: u64,
    expected_digest: Option<&str>,
    trusted: &TrustedKeys,
) -> Result<VerifiedObject<'a>, VerifyError> {
    // 1. Size cap.
    if bytes.len() as u64 > cap {
        return Err(VerifyError::Oversize {
            kind: expected,
            len: bytes.len() as u64,
            cap,
        });
    }
    // Framing: where the signature is, and which key to try.
    if bytes.len() < HEADER_LEN + SIGNATURE_LEN {
        return Err(VerifyError::Truncated(format!(
            "{} bytes is shorter than any signed object",
            bytes.len()
        )));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[20..28]);
    let body_len = u64::from_le_bytes(len_bytes);
    let expected_total = body_len.checked_add((HEADER_LEN + SIGNATURE_LEN) as u64);
    if expected_total != Some(bytes.len() as u64) {
        return Err(VerifyError::Truncated(format!(
            "body length field says {body_len} bytes but the object holds {}",
            bytes.len() - HEADER_LEN - SIGNATURE_LEN
        )));
    }
    let signed_len = bytes.len() - SIGNATURE_LEN;
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&bytes[12..20]);
    let key_id = KeyId(key_id);
    // 2. Signature over the raw bytes.
    let key = trusted
        .get(&key_id)
        .ok_or_else(|| VerifyError::UnknownKey(key_id.to_string()))?;
    let mut signature = [0u8; SIGNATURE_LEN];
    signature.copy_from_slice(&bytes[signed_len..]);
    let signature = ed25519_dalek::Signature::from_bytes(&signature);
    key.verify_strict(&bytes[..signed_len], &signature)
        .map_err(|_| VerifyError::BadSignature)?;
    // 3. Digest.
    let digest = crate::digest::sha256_hex(bytes);
    if let Some(expected_digest) = expected_digest
        && expected_digest != digest
    {
        return Err(VerifyError::DigestMismatch {
            expected: expected_digest.to_owned(),
            actual: digest,
        });
    }
    // 4. Parse the (now authenticated) header fields.
    if &bytes[..8] != MAGIC {
        return Err(VerifyError::Malformed("bad magic number".into()));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(VerifyError::Malformed(format!(
            "format version {version} is not supported by this binary (it reads {FORMAT_VERSION})"
        )));
    }
    let actual = match bytes[10] {
        1 => ObjectKind::Delta,
        2 => ObjectKind::Head,
        other => {
            return Err(VerifyError::Malformed(format!(
                "unknown object kind {other}"
            )));
        }
    };
    if actual != expected {
        return Err(VerifyError::WrongKind { expected, actual });
    }
    Ok(VerifiedObject {
        digest,
        key_id,
        body: &bytes[HEADER_LEN..signed_len],
    })
}

/// The head: the signed pointer to the newest delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// Dataset the chain belongs to.
    pub dataset: String,
    /// Seq of the newest delta.
    pub seq: u64,
    /// Digest of the newest delta object.
    pub delta_digest: String,
    /// Length of the newest delta object.
    pub delta_len: u64,
    /// Model fingerprint the chain is bound to.
    pub model_fingerprint: String,
    /// Seconds since the epoch when it was signed.
    pub issued_at: u64,
    /// Seconds since the epoch after which it is refused.
    pub expires_at: u64,
}

impl Head {
    /// Signs the head.
    pub fn sign(&self, key: &PublisherKey) -> Vec<u8> {
        let body = serde_json::to_vec(self).unwrap_or_default();
        sign_object(ObjectKind::Head, &body, key)
    }

    /// Parses a verified head body.
    pub fn parse(body: &[u8]) -> Result<Head, VerifyError> {
        serde_json::from_slice(body).map_err(|e| VerifyError::Malformed(format!("head: {e}")))
    }
}

/// What a delta says about itself, ahead of its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaHeader {
    /// Dataset it changes.
    pub dataset: String,
    /// Its sequence number.
    pub seq: u64,
    /// Seq of what it follows (the previous delta, or the base).
    pub parent_seq: u64,
    /// Digest of the previous delta object, or the chain digest of the base it follows.
    pub parent_digest: String,
    /// Length of the previous delta object (0 after a base).
    pub parent_len: u64,
    /// Seconds since the epoch when it was made.
    pub created_at: u64,
    /// Model fingerprint it was built for.
    pub model_fingerprint: String,
    /// Store schema version it was built for.
    pub schema_version: u32,
    /// Number of records.
    pub n_records: u64,
    /// Length of the decompressed records.
    pub records_len: u64,
}

/// One change.
#[derive(Debug, Clone)]
pub enum DeltaRecord {
    /// Insert or replace an item (its whole JSON, kept as written).
    Put {
        /// The item.
        item: Box<RawValue>,
    },
    /// Remove an item by id.
    Delete {
        /// The item's id.
        id: String,
    },
}

impl PartialEq for DeltaRecord {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (DeltaRecord::Put { item: a }, DeltaRecord::Put { item: b }) => a.get() == b.get(),
            (DeltaRecord::Delete { id: a }, DeltaRecord::Delete { id: b }) => a == b,
            _ => false,
        }
    }
}

/// A record line as written: `{"op": "put", "item": {...}}` or `{"op": "delete", "id": "..."}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordWire<'a> {
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    item: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<String>,
}

/// Why a record line was refused; each message says what a valid record looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not JSON, or not the record's shape.
    #[error("{0}")]
    Json(String),
    /// A put whose `item` is not an object.
    #[error("`item` of a put must be a JSON object")]
    ItemNotObject,
    /// A put with other fields than `op` and `item`.
    #[error("a put takes exactly `op` and `item` (the whole item object)")]
    BadPut,
    /// A delete with other fields than `op` and `id`.
    #[error("a delete takes exactly `op` and `id` (a string)")]
    BadDelete,
    /// Neither `put` nor `delete`.
    #[error("unknown op {0:?}: use \"put\" or \"delete\"")]
    UnknownOp(String),
}

impl DeltaRecord {
    /// Parses one record line (the same shape as a line of a changes file).
    pub fn from_json(line: &[u8]) -> Result<DeltaRecord, RecordError> {
        let wire: RecordWire<'_> =
            serde_json::from_slice(line).map_err(|e| RecordError::Json(e.to_string()))?;
        match (wire.op.as_ref(), wire.item, wire.id) {
            ("put", Some(item), None) => {
                if !item.get().trim_start().starts_with('{') {
                    return Err(RecordError::ItemNotObject);
                }
                Ok(DeltaRecord::Put {
                    item: item.to_owned(),
                })
            }
            ("delete", None, Some(id)) => Ok(DeltaRecord::Delete { id }),
            ("put", _, _) => Err(RecordError::BadPut),
            ("delete", _, _) => Err(RecordError::BadDelete),
            (other, _, _) => Err(RecordError::UnknownOp(other.to_owned())),
        }
    }

    /// Writes the record as one JSON line (without the newline).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            DeltaRecord::Put { item } => {
                out.extend_from_slice(b"{\"op\":\"put\",\"item\":");
                out.extend_from_slice(item.get().as_bytes());
                out.push(b'}');
            }
            DeltaRecord::Delete { id } => {
                out.extend_from_slice(b"{\"op\":\"delete\",\"id\":");
                out.extend_from_slice(serde_json::to_string(id).unwrap_or_default().as_bytes());
                out.push(b'}');
            }
        }
    }
}

/// A decoded delta: its header and records.
#[derive(Debug, Clone)]
pub struct DeltaBatch {
    /// The header.
    pub header: DeltaHeader,
    /// The records, in order.
    pub records: Vec<DeltaRecord>,
}

impl DeltaBatch {
    /// Encodes and signs the batch.
    pub fn sign(&self, key: &PublisherKey) -> anyhow::Result<Vec<u8>> {
        let mut records = Vec::new();
        for record in &self.records {
            record.write_json(&mut records);
            records.push(b'\n');
        }
        let mut header = self.header.clone();
        header.n_records = self.records.len() as u64;
        header.records_len = records.len() as u64;
        let header_json = serde_json::to_vec(&header)?;
        let compressed = zstd::bulk::compress(&records, 3)?;
        let mut body = Vec::with_capacity(4 + header_json.len() + compressed.len());
        body.extend_from_slice(&(header_json.len() as u32).to_le_bytes());
        body.extend_from_slice(&header_json);
        body.extend_from_slice(&compressed);
        Ok(sign_object(ObjectKind::Delta, &body, key))
    }

    /// Parses only the header of a verified delta body.
    pub fn parse_header(body: &[u8]) -> Result<(DeltaHeader, &[u8]), VerifyError> {
        if body.len() < 4 {
            return Err(VerifyError::Malformed(
                "delta body shorter than its header length".into(),
            ));
        }
        let header_len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        let rest = &body[4..];
        if header_len > rest.len() {
            return Err(VerifyError::Malformed(format!(
                "delta header length {header_len} exceeds the body ({} bytes)",
                rest.len()
            )));
        }
        let header: DeltaHeader = serde_json::from_slice(&rest[..header_len])
            .map_err(|e| VerifyError::Malformed(format!("delta header: {e}")))?;
        Ok((header, &rest[header_len..]))
    }

    /// Parses a verified delta body: header, then records, decompressing no more than the
    /// header states (at most [`MAX_RECORDS_BYTES`]).
    pub fn parse(body: &[u8]) -> Result<DeltaBatch, VerifyError> {
        Self::parse_within(body, MAX_RECORDS_BYTES)
    }

    /// [`DeltaBatch::parse`], refusing a delta whose records decode to more than
    /// `max_records_bytes` before decoding anything. The buffer grows with what is actually
    /// decoded, never preallocated from the header.
    pub fn parse_within(body: &[u8], max_records_bytes: u64) -> Result<DeltaBatch, VerifyError> {
        let (header, compressed) = Self::parse_header(body)?;
        if header.records_len > max_records_bytes {
            return Err(VerifyError::OverBudget {
                records_len: header.records_len,
                budget: max_records_bytes,
            });
        }
        let mut records_bytes = Vec::new();
        let decoder = zstd::stream::read::Decoder::new(compressed)
            .map_err(|e| VerifyError::Malformed(format!("records: {e}")))?;
        decoder
            .take(header.records_len + 1)
            .read_to_end(&mut records_bytes)
            .map_err(|e| VerifyError::Malformed(format!("records do not decompress: {e}")))?;
        if records_bytes.len() as u64 != header.records_len {
            return Err(VerifyError::Malformed(format!(
                "records decompress to {} bytes, the header says {}",
                records_bytes.len(),
                header.records_len
            )));
        }
        let mut records = Vec::with_capacity(header.n_records.min(1 << 20) as usize);
        for (line_idx, line) in records_bytes.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let record = DeltaRecord::from_json(line)
                .map_err(|e| VerifyError::Malformed(format!("record {}: {e}", line_idx + 1)))?;
            records.push(record);
        }
        if records.len() as u64 != header.n_records {
            return Err(VerifyError::Malformed(format!(
                "{} records, the header says {}",
                records.len(),
                header.n_records
            )));
        }
        Ok(DeltaBatch { header, records })
    }
}
