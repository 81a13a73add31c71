//! Store layout migrations: each migration against before/after fixtures, interrupted and
//! re-run; adoption of a LevelDB written by the original pipeline (C++ LevelDB through
//! plyvel); a schema-1 bundle synced by this binary; newer stores and deltas refused;
//! filtered search equal to brute force.

use std::path::{Path, PathBuf};
use std::time::Duration;

use deltacache::db::leveldb::{dump, open_db};
use deltacache::db::migrate::{MigrationContext, SCHEMA_VERSION, migrate_to};
use deltacache::sync::SyncOptions;
use deltacache::sync::ops::sync_once;

use super::support::file_digests as digests;
use super::support::{binary, post_search, publish_changes, run, serve_local, sync_command};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

type Pairs = Vec<(String, String)>;

fn read_pairs(path: &Path) -> Pairs {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Every key and value of the closed database at `dir`, read from a copy (as text; every
/// key of a finished migration is UTF-8).
fn dump_dir(dir: &Path) -> Pairs {
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("db");
    copy_dir(dir, &copy);
    let mut db = open_db(&copy, false).unwrap();
    dump(&mut db)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k).expect("UTF-8 key"),
                String::from_utf8(v).expect("UTF-8 value"),
            )
        })
        .collect()
}

/// Copies a LevelDB directory's files, as a crash leaves them (no LOCK).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name != "LOCK" && entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

fn write_store(dir: &Path, pairs: &Pairs) {
    let mut db = open_db(dir, true).unwrap();
    for (key, value) in pairs {
        db.put(key.as_bytes(), value.as_bytes()).unwrap();
    }
    db.close().unwrap();
}

fn context(chunk_keys: usize, interrupt_after_chunks: Option<usize>) -> MigrationContext {
    let mut context = MigrationContext::new(vec!["category".into(), "tier".into()]);
    context.chunk_keys = chunk_keys;
    context.interrupt_after_chunks = interrupt_after_chunks;
    context
}

/// Migration `version` turns `NNNN_before.json` into `NNNN_after.json`; interrupted after
/// any of its batches and re-run on the files the interruption left, it gives the same.
fn check_migration(version: u32) {
    let before = read_pairs(&fixtures().join(format!("migrations/{version:04}_before.json")));
    let after = read_pairs(&fixtures().join(format!("migrations/{version:04}_after.json")));
    let scratch = tempfile::tempdir().unwrap();
    let clean = scratch.path().join("clean");
    write_store(&clean, &before);
    let mut db = open_db(&clean, false).unwrap();
    let done = migrate_to(&mut db, version - 1, version, &context(2, None), "fixture").unwrap();
    assert_eq!((done.from, done.to), (version - 1, version));
    assert_eq!(done.applied.len(), 1);
    db.close().unwrap();
    drop(db);
    let clean_dump = dump_dir(&clean);
    assert_eq!(
        clean_dump,
        after,
        "migration {version:04}: the store after it differs from the fixture; got\n{}",
        serde_json::to_string_pretty(&clean_dump).unwrap()
    );

    // Re-run on the finished store: nothing changes.
    let mut db = open_db(&clean, false).unwrap();
    let again = migrate_to(&mut db, version - 1, version, &context(2, None), "fixture").unwrap();
    assert!(again.applied.is_empty());
    db.close().unwrap();
    drop(db);
    assert_eq!(dump_dir(&clean), after);

    // Interrupted after each batch: the files are copied as they are (the database is not
    // closed, as in a crash), then the migration is run again on the copy.
    let mut n_interrupted = 0;
    for stop_after in 1.. {
        let dir = scratch.path().join(format!("crash-{stop_after}"));
        write_store(&dir, &before);
        let mut db = open_db(&dir, false).unwrap();
        let result = migrate_to(
            &mut db,
            version - 1,
            version,
            &context(2, Some(stop_after)),
            "fixture",
        );
        if result.is_ok() {
            break;
        }
        n_interrupted += 1;
        let crashed = scratch.path().join(format!("crashed-{stop_after}"));
        copy_dir(&dir, &crashed);
        std::mem::forget(db);
        let mut db = open_db(&crashed, false).unwrap();
        migrate_to(&mut db, version - 1, version, &context(2, None), "fixture").unwrap();
        db.close().unwrap();
        drop(db);
        assert_eq!(
            dump_dir(&crashed),
            after,
            "migration {version:04} interrupted after batch {stop_after} then re-run"
        );
    }
    assert!(
        n_interrupted >= 3,
        "migration {version:04} was interrupted at only {n_interrupted} points"
    );
}

#[test]
fn migration_0001_moves_plain_keys_under_the_item_prefix() {
    check_migration(1);
}

#[test]
fn migration_0002_builds_the_filter_index() {
    check_migration(2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leveldb_of_the_original_pipeline_is_adopted_and_served_item_for_item() {
    let source = fixtures().join("plyvel/db");
    let before = digests(&source);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let output = run(&[
        "build-base",
        "--from-leveldb",
        source.to_str().unwrap(),
        "--sklearn-model",
        fixtures().join("plyvel/model.json").to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
        "--dataset",
        "catalogue",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(digests(&source), before, "the source LevelDB was changed");
    let manifest = deltacache::bundle::Bundle::open(&bundle).unwrap().manifest;
    assert_eq!(manifest.schema_version, SCHEMA_VERSION);
    assert_eq!(manifest.filter_fields, vec!["category".to_string()]);

    let items = std::fs::read_to_string(fixtures().join("plyvel/items.jsonl")).unwrap();
    let items: Vec<&str> = items.lines().collect();
    assert_eq!(manifest.n_items, items.len() as u64);
    let daemon = serve_local(&bundle, &dir.path().join("state"));
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    for line in &items {
        let item: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = item["id"].as_str().unwrap();
        let response = client
            .get(format!(
                "{}/items/{}",
                daemon.url,
                urlencoding_path_segment(id)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "item {id:?}");
        assert_eq!(
            response.bytes().await.unwrap(),
            line.as_bytes(),
            "item {id:?} is served byte for byte as the original pipeline stored it"
        );
    }
    // Search and filtered search work on the adopted store.
    let first: serde_json::Value = serde_json::from_str(items[0]).unwrap();
    let category = items
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find_map(|i| i["category"].as_str().map(str::to_owned))
        .unwrap();
    let (_, body) = post_search(
        &client,
        &daemon.url,
        serde_json::json!({"query_text": first["text"], "top_k": 5}),
    )
    .await;
    assert_eq!(body["results"][0]["id"], first["id"], "{body}");
    let (_, body) = post_search(&client, &daemon.url, serde_json::json!({"query_text": first["text"], "top_k": 5, "filter": {"category": category}})).await;
    let results = body["results"].as_array().unwrap();
    assert!(!results.is_empty(), "{body}");
    assert!(
        results
            .iter()
            .all(|r| r["metadata"]["category"] == category.as_str())
    );
}

/// Percent-encodes one path segment (ids here hold spaces, slashes and accents).
fn urlencoding_path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn adoption_refuses_a_store_newer_than_the_binary_and_a_mismatched_id() {
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("newer");
    write_store(
        &newer,
        &vec![
            (
                "m/schema".into(),
                format!("{{\"version\":{}}}", SCHEMA_VERSION + 1),
            ),
            ("i/a".into(), "{\"id\":\"a\",\"text\":\"x\"}".into()),
        ],
    );
    let stderr = refused_adoption(&newer, &dir.path().join("b1"));
    assert!(
        stderr.contains(&format!("db schema version {}", SCHEMA_VERSION + 1))
            && stderr.contains(&format!("this binary's {SCHEMA_VERSION}")),
        "{stderr}"
    );

    let mismatched = dir.path().join("mismatched");
    write_store(
        &mismatched,
        &vec![("sku-1".into(), "{\"id\":\"sku-2\",\"text\":\"x\"}".into())],
    );
    let stderr = refused_adoption(&mismatched, &dir.path().join("b2"));
    assert!(
        stderr.contains("\"sku-1\"") && stderr.contains("\"sku-2\""),
        "{stderr}"
    );
}

/// Runs `build-base --from-leveldb SOURCE --out OUT`, which must fail and leave no `OUT`;
/// returns its stderr.
fn refused_adoption(source: &Path, out: &Path) -> String {
    let output = run(&[
        "build-base",
        "--from-leveldb",
        source.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!output.status.success(), "{}", source.display());
    assert!(!out.exists(), "a refused adoption left {}", out.display());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A schema-1 bundle (written by the schema-1 binary) in its own copy, a key, a file store.
struct Legacy {
    dir: tempfile::TempDir,
    bundle: PathBuf,
    key: PathBuf,
    root: PathBuf,
    store: String,
}

impl Legacy {
    fn new() -> Legacy {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        copy_tree(&fixtures().join("bundle-v1"), &bundle);
        let trust = super::support::Trust::new(dir.path());
        let store = format!("file://{}", dir.path().join("store").display());
        super::support::block_on(trust.init_store(&store, &Default::default()));
        Legacy {
            dir,
            bundle,
            key: trust.key,
            root: trust.root,
            store,
        }
    }

    fn options(&self) -> SyncOptions {
        SyncOptions::new(self.store.clone(), self.root.clone())
    }

    async fn publish(&self, changes: &[serde_json::Value]) {
        publish_changes(
            &self.dir.path().join("changes.jsonl"),
            &self.store,
            &self.key,
            &self.bundle,
            Default::default(),
            changes,
        )
        .await;
    }

    /// `deltacache sync` into `state`; run it with `output` (stderr is captured).
    fn sync_command(&self, state: &Path) -> std::process::Command {
        sync_command(&self.bundle, state, &self.store, &self.root)
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for rel in deltacache::bundle::list_files(from).unwrap() {
        let target = to.join(&rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&rel), &target).unwrap();
    }
}

fn current_db(state: &Path) -> PathBuf {
    let name = std::fs::read_to_string(state.join("current")).unwrap();
    state.join("versions").join(name.trim()).join("db")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_1_bundle_is_migrated_in_the_state_dir_and_never_changed() {
    let legacy = Legacy::new();
    let before = digests(&legacy.bundle);
    assert_eq!(
        deltacache::bundle::Bundle::open(&legacy.bundle)
            .unwrap()
            .manifest
            .schema_version,
        1
    );
    // A delta from this binary (schema 2) that moves one item to another category.
    let moved = serde_json::json!({"id": "item-000041", "text": "playbooks rollbacks docker", "category": "moved"});
    legacy
        .publish(&[serde_json::json!({"op": "put", "item": moved})])
        .await;
    let state = legacy.dir.path().join("state");
    let outcome = sync_once(
        &legacy.bundle,
        &state,
        legacy.options(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, deltacache::sync::SyncOutcome::Applied { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        digests(&legacy.bundle),
        before,
        "the baked bundle's files changed"
    );
    let pairs = dump_dir(&current_db(&state));
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    assert_eq!(get("m/schema").as_deref(), Some("{\"version\":2}"));
    assert_eq!(
        get("m/migration/0002").as_deref(),
        Some("{\"name\":\"filter_index\"}")
    );
    assert_eq!(
        get("m/filter-fields").as_deref(),
        Some("[\"category\"]"),
        "a schema-1 manifest names no fields: the default is indexed"
    );
    // The delta kept the index current: the moved item left its old category.
    assert!(get("x/category\0\"moved\"\0item-000041").is_some());
    let n_entries = pairs.iter().filter(|(k, _)| k.starts_with("x/")).count();
    let n_items = pairs.iter().filter(|(k, _)| k.starts_with("i/")).count();
    assert_eq!(n_entries, n_items, "one category entry per item");

    // Served: a filter on the new category finds the moved item.
    let daemon = serve_local(&legacy.bundle, &state);
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    let (_, body) = post_search(
        &client,
        &daemon.url,
        serde_json::json!({"query_text": "rollbacks", "filter": {"category": "moved"}}),
    )
    .await;
    assert_eq!(body["results"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["results"][0]["id"], "item-000041");
    drop(daemon);
    assert_eq!(digests(&legacy.bundle), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_killed_while_migrating_converges_to_the_uninterrupted_store() {
    let legacy = Legacy::new();
    legacy
        .publish(&[serde_json::json!({"op": "delete", "id": "item-000042"})])
        .await;
    let clean = legacy.dir.path().join("state-clean");
    let status = legacy.sync_command(&clean).output().unwrap().status;
    assert!(status.success());
    let expected = dump_dir(&current_db(&clean));
    for failpoint in ["migration-0002-before-record", "after-clone", "after-fsync"] {
        let state = legacy.dir.path().join(format!("state-{failpoint}"));
        let output = legacy
            .sync_command(&state)
            .env("DELTACACHE_FAILPOINT", failpoint)
            .output()
            .unwrap();
        assert!(
            !output.status.success(),
            "{failpoint} did not stop the sync"
        );
        let status = legacy.sync_command(&state).output().unwrap().status;
        assert!(status.success(), "re-run after {failpoint}");
        assert_eq!(
            dump_dir(&current_db(&state)),
            expected,
            "after a kill at {failpoint}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_killed_while_migrating_then_re_run_gives_the_same_store() {
    let source = fixtures().join("plyvel/db");
    let dir = tempfile::tempdir().unwrap();
    let build = |out: &Path, failpoint: Option<&str>| {
        let mut command = std::process::Command::new(binary());
        command.args([
            "build-base",
            "--from-leveldb",
            source.to_str().unwrap(),
            "--sklearn-model",
            fixtures().join("plyvel/model.json").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--dataset",
            "catalogue",
        ]);
        if let Some(failpoint) = failpoint {
            command.env("DELTACACHE_FAILPOINT", failpoint);
        }
        command.output().unwrap()
    };
    let clean = dir.path().join("clean");
    assert!(build(&clean, None).status.success());
    let expected = dump_dir(&clean.join("db"));
    for failpoint in [
        "migration-0001-chunk",
        "migration-0001-before-record",
        "migration-0002-before-record",
    ] {
        let out = dir.path().join(failpoint);
        let output = build(&out, Some(failpoint));
        assert!(
            !output.status.success(),
            "{failpoint} did not stop the build"
        );
        assert!(!out.exists(), "a killed build left {}", out.display());
        assert!(build(&out, None).status.success());
        assert_eq!(
            dump_dir(&out.join("db")),
            expected,
            "after a kill at {failpoint}"
        );
        assert_eq!(
            digests(&out)["index.bin"],
            digests(&clean)["index.bin"],
            "after a kill at {failpoint}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_bundles_versions_and_deltas_are_refused_naming_both_versions() {
    let newer = SCHEMA_VERSION + 1;
    // A bundle from a newer binary.
    let legacy = Legacy::new();
    let manifest_path = legacy.bundle.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let original = std::fs::read(&manifest_path).unwrap();
    manifest["schema_version"] = newer.into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let output = run(&[
        "serve",
        "--bundle",
        legacy.bundle.to_str().unwrap(),
        "--state-dir",
        legacy.dir.path().join("s0").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("db schema version {newer}"))
            && stderr.contains(&format!("this binary's {SCHEMA_VERSION}")),
        "{stderr}"
    );
    std::fs::write(&manifest_path, original).unwrap();

    // A delta built for a newer schema: refused by name, the state dir unchanged.
    let state = legacy.dir.path().join("state");
    legacy
        .publish(&[serde_json::json!({"op": "delete", "id": "item-000042"})])
        .await;
    assert!(
        legacy
            .sync_command(&state)
            .output()
            .unwrap()
            .status
            .success()
    );
    let snapshot = digests(&state);
    publish_newer_schema_delta(&legacy, newer).await;
    let output = legacy.sync_command(&state).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("db schema version {newer}"))
            && stderr.contains(&format!("this binary's {SCHEMA_VERSION}"))
            && stderr.contains("000000000002.delta"),
        "{stderr}"
    );
    let mut after = digests(&state);
    after.remove("lock");
    let mut before = snapshot;
    before.remove("lock");
    assert_eq!(after, before, "the refusal left a trace in the state dir");

    // A version in the state dir written by a newer binary: refused, by name.
    let name = std::fs::read_to_string(state.join("current")).unwrap();
    let version_json = state
        .join("versions")
        .join(name.trim())
        .join("version.json");
    let mut info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&version_json).unwrap()).unwrap();
    info["schema_version"] = newer.into();
    std::fs::write(&version_json, info.to_string()).unwrap();
    let view = deltacache::state::StateDir::inspect(&state).unwrap();
    let error = format!("{:#}", view.load_version(name.trim()).unwrap_err());
    assert!(
        error.contains(&format!("db schema version {newer}"))
            && error.contains(&format!("this binary's {SCHEMA_VERSION}")),
        "{error}"
    );
}

/// Publishes a delta after the newest one whose header and metadata claim `schema`.
async fn publish_newer_schema_delta(legacy: &Legacy, schema: u32) {
    use deltacache::delta::chain::{DeltaMeta, delta_target_name, delta_targets};
    use deltacache::delta::format::{DeltaBatch, DeltaHeader, DeltaRecord};
    use deltacache::delta_store::DeltaStore;
    use deltacache::tuf::repo::{NewTarget, RepoState, publish};
    let store = DeltaStore::open(&legacy.store, &Default::default())
        .await
        .unwrap();
    let state = RepoState::read(&store, None).await.unwrap();
    let targets = deltacache::delta::publish::published_targets(&state);
    let newest = delta_targets(&targets).unwrap().pop().unwrap();
    let item =
        serde_json::value::RawValue::from_string("{\"id\":\"n\",\"text\":\"newer\"}".to_owned())
            .unwrap();
    let batch = DeltaBatch {
        header: DeltaHeader {
            dataset: newest.meta.dataset.clone(),
            seq: newest.meta.seq + 1,
            parent_seq: newest.meta.seq,
            parent_digest: newest.digest.clone(),
            parent_len: newest.len,
            created_at: newest.meta.created_at,
            model_fingerprint: newest.meta.model_fingerprint.clone(),
            schema_version: schema,
            n_records: 1,
            records_len: 0,
        },
        records: vec![DeltaRecord::Put { item }],
    };
    let (key, _) = deltacache::tuf::keys::FileKey::load(&legacy.key).unwrap();
    let target = NewTarget {
        name: delta_target_name(newest.meta.seq + 1),
        bytes: batch.encode().unwrap(),
        custom: DeltaMeta::of_batch(&batch).to_custom(),
    };
    publish(&store, &state, &[key], vec![target], Default::default())
        .await
        .unwrap();
}

/// A tiny deterministic generator (no sleeps, no clocks: the same cases every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

const WORDS: [&str; 16] = [
    "database", "balancer", "espresso", "skillet", "kafka", "vector", "search", "crema", "replica",
    "snapshot", "router", "kernel", "cache", "latency", "shard", "queue",
];
const CATEGORIES: [&str; 4] = ["database", "networking", "kitchen", "storage"];

fn random_item(rng: &mut Lcg, id: &str) -> serde_json::Value {
    let n_words = 2 + rng.next(6);
    let text: Vec<&str> = (0..n_words).map(|_| WORDS[rng.next(WORDS.len())]).collect();
    let mut item = serde_json::json!({"id": id, "text": text.join(" ")});
    if rng.next(10) > 0 {
        item["category"] = CATEGORIES[rng.next(CATEGORIES.len())].into();
    }
    match rng.next(4) {
        0 => {}
        1 => item["tier"] = 2.0.into(),
        _ => item["tier"] = (1 + rng.next(3)).into(),
    }
    item
}

fn dot(a: &[(u32, f32)], b: &[(u32, f32)]) -> f32 {
    let b: std::collections::HashMap<u32, f32> = b.iter().copied().collect();
    a.iter()
        .map(|(t, w)| w * b.get(t).copied().unwrap_or(0.0))
        .sum()
}

/// Filtered search over a synced state (bundle + a delta that moves, deletes and adds
/// items) equals filtering every item by brute force and then ranking: same count, same
/// scores in order, each hit admitted by the filter.
#[tokio::test(flavor = "multi_thread")]
async fn filtered_search_equals_brute_force_filter_then_rank() {
    use deltacache::bundle::build::{BuildOptions, InputFormat, ModelSource, build_base};
    use deltacache::catalog::Catalog;
    use deltacache::search::filter::Filter;
    use deltacache::search::tfidf::FitOptions;

    let mut rng = Lcg(7);
    let dir = tempfile::tempdir().unwrap();
    let items: Vec<serde_json::Value> = (0..300)
        .map(|i| random_item(&mut rng, &format!("item-{i:04}")))
        .collect();
    let input = dir.path().join("items.jsonl");
    super::support::write_jsonl(&input, &items);
    let bundle = dir.path().join("bundle");
    build_base(&BuildOptions {
        input,
        input_format: InputFormat::Jsonl,
        filter_fields: vec!["category".into(), "tier".into()],
        filter_fields_named: false,
        out: bundle.clone(),
        dataset: Some("filtered".into()),
        fields: Default::default(),
        model: ModelSource::Fit(FitOptions {
            max_features: None,
            stop_words: None,
        }),
        seq: 0,
        chain: None,
    })
    .unwrap();
    // A delta: re-categorise 60 items, delete 20, add 20.
    let mut changes = Vec::new();
    for i in 0..60 {
        let id = format!("item-{:04}", rng.next(300));
        changes.push(serde_json::json!({"op": "put", "item": random_item(&mut rng, &id)}));
        let _ = i;
    }
    for _ in 0..20 {
        changes
            .push(serde_json::json!({"op": "delete", "id": format!("item-{:04}", rng.next(300))}));
    }
    for i in 0..20 {
        let id = format!("new-{i:02}");
        changes.push(serde_json::json!({"op": "put", "item": random_item(&mut rng, &id)}));
    }
    let trust = super::support::Trust::new(dir.path());
    let store = format!("file://{}", dir.path().join("store").display());
    trust.init_store(&store, &Default::default()).await;
    publish_changes(
        &dir.path().join("changes.jsonl"),
        &store,
        &trust.key,
        &bundle,
        Default::default(),
        &changes,
    )
    .await;
    let state = dir.path().join("state");
    sync_once(
        &bundle,
        &state,
        SyncOptions::new(store, trust.root.clone()),
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    // The state, as items, and the catalog serving it.
    let mut exported = Vec::new();
    deltacache::sync::ops::export(&state, &mut exported).unwrap();
    let state_items: Vec<serde_json::Value> = String::from_utf8(exported)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let local = deltacache::state::LocalState::open(&bundle, &state).unwrap();
    assert_eq!(local.version.info.seq, 1);
    let catalog = Catalog::open(
        &local.version,
        local.models.bundle().clone(),
        &local.state.reader_dir(&local.version),
        1,
    )
    .unwrap();
    let model = local.models.bundle().clone();
    let embedded: Vec<_> = state_items
        .iter()
        .map(|i| model.embed(i["text"].as_str().unwrap()))
        .collect();
    let indexed = vec!["category".to_string(), "tier".to_string()];
    let mut n_checked = 0;
    let mut n_full = 0;
    for case in 0..300 {
        let n_words = 1 + rng.next(3);
        let query: Vec<&str> = (0..n_words).map(|_| WORDS[rng.next(WORDS.len())]).collect();
        let query = query.join(" ");
        let mut filter = serde_json::Map::new();
        if case % 3 != 2 {
            filter.insert("category".into(), CATEGORIES[rng.next(4)].into());
        }
        if case % 3 != 0 {
            filter.insert("tier".into(), (1 + rng.next(3)).into());
        }
        let top_k = [1, 5, 10, 50][rng.next(4)];
        let parsed = Filter::parse(&filter, &indexed).unwrap();
        let outcome = catalog.search(&query, top_k, Some(&parsed)).unwrap();

        let q = model.embed(&query);
        let admits = |item: &serde_json::Value| {
            filter
                .iter()
                .all(|(field, want)| match (item.get(field), want) {
                    (Some(serde_json::Value::Number(a)), serde_json::Value::Number(b)) => {
                        a.as_f64() == b.as_f64()
                    }
                    (Some(have), want) => have == want,
                    (None, _) => false,
                })
        };
        let mut brute: Vec<(String, f32)> = state_items
            .iter()
            .zip(&embedded)
            .filter(|(item, _)| admits(item))
            .map(|(item, v)| (item["id"].as_str().unwrap().to_owned(), dot(&q, v)))
            .filter(|(_, score)| *score > 0.0)
            .collect();
        brute.sort_by(|a, b| b.1.total_cmp(&a.1));
        let scores: std::collections::HashMap<&str, f32> =
            brute.iter().map(|(id, s)| (id.as_str(), *s)).collect();
        assert_eq!(
            outcome.missing, 0,
            "case {case}: an indexed item could not be read"
        );
        assert_eq!(
            outcome.hits.len(),
            brute.len().min(top_k),
            "case {case}: {query:?} {filter:?} top_k {top_k}"
        );
        for (rank, hit) in outcome.hits.iter().enumerate() {
            let expected = scores
                .get(hit.id.as_str())
                .unwrap_or_else(|| panic!("case {case}: {} is not admitted", hit.id));
            assert!((hit.score - expected).abs() < 1e-5, "case {case}");
            assert!(
                (hit.score - brute[rank].1).abs() < 1e-5,
                "case {case}: rank {rank} scores {} but brute force has {}",
                hit.score,
                brute[rank].1
            );
        }
        n_checked += 1;
        if outcome.hits.len() == top_k && top_k > 1 {
            n_full += 1;
        }
    }
    assert_eq!(n_checked, 300);
    assert!(
        n_full > 30,
        "only {n_full} cases filled top_k: the cases are too narrow"
    );
}

/// A state dir left by the schema-1 binary (its version is a clone of the schema-1 bundle
/// with a version.json that names no schema) is upgraded by a migrated copy: served with
/// filters, the old version and the bundle left as they were, a pin moved along.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_dir_left_by_the_schema_1_binary_gets_a_migrated_copy() {
    let legacy = Legacy::new();
    let bundle = deltacache::bundle::Bundle::open(&legacy.bundle).unwrap();
    let state = legacy.dir.path().join("state");
    let old_name = "000000000000-18eb00000000000a-1-0";
    let old = state.join("versions").join(old_name);
    copy_tree(&legacy.bundle.join("db"), &old.join("db"));
    std::fs::copy(legacy.bundle.join("index.bin"), old.join("index.bin")).unwrap();
    let manifest = &bundle.manifest;
    // version.json exactly as the schema-1 binary wrote it (no schema_version field).
    let info = serde_json::json!({
        "name": old_name, "dataset": manifest.dataset, "seq": 0,
        "model_fingerprint": manifest.model_fingerprint,
        "bundle_manifest_sha256": bundle.manifest_sha256,
        "n_items": manifest.n_items, "created_at": 1795640869u64,
        "chain_digest": manifest.chain_digest, "chain_len": 0, "bundle_seq": 0,
        "head_issued_at": null,
    });
    std::fs::write(old.join("version.json"), info.to_string()).unwrap();
    std::fs::write(state.join("current"), format!("{old_name}\n")).unwrap();
    std::fs::write(state.join("pinned"), format!("{old_name}\n")).unwrap();
    let old_before = digests(&old);
    let bundle_before = digests(&legacy.bundle);

    let daemon = serve_local(&legacy.bundle, &state);
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    let status = daemon.status(&client).await;
    assert_eq!(status["schema_version"], 2, "{status}");
    assert_eq!(status["filter_fields"], serde_json::json!(["category"]));
    let new_name = status["version"].as_str().unwrap().to_owned();
    assert_ne!(new_name, old_name);
    let (_, body) = post_search(&client, &daemon.url, serde_json::json!({"query_text": "rollbacks docker playbooks", "top_k": 3, "filter": {"category": "devops"}})).await;
    let results = body["results"].as_array().unwrap();
    assert!(!results.is_empty(), "{body}");
    assert!(
        results
            .iter()
            .all(|r| r["metadata"]["category"] == "devops")
    );
    drop(daemon);
    assert_eq!(
        std::fs::read_to_string(state.join("pinned"))
            .unwrap()
            .trim(),
        new_name,
        "the pin follows the upgraded copy"
    );
    // The old version is left as it was (only clones of it were opened).
    assert_eq!(digests(&old), old_before);
    assert_eq!(digests(&legacy.bundle), bundle_before);
}
