//! Accepting connections and serving HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN over TLS)
//! on one port, within connection limits, until the shutdown token fires.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::config::HttpConfig;
use super::handler::Api;
use super::streams::ConnectionStreams;
use super::write_deadline::WriteDeadline;
use super::{tls, ApiState, HttpError};
use crate::telemetry::HttpMetrics;

type Builder = auto::Builder<ConnectionStreams>;

/// How long a dead HTTP/2 peer may leave a keep-alive ping unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Pause after a failed accept (for example: out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What one HTTP/2 stream may hold written but not yet sent. hyper takes a body's next chunk
/// as soon as less than this is buffered, and a client advertising large windows but reading
/// slowly (its socket full) leaves everything buffered here: at hyper's default of 400 KiB,
/// 10,000 event-stream subscribers that fell behind held 1.4 GB (BENCHMARKS.md, "Scale
/// curves"). One DATA frame's worth keeps a stream busy while a slow one stops taking changes,
/// and its subscription then falls behind and catches up as designed. A single larger chunk
/// (a list body) is still sent whole.
const STREAM_SEND_BUFFER: usize = 16 * 1024;

/// One per connection: its executor runs the connection's HTTP/2 streams in its own task.
fn connection_builder(config: &HttpConfig, streams: ConnectionStreams) -> Builder {
    let mut builder = auto::Builder::new(streams);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.http2_max_streams)
        .max_send_buf_size(STREAM_SEND_BUFFER)
        .keep_alive_interval(config.http2_keepalive)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Decrements the open-connection gauge when a connection task ends, however it ends.
struct OpenConnection(Arc<HttpMetrics>);

impl OpenConnection {
    fn new(metrics: Arc<HttpMetrics>) -> Self {
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve the API on `listener` until `shutdown` is cancelled, then stop accepting, end every
/// event stream with a final `shutdown` event, and give in-flight requests
/// `config.shutdown_grace` to finish. Returns once all connections closed (or the grace ran
/// out); errors only for a TLS configuration that cannot be used.
pub async fn serve(
    listener: TcpListener,
    config: HttpConfig,
    state: ApiState,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
    // Blocking reads wait on the registry's revision watch: one cheap signal, not a
    // subscription each.
    let revisions = state.registry.watch_revision();
    let api = Arc::new(Api::new(&config, state, revisions, shutdown.clone()));
    let config = Arc::new(config);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(config.max_connections));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = tls.is_some(), "serving the HTTP API");
    }
    loop {
        // Waiting for a slot before accepting leaves excess clients in the kernel's backlog
        // instead of accepting sockets we cannot serve.
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let api = api.clone();
        let config = config.clone();
        let tls = tls.clone();
        let handshake_timeout = config.header_read_timeout;
        let write_timeout = config.write_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let _open = OpenConnection::new(api.metrics().clone());
            // A client that connects and sends nothing would otherwise hold its slot for ever:
            // the protocol is not known yet, so no HTTP timeout applies.
            let mut first = [0u8; 1];
            if tokio::time::timeout(handshake_timeout, stream.peek(&mut first))
                .await
                .is_err()
            {
                tracing::debug!("closing a connection that sent nothing");
                return;
            }
            // Below TLS, so a handshake to a client that reads nothing is bounded too.
            let stream = WriteDeadline::new(stream, write_timeout, api.metrics().clone());
            match tls {
                None => serve_io(TokioIo::new(stream), &config, api, watcher).await,
                Some(acceptor) => match handshake(&acceptor, stream, handshake_timeout).await {
                    Some(stream) => {
                        serve_io(TokioIo::new(stream), &config, api, watcher).await;
                    }
                    None => drop(watcher),
                },
            }
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down the HTTP API: finishing in-flight requests"
    );
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?config.shutdown_grace,
            "connections still open after the shutdown grace period; dropping them"
        );
    }
    Ok(())
}

async fn handshake<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

async fn serve_io<I>(io: I, config: &HttpConfig, api: Arc<Api>, watcher: Watcher)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.handle(request).await) }
    });
    let streams = ConnectionStreams::default();
    let builder = connection_builder(config, streams.clone());
    let connection = builder.serve_connection(io, service);
    if let Err(error) = streams.drive(watcher.watch(connection)).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}
