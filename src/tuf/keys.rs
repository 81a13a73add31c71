//! Signing keys for TUF metadata: Ed25519, stored as PKCS#8 (DER, as `keygen` writes it, or
//! PEM, as `openssl genpkey -algorithm ed25519` writes it) in a file of mode 0600, never
//! overwritten; the public half in `KEYFILE.pub` as a TUF key object (the JSON a root lists).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use async_trait::async_trait;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use tough::key_source::KeySource;
use tough::schema::key::Key;
use tough::sign::{Sign, parse_keypair};
use zeroize::Zeroizing;

/// A TUF key id: hex sha256 of the canonical JSON of the public key.
pub fn key_id(key: &Key) -> anyhow::Result<String> {
    Ok(hex::encode(key.key_id().context("compute a key id")?))
}

/// The public key file of a secret key file: `KEYFILE.pub`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Makes a new Ed25519 key: the secret (PKCS#8 DER, mode 0600) at `path` and the public key
/// at `path.pub`. Refuses to overwrite either. Returns the public key and its id.
pub fn generate(path: &Path) -> anyhow::Result<(Key, String)> {
    let pub_path = public_path(path);
    for existing in [path, pub_path.as_path()] {
        if existing.exists() {
            bail!(
                "{} already exists: keygen never overwrites a key; choose another --out",
                existing.display()
            );
        }
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("read random bytes for a new key")?;
    let der = SigningKey::from_bytes(&seed)
        .to_pkcs8_der()
        .context("encode the key as PKCS#8")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create secret key {}", path.display()))?;
    file.write_all(der.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("write secret key {}", path.display()))?;
    let key = public_key_of_secret(der.as_bytes())?;
    let mut public = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&pub_path)
        .with_context(|| format!("create public key {}", pub_path.display()))?;
    let mut json = serde_json::to_vec_pretty(&key)?;
    json.push(b'\n');
    public
        .write_all(&json)
        .and_then(|_| public.sync_all())
        .with_context(|| format!("write public key {}", pub_path.display()))?;
    let id = key_id(&key)?;
    Ok((key, id))
}

/// The DER bytes of a secret key file (PEM is converted), refusing one that is not an
/// Ed25519 (or ECDSA P-256) PKCS#8 key by what it is instead (a public key in any of the
/// forms keygen, openssl and earlier releases write, TUF metadata), and then one that group
/// or others can read. What the file is comes first: a public key needs no `chmod`.
pub fn read_secret(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    use std::os::unix::fs::PermissionsExt;
    let bytes = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("read secret key {}", path.display()))?,
    );
    if let Some(what) = not_a_secret_key(&bytes) {
        bail!(
            "{} is {what}, not a secret key: pass the secret key file `deltacache keygen --out KEYFILE` wrote (KEYFILE itself, not KEYFILE.pub)",
            path.display()
        );
    }
    let der = if bytes.starts_with(b"-----BEGIN") {
        let pem = std::str::from_utf8(&bytes)
            .with_context(|| format!("{} is not PEM text", path.display()))?;
        let key = SigningKey::from_pkcs8_pem(pem)
            .with_context(|| format!("{} is not an Ed25519 PKCS#8 key", path.display()))?;
        Zeroizing::new(key.to_pkcs8_der()?.as_bytes().to_vec())
    } else {
        bytes
    };
    parse_keypair(&der).with_context(|| {
        format!(
            "{} is not a signing key tough reads (Ed25519 or ECDSA P-256 PKCS#8; make one with `deltacache keygen`)",
            path.display()
        )
    })?;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "secret key {} is readable by group or others (mode {:o}): run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(der)
}

/// What a file given as a secret key is instead, when it is recognisably something else.
fn not_a_secret_key(bytes: &[u8]) -> Option<&'static str> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let text = bytes.trim_ascii_start();
    if text.starts_with(b"{") {
        let json: Option<serde_json::Value> = serde_json::from_slice(text).ok();
        return Some(match json {
            Some(value) if value.get("signed").is_some() => {
                "TUF metadata (a root.json or another role's file)"
            }
            _ => "a public key (the TUF key object keygen writes to KEYFILE.pub)",
        });
    }
    if text.starts_with(b"-----BEGIN PUBLIC KEY") || text.starts_with(b"ssh-ed25519 ") {
        return Some("a public key");
    }
    if text.starts_with(b"deltacache-ed25519 ") {
        return Some("a public key of an earlier deltacache release");
    }
    if ed25519_dalek::VerifyingKey::from_public_key_der(bytes).is_ok() {
        return Some("a public key (DER)");
    }
    None
}

/// The public key of a secret key's DER bytes.
pub fn public_key_of_secret(der: &[u8]) -> anyhow::Result<Key> {
    Ok(parse_keypair(der).context("read a signing key")?.tuf_key())
}

/// A public key from a file: a `.pub` file (a TUF key object) or a secret key file.
pub fn read_public(path: &Path) -> anyhow::Result<Key> {
    let bytes =
        std::fs::read(path).with_context(|| format!("read public key {}", path.display()))?;
    if bytes.trim_ascii_start().starts_with(b"{") {
        let key: Key = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not a TUF public key (the .pub file keygen writes)",
                path.display()
            )
        })?;
        return Ok(key);
    }
    public_key_of_secret(&read_secret(path)?)
}

/// A signing key read from a file when it is needed (`tough`'s key sources).
#[derive(Debug, Clone)]
pub struct FileKey {
    /// The secret key file.
    pub path: PathBuf,
}

/// Signing keys and their ids.
pub type Signers = (Vec<Box<dyn KeySource>>, Vec<String>);

/// Loads the signing keys in `paths`, refusing a bad file before anything is written.
pub fn load_signers(paths: &[PathBuf]) -> anyhow::Result<Signers> {
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    for path in paths {
        let (key, id) = FileKey::load(path)?;
        keys.push(key);
        ids.push(id);
    }
    Ok((keys, ids))
}

impl FileKey {
    /// A key source for `path`, read now to refuse a bad file before anything is written.
    pub fn load(path: &Path) -> anyhow::Result<(Box<dyn KeySource>, String)> {
        let der = read_secret(path)?;
        let id = key_id(&public_key_of_secret(&der)?)?;
        Ok((
            Box::new(FileKey {
                path: path.to_path_buf(),
            }),
            id,
        ))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[async_trait]
impl KeySource for FileKey {
    async fn as_sign(&self) -> Result<Box<dyn Sign>, BoxError> {
        let der = read_secret(&self.path).map_err(|e| -> BoxError { format!("{e:#}").into() })?;
        Ok(Box::new(parse_keypair(&der)?))
    }

    async fn write(&self, _value: &str, _key_id_hex: &str) -> Result<(), BoxError> {
        Err("deltacache never writes key files through a key source".into())
    }
}

/// A PKCS#8 DER key from a secret key file's bytes, for tests and tools that hold keys in
/// memory.
pub fn pkcs8_der_from_seed(seed: [u8; 32]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    Ok(Zeroizing::new(
        SigningKey::from_bytes(&seed)
            .to_pkcs8_der()?
            .as_bytes()
            .to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_have_safe_modes_are_never_overwritten_and_a_public_key_is_not_a_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("publisher.key");
        let (key, id) = generate(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            key_id(&read_public(&public_path(&path)).unwrap()).unwrap(),
            id
        );
        assert_eq!(key_id(&read_public(&path).unwrap()).unwrap(), id);
        assert_eq!(key_id(&key).unwrap(), id);
        assert!(generate(&path).is_err(), "never overwritten");
        let error = format!("{:#}", read_secret(&public_path(&path)).unwrap_err());
        assert!(error.contains("is a public key"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = format!("{:#}", read_secret(&path).unwrap_err());
        assert!(error.contains("chmod 600"), "{error}");
    }

    #[test]
    fn a_pem_key_from_openssl_is_read_like_der() {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pem.key");
        let signing = SigningKey::from_bytes(&[3; 32]);
        let pem = signing
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        file.write_all(pem.as_bytes()).unwrap();
        let der = pkcs8_der_from_seed([3; 32]).unwrap();
        assert_eq!(
            key_id(&read_public(&path).unwrap()).unwrap(),
            key_id(&public_key_of_secret(&der).unwrap()).unwrap()
        );
    }
}
