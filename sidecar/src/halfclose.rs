//! Answering workloads that half-close their connection.
//!
//! Some clients send a request and then shut down their write side (busybox `nc`, some HTTP/1.0
//! clients). The end of input they cause looks exactly like a workload that went away, and hyper
//! ends the connection on it, dropping the request unanswered. Telling the two apart on the
//! socket is impossible, so [`HalfCloseAware`] holds the end of input back while a response is
//! owed: until the hub's answer has fully gone out, or, for an event stream, until its head has
//! (from then on a disconnect must end the stream at once, docs/protocol.md statement 26).
//! An end of input held back while the request body is still being read means the body was
//! cut short: the body reader learns it from [`EofGate::poll_truncated`] and fails, so a
//! truncated request never waits for bytes that cannot come.
//! The cost: a workload that fully disconnects while its non-streaming answer is pending is
//! noticed when that answer is written, not before.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::header::CONTENT_TYPE;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counts the responses owed on one connection; the reader waits on it at end of input.
#[derive(Debug, Default)]
pub struct EofGate {
    owed: AtomicUsize,
    reader: AtomicWaker,
    /// An end of input was held back: the workload sends nothing more.
    ended: AtomicBool,
    body: AtomicWaker,
}

impl EofGate {
    /// One more response owed, until the hold is dropped.
    pub fn hold(self: &Arc<Self>) -> EofHold {
        self.owed.fetch_add(1, Ordering::AcqRel);
        EofHold(self.clone())
    }

    fn is_owed(&self) -> bool {
        self.owed.load(Ordering::Acquire) > 0
    }

    /// For a request body reader that found no data: `true` once the workload's input has
    /// ended (so the body is cut short); otherwise the reader is woken when it does.
    pub fn poll_truncated(&self, cx: &mut Context<'_>) -> bool {
        if self.ended.load(Ordering::Acquire) {
            return true;
        }
        self.body.register(cx.waker());
        self.ended.load(Ordering::Acquire)
    }
}

/// A response owed to the workload (see [`EofGate::hold`]).
#[derive(Debug)]
pub struct EofHold(Arc<EofGate>);

impl Drop for EofHold {
    fn drop(&mut self) {
        if self.0.owed.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

pin_project! {
    /// The workload's connection, with its end of input held back while a response is owed.
    #[derive(Debug)]
    pub struct HalfCloseAware<T> {
        #[pin]
        inner: T,
        gate: Arc<EofGate>,
    }
}

impl<T> HalfCloseAware<T> {
    /// Wraps `inner`; responses owed are counted on `gate`.
    pub fn new(inner: T, gate: Arc<EofGate>) -> Self {
        Self { inner, gate }
    }
}

impl<T: AsyncRead> AsyncRead for HalfCloseAware<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.inner.poll_read(cx, buf))?;
        let end_of_input = buf.filled().len() == before && buf.remaining() > 0;
        if end_of_input && this.gate.is_owed() {
            this.gate.ended.store(true, Ordering::Release);
            this.gate.body.wake();
            this.gate.reader.register(cx.waker());
            // Checked again after registering: the last hold may have gone in between. The
            // socket reports the end again when read once more.
            if this.gate.is_owed() {
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for HalfCloseAware<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pin_project! {
    /// A response body that keeps its response owed until it ends or is dropped.
    #[derive(Debug)]
    pub struct Owed<B> {
        #[pin]
        body: B,
        hold: Option<EofHold>,
    }
}

impl<B> Owed<B> {
    /// `body`, owed until it ends; an event stream is owed no longer than its head, so a
    /// disconnect ends it at once.
    pub fn new(response: http::Response<B>, hold: EofHold) -> http::Response<Self> {
        let streaming = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        let hold = (!streaming).then_some(hold);
        response.map(|body| Owed { body, hold })
    }
}

impl<B: Body<Data = Bytes>> Body for Owed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.hold.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn end_of_input_waits_while_a_response_is_owed() {
        let (mut client, server) = tokio::io::duplex(64);
        let gate = Arc::new(EofGate::default());
        let mut reader = HalfCloseAware::new(server, gate.clone());
        client.write_all(b"req").await.unwrap();
        client.shutdown().await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(reader.read(&mut buf).await.unwrap(), 3);
        let hold = gate.hold();
        let read = tokio::spawn(async move { reader.read(&mut buf).await.unwrap() });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!read.is_finished(), "the end of input is held back");
        drop(hold);
        let n = tokio::time::timeout(std::time::Duration::from_secs(1), read)
            .await
            .expect("released once nothing is owed")
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn an_event_stream_is_owed_no_longer_than_its_head() {
        let gate = Arc::new(EofGate::default());
        let sse = http::Response::builder()
            .header(CONTENT_TYPE, "text/event-stream")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let sse = Owed::new(sse, gate.hold());
        assert!(!gate.is_owed());
        let json = http::Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let mut json = Owed::new(json, gate.hold());
        assert!(gate.is_owed());
        use http_body_util::BodyExt as _;
        while json.body_mut().frame().await.is_some() {}
        assert!(!gate.is_owed(), "released when the body ended");
        drop(sse);
    }
}
