//! A minimal hyper server on 127.0.0.1:0 (plain or TLS) shared by the fakes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Error type of the fakes' response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response body of the fakes.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// A body fed by a channel; the sender notices (`Sender::closed`) when the peer went away
/// because hyper drops the body then.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn new(capacity: usize) -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Self { rx })
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub(crate) type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// Which connection (1, 2, …, in accept order) a request arrived on; in each request's
/// extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionId(pub usize);

/// Connection counts of a server.
#[derive(Debug, Default)]
pub(crate) struct ConnectionStats {
    /// Connections accepted (and, with TLS, handshaken).
    pub(crate) accepted: AtomicUsize,
    /// Connections that have ended.
    pub(crate) closed: AtomicUsize,
}

/// A running server; stops accepting and closes its connections on drop.
pub(crate) struct TestServer {
    addr: SocketAddr,
    tls: bool,
    stop: watch::Sender<bool>,
    goaway: watch::Sender<u64>,
    stats: Arc<ConnectionStats>,
}

impl TestServer {
    pub(crate) async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: Handler,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let (goaway, goaway_rx) = watch::channel(0);
        let stats = Arc::new(ConnectionStats::default());
        let acceptor = tls.clone().map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(accept_loop(
            listener,
            acceptor,
            handler,
            stop_rx,
            goaway_rx,
            stats.clone(),
        ));
        Ok(Self {
            addr,
            tls: tls.is_some(),
            stop,
            goaway,
            stats,
        })
    }

    pub(crate) fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    /// Gracefully closes every open connection: HTTP/2 GOAWAY, HTTP/1.1 close after the
    /// response in flight. New connections are accepted as usual.
    pub(crate) fn close_connections(&self) {
        self.goaway.send_modify(|n| *n += 1);
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port` or `https://localhost:port`.
    pub(crate) fn base_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    handler: Handler,
    mut stop: watch::Receiver<bool>,
    goaway: watch::Receiver<u64>,
    stats: Arc<ConnectionStats>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        let mut goaway = goaway.clone();
        goaway.mark_unchanged();
        let stats = stats.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acc) => {
                    let Ok(tls) = acc.accept(stream).await else {
                        return;
                    };
                    serve(TokioIo::new(tls), handler, stop, goaway, &stats).await;
                }
                None => serve(TokioIo::new(stream), handler, stop, goaway, &stats).await,
            }
        });
    }
}

async fn serve<I>(
    io: I,
    handler: Handler,
    mut stop: watch::Receiver<bool>,
    mut goaway: watch::Receiver<u64>,
    stats: &ConnectionStats,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let id = ConnectionId(stats.accepted.fetch_add(1, Ordering::SeqCst) + 1);
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(id);
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {}
        _ = goaway.changed() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! { _ = conn.as_mut() => {}, _ = stop.changed() => {} }
        }
    }
    stats.closed.fetch_add(1, Ordering::SeqCst);
}
