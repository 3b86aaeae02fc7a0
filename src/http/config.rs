//! The HTTP server's settings, read from the environment.
//!
//! Every limit has a default that suits one registry serving a few hundred clients; each can be
//! raised without a rebuild because the right figure depends on how many SSE subscribers and
//! proxies sit in front of it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::{ConfigError, Vars};

/// hyper refuses (by panicking) a header buffer smaller than this, so it is our floor too.
pub const MIN_HEADER_BYTES: u64 = 8192;

/// The longest duration setting accepted: the shared bound of [`Vars::seconds`].
pub const MAX_SECONDS: u64 = crate::config::MAX_DURATION_SECS;

/// Where the TLS certificate chain and private key are, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the HTTP server listens and what it tolerates.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// HOST and PORT: where to listen (default 0.0.0.0:5001, the original registry's port).
    pub listen: SocketAddr,
    /// API_TOKEN: when set, POST endpoints need `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    /// TLS_CERT_FILE and TLS_KEY_FILE: serve TLS (ALPN h2, http/1.1) instead of cleartext.
    pub tls: Option<TlsFiles>,
    /// SSE_HEARTBEAT_SEC: how often an idle event stream gets a comment line (default 15), so
    /// proxies and HTTP/1.1 clients do not take it for dead.
    pub sse_heartbeat: Duration,
    /// SSE_RETRY_MS: the reconnection delay suggested to event-stream clients (default 2000).
    pub sse_retry: Duration,
    /// STALE_AFTER_SEC: data counts as stale when the engine has not answered for this long.
    /// Unset: three refresh intervals (polls happen every interval, so two missed polls).
    pub stale_after: Option<Duration>,
    /// MAX_CONNECTIONS: open connections at most (default 4096); further clients wait in the
    /// listen backlog rather than exhausting file descriptors.
    pub max_connections: usize,
    /// MAX_HEADER_BYTES: the largest request head accepted over HTTP/1.1, and header list over
    /// HTTP/2 (default 16384, at least 8192). Larger heads get 431.
    pub max_header_bytes: usize,
    /// HEADER_READ_TIMEOUT_SEC: how long a client may take to send its request head, and
    /// then its body (default 10), so slow-loris connections do not pin a connection slot.
    pub header_read_timeout: Duration,
    /// MAX_BODY_BYTES: the largest request body accepted (default 65536). No endpoint needs a
    /// body; the bound keeps a client from streaming one forever.
    pub max_body_bytes: u64,
    /// HTTP2_MAX_STREAMS: concurrent streams per HTTP/2 connection (default 1024), which bounds
    /// how many event streams one connection can multiplex.
    pub http2_max_streams: u32,
    /// HTTP2_KEEPALIVE_SEC: the HTTP/2 ping interval that detects dead peers (default 30).
    pub http2_keepalive: Duration,
    /// COMMAND_TIMEOUT_SEC: how long POST commands wait for the engine (default 30).
    pub command_timeout: Duration,
    /// SHUTDOWN_GRACE_SEC: how long in-flight requests may take after a shutdown signal
    /// (default 10); connections still open then are dropped.
    pub shutdown_grace: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 5001)),
            api_token: None,
            tls: None,
            sse_heartbeat: Duration::from_secs(15),
            sse_retry: Duration::from_millis(2000),
            stale_after: None,
            max_connections: 4096,
            max_header_bytes: 16384,
            header_read_timeout: Duration::from_secs(10),
            max_body_bytes: 65536,
            http2_max_streams: 1024,
            http2_keepalive: Duration::from_secs(30),
            command_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl HttpConfig {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let defaults = HttpConfig::default();
        let host: IpAddr = vars.parse("HOST", defaults.listen.ip())?;
        let port: u16 = vars.parse("PORT", defaults.listen.port())?;
        let tls = match (vars.get("TLS_CERT_FILE"), vars.get("TLS_KEY_FILE")) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            }),
            (Some(cert), None) => {
                return Err(ConfigError::new(
                    "TLS_CERT_FILE",
                    cert,
                    "TLS_KEY_FILE must be set too",
                ))
            }
            (None, Some(key)) => {
                return Err(ConfigError::new(
                    "TLS_KEY_FILE",
                    key,
                    "TLS_CERT_FILE must be set too",
                ))
            }
        };
        let stale_after = match vars.get("STALE_AFTER_SEC") {
            None => None,
            Some(_) => Some(vars.seconds("STALE_AFTER_SEC", 0)?),
        };
        let http2_max_streams = vars.number(
            "HTTP2_MAX_STREAMS",
            u64::from(defaults.http2_max_streams),
            1,
        )?;
        let http2_max_streams = u32::try_from(http2_max_streams).map_err(|_| {
            ConfigError::new(
                "HTTP2_MAX_STREAMS",
                &http2_max_streams.to_string(),
                "must fit in 32 bits",
            )
        })?;
        let max_header_bytes = vars.number(
            "MAX_HEADER_BYTES",
            defaults.max_header_bytes as u64,
            MIN_HEADER_BYTES,
        )?;
        if max_header_bytes > u64::from(u32::MAX) {
            return Err(ConfigError::new(
                "MAX_HEADER_BYTES",
                &max_header_bytes.to_string(),
                "must fit in 32 bits",
            ));
        }
        let max_connections = vars.number("MAX_CONNECTIONS", defaults.max_connections as u64, 1)?;
        let max_connections = usize::try_from(max_connections)
            .ok()
            .filter(|n| *n <= Semaphore::MAX_PERMITS)
            .ok_or_else(|| {
                ConfigError::new(
                    "MAX_CONNECTIONS",
                    &max_connections.to_string(),
                    format!("must be at most {}", Semaphore::MAX_PERMITS),
                )
            })?;
        Ok(HttpConfig {
            listen: SocketAddr::new(host, port),
            api_token: vars.get("API_TOKEN").map(str::to_owned),
            tls,
            sse_heartbeat: vars.seconds("SSE_HEARTBEAT_SEC", 15)?,
            sse_retry: vars.millis("SSE_RETRY_MS", 2000)?,
            stale_after,
            max_connections,
            max_header_bytes: max_header_bytes as usize,
            header_read_timeout: vars.seconds("HEADER_READ_TIMEOUT_SEC", 10)?,
            max_body_bytes: vars.number("MAX_BODY_BYTES", defaults.max_body_bytes, 0)?,
            http2_max_streams,
            http2_keepalive: vars.seconds("HTTP2_KEEPALIVE_SEC", 30)?,
            command_timeout: vars.seconds("COMMAND_TIMEOUT_SEC", 30)?,
            shutdown_grace: vars.seconds("SHUTDOWN_GRACE_SEC", 10)?,
        })
    }

    /// The staleness bound in effect, given the source's refresh interval.
    pub fn stale_after(&self, refresh_interval: Duration) -> Duration {
        self.stale_after
            .unwrap_or_else(|| refresh_interval.saturating_mul(3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_original_registry() {
        let config = HttpConfig::from_vars(&Vars::default()).unwrap();
        assert_eq!(config, HttpConfig::default());
        assert_eq!(config.listen.to_string(), "0.0.0.0:5001");
        assert_eq!(
            config.stale_after(Duration::from_secs(30)),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn values_are_read() {
        let config = HttpConfig::from_vars(&Vars::from_pairs([
            ("HOST", "127.0.0.1"),
            ("PORT", "8080"),
            ("API_TOKEN", " s3cret "),
            ("TLS_CERT_FILE", "/c.pem"),
            ("TLS_KEY_FILE", "/k.pem"),
            ("SSE_HEARTBEAT_SEC", "5"),
            ("STALE_AFTER_SEC", "45"),
            ("MAX_HEADER_BYTES", "9000"),
        ]))
        .unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.api_token.as_deref(), Some("s3cret"));
        assert_eq!(config.tls.as_ref().unwrap().key, PathBuf::from("/k.pem"));
        assert_eq!(config.sse_heartbeat, Duration::from_secs(5));
        assert_eq!(
            config.stale_after(Duration::from_secs(30)),
            Duration::from_secs(45)
        );
        assert_eq!(config.max_header_bytes, 9000);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = |pairs: &[(&str, &str)]| {
            HttpConfig::from_vars(&Vars::from_pairs(pairs.iter().copied())).unwrap_err()
        };
        assert_eq!(err(&[("PORT", "70000")]).name, "PORT");
        assert_eq!(err(&[("HOST", "localhost:1")]).name, "HOST");
        assert_eq!(err(&[("TLS_CERT_FILE", "/c.pem")]).name, "TLS_CERT_FILE");
        assert_eq!(err(&[("TLS_KEY_FILE", "/k.pem")]).name, "TLS_KEY_FILE");
        assert_eq!(err(&[("MAX_HEADER_BYTES", "100")]).name, "MAX_HEADER_BYTES");
        assert_eq!(err(&[("SSE_HEARTBEAT_SEC", "0")]).name, "SSE_HEARTBEAT_SEC");
        assert_eq!(err(&[("HTTP2_MAX_STREAMS", "0")]).name, "HTTP2_MAX_STREAMS");
    }

    #[test]
    fn values_that_would_panic_later_are_refused() {
        let err = |pairs: &[(&str, &str)]| {
            HttpConfig::from_vars(&Vars::from_pairs(pairs.iter().copied())).unwrap_err()
        };
        let huge = u64::MAX.to_string();
        // A semaphore cannot hold this many permits.
        assert_eq!(
            err(&[("MAX_CONNECTIONS", huge.as_str())]).name,
            "MAX_CONNECTIONS"
        );
        // `now + duration` overflows for these.
        for name in [
            "SSE_HEARTBEAT_SEC",
            "HEADER_READ_TIMEOUT_SEC",
            "HTTP2_KEEPALIVE_SEC",
            "COMMAND_TIMEOUT_SEC",
            "SHUTDOWN_GRACE_SEC",
            "STALE_AFTER_SEC",
        ] {
            assert_eq!(err(&[(name, huge.as_str())]).name, name);
        }
        let year = MAX_SECONDS.to_string();
        let config =
            HttpConfig::from_vars(&Vars::from_pairs([("SSE_HEARTBEAT_SEC", year.as_str())]))
                .unwrap();
        assert_eq!(config.sse_heartbeat, Duration::from_secs(MAX_SECONDS));
    }
}
