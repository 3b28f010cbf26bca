//! The data path: one workload request in, one hub request out (docs/protocol.md statements 1–7,
//! 17–19, 21–28).
//!
//! Order of checks: DNS-rebinding guard (`Host` 421, `Origin` 403), route (404), CORS preflight
//! (answered here, [`crate::cors`]), method (405), declared size (413), token, body. Small bodies (≤ [`REPLAY_LIMIT`]) are read whole so the
//! request can be replayed once after an upstream 401 with a fresh token; larger ones stream
//! through, counted against the limit.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, ORIGIN};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::body::{BodyError, RequestBody, ResponseBody, StreamGuard};
use crate::config::{Config, SubjectMode};
use crate::cors;
use crate::error::ProxyError;
use crate::exchange::Exchange;
use crate::guard::{OriginPolicy, is_loopback_authority};
use crate::halfclose::{EofGate, HalfCloseAware, Owed};
use crate::headers::{RequestRewrite, rewrite_response, strip_profile_params};
use crate::metrics::Metrics;
use crate::profiles::{RouteId, Unrouted};
use crate::token::{Token, TokenSource};
use crate::upstream::Upstream;
use crate::upstream::pool::{Lease, Pool};

/// Bodies up to this size are buffered whole, so a request can be replayed after a 401.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// The proxy's shared, immutable state.
pub struct Proxy<E> {
    tokens: Arc<TokenSource<E>>,
    pool: Pool,
    rewrite: RequestRewrite,
    hub_path: String,
    hub_uri: Uri,
    profile_lock: bool,
    max_body_bytes: u64,
    origins: OriginPolicy,
    metrics: Arc<Metrics>,
}

impl<E> std::fmt::Debug for Proxy<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("pool", &self.pool)
            .field("hub_path", &self.hub_path)
            .finish()
    }
}

/// State of one workload connection: the last `User-Agent` rewrite, and the answers owed to a
/// workload that may half-close ([`crate::halfclose`]).
#[derive(Debug, Default)]
struct Connection {
    user_agents: std::sync::Mutex<Option<(HeaderValue, HeaderValue)>>,
    gate: Arc<EofGate>,
}

impl<E: Exchange> Proxy<E> {
    /// Builds the proxy for `config`, forwarding to `upstream` with tokens from `tokens`.
    pub fn new(
        config: &Config,
        tokens: Arc<TokenSource<E>>,
        upstream: Upstream,
        metrics: Arc<Metrics>,
    ) -> Self {
        let subject_header = match &config.mode {
            SubjectMode::Header { name, .. } => Some(name.clone()),
            _ => None,
        };
        Self {
            tokens,
            pool: Pool::new(upstream, metrics.clone()),
            rewrite: RequestRewrite {
                authority: HeaderValue::from_str(&config.hub_authority())
                    .expect("a URL authority is a header value"),
                profile_header: config.profile_header.clone(),
                subject_header,
                product: concat!("civic-sidecar/", env!("CARGO_PKG_VERSION")),
            },
            hub_path: config.hub_url.path().to_string(),
            hub_uri: Uri::try_from(config.hub_url.path()).expect("a URL path is a valid URI"),
            profile_lock: config.profile_lock,
            max_body_bytes: config.max_body_bytes,
            origins: config.allowed_origins.clone(),
            metrics,
        }
    }

    /// Starts the hub connection pool's maintainer (connects ahead of the first request and
    /// keeps a connection warm); abort the handle to stop it. Without it the pool connects on
    /// demand.
    pub fn start_pool(&self) -> tokio::task::JoinHandle<()> {
        self.pool.start()
    }

    /// Serves one workload connection (HTTP/1.1 over `io`) until it closes; requests go to the
    /// hub over the shared pool. Once `stop` completes, the request in flight (and its stream)
    /// finishes, then the connection closes. A workload that half-closes after its request
    /// still gets the answer ([`crate::halfclose`]).
    pub async fn serve_connection<I>(
        self: Arc<Self>,
        io: I,
        stop: impl Future<Output = ()>,
    ) -> hyper::Result<()>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let connection = Arc::new(Connection::default());
        let io = TokioIo::new(HalfCloseAware::new(io, connection.gate.clone()));
        let shared = connection.clone();
        let service = service_fn(move |request| {
            let proxy = self.clone();
            let connection = shared.clone();
            let owed = connection.gate.hold();
            async move {
                let response = proxy.handle(&connection, request).await;
                Ok::<_, Infallible>(Owed::new(response, owed))
            }
        });
        let conn = http1::Builder::new().serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => result,
            () = stop => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }

    /// Answers one workload request. Every request read ends in an answer counted in
    /// `requests_total`, or, when the workload goes away first, in `requests_abandoned_total`.
    async fn handle(
        &self,
        connection: &Connection,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let method = request.method().clone();
        let abandoned = Abandoned {
            metrics: &self.metrics,
            method: method.clone(),
            started,
            answered: false,
        };
        let route = self.tokens.routes().resolve(request.uri().path());
        let profile = match &route {
            Ok(id) => self.tokens.routes().get(*id).name.as_str(),
            Err(_) => "",
        };
        // A preflight's answer carries its own CORS headers; every other answer to an allowed
        // origin gets them here, the sidecar's own errors included, so a page can read them.
        let mut cors_origin = if cors::is_preflight(&method, request.headers()) {
            None
        } else {
            cors::allowed_origin(request.headers(), &self.origins)
        };
        let mut response = match self.forward(connection, request, route.clone()).await {
            Ok(response) => response,
            Err(error) => {
                // A request for another host (DNS rebinding) is opened to no origin.
                if matches!(
                    error,
                    ProxyError::MisdirectedHost | ProxyError::BadRequest(_)
                ) {
                    cors_origin = None;
                }
                let status = error.status();
                if status.is_server_error() {
                    tracing::warn!(%method, status = status.as_u16(), reason = error.category(), error = %error, "request failed");
                } else {
                    tracing::debug!(%method, status = status.as_u16(), reason = error.category(), "request refused");
                }
                error.into_response()
            }
        };
        if let Some(origin) = &cors_origin {
            cors::allow_response(response.headers_mut(), origin);
        }
        abandoned.answered();
        self.metrics.observe_request(response.status(), profile);
        tracing::debug!(
            %method,
            profile,
            status = response.status().as_u16(),
            duration_us = started.elapsed().as_micros() as u64,
            "request"
        );
        response
    }

    async fn forward(
        &self,
        connection: &Connection,
        request: Request<Incoming>,
        route: Result<RouteId, Unrouted>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (mut parts, body) = request.into_parts();
        if cors::is_preflight(&parts.method, &parts.headers) {
            discard(body, &parts.headers);
            return self.preflight(&parts, route);
        }
        let route = match self.admit(&parts, route) {
            Ok(route) => route,
            Err(e) => {
                discard(body, &parts.headers);
                return Err(e);
            }
        };
        let profile = self.tokens.routes().get(route).header_value.as_ref();
        let token = match self.tokens.token(&parts.headers, route).await {
            Ok(token) => token,
            Err(e) => {
                discard(body, &parts.headers);
                return Err(e.into());
            }
        };
        let (body, exceeded) = self.read_body(body, &connection.gate).await?;

        parts.uri = self.upstream_uri(&parts.uri, profile.is_some() && self.profile_lock)?;
        parts.version = Version::HTTP_11;
        parts.extensions = http::Extensions::new();
        {
            let mut user_agents = connection
                .user_agents
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.rewrite
                .apply(&mut parts.headers, profile, &mut user_agents);
        }
        // Only small, complete bodies are kept for a replay; the copy is cheap (`Bytes`).
        let replay = match (&body, token.renewable()) {
            (RequestBody::Full { data }, true) => Some(Replay {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
                data: data.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        RequestRewrite::set_bearer(&mut parts.headers, &token.bearer);

        let mut response = match self.send(Request::from_parts(parts, body)).await {
            Err(_) if exceeded.is_some_and(|e| e.load(Ordering::Relaxed)) => {
                return Err(ProxyError::BodyTooLarge(self.max_body_bytes));
            }
            other => other?,
        };
        if response.0.status() == StatusCode::UNAUTHORIZED {
            // Boxed: rare, and inline it would double the size of every request's future.
            response = Box::pin(self.after_unauthorized(&token, replay)).await?;
        }
        Ok(self.relay(response))
    }

    /// Statements 17 and 18: drop the rejected token, exchange once, replay once; a second 401
    /// (or a request that cannot be replayed) becomes 502 without the hub's challenge.
    async fn after_unauthorized(
        &self,
        rejected: &Token,
        replay: Option<Replay>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        if !rejected.renewable() {
            return Err(ProxyError::UpstreamRejectedToken("static access"));
        }
        let Some(replay) = replay else {
            self.tokens.reject(rejected);
            tracing::warn!("hub answered 401 to a request too large to replay");
            return Err(ProxyError::UpstreamRejectedToken("exchanged"));
        };
        let fresh = self.tokens.renew(rejected).await?;
        tracing::info!("hub answered 401; replaying once with a fresh token");
        let mut request = Request::new(RequestBody::full(replay.data));
        *request.method_mut() = replay.method;
        *request.uri_mut() = replay.uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = replay.headers;
        RequestRewrite::set_bearer(request.headers_mut(), &fresh.bearer);
        let response = self.send(request).await?;
        if response.0.status() == StatusCode::UNAUTHORIZED {
            self.tokens.reject(&fresh);
            return Err(ProxyError::UpstreamRejectedToken("exchanged"));
        }
        Ok(response)
    }

    async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        let started = Instant::now();
        let response = self.pool.send(request).await;
        self.metrics
            .upstream_duration
            .observe(started.elapsed().as_secs_f64());
        response
    }

    fn relay(&self, (response, lease): (Response<Incoming>, Lease)) -> Response<ResponseBody> {
        let (mut parts, body) = response.into_parts();
        rewrite_response(&mut parts.headers);
        parts.extensions.clear();
        let body = if body.is_end_stream() {
            ResponseBody::empty()
        } else {
            ResponseBody::upstream(
                body,
                StreamGuard::new(self.metrics.clone()).with_lease(lease),
            )
        };
        Response::from_parts(parts, body)
    }

    /// A CORS preflight, answered here after the same guard and route checks as any request:
    /// never forwarded, so it needs no token.
    fn preflight(
        &self,
        parts: &http::request::Parts,
        route: Result<RouteId, Unrouted>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        self.check(parts)?;
        route?;
        // `check` let every `Origin` through; CORS also wants exactly one.
        let origin = cors::allowed_origin(&parts.headers, &self.origins)
            .ok_or(ProxyError::ForbiddenOrigin)?;
        if !cors::preflight_method_allowed(&parts.headers) {
            return Err(ProxyError::MethodNotAllowed);
        }
        Ok(cors::preflight_response(&origin, &parts.headers))
    }

    /// Everything decided from the request head alone: guard, route, method, declared size.
    fn admit(
        &self,
        parts: &http::request::Parts,
        route: Result<RouteId, Unrouted>,
    ) -> Result<RouteId, ProxyError> {
        self.check(parts)?;
        let route = route?;
        if !matches!(parts.method, Method::POST | Method::GET | Method::DELETE) {
            return Err(ProxyError::MethodNotAllowed);
        }
        if let Some(length) = content_length(&parts.headers)
            && length > self.max_body_bytes
        {
            return Err(ProxyError::BodyTooLarge(self.max_body_bytes));
        }
        Ok(route)
    }

    /// Statements 4 and 5, and the Host rules of RFC 9112 §3.2.
    fn check(&self, parts: &http::request::Parts) -> Result<(), ProxyError> {
        let headers = &parts.headers;
        let mut hosts = headers.get_all(HOST).iter();
        let host = hosts.next();
        // RFC 9112 §3.2: more than one Host, or none on HTTP/1.1, is a 400. Absent Host on
        // HTTP/1.0 is not a rebinding attempt: browsers always send one.
        if hosts.next().is_some() {
            return Err(ProxyError::BadRequest("more than one Host header"));
        }
        if host.is_none() && parts.version == Version::HTTP_11 && parts.uri.authority().is_none() {
            return Err(ProxyError::BadRequest("missing Host header"));
        }
        // Absolute-form and CONNECT targets: their authority is the one the request is for
        // (RFC 9112 §3.2.2), so it must be loopback as well.
        if let Some(authority) = parts.uri.authority()
            && !is_loopback_authority(authority.as_str().as_bytes())
        {
            return Err(ProxyError::MisdirectedHost);
        }
        if let Some(host) = host
            && !is_loopback_authority(host.as_bytes())
        {
            return Err(ProxyError::MisdirectedHost);
        }
        for origin in headers.get_all(ORIGIN) {
            if !self.origins.allows(origin.as_bytes()) {
                return Err(ProxyError::ForbiddenOrigin);
            }
        }
        Ok(())
    }

    /// The hub path with the workload's query (statement 6), minus profile parameters when the
    /// token is profile-locked (statement 25).
    fn upstream_uri(&self, uri: &Uri, locked: bool) -> Result<Uri, ProxyError> {
        let target = match uri.query() {
            None => return Ok(self.hub_uri.clone()),
            Some(query) if locked => {
                let stripped = strip_profile_params(query);
                if stripped.len() != query.len() {
                    tracing::debug!(
                        "removed profile query parameters: the token is profile-locked"
                    );
                }
                if stripped.is_empty() {
                    self.hub_path.clone()
                } else {
                    format!("{}?{}", self.hub_path, stripped)
                }
            }
            Some(query) => format!("{}?{}", self.hub_path, query),
        };
        Uri::try_from(target).map_err(|_| ProxyError::RequestBody("invalid query string".into()))
    }

    /// Reads up to [`REPLAY_LIMIT`] bytes; a body that ends by then is returned whole, a longer
    /// one streams on, counted against the limit (statement 28); its flag tells whether it went
    /// over. A body that arrives in one frame is not copied.
    async fn read_body(
        &self,
        mut body: Incoming,
        gate: &Arc<EofGate>,
    ) -> Result<(RequestBody, Option<Arc<AtomicBool>>), ProxyError> {
        let limit = self.max_body_bytes;
        let replay_cap = (REPLAY_LIMIT as u64).min(limit) as usize;
        let mut first: Option<Bytes> = None;
        let mut buffer = BytesMut::new();
        while !body.is_end_stream() {
            let data = match next_frame(&mut body, gate).await? {
                None => break,
                Some(Err(e)) => return Err(ProxyError::RequestBody(e.to_string())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue,
                },
            };
            let read = match first.take() {
                None if buffer.is_empty() => {
                    first = Some(data);
                    first.as_ref().map_or(0, Bytes::len)
                }
                earlier => {
                    if let Some(earlier) = earlier {
                        buffer.extend_from_slice(&earlier);
                    }
                    buffer.extend_from_slice(&data);
                    buffer.len()
                }
            };
            if read as u64 > limit {
                return Err(ProxyError::BodyTooLarge(limit));
            }
            if read > replay_cap && !body.is_end_stream() {
                let prefix = first.take().unwrap_or_else(|| buffer.split().freeze());
                let exceeded = Arc::new(AtomicBool::new(false));
                let streaming =
                    RequestBody::streaming(prefix, body, limit, exceeded.clone(), gate.clone());
                return Ok((streaming, Some(exceeded)));
            }
        }
        let whole = first.unwrap_or_else(|| buffer.freeze());
        Ok((RequestBody::full(whole), None))
    }
}

/// Counts and logs a request dropped before its answer (hyper drops the handler when the
/// workload's connection goes away).
struct Abandoned<'a> {
    metrics: &'a Metrics,
    method: Method,
    started: Instant,
    answered: bool,
}

impl Abandoned<'_> {
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics.abandoned.inc();
            tracing::info!(
                method = %self.method,
                after_ms = self.started.elapsed().as_millis() as u64,
                "workload went away before its answer was ready"
            );
        }
    }
}

/// The next frame of a request body; an error once the workload's input ended before it.
async fn next_frame(
    body: &mut Incoming,
    gate: &EofGate,
) -> Result<Option<Result<http_body::Frame<Bytes>, hyper::Error>>, ProxyError> {
    let mut body = std::pin::Pin::new(body);
    std::future::poll_fn(|cx| match body.as_mut().poll_frame(cx) {
        std::task::Poll::Pending if gate.poll_truncated(cx) => {
            std::task::Poll::Ready(Err(ProxyError::RequestBody(TRUNCATED.into())))
        }
        std::task::Poll::Pending => std::task::Poll::Pending,
        std::task::Poll::Ready(frame) => std::task::Poll::Ready(Ok(frame)),
    })
    .await
}

/// Why a body the workload stopped sending before its end is refused.
pub const TRUNCATED: &str = "the workload's input ended before the request body did";

/// What a replay needs: the rewritten request without `Authorization`, and its body.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    data: Bytes,
}

/// Most bytes of an unwanted request body read and thrown away after an early answer.
const DISCARD_LIMIT: u64 = 64 * 1024 * 1024;
/// Longest time spent doing so.
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and drops the body of a request answered early (404, 413, 503…), in the background.
/// Closing the connection on a client still sending would make it miss the answer (its write
/// fails first), so the rest of the body is swallowed, within bounds, like a lingering close.
fn discard(body: Incoming, headers: &HeaderMap) {
    if body.is_end_stream() || content_length(headers).is_some_and(|n| n > DISCARD_LIMIT) {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let mut seen = 0u64;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if seen > DISCARD_LIMIT {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
    });
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl From<BodyError> for ProxyError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(limit) => ProxyError::BodyTooLarge(limit),
            BodyError::Transport(e) => ProxyError::RequestBody(e.to_string()),
            BodyError::Truncated => ProxyError::RequestBody(TRUNCATED.into()),
        }
    }
}
