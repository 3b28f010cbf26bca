//! `FakeCivicAuth`: an RFC 8693 token endpoint at `/oauth/token`, as docs/protocol.md §1 describes
//! Civic Auth. It checks HTTP Basic and every form field, records each request, counts calls,
//! issues HS256 JWTs the test upstreams can verify, and can be scripted per call.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64STD;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::jwt;
use crate::secrets::{self, CLIENT_ID, CLIENT_SECRET};
use crate::server::{Body, Handler, TestServer, full};
use crate::tls::TestCa;

pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_ID: &str = "urn:ietf:params:oauth:token-type:id_token";
/// Form fields Civic documents for token exchange; anything else is "unexpected".
pub const KNOWN_FIELDS: &[&str] = &[
    "grant_type",
    "subject_token",
    "subject_token_type",
    "civic_profile",
    "expires_in",
    "scope",
];
/// Lifetime of issued tokens when neither the request nor the script chooses one.
pub const DEFAULT_TTL_SECS: u64 = 3600;

/// What one call to `/oauth/token` should produce.
#[derive(Debug, Clone)]
pub struct AuthReply {
    kind: ReplyKind,
    delay: Duration,
}

#[derive(Debug, Clone)]
enum ReplyKind {
    /// Validate the request, then issue a token.
    Issue {
        /// `Some(Some(n))`: send `expires_in: n`; `Some(None)`: omit the field; `None`: the
        /// requested `expires_in` or [`DEFAULT_TTL_SECS`].
        expires_in: Option<Option<u64>>,
        /// `exp` claim, seconds from now; `None`: same as the lifetime; `Some(None)`: no claim.
        jwt_exp: Option<Option<u64>>,
        /// Issue a non-JWT opaque token instead.
        opaque: bool,
    },
    /// An OAuth error body with this status.
    Error {
        status: u16,
        error: String,
        retry_after: Option<String>,
    },
    /// A raw status with a raw body.
    Raw {
        status: u16,
        content_type: String,
        body: Bytes,
        retry_after: Option<String>,
    },
}

impl AuthReply {
    /// Validate and issue a token with the default lifetime.
    pub fn ok() -> Self {
        Self::issue(None, None, false)
    }

    /// Validate and issue a token that lives `secs` and say so in `expires_in`.
    pub fn ok_expires_in(secs: u64) -> Self {
        Self::issue(Some(Some(secs)), Some(Some(secs)), false)
    }

    /// Issue a token without `expires_in`; its JWT `exp` is `jwt_exp_secs` from now (or absent).
    pub fn ok_without_expires_in(jwt_exp_secs: Option<u64>) -> Self {
        Self::issue(Some(None), Some(jwt_exp_secs), false)
    }

    /// Issue an opaque (non-JWT) token without `expires_in`: the sidecar must use its default.
    pub fn ok_opaque_without_expiry() -> Self {
        Self::issue(Some(None), Some(None), true)
    }

    fn issue(expires_in: Option<Option<u64>>, jwt_exp: Option<Option<u64>>, opaque: bool) -> Self {
        Self {
            kind: ReplyKind::Issue {
                expires_in,
                jwt_exp,
                opaque,
            },
            delay: Duration::ZERO,
        }
    }

    /// An RFC 6749 §5.2 error (`invalid_grant`, `invalid_client`, …) with this status.
    pub fn error(status: u16, error: &str) -> Self {
        Self {
            kind: ReplyKind::Error {
                status,
                error: error.into(),
                retry_after: None,
            },
            delay: Duration::ZERO,
        }
    }

    /// 429 `slow_down`-style throttle with `Retry-After: secs`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::error(429, "temporarily_unavailable").retry_after(retry_after_secs)
    }

    /// A raw status and text body (e.g. 500/502/503 from a load balancer).
    pub fn status(status: u16) -> Self {
        Self::raw(
            status,
            "text/plain",
            Bytes::from_static(b"upstream trouble"),
        )
    }

    /// 200 with a body that is not JSON.
    pub fn malformed_json() -> Self {
        Self::raw(
            200,
            "application/json",
            Bytes::from_static(b"{\"access_token\": \"trunc"),
        )
    }

    /// 200 JSON without `access_token`.
    pub fn missing_access_token() -> Self {
        Self::raw(
            200,
            "application/json",
            Bytes::from_static(b"{\"token_type\":\"Bearer\",\"expires_in\":3600}"),
        )
    }

    /// 200 JSON whose body is `bytes` long (padding inside a JSON string field).
    pub fn huge_body(bytes: usize) -> Self {
        let pad = "x".repeat(bytes);
        let body =
            format!("{{\"token_type\":\"Bearer\",\"padding\":\"{pad}\",\"expires_in\":3600}}");
        Self::raw(200, "application/json", Bytes::from(body))
    }

    pub fn raw(status: u16, content_type: &str, body: Bytes) -> Self {
        Self {
            kind: ReplyKind::Raw {
                status,
                content_type: content_type.into(),
                body,
                retry_after: None,
            },
            delay: Duration::ZERO,
        }
    }

    /// Add `Retry-After: secs` to an error reply.
    pub fn retry_after(mut self, secs: u64) -> Self {
        match &mut self.kind {
            ReplyKind::Error { retry_after, .. } | ReplyKind::Raw { retry_after, .. } => {
                *retry_after = Some(secs.to_string())
            }
            ReplyKind::Issue { .. } => {}
        }
        self
    }

    /// Wait this long before answering.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// One recorded call to the token endpoint.
#[derive(Clone)]
pub struct ExchangeRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// `(client_id, client_secret)` decoded from HTTP Basic, if present.
    pub basic: Option<(String, String)>,
    /// Parsed form fields in order, duplicates kept.
    pub form: Vec<(String, String)>,
    pub at: Instant,
    /// `issued` or the OAuth error code / HTTP status that was answered.
    pub outcome: String,
    pub issued_token: Option<String>,
}

impl std::fmt::Debug for ExchangeRequest {
    // Never print the subject token or the client secret, even from a failing assertion.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields: Vec<(&str, &str)> = self
            .form
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if k == "subject_token" {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("ExchangeRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("basic_client_id", &self.basic.as_ref().map(|b| &b.0))
            .field("form", &fields)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl ExchangeRequest {
    /// The value of a form field (first occurrence).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// How many times a form field occurs.
    pub fn field_count(&self, name: &str) -> usize {
        self.form.iter().filter(|(k, _)| k == name).count()
    }

    /// Field names outside [`KNOWN_FIELDS`].
    pub fn unexpected_fields(&self) -> Vec<String> {
        self.form
            .iter()
            .filter(|(k, _)| !KNOWN_FIELDS.contains(&k.as_str()))
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Script = Box<dyn Fn(usize, &ExchangeRequest) -> Option<AuthReply> + Send + Sync>;

struct State {
    client_id: Mutex<String>,
    client_secrets: Mutex<Vec<String>>,
    /// `None`: accept every unexpired testkit subject JWT; `Some`: only these.
    accepted_subjects: Mutex<Option<BTreeSet<String>>>,
    queue: Mutex<VecDeque<AuthReply>>,
    script: Mutex<Option<Script>>,
    default: Mutex<AuthReply>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    log: Mutex<Vec<ExchangeRequest>>,
    issued: Mutex<Vec<String>>,
}

/// The fake Civic Auth server. Dropping it stops the server.
pub struct FakeCivicAuth {
    server: TestServer,
    state: Arc<State>,
}

impl std::fmt::Debug for FakeCivicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCivicAuth")
            .field("addr", &self.server.addr())
            .finish_non_exhaustive()
    }
}

impl FakeCivicAuth {
    /// Plain HTTP on 127.0.0.1:0, accepting [`CLIENT_ID`] / [`CLIENT_SECRET`].
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None).await
    }

    /// HTTPS with a certificate from `ca`.
    pub async fn start_tls(ca: &TestCa) -> anyhow::Result<Self> {
        Self::start_with(Some(ca.server_config())).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> anyhow::Result<Self> {
        let state = Arc::new(State {
            client_id: Mutex::new(CLIENT_ID.into()),
            client_secrets: Mutex::new(vec![CLIENT_SECRET.into()]),
            accepted_subjects: Mutex::new(None),
            queue: Mutex::new(VecDeque::new()),
            script: Mutex::new(None),
            default: Mutex::new(AuthReply::ok()),
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let handler: Handler = Arc::new(move |req| {
            let st = st.clone();
            Box::pin(async move { handle(st, req).await })
        });
        let server = TestServer::start(tls, handler).await?;
        Ok(Self { server, state })
    }

    /// The token endpoint URL, e.g. `http://127.0.0.1:41234/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.server.base_url())
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// Accept this client id and secret (replacing the defaults).
    pub fn set_client(&self, id: &str, secret: &str) {
        secrets::register_secret(secret);
        *self.state.client_id.lock().unwrap() = id.into();
        *self.state.client_secrets.lock().unwrap() = vec![secret.into()];
    }

    /// Accept exactly these client secrets (e.g. old and new during a rotation).
    pub fn set_client_secrets(&self, secrets_: &[&str]) {
        for s in secrets_ {
            secrets::register_secret(*s);
        }
        *self.state.client_secrets.lock().unwrap() =
            secrets_.iter().map(|s| s.to_string()).collect();
    }

    /// Only these subject tokens are accepted (otherwise any unexpired testkit subject JWT is).
    pub fn accept_only_subjects(&self, subjects: &[&str]) {
        *self.state.accepted_subjects.lock().unwrap() =
            Some(subjects.iter().map(|s| s.to_string()).collect());
    }

    /// Queue a reply for the next call (queued replies are used first, in order).
    pub fn push(&self, reply: AuthReply) {
        self.state.queue.lock().unwrap().push_back(reply);
    }

    /// The reply used when the queue is empty and the script returns `None`.
    pub fn set_default(&self, reply: AuthReply) {
        *self.state.default.lock().unwrap() = reply;
    }

    /// Decide each call's reply from its 0-based number and request (after the queue).
    pub fn set_script(
        &self,
        f: impl Fn(usize, &ExchangeRequest) -> Option<AuthReply> + Send + Sync + 'static,
    ) {
        *self.state.script.lock().unwrap() = Some(Box::new(f));
    }

    /// Number of requests received so far.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// The most requests that were being answered at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Every request received, in order of arrival.
    pub fn requests(&self) -> Vec<ExchangeRequest> {
        self.state.log.lock().unwrap().clone()
    }

    /// Every access token issued, in order.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.issued.lock().unwrap().clone()
    }

    /// Wait until at least `n` calls arrived.
    pub async fn wait_calls(&self, n: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.calls() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.calls() >= n
    }
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response<Body> {
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store");
    if status == 401 {
        b = b.header(header::WWW_AUTHENTICATE, "Basic realm=\"civic-auth\"");
    }
    b.body(full(
        json!({"error": error, "error_description": description}).to_string(),
    ))
    .expect("response")
}

fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(B64STD.decode(rest.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

struct InFlight<'a>(&'a State);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let n = st.calls.fetch_add(1, Ordering::SeqCst);
    let now_in = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_in_flight.fetch_max(now_in, Ordering::SeqCst);
    let _guard = InFlight(&st);

    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let basic = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    if let Some(s) = form.iter().find(|(k, _)| k == "subject_token") {
        secrets::register_secret(s.1.clone());
    }
    let mut rec = ExchangeRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers,
        basic,
        form,
        at: Instant::now(),
        outcome: String::new(),
        issued_token: None,
    };

    let reply = {
        let queued = st.queue.lock().unwrap().pop_front();
        queued
            .or_else(|| st.script.lock().unwrap().as_ref().and_then(|f| f(n, &rec)))
            .unwrap_or_else(|| st.default.lock().unwrap().clone())
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }

    let (resp, outcome, token) = answer(&st, &rec, reply.kind);
    rec.outcome = outcome;
    rec.issued_token = token.clone();
    if let Some(t) = token {
        st.issued.lock().unwrap().push(t);
    }
    st.log.lock().unwrap().push(rec);
    resp
}

fn answer(
    st: &State,
    rec: &ExchangeRequest,
    kind: ReplyKind,
) -> (Response<Body>, String, Option<String>) {
    let (expires_in, jwt_exp, opaque) = match kind {
        ReplyKind::Error {
            status,
            error,
            retry_after,
        } => {
            let mut r = oauth_error(status, &error, "scripted failure");
            if let Some(ra) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, ra.parse().expect("retry-after"));
            }
            return (r, error, None);
        }
        ReplyKind::Raw {
            status,
            content_type,
            body,
            retry_after,
        } => {
            let mut b = Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, content_type);
            if let Some(ra) = retry_after {
                b = b.header(header::RETRY_AFTER, ra);
            }
            return (
                b.body(full(body)).expect("response"),
                format!("raw {status}"),
                None,
            );
        }
        ReplyKind::Issue {
            expires_in,
            jwt_exp,
            opaque,
        } => (expires_in, jwt_exp, opaque),
    };

    if let Err((status, code, desc)) = validate(st, rec) {
        return (oauth_error(status, code, desc), code.to_string(), None);
    }
    let requested: Option<u64> = rec.field("expires_in").and_then(|v| v.parse().ok());
    let lifetime = match expires_in {
        Some(Some(n)) => n,
        _ => requested.unwrap_or(DEFAULT_TTL_SECS).min(86_400),
    };
    let expires_field = match expires_in {
        Some(None) => None,
        _ => Some(lifetime),
    };
    let exp_claim = match jwt_exp {
        Some(None) => None,
        Some(Some(s)) => Some(jwt::now_unix() + s),
        None => Some(jwt::now_unix() + lifetime),
    };
    let sub = rec
        .field("subject_token")
        .and_then(jwt::decode_unverified)
        .and_then(|c| c.get("sub").and_then(Value::as_str).map(String::from))
        .unwrap_or_else(|| "unknown".into());
    let token = if opaque {
        let t = format!("opaque-{}", jwt::unique_jti("tok"));
        secrets::register_secret(t.clone());
        register_opaque(&t);
        t
    } else {
        jwt::mint_access(&sub, exp_claim, rec.field("civic_profile"))
    };
    let mut body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "issued_token_type": TOKEN_TYPE_ACCESS,
    });
    if let Some(e) = expires_field {
        body["expires_in"] = json!(e);
    }
    if let Some(s) = rec.field("scope") {
        body["scope"] = json!(s);
    }
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(body.to_string()))
        .expect("response");
    (resp, "issued".into(), Some(token))
}

/// Opaque tokens the fake issued, so the fake hub can accept them.
pub(crate) fn opaque_tokens() -> &'static Mutex<BTreeSet<String>> {
    static SET: std::sync::OnceLock<Mutex<BTreeSet<String>>> = std::sync::OnceLock::new();
    SET.get_or_init(|| Mutex::new(BTreeSet::new()))
}

fn register_opaque(t: &str) {
    opaque_tokens().lock().unwrap().insert(t.to_string());
}

fn validate(st: &State, rec: &ExchangeRequest) -> Result<(), (u16, &'static str, &'static str)> {
    if rec.method != "POST" {
        return Err((405, "invalid_request", "POST required"));
    }
    if rec.path != "/oauth/token" {
        return Err((404, "invalid_request", "not found"));
    }
    let ct = rec.header("content-type").unwrap_or_default();
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err((400, "invalid_request", "form body required"));
    }
    let client_ok = match &rec.basic {
        Some((id, secret)) => {
            *id == *st.client_id.lock().unwrap()
                && st
                    .client_secrets
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|s| s == secret)
        }
        None => false,
    };
    if !client_ok {
        return Err((401, "invalid_client", "client authentication failed"));
    }
    for f in ["grant_type", "subject_token", "subject_token_type"] {
        if rec.field_count(f) != 1 {
            return Err((400, "invalid_request", "missing or repeated parameter"));
        }
    }
    if rec.field("grant_type") != Some(GRANT_TYPE_TOKEN_EXCHANGE) {
        return Err((400, "unsupported_grant_type", "unsupported grant_type"));
    }
    let stt = rec.field("subject_token_type").unwrap_or_default();
    if stt != TOKEN_TYPE_ACCESS && stt != TOKEN_TYPE_ID {
        return Err((400, "invalid_request", "unsupported subject_token_type"));
    }
    let subject = rec.field("subject_token").unwrap_or_default();
    if let Some(set) = st.accepted_subjects.lock().unwrap().as_ref()
        && !set.contains(subject)
    {
        return Err((400, "invalid_grant", "subject token not accepted"));
    }
    match jwt::verify(subject) {
        Ok(_) => Ok(()),
        Err(jwt::JwtError::Expired) => Err((400, "invalid_grant", "Token expired")),
        Err(_) => Err((400, "invalid_grant", "Signature verification failed")),
    }
}
