//! The instance's trust, attacked from the adversary's side: each test forges what someone
//! holding the delta store (and, where said, a leaked key) could serve, drives the real sync
//! path (`sync_once`, or the `deltacache sync` binary) against it, and checks that the sync
//! is refused with a message naming the object or role and the reason, that the state dir
//! did not change by a byte, and that the good repository still syncs afterwards.
//!
//! The repository has separate keys per role (`forge::Repo`): three root keys with
//! threshold 2, a targets key, and an online key for snapshot and timestamp. The instance
//! bakes root version 1 and nothing else.

use std::path::Path;

use deltacache::tuf::Role;
use deltacache::tuf::ceremony::RootEdit;
use tough::schema::{Signed, Snapshot, Targets};

use super::forge::{
    Backend, Repo, days, exported, file_bytes, new_key, public, put, serve_evil_targets, sign,
    snapshot, snapshot_naming, timestamp_naming,
};
use super::s3::S3Server;

/// Parses a metadata file.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    serde_json::from_slice(bytes).unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. Arbitrary target

/// A delta's bytes replaced (same length, so only the hash tells) and extended by one byte
/// (so the length tells first) in the store's `targets/` object. The messages checked are
/// tough's hash and length checks: were those gone, the sync would take the bytes to the
/// delta decoder, which says something else or nothing, and the test fails.
async fn check_arbitrary_target(backend: Backend<'_>) {
    let mut repo = Repo::new(backend).await;
    repo.publish(&[put("a", "kafka crema")]).await;
    repo.expect_synced("first delta").await;
    repo.publish(&[put("b", "vector search")]).await;
    let object = repo.delta_object(2).await;
    let good = repo.get(&object).await;

    let mut replaced = good.clone();
    let middle = replaced.len() / 2;
    replaced[middle] ^= 0x01;
    repo.put(&object, &replaced).await;
    repo.expect_refused(
        "delta bytes replaced",
        &["000000000002.delta", "Hash mismatch"],
        "refused",
    )
    .await;

    let mut extended = good.clone();
    extended.push(b'\n');
    repo.put(&object, &extended).await;
    repo.expect_refused(
        "delta extended by one byte",
        &["000000000002.delta", "Maximum size"],
        "refused",
    )
    .await;

    repo.put(&object, &good).await;
    repo.expect_synced("the delta restored").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_or_extended_delta_is_refused_on_a_file_store() {
    check_arbitrary_target(Backend::File).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_or_extended_delta_is_refused_on_s3() {
    let server = S3Server::start();
    check_arbitrary_target(Backend::S3(&server, "arbitrary")).await;
}

// ---------------------------------------------------------------------------------------
// 2. Rollback

/// An older timestamp replayed; an older snapshot named by a newer timestamp, and older
/// targets named by a newer snapshot (both re-signed with the online key, which the
/// attacker holds here). tough refuses each against the metadata the state dir kept. Each
/// forgery is otherwise valid: without the rollback checks it would load, and the sync
/// would succeed or fail later on the chain, never saying "refusing a rollback".
async fn check_rollbacks(backend: Backend<'_>) {
    let mut repo = Repo::new(backend).await;
    repo.publish(&[put("a", "kafka crema")]).await;
    let [(_, old_timestamp), (_, old_snapshot), (_, old_targets)] = repo.current_files().await;
    let old_snapshot_version = parse::<Signed<Snapshot>>(&old_snapshot)
        .signed
        .version
        .get();
    let old_targets_version = parse::<Signed<Targets>>(&old_targets).signed.version.get();
    repo.publish(&[put("b", "vector search")]).await;
    repo.expect_synced("two deltas").await;
    let good_timestamp = repo.get("metadata/timestamp.json").await;
    let online = repo.keys.online.clone();

    repo.put("metadata/timestamp.json", &old_timestamp).await;
    repo.expect_refused(
        "older timestamp",
        &["refusing a rollback", "timestamp", "version 2"],
        "rollback",
    )
    .await;

    let newer = repo.current_timestamp_version().await + 5;
    let timestamp = timestamp_naming(&old_snapshot, old_snapshot_version, newer, days(1));
    let forged = file_bytes(&sign(timestamp, &[&online]).await);
    repo.put("metadata/timestamp.json", &forged).await;
    repo.expect_refused(
        "older snapshot named by a newer timestamp",
        &["refusing a rollback", "Snapshot version 2"],
        "rollback",
    )
    .await;

    repo.put("metadata/timestamp.json", &good_timestamp).await;
    let newer = repo.highest_snapshot_version().await + 1;
    let snapshot = snapshot_naming(&old_targets, old_targets_version, newer, days(30));
    repo.serve_snapshot(snapshot, &[&online], &[&online]).await;
    repo.expect_refused(
        "older targets named by a newer snapshot",
        &["refusing a rollback", "targets.json version 3", "version 2"],
        "rollback",
    )
    .await;

    repo.put("metadata/timestamp.json", &good_timestamp).await;
    repo.publish(&[put("c", "espresso")]).await;
    repo.expect_synced("the good repository").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn older_timestamp_snapshot_and_targets_are_refused_as_rollbacks_on_a_file_store() {
    check_rollbacks(Backend::File).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn older_timestamp_snapshot_and_targets_are_refused_as_rollbacks_on_s3() {
    let server = S3Server::start();
    check_rollbacks(Backend::S3(&server, "rollback")).await;
}

/// `deltacache sync` of the repository's instance on `state_dir`, as a child process:
/// whether it succeeded, and its stderr.
fn sync_binary(repo: &Repo, state_dir: &Path) -> (bool, String) {
    let output =
        super::support::sync_command(&repo.bundle, state_dir, &repo.store_url, &repo.baked_root)
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stderr)
}

/// Runs the binary and checks it was refused saying each of `expected`, leaving the state
/// dir as it was.
fn expect_binary_refused(repo: &Repo, case: &str, expected: &[&str]) {
    let before = snapshot(&repo.state_dir);
    let (ok, stderr) = sync_binary(repo, &repo.state_dir);
    assert!(!ok, "{case}: accepted");
    for part in expected {
        assert!(stderr.contains(part), "{case}: no {part:?} in {stderr}");
    }
    println!("{case}: {}", stderr.trim());
    assert!(
        snapshot(&repo.state_dir) == before,
        "{case}: the refusal changed the state dir"
    );
}

fn expect_binary_synced(repo: &Repo, case: &str) {
    let (ok, stderr) = sync_binary(repo, &repo.state_dir);
    assert!(ok, "{case}: {stderr}");
    assert_eq!(exported(&repo.state_dir), repo.model, "{case}");
}

/// Root 2 (replacing a leaked targets key) is remembered by the state dir across runs of
/// the binary: hiding it from the store and serving targets signed by the leaked key is
/// refused, though the image still bakes root 1; and root 1 offered again as version 3 is
/// refused as a rollback. The control: a state dir that remembered nothing takes the
/// forgery, so the refusal comes from what the state dir kept.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_root_is_never_accepted_once_a_newer_was_trusted() {
    let mut repo = Repo::new(Backend::File).await;
    repo.publish(&[put("a", "kafka crema")]).await;
    expect_binary_synced(&repo, "first delta");
    let leaked = repo.keys.targets.clone();
    let replacement = new_key(repo.dir.path(), "targets-2");
    let root_signers = repo.keys.root[..2].to_vec();
    repo.rotate(
        &[
            RootEdit::RemoveKey(Role::Targets, leaked.display().to_string()),
            RootEdit::AddKey(Role::Targets, public(&replacement)),
        ],
        &root_signers,
    )
    .await;
    repo.signing = vec![replacement, repo.keys.online.clone()];
    repo.publish(&[put("b", "vector search")]).await;
    expect_binary_synced(&repo, "root 2 and a delta signed by the new targets key");
    let root_2 = repo.get("metadata/2.root.json").await;
    let good_timestamp = repo.get("metadata/timestamp.json").await;

    serve_evil_targets(&repo, 2, &[&leaked]).await;
    repo.remove("metadata/2.root.json").await;
    expect_binary_refused(
        &repo,
        "root 2 hidden, targets signed by the leaked key",
        &[
            "targets",
            "Signature threshold of 1 not met for role targets (0 valid",
        ],
    );
    let forgetful = repo.dir.path().join("forgetful-state");
    let (ok, stderr) = sync_binary(&repo, &forgetful);
    assert!(ok, "control: {stderr}");
    assert!(exported(&forgetful).contains_key("evil"), "control");

    repo.put("metadata/2.root.json", &root_2).await;
    repo.put("metadata/timestamp.json", &good_timestamp).await;
    let root_1 = std::fs::read(&repo.baked_root).unwrap();
    repo.put("metadata/3.root.json", &root_1).await;
    expect_binary_refused(
        &repo,
        "root 1 offered as version 3",
        &[
            "refusing a rollback",
            "Found version 1 of root metadata when we had previously fetched version 2",
        ],
    );

    repo.remove("metadata/3.root.json").await;
    repo.publish(&[put("c", "espresso")]).await;
    expect_binary_synced(&repo, "the good repository");
}

// ---------------------------------------------------------------------------------------
// 3. Freeze

/// Metadata of each role whose expiry has passed (signed by the keys that role needs, one
/// version newer than what was trusted: valid but for the expiry) is refused as a freeze.
/// Root 2 is published with `root publish`, which checks signatures, not expiry; root 3,
/// not expired, lets the chain through it.
#[tokio::test(flavor = "multi_thread")]
async fn expired_metadata_of_every_role_is_refused_as_a_freeze() {
    use deltacache::tuf::root::{build_root, read_root, role_specs, root_bytes, sign_root};
    let mut repo = Repo::new(Backend::File).await;
    repo.publish(&[put("a", "kafka crema")]).await;
    repo.expect_synced("first delta").await;
    let [(_, good_timestamp), (_, snapshot), (_, targets)] = repo.current_files().await;
    let snapshot_version = parse::<Signed<Snapshot>>(&snapshot).signed.version.get();
    let targets_version = parse::<Signed<Targets>>(&targets).signed.version.get();
    let (online, targets_key) = (repo.keys.online.clone(), repo.keys.targets.clone());

    let newer = repo.current_timestamp_version().await + 1;
    let stale = timestamp_naming(&snapshot, snapshot_version, newer, days(-1));
    let stale = file_bytes(&sign(stale, &[&online]).await);
    repo.put("metadata/timestamp.json", &stale).await;
    repo.expect_refused(
        "expired timestamp",
        &["timestamp metadata has expired at 20", " ago): "],
        "expired",
    )
    .await;

    repo.put("metadata/timestamp.json", &good_timestamp).await;
    let newer = repo.highest_snapshot_version().await + 1;
    let stale = snapshot_naming(&targets, targets_version, newer, days(-1));
    repo.serve_snapshot(stale, &[&online], &[&online]).await;
    repo.expect_refused(
        "expired snapshot",
        &["snapshot metadata has expired at 20", " ago): "],
        "expired",
    )
    .await;

    repo.put("metadata/timestamp.json", &good_timestamp).await;
    let mut stale = parse::<Signed<Targets>>(&targets).signed;
    let newer = repo.highest_targets_version().await + 1;
    stale.version = std::num::NonZeroU64::new(newer).unwrap();
    stale.expires = days(-1);
    let stale = file_bytes(&sign(stale, &[&targets_key]).await);
    repo.serve_targets(&stale, newer).await;
    repo.expect_refused(
        "expired targets",
        &["targets metadata has expired at 20", " ago): "],
        "expired",
    )
    .await;

    repo.put("metadata/timestamp.json", &good_timestamp).await;
    let root_1 = read_root(&repo.baked_root).unwrap();
    let stale = build_root(2, days(-1), &role_specs(&root_1.signed).unwrap()).unwrap();
    let signers: Vec<_> = repo.keys.root[..2]
        .iter()
        .map(|k| deltacache::tuf::keys::FileKey::load(k).unwrap().0)
        .collect();
    let stale = sign_root(stale, Some(&root_1.signed), &[], &signers)
        .await
        .unwrap();
    repo.publish_root(&root_bytes(&stale).unwrap()).await;
    repo.expect_refused("expired root", &["root metadata has expired"], "expired")
        .await;

    let root_signers = repo.keys.root[..2].to_vec();
    repo.rotate(&[], &root_signers).await;
    repo.publish(&[put("b", "vector search")]).await;
    repo.expect_synced("root 3 and a new delta").await;
}

// ---------------------------------------------------------------------------------------
// 4. Fast-forward

/// The trusted metadata the state dir kept: `file` (such as `timestamp.json`) of its only
/// repository.
fn trusted_version(state_dir: &Path, file: &str) -> u64 {
    let trust = state_dir.join("trust");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&trust).unwrap() {
        let path = entry.unwrap().path().join(file);
        if path.exists() {
            found.push(path);
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    let value: serde_json::Value = parse(&std::fs::read(&found[0]).unwrap());
    value["signed"]["version"].as_u64().unwrap()
}

/// An attacker holding the online key fast-forwards snapshot and timestamp to version
/// 2^40; the instance takes them (they are validly signed) and is then locked out of the
/// restored repository. Root 2 rotates the online key; the instance, whose image still holds
/// root 1, drops the fast-forwarded metadata and syncs (spec 5.3.11).
#[tokio::test(flavor = "multi_thread")]
async fn a_fast_forwarded_instance_recovers_once_root_2_rotates_the_online_key() {
    const HUGE: u64 = 1 << 40;
    let mut repo = Repo::new(Backend::File).await;
    repo.publish(&[put("a", "kafka crema")]).await;
    repo.expect_synced("first delta").await;
    let [(_, good_timestamp), (_, snapshot), _] = repo.current_files().await;
    let online = repo.keys.online.clone();
    let mut forward = parse::<Signed<Snapshot>>(&snapshot).signed;
    forward.version = std::num::NonZeroU64::new(HUGE).unwrap();
    let forward = file_bytes(&sign(forward, &[&online]).await);
    let forward_name = format!("metadata/{HUGE}.snapshot.json");
    repo.put(&forward_name, &forward).await;
    let timestamp = timestamp_naming(&forward, HUGE, HUGE, days(1));
    repo.put(
        "metadata/timestamp.json",
        &file_bytes(&sign(timestamp, &[&online]).await),
    )
    .await;
    let outcome = repo.sync().await.unwrap();
    assert!(
        matches!(outcome, deltacache::sync::SyncOutcome::UpToDate { .. }),
        "{outcome:?}"
    );
    assert_eq!(trusted_version(&repo.state_dir, "timestamp.json"), HUGE);

    repo.put("metadata/timestamp.json", &good_timestamp).await;
    repo.remove(&forward_name).await;
    repo.publish(&[put("b", "vector search")]).await;
    repo.expect_refused(
        "locked out by the fast-forward",
        &["refusing a rollback", "timestamp"],
        "rollback",
    )
    .await;

    let new_online = new_key(repo.dir.path(), "online-2");
    let old = online.display().to_string();
    let root_signers = repo.keys.root[..2].to_vec();
    repo.rotate(
        &[
            RootEdit::AddKey(Role::Snapshot, public(&new_online)),
            RootEdit::AddKey(Role::Timestamp, public(&new_online)),
            RootEdit::RemoveKey(Role::Snapshot, old.clone()),
            RootEdit::RemoveKey(Role::Timestamp, old),
        ],
        &root_signers,
    )
    .await;
    repo.signing = vec![repo.keys.targets.clone(), new_online];
    repo.publish(&[put("c", "espresso")]).await;
    repo.expect_synced("after the online key rotation").await;
    assert!(trusted_version(&repo.state_dir, "timestamp.json") < HUGE);
}

// ---------------------------------------------------------------------------------------
// 5. Mix-and-match

/// Targets of another repository, whose delta continues this repository's bundle, named by
/// a snapshot the online key signs (the attacker holds it): refused by the targets
/// signature. Then this repository's own targets file swapped for one that is signed by
/// the targets key (the attacker holds that one instead) but is not the one the snapshot
/// names, and for the same targets re-serialised: both refused by the snapshot's hash.
/// The foreign delta continues this repository's bundle, so were either check gone it
/// would be applied and the sync would succeed.
#[tokio::test(flavor = "multi_thread")]
async fn mixed_and_matched_metadata_is_refused() {
    let mut repo = Repo::new(Backend::File).await;
    repo.expect_synced("the bundle alone").await;
    let good_timestamp = repo.get("metadata/timestamp.json").await;
    let mut foreign = repo.foreign().await;
    foreign.publish(&[put("evil", "kafka crema")]).await;
    let [_, _, (_, foreign_targets)] = foreign.current_files().await;
    let foreign_object = foreign.delta_object(1).await;
    repo.put(&foreign_object, &foreign.get(&foreign_object).await)
        .await;
    let foreign_version = parse::<Signed<Targets>>(&foreign_targets)
        .signed
        .version
        .get();
    repo.serve_targets(&foreign_targets, foreign_version).await;
    repo.expect_refused(
        "targets from another repository",
        &[
            "targets",
            "Signature threshold of 1 not met for role targets (0 valid",
        ],
        "refused",
    )
    .await;

    repo.put("metadata/timestamp.json", &good_timestamp).await;
    repo.publish(&[put("a", "kafka crema")]).await;
    let [_, _, (targets_name, good_targets)] = repo.current_files().await;
    let mut swapped = parse::<Signed<Targets>>(&good_targets).signed;
    swapped.targets = parse::<Signed<Targets>>(&foreign_targets).signed.targets;
    let swapped = file_bytes(&sign(swapped, &[&repo.keys.targets]).await);
    repo.put(&targets_name, &swapped).await;
    repo.expect_refused(
        "targets swapped for others the targets key signed",
        &[&targets_name, "Hash mismatch"],
        "refused",
    )
    .await;
    let compact = serde_json::to_vec(&parse::<serde_json::Value>(&good_targets)).unwrap();
    repo.put(&targets_name, &compact).await;
    repo.expect_refused(
        "the same targets re-serialised",
        &[&targets_name, "Hash mismatch"],
        "refused",
    )
    .await;

    repo.put(&targets_name, &good_targets).await;
    repo.expect_synced("the good repository").await;
}

// ---------------------------------------------------------------------------------------
// 7. Thresholds and keys

/// Root 2 needs 2 of root 1's three root keys and 2 of its own: one key alone, one old key
/// with a key root 2 adds, and one signature listed twice (also with its key id in upper
/// case) are refused. Targets signed by a key no root lists, and targets signed under a key
/// a (properly signed) root lists with the wrong type, are refused. The control at the end:
/// the same forged targets signed by the listed targets key are taken, so the refusals came
/// from the keys.
#[tokio::test(flavor = "multi_thread")]
async fn thresholds_count_distinct_listed_keys_of_the_right_type() {
    use deltacache::tuf::ceremony::rotate_root;
    let mut repo = Repo::new(Backend::File).await;
    repo.publish(&[put("a", "kafka crema")]).await;
    repo.expect_synced("first delta").await;
    let roots = repo.keys.root.clone();
    let added = new_key(repo.dir.path(), "root3");
    let year = std::time::Duration::from_secs(365 * 24 * 3600);
    let one_old_key: [(&str, Vec<RootEdit>, Vec<std::path::PathBuf>); 2] = [
        (
            "root 2 signed by one root key",
            vec![],
            vec![roots[0].clone()],
        ),
        (
            "root 2 signed by one old root key and one it adds",
            vec![RootEdit::AddKey(Role::Root, public(&added))],
            vec![roots[0].clone(), added.clone()],
        ),
    ];
    for (case, edits, signers) in one_old_key {
        let (bytes, status) = rotate_root(&repo.newest_root, &edits, year, &signers)
            .await
            .unwrap();
        assert!(!status.complete(), "{case}: {status}");
        repo.put("metadata/2.root.json", &bytes).await;
        repo.expect_refused(
            case,
            &[
                "root",
                "Signature threshold of 2 not met for role root (1 valid",
            ],
            "refused",
        )
        .await;
    }
    let (bytes, _) = rotate_root(&repo.newest_root, &[], year, &roots[..1])
        .await
        .unwrap();
    let mut twice: serde_json::Value = parse(&bytes);
    let signatures = twice["signatures"].as_array_mut().unwrap();
    signatures.push(signatures[0].clone());
    repo.put(
        "metadata/2.root.json",
        &serde_json::to_vec_pretty(&twice).unwrap(),
    )
    .await;
    repo.expect_refused(
        "root 2 with one signature twice",
        &["root", "Duplicate key ID"],
        "refused",
    )
    .await;
    let upper = twice["signatures"][1]["keyid"]
        .as_str()
        .unwrap()
        .to_uppercase();
    twice["signatures"][1]["keyid"] = upper.into();
    repo.put(
        "metadata/2.root.json",
        &serde_json::to_vec_pretty(&twice).unwrap(),
    )
    .await;
    repo.expect_refused(
        "root 2 with one signature twice, its key id in upper case",
        &["root", "Duplicate key ID"],
        "refused",
    )
    .await;
    repo.remove("metadata/2.root.json").await;
    check_targets_keys(&mut repo).await;
}

/// The targets half of [`thresholds_count_distinct_listed_keys_of_the_right_type`].
async fn check_targets_keys(repo: &mut Repo) {
    let good_timestamp = repo.get("metadata/timestamp.json").await;
    let stranger = new_key(repo.dir.path(), "stranger");
    serve_evil_targets(repo, 1, &[&stranger]).await;
    let refused = [
        "targets",
        "Signature threshold of 1 not met for role targets (0 valid",
    ];
    repo.expect_refused("targets signed by an unlisted key", &refused, "refused")
        .await;

    // Root 2 lists the targets key's public bytes typed as an ECDSA P-256 key; the
    // publisher signs with its Ed25519 key under the id the root gives it.
    repo.put("metadata/timestamp.json", &good_timestamp).await;
    let targets_key = repo.keys.targets.clone();
    let retyped = retyped_as_ecdsa(&targets_key);
    let retyped_id = hex::encode(retyped.key_id().unwrap());
    publish_root_with_targets_key(repo, retyped.clone()).await;
    let mut targets = repo.current().await.targets.signed;
    let n = repo.highest_targets_version().await + 1;
    targets.version = std::num::NonZeroU64::new(n).unwrap();
    let mut signed = sign(targets, &[&targets_key]).await;
    signed.signatures[0].keyid = retyped.key_id().unwrap();
    repo.serve_targets(&file_bytes(&signed), n).await;
    repo.expect_refused("a targets key of the wrong type", &refused, "refused")
        .await;

    repo.put("metadata/timestamp.json", &good_timestamp).await;
    let root_signers = repo.keys.root[..2].to_vec();
    repo.rotate(
        &[
            RootEdit::AddKey(Role::Targets, public(&targets_key)),
            RootEdit::RemoveKey(Role::Targets, retyped_id),
        ],
        &root_signers,
    )
    .await;
    repo.publish(&[put("b", "vector search")]).await;
    repo.expect_synced("root 3 lists the key with its type")
        .await;

    serve_evil_targets(repo, 2, &[&targets_key]).await;
    repo.sync().await.unwrap();
    assert!(exported(&repo.state_dir).contains_key("evil"), "control");
}

/// The public key of `key` (Ed25519) declared as an ECDSA P-256 key.
fn retyped_as_ecdsa(key: &Path) -> tough::schema::key::Key {
    let public = deltacache::tuf::keys::read_public(key).unwrap();
    let mut json = serde_json::to_value(&public).unwrap();
    json["keytype"] = "ecdsa".into();
    json["scheme"] = "ecdsa-sha2-nistp256".into();
    serde_json::from_value(json).unwrap()
}

/// Publishes the next root, with `key` as the only targets key, signed by two root keys.
async fn publish_root_with_targets_key(repo: &mut Repo, key: tough::schema::key::Key) {
    use deltacache::tuf::root::{RoleSpec, build_root, read_root, role_specs, root_bytes};
    let previous = read_root(&repo.newest_root).unwrap();
    let mut roles = role_specs(&previous.signed).unwrap();
    for (role, spec) in &mut roles {
        if *role == Role::Targets {
            *spec = RoleSpec {
                keys: vec![key.clone()],
                threshold: 1,
            };
        }
    }
    let root = build_root(previous.signed.version.get() + 1, days(365), &roles).unwrap();
    let signers: Vec<_> = repo.keys.root[..2]
        .iter()
        .map(|k| deltacache::tuf::keys::FileKey::load(k).unwrap().0)
        .collect();
    let signed = deltacache::tuf::root::sign_root(root, Some(&previous.signed), &[], &signers)
        .await
        .unwrap();
    repo.publish_root(&root_bytes(&signed).unwrap()).await;
}

// ---------------------------------------------------------------------------------------
// 8. Key compromise drills

/// The publisher's targets key leaks. Root 2, signed by 2 of root 1's 3 root keys, replaces
/// it; an instance whose image holds root 1 applies deltas signed by the new key and
/// refuses fresh targets signed by the old one (the attacker also holds the online key),
/// through the binary, with no new image.
#[tokio::test(flavor = "multi_thread")]
async fn a_leaked_targets_key_is_replaced_by_root_2_without_a_new_image() {
    let mut repo = Repo::new(Backend::File).await;
    repo.publish(&[put("a", "kafka crema")]).await;
    expect_binary_synced(&repo, "first delta");
    let leaked = repo.keys.targets.clone();

    let replacement = new_key(repo.dir.path(), "targets-2");
    let root_signers = vec![repo.keys.root[0].clone(), repo.keys.root[2].clone()];
    repo.rotate(
        &[
            RootEdit::RemoveKey(Role::Targets, leaked.display().to_string()),
            RootEdit::AddKey(Role::Targets, public(&replacement)),
        ],
        &root_signers,
    )
    .await;
    repo.signing = vec![replacement, repo.keys.online.clone()];
    repo.publish(&[put("b", "vector search")]).await;
    expect_binary_synced(&repo, "a delta signed by the new targets key");

    let good_timestamp = repo.get("metadata/timestamp.json").await;
    serve_evil_targets(&repo, 2, &[&leaked]).await;
    expect_binary_refused(
        &repo,
        "fresh targets signed by the leaked key",
        &[
            "targets",
            "Signature threshold of 1 not met for role targets (0 valid",
        ],
    );

    repo.put("metadata/timestamp.json", &good_timestamp).await;
    repo.publish(&[put("c", "espresso")]).await;
    expect_binary_synced(&repo, "the good repository");
}

/// The online key (snapshot and timestamp) leaks. Root 2 replaces it; the publisher signs
/// with the new key and the instance (image: root 1) follows; a fresh timestamp, and a
/// snapshot, signed by the leaked key are refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_leaked_online_key_is_replaced_by_root_2_without_a_new_image() {
    let mut repo = Repo::new(Backend::File).await;
    repo.publish(&[put("a", "kafka crema")]).await;
    repo.expect_synced("first delta").await;
    let leaked = repo.keys.online.clone();
    let replacement = new_key(repo.dir.path(), "online-2");
    let old = leaked.display().to_string();
    let root_signers = vec![repo.keys.root[1].clone(), repo.keys.root[2].clone()];
    repo.rotate(
        &[
            RootEdit::AddKey(Role::Snapshot, public(&replacement)),
            RootEdit::AddKey(Role::Timestamp, public(&replacement)),
            RootEdit::RemoveKey(Role::Snapshot, old.clone()),
            RootEdit::RemoveKey(Role::Timestamp, old),
        ],
        &root_signers,
    )
    .await;
    repo.signing = vec![repo.keys.targets.clone(), replacement.clone()];
    repo.publish(&[put("b", "vector search")]).await;
    repo.expect_synced("a delta signed by the new online key")
        .await;

    let good_timestamp = repo.get("metadata/timestamp.json").await;
    let [_, (_, snapshot), _] = repo.current_files().await;
    let mut fresh = parse::<Signed<Snapshot>>(&snapshot).signed;
    fresh.version = std::num::NonZeroU64::new(repo.highest_snapshot_version().await + 1).unwrap();
    repo.serve_snapshot(fresh.clone(), &[&leaked], &[&leaked])
        .await;
    repo.expect_refused(
        "a timestamp signed by the leaked key",
        &[
            "timestamp",
            "Signature threshold of 1 not met for role timestamp (0 valid",
        ],
        "refused",
    )
    .await;
    repo.serve_snapshot(fresh, &[&leaked], &[&replacement])
        .await;
    repo.expect_refused(
        "a snapshot signed by the leaked key",
        &[
            "snapshot",
            "Signature threshold of 1 not met for role snapshot (0 valid",
        ],
        "refused",
    )
    .await;

    repo.put("metadata/timestamp.json", &good_timestamp).await;
    repo.publish(&[put("c", "espresso")]).await;
    repo.expect_synced("the good repository").await;
}

// ---------------------------------------------------------------------------------------
// 6. Endless data

/// `bytes` (a metadata file) followed by spaces up to `len` bytes: still JSON that parses
/// and verifies to the same thing, so only a size cap can refuse it.
fn padded(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out.resize(len, b' ');
    out
}

/// Metadata past the client's caps (`ClientLimits` defaults): timestamp, root 2 and a
/// snapshot past `max_metadata_bytes`, targets metadata past `max_targets_metadata_bytes`
/// (the snapshot and targets named, with their padded length and hash, by metadata the
/// online key signs: the attacker holds it), and a delta with a megabyte appended. The
/// controls: timestamp and root 2 padded to exactly the cap are taken.
#[tokio::test(flavor = "multi_thread")]
async fn metadata_and_targets_beyond_the_caps_are_refused() {
    let limits = deltacache::tuf::client::ClientLimits::default();
    let cap = limits.max_metadata_bytes as usize;
    let cap_text = limits.max_metadata_bytes.to_string();
    let mut repo = Repo::new(Backend::File).await;
    repo.publish(&[put("a", "kafka crema")]).await;
    repo.expect_synced("first delta").await;
    repo.publish(&[put("b", "vector search")]).await;
    let [(_, good_timestamp), (_, snapshot), (_, targets)] = repo.current_files().await;
    let online = repo.keys.online.clone();

    repo.put("metadata/timestamp.json", &padded(&good_timestamp, cap + 1))
        .await;
    repo.expect_refused(
        "timestamp past the cap",
        &["timestamp.json", &cap_text],
        "refused",
    )
    .await;
    repo.put("metadata/timestamp.json", &good_timestamp).await;

    let year = std::time::Duration::from_secs(365 * 24 * 3600);
    let (root_2, _) =
        deltacache::tuf::ceremony::rotate_root(&repo.newest_root, &[], year, &repo.keys.root[..2])
            .await
            .unwrap();
    repo.put("metadata/2.root.json", &padded(&root_2, cap + 1))
        .await;
    repo.expect_refused(
        "root 2 past the cap",
        &["2.root.json", &cap_text],
        "refused",
    )
    .await;
    repo.remove("metadata/2.root.json").await;

    let mut big = parse::<Signed<Snapshot>>(&snapshot).signed;
    let n = repo.highest_snapshot_version().await + 1;
    big.version = std::num::NonZeroU64::new(n).unwrap();
    let big = padded(&file_bytes(&sign(big, &[&online]).await), cap + 1);
    repo.put(&format!("metadata/{n}.snapshot.json"), &big).await;
    let newer = repo.current_timestamp_version().await + 1;
    let timestamp = timestamp_naming(&big, n, newer, days(1));
    repo.put(
        "metadata/timestamp.json",
        &file_bytes(&sign(timestamp, &[&online]).await),
    )
    .await;
    repo.expect_refused(
        "snapshot past the cap",
        &[&format!("{n}.snapshot.json"), &cap_text],
        "refused",
    )
    .await;
    repo.put("metadata/timestamp.json", &good_timestamp).await;

    // The targets keep their version (and signature): the padded file replaces the one
    // the store holds under that version, and a new snapshot names its padded length.
    let targets_cap = limits.max_targets_metadata_bytes as usize;
    let version = parse::<Signed<Targets>>(&targets).signed.version.get();
    repo.serve_targets(&padded(&targets, targets_cap + 1), version)
        .await;
    repo.expect_refused(
        "targets metadata past the cap",
        &[
            &format!("{version}.targets.json"),
            &limits.max_targets_metadata_bytes.to_string(),
        ],
        "refused",
    )
    .await;
    repo.put(&format!("metadata/{version}.targets.json"), &targets)
        .await;
    repo.put("metadata/timestamp.json", &good_timestamp).await;
    check_endless_delta_and_controls(&repo, &good_timestamp, &root_2, cap).await;
}

/// The rest of [`metadata_and_targets_beyond_the_caps_are_refused`]: the delta with a
/// megabyte appended, then the controls at exactly the cap.
async fn check_endless_delta_and_controls(
    repo: &Repo,
    good_timestamp: &[u8],
    root_2: &[u8],
    cap: usize,
) {
    let object = repo.delta_object(2).await;
    let good = repo.get(&object).await;
    let mut endless = good.clone();
    endless.resize(good.len() + (1 << 20), b'x');
    repo.put(&object, &endless).await;
    repo.expect_refused(
        "a delta with a megabyte appended",
        &["000000000002.delta", "Maximum size"],
        "refused",
    )
    .await;
    repo.put(&object, &good).await;

    repo.put("metadata/2.root.json", &padded(root_2, cap)).await;
    repo.put("metadata/timestamp.json", &padded(good_timestamp, cap))
        .await;
    repo.expect_synced("root 2 and timestamp padded to exactly the cap")
        .await;
}

// ---------------------------------------------------------------------------------------
// 9. Bit flips and truncations

/// An instance kept open across attempts (the bundle and state dir opened once), syncing
/// through the same `Syncer::sync` as `sync_once` and the daemon's follower.
struct Instance {
    local: deltacache::state::LocalState,
    syncer: deltacache::sync::Syncer,
}

impl Instance {
    async fn open(repo: &Repo) -> Instance {
        let (bundle, state) = (repo.bundle.clone(), repo.state_dir.clone());
        let local = tokio::task::spawn_blocking(move || {
            deltacache::state::LocalState::open(&bundle, &state)
        })
        .await
        .unwrap()
        .unwrap();
        let syncer =
            deltacache::sync::Syncer::open(repo.options(), &local.bundle, local.models.clone())
                .await
                .unwrap();
        Instance { local, syncer }
    }

    async fn sync(&self) -> anyhow::Result<deltacache::sync::SyncOutcome> {
        let cancel = deltacache::state::Cancel::default();
        self.syncer
            .sync(&self.local.state, &self.local.version, &cancel)
            .await
    }
}

/// Copies a directory tree.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Whether `mutated` means to tough exactly what `original` means: it parses to an equal
/// `Signed<T>` (tough compares hex by its bytes and times by their instant, does not read
/// the value of `signed._type`, and checks signatures over its own canonical serialisation
/// of what it parsed, not over the bytes received). If so, where the JSON differs, for the
/// report: `whitespace` when only the bytes between values do.
fn same_meaning<T>(original: &[u8], mutated: &[u8]) -> Option<String>
where
    T: serde::de::DeserializeOwned + PartialEq,
{
    let parsed = |bytes: &[u8]| serde_json::from_slice::<Signed<T>>(bytes).ok();
    if parsed(original)? != parsed(mutated)? {
        return None;
    }
    let json = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).ok();
    Some(first_difference(&json(original)?, &json(mutated)?, "").unwrap_or("whitespace".into()))
}

/// The path of the first place two JSON values differ (array indexes left out), if any.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(a), Value::Object(b)) if a.len() == b.len() => {
            a.iter().find_map(|(k, v)| match b.get(k) {
                Some(w) => first_difference(v, w, &format!("{path}.{k}")),
                None => Some(format!("{path}.{k} (key)")),
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .find_map(|(v, w)| first_difference(v, w, &format!("{path}[]"))),
        _ if a == b => None,
        _ => Some(path.trim_start_matches('.').to_owned()),
    }
}

/// What the mutations of one file did.
#[derive(Debug, Default)]
struct Tally {
    /// Mutations tried.
    tried: usize,
    /// Refused.
    refused: usize,
    /// Accepted, meaning the same as the original (and serving the same), by where the
    /// JSON differs.
    accepted: std::collections::BTreeMap<String, usize>,
}

/// The mutations of `bytes` tried: single-bit flips at up to `flips` positions and
/// truncations to up to `cuts` lengths, spread evenly (an odd stride, so every bit of a
/// byte is reached); every one when the file is small enough.
fn mutations(bytes: &[u8], flips: usize, cuts: usize) -> Vec<Vec<u8>> {
    let n_bits = bytes.len() * 8;
    let stride = n_bits.div_ceil(flips).max(1) | 1;
    let mut out = Vec::new();
    for bit in (0..n_bits).step_by(stride) {
        let mut flipped = bytes.to_vec();
        flipped[bit / 8] ^= 1 << (bit % 8);
        out.push(flipped);
    }
    let stride = bytes.len().div_ceil(cuts).max(1);
    for len in (0..bytes.len()).rev().step_by(stride) {
        out.push(bytes[..len].to_vec());
    }
    out
}

/// Bits flipped per file. An attempt takes about 12 ms of CPU in a debug build (most of it
/// the kernel creating and removing the scratch files of each sync), so every bit of every
/// file (some 46,000) would take minutes; an odd stride spreads the sample over every
/// field and every bit position of a byte.
const FLIPS_PER_FILE: usize = 300;
/// Truncations per file, from one byte short down to empty.
const CUTS_PER_FILE: usize = 40;

/// Every mutation tried of root 2, the timestamp, snapshot and targets, and of one delta,
/// against an instance one delta behind: refused, leaving the state dir byte-identical;
/// or (only for the two files verified by signature over canonical JSON, never for the
/// snapshot, targets or delta, which are pinned by hash) accepted when it means exactly
/// the same, serving exactly what the good repository serves.
#[tokio::test(flavor = "multi_thread")]
async fn bit_flips_and_truncations_of_metadata_and_a_delta_are_refused() {
    let started = std::time::Instant::now();
    let mut repo = Repo::new(Backend::File).await;
    repo.publish(&[put("a", "kafka crema")]).await;
    repo.expect_synced("first delta").await;
    let root_signers = repo.keys.root[..2].to_vec();
    repo.rotate(&[], &root_signers).await;
    repo.publish(&[put("b", "vector search")]).await;
    let pristine = repo.dir.path().join("pristine-state");
    copy_dir(&repo.state_dir, &pristine);
    let [(timestamp_name, _), (snapshot_name, _), (targets_name, _)] = repo.current_files().await;
    let files = [
        ("root", "metadata/2.root.json".to_owned()),
        ("timestamp", timestamp_name),
        ("snapshot", snapshot_name),
        ("targets", targets_name),
        ("delta", repo.delta_object(2).await),
    ];
    let store_dir = repo.dir.path().join("store");
    let mut instance = Instance::open(&repo).await;
    let before = snapshot(&repo.state_dir);
    for (class, name) in files {
        let path = store_dir.join(&name);
        let good = std::fs::read(&path).unwrap();
        let mut tally = Tally::default();
        for mutated in mutations(&good, FLIPS_PER_FILE, CUTS_PER_FILE) {
            tally.tried += 1;
            std::fs::write(&path, &mutated).unwrap();
            match instance.sync().await {
                Err(_) => {
                    tally.refused += 1;
                    assert!(
                        snapshot(&repo.state_dir) == before,
                        "{class}: a refusal changed the state dir"
                    );
                }
                Ok(outcome) => {
                    assert!(
                        class != "snapshot" && class != "targets" && class != "delta",
                        "{class}: a mutation pinned by hash was accepted ({outcome:?})"
                    );
                    let same = match class {
                        "root" => same_meaning::<tough::schema::Root>(&good, &mutated),
                        _ => same_meaning::<tough::schema::Timestamp>(&good, &mutated),
                    };
                    let Some(why) = same else {
                        panic!(
                            "{class}: accepted a mutation that means something else: {}",
                            String::from_utf8_lossy(&mutated)
                        );
                    };
                    drop(outcome);
                    assert_eq!(exported(&repo.state_dir), repo.model, "{class}");
                    *tally.accepted.entry(why).or_default() += 1;
                    drop(instance);
                    std::fs::remove_dir_all(&repo.state_dir).unwrap();
                    copy_dir(&pristine, &repo.state_dir);
                    instance = Instance::open(&repo).await;
                }
            }
        }
        std::fs::write(&path, &good).unwrap();
        println!(
            "{class} ({name}, {} bytes): tried {}, refused {}, accepted as identical {:?}",
            good.len(),
            tally.tried,
            tally.refused,
            tally.accepted
        );
        assert_eq!(
            tally.tried,
            tally.refused + tally.accepted.values().sum::<usize>()
        );
    }
    drop(instance);
    repo.expect_synced("the good repository").await;
    println!(
        "bit flips and truncations: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
