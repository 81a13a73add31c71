//! Flags shared by every subcommand that talks to a delta store.

use std::time::Duration;

use clap::Args;

use crate::delta_store::RemoteSettings;

#[derive(Debug, Clone, Args)]
pub(super) struct RemoteArgs {
    /// S3 endpoint override for S3-compatible servers (AWS_ENDPOINT_URL also works);
    /// path-style addressing is then the default.
    #[arg(long, env = "DELTACACHE_S3_ENDPOINT_URL", value_name = "URL")]
    s3_endpoint_url: Option<String>,
    /// Path-style S3 addressing (bucket in the path, not the host name) [default: true when
    /// an endpoint override is set].
    #[arg(long, env = "DELTACACHE_S3_PATH_STYLE", value_name = "BOOL")]
    s3_path_style: Option<bool>,
    /// Timeout of one remote operation, retries included, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    remote_timeout: Duration,
    /// Attempts per remote operation (retries back off exponentially with jitter).
    #[arg(long, default_value_t = 4, value_name = "N")]
    remote_attempts: u32,
    /// Timeout of one attempt, the reading of the answer included: a store that stops
    /// answering (or trickles) fails the attempt, which is retried, e.g. 15s.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    remote_attempt_timeout: Duration,
}

impl RemoteArgs {
    pub(super) fn settings(&self) -> RemoteSettings {
        RemoteSettings {
            connect_timeout: Duration::from_secs(3).min(self.remote_timeout),
            operation_timeout: self.remote_timeout,
            attempt_timeout: self.remote_attempt_timeout.min(self.remote_timeout),
            max_attempts: self.remote_attempts.max(1),
            endpoint_url: self.s3_endpoint_url.clone(),
            force_path_style: self.s3_path_style,
            static_credentials: None,
        }
    }
}
