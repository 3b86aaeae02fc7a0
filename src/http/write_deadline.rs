//! A deadline on writes that make no progress: a client that stops reading (its receive window
//! and our send buffer full) would otherwise hold its connection, its event streams and a
//! connection slot for ever, since an HTTP/1.1 SSE response never ends on its own.
//!
//! [`WriteDeadline`] wraps an accepted connection's IO. While a write or flush stays pending
//! for longer than WRITE_TIMEOUT_SEC it fails with [`io::ErrorKind::TimedOut`], which ends the
//! connection in hyper (both protocols), and the drop is counted. Any progress re-arms the
//! deadline, so a slow but reading client is never cut.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::telemetry::HttpMetrics;

/// An IO whose writes fail once they have been pending for longer than `timeout`.
pub struct WriteDeadline<I> {
    inner: I,
    timeout: Duration,
    /// Armed when a write first stays pending; cleared by any write that completes.
    stalled_since: Option<Pin<Box<Sleep>>>,
    metrics: Arc<HttpMetrics>,
}

impl<I> WriteDeadline<I> {
    pub fn new(inner: I, timeout: Duration, metrics: Arc<HttpMetrics>) -> Self {
        WriteDeadline {
            inner,
            timeout,
            stalled_since: None,
            metrics,
        }
    }

    /// What to answer for a write the inner IO answered with `poll`: progress clears the
    /// deadline; a pending write arms it (once) and fails when it passes.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled_since = None;
            return poll;
        }
        let timeout = self.timeout;
        let deadline = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.stalled_since = None;
                self.metrics.write_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    ?timeout,
                    "dropping a connection whose client stopped reading"
                );
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing for longer than the write timeout",
                )))
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_pending_past_the_timeout_fails_and_is_counted() {
        // The peer never reads: a small duplex pipe fills, then writes stay pending.
        let (near, _far) = tokio::io::duplex(64);
        let metrics = Arc::new(HttpMetrics::default());
        let mut io = WriteDeadline::new(near, Duration::from_secs(5), metrics.clone());
        io.write_all(&[0; 64]).await.unwrap();
        let error = io.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(metrics.write_timeouts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_makes_progress_is_not_cut() {
        let (near, mut far) = tokio::io::duplex(64);
        let metrics = Arc::new(HttpMetrics::default());
        let mut io = WriteDeadline::new(near, Duration::from_secs(5), metrics.clone());
        let reader = tokio::spawn(async move {
            let mut chunk = [0u8; 32];
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                tokio::io::AsyncReadExt::read_exact(&mut far, &mut chunk)
                    .await
                    .unwrap();
            }
        });
        io.write_all(&[0; 64 + 32 * 19]).await.unwrap();
        reader.await.unwrap();
        assert_eq!(metrics.write_timeouts.load(Ordering::Relaxed), 0);
    }
}
