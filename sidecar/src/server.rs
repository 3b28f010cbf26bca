//! Wires configuration, token source, proxy and admin endpoints to two listeners, and shuts down
//! gracefully: stop accepting, let open requests and streams finish until the grace deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::admin::Admin;
use crate::config::Config;
use crate::exchange::{ExchangeClient, ExchangeError};
use crate::listen;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::tls::{self, TlsError};
use crate::token::TokenSource;
use crate::upstream::{Upstream, UpstreamError};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The exchange client could not be built.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    /// The hub URL cannot be connected to.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({which}): {source}")]
    Bind {
        /// `proxy` or `admin`.
        which: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ServerError {
    /// Low-cardinality label.
    pub fn category(&self) -> &'static str {
        match self {
            ServerError::Tls(e) => e.category(),
            ServerError::Exchange(e) => e.category(),
            ServerError::Upstream(_) => "upstream_config",
            ServerError::Bind { .. } => "bind",
        }
    }
}

/// A sidecar with both listeners bound, ready to [`run`](Server::run).
pub struct Server {
    proxy: Arc<Proxy<ExchangeClient>>,
    admin: Arc<Admin<ExchangeClient>>,
    tokens: Arc<TokenSource<ExchangeClient>>,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    shutting_down: Arc<AtomicBool>,
    grace: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("proxy_addr", &self.proxy_addr())
            .field("admin_addr", &self.admin_addr())
            .finish()
    }
}

impl Server {
    /// Builds everything from `config` and binds both listeners (port 0 picks a free port; the
    /// bound addresses are logged as `proxy listening` / `admin listening` with field `addr`).
    pub async fn bind(config: &Config) -> Result<Self, ServerError> {
        let tls = tls::client_config(config.ca_pem.as_deref())?;
        let metrics = Arc::new(Metrics::new());
        let exchanger = Arc::new(ExchangeClient::new(
            config.token_url.clone(),
            tls.clone(),
            config.exchange_timeout,
        )?);
        let tokens = Arc::new(TokenSource::new(config, exchanger, metrics.clone()));
        let weak = Arc::downgrade(&tokens);
        metrics.register_token_expiry(move || weak.upgrade()?.seconds_until_expiry());
        let upstream =
            Upstream::with_protocol(&config.hub_url, &tls, config.hub_protocol, metrics.clone())?;
        let proxy = Arc::new(Proxy::new(
            config,
            tokens.clone(),
            upstream,
            metrics.clone(),
        ));
        let shutting_down = Arc::new(AtomicBool::new(false));
        let admin = Arc::new(Admin::new(tokens.clone(), metrics, shutting_down.clone()));

        let proxy_listener = bind("proxy", config.listen_addr).await?;
        let admin_listener = bind("admin", config.admin_addr).await?;
        let server = Self {
            proxy,
            admin,
            tokens,
            proxy_listener,
            admin_listener,
            shutting_down,
            grace: config.shutdown_grace,
        };
        tracing::info!(addr = %server.proxy_addr(), hub = %config.hub_url, mode = config.mode.name(), "proxy listening");
        tracing::info!(addr = %server.admin_addr(), "admin listening");
        Ok(server)
    }

    /// The proxy listener's bound address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets open requests and streams
    /// finish for up to the grace period, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let warmer = tokio::spawn(self.tokens.clone().run_warmer());
        // Connects to the hub ahead of the first request; readiness does not wait for it.
        let pool = self.proxy.start_pool();
        let admin = tokio::spawn(serve_admin(self.admin_listener, self.admin.clone()));
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a sender; `recv` returns `None` once all are gone.
        let (open_tx, mut open_rx) = mpsc::channel::<()>(1);

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.proxy_listener.accept() => match accepted {
                    // The listener is loopback-only, but a node that routes 127.0.0.0/8 from
                    // outside (route_localnet=1, CVE-2020-8558) delivers foreign peers to it.
                    Ok((stream, peer)) if !peer.ip().to_canonical().is_loopback() => {
                        tracing::warn!(peer = %peer.ip(), "refused a connection from a non-loopback peer");
                        drop(stream);
                    }
                    Ok((stream, _)) => {
                        tokio::spawn(serve_proxy(stream, self.proxy.clone(), stop_rx.clone(), open_tx.clone()));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }

        tracing::info!(
            grace_s = self.grace.as_secs(),
            "shutting down: no new connections"
        );
        self.shutting_down.store(true, Ordering::Relaxed);
        drop(self.proxy_listener);
        let _ = stop_tx.send(true);
        drop(open_tx);
        if tokio::time::timeout(self.grace, open_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing the remaining connections");
        }
        warmer.abort();
        pool.abort();
        admin.abort();
        tracing::info!("stopped");
    }
}

async fn bind(which: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            which,
            addr,
            source,
        })
}

async fn serve_proxy(
    stream: TcpStream,
    proxy: Arc<Proxy<ExchangeClient>>,
    mut stop: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
) {
    let _ = stream.set_nodelay(true);
    let result = proxy.serve_connection(stream, stopped(&mut stop)).await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "workload connection ended with an error");
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

async fn serve_admin(listener: TcpListener, admin: Arc<Admin<ExchangeClient>>) {
    // Stopped by abort at the end of `run`: probes and scrapes need no drain.
    let limits = listen::Limits::ADMIN;
    listen::serve(
        listener,
        limits,
        listen::Shutdown::default(),
        std::future::pending(),
        Duration::ZERO,
        move |stream, _, conn| {
            let admin = admin.clone();
            async move {
                let service = service_fn(move |request| {
                    let response = admin.handle(&request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = conn
                    .run(listen::http1(&limits).serve_connection(TokioIo::new(stream), service))
                    .await;
            }
        },
    )
    .await;
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
