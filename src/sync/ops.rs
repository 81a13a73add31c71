//! Operator actions on a state dir: one-shot sync, status, export, rollback, compact.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use super::{SyncOptions, SyncOutcome, Syncer, with_deadline};
use crate::bundle::build::{BuildOptions, BuildReport, InputFormat, ModelSource, build_base};
use crate::bundle::{Bundle, MODEL_FILE};
use crate::db::leveldb::export_items;
use crate::search::tfidf::FitOptions;
use crate::state::{Cancel, LocalState, StateDir};

/// The boot-time sync alone: brings the state dir to the head, then returns.
pub async fn sync_once(
    bundle_dir: &Path,
    state_dir: &Path,
    options: SyncOptions,
    deadline: Duration,
) -> anyhow::Result<SyncOutcome> {
    let (bundle_dir, state_dir) = (bundle_dir.to_path_buf(), state_dir.to_path_buf());
    let local =
        tokio::task::spawn_blocking(move || LocalState::open(&bundle_dir, &state_dir)).await??;
    let keep_versions = options.keep_versions;
    let syncer = Syncer::open(options, &local.bundle, local.models.clone()).await?;
    let cancel = Cancel::default();
    let outcome = with_deadline(
        deadline,
        "sync",
        &cancel,
        syncer.sync(&local.state, &local.version, &cancel),
    )
    .await?;
    match &outcome {
        SyncOutcome::Applied(made) => {
            if let Some(reason) = &made.refused_rest {
                bail!(
                    "applied up to seq {} but refused the rest of the chain: {reason}",
                    made.version.info.seq
                );
            }
        }
        SyncOutcome::GateRefused { .. } => bail!(
            "{}; the state dir still holds seq {}",
            outcome.describe(),
            local.version.info.seq
        ),
        _ => {}
    }
    local
        .state
        .collect_garbage_in_background(keep_versions, "")
        .await;
    Ok(outcome)
}

/// What `status` prints.
#[derive(Debug, Serialize)]
pub struct StateReport {
    /// The current version's name.
    pub current: Option<String>,
    /// The pinned version, if rolled back.
    pub pinned: Option<String>,
    /// Seq of the current version.
    pub applied_seq: Option<u64>,
    /// Highest head ever accepted.
    pub head_seq_seen: Option<u64>,
    /// When that head was issued (seconds since the epoch; RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub head_issued_at: Option<u64>,
    /// When the current version was made (the last successful sync that applied deltas).
    #[serde(serialize_with = "rfc3339")]
    pub last_sync_at: Option<u64>,
    /// Every committed version, oldest first.
    pub versions: Vec<VersionReport>,
}

/// One committed version, as `status` shows it.
#[derive(Debug, Serialize)]
pub struct VersionReport {
    /// Its name (`versions/NAME`).
    pub name: String,
    /// The delta seq it holds.
    pub seq: u64,
    /// Its item count.
    pub n_items: u64,
    /// When it was made (seconds since the epoch; RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub created_at: Option<u64>,
}

/// A time in seconds since the epoch, written as RFC 3339 (`2026-12-01T21:00:00Z`).
fn rfc3339<S: serde::Serializer>(secs: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match secs.and_then(|s| jiff::Timestamp::from_second(i64::try_from(s).ok()?).ok()) {
        Some(time) => serializer.serialize_str(&time.to_string()),
        None => serializer.serialize_none(),
    }
}

/// Reads what a state dir holds, without locking it.
pub fn state_report(state_dir: &Path) -> anyhow::Result<StateReport> {
    let state = StateDir::inspect(state_dir)?;
    let current_name = state.current_name()?;
    let versions = state.versions()?;
    let current = versions
        .iter()
        .find(|v| Some(&v.info.name) == current_name.as_ref());
    let watermark = state.watermark()?;
    Ok(StateReport {
        current: current_name.clone(),
        pinned: state.pinned()?,
        applied_seq: current.map(|v| v.info.seq),
        head_seq_seen: watermark.map(|w| w.seq),
        head_issued_at: watermark.map(|w| w.issued_at),
        last_sync_at: current.map(|v| v.info.created_at),
        versions: versions
            .iter()
            .map(|v| VersionReport {
                name: v.info.name.clone(),
                seq: v.info.seq,
                n_items: v.info.n_items,
                created_at: Some(v.info.created_at),
            })
            .collect(),
    })
}

/// Writes the current version's items as JSONL; returns the count.
pub fn export(state_dir: &Path, out: &mut impl std::io::Write) -> anyhow::Result<u64> {
    let state = StateDir::inspect(state_dir)?;
    let name = state
        .current_name()?
        .context("the state dir has no current version: run sync or serve first")?;
    let version = state.load_version(&name)?;
    let scratch = state.scratch("export")?;
    let n_items = export_items(&version.db_dir(), scratch.path(), out)?;
    if n_items != version.info.n_items {
        bail!(
            "version {name} records {} items but its database yields {n_items}: the version is damaged",
            version.info.n_items
        );
    }
    Ok(n_items)
}

/// Makes the kept version with `seq` current and pins it (or, with `None`, unpins) on a
/// state dir no daemon is running on: takes the state dir's lock, so it never races a sync.
/// A running daemon is reached through its control socket instead (`server::control`).
pub fn rollback(state_dir: &Path, to_seq: Option<u64>) -> anyhow::Result<String> {
    StateDir::inspect(state_dir)?;
    let state = StateDir::open(state_dir)?;
    let Some(seq) = to_seq else {
        state.set_pinned(None)?;
        return Ok("unpinned: the next serve or sync follows the delta store again".into());
    };
    let version = super::follow::pin_kept_version(&state, seq)?;
    Ok(format!(
        "current version is now {} (seq {seq}), pinned; the next serve serves it, and `rollback --unpin` follows again",
        version.info.name
    ))
}

/// What `verify` found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The newest trusted root version.
    pub root_version: u64,
    /// The targets version.
    pub targets_version: u64,
    /// The timestamp version.
    pub timestamp_version: u64,
    /// When the timestamp expires (RFC 3339).
    pub timestamp_expires: String,
    /// Every delta checked, oldest first.
    pub deltas: Vec<VerifiedSummary>,
    /// The seq and digest the oldest delta follows.
    pub base: (u64, String),
}

/// One delta `verify` checked.
#[derive(Debug, Clone)]
pub struct VerifiedSummary {
    /// Its seq.
    pub seq: u64,
    /// Its sha256.
    pub digest: String,
    /// Its length.
    pub len: u64,
    /// Its record count.
    pub n_records: u64,
}

/// Verifies a delta store's repository from a trusted root (a scratch datastore: nothing
/// is remembered) and every delta of its chain: from `bundle`'s position when given, else
/// from the first delta's parent. Fails on the first fault, naming the object.
pub async fn verify_repository(
    store_url: &str,
    remote: &crate::delta_store::RemoteSettings,
    trusted_root: &Path,
    bundle: Option<&Path>,
    max_delta_bytes: u64,
) -> anyhow::Result<VerifyReport> {
    use crate::delta::chain::{ChainPosition, delta_targets, verify_delta};
    use crate::delta::snapshot::{plan_across, snapshot_targets};
    let root = super::read_trusted_root(trusted_root)?;
    let store = Arc::new(crate::delta_store::DeltaStore::open(store_url, remote).await?);
    let datastore = tempfile::tempdir().context("create a scratch directory")?;
    let limits = crate::tuf::client::ClientLimits {
        max_target_bytes: max_delta_bytes,
        ..Default::default()
    };
    let repo = crate::tuf::client::load(store, &root, datastore.path(), limits).await?;
    let targets = repo.targets();
    let deltas = delta_targets(&targets)?;
    let snapshots = snapshot_targets(&targets)?;
    let position = match (bundle, deltas.first()) {
        (Some(dir), _) => ChainPosition::of_bundle(&Bundle::open(dir)?.manifest)
            .held_by(format!("bundle {}", dir.display())),
        (None, Some(first)) => ChainPosition::new(
            &first.meta.dataset,
            first.meta.parent_seq,
            &first.meta.parent_digest,
            first.meta.parent_len,
            &first.meta.model_fingerprint,
        ),
        (None, None) => ChainPosition::new("", 0, "", 0, ""),
    };
    // Across model rollovers: the deltas after one are checked against its model.
    let planned = plan_across(&deltas, &snapshots, &position)?.deltas;
    let mut report = VerifyReport {
        root_version: repo.root_version(),
        targets_version: repo.targets_version(),
        timestamp_version: repo.timestamp_version(),
        timestamp_expires: jiff::Timestamp::from_second(repo.timestamp_expires())
            .map(|t| t.to_string())
            .unwrap_or_default(),
        deltas: Vec::new(),
        base: (position.seq, position.digest.clone()),
    };
    for delta in &planned {
        let bytes = repo.read_target(&delta.name).await?;
        let verified = verify_delta(&bytes, delta, crate::delta::format::MAX_RECORDS_BYTES)?;
        report.deltas.push(VerifiedSummary {
            seq: verified.seq,
            digest: verified.digest,
            len: verified.len,
            n_records: verified.batch.header.n_records,
        });
    }
    Ok(report)
}

/// A new bundle at the head: sync a scratch state dir from `bundle`, export it, build.
pub async fn compact(
    bundle_dir: &Path,
    options: SyncOptions,
    out: &Path,
    refit: bool,
) -> anyhow::Result<BuildReport> {
    if out.exists() {
        bail!(
            "output {} already exists: remove it or choose another --out",
            out.display()
        );
    }
    let scratch = tempfile::Builder::new()
        .prefix(".deltacache-compact-")
        .tempdir()
        .context("create a scratch directory")?;
    let state_dir = scratch.path().join("state");
    sync_once(bundle_dir, &state_dir, options, Duration::from_secs(3600)).await?;
    let bundle = Bundle::open(bundle_dir)?;
    let state = Arc::new(StateDir::inspect(&state_dir)?);
    let version = state.load_version(&state.current_name()?.context("sync made no version")?)?;
    let items = scratch.path().join("items.jsonl");
    {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&items).context("create the exported items")?,
        );
        export(&state_dir, &mut file)?;
        std::io::Write::flush(&mut file)?;
    }
    let model = if refit {
        ModelSource::Fit(FitOptions {
            max_features: None,
            stop_words: Some(crate::search::tfidf::StopWords::Named("english".into())),
        })
    } else {
        // After a model rollover the version has its own model.
        let own = version.dir.join(MODEL_FILE);
        ModelSource::File(if own.is_file() {
            own
        } else {
            bundle.dir.join(MODEL_FILE)
        })
    };
    let options = BuildOptions {
        input: items,
        input_format: InputFormat::Jsonl,
        filter_fields: bundle.manifest.filter_fields.clone(),
        filter_fields_named: false,
        out: out.to_path_buf(),
        dataset: Some(bundle.manifest.dataset.clone()),
        fields: bundle.manifest.item_fields(),
        model,
        seq: version.info.seq,
        chain: Some((version.info.chain_digest.clone(), version.info.chain_len)),
    };
    tokio::task::spawn_blocking(move || build_base(&options)).await?
}
