//! The Prometheus text exposition (format version 0.0.4) of everything /metrics reports,
//! encoded by `prometheus-client`. The edges keep their own atomics; each scrape reads them,
//! with the registry's snapshot, into one collector, so the families come out in a fixed order
//! and a family that does not apply (the publisher's without a broker) is left out whole.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pipeline::{Snapshot, SourceStatus, Timestamp};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::http::{HttpMetrics, STATUS_LABELS};
use super::status::{PublisherState, SourceCounters};
use crate::http::route::ROUTE_LABELS;

/// The prefix of every metric name.
pub const METRIC_PREFIX: &str = "swarm_registry";

/// What /metrics reports besides the server's own measurements.
pub struct Exposition<'a> {
    pub http: &'a Arc<HttpMetrics>,
    pub snapshot: &'a Snapshot,
    pub now: Timestamp,
    pub stale: bool,
    pub source: &'a Arc<SourceCounters>,
    pub publisher: &'a Arc<PublisherState>,
}

/// The Prometheus text format (version 0.0.4) of every measurement.
pub fn render(e: &Exposition<'_>) -> String {
    let snapshot = e.snapshot;
    let scrape = Scrape {
        http: Arc::clone(e.http),
        source: Arc::clone(e.source),
        publisher: Arc::clone(e.publisher),
        registry: RegistryReading {
            revision: snapshot.revision,
            services_revision: snapshot.services_revision,
            services: snapshot.services.len(),
            services_with_metrics: snapshot.metrics.len(),
            last_full_sync: snapshot
                .last_full_sync
                .map(Timestamp::epoch_seconds_f64)
                .unwrap_or(0.0),
            engine_up: snapshot.source.status == SourceStatus::Connected,
            stale: e.stale,
            contact_age: snapshot
                .source
                .last_contact
                .map(|contact| e.now.0.saturating_sub(contact.0).max(0) as f64 / 1000.0),
        },
    };
    let mut registry = Registry::with_prefix(METRIC_PREFIX);
    registry.register_collector(Box::new(scrape));
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail, and the collector reports no errors of its own.
    let _ = prometheus_text::encode(&mut out, &registry);
    legacy_cache_version(&mut out, snapshot.cache_version);
    out
}

/// `swarm_registry_cache_version` has been a counter without the `_total` suffix since the
/// first release; the encoder adds the suffix to every counter, so this one family is written
/// here to keep its name for existing scrapers and dashboards.
fn legacy_cache_version(out: &mut String, value: u64) {
    use fmt::Write as _;
    let name = "swarm_registry_cache_version";
    let _ = write!(
        out,
        "# HELP {name} Full lists and clears folded (the contract's cache_version).\n\
         # TYPE {name} counter\n\
         {name} {value}\n"
    );
}

/// The registry's side of a scrape, read from one snapshot.
#[derive(Debug)]
struct RegistryReading {
    revision: u64,
    services_revision: u64,
    services: usize,
    services_with_metrics: usize,
    last_full_sync: f64,
    engine_up: bool,
    stale: bool,
    /// Seconds since the engine last answered; `None` before it first did.
    contact_age: Option<f64>,
}

/// One scrape: the handles the measurements live in, and the registry's reading.
#[derive(Debug)]
struct Scrape {
    http: Arc<HttpMetrics>,
    source: Arc<SourceCounters>,
    publisher: Arc<PublisherState>,
    registry: RegistryReading,
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter family; `name` without the `_total` the encoder appends.
fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeCounterValue,
) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let e = &mut encoder;
        let build = Info::new([("version", env!("CARGO_PKG_VERSION"))]);
        build.encode(e.encode_descriptor(
            "build",
            "The running build (its version as a label; the value is always 1).",
            None,
            build.metric_type(),
        )?)?;
        self.encode_http(e)?;
        self.encode_registry(e)?;
        self.encode_source(e)?;
        self.encode_nodes(e)?;
        self.encode_streams(e)?;
        self.encode_publisher(e)
    }
}

impl Scrape {
    fn encode_http(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let http = &self.http;
        let mut requests = e.encode_descriptor(
            "http_requests",
            "HTTP requests answered, by route and status.",
            None,
            MetricType::Counter,
        )?;
        for (route, row) in ROUTE_LABELS.iter().zip(&http.requests) {
            for (status, count) in STATUS_LABELS.iter().zip(row) {
                let count = load(count);
                if count == 0 {
                    continue;
                }
                let labels = [("route", *route), ("status", *status)];
                ConstCounter::new(count).encode(requests.encode_family(&labels)?)?;
            }
        }
        let mut durations = e.encode_descriptor(
            "http_request_duration_seconds",
            "Time from receiving a request to producing its response head, by route.",
            None,
            MetricType::Histogram,
        )?;
        for ((route, row), histogram) in
            ROUTE_LABELS.iter().zip(&http.requests).zip(&http.durations)
        {
            // A route's duration is recorded with its count: no count, no observations.
            if row.iter().all(|count| load(count) == 0) {
                continue;
            }
            let labels = [("route", *route)];
            histogram.encode(durations.encode_family(&labels)?)?;
        }
        gauge(
            e,
            "http_connections",
            "Open client connections.",
            http.connections_open.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "http_connections",
            "Client connections accepted.",
            load(&http.connections_total),
        )?;
        counter(
            e,
            "http_write_timeouts",
            "Connections dropped because the client read nothing for WRITE_TIMEOUT_SEC.",
            load(&http.write_timeouts),
        )
    }

    fn encode_registry(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let r = &self.registry;
        gauge(
            e,
            "revision",
            "The registry's current revision (the seq of the last change).",
            r.revision,
        )?;
        gauge(
            e,
            "services_revision",
            "The revision at which the service list last changed.",
            r.services_revision,
        )?;
        gauge(e, "services", "Registered services.", r.services)?;
        gauge(
            e,
            "services_with_metrics",
            "Registered services that have metrics.",
            r.services_with_metrics,
        )?;
        gauge(
            e,
            "last_full_sync_timestamp_seconds",
            "When the last full list was folded (0 before the first).",
            r.last_full_sync,
        )?;
        gauge(
            e,
            "engine_up",
            "1 when the Docker engine answers.",
            i64::from(r.engine_up),
        )?;
        gauge(
            e,
            "data_stale",
            "1 when the engine has not answered within the staleness bound.",
            i64::from(r.stale),
        )?;
        if let Some(age) = r.contact_age {
            gauge(
                e,
                "engine_last_contact_age_seconds",
                "Seconds since the engine last answered.",
                age,
            )?;
        }
        Ok(())
    }

    /// Every node sampler (the registry's own and each agent's) and the agents' reports.
    fn encode_nodes(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let board = &self.source.nodes;
        let nodes = board.nodes();
        let mut live = e.encode_descriptor(
            "node_sampler_up",
            "1 while a node's sampler reports within three of its intervals, by node (in_process: the registry's own node).",
            None,
            MetricType::Gauge,
        )?;
        for n in &nodes {
            let in_process = if n.in_process { "true" } else { "false" };
            let labels = [("node", n.node_id.as_str()), ("in_process", in_process)];
            ConstGauge::new(i64::from(n.live)).encode(live.encode_family(&labels)?)?;
        }
        let mut age = e.encode_descriptor(
            "node_sampler_last_contact_age_seconds",
            "Seconds since a node's sampler last reported, by node.",
            None,
            MetricType::Gauge,
        )?;
        let now = Timestamp::now().0;
        for n in &nodes {
            let seconds = now.saturating_sub(n.last_contact_ms).max(0) as f64 / 1000.0;
            ConstGauge::new(seconds).encode(age.encode_family(&[("node", n.node_id.as_str())])?)?;
        }
        let mut tasks = e.encode_descriptor(
            "node_sampler_tasks_reported",
            "Tasks in a node's last report (measured or failed), by node.",
            None,
            MetricType::Gauge,
        )?;
        for n in &nodes {
            let count = i64::try_from(n.tasks_reported).unwrap_or(i64::MAX);
            ConstGauge::new(count).encode(tasks.encode_family(&[("node", n.node_id.as_str())])?)?;
        }
        counter(
            e,
            "agent_reports_accepted",
            "Agent reports accepted.",
            load(&board.reports_accepted),
        )?;
        let mut rejected = e.encode_descriptor(
            "agent_reports_rejected",
            "Agent reports refused, by reason (malformed, unknown_task, unauthorized).",
            None,
            MetricType::Counter,
        )?;
        for why in crate::docker::readings::Rejection::ALL {
            ConstCounter::new(board.rejected(why))
                .encode(rejected.encode_family(&[("reason", why.name())])?)?;
        }
        Ok(())
    }

    fn encode_source(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.source;
        for (name, help, count) in [
            ("engine_events", "Engine events received.", &s.events),
            (
                "engine_inspects",
                "Single-service inspects made.",
                &s.inspects,
            ),
            (
                "engine_settle_inspects",
                "Inspects made because container events stayed unmatched by the manager's count.",
                &s.settle_inspects,
            ),
            ("engine_full_lists", "Full lists folded.", &s.full_lists),
            (
                "engine_errors",
                "Engine requests that failed.",
                &s.engine_errors,
            ),
            (
                "engine_reconnects",
                "Times the engine's event stream was reopened.",
                &s.event_reconnects,
            ),
            (
                "engine_stalls",
                "Times a poll found changes the event stream never reported.",
                &s.event_stalls,
            ),
            (
                "stats_samples",
                "Container stats samples taken.",
                &s.stats_samples,
            ),
            (
                "stats_failures",
                "Container stats samples that failed.",
                &s.stats_failures,
            ),
        ] {
            counter(e, name, help, load(count))?;
        }
        Ok(())
    }

    fn encode_streams(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let http = &self.http;
        let delivery = &http.delivery;
        delivery.encode(e.encode_descriptor(
            "change_delivery_seconds",
            "Time from observing a change to handing its event to a subscriber's connection.",
            None,
            delivery.metric_type(),
        )?)?;
        gauge(
            e,
            "sse_subscribers",
            "Open event streams.",
            http.sse_subscribers.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "sse_lagged",
            "Event streams that fell too far behind and were reset with a snapshot.",
            load(&http.sse_lagged),
        )?;
        counter(
            e,
            "sse_events",
            "Events sent on event streams (snapshots and resets included).",
            load(&http.sse_events),
        )
    }

    fn encode_publisher(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let p = &self.publisher;
        gauge(
            e,
            "publisher_enabled",
            "1 when a broker is configured.",
            i64::from(p.enabled),
        )?;
        if !p.enabled {
            return Ok(());
        }
        gauge(
            e,
            "publisher_connected",
            "1 when the broker connection is up.",
            i64::from(p.is_connected()),
        )?;
        gauge(
            e,
            "publisher_another_writer",
            "1 when publishing stopped because another writer uses the producer name.",
            i64::from(p.another_writer().is_some()),
        )?;
        gauge(
            e,
            "publisher_last_confirmed",
            "The highest change seq the broker confirmed.",
            load(&p.last_confirmed),
        )?;
        gauge(
            e,
            "publisher_outbox",
            "Changes waiting to be sent or confirmed.",
            load(&p.outbox_len),
        )?;
        for (name, help, count) in [
            (
                "publisher_published",
                "Changes sent to the broker.",
                &p.published,
            ),
            (
                "publisher_confirmed",
                "Changes the broker confirmed.",
                &p.confirmed,
            ),
            ("publisher_failed", "Sends that failed.", &p.failed),
            (
                "publisher_dropped",
                "Changes dropped from a full outbox.",
                &p.dropped,
            ),
            (
                "publisher_reconnects",
                "Broker reconnections.",
                &p.reconnects,
            ),
        ] {
            counter(e, name, help, load(count))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn exposition<'a>(
        http: &'a Arc<HttpMetrics>,
        snapshot: &'a Snapshot,
        source: &'a Arc<SourceCounters>,
        publisher: &'a Arc<PublisherState>,
        stale: bool,
    ) -> String {
        render(&Exposition {
            http,
            snapshot,
            now: Timestamp(0),
            stale,
            source,
            publisher,
        })
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let http = Arc::new(HttpMetrics::default());
        http.delivery.observe(Duration::from_micros(500));
        http.delivery.observe(Duration::from_millis(3));
        http.delivery.observe(Duration::from_secs(60));
        let snapshot = Snapshot::empty(10, 4, Timestamp(0));
        let source = Arc::new(SourceCounters::default());
        let publisher = Arc::new(PublisherState::disabled());
        let out = exposition(&http, &snapshot, &source, &publisher, false);
        let x = "swarm_registry_change_delivery_seconds";
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"0.001\"}} 1\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"0.005\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"10\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"+Inf\"}} 3\n")),
            "{out}"
        );
        assert!(out.contains(&format!("{x}_count 3\n")), "{out}");
        assert!(out.contains(&format!("{x}_sum 60.0035\n")), "{out}");
        let buckets = out
            .lines()
            .filter(|l| l.starts_with(&format!("{x}_bucket")))
            .count();
        assert_eq!(buckets, 13, "twelve bounds and +Inf, nothing else:\n{out}");
    }

    /// Every family scrapers see, with its type: the names are an interface (dashboards,
    /// alerts), so a change here must be deliberate.
    #[test]
    fn every_family_keeps_its_name_and_type() {
        let http = Arc::new(HttpMetrics::default());
        let mut snapshot = Snapshot::empty(10, 4, Timestamp(0));
        snapshot.source.last_contact = Some(Timestamp(0));
        let source = Arc::new(SourceCounters::default());
        let publisher = Arc::new(PublisherState::enabled("s"));
        let text = exposition(&http, &snapshot, &source, &publisher, false);
        let mut families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE swarm_registry_"))
            .collect();
        families.sort_unstable();
        let mut expected = vec![
            "build_info gauge",
            "http_requests_total counter",
            "http_request_duration_seconds histogram",
            "http_connections gauge",
            "http_connections_total counter",
            "http_write_timeouts_total counter",
            "revision gauge",
            "services_revision gauge",
            "services gauge",
            "services_with_metrics gauge",
            "cache_version counter",
            "last_full_sync_timestamp_seconds gauge",
            "engine_up gauge",
            "data_stale gauge",
            "engine_last_contact_age_seconds gauge",
            "engine_events_total counter",
            "engine_inspects_total counter",
            "engine_settle_inspects_total counter",
            "engine_full_lists_total counter",
            "engine_errors_total counter",
            "engine_reconnects_total counter",
            "engine_stalls_total counter",
            "stats_samples_total counter",
            "stats_failures_total counter",
            "node_sampler_up gauge",
            "node_sampler_last_contact_age_seconds gauge",
            "node_sampler_tasks_reported gauge",
            "agent_reports_accepted_total counter",
            "agent_reports_rejected_total counter",
            "change_delivery_seconds histogram",
            "sse_subscribers gauge",
            "sse_lagged_total counter",
            "sse_events_total counter",
            "publisher_enabled gauge",
            "publisher_connected gauge",
            "publisher_another_writer gauge",
            "publisher_last_confirmed gauge",
            "publisher_outbox gauge",
            "publisher_published_total counter",
            "publisher_confirmed_total counter",
            "publisher_failed_total counter",
            "publisher_dropped_total counter",
            "publisher_reconnects_total counter",
        ];
        expected.sort_unstable();
        assert_eq!(families, expected);
        assert!(text.contains("swarm_registry_build_info{version=\""));
        // Each family's samples carry its name.
        assert!(
            text.contains("\nswarm_registry_cache_version 0\n"),
            "{text}"
        );
        assert!(text.contains("\nswarm_registry_http_connections_total 0\n"));
    }

    #[test]
    fn exposition_lists_requests_and_publisher_only_when_enabled() {
        let http = Arc::new(HttpMetrics::default());
        http.record_request(5, 200, Duration::from_micros(80));
        http.record_request(5, 418, Duration::from_micros(80));
        let snapshot = Snapshot::empty(10, 4, Timestamp(0));
        let source = Arc::new(SourceCounters::default());
        let disabled = Arc::new(PublisherState::disabled());
        let text = exposition(&http, &snapshot, &source, &disabled, true);
        assert!(text.contains(
            "swarm_registry_http_requests_total{route=\"/services\",status=\"200\"} 1\n"
        ));
        assert!(text.contains(
            "swarm_registry_http_requests_total{route=\"/services\",status=\"other\"} 1\n"
        ));
        assert!(text.contains("swarm_registry_revision 10\n"));
        assert!(text.contains("swarm_registry_data_stale 1\n"));
        assert!(!text.contains("swarm_registry_publisher_connected"));
        let enabled = Arc::new(PublisherState::enabled("s"));
        let text = exposition(&http, &snapshot, &source, &enabled, false);
        assert!(text.contains("swarm_registry_publisher_connected 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }
}
