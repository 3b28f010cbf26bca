//! The hub connection pool: one per sidecar, shared by every workload connection and
//! independent of them (docs/architecture.md §5).
//!
//! - **HTTP/2** (the hub's ALPN offers `h2`, or prior knowledge on a loopback `http` hub): every
//!   request is a stream on the least busy connection; another connection opens only when all
//!   carry as many streams as allowed ([`super::H2_MAX_STREAMS`] or the hub's lower limit).
//! - **HTTP/1.1**: a keep-alive pool; a request takes the most recently used idle connection and
//!   gives it back when its response body has ended. The sidecar closes idle connections before
//!   the hub would: after [`IDLE_TIMEOUT`], or sooner once the hub was seen closing idle
//!   connections sooner, so a request is not written into a connection the hub is closing.
//! - **Warm**: a maintainer task connects at start and reconnects, with backoff, whenever no
//!   usable connection is left, so a request never waits for a handshake while one exists; it
//!   stops reconnecting once nothing used the pool for [`STAY_WARM`].
//!   Requests that find nothing usable while a connection is being opened wait for it (HTTP/2)
//!   instead of each opening their own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Connected, Upstream, upstream_error};
use crate::backoff::{Backoff, Jitter};
use crate::body::RequestBody;
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// Idle HTTP/1.1 connections are closed after this long: below the idle timeouts of common load
/// balancers (60 s) and servers (nginx 75 s), so the sidecar, not the hub, closes them and a
/// request never races a closing connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A hub closing an idle HTTP/1.1 connection after at least this long is taken to have an idle
/// timeout that short; sooner closes are restarts or errors, not a timeout to learn from.
const MIN_LEARNED_IDLE: Duration = Duration::from_millis(100);

/// Reconnect schedule of the maintainer while the hub cannot be reached.
pub const RECONNECT: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(30),
    jitter: Jitter::Equal,
};

/// The maintainer keeps a connection warm for this long after the last request (or the start).
/// Past it, an idle sidecar lets its connections go instead of reopening one every
/// [`IDLE_TIMEOUT`] for nobody (a TLS handshake with the hub per sidecar, forever); the next
/// request connects and the pool is kept warm again.
pub const STAY_WARM: Duration = Duration::from_secs(600);

/// How often the maintainer looks for idle connections to close without other news.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The shared pool of hub connections.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("Pool")
            .field("upstream", &self.inner.upstream)
            .field("h2", &state.h2.len())
            .field("idle_http1", &state.idle.len())
            .finish()
    }
}

struct Inner {
    upstream: Upstream,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Woken when a connection opens, closes, or a connect attempt ends.
    changed: Notify,
}

#[derive(Default)]
struct State {
    next_id: u64,
    h2: Vec<H2Connection>,
    /// Most recently used last.
    idle: Vec<IdleHttp1>,
    /// Connects in flight.
    connecting: usize,
    /// What the last connect negotiated (`None` before the first).
    h2_seen: Option<bool>,
    /// How long the hub last let an idle HTTP/1.1 connection of ours live, when it closed one.
    hub_idle: Option<Duration>,
    /// Failed connects so far, and the last one's error (for the requests that waited on it).
    failures: u64,
    last_failure: Option<Failure>,
    /// When the last request (or the start) asked for a connection.
    last_use: Option<Instant>,
}

/// Why a connect failed, kept for the requests that waited for it.
#[derive(Clone)]
enum Failure {
    Timeout,
    Connect(String),
}

impl Failure {
    fn of(error: &ProxyError) -> Self {
        match error {
            ProxyError::UpstreamConnectTimeout => Failure::Timeout,
            other => Failure::Connect(other.to_string()),
        }
    }

    fn error(&self) -> ProxyError {
        match self {
            Failure::Timeout => ProxyError::UpstreamConnectTimeout,
            Failure::Connect(message) => ProxyError::UpstreamConnect(message.clone()),
        }
    }
}

impl State {
    /// Whether the maintainer should reopen a connection now: used within [`STAY_WARM`].
    fn stays_warm(&self, now: Instant) -> bool {
        self.last_use
            .is_some_and(|used| now.saturating_duration_since(used) < STAY_WARM)
    }

    /// How long an HTTP/1.1 connection may stay idle and still be used: [`IDLE_TIMEOUT`], or
    /// three quarters of the idle timeout the hub showed, if shorter.
    fn idle_limit(&self) -> Duration {
        self.hub_idle
            .map_or(IDLE_TIMEOUT, |d| (d * 3 / 4).min(IDLE_TIMEOUT))
    }
}

struct H2Connection {
    id: u64,
    sender: http2::SendRequest<RequestBody>,
    streams: Arc<AtomicUsize>,
    limit: Arc<AtomicUsize>,
}

struct IdleHttp1 {
    id: u64,
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

enum Checkout {
    H2 {
        id: u64,
        sender: http2::SendRequest<RequestBody>,
        streams: Arc<AtomicUsize>,
    },
    Http1(u64, http1::SendRequest<RequestBody>),
}

/// Holds a request's share of a hub connection until its response body ends or is dropped:
/// an HTTP/2 stream slot, or the HTTP/1.1 connection, then given back to the pool.
pub struct Lease {
    kind: LeaseKind,
}

enum LeaseKind {
    H2(Arc<AtomicUsize>),
    Http1 {
        id: u64,
        sender: Option<http1::SendRequest<RequestBody>>,
        pool: Weak<Inner>,
    },
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            LeaseKind::H2(_) => "Lease(h2)",
            LeaseKind::Http1 { .. } => "Lease(http1)",
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        match &mut self.kind {
            LeaseKind::H2(streams) => {
                streams.fetch_sub(1, Ordering::Relaxed);
            }
            LeaseKind::Http1 { id, sender, pool } => {
                // A body dropped before its end closes the connection: don't keep that one.
                if let (Some(sender), Some(pool)) = (sender.take(), pool.upgrade())
                    && !sender.is_closed()
                {
                    pool.lock().idle.push(IdleHttp1 {
                        id: *id,
                        sender,
                        since: Instant::now(),
                    });
                }
            }
        }
    }
}

/// Counts a request in `civic_sidecar_hub_requests_waiting` while it waits for a connection.
struct Waiting<'a>(&'a Metrics);

impl<'a> Waiting<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.hub_requests_waiting.inc();
        Self(metrics)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.hub_requests_waiting.dec();
    }
}

impl Pool {
    /// An empty pool; it connects on the first request, or ahead of it once
    /// [`start`](Self::start)ed.
    pub fn new(upstream: Upstream, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                upstream,
                metrics,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }

    /// Spawns the maintainer: connects now, keeps one connection warm, reconnects with backoff
    /// and closes idle HTTP/1.1 connections. Abort the handle to stop it.
    pub fn start(&self) -> JoinHandle<()> {
        // Counted before the task runs: a request arriving first waits for this connect
        // instead of opening a second connection.
        {
            let mut state = self.inner.lock();
            state.connecting += 1;
            state.last_use = Some(Instant::now());
        }
        tokio::spawn(maintain(self.inner.clone()))
    }

    /// Sends `request` (origin-form, HTTP/1.1 headers) on a pooled connection. A request a
    /// reused connection closed before sending is retried on another.
    pub async fn send(
        &self,
        mut request: http::Request<RequestBody>,
    ) -> Result<(http::Response<Incoming>, Lease), ProxyError> {
        let upstream = &self.inner.upstream;
        loop {
            let (checkout, reused) = self.checkout().await?;
            let result = match checkout {
                Checkout::H2 {
                    id,
                    mut sender,
                    streams,
                } => {
                    let open = streams.fetch_add(1, Ordering::Relaxed) + 1;
                    self.inner
                        .metrics
                        .hub_streams_per_connection
                        .observe(open as f64);
                    let lease = Lease {
                        kind: LeaseKind::H2(streams),
                    };
                    upstream.to_h2(&mut request);
                    let result = sender.try_send_request(request).await;
                    if result.is_err() {
                        // Going away (GOAWAY) or gone: no new streams on it; those in flight
                        // run to their end.
                        self.inner.lock().h2.retain(|c| c.id != id);
                    }
                    result.map(|response| (response, lease))
                }
                Checkout::Http1(id, mut sender) => {
                    // A reused connection may still be finishing its previous response.
                    if reused && sender.ready().await.is_err() {
                        continue;
                    }
                    self.inner.metrics.hub_streams_per_connection.observe(1.0);
                    upstream.to_http1(&mut request);
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            let lease = Lease {
                                kind: LeaseKind::Http1 {
                                    id,
                                    sender: Some(sender),
                                    pool: Arc::downgrade(&self.inner),
                                },
                            };
                            Ok((response, lease))
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Ok(pair) => return Ok(pair),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection was already going away (closed, GOAWAY).
                    Some(unsent) if reused => {
                        tracing::debug!(
                            "hub connection closed before the request was sent; retrying"
                        );
                        request = unsent;
                    }
                    _ => return Err(upstream_error(e.into_error())),
                },
            }
        }
    }

    /// A connection for one request, and whether it was already open.
    async fn checkout(&self) -> Result<(Checkout, bool), ProxyError> {
        let mut waiting: Option<Waiting<'_>> = None;
        // Failed connects seen when this request began waiting for one.
        let mut failures: Option<u64> = None;
        loop {
            let notified = {
                let mut state = self.inner.lock();
                let now = Instant::now();
                state.last_use = Some(now);
                state.h2.retain(|c| !c.sender.is_closed());
                if let Some(c) = state
                    .h2
                    .iter()
                    .filter(|c| c.streams.load(Ordering::Relaxed) < c.limit.load(Ordering::Relaxed))
                    .min_by_key(|c| c.streams.load(Ordering::Relaxed))
                {
                    let checkout = Checkout::H2 {
                        id: c.id,
                        sender: c.sender.clone(),
                        streams: c.streams.clone(),
                    };
                    return Ok((checkout, true));
                }
                let limit = state.idle_limit();
                while let Some(idle) = state.idle.pop() {
                    // Too long idle: the hub may be closing it right now.
                    if !idle.sender.is_closed() && now.duration_since(idle.since) < limit {
                        if state.idle.is_empty() {
                            // The maintainer opens a spare for the next request.
                            self.inner.changed.notify_waiters();
                        }
                        return Ok((Checkout::Http1(idle.id, idle.sender), true));
                    }
                }
                // The connect this request waited for failed: so does the request.
                if let (Some(seen), Some(failure)) = (failures, &state.last_failure)
                    && state.failures > seen
                {
                    return Err(failure.error());
                }
                // HTTP/2 (or not known yet): a connect in flight will serve this request too.
                if state.h2_seen != Some(false) && state.connecting > 0 {
                    failures.get_or_insert(state.failures);
                    Some(self.inner.changed.notified())
                } else {
                    state.connecting += 1;
                    None
                }
            };
            waiting.get_or_insert_with(|| Waiting::new(&self.inner.metrics));
            match notified {
                Some(notified) => notified.await,
                None => {
                    // Boxed: the connect future (TLS handshake state) is large and rarely live.
                    return Box::pin(self.inner.open(false))
                        .await
                        .map(|c| (c.expect("an HTTP/1.1 connection not for the pool"), false));
                }
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a connection (the caller counted it in `connecting`). An HTTP/2 connection joins
    /// the pool; an HTTP/1.1 one goes to the caller, or to the idle list when `for_pool`.
    async fn open(self: &Arc<Self>, for_pool: bool) -> Result<Option<Checkout>, ProxyError> {
        let id = {
            let mut state = self.lock();
            state.next_id += 1;
            state.next_id
        };
        let weak = Arc::downgrade(self);
        let on_close = Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner.closed(id);
            }
        });
        let result = self.upstream.connect(on_close).await;
        let mut state = self.lock();
        state.connecting -= 1;
        let checkout = match result {
            Ok(Connected::H2(sender, limit)) => {
                state.h2_seen = Some(true);
                let streams = Arc::new(AtomicUsize::new(0));
                state.h2.push(H2Connection {
                    id,
                    sender: sender.clone(),
                    streams: streams.clone(),
                    limit,
                });
                Ok((!for_pool).then_some(Checkout::H2 {
                    id,
                    sender,
                    streams,
                }))
            }
            Ok(Connected::Http1(sender)) => {
                state.h2_seen = Some(false);
                if for_pool {
                    state.idle.push(IdleHttp1 {
                        id,
                        sender,
                        since: Instant::now(),
                    });
                    Ok(None)
                } else {
                    Ok(Some(Checkout::Http1(id, sender)))
                }
            }
            Err(e) => {
                state.failures += 1;
                state.last_failure = Some(Failure::of(&e));
                Err(e)
            }
        };
        drop(state);
        self.changed.notify_waiters();
        checkout
    }

    /// A connection's task ended. An idle HTTP/1.1 connection closed by the hub tells how long
    /// the hub lets one idle.
    fn closed(&self, id: u64) {
        let mut state = self.lock();
        state.h2.retain(|c| c.id != id);
        if let Some(at) = state.idle.iter().position(|c| c.id == id) {
            let idle = state.idle.remove(at).since.elapsed();
            if idle >= MIN_LEARNED_IDLE {
                if state.hub_idle.is_none_or(|d| idle < d) {
                    tracing::debug!(
                        idle_ms = idle.as_millis() as u64,
                        "the hub closes idle connections"
                    );
                }
                state.hub_idle = Some(idle);
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Drops closed connections and HTTP/1.1 connections idle too long (the maintainer then
    /// opens a fresh one); whether a usable connection is left, and when the next idle one
    /// will have been idle too long.
    fn sweep(&self, now: Instant) -> (bool, Option<Instant>) {
        let mut state = self.lock();
        state.h2.retain(|c| !c.sender.is_closed());
        let limit = state.idle_limit();
        state
            .idle
            .retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < limit);
        let next = state.idle.iter().map(|c| c.since + limit).min();
        (!state.h2.is_empty() || !state.idle.is_empty(), next)
    }
}

/// Keeps one usable connection open while the pool is in use ([`STAY_WARM`]): connects at start,
/// after the last one closed or was taken, and retries with backoff while the hub cannot be
/// reached.
async fn maintain(inner: Arc<Inner>) {
    let mut retries = RECONNECT.retries();
    // The first connect was counted by `Pool::start`.
    let mut first = true;
    loop {
        let notified = inner.changed.notified();
        let now = Instant::now();
        let (warm, next_expiry) = inner.sweep(now);
        let start = std::mem::take(&mut first)
            || !warm && {
                let mut state = inner.lock();
                let idle = state.connecting == 0 && state.stays_warm(now);
                if idle {
                    state.connecting += 1;
                }
                idle
            };
        if start {
            match inner.open(true).await {
                Ok(_) => retries.reset(),
                Err(_) => {
                    let delay = retries.next().unwrap_or(RECONNECT.max);
                    tracing::debug!(delay_ms = delay.as_millis() as u64, "hub reconnect backoff");
                    tokio::time::sleep(delay).await;
                }
            }
            continue;
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(
                next_expiry.map_or(now + SWEEP_INTERVAL, |t| t.min(now + SWEEP_INTERVAL)).into()
            ) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_warm_only_while_used() {
        let now = Instant::now();
        let mut state = State::default();
        assert!(!state.stays_warm(now), "never used");
        state.last_use = Some(now);
        assert!(state.stays_warm(now + STAY_WARM - Duration::from_secs(1)));
        assert!(!state.stays_warm(now + STAY_WARM));
    }

    #[test]
    fn idle_limit_stays_below_the_hub_idle_timeout() {
        let mut state = State::default();
        assert_eq!(state.idle_limit(), IDLE_TIMEOUT);
        state.hub_idle = Some(Duration::from_secs(60));
        assert_eq!(state.idle_limit(), IDLE_TIMEOUT, "never above the default");
        state.hub_idle = Some(Duration::from_secs(8));
        assert_eq!(state.idle_limit(), Duration::from_secs(6));
    }

    #[test]
    fn a_failed_connect_is_reported_to_its_waiters_as_the_same_error() {
        let timeout = Failure::of(&ProxyError::UpstreamConnectTimeout);
        assert!(matches!(
            timeout.error(),
            ProxyError::UpstreamConnectTimeout
        ));
        let refused = Failure::of(&ProxyError::UpstreamConnect("refused".into()));
        assert_eq!(refused.error().status(), http::StatusCode::BAD_GATEWAY);
    }
}
