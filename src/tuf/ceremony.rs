//! Making and signing root files, as operators do it offline: the first root
//! ([`init_root`]), a rotation to the next version ([`rotate_root`]), and adding signatures
//! one key holder at a time ([`sign_root_file`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tough::schema::key::Key;
use tough::schema::{Root, Signed};

use super::Role;
use super::keys::{FileKey, key_id, read_public};
use super::root::{
    ROLES, RoleSpec, build_root, check_root, read_root, role_specs, role_threshold, root_bytes,
    sign_root,
};

/// A change to a root in a rotation.
#[derive(Debug, Clone)]
pub enum RootEdit {
    /// Add a key (a public key file, or a secret one) to a role.
    AddKey(Role, PathBuf),
    /// Remove a key, by id or by key file, from a role.
    RemoveKey(Role, String),
    /// Set a role's threshold.
    Threshold(Role, u64),
}

/// How far a root is signed: how many valid signatures it carries against how many it needs,
/// from its own root keys and (for N+1) from the previous root's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningStatus {
    /// The root's version.
    pub version: u64,
    /// Valid signatures by its own root keys, and the threshold.
    pub own: (usize, u64),
    /// Valid signatures by the previous root's root keys, and that root's threshold.
    pub previous: Option<(usize, u64)>,
}

impl SigningStatus {
    /// Whether clients will accept it.
    pub fn complete(&self) -> bool {
        self.own.0 as u64 >= self.own.1
            && self.previous.is_none_or(|(have, need)| have as u64 >= need)
    }
}

impl std::fmt::Display for SigningStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "root version {}: {} of {} signatures by its own root keys",
            self.version, self.own.0, self.own.1
        )?;
        if let Some((have, need)) = self.previous {
            write!(
                f,
                ", {have} of {need} by version {}'s root keys",
                self.version - 1
            )?;
        }
        if self.complete() {
            f.write_str(": complete")
        } else {
            f.write_str(": more key holders must sign it (`deltacache root sign`)")
        }
    }
}

/// Counts the valid signatures on `signed` by the root keys of `by`.
fn count_valid(signed: &Signed<Root>, by: &Root) -> usize {
    let Some(role) = by.roles.get(&tough::schema::RoleType::Root) else {
        return 0;
    };
    signed
        .signatures
        .iter()
        .filter(|signature| role.keyids.contains(&signature.keyid))
        .filter(|signature| {
            // Each signature alone against a threshold of one: valid or not.
            let single = Signed {
                signed: signed.signed.clone(),
                signatures: vec![(*signature).clone()],
            };
            let mut check = by.clone();
            if let Some(role) = check.roles.get_mut(&tough::schema::RoleType::Root) {
                role.threshold = std::num::NonZeroU64::MIN;
            }
            check.verify_role(&single).is_ok()
        })
        .count()
}

/// The signing status of `signed` (rotating from `previous`, if given).
pub fn status(signed: &Signed<Root>, previous: Option<&Root>) -> SigningStatus {
    SigningStatus {
        version: signed.signed.version.get(),
        own: (
            count_valid(signed, &signed.signed),
            role_threshold(&signed.signed, Role::Root),
        ),
        previous: previous.map(|p| (count_valid(signed, p), role_threshold(p, Role::Root))),
    }
}

fn keys_of(paths: &[PathBuf]) -> anyhow::Result<Vec<Key>> {
    paths.iter().map(|p| read_public(p)).collect()
}

fn signers(paths: &[PathBuf]) -> anyhow::Result<Vec<Box<dyn tough::key_source::KeySource>>> {
    paths
        .iter()
        .map(|p| FileKey::load(p).map(|(key, _)| key))
        .collect()
}

/// Key files and thresholds of the first root.
#[derive(Debug, Clone)]
pub struct RootKeys {
    /// Root keys (offline) and how many must sign a root.
    pub root: (Vec<PathBuf>, u64),
    /// The publisher's targets keys and threshold.
    pub targets: (Vec<PathBuf>, u64),
    /// The online keys that sign snapshot and timestamp metadata.
    pub online: (Vec<PathBuf>, u64),
}

/// Makes root version 1, signed by those of `signing_keys` that are its root keys.
pub async fn init_root(
    keys: &RootKeys,
    validity: std::time::Duration,
    signing_keys: &[PathBuf],
) -> anyhow::Result<(Vec<u8>, SigningStatus)> {
    let spec = |(paths, threshold): &(Vec<PathBuf>, u64)| -> anyhow::Result<RoleSpec> {
        Ok(RoleSpec {
            keys: keys_of(paths)?,
            threshold: *threshold,
        })
    };
    let online = spec(&keys.online)?;
    let root = build_root(
        1,
        Role::Root.expires_in(validity)?,
        &[
            (Role::Root, spec(&keys.root)?),
            (Role::Targets, spec(&keys.targets)?),
            (Role::Snapshot, online.clone()),
            (Role::Timestamp, online),
        ],
    )?;
    let signed = sign_root(root, None, &[], &signers(signing_keys)?).await?;
    let status = status(&signed, None);
    Ok((root_bytes(&signed)?, status))
}

/// Makes root N+1 from root N (`previous`) with `edits` applied, signed by those of
/// `signing_keys` that are root keys of either.
pub async fn rotate_root(
    previous: &Path,
    edits: &[RootEdit],
    validity: std::time::Duration,
    signing_keys: &[PathBuf],
) -> anyhow::Result<(Vec<u8>, SigningStatus)> {
    let old = read_root(previous)?;
    let mut roles = role_specs(&old.signed)?;
    for edit in edits {
        apply_edit(&mut roles, edit)?;
    }
    let root = build_root(
        old.signed.version.get() + 1,
        Role::Root.expires_in(validity)?,
        &roles,
    )?;
    let signed = sign_root(root, Some(&old.signed), &[], &signers(signing_keys)?).await?;
    let status = status(&signed, Some(&old.signed));
    Ok((root_bytes(&signed)?, status))
}

fn apply_edit(roles: &mut [(Role, RoleSpec)], edit: &RootEdit) -> anyhow::Result<()> {
    let find = |roles: &mut [(Role, RoleSpec)], role: Role| -> usize {
        roles
            .iter()
            .position(|(r, _)| *r == role)
            .expect("every role is listed")
    };
    match edit {
        RootEdit::AddKey(role, path) => {
            let key = read_public(path)?;
            let idx = find(roles, *role);
            roles[idx].1.keys.push(key);
        }
        RootEdit::RemoveKey(role, which) => {
            let id = match std::path::Path::new(which).exists() {
                true => key_id(&read_public(Path::new(which))?)?,
                false => which.clone(),
            };
            let idx = find(roles, *role);
            let before = roles[idx].1.keys.len();
            roles[idx]
                .1
                .keys
                .retain(|k| key_id(k).map(|k| k != id).unwrap_or(true));
            if roles[idx].1.keys.len() == before {
                bail!("the {} role has no key {id} to remove", role.name());
            }
            let n = roles[idx].1.keys.len() as u64;
            if roles[idx].1.threshold > n {
                roles[idx].1.threshold = n.max(1);
            }
        }
        RootEdit::Threshold(role, threshold) => {
            let idx = find(roles, *role);
            roles[idx].1.threshold = *threshold;
        }
    }
    Ok(())
}

/// Adds the signatures of `signing_keys` to the root file at `path` (in place), checking it
/// against `previous` (root N, for root N+1) when given.
pub async fn sign_root_file(
    path: &Path,
    previous: Option<&Path>,
    signing_keys: &[PathBuf],
) -> anyhow::Result<SigningStatus> {
    let signed = read_root(path)?;
    let previous = previous.map(read_root).transpose()?;
    if let Some(previous) = &previous
        && signed.signed.version.get() != previous.signed.version.get() + 1
    {
        bail!(
            "{} is root version {}, which does not follow --previous (version {})",
            path.display(),
            signed.signed.version,
            previous.signed.version
        );
    }
    let resigned = sign_root(
        signed.signed.clone(),
        previous.as_ref().map(|p| &p.signed),
        &signed.signatures,
        &signers(signing_keys)?,
    )
    .await?;
    crate::durable::write_atomically(path, &root_bytes(&resigned)?)?;
    Ok(status(&resigned, previous.as_ref().map(|p| &p.signed)))
}

/// Checks a root file as a client would (its own threshold, and `previous`'s for N+1).
pub fn check_root_file(path: &Path, previous: Option<&Path>) -> anyhow::Result<SigningStatus> {
    let signed = read_root(path)?;
    let previous = previous.map(read_root).transpose()?;
    check_root(&signed, previous.as_ref().map(|p| &p.signed))
        .with_context(|| format!("{}", path.display()))?;
    Ok(status(&signed, previous.as_ref().map(|p| &p.signed)))
}

/// The role names a flag takes: `root`, `targets`, `snapshot`, `timestamp`, or `online` for
/// both snapshot and timestamp.
pub fn parse_roles(name: &str) -> anyhow::Result<Vec<Role>> {
    Ok(match name {
        "online" => vec![Role::Snapshot, Role::Timestamp],
        other => vec![
            ROLES
                .iter()
                .copied()
                .find(|r| r.name() == other)
                .with_context(|| {
                    format!(
                        "unknown role {other:?}: use root, targets, snapshot, timestamp or online"
                    )
                })?,
        ],
    })
}
