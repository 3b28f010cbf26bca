//! The accept loop of the admin listeners (sidecar and operator) and of the operator's webhook;
//! the workload's proxy listener has its own, in [`crate::server`].
//!
//! - At most [`Limits::max_connections`] connections are open at once. The next client waits in
//!   the kernel's backlog instead of being accepted and starved, so a flood of idle connections
//!   costs a bounded amount of memory and never an unbounded number of tasks.
//! - Every request's headers must arrive within [`Limits::header_read_timeout`]; an HTTP/1.1
//!   connection left idle between requests is closed after the same time (hyper starts the
//!   clock when it waits for the next request head).
//! - Stopping takes two steps. [`Shutdown::drain`] asks each connection open at that moment to
//!   finish (HTTP/2: GOAWAY, so the peer moves its next requests to a new connection; HTTP/1.1:
//!   close after the response in flight) while new connections are still served, because a load
//!   balancer keeps routing to a terminating pod until it has seen the pod leave. The end of
//!   [`serve`]'s `stop` then closes the listener, asks every connection to finish and waits up to
//!   a grace period for them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Bounds of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Longest wait for a request's headers (and for the next request of an idle HTTP/1.1
    /// connection).
    pub header_read_timeout: Duration,
}

impl Limits {
    /// Kubelet probes and Prometheus scrapes: a few short requests at a time.
    pub const ADMIN: Limits = Limits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(10),
    };
}

/// HTTP/1.1 with the header deadline of `limits`.
pub fn http1(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
}

/// Longest run of an HTTP/2 connection without a sign of life from the peer.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 256;

/// HTTP/2 with PING keep-alive (a dead peer's connection is closed and its slot freed) and a
/// cap on concurrent streams.
pub fn http2() -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(H2_MAX_STREAMS);
    builder
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    Draining,
    Stopping,
}

/// Starts the drain of a running [`serve`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    phase: Arc<watch::Sender<Phase>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            phase: Arc::new(watch::Sender::new(Phase::Serving)),
        }
    }
}

impl Shutdown {
    /// Asks the connections open now to finish; new ones are still accepted.
    pub fn drain(&self) {
        self.phase.send_if_modified(|phase| {
            let serving = *phase == Phase::Serving;
            if serving {
                *phase = Phase::Draining;
            }
            serving
        });
    }

    /// Whether [`Shutdown::drain`] (or the stop) has begun: an HTTP/1.1 response should then say
    /// `connection: close`.
    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() != Phase::Serving
    }
}

/// One accepted connection: holds its slot until dropped.
pub struct Conn {
    phase: watch::Receiver<Phase>,
    /// The phase that ends this connection: the drain for one opened before it, else the stop.
    ends_at: Phase,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    /// Drives `connection` to its end, asking it to finish gracefully at its phase.
    pub async fn run<C>(mut self, connection: C) -> Result<(), C::Error>
    where
        C: GracefulConnection,
    {
        tokio::pin!(connection);
        let ends_at = self.ends_at;
        let ending = self
            .phase
            .wait_for(|phase| *phase == Phase::Stopping || *phase == ends_at);
        tokio::select! {
            result = connection.as_mut() => return result,
            _ = ending => {}
        }
        connection.as_mut().graceful_shutdown();
        connection.await
    }
}

/// Accepts on `listener` and hands each connection to `serve_connection` (spawned), within
/// `limits`, until `stop` resolves; then waits up to `grace` for the open connections.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    shutdown: Shutdown,
    stop: impl Future<Output = ()>,
    grace: Duration,
    mut serve_connection: F,
) where
    F: FnMut(TcpStream, SocketAddr, Conn) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            _ = &mut stop => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let phase = shutdown.phase.subscribe();
        let ends_at = match *phase.borrow() {
            Phase::Serving => Phase::Draining,
            _ => Phase::Stopping,
        };
        let conn = Conn {
            phase,
            ends_at,
            _slot: slot,
        };
        tokio::spawn(serve_connection(stream, peer, conn));
    }
    drop(listener);
    shutdown.phase.send_replace(Phase::Stopping);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            open = limits.max_connections - slots.available_permits(),
            "grace period over with connections still open"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: Limits = Limits {
        max_connections: 2,
        header_read_timeout: Duration::from_millis(300),
    };

    async fn start(
        shutdown: Shutdown,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let draining = shutdown.clone();
        let task = tokio::spawn(serve(
            listener,
            LIMITS,
            shutdown,
            async {
                let _ = stop_rx.await;
            },
            Duration::from_secs(5),
            move |stream, _, conn| {
                let draining = draining.clone();
                async move {
                    let svc = service_fn(move |_req| {
                        let close = draining.is_draining();
                        async move {
                            let mut resp =
                                http::Response::new(Full::new(Bytes::from_static(b"ok")));
                            if close {
                                resp.headers_mut()
                                    .insert(http::header::CONNECTION, "close".parse().unwrap());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = conn
                        .run(http1(&LIMITS).serve_connection(TokioIo::new(stream), svc))
                        .await;
                }
            },
        ));
        (addr, stop_tx, task)
    }

    async fn request(s: &mut TcpStream) -> String {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0; 1024];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    async fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_and_idle_ones_are_closed() {
        let (addr, stop, task) = start(Shutdown::default()).await;
        // Two silent connections fill the cap: a third is not served until one goes.
        let mut idle = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0; 1024];
        let early = tokio::time::timeout(Duration::from_millis(150), third.read(&mut buf)).await;
        assert!(early.is_err(), "served beyond the cap");
        // The header deadline closes the silent ones, and the waiting client is answered.
        for s in &mut idle {
            assert!(
                closed(s).await,
                "an idle connection outlived the header deadline"
            );
        }
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // A request whose headers trickle in is cut at the deadline.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(closed(&mut slow).await);
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_drain_finishes_open_connections_and_still_serves_new_ones() {
        let shutdown = Shutdown::default();
        let (addr, stop, task) = start(shutdown.clone()).await;
        let mut before = TcpStream::connect(addr).await.unwrap();
        assert!(request(&mut before).await.starts_with("HTTP/1.1 200"));
        shutdown.drain();
        // The keep-alive connection opened before the drain is closed...
        assert!(closed(&mut before).await);
        // ...and a new one is answered, told to close after its response.
        let mut after = TcpStream::connect(addr).await.unwrap();
        let reply = request(&mut after).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
        assert!(closed(&mut after).await);
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "still listening after the stop"
        );
    }
}
