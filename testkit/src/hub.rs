//! `FakeHub`: a recording upstream standing in for `https://app.civic.com/hub/mcp`.
//!
//! It records every request (headers in arrival order with duplicates, body), checks the bearer
//! token came from the fake Civic Auth (or a configured validator) and answers a realistic 401
//! otherwise, and plays scripted replies: JSON, SSE with per-event delays, endless SSE that
//! notices when the client goes away, 202, arbitrary statuses and headers, gzip.

use std::collections::{BTreeSet, VecDeque};
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::{HeaderName, HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::auth::opaque_tokens;
use crate::jwt;
use crate::secrets::AUTH_ISSUER;
use crate::server::{Body, ChannelBody, ConnectionId, Handler, TestServer, empty, full};
use crate::tls::TestCa;

/// One step of a scripted SSE body.
#[derive(Debug, Clone)]
pub enum SseStep {
    /// Raw event text, sent as one chunk (include the terminating blank line).
    Event(String),
    /// Pause before the next step.
    Wait(Duration),
}

/// An `event: message` SSE frame carrying `data` as one JSON line.
pub fn sse_message(data: &Value) -> String {
    format!("event: message\ndata: {data}\n\n")
}

#[derive(Debug, Clone)]
enum ReplyBody {
    Full(Bytes),
    Sse(Vec<SseStep>),
    Endless(Duration),
}

/// A scripted upstream reply.
#[derive(Debug, Clone)]
pub struct HubReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: ReplyBody,
    gzip: bool,
    delay: Duration,
}

impl HubReply {
    fn new(status: u16, body: ReplyBody) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body,
            gzip: false,
            delay: Duration::ZERO,
        }
    }

    /// 200 `application/json`.
    pub fn json(v: &Value) -> Self {
        Self::json_status(200, v)
    }

    pub fn json_status(status: u16, v: &Value) -> Self {
        Self::new(status, ReplyBody::Full(Bytes::from(v.to_string())))
            .header("content-type", "application/json")
    }

    /// A status with an empty body (e.g. 202 for a notification).
    pub fn status(status: u16) -> Self {
        Self::new(status, ReplyBody::Full(Bytes::new()))
    }

    /// 202 Accepted, empty body.
    pub fn accepted() -> Self {
        Self::status(202)
    }

    /// Any status, content type and body.
    pub fn body(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        Self::new(status, ReplyBody::Full(body.into())).header("content-type", content_type)
    }

    /// 200 `text/event-stream` playing `steps`, with the headers MCP servers send.
    pub fn sse(steps: Vec<SseStep>) -> Self {
        Self::new(200, ReplyBody::Sse(steps))
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .header("x-accel-buffering", "no")
    }

    /// An SSE stream that never ends: a `:` comment every `interval` until the client goes away.
    pub fn endless_sse(interval: Duration) -> Self {
        Self::new(200, ReplyBody::Endless(interval))
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
    }

    /// The 401 the MCP SDK servers send for a missing or bad token.
    pub fn unauthorized(base_url: &str) -> Self {
        Self::json_status(
            401,
            &json!({"error": "invalid_token", "error_description": "Authentication required"}),
        )
        .header(
            "www-authenticate",
            &format!(
                "Bearer error=\"invalid_token\", error_description=\"Authentication required\", \
                 resource_metadata=\"{base_url}/.well-known/oauth-protected-resource/hub/mcp\""
            ),
        )
    }

    /// Add a response header (kept in order; duplicates allowed).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// gzip the body (per event for SSE) when the request's `Accept-Encoding` allows it.
    pub fn gzip(mut self) -> Self {
        self.gzip = true;
        self
    }

    /// Wait before sending the response head.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// One request as the upstream saw it.
#[derive(Clone)]
pub struct RecordedRequest {
    pub index: usize,
    pub method: String,
    /// Path and query, as received.
    pub uri: String,
    pub path: String,
    pub query: Option<String>,
    pub version: http::Version,
    /// The connection it came on (1, 2, … in accept order).
    pub connection: usize,
    /// Header names (lower case) and raw values, in arrival order, duplicates kept. An HTTP/2
    /// request's `:authority` is listed as `host` first, as servers must treat it (RFC 9113
    /// §8.3.1), unless it carried a `Host` field too ([`host_field`](Self::host_field)).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Whether a literal `Host` header field arrived (over HTTP/2, besides `:authority`).
    pub host_field: bool,
    pub body: Bytes,
    pub bearer: Option<String>,
    /// Whether the token check passed.
    pub authorized: bool,
    /// Whether the reply was gzip-encoded.
    pub gzipped: bool,
    pub at: Instant,
}

impl std::fmt::Debug for RecordedRequest {
    // Header values may hold tokens: print names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("RecordedRequest")
            .field("index", &self.index)
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("header_names", &names)
            .field("body_len", &self.body.len())
            .field("authorized", &self.authorized)
            .finish_non_exhaustive()
    }
}

impl RecordedRequest {
    /// All values of a header, as strings.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// All raw values of a header.
    pub fn header_bytes(&self, name: &str) -> Vec<Vec<u8>> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_values(name).into_iter().next()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

type Responder = Box<dyn Fn(&RecordedRequest) -> HubReply + Send + Sync>;
type Validator = Box<dyn Fn(&str) -> bool + Send + Sync>;

struct State {
    base_url: Mutex<String>,
    log: Mutex<Vec<RecordedRequest>>,
    queue: Mutex<VecDeque<HubReply>>,
    responder: Mutex<Option<Responder>>,
    validator: Mutex<Option<Validator>>,
    revoked: Mutex<BTreeSet<String>>,
    open_streams: Arc<AtomicUsize>,
    aborted_streams: Arc<AtomicUsize>,
    completed_streams: Arc<AtomicUsize>,
}

/// The fake hub. Dropping it stops the server.
pub struct FakeHub {
    server: TestServer,
    state: Arc<State>,
}

impl std::fmt::Debug for FakeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHub")
            .field("addr", &self.server.addr())
            .finish_non_exhaustive()
    }
}

/// Accepts a token the fake Civic Auth issued (or a static testkit access token) that has not
/// expired. Subject tokens and anything else are refused.
pub fn issued_by_fake_auth(token: &str) -> bool {
    if opaque_tokens().lock().unwrap().contains(token) {
        return true;
    }
    matches!(jwt::verify(token), Ok(c) if c.get("iss").and_then(Value::as_str) == Some(AUTH_ISSUER))
}

impl FakeHub {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None).await
    }

    /// Over TLS, offering ALPN `h2` and `http/1.1` (the client picks).
    pub async fn start_tls(ca: &TestCa) -> anyhow::Result<Self> {
        Self::start_with(Some(ca.server_config())).await
    }

    /// Over TLS, HTTP/1.1 only (ALPN offers `http/1.1` alone).
    pub async fn start_tls_http1_only(ca: &TestCa) -> anyhow::Result<Self> {
        Self::start_with(Some(ca.server_config_http1_only())).await
    }

    /// Connections accepted so far (TLS handshakes, with TLS).
    pub fn connections(&self) -> usize {
        self.server.stats().accepted.load(Ordering::SeqCst)
    }

    /// Connections that have ended.
    pub fn closed_connections(&self) -> usize {
        self.server.stats().closed.load(Ordering::SeqCst)
    }

    /// Gracefully closes every open connection (HTTP/2 GOAWAY; HTTP/1.1 close after the
    /// response in flight), as a hub does on a deploy; new connections are accepted.
    pub fn close_connections(&self) {
        self.server.close_connections();
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> anyhow::Result<Self> {
        let state = Arc::new(State {
            base_url: Mutex::new(String::new()),
            log: Mutex::new(Vec::new()),
            queue: Mutex::new(VecDeque::new()),
            responder: Mutex::new(None),
            validator: Mutex::new(None),
            revoked: Mutex::new(BTreeSet::new()),
            open_streams: Arc::new(AtomicUsize::new(0)),
            aborted_streams: Arc::new(AtomicUsize::new(0)),
            completed_streams: Arc::new(AtomicUsize::new(0)),
        });
        let st = state.clone();
        let handler: Handler = Arc::new(move |req| {
            let st = st.clone();
            Box::pin(async move { handle(st, req).await })
        });
        let server = TestServer::start(tls, handler).await?;
        *state.base_url.lock().unwrap() = server.base_url();
        Ok(Self { server, state })
    }

    /// e.g. `http://127.0.0.1:40000`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The MCP endpoint, `<base>/hub/mcp` (for `CIVIC_HUB_URL`).
    pub fn url(&self) -> String {
        format!("{}/hub/mcp", self.server.base_url())
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// Queue a reply for the next authorized request.
    pub fn push(&self, reply: HubReply) {
        self.state.queue.lock().unwrap().push_back(reply);
    }

    /// Reply to authorized requests (when the queue is empty) with `f`. The built-in default is
    /// [`default_reply`].
    pub fn set_responder(&self, f: impl Fn(&RecordedRequest) -> HubReply + Send + Sync + 'static) {
        *self.state.responder.lock().unwrap() = Some(Box::new(f));
    }

    /// Replace the bearer check ([`issued_by_fake_auth`] by default).
    pub fn set_validator(&self, f: impl Fn(&str) -> bool + Send + Sync + 'static) {
        *self.state.validator.lock().unwrap() = Some(Box::new(f));
    }

    /// Refuse this token from now on (as if the hub had revoked it).
    pub fn revoke(&self, token: &str) {
        self.state.revoked.lock().unwrap().insert(token.to_string());
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.log.lock().unwrap().len()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.state.log.lock().unwrap().last().cloned()
    }

    /// SSE bodies currently being sent.
    pub fn open_streams(&self) -> usize {
        self.state.open_streams.load(Ordering::SeqCst)
    }

    /// SSE bodies that stopped because the client went away.
    pub fn aborted_streams(&self) -> usize {
        self.state.aborted_streams.load(Ordering::SeqCst)
    }

    /// SSE bodies sent to their end.
    pub fn completed_streams(&self) -> usize {
        self.state.completed_streams.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` requests were recorded.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.request_count() >= n).await
    }

    /// Wait until exactly `n` SSE bodies are open.
    pub async fn wait_open_streams(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.open_streams() == n).await
    }
}

async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The built-in reply: a JSON-RPC request is answered with `{"result":{"echo":<method>}}`,
/// a notification or response with 202, GET with 405, DELETE with 200.
pub fn default_reply(req: &RecordedRequest) -> HubReply {
    match req.method.as_str() {
        "GET" => HubReply::status(405).header("allow", "POST, DELETE"),
        "DELETE" => HubReply::status(200),
        _ => match req.json() {
            Some(v) if v.get("method").is_some() && v.get("id").is_some() => HubReply::json(
                &json!({"jsonrpc": "2.0", "id": v["id"], "result": {"echo": v["method"]}}),
            ),
            Some(_) => HubReply::accepted(),
            None => HubReply::json_status(
                400,
                &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}}),
            ),
        },
    }
}

struct StreamGuard {
    open: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    completed: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.completed {
            self.done.fetch_add(1, Ordering::SeqCst);
        }
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_string));
    let authorized = match &bearer {
        Some(t) if !st.revoked.lock().unwrap().contains(t) => {
            match &*st.validator.lock().unwrap() {
                Some(v) => v(t),
                None => issued_by_fake_auth(t),
            }
        }
        _ => false,
    };
    let accepts_gzip = parts
        .headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("gzip")));
    let mut rec = {
        let log = st.log.lock().unwrap();
        RecordedRequest {
            index: log.len(),
            method: parts.method.to_string(),
            uri: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            version: parts.version,
            connection: parts.extensions.get::<ConnectionId>().map_or(0, |c| c.0),
            host_field: parts.headers.contains_key(header::HOST),
            headers: parts
                .uri
                .authority()
                .filter(|_| {
                    parts.version == http::Version::HTTP_2
                        && !parts.headers.contains_key(header::HOST)
                })
                .map(|a| ("host".to_string(), a.as_str().as_bytes().to_vec()))
                .into_iter()
                .chain(
                    parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())),
                )
                .collect(),
            body,
            bearer,
            authorized,
            gzipped: false,
            at: Instant::now(),
        }
    };
    let base = st.base_url.lock().unwrap().clone();
    let reply = if !authorized {
        HubReply::unauthorized(&base)
    } else {
        let queued = st.queue.lock().unwrap().pop_front();
        queued.unwrap_or_else(|| match &*st.responder.lock().unwrap() {
            Some(f) => f(&rec),
            None => default_reply(&rec),
        })
    };
    let gzip = reply.gzip && accepts_gzip;
    rec.gzipped = gzip;
    st.log.lock().unwrap().push(rec);

    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut builder = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        builder = builder.header(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    if gzip {
        builder = builder.header(header::CONTENT_ENCODING, "gzip");
    }
    let body = match reply.body {
        ReplyBody::Full(b) if b.is_empty() => empty(),
        ReplyBody::Full(b) if gzip => {
            let mut enc = GzEncoder::new(Vec::new(), Compression::default());
            enc.write_all(&b).expect("gzip");
            full(enc.finish().expect("gzip"))
        }
        ReplyBody::Full(b) => full(b),
        ReplyBody::Sse(steps) => stream_body(&st, steps, None, gzip),
        ReplyBody::Endless(interval) => stream_body(&st, Vec::new(), Some(interval), gzip),
    };
    builder.body(body).expect("response")
}

fn stream_body(st: &State, steps: Vec<SseStep>, endless: Option<Duration>, gzip: bool) -> Body {
    let (tx, body) = ChannelBody::new(8);
    st.open_streams.fetch_add(1, Ordering::SeqCst);
    let mut guard = StreamGuard {
        open: st.open_streams.clone(),
        done: st.completed_streams.clone(),
        completed: false,
    };
    let aborted = st.aborted_streams.clone();
    tokio::spawn(async move {
        let mut enc = gzip.then(|| GzEncoder::new(Vec::new(), Compression::default()));
        // Encode one chunk; with gzip, sync-flush so each event is decodable on arrival.
        let mut encode = |s: &[u8]| -> Bytes {
            match enc.as_mut() {
                Some(e) => {
                    e.write_all(s).expect("gzip");
                    e.flush().expect("gzip");
                    Bytes::from(std::mem::take(e.get_mut()))
                }
                None => Bytes::copy_from_slice(s),
            }
        };
        let mut client_gone = false;
        'steps: for step in steps {
            match step {
                SseStep::Wait(d) => tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = tx.closed() => { client_gone = true; break 'steps; }
                },
                SseStep::Event(e) => {
                    if tx.send(encode(e.as_bytes())).await.is_err() {
                        client_gone = true;
                        break 'steps;
                    }
                }
            }
        }
        if let (Some(interval), false) = (endless, client_gone) {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {
                        if tx.send(encode(b": keep-alive\n\n")).await.is_err() { break; }
                    }
                    _ = tx.closed() => break,
                }
            }
            client_gone = true;
        }
        if client_gone {
            aborted.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if let Some(e) = enc.take() {
            let rest = e.finish().expect("gzip");
            if !rest.is_empty() {
                let _ = tx.send(Bytes::from(rest)).await;
            }
        }
        guard.completed = true;
        drop(guard);
    });
    http_body_util::BodyExt::boxed(body)
}
