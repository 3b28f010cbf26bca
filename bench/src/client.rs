//! The benchmark's own HTTP/1.1 client (hyper, plain or TLS): one connection per
//! [`Connection`], requests shaped like an MCP workload's.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::error::{BenchError, Result};
use crate::upstream::MCP_PATH;

/// The small JSON-RPC request every throughput and latency run sends.
pub const SMALL_REQUEST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}"#;

/// Where requests go: one of direct, nginx, sidecar.
#[derive(Clone)]
pub struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// TLS to the target itself (only "direct" to a TLS upstream).
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// What a workload sends: none through a proxy, a bearer token when calling directly.
    pub authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Target {
    /// A plain-HTTP proxy on loopback (nginx or the sidecar).
    pub fn proxy(name: &'static str, addr: SocketAddr) -> Self {
        Self {
            name,
            addr,
            tls: None,
            authorization: None,
        }
    }

    /// The upstream itself, with a static bearer token (as a workload holding one would).
    pub fn direct(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Self {
            name: "direct",
            addr,
            tls: tls.map(|c| {
                let mut c = (*c).clone();
                c.alpn_protocols = vec![b"http/1.1".to_vec()];
                tokio_rustls::TlsConnector::from(Arc::new(c))
            }),
            authorization: Some(HeaderValue::from_static(crate::DIRECT_BEARER)),
        }
    }

    /// `http(s)://127.0.0.1:port/hub/mcp`, for wrk.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{MCP_PATH}", self.addr)
    }

    /// A request to `/hub/mcp?query` with the workload's headers.
    pub fn request(&self, method: Method, query: &str, body: Bytes) -> Request<Full<Bytes>> {
        let uri = if query.is_empty() {
            MCP_PATH.to_string()
        } else {
            format!("{MCP_PATH}?{query}")
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri.parse().expect("a valid path");
        let h = req.headers_mut();
        h.insert(
            HOST,
            HeaderValue::from_str(&self.addr.to_string()).expect("an address is a header value"),
        );
        if method == Method::GET {
            h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        } else {
            h.insert(
                ACCEPT,
                HeaderValue::from_static("application/json, text/event-stream"),
            );
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(a) = &self.authorization {
            h.insert(AUTHORIZATION, a.clone());
        }
        req
    }

    /// The small JSON-RPC POST.
    pub fn small_post(&self) -> Request<Full<Bytes>> {
        self.request(
            Method::POST,
            "",
            Bytes::from_static(SMALL_REQUEST.as_bytes()),
        )
    }

    /// Opens a connection; its driver runs as a task on the current runtime.
    pub async fn connect(&self) -> Result<Connection> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| BenchError::io(format!("connect to {}", self.name), e))?;
        let _ = tcp.set_nodelay(true);
        let sender = match &self.tls {
            None => handshake(TokioIo::new(tcp)).await?,
            Some(connector) => {
                let name = ServerName::try_from("localhost").expect("a valid name");
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| BenchError::io(format!("TLS to {}", self.name), e))?;
                handshake(TokioIo::new(tls)).await?
            }
        };
        Ok(Connection { sender })
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| BenchError::Http(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One HTTP/1.1 connection.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

/// What one response was.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: StatusCode,
    pub bytes: u64,
    /// SSE events (blank-line terminated) in the body.
    pub events: u64,
}

impl Connection {
    /// Sends `req` and reads the whole response body.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Answer> {
        self.sender
            .ready()
            .await
            .map_err(|e| BenchError::Http(format!("connection not ready: {e}")))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| BenchError::Http(format!("request: {e}")))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut counter = EventCounter::default();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BenchError::Http(format!("body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                bytes += data.len() as u64;
                counter.feed(&data);
            }
        }
        Ok(Answer {
            status,
            bytes,
            events: counter.events,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// Counts SSE events (`\n\n` terminators) across frame boundaries.
#[derive(Debug, Default)]
pub struct EventCounter {
    pub events: u64,
    last_was_newline: bool,
}

impl EventCounter {
    pub fn feed(&mut self, data: &[u8]) {
        let mut prev = self.last_was_newline;
        for &b in data {
            let nl = b == b'\n';
            if nl && prev {
                self.events += 1;
                prev = false;
            } else {
                prev = nl;
            }
        }
        self.last_was_newline = prev;
    }
}

/// An extra header for a request (e.g. the subject in per-user mode).
pub fn with_header(
    mut req: Request<Full<Bytes>>,
    name: HeaderName,
    value: HeaderValue,
) -> Request<Full<Bytes>> {
    req.headers_mut().insert(name, value);
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_events_split_across_frames() {
        let mut c = EventCounter::default();
        c.feed(b"id: 0\ndata: a\n\nid: 1\ndata: b\n");
        assert_eq!(c.events, 1);
        c.feed(b"\nid: 2\n");
        assert_eq!(c.events, 2);
        c.feed(b"data: c\n\n\n");
        assert_eq!(c.events, 3);
    }
}
