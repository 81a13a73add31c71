//! Boot-time sync and following: the state after sync equals a fold of the changes, crashes
//! at every step leave exactly the old or the new version, refusals leave no trace, swaps
//! under load fail no request, nothing is served before the first swap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deltacache::delta_store::RemoteSettings;
use deltacache::sync::ops::{export, sync_once};
use deltacache::sync::{SyncOptions, SyncOutcome};

use super::s3::S3Server;
use super::support::{Daemon, Trust, binary, block_on, build_bundle, sample_items};

/// A bundle, a key, a store URL, and the model of the catalogue: id → item JSON.
struct World {
    dir: tempfile::TempDir,
    bundle: PathBuf,
    key: PathBuf,
    root: PathBuf,
    store: String,
    remote: RemoteSettings,
    model: BTreeMap<String, serde_json::Value>,
    n_published: u64,
}

impl World {
    fn new(items: Vec<serde_json::Value>, s3: Option<&S3Server>, prefix: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let bundle = build_bundle(dir.path(), &items);
        let trust = Trust::new(dir.path());
        let (store, remote) = match s3 {
            Some(server) => (
                format!("s3://{}/{prefix}", super::s3::BUCKET),
                server.settings(),
            ),
            None => (
                format!("file://{}", dir.path().join("store").display()),
                RemoteSettings::default(),
            ),
        };
        let model = items
            .iter()
            .map(|i| (i["id"].as_str().unwrap().to_owned(), i.clone()))
            .collect();
        block_on(trust.init_store(&store, &remote));
        World {
            dir,
            bundle,
            key: trust.key,
            root: trust.root,
            store,
            remote,
            model,
            n_published: 0,
        }
    }

    fn trusted_root(&self) -> PathBuf {
        self.root.clone()
    }

    fn sync_options(&self) -> SyncOptions {
        let mut options = SyncOptions::new(self.store.clone(), self.trusted_root());
        options.remote = self.remote.clone();
        options
    }

    /// Lets any share of the items go in one swap (the fold tests delete at random from a
    /// catalogue of a few items).
    async fn allow_any_removal(&self) {
        super::support::set_fleet_policy(
            &self.store,
            &self.key,
            self.remote.clone(),
            deltacache::delta::fleet::PolicyChange {
                max_removed_percent: Some(100.0),
                min_items: Some(0),
                ..Default::default()
            },
        )
        .await;
    }

    /// Publishes changes and folds them into the model.
    async fn publish(&mut self, changes: &[serde_json::Value]) {
        self.n_published += 1;
        let path = self
            .dir
            .path()
            .join(format!("changes-{}.jsonl", self.n_published));
        super::support::publish_changes(
            &path,
            &self.store,
            &self.key,
            &self.bundle,
            self.remote.clone(),
            changes,
        )
        .await;
        for change in changes {
            match change["op"].as_str().unwrap() {
                "put" => {
                    self.model.insert(
                        change["item"]["id"].as_str().unwrap().to_owned(),
                        change["item"].clone(),
                    );
                }
                _ => {
                    self.model.remove(change["id"].as_str().unwrap());
                }
            }
        }
    }
}

fn exported(state_dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = Vec::new();
    export(state_dir, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["id"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

fn put(id: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"op": "put", "item": {"id": id, "text": text, "category": "new"}})
}

fn delete(id: &str) -> serde_json::Value {
    serde_json::json!({"op": "delete", "id": id})
}

const WORDS: [&str; 8] = [
    "database", "balancer", "espresso", "skillet", "kafka", "vector", "search", "crema",
];

/// For random chains of puts and deletes, the synced state equals the fold of the changes,
/// and the index answers exactly what a brute-force scan of that state answers.
async fn check_fold(s3: Option<&S3Server>, prefix: &str, seed: u64, rounds: usize) {
    use rand_like::Lcg;
    let mut rng = Lcg(seed);
    let mut world = World::new(sample_items(), s3, prefix);
    world.allow_any_removal().await;
    let state_dir = world.dir.path().join("state");
    for round in 0..rounds {
        let mut changes = Vec::new();
        for _ in 0..rng.below(6) + 1 {
            let id = format!("id-{}", rng.below(12));
            if rng.below(3) == 0 {
                let existing: Vec<String> = world.model.keys().cloned().collect();
                let victim = existing[rng.below(existing.len() as u64) as usize].clone();
                changes.push(delete(&victim));
            } else {
                let text = (0..3)
                    .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
                    .collect::<Vec<_>>()
                    .join(" ");
                changes.push(put(&id, &text));
            }
        }
        // The last operation on an id wins within one delta, as in the model fold.
        world.publish(&changes).await;
        if round % 2 == 1 || round == rounds - 1 {
            sync_once(
                &world.bundle,
                &state_dir,
                world.sync_options(),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
            assert_eq!(exported(&state_dir), world.model, "round {round}");
        }
    }
    // The index of the synced state ranks exactly like a brute-force scan of it.
    let local = deltacache::state::LocalState::open(&world.bundle, &state_dir).unwrap();
    let catalog = deltacache::catalog::Catalog::open(
        &local.version,
        local.models.bundle().clone(),
        &local.state.reader_dir(&local.version),
        1,
    )
    .unwrap();
    for query in WORDS {
        let vector = catalog.model().embed(query);
        assert_eq!(
            catalog.index().top_k(&vector, 5),
            catalog.index().brute_force(&vector, 5),
            "{query}"
        );
    }
}

mod rand_like {
    /// A tiny deterministic generator for test data (not for anything that needs randomness).
    pub struct Lcg(pub u64);
    impl Lcg {
        pub fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n.max(1)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn synced_state_equals_the_fold_of_the_changes_on_a_file_store() {
    for seed in 1..=4 {
        check_fold(None, "", seed, 6).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn synced_state_equals_the_fold_of_the_changes_on_s3() {
    let server = S3Server::start();
    for seed in 1..=2 {
        check_fold(Some(&server), &format!("fold-{seed}"), seed, 6).await;
    }
}

/// Every file under `dir` with its contents, for byte-identity checks.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for rel in deltacache::bundle::list_files(dir).unwrap() {
        files.insert(rel.clone(), std::fs::read(dir.join(&rel)).unwrap());
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_deltas_leave_the_state_dir_byte_identical() {
    use deltacache::delta::chain::{DeltaMeta, delta_target_name};
    use deltacache::delta::format::{DeltaBatch, DeltaHeader, DeltaRecord};
    use deltacache::delta_store::DeltaStore;
    use deltacache::tuf::repo::{NewTarget, RepoState, publish};
    let mut world = World::new(sample_items(), None, "");
    let state_dir = world.dir.path().join("state");
    world.publish(&[put("a", "kafka crema")]).await;
    sync_once(
        &world.bundle,
        &state_dir,
        world.sync_options(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let store = DeltaStore::open(&world.store, &Default::default())
        .await
        .unwrap();
    let (key, _) = deltacache::tuf::keys::FileKey::load(&world.key).unwrap();
    let keys = vec![key];
    let bundle = deltacache::bundle::Bundle::open(&world.bundle).unwrap();
    let state = RepoState::read(&store, None).await.unwrap();
    let targets = deltacache::delta::publish::published_targets(&state);
    let tip = deltacache::delta::chain::delta_targets(&targets)
        .unwrap()
        .pop()
        .unwrap();
    /// A refusal: its name, and edits to the delta header and to its metadata.
    type Case = (
        &'static str,
        &'static str,
        Box<dyn Fn(&mut DeltaHeader)>,
        Box<dyn Fn(&mut DeltaMeta)>,
    );
    let cases: Vec<Case> = vec![
        (
            "parent mismatch",
            "its parent is seq 1 digest 000",
            Box::new(|h| h.parent_digest = "0".repeat(64)),
            Box::new(|m| m.parent_digest = "0".repeat(64)),
        ),
        (
            "other model",
            "the delta store's chain is of model",
            Box::new(|h| h.model_fingerprint = "x".into()),
            Box::new(|m| m.model_fingerprint = "x".into()),
        ),
        (
            "header and metadata disagree",
            "its header says",
            Box::new(|h| h.dataset = "another".into()),
            Box::new(|_| {}),
        ),
        (
            "newer db schema",
            "newer than this binary's",
            Box::new(|h| h.schema_version = 99),
            Box::new(|m| m.schema_version = 99),
        ),
    ];
    for (name, expected, edit_header, edit_meta) in cases {
        let before = snapshot(&state_dir);
        let header = DeltaHeader {
            dataset: bundle.manifest.dataset.clone(),
            seq: tip.meta.seq + 1,
            parent_seq: tip.meta.seq,
            parent_digest: tip.digest.clone(),
            parent_len: tip.len,
            created_at: deltacache::clock::now_secs(),
            model_fingerprint: bundle.manifest.model_fingerprint.clone(),
            schema_version: 2,
            n_records: 0,
            records_len: 0,
        };
        let raw =
            serde_json::value::RawValue::from_string(r#"{"id":"evil","text":"kafka"}"#.into())
                .unwrap();
        let mut batch = DeltaBatch {
            header,
            records: vec![DeltaRecord::Put { item: raw }],
        };
        let mut meta = DeltaMeta::of_batch(&batch);
        edit_meta(&mut meta);
        edit_header(&mut batch.header);
        let state = RepoState::read(&store, None).await.unwrap();
        let target = NewTarget {
            name: delta_target_name(tip.meta.seq + 1),
            bytes: batch.encode().unwrap(),
            custom: meta.to_custom(),
        };
        publish(&store, &state, &keys, vec![target], Default::default())
            .await
            .unwrap();
        let error = sync_once(
            &world.bundle,
            &state_dir,
            world.sync_options(),
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
        assert!(format!("{error:#}").contains(expected), "{name}: {error:#}");
        assert_eq!(
            snapshot(&state_dir),
            before,
            "{name}: the state dir changed"
        );
        // Publish the good targets again (without the bad delta) for the next case.
        let state = RepoState::read(&store, None).await.unwrap();
        restore_targets(&store, &state, &keys, &targets).await;
    }
    world
        .model
        .insert("a".into(), put("a", "kafka crema")["item"].clone());
    assert_eq!(exported(&state_dir), world.model);
}

/// Publishes targets metadata listing exactly `targets` again (a repair in a test: the
/// repository names what it named before a bad delta was published).
async fn restore_targets(
    store: &deltacache::delta_store::DeltaStore,
    state: &deltacache::tuf::repo::RepoState,
    keys: &[Box<dyn tough::key_source::KeySource>],
    targets: &[deltacache::tuf::client::TargetInfo],
) {
    let mut state_without = deltacache::tuf::repo::RepoState {
        store: state.store.clone(),
        roots: state.roots.clone(),
        root_bytes: state.root_bytes.clone(),
        current: state.current.clone(),
        highest: state.highest,
    };
    if let Some(current) = &mut state_without.current {
        current
            .targets
            .signed
            .targets
            .retain(|name, _| targets.iter().any(|t| t.name == name.raw()));
    }
    deltacache::tuf::repo::publish(store, &state_without, keys, Vec::new(), Default::default())
        .await
        .unwrap();
}

/// Runs `deltacache sync` as a child process.
fn sync_command(world: &World, state_dir: &Path) -> std::process::Command {
    let mut command = super::support::sync_command(
        &world.bundle,
        state_dir,
        &world.store,
        &world.trusted_root(),
    );
    command.stderr(std::process::Stdio::null());
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_sync_leaves_the_old_or_the_new_version_and_converges() {
    let mut world = World::new(sample_items(), None, "");
    let old_model = world.model.clone();
    // A large delta, so that kills land in the middle of applying it.
    let changes: Vec<serde_json::Value> = (0..3000)
        .map(|i| {
            if i % 10 == 9 {
                delete(&format!("bulk-{}", i - 1))
            } else {
                put(&format!("bulk-{i}"), &format!("{} item {i}", WORDS[i % 8]))
            }
        })
        .chain([delete("db-1")])
        .collect();
    world.publish(&changes).await;
    let new_model = world.model.clone();
    let failpoints = [
        "after-clone",
        "after-first-batch",
        "after-close",
        "after-fsync",
        "after-rename",
        "before-pointer-rename",
        "after-commit",
    ];
    let mut tried = 0;
    let mut inconsistent = 0;
    let mut old_seen = 0;
    let mut new_seen = 0;
    let check =
        |state_dir: &Path, inconsistent: &mut u32, old_seen: &mut u32, new_seen: &mut u32| {
            let state = exported(state_dir);
            if state == old_model {
                *old_seen += 1;
            } else if state == new_model {
                *new_seen += 1;
            } else {
                *inconsistent += 1;
            }
        };
    // A repository with no delta yet: a sync from it brings a state dir to the bundle.
    let empty = World {
        store: format!("file://{}", world.dir.path().join("empty").display()),
        ..clone_world(&world)
    };
    Trust {
        key: world.key.clone(),
        root: world.root.clone(),
    }
    .init_store(&empty.store, &Default::default())
    .await;
    for (round, failpoint) in failpoints.iter().enumerate() {
        let state_dir = world.dir.path().join(format!("state-fp-{round}"));
        assert!(sync_command(&empty, &state_dir).status().unwrap().success());
        let status = sync_command(&world, &state_dir)
            .env("DELTACACHE_FAILPOINT", failpoint)
            .status()
            .unwrap();
        assert!(!status.success(), "{failpoint} did not fire");
        tried += 1;
        check(&state_dir, &mut inconsistent, &mut old_seen, &mut new_seen);
        assert!(
            sync_command(&world, &state_dir).status().unwrap().success(),
            "{failpoint}: the next run must converge"
        );
        assert_eq!(
            exported(&state_dir),
            new_model,
            "{failpoint}: converged state"
        );
    }
    // Kills at pseudo-random moments of the whole run (fault injection, not synchronisation).
    let mut rng = rand_like::Lcg(7);
    for round in 0..8 {
        let state_dir = world.dir.path().join(format!("state-kill-{round}"));
        let empty = World {
            store: format!("file://{}", world.dir.path().join("empty").display()),
            ..clone_world(&world)
        };
        assert!(sync_command(&empty, &state_dir).status().unwrap().success());
        let mut child = sync_command(&world, &state_dir).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(20 + rng.below(400)));
        let _ = child.kill();
        let _ = child.wait();
        tried += 1;
        check(&state_dir, &mut inconsistent, &mut old_seen, &mut new_seen);
        assert!(sync_command(&world, &state_dir).status().unwrap().success());
        assert_eq!(exported(&state_dir), new_model);
    }
    println!(
        "crash consistency: {tried} kills, {inconsistent} inconsistent, {old_seen} old, {new_seen} new"
    );
    assert_eq!(inconsistent, 0);
    assert!(
        old_seen > 0 && new_seen > 0,
        "kills must land on both sides of the commit point"
    );
}

fn clone_world(world: &World) -> World {
    World {
        dir: tempfile::tempdir().unwrap(),
        bundle: world.bundle.clone(),
        key: world.key.clone(),
        root: world.root.clone(),
        store: world.store.clone(),
        remote: world.remote.clone(),
        model: world.model.clone(),
        n_published: world.n_published,
    }
}

/// Args for `serve` on 127.0.0.1:0 following `world`'s store.
fn serve_args(world: &World, state_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--bundle",
        world.bundle.to_str().unwrap(),
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--store",
        &world.store,
        "--trusted-root",
        world.trusted_root().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(endpoint) = &world.remote.endpoint_url {
        args.extend(["--s3-endpoint-url".to_string(), endpoint.clone()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start(args: &[String], env: &[(&'static str, String)]) -> Daemon {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_with_env(&args, env)
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_served_before_the_boot_sync_swaps_in_the_deltas() {
    let server = S3Server::start();
    let mut world = World::new(sample_items(), Some(&server), "gate");
    world
        .publish(&[put("fresh-1", "espresso kafka"), delete("kit-1")])
        .await;
    let state_dir = world.dir.path().join("state");
    server.hold_reads();
    let daemon = start(&serve_args(&world, &state_dir, &[]), &server.env());
    let client = reqwest::Client::new();
    // While the store holds every read, search and lookups answer 503 and readiness says no.
    for _ in 0..20 {
        let search = client
            .post(format!("{}/search", daemon.url))
            .json(&serde_json::json!({"query_text": "espresso"}))
            .send()
            .await
            .unwrap();
        assert_eq!(search.status(), 503);
        assert_eq!(
            client
                .get(format!("{}/readyz", daemon.url))
                .send()
                .await
                .unwrap()
                .status(),
            503
        );
        assert_eq!(
            client
                .get(format!("{}/livez", daemon.url))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let metrics = |client: reqwest::Client, url: String| async move {
        let text = client.get(format!("{url}/metrics")).send().await.unwrap();
        text.text().await.unwrap()
    };
    let text = metrics(client.clone(), daemon.url.clone()).await;
    assert!(text.lines().any(|l| l == "deltacache_ready 0"), "{text}");
    // The counters alerts watch exist at 0 before the first sync ends.
    assert!(
        text.lines()
            .any(|l| l == "deltacache_gate_refusals_total{reason=\"removed\"} 0"),
        "{text}"
    );
    server.release_reads();
    daemon.wait_ready(&client).await;
    let text = metrics(client.clone(), daemon.url.clone()).await;
    assert!(text.lines().any(|l| l == "deltacache_ready 1"), "{text}");
    let response = client
        .post(format!("{}/search", daemon.url))
        .json(&serde_json::json!({"query_text": "espresso", "top_k": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-data-version"],
        "1",
        "the first answered search already reflects the delta"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let ids: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"fresh-1") && !ids.contains(&"kit-1"),
        "{ids:?}"
    );
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_store_at_boot_serves_stale_or_fails_by_policy() {
    let mut world = World::new(sample_items(), None, "");
    // A closed port: nothing listens on port 1 of loopback.
    world.store = "s3://deltas/nowhere".into();
    world.remote.endpoint_url = Some("http://127.0.0.1:1".into());
    let env = vec![
        ("AWS_ACCESS_KEY_ID", "x".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "y".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    let state_dir = world.dir.path().join("state");
    let started = std::time::Instant::now();
    let daemon = start(
        &serve_args(
            &world,
            &state_dir,
            &[
                "--boot-deadline",
                "5s",
                "--remote-attempts",
                "1",
                "--remote-timeout",
                "2s",
            ],
        ),
        &env,
    );
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "boot must end within the deadline"
    );
    let status = daemon.status(&client).await;
    assert_eq!(status["sync"]["stale"], true, "{status}");
    assert!(
        status["sync"]["last_error"]
            .as_str()
            .unwrap()
            .contains("nowhere")
            || status["sync"]["last_error"]
                .as_str()
                .unwrap()
                .contains("head"),
        "{status}"
    );
    let unreachable = daemon
        .metric(
            &client,
            "deltacache_sync_failures_total{reason=\"unreachable\"}",
        )
        .await;
    assert!(unreachable > 0.0, "no unreachable failure counted");
    assert!(daemon.terminate().success());

    let args = serve_args(
        &world,
        &state_dir,
        &[
            "--boot-deadline",
            "5s",
            "--remote-attempts",
            "1",
            "--remote-timeout",
            "2s",
            "--on-sync-failure",
            "fail",
        ],
    );
    let output = std::process::Command::new(binary())
        .args(&args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("boot-time sync failed"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn swaps_under_load_fail_no_request_and_versions_never_go_back() {
    let mut world = World::new(sample_items(), None, "");
    let state_dir = world.dir.path().join("state");
    let daemon = start(
        &serve_args(&world, &state_dir, &["--follow-interval", "1h"]),
        &[],
    );
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client_idx in 0..16 {
        let (client, url, stop) = (client.clone(), daemon.url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut last_version, mut n_requests, mut failures) = (0u64, 0u64, Vec::new());
            loop {
                // The request issued after the test saw the last swap must see its version.
                let stopping = stop.load(std::sync::atomic::Ordering::Relaxed);
                let response = if client_idx % 2 == 0 {
                    client
                        .post(format!("{url}/search"))
                        .json(&serde_json::json!({"query_text": "database kafka", "top_k": 3}))
                        .send()
                        .await
                } else {
                    client.get(format!("{url}/items/db-2")).send().await
                };
                n_requests += 1;
                match response {
                    Ok(response) if response.status() == 200 => {
                        let version: u64 = response.headers()["x-data-version"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        assert!(
                            version >= last_version,
                            "client {client_idx}: version went from {last_version} to {version}"
                        );
                        last_version = version;
                        let _ = response.bytes().await.unwrap();
                    }
                    Ok(response) => failures.push(format!("status {}", response.status())),
                    Err(error) => failures.push(error.to_string()),
                }
                if stopping {
                    break;
                }
            }
            (n_requests, failures, last_version)
        }));
    }
    // Publish deltas and make the daemon follow each with SIGHUP; wait for each swap.
    let n_deltas = 5u64;
    for seq in 1..=n_deltas {
        world
            .publish(&[put(&format!("load-{seq}"), "kafka database under load")])
            .await;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
        loop {
            let status = daemon.status(&client).await;
            if status["seq"] == seq {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for handle in clients {
        let (n_requests, failures, last_version) = handle.await.unwrap();
        assert!(
            failures.is_empty(),
            "failed requests under swaps: {failures:?}"
        );
        assert_eq!(last_version, n_deltas);
        total += n_requests;
    }
    println!("swap under load: {total} requests across {n_deltas} swaps, 0 failed");
    assert!(daemon.terminate().success());
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn run_ok(args: &[&str]) -> String {
    let output = std::process::Command::new(binary())
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_export_rollback_and_compact_through_the_binary() {
    let mut world = World::new(sample_items(), None, "");
    let state = world.dir.path().join("state");
    let (bundle, keys) = (
        world.bundle.to_str().unwrap().to_owned(),
        world.trusted_root().to_str().unwrap().to_owned(),
    );
    let sync_args = |store: &str| {
        vec![
            "sync".to_owned(),
            "--bundle".into(),
            bundle.clone(),
            "--state-dir".into(),
            state.to_str().unwrap().into(),
            "--store".into(),
            store.into(),
            "--trusted-root".into(),
            keys.clone(),
        ]
    };
    world.publish(&[put("one", "kafka")]).await;
    let seq1_model = world.model.clone();
    assert!(run_ok(&strs(&sync_args(&world.store))).contains("now at seq 1"));
    world.publish(&[put("two", "crema"), delete("db-1")]).await;
    assert!(run_ok(&strs(&sync_args(&world.store))).contains("now at seq 2"));
    assert!(run_ok(&strs(&sync_args(&world.store))).contains("up to date at seq 2"));

    let status: serde_json::Value = serde_json::from_str(&run_ok(&[
        "status",
        "--state-dir",
        state.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(status["applied_seq"], 2);
    assert_eq!(status["head_seq_seen"], 2);
    assert_eq!(status["versions"].as_array().unwrap().len(), 3, "{status}");
    // Named fields, times as RFC 3339.
    let newest = &status["versions"][2];
    assert_eq!(newest["seq"], 2, "{status}");
    assert!(newest["name"].as_str().is_some() && newest["n_items"].as_u64().is_some());
    for time in [&newest["created_at"], &status["last_sync_at"]] {
        let time = time.as_str().unwrap_or_else(|| panic!("{status}"));
        assert!(time.parse::<jiff::Timestamp>().is_ok(), "{time}");
    }
    let text = run_ok(&["status", "--state-dir", state.to_str().unwrap()]);
    assert!(
        text.contains("s ago)") && text.contains("  seq 2  "),
        "{text}"
    );
    assert!(text.contains("running daemon: none (the last sync result and error are known to a running daemon only)"), "{text}");

    let out = world.dir.path().join("export.jsonl");
    run_ok(&[
        "export",
        "--state-dir",
        state.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().count(),
        world.model.len()
    );
    assert_eq!(exported(&state), world.model);

    // Rollback to seq 1 is pinned: a sync does not move it, unpinning does.
    assert!(
        run_ok(&[
            "rollback",
            "--state-dir",
            state.to_str().unwrap(),
            "--to",
            "1"
        ])
        .contains("pinned")
    );
    assert_eq!(exported(&state), seq1_model);
    assert!(run_ok(&strs(&sync_args(&world.store))).contains("pinned"));
    assert_eq!(exported(&state), seq1_model);
    run_ok(&[
        "rollback",
        "--state-dir",
        state.to_str().unwrap(),
        "--unpin",
    ]);
    assert!(run_ok(&strs(&sync_args(&world.store))).contains("now at seq 2"));
    assert_eq!(exported(&state), world.model);
    let output = std::process::Command::new(binary())
        .args([
            "rollback",
            "--state-dir",
            state.to_str().unwrap(),
            "--to",
            "7",
        ])
        .output()
        .unwrap();
    assert!(
        !output.status.success()
            && String::from_utf8_lossy(&output.stderr).contains("no kept version has seq 7")
    );

    // Compact: a new bundle at seq 2 whose state equals the chain's, and a later delta
    // published on the old bundle applies on top of the compacted one.
    let compacted = world.dir.path().join("compacted");
    assert!(
        run_ok(&[
            "compact",
            "--bundle",
            &bundle,
            "--store",
            &world.store,
            "--trusted-root",
            &keys,
            "--out",
            compacted.to_str().unwrap()
        ])
        .contains("seq 2")
    );
    world.publish(&[put("three", "skillet")]).await;
    let fresh_state = world.dir.path().join("fresh-state");
    let output = run_ok(&[
        "sync",
        "--bundle",
        compacted.to_str().unwrap(),
        "--state-dir",
        fresh_state.to_str().unwrap(),
        "--store",
        &world.store,
        "--trusted-root",
        &keys,
    ]);
    assert!(
        output.contains("applied 1 deltas") && output.contains("now at seq 3"),
        "{output}"
    );
    assert_eq!(exported(&fresh_state), world.model);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_slower_than_the_boot_deadline_serves_stale_then_catches_up() {
    let server = S3Server::start();
    let mut world = World::new(sample_items(), Some(&server), "slow");
    world.publish(&[put("late-1", "espresso kafka")]).await;
    let state_dir = world.dir.path().join("state");
    server.hold_reads();
    let started = std::time::Instant::now();
    let daemon = start(
        &serve_args(
            &world,
            &state_dir,
            &["--boot-deadline", "2s", "--follow-interval", "1h"],
        ),
        &server.env(),
    );
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "boot must end at the deadline"
    );
    let status = daemon.status(&client).await;
    assert_eq!(
        status["seq"], 0,
        "the bundle's version serves while the store is slow"
    );
    assert_eq!(status["sync"]["stale"], true);
    assert!(
        status["sync"]["last_error"]
            .as_str()
            .unwrap()
            .contains("did not finish within"),
        "{status}"
    );
    // Once the store answers, a sync (SIGHUP) brings the daemon to the head.
    server.release_reads();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    loop {
        let status = daemon.status(&client).await;
        if status["seq"] == 1 {
            assert_eq!(status["sync"]["stale"], false);
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn following_a_file_store_syncs_on_a_new_head_and_is_idle_otherwise() {
    let mut world = World::new(sample_items(), None, "");
    world.publish(&[put("first", "kafka")]).await;
    let state_dir = world.dir.path().join("state");
    let daemon = start(
        &serve_args(&world, &state_dir, &["--follow-interval", "1h"]),
        &[],
    );
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    let attempts = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("deltacache_sync_attempts_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let metrics_url = format!("{}/metrics", daemon.url);
    let before = attempts(
        &client
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    // Reading the store (which every sync does) must not wake the follower again.
    for _ in 0..200 {
        let now = attempts(
            &client
                .get(&metrics_url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
        assert!(
            now <= before + 1,
            "the follower keeps syncing with nothing new: {before} → {now}"
        );
    }
    // A new head in the watched directory is applied without SIGHUP or waiting an interval.
    world.publish(&[put("second", "crema")]).await;
    loop {
        let status = daemon.status(&client).await;
        if status["seq"] == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(daemon.terminate().success());
}

/// Polls `/status` until `done` holds (bounded: fails after a minute instead of hanging).
async fn wait_for_status(
    daemon: &Daemon,
    client: &reqwest::Client,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = daemon.status(client).await;
        if done(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waiting for {what}: {status}"
        );
        tokio::task::yield_now().await;
    }
}

/// One counter or gauge from `/metrics` (0 when absent).
async fn metric(daemon: &Daemon, client: &reqwest::Client, name: &str) -> f64 {
    daemon.metric(client, name).await
}

fn sighup(daemon: &Daemon) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
}

fn committed_versions(state_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state_dir.join("versions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Swaps two paths atomically (`renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: renameat2 on two NUL-terminated paths we own.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_that_cannot_be_opened_is_never_committed_and_is_made_again_later() {
    let mut world = World::new(sample_items(), None, "");
    world.publish(&[put("one", "kafka")]).await;
    let state_dir = world.dir.path().join("state");
    let daemon = start(
        &serve_args(&world, &state_dir, &["--follow-interval", "1h"]),
        &[],
    );
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    assert_eq!(daemon.status(&client).await["seq"], 1);
    let versions = committed_versions(&state_dir);
    world.publish(&[put("two", "crema")]).await;
    // Opening a new version's readers fails (readers/ is now a file: every new clone fails
    // with "not a directory"); the served version keeps its open handles.
    let readers = state_dir.join("readers");
    std::fs::rename(&readers, state_dir.join("readers.away")).unwrap();
    std::fs::write(&readers, b"not a directory").unwrap();
    let failures = metric(&daemon, &client, "deltacache_sync_failures_total").await;
    sighup(&daemon);
    let status = wait_for_status(&daemon, &client, "a failed swap", |s| {
        s["sync"]["last_result"] == "failed"
    })
    .await;
    let error = status["sync"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("nothing was committed") && error.contains("Not a directory"),
        "{status}"
    );
    assert_eq!(status["seq"], 1, "status names the version it serves");
    assert_eq!(status["sync"]["stale"], true);
    assert_eq!(
        metric(&daemon, &client, "deltacache_current_seq").await,
        1.0
    );
    // The version is checked (opened) before its commit: a failure leaves nothing behind.
    assert_eq!(
        committed_versions(&state_dir),
        versions,
        "nothing committed"
    );
    assert!(is_empty_dir(&state_dir.join("staging")));
    let failures_before = failures + 1.0;
    sighup(&daemon);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(&daemon, &client, "deltacache_sync_failures_total").await < failures_before + 1.0 {
        assert!(std::time::Instant::now() < deadline, "no second attempt");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        committed_versions(&state_dir),
        versions,
        "still nothing committed"
    );
    assert!(is_empty_dir(&state_dir.join("staging")));
    // Once readers can be opened again, the version is made and swapped in. The directory
    // comes back in one step (the follower retries on its own meanwhile).
    exchange(&readers, &state_dir.join("readers.away"));
    std::fs::remove_file(state_dir.join("readers.away")).unwrap();
    sighup(&daemon);
    let status = wait_for_status(&daemon, &client, "the swap", |s| s["seq"] == 2).await;
    assert_eq!(status["sync"]["stale"], false, "{status}");
    assert_eq!(status["sync"]["last_result"], "applied");
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_and_unpin_reach_a_running_daemon_and_wait_for_an_apply_in_flight() {
    let server = S3Server::start();
    let mut world = World::new(sample_items(), Some(&server), "rollback-live");
    let state_dir = world.dir.path().join("state");
    let state = state_dir.to_str().unwrap().to_owned();
    world.publish(&[put("one", "kafka")]).await;
    let args = serve_args(
        &world,
        &state_dir,
        &["--follow-interval", "1h", "--keep-versions", "2"],
    );
    let daemon = start(&args, &server.env());
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    world.publish(&[put("two", "crema")]).await;
    sighup(&daemon);
    wait_for_status(&daemon, &client, "seq 2", |s| s["seq"] == 2).await;

    // Rollback is served at once, no restart.
    let out = run_ok(&["rollback", "--state-dir", &state, "--to", "1"]);
    assert!(
        out.contains("serving version") && out.contains("pinned"),
        "{out}"
    );
    let status = daemon.status(&client).await;
    assert_eq!(status["seq"], 1, "{status}");
    assert_eq!(status["sync"]["last_result"], "pinned");
    world.publish(&[put("three", "espresso")]).await;
    let attempts = status["sync"]["attempts"].as_u64().unwrap();
    sighup(&daemon);
    let status = wait_for_status(&daemon, &client, "a sync while pinned", |s| {
        s["sync"]["attempts"].as_u64() > Some(attempts)
    })
    .await;
    assert_eq!(status["sync"]["last_result"], "pinned", "{status}");
    assert_eq!(status["seq"], 1, "a pin holds against new deltas");

    // Unpin: the daemon follows again at once. While its sync is held in flight, a rollback
    // waits for it instead of racing it, and wins last.
    server.hold_reads();
    let attempts = metric(&daemon, &client, "deltacache_sync_attempts_total").await;
    let out = run_ok(&["rollback", "--state-dir", &state, "--unpin"]);
    assert!(out.contains("following resumes"), "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(&daemon, &client, "deltacache_sync_attempts_total").await <= attempts {
        assert!(std::time::Instant::now() < deadline, "no sync after unpin");
        tokio::task::yield_now().await;
    }
    // Unpinned, the daemon applies seq 3 (keep-versions 2 then keeps seqs 2 and 3); the
    // rollback to 2, asked while that apply is held in flight, happens after it.
    let rollback = std::process::Command::new(binary())
        .args(["rollback", "--state-dir", &state, "--to", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    server.release_reads();
    let rollback = rollback.wait_with_output().unwrap();
    assert!(
        rollback.status.success(),
        "{}",
        String::from_utf8_lossy(&rollback.stderr)
    );
    let status = wait_for_status(&daemon, &client, "the rollback", |s| {
        s["sync"]["last_result"] == "pinned"
    })
    .await;
    assert_eq!(status["seq"], 2, "{status}");
    assert!(
        String::from_utf8_lossy(&rollback.stdout).contains("(seq 2), pinned"),
        "{}",
        String::from_utf8_lossy(&rollback.stdout)
    );
    // The pin and the pointer name the same kept version, and a restart serves it, still
    // pinned.
    let pinned = std::fs::read_to_string(state_dir.join("pinned")).unwrap();
    assert_eq!(
        std::fs::read_to_string(state_dir.join("current")).unwrap(),
        pinned
    );
    assert!(state_dir.join("versions").join(pinned.trim()).is_dir());
    assert!(daemon.terminate().success());
    let daemon = start(&args, &server.env());
    daemon.wait_ready(&client).await;
    let status = daemon.status(&client).await;
    assert_eq!(status["seq"], 2, "{status}");
    assert_eq!(status["sync"]["last_result"], "pinned");
    assert!(daemon.terminate().success());
}

/// `/status` `versions_kept` is what is on disk after garbage collection, from the first
/// answer after a restart on; a daemon that starts pinned says so, naming the seq and how
/// to unpin.
#[tokio::test(flavor = "multi_thread")]
async fn versions_kept_counts_the_disk_and_a_pinned_daemon_says_so_at_start() {
    let mut world = World::new(sample_items(), None, "kept");
    let state_dir = world.dir.path().join("state");
    let state = state_dir.to_str().unwrap().to_owned();
    world.publish(&[put("one", "kafka")]).await;
    let args = serve_args(
        &world,
        &state_dir,
        &["--follow-interval", "1h", "--keep-versions", "2"],
    );
    let daemon = start(&args, &[]);
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    for (seq, id) in [(2, "two"), (3, "three"), (4, "four")] {
        world.publish(&[put(id, "crema")]).await;
        sighup(&daemon);
        wait_for_status(&daemon, &client, "the new seq", |s| s["seq"] == seq).await;
        // Garbage collection follows the swap; what it leaves is what /status reports.
        let status = wait_for_status(&daemon, &client, "versions_kept as on disk", |s| {
            s["sync"]["versions_kept"] == committed_versions(&state_dir).len()
        })
        .await;
        assert_eq!(committed_versions(&state_dir).len(), 2, "{status}");
    }
    // `status` shows the running daemon's last result and last error on lines of their own
    // (the file store's watcher may have synced again since: up to date).
    let text = run_ok(&["status", "--state-dir", &state]);
    assert!(
        (text.contains("\n  last result: applied\n")
            || text.contains("\n  last result: up-to-date\n"))
            && text.contains("\n  last error: none\n"),
        "{text}"
    );
    run_ok(&["rollback", "--state-dir", &state, "--to", "3"]);
    assert!(daemon.terminate().success());

    // Restarted pinned: a warning at start names the seq and the unpin command, and the
    // first /status counts the versions on disk.
    let mut child = std::process::Command::new(binary())
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let collected = stderr.clone();
    let pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            collected.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let url = {
        use std::io::BufRead;
        let mut lines = stdout.lines();
        loop {
            let line = lines
                .next()
                .expect("daemon exited before it listened")
                .unwrap();
            if let Some(url) = line.strip_prefix("deltacache: listening on ") {
                std::thread::spawn(move || for _ in lines {});
                break url.trim().to_owned();
            }
        }
    };
    let daemon = Daemon { child, url };
    daemon.wait_ready(&client).await;
    let status = daemon.status(&client).await;
    assert_eq!(status["seq"], 3, "{status}");
    assert_eq!(
        status["sync"]["versions_kept"],
        committed_versions(&state_dir).len(),
        "{status}"
    );
    let log = stderr.lock().unwrap().clone();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("pinned at seq 3"))
        .unwrap_or_else(|| panic!("no warning that the daemon is pinned: {log}"));
    assert!(
        warning.contains(&format!("deltacache rollback --state-dir {state} --unpin")),
        "{warning}"
    );
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_that_overruns_its_deadline_is_stopped_reported_stale_and_retried() {
    let server = S3Server::start();
    let mut world = World::new(sample_items(), Some(&server), "overrun");
    world.publish(&[put("one", "kafka")]).await;
    let state_dir = world.dir.path().join("state");
    let daemon = start(
        &serve_args(
            &world,
            &state_dir,
            &["--follow-interval", "1h", "--sync-deadline", "2s"],
        ),
        &server.env(),
    );
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    world.publish(&[put("two", "crema")]).await;
    server.hold_reads();
    sighup(&daemon);
    let status = wait_for_status(&daemon, &client, "stale", |s| s["sync"]["stale"] == true).await;
    assert!(
        status["sync"]["last_error"]
            .as_str()
            .unwrap()
            .contains("sync did not finish within 2s"),
        "{status}"
    );
    assert_eq!(status["seq"], 1);
    assert!(is_empty_dir(&state_dir.join("staging")));
    server.release_reads();
    sighup(&daemon);
    let status = wait_for_status(&daemon, &client, "seq 2", |s| s["seq"] == 2).await;
    assert_eq!(status["sync"]["stale"], false, "{status}");
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_boot_deadline_stops_the_apply_and_leaves_nothing_half_made() {
    let mut world = World::new(sample_items(), None, "");
    let big: Vec<serde_json::Value> = (0..20_000)
        .map(|i| put(&format!("bulk-{i}"), "kafka espresso crema balancer"))
        .collect();
    world.publish(&big).await;
    world.publish(&[put("after", "skillet")]).await;
    let state_dir = world.dir.path().join("state");
    let daemon = start(
        &serve_args(
            &world,
            &state_dir,
            &["--follow-interval", "1h", "--boot-deadline", "100ms"],
        ),
        &[],
    );
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    // Whatever the deadline interrupted, the apply has stopped by the time the daemon is
    // ready: nothing is left in staging, and no version newer than the served one exists.
    let status = daemon.status(&client).await;
    assert!(is_empty_dir(&state_dir.join("staging")), "{status}");
    let newest = committed_versions(&state_dir)
        .iter()
        .map(|name| name.split('-').next().unwrap().parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert_eq!(status["seq"], newest, "{status}");
    if status["seq"] == 0 {
        assert_eq!(status["sync"]["stale"], true);
        assert!(
            status["sync"]["last_error"]
                .as_str()
                .unwrap()
                .contains("boot-time sync did not finish within 0.1s"),
            "{status}"
        );
    }
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn deltas_are_applied_one_at_a_time_within_the_memory_budget() {
    let mut world = World::new(sample_items(), None, "");
    let state_dir = world.dir.path().join("state");
    let text = "kafka espresso crema balancer skillet vector search database".repeat(4);
    for round in 0..3 {
        let changes: Vec<serde_json::Value> = (0..20)
            .map(|i| put(&format!("r{round}-{i}"), &text))
            .collect();
        world.publish(&changes).await;
    }
    let sync = |budget: &str| {
        let output = sync_command(&world, &state_dir)
            .args(["--apply-memory-budget", budget])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    // Each delta decodes to about 7 KB: over a 4 KB budget it is refused by name, and the
    // state dir is left as it was.
    let (ok, out) = sync("4000");
    assert!(!ok, "{out}");
    assert!(
        out.contains("over the memory budget of 4000 bytes"),
        "{out}"
    );
    let before = snapshot(&state_dir);
    let (ok, out) = sync("4000");
    assert!(!ok);
    assert_eq!(snapshot(&state_dir), before, "{out}");
    // 16 KB holds one delta but not the three together: they are applied in turn.
    let (ok, out) = sync("16000");
    assert!(ok && out.contains("now at seq 3"), "{out}");
    assert_eq!(exported(&state_dir), world.model);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_stops_answering_fails_each_attempt_and_is_retried() {
    let server = S3Server::start();
    let mut world = World::new(sample_items(), Some(&server), "stalled");
    world.publish(&[put("one", "kafka")]).await;
    let state_dir = world.dir.path().join("state");
    server.hold_reads();
    let gets = server.gets();
    let started = std::time::Instant::now();
    let output = sync_command(&world, &state_dir)
        .envs(server.env())
        .args([
            "--remote-attempt-timeout",
            "500ms",
            "--remote-attempts",
            "3",
        ])
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    server.release_reads();
    let out = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{out}");
    assert!(started.elapsed() < Duration::from_secs(30), "{out}");
    assert!(
        server.gets() - gets >= 3,
        "each attempt is its own request: {} GETs; {out}",
        server.gets() - gets
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_older_than_the_bundle_or_missing_is_refused_and_a_moved_one_is_followed() {
    let mut world = World::new(sample_items(), None, "");
    world.publish(&[put("one", "kafka")]).await;
    world.publish(&[put("two", "crema")]).await;
    // A bundle compacted at seq 2 and a second repository (same root) that only reached
    // seq 1: a fresh state dir must refuse it rather than record it as up to date.
    let compacted = world.dir.path().join("compacted");
    deltacache::sync::ops::compact(&world.bundle, world.sync_options(), &compacted, false)
        .await
        .unwrap();
    let behind = World {
        store: format!("file://{}", world.dir.path().join("behind").display()),
        n_published: 0,
        ..clone_world(&world)
    };
    let trust = Trust {
        key: world.key.clone(),
        root: world.root.clone(),
    };
    trust.init_store(&behind.store, &Default::default()).await;
    let mut behind = behind;
    behind.publish(&[put("one", "kafka")]).await;
    let state_dir = world.dir.path().join("state-behind");
    let error = sync_once(
        &compacted,
        &state_dir,
        behind.sync_options(),
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("newest delta is seq 1, older than this instance's seq 2"),
        "{error:#}"
    );
    // A URL holding no repository is a failure, not an up-to-date instance.
    let nowhere = World {
        store: format!("file://{}", world.dir.path().join("mistyped").display()),
        ..clone_world(&world)
    };
    let error = sync_once(
        &world.bundle,
        &world.dir.path().join("state-nowhere"),
        nowhere.sync_options(),
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("holds no TUF repository"),
        "{error:#}"
    );
    // A state dir that followed one URL follows the same repository moved to another: its
    // trusted metadata is kept per URL, so the move starts from the baked root again.
    let state_dir = world.dir.path().join("state-moved");
    sync_once(
        &world.bundle,
        &state_dir,
        world.sync_options(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let moved_dir = world.dir.path().join("moved");
    copy_dir(&world.dir.path().join("store"), &moved_dir);
    let mut moved = World {
        store: format!("file://{}", moved_dir.display()),
        ..clone_world(&world)
    };
    let outcome = sync_once(
        &world.bundle,
        &state_dir,
        moved.sync_options(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, SyncOutcome::UpToDate { head_seq: 2 }),
        "{outcome:?}"
    );
    moved.publish(&[put("three", "espresso")]).await;
    sync_once(
        &world.bundle,
        &state_dir,
        moved.sync_options(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(exported(&state_dir), moved.model);
}

fn copy_dir(from: &Path, to: &Path) {
    for rel in deltacache::bundle::list_files(from).unwrap() {
        let target = to.join(&rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&rel), &target).unwrap();
    }
}

/// The item cache of a following daemon: an item read twice is read from LevelDB once; after
/// a delta updates it, the new version serves the new JSON, and of the two cached items only
/// the one the delta did not touch is carried over the swap.
#[tokio::test(flavor = "multi_thread")]
async fn the_item_cache_survives_a_swap_except_for_the_ids_a_delta_touched() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let trust = Trust::new(dir.path());
    let store = format!("file://{}", dir.path().join("store").display());
    trust.init_store(&store, &RemoteSettings::default()).await;
    let state = dir.path().join("state");
    let daemon = super::support::serve_following(&bundle, &state, &store, &trust.root, &[]);
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    let item = |id: &'static str| {
        let client = client.clone();
        let url = format!("{}/items/{id}", daemon.url);
        async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let counts = || async {
        (
            metric(&daemon, &client, "deltacache_item_cache_hits_total").await,
            metric(&daemon, &client, "deltacache_item_cache_misses_total").await,
        )
    };
    let old_kit = item("kit-1").await;
    let db = item("db-1").await;
    assert_eq!(item("kit-1").await, old_kit);
    assert_eq!(counts().await, (1.0, 2.0));

    let new_kit =
        serde_json::json!({"id": "kit-1", "category": "kitchen", "text": "lever espresso machine"});
    super::support::publish_changes(
        &dir.path().join("changes.jsonl"),
        &store,
        &trust.key,
        &bundle,
        RemoteSettings::default(),
        &[serde_json::json!({"op": "put", "item": new_kit})],
    )
    .await;
    wait_for_status(&daemon, &client, "seq 1", |s| s["seq"] == 1).await;
    assert_eq!(item("kit-1").await, new_kit, "the touched id is read again");
    assert_eq!(item("db-1").await, db);
    assert_eq!(
        metric(&daemon, &client, "deltacache_item_cache_carried_entries").await,
        1.0,
        "db-1 carried over, kit-1 dropped"
    );
}
