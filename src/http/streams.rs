//! HTTP/2 streams run inside their connection's own task.
//!
//! hyper hands every HTTP/2 stream to an executor as a future of its own. Spawned on the
//! runtime, each small request then costs task creation and, above all, wake-ups across
//! worker threads (the connection task reads the frame, a stream task on another worker
//! answers, the connection task is woken back to write): profiling the registry under
//! `h2load` put a fifth of its time in the kernel's scheduler. Here the executor only queues
//! the stream, and the connection's task polls its streams beside the connection itself, as
//! an event-loop server would: no spawn, no cross-thread wake-up. Connections still spread
//! over the runtime's workers; the streams of one connection share its worker, up to
//! [`INLINE_STREAMS`] at once (beyond, they are spawned as before).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};

/// Streams of one connection run in its own task at most. Request bursts (a client keeping
/// 16 requests in flight) stay inline; a connection carrying hundreds of long-lived event
/// streams would otherwise do all their fan-out on one worker (measured: delivery p99 1.6x
/// worse with 1,000 subscribers on one connection).
const INLINE_STREAMS: usize = 32;

/// The executor given to hyper for one connection: it queues the streams hyper opens.
#[derive(Clone, Default)]
pub struct ConnectionStreams {
    opened: Arc<Mutex<Vec<BoxFuture<'static, ()>>>>,
}

impl<F> hyper::rt::Executor<F> for ConnectionStreams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        self.opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(stream));
    }
}

impl ConnectionStreams {
    /// Drives `connection` and every stream it opens, in the caller's task, until the
    /// connection is done and its last stream has ended.
    pub fn drive<C: Future>(self, connection: C) -> WithStreams<C> {
        WithStreams {
            connection: Box::pin(connection),
            result: None,
            streams: FuturesUnordered::new(),
            opened: self,
        }
    }
}

/// A connection and its streams as one future; see [`ConnectionStreams::drive`].
pub struct WithStreams<C: Future> {
    connection: Pin<Box<C>>,
    /// The connection's own outcome, kept while its last streams finish.
    result: Option<C::Output>,
    streams: FuturesUnordered<BoxFuture<'static, ()>>,
    opened: ConnectionStreams,
}

// Nothing in it is pinned in place: the connection is boxed, and its outcome is only moved.
impl<C: Future> Unpin for WithStreams<C> {}

impl<C: Future> Future for WithStreams<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        if this.result.is_none() {
            if let Poll::Ready(out) = this.connection.as_mut().poll(cx) {
                this.result = Some(out);
            }
        }
        // Streams the connection opened just now start in this same poll. What they send
        // wakes this task, which then polls the connection to write it. Past
        // INLINE_STREAMS open at once (event-stream subscribers multiplexed on one
        // connection), more go to the runtime, so such a connection uses every worker.
        // The queue keeps its capacity: no allocation per batch of streams. Only this task
        // pushes to it (hyper opens streams while this task polls the connection), so the
        // lock is never contended.
        let mut opened = this
            .opened
            .opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for stream in opened.drain(..) {
            if this.streams.len() < INLINE_STREAMS {
                this.streams.push(stream);
            } else {
                tokio::spawn(stream);
            }
        }
        drop(opened);
        while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
        if this.streams.is_empty() {
            if let Some(out) = this.result.take() {
                return Poll::Ready(out);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn streams_run_in_the_connection_task_and_outlive_its_end() {
        let exec = ConnectionStreams::default();
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let connection = {
            let exec = exec.clone();
            let done = done.clone();
            async move {
                let d = done.clone();
                exec.execute(async move {
                    d.fetch_add(1, Ordering::SeqCst);
                });
                let d = done.clone();
                // A stream still running when the connection's own future ends.
                exec.execute(async move {
                    let _ = rx.await;
                    d.fetch_add(1, Ordering::SeqCst);
                });
                "closed"
            }
        };
        let driven = tokio::spawn(exec.drive(connection));
        tokio::task::yield_now().await;
        assert!(!driven.is_finished(), "a stream is still open");
        assert_eq!(done.load(Ordering::SeqCst), 1);
        tx.send(()).unwrap();
        assert_eq!(driven.await.unwrap(), "closed");
        assert_eq!(done.load(Ordering::SeqCst), 2);
    }
}
