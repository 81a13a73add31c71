//! Flags naming a Pinecone index, shared by `serve`, `build-base` and `publish-delta`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::config::ConfigFile;
use crate::pinecone::{ApiKey, DEFAULT_API_VERSION, PineconeSettings};

#[derive(Debug, Clone, Default, Args)]
pub(super) struct PineconeArgs {
    /// The Pinecone index's data-plane host (a bare host means https://HOST; a URL such as
    /// http://127.0.0.1:5081 is taken as it is).
    #[arg(long, env = "DELTACACHE_PINECONE_INDEX_HOST", value_name = "HOST")]
    pinecone_index_host: Option<String>,
    /// The Pinecone namespace [default: "" (the default namespace)].
    #[arg(long, env = "DELTACACHE_PINECONE_NAMESPACE", value_name = "NS")]
    pinecone_namespace: Option<String>,
    /// File holding the Pinecone API key (mode 0600); without it, PINECONE_API_KEY is used.
    #[arg(long, env = "DELTACACHE_PINECONE_API_KEY_FILE", value_name = "FILE")]
    pinecone_api_key_file: Option<PathBuf>,
    /// X-Pinecone-Api-Version sent with every call [default: 2025-04].
    #[arg(long, env = "DELTACACHE_PINECONE_API_VERSION", value_name = "VERSION")]
    pinecone_api_version: Option<String>,
    /// Timeout of one Pinecone call attempt, e.g. 2s [default: 2s].
    #[arg(long, env = "DELTACACHE_PINECONE_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pinecone_timeout: Option<Duration>,
    /// Attempts per Pinecone call; 429, 5xx and timeouts are retried with backoff [default: 3].
    #[arg(long, env = "DELTACACHE_PINECONE_ATTEMPTS", value_name = "N")]
    pinecone_attempts: Option<u32>,
}

impl PineconeArgs {
    /// The settings, flags and environment first, then the config file.
    pub(super) fn settings(&self, file: &ConfigFile) -> anyhow::Result<PineconeSettings> {
        let host = self
            .pinecone_index_host
            .clone()
            .or_else(|| file.pinecone_index_host.clone())
            .context(
                "the pinecone backend needs --pinecone-index-host HOST (or DELTACACHE_PINECONE_INDEX_HOST, or `pinecone-index-host` in the config file)",
            )?;
        let key_file = self
            .pinecone_api_key_file
            .clone()
            .or_else(|| file.pinecone_api_key_file.clone());
        let api_key = ApiKey::load(key_file.as_deref())?;
        let namespace = self
            .pinecone_namespace
            .clone()
            .or_else(|| file.pinecone_namespace.clone())
            .unwrap_or_default();
        let mut settings = PineconeSettings::new(&host, namespace, api_key);
        settings.api_version = self
            .pinecone_api_version
            .clone()
            .or_else(|| file.pinecone_api_version.clone())
            .unwrap_or_else(|| DEFAULT_API_VERSION.to_owned());
        if let Some(timeout) = self.pinecone_timeout.or(file.pinecone_timeout.map(|d| d.0)) {
            settings.timeout = timeout;
        }
        if let Some(attempts) = self.pinecone_attempts.or(file.pinecone_attempts) {
            settings.max_attempts = attempts.max(1);
        }
        Ok(settings)
    }
}
