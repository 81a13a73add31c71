//! The publisher's memory of the chain's tip: the ids live after the newest delta it
//! published or read, the ids deltas deleted (with the seq), and the JSON digest of the newest
//! put of each id a delta put, kept in a local folder, so the next `publish-delta` reads only the
//! deltas published since instead of the bundle's ids and every delta from the bundle on.
//!
//! A cached tip is used only when the repository's verified targets metadata lists a delta
//! at the cached seq with the cached digest (so another chain, a rebased one or a cache of a
//! chain that moved on is never mistaken for this one); a file that does not check out
//! (truncated, edited, another format) is ignored with a warning and the tip is read from
//! the chain as before. The folder is as trusted as the publisher's key files beside it.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::chain::ChainPosition;
use super::format::DeltaRecord;
use crate::bundle::items::{ItemFields, parse_item};
use crate::digest::{canonical_json_sha256, sha256_hex};

/// The on-disk format's version; another version is ignored.
const FORMAT: u32 = 2;

/// A folder of cached tips, one file per (store, bundle) pair.
#[derive(Debug, Clone)]
pub struct TipCache {
    dir: PathBuf,
}

/// A tip: what the chain holds after delta `seq`, whose digest is `digest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CachedTip {
    /// The seq of the newest delta included.
    pub seq: u64,
    /// That delta's sha256, as the targets metadata lists it.
    pub digest: String,
    /// The ids live after it.
    pub ids: HashSet<String>,
    /// Ids a delta deleted and none put again, with that delta's seq.
    pub deleted_at: HashMap<String, u64>,
    /// The JSON value digest (`crate::digest::canonical_json_sha256`) of the newest put of
    /// each id a delta put and none deleted since.
    pub put_digest: HashMap<String, [u8; 32]>,
}

impl CachedTip {
    /// Takes one more record, of delta `seq`.
    pub fn take(
        &mut self,
        record: &DeltaRecord,
        seq: u64,
        fields: &ItemFields,
    ) -> anyhow::Result<()> {
        match record {
            DeltaRecord::Put { item: json } => {
                let item = parse_item(json.get(), fields)?;
                self.deleted_at.remove(&item.id);
                self.put_digest
                    .insert(item.id.clone(), canonical_json_sha256(json.get())?);
                self.ids.insert(item.id);
            }
            DeltaRecord::Delete { id } => {
                self.ids.remove(id);
                self.put_digest.remove(id);
                self.deleted_at.insert(id.clone(), seq);
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    format: u32,
    store: String,
    dataset: String,
    bundle_seq: u64,
    bundle_digest: String,
    model_fingerprint: String,
    seq: u64,
    digest: String,
    ids: HashSet<String>,
    deleted_at: HashMap<String, u64>,
    put_digest: Vec<(String, String)>,
}

/// [`Stored`] as written, borrowing the tip instead of copying it.
#[derive(Serialize)]
struct StoredRef<'a> {
    format: u32,
    store: &'a str,
    dataset: &'a str,
    bundle_seq: u64,
    bundle_digest: &'a str,
    model_fingerprint: &'a str,
    seq: u64,
    digest: &'a str,
    ids: &'a HashSet<String>,
    deleted_at: &'a HashMap<String, u64>,
    put_digest: HexDigests<'a>,
}

/// Put digests written as `[id, hex]` pairs.
struct HexDigests<'a>(&'a HashMap<String, [u8; 32]>);

impl Serialize for HexDigests<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(id, digest)| (id, hex::encode(digest))))
    }
}

impl TipCache {
    /// The cache in `dir` (created on first save).
    pub fn new(dir: PathBuf) -> Self {
        TipCache { dir }
    }

    /// The default folder: `$XDG_CACHE_HOME/deltacache/tips`, else `$HOME/.cache/deltacache/tips`;
    /// `None` when neither variable is set.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|home| PathBuf::from(home).join(".cache"))
            })?;
        Some(base.join("deltacache").join("tips"))
    }

    /// The file that holds the tip of the chain in `store` that starts at `bundle`.
    pub fn path(&self, store: &str, bundle: &ChainPosition) -> PathBuf {
        let key = sha256_hex(key_text(store, bundle).as_bytes());
        self.dir.join(format!("{}.tip", &key[..32]))
    }

    /// The cached tip of that chain, if a file for it exists and checks out.
    pub fn load(&self, store: &str, bundle: &ChainPosition) -> Option<CachedTip> {
        let path = self.path(store, bundle);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the publisher's tip cache; reading the chain instead");
                return None;
            }
        };
        match decode(&bytes, store, bundle) {
            Ok(tip) => Some(tip),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %format!("{e:#}"), "ignoring the publisher's tip cache; reading the chain instead (the file is rewritten after this publish)");
                None
            }
        }
    }

    /// Saves `tip` as the tip of that chain, atomically (a unique temporary file renamed
    /// over the old one), so racing publishers leave one whole file.
    pub fn save(&self, store: &str, bundle: &ChainPosition, tip: &CachedTip) -> anyhow::Result<()> {
        let path = self.path(store, bundle);
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("create the tip cache folder {}", self.dir.display()))?;
        let stored = StoredRef {
            format: FORMAT,
            store,
            dataset: &bundle.dataset,
            bundle_seq: bundle.seq,
            bundle_digest: &bundle.digest,
            model_fingerprint: &bundle.model_fingerprint,
            seq: tip.seq,
            digest: &tip.digest,
            ids: &tip.ids,
            deleted_at: &tip.deleted_at,
            put_digest: HexDigests(&tip.put_digest),
        };
        // Level 1: the file is rewritten by every publish, and read back once.
        let body = zstd::encode_all(serde_json::to_vec(&stored)?.as_slice(), 1)?;
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)
            .with_context(|| format!("create a file in {}", self.dir.display()))?;
        file.write_all(format!("{}\n", sha256_hex(&body)).as_bytes())
            .and_then(|_| file.write_all(&body))
            .with_context(|| format!("write {}", file.path().display()))?;
        file.persist(&path)
            .with_context(|| format!("replace {}", path.display()))?;
        Ok(())
    }
}

/// What names one chain: the store and the bundle it starts from.
fn key_text(store: &str, bundle: &ChainPosition) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}",
        store, bundle.dataset, bundle.seq, bundle.digest, bundle.model_fingerprint
    )
}

/// Checks and decodes a tip file: its digest line, its format, and that it is the tip of
/// this store's chain from this bundle.
fn decode(bytes: &[u8], store: &str, bundle: &ChainPosition) -> anyhow::Result<CachedTip> {
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .context("no digest line")?;
    let (digest_line, body) = (&bytes[..newline], &bytes[newline + 1..]);
    anyhow::ensure!(
        digest_line == sha256_hex(body).as_bytes(),
        "its sha256 does not match its contents (truncated or edited)"
    );
    let json = zstd::decode_all(body).context("not zstd")?;
    let stored: Stored = serde_json::from_slice(&json).context("not a tip")?;
    anyhow::ensure!(
        stored.format == FORMAT,
        "format {} (this binary writes {FORMAT})",
        stored.format
    );
    let same_chain = stored.store == store
        && stored.dataset == bundle.dataset
        && stored.bundle_seq == bundle.seq
        && stored.bundle_digest == bundle.digest
        && stored.model_fingerprint == bundle.model_fingerprint;
    anyhow::ensure!(
        same_chain,
        "it is the tip of another chain ({} from seq {})",
        stored.store,
        stored.bundle_seq
    );
    let mut put_digest = HashMap::with_capacity(stored.put_digest.len());
    for (id, digest) in stored.put_digest {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&digest, &mut bytes).context("a put digest is not 64 hex digits")?;
        put_digest.insert(id, bytes);
    }
    Ok(CachedTip {
        seq: stored.seq,
        digest: stored.digest,
        ids: stored.ids,
        deleted_at: stored.deleted_at,
        put_digest,
    })
}

/// The cache folder a publish uses: `dir` when given, else the default, else none.
pub fn chosen(dir: Option<&Path>, disabled: bool) -> Option<TipCache> {
    if disabled {
        return None;
    }
    dir.map(Path::to_path_buf)
        .or_else(TipCache::default_dir)
        .map(TipCache::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position() -> ChainPosition {
        ChainPosition::new("items", 0, "ab", 0, "fp")
    }

    #[test]
    fn a_saved_tip_loads_back_and_a_damaged_or_foreign_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TipCache::new(dir.path().join("tips"));
        let tip = CachedTip {
            seq: 7,
            digest: "d7".into(),
            ids: ["a".to_owned(), "b\nc".to_owned()].into_iter().collect(),
            deleted_at: [("d".to_owned(), 3)].into_iter().collect(),
            put_digest: [("a".to_owned(), [7u8; 32])].into_iter().collect(),
        };
        assert_eq!(cache.load("file:///s", &position()), None);
        cache.save("file:///s", &position(), &tip).unwrap();
        assert_eq!(cache.load("file:///s", &position()), Some(tip.clone()));
        // Another store or bundle has another file.
        assert_eq!(cache.load("file:///other", &position()), None);
        let rebased = ChainPosition::new("items", 5, "cd", 10, "fp");
        assert_eq!(cache.load("file:///s", &rebased), None);
        // A file copied over from another chain is refused by its contents.
        std::fs::copy(
            cache.path("file:///s", &position()),
            cache.path("file:///other", &position()),
        )
        .unwrap();
        assert_eq!(cache.load("file:///other", &position()), None);
        // A flipped byte is caught by the digest line.
        let path = cache.path("file:///s", &position());
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(cache.load("file:///s", &position()), None);
    }
}
