//! `deltacache build-base`.

use std::path::PathBuf;

use clap::Args;

use super::pinecone_args::PineconeArgs;
use crate::bundle::build::{
    BuildOptions, BuildReport, InputFormat, ModelSource, build_base, stop_words_setting,
};
use crate::bundle::items::ItemFields;
use crate::config::ConfigFile;
use crate::pinecone::PineconeClient;
use crate::pinecone::mirror::{build_and_upload, progress_path};
use crate::search::tfidf::FitOptions;

#[derive(Debug, Args)]
pub(super) struct BuildBaseArgs {
    /// JSONL items, one JSON object per line; the whole object is the item's metadata.
    #[arg(long, value_name = "FILE", required_unless_present = "from_leveldb")]
    input: Option<PathBuf>,
    /// Adopt a LevelDB written by the original Python pipeline (key = item id, value =
    /// item JSON) instead of JSONL: it is copied, never opened in place, and the copy is
    /// migrated to the current layout. Usually given with --sklearn-model.
    #[arg(long, value_name = "DIR", conflicts_with = "input")]
    from_leveldb: Option<PathBuf>,
    /// Top-level item fields to index for filtered search (comma-separated, spaces around
    /// names ignored; "" for none): a named field that no item carries is refused, nested
    /// paths (metadata.language) are not supported [default: category]
    #[arg(long, value_name = "FIELDS", value_delimiter = ',')]
    filter_fields: Option<Vec<String>>,
    /// Bundle directory to create; must not exist. Written to a temporary directory beside
    /// it and renamed into place at the end.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Dataset name that deltas must carry; give the same one on every build for a store
    /// [default: the input file's stem, refused when it holds a digit, as a date does].
    #[arg(long)]
    dataset: Option<String>,
    /// Field holding each item's id (a non-empty string, unique).
    #[arg(long, default_value = "id")]
    id_field: String,
    /// Field holding the text that is embedded (a string).
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Keep only the N most frequent terms (scikit-learn's max_features) [default: no limit].
    #[arg(long, value_name = "N", conflicts_with = "sklearn_model")]
    max_features: Option<usize>,
    /// Stop words dropped before counting: english (scikit-learn's built-in list) or none.
    #[arg(long, default_value = "english", value_parser = ["english", "none"], conflicts_with = "sklearn_model")]
    stop_words: String,
    /// Use a model exported from scikit-learn by scripts/export_sklearn_vectorizer.py
    /// instead of fitting one on the input.
    #[arg(long, value_name = "FILE")]
    sklearn_model: Option<PathBuf>,
    /// The delta sequence number this base already includes.
    #[arg(long, default_value_t = 0)]
    seq: u64,
    /// Also upsert every item's vector to a Pinecone index (resumable: re-run the same
    /// command after an interruption; progress is kept in OUT.pinecone-progress.json).
    #[arg(long)]
    pinecone: bool,
    #[command(flatten)]
    pinecone_args: PineconeArgs,
}

pub(super) fn run(args: BuildBaseArgs) -> anyhow::Result<()> {
    let client = match args.pinecone {
        true => Some(PineconeClient::new(
            args.pinecone_args.settings(&ConfigFile::default())?,
        )?),
        false => None,
    };
    let model = match args.sklearn_model {
        Some(path) => ModelSource::File(path),
        None => ModelSource::Fit(FitOptions {
            max_features: args.max_features,
            stop_words: stop_words_setting(&args.stop_words)?,
        }),
    };
    let (input, input_format) = match (args.input, args.from_leveldb) {
        (Some(input), _) => (input, InputFormat::Jsonl),
        (None, Some(dir)) => (dir, InputFormat::LevelDb),
        (None, None) => anyhow::bail!("give --input FILE or --from-leveldb DIR"),
    };
    let filter_fields_named = args.filter_fields.is_some();
    let filter_fields = match args.filter_fields {
        Some(fields) => fields
            .iter()
            .map(|f| f.trim())
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect(),
        None => crate::db::filter::default_filter_fields(),
    };
    let options = BuildOptions {
        input,
        input_format,
        filter_fields,
        filter_fields_named,
        out: args.out.clone(),
        dataset: args.dataset,
        fields: ItemFields {
            id_field: args.id_field,
            text_field: args.text_field,
            from_bundle: false,
        },
        model,
        seq: args.seq,
        chain: None,
    };
    let Some(client) = client else {
        print_built(&args.out, &build_base(&options)?);
        return Ok(());
    };
    let done = super::runtime()?.block_on(build_and_upload(options, &client))?;
    match &done.built {
        Some(report) => print_built(&args.out, report),
        None => println!(
            "bundle {} exists; resumed the Pinecone upload",
            args.out.display()
        ),
    }
    let upload = &done.upload;
    println!(
        "pinecone {}: {} vectors upserted in {} requests, {} already acknowledged (progress: {})",
        client.describe(),
        upload.n_sent,
        upload.n_requests,
        upload.n_skipped,
        progress_path(&args.out).display()
    );
    Ok(())
}

fn print_built(out: &std::path::Path, report: &BuildReport) {
    let m = &report.manifest;
    let stages: Vec<String> = report
        .stage_seconds
        .iter()
        .map(|(name, s)| format!("{name} {s:.2}s"))
        .collect();
    println!(
        "built bundle {}: dataset {}, seq {}, {} items, {} terms, model {} ({})",
        out.display(),
        m.dataset,
        m.seq,
        m.n_items,
        m.n_terms,
        &m.model_fingerprint[..16],
        stages.join(", ")
    );
    for field in &report.empty_filter_fields {
        println!(
            "note: no item carries filter field {field:?} (the default): a filter on it matches nothing; name your fields with --filter-fields, or --filter-fields \"\" for none"
        );
    }
}
