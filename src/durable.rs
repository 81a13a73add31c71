//! Making files and directories durable: rusty-leveldb never fsyncs, so whatever must
//! survive a crash is fsynced here before it is pointed at.
//!
//! A failed fsync is never retried: the kernel may already have dropped the dirty pages, so
//! the whole attempt is abandoned and its error returned.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// fsyncs one file or directory.
pub fn fsync_path(path: &Path) -> anyhow::Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", path.display()))
}

/// fsyncs every file under `dir`, then every directory bottom-up, then `dir` itself.
pub fn fsync_tree(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            fsync_tree(&path)?;
        } else {
            fsync_path(&path)?;
        }
    }
    fsync_path(dir)
}

/// Replaces `path` with `contents` atomically and durably: write a temporary file beside
/// it, fsync it, rename it over `path`, fsync the parent directory. The new contents are
/// committed when this returns `Ok`.
pub fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let parent = parent_dir(path);
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = parent.join(format!(".{}.tmp", file_name.to_string_lossy()));
    {
        let mut file = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        file.write_all(contents)
            .and_then(|_| file.sync_all())
            .with_context(|| format!("write {}", tmp.display()))?;
    }
    crate::failpoint::hit("before-pointer-rename");
    std::fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    fsync_path(parent)
}

/// Renames a complete, fsynced directory into place and fsyncs the parent.
pub fn rename_durably(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("rename {} to {}", from.display(), to.display()))?;
    fsync_path(parent_dir(to))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}
