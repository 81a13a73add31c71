//! Copy-on-write clones of a closed LevelDB directory.
//!
//! rusty-leveldb writes to every directory it opens (LOCK, LOG, a new log and manifest
//! entries, compactions), so a database that must stay untouched (the baked bundle, a
//! committed version) is never opened: a clone is. Tables (`*.ldb`) are immutable and are
//! shared by hard link (or reflink); the files LevelDB appends to or replaces (`MANIFEST-*`,
//! `*.log`, `CURRENT`) are copied, so writes to the clone can never reach the source; the
//! lock and info logs are skipped.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, bail};

/// How the immutable tables of a clone were shared with the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMethod {
    /// Every table is a hard link to the source's.
    HardLink,
    /// Hard links were refused; tables were cloned with the `FICLONE` ioctl.
    Reflink,
    /// Neither was possible; tables were copied byte by byte.
    Copy,
}

impl std::fmt::Display for CloneMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloneMethod::HardLink => "hard link",
            CloneMethod::Reflink => "reflink",
            CloneMethod::Copy => "copy",
        })
    }
}

/// What kind of file a LevelDB directory entry is.
enum FileRole {
    Immutable,
    Mutable,
    Skip,
}

fn role_of(name: &str) -> FileRole {
    if name.ends_with(".ldb") || name.ends_with(".sst") {
        FileRole::Immutable
    } else if name == "LOCK" || name == "LOG" || name == "LOG.old" {
        FileRole::Skip
    } else {
        FileRole::Mutable
    }
}

/// Clones the closed database at `src` into `dst` (which must not exist). Returns the
/// weakest method any table needed.
pub fn clone_db_dir(src: &Path, dst: &Path) -> anyhow::Result<CloneMethod> {
    if dst.exists() {
        bail!("clone target {} already exists", dst.display());
    }
    std::fs::create_dir_all(dst).with_context(|| format!("create {}", dst.display()))?;
    let mut method = CloneMethod::HardLink;
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .with_context(|| format!("list {}", src.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("list {}", src.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            bail!("unexpected file name {:?} in {}", name, src.display());
        };
        let from = entry.path();
        let to = dst.join(&name);
        if !entry.file_type()?.is_file() {
            bail!(
                "unexpected non-file {} in a LevelDB directory",
                from.display()
            );
        }
        match role_of(name_str) {
            FileRole::Skip => {}
            FileRole::Mutable => {
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
            }
            FileRole::Immutable => {
                let used = share_immutable(&from, &to)?;
                if used as u8 > method as u8 {
                    method = used;
                }
            }
        }
    }
    Ok(method)
}

/// Shares one immutable file: hard link, else reflink, else copy.
pub fn share_immutable(from: &Path, to: &Path) -> anyhow::Result<CloneMethod> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(CloneMethod::HardLink);
    }
    if reflink(from, to).is_ok() {
        return Ok(CloneMethod::Reflink);
    }
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to)
        .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    Ok(CloneMethod::Copy)
}

#[cfg(target_os = "linux")]
fn reflink(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let source = File::open(from)?;
    let target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are
    // open for the duration of the call.
    let rc = unsafe { libc::ioctl(target.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        drop(target);
        let _ = std::fs::remove_file(to);
        return Err(error);
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn reflink(_from: &Path, _to: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_shares_tables_and_copies_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        for (name, body) in [
            ("000005.ldb", "table"),
            ("MANIFEST-000004", "manifest"),
            ("CURRENT", "MANIFEST-000004\n"),
            ("000006.log", ""),
            ("LOCK", ""),
            ("LOG", "info"),
        ] {
            std::fs::write(src.join(name), body).unwrap();
        }
        let dst = dir.path().join("dst");
        assert_eq!(clone_db_dir(&src, &dst).unwrap(), CloneMethod::HardLink);
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&src.join("000005.ldb")), ino(&dst.join("000005.ldb")));
        assert_ne!(
            ino(&src.join("MANIFEST-000004")),
            ino(&dst.join("MANIFEST-000004"))
        );
        assert!(!dst.join("LOCK").exists() && !dst.join("LOG").exists());
        assert!(
            clone_db_dir(&src, &dst).is_err(),
            "existing target must be refused"
        );
    }
}
