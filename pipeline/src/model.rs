//! The domain model: what a source reports ([`ServiceSpec`]), what the registry derives from it
//! ([`ServiceEntry`]), and the load figures it attaches ([`Metrics`]).
//!
//! These are plain data. Everything that turns one into another lives in [`crate::labels`] and
//! [`crate::fold`], so it can be tested without a runtime or a Docker engine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. The fold never reads a clock: every input arrives with
/// the time it was observed, so replaying the same inputs gives the same snapshots.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Whole seconds since the epoch, the unit of every `timestamp` field in the wire contract.
    pub fn epoch_seconds(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Seconds since the epoch as a float, the unit of the contract's `last_refresh`.
    pub fn epoch_seconds_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// The current wall-clock time. Only drivers and sources call this, never the fold.
    pub fn now() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(millis)
    }
}

/// How Swarm schedules a service's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode", content = "replicas")]
pub enum ServiceMode {
    /// A fixed number of tasks, spread over the nodes.
    Replicated(u64),
    /// One task per eligible node; there is no replica count to scale.
    Global,
}

/// A Swarm service as a source reports it, before any interpretation of its labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub id: String,
    pub name: String,
    /// Every label of the service spec, not only the registry's own: clients read others too
    /// (for example `autoscaler.memory.limit_bytes`).
    pub labels: BTreeMap<String, String>,
    pub mode: ServiceMode,
    /// Docker's timestamps exactly as the engine wrote them; the contract passes them through.
    pub created_at: String,
    pub updated_at: String,
    /// Docker's `Version.Index`: it only grows, so an older inspect that arrives late is ignored.
    pub version: u64,
    /// Task counts from a list with `status=true`; `None` when the source did not report them.
    pub running_tasks: Option<u64>,
    pub desired_tasks: Option<u64>,
}

/// Which figure drives scaling decisions for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalingMetric {
    Cpu,
    Memory,
}

/// Scale-up thresholds in percent, one per metric, as the contract shapes them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub cpu: f64,
    pub memory: f64,
}

/// A label whose value could not be used. The service stays registered with that field at its
/// default, and this record says why, so an operator can find the typo without reading logs.
/// The contract lists them as the entry's `config_errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelError {
    pub label: String,
    pub value: String,
    pub reason: String,
}

/// A registered service as clients see it. Field order is alphabetical because the original
/// registry serialised keys sorted, and some clients diff bodies textually.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub config_errors: Vec<LabelError>,
    pub created_at: String,
    /// The desired replica count (for a global service: its desired task count, else 1).
    pub current_replicas: u64,
    pub desired_tasks: Option<u64>,
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub max_replicas: u64,
    pub metric: ScalingMetric,
    pub min_replicas: u64,
    /// `replicated` or `global`.
    pub mode: String,
    pub name: String,
    pub running_tasks: Option<u64>,
    pub thresholds: Thresholds,
    pub updated_at: String,
    /// Docker's version index of the spec this entry was derived from.
    pub version: u64,
}

/// One task the metrics collector could not sample, and why (for example: it runs on another
/// node, whose engine this registry does not talk to). Fields in alphabetical order: the wire
/// contract lists every object's keys sorted, and serde writes them in declaration order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsampledTask {
    pub reason: String,
    pub task_id: String,
}

/// Load figures for one service, averaged over its sampled running tasks.
///
/// The first five fields are the contract's metrics object; the rest say how trustworthy the
/// figures are, because the old registry let stale or partial figures drive scaling silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub cpu_pct: f64,
    pub memory_bytes: f64,
    /// Memory as a percentage of the tasks' limit, when every sampled task has one.
    pub memory_pct: Option<f64>,
    /// When the sample was taken, in milliseconds since the epoch.
    pub sampled_at_ms: i64,
    pub source: String,
    pub tasks_running: u64,
    pub tasks_sampled: u64,
    /// Epoch seconds of the sample, as the contract's `timestamp`.
    pub timestamp: i64,
    pub unsampled_tasks: Vec<UnsampledTask>,
    /// The interval really measured between the two stats samples behind `cpu_pct`.
    pub window_seconds: u64,
}

/// What the registry knows about its connection to the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum SourceStatus {
    /// No contact yet since start-up.
    Connecting,
    /// The engine answers.
    Connected,
    /// The engine does not answer, or answers wrongly; `reason` names the problem.
    Unreachable { reason: String },
}

impl SourceStatus {
    /// The state's name, as every edge reports it (the `state` field, `source_status`, the
    /// `x-registry-source` header). Serde's tag spells the same names; a test holds them equal.
    pub fn name(&self) -> &'static str {
        match self {
            SourceStatus::Connecting => "connecting",
            SourceStatus::Connected => "connected",
            SourceStatus::Unreachable { .. } => "unreachable",
        }
    }
}

/// The source's health as kept in a snapshot. Staleness is derived from it at read time
/// (see [`SourceHealth::is_stale`]) so that the fold never needs a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceHealth {
    #[serde(flatten)]
    pub status: SourceStatus,
    /// When the status last changed.
    pub since: Timestamp,
    /// The last time the engine answered anything.
    pub last_contact: Option<Timestamp>,
    /// The last error and when it happened; kept after recovery so operators see what it was.
    pub last_error: Option<SourceError>,
}

/// An error the source ran into, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceError {
    pub at: Timestamp,
    pub message: String,
}

impl SourceHealth {
    pub fn new(at: Timestamp) -> Self {
        SourceHealth {
            status: SourceStatus::Connecting,
            since: at,
            last_contact: None,
            last_error: None,
        }
    }

    /// Data is stale when the engine is not answering now, or has not answered for longer than
    /// `max_age_ms` (for example when polls silently stop).
    pub fn is_stale(&self, now: Timestamp, max_age_ms: i64) -> bool {
        match (&self.status, self.last_contact) {
            (SourceStatus::Connected, Some(t)) => now.0.saturating_sub(t.0) > max_age_ms,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{SourceStatus, UnsampledTask};

    #[test]
    fn an_unsampled_task_lists_its_keys_sorted() {
        let task = UnsampledTask {
            task_id: "t1".to_owned(),
            reason: "no agent on node n2".to_owned(),
        };
        assert_eq!(
            serde_json::to_string(&task).unwrap(),
            r#"{"reason":"no agent on node n2","task_id":"t1"}"#
        );
    }

    #[test]
    fn a_status_name_is_its_serialised_state() {
        let statuses = [
            SourceStatus::Connecting,
            SourceStatus::Connected,
            SourceStatus::Unreachable {
                reason: "connection refused".to_owned(),
            },
        ];
        for status in statuses {
            let json = serde_json::to_value(&status).unwrap_or_default();
            assert_eq!(json["state"], status.name(), "{status:?}");
        }
    }
}
