//! Response bodies: the contract's JSON shapes, rendered from a snapshot at one instant.
//!
//! Pure functions of (snapshot, time, settings), so each shape is tested against the contract
//! without a server. Structs list their fields alphabetically because the original registry
//! serialised keys sorted and some clients compare bodies as text.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use pipeline::change::SERVICE_NAME;
use pipeline::{ChangeKind, Metrics, Snapshot, SourceStatus, Timestamp};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::docker::readings::NodeStatus;
use crate::telemetry::PublisherState;

/// Serialise plain data. Every body here is strings, numbers and nested structs of them, which
/// serde_json always accepts; the fallback keeps even an impossible failure a valid answer.
pub fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(br#"{"error":"internal server error"}"#))
}

/// An error body: `{"error": message}`.
pub fn error_body(message: &str) -> Bytes {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
    }
    to_bytes(&ErrorBody { error: message })
}

/// A bad query parameter: the contract's error field plus the parameter's name, so clients
/// can tell which one without parsing the message.
pub fn parameter_error_body(message: &str, parameter: &str) -> Bytes {
    #[derive(Serialize)]
    struct ParameterError<'a> {
        error: &'a str,
        parameter: &'a str,
    }
    to_bytes(&ParameterError {
        error: message,
        parameter,
    })
}

/// How fresh the snapshot's data is, as every read reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Freshness {
    pub stale: bool,
    /// The source's state by name ([`SourceStatus::name`]).
    pub source_state: &'static str,
    pub last_contact: Option<Timestamp>,
    /// Milliseconds since the engine last answered.
    pub last_contact_age_ms: Option<i64>,
    pub last_error: Option<String>,
}

impl Freshness {
    pub fn of(snapshot: &Snapshot, now: Timestamp, stale_after_ms: i64) -> Freshness {
        let source = &snapshot.source;
        Freshness {
            stale: source.is_stale(now, stale_after_ms),
            source_state: source.status.name(),
            last_contact: source.last_contact,
            last_contact_age_ms: source
                .last_contact
                .map(|t| now.0.saturating_sub(t.0).max(0)),
            last_error: match &source.status {
                SourceStatus::Unreachable { reason } => Some(reason.clone()),
                _ => None,
            },
        }
    }
}

/// The contract's cache statistics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheStats {
    pub cache_version: u64,
    pub last_refresh: f64,
    pub metrics_count: usize,
    pub refresh_interval_sec: u64,
    pub services_count: usize,
}

impl CacheStats {
    pub fn of(snapshot: &Snapshot, refresh_interval_sec: u64) -> CacheStats {
        CacheStats {
            cache_version: snapshot.cache_version,
            last_refresh: last_refresh(snapshot),
            metrics_count: snapshot.metrics.len(),
            refresh_interval_sec,
            services_count: snapshot.services.len(),
        }
    }
}

/// Epoch seconds of the last full list, `0.0` before the first (as the contract says).
fn last_refresh(snapshot: &Snapshot) -> f64 {
    snapshot
        .last_full_sync
        .map(Timestamp::epoch_seconds_f64)
        .unwrap_or(0.0)
}

/// `metadata` of `GET /services`: the contract's four fields plus revision and staleness.
/// It is also the key of the rendered-body cache: equal metadata means an equal body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicesMetadata {
    pub cache_version: u64,
    pub count: usize,
    pub last_contact: Option<f64>,
    pub last_refresh: f64,
    pub revision: u64,
    pub source_status: &'static str,
    pub stale: bool,
    pub timestamp: i64,
}

impl ServicesMetadata {
    pub fn of(snapshot: &Snapshot, freshness: &Freshness, now: Timestamp) -> ServicesMetadata {
        ServicesMetadata {
            cache_version: snapshot.cache_version,
            count: snapshot.services.len(),
            last_contact: freshness.last_contact.map(Timestamp::epoch_seconds_f64),
            last_refresh: last_refresh(snapshot),
            revision: snapshot.services_revision,
            source_status: freshness.source_state,
            stale: freshness.stale,
            timestamp: now.epoch_seconds(),
        }
    }
}

/// `GET /services`: the entries' cached JSON, spliced in without re-serialising them.
pub fn services_body(snapshot: &Snapshot, metadata: &ServicesMetadata) -> Bytes {
    let metadata = serde_json::to_string(metadata).unwrap_or_else(|_| "{}".to_owned());
    let services = snapshot.services_json();
    let mut out = String::with_capacity(32 + metadata.len() + services.len());
    out.push_str("{\"metadata\":");
    out.push_str(&metadata);
    out.push_str(",\"services\":");
    out.push_str(&services);
    out.push('}');
    Bytes::from(out)
}

/// `GET /services/{name}`.
pub fn service_body(entry: &RawValue, revision: u64, now: Timestamp) -> Bytes {
    #[derive(Serialize)]
    struct ServiceBody<'a> {
        revision: u64,
        service: &'a RawValue,
        timestamp: i64,
    }
    to_bytes(&ServiceBody {
        revision,
        service: entry,
        timestamp: now.epoch_seconds(),
    })
}

/// How old a metrics sample is, in whole seconds (never negative, even with clock skew).
pub fn metrics_age_seconds(metrics: &Metrics, now: Timestamp) -> u64 {
    u64::try_from(now.0.saturating_sub(metrics.sampled_at_ms) / 1000).unwrap_or(0)
}

/// `GET /services/{name}/metrics` (`refreshed` absent) and `POST` (`refreshed: true`, and
/// `metrics` may be null when the service has no running task).
pub fn metrics_body(
    service_name: &str,
    metrics: Option<&Metrics>,
    revision: Option<u64>,
    refreshed: bool,
    now: Timestamp,
) -> Bytes {
    #[derive(Serialize)]
    struct MetricsBody<'a> {
        age_seconds: Option<u64>,
        metrics: Option<&'a Metrics>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        refreshed: bool,
        revision: Option<u64>,
        service_name: &'a str,
        timestamp: i64,
    }
    to_bytes(&MetricsBody {
        age_seconds: metrics.map(|m| metrics_age_seconds(m, now)),
        metrics,
        refreshed,
        revision,
        service_name,
        timestamp: now.epoch_seconds(),
    })
}

/// `GET /cache/stats`.
pub fn cache_stats_body(stats: &CacheStats, now: Timestamp) -> Bytes {
    #[derive(Serialize)]
    struct StatsBody<'a> {
        cache_stats: &'a CacheStats,
        timestamp: i64,
    }
    to_bytes(&StatsBody {
        cache_stats: stats,
        timestamp: now.epoch_seconds(),
    })
}

/// `POST /cache/refresh`.
pub fn refreshed_body(stats: &CacheStats, revision: u64, now: Timestamp) -> Bytes {
    #[derive(Serialize)]
    struct RefreshedBody<'a> {
        cache_stats: &'a CacheStats,
        message: &'static str,
        revision: u64,
        timestamp: i64,
    }
    to_bytes(&RefreshedBody {
        cache_stats: stats,
        message: "cache refreshed",
        revision,
        timestamp: now.epoch_seconds(),
    })
}

/// `POST /cache/clear`.
pub fn cleared_body(revision: u64, now: Timestamp) -> Bytes {
    #[derive(Serialize)]
    struct ClearedBody {
        message: &'static str,
        revision: u64,
        timestamp: i64,
    }
    to_bytes(&ClearedBody {
        message: "cache cleared",
        revision,
        timestamp: now.epoch_seconds(),
    })
}

/// `GET /`.
pub fn root_body(now: Timestamp) -> Bytes {
    #[derive(Serialize)]
    struct RootBody {
        description: &'static str,
        endpoints: BTreeMap<&'static str, &'static str>,
        service: &'static str,
        timestamp: i64,
        version: &'static str,
    }
    let endpoints = BTreeMap::from([
        ("GET /", "this overview"),
        ("GET /health", "health with cache statistics and warnings"),
        ("GET /health/live", "liveness probe"),
        (
            "GET /health/ready",
            "readiness probe: ready after the first full sync",
        ),
        ("GET /metrics", "Prometheus metrics"),
        (
            "GET /services",
            "all registered services (blocking: ?index=N&wait=30s)",
        ),
        ("GET /services/{name}", "one registered service"),
        (
            "GET /services/{name}/metrics",
            "the service's latest metrics",
        ),
        (
            "POST /services/{name}/metrics",
            "sample the service's metrics now",
        ),
        ("GET /cache/stats", "cache statistics"),
        (
            "GET /ui",
            "live dashboard for people (also GET / with Accept: text/html)",
        ),
        ("POST /cache/refresh", "list every service now"),
        ("POST /cache/clear", "forget every service, then list again"),
        (
            "GET /events",
            "event publishing status (SSE with Accept: text/event-stream)",
        ),
        (
            "GET /events/stream",
            "server-sent events: a snapshot, then every change except services.updated \
             (ask with ?events=services.updated or *); filters ?service=, ?events=; resume with \
             Last-Event-ID or ?since=",
        ),
    ]);
    to_bytes(&RootBody {
        description: "Live registry of the Docker Swarm services under autoscaling",
        endpoints,
        service: "Service Registry",
        timestamp: now.epoch_seconds(),
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /health`'s verdict: degraded when the engine is away, the data is stale, or a
/// configured publisher is disconnected (changes are not reaching the broker). An empty
/// registry is healthy: having no labelled service is a valid state.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub healthy: bool,
    pub warnings: Vec<String>,
}

pub fn health_report(
    snapshot: &Snapshot,
    freshness: &Freshness,
    publisher: &PublisherState,
) -> HealthReport {
    let mut warnings = Vec::new();
    match &snapshot.source.status {
        SourceStatus::Connecting => {
            warnings.push("docker engine not contacted yet".to_owned());
        }
        SourceStatus::Unreachable { reason } => {
            warnings.push(format!("docker engine unreachable: {reason}"));
        }
        SourceStatus::Connected => {}
    }
    if freshness.stale {
        match freshness.last_contact_age_ms {
            Some(ms) => warnings.push(format!(
                "data is stale: last contact with the engine {} s ago",
                ms / 1000
            )),
            None => warnings.push("data is stale: the engine has never answered".to_owned()),
        }
    }
    if publisher.enabled && !publisher.is_connected() {
        warnings.push("event publisher is not connected to the broker".to_owned());
    }
    if let Some(id) = publisher.another_writer() {
        warnings.push(format!(
            "event publisher stopped: another writer uses its producer name (the broker's last \
             publishing id {id} was not sent by this registry)"
        ));
    }
    HealthReport {
        healthy: warnings.is_empty(),
        warnings,
    }
}

#[derive(Serialize)]
struct PublisherBody<'a> {
    /// Publishing stopped for this run: another writer uses the producer name.
    another_writer: bool,
    connected: bool,
    dropped: u64,
    enabled: bool,
    /// The broker's id that gave the other writer away (null unless `another_writer`).
    foreign_publishing_id: Option<u64>,
    last_confirmed: u64,
    last_error: Option<String>,
    outbox_len: u64,
    stream: Option<&'a str>,
}

fn publisher_body(publisher: &PublisherState) -> PublisherBody<'_> {
    PublisherBody {
        another_writer: publisher.another_writer().is_some(),
        connected: publisher.is_connected(),
        dropped: publisher.dropped.load(Ordering::Relaxed),
        enabled: publisher.enabled,
        last_confirmed: publisher.last_confirmed.load(Ordering::Relaxed),
        foreign_publishing_id: publisher.another_writer(),
        last_error: publisher
            .last_error
            .lock()
            .ok()
            .and_then(|guard| guard.clone()),
        outbox_len: publisher.outbox_len.load(Ordering::Relaxed),
        stream: publisher.stream.as_deref(),
    }
}

#[derive(Serialize)]
struct SourceBody<'a> {
    last_contact: Option<f64>,
    last_contact_age_ms: Option<i64>,
    last_error: Option<&'a str>,
    last_full_sync: Option<f64>,
    stale: bool,
    state: &'static str,
}

fn source_body<'a>(snapshot: &'a Snapshot, freshness: &'a Freshness) -> SourceBody<'a> {
    SourceBody {
        last_contact: freshness.last_contact.map(Timestamp::epoch_seconds_f64),
        last_contact_age_ms: freshness.last_contact_age_ms,
        last_error: snapshot
            .source
            .last_error
            .as_ref()
            .map(|e| e.message.as_str()),
        last_full_sync: snapshot.last_full_sync.map(Timestamp::epoch_seconds_f64),
        stale: freshness.stale,
        state: freshness.source_state,
    }
}

/// `GET /health`.
pub fn health_body(
    snapshot: &Snapshot,
    freshness: &Freshness,
    report: &HealthReport,
    stats: &CacheStats,
    publisher: &PublisherState,
    nodes: &[NodeStatus],
    now: Timestamp,
) -> Bytes {
    #[derive(Serialize)]
    struct HealthBody<'a> {
        /// Every node sampler that reported: the registry's own node and each agent.
        agents: &'a [NodeStatus],
        cache: &'a CacheStats,
        publisher: PublisherBody<'a>,
        revision: u64,
        service: &'static str,
        source: SourceBody<'a>,
        status: &'static str,
        timestamp: i64,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        warnings: &'a [String],
    }
    to_bytes(&HealthBody {
        agents: nodes,
        cache: stats,
        publisher: publisher_body(publisher),
        revision: snapshot.revision,
        service: SERVICE_NAME,
        source: source_body(snapshot, freshness),
        status: if report.healthy {
            "healthy"
        } else {
            "degraded"
        },
        timestamp: now.epoch_seconds(),
        warnings: &report.warnings,
    })
}

/// Why the registry is not ready to serve, if it is not: it must have folded a full list
/// and the engine must be answering, or clients would act on an empty or frozen registry.
pub fn not_ready_reason(snapshot: &Snapshot) -> Option<String> {
    if snapshot.last_full_sync.is_none() {
        return Some("waiting for the first full list of services".to_owned());
    }
    match &snapshot.source.status {
        SourceStatus::Connected => None,
        SourceStatus::Connecting => Some("docker engine not contacted yet".to_owned()),
        SourceStatus::Unreachable { reason } => {
            Some(format!("docker engine unreachable: {reason}"))
        }
    }
}

/// `GET /health/live` and `GET /health/ready`.
pub fn probe_body(
    status: &'static str,
    error: Option<&str>,
    revision: u64,
    now: Timestamp,
) -> Bytes {
    #[derive(Serialize)]
    struct ProbeBody<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
        revision: u64,
        status: &'static str,
        timestamp: i64,
    }
    to_bytes(&ProbeBody {
        error,
        revision,
        status,
        timestamp: now.epoch_seconds(),
    })
}

/// `GET /events` as JSON (the contract's shape, plus where the live stream is).
pub fn events_body(publisher: &PublisherState, now: Timestamp) -> Bytes {
    #[derive(Serialize)]
    struct EventsBody<'a> {
        available_events: [&'static str; 6],
        connected: bool,
        enabled: bool,
        exchange: Option<&'a str>,
        stream: &'static str,
        timestamp: i64,
    }
    to_bytes(&EventsBody {
        available_events: ChangeKind::CONTRACT_EVENTS,
        connected: publisher.is_connected(),
        enabled: publisher.enabled,
        exchange: publisher.stream.as_deref(),
        stream: "/events/stream",
        timestamp: now.epoch_seconds(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::{ServiceEntry, ServiceRecord, SourceHealth};
    use serde_json::Value;
    use std::sync::Arc;

    fn entry(name: &str) -> ServiceEntry {
        ServiceEntry {
            config_errors: vec![],
            created_at: "2024-01-15T10:30:00Z".into(),
            current_replicas: 2,
            desired_tasks: Some(2),
            id: format!("id-{name}"),
            labels: [("autoscaler.enabled".to_string(), "true".to_string())].into(),
            max_replicas: 5,
            metric: pipeline::ScalingMetric::Cpu,
            min_replicas: 1,
            mode: "replicated".into(),
            name: name.into(),
            running_tasks: Some(2),
            thresholds: pipeline::Thresholds {
                cpu: 70.0,
                memory: 70.0,
            },
            updated_at: "2024-01-15T10:30:00Z".into(),
            version: 3,
        }
    }

    fn snapshot_with(names: &[&str]) -> Snapshot {
        let mut snapshot = Snapshot::empty(100, 16, Timestamp(1_000));
        for name in names {
            snapshot.services.insert(
                (*name).into(),
                Arc::new(ServiceRecord::new(entry(name), 101)),
            );
        }
        snapshot.services_revision = 101;
        snapshot.revision = 102;
        snapshot
    }

    fn json(bytes: &Bytes) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn services_body_has_the_contract_shape() {
        let snapshot = snapshot_with(&["b", "a"]);
        let now = Timestamp(5_500);
        let freshness = Freshness::of(&snapshot, now, 90_000);
        let meta = ServicesMetadata::of(&snapshot, &freshness, now);
        let body = json(&services_body(&snapshot, &meta));
        assert_eq!(body["services"].as_array().unwrap().len(), 2);
        assert_eq!(body["services"][0]["name"], "a");
        let m = &body["metadata"];
        assert_eq!(m["count"], 2);
        assert_eq!(m["cache_version"], 0);
        assert_eq!(m["last_refresh"].as_f64(), Some(0.0));
        assert!(m["last_refresh"].is_f64());
        assert_eq!(m["timestamp"], 5);
        assert_eq!(m["revision"], 101);
        assert_eq!(m["stale"], true);
        assert_eq!(m["source_status"], "connecting");
        assert!(m["last_contact"].is_null());
    }

    #[test]
    fn fresh_data_is_not_stale_and_old_data_is() {
        let mut snapshot = snapshot_with(&[]);
        snapshot.source = SourceHealth {
            status: SourceStatus::Connected,
            since: Timestamp(0),
            last_contact: Some(Timestamp(10_000)),
            last_error: None,
        };
        let fresh = Freshness::of(&snapshot, Timestamp(12_000), 5_000);
        assert!(!fresh.stale);
        assert_eq!(fresh.last_contact_age_ms, Some(2_000));
        let publisher = PublisherState::disabled();
        assert!(health_report(&snapshot, &fresh, &publisher).healthy);
        let old = Freshness::of(&snapshot, Timestamp(16_000), 5_000);
        let report = health_report(&snapshot, &old, &publisher);
        assert!(!report.healthy);
        assert!(
            report.warnings[0].contains("stale"),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn health_degrades_for_an_absent_engine_not_for_an_empty_registry() {
        let mut snapshot = snapshot_with(&[]);
        snapshot.source.status = SourceStatus::Unreachable {
            reason: "connection refused".into(),
        };
        let now = Timestamp(2_000);
        let freshness = Freshness::of(&snapshot, now, 90_000);
        let publisher = PublisherState::enabled("registry");
        let report = health_report(&snapshot, &freshness, &publisher);
        assert!(!report.healthy);
        let stats = CacheStats::of(&snapshot, 30);
        let body = json(&health_body(
            &snapshot,
            &freshness,
            &report,
            &stats,
            &publisher,
            &[],
            now,
        ));
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["service"], "service-registry");
        assert_eq!(body["publisher"]["enabled"], true);
        assert_eq!(body["publisher"]["connected"], false);
        assert_eq!(body["cache"]["refresh_interval_sec"], 30);
        let warnings: Vec<String> = serde_json::from_value(body["warnings"].clone()).unwrap();
        assert!(warnings.iter().any(|w| w.contains("connection refused")));
        assert!(warnings.iter().any(|w| w.contains("publisher")));
    }

    #[test]
    fn metrics_body_says_how_old_the_sample_is() {
        let metrics = Metrics {
            cpu_pct: 12.5,
            memory_bytes: 1024.0,
            memory_pct: None,
            sampled_at_ms: 10_000,
            source: "docker".into(),
            tasks_running: 1,
            tasks_sampled: 1,
            timestamp: 10,
            unsampled_tasks: vec![],
            window_seconds: 5,
        };
        let body = json(&metrics_body(
            "web",
            Some(&metrics),
            Some(7),
            false,
            Timestamp(42_900),
        ));
        assert_eq!(body["age_seconds"], 32);
        assert_eq!(body["metrics"]["cpu_pct"], 12.5);
        assert_eq!(body["metrics"]["source"], "docker");
        assert!(body.get("refreshed").is_none());
        let posted = json(&metrics_body("web", None, None, true, Timestamp(42_900)));
        assert_eq!(posted["refreshed"], true);
        assert!(posted["metrics"].is_null());
        assert_eq!(posted["service_name"], "web");
    }

    #[test]
    fn readiness_needs_a_full_list_and_a_connected_engine() {
        let mut snapshot = snapshot_with(&[]);
        assert!(not_ready_reason(&snapshot)
            .unwrap()
            .contains("first full list"));
        snapshot.last_full_sync = Some(Timestamp(1));
        snapshot.source.status = SourceStatus::Unreachable {
            reason: "gone".into(),
        };
        assert!(not_ready_reason(&snapshot).unwrap().contains("gone"));
        snapshot.source.status = SourceStatus::Connected;
        assert_eq!(not_ready_reason(&snapshot), None);
    }

    #[test]
    fn root_and_events_bodies_keep_the_contract_fields() {
        let root = json(&root_body(Timestamp(3_000)));
        assert_eq!(root["service"], "Service Registry");
        assert!(root["endpoints"].as_object().unwrap().len() >= 10);
        assert_eq!(root["timestamp"], 3);
        let events = json(&events_body(&PublisherState::disabled(), Timestamp(0)));
        assert_eq!(events["available_events"].as_array().unwrap().len(), 6);
        assert!(events["exchange"].is_null());
        assert_eq!(events["enabled"], false);
        assert_eq!(events["connected"], false);
        assert_eq!(
            json(&error_body("service not found"))["error"],
            "service not found"
        );
    }
}
