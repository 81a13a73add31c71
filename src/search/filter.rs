//! Filtered search at query time: a request's `filter` parsed against the indexed fields,
//! and a loaded version's filter index in memory ([`FilterIndex`]): per field and value, the
//! sorted slots of the vector index holding it, so a filter narrows the candidates before
//! top-k is taken. The key layout in LevelDB is `crate::db::filter`'s.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use rusty_leveldb::DB;
use serde_json::Value;

use super::index::VectorIndex;
use crate::db::filter::{canonical_value, for_each_entry, recorded_fields};

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
    /// The indexed fields, as the db records them.
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
        for_each_entry(db, |field, value, id| {
            let Some(slot) = index.slot_of(id) else {
                anyhow::bail!(
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
