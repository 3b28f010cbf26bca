//! Connections to the hub. Each workload connection lazily opens one HTTP/1.1 connection to the
//! hub and reuses it for its requests ([`UpstreamSlot`]); measured here, that beats a shared pool
//! (docs/architecture.md §5). The hub connection is driven by the workload connection's own task
//! ([`HubDriver`]), like nginx's one event loop: no task hand-off per request, no task per hub
//! connection. TLS is rustls with the shared client configuration; `http://` only on loopback.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Url;

use crate::body::{BodyError, RequestBody};
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// Connect plus TLS handshake plus HTTP handshake must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest read buffer of a hub connection (hyper's default is ~400 KiB). A large or fast
/// response body is read in pieces of at most this much, so 50 concurrent 1 MiB responses
/// hold a few MiB, not tens (docs/performance.md); hub response heads are far smaller.
pub const READ_BUF_MAX: usize = 64 * 1024;

/// Where and how to connect to the hub.
#[derive(Clone)]
pub struct Upstream {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why the hub URL cannot be connected to.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The hub URL names no host or port.
    #[error("hub URL has no host or port")]
    NoHost,
    /// The hub host cannot be a TLS server name.
    #[error("hub host is not a valid TLS server name")]
    ServerName,
}

impl Upstream {
    /// Connection settings for `hub_url`; `tls` is used (with ALPN `http/1.1`) for `https`.
    pub fn new(
        hub_url: &Url,
        tls: &ClientConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, UpstreamError> {
        let host = match hub_url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(UpstreamError::NoHost),
        };
        let port = hub_url
            .port_or_known_default()
            .ok_or(UpstreamError::NoHost)?;
        let tls = if hub_url.scheme() == "https" {
            let mut config = tls.clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone()).map_err(|_| UpstreamError::ServerName)?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            host,
            port,
            tls,
            connect_timeout: CONNECT_TIMEOUT,
            metrics,
        })
    }

    /// Opens a connection; it makes progress only while its future is polled ([`HubDriver`]).
    async fn connect(&self) -> Result<(SendRequest<RequestBody>, BoxedConnection), ProxyError> {
        let result = tokio::time::timeout(self.connect_timeout, self.handshake()).await;
        let label = match &result {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "error",
            Err(_) => "timeout",
        };
        self.metrics
            .upstream_connections
            .with_label_values(&[label])
            .inc();
        match result {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot connect to the hub");
                Err(e)
            }
            Err(_) => {
                tracing::warn!("timed out connecting to the hub");
                Err(ProxyError::UpstreamConnectTimeout)
            }
        }
    }

    async fn handshake(&self) -> Result<(SendRequest<RequestBody>, BoxedConnection), ProxyError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| ProxyError::UpstreamConnect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut builder = http1::Builder::new();
        builder.max_buf_size(READ_BUF_MAX);
        match &self.tls {
            None => {
                let (sender, conn) = builder
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| ProxyError::UpstreamConnect(e.to_string()))?;
                Ok((sender, Box::pin(conn)))
            }
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| ProxyError::UpstreamConnect(format!("TLS: {e}")))?;
                let (sender, conn) = builder
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| ProxyError::UpstreamConnect(e.to_string()))?;
                Ok((sender, Box::pin(conn)))
            }
        }
    }
}

/// A failed exchange with the hub; a request body over the limit is the workload's fault (413).
fn upstream_error(error: hyper::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(BodyError::TooLarge(limit)) = e.downcast_ref::<BodyError>() {
            return ProxyError::BodyTooLarge(*limit);
        }
        source = e.source();
    }
    ProxyError::Upstream(error.to_string())
}

type BoxedConnection = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// Drives one workload connection's hub connection from the workload connection's task: that
/// task polls [`HubDriver::drive`] around its own HTTP server future, and the request path
/// installs each newly opened hub connection here. Dropping the driver (the workload connection
/// ended) or replacing its connection closes the hub connection at once.
#[derive(Default)]
pub struct HubDriver {
    state: Mutex<DriverState>,
}

#[derive(Default)]
struct DriverState {
    connection: Option<BoxedConnection>,
    /// The driving task, woken when a connection is installed.
    waker: Option<Waker>,
}

impl std::fmt::Debug for HubDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubDriver")
            .field("connected", &self.lock().connection.is_some())
            .finish()
    }
}

impl HubDriver {
    /// Runs `workload` (the workload connection's server future) to completion while polling the
    /// hub connection in the same task, before it on every wake-up so that a response or body
    /// chunk read from the hub is relayed in the same pass.
    pub async fn drive<F: Future + Unpin>(&self, mut workload: F) -> F::Output {
        std::future::poll_fn(|cx| {
            self.poll_connection(cx);
            Pin::new(&mut workload).poll(cx)
        })
        .await
    }

    /// Never holds the lock across anything but this poll: the request path (which installs)
    /// runs inside the workload future, after this returns.
    fn poll_connection(&self, cx: &mut Context<'_>) {
        let mut state = self.lock();
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        if let Some(connection) = state.connection.as_mut()
            && let Poll::Ready(result) = connection.as_mut().poll(cx)
        {
            state.connection = None;
            if let Err(e) = result {
                tracing::debug!(error = %e, "hub connection ended with an error");
            }
        }
    }

    fn install(&self, connection: Option<BoxedConnection>) {
        let mut state = self.lock();
        // The old connection (if any) is dropped here, closing its socket.
        state.connection = connection;
        if let Some(waker) = state.waker.as_ref() {
            waker.wake_by_ref();
        }
    }

    fn lock(&self) -> MutexGuard<'_, DriverState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One workload connection's hub connection, opened on first use and reopened when it closes;
/// it is driven by the [`HubDriver`] passed to [`send`](Self::send).
#[derive(Debug, Default)]
pub struct UpstreamSlot {
    sender: Option<SendRequest<RequestBody>>,
}

impl UpstreamSlot {
    /// Sends `request` on this slot's connection, connecting first if needed. A request the
    /// old connection closed before sending is retried once on a new connection.
    pub async fn send(
        &mut self,
        upstream: &Upstream,
        driver: &HubDriver,
        mut request: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        loop {
            let reused = self.ready(driver).await;
            if !reused {
                // Boxed: the connect future (TLS handshake state) is large and rarely live;
                // inline it would grow every workload connection's in-flight request.
                let (sender, connection) = Box::pin(upstream.connect()).await?;
                driver.install(Some(connection));
                self.sender = Some(sender);
            }
            let sender = self.sender.as_mut().expect("connected above");
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut e) => {
                    self.close(driver);
                    match e.take_message() {
                        // Never written: the kept-alive connection was already gone.
                        Some(unsent) if reused => {
                            tracing::debug!(
                                "hub connection closed before the request was sent; reconnecting"
                            );
                            request = unsent;
                        }
                        _ => return Err(upstream_error(e.into_error())),
                    }
                }
            }
        }
    }

    /// Whether the current connection can take a request (waits for the previous response body).
    async fn ready(&mut self, driver: &HubDriver) -> bool {
        let Some(sender) = self.sender.as_mut() else {
            return false;
        };
        if sender.is_closed() || sender.ready().await.is_err() {
            self.close(driver);
            return false;
        }
        true
    }

    fn close(&mut self, driver: &HubDriver) {
        self.sender = None;
        driver.install(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Sets its flag when dropped: stands in for a hub connection's socket.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn an_installed_connection_runs_in_the_workload_task() {
        let driver = HubDriver::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        // The "hub connection" finishes once the workload side signals it, which it can only
        // observe if the driver keeps polling it while the workload future waits.
        let workload = Box::pin(async {
            driver.install(Some(Box::pin(async move {
                let _ = rx.await;
                finished.store(true, Ordering::SeqCst);
                Ok(())
            })));
            let _ = tx.send(());
            while !done.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        });
        tokio::time::timeout(Duration::from_secs(5), driver.drive(workload))
            .await
            .expect("the hub connection made progress inside drive");
        assert!(
            driver.lock().connection.is_none(),
            "a finished connection is dropped"
        );
    }

    #[tokio::test]
    async fn replacing_or_dropping_the_driver_closes_the_connection_at_once() {
        let driver = HubDriver::default();
        let first = Arc::new(AtomicBool::new(false));
        let guard = DropFlag(first.clone());
        driver.install(Some(Box::pin(async move {
            let _guard = guard;
            std::future::pending::<hyper::Result<()>>().await
        })));
        driver.install(None);
        assert!(
            first.load(Ordering::SeqCst),
            "replaced: the old connection is gone"
        );

        let second = Arc::new(AtomicBool::new(false));
        let guard = DropFlag(second.clone());
        driver.install(Some(Box::pin(async move {
            let _guard = guard;
            std::future::pending::<hyper::Result<()>>().await
        })));
        drop(driver);
        assert!(
            second.load(Ordering::SeqCst),
            "dropped with its workload connection"
        );
    }
}
