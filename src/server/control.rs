//! The control socket: how `rollback`, `rollback --unpin` and `status` reach a running
//! daemon. A Unix socket in the state dir (`control.sock`, mode 0600, so only the service's
//! user and root can use it), one JSON request line in, one JSON response line out.
//!
//! A request goes to the [`Follower`], which takes the same lock as a sync: a rollback never
//! races an apply in flight, and it is served at once, without a restart. Without a running
//! daemon, [`request`] answers `None` and the caller works on the state dir directly (under
//! its lock).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::http::{AppState, status_body};
use crate::sync::follow::Follower;

/// The socket's name inside the state dir.
pub const SOCKET_NAME: &str = "control.sock";
/// The largest request line read.
const MAX_REQUEST_BYTES: u64 = 4096;
/// How long a client may take to send its request, and a caller waits for an answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a rollback or unpin may wait for a sync in progress to finish.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Serve the kept version with this seq now, and pin it.
    Rollback {
        /// The seq to go back to.
        to: u64,
    },
    /// Remove the pin and follow again.
    Unpin,
    /// The daemon's detailed status.
    Status,
}

/// What the daemon answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlResponse {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What was done, or why not.
    pub message: String,
    /// The detailed status (for `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// Serves the control socket at `path` until the task is aborted. A socket left by a
/// daemon that died is replaced (the state dir's lock proves no other daemon runs).
pub async fn serve(path: PathBuf, follower: Arc<Follower>, app: AppState) {
    let listener = match bind(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "no control socket: rollback and unpin need a restart to take effect"
            );
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (follower, app) = (follower.clone(), app.clone());
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &follower, &app).await {
                tracing::warn!(error = format!("{error:#}"), "control request failed");
            }
        });
    }
}

fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("bind control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restrict {}", path.display()))?;
    Ok(listener)
}

async fn answer(
    stream: tokio::net::UnixStream,
    follower: &Follower,
    app: &AppState,
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES));
    tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line))
        .await
        .context("read the request: timed out")?
        .context("read the request")?;
    let response = match serde_json::from_str::<ControlRequest>(&line) {
        Err(error) => ControlResponse {
            ok: false,
            message: format!("not a control request: {error}"),
            status: None,
        },
        Ok(request) => carry_out(request, follower, app).await,
    };
    let mut bytes = serde_json::to_vec(&response)?;
    bytes.push(b'\n');
    write
        .write_all(&bytes)
        .await
        .context("write the response")?;
    Ok(())
}

async fn carry_out(
    request: ControlRequest,
    follower: &Follower,
    app: &AppState,
) -> ControlResponse {
    let result = match request {
        ControlRequest::Rollback { to } => follower.rollback_to(to).await.map(|m| (m, None)),
        ControlRequest::Unpin => follower.unpin().await.map(|m| (m, None)),
        ControlRequest::Status => Ok(("status".to_owned(), Some(status_body(app, true)))),
    };
    match result {
        Ok((message, status)) => ControlResponse {
            ok: true,
            message,
            status,
        },
        Err(error) => ControlResponse {
            ok: false,
            message: format!("{error:#}"),
            status: None,
        },
    }
}

/// Sends `request` to the daemon running on `state_dir`; `Ok(None)` when none listens (no
/// socket, or a socket nobody answers on: a daemon that died).
pub async fn request(
    state_dir: &Path,
    request: &ControlRequest,
) -> anyhow::Result<Option<ControlResponse>> {
    let path = state_dir.join(SOCKET_NAME);
    let stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("connect to {}", path.display())),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .with_context(|| format!("send to {}", path.display()))?;
    let mut answer = String::new();
    tokio::time::timeout(ANSWER_TIMEOUT, BufReader::new(read).read_line(&mut answer))
        .await
        .with_context(|| format!("no answer from {} in time", path.display()))?
        .with_context(|| format!("read the answer from {}", path.display()))?;
    let response = serde_json::from_str(&answer)
        .with_context(|| format!("parse the answer from {}: {answer:?}", path.display()))?;
    Ok(Some(response))
}
