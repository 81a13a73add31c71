//! Root metadata: the offline ceremony (as `tuftool root` does it). A root lists the keys of
//! every role and each role's threshold; root N+1 counts only when signed by a threshold of
//! root N's root keys and of its own.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::Path;

use anyhow::{Context, bail};
use aws_lc_rs::rand::SystemRandom;
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Signature, Signed};

use super::keys::key_id;
use super::{Role, SPEC_VERSION, whole_seconds};

/// The roles a root names, in the order they are listed.
pub const ROLES: [Role; 4] = [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp];

fn role_type(role: Role) -> RoleType {
    match role {
        Role::Root => RoleType::Root,
        Role::Targets => RoleType::Targets,
        Role::Snapshot => RoleType::Snapshot,
        Role::Timestamp => RoleType::Timestamp,
    }
}

/// Which keys each role has, and how many must sign.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    /// The role's public keys.
    pub keys: Vec<Key>,
    /// How many of them must sign.
    pub threshold: u64,
}

/// An unsigned root, built from each role's keys and threshold (`consistent_snapshot` on).
pub fn build_root(
    version: u64,
    expires: jiff::Timestamp,
    roles: &[(Role, RoleSpec)],
) -> anyhow::Result<Root> {
    let mut keys: HashMap<Decoded<Hex>, Key> = HashMap::new();
    let mut role_keys = HashMap::new();
    for (role, spec) in roles {
        let mut ids = Vec::new();
        for key in &spec.keys {
            let id = key.key_id().context("compute a key id")?;
            keys.insert(id.clone(), key.clone());
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        check_threshold(*role, spec.threshold, ids.len())?;
        role_keys.insert(
            role_type(*role),
            RoleKeys {
                keyids: ids,
                threshold: NonZeroU64::new(spec.threshold).context("threshold 0")?,
                _extra: HashMap::new(),
            },
        );
    }
    for role in ROLES {
        if !role_keys.contains_key(&role_type(role)) {
            bail!("the root names no key for the {} role", role.name());
        }
    }
    Ok(Root {
        spec_version: SPEC_VERSION.to_owned(),
        consistent_snapshot: true,
        version: NonZeroU64::new(version).context("root version 0")?,
        expires: whole_seconds(expires),
        keys,
        roles: role_keys,
        _extra: HashMap::new(),
    })
}

fn check_threshold(role: Role, threshold: u64, n_keys: usize) -> anyhow::Result<()> {
    if threshold == 0 || threshold as usize > n_keys {
        bail!(
            "the {} role's threshold {threshold} is out of range: it has {n_keys} keys (give 1..={n_keys})",
            role.name()
        );
    }
    Ok(())
}

/// Each role's keys and threshold as `root` lists them.
pub fn role_specs(root: &Root) -> anyhow::Result<Vec<(Role, RoleSpec)>> {
    ROLES
        .iter()
        .map(|role| {
            let listed = root
                .roles
                .get(&role_type(*role))
                .with_context(|| format!("the root names no {} role", role.name()))?;
            let keys = listed
                .keyids
                .iter()
                .map(|id| {
                    root.keys.get(id).cloned().with_context(|| {
                        format!(
                            "the root lists key {} but does not hold it",
                            hex::encode(id)
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok((
                *role,
                RoleSpec {
                    keys,
                    threshold: listed.threshold.get(),
                },
            ))
        })
        .collect()
}

/// The ids of the keys `root` lists for `role`.
pub fn role_key_ids(root: &Root, role: Role) -> Vec<String> {
    root.roles
        .get(&role_type(role))
        .map(|keys| keys.keyids.iter().map(hex::encode).collect())
        .unwrap_or_default()
}

/// The threshold `root` sets for `role`.
pub fn role_threshold(root: &Root, role: Role) -> u64 {
    root.roles
        .get(&role_type(role))
        .map_or(0, |keys| keys.threshold.get())
}

/// Signs `root` with those of `keys` that are root keys of `root` itself or, for a rotation,
/// of `previous`; `existing` signatures are kept (keys held by different people sign in
/// turn). Each key signs once: a key id appearing twice would make the whole root
/// unreadable to tough, not count twice.
pub async fn sign_root(
    root: Root,
    previous: Option<&Root>,
    existing: &[Signature],
    keys: &[Box<dyn KeySource>],
) -> anyhow::Result<Signed<Root>> {
    let rng = SystemRandom::new();
    let mut signatures: Vec<Signature> = existing.to_vec();
    let holders: Vec<&Root> = std::iter::once(&root).chain(previous).collect();
    for holder in holders {
        // `SignedRole::new` signs with the keys whose ids are in the holder's root role, over
        // the canonical JSON of `root`.
        match SignedRole::new(root.clone(), &KeyHolder::Root(holder.clone()), keys, &rng).await {
            Ok(signed) => {
                for signature in &signed.signed().signatures {
                    if !signatures.iter().any(|s| s.keyid == signature.keyid) {
                        signatures.push(signature.clone());
                    }
                }
            }
            Err(tough::error::Error::KeysNotFoundInRoot { .. }) => {}
            Err(error) => return Err(anyhow::Error::new(error).context("sign the root")),
        }
    }
    if signatures.is_empty() {
        bail!(
            "none of the signing keys is a root key of this root{}",
            if previous.is_some() {
                " or of the previous one"
            } else {
                ""
            }
        );
    }
    Ok(Signed {
        signed: root,
        signatures,
    })
}

/// The bytes of a signed root file (as tough writes metadata).
pub fn root_bytes(signed: &Signed<Root>) -> anyhow::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(signed)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Parses a root file.
pub fn parse_root(bytes: &[u8], what: &str) -> anyhow::Result<Signed<Root>> {
    serde_json::from_slice(bytes).with_context(|| format!("{what} is not TUF root metadata"))
}

/// Reads a root file.
pub fn read_root(path: &Path) -> anyhow::Result<Signed<Root>> {
    let bytes = std::fs::read(path).with_context(|| format!("read root {}", path.display()))?;
    parse_root(&bytes, &path.display().to_string())
}

/// What a client checks of a root: a threshold of `previous`'s root keys (for N+1) and of its
/// own. The message names how many valid signatures were found and how many are needed.
pub fn check_root(signed: &Signed<Root>, previous: Option<&Root>) -> anyhow::Result<()> {
    if let Some(previous) = previous {
        if signed.signed.version.get() != previous.version.get() + 1 {
            bail!(
                "root version {} does not follow version {}",
                signed.signed.version,
                previous.version
            );
        }
        previous.verify_role(signed).with_context(|| {
            format!(
                "root {} is not signed by {} of root {}'s root keys",
                signed.signed.version,
                role_threshold(previous, Role::Root),
                previous.version
            )
        })?;
    }
    signed.signed.verify_role(signed).with_context(|| {
        format!(
            "root {} is not signed by {} of its own root keys",
            signed.signed.version,
            role_threshold(&signed.signed, Role::Root)
        )
    })?;
    Ok(())
}

/// The ids of the keys that signed `signed`, for messages.
pub fn signer_ids(signed: &Signed<Root>) -> Vec<String> {
    signed
        .signatures
        .iter()
        .map(|s| hex::encode(&s.keyid))
        .collect()
}

/// A key's id, for messages (`?` when it cannot be computed).
pub fn describe_key(key: &Key) -> String {
    key_id(key).unwrap_or_else(|_| "?".into())
}
