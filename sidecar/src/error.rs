//! Errors the proxy answers itself, and how they look to the workload: a JSON-RPC error object
//! with `id: null` (so MCP clients surface the message), `application/json`, and `Retry-After`
//! on 503. Messages say what failed and never carry a secret or token.

use std::time::Duration;

use http::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::ResponseBody;
use crate::profiles::Unrouted;
use crate::subject::SubjectError;
use crate::token::TokenError;

/// JSON-RPC "server error" code used for every sidecar-generated error.
pub const JSON_RPC_SERVER_ERROR: i64 = -32000;

/// `Retry-After` for failures that have no better hint (unreadable files, unreachable hub).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A request the proxy answers itself instead of (or after) talking to the hub.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A path that names no served profile (404; an unknown profile name lists the known ones).
    #[error(transparent)]
    NotFound(#[from] Unrouted),
    #[error("method not allowed: use POST, GET or DELETE")]
    /// Not POST, GET or DELETE (405).
    MethodNotAllowed,
    #[error("misdirected request: the Host header must name a loopback address")]
    /// A `Host` (or target authority) that is not loopback (421).
    MisdirectedHost,
    #[error("forbidden: Origin is not allowed")]
    /// An `Origin` outside the allow-list (403).
    ForbiddenOrigin,
    #[error("request body larger than {0} bytes")]
    /// A request body over the limit (413).
    BodyTooLarge(u64),
    #[error("bad request: {0}")]
    /// A malformed request (400).
    BadRequest(&'static str),
    #[error("could not read the request body: {0}")]
    /// The workload's body could not be read (400).
    RequestBody(String),
    #[error(transparent)]
    /// No token for the request (401 in header mode without a token, 502 for a rejected
    /// exchange, 503 otherwise).
    Token(#[from] TokenError),
    #[error("cannot reach the MCP hub: {0}")]
    /// The hub could not be connected to (502).
    UpstreamConnect(String),
    #[error("timed out connecting to the MCP hub")]
    /// Connecting to the hub timed out (504).
    UpstreamConnectTimeout,
    #[error("the MCP hub connection failed: {0}")]
    /// The hub connection failed mid-request (502).
    Upstream(String),
    #[error("the MCP hub rejected the {0} token (HTTP 401)")]
    /// The hub answered 401 again after a fresh token (502, without its challenge).
    UpstreamRejectedToken(&'static str),
}

impl ProxyError {
    /// The status the workload sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::MisdirectedHost => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::ForbiddenOrigin => StatusCode::FORBIDDEN,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RequestBody(_) | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Token(e) => match e {
                TokenError::Subject(
                    SubjectError::MissingHeader(_) | SubjectError::InvalidHeader(_),
                ) => StatusCode::UNAUTHORIZED,
                TokenError::Exchange(c) if !c.error.is_transient() => StatusCode::BAD_GATEWAY,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
            ProxyError::UpstreamConnect(_)
            | ProxyError::Upstream(_)
            | ProxyError::UpstreamRejectedToken(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// `Retry-After` for 503 answers.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.status() != StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        Some(match self {
            ProxyError::Token(TokenError::Exchange(c)) => c.retry_after(),
            _ => DEFAULT_RETRY_AFTER,
        })
    }

    /// Low-cardinality label.
    pub fn category(&self) -> &'static str {
        match self {
            ProxyError::NotFound(Unrouted::NotFound) => "not_found",
            ProxyError::NotFound(Unrouted::UnknownProfile { .. }) => "unknown_profile",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::MisdirectedHost => "misdirected_host",
            ProxyError::ForbiddenOrigin => "forbidden_origin",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::RequestBody(_) => "request_body",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Token(e) => e.category(),
            ProxyError::UpstreamConnect(_) => "upstream_connect",
            ProxyError::UpstreamConnectTimeout => "upstream_connect_timeout",
            ProxyError::Upstream(_) => "upstream",
            ProxyError::UpstreamRejectedToken(_) => "upstream_rejected_token",
        }
    }

    /// The response the workload gets.
    pub fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let mut response = json_error(status, &self.to_string());
        if let Some(wait) = self.retry_after() {
            let secs = wait.as_secs().max(1);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ProxyError::MethodNotAllowed) {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
        }
        response
    }
}

/// A JSON-RPC error response with `id: null`.
pub fn json_error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": JSON_RPC_SERVER_ERROR, "message": message},
    });
    let mut response = Response::new(ResponseBody::full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheError;
    use crate::exchange::ExchangeError;
    use http_body_util::BodyExt;

    async fn body_of(r: Response<ResponseBody>) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn exchange_error(error: ExchangeError, wait: u64) -> ProxyError {
        ProxyError::Token(TokenError::Exchange(CacheError {
            error,
            retry_at: tokio::time::Instant::now() + Duration::from_secs(wait),
        }))
    }

    #[tokio::test]
    async fn rejection_is_502_with_json_rpc_body() {
        let e = exchange_error(
            ExchangeError::Rejected {
                status: 401,
                code: "invalid_client".into(),
                description: None,
            },
            10,
        );
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert!(r.headers().get(RETRY_AFTER).is_none());
        let body = body_of(r).await;
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["id"], serde_json::Value::Null);
        assert_eq!(body["error"]["code"], -32000);
        assert_eq!(
            body["error"]["message"],
            "token exchange rejected: invalid_client (HTTP 401)"
        );
    }

    #[tokio::test]
    async fn transient_exchange_failure_is_503_with_retry_after() {
        for error in [
            ExchangeError::RateLimited { retry_after: None },
            ExchangeError::Unavailable {
                status: 502,
                retry_after: None,
            },
            ExchangeError::Timeout(Duration::from_secs(10)),
            ExchangeError::Network("connection refused".into()),
        ] {
            let r = exchange_error(error, 7).into_response();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            let secs: u64 = r.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
            assert!((6..=7).contains(&secs), "{secs}");
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(ProxyError::NotFound(Unrouted::NotFound).status(), 404);
        let r = ProxyError::MethodNotAllowed.into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[ALLOW], "GET, POST, DELETE");
        assert_eq!(ProxyError::MisdirectedHost.status(), 421);
        assert_eq!(ProxyError::ForbiddenOrigin.status(), 403);
        assert_eq!(ProxyError::BodyTooLarge(1).status(), 413);
        assert_eq!(
            ProxyError::BadRequest("more than one Host header").status(),
            400
        );
        assert_eq!(ProxyError::UpstreamRejectedToken("exchanged").status(), 502);
        let missing = ProxyError::Token(TokenError::Subject(
            crate::subject::SubjectError::MissingHeader(http::header::AUTHORIZATION),
        ));
        assert_eq!(missing.status(), 401);
        assert!(
            missing
                .into_response()
                .headers()
                .get(http::header::WWW_AUTHENTICATE)
                .is_none()
        );
    }
}
