//! Keeping a Pinecone index in step with the catalogue: every item of a bundle
//! (`build-base --pinecone`, resumable) and the changes of a delta (`publish-delta
//! --pinecone`).
//!
//! Resuming: after each acknowledged upsert request, `BUNDLE.pinecone-progress.json` (beside
//! the bundle) records how many vectors Pinecone has acknowledged, for which bundle, index
//! and namespace. Items are read from the bundle in key order and packed into the same
//! batches every time, so a re-run skips what was acknowledged; upserts are idempotent, so
//! a batch sent twice does no harm. When everything is acknowledged the file says
//! `"complete": true`.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::bundle::Bundle;
use crate::bundle::build::{BuildOptions, BuildReport, build_base};
use crate::bundle::items::{ItemFields, parse_item};
use crate::db::filter::filterable_metadata;
use crate::delta::publish::{PublishOptions, PublishProgress, PublishReport, publish_reporting};
use crate::durable;
use crate::pinecone::{PineconeClient, UpsertBatch, UpsertBatcher};
use crate::progress::Progress;
use crate::search::tfidf::TfidfModel;

/// What the progress file records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpsertProgress {
    /// sha256 of the bundle's manifest: progress of another bundle is not resumed.
    pub manifest_sha256: String,
    /// The index's base URL.
    pub index: String,
    /// The namespace.
    pub namespace: String,
    /// Vectors acknowledged, counted from the first item in key order.
    pub n_acknowledged: u64,
    /// Whether every item is acknowledged.
    pub complete: bool,
}

/// The progress file of `bundle_dir`: `BUNDLE.pinecone-progress.json` beside it.
pub fn progress_path(bundle_dir: &Path) -> PathBuf {
    let mut name = bundle_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "bundle".into());
    name.push(".pinecone-progress.json");
    bundle_dir.with_file_name(name)
}

/// What an upload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpsertReport {
    /// Vectors sent by this run.
    pub n_sent: u64,
    /// Vectors skipped because an earlier run had them acknowledged.
    pub n_skipped: u64,
    /// Requests sent by this run.
    pub n_requests: u64,
}

/// Upserts every item of the bundle, resuming from its progress file. Checks the index's
/// dimension first.
pub async fn upsert_bundle(
    bundle_dir: &Path,
    client: &PineconeClient,
) -> anyhow::Result<UpsertReport> {
    let bundle = Bundle::open(bundle_dir)?;
    let model = bundle.load_model()?;
    client.check_dimension(model.n_terms()).await?;
    let progress_file = progress_path(bundle_dir);
    let progress = resumable_progress(&bundle, client, &progress_file)?;
    if progress.complete {
        tracing::info!(file = %progress_file.display(), "every vector already acknowledged");
        return Ok(UpsertReport {
            n_skipped: progress.n_acknowledged,
            ..Default::default()
        });
    }
    // The bundle's database is read from a clone (the bundle is never opened in place).
    let scratch = tempfile::tempdir().context("create a scratch directory")?;
    let export = scratch.path().join("items.jsonl");
    {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&export).context("create the export file")?,
        );
        crate::db::leveldb::export_items(
            &bundle.dir.join(crate::bundle::DB_DIR),
            scratch.path(),
            &mut out,
        )?;
        std::io::Write::flush(&mut out).context("write the export file")?;
    }
    let mut upload = Upload {
        client,
        progress_file: &progress_file,
        progress,
        report: UpsertReport::default(),
        bar: Progress::items("pinecone", bundle.manifest.n_items),
    };
    upload.send_all(&bundle, &model, &export).await?;
    upload.bar.finish();
    upload.progress.complete = true;
    durable::write_atomically(
        &progress_file,
        &serde_json::to_vec_pretty(&upload.progress)?,
    )?;
    Ok(upload.report)
}

/// The progress an earlier run recorded for this bundle, index and namespace, or a fresh
/// start.
fn resumable_progress(
    bundle: &Bundle,
    client: &PineconeClient,
    progress_file: &Path,
) -> anyhow::Result<UpsertProgress> {
    let settings = client.settings();
    let fresh = UpsertProgress {
        manifest_sha256: bundle.manifest_sha256.clone(),
        index: settings.base_url.clone(),
        namespace: settings.namespace.clone(),
        n_acknowledged: 0,
        complete: false,
    };
    let Ok(bytes) = std::fs::read(progress_file) else {
        return Ok(fresh);
    };
    let earlier: UpsertProgress = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "parse {} (remove it to start over)",
            progress_file.display()
        )
    })?;
    let same = earlier.manifest_sha256 == fresh.manifest_sha256
        && earlier.index == fresh.index
        && earlier.namespace == fresh.namespace;
    Ok(if same { earlier } else { fresh })
}

/// One resumable upload in progress.
struct Upload<'a> {
    client: &'a PineconeClient,
    progress_file: &'a Path,
    progress: UpsertProgress,
    report: UpsertReport,
    bar: Progress,
}

impl Upload<'_> {
    /// Packs the exported items (JSONL in key order, so the batches are the same every run)
    /// into batches and sends each one not yet acknowledged.
    async fn send_all(
        &mut self,
        bundle: &Bundle,
        model: &TfidfModel,
        export: &Path,
    ) -> anyhow::Result<()> {
        let fields = bundle.manifest.item_fields();
        let mut batcher = UpsertBatcher::new(model.n_terms(), &self.client.settings().namespace);
        // Index (in key order) of the first vector of the next batch to send.
        let mut first = 0u64;
        let reader =
            std::io::BufReader::new(std::fs::File::open(export).context("open the export file")?);
        for line in reader.lines() {
            let line = line.context("read the export file")?;
            let item = parse_item(&line, &fields).context("an item of the bundle")?;
            let vector = model.embed(&item.text);
            let metadata =
                filterable_metadata(item.json.as_bytes(), &bundle.manifest.filter_fields);
            if let Some(batch) = batcher.push(&item.id, &vector, &metadata)? {
                let n_vectors = batch.n_vectors as u64;
                self.send(batch, first).await?;
                first += n_vectors;
            }
        }
        if let Some(batch) = batcher.finish() {
            self.send(batch, first).await?;
        }
        Ok(())
    }

    /// Sends `batch`, whose first vector is number `first` in key order, unless an earlier run had it acknowledged; records the acknowledgement.
    async fn send(&mut self, batch: UpsertBatch, first: u64) -> anyhow::Result<()> {
        let n_acknowledged = self.progress.n_acknowledged;
        let n_in_batch = batch.n_vectors as u64;
        let end = first + n_in_batch;
        if end <= n_acknowledged {
            self.report.n_skipped += n_in_batch;
        } else if first < n_acknowledged {
            bail!(
                "{} records {n_acknowledged} vectors acknowledged, which is not a batch boundary: remove it to start over",
                self.progress_file.display()
            );
        } else {
            self.client.upsert_batch(&batch).await.with_context(|| {
                format!(
                    "upsert vectors {first}..{end} to {} (re-run the same command to resume)",
                    self.client.describe()
                )
            })?;
            self.report.n_sent += n_in_batch;
            self.report.n_requests += 1;
            self.progress.n_acknowledged = end;
            durable::write_atomically(
                self.progress_file,
                &serde_json::to_vec_pretty(&self.progress)?,
            )?;
        }
        self.bar.set(end);
        Ok(())
    }
}

/// Mirrors one published delta: deletes `deletes`, then upserts the vectors of `puts` (item
/// JSON lines) with their `filter_fields` as metadata. See the README ("Pinecone users")
/// for why this runs after the head moved.
pub async fn mirror_changes(
    client: &PineconeClient,
    model: &TfidfModel,
    fields: &ItemFields,
    filter_fields: &[String],
    puts: &[String],
    deletes: &[String],
) -> anyhow::Result<UpsertReport> {
    client.check_dimension(model.n_terms()).await?;
    let mut report = UpsertReport::default();
    if !deletes.is_empty() {
        client
            .delete(deletes)
            .await
            .with_context(|| format!("delete {} ids from {}", deletes.len(), client.describe()))?;
    }
    let mut batcher = UpsertBatcher::new(model.n_terms(), &client.settings().namespace);
    let mut batches = Vec::new();
    for json in puts {
        let item = parse_item(json, fields).context("a put of the delta")?;
        let metadata = filterable_metadata(item.json.as_bytes(), filter_fields);
        if let Some(batch) = batcher.push(&item.id, &model.embed(&item.text), &metadata)? {
            batches.push(batch);
        }
    }
    batches.extend(batcher.finish());
    for batch in batches {
        client.upsert_batch(&batch).await.with_context(|| {
            format!(
                "upsert {} vectors to {}",
                batch.n_vectors,
                client.describe()
            )
        })?;
        report.n_sent += batch.n_vectors as u64;
        report.n_requests += 1;
    }
    Ok(report)
}

/// What [`build_and_upload`] did.
#[derive(Debug)]
pub struct BuildAndUpload {
    /// The build, or `None` when an interrupted run had already built the bundle.
    pub built: Option<BuildReport>,
    /// The upload.
    pub upload: UpsertReport,
}

/// `build-base --pinecone`: builds the bundle, then upserts every vector. When `options.out`
/// already holds a bundle (an interrupted earlier run), the build is skipped and the upload
/// resumes from its progress file.
pub async fn build_and_upload(
    options: BuildOptions,
    client: &PineconeClient,
) -> anyhow::Result<BuildAndUpload> {
    let out = options.out.clone();
    let built = if out.join(crate::bundle::MANIFEST_FILE).exists() {
        tracing::info!(bundle = %out.display(), "the bundle exists; resuming the Pinecone upload");
        None
    } else {
        Some(
            tokio::task::spawn_blocking(move || build_base(&options))
                .await
                .context("join the build task")??,
        )
    };
    let upload = upsert_bundle(&out, client).await?;
    Ok(BuildAndUpload { built, upload })
}

/// `publish-delta --pinecone`: checks the index's dimension before anything is published,
/// publishes the delta, then mirrors its changes (see [`mirror_changes`]). A mirroring
/// failure after the publish says so: the delta is published and Pinecone is behind it.
pub async fn publish_and_mirror(
    options: &PublishOptions,
    client: &PineconeClient,
    progress: &PublishProgress,
) -> anyhow::Result<(PublishReport, UpsertReport)> {
    let bundle = Bundle::open(&options.bundle)?;
    let model = bundle.load_model()?;
    client.check_dimension(model.n_terms()).await?;
    let report = publish_reporting(options, progress).await?;
    if report.dry_run {
        return Ok((report, UpsertReport::default()));
    }
    let fields = bundle.manifest.item_fields();
    let mirrored = mirror_changes(
        client,
        &model,
        &fields,
        &bundle.manifest.filter_fields,
        &report.puts,
        &report.deleted_ids,
    )
    .await
    .with_context(|| {
        format!(
            "seq {} is published but Pinecone {} is behind it: instances will count join misses for its new ids; re-run `build-base --pinecone` against a bundle at this seq, or re-publish the items",
            report.seq,
            client.describe()
        )
    })?;
    Ok((report, mirrored))
}
