//! The secondary index behind filtered search (store schema 2 and later).
//!
//! For every item and every indexed field (the bundle's `filter_fields`, default
//! `category`) whose top-level value is a string, number or boolean, the store holds the
//! empty-valued key `x/<field>\0<value>\0<id>`, where `<value>` is the value's canonical
//! text: strings as JSON (so they never contain a NUL), numbers as the shortest text that
//! reads back as the same `f64` (so `2`, `2.0` and `2e0` are one value), `true`/`false`.
//! The indexed fields are recorded under `m/filter-fields`. Migration 0002 builds these keys
//! over an existing store; applying a delta keeps them current in the same write batch.
//!
//! A loaded version holds the index in memory ([`FilterIndex`]) as sorted slot lists of the
//! vector index, so a filter narrows the candidates before top-k is taken.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, bail};
use rusty_leveldb::DB;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::search::index::VectorIndex;

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
            serde_json::from_slice(&bytes).context("parse the store's m/filter-fields")?,
        )),
        None => Ok(None),
    }
}

/// Why a filter is refused (each a 422 naming what to fix).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
    /// The field has no index.
    #[error(
        "filter field {field:?} is not indexed; indexed fields: {indexed} (set filter-fields when building the bundle to index others)"
    )]
    NotIndexed {
        /// The field asked for.
        field: String,
        /// The indexed fields, comma-separated (or "none").
        indexed: String,
    },
    /// The value cannot be compared for equality.
    #[error(
        "filter field {field:?} must be compared with a string, number or boolean, found {found}"
    )]
    BadValue {
        /// The field.
        field: String,
        /// What was given.
        found: String,
    },
}

/// A parsed equality filter: every condition must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// (field, canonical value, value as given), sorted by field.
    pub conditions: Vec<(String, String, Value)>,
}

impl Filter {
    /// Checks a request's `filter` object against the indexed fields.
    pub fn parse(
        object: &serde_json::Map<String, Value>,
        indexed: &[String],
    ) -> Result<Filter, FilterError> {
        let mut conditions = Vec::with_capacity(object.len());
        for (field, value) in object {
            if !indexed.iter().any(|f| f == field) {
                return Err(FilterError::NotIndexed {
                    field: field.clone(),
                    indexed: if indexed.is_empty() {
                        "none".into()
                    } else {
                        indexed.join(", ")
                    },
                });
            }
            let canonical = canonical_value(value).ok_or_else(|| FilterError::BadValue {
                field: field.clone(),
                found: value.to_string().chars().take(40).collect(),
            })?;
            conditions.push((field.clone(), canonical, value.clone()));
        }
        conditions.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Filter { conditions })
    }

    /// The filter in Pinecone's metadata filter syntax (`$eq`, joined with `$and`).
    pub fn to_pinecone(&self) -> Value {
        let mut clauses: Vec<Value> = self
            .conditions
            .iter()
            .map(|(field, _, value)| serde_json::json!({ field: { "$eq": value } }))
            .collect();
        if clauses.len() == 1 {
            clauses.pop().expect("one clause")
        } else {
            serde_json::json!({ "$and": clauses })
        }
    }
}

/// One version's filter index in memory: per field, per canonical value, the sorted slots
/// of the items holding it.
#[derive(Debug, Default)]
pub struct FilterIndex {
    /// The indexed fields, as the store records them.
    fields: Vec<String>,
    /// field → value → sorted slots.
    slots: HashMap<String, HashMap<String, Vec<u32>>>,
}

impl FilterIndex {
    /// Reads every entry of an open store; slots come from `index`. An entry naming an id
    /// the index lacks means the two disagree: refused.
    pub fn load(db: &mut DB, index: &VectorIndex) -> anyhow::Result<Self> {
        let fields = recorded_fields(db)?.unwrap_or_default();
        let mut slots: HashMap<String, HashMap<String, Vec<u32>>> =
            fields.iter().map(|f| (f.clone(), HashMap::new())).collect();
        crate::store::leveldb::for_each_with_prefix(db, FILTER_KEY_PREFIX, |key, _| {
            let Some((field, value, id)) = parse_entry_key(key) else {
                bail!(
                    "filter index key {:?} is malformed",
                    String::from_utf8_lossy(key)
                );
            };
            let Some(slot) = index.slot_of(id) else {
                bail!(
                    "filter index names item {id:?} (field {field:?}) but the vector index does not hold it: the version is inconsistent"
                );
            };
            // Look up before inserting: most keys find their field and value already.
            let values = match slots.get_mut(field) {
                Some(values) => values,
                None => slots.entry(field.to_owned()).or_default(),
            };
            match values.get_mut(value) {
                Some(list) => list.push(slot),
                None => {
                    values.insert(value.to_owned(), vec![slot]);
                }
            }
            Ok(())
        })
        .context("read the filter index")?;
        for values in slots.values_mut() {
            for list in values.values_mut() {
                list.sort_unstable();
            }
        }
        Ok(FilterIndex { fields, slots })
    }

    /// The indexed fields.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// The slots that satisfy every condition, as a bitmap over `n_slots`.
    pub fn matching(&self, filter: &Filter, n_slots: usize) -> Vec<u64> {
        let words = n_slots.div_ceil(64);
        let mut lists: Vec<&[u32]> = Vec::with_capacity(filter.conditions.len());
        for (field, canonical, _) in &filter.conditions {
            match self
                .slots
                .get(field)
                .and_then(|values| values.get(canonical))
            {
                Some(list) => lists.push(list),
                None => return vec![0; words],
            }
        }
        lists.sort_by_key(|l| l.len());
        let mut bits = vec![0u64; words];
        if let Some((first, rest)) = lists.split_first() {
            for &slot in *first {
                bits[slot as usize / 64] |= 1 << (slot % 64);
            }
            for list in rest {
                let mut other = vec![0u64; words];
                for &slot in *list {
                    other[slot as usize / 64] |= 1 << (slot % 64);
                }
                for (a, b) in bits.iter_mut().zip(other) {
                    *a &= b;
                }
            }
        }
        bits
    }

    /// How many entries per field (for logs).
    pub fn sizes(&self) -> BTreeMap<&str, usize> {
        self.slots
            .iter()
            .map(|(f, values)| (f.as_str(), values.values().map(Vec::len).sum()))
            .collect()
    }
}

/// Whether `slot` is set in a bitmap from [`FilterIndex::matching`].
pub fn bit_is_set(bits: &[u64], slot: u32) -> bool {
    bits.get(slot as usize / 64)
        .is_some_and(|w| w & (1 << (slot % 64)) != 0)
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

    #[test]
    fn unindexed_fields_and_bad_values_are_named() {
        let indexed = vec!["category".to_string()];
        let object = serde_json::json!({"colour": "red"});
        let error = Filter::parse(object.as_object().unwrap(), &indexed).unwrap_err();
        assert_eq!(
            error,
            FilterError::NotIndexed {
                field: "colour".into(),
                indexed: "category".into()
            }
        );
        let object = serde_json::json!({"category": ["a"]});
        assert!(matches!(
            Filter::parse(object.as_object().unwrap(), &indexed),
            Err(FilterError::BadValue { .. })
        ));
    }

    #[test]
    fn pinecone_syntax_uses_eq_and_and() {
        let indexed = vec!["category".to_string(), "tier".to_string()];
        let one = Filter::parse(
            serde_json::json!({"category": "db"}).as_object().unwrap(),
            &indexed,
        )
        .unwrap();
        assert_eq!(
            one.to_pinecone(),
            serde_json::json!({"category": {"$eq": "db"}})
        );
        let two = Filter::parse(
            serde_json::json!({"tier": 2, "category": "db"})
                .as_object()
                .unwrap(),
            &indexed,
        )
        .unwrap();
        assert_eq!(
            two.to_pinecone(),
            serde_json::json!({"$and": [{"category": {"$eq": "db"}}, {"tier": {"$eq": 2}}]})
        );
    }
}
