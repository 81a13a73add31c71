//! Publishing, verifying and applying deltas, each beside its baseline in the same run:
//! bytes on the wire per change beside the same changes as zstd-compressed JSONL, and apply
//! throughput beside a plain rusty-leveldb write-batch loop of the same records.
//!
//! `cargo bench --bench deltas` (set `DELTACACHE_BENCH_CHANGES=10000,100000` to choose sizes).

use std::time::{Duration, Instant};

use deltacache::bundle::build::{BuildOptions, InputFormat, ModelSource, build_base};
use deltacache::delta::format::DeltaBatch;
use deltacache::delta::publish::{ChangeSource, PublishOptions, init_repository, publish};
use deltacache::search::tfidf::{FitOptions, StopWords};
use deltacache::sync::SyncOptions;
use deltacache::sync::ops::sync_once;

const WORDS: &[&str] = &[
    "database",
    "replication",
    "snapshot",
    "balancer",
    "proxy",
    "espresso",
    "skillet",
    "kafka",
    "vector",
    "search",
    "index",
    "storage",
    "erasure",
    "coding",
    "latency",
    "throughput",
    "cache",
    "bucket",
    "object",
    "signature",
    "rollback",
    "image",
    "packer",
    "systemd",
    "metrics",
    "histogram",
    "trace",
    "sample",
    "cluster",
    "node",
];

struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
    fn text(&mut self, n_words: usize) -> String {
        (0..n_words)
            .map(|_| WORDS[self.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn item(rng: &mut Lcg, id: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "title": rng.text(3), "category": WORDS[rng.below(8)], "text": rng.text(40),
        "price": rng.below(10000) as f64 / 100.0, "sku": format!("{:016x}", rng.0), "tags": [rng.text(1), rng.text(1)],
    })
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let sizes: Vec<usize> = std::env::var("DELTACACHE_BENCH_CHANGES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(1);
    // A 10,000-item bundle to publish against.
    let base_items: Vec<serde_json::Value> = (0..10_000)
        .map(|i| item(&mut rng, &format!("base-{i}")))
        .collect();
    let items_path = dir.path().join("items.jsonl");
    std::fs::write(
        &items_path,
        base_items
            .iter()
            .map(|i| format!("{i}\n"))
            .collect::<String>(),
    )
    .unwrap();
    // The same items with and without a filter index: one delta applies to both (the chain
    // is bound to the items and the model, not to the indexed fields), so the cost of
    // keeping the index current is measured side by side.
    let build = |name: &str, filter_fields: Vec<String>| {
        let out = dir.path().join(name);
        build_base(&BuildOptions {
            input: items_path.clone(),
            input_format: InputFormat::Jsonl,
            filter_fields,
            filter_fields_named: false,
            out: out.clone(),
            dataset: Some("bench".into()),
            fields: Default::default(),
            model: ModelSource::Fit(FitOptions {
                max_features: None,
                stop_words: Some(StopWords::Named("english".into())),
            }),
            seq: 0,
            chain: None,
        })
        .unwrap();
        out
    };
    let bundle = build("bundle", vec!["category".into()]);
    let bundle_unfiltered = build("bundle-unfiltered", Vec::new());
    // One key for every role of the repository, as the demo does.
    let key_path = dir.path().join("bench.key");
    deltacache::tuf::keys::generate(&key_path).unwrap();
    let public = deltacache::tuf::keys::public_path(&key_path);
    let root_path = dir.path().join("root.json");
    let keys = deltacache::tuf::ceremony::RootKeys {
        root: (vec![public.clone()], 1),
        targets: (vec![public.clone()], 1),
        online: (vec![public], 1),
    };
    let (root, _) = runtime
        .block_on(deltacache::tuf::ceremony::init_root(
            &keys,
            Duration::from_secs(3600 * 24),
            std::slice::from_ref(&key_path),
        ))
        .unwrap();
    std::fs::write(&root_path, &root).unwrap();
    let init = |store: &str| {
        let signer = deltacache::tuf::keys::FileKey::load(&key_path).unwrap();
        runtime
            .block_on(init_repository(
                store,
                &Default::default(),
                &root,
                &(vec![signer.0], vec![signer.1]),
                None,
            ))
            .unwrap();
    };
    let empty_store = format!("file://{}", dir.path().join("empty").display());
    init(&empty_store);

    println!(
        "| changes | publish s | delta bytes/change | zstd JSONL bytes/change | ratio | verify+parse ms/delta | apply changes/s | apply without filter index | with/without | plain LevelDB batch writes/s | apply/plain |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (round, &n_changes) in sizes.iter().enumerate() {
        // Changes, each on its own id (so none collapse): deletes and updates of base items
        // while they last, adds otherwise.
        let mut changes = String::new();
        let mut puts: Vec<(String, String)> = Vec::new();
        for i in 0..n_changes {
            let base = i / 5;
            if i % 5 == 4 && base < 10_000 {
                changes.push_str(&format!(
                    "{}\n",
                    serde_json::json!({"op": "delete", "id": format!("base-{base}")})
                ));
                continue;
            }
            let id = if i % 5 == 2 && base < 10_000 {
                format!("base-{}", 9_999 - base)
            } else {
                format!("new-{round}-{i}")
            };
            let item = item(&mut rng, &id);
            puts.push((id, item.to_string()));
            changes.push_str(&format!(
                "{}\n",
                serde_json::json!({"op": "put", "item": item})
            ));
        }
        let changes_path = dir.path().join(format!("changes-{round}.jsonl"));
        std::fs::write(&changes_path, &changes).unwrap();
        let zstd_bytes = zstd::bulk::compress(changes.as_bytes(), 3).unwrap().len();

        let store_dir = dir.path().join(format!("store-{round}"));
        let store = format!("file://{}", store_dir.display());
        init(&store);
        let started = Instant::now();
        let report = runtime
            .block_on(publish(&PublishOptions {
                store: store.clone(),
                keys: vec![key_path.clone()],
                trusted_root: Some(root_path.clone()),
                bundle: bundle.clone(),
                changes: ChangeSource::Changes(changes_path),
                expires_in: Duration::from_secs(3600),
                dry_run: false,
                force: false,
                remote: Default::default(),
                tip_cache: None,
            }))
            .unwrap();
        let publish_seconds = started.elapsed().as_secs_f64();

        let delta_path = store_dir.join(deltacache::tuf::repo::target_object(
            &report.digest,
            &deltacache::delta::chain::delta_target_name(report.seq),
        ));
        let bytes = std::fs::read(&delta_path).unwrap();
        let verify_ms = median(
            (0..5)
                .map(|_| {
                    let started = Instant::now();
                    assert_eq!(deltacache::digest::sha256_hex(&bytes), report.digest);
                    let batch = DeltaBatch::parse(&bytes).unwrap();
                    assert_eq!(
                        batch.records.len() as u64,
                        report.adds + report.updates + report.deletes
                    );
                    started.elapsed().as_secs_f64() * 1000.0
                })
                .collect(),
        );

        // Apply through sync (clone, verify, write, index, fsync, commit), to the bundle with
        // a filter index and to the one without.

        let apply = |bundle: &std::path::Path, name: &str| {
            let state_dir = dir.path().join(format!("{name}-{round}"));
            runtime
                .block_on(sync_once(
                    bundle,
                    &state_dir,
                    SyncOptions::new(empty_store.clone(), root_path.clone()),
                    Duration::from_secs(600),
                ))
                .unwrap();
            let started = Instant::now();
            runtime
                .block_on(sync_once(
                    bundle,
                    &state_dir,
                    SyncOptions::new(store.clone(), root_path.clone()),
                    Duration::from_secs(600),
                ))
                .unwrap();
            started.elapsed().as_secs_f64()
        };
        let apply_seconds = apply(&bundle, "state");
        let unfiltered_seconds = apply(&bundle_unfiltered, "state-unfiltered");
        let n_records = report.adds + report.updates + report.deletes;

        // Baseline: the same puts as plain LevelDB write batches, no verification, no index,
        // no fsync.
        let plain_dir = dir.path().join(format!("plain-{round}"));
        let started = Instant::now();
        let mut db = deltacache::db::leveldb::open_db(&plain_dir, true).unwrap();
        for chunk in puts.chunks(4096) {
            let mut batch = rusty_leveldb::WriteBatch::default();
            for (id, json) in chunk {
                batch.put(&deltacache::db::leveldb::item_key(id), json.as_bytes());
            }
            db.write(batch, false).unwrap();
        }
        db.close().unwrap();
        let plain_seconds = started.elapsed().as_secs_f64();
        let apply_rate = n_records as f64 / apply_seconds;
        let unfiltered_rate = n_records as f64 / unfiltered_seconds;
        let plain_rate = puts.len() as f64 / plain_seconds;
        println!(
            "| {n_changes} | {publish_seconds:.2} | {:.1} | {:.1} | {:.2} | {verify_ms:.1} | {apply_rate:.0} | {unfiltered_rate:.0} | {:.2} | {plain_rate:.0} | {:.2} |",
            report.bytes as f64 / n_changes as f64,
            zstd_bytes as f64 / n_changes as f64,
            report.bytes as f64 / zstd_bytes as f64,
            apply_rate / unfiltered_rate,
            apply_rate / plain_rate,
        );
    }
}
