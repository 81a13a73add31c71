//! The TOML config file. Every `serve` flag has a key of the same name (kebab-case); the
//! order of precedence is flag, then `DELTACACHE_*` environment variable, then config file,
//! then the built-in default.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The config file's keys. All optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConfigFile {
    /// The baked bundle directory.
    pub bundle: Option<PathBuf>,
    /// The writable state dir.
    pub state_dir: Option<PathBuf>,
    /// Listen address, e.g. "127.0.0.1:8080".
    pub listen: Option<String>,
    /// Number of LevelDB read handles.
    pub reader_shards: Option<usize>,
    /// Seconds in-flight requests may take to finish after SIGTERM.
    pub drain_timeout_secs: Option<u64>,
}

impl ConfigFile {
    /// Reads a config file; unknown keys are refused, naming the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse config file {}", path.display()))
    }
}
