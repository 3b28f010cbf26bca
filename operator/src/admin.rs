//! The admin listener: `/livez`, `/readyz` and `/metrics`, nothing else.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use civic_sidecar::listen::{self, Limits};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

type Check = Box<dyn Fn() -> bool + Send + Sync>;

/// Readiness: every registered check passes and the process is not draining. Each part of the
/// process registers what it needs (the controller: the Lease API answered; the webhook: its
/// serving certificate and integration cache loaded), so a controller-only replica never waits
/// for a certificate and a webhook-only one never for a lease.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Default)]
struct HealthInner {
    draining: AtomicBool,
    checks: RwLock<Vec<(&'static str, Check)>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("unready", &self.unready())
            .finish()
    }
}

impl Health {
    /// Not ready while `check` fails; `waiting_for` says what is missing in `/readyz`.
    pub fn require(
        &self,
        waiting_for: &'static str,
        check: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        self.inner
            .checks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((waiting_for, Box::new(check)));
    }

    /// Not ready from now on: the process is stopping.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// `None` when ready, else what readiness waits for.
    pub fn unready(&self) -> Option<&'static str> {
        if self.inner.draining.load(Ordering::Relaxed) {
            return Some("draining");
        }
        let checks = self.inner.checks.read().unwrap_or_else(|e| e.into_inner());
        checks.iter().find(|(_, ok)| !ok()).map(|(what, _)| *what)
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
    }
    match req.uri().path() {
        "/livez" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match health.unready() {
            None => text(StatusCode::OK, "ok\n".into()),
            Some(what) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {what}\n"),
            ),
        },
        "/metrics" => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(metrics.render())))
            .expect("static response parts are valid"),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Serves the admin endpoints on `listener` (HTTP/1.1, within [`Limits::ADMIN`]) until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Limits::ADMIN;
    listen::serve(
        listener,
        limits,
        listen::Shutdown::default(),
        shutdown,
        Duration::from_secs(1),
        move |stream, _, conn| {
            let (metrics, health) = (metrics.clone(), health.clone());
            async move {
                let svc = service_fn(move |req| {
                    let resp = respond(&req, &metrics, &health);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = conn
                    .run(listen::http1(&limits).serve_connection(TokioIo::new(stream), svc))
                    .await;
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_health_and_metrics() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        let health = Health::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics.clone(), health.clone(), async {
            let _ = rx.await;
        }));

        assert!(get(addr, "/livez").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let (cert, cache) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, k) = (cert.clone(), cache.clone());
        health.require("serving certificate", move || c.load(Ordering::Relaxed));
        health.require("integration cache", move || k.load(Ordering::Relaxed));
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(
            not_ready.ends_with("not ready: serving certificate\n"),
            "{not_ready}"
        );
        cert.store(true, Ordering::Relaxed);
        assert!(
            get(addr, "/readyz")
                .await
                .ends_with("not ready: integration cache\n")
        );
        cache.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        health.drain();
        assert!(
            get(addr, "/readyz")
                .await
                .ends_with("not ready: draining\n")
        );
        let m = get(addr, "/metrics").await;
        assert!(m.contains("civic_operator_reconciles_total"), "{m}");
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));

        tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
