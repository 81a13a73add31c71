//! `keygen`, `root init`, `repo init`, `publish-delta` and `verify` through the real binary,
//! against a file store and the S3-compatible server.

use std::process::{Command, Output};

use super::s3::S3Server;
use super::support::{binary, build_bundle, sample_items};

struct Publisher {
    dir: tempfile::TempDir,
    bundle: std::path::PathBuf,
    key: std::path::PathBuf,
    root: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Publisher {
    fn new(env: Vec<(&'static str, String)>) -> Publisher {
        let dir = tempfile::tempdir().unwrap();
        let bundle = build_bundle(dir.path(), &sample_items());
        let key = dir.path().join("publisher.key");
        let output = Command::new(binary())
            .args(["keygen", "--out", key.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("key id "));
        let public = format!("{}.pub", key.display());
        let root = dir.path().join("root.json");
        let output = Command::new(binary())
            .args(["root", "init", "--out", root.to_str().unwrap()])
            .args(["--root-key", &public, "--targets-key", &public])
            .args(["--sign-with", key.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("complete"),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Publisher {
            dir,
            bundle,
            key,
            root,
            env,
        }
    }

    /// `repo init` on `store`.
    fn init(&self, store: &str) -> Output {
        Command::new(binary())
            .args(["repo", "init", "--store", store])
            .args(["--root", self.root.to_str().unwrap()])
            .args(["--key", self.key.to_str().unwrap()])
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    }

    fn changes(&self, name: &str, lines: &[serde_json::Value]) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn command(&self, store: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command
            .args([
                "publish-delta",
                "--store",
                store,
                "--key",
                self.key.to_str().unwrap(),
                "--bundle",
                self.bundle.to_str().unwrap(),
            ])
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        command
    }

    fn publish(&self, store: &str, extra: &[&str]) -> Output {
        self.command(store, extra).output().unwrap()
    }

    fn verify(&self, store: &str) -> Output {
        Command::new(binary())
            .args([
                "verify",
                "--store",
                store,
                "--trusted-root",
                self.root.to_str().unwrap(),
            ])
            .args(["--bundle", self.bundle.to_str().unwrap()])
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    }
}

fn put(id: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"op": "put", "item": {"id": id, "text": text, "category": "new"}})
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn publish_dry_run_verify_and_bad_input() {
    let publisher = Publisher::new(Vec::new());
    let store_dir = publisher.dir.path().join("store");
    let store = format!("file://{}", store_dir.display());
    // publish-delta never creates a repository: a mistyped store URL is refused.
    let changes_first = publisher.changes("first.jsonl", &[put("x", "kafka")]);
    let refused = publisher.publish(&store, &["--changes", changes_first.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("repo init"),
        "{}",
        stderr(&refused)
    );
    assert!(!store_dir.exists(), "nothing was written");
    let init = publisher.init(&store);
    assert!(init.status.success(), "{}", stderr(&init));
    assert!(
        !publisher.init(&store).status.success(),
        "never over an existing repository"
    );
    let targets = store_dir.join("targets");
    let changes = publisher.changes(
        "changes.jsonl",
        &[
            put("new-1", "a brand new item about kafka"),
            put("db-1", "an old item, edited"),
            serde_json::json!({"op": "delete", "id": "kit-2"}),
            serde_json::json!({"op": "delete", "id": "never-existed"}),
            put("new-1", "the last put of an id wins"),
        ],
    );
    let dry = publisher.publish(
        &store,
        &["--changes", changes.to_str().unwrap(), "--dry-run"],
    );
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(stdout(&dry).contains("would publish seq 1: 1 adds, 1 updates, 1 deletes, 0 unchanged, 1 unknown deletes dropped"), "{}", stdout(&dry));
    assert!(!targets.exists(), "a dry run publishes nothing");

    let too_long = publisher.publish(
        &store,
        &[
            "--changes",
            changes.to_str().unwrap(),
            "--expires-in",
            "1000d",
        ],
    );
    assert!(!too_long.status.success());
    assert!(
        stderr(&too_long)
            .contains("timestamp metadata expiry 1000d is out of range: give between 1s and 30d"),
        "{}",
        stderr(&too_long)
    );
    assert!(!targets.exists(), "a refused expiry publishes nothing");
    let real = publisher.publish(&store, &["--changes", changes.to_str().unwrap()]);
    assert!(real.status.success(), "{}", stderr(&real));
    assert!(stdout(&real).contains("published seq 1"));
    let verified = publisher.verify(&store);
    assert!(verified.status.success(), "{}", stderr(&verified));
    assert!(
        stdout(&verified).contains("ok seq 1")
            && stdout(&verified).contains("1 deltas verified back to seq 0")
    );

    for (name, line, expected) in [
        ("malformed", "{not json".to_owned(), "line 2"),
        (
            "unknown op",
            r#"{"op": "upsert", "id": "x"}"#.to_owned(),
            "unknown op \"upsert\"",
        ),
        (
            "put without id",
            r#"{"op": "put", "item": {"text": "x"}}"#.to_owned(),
            "missing id field",
        ),
        (
            "put without text",
            r#"{"op": "put", "item": {"id": "x"}}"#.to_owned(),
            "missing text field",
        ),
        (
            "delete without id",
            r#"{"op": "delete"}"#.to_owned(),
            "a delete takes exactly",
        ),
    ] {
        let path = publisher
            .dir
            .path()
            .join(format!("{}.jsonl", name.replace(' ', "-")));
        std::fs::write(&path, format!("{}\n{line}\n", put("ok", "fine"))).unwrap();
        let output = publisher.publish(&store, &["--changes", path.to_str().unwrap()]);
        assert!(!output.status.success(), "{name} was published");
        assert!(
            stderr(&output).contains(expected) && stderr(&output).contains("line 2"),
            "{name}: {}",
            stderr(&output)
        );
    }
    assert!(
        stdout(&publisher.verify(&store)).contains("1 deltas verified"),
        "refused input publishes nothing"
    );

    // A bundle of another model cannot publish onto this chain.
    let other_dir = tempfile::tempdir().unwrap();
    let other_items = vec![serde_json::json!({"id": "z", "text": "zebra crossing"})];
    let other = build_bundle(other_dir.path(), &other_items);
    let output = Command::new(binary())
        .args([
            "publish-delta",
            "--store",
            &store,
            "--key",
            publisher.key.to_str().unwrap(),
            "--bundle",
            other.to_str().unwrap(),
        ])
        .args(["--changes", changes.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("built for model fingerprint"),
        "{}",
        stderr(&output)
    );

    // A key the root does not authorise is refused by id before anything is written.
    let stranger = publisher.dir.path().join("stranger.key");
    Command::new(binary())
        .args(["keygen", "--out", stranger.to_str().unwrap()])
        .output()
        .unwrap();
    let before = std::fs::read_dir(store_dir.join("metadata"))
        .unwrap()
        .count();
    let output = Command::new(binary())
        .args(["publish-delta", "--store", &store])
        .args(["--key", stranger.to_str().unwrap()])
        .args(["--bundle", publisher.bundle.to_str().unwrap()])
        .args(["--changes", changes.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("authorises key")
            && stderr(&output).contains("nothing was written"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read_dir(store_dir.join("metadata"))
            .unwrap()
            .count(),
        before
    );
}

#[test]
fn diff_of_two_snapshots_publishes_puts_and_deletes() {
    let publisher = Publisher::new(Vec::new());
    let store = format!("file://{}", publisher.dir.path().join("store").display());
    assert!(publisher.init(&store).status.success());
    let old = publisher.dir.path().join("old.jsonl");
    let new = publisher.dir.path().join("new.jsonl");
    let items = sample_items();
    super::support::write_jsonl(&old, &items);
    let mut changed = items.clone();
    changed.remove(5);
    changed[0]["text"] = "fast key value database, now with replication".into();
    changed.push(serde_json::json!({"id": "new-9", "category": "kitchen", "text": "pour-over coffee kettle"}));
    super::support::write_jsonl(&new, &changed);
    let output = publisher.publish(
        &store,
        &["--diff", old.to_str().unwrap(), new.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("1 adds, 1 updates, 1 deletes, 4 unchanged"),
        "{}",
        stdout(&output)
    );
}

/// Two publishers race, round after round: every round at least one wins, a loser says so
/// and publishes nothing, and the chain stays linear with no seq lost or repeated.
async fn check_race(store_url: &str, publisher: &Publisher, rounds: usize) {
    let init = publisher.init(store_url);
    assert!(init.status.success(), "{}", stderr(&init));
    let mut wins = 0;
    let mut losses = 0;
    for round in 0..rounds {
        let a = publisher.changes(
            &format!("a-{round}.jsonl"),
            &[put(&format!("a-{round}"), "from publisher a")],
        );
        let b = publisher.changes(
            &format!("b-{round}.jsonl"),
            &[put(&format!("b-{round}"), "from publisher b")],
        );
        let spawn = |changes: &std::path::Path| {
            publisher
                .command(store_url, &["--changes", changes.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (first, second) = (spawn(&a), spawn(&b));
        let outputs = [
            first.wait_with_output().unwrap(),
            second.wait_with_output().unwrap(),
        ];
        let round_wins = outputs.iter().filter(|o| o.status.success()).count();
        assert!(
            round_wins >= 1,
            "round {round}: nobody won: {:?}",
            outputs.iter().map(stderr).collect::<Vec<_>>()
        );
        for output in outputs.iter().filter(|o| !o.status.success()) {
            let message = stderr(output);
            assert!(
                message.contains("another publisher changed"),
                "round {round}: unclear loss: {message}"
            );
            losses += 1;
        }
        wins += round_wins;
    }
    let settings = match &publisher.env.is_empty() {
        true => Default::default(),
        false => deltacache::delta_store::RemoteSettings {
            endpoint_url: publisher
                .env
                .iter()
                .find(|(k, _)| *k == "AWS_ENDPOINT_URL")
                .map(|(_, v)| v.clone()),
            static_credentials: Some((super::s3::ACCESS_KEY.into(), super::s3::SECRET_KEY.into())),
            ..Default::default()
        },
    };
    let report = deltacache::sync::ops::verify_repository(
        store_url,
        &settings,
        &publisher.root,
        Some(&publisher.bundle),
        1 << 20,
    )
    .await
    .unwrap();
    let seqs: Vec<u64> = report.deltas.iter().map(|d| d.seq).collect();
    assert_eq!(
        seqs,
        (1..=wins as u64).collect::<Vec<_>>(),
        "the chain must hold exactly the winners, in order"
    );
    println!("race on {store_url}: {rounds} rounds, {wins} wins, {losses} losses");
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_publishers_keep_a_linear_chain_on_a_file_store() {
    let publisher = Publisher::new(Vec::new());
    let dir = publisher.dir.path().join("store");
    let url = format!("file://{}", dir.display());
    check_race(&url, &publisher, 12).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_publishers_keep_a_linear_chain_on_s3() {
    let server = S3Server::start();
    let publisher = Publisher::new(server.env());
    check_race("s3://deltas/race", &publisher, 12).await;
}
