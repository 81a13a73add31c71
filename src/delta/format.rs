//! The delta format: the bytes of a delta target in the TUF repository.
//!
//! ```text
//! u32 LE header length | header JSON (DeltaHeader) | zstd frame of JSONL records
//! ```
//! Each record is `{"op":"put","item":{...}}` or `{"op":"delete","id":"..."}`. A delta is
//! trusted because the verified targets metadata names it by length and sha256 (tough checks
//! both); its header repeats what that metadata's custom fields say, and both must agree.
//!
//! Deltas published before the repository was a TUF repository are wrapped in the earlier
//! signed-object framing (`DCSIGNED`, see [`super::legacy`]); a repository that adopted them
//! names those exact bytes, and [`delta_body`] unwraps them.

use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The largest decompressed record payload accepted at all. What one sync accepts is the
/// smaller memory budget it is given ([`DeltaBatch::parse_within`]); no ratio to the
/// compressed size is imposed, since catalogues of near-identical items compress far more
/// than any fixed ratio (a publisher could otherwise publish a delta no instance accepts).
pub const MAX_RECORDS_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Why delta bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
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
    /// Its contents do not parse.
    #[error("its contents do not parse: {0}")]
    Malformed(String),
}

/// The body of a delta target: the bytes themselves, or, for a delta adopted from before the
/// repository was a TUF repository, the body inside its signed-object framing.
pub fn delta_body(bytes: &[u8]) -> Result<&[u8], DeltaError> {
    if bytes.starts_with(super::legacy::MAGIC) {
        super::legacy::unwrap_body(bytes).map_err(DeltaError::Malformed)
    } else {
        Ok(bytes)
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
    /// Db schema version it was built for.
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
    /// Encodes the batch as a delta target's bytes.
    pub fn encode(&self) -> anyhow::Result<Vec<u8>> {
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
        Ok(body)
    }

    /// Parses only the header of a delta body.
    pub fn parse_header(body: &[u8]) -> Result<(DeltaHeader, &[u8]), DeltaError> {
        if body.len() < 4 {
            return Err(DeltaError::Malformed(
                "delta body shorter than its header length".into(),
            ));
        }
        let header_len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        let rest = &body[4..];
        if header_len > rest.len() {
            return Err(DeltaError::Malformed(format!(
                "delta header length {header_len} exceeds the body ({} bytes)",
                rest.len()
            )));
        }
        let header: DeltaHeader = serde_json::from_slice(&rest[..header_len])
            .map_err(|e| DeltaError::Malformed(format!("delta header: {e}")))?;
        Ok((header, &rest[header_len..]))
    }

    /// Parses a delta body: header, then records, decompressing no more than the
    /// header states (at most [`MAX_RECORDS_BYTES`]).
    pub fn parse(body: &[u8]) -> Result<DeltaBatch, DeltaError> {
        Self::parse_within(body, MAX_RECORDS_BYTES)
    }

    /// [`DeltaBatch::parse`], refusing a delta whose records decode to more than
    /// `max_records_bytes` before decoding anything. The buffer grows with what is actually
    /// decoded, never preallocated from the header.
    pub fn parse_within(body: &[u8], max_records_bytes: u64) -> Result<DeltaBatch, DeltaError> {
        let (header, compressed) = Self::parse_header(body)?;
        if header.records_len > max_records_bytes {
            return Err(DeltaError::OverBudget {
                records_len: header.records_len,
                budget: max_records_bytes,
            });
        }
        let mut records_bytes = Vec::new();
        let decoder = zstd::stream::read::Decoder::new(compressed)
            .map_err(|e| DeltaError::Malformed(format!("records: {e}")))?;
        decoder
            .take(header.records_len + 1)
            .read_to_end(&mut records_bytes)
            .map_err(|e| DeltaError::Malformed(format!("records do not decompress: {e}")))?;
        if records_bytes.len() as u64 != header.records_len {
            return Err(DeltaError::Malformed(format!(
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
                .map_err(|e| DeltaError::Malformed(format!("record {}: {e}", line_idx + 1)))?;
            records.push(record);
        }
        if records.len() as u64 != header.n_records {
            return Err(DeltaError::Malformed(format!(
                "{} records, the header says {}",
                records.len(),
                header.n_records
            )));
        }
        Ok(DeltaBatch { header, records })
    }
}
