//! The loopback MCP-shaped upstream every target reaches: small JSON-RPC POSTs answered as JSON,
//! large JSON answers (`?bytes=N`), and SSE streams (`GET ?sse=N&every_ms=M`). It runs on its own
//! runtime threads so the load generators and the proxies never share its scheduler, does no
//! per-request allocation beyond hyper's, and answers 401 to any request without a bearer token
//! (so a proxy that forgot the header shows up as errors, not as a fast run).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::error::{BenchError, Result};

/// Path every target serves.
pub const MCP_PATH: &str = "/hub/mcp";
/// The answer to a small JSON-RPC POST (a `tools/call` result).
pub const SMALL_REPLY: &[u8] =
    br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}],"isError":false}}"#;
/// Frame size of large answers.
const CHUNK: usize = 16 * 1024;

/// What the upstream saw, for sanity checks and event accounting.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    pub requests: AtomicU64,
    /// Requests refused with 401 because they carried no bearer token.
    pub unauthenticated: AtomicU64,
    pub sse_streams: AtomicU64,
    /// SSE events handed to hyper (a closed stream stops counting).
    pub sse_events: AtomicU64,
}

/// A running upstream; stops on drop.
pub struct Upstream {
    addr: SocketAddr,
    tls: bool,
    stats: Arc<UpstreamStats>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Upstream {
    /// Starts on 127.0.0.1:0 with `threads` runtime workers; TLS when `tls` is given (its ALPN
    /// is narrowed to HTTP/1.1: the server speaks only that).
    pub fn start(tls: Option<Arc<rustls::ServerConfig>>, threads: usize) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| BenchError::io("bind the upstream", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| BenchError::io("upstream listener", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| BenchError::io("upstream address", e))?;
        let acceptor = tls.map(|config| {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let is_tls = acceptor.is_some();
        let stats = Arc::new(UpstreamStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("bench-upstream")
            .enable_all()
            .build()
            .map_err(|e| BenchError::io("upstream runtime", e))?;
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("bench-upstream-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, acceptor, st, stop_rx).await,
                        Err(e) => eprintln!("upstream listener: {e}"),
                    }
                });
                runtime.shutdown_background();
            })
            .map_err(|e| BenchError::io("upstream thread", e))?;
        Ok(Self {
            addr,
            tls: is_tls,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The MCP URL, `http(s)://127.0.0.1:port/hub/mcp` (the test certificate names the address;
    /// no name lookup per connection).
    pub fn mcp_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{MCP_PATH}", self.addr)
    }

    pub fn stats(&self) -> &UpstreamStats {
        &self.stats
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    stats: Arc<UpstreamStats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let stats = stats.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let stats = stats.clone();
                async move { Ok::<_, Infallible>(handle(req, stats).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match acceptor {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
            }
        });
    }
}

/// `name=value` from a query string.
fn query_param(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

async fn handle(req: Request<Incoming>, stats: Arc<UpstreamStats>) -> Response<UpBody> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let authenticated = req
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"Bearer ") && v.len() > 7);
    let (parts, body) = req.into_parts();
    // Drain the request body so the connection stays reusable.
    let _ = body.collect().await;
    if parts.uri.path() != MCP_PATH {
        return status(StatusCode::NOT_FOUND);
    }
    if !authenticated {
        stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
        return status(StatusCode::UNAUTHORIZED);
    }
    let query = parts.uri.query();
    match parts.method {
        Method::POST => match query_param(query, "bytes") {
            Some(n) => json(UpBody::Sized {
                data: large_body(n as usize),
                offset: 0,
            }),
            None => json(UpBody::Full(Some(Bytes::from_static(SMALL_REPLY)))),
        },
        Method::GET => {
            let events = query_param(query, "sse").unwrap_or(1);
            let every = Duration::from_millis(query_param(query, "every_ms").unwrap_or(1000));
            stats.sse_streams.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(sse_stream(tx, events, every, stats.clone()));
            let mut r = Response::new(UpBody::Sse(rx));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        Method::DELETE => status(StatusCode::OK),
        _ => status(StatusCode::METHOD_NOT_ALLOWED),
    }
}

async fn sse_stream(
    tx: mpsc::Sender<Bytes>,
    events: u64,
    every: Duration,
    stats: Arc<UpstreamStats>,
) {
    for seq in 0..events {
        if seq > 0 {
            tokio::time::sleep(every).await;
        }
        let event = format!(
            "id: {seq}\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":\"bench\",\"progress\":{seq}}}}}\n\n"
        );
        if tx.send(Bytes::from(event)).await.is_err() {
            return;
        }
        stats.sse_events.fetch_add(1, Ordering::Relaxed);
    }
}

fn json(body: UpBody) -> Response<UpBody> {
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn status(code: StatusCode) -> Response<UpBody> {
    let mut r = Response::new(UpBody::Full(None));
    *r.status_mut() = code;
    r
}

/// A JSON document of exactly `n` bytes (at least the wrapper), shared between requests.
fn large_body(n: usize) -> Bytes {
    static MIB: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let build = |n: usize| {
        let head = br#"{"jsonrpc":"2.0","id":1,"result":{"pad":""#;
        let tail = br#""}}"#;
        let mut v = Vec::with_capacity(n.max(head.len() + tail.len()));
        v.extend_from_slice(head);
        v.resize(n.saturating_sub(tail.len()).max(head.len()), b'x');
        v.extend_from_slice(tail);
        Bytes::from(v)
    };
    if n == 1 << 20 {
        MIB.get_or_init(|| build(1 << 20)).clone()
    } else {
        build(n)
    }
}

/// Response bodies of the upstream.
pub enum UpBody {
    Full(Option<Bytes>),
    /// A large answer sent in [`CHUNK`]-sized frames, with an exact length.
    Sized {
        data: Bytes,
        offset: usize,
    },
    Sse(mpsc::Receiver<Bytes>),
}

impl http_body::Body for UpBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            UpBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            UpBody::Sized { data, offset } => {
                if *offset >= data.len() {
                    return Poll::Ready(None);
                }
                let end = (*offset + CHUNK).min(data.len());
                let frame = data.slice(*offset..end);
                *offset = end;
                Poll::Ready(Some(Ok(Frame::data(frame))))
            }
            UpBody::Sse(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Full(d) => d.is_none(),
            UpBody::Sized { data, offset } => *offset >= data.len(),
            UpBody::Sse(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            UpBody::Sized { data, offset } => {
                SizeHint::with_exact(data.len().saturating_sub(*offset) as u64)
            }
            UpBody::Sse(_) => SizeHint::default(),
        }
    }
}
