//! What a transition emits: one [`Change`] per fact, numbered by the registry's single revision.
//!
//! The same change value goes to every sink (broadcast, SSE, broker), and its JSON is rendered
//! once, on first use, then shared: a change fanned out to a thousand subscribers is serialised
//! one time.

use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::model::{Metrics, SourceHealth, Timestamp};
use crate::record::{ServiceMap, ServiceRecord};

/// The name every change body gives as the emitting service, as the original registry did.
pub const SERVICE_NAME: &str = "service-registry";

/// The fact a change reports.
#[derive(Debug, Clone)]
pub enum ChangeKind {
    /// A service became registered (created with the label, or labelled later).
    ServiceAdded { service: Arc<ServiceRecord> },
    /// A registered service changed; `changed_fields` names the entry fields that differ.
    ServiceUpdated {
        service: Arc<ServiceRecord>,
        changed_fields: Vec<&'static str>,
    },
    /// A service left the registry (removed, or lost its label).
    ServiceRemoved { id: String, name: String },
    /// The set of services after a transition that changed it or any entry. It carries the
    /// persistent map itself, so emitting it costs nothing until a sink renders it.
    ServicesUpdated { services: ServiceMap },
    /// New load figures for one service; `None` when it has none (no running task).
    MetricsUpdated {
        service_name: String,
        metrics: Option<Arc<Metrics>>,
    },
    /// A liveness beacon, also emitted when the source's health changes.
    HealthCheck { source: SourceHealth },
}

impl ChangeKind {
    // The contract's event names, spelled here once; every edge (SSE filters, the API's list
    // of events, the broker's routing keys) takes them from here.
    pub const SERVICE_ADDED: &'static str = "service.added";
    pub const SERVICE_UPDATED: &'static str = "service.updated";
    pub const SERVICE_REMOVED: &'static str = "service.removed";
    pub const SERVICES_UPDATED: &'static str = "services.updated";
    pub const METRICS_UPDATED: &'static str = "metrics.updated";
    pub const HEALTH_CHECK: &'static str = "health.check";
    /// A metrics change's routing key is this prefix followed by the service's name.
    pub const METRICS_KEY_PREFIX: &'static str = "metrics.";

    /// Every routing key that is a fixed name: all of them but the metrics keys, which name
    /// their service.
    pub const FIXED_ROUTING_KEYS: [&'static str; 5] = [
        Self::SERVICE_ADDED,
        Self::SERVICE_REMOVED,
        Self::SERVICE_UPDATED,
        Self::SERVICES_UPDATED,
        Self::HEALTH_CHECK,
    ];

    /// The routing keys as the contract lists them (`GET /events`), the metrics key written
    /// as its pattern.
    pub const CONTRACT_EVENTS: [&'static str; 6] = [
        Self::SERVICES_UPDATED,
        Self::SERVICE_ADDED,
        Self::SERVICE_REMOVED,
        Self::SERVICE_UPDATED,
        "metrics.{service_name}",
        Self::HEALTH_CHECK,
    ];

    /// The families of routing keys (what precedes the first dot), for `<family>.*` filters.
    pub const ROUTING_KEY_FAMILIES: [&'static str; 4] =
        ["service", "services", "metrics", "health"];

    /// The routing key: the event's name on the broker, in SSE, and in filters.
    pub fn routing_key(&self) -> String {
        match self {
            ChangeKind::MetricsUpdated { service_name, .. } => {
                format!("{}{service_name}", Self::METRICS_KEY_PREFIX)
            }
            other => other.event().to_owned(),
        }
    }

    /// The body's `event` field. It equals the routing key except for metrics, whose key names
    /// the service while the event is `metrics.updated` (a quirk of the contract).
    pub fn event(&self) -> &'static str {
        match self {
            ChangeKind::ServiceAdded { .. } => Self::SERVICE_ADDED,
            ChangeKind::ServiceUpdated { .. } => Self::SERVICE_UPDATED,
            ChangeKind::ServiceRemoved { .. } => Self::SERVICE_REMOVED,
            ChangeKind::ServicesUpdated { .. } => Self::SERVICES_UPDATED,
            ChangeKind::MetricsUpdated { .. } => Self::METRICS_UPDATED,
            ChangeKind::HealthCheck { .. } => Self::HEALTH_CHECK,
        }
    }

    /// The name of the service this change is about, if it is about one.
    pub fn service_name(&self) -> Option<&str> {
        match self {
            ChangeKind::ServiceAdded { service } | ChangeKind::ServiceUpdated { service, .. } => {
                Some(&service.entry.name)
            }
            ChangeKind::ServiceRemoved { name, .. } => Some(name),
            ChangeKind::MetricsUpdated { service_name, .. } => Some(service_name),
            ChangeKind::ServicesUpdated { .. } | ChangeKind::HealthCheck { .. } => None,
        }
    }
}

/// One emitted fact with its place in the registry's history.
#[derive(Debug)]
pub struct Change {
    /// The change's number. Every change gets the next one, across all kinds.
    pub seq: u64,
    /// The revision of the snapshot this change belongs to: the seq of the last change of its
    /// transition, so a reader who sees this change can load a snapshot at least this new.
    pub revision: u64,
    /// When the input behind the change was observed.
    pub at: Timestamp,
    pub kind: ChangeKind,
    json: OnceLock<Arc<str>>,
}

impl Change {
    pub fn new(seq: u64, revision: u64, at: Timestamp, kind: ChangeKind) -> Self {
        Change {
            seq,
            revision,
            at,
            kind,
            json: OnceLock::new(),
        }
    }

    pub fn routing_key(&self) -> String {
        self.kind.routing_key()
    }

    /// The change's JSON body: the contract's body plus `seq` and `revision`, keys sorted.
    /// Rendered on first call and shared afterwards.
    pub fn json(&self) -> Arc<str> {
        self.json.get_or_init(|| render(self)).clone()
    }
}

impl PartialEq for Change {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq && self.revision == other.revision && *self.json() == *other.json()
    }
}

// Bodies list their keys in sorted order, as the original registry did, so the envelope
// fields (event, revision, seq, timestamp) are spelled out in each body rather than flattened.

#[derive(Serialize)]
struct ServiceBody<'a> {
    event: &'static str,
    revision: u64,
    seq: u64,
    service: &'a RawValue,
    timestamp: i64,
}

#[derive(Serialize)]
struct UpdatedBody<'a> {
    changed_fields: &'a [&'static str],
    event: &'static str,
    revision: u64,
    seq: u64,
    service: &'a RawValue,
    timestamp: i64,
}

#[derive(Serialize)]
struct RemovedBody<'a> {
    event: &'static str,
    revision: u64,
    seq: u64,
    service_id: &'a str,
    service_name: &'a str,
    timestamp: i64,
}

#[derive(Serialize)]
struct ServicesBody<'a> {
    event: &'static str,
    revision: u64,
    seq: u64,
    services: Vec<&'a RawValue>,
    services_count: usize,
    timestamp: i64,
}

#[derive(Serialize)]
struct MetricsBody<'a> {
    event: &'static str,
    metrics: Option<&'a Metrics>,
    revision: u64,
    seq: u64,
    service_name: &'a str,
    timestamp: i64,
}

#[derive(Serialize)]
struct HealthBody<'a> {
    event: &'static str,
    revision: u64,
    seq: u64,
    service: &'static str,
    source: &'a SourceHealth,
    timestamp: i64,
}

fn render(change: &Change) -> Arc<str> {
    let event = change.kind.event();
    let (revision, seq, timestamp) = (change.revision, change.seq, change.at.epoch_seconds());
    let rendered = match &change.kind {
        ChangeKind::ServiceAdded { service } => serde_json::to_string(&ServiceBody {
            event,
            revision,
            seq,
            service: service.json(),
            timestamp,
        }),
        ChangeKind::ServiceUpdated {
            service,
            changed_fields,
        } => serde_json::to_string(&UpdatedBody {
            changed_fields,
            event,
            revision,
            seq,
            service: service.json(),
            timestamp,
        }),
        ChangeKind::ServiceRemoved { id, name } => serde_json::to_string(&RemovedBody {
            event,
            revision,
            seq,
            service_id: id,
            service_name: name,
            timestamp,
        }),
        ChangeKind::ServicesUpdated { services } => serde_json::to_string(&ServicesBody {
            event,
            revision,
            seq,
            services: services.values().map(|r| r.json()).collect(),
            services_count: services.len(),
            timestamp,
        }),
        ChangeKind::MetricsUpdated {
            service_name,
            metrics,
        } => serde_json::to_string(&MetricsBody {
            event,
            metrics: metrics.as_deref(),
            revision,
            seq,
            service_name,
            timestamp,
        }),
        ChangeKind::HealthCheck { source } => serde_json::to_string(&HealthBody {
            event,
            revision,
            seq,
            service: SERVICE_NAME,
            source,
            timestamp,
        }),
    };
    // Plain structs of strings and numbers always serialise; `{}` is a safe fallback should
    // a future field ever refuse (a non-finite float becomes null in serde_json, not an error).
    Arc::from(rendered.unwrap_or_else(|_| "{}".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::ChangeKind;

    fn family(key: &str) -> &str {
        key.split_once('.').map_or(key, |(family, _)| family)
    }

    /// The name lists are spelled out for the edges; they must agree with the names.
    #[test]
    fn the_name_lists_agree_with_the_names() {
        let mut contract: Vec<&str> = ChangeKind::CONTRACT_EVENTS.to_vec();
        let pattern = contract
            .iter()
            .position(|e| e.starts_with(ChangeKind::METRICS_KEY_PREFIX))
            .map(|i| contract.remove(i));
        assert_eq!(pattern, Some("metrics.{service_name}"));
        let mut fixed = ChangeKind::FIXED_ROUTING_KEYS.to_vec();
        fixed.sort_unstable();
        contract.sort_unstable();
        assert_eq!(contract, fixed);

        let mut families: Vec<&str> = fixed.iter().map(|k| family(k)).collect();
        families.push(family(ChangeKind::METRICS_KEY_PREFIX));
        families.sort_unstable();
        families.dedup();
        let mut listed = ChangeKind::ROUTING_KEY_FAMILIES.to_vec();
        listed.sort_unstable();
        assert_eq!(families, listed);
        assert_eq!(
            family(ChangeKind::METRICS_UPDATED),
            family(ChangeKind::METRICS_KEY_PREFIX)
        );
    }
}
