//! The secondary index behind filtered search (db schema 2 and later).
//!
//! For every item and every indexed field (the bundle's `filter_fields`, default
//! `category`) whose top-level value is a string, number or boolean, the db holds the
//! empty-valued key `x/<field>\0<value>\0<id>`, where `<value>` is the value's canonical
//! text: strings as JSON (so they never contain a NUL), numbers as the shortest text that
//! reads back as the same `f64` (so `2`, `2.0` and `2e0` are one value), `true`/`false`.
//! The indexed fields are recorded under `m/filter-fields`. Migration 0002 builds these keys
//! over an existing store; applying a delta keeps them current in the same write batch.
//!
//! This module owns the key layout only; the query-time side (parsing a request's filter,
//! the in-memory index a loaded version holds) is `crate::search::filter`.

use std::borrow::Cow;
use std::collections::HashMap;

use anyhow::{Context, bail};
use rusty_leveldb::DB;
use serde_json::Value;
use serde_json::value::RawValue;

/// Prefix of filter index keys.
pub const FILTER_KEY_PREFIX: &[u8] = b"x/";
/// Where the list of indexed fields is recorded.
pub const FILTER_FIELDS_KEY: &[u8] = b"m/filter-fields";
/// The fields indexed when a bundle names none.
pub const DEFAULT_FILTER_FIELDS: &[&str] = &["category"];

/// The default `filter_fields`, as owned strings.
pub fn default_filter_fields() -> Vec<String> {
    DEFAULT_FILTER_FIELDS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Refuses field names the key layout cannot hold.
pub fn check_field_names(fields: &[String]) -> anyhow::Result<()> {
    for field in fields {
        if field.is_empty() || field.contains('\0') {
            bail!(
                "filter field {field:?} cannot be indexed: names must be non-empty and hold no NUL character"
            );
        }
    }
    Ok(())
}

/// The canonical text of a filterable value; `None` for null, arrays and objects.
pub fn canonical_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(serde_json::to_string(s).expect("a string serialises")),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => n.as_f64().filter(|f| f.is_finite()).map(|f| {
            // `-0` and `0` are one value.
            if f == 0.0 { "0".into() } else { f.to_string() }
        }),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The key of one (field, canonical value, id) entry.
pub fn entry_key(field: &str, canonical: &str, id: &str) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(FILTER_KEY_PREFIX.len() + field.len() + canonical.len() + id.len() + 2);
    key.extend_from_slice(FILTER_KEY_PREFIX);
    key.extend_from_slice(field.as_bytes());
    key.push(0);
    key.extend_from_slice(canonical.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// Splits an entry key into (field, canonical value, id).
pub fn parse_entry_key(key: &[u8]) -> Option<(&str, &str, &str)> {
    let rest = key.strip_prefix(FILTER_KEY_PREFIX)?;
    let mut parts = rest.splitn(3, |&b| b == 0);
    let field = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    let id = std::str::from_utf8(parts.next()?).ok()?;
    Some((field, value, id))
}

/// The filterable values of one item's JSON for `fields`, as (field, value, canonical
/// text), in the order of `fields`; `None` when the JSON is not an object. Only the
/// indexed fields' values are parsed; the rest of the item is skipped over.
fn indexed_values<'f>(
    item_json: &[u8],
    fields: &'f [String],
) -> Option<Vec<(&'f str, Value, String)>> {
    let object = serde_json::from_slice::<HashMap<Cow<'_, str>, &RawValue>>(item_json).ok()?;
    let mut values = Vec::new();
    for field in fields {
        let Some(raw) = object.get(field.as_str()) else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(raw.get()) else {
            continue;
        };
        if let Some(canonical) = canonical_value(&value) {
            values.push((field.as_str(), value, canonical));
        }
    }
    Some(values)
}

/// The entry keys of one item's JSON for `fields`; `None` when the JSON is not an object
/// (callers validate items before they get here, so that means a damaged store).
pub fn entry_keys(item_json: &[u8], id: &str, fields: &[String]) -> Option<Vec<Vec<u8>>> {
    let values = indexed_values(item_json, fields)?;
    Some(
        values
            .iter()
            .map(|(field, _, canonical)| entry_key(field, canonical, id))
            .collect(),
    )
}

/// The indexed fields of one item's JSON whose values can be filtered on, as the metadata
/// a Pinecone vector carries (so Pinecone's filter sees what the local index sees).
pub fn filterable_metadata(item_json: &[u8], fields: &[String]) -> serde_json::Map<String, Value> {
    indexed_values(item_json, fields)
        .unwrap_or_default()
        .into_iter()
        .map(|(field, value, _)| (field.to_owned(), value))
        .collect()
}

/// Reads the indexed fields a store records (`None` before schema 2).
pub fn recorded_fields(db: &mut DB) -> anyhow::Result<Option<Vec<String>>> {
    match db.get(FILTER_FIELDS_KEY) {
        Some(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).context("parse the db's m/filter-fields")?,
        )),
        None => Ok(None),
    }
}

/// Calls `each(field, canonical value, id)` for every filter index entry of an open
/// database, in key order; a malformed key is refused.
pub fn for_each_entry(
    db: &mut DB,
    mut each: impl FnMut(&str, &str, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    super::leveldb::for_each_with_prefix(db, FILTER_KEY_PREFIX, |key, _| {
        let Some((field, value, id)) = parse_entry_key(key) else {
            bail!(
                "filter index key {:?} is malformed",
                String::from_utf8_lossy(key)
            );
        };
        each(field, value, id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_by_value_and_strings_keep_their_quotes() {
        let c = |s: &str| canonical_value(&serde_json::from_str(s).unwrap());
        assert_eq!(c("2"), c("2.0"));
        assert_eq!(c("2"), c("2e0"));
        assert_eq!(c("-0.0"), c("0"));
        assert_ne!(c("\"2\""), c("2"));
        assert_eq!(c("true").as_deref(), Some("true"));
        assert_eq!(c("null"), None);
        assert_eq!(c("[1]"), None);
    }

    #[test]
    fn entry_keys_round_trip_through_the_layout() {
        let fields = vec!["category".to_string(), "tier".to_string()];
        let keys = entry_keys(
            br#"{"id":"a\u0000b","category":"x\u0000y","tier":2,"other":1}"#,
            "a\0b",
            &fields,
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            parse_entry_key(&keys[0]),
            Some(("category", "\"x\\u0000y\"", "a\0b"))
        );
        assert_eq!(parse_entry_key(&keys[1]), Some(("tier", "2", "a\0b")));
    }
}
