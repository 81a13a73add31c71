//! sha256 digests, as lowercase hex: of bytes in memory and of files, streamed.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Size and sha256 of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Length in bytes.
    pub len: u64,
    /// Lowercase hex sha256.
    pub sha256: String,
}

/// sha256 and length of a file, streamed.
pub fn digest_file(path: &Path) -> anyhow::Result<FileDigest> {
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(FileDigest {
        len,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// sha256 of a JSON text's canonical form, so two texts of the same JSON value have one
/// digest whatever their whitespace, key order or escapes: object keys sorted, strings by
/// their characters, numbers by value within their kind (integers exactly; floats as the
/// `f64` they parse to, so `0.5`, `0.50` and `5e-1` are one value, while `10` and `10.0`
/// stay distinct, as they are to a Python client).
pub fn canonical_json_sha256(text: &str) -> Result<[u8; 32], serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    let mut hasher = Sha256::new();
    feed_canonical(&value, &mut hasher);
    Ok(hasher.finalize().into())
}

/// Feeds `value` to `hasher` in a self-delimiting encoding: a tag per kind, lengths before
/// strings and before the members of arrays and objects.
fn feed_canonical(value: &serde_json::Value, hasher: &mut Sha256) {
    use serde_json::Value;
    fn string(tag: &[u8], s: &str, hasher: &mut Sha256) {
        hasher.update(tag);
        hasher.update((s.len() as u64).to_le_bytes());
        hasher.update(s.as_bytes());
    }
    match value {
        Value::Null => hasher.update(b"n"),
        Value::Bool(b) => hasher.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => string(b"u", &u.to_string(), hasher),
            (None, Some(i), _) => string(b"i", &i.to_string(), hasher),
            // `-0.0` and `0.0` are one value.
            (None, None, Some(f)) => string(b"d", &(f + 0.0).to_string(), hasher),
            (None, None, None) => string(b"x", &n.to_string(), hasher),
        },
        Value::String(s) => string(b"s", s, hasher),
        Value::Array(items) => {
            hasher.update(b"a");
            hasher.update((items.len() as u64).to_le_bytes());
            for item in items {
                feed_canonical(item, hasher);
            }
        }
        Value::Object(members) => {
            hasher.update(b"o");
            hasher.update((members.len() as u64).to_le_bytes());
            let mut keys: Vec<&String> = members.keys().collect();
            keys.sort();
            for key in keys {
                string(b"k", key, hasher);
                feed_canonical(&members[key], hasher);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_value_has_one_canonical_digest() {
        let d = |s: &str| canonical_json_sha256(s).unwrap();
        let a = d(r#"{"id":"a","price":0.1,"tags":["x","y"],"m":{"l":"é"}}"#);
        assert_eq!(
            a,
            d(r#"{ "m": {"l": "\u00e9"}, "tags": [ "x", "y" ], "price": 1e-1, "id": "a" }"#)
        );
        assert_ne!(
            a,
            d(r#"{"id":"a","price":0.1,"tags":["y","x"],"m":{"l":"é"}}"#)
        );
        assert_ne!(d(r#"{"p":10}"#), d(r#"{"p":10.0}"#));
        assert_eq!(d(r#"{"p":-0.0}"#), d(r#"{"p":0.0}"#));
        assert_ne!(d(r#"{"a":"1"}"#), d(r#"{"a":1}"#));
        assert_ne!(d(r#"["ab","c"]"#), d(r#"["a","bc"]"#));
    }
}
