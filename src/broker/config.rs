//! The publisher's settings, read from the environment.
//!
//! RABBITMQ_URL is the only setting an operator must give; the rest have defaults. Old
//! deployments still give an AMQP URL (the previous registry published to an AMQP exchange), so
//! `amqp://` is accepted and mapped to the same host's stream port. The password never appears
//! in an error, a log line or a `Debug` rendering.

use std::fmt;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use url::Url;

use crate::config::{Checks, ConfigError, ConfigErrors, Secrecy, Setting, Vars};

/// The variable that turns publishing on and says where the broker is.
pub const URL_VAR: &str = "RABBITMQ_URL";

/// A password, kept out of `Debug` output so a logged configuration never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The password itself, for the one place that must send it: the broker handshake.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Where the broker is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub vhost: String,
}

impl fmt::Display for Endpoint {
    /// The endpoint as operators recognise it, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rabbitmq-stream://{}@{}:{}/{}",
            self.user,
            self.host,
            self.port,
            if self.vhost == "/" { "" } else { &self.vhost }
        )
    }
}

/// How long the stream keeps messages. Both limits apply; whichever is reached first wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_bytes: u64,
    pub max_age: Duration,
}

/// How the publisher retries and bounds its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Changes kept while the broker is away; beyond this the oldest are dropped.
    pub outbox_capacity: usize,
    /// The most changes sent in one batch (also bounded by bytes, see the outbox).
    pub batch_size: usize,
    /// Bounds every broker operation: connecting, and one batch from send to last confirm.
    pub timeout: Duration,
    /// The first and the largest wait between reconnection attempts.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Default for Tuning {
    /// Every setting at its catalogue default.
    fn default() -> Self {
        Tuning {
            outbox_capacity: const { RABBITMQ_OUTBOX_CAPACITY.default_number() } as usize,
            batch_size: const { RABBITMQ_BATCH_SIZE.default_number() } as usize,
            timeout: Duration::from_millis(const { RABBITMQ_TIMEOUT_MS.default_number() }),
            reconnect_min: Duration::from_millis(
                const { RABBITMQ_RECONNECT_MIN_MS.default_number() },
            ),
            reconnect_max: Duration::from_millis(
                const { RABBITMQ_RECONNECT_MAX_MS.default_number() },
            ),
        }
    }
}

/// Everything the publisher needs to know. Built by [`BrokerConfig::from_vars`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub endpoint: Endpoint,
    /// The stream's name (RABBITMQ_EXCHANGE, kept from the AMQP days).
    pub stream: String,
    /// The named producer's reference: the broker deduplicates by it, so one registry
    /// deployment must keep one name, and two deployments on one stream need two.
    pub producer_name: String,
    pub retention: Retention,
    pub tuning: Tuning,
    /// The AMQP port RABBITMQ_URL named, when it was a legacy `amqp://` URL mapped to the
    /// stream port. Reported in one log line when publishing starts (logging may not be set
    /// up yet while configuration is read).
    pub mapped_from_amqp: Option<u16>,
}

pub const RABBITMQ_URL: Setting = Setting::unset(
    URL_VAR,
    "publishing off",
    "`rabbitmq-stream://user:pass@host:5552/vhost`, or `amqp://...` (mapped to the stream port)",
)
.secret(Secrecy::UrlPassword);
pub const RABBITMQ_URL_FILE: Setting = Setting::unset(
    "RABBITMQ_URL_FILE",
    "RABBITMQ_URL as given",
    "a file holding RABBITMQ_URL (Docker secrets); not together with RABBITMQ_URL",
);
pub const RABBITMQ_STREAM_PORT: Setting = Setting::new(
    "RABBITMQ_STREAM_PORT",
    "5552",
    "the port an `amqp://` URL is mapped to",
);
pub const RABBITMQ_EXCHANGE: Setting =
    Setting::new("RABBITMQ_EXCHANGE", "service-registry", "the stream's name");
pub const RABBITMQ_PRODUCER_NAME: Setting = Setting::new(
    "RABBITMQ_PRODUCER_NAME",
    "service-registry",
    "the deduplicating producer's name (one per running registry)",
);
/// 1 GiB: plenty of history for small change messages, bounded so the broker's disk is safe.
pub const RABBITMQ_STREAM_MAX_BYTES: Setting = Setting::new(
    "RABBITMQ_STREAM_MAX_BYTES",
    "1073741824",
    "retention by size (1 GiB)",
);
pub const RABBITMQ_STREAM_MAX_AGE_SEC: Setting = Setting::new(
    "RABBITMQ_STREAM_MAX_AGE_SEC",
    "604800",
    "retention by age (7 days)",
);
pub const RABBITMQ_OUTBOX_CAPACITY: Setting = Setting::new(
    "RABBITMQ_OUTBOX_CAPACITY",
    "10000",
    "changes kept while the broker is away (then the oldest give way to one resync)",
);
pub const RABBITMQ_BATCH_SIZE: Setting =
    Setting::new("RABBITMQ_BATCH_SIZE", "1000", "changes per batch");
pub const RABBITMQ_TIMEOUT_MS: Setting = Setting::new(
    "RABBITMQ_TIMEOUT_MS",
    "5000",
    "bound on each batch's confirms and on a connection attempt (doubled after an attempt that runs out of time, up to 8x)",
);
pub const RABBITMQ_RECONNECT_MIN_MS: Setting = Setting::new(
    "RABBITMQ_RECONNECT_MIN_MS",
    "250",
    "first pause before reconnecting to the broker (at least 1)",
);
pub const RABBITMQ_RECONNECT_MAX_MS: Setting = Setting::new(
    "RABBITMQ_RECONNECT_MAX_MS",
    "10000",
    "longest pause before reconnecting (at least RABBITMQ_RECONNECT_MIN_MS)",
);

/// The publisher's settings, in the order the README lists them.
pub const SETTINGS: &[Setting] = &[
    RABBITMQ_URL,
    RABBITMQ_URL_FILE,
    RABBITMQ_STREAM_PORT,
    RABBITMQ_EXCHANGE,
    RABBITMQ_PRODUCER_NAME,
    RABBITMQ_STREAM_MAX_BYTES,
    RABBITMQ_STREAM_MAX_AGE_SEC,
    RABBITMQ_OUTBOX_CAPACITY,
    RABBITMQ_BATCH_SIZE,
    RABBITMQ_TIMEOUT_MS,
    RABBITMQ_RECONNECT_MIN_MS,
    RABBITMQ_RECONNECT_MAX_MS,
];

impl BrokerConfig {
    /// The publisher's settings ([`SETTINGS`]), or `None` when RABBITMQ_URL is empty
    /// (publishing off; the other settings are then not read).
    pub fn from_vars(vars: &Vars) -> Result<Option<BrokerConfig>, ConfigErrors> {
        let Some(raw) = vars.get(URL_VAR) else {
            return Ok(None);
        };
        let mut checks = Checks::default();
        let stream_port = checks
            .ok(vars.number(&RABBITMQ_STREAM_PORT, 1))
            .and_then(|port| {
                checks.ok(u16::try_from(port).map_err(|_| {
                    ConfigError::new(
                        RABBITMQ_STREAM_PORT.name,
                        &port.to_string(),
                        "must be a TCP port (1-65535)",
                    )
                }))
            })
            .unwrap_or(const { RABBITMQ_STREAM_PORT.default_number() } as u16);
        let parsed = checks.ok(parse_url(raw, stream_port)
            .map_err(|reason| ConfigError::new(URL_VAR, &redact_url(raw), reason)));
        let stream = vars.string(&RABBITMQ_EXCHANGE);
        checks.take(check_name(RABBITMQ_EXCHANGE.name, &stream));
        let producer_name = vars.string(&RABBITMQ_PRODUCER_NAME);
        checks.take(check_name(RABBITMQ_PRODUCER_NAME.name, &producer_name));
        let (reconnect_min, reconnect_max) = checks
            .ok_all(vars.reconnect_bounds(&RABBITMQ_RECONNECT_MIN_MS, &RABBITMQ_RECONNECT_MAX_MS))
            .unwrap_or_default();
        let tuning = Tuning {
            outbox_capacity: checks.take(vars.number(&RABBITMQ_OUTBOX_CAPACITY, 1)) as usize,
            batch_size: checks.take(vars.number(&RABBITMQ_BATCH_SIZE, 1)) as usize,
            timeout: checks.take(vars.millis_at_least(&RABBITMQ_TIMEOUT_MS, 1)),
            reconnect_min,
            reconnect_max,
        };
        let retention = Retention {
            max_bytes: checks.take(vars.number(&RABBITMQ_STREAM_MAX_BYTES, 1)),
            max_age: checks.take(vars.seconds(&RABBITMQ_STREAM_MAX_AGE_SEC)),
        };
        let config = parsed.map(|parsed| BrokerConfig {
            mapped_from_amqp: parsed.mapped_from_amqp,
            endpoint: parsed.endpoint,
            stream,
            producer_name,
            retention,
            tuning,
        });
        checks.finish_some(config).map(Some)
    }

    /// A configuration for `endpoint` with every other setting at its default.
    pub fn new(endpoint: Endpoint, stream: &str, producer_name: &str) -> Self {
        BrokerConfig {
            endpoint,
            stream: stream.to_owned(),
            producer_name: producer_name.to_owned(),
            retention: Retention {
                max_bytes: const { RABBITMQ_STREAM_MAX_BYTES.default_number() },
                max_age: Duration::from_secs(
                    const { RABBITMQ_STREAM_MAX_AGE_SEC.default_number() },
                ),
            },
            tuning: Tuning::default(),
            mapped_from_amqp: None,
        }
    }
}

fn check_name(var: &str, value: &str) -> Result<(), ConfigError> {
    // The broker refuses longer references; control characters would only confuse operators.
    if value.len() > 255 {
        return Err(ConfigError::new(var, value, "must be at most 255 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(ConfigError::new(
            var,
            value,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A parsed RABBITMQ_URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    pub endpoint: Endpoint,
    /// The AMQP port the URL named, when it was an `amqp://` URL mapped to the stream port.
    pub mapped_from_amqp: Option<u16>,
}

/// Parse a broker URL. The error is a reason only; the caller names the variable. It never
/// repeats the password.
pub fn parse_url(raw: &str, stream_port: u16) -> Result<ParsedUrl, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("not a URL ({e})"))?;
    let mapped_from_amqp = match url.scheme() {
        "rabbitmq-stream" => None,
        "amqp" => Some(url.port().unwrap_or(5672)),
        "amqps" | "rabbitmq-stream+tls" => {
            return Err(format!(
                "scheme {}:// (TLS) is not supported; use rabbitmq-stream:// or amqp://",
                url.scheme()
            ))
        }
        other => {
            return Err(format!(
                "unsupported scheme {other:?}; expected rabbitmq-stream://user:pass@host:5552/vhost or amqp://user:pass@host:5672/vhost"
            ))
        }
    };
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
        _ => return Err("no host (expected scheme://user:pass@host:port/vhost)".to_owned()),
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err("query strings and fragments are not supported".to_owned());
    }
    let port = match mapped_from_amqp {
        Some(_) => stream_port,
        None => url.port().unwrap_or(5552),
    };
    if port == 0 {
        return Err("port 0 is not a usable port".to_owned());
    }
    let user = decode(url.username(), "user name")?;
    let password = decode(url.password().unwrap_or(""), "password")?;
    let (user, password) = if user.is_empty() && password.is_empty() {
        ("guest".to_owned(), "guest".to_owned())
    } else {
        (user, password)
    };
    let vhost = match url.path() {
        "" | "/" => "/".to_owned(),
        path => {
            let encoded = path.trim_start_matches('/');
            if encoded.contains('/') {
                return Err(format!(
                    "the virtual host {encoded:?} contains '/': write it as %2F"
                ));
            }
            decode(encoded, "virtual host")?
        }
    };
    Ok(ParsedUrl {
        endpoint: Endpoint {
            host: host.to_owned(),
            port,
            user,
            password: Secret::new(password),
            vhost,
        },
        mapped_from_amqp,
    })
}

fn decode(encoded: &str, what: &str) -> Result<String, String> {
    percent_decode_str(encoded)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("the {what} is not valid UTF-8 once percent-decoded"))
}

/// The URL with any password replaced by `***`, for error messages. Works on text that is not
/// a valid URL too, since that is exactly when it is shown: whatever lies between the first
/// `:` of the user part and the last `@` is hidden, erring towards hiding too much.
pub fn redact_url(raw: &str) -> String {
    let Some(at) = raw.rfind('@') else {
        return raw.to_owned();
    };
    // Only a scheme separator before the `@` counts: a `//` after it (in a path) would
    // otherwise place the user part past the password.
    let user_part = &raw[..at];
    let start = user_part
        .find("://")
        .map(|i| i + 3)
        .or_else(|| user_part.find("//").map(|i| i + 2))
        .unwrap_or(0);
    match raw[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &raw[..start + colon], &raw[at..]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Option<BrokerConfig>, ConfigError> {
        BrokerConfig::from_vars(&Vars::from_pairs(pairs.iter().copied()))
            .map_err(|e| e.first().clone())
    }

    #[test]
    fn empty_url_turns_publishing_off() {
        assert_eq!(config(&[]).unwrap(), None);
        assert_eq!(config(&[(URL_VAR, "  ")]).unwrap(), None);
    }

    #[test]
    fn stream_url_is_taken_as_given() {
        let c = config(&[(
            URL_VAR,
            "rabbitmq-stream://app:s3cret@broker.local:5553/prod",
        )])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint.host, "broker.local");
        assert_eq!(c.endpoint.port, 5553);
        assert_eq!(c.endpoint.user, "app");
        assert_eq!(c.endpoint.password.expose(), "s3cret");
        assert_eq!(c.endpoint.vhost, "prod");
        assert_eq!(c.stream, "service-registry");
        assert_eq!(c.producer_name, "service-registry");
        assert_eq!(c.tuning, Tuning::default());
        assert_eq!(c.retention.max_bytes, 1 << 30);
        assert_eq!(c.retention.max_age, Duration::from_secs(604_800));
    }

    #[test]
    fn amqp_url_is_mapped_to_the_stream_port() {
        let c = config(&[(URL_VAR, "amqp://guest:guest@rabbitmq:5672/")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.endpoint.host.as_str(), c.endpoint.port),
            ("rabbitmq", 5552)
        );
        assert_eq!(c.mapped_from_amqp, Some(5672));
        assert_eq!(c.endpoint.vhost, "/");
        let c = config(&[
            (URL_VAR, "amqp://guest:guest@rabbitmq/%2F"),
            ("RABBITMQ_STREAM_PORT", "15552"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint.port, 15552);
        assert_eq!(c.endpoint.vhost, "/");
        let parsed = parse_url("amqp://u:p@h:5673/v", 5552).unwrap();
        assert_eq!(parsed.mapped_from_amqp, Some(5673));
    }

    #[test]
    fn defaults_fill_missing_parts() {
        let c = config(&[(URL_VAR, "rabbitmq-stream://localhost")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint.port, 5552);
        assert_eq!(c.endpoint.user, "guest");
        assert_eq!(c.endpoint.password.expose(), "guest");
        assert_eq!(c.endpoint.vhost, "/");
    }

    #[test]
    fn percent_encoded_credentials_are_decoded() {
        let c = config(&[(URL_VAR, "rabbitmq-stream://us%40er:p%3Ass@[::1]:5552/a%2Fb")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint.user, "us@er");
        assert_eq!(c.endpoint.password.expose(), "p:ss");
        assert_eq!(c.endpoint.host, "::1");
        assert_eq!(c.endpoint.vhost, "a/b");
    }

    #[test]
    fn settings_are_read() {
        let c = config(&[
            (URL_VAR, "rabbitmq-stream://localhost"),
            ("RABBITMQ_EXCHANGE", "changes"),
            ("RABBITMQ_PRODUCER_NAME", "registry-a"),
            ("RABBITMQ_STREAM_MAX_BYTES", "1000"),
            ("RABBITMQ_STREAM_MAX_AGE_SEC", "60"),
            ("RABBITMQ_OUTBOX_CAPACITY", "5"),
            ("RABBITMQ_BATCH_SIZE", "7"),
            ("RABBITMQ_TIMEOUT_MS", "900"),
            ("RABBITMQ_RECONNECT_MIN_MS", "10"),
            ("RABBITMQ_RECONNECT_MAX_MS", "20"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.stream, "changes");
        assert_eq!(c.producer_name, "registry-a");
        assert_eq!(c.retention.max_bytes, 1000);
        assert_eq!(c.retention.max_age, Duration::from_secs(60));
        assert_eq!(c.tuning.outbox_capacity, 5);
        assert_eq!(c.tuning.batch_size, 7);
        assert_eq!(c.tuning.timeout, Duration::from_millis(900));
        assert_eq!(c.tuning.reconnect_min, Duration::from_millis(10));
        assert_eq!(c.tuning.reconnect_max, Duration::from_millis(20));
    }

    #[test]
    fn malformed_urls_name_the_variable_and_the_problem() {
        let cases = [
            ("localhost:5552", "unsupported scheme"),
            ("not a url", "not a URL"),
            (
                "http://guest:guest@localhost:5552/",
                "unsupported scheme \"http\"",
            ),
            ("amqps://guest:guest@localhost/", "TLS"),
            ("rabbitmq-stream://guest:guest@:5552/", "host"),
            (
                "rabbitmq-stream://guest:guest@localhost:99999/",
                "not a URL",
            ),
            ("rabbitmq-stream://guest:guest@localhost:0/", "port 0"),
            ("rabbitmq-stream://guest:guest@localhost/a/b", "%2F"),
            ("rabbitmq-stream://guest:guest@localhost/?x=1", "query"),
            ("rabbitmq-stream://guest:%FF@localhost/", "password"),
        ];
        for (url, expected) in cases {
            let err = config(&[(URL_VAR, url)]).unwrap_err();
            assert_eq!(err.name, URL_VAR, "{url}");
            assert!(err.reason.contains(expected), "{url}: {err}");
            assert!(
                err.to_string().starts_with("invalid RABBITMQ_URL="),
                "{err}"
            );
        }
    }

    #[test]
    fn the_password_never_appears_in_errors_or_debug_output() {
        for url in [
            "rabbitmq-stream://admin:hunter2@:5552/",
            "ftp://admin:hunter2@host/",
            "rabbitmq-stream://admin:hunter2@host/a/b",
            "amqp://admin:hunter2@host:notaport/",
            "rabbitmq-stream//admin:hunter2@host",
            "amqp://admin:hun/ter2@host",
        ] {
            let err = config(&[(URL_VAR, url)]).unwrap_err();
            assert!(!err.to_string().contains("hunter2"), "{err}");
            assert!(err.to_string().contains("admin:***@"), "{err}");
        }
        let c = config(&[(URL_VAR, "rabbitmq-stream://admin:hunter2@host/")])
            .unwrap()
            .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.endpoint.to_string().contains("hunter2"));
        assert_eq!(c.endpoint.to_string(), "rabbitmq-stream://admin@host:5552/");
    }

    #[test]
    fn bad_settings_name_their_variable() {
        let url = (URL_VAR, "rabbitmq-stream://localhost");
        for (var, value) in [
            ("RABBITMQ_STREAM_PORT", "70000"),
            ("RABBITMQ_STREAM_PORT", "five"),
            ("RABBITMQ_OUTBOX_CAPACITY", "0"),
            ("RABBITMQ_BATCH_SIZE", "-1"),
            ("RABBITMQ_TIMEOUT_MS", "0"),
            ("RABBITMQ_STREAM_MAX_AGE_SEC", "0"),
            ("RABBITMQ_RECONNECT_MAX_MS", "1"),
            ("RABBITMQ_PRODUCER_NAME", "a\tb"),
        ] {
            let err = config(&[url, (var, value)]).unwrap_err();
            assert_eq!(err.name, var, "{var}={value}: {err}");
        }
    }

    #[test]
    fn redaction_handles_odd_text() {
        assert_eq!(redact_url("no scheme"), "no scheme");
        assert_eq!(redact_url("x://user@host"), "x://user@host");
        assert_eq!(redact_url("x://u:p@ss@host/"), "x://u:***@host/");
        assert_eq!(redact_url("x//u:p/w@host"), "x//u:***@host");
        assert_eq!(redact_url("x:u:p@host"), "x:***@host");
        assert_eq!(
            redact_url("amqp:guest:hunter2@host:5672//"),
            "amqp:***@host:5672//"
        );
        let err = BrokerConfig::from_vars(&Vars::from_pairs([(
            URL_VAR,
            "amqp:guest:hunter2@host:5672//",
        )]))
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
