//! The TOML config file. Every `serve` flag (and the global `--log-format`) has a key of the
//! same name (kebab-case); the order of precedence is flag, then `DELTACACHE_*` environment
//! variable, then config file, then the built-in default. A relative path in the file is
//! taken relative to the file's folder, not to the daemon's working directory.

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
    /// Bytes of item JSON each served version caches (0: none).
    pub cache_bytes: Option<u64>,
    /// Seconds in-flight requests may take to finish after SIGTERM.
    pub drain_timeout_secs: Option<u64>,
    /// Delta store URL.
    pub store: Option<String>,
    /// The trusted TUF root file.
    pub trusted_root: Option<PathBuf>,
    /// No longer read (refused with what to set instead): a trusted-keys file.
    pub trusted_keys: Option<PathBuf>,
    /// Poll interval, e.g. "60s".
    pub follow_interval: Option<HumanDuration>,
    /// `serve-stale` or `fail`.
    pub on_sync_failure: Option<crate::server::OnSyncFailure>,
    /// Boot-time sync deadline, e.g. "120s".
    pub boot_deadline: Option<HumanDuration>,
    /// Committed versions kept.
    pub keep_versions: Option<usize>,
    /// Deadline of each sync attempt after boot, e.g. "5m".
    pub sync_deadline: Option<HumanDuration>,
    /// The most memory one delta's decoded records may take, in bytes.
    pub apply_memory_budget: Option<u64>,
    /// This instance's wave seed, 0..2048.
    pub instance_seed: Option<u32>,
    /// A JSON file of canary queries every new version must answer.
    pub canaries: Option<PathBuf>,
    /// A chain longer than this many deltas is caught up by snapshot (0: never).
    pub snapshot_after_deltas: Option<u64>,
    /// The largest catch-up snapshot downloaded, in bytes.
    pub max_snapshot_bytes: Option<u64>,
    /// Whether `/status` shows paths, the delta store URL and error text.
    pub status_detail: Option<bool>,
    /// A second address serving only the probes, e.g. "127.0.0.1:9090".
    pub probe_listen: Option<String>,
    /// Time a client has to send a request's headers (also the keep-alive idle timeout).
    pub header_read_timeout: Option<HumanDuration>,
    /// Longest pause between two pieces of a request body.
    pub body_read_timeout: Option<HumanDuration>,
    /// Deadline of a whole request.
    pub request_timeout: Option<HumanDuration>,
    /// Connections served at once on the main port.
    pub max_connections: Option<usize>,
    /// Searches running at once.
    pub search_threads: Option<usize>,
    /// Searches waiting for a thread.
    pub search_queue: Option<usize>,
    /// The most distinct known terms one query may hold.
    pub max_query_terms: Option<usize>,
    /// `local` or `pinecone`.
    pub vector_backend: Option<crate::catalog::backend::VectorBackendKind>,
    /// Pinecone index host or URL.
    pub pinecone_index_host: Option<String>,
    /// Pinecone namespace.
    pub pinecone_namespace: Option<String>,
    /// File holding the Pinecone API key (never the key itself).
    pub pinecone_api_key_file: Option<PathBuf>,
    /// `X-Pinecone-Api-Version`.
    pub pinecone_api_version: Option<String>,
    /// Timeout of one Pinecone call attempt, e.g. "2s".
    pub pinecone_timeout: Option<HumanDuration>,
    /// Attempts per Pinecone call.
    pub pinecone_attempts: Option<u32>,
    /// `text` or `json`: how log lines are written on stderr.
    pub log_format: Option<crate::telemetry::LogFormat>,
    /// S3 endpoint override for S3-compatible servers.
    pub s3_endpoint_url: Option<String>,
    /// Path-style S3 addressing.
    pub s3_path_style: Option<bool>,
    /// Timeout of one remote operation, retries included, e.g. "60s".
    pub remote_timeout: Option<HumanDuration>,
    /// Attempts per remote operation.
    pub remote_attempts: Option<u32>,
    /// Timeout of one attempt at a remote operation, e.g. "15s".
    pub remote_attempt_timeout: Option<HumanDuration>,
}

/// A duration written as "60s", "5m", "7d".
#[derive(Debug, Clone, Copy)]
pub struct HumanDuration(pub std::time::Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!("{text:?} is not a duration like \"60s\": {e}"))
            })
    }
}

impl ConfigFile {
    /// Reads a config file; unknown keys are refused, naming the key. Relative paths in it
    /// are resolved against the file's folder.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config file {}", path.display()))?;
        let mut file: Self = toml::from_str(&text)
            .with_context(|| format!("parse config file {}", path.display()))?;
        let folder = path.parent().unwrap_or(Path::new(""));
        for key in [
            &mut file.bundle,
            &mut file.state_dir,
            &mut file.trusted_root,
            &mut file.trusted_keys,
            &mut file.canaries,
            &mut file.pinecone_api_key_file,
        ] {
            if let Some(value) = key.as_mut()
                && value.is_relative()
            {
                *value = folder.join(&*value);
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn relative_paths_resolve_against_the_config_files_folder() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        let path = etc.join("config.toml");
        std::fs::write(
            &path,
            "bundle = \"bundle\"\nstate-dir = \"../var/state\"\ntrusted-root = \"/abs/root.json\"\ncanaries = \"canaries.json\"\n",
        )
        .unwrap();
        let file = crate::config::ConfigFile::load(&path).unwrap();
        assert_eq!(file.bundle.unwrap(), etc.join("bundle"));
        assert_eq!(file.state_dir.unwrap(), etc.join("../var/state"));
        assert_eq!(file.trusted_root.unwrap(), Path::new("/abs/root.json"));
        assert_eq!(file.canaries.unwrap(), etc.join("canaries.json"));
    }

    #[test]
    fn the_remote_and_s3_flags_have_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "remote-timeout = \"30s\"\nremote-attempts = 2\nremote-attempt-timeout = \"5s\"\ns3-endpoint-url = \"http://127.0.0.1:9000\"\ns3-path-style = false\n",
        )
        .unwrap();
        let file = crate::config::ConfigFile::load(&path).unwrap();
        assert_eq!(file.remote_timeout.unwrap().0.as_secs(), 30);
        assert_eq!(file.remote_attempts, Some(2));
        assert_eq!(file.remote_attempt_timeout.unwrap().0.as_secs(), 5);
        assert_eq!(
            file.s3_endpoint_url.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(file.s3_path_style, Some(false));
    }
}
