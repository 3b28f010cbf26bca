//! The admin listener: `/livez`, `/readyz`, `/metrics`, nothing else (and nothing that proxies or
//! shows a token).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::body::ResponseBody;
use crate::exchange::Exchange;
use crate::metrics::Metrics;
use crate::token::{Readiness, TokenSource};

/// Admin endpoints.
pub struct Admin<E> {
    tokens: Arc<TokenSource<E>>,
    metrics: Arc<Metrics>,
    shutting_down: Arc<AtomicBool>,
}

impl<E> std::fmt::Debug for Admin<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin")
    }
}

impl<E: Exchange> Admin<E> {
    /// Admin endpoints over these tokens and metrics; `shutting_down` turns readiness off.
    pub fn new(
        tokens: Arc<TokenSource<E>>,
        metrics: Arc<Metrics>,
        shutting_down: Arc<AtomicBool>,
    ) -> Self {
        Self {
            tokens,
            metrics,
            shutting_down,
        }
    }

    /// Answers one admin request.
    pub fn handle<B>(&self, request: &Request<B>) -> Response<ResponseBody> {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match request.uri().path() {
            "/livez" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.shutting_down.load(Ordering::Relaxed) {
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: shutting down\n",
                    );
                }
                match self.tokens.readiness() {
                    Readiness::Ready => text(StatusCode::OK, "ready\n"),
                    Readiness::NotReady(reason) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {reason}\n"),
                    ),
                }
            }
            "/metrics" => {
                let mut r = Response::new(ResponseBody::full(self.metrics.encode()));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: /livez, /readyz, /metrics\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
