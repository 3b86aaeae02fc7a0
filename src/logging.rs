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

/// Format epoch seconds as UTC RFC 3339 (days-to-civil conversion, proleptic Gregorian).
fn rfc3339(epoch_secs: i64) -> String {
    let days = epoch_secs.div_euclid(86_400);
    let rem = epoch_secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}+00:00")
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
