//! The HTTPS listener of the webhook: rustls (ring) with the hot-swappable serving certificate,
//! HTTP/2 (by ALPN) and HTTP/1.1, `POST /mutate` (and `/inject`, the same handler) and nothing else.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use civic_sidecar::listen::{self, Limits};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::admission::Admission;
use super::integrations::IntegrationSource;
use crate::certs::reload::ServingCert;

/// The admission path.
pub const MUTATE_PATH: &str = "/mutate";
/// Accepted as a synonym of [`MUTATE_PATH`].
pub const INJECT_PATH: &str = "/inject";
/// Largest AdmissionReview read (a pod is at most ~1.5 MB in etcd).
const MAX_BODY: usize = 3 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS 1.2/1.3 with ring, ALPN h2 and http/1.1, certificates from `serving`.
pub fn tls_config(serving: Arc<ServingCert>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The apiserver's `?timeout=10s`, if present.
fn timeout_param(query: Option<&str>) -> Option<Duration> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "timeout")
        .and_then(|(_, v)| humantime::parse_duration(v).ok())
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts are valid")
}

async fn handle<S: IntegrationSource>(
    req: Request<Incoming>,
    admission: Arc<Admission<S>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path != MUTATE_PATH && path != INJECT_PATH {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let timeout = timeout_param(req.uri().query());
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large or unreadable\n",
            );
        }
    };
    let reply = admission.review(&body, timeout).await;
    Response::builder()
        .status(reply.status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(reply.body)))
        .expect("static response parts are valid")
}

/// Connections the webhook serves at once: the apiserver keeps a few HTTP/2 connections per
/// replica, so this only bounds what a misbehaving client can hold.
pub const LIMITS: Limits = Limits {
    max_connections: 256,
    header_read_timeout: Duration::from_secs(10),
};

/// Serves the webhook on `listener` (HTTP/2 when the client's ALPN asks for it, else HTTP/1.1)
/// within [`LIMITS`] until `stop` resolves, then gives open requests up to `grace`. From
/// [`listen::Shutdown::drain`] on, connections are asked to finish and HTTP/1.1 answers say
/// `connection: close`, so the apiserver moves to a replica that stays.
pub async fn serve<S: IntegrationSource + 'static>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    admission: Arc<Admission<S>>,
    shutdown: listen::Shutdown,
    stop: impl Future<Output = ()>,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let draining = shutdown.clone();
    listen::serve(
        listener,
        LIMITS,
        shutdown,
        stop,
        grace,
        move |stream, peer, conn| {
            let (acceptor, admission, draining) =
                (acceptor.clone(), admission.clone(), draining.clone());
            async move {
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = service_fn(move |req| {
                    let (admission, draining) = (admission.clone(), draining.clone());
                    async move {
                        let mut resp = handle(req, admission).await;
                        if draining.is_draining() {
                            // HTTP/1.1 only: hyper drops connection headers from HTTP/2 answers.
                            resp.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let io = TokioIo::new(tls);
                let ended = if h2 {
                    conn.run(listen::http2().serve_connection(io, svc)).await
                } else {
                    conn.run(listen::http1(&LIMITS).serve_connection(io, svc))
                        .await
                };
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "webhook connection ended");
                }
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apiserver_timeout_is_read_from_the_query() {
        assert_eq!(
            timeout_param(Some("timeout=10s")),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            timeout_param(Some("a=b&timeout=500ms")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(timeout_param(Some("timeout=soon")), None);
        assert_eq!(timeout_param(None), None);
    }
}
