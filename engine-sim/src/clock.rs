//! Time as the Engine API writes it: RFC 3339 with nanoseconds, and Unix nanoseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch by the system clock (the clock `timeNano` is read from).
pub fn unix_nanos_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2026-01-01T00:00:00.000000000Z` for a time in Unix nanoseconds, as dockerd writes
/// `CreatedAt` and `UpdatedAt`.
pub fn rfc3339(unix_nanos: i64) -> String {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The calendar date of a day counted from 1970-01-01 (the proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A `since` or `until` value as dockerd accepts it: Unix seconds, optionally with a fraction
/// of up to nine digits (`1700000000.000000123`). `None` when it is not one.
pub fn parse_event_time(text: &str) -> Option<i64> {
    let (secs, fraction) = match text.split_once('.') {
        Some((s, f)) => (s, f),
        None => (text, ""),
    };
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 9
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let nanos: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().ok()?
    };
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_like_dockerd() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_767_225_600_000_000_123),
            "2026-01-01T00:00:00.000000123Z"
        );
        assert_eq!(
            rfc3339(1_709_208_000_500_000_000),
            "2024-02-29T12:00:00.500000000Z"
        );
    }

    #[test]
    fn event_times_parse_as_dockerd_reads_them() {
        assert_eq!(parse_event_time("12"), Some(12_000_000_000));
        assert_eq!(parse_event_time("12.5"), Some(12_500_000_000));
        assert_eq!(
            parse_event_time("1700000000.000000123"),
            Some(1_700_000_000_000_000_123)
        );
        for bad in ["", ".5", "1.2.3", "-1", "1.0000000001", "abc", "1e9"] {
            assert_eq!(parse_event_time(bad), None, "{bad}");
        }
    }
}
