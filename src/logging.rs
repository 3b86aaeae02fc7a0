//! Log lines in the format the suite's operators already grep for:
//! `2024-01-15T10:30:00+00:00 INFO role=service-registry logger=main service registry initialized`,
//! or (LOG_FORMAT=json) the same fields as one JSON object per line, for log collectors.

use std::fmt;
use std::str::FromStr;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written (LOG_FORMAT).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// The suite's line: time, level, role, logger, message, then `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line with the same fields: `time`, `level`, `role`, `logger`,
    /// `message` and each event field under its own name.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".to_owned()),
        }
    }
}

/// Install the global subscriber at `level` (error, warn, info, debug, trace) writing lines in
/// `format`. `RUST_LOG`, when set, replaces the filter entirely (per-module directives).
pub fn init(level: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter(level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.event_format(SuiteFormat).try_init(),
        LogFormat::Json => builder.event_format(JsonFormat).try_init(),
    };
}

/// The filter for LOG_LEVEL. The stream client logs every closed connection as a warning from
/// its internals; the publisher reports what matters about the broker itself, once.
fn default_filter(level: &str) -> String {
    format!("{level},rabbitmq_stream_client=error")
}

/// The suite's line format: time, level, role, logger (the module), message, then fields.
struct SuiteFormat;

impl<S, N> FormatEvent<S, N> for SuiteFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let logger = logger_of(meta.target());
        write!(
            writer,
            "{} {} role=service-registry logger={} ",
            rfc3339_now(),
            meta.level(),
            logger
        )?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The module that logged, as the suite names loggers (the binary's own lines are `main`).
fn logger_of(target: &str) -> &str {
    target
        .rsplit("::")
        .next()
        .filter(|l| *l != "swarm_registry")
        .unwrap_or("main")
}

/// The suite's fields as one JSON object per line.
struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut object = serde_json::Map::new();
        object.insert("time".to_owned(), rfc3339_now().into());
        object.insert("level".to_owned(), meta.level().as_str().into());
        object.insert("role".to_owned(), "service-registry".into());
        object.insert("logger".to_owned(), logger_of(meta.target()).into());
        event.record(&mut JsonFields(&mut object));
        let line = serde_json::Value::Object(object).to_string();
        writeln!(writer, "{line}")
    }
}

/// Collects an event's fields into a JSON object: numbers and booleans as such, everything
/// else as the text the line format would show.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), value.to_string().into());
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS+00:00`.
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

/// Format epoch seconds as UTC RFC 3339 (the epoch itself when out of range).
fn rfc3339(epoch_secs: i64) -> String {
    chrono::DateTime::from_timestamp(epoch_secs, 0)
        .unwrap_or(chrono::DateTime::UNIX_EPOCH)
        .format("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(rfc3339(1_705_314_600), "2024-01-15T10:30:00+00:00");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00+00:00");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59+00:00");
    }
}
