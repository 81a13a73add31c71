//! Secrets read from files: refused when group or others may read them.

use std::path::Path;

use anyhow::{Context, bail};

/// Reads a secret file as text (trimmed), refusing one whose mode lets group or others read
/// it and one that is empty. `what` names the secret in messages ("secret key", "Pinecone API
/// key file").
pub fn read_private(path: &Path, what: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let metadata =
        std::fs::metadata(path).with_context(|| format!("read {what} {}", path.display()))?;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{what} {} is readable by group or others (mode {:o}): run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("read {what} {}", path.display()))?;
    let text = text.trim();
    if text.is_empty() {
        bail!("{what} {} is empty", path.display());
    }
    Ok(text.to_owned())
}
