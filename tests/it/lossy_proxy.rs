//! A loopback TCP proxy in front of the S3 server that loses answers on purpose: it relays
//! every request and every answer, except the answer to the first conditional PUT of an
//! armed path, which the server gives and the client never hears (the proxy closes the
//! client's connection instead). A lost answer is a fault the real server cannot be made to
//! show.

use super::s3::S3Server;

/// One request the proxy relayed and the status of its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// `PUT`, `GET`, ...
    pub method: String,
    /// The path without its query.
    pub path: String,
    /// Whether it carried `If-Match` or `If-None-Match`.
    pub conditional: bool,
    /// The answer's status, once the server answered.
    pub status: Option<u16>,
}

/// What the proxy's connections share.
#[derive(Default)]
struct ProxyShared {
    /// The path suffix of the next conditional PUT whose answer is swallowed; disarmed by
    /// the first match.
    armed: std::sync::Mutex<Option<String>>,
    /// Every request relayed, in order of arrival.
    exchanges: std::sync::Mutex<Vec<Exchange>>,
    /// The exchanges whose answers were swallowed (indexes into `exchanges`).
    dropped: std::sync::Mutex<Vec<usize>>,
    /// Requests the proxy cannot delimit (chunked bodies, `Expect`): the test fails on any.
    unparsed: std::sync::Mutex<Vec<String>>,
}

/// A loopback TCP proxy between a client and the S3 server that relays both ways, except
/// that the answer to the first conditional PUT of an armed path is lost: the request goes
/// through, the server answers, and the proxy closes the client's connection instead of
/// relaying that answer. Requests are parsed just enough to tell them apart (HTTP/1.1 with
/// `Content-Length` bodies); answers need no parsing, because a client sends its next
/// request on a connection only after reading the whole answer to the previous one.
pub struct LossyProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    shared: std::sync::Arc<ProxyShared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl LossyProxy {
    /// Starts relaying to `upstream` (`http://HOST:PORT`) on a runtime of its own.
    pub fn start(upstream: &str) -> LossyProxy {
        let upstream: std::net::SocketAddr =
            upstream.trim_start_matches("http://").parse().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let shared = std::sync::Arc::new(ProxyShared::default());
        let for_connections = shared.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, for_connections.clone()));
            }
        });
        LossyProxy {
            endpoint,
            shared,
            runtime: Some(runtime),
        }
    }

    /// Loses the answer to the next conditional PUT whose path ends with `suffix`.
    pub fn lose_next_answer_to(&self, suffix: &str) {
        *self.shared.armed.lock().unwrap() = Some(format!("/{suffix}"));
    }

    /// The exchanges whose answers were lost.
    pub fn lost(&self) -> Vec<Exchange> {
        let exchanges = self.shared.exchanges.lock().unwrap();
        self.shared
            .dropped
            .lock()
            .unwrap()
            .iter()
            .map(|&idx| exchanges[idx].clone())
            .collect()
    }

    /// Every exchange so far.
    pub fn exchanges(&self) -> Vec<Exchange> {
        assert!(
            self.shared.unparsed.lock().unwrap().is_empty(),
            "the proxy met requests it cannot delimit: {:?}",
            self.shared.unparsed.lock().unwrap()
        );
        self.shared.exchanges.lock().unwrap().clone()
    }

    /// Environment for the binary to reach S3 through the proxy.
    pub fn env(&self, server: &S3Server) -> Vec<(&'static str, String)> {
        let mut env = server.env();
        for (name, value) in &mut env {
            if *name == "AWS_ENDPOINT_URL" {
                *value = self.endpoint.clone();
            }
        }
        env
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Relays one client connection; returns (closing both sides) when either side closes or
/// when an answer is swallowed.
async fn relay(
    client: tokio::net::TcpStream,
    upstream: std::net::SocketAddr,
    shared: std::sync::Arc<ProxyShared>,
) {
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // The request whose answer comes next: its index in the log, and whether to lose it.
    let (next_tx, next_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::select! {
        _ = relay_requests(client_read, server_write, next_tx, &shared) => {}
        _ = relay_answers(server_read, client_write, next_rx, &shared) => {}
    }
}

async fn relay_requests(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    next: tokio::sync::mpsc::UnboundedSender<(usize, bool)>,
    shared: &ProxyShared,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut pending: Vec<u8> = Vec::new();
    let mut body_left = 0usize;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        loop {
            if body_left > 0 {
                if pending.is_empty() {
                    break;
                }
                let n = body_left.min(pending.len());
                to.write_all(&pending[..n]).await?;
                pending.drain(..n);
                body_left -= n;
                continue;
            }
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head: Vec<u8> = pending.drain(..end + 4).collect();
            let text = String::from_utf8_lossy(&head).into_owned();
            let mut lines = text.split("\r\n");
            let mut request_line = lines.next().unwrap_or_default().split(' ');
            let method = request_line.next().unwrap_or_default().to_owned();
            let target = request_line.next().unwrap_or_default();
            let path = target.split('?').next().unwrap_or_default().to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            if header("transfer-encoding").is_some() || header("expect").is_some() {
                shared.unparsed.lock().unwrap().push(text.clone());
            }
            body_left = header("content-length").map_or(0, |v| v.parse().unwrap_or(0));
            let conditional = header("if-match").is_some() || header("if-none-match").is_some();
            let lose = {
                let mut armed = shared.armed.lock().unwrap();
                let hit = method == "PUT"
                    && conditional
                    && armed
                        .as_deref()
                        .is_some_and(|suffix| path.ends_with(suffix));
                if hit {
                    *armed = None;
                }
                hit
            };
            let idx = {
                let mut exchanges = shared.exchanges.lock().unwrap();
                exchanges.push(Exchange {
                    method,
                    path,
                    conditional,
                    status: None,
                });
                exchanges.len() - 1
            };
            // Announced before the request is sent on, so it is known when the answer comes.
            let _ = next.send((idx, lose));
            to.write_all(&head).await?;
        }
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

async fn relay_answers(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut next: tokio::sync::mpsc::UnboundedReceiver<(usize, bool)>,
    shared: &ProxyShared,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut chunk = vec![0u8; 64 << 10];
    // The answer being read: its exchange, whether to lose it, and its bytes until the
    // status line is complete.
    let mut current: Option<(usize, bool, Vec<u8>)> = None;
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        // Bytes after a new request was announced start its answer.
        if let Ok((idx, lose)) = next.try_recv() {
            current = Some((idx, lose, Vec::new()));
        }
        if let Some((idx, lose, start)) = &mut current {
            start.extend_from_slice(&chunk[..n]);
            if let Some(end) = start.windows(2).position(|w| w == b"\r\n") {
                let status = String::from_utf8_lossy(&start[..end])
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok());
                shared.exchanges.lock().unwrap()[*idx].status = status;
                if *lose {
                    // The server answered; the client never hears it.
                    shared.dropped.lock().unwrap().push(*idx);
                    return Ok(());
                }
                current = None;
            } else if *lose {
                continue;
            }
        }
        to.write_all(&chunk[..n]).await?;
    }
}
