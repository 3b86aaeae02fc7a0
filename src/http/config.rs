//! The HTTP server's settings, read from the environment.
//!
//! Every limit has a default that suits one registry serving a few hundred clients; each can be
//! raised without a rebuild because the right figure depends on how many SSE subscribers and
//! proxies sit in front of it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::cors::AllowedOrigins;
use crate::config::{Checks, ConfigError, ConfigErrors, Secrecy, Setting, Vars};

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
    /// HOST and PORT: where to listen (the original registry listens on 5001).
    pub listen: SocketAddr,
    /// API_TOKEN: when set, POST endpoints need `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    /// TLS_CERT_FILE and TLS_KEY_FILE: serve TLS (ALPN h2, http/1.1) instead of cleartext.
    pub tls: Option<TlsFiles>,
    /// SSE_HEARTBEAT_SEC: how often every event stream gets a comment line (whatever else flows), so
    /// proxies and HTTP/1.1 clients do not take it for dead.
    pub sse_heartbeat: Duration,
    /// SSE_RETRY_MS: the reconnection delay suggested to event-stream clients.
    pub sse_retry: Duration,
    /// STALE_AFTER_SEC: data counts as stale when the engine has not answered for this long.
    /// Unset: three refresh intervals (polls happen every interval, so two missed polls).
    pub stale_after: Option<Duration>,
    /// MAX_CONNECTIONS: open connections at most; further clients wait in the
    /// listen backlog rather than exhausting file descriptors.
    pub max_connections: usize,
    /// MAX_HEADER_BYTES: the largest request head accepted over HTTP/1.1, and header list over
    /// HTTP/2, at least 8192. Larger heads get 431.
    pub max_header_bytes: usize,
    /// HEADER_READ_TIMEOUT_SEC: how long a client may take to send its request head, and
    /// then its body, so slow-loris connections do not pin a connection slot.
    pub header_read_timeout: Duration,
    /// MAX_BODY_BYTES: the largest request body accepted. No endpoint needs a
    /// body; the bound keeps a client from streaming one forever.
    pub max_body_bytes: u64,
    /// HTTP2_MAX_STREAMS: concurrent streams per HTTP/2 connection, which bounds
    /// how many event streams one connection can multiplex.
    pub http2_max_streams: u32,
    /// HTTP2_KEEPALIVE_SEC: the HTTP/2 ping interval that detects dead peers.
    pub http2_keepalive: Duration,
    /// WRITE_TIMEOUT_SEC: how long a write to a client may make no progress before the
    /// connection is dropped (a client that stopped reading its event stream).
    pub write_timeout: Duration,
    /// COMMAND_TIMEOUT_SEC: how long POST commands wait for the engine.
    pub command_timeout: Duration,
    /// SHUTDOWN_GRACE_SEC: how long in-flight requests may take after a shutdown signal
    ///; connections still open then are dropped.
    pub shutdown_grace: Duration,
    /// CORS_ALLOWED_ORIGINS: the origins whose pages may read the API and the event stream;
    /// `None` (the default) sends no CORS header at all.
    pub cors_allowed_origins: Option<AllowedOrigins>,
}

pub const HOST: Setting = Setting::new(
    "HOST",
    "0.0.0.0",
    "address the API listens on (HTTP/1.1 and h2c on one port)",
);
pub const PORT: Setting = Setting::new("PORT", "5001", "port the API listens on");
pub const TLS_CERT_FILE: Setting = Setting::unset(
    "TLS_CERT_FILE",
    "cleartext",
    "PEM certificate chain; with TLS_KEY_FILE: TLS with ALPN h2 / http/1.1",
);
pub const TLS_KEY_FILE: Setting = Setting::unset(
    "TLS_KEY_FILE",
    "cleartext",
    "PEM private key, with TLS_CERT_FILE",
);
pub const API_TOKEN: Setting = Setting::unset(
    "API_TOKEN",
    "POST endpoints are open",
    "when set, POST endpoints need `Authorization: Bearer <token>`",
)
.secret(Secrecy::Secret);
pub const API_TOKEN_FILE: Setting = Setting::unset(
    "API_TOKEN_FILE",
    "API_TOKEN as given",
    "a file holding API_TOKEN (Docker secrets); not together with API_TOKEN",
);
pub const STALE_AFTER_SEC: Setting = Setting::unset(
    "STALE_AFTER_SEC",
    "3 x REFRESH_INTERVAL_SEC",
    "data counts as stale after this many seconds without contact with the engine",
);
pub const SSE_HEARTBEAT_SEC: Setting = Setting::new(
    "SSE_HEARTBEAT_SEC",
    "15",
    "seconds between comment lines on every event stream (keeps proxies from closing quiet ones)",
);
pub const SSE_RETRY_MS: Setting = Setting::new(
    "SSE_RETRY_MS",
    "2000",
    "the `retry:` field suggested to event-stream clients",
);
pub const CORS_ALLOWED_ORIGINS: Setting = Setting::unset(
    "CORS_ALLOWED_ORIGINS",
    "no CORS headers",
    "origins (`https://host[:port]`, comma-separated, or `*`) whose pages may read the API and the event stream",
);
pub const MAX_CONNECTIONS: Setting = Setting::new(
    "MAX_CONNECTIONS",
    "4096",
    "open connections at most (further clients wait in the listen backlog)",
);
pub const MAX_HEADER_BYTES: Setting = Setting::new(
    "MAX_HEADER_BYTES",
    "16384",
    "largest request head (at least 8192; 431 beyond)",
);
pub const MAX_BODY_BYTES: Setting = Setting::new(
    "MAX_BODY_BYTES",
    "65536",
    "largest request body (413 beyond)",
);
pub const HEADER_READ_TIMEOUT_SEC: Setting = Setting::new(
    "HEADER_READ_TIMEOUT_SEC",
    "10",
    "deadline for a request head, and again for its body (408)",
);
pub const WRITE_TIMEOUT_SEC: Setting = Setting::new(
    "WRITE_TIMEOUT_SEC",
    "30",
    "a connection whose client reads nothing for this long while a write waits is dropped",
);
pub const COMMAND_TIMEOUT_SEC: Setting = Setting::new(
    "COMMAND_TIMEOUT_SEC",
    "30",
    "deadline of a POST command (504)",
);
pub const SHUTDOWN_GRACE_SEC: Setting = Setting::new(
    "SHUTDOWN_GRACE_SEC",
    "10",
    "how long in-flight requests may take after a stop signal",
);
pub const HTTP2_MAX_STREAMS: Setting = Setting::new(
    "HTTP2_MAX_STREAMS",
    "1024",
    "concurrent streams per HTTP/2 connection",
);
pub const HTTP2_KEEPALIVE_SEC: Setting = Setting::new(
    "HTTP2_KEEPALIVE_SEC",
    "30",
    "HTTP/2 ping interval, in seconds",
);

/// The HTTP server's settings, in the order the README lists them.
pub const SETTINGS: &[Setting] = &[
    HOST,
    PORT,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    API_TOKEN,
    API_TOKEN_FILE,
    STALE_AFTER_SEC,
    SSE_HEARTBEAT_SEC,
    SSE_RETRY_MS,
    CORS_ALLOWED_ORIGINS,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    MAX_BODY_BYTES,
    HEADER_READ_TIMEOUT_SEC,
    WRITE_TIMEOUT_SEC,
    COMMAND_TIMEOUT_SEC,
    SHUTDOWN_GRACE_SEC,
    HTTP2_MAX_STREAMS,
    HTTP2_KEEPALIVE_SEC,
];

impl Default for HttpConfig {
    /// Every setting at its catalogue default.
    fn default() -> Self {
        HttpConfig {
            // HOST's default, 0.0.0.0 (an address cannot be parsed in a const; a test holds
            // the two equal).
            listen: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                const { PORT.default_number() } as u16,
            ),
            api_token: None,
            tls: None,
            sse_heartbeat: Duration::from_secs(const { SSE_HEARTBEAT_SEC.default_number() }),
            sse_retry: Duration::from_millis(const { SSE_RETRY_MS.default_number() }),
            stale_after: None,
            max_connections: const { MAX_CONNECTIONS.default_number() } as usize,
            max_header_bytes: const { MAX_HEADER_BYTES.default_number() } as usize,
            header_read_timeout: Duration::from_secs(
                const { HEADER_READ_TIMEOUT_SEC.default_number() },
            ),
            max_body_bytes: const { MAX_BODY_BYTES.default_number() },
            http2_max_streams: const { HTTP2_MAX_STREAMS.default_number() } as u32,
            http2_keepalive: Duration::from_secs(const { HTTP2_KEEPALIVE_SEC.default_number() }),
            write_timeout: Duration::from_secs(const { WRITE_TIMEOUT_SEC.default_number() }),
            command_timeout: Duration::from_secs(const { COMMAND_TIMEOUT_SEC.default_number() }),
            shutdown_grace: Duration::from_secs(const { SHUTDOWN_GRACE_SEC.default_number() }),
            cors_allowed_origins: None,
        }
    }
}

impl HttpConfig {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigErrors> {
        let mut checks = Checks::default();
        let host: Option<IpAddr> = checks.ok(vars.parse(&HOST));
        let port: u16 = checks.take(vars.parse(&PORT));
        let tls = match (vars.get(TLS_CERT_FILE.name), vars.get(TLS_KEY_FILE.name)) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            }),
            (Some(cert), None) => {
                checks.push(ConfigError::new(
                    TLS_CERT_FILE.name,
                    cert,
                    "TLS_KEY_FILE must be set too",
                ));
                None
            }
            (None, Some(key)) => {
                checks.push(ConfigError::new(
                    TLS_KEY_FILE.name,
                    key,
                    "TLS_CERT_FILE must be set too",
                ));
                None
            }
        };
        let stale_after = match vars.get(STALE_AFTER_SEC.name) {
            None => None,
            Some(_) => checks.ok(vars.seconds(&STALE_AFTER_SEC)),
        };
        let http2_max_streams = checks
            .ok(vars.number(&HTTP2_MAX_STREAMS, 1))
            .and_then(|n| {
                checks.ok(u32::try_from(n).map_err(|_| {
                    ConfigError::new(
                        HTTP2_MAX_STREAMS.name,
                        &n.to_string(),
                        "must fit in 32 bits",
                    )
                }))
            })
            .unwrap_or_default();
        let max_header_bytes = checks.take(vars.number(&MAX_HEADER_BYTES, MIN_HEADER_BYTES));
        if max_header_bytes > u64::from(u32::MAX) {
            checks.push(ConfigError::new(
                MAX_HEADER_BYTES.name,
                &max_header_bytes.to_string(),
                "must fit in 32 bits",
            ));
        }
        let max_connections = checks
            .ok(vars.number(&MAX_CONNECTIONS, 1))
            .and_then(|n| {
                checks.ok(usize::try_from(n)
                    .ok()
                    .filter(|n| *n <= Semaphore::MAX_PERMITS)
                    .ok_or_else(|| {
                        ConfigError::new(
                            MAX_CONNECTIONS.name,
                            &n.to_string(),
                            format!("must be at most {}", Semaphore::MAX_PERMITS),
                        )
                    }))
            })
            .unwrap_or_default();
        let config = HttpConfig {
            listen: SocketAddr::new(host.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port),
            api_token: vars.get(API_TOKEN.name).map(str::to_owned),
            tls,
            sse_heartbeat: checks.take(vars.seconds(&SSE_HEARTBEAT_SEC)),
            sse_retry: checks.take(vars.millis(&SSE_RETRY_MS)),
            stale_after,
            max_connections,
            max_header_bytes: max_header_bytes as usize,
            header_read_timeout: checks.take(vars.seconds(&HEADER_READ_TIMEOUT_SEC)),
            max_body_bytes: checks.take(vars.number(&MAX_BODY_BYTES, 0)),
            http2_max_streams,
            http2_keepalive: checks.take(vars.seconds(&HTTP2_KEEPALIVE_SEC)),
            write_timeout: checks.take(vars.seconds(&WRITE_TIMEOUT_SEC)),
            command_timeout: checks.take(vars.seconds(&COMMAND_TIMEOUT_SEC)),
            shutdown_grace: checks.take(vars.seconds(&SHUTDOWN_GRACE_SEC)),
            cors_allowed_origins: vars.get(CORS_ALLOWED_ORIGINS.name).and_then(|value| {
                checks.ok(AllowedOrigins::parse(CORS_ALLOWED_ORIGINS.name, value))
            }),
        };
        checks.finish(config)
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
            ("CORS_ALLOWED_ORIGINS", "https://ops.example.com"),
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
        assert_eq!(
            config.cors_allowed_origins,
            Some(AllowedOrigins::List(vec!["https://ops.example.com".into()]))
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = |pairs: &[(&str, &str)]| {
            HttpConfig::from_vars(&Vars::from_pairs(pairs.iter().copied()))
                .unwrap_err()
                .first()
                .clone()
        };
        assert_eq!(err(&[("PORT", "70000")]).name, "PORT");
        assert_eq!(err(&[("HOST", "localhost:1")]).name, "HOST");
        assert_eq!(err(&[("TLS_CERT_FILE", "/c.pem")]).name, "TLS_CERT_FILE");
        assert_eq!(err(&[("TLS_KEY_FILE", "/k.pem")]).name, "TLS_KEY_FILE");
        assert_eq!(err(&[("MAX_HEADER_BYTES", "100")]).name, "MAX_HEADER_BYTES");
        assert_eq!(err(&[("SSE_HEARTBEAT_SEC", "0")]).name, "SSE_HEARTBEAT_SEC");
        assert_eq!(err(&[("HTTP2_MAX_STREAMS", "0")]).name, "HTTP2_MAX_STREAMS");
        assert_eq!(
            err(&[("CORS_ALLOWED_ORIGINS", "ops.example.com")]).name,
            "CORS_ALLOWED_ORIGINS"
        );
    }

    #[test]
    fn values_that_would_panic_later_are_refused() {
        let err = |pairs: &[(&str, &str)]| {
            HttpConfig::from_vars(&Vars::from_pairs(pairs.iter().copied()))
                .unwrap_err()
                .first()
                .clone()
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
            "WRITE_TIMEOUT_SEC",
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
