//! The server's own measurements and the Prometheus text exposition of everything /metrics
//! reports. Plain atomics in fixed arrays: recording a request never takes a lock, and the
//! label sets are bounded (routes, not paths; a fixed list of statuses).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use pipeline::{Snapshot, SourceStatus, Timestamp};

use super::route::ROUTE_LABELS;
use crate::status::{PublisherState, SourceCounters};

/// Statuses counted under their own label; anything else is counted as `other`.
const STATUSES: [u16; 16] = [
    200, 204, 304, 400, 401, 404, 405, 408, 413, 431, 500, 501, 502, 503, 504, 0,
];

/// Request duration bucket bounds, in seconds.
const REQUEST_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];

/// Change-to-delivery latency bucket bounds, in seconds.
const DELIVERY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A fixed-bucket histogram over atomics.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus one for observations above the last.
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let slot = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The smallest bucket bound below which at least `quantile` of the observations fall,
    /// or `None` without observations (or when they fall above the last bound).
    pub fn quantile_bound(&self, quantile: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let wanted = (total as f64 * quantile).ceil() as u64;
        let mut seen = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= wanted {
                return Some(*bound);
            }
        }
        None
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        if let Some(last) = self.buckets.last() {
            cumulative += last.load(Ordering::Relaxed);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}");
            let _ = writeln!(out, "{name}_count {cumulative}");
        } else {
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
    }
}

/// Everything the HTTP edge measures about itself.
#[derive(Debug)]
pub struct HttpMetrics {
    /// Requests by route (index into ROUTE_LABELS) and status (index into STATUSES).
    requests: Vec<[AtomicU64; STATUSES.len()]>,
    durations: Vec<Histogram>,
    pub delivery: Histogram,
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    pub sse_subscribers: AtomicI64,
    pub sse_lagged: AtomicU64,
    pub sse_events: AtomicU64,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: ROUTE_LABELS
                .iter()
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            durations: ROUTE_LABELS
                .iter()
                .map(|_| Histogram::new(&REQUEST_BUCKETS))
                .collect(),
            delivery: Histogram::new(&DELIVERY_BUCKETS),
            connections_open: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            sse_subscribers: AtomicI64::new(0),
            sse_lagged: AtomicU64::new(0),
            sse_events: AtomicU64::new(0),
        }
    }
}

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUSES.len() - 1)
}

impl HttpMetrics {
    pub fn record_request(&self, route: usize, status: u16, elapsed: Duration) {
        if let Some(row) = self.requests.get(route) {
            row[status_slot(status)].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(histogram) = self.durations.get(route) {
            histogram.observe(elapsed);
        }
    }
}

/// What /metrics reports besides the server's own measurements.
pub struct Exposition<'a> {
    pub http: &'a HttpMetrics,
    pub snapshot: &'a Snapshot,
    pub now: Timestamp,
    pub stale: bool,
    pub source: &'a SourceCounters,
    pub publisher: &'a PublisherState,
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The Prometheus text format (version 0.0.4) of every measurement.
pub fn render(e: &Exposition<'_>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let http = e.http;

    header(
        &mut out,
        "swarm_registry_http_requests_total",
        "counter",
        "HTTP requests answered, by route and status.",
    );
    for (route, row) in ROUTE_LABELS.iter().zip(&http.requests) {
        for (status, count) in STATUSES.iter().zip(row) {
            let count = load(count);
            if count == 0 {
                continue;
            }
            let status = if *status == 0 {
                "other".to_owned()
            } else {
                status.to_string()
            };
            let _ = writeln!(
                out,
                "swarm_registry_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
    }
    header(
        &mut out,
        "swarm_registry_http_request_duration_seconds",
        "histogram",
        "Time from receiving a request to producing its response head, by route.",
    );
    for (route, histogram) in ROUTE_LABELS.iter().zip(&http.durations) {
        if histogram.count() > 0 {
            histogram.render(
                &mut out,
                "swarm_registry_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
    }
    single(
        &mut out,
        "swarm_registry_http_connections",
        "gauge",
        "Open client connections.",
        http.connections_open.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "swarm_registry_http_connections_total",
        "counter",
        "Client connections accepted.",
        load(&http.connections_total),
    );

    let snapshot = e.snapshot;
    single(
        &mut out,
        "swarm_registry_revision",
        "gauge",
        "The registry's current revision (the seq of the last change).",
        snapshot.revision,
    );
    single(
        &mut out,
        "swarm_registry_services_revision",
        "gauge",
        "The revision at which the service list last changed.",
        snapshot.services_revision,
    );
    single(
        &mut out,
        "swarm_registry_services",
        "gauge",
        "Registered services.",
        snapshot.services.len(),
    );
    single(
        &mut out,
        "swarm_registry_services_with_metrics",
        "gauge",
        "Registered services that have metrics.",
        snapshot.metrics.len(),
    );
    single(
        &mut out,
        "swarm_registry_cache_version",
        "counter",
        "Full lists and clears folded (the contract's cache_version).",
        snapshot.cache_version,
    );
    single(
        &mut out,
        "swarm_registry_last_full_sync_timestamp_seconds",
        "gauge",
        "When the last full list was folded (0 before the first).",
        snapshot
            .last_full_sync
            .map(Timestamp::epoch_seconds_f64)
            .unwrap_or(0.0),
    );
    single(
        &mut out,
        "swarm_registry_engine_up",
        "gauge",
        "1 when the Docker engine answers.",
        u8::from(snapshot.source.status == SourceStatus::Connected),
    );
    single(
        &mut out,
        "swarm_registry_data_stale",
        "gauge",
        "1 when the engine has not answered within the staleness bound.",
        u8::from(e.stale),
    );
    if let Some(contact) = snapshot.source.last_contact {
        single(
            &mut out,
            "swarm_registry_engine_last_contact_age_seconds",
            "gauge",
            "Seconds since the engine last answered.",
            (e.now.0.saturating_sub(contact.0)).max(0) as f64 / 1000.0,
        );
    }

    let s = e.source;
    for (name, help, counter) in [
        (
            "swarm_registry_engine_events_total",
            "Engine events received.",
            &s.events,
        ),
        (
            "swarm_registry_engine_inspects_total",
            "Single-service inspects made.",
            &s.inspects,
        ),
        (
            "swarm_registry_engine_full_lists_total",
            "Full lists folded.",
            &s.full_lists,
        ),
        (
            "swarm_registry_engine_errors_total",
            "Engine requests that failed.",
            &s.engine_errors,
        ),
        (
            "swarm_registry_engine_reconnects_total",
            "Times the engine's event stream was reopened.",
            &s.event_reconnects,
        ),
        (
            "swarm_registry_engine_stalls_total",
            "Times a poll found changes the event stream never reported.",
            &s.event_stalls,
        ),
        (
            "swarm_registry_stats_samples_total",
            "Container stats samples taken.",
            &s.stats_samples,
        ),
        (
            "swarm_registry_stats_failures_total",
            "Container stats samples that failed.",
            &s.stats_failures,
        ),
    ] {
        single(&mut out, name, "counter", help, load(counter));
    }

    header(
        &mut out,
        "swarm_registry_change_delivery_seconds",
        "histogram",
        "Time from observing a change to handing its event to a subscriber's connection.",
    );
    http.delivery
        .render(&mut out, "swarm_registry_change_delivery_seconds", "");
    single(
        &mut out,
        "swarm_registry_sse_subscribers",
        "gauge",
        "Open event streams.",
        http.sse_subscribers.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "swarm_registry_sse_lagged_total",
        "counter",
        "Event streams that fell too far behind and were reset with a snapshot.",
        load(&http.sse_lagged),
    );
    single(
        &mut out,
        "swarm_registry_sse_events_total",
        "counter",
        "Events sent on event streams (snapshots and resets included).",
        load(&http.sse_events),
    );

    let p = e.publisher;
    single(
        &mut out,
        "swarm_registry_publisher_enabled",
        "gauge",
        "1 when a broker is configured.",
        u8::from(p.enabled),
    );
    if p.enabled {
        single(
            &mut out,
            "swarm_registry_publisher_connected",
            "gauge",
            "1 when the broker connection is up.",
            u8::from(p.is_connected()),
        );
        single(
            &mut out,
            "swarm_registry_publisher_last_confirmed",
            "gauge",
            "The highest change seq the broker confirmed.",
            load(&p.last_confirmed),
        );
        single(
            &mut out,
            "swarm_registry_publisher_outbox",
            "gauge",
            "Changes waiting to be sent or confirmed.",
            load(&p.outbox_len),
        );
        for (name, help, counter) in [
            (
                "swarm_registry_publisher_published_total",
                "Changes sent to the broker.",
                &p.published,
            ),
            (
                "swarm_registry_publisher_confirmed_total",
                "Changes the broker confirmed.",
                &p.confirmed,
            ),
            (
                "swarm_registry_publisher_failed_total",
                "Sends that failed.",
                &p.failed,
            ),
            (
                "swarm_registry_publisher_dropped_total",
                "Changes dropped from a full outbox.",
                &p.dropped,
            ),
            (
                "swarm_registry_publisher_reconnects_total",
                "Broker reconnections.",
                &p.reconnects,
            ),
        ] {
            single(&mut out, name, "counter", help, load(counter));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&DELIVERY_BUCKETS);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert_eq!(h.quantile_bound(0.5), Some(0.005));
        assert_eq!(h.quantile_bound(1.0), None);
    }

    #[test]
    fn exposition_lists_requests_and_publisher_only_when_enabled() {
        let http = HttpMetrics::default();
        http.record_request(5, 200, Duration::from_micros(80));
        http.record_request(5, 418, Duration::from_micros(80));
        let snapshot = Snapshot::empty(10, 4, Timestamp(0));
        let source = SourceCounters::default();
        let disabled = PublisherState::disabled();
        let text = render(&Exposition {
            http: &http,
            snapshot: &snapshot,
            now: Timestamp(0),
            stale: true,
            source: &source,
            publisher: &disabled,
        });
        assert!(text.contains(
            "swarm_registry_http_requests_total{route=\"/services\",status=\"200\"} 1\n"
        ));
        assert!(text.contains(
            "swarm_registry_http_requests_total{route=\"/services\",status=\"other\"} 1\n"
        ));
        assert!(text.contains("swarm_registry_revision 10\n"));
        assert!(text.contains("swarm_registry_data_stale 1\n"));
        assert!(!text.contains("swarm_registry_publisher_connected"));
        let enabled = PublisherState::enabled("s");
        let text = render(&Exposition {
            publisher: &enabled,
            ..Exposition {
                http: &http,
                snapshot: &snapshot,
                now: Timestamp(0),
                stale: false,
                source: &source,
                publisher: &disabled,
            }
        });
        assert!(text.contains("swarm_registry_publisher_connected 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }
}
