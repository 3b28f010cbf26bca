//! The RFC 8693 token-exchange client for Civic Auth (docs/protocol.md §1).
//!
//! Wire format as the Civic reference clients use it: `POST` of a form to the token URL with HTTP
//! Basic client authentication over the raw `client_id:client_secret`, `grant_type`,
//! `subject_token`, `subject_token_type`, and `civic_profile` / `expires_in` / `scope` only when
//! configured. The operator uses the same client to probe credentials.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::header::{ACCEPT, AUTHORIZATION, HeaderValue, RETRY_AFTER};
use tokio::time::Instant;
use url::Url;
use uuid::Uuid;

use crate::jwt;
use crate::secret::Secret;

/// RFC 8693 `grant_type`.
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The longest an exchange may take, whatever is configured.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15);
/// Raw lifetime assumed when neither `expires_in` nor the token's JWT `exp` says anything.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// Largest refresh buffer: a token is reused until `expires_in − min(30 s, expires_in / 2)`.
pub const MAX_EXPIRY_BUFFER: Duration = Duration::from_secs(30);
/// Longest a refresh starts ahead of a token's reuse limit.
pub const MAX_REFRESH_LEAD: Duration = Duration::from_secs(300);
/// Longest raw lifetime believed: a larger `expires_in` or `exp` (`1e300`, `u64::MAX`…) is
/// capped, so instant arithmetic cannot overflow and a token is re-exchanged at least daily.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Subject sent by [`ExchangeClient::probe_credentials`]: deliberately not a valid token.
pub const PROBE_SUBJECT: &str = "civic-sidecar-credential-probe.invalid";

/// Largest token-endpoint response read; anything bigger is malformed.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest `error_description` kept (the TS reference client keeps 200 characters).
const MAX_DESCRIPTION_CHARS: usize = 200;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Civic Auth client credentials.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    /// Civic Auth client ID.
    pub client_id: String,
    /// Civic Auth client secret.
    pub client_secret: Secret,
}

/// What to exchange, and how to shape the issued token.
#[derive(Clone, Debug)]
pub struct ExchangeRequest {
    /// The token being exchanged (a projected service-account token, a user's token…).
    pub subject_token: Secret,
    /// RFC 8693 `subject_token_type`.
    pub subject_token_type: String,
    /// Profile (toolkit) UUID.
    pub profile: Option<Uuid>,
    /// Send `civic_profile` (lock the token to the profile). Ignored without a profile.
    pub lock_profile: bool,
    /// Requested lifetime (`expires_in`), seconds.
    pub expires_in: Option<u32>,
    /// Requested `scope`.
    pub scope: Option<String>,
}

/// A token issued by Civic Auth.
#[derive(Clone, Debug)]
pub struct ExchangedToken {
    /// The access token (opaque to the sidecar).
    pub access_token: Secret,
    /// `issued_token_type`, when the server sent one.
    pub issued_token_type: Option<String>,
    /// `expires_in` as sent by the server, when usable (> 0).
    pub expires_in: Option<u64>,
    /// When the response was received.
    pub received_at: Instant,
    /// When to replace it and when to stop using it, counted from `received_at`.
    pub lifetime: Lifetime,
}

impl ExchangedToken {
    /// From here on a (background) refresh is due.
    pub fn refresh_at(&self) -> Instant {
        self.received_at + self.lifetime.refresh_after
    }

    /// From here on the token is not sent any more (statement 11's reuse limit).
    pub fn expires_at(&self) -> Instant {
        self.received_at + self.lifetime.expires_after
    }
}

/// When a token is replaced, and when it stops being used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// A background refresh starts here, ahead of `expires_after` by a third of the usable
    /// lifetime (at most 5 minutes), so no request waits for it.
    pub refresh_after: Duration,
    /// Reuse limit (statement 11): `L − min(30 s, L/2)`; never sent past it.
    pub expires_after: Duration,
}

/// The answer of [`ExchangeClient::probe_credentials`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialVerdict {
    /// Civic Auth authenticated the client (and rejected only the probe's subject).
    Valid,
    /// Civic Auth rejected the client itself.
    Invalid {
        /// OAuth error code (`invalid_client`, `unauthorized_client`…).
        code: String,
        /// Sanitized, truncated `error_description`.
        description: Option<String>,
    },
}

/// Why an exchange produced no token. `Display` is safe to show to the workload: it never holds a
/// secret or a token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Civic Auth answered 4xx (or an unexpected non-2xx that is not a server failure).
    #[error("token exchange rejected: {code} (HTTP {status}){}", describe(.description))]
    Rejected {
        /// HTTP status.
        status: u16,
        /// OAuth error code, or `http_<status>` when the body had none.
        code: String,
        /// Sanitized, truncated `error_description`.
        description: Option<String>,
    },
    /// Civic Auth answered 429.
    #[error("token exchange rate limited (HTTP 429)")]
    RateLimited {
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Civic Auth answered 5xx.
    #[error("token exchange unavailable (HTTP {status})")]
    Unavailable {
        /// HTTP status.
        status: u16,
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// No complete answer within the timeout.
    #[error("token exchange timed out after {}s", .0.as_secs())]
    Timeout(Duration),
    /// The token endpoint could not be reached.
    #[error("token exchange failed: cannot reach the token endpoint: {0}")]
    Network(String),
    /// A 2xx answer that is not a usable token response.
    #[error("token exchange returned a malformed response: {0}")]
    Malformed(String),
    /// The HTTP client could not be built.
    #[error("token exchange client: {0}")]
    Client(String),
}

fn describe(description: &Option<String>) -> String {
    match description {
        Some(d) => format!(": {d}"),
        None => String::new(),
    }
}

impl ExchangeError {
    /// Low-cardinality label for metrics and Event reasons. Well-known OAuth error codes are kept
    /// as they are; anything else from a rejection becomes `rejected`.
    pub fn category(&self) -> &'static str {
        match self {
            ExchangeError::Rejected { code, .. } => match code.as_str() {
                "invalid_client" => "invalid_client",
                "invalid_grant" => "invalid_grant",
                "invalid_request" => "invalid_request",
                "unauthorized_client" => "unauthorized_client",
                "unsupported_grant_type" => "unsupported_grant_type",
                "invalid_scope" => "invalid_scope",
                "invalid_target" => "invalid_target",
                _ => "rejected",
            },
            ExchangeError::RateLimited { .. } => "rate_limited",
            ExchangeError::Unavailable { .. } => "unavailable",
            ExchangeError::Timeout(_) => "timeout",
            ExchangeError::Network(_) => "network",
            ExchangeError::Malformed(_) => "malformed",
            ExchangeError::Client(_) => "client",
        }
    }

    /// Whether trying again later may succeed with the same inputs (429, 5xx, timeout, network).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ExchangeError::RateLimited { .. }
                | ExchangeError::Unavailable { .. }
                | ExchangeError::Timeout(_)
                | ExchangeError::Network(_)
        )
    }

    /// The server's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ExchangeError::RateLimited { retry_after }
            | ExchangeError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Something that performs token exchanges; the cache is generic over it so tests can count calls.
pub trait Exchange: Send + Sync + 'static {
    /// Exchanges `request` for a Civic token.
    fn exchange(
        &self,
        credentials: &ClientCredentials,
        request: &ExchangeRequest,
    ) -> impl Future<Output = Result<ExchangedToken, ExchangeError>> + Send;
}

/// RFC 8693 client for one token URL. Cheap to clone (shares its connection pool).
#[derive(Clone)]
pub struct ExchangeClient {
    http: reqwest::Client,
    token_url: Arc<Url>,
    timeout: Duration,
}

impl fmt::Debug for ExchangeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeClient")
            .field("token_url", &self.token_url.as_str())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ExchangeClient {
    /// A client for `token_url` using `tls` (see [`crate::tls::client_config`]). `timeout` bounds
    /// each exchange and is clamped to [`MAX_TIMEOUT`]. Redirects and proxies are not followed:
    /// credentials go to the configured URL only.
    pub fn new(
        token_url: Url,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, ExchangeError> {
        let timeout = timeout.min(MAX_TIMEOUT);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .user_agent(concat!("civic-sidecar/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ExchangeError::Client(error_chain(&e)))?;
        Ok(Self {
            http,
            token_url: Arc::new(token_url),
            timeout,
        })
    }

    /// The token URL this client posts to.
    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    /// Performs one token exchange. Never retries: retry policy belongs to the caller.
    pub async fn exchange(
        &self,
        credentials: &ClientCredentials,
        request: &ExchangeRequest,
    ) -> Result<ExchangedToken, ExchangeError> {
        let (status, retry_after, body) = self.post(credentials, request).await?;
        let received_at = Instant::now();
        let parsed = parse_response(
            status,
            retry_after,
            &body,
            &redactions(credentials, request),
        )
        .map_err(|e| name_untrusted_issuer(e, request.subject_token.expose()))?;
        let lifetime = token_lifetime(
            parsed.expires_in,
            jwt::expiry(parsed.access_token.expose()),
            jwt::expiry(request.subject_token.expose()),
            unix_now(),
        );
        Ok(ExchangedToken {
            access_token: parsed.access_token,
            issued_token_type: parsed.issued_token_type,
            expires_in: parsed.expires_in,
            received_at,
            lifetime,
        })
    }

    /// Tells good client credentials from bad ones without a subject token: an exchange with a
    /// deliberately invalid subject gets `invalid_client` (or 401) for bad credentials and
    /// `invalid_grant`/`invalid_request` for good ones. 429, 5xx, timeouts and network errors are
    /// returned as `Err`: they are no verdict.
    pub async fn probe_credentials(
        &self,
        credentials: &ClientCredentials,
    ) -> Result<CredentialVerdict, ExchangeError> {
        let request = ExchangeRequest {
            subject_token: Secret::new(PROBE_SUBJECT),
            subject_token_type: crate::contract::DEFAULT_SUBJECT_TOKEN_TYPE.to_string(),
            profile: None,
            lock_profile: false,
            expires_in: None,
            scope: None,
        };
        match self.exchange(credentials, &request).await {
            Ok(_) => Ok(CredentialVerdict::Valid),
            Err(ExchangeError::Rejected {
                status,
                code,
                description,
            }) => Ok(probe_verdict(status, code, description)),
            Err(e) => Err(e),
        }
    }

    async fn post(
        &self,
        credentials: &ClientCredentials,
        request: &ExchangeRequest,
    ) -> Result<(u16, Option<Duration>, Vec<u8>), ExchangeError> {
        let call = async {
            let response = self
                .http
                .post(self.token_url.as_str())
                .header(AUTHORIZATION, basic_auth(credentials))
                .header(ACCEPT, HeaderValue::from_static("application/json"))
                .form(&form_fields(request))
                .send()
                .await
                .map_err(|e| self.transport_error(&e))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let body = read_limited(response)
                .await
                .map_err(|e| self.transport_error(&e))?;
            Ok((status, retry_after, body))
        };
        // reqwest's own timeout covers the body too; this one is the hard stop.
        tokio::time::timeout(self.timeout + Duration::from_millis(50), call)
            .await
            .unwrap_or(Err(ExchangeError::Timeout(self.timeout)))
    }

    fn transport_error(&self, e: &reqwest::Error) -> ExchangeError {
        if e.is_timeout() {
            ExchangeError::Timeout(self.timeout)
        } else {
            ExchangeError::Network(error_chain(e))
        }
    }
}

impl Exchange for ExchangeClient {
    fn exchange(
        &self,
        credentials: &ClientCredentials,
        request: &ExchangeRequest,
    ) -> impl Future<Output = Result<ExchangedToken, ExchangeError>> + Send {
        ExchangeClient::exchange(self, credentials, request)
    }
}

/// `Authorization: Basic base64(client_id:client_secret)` over the raw strings, as the reference
/// clients do (docs/protocol.md §6 question 1).
pub fn basic_auth(credentials: &ClientCredentials) -> HeaderValue {
    let raw = format!(
        "{}:{}",
        credentials.client_id,
        credentials.client_secret.expose()
    );
    let mut value = HeaderValue::try_from(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// An `invalid_grant` means Civic Auth refused the subject token, most often because its
/// token-exchange provider does not trust the token's issuer (or audience): say which, as read
/// from the token, so the fix is at hand.
fn name_untrusted_issuer(error: ExchangeError, subject_token: &str) -> ExchangeError {
    match error {
        ExchangeError::Rejected {
            status,
            code,
            description,
        } if code == "invalid_grant" => {
            let (iss, aud) = jwt::issuer_and_audience(subject_token);
            let Some(iss) = iss else {
                return ExchangeError::Rejected {
                    status,
                    code,
                    description,
                };
            };
            let audience = aud
                .map(|a| format!(" for audience {a:?}"))
                .unwrap_or_default();
            let mut hint = format!(
                "Civic Auth does not trust this issuer: {iss:?}{audience} (register it in the \
                 Civic Auth app's token exchange settings; civic-operator issuer prints the values)"
            );
            if let Some(d) = description {
                hint.push_str("; ");
                hint.push_str(&d);
            }
            ExchangeError::Rejected {
                status,
                code,
                description: Some(hint),
            }
        }
        other => other,
    }
}

/// The form fields of an exchange, in wire order. Optional fields appear only when configured.
pub fn form_fields(request: &ExchangeRequest) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE.to_string()),
        ("subject_token", request.subject_token.expose().to_string()),
        ("subject_token_type", request.subject_token_type.clone()),
    ];
    if let (Some(profile), true) = (request.profile, request.lock_profile) {
        fields.push(("civic_profile", profile.hyphenated().to_string()));
    }
    if let Some(ttl) = request.expires_in {
        fields.push(("expires_in", ttl.to_string()));
    }
    if let Some(scope) = &request.scope {
        fields.push(("scope", scope.clone()));
    }
    fields
}

/// A successful token response, before lifetime math.
#[derive(Debug)]
pub struct TokenResponse {
    /// The issued token.
    pub access_token: Secret,
    /// `issued_token_type`, when present.
    pub issued_token_type: Option<String>,
    /// `expires_in`, when usable (> 0).
    pub expires_in: Option<u64>,
}

/// Classifies a token-endpoint answer. `redact` lists values (secret, subject token) that must
/// not survive into an error description even if the server echoes them.
pub fn parse_response(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    redact: &[&str],
) -> Result<TokenResponse, ExchangeError> {
    match status {
        200..=299 => parse_success(body),
        429 => Err(ExchangeError::RateLimited { retry_after }),
        500..=599 => Err(ExchangeError::Unavailable {
            status,
            retry_after,
        }),
        _ => {
            let (code, description) = parse_error_body(body, redact);
            Err(ExchangeError::Rejected {
                status,
                code: code.unwrap_or_else(|| format!("http_{status}")),
                description,
            })
        }
    }
}

fn parse_success(body: &[u8]) -> Result<TokenResponse, ExchangeError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| ExchangeError::Malformed("body is not JSON".into()))?;
    let object = value
        .as_object()
        .ok_or_else(|| ExchangeError::Malformed("body is not a JSON object".into()))?;
    let access_token = match object.get("access_token") {
        Some(serde_json::Value::String(t)) if !t.is_empty() => t,
        Some(serde_json::Value::String(_)) => {
            return Err(ExchangeError::Malformed("access_token is empty".into()));
        }
        _ => return Err(ExchangeError::Malformed("access_token is missing".into())),
    };
    // It goes into an `Authorization` header: visible ASCII only.
    if !access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ExchangeError::Malformed(
            "access_token has characters not allowed in a header".into(),
        ));
    }
    match object.get("token_type") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(ExchangeError::Malformed("token_type is not Bearer".into())),
    }
    let issued_token_type = object
        .get("issued_token_type")
        .and_then(|v| v.as_str())
        .map(|s| sanitize(s, &[]));
    Ok(TokenResponse {
        access_token: Secret::new(access_token.as_str()),
        issued_token_type,
        expires_in: object.get("expires_in").and_then(parse_expires_in),
    })
}

/// `expires_in` as a positive number of seconds (integer, float or numeric string).
fn parse_expires_in(value: &serde_json::Value) -> Option<u64> {
    let secs = match value {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 1.0)
                .map(|f| f as u64)
        }),
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }?;
    (secs > 0).then_some(secs)
}

fn parse_error_body(body: &[u8], redact: &[&str]) -> (Option<String>, Option<String>) {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return (None, None);
    };
    let code = object
        .get("error")
        .and_then(|v| v.as_str())
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 64
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                // A server echoing the secret or subject as the code must not show it.
                && !redact.iter().any(|v| v.len() >= 4 && c.contains(v))
        })
        .map(str::to_string);
    let description = object
        .get("error_description")
        .and_then(|v| v.as_str())
        .map(|d| sanitize(d, redact))
        .filter(|d| !d.is_empty());
    (code, description)
}

/// Printable, single-line, truncated, with any listed value replaced.
fn sanitize(text: &str, redact: &[&str]) -> String {
    let mut text = text.to_string();
    for value in redact.iter().filter(|v| v.len() >= 4) {
        text = text.replace(value, "[redacted]");
    }
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DESCRIPTION_CHARS)
        .collect::<String>()
        .trim()
        .to_string()
}

fn redactions<'a>(
    credentials: &'a ClientCredentials,
    request: &'a ExchangeRequest,
) -> [&'a str; 2] {
    [
        credentials.client_secret.expose(),
        request.subject_token.expose(),
    ]
}

/// The part of an RFC 8693 rejection that is about the client, not the subject.
fn probe_verdict(status: u16, code: String, description: Option<String>) -> CredentialVerdict {
    let client_problem = status == 401
        || status == 403
        || matches!(
            code.as_str(),
            "invalid_client" | "unauthorized_client" | "unsupported_grant_type"
        );
    if client_problem {
        CredentialVerdict::Invalid { code, description }
    } else {
        CredentialVerdict::Valid
    }
}

/// When to refresh and when to stop using an issued token, counted from when it was received.
///
/// The raw lifetime `L` is `expires_in`, else the access token's JWT `exp`, else
/// [`DEFAULT_LIFETIME`]. The token is used until `L − min(30 s, L/2)`, and never past the same
/// point computed for the subject token's JWT `exp` (an exchanged token never outlives its
/// subject). Its replacement is fetched ahead of that, see [`Lifetime::refresh_after`].
pub fn token_lifetime(
    expires_in: Option<u64>,
    access_token_exp: Option<i64>,
    subject_token_exp: Option<i64>,
    now_unix: i64,
) -> Lifetime {
    let remaining =
        |exp: i64| Duration::from_secs(u64::try_from(exp.saturating_sub(now_unix)).unwrap_or(0));
    let raw = match (expires_in, access_token_exp) {
        (Some(secs), _) => Duration::from_secs(secs),
        (None, Some(exp)) if exp > now_unix => remaining(exp),
        _ => DEFAULT_LIFETIME,
    }
    .min(MAX_LIFETIME);
    let mut usable = buffered(raw);
    if let Some(exp) = subject_token_exp {
        usable = usable.min(buffered(remaining(exp)));
    }
    Lifetime {
        refresh_after: usable - MAX_REFRESH_LEAD.min(usable / 3),
        expires_after: usable,
    }
}

fn buffered(lifetime: Duration) -> Duration {
    lifetime - MAX_EXPIRY_BUFFER.min(lifetime / 2)
}

/// `Retry-After` as delay-seconds or an HTTP date, capped.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let delay = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(text)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(body)
}

/// The innermost causes of an error, joined; reqwest's top-level message alone says little.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> ExchangeRequest {
        ExchangeRequest {
            subject_token: Secret::new("subject-jwt"),
            subject_token_type: crate::contract::DEFAULT_SUBJECT_TOKEN_TYPE.into(),
            profile: None,
            lock_profile: true,
            expires_in: None,
            scope: None,
        }
    }

    #[test]
    fn invalid_grant_names_the_issuer_to_trust() {
        let subject = jwt::make(&json!({"iss": "https://oidc.example/id/ABC", "aud": "civic"}));
        let rejected = |code: &str| ExchangeError::Rejected {
            status: 400,
            code: code.into(),
            description: Some("subject token rejected".into()),
        };
        let named = name_untrusted_issuer(rejected("invalid_grant"), &subject).to_string();
        assert_eq!(
            named,
            "token exchange rejected: invalid_grant (HTTP 400): Civic Auth does not trust this \
             issuer: \"https://oidc.example/id/ABC\" for audience \"civic\" (register it in the \
             Civic Auth app's token exchange settings; civic-operator issuer prints the values); \
             subject token rejected"
        );
        assert_eq!(named_category(&subject), "invalid_grant");
        // Other rejections, and subjects that are not JWTs, are left as they are.
        let other = name_untrusted_issuer(rejected("invalid_client"), &subject).to_string();
        assert!(!other.contains("issuer"), "{other}");
        let opaque = name_untrusted_issuer(rejected("invalid_grant"), "opaque").to_string();
        assert!(!opaque.contains("issuer"), "{opaque}");
    }

    fn named_category(subject: &str) -> &'static str {
        let e = ExchangeError::Rejected {
            status: 400,
            code: "invalid_grant".into(),
            description: None,
        };
        name_untrusted_issuer(e, subject).category()
    }

    fn names(fields: &[(&'static str, String)]) -> Vec<&'static str> {
        fields.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn absurd_lifetimes_are_capped_not_overflowing() {
        let now = Instant::now();
        for (expires_in, exp) in [
            (Some(u64::MAX), None),
            (None, Some(i64::MAX)),
            (Some(10 * 365 * 24 * 3600), Some(i64::MAX)),
        ] {
            let l = token_lifetime(expires_in, exp, None, 1_700_000_000);
            assert_eq!(l.expires_after, MAX_LIFETIME - MAX_EXPIRY_BUFFER);
            assert!(now.checked_add(l.expires_after).is_some());
        }
        let body = br#"{"access_token":"t","expires_in":1e300}"#;
        let parsed = parse_response(200, None, body, &[]).unwrap();
        let l = token_lifetime(parsed.expires_in, None, None, 1_700_000_000);
        assert!(now.checked_add(l.expires_after).is_some());
    }

    #[test]
    fn form_has_exactly_the_required_fields_by_default() {
        let fields = form_fields(&request());
        assert_eq!(
            fields,
            vec![
                ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE.to_string()),
                ("subject_token", "subject-jwt".to_string()),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:access_token".to_string()
                ),
            ]
        );
    }

    #[test]
    fn civic_profile_only_when_profile_and_lock() {
        let profile: Uuid = "7c9e6679-7425-40de-944b-e07fc1f90ae7".parse().unwrap();
        let mut r = request();
        r.profile = Some(profile);
        let fields = form_fields(&r);
        assert!(fields.contains(&(
            "civic_profile",
            "7c9e6679-7425-40de-944b-e07fc1f90ae7".into()
        )));
        r.lock_profile = false;
        assert!(!names(&form_fields(&r)).contains(&"civic_profile"));
        r.profile = None;
        r.lock_profile = true;
        assert!(!names(&form_fields(&r)).contains(&"civic_profile"));
    }

    #[test]
    fn expires_in_and_scope_only_when_configured() {
        let mut r = request();
        r.expires_in = Some(900);
        r.scope = Some("openid profile".into());
        let fields = form_fields(&r);
        assert!(fields.contains(&("expires_in", "900".into())));
        assert!(fields.contains(&("scope", "openid profile".into())));
        for forbidden in [
            "client_id",
            "client_secret",
            "civic_account",
            "resource",
            "audience",
        ] {
            assert!(!names(&fields).contains(&forbidden));
        }
    }

    #[test]
    fn basic_auth_is_raw_id_colon_secret() {
        let creds = ClientCredentials {
            client_id: "client-1".into(),
            client_secret: Secret::new("s3cr%t+x"),
        };
        let v = basic_auth(&creds);
        assert!(v.is_sensitive());
        let encoded = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, b"client-1:s3cr%t+x");
    }

    #[test]
    fn success_response_variants() {
        let ok = parse_response(
            200,
            None,
            br#"{"access_token":"tok","token_type":"bearer","expires_in":3600}"#,
            &[],
        )
        .unwrap();
        assert_eq!(ok.access_token.expose(), "tok");
        assert_eq!(ok.expires_in, Some(3600));
        let ok = parse_response(
            200,
            None,
            br#"{"access_token":"tok","expires_in":"120"}"#,
            &[],
        )
        .unwrap();
        assert_eq!(ok.expires_in, Some(120));
        let ok = parse_response(
            200,
            None,
            br#"{"access_token":"tok","token_type":"Bearer","expires_in":0,"issued_token_type":"urn:x"}"#,
            &[],
        )
        .unwrap();
        assert_eq!(ok.expires_in, None);
        assert_eq!(ok.issued_token_type.as_deref(), Some("urn:x"));
    }

    #[test]
    fn malformed_success_responses() {
        for body in [
            &br#"{"token_type":"Bearer"}"#[..],
            br#"{"access_token":""}"#,
            br#"{"access_token":"a b"}"#,
            br#"{"access_token":"tok","token_type":"mac"}"#,
            br#"["access_token"]"#,
            b"<html>",
        ] {
            let err = parse_response(200, None, body, &[]).unwrap_err();
            assert_eq!(
                err.category(),
                "malformed",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn error_statuses_are_classified() {
        let err = parse_response(
            401,
            None,
            br#"{"error":"invalid_client","error_description":"bad secret"}"#,
            &[],
        )
        .unwrap_err();
        assert_eq!(err.category(), "invalid_client");
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            "token exchange rejected: invalid_client (HTTP 401): bad secret"
        );
        let err = parse_response(400, None, b"nope", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "token exchange rejected: http_400 (HTTP 400)"
        );
        assert_eq!(err.category(), "rejected");
        let err = parse_response(429, Some(Duration::from_secs(7)), b"", &[]).unwrap_err();
        assert_eq!(err.category(), "rate_limited");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert!(err.is_transient());
        let err = parse_response(503, None, b"", &[]).unwrap_err();
        assert_eq!(err.category(), "unavailable");
        assert!(err.is_transient());
    }

    #[test]
    fn error_description_is_sanitized_and_redacted() {
        let long = "x".repeat(1000);
        let body = json!({"error": "invalid_grant", "error_description": format!("bad token subject-jwt\n{long}")});
        let err =
            parse_response(400, None, body.to_string().as_bytes(), &["subject-jwt"]).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("subject-jwt"));
        assert!(!text.contains('\n'));
        assert!(text.len() < 300);
        let body = json!({"error": "<script>alert(1)</script>"});
        let err = parse_response(400, None, body.to_string().as_bytes(), &[]).unwrap_err();
        assert_eq!(err.category(), "rejected");
        assert!(!err.to_string().contains("script"));
        // An echoed secret or subject in the error code itself (found by fuzzing).
        for code in ["s3cret-value.1", "invalid_grant-s3cret-value.1"] {
            let body = json!({"error": code});
            let err = parse_response(401, None, body.to_string().as_bytes(), &["s3cret-value.1"])
                .unwrap_err();
            let text = err.to_string();
            assert!(!text.contains("s3cret-value.1"), "{text}");
            assert!(text.contains("http_401"), "the status stands in: {text}");
        }
    }

    fn l(refresh_ms: u64, expires_ms: u64) -> Lifetime {
        Lifetime {
            refresh_after: Duration::from_millis(refresh_ms),
            expires_after: Duration::from_millis(expires_ms),
        }
    }

    #[test]
    fn lifetime_from_expires_in() {
        let now = 1_800_000_000;
        // 3600 − 30 = 3570; refresh 5 minutes ahead.
        assert_eq!(
            token_lifetime(Some(3600), None, None, now),
            l(3_270_000, 3_570_000)
        );
        assert_eq!(
            token_lifetime(Some(120), None, None, now),
            l(60_000, 90_000)
        );
        assert_eq!(token_lifetime(Some(6), None, None, now), l(2_000, 3_000));
        assert_eq!(
            token_lifetime(Some(1), None, None, now).round_ms(),
            l(333, 500)
        );
        // expires_in wins over the JWT exp
        assert_eq!(
            token_lifetime(Some(120), Some(now + 10), None, now),
            l(60_000, 90_000)
        );
    }

    #[test]
    fn lifetime_from_jwt_exp_then_default() {
        let now = 1_800_000_000;
        assert_eq!(
            token_lifetime(None, Some(now + 120), None, now),
            l(60_000, 90_000)
        );
        assert_eq!(
            token_lifetime(None, Some(now - 5), None, now),
            l(20_000, 30_000)
        );
        assert_eq!(token_lifetime(None, None, None, now), l(20_000, 30_000));
    }

    #[test]
    fn lifetime_capped_by_subject_exp() {
        let now = 1_800_000_000;
        assert_eq!(
            token_lifetime(Some(3600), None, Some(now + 120), now),
            l(60_000, 90_000)
        );
        assert_eq!(
            token_lifetime(None, None, Some(now + 6), now),
            l(2_000, 3_000)
        );
        assert_eq!(
            token_lifetime(Some(3600), None, Some(now - 1), now),
            l(0, 0)
        );
        assert_eq!(
            token_lifetime(Some(120), None, Some(now + 3600), now),
            l(60_000, 90_000)
        );
    }

    impl Lifetime {
        fn round_ms(self) -> Self {
            let r = |d: Duration| Duration::from_millis(d.as_millis() as u64);
            Lifetime {
                refresh_after: r(self.refresh_after),
                expires_after: r(self.expires_after),
            }
        }
    }

    #[test]
    fn exchanged_token_lifetime_uses_jwt_exp_of_access_token() {
        let exp = unix_now() + 300;
        let token = jwt::make(&json!({"exp": exp}));
        let parsed = parse_response(
            200,
            None,
            json!({"access_token": token}).to_string().as_bytes(),
            &[],
        )
        .unwrap();
        assert_eq!(parsed.expires_in, None);
        let lt = token_lifetime(
            parsed.expires_in,
            jwt::expiry(parsed.access_token.expose()),
            None,
            unix_now(),
        );
        assert!(
            lt.expires_after > Duration::from_secs(265)
                && lt.expires_after <= Duration::from_secs(270),
            "{lt:?}"
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("12"), now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("99999"), now),
            Some(MAX_RETRY_AFTER)
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let d = parse_retry_after(&HeaderValue::from_str(&date).unwrap(), now).unwrap();
        assert!(d >= Duration::from_secs(29) && d <= Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("soon"), now),
            None
        );
    }

    #[test]
    fn probe_verdicts() {
        assert_eq!(
            probe_verdict(400, "invalid_grant".into(), None),
            CredentialVerdict::Valid
        );
        assert_eq!(
            probe_verdict(400, "invalid_request".into(), None),
            CredentialVerdict::Valid
        );
        assert!(matches!(
            probe_verdict(401, "http_401".into(), None),
            CredentialVerdict::Invalid { .. }
        ));
        assert!(matches!(
            probe_verdict(400, "invalid_client".into(), Some("x".into())),
            CredentialVerdict::Invalid { .. }
        ));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let creds = ClientCredentials {
            client_id: "id".into(),
            client_secret: Secret::new("the-client-secret"),
        };
        let text = format!("{creds:?} {:?}", request());
        assert!(!text.contains("the-client-secret"));
        assert!(!text.contains("subject-jwt"));
    }

    /// A one-shot token endpoint on loopback: records the request, answers `status`/`body`
    /// after `delay`.
    async fn endpoint(
        status: u16,
        reply: &'static str,
        delay: Duration,
    ) -> (
        Url,
        tokio::sync::oneshot::Receiver<(http::request::Parts, bytes::Bytes)>,
    ) {
        use http_body_util::BodyExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!(
            "http://{}/oauth/token",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = std::sync::Mutex::new(Some(tx));
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let tx = tx.lock().unwrap().take();
                    async move {
                        let (parts, body) = req.into_parts();
                        let bytes = body.collect().await.unwrap().to_bytes();
                        if let Some(tx) = tx {
                            let _ = tx.send((parts, bytes));
                        }
                        tokio::time::sleep(delay).await;
                        let mut r = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(reply.as_bytes()),
                        ));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        r.headers_mut()
                            .insert("content-type", HeaderValue::from_static("application/json"));
                        r.headers_mut()
                            .insert(RETRY_AFTER, HeaderValue::from_static("3"));
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
        (url, rx)
    }

    fn client(url: Url, timeout: Duration) -> ExchangeClient {
        ExchangeClient::new(url, crate::tls::client_config(None).unwrap(), timeout).unwrap()
    }

    fn creds() -> ClientCredentials {
        ClientCredentials {
            client_id: "client-1".into(),
            client_secret: Secret::new("secret-1"),
        }
    }

    #[tokio::test]
    async fn exchange_on_the_wire() {
        let (url, seen) = endpoint(
            200,
            r#"{"access_token":"issued-1","token_type":"Bearer","expires_in":120}"#,
            Duration::ZERO,
        )
        .await;
        let mut r = request();
        r.profile = Some("7c9e6679-7425-40de-944b-e07fc1f90ae7".parse().unwrap());
        r.subject_token = Secret::new("a+b/c=d");
        let token = client(url, Duration::from_secs(5))
            .exchange(&creds(), &r)
            .await
            .unwrap();
        assert_eq!(token.access_token.expose(), "issued-1");
        assert_eq!(token.expires_in, Some(120));
        assert_eq!(token.lifetime.expires_after, Duration::from_secs(90));
        let (parts, body) = seen.await.unwrap();
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.uri.path(), "/oauth/token");
        assert_eq!(
            parts.headers["content-type"],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(
            parts.headers["authorization"],
            "Basic Y2xpZW50LTE6c2VjcmV0LTE="
        );
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        assert_eq!(
            form,
            vec![
                ("grant_type".into(), GRANT_TYPE_TOKEN_EXCHANGE.into()),
                ("subject_token".into(), "a+b/c=d".into()),
                (
                    "subject_token_type".into(),
                    crate::contract::DEFAULT_SUBJECT_TOKEN_TYPE.into()
                ),
                (
                    "civic_profile".into(),
                    "7c9e6679-7425-40de-944b-e07fc1f90ae7".into()
                ),
            ]
        );
    }

    #[tokio::test]
    async fn errors_on_the_wire() {
        let (url, _) = endpoint(429, "{}", Duration::ZERO).await;
        let err = client(url, Duration::from_secs(5))
            .exchange(&creds(), &request())
            .await
            .unwrap_err();
        assert_eq!(err.category(), "rate_limited");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));

        let (url, _) = endpoint(200, "{}", Duration::from_secs(3)).await;
        let err = client(url, Duration::from_secs(1))
            .exchange(&creds(), &request())
            .await
            .unwrap_err();
        assert_eq!(err.category(), "timeout");

        let closed = Url::parse("http://127.0.0.1:1/oauth/token").unwrap();
        let err = client(closed, Duration::from_secs(2))
            .exchange(&creds(), &request())
            .await
            .unwrap_err();
        assert_eq!(err.category(), "network");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn probe_on_the_wire() {
        let (url, seen) = endpoint(400, r#"{"error":"invalid_grant"}"#, Duration::ZERO).await;
        let verdict = client(url, Duration::from_secs(5))
            .probe_credentials(&creds())
            .await
            .unwrap();
        assert_eq!(verdict, CredentialVerdict::Valid);
        let (_, body) = seen.await.unwrap();
        assert!(
            String::from_utf8_lossy(&body)
                .contains("subject_token=civic-sidecar-credential-probe.invalid")
        );

        let (url, _) = endpoint(
            401,
            r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#,
            Duration::ZERO,
        )
        .await;
        let verdict = client(url, Duration::from_secs(5))
            .probe_credentials(&creds())
            .await
            .unwrap();
        assert_eq!(
            verdict,
            CredentialVerdict::Invalid {
                code: "invalid_client".into(),
                description: Some("Client authentication failed".into())
            }
        );

        let (url, _) = endpoint(503, "{}", Duration::ZERO).await;
        let err = client(url, Duration::from_secs(5))
            .probe_credentials(&creds())
            .await
            .unwrap_err();
        assert_eq!(err.category(), "unavailable");
    }
}
