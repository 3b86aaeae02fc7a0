//! The board of node readings: the latest figures of every sampled task, by node.
//!
//! Each node's sampler (the registry's own, in process, or an agent on another node through
//! `POST /agents/readings`) replaces its node's entry with every step. The metrics rounds and
//! forced samples only look figures up here, so they answer at once. A node counts as live
//! while its last report is younger than [`STALE_INTERVALS`] of its own sampling interval;
//! the readings of a node that stopped reporting are not used.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use pipeline::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How many of a node's sampling intervals may pass without a report before its readings are
/// no longer used and the node counts as having no live agent.
pub const STALE_INTERVALS: u32 = 3;

/// The longest sampling interval a node may announce: beyond it, liveness means nothing.
pub const MAX_INTERVAL_MS: u64 = 3_600_000;

/// One task's latest figures, as a node sampler measured them over its latest interval. Also
/// the agent's wire format (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReading {
    pub task_id: String,
    pub service_id: String,
    /// CPU % over the window (100 = one core), as `docker stats` shows it.
    pub cpu_pct: f64,
    /// Memory in use minus inactive file pages, in bytes.
    pub memory_bytes: u64,
    /// The container's memory limit, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// The length of the window `cpu_pct` covers, in milliseconds.
    pub window_ms: u64,
    /// How the counters were read: `cgroup` or `docker-stats`.
    pub via: String,
}

/// A task a node sampler could not measure, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub task_id: String,
    pub service_id: String,
    pub reason: String,
}

/// One step of a node sampler: everything it measured on its node. The body an agent posts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The swarm node id of the engine sampled.
    pub node_id: String,
    /// The sampler's interval, in milliseconds: how soon the next report is due.
    pub interval_ms: u64,
    #[serde(default)]
    pub readings: Vec<TaskReading>,
    #[serde(default)]
    pub failures: Vec<TaskFailure>,
}

/// The registry's answer to an agent's report: the services it wants measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAnswer {
    /// Ids of the registered services; readings of other services are refused.
    pub services: Vec<String>,
}

/// What the board knows about one task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskLookup {
    Reading(TaskReading),
    /// The node's sampler could not measure it.
    Failed(String),
    /// The node reports, but not this task (it started after the node's last step).
    NotReported,
    /// No live sampler on the task's node.
    NoAgent,
}

/// One node's sampler as /health and /metrics show it (fields in the JSON's sorted order).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStatus {
    /// `true` for the registry's own node, sampled in process.
    pub in_process: bool,
    pub interval_ms: u64,
    /// When the last report arrived.
    pub last_contact_ms: i64,
    pub live: bool,
    pub node_id: String,
    pub tasks_reported: usize,
}

/// Why an agent's report was refused, for the rejection counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The body is not a report (bad JSON, missing fields, bad values).
    Malformed,
    /// A reading names a service the registry does not track.
    UnknownTask,
    /// The API token is missing or wrong.
    Unauthorized,
}

impl Rejection {
    pub const ALL: [Rejection; 3] = [
        Rejection::Malformed,
        Rejection::UnknownTask,
        Rejection::Unauthorized,
    ];

    /// The label value on /metrics.
    pub fn name(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::UnknownTask => "unknown_task",
            Rejection::Unauthorized => "unauthorized",
        }
    }
}

struct NodeEntry {
    in_process: bool,
    last_contact: Timestamp,
    received: Instant,
    interval: Duration,
    readings: HashMap<String, TaskReading>,
    failures: HashMap<String, TaskFailure>,
}

impl NodeEntry {
    fn is_live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.received) <= self.interval * STALE_INTERVALS
    }
}

/// The board. Shared by the node samplers, the agent endpoint and the metrics rounds.
#[derive(Default)]
pub struct NodeReadings {
    nodes: Mutex<HashMap<String, NodeEntry>>,
    /// Agent reports accepted.
    pub reports_accepted: AtomicU64,
    rejected: [AtomicU64; 3],
}

impl std::fmt::Debug for NodeReadings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeReadings")
            .field("nodes", &self.nodes().len())
            .finish()
    }
}

impl NodeReadings {
    /// Replace `report.node_id`'s entry with this report.
    pub fn record(&self, report: NodeReport, in_process: bool) {
        let entry = NodeEntry {
            in_process,
            last_contact: Timestamp::now(),
            received: Instant::now(),
            interval: Duration::from_millis(report.interval_ms.clamp(1, MAX_INTERVAL_MS)),
            readings: report
                .readings
                .into_iter()
                .map(|r| (r.task_id.clone(), r))
                .collect(),
            failures: report
                .failures
                .into_iter()
                .map(|f| (f.task_id.clone(), f))
                .collect(),
        };
        self.lock().insert(report.node_id, entry);
    }

    /// What is known about `task_id` on `node_id` now.
    pub fn lookup(&self, node_id: &str, task_id: &str) -> TaskLookup {
        let nodes = self.lock();
        let Some(node) = nodes.get(node_id).filter(|n| n.is_live(Instant::now())) else {
            return TaskLookup::NoAgent;
        };
        if let Some(reading) = node.readings.get(task_id) {
            return TaskLookup::Reading(reading.clone());
        }
        match node.failures.get(task_id) {
            Some(failure) => TaskLookup::Failed(failure.reason.clone()),
            None => TaskLookup::NotReported,
        }
    }

    /// Whether `node_id` is the registry's own node, sampled in process.
    pub fn is_in_process(&self, node_id: &str) -> bool {
        self.lock().get(node_id).is_some_and(|n| n.in_process)
    }

    /// The latest readings of one service's tasks on every live node, by node id.
    pub fn readings_of(&self, service_id: &str) -> Vec<(String, TaskReading)> {
        let now = Instant::now();
        let mut found: Vec<(String, TaskReading)> = self
            .lock()
            .iter()
            .filter(|(_, node)| node.is_live(now))
            .flat_map(|(id, node)| {
                node.readings
                    .values()
                    .filter(|r| r.service_id == service_id)
                    .map(move |r| (id.clone(), r.clone()))
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Forget the readings of services that are no longer registered.
    pub fn retain_services(&self, registered: &HashSet<String>) {
        for node in self.lock().values_mut() {
            node.readings
                .retain(|_, r| registered.contains(&r.service_id));
            node.failures
                .retain(|_, f| registered.contains(&f.service_id));
        }
    }

    /// Every node that ever reported, by node id.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let now = Instant::now();
        let mut nodes: Vec<NodeStatus> = self
            .lock()
            .iter()
            .map(|(id, n)| NodeStatus {
                in_process: n.in_process,
                interval_ms: u64::try_from(n.interval.as_millis()).unwrap_or(u64::MAX),
                last_contact_ms: n.last_contact.0,
                live: n.is_live(now),
                node_id: id.clone(),
                tasks_reported: n.readings.len() + n.failures.len(),
            })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        nodes
    }

    pub fn reject(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, why: Rejection) -> u64 {
        self.rejected[why as usize].load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeEntry>> {
        // A panic while holding the lock cannot leave an entry half-written (inserts and
        // retains are whole operations), so a poisoned board is still a good board.
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Check an agent's report before it is recorded: a plausible node id and interval, figures
/// that are numbers, and only tasks of `registered` services. The error names the problem.
pub fn validate(
    report: &NodeReport,
    registered: &HashSet<String>,
) -> Result<(), (Rejection, String)> {
    let malformed = |m: String| Err((Rejection::Malformed, m));
    if report.node_id.is_empty() || report.node_id.len() > 128 {
        return malformed("node_id must be 1 to 128 characters".to_owned());
    }
    if report.interval_ms == 0 || report.interval_ms > MAX_INTERVAL_MS {
        return malformed(format!(
            "interval_ms must be between 1 and {MAX_INTERVAL_MS}"
        ));
    }
    for r in &report.readings {
        if r.task_id.is_empty() {
            return malformed("a reading has an empty task_id".to_owned());
        }
        if !r.cpu_pct.is_finite() || r.cpu_pct < 0.0 {
            return malformed(format!("task {}: cpu_pct must be a number >= 0", r.task_id));
        }
    }
    let unknown: Vec<&str> = report
        .readings
        .iter()
        .map(|r| r.service_id.as_str())
        .chain(report.failures.iter().map(|f| f.service_id.as_str()))
        .filter(|s| !registered.contains(*s))
        .collect();
    if let Some(first) = unknown.first() {
        return Err((
            Rejection::UnknownTask,
            format!(
                "{} reading(s) of tasks of services this registry does not track (first: {first})",
                unknown.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn reading(task: &str, service: &str) -> TaskReading {
        TaskReading {
            task_id: task.into(),
            service_id: service.into(),
            cpu_pct: 50.0,
            memory_bytes: 10,
            memory_limit: None,
            window_ms: 1000,
            via: "cgroup".into(),
        }
    }

    fn report(node: &str, readings: Vec<TaskReading>) -> NodeReport {
        NodeReport {
            node_id: node.into(),
            interval_ms: 1000,
            readings,
            failures: vec![TaskFailure {
                task_id: "tf".into(),
                service_id: "s1".into(),
                reason: "stats failed".into(),
            }],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_follow_liveness_and_registration() {
        let board = NodeReadings::default();
        assert_eq!(board.lookup("n1", "t1"), TaskLookup::NoAgent);
        board.record(
            report("n1", vec![reading("t1", "s1"), reading("t2", "s2")]),
            false,
        );
        assert!(matches!(board.lookup("n1", "t1"), TaskLookup::Reading(r) if r.cpu_pct == 50.0));
        assert_eq!(board.lookup("n1", "t9"), TaskLookup::NotReported);
        assert_eq!(
            board.lookup("n1", "tf"),
            TaskLookup::Failed("stats failed".into())
        );
        assert_eq!(board.lookup("n2", "t1"), TaskLookup::NoAgent);

        assert_eq!(board.readings_of("s2").len(), 1);
        board.retain_services(&HashSet::from(["s1".to_owned()]));
        assert!(board.readings_of("s2").is_empty());
        assert_eq!(board.lookup("n1", "t2"), TaskLookup::NotReported);
        assert_eq!(board.nodes()[0].tasks_reported, 2);

        tokio::time::advance(Duration::from_millis(3000)).await;
        assert!(board.nodes()[0].live, "three intervals still count");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(board.lookup("n1", "t1"), TaskLookup::NoAgent);
        assert!(!board.nodes()[0].live);
    }

    #[test]
    fn reports_are_validated() {
        let registered = HashSet::from(["s1".to_owned()]);
        assert_eq!(
            validate(&report("n1", vec![reading("t1", "s1")]), &registered),
            Ok(())
        );
        let (why, text) =
            validate(&report("n1", vec![reading("t1", "zz")]), &registered).unwrap_err();
        assert_eq!(why, Rejection::UnknownTask);
        assert!(text.contains("zz"), "{text}");
        let mut bad = report("", vec![]);
        assert_eq!(
            validate(&bad, &registered).unwrap_err().0,
            Rejection::Malformed
        );
        bad.node_id = "n".into();
        bad.interval_ms = 0;
        assert_eq!(
            validate(&bad, &registered).unwrap_err().0,
            Rejection::Malformed
        );
        let mut nan = reading("t1", "s1");
        nan.cpu_pct = -1.0;
        assert_eq!(
            validate(&report("n1", vec![nan]), &registered)
                .unwrap_err()
                .0,
            Rejection::Malformed
        );
        let parsed: Result<NodeReport, _> = serde_json::from_str(r#"{"node_id":"n"}"#);
        assert!(parsed.is_err(), "interval_ms is required");
    }
}
