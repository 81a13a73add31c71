//! Fleet control through the real binary: a local fleet of instances (one machine, one
//! store, each its own state dir and seed) steered by `deltacache fleet set`, and the
//! health gate refusing bad versions on every instance.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::support::{Daemon, Trust, binary, block_on, build_bundle, sample_items};

/// A bundle, a repository and the instances following it.
struct Fleet {
    dir: tempfile::TempDir,
    bundle: PathBuf,
    key: PathBuf,
    root: PathBuf,
    store: String,
    n_changes: usize,
}

impl Fleet {
    /// A repository for a bundle of the sample items and `extra` more.
    fn new(extra: usize) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let mut items = sample_items();
        items.extend((0..extra).map(|i| {
            serde_json::json!({"id": format!("bulk-{i}"), "category": "bulk", "text": format!("bulk filler number {i}")})
        }));
        let bundle = build_bundle(dir.path(), &items);
        let trust = Trust::new(dir.path());
        let store = format!("file://{}", dir.path().join("store").display());
        block_on(trust.init_store(&store, &Default::default()));
        Fleet {
            dir,
            bundle,
            key: trust.key,
            root: trust.root,
            store,
            n_changes: 0,
        }
    }

    /// Runs the binary; returns (success, stdout + stderr).
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let output = std::process::Command::new(binary())
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// `publish-delta` of `changes` (plus `extra` flags); returns (success, output).
    fn try_publish(&mut self, changes: &[serde_json::Value], extra: &[&str]) -> (bool, String) {
        self.n_changes += 1;
        let path = self
            .dir
            .path()
            .join(format!("changes-{}.jsonl", self.n_changes));
        std::fs::write(
            &path,
            changes.iter().map(|c| format!("{c}\n")).collect::<String>(),
        )
        .unwrap();
        let mut args = vec![
            "publish-delta",
            "--store",
            &self.store,
            "--key",
            self.key.to_str().unwrap(),
            "--bundle",
            self.bundle.to_str().unwrap(),
            "--changes",
            path.to_str().unwrap(),
        ];
        args.extend(extra);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args)
    }

    fn publish(&mut self, changes: &[serde_json::Value]) -> String {
        let (ok, text) = self.try_publish(changes, &[]);
        assert!(ok, "publish-delta failed: {text}");
        text
    }

    /// `fleet set` with `args`.
    fn fleet_set(&self, args: &[&str]) -> String {
        let mut all = vec![
            "fleet",
            "set",
            "--store",
            &self.store,
            "--key",
            self.key.to_str().unwrap(),
        ];
        all.extend(args);
        let (ok, text) = self.cli(&all);
        assert!(ok, "fleet set {args:?} failed: {text}");
        text
    }

    /// An instance with `seed`, following every second (and on store changes).
    fn start(&self, name: &str, seed: u32, extra: &[&str]) -> Instance {
        let state = self.dir.path().join(name);
        let seed = seed.to_string();
        let mut args = vec![
            "serve",
            "--bundle",
            self.bundle.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--store",
            &self.store,
            "--trusted-root",
            self.root.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--follow-interval",
            "1s",
            "--instance-seed",
            &seed,
        ];
        args.extend(extra);
        Instance {
            daemon: Daemon::start(&args),
            state,
        }
    }
}

struct Instance {
    daemon: Daemon,
    state: PathBuf,
}

fn put(id: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"op": "put", "item": {"id": id, "category": "new", "text": text}})
}

fn delete(id: &str) -> serde_json::Value {
    serde_json::json!({"op": "delete", "id": id})
}

/// Polls every instance's `/status` until `done` holds for all (bounded by a deadline).
async fn wait_all(
    instances: &[&Instance],
    client: &reqwest::Client,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut statuses = Vec::new();
    for instance in instances {
        loop {
            let status = instance.daemon.status(client).await;
            if done(&status) {
                statuses.push(status);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "waiting for {what}: {status}"
            );
            tokio::task::yield_now().await;
        }
    }
    statuses
}

fn seq_is(seq: u64) -> impl Fn(&serde_json::Value) -> bool {
    move |s| s["seq"] == seq
}

/// One counter or gauge from `/metrics` (the sum of its series; 0 when absent).
async fn metric(instance: &Instance, client: &reqwest::Client, name: &str) -> f64 {
    instance.daemon.metric(client, name).await
}

fn sighup(instance: &Instance) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(instance.daemon.child.id() as i32, libc::SIGHUP) };
}

/// Searches and lookups against every instance until stopped: counts answers and failures
/// (any status but 200, or a connection error).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(urls: &[String]) -> Load {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let tasks = urls
            .iter()
            .map(|url| {
                let (url, stop, ok, failed) =
                    (url.clone(), stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut errors = Vec::new();
                    let mut round = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        round += 1;
                        let answer = if round.is_multiple_of(2) {
                            client
                                .post(format!("{url}/search"))
                                .json(&serde_json::json!({"query_text": "espresso database", "top_k": 3}))
                                .send()
                                .await
                        } else {
                            client.get(format!("{url}/items/db-1")).send().await
                        };
                        match answer {
                            Ok(response) if response.status() == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(response) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("{}: {}", response.status(), response.text().await.unwrap_or_default()));
                            }
                            Err(error) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(error.to_string());
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops; returns (answered, failed, the first errors).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for task in self.tasks {
            errors.extend(task.await.unwrap());
        }
        errors.truncate(5);
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn waves_halt_pin_and_unpin_steer_a_fleet_of_five() {
    let mut fleet = Fleet::new(0);
    // Seeds 0 and 300 are in the first 20% of 2048 seeds, 700 and 1100 in the first 60%,
    // 2000 in the rest. The last instance keeps one version: going back rebuilds from the
    // bundle.
    let seeds = [0u32, 300, 700, 1100, 2000];
    let instances: Vec<Instance> = seeds
        .iter()
        .enumerate()
        .map(|(i, seed)| {
            let extra: &[&str] = if i == 4 {
                &["--keep-versions", "1"]
            } else {
                &[]
            };
            fleet.start(&format!("state-{i}"), *seed, extra)
        })
        .collect();
    let all: Vec<&Instance> = instances.iter().collect();
    let client = reqwest::Client::new();
    for instance in &all {
        instance.daemon.wait_ready(&client).await;
    }
    wait_all(&all, &client, "the bundle", seq_is(0)).await;

    // Waves: the first 20% at once, up to 60% after 3 s, the rest after an hour.
    let shown = fleet.fleet_set(&["--wave", "0s=20", "--wave", "3s=60", "--wave", "1h=100"]);
    assert!(
        shown.contains("waves: 20% after 0s, 60% after 3s, 100% after 1h"),
        "{shown}"
    );
    wait_all(&all, &client, "the waves", |s| {
        s["sync"]["fleet"]["waves"] == 3
    })
    .await;
    fleet.publish(&[put("fresh-1", "espresso kafka")]);
    let first = wait_all(&all[..2], &client, "wave 1 takes seq 1", seq_is(1)).await;
    let second = wait_all(&all[2..4], &client, "wave 2 takes seq 1", seq_is(1)).await;
    for status in &first {
        assert_eq!(status["sync"]["fleet"]["wave"], 1, "{status}");
    }
    for status in &second {
        assert_eq!(status["sync"]["fleet"]["wave"], 2, "{status}");
        let waited = status["sync"]["publish_to_serve_seconds"].as_f64().unwrap();
        assert!(
            (3.0..33.0).contains(&waited),
            "wave 2 starts 3 s after the publication, and is taken then: {status}"
        );
    }
    let last = wait_all(&all[4..], &client, "wave 3 holds seq 1 back", |s| {
        s["sync"]["fleet"]["held_seq"] == 1
    })
    .await;
    assert_eq!(last[0]["seq"], 0, "{}", last[0]);
    assert_eq!(last[0]["sync"]["fleet"]["wave"], 3);
    assert_eq!(last[0]["sync"]["fleet"]["wave_delay_seconds"], 3600);
    assert_eq!(last[0]["sync"]["last_result"], "held");
    // Removing the waves releases it.
    fleet.fleet_set(&["--no-waves"]);
    wait_all(&all, &client, "everyone at seq 1", seq_is(1)).await;

    // Halt: a new delta is seen but taken by no one.
    fleet.fleet_set(&["--halt"]);
    wait_all(&all, &client, "the halt", |s| {
        s["sync"]["fleet"]["halt"] == true
    })
    .await;
    fleet.publish(&[put("fresh-2", "crema kafka")]);
    let halted = wait_all(&all, &client, "seq 2 seen and held", |s| {
        s["sync"]["head_seq_seen"] == 2 && s["sync"]["last_result"] == "halted"
    })
    .await;
    for status in &halted {
        assert_eq!(status["seq"], 1, "{status}");
    }
    fleet.fleet_set(&["--resume"]);
    wait_all(&all, &client, "everyone at seq 2", seq_is(2)).await;
    fleet.publish(&[put("fresh-3", "skillet kafka")]);
    wait_all(&all, &client, "everyone at seq 3", seq_is(3)).await;

    // Pin the fleet to seq 1 under load: every instance goes back (the last one rebuilds seq
    // 1 from its bundle), then unpinning brings them all forward; no request fails.
    let urls: Vec<String> = all.iter().map(|i| i.daemon.url.clone()).collect();
    let load = Load::start(&urls);
    fleet.fleet_set(&["--pin", "1"]);
    let pinned = wait_all(&all, &client, "everyone back at seq 1", seq_is(1)).await;
    for status in &pinned {
        assert_eq!(status["sync"]["fleet"]["pin"], 1, "{status}");
    }
    let rebuilt = wait_all(&all[4..], &client, "fleet-pinned", |s| {
        s["sync"]["last_result"] == "fleet-pinned"
    })
    .await;
    assert_eq!(rebuilt[0]["seq"], 1);
    fleet.fleet_set(&["--unpin"]);
    wait_all(&all, &client, "everyone at seq 3 again", seq_is(3)).await;
    let (answered, failed, errors) = load.finish().await;
    assert_eq!(
        failed, 0,
        "failed requests during pin and unpin: {errors:?}"
    );
    assert!(answered > 50, "the load ran ({answered} answers)");

    // An instance's own rollback overrides the fleet: it stays at seq 2 while the others
    // move on.
    let (ok, text) = fleet.cli(&[
        "rollback",
        "--state-dir",
        all[0].state.to_str().unwrap(),
        "--to",
        "2",
    ]);
    assert!(ok, "{text}");
    fleet.publish(&[put("fresh-4", "balancer kafka")]);
    wait_all(&all[1..], &client, "the others at seq 4", seq_is(4)).await;
    let own = all[0].daemon.status(&client).await;
    assert_eq!(own["seq"], 2, "{own}");
    assert_eq!(own["sync"]["last_result"], "pinned", "{own}");
    for instance in instances {
        assert!(instance.daemon.terminate().success());
    }
}

/// Everything under a state dir but its lock, reader clones and scratch space, for
/// byte-identity checks.
fn state_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = deltacache::bundle::list_files(dir)
        .unwrap()
        .into_iter()
        .filter(|rel| {
            !(rel.starts_with("readers/")
                || rel.starts_with("scratch/")
                || rel.starts_with("trust")
                || rel == "refused.json"
                || rel == "control.sock"
                || rel == "lock")
        })
        .map(|rel| (rel.clone(), std::fs::read(dir.join(&rel)).unwrap()))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gate_refuses_mass_deletion_and_a_dead_canary_everywhere_and_takes_the_fix() {
    let mut fleet = Fleet::new(44);
    let canaries = fleet.dir.path().join("canaries.json");
    std::fs::write(
        &canaries,
        serde_json::to_vec(&serde_json::json!([
            {"query": "espresso crema", "top_k": 3, "must_include": ["kit-1"]}
        ]))
        .unwrap(),
    )
    .unwrap();
    fleet.fleet_set(&["--canaries", canaries.to_str().unwrap()]);
    let instances: Vec<Instance> = (0..3)
        .map(|i| fleet.start(&format!("state-{i}"), i * 700, &[]))
        .collect();
    let all: Vec<&Instance> = instances.iter().collect();
    let client = reqwest::Client::new();
    for instance in &all {
        instance.daemon.wait_ready(&client).await;
    }
    wait_all(&all, &client, "the bundle", seq_is(0)).await;

    // A delta deleting 60% of the 50 items: publish-delta refuses it without --force.
    let doomed: Vec<serde_json::Value> = (0..30).map(|i| delete(&format!("bulk-{i}"))).collect();
    let (ok, text) = fleet.try_publish(&doomed, &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("removes 60.0% of the items (50 to 20)") && text.contains("--force"),
        "{text}"
    );
    assert!(text.contains("Nothing was published"), "{text}");
    let before: Vec<_> = all.iter().map(|i| state_files(&i.state)).collect();
    let (ok, text) = fleet.try_publish(&doomed, &["--force"]);
    assert!(ok && text.contains("published seq 1"), "{text}");
    let refused = wait_all(&all, &client, "the gate's refusal", |s| {
        s["sync"]["gate_refused"]["seq"] == 1
    })
    .await;
    for status in &refused {
        assert_eq!(status["seq"], 0, "the old version serves: {status}");
        assert_eq!(status["sync"]["gate_refused"]["reason"], "removed");
        assert_eq!(status["sync"]["last_result"], "gate-refused");
        assert!(
            status["sync"]["gate_refused"]["message"]
                .as_str()
                .unwrap()
                .contains("removes 60.0%"),
            "{status}"
        );
    }
    // Never retried: more attempts, one refusal each, nothing made, the state as it was
    // (but for the record of the refusal).
    for instance in &all {
        let attempts = instance.daemon.status(&client).await["sync"]["attempts"]
            .as_u64()
            .unwrap();
        sighup(instance);
        wait_all(&[*instance], &client, "two more attempts", |s| {
            s["sync"]["attempts"].as_u64().unwrap() >= attempts + 2
        })
        .await;
        assert_eq!(
            metric(instance, &client, "deltacache_gate_refusals_total").await,
            1.0
        );
        assert!(instance.state.join("refused.json").exists());
    }
    for (instance, before) in all.iter().zip(&before) {
        assert_eq!(&state_files(&instance.state), before, "state dir unchanged");
    }
    let (status, answer) = super::support::post_search(
        &client,
        &all[0].daemon.url,
        serde_json::json!({"query_text": "bulk filler", "top_k": 40}),
    )
    .await;
    assert_eq!(
        (status, answer["results"].as_array().unwrap().len()),
        (200, 40)
    );

    // The fix puts the items back: seqs 1 and 2 together are gated as one, and pass.
    let restore: Vec<serde_json::Value> = (0..30)
        .map(|i| serde_json::json!({"op": "put", "item": {"id": format!("bulk-{i}"), "category": "bulk", "text": format!("bulk filler number {i}")}}))
        .collect();
    fleet.publish(&restore);
    let fixed = wait_all(&all, &client, "the fix", seq_is(2)).await;
    for status in &fixed {
        assert!(status["sync"]["gate_refused"].is_null(), "{status}");
    }

    // A delta that kills the canary (kit-1 gone: 2% removed, within the limit).
    fleet.publish(&[delete("kit-1")]);
    let refused = wait_all(&all, &client, "the canary's refusal", |s| {
        s["sync"]["gate_refused"]["seq"] == 3
    })
    .await;
    for status in &refused {
        assert_eq!(status["seq"], 2);
        assert_eq!(status["sync"]["gate_refused"]["reason"], "canary");
        let message = status["sync"]["gate_refused"]["message"].as_str().unwrap();
        assert!(message.contains("did not return \"kit-1\""), "{message}");
    }
    fleet.publish(&[put("kit-1", "espresso machine with café crema")]);
    wait_all(&all, &client, "the canary's fix", seq_is(4)).await;

    // A latency budget no search meets refuses the next version.
    fleet.fleet_set(&["--latency-budget-ms", "0.000001"]);
    fleet.publish(&[put("late-1", "kafka")]);
    let late = wait_all(&all, &client, "the latency refusal", |s| {
        s["sync"]["gate_refused"]["seq"] == 5
    })
    .await;
    for status in &late {
        assert_eq!(status["seq"], 4);
        assert_eq!(status["sync"]["gate_refused"]["reason"], "latency");
    }
    for instance in instances {
        assert!(instance.daemon.terminate().success());
    }
}
