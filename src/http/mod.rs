//! The REST API and the live event stream, on a hyper server without a framework.
//!
//! - [`config`]: settings from the environment.
//! - [`route`]: method and path to operation (pure).
//! - [`query`]: blocking-read, resume and filter parameters (pure).
//! - [`render`]: the contract's JSON bodies (pure).
//! - [`cache`]: rendered bodies reused until their inputs change.
//! - [`sse`]: event-stream framing and the per-subscriber stream.
//! - [`read`]: the one conditional-read path (snapshot, blocking wait, ETag, freshness headers).
//! - [`commands`]: refresh, clear, on-demand metrics; the bearer token.
//! - [`cors`]: cross-origin reads for pages on other origins (off unless configured).
//! - [`ui`]: the live dashboard page (`/ui`, its files in `ui/`).
//! - [`handler`]: one request, end to end.
//! - [`agents`]: node agents' reports of their tasks' readings.
//! - [`server`]: accepting connections, HTTP/1.1 + HTTP/2 + TLS, graceful shutdown.
//!
//! The binary builds an [`ApiState`], binds with [`bind`] and runs [`serve`] until its
//! cancellation token fires.

use std::sync::Arc;
use std::time::Duration;

use pipeline::Registry;
use tokio::net::TcpListener;

use crate::control::SourceControl;
use crate::telemetry::{PublisherState, SourceCounters};

pub mod agents;
pub mod body;
pub mod cache;
pub mod commands;
pub mod config;
pub mod cors;
pub mod handler;
pub mod query;
pub mod read;
pub mod render;
pub mod route;
pub mod server;
pub mod sse;
pub mod streams;
pub mod tls;
pub mod ui;
pub mod write_deadline;

pub use config::{HttpConfig, TlsFiles};
pub use server::serve;

/// What the API reads and commands. Every field is a cheap handle shared with the rest of the
/// service.
#[derive(Clone)]
pub struct ApiState {
    /// The registry: snapshots for reads, subscriptions for the event stream, `Clear`.
    pub registry: Registry,
    /// Commands to the Swarm source: `POST /cache/refresh` and `POST /services/{n}/metrics`.
    pub control: SourceControl,
    /// The source's counters, exported by /metrics.
    pub source_counters: Arc<SourceCounters>,
    /// The broker publisher's state, reported by /health, /events and /metrics.
    pub publisher: Arc<PublisherState>,
    /// How often the source lists every service (REFRESH_INTERVAL_SEC): reported as the
    /// contract's `refresh_interval_sec`, and the base of the default staleness bound.
    pub refresh_interval: Duration,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("unusable TLS configuration ({path}): {reason}")]
    TlsConfig { path: String, reason: String },
}

/// Listen on the configured address (HOST, PORT).
pub async fn bind(config: &HttpConfig) -> Result<TcpListener, HttpError> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|source| HttpError::Bind {
            addr: config.listen,
            source,
        })
}
