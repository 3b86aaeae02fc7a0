//! A simulated Docker engine: the part of the Engine API that swarm-registry and its agent use,
//! served over a loopback TCP port or a unix socket, with a seeded world and faults on request.
//!
//! A real one-node swarm cannot hold thousands of services, nor be made to hang an event
//! stream, cut a line in half or stop being a manager on cue. The simulation can: the registry
//! runs against it unchanged (DOCKER_BASE_URL), and benches and tests steer it through
//! [`SimHandle`] in process or the `/_sim/*` endpoints of the same listener (see README.md).

mod clock;
mod filters;
mod rng;
mod server;
mod world;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use clock::{parse_event_time, rfc3339};
pub use filters::{FilterError, Filters};
pub use rng::SimRng;
pub use world::{labelled_count, ChurnStep, World, EVENT_HISTORY, LABEL_PREFIX, ONLINE_CPUS};

/// What world to simulate. The same scenario (seed included) gives the same services, ids,
/// labels, nodes and tasks, and the same sequence of churn steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// How many services the world holds (churn keeps the number near this).
    pub services: usize,
    /// The share of them labelled `autoscaler.enabled=true` with valid scaling labels, 0 to 1.
    pub labelled_share: f64,
    /// Seeded changes (create, update, remove) per second; 0 for none.
    pub churn_per_sec: f64,
    /// Swarm nodes; the first is the engine's own (its containers are the ones listed).
    pub nodes: usize,
    /// Running tasks per service (its desired replicas), spread over the nodes.
    pub tasks_per_service: u64,
    pub seed: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            services: 100,
            labelled_share: 1.0,
            churn_per_sec: 0.0,
            nodes: 1,
            tasks_per_service: 1,
            seed: 1,
        }
    }
}

/// A way the engine misbehaves, until cleared. Several may be on at once (one of each kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// `/info` says the node is a worker; service, task and node calls answer 503
    /// "This node is not a swarm manager", as dockerd does on a worker.
    NotManager,
    /// Event streams (open ones and new ones) send nothing more and never close.
    EventsHang,
    /// Event streams write half a JSON line and close (open ones at once, new ones on opening).
    EventsCutMidLine,
    /// Lists (services, tasks, containers, nodes) and/or event lines are broken JSON.
    MalformedJson {
        #[serde(default = "yes")]
        lists: bool,
        #[serde(default = "yes")]
        events: bool,
    },
    /// Every Engine API answer waits this long first.
    Slow { delay_ms: u64 },
    /// `/version` and `/_ping` report this API version (and requests up to it are accepted).
    UnknownVersion {
        #[serde(default = "unknown_version")]
        version: String,
    },
}

fn yes() -> bool {
    true
}

fn unknown_version() -> String {
    "9.99".to_owned()
}

impl Fault {
    /// The fault's kind as the control endpoint names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::NotManager => "not_manager",
            Fault::EventsHang => "events_hang",
            Fault::EventsCutMidLine => "events_cut_mid_line",
            Fault::MalformedJson { .. } => "malformed_json",
            Fault::Slow { .. } => "slow",
            Fault::UnknownVersion { .. } => "unknown_version",
        }
    }
}

/// The faults in force, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    by_kind: BTreeMap<&'static str, Fault>,
}

impl Faults {
    pub fn get(&self, kind: &str) -> Option<&Fault> {
        self.by_kind.get(kind)
    }

    pub fn is_on(&self, kind: &str) -> bool {
        self.by_kind.contains_key(kind)
    }

    pub fn active(&self) -> Vec<Fault> {
        self.by_kind.values().cloned().collect()
    }

    fn malformed(&self) -> (bool, bool) {
        match self.get("malformed_json") {
            Some(Fault::MalformedJson { lists, events }) => (*lists, *events),
            _ => (false, false),
        }
    }

    pub fn malformed_lists(&self) -> bool {
        self.malformed().0
    }

    pub fn malformed_events(&self) -> bool {
        self.malformed().1
    }

    pub fn delay_ms(&self) -> Option<u64> {
        match self.get("slow") {
            Some(Fault::Slow { delay_ms }) => Some(*delay_ms),
            _ => None,
        }
    }

    pub fn reported_version(&self) -> Option<&str> {
        match self.get("unknown_version") {
            Some(Fault::UnknownVersion { version }) => Some(version),
            _ => None,
        }
    }
}

/// What the simulation has done so far (`GET /_sim/stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimStats {
    pub services: usize,
    pub labelled: usize,
    pub tasks: usize,
    pub nodes: usize,
    pub events_emitted: u64,
    pub churn_per_sec: f64,
    pub faults: Vec<Fault>,
    /// Requests answered per route (`services`, `events`, `container_stats`, ...).
    pub requests: BTreeMap<String, u64>,
}

/// Why the simulation could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on '{0}': give tcp://HOST:PORT or unix:///PATH")]
    BadAddress(String),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
}

/// What the listener's tasks share.
pub(crate) struct Shared {
    pub world: Mutex<World>,
    pub faults: watch::Sender<Faults>,
    pub churn: watch::Sender<f64>,
    pub requests: Mutex<BTreeMap<&'static str, u64>>,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// The world, even after a panic elsewhere poisoned its lock (its state is still whole:
    /// every change is made on a copy and put back in one step).
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    pub fn count(&self, route: &'static str) {
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        *requests.entry(route).or_insert(0) += 1;
    }

    pub fn set_fault(&self, fault: Fault) {
        self.faults.send_modify(|f| {
            f.by_kind.insert(fault.kind(), fault);
        });
    }

    pub fn clear_faults(&self) {
        self.faults.send_modify(|f| f.by_kind.clear());
    }

    pub fn set_churn(&self, per_sec: f64) {
        let per_sec = if per_sec.is_finite() {
            per_sec.max(0.0)
        } else {
            0.0
        };
        self.churn.send_replace(per_sec);
    }

    pub fn stats(&self) -> SimStats {
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        let world = self.world();
        SimStats {
            services: world.services.len(),
            labelled: world.labelled(),
            tasks: world.services.values().map(|s| s.tasks.len()).sum(),
            nodes: world.nodes.len(),
            events_emitted: world.events_emitted,
            churn_per_sec: *self.churn.borrow(),
            faults: self.faults().active(),
            requests,
        }
    }
}

/// The simulation's entry point.
pub struct Sim;

impl Sim {
    /// Build the scenario's world and serve it on `listen` (`tcp://127.0.0.1:0` for any free
    /// port, or `unix:///path/to.sock`). Churn starts at once at the scenario's rate.
    pub async fn start(listen: &str, scenario: Scenario) -> Result<SimHandle, SimError> {
        let churn = scenario.churn_per_sec;
        let shared = Arc::new(Shared {
            world: Mutex::new(World::new(scenario)),
            faults: watch::Sender::new(Faults::default()),
            churn: watch::Sender::new(0.0),
            requests: Mutex::new(BTreeMap::new()),
            shutdown: CancellationToken::new(),
        });
        shared.set_churn(churn);
        let (url, task) = server::serve(listen, shared.clone()).await?;
        Ok(SimHandle {
            shared,
            url,
            task: Some(task),
        })
    }
}

/// A running simulation. Dropping it stops it (as [`SimHandle::shutdown`] does, without
/// waiting).
pub struct SimHandle {
    shared: Arc<Shared>,
    url: String,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// Where it listens, usable as DOCKER_BASE_URL (`tcp://127.0.0.1:41234`, `unix:///x.sock`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Turn a fault on (replacing one of the same kind).
    pub fn set_fault(&self, fault: Fault) {
        self.shared.set_fault(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Changes per second from now on (0 stops churn).
    pub fn set_churn(&self, per_sec: f64) {
        self.shared.set_churn(per_sec);
    }

    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// One churn step now, whatever the rate: for tests that want a change at a known moment.
    pub fn churn_once(&self) -> ChurnStep {
        self.shared.world().churn()
    }

    /// A service's document as `GET /services/{id}` answers it, by id or name.
    pub fn service(&self, key: &str) -> Option<serde_json::Value> {
        let doc = self.shared.world().service_json(key)?;
        serde_json::from_str(&doc).ok()
    }

    /// The world's service documents (`GET /services?status=true`).
    pub fn services(&self) -> Vec<serde_json::Value> {
        let text = self
            .shared
            .world()
            .services_json(&Filters::default(), true)
            .unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    /// The swarm node ids, the engine's own first.
    pub fn node_ids(&self) -> Vec<String> {
        self.shared
            .world()
            .nodes
            .iter()
            .map(|n| n.id.clone())
            .collect()
    }

    /// Stop listening, end every stream, and wait for the server to finish.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}
