//! Catch-up snapshots through the real binary: `compact --publish` puts a signed snapshot in
//! the store; an instance far behind installs it and applies the deltas after it, ending
//! exactly where a replay of the whole chain ends; the download resumes after a crash; a
//! snapshot over the cap, damaged, or not from this chain is never used.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::forge::{exported, put, snapshot};
use super::s3::S3Server;
use super::support::{
    Daemon, Trust, binary, build_bundle, post_search, publish_changes, sample_items,
    serve_following,
};
use deltacache::delta_store::RemoteSettings;

/// A bundle, a repository in a store and the deltas published to it.
struct Chain {
    dir: tempfile::TempDir,
    bundle: PathBuf,
    trust: Trust,
    store: String,
    remote: RemoteSettings,
    env: Vec<(&'static str, String)>,
    n_published: usize,
}

impl Chain {
    /// A repository in a file store, or under `s3` when given.
    async fn new(s3: Option<&S3Server>) -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let bundle = build_bundle(dir.path(), &sample_items());
        let trust = Trust::new(dir.path());
        let (store, remote, env) = match s3 {
            Some(server) => (
                format!("s3://{}/snapshots", super::s3::BUCKET),
                server.settings(),
                server.env(),
            ),
            None => (
                format!("file://{}", dir.path().join("store").display()),
                RemoteSettings::default(),
                Vec::new(),
            ),
        };
        trust.init_store(&store, &remote).await;
        Chain {
            dir,
            bundle,
            trust,
            store,
            remote,
            env,
            n_published: 0,
        }
    }

    /// Publishes `n` deltas, each adding one item.
    async fn publish(&mut self, n: usize) {
        for _ in 0..n {
            self.n_published += 1;
            let i = self.n_published;
            let file = self.dir.path().join(format!("changes-{i}.jsonl"));
            let change = put(&format!("late-{i}"), &format!("late arrival number {i}"));
            publish_changes(
                &file,
                &self.store,
                &self.trust.key,
                &self.bundle,
                self.remote.clone(),
                &[change],
            )
            .await;
        }
    }

    /// Runs the binary with the store's environment; returns (success, stdout, stderr).
    fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let mut command = Command::new(binary());
        command.args(args).env("RUST_LOG", "info");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// `compact --publish` into `out`.
    fn compact_publish(&self, out: &str) -> (bool, String, String) {
        let out = self.dir.path().join(out);
        self.cli(
            &[
                "compact",
                "--bundle",
                self.bundle.to_str().unwrap(),
                "--store",
                &self.store,
                "--trusted-root",
                self.trust.root.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--publish",
                "--key",
                self.trust.key.to_str().unwrap(),
            ],
            &[],
        )
    }

    /// `sync` of the state dir `name` (made under the test's directory) with `extra` flags.
    fn sync(&self, name: &str, extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let state = self.state(name);
        let mut args = vec![
            "sync",
            "--bundle",
            self.bundle.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--store",
            &self.store,
            "--trusted-root",
            self.trust.root.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = self.cli(&args, env);
        (ok, format!("{stdout}{stderr}"))
    }

    fn state(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What a replay of the whole chain serves (a fresh state dir, snapshots off).
    fn replayed(&self, name: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
        let (ok, log) = self.sync(name, &["--snapshot-after-deltas", "0"], &[]);
        assert!(ok, "{log}");
        assert!(
            !log.contains("snapshot"),
            "a replay touched a snapshot:\n{log}"
        );
        exported(&self.state(name))
    }
}

/// The `.part` files in a state dir's downloads.
fn downloads(state: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(state.join("downloads")) else {
        return Vec::new();
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

/// 40 deltas, a snapshot at 40, two more: a fresh instance installs the snapshot and applies
/// the 2 after it, serving exactly what a replay of all 42 serves; the baked bundle is not
/// touched; an instance one delta behind replays that delta and downloads nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_far_behind_instance_catches_up_from_the_snapshot_as_a_replay_would() {
    let mut chain = Chain::new(None).await;
    chain.publish(40).await;
    let (ok, stdout, stderr) = chain.compact_publish("compacted");
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("published snapshot 000000000040.snapshot.tar"),
        "{stdout}"
    );
    chain.publish(2).await;
    let bundle_before = snapshot(&chain.bundle);

    let (ok, log) = chain.sync("far", &[], &[]);
    assert!(ok, "{log}");
    assert!(
        log.contains("installed the catch-up snapshot as a version"),
        "{log}"
    );
    assert!(
        log.contains("caught up from the snapshot of seq 40, then applied 2 deltas"),
        "only the 2 deltas after the snapshot are applied:\n{log}"
    );
    let expected = chain.replayed("replayed");
    assert_eq!(expected.len(), sample_items().len() + 42);
    assert_eq!(exported(&chain.state("far")), expected);
    assert_eq!(
        snapshot(&chain.bundle),
        bundle_before,
        "the baked bundle changed"
    );
    assert!(downloads(&chain.state("far")).is_empty());

    chain.publish(1).await;
    let (ok, log) = chain.sync("replayed", &[], &[]);
    assert!(ok, "{log}");
    assert!(
        !log.contains("snapshot"),
        "one delta behind, no snapshot:\n{log}"
    );
    let (ok, log) = chain.sync("far", &[], &[]);
    assert!(ok, "{log}");
    assert_eq!(
        exported(&chain.state("far")),
        exported(&chain.state("replayed"))
    );
}

/// A download stopped by a crash after its first piece (S3, ranged reads) resumes from that
/// byte on the next run, and the result is what a replay serves.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_download_resumes_after_a_crash_on_s3() {
    let server = S3Server::start();
    let mut chain = Chain::new(Some(&server)).await;
    chain.publish(4).await;
    let (ok, stdout, stderr) = chain.compact_publish("compacted");
    assert!(ok, "{stdout}{stderr}");
    let flags = [
        "--snapshot-after-deltas",
        "2",
        "--snapshot-chunk-bytes",
        "4096",
    ];
    let (ok, log) = chain.sync(
        "crashed",
        &flags,
        &[("DELTACACHE_FAILPOINT", "snapshot-after-piece")],
    );
    assert!(!ok, "the failpoint did not stop the download:\n{log}");
    let parts = downloads(&chain.state("crashed"));
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(parts[0].1, 4096, "{parts:?}");
    assert!(parts[0].0.ends_with(".part"));

    let (ok, log) = chain.sync("crashed", &flags, &[]);
    assert!(ok, "{log}");
    assert!(
        log.contains("resuming the snapshot download at byte 4096"),
        "{log}"
    );
    assert!(log.contains("installed the catch-up snapshot"), "{log}");
    assert!(downloads(&chain.state("crashed")).is_empty());
    assert_eq!(
        exported(&chain.state("crashed")),
        chain.replayed("replayed")
    );
}

/// `compact --publish` refuses a bundle that is not at a published delta; a snapshot over
/// `--max-snapshot-bytes` is skipped; a damaged snapshot object is refused by its signed
/// sha256 and removed. Each time the instance replays the chain and ends where it should.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_over_the_cap_damaged_or_not_from_the_chain_is_never_used() {
    let mut chain = Chain::new(None).await;
    let (ok, stdout, stderr) = chain.compact_publish("empty");
    assert!(!ok, "a snapshot of seq 0 was published:\n{stdout}");
    assert!(stderr.contains("names no delta of seq 0"), "{stderr}");

    chain.publish(4).await;
    let (ok, stdout, stderr) = chain.compact_publish("compacted");
    assert!(ok, "{stdout}{stderr}");
    let expected = chain.replayed("replayed");

    let (ok, log) = chain.sync(
        "capped",
        &[
            "--snapshot-after-deltas",
            "2",
            "--max-snapshot-bytes",
            "1000",
        ],
        &[],
    );
    assert!(ok, "{log}");
    assert!(log.contains("larger than --max-snapshot-bytes"), "{log}");
    assert!(!log.contains("installed the catch-up snapshot"), "{log}");
    assert_eq!(exported(&chain.state("capped")), expected);

    let targets = chain.dir.path().join("store").join("targets");
    let object = std::fs::read_dir(&targets)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".snapshot.tar"))
        .expect("the snapshot object");
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&object, bytes).unwrap();
    let (ok, log) = chain.sync("damaged", &["--snapshot-after-deltas", "2"], &[]);
    assert!(ok, "{log}");
    assert!(
        log.contains("does not match the sha256 its signed metadata states"),
        "{log}"
    );
    assert!(!log.contains("installed the catch-up snapshot"), "{log}");
    assert!(downloads(&chain.state("damaged")).is_empty());
    assert_eq!(exported(&chain.state("damaged")), expected);
}

/// Polls `check` (every 20 ms, up to a minute) until it holds; panics naming `what`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The ids `/search` answers for `query` on `daemon`.
async fn found(client: &reqwest::Client, daemon: &Daemon, query: &str) -> Vec<String> {
    let (status, body) = post_search(
        client,
        &daemon.url,
        serde_json::json!({"query_text": query, "top_k": 10}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Model rollover on a local fleet of 3 instances following a file store. Items with words
/// the model does not know are published (`publish-delta` reports them) and cannot be found
/// by those words; `compact --refit --publish` rolls the model over; every instance moves to
/// it through the health gate while searches run against all three with none failing, and
/// finds the items by their new words. Later deltas are built for the new model: the old
/// bundle is refused for publishing, the new one works, and every instance applies them. A
/// restarted instance keeps the new model.
// long: one scenario, step by step.
#[tokio::test(flavor = "multi_thread")]
async fn a_model_rollover_reaches_every_instance_with_no_failed_request() {
    let chain = Chain::new(None).await;
    let serve = |i: usize| {
        serve_following(
            &chain.bundle,
            &chain.state(&format!("instance-{i}")),
            &chain.store,
            &chain.trust.root,
            &["--instance-seed", &i.to_string()],
        )
    };
    let mut fleet: Vec<Daemon> = (0..3).map(serve).collect();
    let client = reqwest::Client::new();
    for daemon in &fleet {
        daemon.wait_ready(&client).await;
    }
    let walruses = chain.dir.path().join("walruses.jsonl");
    std::fs::write(
        &walruses,
        [
            put("walrus-1", "quantum walrus migration"),
            put("walrus-2", "a walrus colony, quantum tunnelling"),
        ]
        .iter()
        .map(|c| format!("{c}\n"))
        .collect::<String>(),
    )
    .unwrap();
    let publish = |bundle: &Path| {
        chain.cli(
            &[
                "publish-delta",
                "--store",
                &chain.store,
                "--key",
                chain.trust.key.to_str().unwrap(),
                "--bundle",
                bundle.to_str().unwrap(),
                "--changes",
                walruses.to_str().unwrap(),
            ],
            &[],
        )
    };
    let (ok, stdout, stderr) = publish(&chain.bundle);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("out of vocabulary: 2 of the added or changed items carry"),
        "{stdout}"
    );
    for daemon in &fleet {
        eventually("seq 1 everywhere", || async {
            daemon.status(&client).await["seq"] == 1
        })
        .await;
        assert!(found(&client, daemon, "quantum walrus").await.is_empty());
    }
    let old_model = fleet[0].status(&client).await["model_fingerprint"].clone();

    // Searches against the whole fleet while it rolls over; every answer must be a 200.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let urls: Vec<String> = fleet.iter().map(|d| d.url.clone()).collect();
    let load = tokio::spawn({
        let (stop, client) = (stop.clone(), client.clone());
        async move {
            let (mut answered, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for url in &urls {
                    let response = client
                        .post(format!("{url}/search"))
                        .json(&serde_json::json!({"query_text": "quantum walrus espresso"}))
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status() == 200 => answered += 1,
                        Ok(r) => failed.push(format!("{url}: {}", r.status())),
                        Err(e) => failed.push(format!("{url}: {e}")),
                    }
                }
            }
            (answered, failed)
        }
    });
    let (ok, stdout, stderr) = chain.cli(
        &[
            "compact",
            "--bundle",
            chain.bundle.to_str().unwrap(),
            "--store",
            &chain.store,
            "--trusted-root",
            chain.trust.root.to_str().unwrap(),
            "--out",
            chain.dir.path().join("refit").to_str().unwrap(),
            "--refit",
            "--publish",
            "--key",
            chain.trust.key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("published snapshot 000000000001.snapshot.tar"),
        "{stdout}"
    );
    for daemon in &fleet {
        eventually("every instance finds the walruses", || async {
            found(&client, daemon, "quantum walrus").await.len() == 2
        })
        .await;
        let status = daemon.status(&client).await;
        assert_ne!(status["model_fingerprint"], old_model);
        assert_eq!(status["seq"], 1);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (answered, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "failed requests during the rollover: {failed:?}"
    );
    assert!(answered > 0);

    // Later deltas: built for the new model, from the new bundle only.
    std::fs::write(
        &walruses,
        format!("{}\n", put("walrus-3", "walrus tunnelling colony")),
    )
    .unwrap();
    let (ok, stdout, stderr) = publish(&chain.bundle);
    assert!(!ok, "published against the old model:\n{stdout}");
    assert!(stderr.contains("moved to model"), "{stderr}");
    let (ok, stdout, stderr) = publish(&chain.dir.path().join("refit"));
    assert!(ok, "{stdout}{stderr}");
    assert!(!stdout.contains("out of vocabulary"), "{stdout}");
    for daemon in &fleet {
        eventually("seq 2 everywhere", || async {
            daemon.status(&client).await["seq"] == 2
        })
        .await;
        assert!(
            found(&client, daemon, "walrus tunnelling")
                .await
                .contains(&"walrus-3".to_owned())
        );
    }

    // A restart keeps the rolled-over version (its own model), not a fresh bundle clone.
    let restarted = fleet.remove(0);
    assert!(restarted.terminate().success());
    let again = serve(0);
    again.wait_ready(&client).await;
    assert_eq!(again.status(&client).await["seq"], 2);
    assert_eq!(found(&client, &again, "quantum walrus").await.len(), 3);
}

/// A poll with nothing new reads the timestamp and probes for the next root, nothing more:
/// the snapshot and targets files it already trusts (the targets file grows with the chain)
/// are not read again, and the trusted metadata kept in the state dir is not rewritten. A
/// new delta is still seen and applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_poll_with_nothing_new_reads_only_the_timestamp_on_s3() {
    let server = S3Server::start();
    let mut chain = Chain::new(Some(&server)).await;
    chain.publish(3).await;
    let (ok, log) = chain.sync("polling", &[], &[]);
    assert!(ok, "{log}");
    let before = server.gets();
    let trusted = || {
        let mut files = Vec::new();
        for dir in std::fs::read_dir(chain.state("polling").join("trust")).unwrap() {
            let dir = dir.unwrap().path();
            if dir.is_dir() {
                for file in std::fs::read_dir(&dir).unwrap() {
                    let file = file.unwrap();
                    // The latest time tough saw moves on every load, by design (it is what
                    // refuses a clock set back); everything else must stay as it was.
                    if file.file_name() != "latest_known_time.json" {
                        files.push((file.path(), file.metadata().unwrap().modified().unwrap()));
                    }
                }
            }
        }
        files.sort();
        files
    };
    let kept = trusted();
    let (ok, log) = chain.sync("polling", &[], &[]);
    assert!(ok, "{log}");
    assert!(log.contains("up to date at seq 3"), "{log}");
    assert_eq!(
        trusted(),
        kept,
        "a poll with nothing new rewrote the trusted metadata"
    );
    assert_eq!(
        server.gets() - before,
        2,
        "a poll reads timestamp.json and asks for the next root version only"
    );
    chain.publish(1).await;
    let (ok, log) = chain.sync("polling", &[], &[]);
    assert!(ok, "{log}");
    assert_eq!(
        exported(&chain.state("polling")),
        chain.replayed("replayed")
    );
}
