//! Flags shared by every subcommand that talks to a delta store.

use std::time::Duration;

use clap::Args;

use crate::config::ConfigFile;
use crate::delta_store::RemoteSettings;

/// Default timeout of one remote operation, retries included.
const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default attempts per remote operation.
const DEFAULT_REMOTE_ATTEMPTS: u32 = 4;
/// Default timeout of one attempt.
const DEFAULT_REMOTE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Args)]
pub(super) struct RemoteArgs {
    /// S3 endpoint override for S3-compatible servers (AWS_ENDPOINT_URL also works);
    /// path-style addressing is then the default [default: none].
    #[arg(long, env = "DELTACACHE_S3_ENDPOINT_URL", value_name = "URL")]
    s3_endpoint_url: Option<String>,
    /// Path-style S3 addressing (bucket in the path, not the host name) [default: true when
    /// an endpoint override is set].
    #[arg(long, env = "DELTACACHE_S3_PATH_STYLE", value_name = "BOOL")]
    s3_path_style: Option<bool>,
    /// Timeout of one remote operation, retries included, e.g. 60s [default: 60s].
    #[arg(long, env = "DELTACACHE_REMOTE_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    remote_timeout: Option<Duration>,
    /// Attempts per remote operation (retries back off exponentially with jitter)
    /// [default: 4].
    #[arg(long, env = "DELTACACHE_REMOTE_ATTEMPTS", value_name = "N")]
    remote_attempts: Option<u32>,
    /// Timeout of one attempt, the reading of the answer included: a store that stops
    /// answering (or trickles) fails the attempt, which is retried, e.g. 15s [default: 15s].
    #[arg(long, env = "DELTACACHE_REMOTE_ATTEMPT_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    remote_attempt_timeout: Option<Duration>,
}

impl RemoteArgs {
    /// The settings from the flags and environment alone.
    pub(super) fn settings(&self) -> RemoteSettings {
        self.settings_with(&ConfigFile::default())
    }

    /// The settings, flags and environment first, then the config file, then the defaults.
    pub(super) fn settings_with(&self, file: &ConfigFile) -> RemoteSettings {
        let remote_timeout = self
            .remote_timeout
            .or(file.remote_timeout.map(|d| d.0))
            .unwrap_or(DEFAULT_REMOTE_TIMEOUT);
        let attempt_timeout = self
            .remote_attempt_timeout
            .or(file.remote_attempt_timeout.map(|d| d.0))
            .unwrap_or(DEFAULT_REMOTE_ATTEMPT_TIMEOUT);
        let attempts = self
            .remote_attempts
            .or(file.remote_attempts)
            .unwrap_or(DEFAULT_REMOTE_ATTEMPTS);
        RemoteSettings {
            connect_timeout: Duration::from_secs(3).min(remote_timeout),
            operation_timeout: remote_timeout,
            attempt_timeout: attempt_timeout.min(remote_timeout),
            max_attempts: attempts.max(1),
            endpoint_url: self
                .s3_endpoint_url
                .clone()
                .or_else(|| file.s3_endpoint_url.clone()),
            force_path_style: self.s3_path_style.or(file.s3_path_style),
            static_credentials: None,
        }
    }
}
