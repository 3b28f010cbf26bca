//! Body types of the data path: what goes to the hub ([`RequestBody`]) and what goes back to the
//! workload ([`ResponseBody`]). Both stream frame by frame; nothing here buffers.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::halfclose::EofGate;
use crate::metrics::Metrics;
use crate::upstream::pool::Lease;

/// Errors while relaying a body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The request body grew past the configured limit while streaming.
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    /// Reading from the other side failed.
    #[error(transparent)]
    Transport(#[from] hyper::Error),
    /// The workload's input ended before the body did.
    #[error("{}", crate::proxy::TRUNCATED)]
    Truncated,
}

pin_project! {
    /// A request body on its way to the hub: either fully buffered (small, replayable), or a
    /// buffered prefix followed by the rest of the workload's stream, counted against a limit.
    #[allow(missing_docs)]
    #[project = RequestBodyProj]
    pub enum RequestBody {
        Full {
            data: Option<Bytes>,
        },
        Streaming {
            prefix: Option<Bytes>,
            #[pin]
            rest: Incoming,
            seen: u64,
            limit: u64,
            exceeded: Arc<AtomicBool>,
            gate: Arc<EofGate>,
        },
    }
}

impl RequestBody {
    /// A complete body.
    pub fn full(data: Bytes) -> Self {
        RequestBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// `prefix` (already read) then the rest of `rest`; fails once more than `limit` bytes
    /// passed, and sets `exceeded` (the HTTP client may report the failure as a plain write
    /// error, so the proxy checks the flag to answer 413). Fails too when the workload's input
    /// ends first (`gate`).
    pub fn streaming(
        prefix: Bytes,
        rest: Incoming,
        limit: u64,
        exceeded: Arc<AtomicBool>,
        gate: Arc<EofGate>,
    ) -> Self {
        RequestBody::Streaming {
            seen: prefix.len() as u64,
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest,
            limit,
            exceeded,
            gate,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            RequestBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBodyProj::Streaming {
                prefix,
                rest,
                seen,
                limit,
                exceeded,
                gate,
            } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                match rest.poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            *seen += data.len() as u64;
                            if *seen > *limit {
                                exceeded.store(true, Ordering::Relaxed);
                                return Poll::Ready(Some(Err(BodyError::TooLarge(*limit))));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending if gate.poll_truncated(cx) => {
                        Poll::Ready(Some(Err(BodyError::Truncated)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full { data } => data.is_none(),
            RequestBody::Streaming { prefix, rest, .. } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Streaming { prefix, rest, .. } => {
                let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let r = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(r.lower() + p);
                if let Some(upper) = r.upper() {
                    hint.set_upper(upper + p);
                }
                hint
            }
        }
    }
}

/// Keeps `civic_sidecar_open_streams` counting a hub response until its body is done or
/// dropped, and holds its share of the hub connection until then.
#[derive(Debug)]
pub struct StreamGuard {
    metrics: Arc<Metrics>,
    _lease: Option<Lease>,
}

impl StreamGuard {
    /// Counts one more open stream.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.open_streams.inc();
        Self {
            metrics,
            _lease: None,
        }
    }

    /// Gives `lease` back to the pool when the body ends or is dropped.
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self._lease = Some(lease);
        self
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics.open_streams.dec();
    }
}

pin_project! {
    /// A response to the workload: the hub's body relayed as it arrives, or a body the sidecar
    /// wrote itself.
    #[allow(missing_docs)]
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        Full {
            data: Option<Bytes>,
        },
        Upstream {
            #[pin]
            body: Incoming,
            guard: Option<StreamGuard>,
        },
    }
}

impl ResponseBody {
    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        ResponseBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// No body.
    pub fn empty() -> Self {
        ResponseBody::Full { data: None }
    }

    /// The hub's body, counted as an open stream until it ends.
    pub fn upstream(body: Incoming, guard: StreamGuard) -> Self {
        ResponseBody::Upstream {
            body,
            guard: Some(guard),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            ResponseBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBodyProj::Upstream { body, guard } => {
                let polled = body.poll_frame(cx);
                if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    guard.take();
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full { data } => data.is_none(),
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}
