//! The bundle: what `build-base` writes and an image bakes.
//!
//! ```text
//! BUNDLE/
//!   manifest.json   dataset, seq, schema version, model fingerprint, item count, file digests
//!   model.json      the TF-IDF model
//!   index.bin       the local vector index
//!   db/             the LevelDB metadata db (Snappy tables, compacted)
//! ```
//!
//! A bundle is immutable: nothing in this crate opens its database in place or writes to it.

pub mod build;
pub mod items;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digest::sha256_hex;
pub use crate::digest::{FileDigest, digest_file};
use crate::search::tfidf::TfidfModel;

/// The value of the manifest's `format` field.
pub const BUNDLE_FORMAT: &str = "deltacache-bundle";
/// The manifest format version this binary writes and reads.
pub const BUNDLE_FORMAT_VERSION: u32 = 1;

/// Name of the manifest file inside a bundle.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Name of the model file inside a bundle.
pub const MODEL_FILE: &str = "model.json";
/// Name of the vector index file inside a bundle or version.
pub const INDEX_FILE: &str = "index.bin";
/// Name of the LevelDB directory inside a bundle or version.
pub const DB_DIR: &str = "db";

/// What a bundle holds, written last when the bundle is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// Always [`BUNDLE_FORMAT_VERSION`].
    pub format_version: u32,
    /// The dataset name deltas must carry.
    pub dataset: String,
    /// The delta sequence number this bundle already includes.
    pub seq: u64,
    /// The db layout version of `db/`.
    pub schema_version: u32,
    /// Top-level item fields the filter index covers (bundles of schema 1 name none; their
    /// state dirs index the default, `category`).
    #[serde(default = "crate::db::filter::default_filter_fields")]
    pub filter_fields: Vec<String>,
    /// Fingerprint of `model.json`; deltas are bound to it.
    pub model_fingerprint: String,
    /// The model's dimension.
    pub n_terms: usize,
    /// Number of items.
    pub n_items: u64,
    /// Field holding each item's id.
    pub id_field: String,
    /// Field holding each item's text.
    pub text_field: String,
    /// Seconds since the Unix epoch when the bundle was built.
    pub created_at: u64,
    /// Version of the binary that built it.
    pub built_by: String,
    /// sha256 over the items' JSON lines in input order.
    pub items_sha256: String,
    /// The digest the first delta after this bundle must name as its parent: for a bundle
    /// built from items, [`base_chain_digest`]; for a compacted bundle, the last delta's.
    pub chain_digest: String,
    /// Length of the object `chain_digest` names (0 for a bundle built from items).
    pub chain_len: u64,
    /// Every file of the bundle but the manifest, by path relative to the bundle.
    pub files: BTreeMap<String, FileDigest>,
}

impl Manifest {
    /// The fields holding each item's id and text.
    pub fn item_fields(&self) -> items::ItemFields {
        items::ItemFields {
            id_field: self.id_field.clone(),
            text_field: self.text_field.clone(),
            from_bundle: true,
        }
    }
}

/// The chain digest of a bundle built from items: binds the first delta to this dataset,
/// seq, model and exact item set.
pub fn base_chain_digest(
    dataset: &str,
    seq: u64,
    model_fingerprint: &str,
    items_sha256: &str,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"deltacache-base-v1\0");
    for part in [dataset, &seq.to_string(), model_fingerprint, items_sha256] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(hasher.finalize())
}

/// A bundle on disk whose manifest has been read.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// sha256 of the manifest's bytes: identifies this exact bundle.
    pub manifest_sha256: String,
}

impl Bundle {
    /// Reads a bundle's manifest (cheap: does not hash the files; see [`Bundle::verify_files`]).
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "read bundle manifest {} (is {} a bundle written by build-base?)",
                path.display(),
                dir.display()
            )
        })?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("parse bundle manifest {}", path.display()))?;
        if manifest.format != BUNDLE_FORMAT {
            bail!(
                "{}: format {:?} is not a deltacache bundle",
                path.display(),
                manifest.format
            );
        }
        if manifest.format_version != BUNDLE_FORMAT_VERSION {
            bail!(
                "{}: bundle format version {} is not supported by this binary (it reads {})",
                path.display(),
                manifest.format_version,
                BUNDLE_FORMAT_VERSION
            );
        }
        crate::db::migrate::check_supported(
            manifest.schema_version,
            &format!("bundle {}", dir.display()),
        )?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            manifest_sha256: sha256_hex(&bytes),
        })
    }

    /// Hashes every file the manifest lists and checks that no other data file exists.
    pub fn verify_files(&self) -> anyhow::Result<()> {
        for (rel, expected) in &self.manifest.files {
            let path = self.dir.join(rel);
            let actual = digest_file(&path)?;
            if &actual != expected {
                bail!(
                    "bundle file {} does not match its manifest (expected {} bytes sha256 {}, found {} bytes sha256 {}): the bundle is damaged; rebuild or re-bake it",
                    path.display(),
                    expected.len,
                    expected.sha256,
                    actual.len,
                    actual.sha256
                );
            }
        }
        for rel in list_files(&self.dir)? {
            if rel != MANIFEST_FILE
                && !self.manifest.files.contains_key(&rel)
                && !is_leveldb_scratch(&rel)
            {
                bail!(
                    "bundle file {} is not listed in the manifest: the bundle was modified; rebuild or re-bake it",
                    self.dir.join(&rel).display()
                );
            }
        }
        Ok(())
    }

    /// Loads the model, checking it against the manifest's digest and fingerprint.
    pub fn load_model(&self) -> anyhow::Result<TfidfModel> {
        let path = self.dir.join(MODEL_FILE);
        let bytes =
            std::fs::read(&path).with_context(|| format!("read model {}", path.display()))?;
        if let Some(expected) = self.manifest.files.get(MODEL_FILE) {
            let actual = sha256_hex(&bytes);
            if actual != expected.sha256 {
                bail!(
                    "model {} does not match its manifest digest: the bundle is damaged",
                    path.display()
                );
            }
        }
        let model = TfidfModel::from_json(&bytes)
            .with_context(|| format!("load model {}", path.display()))?;
        if model.fingerprint() != self.manifest.model_fingerprint {
            bail!(
                "model {} has fingerprint {} but the manifest says {}",
                path.display(),
                model.fingerprint(),
                self.manifest.model_fingerprint
            );
        }
        Ok(model)
    }
}

/// LevelDB's lock and info logs carry no data and are never listed.
fn is_leveldb_scratch(rel: &str) -> bool {
    matches!(
        rel.rsplit('/').next(),
        Some("LOCK") | Some("LOG") | Some("LOG.old")
    )
}

/// Every regular file under `dir`, as `/`-separated paths relative to it, sorted.
pub fn list_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("list {}", dir.display()))?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/");
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}
