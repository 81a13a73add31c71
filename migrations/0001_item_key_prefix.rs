//! 0001 item_key_prefix: db schema 0 → 1.
//!
//! Changes: the original Python pipeline's plain layout (key = the item id's UTF-8 bytes,
//! value = the item's JSON, nothing else) becomes the keyed layout: every item moves to
//! `i/<id>`, so that the store can also hold records about itself under `m/` (the chain
//! position `m/state`, the schema `m/schema`) and indexes under other prefixes.
//!
//! Why: in the plain layout any key is an item, so nothing else can be stored beside the
//! items without colliding with some id; deltacache needs to record which chain position a
//! version holds in the same write as the records that bring it there.
//!
//! How, crash-safely and in place: phase one parks each plain key at `0xFF i/<id>` (no UTF-8
//! id starts with byte 0xFF, so parked and unparked keys never meet, and no id can land on
//! an item not yet moved), then writes a phase marker; phase two moves `0xFF i/<id>` to
//! `i/<id>` and removes the marker. A re-run after a crash resumes the phase the marker
//! names; each key move is one put and one delete in the same batch.

use anyhow::bail;
use rusty_leveldb::{DB, WriteBatch};

use crate::db::migrate::{Chunks, for_each_in_pages};

/// Where phase one parks items.
const PARKED: &[u8] = b"\xffi/";
/// The end of the parked range.
const PARKED_END: &[u8] = b"\xffi0";
/// Present between the two phases.
const PHASE_TWO: &[u8] = b"\xff\xffmigration-0001-phase-two";

pub(super) fn run(db: &mut DB, chunks: &mut Chunks<'_>) -> anyhow::Result<WriteBatch> {
    let limit = chunks.context().chunk_keys;
    if db.get(PHASE_TWO).is_none() {
        for_each_in_pages(db, b"", b"\xff", limit, |db, key, value| {
            let Ok(id) = std::str::from_utf8(&key) else {
                bail!(
                    "key {} is not UTF-8: the original layout keys each item by its id, a string; \
                     remove or re-key it in the source",
                    crate::db::migrate::printable(&key)
                );
            };
            let mut parked = PARKED.to_vec();
            parked.extend_from_slice(id.as_bytes());
            chunks.put(db, &parked, &value)?;
            chunks.delete(db, &key)
        })?;
        chunks.put(db, PHASE_TWO, b"")?;
        chunks.flush(db)?;
    }
    for_each_in_pages(db, PARKED, PARKED_END, limit, |db, key, value| {
        chunks.put(
            db,
            &crate::db::leveldb::item_key_bytes(&key[PARKED.len()..]),
            &value,
        )?;
        chunks.delete(db, &key)
    })?;
    let mut last = chunks.take_batch();
    last.delete(PHASE_TWO);
    Ok(last)
}
