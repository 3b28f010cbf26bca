//! Small HTTP/1.1 clients for tests: one request per connection (exact headers, no pooling),
//! streaming responses with an SSE reader, and a raw TCP client for malformed or smuggling input.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Upper bound for any single helper call, so a broken sidecar fails the test instead of hanging.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A kept-alive workload connection over which `tools/list` calls go one after another (load and
/// fault tests that must reuse one connection, unlike the one-request helpers below).
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    _task: JoinHandle<()>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            addr,
            _task: task,
        })
    }

    /// Sends `tools/list` with this id; the status and the whole body (10 s bound).
    pub async fn call(&mut self, id: u64) -> anyhow::Result<(u16, Bytes)> {
        let req = mcp_request(self.addr, Method::POST).body(Full::new(Bytes::from(
            jsonrpc(id, "tools/list").to_string(),
        )))?;
        self.sender.ready().await?;
        let resp =
            tokio::time::timeout(Duration::from_secs(10), self.sender.send_request(req)).await??;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Names lower case, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name).into_iter().next()
    }

    pub fn header_values(&self, name: &str) -> Vec<&str> {
        find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON (status {}): {}", self.status, self.text()))
    }
}

/// A JSON-RPC request object.
pub fn jsonrpc(id: u64, method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}})
}

/// A request to the sidecar's MCP path with the headers an MCP client sends.
pub fn mcp_request(addr: SocketAddr, method: Method) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri("/hub/mcp")
        .header(header::HOST, addr.to_string())
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json")
}

/// POST a JSON-RPC message to `/hub/mcp`.
pub async fn post_mcp(addr: SocketAddr, body: &Value) -> anyhow::Result<HttpResponse> {
    let req = mcp_request(addr, Method::POST).body(Full::new(Bytes::from(body.to_string())))?;
    send(addr, req).await
}

/// A plain GET of `path` (e.g. the admin endpoints).
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<HttpResponse> {
    let req = Request::builder()
        .uri(path)
        .header(header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    send(addr, req).await
}

async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<(
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    JoinHandle<()>,
)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, task))
}

fn head_of(resp: &http::response::Parts) -> Vec<(String, String)> {
    resp.headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Send one request on a fresh connection and read the whole response (bounded by
/// [`DEFAULT_TIMEOUT`]). The request URI is origin-form; set `Host` yourself.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(DEFAULT_TIMEOUT, async {
        let (mut sender, task) = connect(addr).await?;
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        task.abort();
        Ok(HttpResponse {
            status: parts.status.as_u16(),
            headers: head_of(&parts),
            body,
        })
    })
    .await
    .context("request timed out")?
}

/// A response whose body is read incrementally. Dropping it closes the connection.
pub struct StreamingResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: Incoming,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for StreamingResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingResponse")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Drop for StreamingResponse {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StreamingResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name).into_iter().next()
    }

    /// The next data chunk; `Ok(None)` at the end of the body; an error on timeout.
    pub async fn next_chunk(&mut self, timeout: Duration) -> anyhow::Result<Option<Bytes>> {
        loop {
            let frame = tokio::time::timeout(timeout, self.body.frame())
                .await
                .context("no data within the timeout")?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data()
                        && !d.is_empty()
                    {
                        return Ok(Some(d));
                    }
                }
            }
        }
    }

    /// Read the rest of the body.
    pub async fn read_to_end(&mut self, timeout: Duration) -> anyhow::Result<Bytes> {
        let mut out = Vec::new();
        let end = tokio::time::Instant::now() + timeout;
        while let Some(c) = self.next_chunk(end - tokio::time::Instant::now()).await? {
            out.extend_from_slice(&c);
        }
        Ok(out.into())
    }

    pub fn into_sse(self) -> SseReader {
        SseReader {
            resp: self,
            buf: Vec::new(),
        }
    }
}

/// Send a request and return as soon as the response head arrived.
pub async fn open(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<StreamingResponse> {
    let (mut sender, task) = connect(addr).await?;
    let resp = tokio::time::timeout(DEFAULT_TIMEOUT, sender.send_request(req))
        .await
        .context("no response head within the timeout")??;
    let (parts, body) = resp.into_parts();
    Ok(StreamingResponse {
        status: parts.status.as_u16(),
        headers: head_of(&parts),
        body,
        task,
    })
}

/// Splits a `text/event-stream` body into events (blank-line separated).
pub struct SseReader {
    resp: StreamingResponse,
    buf: Vec<u8>,
}

impl std::fmt::Debug for SseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseReader")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

fn split_event(buf: &mut Vec<u8>) -> Option<String> {
    let text = String::from_utf8_lossy(buf).into_owned();
    let normalized = text.replace("\r\n", "\n");
    let idx = normalized.find("\n\n")?;
    let event = normalized[..idx].to_string();
    let rest = normalized.as_bytes()[idx + 2..].to_vec();
    *buf = rest;
    Some(event)
}

impl SseReader {
    /// The next event's text (without the blank line); `Ok(None)` at a clean end of stream.
    pub async fn next_event(&mut self, timeout: Duration) -> anyhow::Result<Option<String>> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ev) = split_event(&mut self.buf) {
                return Ok(Some(ev));
            }
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.resp.next_chunk(left).await? {
                Some(c) => self.buf.extend_from_slice(&c),
                None if self.buf.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                None => bail!("stream ended inside an event"),
            }
        }
    }

    /// The next event that is not a `:` comment.
    pub async fn next_data_event(&mut self, timeout: Duration) -> anyhow::Result<Option<String>> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Some(e) if e.lines().all(|l| l.starts_with(':')) => continue,
                other => return Ok(other),
            }
        }
    }

    pub fn response(&self) -> &StreamingResponse {
        &self.resp
    }
}

/// The `data:` payload of an SSE event, joined across lines.
pub fn sse_data(event: &str) -> String {
    event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A response read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names as sent (case kept), in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name).into_iter().next()
    }

    pub fn header_values(&self, name: &str) -> Vec<&str> {
        find_header(&self.headers, name)
    }
}

/// Write `request` bytes as-is and read one response (by `Content-Length`, chunked, or to EOF).
pub async fn raw_request(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> anyhow::Result<RawResponse> {
    tokio::time::timeout(timeout, async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request).await?;
        read_raw_response(&mut s).await
    })
    .await
    .context("raw request timed out")?
}

/// Read one response from a socket.
pub async fn read_raw_response(s: &mut TcpStream) -> anyhow::Result<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let (status, headers, head_len) = loop {
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(n) = resp.parse(&buf)? {
            let headers = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect::<Vec<_>>();
            break (resp.code.unwrap_or(0), headers, n);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!(
                "connection closed before a response head ({} bytes read)",
                buf.len()
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut body = buf.split_off(head_len);
    let cl = find_header(&headers, "content-length")
        .first()
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = find_header(&headers, "transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if status == 204 || status == 304 || (100..200).contains(&status) {
        body.clear();
    } else if chunked {
        loop {
            if let Some(decoded) = decode_chunked(&body)? {
                body = decoded;
                break;
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed inside a chunked body");
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(cl) = cl {
        while body.len() < cl {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed inside a body");
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(cl);
    } else {
        s.read_to_end(&mut body).await?;
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// `Some(body)` once a complete chunked body is in `data`.
fn decode_chunked(data: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let Some(eol) = data[i..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[i..i + eol])?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)?;
        i += eol + 2;
        if size == 0 {
            // Trailers (if any) end with an empty line.
            return Ok(data[i..].windows(2).position(|w| w == b"\r\n").map(|_| out));
        }
        if data.len() < i + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[i..i + size]);
        i += size + 2;
    }
}

/// Whether a TCP connection to `addr` is accepted.
pub async fn can_connect(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Decode as much of a (possibly still incomplete) gzip stream as is available, so a test can
/// check that each flushed event is readable on arrival.
pub fn gunzip_prefix(data: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    let mut dec = flate2::read::GzDecoder::new(data);
    let mut buf = [0u8; 8192];
    loop {
        match dec.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_sse_parsing() {
        assert_eq!(
            decode_chunked(b"3\r\nabc\r\n0\r\n\r\n").unwrap(),
            Some(b"abc".to_vec())
        );
        assert_eq!(decode_chunked(b"3\r\nab").unwrap(), None);
        let mut b = b"event: message\ndata: {\"a\":1}\n\nrest".to_vec();
        let e = split_event(&mut b).unwrap();
        assert_eq!(sse_data(&e), "{\"a\":1}");
        assert_eq!(b, b"rest");
    }
}
