//! Query parameters: blocking reads (`index`, `wait`), stream resumption (`since`) and event
//! filters (`service`, `events`). Pure parsing; a bad value is an error naming the parameter,
//! never a silently applied default. Unknown parameters are ignored, as Consul does.

use std::collections::BTreeSet;
use std::time::Duration;

use pipeline::ChangeKind;

/// The longest a blocking read waits, whatever the client asks.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// A query parameter that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid query parameter {parameter}={value:?}: {reason}")]
pub struct QueryError {
    pub parameter: &'static str,
    pub value: String,
    pub reason: String,
}

impl QueryError {
    pub fn new(parameter: &'static str, value: &str, reason: impl Into<String>) -> Self {
        QueryError {
            parameter,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A Consul-style blocking read: answer once the resource's revision passes `index`, or when
/// `wait` is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    pub index: u64,
    pub wait: Duration,
}

/// Which changes an event stream carries.
///
/// A change passes when it matches the `events` patterns and concerns one of the `service`
/// names (if any). Changes about no particular service (`services.updated`, `health.check`)
/// pass a service filter only when the `events` filter asks for them by name, so
/// `?service=web` does not receive every service in each `services.updated`.
///
/// Why `services.updated` is left out by default (this is the one place that says it):
/// without `events`, every kind passes except `services.updated`. The stream opens with a
/// full snapshot and then carries every per-service change, so the whole list repeated after
/// each change says nothing new and would multiply the bytes sent to every subscriber by the
/// size of the registry. A client that wants it names it (`events=services.updated`,
/// `services.*` or `*`). The broker still publishes it, for consumers that attach anywhere in
/// the stream and resynchronise from it. Ids are change seqs either way, so a stream simply
/// skips the seqs it does not carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub services: Option<BTreeSet<String>>,
    pub events: Option<Vec<EventPattern>>,
}

/// One entry of the `events` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    /// `*`: every routing key.
    Any,
    /// A routing key, e.g. `service.added` or `metrics.web`.
    Exact(String),
    /// `<family>.*`, stored as `<family>.`: every routing key with that prefix.
    Prefix(String),
}

/// What an event-stream request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamQuery {
    pub since: Option<u64>,
    pub filter: EventFilter,
}

/// The routing key left out of a stream that does not choose its events (see [`EventFilter`]).
const FULL_LIST_EVENT: &str = ChangeKind::SERVICES_UPDATED;

impl EventPattern {
    fn matches(&self, routing_key: &str) -> bool {
        match self {
            EventPattern::Any => true,
            EventPattern::Exact(key) => key == routing_key,
            EventPattern::Prefix(prefix) => routing_key.starts_with(prefix.as_str()),
        }
    }

    fn parse(text: &str) -> Result<EventPattern, String> {
        if text == "*" {
            return Ok(EventPattern::Any);
        }
        if let Some(family) = text.strip_suffix(".*") {
            let families = ChangeKind::ROUTING_KEY_FAMILIES;
            return if families.contains(&family) {
                Ok(EventPattern::Prefix(format!("{family}.")))
            } else {
                Err(format!(
                    "unknown event family {family:?} (known: {})",
                    families.join(", ")
                ))
            };
        }
        let is_metrics = text
            .strip_prefix(ChangeKind::METRICS_KEY_PREFIX)
            .is_some_and(|s| !s.is_empty());
        let fixed = ChangeKind::FIXED_ROUTING_KEYS;
        if fixed.contains(&text) || is_metrics {
            Ok(EventPattern::Exact(text.to_owned()))
        } else {
            Err(format!(
                "unknown event {text:?} (known: {}, {}<service>, <family>.*, *)",
                fixed.join(", "),
                ChangeKind::METRICS_KEY_PREFIX
            ))
        }
    }
}

impl EventFilter {
    /// Whether a change with this routing key, about this service (if any), is delivered.
    pub fn admits(&self, routing_key: &str, service: Option<&str>) -> bool {
        let wanted_event = match &self.events {
            None => routing_key != FULL_LIST_EVENT,
            Some(patterns) => patterns.iter().any(|p| p.matches(routing_key)),
        };
        let wanted_service = match (&self.services, service) {
            (None, _) => true,
            (Some(names), Some(name)) => names.contains(name),
            (Some(_), None) => self.events.is_some(),
        };
        wanted_event && wanted_service
    }

    /// Whether a service belongs in snapshots sent to this stream.
    pub fn admits_service(&self, name: &str) -> bool {
        self.services
            .as_ref()
            .is_none_or(|names| names.contains(name))
    }
}

/// The decoded `key=value` pairs of a query string; a later duplicate wins.
fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn last<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn revision(parameter: &'static str, value: &str) -> Result<u64, QueryError> {
    value
        .trim()
        .parse()
        .map_err(|_| QueryError::new(parameter, value, "expected a non-negative whole number"))
}

/// A blocking read, when `index` is given. `wait` defaults to (and is capped at) five minutes.
pub fn parse_blocking(query: Option<&str>) -> Result<Option<Blocking>, QueryError> {
    let pairs = pairs(query);
    let wait = match last(&pairs, "wait") {
        None => MAX_WAIT,
        Some(value) => parse_wait(value)?,
    };
    match last(&pairs, "index") {
        None => Ok(None),
        Some(value) => Ok(Some(Blocking {
            index: revision("index", value)?,
            wait,
        })),
    }
}

/// A duration such as `30s`, `5m`, `250ms`, `1h`, or bare seconds; capped at [`MAX_WAIT`].
pub fn parse_wait(value: &str) -> Result<Duration, QueryError> {
    let text = value.trim();
    let bad = || {
        QueryError::new(
            "wait",
            value,
            "expected a duration such as 30s, 5m or 250ms",
        )
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits.parse().map_err(|_| bad())?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(amount),
        "ms" => Duration::from_millis(amount),
        "m" => Duration::from_secs(amount.saturating_mul(60)),
        "h" => Duration::from_secs(amount.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    Ok(duration.min(MAX_WAIT))
}

/// Add up to 1/16 of `wait` (as Consul does), so clients that started together do not all
/// come back in the same instant. `fraction` is a random number in `[0, 1)`.
pub fn jittered(wait: Duration, fraction: f64) -> Duration {
    wait + wait.div_f64(16.0).mul_f64(fraction.clamp(0.0, 1.0))
}

/// The parameters of an event-stream request.
pub fn parse_stream(query: Option<&str>) -> Result<StreamQuery, QueryError> {
    let pairs = pairs(query);
    let since = last(&pairs, "since")
        .map(|v| revision("since", v))
        .transpose()?;
    let services = match last(&pairs, "service") {
        None => None,
        Some(value) => {
            let names: BTreeSet<String> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if names.is_empty() {
                return Err(QueryError::new(
                    "service",
                    value,
                    "expected one or more service names separated by commas",
                ));
            }
            Some(names)
        }
    };
    let events = match last(&pairs, "events") {
        None => None,
        Some(value) => {
            let patterns = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|p| EventPattern::parse(p).map_err(|r| QueryError::new("events", value, r)))
                .collect::<Result<Vec<_>, _>>()?;
            if patterns.is_empty() {
                return Err(QueryError::new(
                    "events",
                    value,
                    "expected one or more event names separated by commas",
                ));
            }
            Some(patterns)
        }
    };
    Ok(StreamQuery {
        since,
        filter: EventFilter { services, events },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_needs_an_index() {
        assert_eq!(parse_blocking(None), Ok(None));
        assert_eq!(parse_blocking(Some("wait=10s")), Ok(None));
        assert_eq!(
            parse_blocking(Some("index=42&wait=10s")),
            Ok(Some(Blocking {
                index: 42,
                wait: Duration::from_secs(10)
            }))
        );
        assert_eq!(
            parse_blocking(Some("index=7")).unwrap().unwrap().wait,
            MAX_WAIT
        );
    }

    #[test]
    fn waits_are_parsed_and_capped() {
        assert_eq!(parse_wait("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_wait("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_wait("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_wait("12"), Ok(Duration::from_secs(12)));
        assert_eq!(parse_wait("10h"), Ok(MAX_WAIT));
        assert_eq!(
            parse_wait("99999999999999999999h").unwrap_err().parameter,
            "wait"
        );
        for bad in ["", "s", "-1s", "1.5s", "10 parsecs", "1d"] {
            assert_eq!(parse_wait(bad).unwrap_err().parameter, "wait", "{bad}");
        }
    }

    #[test]
    fn bad_values_name_their_parameter() {
        let err = parse_blocking(Some("index=abc")).unwrap_err();
        assert_eq!(err.parameter, "index");
        assert!(err.to_string().contains("index=\"abc\""), "{err}");
        assert_eq!(
            parse_blocking(Some("index=-1")).unwrap_err().parameter,
            "index"
        );
        assert_eq!(
            parse_blocking(Some("index=1&wait=x"))
                .unwrap_err()
                .parameter,
            "wait"
        );
        assert_eq!(
            parse_stream(Some("since=z")).unwrap_err().parameter,
            "since"
        );
        assert_eq!(
            parse_stream(Some("service=,")).unwrap_err().parameter,
            "service"
        );
        assert_eq!(
            parse_stream(Some("events=nope")).unwrap_err().parameter,
            "events"
        );
        assert_eq!(
            parse_stream(Some("events=foo.*")).unwrap_err().parameter,
            "events"
        );
        assert_eq!(
            parse_stream(Some("events=metrics.")).unwrap_err().parameter,
            "events"
        );
    }

    #[test]
    fn jitter_stays_within_a_sixteenth() {
        let wait = Duration::from_secs(32);
        assert_eq!(jittered(wait, 0.0), wait);
        assert_eq!(jittered(wait, 0.5), Duration::from_secs(33));
        assert!(jittered(wait, 0.999) < Duration::from_secs(34));
    }

    #[test]
    fn filters_select_changes() {
        let q = parse_stream(Some("since=5&service=a,b&events=service.added,metrics.*")).unwrap();
        assert_eq!(q.since, Some(5));
        let f = &q.filter;
        assert!(f.admits("service.added", Some("a")));
        assert!(!f.admits("service.added", Some("c")));
        assert!(!f.admits("service.removed", Some("a")));
        assert!(f.admits("metrics.b", Some("b")));
        assert!(!f.admits("services.updated", None));
        assert!(f.admits_service("a") && !f.admits_service("c"));

        let only_services = parse_stream(Some("service=a")).unwrap().filter;
        assert!(only_services.admits("service.updated", Some("a")));
        assert!(!only_services.admits("health.check", None));

        let asks_for_health = parse_stream(Some("service=a&events=health.check,service.*"))
            .unwrap()
            .filter;
        assert!(asks_for_health.admits("health.check", None));
        assert!(!asks_for_health.admits("services.updated", None));

        let families = parse_stream(Some("events=service.*")).unwrap().filter;
        assert!(families.admits("service.removed", Some("x")));
        assert!(!families.admits("services.updated", None));

        let all = parse_stream(Some("events=*")).unwrap().filter;
        assert!(all.admits("services.updated", None) && all.admits("health.check", None));
        assert!(all.admits("metrics.x", Some("x")));
    }

    #[test]
    fn the_default_stream_leaves_out_only_the_full_list() {
        let default = parse_stream(None).unwrap().filter;
        assert_eq!(default, StreamQuery::default().filter);
        assert!(!default.admits("services.updated", None));
        for key in ["service.added", "service.updated", "service.removed"] {
            assert!(default.admits(key, Some("web")), "{key}");
        }
        assert!(default.admits("metrics.web", Some("web")));
        assert!(default.admits("health.check", None));

        for asks in ["events=services.updated", "events=services.*", "events=*"] {
            let filter = parse_stream(Some(asks)).unwrap().filter;
            assert!(filter.admits("services.updated", None), "{asks}");
        }
        let with_service = parse_stream(Some("since=3&service=web")).unwrap().filter;
        assert!(!with_service.admits("services.updated", None));
        assert!(with_service.admits("service.updated", Some("web")));
    }

    #[test]
    fn query_values_are_form_decoded() {
        let q = parse_stream(Some("service=caf%C3%A9,a%2Cb+c")).unwrap();
        let names: Vec<_> = q.filter.services.unwrap().into_iter().collect();
        assert_eq!(names, ["a", "b c", "café"]);
    }
}
