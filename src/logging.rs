//! Log lines in the format the suite's operators already grep for:
//! `2024-01-15T10:30:00+00:00 INFO role=service-registry logger=main service registry initialized`.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber at `level` (error, warn, info, debug, trace).
/// `RUST_LOG`, when set, replaces the filter entirely (per-module directives).
pub fn init(level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter(level)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .event_format(SuiteFormat)
        .try_init();
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
        let logger = meta
            .target()
            .rsplit("::")
            .next()
            .filter(|l| *l != "swarm_registry")
            .unwrap_or("main");
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
