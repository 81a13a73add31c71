//! Reading items from JSONL: one JSON object per line, with a string id and a string text.
//!
//! The whole object is the item's metadata and is kept exactly as it was written, so what a
//! client gets back is the line it was built from (minus surrounding whitespace).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::value::RawValue;

/// The longest item id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

/// Which fields of an item hold its id and its text.
#[derive(Debug, Clone)]
pub struct ItemFields {
    /// Field holding the item's id (a non-empty string).
    pub id_field: String,
    /// Field holding the text that is embedded (a string).
    pub text_field: String,
    /// Whether the names are a built bundle's (its manifest), which no flag changes, rather
    /// than `build-base`'s `--id-field` and `--text-field`: a missing field is then to be
    /// added to the item, not named by a flag.
    pub from_bundle: bool,
}

impl Default for ItemFields {
    fn default() -> Self {
        ItemFields {
            id_field: "id".into(),
            text_field: "text".into(),
            from_bundle: false,
        }
    }
}

/// One item read from a line.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The item's id.
    pub id: String,
    /// The text that is embedded.
    pub text: String,
    /// The item's JSON exactly as written (trimmed).
    pub json: String,
}

/// Why a line is not a valid item. Each variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    /// The line is not a JSON object.
    #[error("not a JSON object ({0}): each line must be one JSON object")]
    Malformed(String),
    /// The id field is absent.
    #[error("missing id field {field:?}: every item needs a string id{}", fix_missing(*.from_bundle, field, "--id-field"))]
    MissingId {
        /// The id field's name.
        field: String,
        /// Whether the name is a built bundle's.
        from_bundle: bool,
    },
    /// The id field is not a non-empty string, or too long.
    #[error(
        "id field {field:?} must be a non-empty string of at most {MAX_ID_BYTES} bytes, found {found}"
    )]
    BadId {
        /// The id field's name.
        field: String,
        /// What was found instead.
        found: String,
    },
    /// The text field is absent.
    #[error("missing text field {field:?}: every item needs its text as a string{}", fix_missing(*.from_bundle, field, "--text-field"))]
    MissingText {
        /// The text field's name.
        field: String,
        /// Whether the name is a built bundle's.
        from_bundle: bool,
    },
    /// The text field is not a string.
    #[error("text field {field:?} must be a string, found {found}")]
    BadText {
        /// The text field's name.
        field: String,
        /// What was found instead.
        found: String,
    },
}

/// What fixes a missing id or text field: naming the field with `flag` when building, or,
/// against a built bundle, adding the field the bundle's manifest names to the item.
fn fix_missing(from_bundle: bool, field: &str, flag: &str) -> String {
    match from_bundle {
        true => format!(
            "; the bundle names this field in its manifest.json (fixed when it was built): add {field:?} to the item"
        ),
        false => format!(" (or name the field with {flag})"),
    }
}

/// Parses one line into an item.
pub fn parse_item(line: &str, fields: &ItemFields) -> Result<Item, ItemError> {
    let json = line.trim();
    let object: HashMap<Cow<'_, str>, &RawValue> =
        serde_json::from_str(json).map_err(|e| ItemError::Malformed(e.to_string()))?;
    let id_raw = object
        .get(fields.id_field.as_str())
        .ok_or_else(|| ItemError::MissingId {
            field: fields.id_field.clone(),
            from_bundle: fields.from_bundle,
        })?;
    let id = match serde_json::from_str::<String>(id_raw.get()) {
        Ok(id) if !id.is_empty() && id.len() <= MAX_ID_BYTES => id,
        _ => {
            return Err(ItemError::BadId {
                field: fields.id_field.clone(),
                found: abbreviate(id_raw.get()),
            });
        }
    };
    let text_raw =
        object
            .get(fields.text_field.as_str())
            .ok_or_else(|| ItemError::MissingText {
                field: fields.text_field.clone(),
                from_bundle: fields.from_bundle,
            })?;
    let text = serde_json::from_str::<String>(text_raw.get()).map_err(|_| ItemError::BadText {
        field: fields.text_field.clone(),
        found: abbreviate(text_raw.get()),
    })?;
    Ok(Item {
        id,
        text,
        json: json.to_owned(),
    })
}

fn abbreviate(raw: &str) -> String {
    if raw.len() <= 40 {
        raw.to_owned()
    } else {
        let mut end = 40;
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &raw[..end])
    }
}

/// Streams the items of a JSONL file, with 1-based line numbers. Blank lines are skipped.
pub struct ItemReader {
    path: PathBuf,
    lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
    line_no: usize,
    bytes_read: u64,
    fields: ItemFields,
}

impl ItemReader {
    /// Bytes consumed so far (for progress).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Opens a JSONL file.
    pub fn open(path: &Path, fields: ItemFields) -> anyhow::Result<Self> {
        use anyhow::Context;
        let file = std::fs::File::open(path)
            .with_context(|| format!("open items file {}", path.display()))?;
        Ok(ItemReader {
            path: path.to_path_buf(),
            lines: std::io::BufReader::with_capacity(1 << 20, file).lines(),
            line_no: 0,
            bytes_read: 0,
            fields,
        })
    }
}

impl Iterator for ItemReader {
    type Item = anyhow::Result<(usize, Item)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = self.lines.next()?;
            self.line_no += 1;
            let line = match line {
                Ok(line) => {
                    self.bytes_read += line.len() as u64 + 1;
                    line
                }
                Err(e) => {
                    return Some(Err(anyhow::anyhow!(
                        "{} line {}: {e} (the file must be UTF-8 JSONL)",
                        self.path.display(),
                        self.line_no
                    )));
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            return Some(
                parse_item(&line, &self.fields)
                    .map(|item| (self.line_no, item))
                    .map_err(|e| {
                        anyhow::anyhow!("{} line {}: {e}", self.path.display(), self.line_no)
                    }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Result<(&str, &str), &str>) {
        let got = parse_item(line, &ItemFields::default());
        match (got, expected) {
            (Ok(item), Ok((id, text))) => {
                assert_eq!((item.id.as_str(), item.text.as_str()), (id, text));
                assert_eq!(item.json, line.trim());
            }
            (Err(e), Err(fragment)) => {
                assert!(e.to_string().contains(fragment), "{e} lacks {fragment:?}")
            }
            (got, expected) => panic!("{line}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn parses_and_refuses_items() {
        check(
            r#" {"id":"a","text":"hi \u00e9","x":[1]} "#,
            Ok(("a", "hi é")),
        );
        check(r#"{"id":"a"}"#, Err("missing text field \"text\""));
        check(r#"{"text":"t"}"#, Err("missing id field \"id\""));
        check(r#"{"id":7,"text":"t"}"#, Err("non-empty string"));
        check(r#"{"id":"","text":"t"}"#, Err("non-empty string"));
        check(
            r#"{"id":"a","text":null}"#,
            Err("must be a string, found null"),
        );
        check(r#"["id"]"#, Err("not a JSON object"));
        check(r#"{"id":"a","text":"t""#, Err("not a JSON object"));
    }
}
