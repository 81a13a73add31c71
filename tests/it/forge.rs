//! The adversary's tools for the trust tests: a repository whose roles have separate keys
//! (three root keys with threshold 2, a targets key, an online key for snapshot and
//! timestamp) beside the state dir of an instance that bakes its first root; metadata of any
//! role signed with any key (or none the root lists); and writes straight into the delta
//! store, as someone holding its credentials would make them.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deltacache::delta::chain::{DeltaMeta, DeltaTarget, delta_target_name, delta_targets};
use deltacache::delta::format::{DeltaBatch, DeltaRecord};
use deltacache::delta_store::{DeltaStore, RemoteSettings};
use deltacache::sync::ops::{export, sync_once};
use deltacache::sync::{SyncOptions, SyncOutcome};
use deltacache::tuf::ceremony::{RootEdit, RootKeys, init_root, rotate_root};
use deltacache::tuf::repo::{Current, RepoState, target_object};
use serde::Serialize;
use tough::schema::{Hashes, Metafile, Role, Signature, Signed, Snapshot, Target, Timestamp};
use tough::sign::Sign;

use super::s3::S3Server;
use super::support::{build_bundle, sample_items};

/// Where the repository lives.
#[derive(Clone, Copy)]
pub enum Backend<'a> {
    /// A directory, `file:///…`.
    File,
    /// The S3 server on loopback, under a prefix of its bucket.
    S3(&'a S3Server, &'a str),
}

/// The secret key files of a repository.
pub struct Keys {
    /// Root keys: the root lists all three, threshold 2.
    pub root: Vec<PathBuf>,
    /// The publisher's targets key.
    pub targets: PathBuf,
    /// The online key: snapshot and timestamp.
    pub online: PathBuf,
}

/// A new key `NAME.key` (and `NAME.key.pub`) in `dir`.
pub fn new_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.key"));
    deltacache::tuf::keys::generate(&path).unwrap();
    path
}

/// The public key file of a secret key file.
pub fn public(key: &Path) -> PathBuf {
    deltacache::tuf::keys::public_path(key)
}

/// A repository in a delta store, its operator's keys, and one instance's state dir.
pub struct Repo {
    /// Holds everything below (and the store, for a file store).
    pub dir: tempfile::TempDir,
    /// The bundle the instance serves and the chain starts from.
    pub bundle: PathBuf,
    /// The operator's keys as first made.
    pub keys: Keys,
    /// The root the instance's image bakes: version 1, never replaced.
    pub baked_root: PathBuf,
    /// The newest root the operator made (the previous root of the next rotation).
    pub newest_root: PathBuf,
    /// The keys the publisher signs targets, snapshot and timestamp with.
    pub signing: Vec<PathBuf>,
    /// The delta store URL.
    pub store_url: String,
    /// How to reach it.
    pub remote: RemoteSettings,
    /// The instance's state dir.
    pub state_dir: PathBuf,
    /// What the instance must serve once synced: id → item.
    pub model: BTreeMap<String, serde_json::Value>,
    /// Changes files written so far.
    n_published: u64,
}

impl Repo {
    /// A new bundle, keys, root version 1 (signed by root keys 0 and 1) and an initialised
    /// repository holding no delta yet.
    pub async fn new(backend: Backend<'_>) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let bundle = build_bundle(dir.path(), &sample_items());
        Repo::create(dir, bundle, backend).await
    }

    /// Another repository, with keys of its own, whose chain starts from this one's bundle
    /// (so its deltas would apply to this repository's instances, were they trusted).
    pub async fn foreign(&self) -> Repo {
        Repo::create(
            tempfile::tempdir().unwrap(),
            self.bundle.clone(),
            Backend::File,
        )
        .await
    }

    async fn create(dir: tempfile::TempDir, bundle: PathBuf, backend: Backend<'_>) -> Repo {
        let keys = Keys {
            root: (0..3)
                .map(|i| new_key(dir.path(), &format!("root{i}")))
                .collect(),
            targets: new_key(dir.path(), "targets"),
            online: new_key(dir.path(), "online"),
        };
        let layout = RootKeys {
            root: (keys.root.iter().map(|k| public(k)).collect(), 2),
            targets: (vec![public(&keys.targets)], 1),
            online: (vec![public(&keys.online)], 1),
        };
        let (bytes, status) = init_root(&layout, days_std(365), &keys.root[..2])
            .await
            .unwrap();
        assert!(status.complete(), "{status}");
        let baked_root = dir.path().join("root-1.json");
        std::fs::write(&baked_root, &bytes).unwrap();
        let (store_url, remote) = match backend {
            Backend::File => (
                format!("file://{}", dir.path().join("store").display()),
                RemoteSettings::default(),
            ),
            Backend::S3(server, prefix) => (
                format!("s3://{}/{prefix}", super::s3::BUCKET),
                server.settings(),
            ),
        };
        let signing = vec![keys.targets.clone(), keys.online.clone()];
        let signers = signing
            .iter()
            .map(|k| deltacache::tuf::keys::FileKey::load(k).unwrap())
            .unzip();
        deltacache::delta::publish::init_repository(&store_url, &remote, &bytes, &signers, None)
            .await
            .unwrap();
        let model = sample_items()
            .into_iter()
            .map(|i| (i["id"].as_str().unwrap().to_owned(), i))
            .collect();
        Repo {
            state_dir: dir.path().join("state"),
            bundle,
            keys,
            newest_root: baked_root.clone(),
            baked_root,
            signing,
            store_url,
            remote,
            model,
            n_published: 0,
            dir,
        }
    }

    /// The instance's sync options: its baked root, the store, default caps.
    pub fn options(&self) -> SyncOptions {
        let mut options = SyncOptions::new(self.store_url.clone(), self.baked_root.clone());
        options.remote = self.remote.clone();
        options
    }

    /// One boot-time sync of the instance, through the library.
    pub async fn sync(&self) -> anyhow::Result<SyncOutcome> {
        sync_once(
            &self.bundle,
            &self.state_dir,
            self.options(),
            Duration::from_secs(60),
        )
        .await
    }

    /// Syncs, and checks that the instance serves exactly the model.
    pub async fn expect_synced(&self, case: &str) {
        if let Err(error) = self.sync().await {
            panic!("{case}: the good repository did not sync: {error:#}");
        }
        assert_eq!(exported(&self.state_dir), self.model, "{case}");
    }

    /// Syncs, and checks that the sync is refused with a message holding every one of
    /// `expected` (and `reason` as its metrics label) and that the state dir did not change
    /// by a byte. Returns the message.
    pub async fn expect_refused(&self, case: &str, expected: &[&str], reason: &str) -> String {
        let before = snapshot(&self.state_dir);
        let error = match self.sync().await {
            Ok(outcome) => panic!("{case}: accepted ({outcome:?})"),
            Err(error) => error,
        };
        let message = format!("{error:#}");
        for part in expected {
            assert!(
                message.contains(part),
                "{case}: the refusal does not say {part:?}: {message}"
            );
        }
        assert_eq!(
            deltacache::sync::failure_reason(&error),
            reason,
            "{case}: {message}"
        );
        assert!(
            snapshot(&self.state_dir) == before,
            "{case}: the refusal changed the state dir ({message})"
        );
        println!("{case}: {message}");
        message
    }

    /// Publishes `changes` as the next delta, signed with [`Repo::signing`], and folds them
    /// into the model.
    pub async fn publish(&mut self, changes: &[serde_json::Value]) {
        self.n_published += 1;
        let path = self
            .dir
            .path()
            .join(format!("changes-{}.jsonl", self.n_published));
        let text: String = changes.iter().map(|c| format!("{c}\n")).collect();
        std::fs::write(&path, text).unwrap();
        deltacache::delta::publish::publish(&deltacache::delta::publish::PublishOptions {
            store: self.store_url.clone(),
            keys: self.signing.clone(),
            trusted_root: None,
            bundle: self.bundle.clone(),
            changes: deltacache::delta::publish::ChangeSource::Changes(path),
            expires_in: days_std(1),
            dry_run: false,
            force: false,
            remote: self.remote.clone(),
            tip_cache: None,
        })
        .await
        .unwrap();
        for change in changes {
            let item = &change["item"];
            match item["id"].as_str() {
                Some(id) => self.model.insert(id.to_owned(), item.clone()),
                None => self.model.remove(change["id"].as_str().unwrap()),
            };
        }
    }

    /// The delta store.
    pub async fn store(&self) -> DeltaStore {
        DeltaStore::open(&self.store_url, &self.remote)
            .await
            .unwrap()
    }

    /// An object's bytes.
    pub async fn get(&self, name: &str) -> Vec<u8> {
        let store = self.store().await;
        match store.get(name, 1 << 30).await.unwrap() {
            Some(fetched) => fetched.bytes,
            None => panic!("{name} is not in {}", store.describe()),
        }
    }

    /// Writes an object whatever was there: what anyone holding the store's credentials can
    /// do.
    pub async fn put(&self, name: &str, bytes: &[u8]) {
        let store = self.store().await;
        if store.get(name, 1 << 30).await.unwrap().is_some() {
            store.remove(name).await.unwrap();
        }
        store.create(name, bytes).await.unwrap();
    }

    /// Removes an object.
    pub async fn remove(&self, name: &str) {
        self.store().await.remove(name).await.unwrap();
    }

    /// The repository as the operator reads it (trusting the store's first root).
    pub async fn state(&self) -> RepoState {
        RepoState::read(&self.store().await, None).await.unwrap()
    }

    /// The current timestamp, snapshot and targets.
    pub async fn current(&self) -> Current {
        self.state().await.current.unwrap()
    }

    /// The current metadata files as the store holds them: `(name, bytes)` of timestamp,
    /// snapshot and targets, in that order.
    pub async fn current_files(&self) -> [(String, Vec<u8>); 3] {
        let current = self.current().await;
        let names = [
            "metadata/timestamp.json".to_owned(),
            format!("metadata/{}.snapshot.json", current.snapshot.signed.version),
            format!("metadata/{}.targets.json", current.targets.signed.version),
        ];
        let mut files = Vec::new();
        for name in names {
            let bytes = self.get(&name).await;
            files.push((name, bytes));
        }
        files.try_into().unwrap()
    }

    /// The delta target `seq` as the current targets metadata lists it.
    pub async fn delta(&self, seq: u64) -> DeltaTarget {
        let targets = deltacache::tuf::client::target_infos(&self.current().await.targets);
        delta_targets(&targets)
            .unwrap()
            .into_iter()
            .find(|d| d.meta.seq == seq)
            .unwrap()
    }

    /// The store object holding delta `seq`.
    pub async fn delta_object(&self, seq: u64) -> String {
        let delta = self.delta(seq).await;
        target_object(&delta.digest, &delta.name)
    }

    /// Makes root N+1 from the newest with `edits`, signed by `signers`, and publishes it
    /// as the operator does (`root rotate`, `root publish`).
    pub async fn rotate(&mut self, edits: &[RootEdit], signers: &[PathBuf]) {
        let (bytes, status) = rotate_root(&self.newest_root, edits, days_std(365), signers)
            .await
            .unwrap();
        assert!(status.complete(), "{status}");
        self.publish_root(&bytes).await;
    }

    /// Publishes a complete root file as the operator does (`root publish`, which checks it
    /// against the newest root first) and makes it the newest.
    pub async fn publish_root(&mut self, bytes: &[u8]) {
        let store = self.store().await;
        let version = deltacache::tuf::repo::publish_root(&store, &self.state().await, bytes)
            .await
            .unwrap();
        self.newest_root = self.dir.path().join(format!("root-{version}.json"));
        std::fs::write(&self.newest_root, bytes).unwrap();
    }

    /// Serves `snapshot` (signed by `snapshot_keys`) as `metadata/N.snapshot.json` and a
    /// timestamp one version past the current one naming it, signed by `timestamp_keys`:
    /// what holding the online key allows.
    pub async fn serve_snapshot(
        &self,
        snapshot: Snapshot,
        snapshot_keys: &[&Path],
        timestamp_keys: &[&Path],
    ) {
        let version = snapshot.version.get();
        let bytes = file_bytes(&sign(snapshot, snapshot_keys).await);
        self.put(&format!("metadata/{version}.snapshot.json"), &bytes)
            .await;
        let timestamp_version = self.current_timestamp_version().await + 1;
        let timestamp = timestamp_naming(&bytes, version, timestamp_version, days(1));
        let bytes = file_bytes(&sign(timestamp, timestamp_keys).await);
        self.put("metadata/timestamp.json", &bytes).await;
    }

    /// Serves targets metadata (file bytes) as `metadata/N.targets.json`, named by a new
    /// snapshot and timestamp that the online key signs.
    pub async fn serve_targets(&self, targets: &[u8], version: u64) {
        // Read before writing: the operator's view of the store refuses targets that no
        // longer match the snapshot naming them.
        let snapshot_version = self.highest_snapshot_version().await + 1;
        self.put(&format!("metadata/{version}.targets.json"), targets)
            .await;
        let snapshot = snapshot_naming(targets, version, snapshot_version, days(30));
        let online = self.keys.online.clone();
        self.serve_snapshot(snapshot, &[&online], &[&online]).await;
    }

    /// The version of the timestamp the store serves, whoever signed it.
    pub async fn current_timestamp_version(&self) -> u64 {
        let bytes = self.get("metadata/timestamp.json").await;
        let timestamp: Signed<Timestamp> = serde_json::from_slice(&bytes).unwrap();
        timestamp.signed.version.get()
    }

    /// The highest `N` of the `N.snapshot.json` files in the store.
    pub async fn highest_snapshot_version(&self) -> u64 {
        self.state().await.highest.1
    }

    /// The highest `N` of the `N.targets.json` files in the store.
    pub async fn highest_targets_version(&self) -> u64 {
        self.state().await.highest.0
    }
}

/// What the instance's state dir serves: id → item.
pub fn exported(state_dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = Vec::new();
    export(state_dir, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| {
            let item: serde_json::Value = serde_json::from_str(line).unwrap();
            (item["id"].as_str().unwrap().to_owned(), item)
        })
        .collect()
}

/// Every file under `dir` with its bytes, for byte-identity checks.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    deltacache::bundle::list_files(dir)
        .unwrap()
        .into_iter()
        .map(|rel| {
            let bytes = std::fs::read(dir.join(&rel)).unwrap();
            (rel, bytes)
        })
        .collect()
}

/// A put change.
pub fn put(id: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"op": "put", "item": {"id": id, "text": text, "category": "new"}})
}

/// `now + n` days (negative: in the past), in whole seconds as TUF metadata writes it.
pub fn days(n: i64) -> jiff::Timestamp {
    let now = jiff::Timestamp::now().as_second();
    jiff::Timestamp::from_second(now + n * 24 * 3600).unwrap()
}

fn days_std(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 3600)
}

fn version(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).unwrap()
}

/// Signs `role` with each of `keys` (secret key files), listed by a root or not.
pub async fn sign<T: Role + Serialize>(role: T, keys: &[&Path]) -> Signed<T> {
    let data = role.canonical_form().unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut signatures = Vec::new();
    for key in keys {
        let der = deltacache::tuf::keys::read_secret(key).unwrap();
        let signer = tough::sign::parse_keypair(&der).unwrap();
        signatures.push(Signature {
            keyid: signer.tuf_key().key_id().unwrap(),
            sig: signer.sign(&data, &rng).await.unwrap().into(),
        });
    }
    Signed {
        signed: role,
        signatures,
    }
}

/// A metadata file's bytes, as tough writes them.
pub fn file_bytes<T: Serialize>(signed: &Signed<T>) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(signed).unwrap();
    bytes.push(b'\n');
    bytes
}

/// What metadata naming a file states about it: length, sha256 and version.
pub fn metafile(bytes: &[u8], n: u64) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
                .as_ref()
                .to_vec()
                .into(),
            _extra: Default::default(),
        }),
        version: version(n),
        _extra: Default::default(),
    }
}

/// Timestamp `n` naming the snapshot file `snapshot` (version `snapshot_version`).
pub fn timestamp_naming(
    snapshot: &[u8],
    snapshot_version: u64,
    n: u64,
    expires: jiff::Timestamp,
) -> Timestamp {
    let mut timestamp = Timestamp::new("1.0.0".into(), version(n), expires);
    timestamp
        .meta
        .insert("snapshot.json".into(), metafile(snapshot, snapshot_version));
    timestamp
}

/// Snapshot `n` naming the targets file `targets` (version `targets_version`).
pub fn snapshot_naming(
    targets: &[u8],
    targets_version: u64,
    n: u64,
    expires: jiff::Timestamp,
) -> Snapshot {
    let mut snapshot = Snapshot::new("1.0.0".into(), version(n), expires);
    snapshot
        .meta
        .insert("targets.json".into(), metafile(targets, targets_version));
    snapshot
}

/// A delta continuing `tip` that puts an item `evil`: what an attacker would have instances
/// apply. Returns its target name, bytes and target entry.
pub fn evil_delta(tip: &DeltaTarget) -> (String, Vec<u8>, Target) {
    let raw = serde_json::value::RawValue::from_string(
        r#"{"id":"evil","text":"kafka crema","category":"new"}"#.into(),
    )
    .unwrap();
    let header = deltacache::delta::format::DeltaHeader {
        dataset: tip.meta.dataset.clone(),
        seq: tip.meta.seq + 1,
        parent_seq: tip.meta.seq,
        parent_digest: tip.digest.clone(),
        parent_len: tip.len,
        created_at: deltacache::clock::now_secs(),
        model_fingerprint: tip.meta.model_fingerprint.clone(),
        schema_version: tip.meta.schema_version,
        n_records: 1,
        records_len: 0,
    };
    let batch = DeltaBatch {
        header,
        records: vec![DeltaRecord::Put { item: raw }],
    };
    let bytes = batch.encode().unwrap();
    let target = Target {
        length: bytes.len() as u64,
        hashes: Hashes {
            sha256: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
                .as_ref()
                .to_vec()
                .into(),
            _extra: Default::default(),
        },
        custom: DeltaMeta::of_batch(&batch).to_custom(),
        _extra: Default::default(),
    };
    (delta_target_name(tip.meta.seq + 1), bytes, target)
}

/// Serves, with keys the attacker holds, targets metadata one version past the newest
/// listing `evil_delta` after the current tip (the delta itself stored too), named by a
/// new snapshot and timestamp signed by the online key. `targets_keys` sign the targets.
pub async fn serve_evil_targets(repo: &Repo, tip_seq: u64, targets_keys: &[&Path]) {
    let (name, bytes, target) = evil_delta(&repo.delta(tip_seq).await);
    repo.put(
        &target_object(&hex::encode(&target.hashes.sha256), &name),
        &bytes,
    )
    .await;
    let mut targets = repo.current().await.targets.signed;
    let n = repo.highest_targets_version().await + 1;
    targets.version = version(n);
    targets.expires = days(30);
    targets
        .targets
        .insert(tough::TargetName::new(name).unwrap(), target);
    let file = file_bytes(&sign(targets, targets_keys).await);
    repo.serve_targets(&file, n).await;
}
