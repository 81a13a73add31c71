//! Interop with python-tuf 7.0.1, an independent implementation of TUF: its ngclient refreshes
//! and downloads from a repository the binary wrote (`repo init`, `publish-delta`, a root
//! rotation), and the binary syncs from, and publishes onto, a repository python-tuf's
//! `tuf.api.metadata` wrote. The scripts are in `tests/python-tuf/`.
//!
//! The harness installs python-tuf itself the first time: a venv under the target dir
//! (`target/python-tuf`, `python3 -m venv` + `pip install tuf==7.0.1`), reused after.
//!
//! Gotchas between the two implementations, each held by a test below:
//! - spec_version: python-tuf writes `1.0.31`; tough reads it, but tough's editor refuses to
//!   re-sign any targets whose spec_version is not `1.0.0`, so the publisher rewrites it
//!   (`tuf::repo`) before publishing onto a python-written repository.
//! - Expiries: python-tuf parses only `%Y-%m-%dT%H:%M:%SZ` (whole seconds, `Z`); tough
//!   writes nanoseconds when given them, which python-tuf refuses ("Failed to deserialize
//!   JSON"). Every expiry the binary writes is checked to be whole seconds.
//! - Key ids: tough refuses a root whose key ids are not sha256 of the canonical key JSON;
//!   python-tuf accepts any. securesystemslib's `CryptoSigner` uses the standard id, which
//!   the test checks equals the id deltacache computes for the same key.
//! - Target paths: for names with `/`, tough and python-tuf put the hash prefix in
//!   different places; delta names are flat (`000000000042.delta`), so both fetch
//!   `targets/<sha256>.<name>`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use deltacache::bundle::Bundle;
use deltacache::delta::chain::{ChainPosition, DeltaMeta, delta_target_name};
use deltacache::delta::format::{DeltaBatch, DeltaHeader, DeltaRecord};

use super::support::{binary, build_bundle, sample_items, sync_command};

/// The python-tuf release the tests pin.
const PYTHON_TUF: &str = "7.0.1";

/// The venv's python with python-tuf installed: made once per target dir (under a file
/// lock, so test binaries running at once do not install twice) and reused after.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(install_python_tuf)
}

fn has_python_tuf(python: &Path) -> bool {
    Command::new(python)
        .args([
            "-c",
            &format!("import tuf, cryptography, sys; sys.exit(tuf.__version__ != {PYTHON_TUF:?})"),
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn install_python_tuf() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .to_path_buf();
    let venv = target.join("python-tuf");
    let python = venv.join("bin").join("python");
    let lock = std::fs::File::create(target.join("python-tuf.lock")).unwrap();
    lock.lock().unwrap();
    if has_python_tuf(&python) {
        return python;
    }
    let started = std::time::Instant::now();
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .expect("python3 is needed for the interop tests");
    assert!(
        made.status.success(),
        "python3 -m venv: {}",
        text(&made.stderr)
    );
    // securesystemslib's `crypto` extra brings `cryptography`, which verifies and signs
    // Ed25519; python-tuf alone installs without it.
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
        ])
        .arg(format!("tuf=={PYTHON_TUF}"))
        .arg("securesystemslib[crypto]")
        .output()
        .unwrap();
    assert!(
        installed.status.success(),
        "pip install tuf=={PYTHON_TUF}: {}",
        text(&installed.stderr)
    );
    assert!(
        has_python_tuf(&python),
        "python-tuf did not import after install"
    );
    println!(
        "installed python-tuf {PYTHON_TUF} in {} in {:.1}s",
        venv.display(),
        started.elapsed().as_secs_f64()
    );
    python
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python-tuf")
        .join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the binary, asserting success; returns stdout.
fn deltacache(args: &[&str]) -> String {
    let output = Command::new(binary()).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "deltacache {}: {}{}",
        args.join(" "),
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `python -m http.server` on 127.0.0.1, port 0, serving a directory; killed when dropped.
struct HttpServer {
    child: Child,
    base: String,
}

impl HttpServer {
    fn start(dir: &Path) -> HttpServer {
        let mut child = Command::new(python())
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let line = lines.next().expect("http.server printed nothing").unwrap();
        let port: u16 = line
            .split(" port ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        std::thread::spawn(move || for _ in lines {});
        HttpServer {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What python-tuf's client reported (see `tests/python-tuf/client.py`).
#[derive(Debug, serde::Deserialize)]
struct PythonClientReport {
    root_version: u64,
    timestamp_version: u64,
    targets_version: u64,
    listed: Vec<String>,
    downloaded: std::collections::BTreeMap<String, PythonDownload>,
}

#[derive(Debug, serde::Deserialize)]
struct PythonDownload {
    path: PathBuf,
    length: u64,
    sha256: String,
    custom: serde_json::Value,
}

/// python-tuf's ngclient refreshes from `server` (trusting `root` on its first run in
/// `work`) and downloads `names`.
fn python_client(server: &HttpServer, root: &Path, work: &Path, names: &[String]) -> Output {
    Command::new(python())
        .arg(script("client.py"))
        .arg(format!("{}/metadata/", server.base))
        .arg(format!("{}/targets/", server.base))
        .arg(root)
        .arg(work)
        .args(names)
        .output()
        .unwrap()
}

fn python_client_ok(
    server: &HttpServer,
    root: &Path,
    work: &Path,
    names: &[String],
) -> PythonClientReport {
    let output = python_client(server, root, work, names);
    assert!(
        output.status.success(),
        "python-tuf client: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Every target as deltacache's client verifies it: name → (bytes, custom metadata).
async fn verified_targets(
    store: &str,
    root: &Path,
) -> std::collections::BTreeMap<String, (Vec<u8>, serde_json::Value)> {
    let store = std::sync::Arc::new(
        deltacache::delta_store::DeltaStore::open(store, &Default::default())
            .await
            .unwrap(),
    );
    let datastore = tempfile::tempdir().unwrap();
    let repo = deltacache::tuf::client::load(
        store,
        &std::fs::read(root).unwrap(),
        datastore.path(),
        Default::default(),
    )
    .await
    .unwrap();
    let mut targets = std::collections::BTreeMap::new();
    for target in repo.targets() {
        let bytes = repo.read_target(&target.name).await.unwrap();
        let custom = serde_json::Value::Object(target.custom.into_iter().collect());
        targets.insert(target.name, (bytes, custom));
    }
    targets
}

/// Every `expires` in the metadata files under `metadata_dir` is whole seconds in UTC, the
/// only form python-tuf parses.
fn assert_whole_second_expiries(metadata_dir: &Path) {
    for entry in std::fs::read_dir(metadata_dir).unwrap() {
        let file = entry.unwrap().path();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let expires = json["signed"]["expires"].as_str().unwrap();
        assert!(
            jiff::fmt::strtime::parse("%Y-%m-%dT%H:%M:%SZ", expires).is_ok() && expires.len() == 20,
            "{}: expires {expires:?} is not %Y-%m-%dT%H:%M:%SZ",
            file.display()
        );
        assert_eq!(
            json["signed"]["spec_version"],
            "1.0.0",
            "{}",
            file.display()
        );
    }
}

fn put(id: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"op": "put", "item": {"id": id, "category": "interop", "text": text}})
}

#[tokio::test(flavor = "multi_thread")]
async fn python_tuf_downloads_every_delta_the_binary_published_and_follows_a_root_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let key = |name: &str| {
        let file = dir.path().join(format!("{name}.key"));
        deltacache(&["keygen", "--out", path(&file)]);
        file
    };
    let pub_of = |file: &Path| format!("{}.pub", file.display());
    let (root_keys, targets_key, online_key) = (
        [key("root-1"), key("root-2"), key("root-3")],
        key("targets"),
        key("online"),
    );
    let root_v1 = dir.path().join("root-1.json");
    let mut init = vec!["root", "init", "--out", path(&root_v1)];
    let root_pubs: Vec<String> = root_keys.iter().map(|k| pub_of(k)).collect();
    for public in &root_pubs {
        init.extend(["--root-key", public]);
    }
    let (targets_pub, online_pub) = (pub_of(&targets_key), pub_of(&online_key));
    init.extend(["--targets-key", &targets_pub, "--online-key", &online_pub]);
    init.extend([
        "--sign-with",
        path(&root_keys[0]),
        "--sign-with",
        path(&root_keys[1]),
    ]);
    assert!(deltacache(&init).contains("complete"));

    let store_dir = dir.path().join("store");
    let store = format!("file://{}", store_dir.display());
    deltacache(&[
        "repo",
        "init",
        "--store",
        &store,
        "--root",
        path(&root_v1),
        "--key",
        path(&targets_key),
        "--key",
        path(&online_key),
    ]);
    let publish = |n: usize, signing_key: &Path| {
        let changes = dir.path().join(format!("changes-{n}.jsonl"));
        let lines = [
            put(
                &format!("py-{n}"),
                &format!("item {n} published for python-tuf"),
            ),
            serde_json::json!({"op": "delete", "id": sample_items()[n]["id"]}),
        ];
        std::fs::write(&changes, lines.map(|l| format!("{l}\n")).concat()).unwrap();
        let out = deltacache(&[
            "publish-delta",
            "--store",
            &store,
            "--targets-key",
            path(signing_key),
            "--timestamp-key",
            path(&online_key),
            "--bundle",
            path(&bundle),
            "--changes",
            path(&changes),
        ]);
        assert!(out.contains(&format!("published seq {n} ")), "{out}");
    };
    publish(1, &targets_key);
    publish(2, &targets_key);

    let server = HttpServer::start(&store_dir);
    let work = dir.path().join("python-client");
    let check =
        |report: &PythonClientReport,
         held: &std::collections::BTreeMap<String, (Vec<u8>, serde_json::Value)>| {
            assert_eq!(
                report.listed,
                held.keys().cloned().collect::<Vec<_>>(),
                "python-tuf lists exactly the targets deltacache verifies"
            );
            for (name, (bytes, custom)) in held {
                let got = &report.downloaded[name];
                assert_eq!(
                    std::fs::read(&got.path).unwrap(),
                    *bytes,
                    "{name}: python-tuf downloaded other bytes than the store holds"
                );
                assert_eq!(got.length, bytes.len() as u64);
                assert_eq!(got.sha256, deltacache::digest::sha256_hex(bytes));
                assert_eq!(&got.custom, custom, "{name}: custom metadata");
            }
        };
    let held = verified_targets(&store, &root_v1).await;
    assert_eq!(held.len(), 2);
    let names: Vec<String> = held.keys().cloned().collect();
    let report = python_client_ok(&server, &root_v1, &work, &names);
    check(&report, &held);
    assert_eq!(report.root_version, 1);
    assert_eq!(
        report.downloaded[&delta_target_name(2)].custom["parent_seq"],
        1
    );

    // A rotation written by the binary: root 2 replaces the targets key, signed by 2 of
    // root 1's 3 root keys (and 2 of its own); python-tuf, trusting root 1 from its first
    // run, must walk to root 2 and accept targets signed by the new key.
    let new_targets_key = key("targets-2");
    let root_v2 = dir.path().join("root-2.json");
    let rotated = deltacache(&[
        "root",
        "rotate",
        "--previous",
        path(&root_v1),
        "--out",
        path(&root_v2),
        "--add-key",
        &format!("targets={}", pub_of(&new_targets_key)),
        "--remove-key",
        &format!("targets={targets_pub}"),
        "--sign-with",
        path(&root_keys[1]),
        "--sign-with",
        path(&root_keys[2]),
    ]);
    assert!(rotated.contains("complete"), "{rotated}");
    deltacache(&[
        "root",
        "publish",
        "--store",
        &store,
        "--root",
        path(&root_v2),
    ]);
    publish(3, &new_targets_key);
    assert_whole_second_expiries(&store_dir.join("metadata"));

    let held = verified_targets(&store, &root_v1).await;
    let names: Vec<String> = held.keys().cloned().collect();
    assert_eq!(names.len(), 3);
    let report = python_client_ok(&server, &root_v1, &work, &names);
    check(&report, &held);
    assert_eq!(report.root_version, 2);
    assert!(
        report.timestamp_version >= 4 && report.targets_version >= 4,
        "{report:?}"
    );
}

/// A delta continuing `position`, made with deltacache's library: its bytes and its target's
/// custom metadata.
fn library_delta(
    position: &ChainPosition,
    after: Option<(&[u8], u64)>,
    records: Vec<serde_json::Value>,
) -> (Vec<u8>, DeltaMeta) {
    let (parent_seq, parent_digest, parent_len) = match after {
        Some((bytes, seq)) => (
            seq,
            deltacache::digest::sha256_hex(bytes),
            bytes.len() as u64,
        ),
        None => (position.seq, position.digest.clone(), position.len),
    };
    let records: Vec<DeltaRecord> = records
        .iter()
        .map(|r| DeltaRecord::from_json(r.to_string().as_bytes()).unwrap())
        .collect();
    let batch = DeltaBatch {
        header: DeltaHeader {
            dataset: position.dataset.clone(),
            seq: parent_seq + 1,
            parent_seq,
            parent_digest,
            parent_len,
            created_at: deltacache::clock::now_secs(),
            model_fingerprint: position.model_fingerprint.clone(),
            schema_version: deltacache::db::migrate::SCHEMA_VERSION,
            n_records: records.len() as u64,
            records_len: 0,
        },
        records,
    };
    let bytes = batch.encode().unwrap();
    (bytes, DeltaMeta::of_batch(&batch))
}

fn exported(state_dir: &Path) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = Vec::new();
    deltacache::sync::ops::export(state_dir, &mut out).unwrap();
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let item: serde_json::Value = serde_json::from_slice(l).unwrap();
            (item["id"].as_str().unwrap().to_owned(), item)
        })
        .collect()
}

fn sync_ok(bundle: &Path, state: &Path, store: &str, root: &Path) -> String {
    let output = sync_command(bundle, state, store, root)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sync: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_syncs_and_publishes_onto_a_repository_python_tuf_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let position = ChainPosition::of_bundle(&Bundle::open(&bundle).unwrap().manifest);
    let first = library_delta(
        &position,
        None,
        vec![
            put("py-1", "written by python-tuf's repository tools"),
            serde_json::json!({"op": "delete", "id": "kit-2"}),
        ],
    );
    let second = library_delta(
        &position,
        Some((&first.0, first.1.seq)),
        vec![put("db-1", "an old item, edited in a python-written delta")],
    );
    let mut spec = Vec::new();
    for (bytes, meta) in [&first, &second] {
        let file = dir.path().join(delta_target_name(meta.seq));
        std::fs::write(&file, bytes).unwrap();
        spec.push(serde_json::json!({
            "name": delta_target_name(meta.seq),
            "path": file,
            "custom": meta,
        }));
    }
    let spec_file = dir.path().join("spec.json");
    std::fs::write(&spec_file, serde_json::json!({"targets": spec}).to_string()).unwrap();
    let repo_dir = dir.path().join("python-repo");
    let written = Command::new(python())
        .arg(script("writer.py"))
        .arg(&repo_dir)
        .arg(&spec_file)
        .output()
        .unwrap();
    assert!(
        written.status.success(),
        "writer.py: {}",
        text(&written.stderr)
    );
    let written: serde_json::Value = serde_json::from_slice(&written.stdout).unwrap();
    assert_eq!(
        written["spec_version"], "1.0.31",
        "python-tuf 7.0.1 writes spec 1.0.31"
    );

    // Key ids agree: deltacache's id for python's key is the id python's root lists.
    for role in ["root", "targets", "snapshot", "timestamp"] {
        let der = repo_dir.join(format!("keys/{role}.der"));
        let (_, id) = deltacache::tuf::keys::FileKey::load(&der).unwrap();
        assert_eq!(written["keyids"][role], id, "{role} key id");
    }

    let store = format!("file://{}", repo_dir.display());
    let root = repo_dir.join("metadata/1.root.json");
    let state = dir.path().join("state");
    let synced = sync_ok(&bundle, &state, &store, &root);
    assert!(
        synced.contains("applied 2 deltas") && synced.contains("now at seq 2"),
        "{synced}"
    );
    let items = exported(&state);
    assert_eq!(
        items["py-1"]["text"],
        "written by python-tuf's repository tools"
    );
    assert_eq!(
        items["db-1"]["text"],
        "an old item, edited in a python-written delta"
    );
    assert!(
        !items.contains_key("kit-2"),
        "the python-written delete was applied"
    );
    let verified = deltacache(&[
        "verify",
        "--store",
        &store,
        "--trusted-root",
        path(&root),
        "--bundle",
        path(&bundle),
    ]);
    assert!(
        verified.contains("2 deltas verified back to seq 0"),
        "{verified}"
    );

    // The binary publishes onto python's repository with python's keys (one per role): the
    // targets it carries over were written with spec 1.0.31, which tough's editor takes
    // only once the publisher rewrote it.
    let changes = dir.path().join("changes.jsonl");
    std::fs::write(
        &changes,
        format!(
            "{}\n",
            put("rs-3", "published by deltacache onto python's repository")
        ),
    )
    .unwrap();
    let key = |role: &str| repo_dir.join(format!("keys/{role}.der"));
    let published = deltacache(&[
        "publish-delta",
        "--store",
        &store,
        "--trusted-root",
        path(&root),
        "--key",
        path(&key("targets")),
        "--key",
        path(&key("snapshot")),
        "--key",
        path(&key("timestamp")),
        "--bundle",
        path(&bundle),
        "--changes",
        path(&changes),
    ]);
    assert!(published.contains("published seq 3 "), "{published}");
    let synced = sync_ok(&bundle, &state, &store, &root);
    assert!(
        synced.contains("applied 1 deltas") && synced.contains("now at seq 3"),
        "{synced}"
    );
    assert_eq!(
        exported(&state)["rs-3"]["text"],
        "published by deltacache onto python's repository"
    );

    // And python-tuf reads the result: its own deltas and ours, byte for byte.
    let server = HttpServer::start(&repo_dir);
    let held = verified_targets(&store, &root).await;
    let names: Vec<String> = held.keys().cloned().collect();
    let report = python_client_ok(&server, &root, &dir.path().join("python-client"), &names);
    assert_eq!(report.listed, names);
    for (name, (bytes, _)) in &held {
        assert_eq!(
            std::fs::read(&report.downloaded[name].path).unwrap(),
            *bytes,
            "{name}"
        );
    }
    assert_eq!(
        report.downloaded[&delta_target_name(1)].custom,
        serde_json::to_value(&first.1).unwrap(),
        "the custom metadata python wrote survives deltacache's re-signing"
    );
}
