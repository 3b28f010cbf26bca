//! The HTTPS listener of the webhook: rustls (ring) with the hot-swappable serving certificate,
//! HTTP/1.1 and HTTP/2, `POST /mutate` (and `/inject`, the same handler) and nothing else.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
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

/// Serves the webhook on `listener` until `shutdown` resolves.
pub async fn serve<S: IntegrationSource + 'static>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    admission: Arc<Admission<S>>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, admission) = (acceptor.clone(), admission.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = service_fn(move |req| {
                let admission = admission.clone();
                async move { Ok::<_, Infallible>(handle(req, admission).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
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
