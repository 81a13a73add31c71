//! `keygen`, `root init`, `repo init`, `publish-delta` and `verify` through the real binary,
//! against a file store and the S3-compatible server.

use std::process::{Command, Output};

use super::lossy_proxy::{Exchange, LossyProxy};
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
            .env("DELTACACHE_TIP_CACHE", self.dir.path().join("tips-default"))
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
    // The expiry for people: RFC 3339 and how far ahead it is (--expires-in 7d, in whole
    // seconds: 7d within the second of the publish).
    assert!(
        stdout(&verified).contains("Z (in 6d 23h); ") || stdout(&verified).contains("Z (in 7d); "),
        "{}",
        stdout(&verified)
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
    // The model mismatch names the bundle given and the model the store's chain expects,
    // and says which flag fixes it; no instance or state is involved.
    let refused = stderr(&output);
    assert!(
        refused.contains("the delta store's chain is of model")
            && refused.contains(&format!("but bundle {} has model", other.display()))
            && refused.contains("pass --bundle with the bundle the chain started from")
            && !refused.contains("this instance")
            && !refused.contains("state"),
        "{refused}"
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

/// Ctrl-C in the middle of a publish (the delta uploaded, the timestamp not yet moved) says
/// what was and was not published and what to do; doing it publishes the same seq.
#[test]
fn publish_delta_interrupted_by_ctrl_c_says_what_was_published() {
    use std::io::BufRead;
    let publisher = Publisher::new(Vec::new());
    let store = format!("file://{}", publisher.dir.path().join("store").display());
    assert!(publisher.init(&store).status.success());
    let changes = publisher.changes("one.jsonl", &[put("x", "kafka")]);
    let mut child = publisher
        .command(&store, &["--changes", changes.to_str().unwrap()])
        .env("DELTACACHE_FAILPOINT", "publish-after-targets")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut errors = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = errors
            .next()
            .unwrap_or_else(|| panic!("exited before the failpoint: {seen:?}"))
            .unwrap();
        if line.contains("failpoint publish-after-targets: paused") {
            break;
        }
        seen.push(line);
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let rest: Vec<String> = errors.map_while(Result::ok).collect();
    let rest = rest.join("\n");
    assert!(!status.success(), "{rest}");
    assert!(
        rest.contains("interrupted: delta seq 1 uploaded (targets/")
            && rest.contains("but not yet in the timestamp")
            && rest.contains("rerun the same command to finish"),
        "{rest}"
    );
    // Not published: verify finds no delta; the same command then publishes seq 1.
    let verified = publisher.verify(&store);
    assert!(
        stdout(&verified).contains("0 deltas verified"),
        "{}{}",
        stdout(&verified),
        stderr(&verified)
    );
    let output = publisher.publish(&store, &["--changes", changes.to_str().unwrap()]);
    assert!(
        stdout(&output).contains("published seq 1"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn change_detection_compares_json_values_and_nothing_to_publish_is_not_an_error() {
    let publisher = Publisher::new(Vec::new());
    let store_dir = publisher.dir.path().join("store");
    let store = format!("file://{}", store_dir.display());
    assert!(publisher.init(&store).status.success());
    let old = publisher.dir.path().join("old.jsonl");
    let items = sample_items();
    super::support::write_jsonl(&old, &items);
    // The same catalogue written by another tool: other separators, key order, escapes and
    // float spellings.
    let new = publisher.dir.path().join("new.jsonl");
    let mut text = String::new();
    for item in &items {
        let object = item.as_object().unwrap();
        let members: Vec<String> = object
            .iter()
            .rev()
            .map(|(k, v)| match v {
                serde_json::Value::Number(n) if n.is_f64() => format!("\"{k}\" : {}0e0", n),
                serde_json::Value::String(s) => {
                    format!("\"{k}\" : \"{}\"", s.replace('é', "\\u00e9"))
                }
                _ => format!("\"{k}\" : {v}"),
            })
            .collect();
        text.push_str(&format!("{{ {} }}\n", members.join(" , ")));
    }
    std::fs::write(&new, text).unwrap();
    let targets = store_dir.join("targets");
    // Puts of existing ids read the bundle's items (from a clone): the bundle stays as it was.
    let bundle_before = super::support::file_digests(&publisher.bundle);
    let args = ["--diff", old.to_str().unwrap(), new.to_str().unwrap()];
    for dry_run in [true, false] {
        let mut with = args.to_vec();
        if dry_run {
            with.push("--dry-run");
        }
        let output = publisher.publish(&store, &with);
        assert!(
            output.status.success(),
            "dry run {dry_run}: {}",
            stderr(&output)
        );
        assert!(
            stdout(&output).starts_with("nothing to publish")
                && stdout(&output).contains("0 adds, 0 updates, 0 deletes, 6 unchanged"),
            "dry run {dry_run}: {}",
            stdout(&output)
        );
        assert!(!targets.exists(), "nothing was published");
    }
    // A changes file: a put of the JSON an item already has (the bundle's, re-serialised) is
    // unchanged and dropped; so is one equal to a put an earlier delta made.
    let first = publisher.changes("first.jsonl", &[put("new-1", "kafka streams")]);
    assert!(
        publisher
            .publish(&store, &["--changes", first.to_str().unwrap()])
            .status
            .success()
    );
    let mut kit = items[4].clone();
    kit["text"] = "espresso machine with caf\u{e9} crema".into();
    let changes = publisher.changes(
        "same.jsonl",
        &[
            serde_json::json!({"op": "put", "item": kit}),
            put("new-1", "kafka streams"),
            put("db-1", "an edit that changes something"),
        ],
    );
    let output = publisher.publish(
        &store,
        &["--changes", changes.to_str().unwrap(), "--dry-run"],
    );
    assert!(
        stdout(&output).contains("would publish seq 2: 0 adds, 1 updates, 0 deletes, 2 unchanged"),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let same = publisher.changes("only-same.jsonl", &[put("new-1", "kafka streams")]);
    let output = publisher.publish(&store, &["--changes", same.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("nothing to publish")
            && stdout(&output).contains("seq 1 stays the head"),
        "{}",
        stdout(&output)
    );
    assert_eq!(
        super::support::file_digests(&publisher.bundle),
        bundle_before,
        "publishing changed the bundle"
    );
}

#[test]
fn publish_errors_name_the_real_cause_and_fix() {
    use std::os::unix::fs::PermissionsExt;
    let publisher = Publisher::new(Vec::new());
    let store = format!("file://{}", publisher.dir.path().join("store").display());
    assert!(publisher.init(&store).status.success());
    let changes = publisher.changes("one.jsonl", &[put("new-1", "kafka")]);
    let with_key = |key: &std::path::Path| {
        Command::new(binary())
            .args(["publish-delta", "--store", &store])
            .args(["--key", key.to_str().unwrap()])
            .args(["--bundle", publisher.bundle.to_str().unwrap()])
            .args(["--changes", changes.to_str().unwrap(), "--dry-run"])
            .output()
            .unwrap()
    };
    // Public keys (as keygen, openssl and earlier releases write them) and the root, given as
    // --key while readable by others: what they are comes first, not `chmod 600`.
    let dir = publisher.dir.path();
    let der_public = dir.join("openssl.pub.der");
    std::fs::write(
        &der_public,
        [
            &[
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ][..],
            &ed25519_dalek::SigningKey::from_bytes(&[7; 32])
                .verifying_key()
                .to_bytes()[..],
        ]
        .concat(),
    )
    .unwrap();
    let old_public = dir.join("old.key.pub");
    std::fs::write(
        &old_public,
        format!("deltacache-ed25519 {} abcd\n", "ab".repeat(32)),
    )
    .unwrap();
    for (path, what) in [
        (
            std::path::PathBuf::from(format!("{}.pub", publisher.key.display())),
            "is a public key",
        ),
        (der_public, "is a public key (DER)"),
        (
            old_public,
            "is a public key of an earlier deltacache release",
        ),
        (publisher.root.clone(), "is TUF metadata"),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = stderr(&with_key(&path));
        assert!(
            refused.contains(what)
                && refused.contains("not a secret key")
                && !refused.contains("chmod"),
            "{}: {refused}",
            path.display()
        );
    }
    // A put without the bundle's text field: add the field, not a flag publish-delta lacks.
    let no_text = publisher.changes(
        "no-text.jsonl",
        &[serde_json::json!({"op": "put", "item": {"id": "x", "category": "new"}})],
    );
    let refused = stderr(&publisher.publish(&store, &["--changes", no_text.to_str().unwrap()]));
    assert!(
        refused.contains("missing text field \"text\"")
            && refused.contains("add \"text\" to the item")
            && !refused.contains("--text-field"),
        "{refused}"
    );
    // Deleting an id an earlier delta deleted says so (and is nothing to publish).
    let delete = publisher.changes(
        "delete.jsonl",
        &[serde_json::json!({"op": "delete", "id": "kit-2"})],
    );
    let first = publisher.publish(&store, &["--changes", delete.to_str().unwrap()]);
    assert!(
        stdout(&first).contains("published seq 1"),
        "{}",
        stderr(&first)
    );
    let again = publisher.publish(&store, &["--changes", delete.to_str().unwrap()]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("seq 1 already deleted")
            && !stderr(&again).contains("neither")
            && stdout(&again).contains("nothing to publish"),
        "{}{}",
        stdout(&again),
        stderr(&again)
    );
    // A bundle of another dataset: the flag that fixes it.
    let other_dir = tempfile::tempdir().unwrap();
    let input = other_dir.path().join("items.jsonl");
    super::support::write_jsonl(&input, &sample_items());
    let other = other_dir.path().join("bundle");
    let built = super::support::run(&[
        "build-base",
        "--input",
        input.to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(built.status.success(), "{}", stderr(&built));
    let refused = Command::new(binary())
        .args(["publish-delta", "--store", &store])
        .args(["--key", publisher.key.to_str().unwrap()])
        .args(["--bundle", other.to_str().unwrap()])
        .args(["--changes", changes.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        stderr(&refused).contains("the delta store's chain is of dataset \"sample\"")
            && stderr(&refused).contains("has dataset \"items\"")
            && stderr(&refused).contains("`build-base --dataset sample`"),
        "{}",
        stderr(&refused)
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

/// Every object name in the store.
async fn object_names(store: &deltacache::delta_store::DeltaStore) -> Vec<String> {
    let mut names = store.list("metadata/").await.unwrap();
    names.extend(store.list("targets/").await.unwrap());
    names
}

/// A publisher that reaches the S3 server through a proxy that loses answers, and a
/// repository it created through it.
struct LossyWorld {
    server: S3Server,
    proxy: LossyProxy,
    publisher: Publisher,
    url: String,
    /// The same store, reached directly.
    store: deltacache::delta_store::DeltaStore,
}

impl LossyWorld {
    async fn new(prefix: &str) -> LossyWorld {
        let server = S3Server::start();
        let proxy = LossyProxy::start(&server.endpoint);
        let publisher = Publisher::new(proxy.env(&server));
        let url = format!("s3://deltas/{prefix}");
        let init = publisher.init(&url);
        assert!(init.status.success(), "{}", stderr(&init));
        let store = server.store(prefix).await;
        LossyWorld {
            server,
            proxy,
            publisher,
            url,
            store,
        }
    }

    /// Publishes seq `seq` with the answer to the conditional PUT of `lost` swallowed and
    /// `extra` flags, and checks what the publisher must do: succeed and report the seq,
    /// having read the object back to find its own bytes there (after `answers_then`: the
    /// requests of that object and their statuses after the lost one); delete nothing.
    async fn publish_losing_the_answer_to(
        &self,
        lost: &str,
        seq: u64,
        extra: &[&str],
        answers_then: &[(&str, u16)],
    ) -> Output {
        let before = object_names(&self.store).await;
        let n_exchanges = self.proxy.exchanges().len();
        let n_lost = self.proxy.lost().len();
        self.proxy.lose_next_answer_to(lost);
        let changes = self.publisher.changes(
            &format!("lost-{seq}.jsonl"),
            &[put(
                &format!("lost-{seq}"),
                "published while an answer was lost",
            )],
        );
        let output = self
            .publisher
            .command(&self.url, &["--changes", changes.to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        let lost_now = self.proxy.lost();
        assert_eq!(lost_now.len(), n_lost + 1, "the proxy lost no answer");
        let dropped = lost_now.last().unwrap();
        assert!(
            dropped.path.ends_with(lost) && dropped.method == "PUT" && dropped.conditional,
            "{dropped:?}"
        );
        assert_eq!(dropped.status, Some(200), "the lost write landed");
        assert!(
            output.status.success(),
            "a lost answer failed the publish: {}",
            stderr(&output)
        );
        assert!(
            stdout(&output).contains(&format!("published seq {seq} ")),
            "{}",
            stdout(&output)
        );
        let after: Vec<Exchange> = self.proxy.exchanges()[n_exchanges..]
            .iter()
            .filter(|e| e.path.ends_with(lost))
            .skip_while(|e| e.method != "PUT")
            .cloned()
            .collect();
        let answers: Vec<(&str, u16)> = after
            .iter()
            .map(|e| (e.method.as_str(), e.status.unwrap_or(0)))
            .collect();
        assert_eq!(answers[0], ("PUT", 200), "{after:?}");
        assert_eq!(answers[1..], *answers_then, "{after:?}");
        assert!(
            self.proxy.exchanges().iter().all(|e| e.method != "DELETE"),
            "a publish never deletes"
        );
        let now = object_names(&self.store).await;
        for name in &before {
            assert!(now.contains(name), "{name} disappeared");
        }
        output
    }

    /// After `n_deltas` publishes: exactly the metadata versions they wrote (no orphan from
    /// a retry at the next version), no target that metadata does not name, `verify`
    /// passes, and an instance syncs to the last seq.
    async fn check_repository(self, n_deltas: u64) {
        let mut expected: Vec<String> = vec!["metadata/1.root.json".into()];
        for version in 1..=n_deltas + 1 {
            expected.push(format!("metadata/{version}.snapshot.json"));
            expected.push(format!("metadata/{version}.targets.json"));
        }
        expected.push("metadata/timestamp.json".into());
        expected.sort();
        assert_eq!(self.store.list("metadata/").await.unwrap(), expected);
        let direct = self.server.env();
        let gc = Command::new(binary())
            .args(["repo", "gc", "--store", &self.url, "--dry-run"])
            .envs(direct.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(
            stdout(&gc).contains("0 unnamed targets"),
            "{}{}",
            stdout(&gc),
            stderr(&gc)
        );
        let publisher = Publisher {
            env: direct.clone(),
            ..self.publisher
        };
        let verified = publisher.verify(&self.url);
        assert!(
            verified.status.success()
                && stdout(&verified).contains(&format!("{n_deltas} deltas verified back to seq 0")),
            "{}{}",
            stdout(&verified),
            stderr(&verified)
        );
        let state = publisher.dir.path().join("state");
        let synced =
            super::support::sync_command(&publisher.bundle, &state, &self.url, &publisher.root)
                .envs(direct.iter().map(|(k, v)| (*k, v.as_str())))
                .stdout(std::process::Stdio::piped())
                .output()
                .unwrap();
        assert!(
            synced.status.success() && stdout(&synced).contains(&format!("now at seq {n_deltas}")),
            "{}{}",
            stdout(&synced),
            stderr(&synced)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_to_a_conditional_put_on_s3_is_resolved_by_reading() {
    let world = LossyWorld::new("lossy").await;
    // The compare-and-swap of timestamp.json: the SDK retries, and the retry's If-Match
    // names the tag the timestamp had before the lost write, so it meets 412; the publisher
    // reads timestamp.json and finds its own bytes.
    let retried = [("PUT", 412), ("GET", 200)];
    let output = world
        .publish_losing_the_answer_to("metadata/timestamp.json", 1, &[], &retried)
        .await;
    assert!(
        stderr(&output).contains("an earlier answer was lost"),
        "{}",
        stderr(&output)
    );
    // The create-only write of the next targets version (init wrote 1, seq 1 wrote 2): the
    // retry's If-None-Match meets 412 the same way.
    world
        .publish_losing_the_answer_to("metadata/3.targets.json", 2, &[], &retried)
        .await;
    assert_eq!(world.proxy.lost().len(), 2);
    world.check_repository(2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_with_no_retry_left_is_resolved_by_reading_too() {
    // With one attempt per operation (or once the SDK's retries or its retry budget run
    // out), the lost answer surfaces as a transport error: the write may have landed, so
    // the publisher reads the object, as after a conflict, before it reports anything.
    let world = LossyWorld::new("lossy-once").await;
    let once = ["--remote-attempts", "1"];
    let read_back = [("GET", 200)];
    world
        .publish_losing_the_answer_to("metadata/timestamp.json", 1, &once, &read_back)
        .await;
    world
        .publish_losing_the_answer_to("metadata/3.targets.json", 2, &once, &read_back)
        .await;
    world.check_repository(2).await;
}

/// An operator's set-up made with the binary: three offline root keys (threshold 2), a
/// targets key and an online key (snapshot and timestamp), root 1 signed by two root keys,
/// and a repository in a file store.
struct Ceremony {
    dir: tempfile::TempDir,
    bundle: std::path::PathBuf,
    root_keys: Vec<std::path::PathBuf>,
    targets_key: std::path::PathBuf,
    online_key: std::path::PathBuf,
    root_v1: std::path::PathBuf,
    store: String,
}

/// Runs the binary; asserts success and returns stdout.
fn run_ok(args: &[&str]) -> String {
    let output = Command::new(binary()).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "deltacache {}: {}{}",
        args.join(" "),
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Runs the binary; asserts failure and returns stderr.
fn run_refused(args: &[&str]) -> String {
    let output = Command::new(binary()).args(args).output().unwrap();
    assert!(
        !output.status.success(),
        "deltacache {} succeeded: {}",
        args.join(" "),
        stdout(&output)
    );
    stderr(&output)
}

fn p(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}

impl Ceremony {
    fn new() -> Ceremony {
        let dir = tempfile::tempdir().unwrap();
        let bundle = build_bundle(dir.path(), &sample_items());
        let keygen = |name: &str| {
            let key = dir.path().join(format!("{name}.key"));
            run_ok(&["keygen", "--out", p(&key)]);
            key
        };
        let root_keys: Vec<_> = (1..=3).map(|n| keygen(&format!("root-{n}"))).collect();
        let (targets_key, online_key) = (keygen("targets"), keygen("online"));
        let root_v1 = dir.path().join("root-1.json");
        let pubs: Vec<String> = root_keys.iter().map(|k| format!("{}.pub", p(k))).collect();
        let (targets_pub, online_pub) = (
            format!("{}.pub", p(&targets_key)),
            format!("{}.pub", p(&online_key)),
        );
        let mut args = vec!["root", "init", "--out", p(&root_v1)];
        for public in &pubs {
            args.extend(["--root-key", public.as_str()]);
        }
        args.extend(["--targets-key", &targets_pub, "--online-key", &online_pub]);
        args.extend([
            "--sign-with",
            p(&root_keys[0]),
            "--sign-with",
            p(&root_keys[1]),
        ]);
        let made = run_ok(&args);
        assert!(
            made.contains("2 of 2 signatures by its own root keys: complete"),
            "{made}"
        );
        let store = format!("file://{}", dir.path().join("store").display());
        run_ok(&[
            "repo",
            "init",
            "--store",
            &store,
            "--root",
            p(&root_v1),
            "--key",
            p(&targets_key),
            "--key",
            p(&online_key),
        ]);
        Ceremony {
            dir,
            bundle,
            root_keys,
            targets_key,
            online_key,
            root_v1,
            store,
        }
    }

    fn store_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }

    /// `publish-delta` of one put, signed with `keys`, with `extra` flags.
    fn publish(&self, n: u64, keys: &[&std::path::Path], extra: &[&str]) -> Output {
        let changes = self.dir.path().join(format!("changes-{n}.jsonl"));
        std::fs::write(
            &changes,
            format!("{}\n", put(&format!("op-{n}"), "an operator's change")),
        )
        .unwrap();
        let mut command = Command::new(binary());
        command.args([
            "publish-delta",
            "--store",
            &self.store,
            "--bundle",
            p(&self.bundle),
        ]);
        for key in keys {
            command.args(["--key", p(key)]);
        }
        command.args(["--changes", p(&changes)]).args(extra);
        command.output().unwrap()
    }

    /// `sync` of the state dir `state` with root 1 baked; returns stdout.
    fn sync(&self, state: &str) -> String {
        let output = super::support::sync_command(
            &self.bundle,
            &self.dir.path().join(state),
            &self.store,
            &self.root_v1,
        )
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
        assert!(output.status.success(), "sync: {}", stderr(&output));
        stdout(&output)
    }

    /// The current timestamp.json: version, expiry (seconds) and the snapshot version it names.
    fn timestamp(&self) -> (u64, i64, u64) {
        let bytes = std::fs::read(self.store_dir().join("metadata/timestamp.json")).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let expires: jiff::Timestamp = json["signed"]["expires"].as_str().unwrap().parse().unwrap();
        (
            json["signed"]["version"].as_u64().unwrap(),
            expires.as_second(),
            json["signed"]["meta"]["snapshot.json"]["version"]
                .as_u64()
                .unwrap(),
        )
    }
}

#[test]
fn a_root_rotation_through_the_binary_reaches_an_instance_that_baked_root_1() {
    let ceremony = Ceremony::new();
    let (targets, online) = (
        ceremony.targets_key.as_path(),
        ceremony.online_key.as_path(),
    );
    let first = ceremony.publish(1, &[targets, online], &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(ceremony.sync("state").contains("now at seq 1"));

    // Root 2 replaces the targets key. One root key holder signs it first: half signed,
    // `root publish` refuses it and writes nothing.
    let new_targets = ceremony.dir.path().join("targets-2.key");
    run_ok(&["keygen", "--out", p(&new_targets)]);
    let root_v2 = ceremony.dir.path().join("root-2.json");
    let rotated = run_ok(&[
        "root",
        "rotate",
        "--previous",
        p(&ceremony.root_v1),
        "--out",
        p(&root_v2),
        "--add-key",
        &format!("targets={}.pub", p(&new_targets)),
        "--remove-key",
        &format!("targets={}.pub", p(targets)),
        "--sign-with",
        p(&ceremony.root_keys[0]),
    ]);
    assert!(
        rotated.contains("1 of 2 signatures by its own root keys, 1 of 2 by version 1's root keys: more key holders must sign it"),
        "{rotated}"
    );
    let refused = run_refused(&[
        "root",
        "publish",
        "--store",
        &ceremony.store,
        "--root",
        p(&root_v2),
    ]);
    assert!(
        refused.contains("root 2 is not signed by 2 of root 1's root keys"),
        "{refused}"
    );
    assert!(!ceremony.store_dir().join("metadata/2.root.json").exists());

    // A second holder signs: 2 of 3 suffices.
    let signed = run_ok(&[
        "root",
        "sign",
        "--root",
        p(&root_v2),
        "--previous",
        p(&ceremony.root_v1),
        "--key",
        p(&ceremony.root_keys[2]),
    ]);
    assert!(
        signed.contains("2 of 2 by version 1's root keys: complete"),
        "{signed}"
    );
    let published = run_ok(&[
        "root",
        "publish",
        "--store",
        &ceremony.store,
        "--root",
        p(&root_v2),
        "--trusted-root",
        p(&ceremony.root_v1),
    ]);
    assert!(
        published.contains("published root version 2"),
        "{published}"
    );

    // The old targets key is refused before anything is written; the new one publishes.
    let metadata_before = std::fs::read_dir(ceremony.store_dir().join("metadata"))
        .unwrap()
        .count();
    let old_key = ceremony.publish(2, &[targets, online], &[]);
    assert!(!old_key.status.success());
    assert!(
        stderr(&old_key).contains("root version 2")
            && stderr(&old_key).contains("nothing was written"),
        "{}",
        stderr(&old_key)
    );
    assert_eq!(
        std::fs::read_dir(ceremony.store_dir().join("metadata"))
            .unwrap()
            .count(),
        metadata_before
    );
    let second = ceremony.publish(2, &[&new_targets, online], &[]);
    assert!(second.status.success(), "{}", stderr(&second));

    // The instance that synced under root 1 follows to root 2 with root 1 still baked; so
    // does a new instance from the same image.
    let synced = ceremony.sync("state");
    assert!(
        synced.contains("applied 1 deltas") && synced.contains("now at seq 2"),
        "{synced}"
    );
    let fresh = ceremony.sync("fresh-state");
    assert!(
        fresh.contains("applied 2 deltas") && fresh.contains("now at seq 2"),
        "{fresh}"
    );
    let verified = run_ok(&[
        "verify",
        "--store",
        &ceremony.store,
        "--trusted-root",
        p(&ceremony.root_v1),
        "--bundle",
        p(&ceremony.bundle),
    ]);
    assert!(verified.contains("root version 2"), "{verified}");
}

#[test]
fn repo_refresh_renews_an_expiring_timestamp_with_the_online_key_alone() {
    let ceremony = Ceremony::new();
    let (targets, online) = (
        ceremony.targets_key.as_path(),
        ceremony.online_key.as_path(),
    );
    let first = ceremony.publish(1, &[targets, online], &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(ceremony.sync("state").contains("now at seq 1"));

    // Seq 2 goes out with a timestamp that expires in 5 s.
    let before = jiff::Timestamp::now().as_second();
    let second = ceremony.publish(2, &[targets, online], &["--expires-in", "5s"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let after = jiff::Timestamp::now().as_second();
    let (version, expires, snapshot) = ceremony.timestamp();
    assert!(
        (before + 5..=after + 5).contains(&expires),
        "the timestamp expires 5 s after the publish, not at {expires} ({before}..{after})"
    );

    // The targets key alone cannot refresh: the online key signs timestamps.
    let bytes_before = std::fs::read(ceremony.store_dir().join("metadata/timestamp.json")).unwrap();
    let refused = run_refused(&[
        "repo",
        "refresh",
        "--store",
        &ceremony.store,
        "--key",
        p(targets),
    ]);
    assert!(
        refused.contains("timestamp role") && refused.contains("nothing was written"),
        "{refused}"
    );
    assert_eq!(
        std::fs::read(ceremony.store_dir().join("metadata/timestamp.json")).unwrap(),
        bytes_before
    );

    let refreshed = run_ok(&[
        "repo",
        "refresh",
        "--store",
        &ceremony.store,
        "--key",
        p(online),
    ]);
    assert!(
        refreshed.contains(&format!(
            "timestamp version {}, snapshot version {snapshot}",
            version + 1
        )),
        "{refreshed}"
    );
    let now = jiff::Timestamp::now().as_second();
    let (new_version, new_expires, new_snapshot) = ceremony.timestamp();
    assert_eq!((new_version, new_snapshot), (version + 1, snapshot));
    assert!(
        new_expires >= now + 7 * 24 * 3600 - 60,
        "the refreshed timestamp expires in 7 days (default), not at {new_expires}"
    );
    // The instance syncs under the renewed timestamp, which outlives the 5 s one by days (the
    // test does not wait for the old one to expire: the expiries above show the renewal).
    let synced = ceremony.sync("state");
    assert!(synced.contains("now at seq 2"), "{synced}");

    // With --snapshot a new snapshot names the same targets; instances are up to date.
    let refreshed = run_ok(&[
        "repo",
        "refresh",
        "--store",
        &ceremony.store,
        "--key",
        p(online),
        "--snapshot",
        "--expires-in",
        "1d",
    ]);
    assert!(
        refreshed.contains(&format!(
            "timestamp version {}, snapshot version {}",
            version + 2,
            snapshot + 1
        )),
        "{refreshed}"
    );
    assert!(ceremony.sync("state").contains("up to date at seq 2"));
}

/// An operator's scheduled `repo refresh` (timestamp only, or with a new snapshot) racing
/// `publish-delta`, round after round: at least one wins each round, a loser says so and
/// leaves nothing named, and the chain holds exactly the publishes that won.
#[test]
fn repo_refresh_racing_publish_delta_never_breaks_the_repository() {
    let ceremony = Ceremony::new();
    let (targets, online) = (
        ceremony.targets_key.as_path(),
        ceremony.online_key.as_path(),
    );
    let mut n_published = 0u64;
    let mut n_lost = 0;
    for round in 0..8u64 {
        let changes = ceremony.dir.path().join(format!("race-{round}.jsonl"));
        std::fs::write(
            &changes,
            format!("{}\n", put(&format!("race-{round}"), "racing a refresh")),
        )
        .unwrap();
        let publish = Command::new(binary())
            .args([
                "publish-delta",
                "--store",
                &ceremony.store,
                "--bundle",
                p(&ceremony.bundle),
            ])
            .args([
                "--key",
                p(targets),
                "--key",
                p(online),
                "--changes",
                p(&changes),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut refresh = Command::new(binary());
        refresh.args([
            "repo",
            "refresh",
            "--store",
            &ceremony.store,
            "--key",
            p(online),
        ]);
        if round % 2 == 1 {
            refresh.arg("--snapshot");
        }
        let refresh = refresh
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (published, refreshed) = (
            publish.wait_with_output().unwrap(),
            refresh.wait_with_output().unwrap(),
        );
        assert!(
            published.status.success() || refreshed.status.success(),
            "round {round}: neither won: {} / {}",
            stderr(&published),
            stderr(&refreshed)
        );
        for loser in [&published, &refreshed]
            .into_iter()
            .filter(|o| !o.status.success())
        {
            assert!(
                stderr(loser).contains("another publisher changed"),
                "round {round}: unclear loss: {}",
                stderr(loser)
            );
            n_lost += 1;
        }
        if published.status.success() {
            n_published += 1;
            assert!(stdout(&published).contains(&format!("published seq {n_published} ")));
        }
    }
    let verified = run_ok(&[
        "verify",
        "--store",
        &ceremony.store,
        "--trusted-root",
        p(&ceremony.root_v1),
        "--bundle",
        p(&ceremony.bundle),
    ]);
    assert!(
        verified.contains(&format!("{n_published} deltas verified back to seq 0")),
        "{verified}"
    );
    if n_published > 0 {
        assert!(
            ceremony
                .sync("state")
                .contains(&format!("now at seq {n_published}"))
        );
    }
    println!("refresh racing publish: 8 rounds, {n_published} publishes won, {n_lost} losses");
}

/// The publisher's tip cache: a publish reads only the deltas published since the cached
/// tip, and still counts right when another publisher moved the chain on, when the cache
/// file is damaged, and when the store was recreated at the same URL with another chain.
#[test]
fn the_tip_cache_reads_only_newer_deltas_and_never_miscounts() {
    let publisher = Publisher::new(Vec::new());
    let store_dir = publisher.dir.path().join("store");
    let store = format!("file://{}", store_dir.display());
    assert!(publisher.init(&store).status.success());
    let tips = publisher.dir.path().join("tips");
    let other_tips = publisher.dir.path().join("other-tips");
    let publish = |cache: &std::path::Path, name: &str, lines: &[serde_json::Value]| {
        let changes = publisher.changes(name, lines);
        let output = publisher.publish(
            &store,
            &[
                "--changes",
                changes.to_str().unwrap(),
                "--tip-cache",
                cache.to_str().unwrap(),
            ],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        (stdout(&output), stderr(&output))
    };
    let (out, _) = publish(&tips, "1.jsonl", &[put("a", "kafka")]);
    assert!(
        out.contains("tip: 0 deltas read from the bundle on"),
        "{out}"
    );
    let (out, _) = publish(&tips, "2.jsonl", &[put("b", "kafka")]);
    assert!(
        out.contains("1 adds, 0 updates") && out.contains("from the tip cache at seq 1, 0 newer"),
        "{out}"
    );
    // The same item written another way is unchanged: told from the digest the cache kept
    // of seq 2's put, with no delta read.
    let reordered =
        serde_json::json!({"op": "put", "item": {"category": "new", "text": "kafka", "id": "b"}});
    let (out, _) = publish(&tips, "2b.jsonl", &[reordered]);
    assert!(
        out.contains("nothing to publish")
            && out.contains("0 adds, 0 updates, 0 deletes, 1 unchanged"),
        "{out}"
    );
    // Another publisher (another cache) adds z; this one then puts z: an update, read from
    // the one delta it had not seen.
    let (out, _) = publish(&other_tips, "3.jsonl", &[put("z", "kafka")]);
    assert!(out.contains("2 deltas read from the bundle on"), "{out}");
    let (out, _) = publish(&tips, "4.jsonl", &[put("z", "redis")]);
    assert!(
        out.contains("0 adds, 1 updates") && out.contains("from the tip cache at seq 2, 1 newer"),
        "{out}"
    );
    // A damaged cache file is named, ignored, and rewritten.
    let file = std::fs::read_dir(&tips)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();
    let (out, err) = publish(
        &tips,
        "5.jsonl",
        &[
            put("a", "storage"),
            serde_json::json!({"op": "delete", "id": "b"}),
        ],
    );
    assert!(
        err.contains(&file.display().to_string())
            && err.contains("ignoring the publisher's tip cache"),
        "{err}"
    );
    assert!(
        out.contains("0 adds, 1 updates, 1 deletes")
            && out.contains("4 deltas read from the bundle on"),
        "{out}"
    );
    // Deleting b again: the cache knows which seq deleted it.
    let (out, err) = publish(
        &tips,
        "5b.jsonl",
        &[serde_json::json!({"op": "delete", "id": "b"})],
    );
    assert!(out.contains("nothing to publish"), "{out}");
    assert!(err.contains("seq 5 already deleted"), "{err}");
    let (out, _) = publish(&tips, "6.jsonl", &[put("b", "kafka")]);
    assert!(
        out.contains("1 adds, 0 updates") && out.contains("from the tip cache at seq 5, 0 newer"),
        "{out}"
    );
    // The store recreated at the same URL: the cached seq 6 is not in its chain.
    std::fs::remove_dir_all(&store_dir).unwrap();
    assert!(publisher.init(&store).status.success());
    for (i, id) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
        publish(
            &other_tips,
            &format!("new-{i}.jsonl"),
            &[put(&format!("other-{id}"), "kafka")],
        );
    }
    let (out, _) = publish(&tips, "7.jsonl", &[put("z", "kafka"), put("a", "kafka")]);
    assert!(
        out.contains("2 adds, 0 updates") && out.contains("6 deltas read from the bundle on"),
        "{out}"
    );
}
