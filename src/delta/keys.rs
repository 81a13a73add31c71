//! Ed25519 keys: the publisher's secret key file, public key files, and the trusted-keys
//! file instances verify against.
//!
//! Files:
//! - secret key: `deltacache-ed25519-secret-v1 <64 hex digits>` on one line, mode 0600;
//!   refused when readable by group or others.
//! - public key (`KEYFILE.pub`): `deltacache-ed25519 <64 hex digits> <key id>` on one line.
//! - trusted keys: public key lines concatenated; blank lines and `#` comments are ignored.
//!   Rotation is publishing with a new key while instances trust both.
//!
//! A key id is the first 8 bytes of sha256 of the public key, in hex. Signatures are checked
//! with `verify_strict`, and weak (small-order) public keys are refused when loaded: plain
//! `verify` accepts an all-zero key with an all-zero signature.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

const SECRET_PREFIX: &str = "deltacache-ed25519-secret-v1";
const PUBLIC_PREFIX: &str = "deltacache-ed25519";

/// The 8-byte identifier of a public key, carried in every signed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of a public key.
    pub fn of(key: &VerifyingKey) -> KeyId {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A publisher's secret key.
pub struct PublisherKey {
    /// The signing key.
    signing: SigningKey,
    /// Its id.
    id: KeyId,
}

impl std::fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "PublisherKey({})", self.id)
    }
}

impl PublisherKey {
    /// Makes a new random key.
    pub fn generate() -> anyhow::Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("read random bytes for a new key")?;
        Ok(Self::from_seed(seed))
    }

    /// A key from its 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let id = KeyId::of(&signing.verifying_key());
        PublisherKey { signing, id }
    }

    /// Loads a secret key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = crate::secret_file::read_private(path, "secret key")?;
        let mut fields = text.split_whitespace();
        let (Some(SECRET_PREFIX), Some(hex_seed), None) =
            (fields.next(), fields.next(), fields.next())
        else {
            bail!(
                "{} is not a deltacache secret key (expected `{SECRET_PREFIX} <hex>`; make one with `deltacache keygen`)",
                path.display()
            );
        };
        let seed: [u8; 32] = hex::decode(hex_seed)
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| format!("{}: the key is not 64 hex digits", path.display()))?;
        Ok(Self::from_seed(seed))
    }

    /// Writes the key to `path` (mode 0600, never overwriting) and its public half to
    /// `path.pub`. Returns the public key file's path.
    pub fn save(&self, path: &Path) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        let pub_path = public_path(path);
        for existing in [path, pub_path.as_path()] {
            if existing.exists() {
                bail!(
                    "{} already exists: keygen never overwrites a key; choose another --out",
                    existing.display()
                );
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("create secret key {}", path.display()))?;
        writeln!(
            file,
            "{SECRET_PREFIX} {}",
            hex::encode(self.signing.to_bytes())
        )
        .and_then(|_| file.sync_all())
        .with_context(|| format!("write secret key {}", path.display()))?;
        let mut public = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&pub_path)
            .with_context(|| format!("create public key {}", pub_path.display()))?;
        writeln!(public, "{}", self.public_line())
            .and_then(|_| public.sync_all())
            .with_context(|| format!("write public key {}", pub_path.display()))?;
        Ok(pub_path)
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The line of a `.pub` file for this key.
    pub fn public_line(&self) -> String {
        format!(
            "{PUBLIC_PREFIX} {} {}",
            hex::encode(self.verifying_key().as_bytes()),
            self.id
        )
    }

    /// Signs a message.
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.signing.sign(message)
    }
}

/// The `.pub` path beside a secret key path.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// The public keys an instance trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    /// Keys with their ids.
    keys: Vec<(KeyId, VerifyingKey)>,
}

impl TrustedKeys {
    /// Loads a trusted-keys file (one or more `.pub` lines).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read trusted keys {}", path.display()))?;
        let keys =
            Self::parse(&text).with_context(|| format!("load trusted keys {}", path.display()))?;
        if keys.keys.is_empty() {
            bail!(
                "trusted keys {} holds no key: add the `.pub` line that `deltacache keygen` wrote",
                path.display()
            );
        }
        Ok(keys)
    }

    /// Parses trusted-key lines. Weak keys and ids that do not match their keys are refused.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut keys = TrustedKeys::default();
        for (line_idx, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line_no = line_idx + 1;
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (prefix, hex_key, id) = match fields.as_slice() {
                [prefix, hex_key, id, ..] => (*prefix, *hex_key, Some(*id)),
                [prefix, hex_key] => (*prefix, *hex_key, None),
                _ => bail!("line {line_no}: expected `{PUBLIC_PREFIX} <hex key> <key id>`"),
            };
            if prefix != PUBLIC_PREFIX {
                bail!(
                    "line {line_no}: expected `{PUBLIC_PREFIX} <hex key> <key id>`, found {prefix:?}"
                );
            }
            let bytes: [u8; 32] = hex::decode(hex_key)
                .ok()
                .and_then(|b| b.try_into().ok())
                .with_context(|| format!("line {line_no}: the public key is not 64 hex digits"))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| anyhow::anyhow!("line {line_no}: not a valid Ed25519 public key"))?;
            if key.is_weak() {
                bail!(
                    "line {line_no}: weak public key {hex_key} (a small-order point that verifies forged signatures): remove it"
                );
            }
            let key_id = KeyId::of(&key);
            if let Some(id) = id
                && id != key_id.to_string()
            {
                bail!("line {line_no}: key id {id} does not match the key (its id is {key_id})");
            }
            keys.add(key);
        }
        Ok(keys)
    }

    /// Adds a key (ignoring duplicates).
    pub fn add(&mut self, key: VerifyingKey) {
        let id = KeyId::of(&key);
        if !self.keys.iter().any(|(k, _)| *k == id) {
            self.keys.push((id, key));
        }
    }

    /// The key with this id, if trusted.
    pub fn get(&self, id: &KeyId) -> Option<&VerifyingKey> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, key)| key)
    }

    /// Number of trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_and_mismatched_keys_are_refused() {
        let zero = format!("{PUBLIC_PREFIX} {}", "00".repeat(32));
        let error = format!("{:#}", TrustedKeys::parse(&zero).unwrap_err());
        assert!(
            error.contains("weak public key") || error.contains("not a valid"),
            "{error}"
        );
        let key = PublisherKey::from_seed([7; 32]);
        let line = key.public_line();
        assert_eq!(TrustedKeys::parse(&line).unwrap().len(), 1);
        let wrong_id = format!(
            "{PUBLIC_PREFIX} {} 0000000000000000",
            hex::encode(key.verifying_key().as_bytes())
        );
        assert!(
            format!("{:#}", TrustedKeys::parse(&wrong_id).unwrap_err()).contains("does not match")
        );
    }

    #[test]
    fn keygen_files_have_safe_modes_and_are_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("publisher.key");
        let key = PublisherKey::generate().unwrap();
        let pub_path = key.save(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = PublisherKey::load(&path).unwrap();
        assert_eq!(loaded.id(), key.id());
        let trusted = TrustedKeys::load(&pub_path).unwrap();
        assert!(trusted.get(&key.id()).is_some());
        assert!(key.save(&path).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = format!("{:#}", PublisherKey::load(&path).unwrap_err());
        assert!(error.contains("chmod 600"), "{error}");
    }
}
