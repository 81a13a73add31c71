//! 0002 filter_index: db schema 1 → 2.
//!
//! Changes: adds the secondary index behind filtered search. For every item and every
//! field the bundle indexes (`filter_fields`, default `category`) whose top-level value is
//! a string, number or boolean, the empty-valued key `x/<field>\0<value>\0<id>` is written
//! (layout in src/store/filter.rs); the indexed fields are recorded under `m/filter-fields`.
//! Items and their JSON are unchanged.
//!
//! Why: users of the service this replaces filter searches by metadata (Pinecone's metadata
//! filter). Filtering after top-k would return fewer than `top_k` results; with this index a
//! filter narrows the candidates first. Delivered as a migration so that bundles baked
//! before it gain the index when a state dir is synced from them.
//!
//! Idempotent: every write is a put of a key derived from an item alone, so a re-run after a
//! crash writes the same keys again and the list of fields last.

use anyhow::bail;
use rusty_leveldb::{DB, WriteBatch};

use crate::db::filter::{FILTER_FIELDS_KEY, check_field_names, entry_keys};
use crate::db::leveldb::id_of_key;
use crate::db::migrate::{Chunks, for_each_in_pages};

pub(super) fn run(db: &mut DB, chunks: &mut Chunks<'_>) -> anyhow::Result<WriteBatch> {
    let fields = chunks.context().filter_fields.clone();
    check_field_names(&fields)?;
    let limit = chunks.context().chunk_keys;
    for_each_in_pages(db, b"i/", b"i0", limit, |db, key, value| {
        let Some(id) = id_of_key(&key) else {
            bail!(
                "item key {} is not UTF-8: the db is damaged",
                crate::db::migrate::printable(&key)
            );
        };
        let Some(entries) = entry_keys(&value, id, &fields) else {
            bail!("item {id:?} is not a JSON object: the db is damaged");
        };
        for entry in entries {
            chunks.put(db, &entry, b"")?;
        }
        Ok(())
    })?;
    let mut last = chunks.take_batch();
    last.put(FILTER_FIELDS_KEY, &serde_json::to_vec(&fields)?);
    Ok(last)
}
