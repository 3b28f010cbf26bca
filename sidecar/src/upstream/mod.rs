//! Connections to the hub. [`Upstream`] knows where the hub is and how to open one connection
//! (TCP, rustls with the shared client configuration, then HTTP/2 when ALPN or the configured
//! protocol says so, else HTTP/1.1); [`pool::Pool`] keeps a few of them warm and shares them
//! between all workload connections (docs/architecture.md §5). `http://` only on loopback.

pub mod pool;

use std::future::Future as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Url;

use crate::body::{BodyError, RequestBody};
use crate::config::HubProtocol;
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// Connect plus TLS handshake plus HTTP handshake must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest read buffer of an HTTP/1.1 hub connection (hyper's default is ~400 KiB). A large or
/// fast response body is read in pieces of at most this much, so 50 concurrent 1 MiB responses
/// hold a few MiB, not tens (docs/performance.md); hub response heads are far smaller.
pub const READ_BUF_MAX: usize = 64 * 1024;

/// Most streams one HTTP/2 connection carries before the pool opens another, even if the hub
/// allows more (its SETTINGS_MAX_CONCURRENT_STREAMS, when lower, is the limit): it bounds the
/// connection window below and what one lost connection takes down. It is the floor RFC 9113
/// §6.5.2 recommends servers allow.
pub const H2_MAX_STREAMS: usize = 100;

/// Receive window of one HTTP/2 stream: at most this much of a response waits unread in the
/// sidecar for a slow workload before the hub is told to pause that stream.
pub const H2_STREAM_WINDOW: u32 = 256 * 1024;

/// Receive window of one HTTP/2 connection: every stream's window at once, so streams whose
/// workloads stopped reading can never use up the connection's window and stall the others.
pub const H2_CONNECTION_WINDOW: u32 = H2_STREAM_WINDOW * H2_MAX_STREAMS as u32;

/// HTTP/2 PING interval: keeps an idle connection (and NAT or load-balancer state on the way)
/// warm and finds a dead one before a request does.
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// A PING unanswered this long closes the connection.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect to the hub.
#[derive(Clone)]
pub struct Upstream {
    host: String,
    port: u16,
    scheme: Scheme,
    authority: Authority,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Prior-knowledge HTTP/2 over plain TCP.
    h2c: bool,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("h2c", &self.h2c)
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

/// One open hub connection's request handle; the connection itself runs in its own task.
pub(crate) enum Connected {
    /// HTTP/1.1: one request at a time.
    Http1(http1::SendRequest<RequestBody>),
    /// HTTP/2: the handle is cheap to clone, each clone opens streams on the same connection;
    /// with the streams the hub allows at once (its SETTINGS_MAX_CONCURRENT_STREAMS, kept up to
    /// date by the connection task).
    H2(http2::SendRequest<RequestBody>, Arc<AtomicUsize>),
}

/// The connection task of a hub connection: `on_close` runs when it ends, whatever the reason.
pub(crate) type OnClose = Box<dyn FnOnce() + Send>;

impl Upstream {
    /// Connection settings for `hub_url`: for `https`, `tls` with ALPN `h2` and `http/1.1`.
    pub fn new(
        hub_url: &Url,
        tls: &ClientConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, UpstreamError> {
        Self::with_protocol(hub_url, tls, HubProtocol::Auto, metrics)
    }

    /// Like [`new`](Self::new), speaking `protocol`.
    pub fn with_protocol(
        hub_url: &Url,
        tls: &ClientConfig,
        protocol: HubProtocol,
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
        let authority = Authority::try_from(crate::config::authority(hub_url).as_str())
            .map_err(|_| UpstreamError::NoHost)?;
        let https = hub_url.scheme() == "https";
        let tls = if https {
            // A clone shares the session cache (`resumption`) of the one client configuration,
            // so a reconnect resumes the TLS session instead of a full handshake.
            let mut config = tls.clone();
            config.alpn_protocols = match protocol {
                HubProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                HubProtocol::Http1 => vec![b"http/1.1".to_vec()],
                HubProtocol::H2 => vec![b"h2".to_vec()],
            };
            let name = ServerName::try_from(host.clone()).map_err(|_| UpstreamError::ServerName)?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            host,
            port,
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
            authority,
            tls,
            h2c: !https && protocol == HubProtocol::H2,
            connect_timeout: CONNECT_TIMEOUT,
            metrics,
        })
    }

    /// Opens a connection and spawns its task; `on_close` runs when that task ends.
    pub(crate) async fn connect(&self, on_close: OnClose) -> Result<Connected, ProxyError> {
        let result = tokio::time::timeout(self.connect_timeout, self.handshake(on_close)).await;
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
            Ok(Ok(connected)) => Ok(connected),
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

    async fn handshake(&self, on_close: OnClose) -> Result<Connected, ProxyError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| ProxyError::UpstreamConnect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.http(TokioIo::new(tcp), self.h2c, on_close).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| ProxyError::UpstreamConnect(format!("TLS: {e}")))?;
                let (_, session) = tls.get_ref();
                let h2 = session.alpn_protocol() == Some(b"h2");
                tracing::debug!(
                    h2,
                    resumed = matches!(
                        session.handshake_kind(),
                        Some(rustls::HandshakeKind::Resumed)
                    ),
                    "hub TLS handshake done"
                );
                self.http(TokioIo::new(tls), h2, on_close).await
            }
        }
    }

    async fn http<I>(&self, io: I, h2: bool, on_close: OnClose) -> Result<Connected, ProxyError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let failed = |e: hyper::Error| ProxyError::UpstreamConnect(e.to_string());
        if h2 {
            let (sender, mut conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
                .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .handshake(io)
                .await
                .map_err(failed)?;
            let limit = Arc::new(AtomicUsize::new(H2_MAX_STREAMS));
            let seen = limit.clone();
            let gauge = self.metrics.hub_connections.with_label_values(&["h2"]);
            gauge.inc();
            tokio::spawn(async move {
                let result = std::future::poll_fn(|cx| {
                    let polled = std::pin::Pin::new(&mut conn).poll(cx);
                    // The hub may change its limit with any SETTINGS frame.
                    let allowed = conn.current_max_send_streams().min(H2_MAX_STREAMS);
                    seen.store(allowed.max(1), Ordering::Relaxed);
                    polled
                })
                .await;
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP/2 hub connection ended with an error");
                }
                gauge.dec();
                on_close();
            });
            Ok(Connected::H2(sender, limit))
        } else {
            let mut builder = http1::Builder::new();
            builder.max_buf_size(READ_BUF_MAX);
            let (sender, conn) = builder.handshake(io).await.map_err(failed)?;
            let gauge = self.metrics.hub_connections.with_label_values(&["http1"]);
            gauge.inc();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP/1.1 hub connection ended with an error");
                }
                gauge.dec();
                on_close();
            });
            Ok(Connected::Http1(sender))
        }
    }

    /// Turns an origin-form request into what HTTP/2 sends: `:scheme` and `:authority` from the
    /// hub URL, and no `Host` (RFC 9113 §8.3.1).
    pub(crate) fn to_h2(&self, request: &mut http::Request<RequestBody>) {
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        *request.version_mut() = http::Version::HTTP_2;
        request.headers_mut().remove(http::header::HOST);
    }

    /// The reverse of [`to_h2`](Self::to_h2), for a request retried on an HTTP/1.1 connection.
    pub(crate) fn to_http1(&self, request: &mut http::Request<RequestBody>) {
        if request.version() != http::Version::HTTP_2 {
            return;
        }
        let origin = request
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        if let Ok(uri) = http::Uri::try_from(origin) {
            *request.uri_mut() = uri;
        }
        *request.version_mut() = http::Version::HTTP_11;
        if let Ok(host) = http::HeaderValue::from_str(self.authority.as_str()) {
            request.headers_mut().insert(http::header::HOST, host);
        }
    }
}

/// A failed exchange with the hub; a request body over the limit is the workload's fault (413).
pub(crate) fn upstream_error(error: hyper::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(BodyError::TooLarge(limit)) = e.downcast_ref::<BodyError>() {
            return ProxyError::BodyTooLarge(*limit);
        }
        source = e.source();
    }
    ProxyError::Upstream(error.to_string())
}
