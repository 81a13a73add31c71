//! `build-base`: items in, bundle out.
//!
//! Two streaming passes over the input keep memory bounded by the vocabulary, the set of
//! ids and the index (which the server holds in memory anyway), never by the raw input:
//! pass one validates every line, writes the metadata db and counts terms; the model is
//! fitted (or loaded); pass two embeds every text into the index. Everything is written into
//! a temporary directory beside the target, fsynced, and renamed into place at the end, so a
//! failed build leaves no half bundle.
//!
//! The input is JSONL, or (`--from-leveldb`) a LevelDB of the original Python pipeline's
//! plain layout (id → item JSON). That source is cloned into the new bundle and the clone
//! migrated (migrations/0001, 0002); the source directory is never opened. Either way the
//! store is written in layout 1 first and brought to the current layout by the same
//! migrations a state dir runs, so the filter index has one builder.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use rusty_leveldb::WriteBatch;
use sha2::{Digest, Sha256};

use super::items::{ItemFields, ItemReader, parse_item};
use super::{
    BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, Bundle, DB_DIR, INDEX_FILE, MANIFEST_FILE, MODEL_FILE,
    Manifest, digest_file, list_files,
};
use crate::db::clone::clone_db_dir;
use crate::db::filter::check_field_names;
use crate::db::leveldb;
use crate::db::migrate::{MigrationContext, migrate};
use crate::durable;
use crate::progress::Progress;
use crate::search::index::VectorIndex;
use crate::search::tfidf::{FitOptions, StopWords, TermStatistics, TfidfModel};

/// Where the model of a new bundle comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// Fit on the input's texts.
    Fit(FitOptions),
    /// Use a model file (ours, or exported from scikit-learn).
    File(PathBuf),
}

/// What `BuildOptions::input` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputFormat {
    /// A JSONL file, one item per line.
    #[default]
    Jsonl,
    /// A LevelDB directory of the original pipeline's layout (key = id, value = item JSON),
    /// or of any earlier deltacache layout.
    LevelDb,
}

/// Everything `build-base` needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// JSONL items, or a LevelDB directory (see `input_format`).
    pub input: PathBuf,
    /// What `input` is.
    pub input_format: InputFormat,
    /// Top-level item fields the filter index covers.
    pub filter_fields: Vec<String>,
    /// Whether the operator named `filter_fields` (`--filter-fields`): then a field no item
    /// carries is refused by name. A defaulted list is only reported.
    pub filter_fields_named: bool,
    /// The bundle directory to create (must not exist).
    pub out: PathBuf,
    /// Dataset name; defaults to the input file's stem.
    pub dataset: Option<String>,
    /// Which fields hold id and text.
    pub fields: ItemFields,
    /// Fit a model or load one.
    pub model: ModelSource,
    /// The delta seq this base already includes.
    pub seq: u64,
    /// For a compacted bundle: the digest and length of the last delta it includes, which
    /// the next delta must name as its parent. `None` derives a base chain digest from the
    /// items.
    pub chain: Option<(String, u64)>,
}

/// What a build did, for the caller to report.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The new bundle's manifest.
    pub manifest: Manifest,
    /// Wall time of each stage, in order.
    pub stage_seconds: Vec<(&'static str, f64)>,
    /// Filter fields no item carries a string, number or boolean value for (only when the
    /// fields were defaulted: named ones are refused instead).
    pub empty_filter_fields: Vec<String>,
}

/// Items written to LevelDB per write batch.
const BATCH_ITEMS: usize = 4096;

/// Builds a bundle. On error nothing is left at `options.out`.
pub fn build_base(options: &BuildOptions) -> anyhow::Result<BuildReport> {
    if options.out.exists() {
        bail!(
            "output {} already exists: remove it or choose another --out",
            options.out.display()
        );
    }
    if let ModelSource::Fit(FitOptions {
        max_features: Some(0),
        ..
    }) = &options.model
    {
        bail!(
            "--max-features 0 keeps no term at all: give the number of terms to keep (1 or more), or leave --max-features out to keep every term"
        );
    }
    let dataset = match &options.dataset {
        Some(name) => name.clone(),
        None => default_dataset(&options.input)?,
    };
    let parent = match options.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".deltacache-build-")
        .tempdir_in(&parent)
        .with_context(|| format!("create a temporary directory in {}", parent.display()))?;
    let manifest_and_stages = build_into(options, &dataset, staging.path())?;
    durable::fsync_tree(staging.path())?;
    let staging_path = staging.keep();
    if let Err(error) = durable::rename_durably(&staging_path, &options.out) {
        let _ = std::fs::remove_dir_all(&staging_path);
        return Err(error);
    }
    Ok(manifest_and_stages)
}

fn build_into(options: &BuildOptions, dataset: &str, dir: &Path) -> anyhow::Result<BuildReport> {
    let mut stage_seconds = Vec::new();
    std::fs::metadata(&options.input)
        .with_context(|| format!("open input {}", options.input.display()))?;

    // Pass one: validate, store metadata, count terms.
    let started = Instant::now();
    let mut stats = match &options.model {
        ModelSource::Fit(fit) => Some(TermStatistics::new(fit.stop_words.as_ref())?),
        ModelSource::File(_) => None,
    };
    let db_dir = dir.join(DB_DIR);
    let (mut db, n_items, items_sha256) = store_items(options, &db_dir, stats.as_mut())?;
    let empty_filter_fields = check_filter_fields(options, &mut db)?;
    stage_seconds.push(("store", started.elapsed().as_secs_f64()));

    // The model.
    let started = Instant::now();
    let model = match (&options.model, stats) {
        (ModelSource::Fit(fit), Some(stats)) => stats.fit(fit)?,
        (ModelSource::File(path), _) => TfidfModel::load(path)?,
        (ModelSource::Fit(_), None) => unreachable!("statistics are gathered when fitting"),
    };
    std::fs::write(dir.join(MODEL_FILE), model.to_json()).context("write model.json")?;
    stage_seconds.push(("model", started.elapsed().as_secs_f64()));

    // Pass two: the index.
    let started = Instant::now();
    let index = build_index(options, &model, &mut db, n_items)?;
    index.save(&dir.join(INDEX_FILE))?;
    drop(index);
    stage_seconds.push(("index", started.elapsed().as_secs_f64()));

    // Record the chain position in the database itself, then compact and close it.
    let started = Instant::now();
    let (chain_digest, chain_len) = match &options.chain {
        Some((digest, len)) => (digest.clone(), *len),
        None => (
            super::base_chain_digest(dataset, options.seq, model.fingerprint(), &items_sha256),
            0,
        ),
    };
    finish_db(db, &db_dir, options.seq, &chain_digest)?;
    stage_seconds.push(("compact", started.elapsed().as_secs_f64()));

    // The manifest, last.
    let started = Instant::now();
    let manifest = Manifest {
        format: BUNDLE_FORMAT.into(),
        format_version: BUNDLE_FORMAT_VERSION,
        dataset: dataset.to_owned(),
        seq: options.seq,
        schema_version: leveldb::SCHEMA_VERSION,
        filter_fields: options.filter_fields.clone(),
        model_fingerprint: model.fingerprint().to_owned(),
        n_terms: model.n_terms(),
        n_items,
        id_field: options.fields.id_field.clone(),
        text_field: options.fields.text_field.clone(),
        created_at: crate::clock::now_secs(),
        built_by: format!("deltacache {}", env!("CARGO_PKG_VERSION")),
        chain_digest,
        chain_len,
        items_sha256,
        files: digest_files(dir)?,
    };
    let bytes = serde_json::to_vec_pretty(&manifest).context("encode manifest")?;
    std::fs::write(dir.join(MANIFEST_FILE), bytes).context("write manifest.json")?;
    stage_seconds.push(("manifest", started.elapsed().as_secs_f64()));
    // A bundle that cannot be reopened is not finished.
    Bundle::open(dir)?;
    Ok(BuildReport {
        manifest,
        stage_seconds,
        empty_filter_fields,
    })
}

/// The dataset name taken from the input's file stem, refused when the stem holds a digit:
/// a date, a version or a part number changes from one build to the next, while every delta
/// of a store is bound to the one dataset name its chain started with.
fn default_dataset(input: &Path) -> anyhow::Result<String> {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .with_context(|| {
            format!(
                "cannot derive a dataset name from {}: pass --dataset NAME",
                input.display()
            )
        })?;
    if stem.chars().any(|c| c.is_ascii_digit()) {
        let cut = stem.find(|c: char| c.is_ascii_digit()).unwrap_or(0);
        let suggested = stem[..cut].trim_end_matches(['-', '_', '.', ' ']);
        let suggested = if suggested.is_empty() {
            "catalogue"
        } else {
            suggested
        };
        bail!(
            "no --dataset, and the input's name {stem:?} holds a number (a date, version or part number that changes from build to build), so it cannot be the dataset name: every delta of a store must carry the dataset its chain started with. Pass --dataset NAME, the same on every build for that store (for example --dataset {suggested})"
        );
    }
    Ok(stem)
}

/// Checks that some item carries each filter field (a string, number or boolean value, the
/// only kind indexed): a field named with `--filter-fields` that none carries is refused by
/// name (a dotted name with what to do about nested fields); a defaulted one is returned for
/// the report.
fn check_filter_fields(
    options: &BuildOptions,
    db: &mut rusty_leveldb::DB,
) -> anyhow::Result<Vec<String>> {
    let mut empty = Vec::new();
    for field in &options.filter_fields {
        let mut prefix = crate::db::filter::FILTER_KEY_PREFIX.to_vec();
        prefix.extend_from_slice(field.as_bytes());
        prefix.push(0);
        if leveldb::any_with_prefix(db, &prefix)? {
            continue;
        }
        if !options.filter_fields_named {
            empty.push(field.clone());
            continue;
        }
        if let Some((parent, _)) = field.split_once('.') {
            bail!(
                "--filter-fields {field:?}: no item has a top-level field of that name. Filters index top-level fields only; a dotted name is not a path into {parent:?}: copy the value into a top-level field of every item (for example {:?}) and name that, or drop {field:?} from --filter-fields",
                field.rsplit('.').next().unwrap_or(field)
            );
        }
        bail!(
            "--filter-fields {field:?}: no item of {} has a string, number or boolean value for it, so it would index nothing: fix the name (fields are top-level and case-sensitive) or drop it from --filter-fields",
            options.input.display()
        );
    }
    Ok(empty)
}

/// Pass one: validates every item and writes it into a new database at `db_dir` in this
/// binary's layout, counting terms into `stats` when a model is fitted. Returns the open
/// database, the item count and the items' digest.
fn store_items(
    options: &BuildOptions,
    db_dir: &Path,
    stats: Option<&mut TermStatistics>,
) -> anyhow::Result<(rusty_leveldb::DB, u64, String)> {
    check_field_names(&options.filter_fields)?;
    let migration = MigrationContext::new(options.filter_fields.clone());
    match options.input_format {
        InputFormat::Jsonl => {
            let (mut db, n_items, items_sha256) = store_jsonl(options, db_dir, stats)?;
            migrate(&mut db, 1, &migration, "the new bundle")?;
            Ok((db, n_items, items_sha256))
        }
        InputFormat::LevelDb => adopt_leveldb(options, db_dir, &migration, stats),
    }
}

/// The size and digest of every file under `dir`, by relative path.
fn digest_files(dir: &Path) -> anyhow::Result<BTreeMap<String, crate::digest::FileDigest>> {
    list_files(dir)?
        .into_iter()
        .map(|rel| Ok((rel.clone(), digest_file(&dir.join(&rel))?)))
        .collect()
}

/// Pass two: embeds every item (from the JSONL input again, or from the adopted database)
/// into a new index; the item count must match pass one's.
fn build_index(
    options: &BuildOptions,
    model: &TfidfModel,
    db: &mut rusty_leveldb::DB,
    n_items: u64,
) -> anyhow::Result<VectorIndex> {
    let mut index = VectorIndex::new(model.n_terms());
    match options.input_format {
        InputFormat::Jsonl => {
            let input_len = std::fs::metadata(&options.input)
                .with_context(|| format!("open input {}", options.input.display()))?
                .len();
            let mut progress = Progress::bytes("index", input_len);
            let mut reader = ItemReader::open(&options.input, options.fields.clone())?;
            let mut n_read = 0u64;
            while let Some(next) = reader.next() {
                let (_, item) = next?;
                index.upsert(&item.id, &model.embed(&item.text))?;
                n_read += 1;
                if n_read.is_multiple_of(8192) {
                    progress.set(reader.bytes_read());
                }
            }
            progress.finish();
            if n_read != n_items {
                bail!(
                    "{} changed while it was read ({n_items} items, then {n_read}): build from a file nothing writes to",
                    options.input.display()
                );
            }
        }
        InputFormat::LevelDb => {
            let mut progress = Progress::items("index", n_items);
            let mut n_read = 0u64;
            leveldb::for_each_item(db, |_, json| {
                let item = parse_item(std::str::from_utf8(json)?, &options.fields)?;
                index.upsert(&item.id, &model.embed(&item.text))?;
                n_read += 1;
                if n_read.is_multiple_of(8192) {
                    progress.set(n_read);
                }
                Ok(())
            })?;
            progress.finish();
        }
    }
    Ok(index)
}

/// Records the chain position in the database, compacts and closes it, and removes
/// LevelDB's scratch files (lock, info logs), which a bundle never lists.
fn finish_db(
    mut db: rusty_leveldb::DB,
    db_dir: &Path,
    seq: u64,
    chain_digest: &str,
) -> anyhow::Result<()> {
    let recorded = leveldb::RecordedState {
        seq,
        chain_digest: chain_digest.to_owned(),
    };
    db.put(leveldb::STATE_KEY, &serde_json::to_vec(&recorded)?)
        .map_err(|s| anyhow!("{s}"))
        .context("record the chain position")?;
    db.compact_range(b"", b"\xff\xff\xff\xff")
        .map_err(|s| anyhow!("{s}"))
        .context("compact LevelDB")?;
    db.close()
        .map_err(|s| anyhow!("{s}"))
        .context("close LevelDB")?;
    drop(db);
    for scratch in ["LOCK", "LOG", "LOG.old"] {
        let path = db_dir.join(scratch);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Pass one over JSONL: validates every line, writes the items in layout 1, counts terms.
/// Returns the open database, the item count and the items' digest.
fn store_jsonl(
    options: &BuildOptions,
    db_dir: &Path,
    mut stats: Option<&mut TermStatistics>,
) -> anyhow::Result<(rusty_leveldb::DB, u64, String)> {
    let input_len = std::fs::metadata(&options.input)
        .with_context(|| format!("open items file {}", options.input.display()))?
        .len();
    let mut db = leveldb::open_db(db_dir, true)?;
    let mut seen: HashMap<Box<str>, usize> = HashMap::new();
    let mut batch = WriteBatch::default();
    let mut batch_len = 0;
    let mut n_items = 0u64;
    let mut items_hasher = Sha256::new();
    let mut progress = Progress::bytes("store", input_len);
    let mut reader = ItemReader::open(&options.input, options.fields.clone())?;
    while let Some(next) = reader.next() {
        let (line_no, item) = next?;
        if let Some(first) = seen.get(item.id.as_str()) {
            bail!(
                "{} line {line_no}: duplicate id {:?} (first on line {first}): ids must be unique; remove or rename one of them",
                options.input.display(),
                item.id
            );
        }
        seen.insert(item.id.as_str().into(), line_no);
        if let Some(stats) = stats.as_mut() {
            stats.add_document(&item.text);
        }
        items_hasher.update(item.json.as_bytes());
        items_hasher.update(b"\n");
        batch.put(&leveldb::item_key(&item.id), item.json.as_bytes());
        batch_len += 1;
        n_items += 1;
        if batch_len == BATCH_ITEMS {
            db.write(std::mem::take(&mut batch), false)
                .map_err(|s| anyhow!("{s}"))
                .context("write items to LevelDB")?;
            batch_len = 0;
            progress.set(reader.bytes_read());
        }
    }
    progress.finish();
    if n_items == 0 {
        bail!(
            "{} holds no items: give a JSONL file with one JSON object per line",
            options.input.display()
        );
    }
    if batch_len > 0 {
        db.write(batch, false)
            .map_err(|s| anyhow!("{s}"))
            .context("write items to LevelDB")?;
    }
    Ok((db, n_items, hex::encode(items_hasher.finalize())))
}

/// Pass one over a LevelDB of an earlier layout: clones it into the bundle (the source is
/// never opened), migrates the clone to the current layout, then validates every item and
/// counts terms. The items' digest is taken in key order.
fn adopt_leveldb(
    options: &BuildOptions,
    db_dir: &Path,
    migration: &MigrationContext,
    mut stats: Option<&mut TermStatistics>,
) -> anyhow::Result<(rusty_leveldb::DB, u64, String)> {
    let source = &options.input;
    if !source.join("CURRENT").is_file() {
        bail!(
            "{} is not a LevelDB directory (no CURRENT file inside): pass the directory the original pipeline wrote",
            source.display()
        );
    }
    let method = clone_db_dir(source, db_dir)
        .with_context(|| format!("copy LevelDB {}", source.display()))?;
    tracing::info!(source = %source.display(), %method, "cloned the source LevelDB; it is not opened");
    let what = format!("LevelDB {}", source.display());
    let mut db = leveldb::open_db(db_dir, false)?;
    let migrated = migrate(&mut db, 0, migration, &what)?;
    tracing::info!(from = migrated.from, to = migrated.to, applied = ?migrated.applied, "migrated the copy");
    let mut n_items = 0u64;
    let mut items_hasher = Sha256::new();
    let mut progress = Progress::items("store", 0);
    leveldb::for_each_item(&mut db, |id, json| {
        let text = std::str::from_utf8(json)
            .map_err(|_| anyhow!("{what}: item {id:?} is not UTF-8 JSON"))?;
        let item =
            parse_item(text, &options.fields).map_err(|e| anyhow!("{what}: item {id:?}: {e}"))?;
        if item.id != id {
            bail!(
                "{what}: the item stored under key {id:?} has {} {:?}: the original layout keys each item by its id; fix the source or name the id field with --id-field",
                options.fields.id_field,
                item.id
            );
        }
        if let Some(stats) = stats.as_mut() {
            stats.add_document(&item.text);
        }
        items_hasher.update(json);
        items_hasher.update(b"\n");
        n_items += 1;
        if n_items.is_multiple_of(8192) {
            progress.set(n_items);
        }
        Ok(())
    })?;
    progress.finish();
    if n_items == 0 {
        bail!("{what} holds no items: nothing to build a bundle from");
    }
    Ok((db, n_items, hex::encode(items_hasher.finalize())))
}

/// Parses `--stop-words`.
pub fn stop_words_setting(value: &str) -> anyhow::Result<Option<StopWords>> {
    match value {
        "english" => Ok(Some(StopWords::Named("english".into()))),
        "none" => Ok(None),
        other => bail!("--stop-words {other:?} is not supported: use english or none"),
    }
}
