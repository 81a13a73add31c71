//! The server loop with limits: hyper with a timer (header and keep-alive idle timeouts), a
//! request deadline and a body idle timeout, a cap on open connections with a quick 503 above
//! it, an optional probe listener of its own, graceful shutdown with a drain deadline, a
//! bounded pool for CPU-heavy work, and metric labels from closed sets.
//!
//! `axum::serve` gives hyper no timer, so hyper's header-read timeout never fires there, and it
//! accepts without limit (on EMFILE it sleeps a second and retries, which starves probes).
//! This loop is the replacement.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::MatchedPath;
use axum::http::{Method, StatusCode};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics::{Counter, Histogram};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

/// Header read timeout for connections above `max_connections` (capped by the normal one).
pub const OVERFLOW_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// Limits on what one client can hold open or make the server wait for.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time a client has to send complete request headers, counted from the moment the
    /// connection is idle: just accepted, or the previous answer written. hyper starts this
    /// clock as soon as a keep-alive connection goes idle, so it is also the keep-alive idle
    /// timeout; a connection that trickles a header a byte at a time is closed after it too.
    /// hyper has no separate idle timeout, so the two cannot differ.
    pub header_read_timeout: Duration,
    /// Longest pause between two chunks of a request body; after it the body extractor fails
    /// and the answer is 408 (see [`is_body_timeout`]).
    pub body_read_timeout: Duration,
    /// Deadline for a whole request, body reading included: 408 after it. This is what stops a
    /// body trickled just fast enough to beat `body_read_timeout`.
    pub request_timeout: Duration,
    /// Connections served at once on the main listener.
    pub max_connections: usize,
    /// Connections above `max_connections` that are still read and answered, one request
    /// each with [`OVERFLOW_HEADER_READ_TIMEOUT`]: probe routes normally, anything else 503
    /// with `Retry-After`. Above both, new connections are closed as soon as they are accepted.
    pub max_overflow_connections: usize,
    /// Connections served at once on the probe listener.
    pub max_probe_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            // Above an AWS ALB's default 60 s idle timeout: a load balancer that reuses a
            // connection the server is closing answers its client 502. Lower it when clients
            // connect directly.
            header_read_timeout: Duration::from_secs(65),
            body_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_overflow_connections: 64,
            max_probe_connections: 32,
        }
    }
}

impl HttpLimits {
    /// File descriptors the limits can hold open at once, beside the listeners.
    pub fn max_sockets(&self) -> usize {
        self.max_connections + self.max_overflow_connections + self.max_probe_connections
    }
}

/// Checks that the connection limits leave `reserve` file descriptors for everything else
/// (data files, the delta store's HTTP clients, logs). Raises the soft `RLIMIT_NOFILE` to the
/// hard one first, as the Go runtime does, since the default soft 1024 is an accident of
/// `select(2)`, not a choice.
#[cfg(unix)]
pub fn check_fd_budget(limits: &HttpLimits, reserve: usize) -> anyhow::Result<u64> {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error()).context("read RLIMIT_NOFILE");
    }
    if rl.rlim_cur < rl.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            rl.rlim_cur = rl.rlim_max;
        }
    }
    let needed = (limits.max_sockets() + reserve) as u64;
    anyhow::ensure!(
        needed <= rl.rlim_cur,
        "the HTTP connection limits ({} sockets) plus {reserve} descriptors for everything else \
         exceed the open-file limit ({}); lower max_connections or raise LimitNOFILE",
        limits.max_sockets(),
        rl.rlim_cur
    );
    Ok(rl.rlim_cur)
}

/// Adds the per-request limits to a router: a whole-request deadline (408) and a body idle
/// timeout. Add it *inside* the metrics middleware (call it before that `.layer`) so the 408s
/// are counted: a layer outside would drop the metrics future instead of letting it finish.
pub fn with_request_limits<S>(router: Router<S>, limits: &HttpLimits) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .layer(RequestBodyTimeoutLayer::new(limits.body_read_timeout))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
}

/// Whether a body extractor's rejection was the body idle timeout (answer 408, not 400).
/// axum buries the timeout a few error sources deep, so this walks the chain.
pub fn is_body_timeout(rejection: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(rejection), |e| e.source())
        .any(|e| e.is::<tower_http::timeout::TimeoutError>())
}

/// The routes that must stay answerable when the main listener is full, and where (beside the
/// main listener) to serve them.
pub struct Probes {
    /// `/livez`, `/readyz`, `/metrics`: cheap, no request body.
    pub router: Router,
    /// What a connection above the main listener's limit is served: the probes, and 503
    /// with `Retry-After` for everything else (with the same layers as every answer).
    pub overflow: Router,
    /// A listener of their own (an admin port), with its own connection cap. `None` serves them
    /// only on the main listener.
    pub listener: Option<TcpListener>,
}

/// Serves `router` on `listener` (and `probes` on theirs) until `shutdown` resolves, then lets
/// in-flight requests finish for at most `drain_timeout` before closing what is left.
pub async fn run(
    listener: TcpListener,
    router: Router,
    probes: Probes,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut overflow_builder = builder.clone();
    // One answer, then close: the client should go elsewhere or come back later. A client
    // that means to send a request sends it at once; a short clock keeps silent connections
    // from sitting on the few overflow slots.
    overflow_builder
        .keep_alive(false)
        .header_read_timeout(limits.header_read_timeout.min(OVERFLOW_HEADER_READ_TIMEOUT));

    let graceful = GracefulShutdown::new();
    // Sent when the drain deadline passes: connections still open are dropped.
    let (close_tx, close_rx) = watch::channel(());
    let main = Accept {
        builder: builder.clone(),
        router,
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        overflow: Some((
            overflow_builder,
            probes.overflow,
            Arc::new(Semaphore::new(limits.max_overflow_connections)),
        )),
        listener_name: "main",
    };
    let probe = probes.listener.map(|listener| {
        (
            listener,
            Accept {
                builder,
                router: probes.router,
                permits: Arc::new(Semaphore::new(limits.max_probe_connections)),
                overflow: None,
                listener_name: "probe",
            },
        )
    });
    let accepting = async {
        match probe {
            Some((probe_listener, probe)) => {
                tokio::join!(
                    main.run(&listener, &graceful, &close_rx),
                    probe.run(&probe_listener, &graceful, &close_rx)
                );
            }
            None => main.run(&listener, &graceful, &close_rx).await,
        }
    };
    tokio::select! {
        () = accepting => unreachable!("the accept loops never return"),
        () = shutdown => {}
    }
    // New connections are refused from here on (the probe listener went with `accepting`);
    // a listener kept open would queue them in the backlog, unanswered, until exit.
    drop(listener);
    tracing::info!(
        drain_timeout_s = drain_timeout.as_secs_f64(),
        connections = graceful.count(),
        "shutting down; draining requests"
    );
    // Idle keep-alive connections close at once; busy ones after their current answer.
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
        let _ = close_tx.send(());
    }
    Ok(())
}

/// One listener's accept loop and what it serves.
struct Accept {
    builder: http1::Builder,
    router: Router,
    permits: Arc<Semaphore>,
    /// Builder, router and cap for connections above `permits`; `None` closes them at once.
    overflow: Option<(http1::Builder, Router, Arc<Semaphore>)>,
    listener_name: &'static str,
}

impl Accept {
    async fn run(
        &self,
        listener: &TcpListener,
        graceful: &GracefulShutdown,
        close: &watch::Receiver<()>,
    ) {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    accept_error(error).await;
                    continue;
                }
            };
            // Answers are written whole; Nagle would only delay the last segment.
            let _ = stream.set_nodelay(true);
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                serve_connection(
                    &self.builder,
                    stream,
                    self.router.clone(),
                    permit,
                    graceful,
                    close,
                );
                continue;
            }
            let overflow = self
                .overflow
                .as_ref()
                .and_then(|(builder, router, permits)| {
                    Some((builder, router, permits.clone().try_acquire_owned().ok()?))
                });
            match overflow {
                Some((builder, router, permit)) => {
                    metrics::counter!("deltacache_http_connections_over_limit_total", "listener" => self.listener_name, "action" => "answered").increment(1);
                    serve_connection(builder, stream, router.clone(), permit, graceful, close);
                }
                None => {
                    // Closing at once frees the descriptor at once; the client sees a reset
                    // or EOF and retries, which beats leaving it in the backlog until its
                    // connect timeout.
                    metrics::counter!("deltacache_http_connections_over_limit_total", "listener" => self.listener_name, "action" => "closed").increment(1);
                    drop(stream);
                }
            }
        }
    }
}

/// Spawns one connection's task. The permit is held until the socket is closed.
fn serve_connection(
    builder: &http1::Builder,
    stream: TcpStream,
    router: Router,
    permit: OwnedSemaphorePermit,
    graceful: &GracefulShutdown,
    close: &watch::Receiver<()>,
) {
    let connection =
        builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    let connection = graceful.watch(connection);
    let mut close = close.clone();
    tokio::spawn(async move {
        tokio::select! {
            result = connection => {
                // Header timeouts, resets and clients that vanish are routine; not errors.
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
            }
            _ = close.changed() => {}
        }
        drop(permit);
    });
}

/// Accept errors: per-connection ones (reset before accept) are skipped; the rest (EMFILE,
/// ENFILE, ENOBUFS) mean the process is out of something, so wait briefly instead of spinning
/// on a listener that stays readable. With `check_fd_budget` passed this should not happen.
async fn accept_error(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accept failed; pausing accepts");
    metrics::counter!("deltacache_http_accept_errors_total").increment(1);
    // Short: the descriptors a closing connection frees should be used soon.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Runs CPU-heavy work (a search) off the async workers, at most `threads` at once, with at
/// most `queue` more waiting; beyond that it refuses at once, so an overload costs clients a
/// quick 503 instead of every request a long wait.
#[derive(Clone)]
pub struct CpuPool {
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
}

/// Why [`CpuPool::run`] did not return the work's result.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// Running and queue slots are all taken: answer 503 with `Retry-After`.
    #[error("too many searches at once")]
    Overloaded,
    /// The work panicked.
    #[error("the work panicked")]
    Panicked,
}

impl CpuPool {
    /// `threads` run at once (leave one core to the async workers: that is what keeps probes
    /// fast); `queue` more wait for a thread.
    pub fn new(threads: usize, queue: usize) -> Self {
        CpuPool {
            running: Arc::new(Semaphore::new(threads.max(1))),
            admitted: Arc::new(Semaphore::new(threads.max(1) + queue)),
        }
    }

    /// Runs `work` on tokio's blocking pool once a slot is free. If the request is dropped
    /// (client gone, request deadline) while waiting, nothing runs; once running, the work
    /// finishes and still holds its slot, so the cap stays true.
    pub async fn run<T, F>(&self, work: F) -> Result<T, CpuError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| CpuError::Overloaded)?;
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            let _slots = (admitted, running);
            work()
        })
        .await
        .map_err(|_| CpuError::Panicked)
    }
}

/// The `method` label: one of the registered methods or `other`. hyper accepts any token as a
/// method, so the raw string would let each client mint label values.
pub fn method_label(method: &Method) -> &'static str {
    METHOD_LABELS
        .iter()
        .find(|(m, _)| m == method)
        .map_or("other", |(_, label)| label)
}

const METHOD_LABELS: [(Method, &str); 9] = [
    (Method::GET, "GET"),
    (Method::HEAD, "HEAD"),
    (Method::POST, "POST"),
    (Method::PUT, "PUT"),
    (Method::DELETE, "DELETE"),
    (Method::OPTIONS, "OPTIONS"),
    (Method::PATCH, "PATCH"),
    (Method::CONNECT, "CONNECT"),
    (Method::TRACE, "TRACE"),
];

/// The `route` label: the route pattern that matched (a fixed set, from the router), or
/// `unmatched` (never the raw path, which the client chooses). Take the `MatchedPath` with
/// `request.extensions().get::<MatchedPath>().cloned()` before the request moves on: the
/// clone is a reference count, not a copy of the string.
pub fn route_label(matched: Option<&MatchedPath>) -> &str {
    matched.map_or("unmatched", |p| p.as_str())
}

/// Request counter and duration histogram handles, registered on first use of each
/// (route, method, status) and reused after, so recording a request allocates nothing and
/// skips the recorder's key hashing.
#[derive(Default)]
pub struct RequestMetrics {
    handles: RwLock<HashMap<SeriesKey<'static>, (Counter, Histogram)>>,
}

/// Route, method label, status code.
type SeriesKey<'a> = (&'a str, &'static str, u16);

impl RequestMetrics {
    /// Counts one request and records how long it took.
    pub fn record(&self, route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
        let method = method_label(method);
        let status = status.as_u16();
        let found = {
            let handles = self.handles.read().unwrap_or_else(|e| e.into_inner());
            // The map's keys are 'static; a shared borrow of it can be looked up with a
            // shorter-lived route because the map is covariant in its key.
            let handles: &HashMap<SeriesKey<'_>, _> = &handles;
            handles.get(&(route, method, status)).cloned()
        };
        let (counter, histogram) = found.unwrap_or_else(|| self.register(route, method, status));
        counter.increment(1);
        histogram.record(elapsed.as_secs_f64());
    }

    #[cold]
    fn register(&self, route: &str, method: &'static str, status: u16) -> (Counter, Histogram) {
        let mut handles = self.handles.write().unwrap_or_else(|e| e.into_inner());
        // Route labels are the router's route patterns (a fixed set) or "unmatched", so each
        // is leaked at most once for the life of the process.
        let route: &'static str = match handles.keys().find(|(r, _, _)| *r == route) {
            Some((r, _, _)) => r,
            None => Box::leak(route.to_owned().into_boxed_str()),
        };
        let status_label = StatusCode::from_u16(status)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| status.to_string());
        let counter = metrics::counter!("deltacache_http_requests_total", "route" => route, "method" => method, "status" => status_label);
        let histogram =
            metrics::histogram!("deltacache_http_request_duration_seconds", "route" => route);
        handles
            .entry((route, method, status))
            .or_insert((counter, histogram))
            .clone()
    }
}
