//! The simulated swarm: nodes, services, their tasks and containers, and the engine's event
//! history. One `World` sits behind one lock, so a change and its event are one step: a client
//! that sees the event and then lists sees the change.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::clock::{rfc3339, unix_nanos_now};
use crate::filters::{FilterError, Filters};
use crate::rng::SimRng;
use crate::Scenario;

/// Labels swarm puts on a task's container.
pub const SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";
pub const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";
pub const TASK_ID_LABEL: &str = "com.docker.swarm.task.id";
pub const TASK_NAME_LABEL: &str = "com.docker.swarm.task.name";
pub const NODE_ID_LABEL: &str = "com.docker.swarm.node.id";

/// The label prefix the simulated services use (the registry's default LABEL_PREFIX).
pub const LABEL_PREFIX: &str = "autoscaler";

/// Events kept for `since` replays: dockerd keeps its last 256, and so does the simulation, so a
/// client that resumes after a long gap loses events exactly as it would against dockerd.
pub const EVENT_HISTORY: usize = 256;
/// Events buffered for each live subscriber; one that falls further behind is cut off (and
/// resumes with `since`), as dockerd drops subscribers that do not keep up.
pub const LIVE_BUFFER: usize = 8192;
/// The image every simulated service runs.
pub const IMAGE: &str = "local/sim:1";
/// CPUs of every simulated node (the `online_cpus` of stats).
pub const ONLINE_CPUS: u64 = 2;
/// The creation time of the seeded world (2026-01-01T00:00:00Z): fixed, so a seed renders the
/// same documents in every run.
const WORLD_EPOCH_NANOS: i64 = 1_767_225_600_000_000_000;

/// One swarm node.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub hostname: String,
}

/// One running task and its container.
#[derive(Debug, Clone)]
pub struct SimTask {
    pub id: String,
    pub slot: u64,
    pub node_id: String,
    pub container_id: String,
    /// The CPU the container burns, in cores (1.0: one core busy, `docker stats` shows 100 %).
    pub cores: f64,
    /// Memory in use (after inactive file pages), bytes.
    pub memory_used: u64,
    /// CPU time the container had used at `started`, nanoseconds.
    pub cpu_at_start: u64,
    /// When the container started on the simulation's clock (nanoseconds since its origin).
    pub started: u64,
    pub created_at: String,
    /// `created_at` in Unix nanoseconds.
    pub created_nanos: i64,
    pub pid: u64,
    /// The task document as `GET /tasks` lists it.
    pub doc: String,
}

/// One service with its tasks.
#[derive(Debug, Clone)]
pub struct SimService {
    /// The number in the service's name (`sim-00042`); never reused.
    pub number: u64,
    pub id: String,
    pub name: String,
    /// Whether it carries `autoscaler.enabled=true` (and valid scaling labels).
    pub labelled: bool,
    pub labels: BTreeMap<String, String>,
    pub replicas: u64,
    pub memory_limit: u64,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub tasks: Vec<SimTask>,
    /// The service document as an inspect answers it, and as `GET /services?status=true`
    /// lists it (with `ServiceStatus`).
    doc: String,
    doc_with_status: String,
}

/// One event of the engine's history, with its line as `/events` writes it.
#[derive(Debug, Clone)]
pub struct SimEvent {
    pub time_nano: i64,
    /// `service` or `container`.
    pub typ: &'static str,
    pub action: &'static str,
    pub actor_id: String,
    pub attributes: BTreeMap<String, String>,
    /// The JSON line, newline included.
    pub line: Bytes,
}

/// What one churn step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChurnStep {
    Created { id: String },
    Updated { id: String },
    Removed { id: String },
}

/// The simulated swarm.
pub struct World {
    scenario: Scenario,
    rng: SimRng,
    pub nodes: Vec<Node>,
    pub services: BTreeMap<String, SimService>,
    /// Ids of the services churn acts on (the labelled ones, or all unlabelled ones when the
    /// scenario labels none), for picking one in constant time.
    churnable: Vec<String>,
    churn_target: usize,
    churn_labelled: bool,
    next_number: u64,
    /// Swarm's store version, bumped by every change (services' `Version.Index`).
    index: u64,
    history: VecDeque<Arc<SimEvent>>,
    pub events_emitted: u64,
    last_time_nano: i64,
    live: broadcast::Sender<Arc<SimEvent>>,
    origin: Instant,
}

impl World {
    /// The world a scenario's seed describes.
    pub fn new(scenario: Scenario) -> World {
        let mut rng = SimRng::new(scenario.seed);
        let nodes: Vec<Node> = (0..scenario.nodes.max(1))
            .map(|i| Node {
                id: rng.swarm_id(),
                hostname: format!("sim-node-{i}"),
            })
            .collect();
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let n = scenario.services as u64;
        let labelled_total = labelled_count(scenario.services, scenario.labelled_share) as u64;
        let mut world = World {
            scenario,
            rng,
            nodes,
            services: BTreeMap::new(),
            churnable: Vec::new(),
            churn_target: 0,
            churn_labelled: labelled_total > 0,
            next_number: 0,
            index: 10,
            history: VecDeque::with_capacity(EVENT_HISTORY),
            events_emitted: 0,
            last_time_nano: 0,
            live,
            origin: Instant::now(),
        };
        for i in 0..n {
            // Spread the labelled ones evenly: service i is labelled when the running count
            // of labelled services steps up at i.
            let labelled = (i + 1) * labelled_total / n.max(1) != i * labelled_total / n.max(1);
            let at = WORLD_EPOCH_NANOS + i64::try_from(i).unwrap_or(0) * 1_000_000_000;
            world.add_service(labelled, at, 0);
        }
        world.churn_target = world.churnable.len();
        world
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The node whose engine this is: the one `/info` names, whose containers are listed.
    pub fn local_node(&self) -> &Node {
        &self.nodes[0]
    }

    /// Nanoseconds since the simulation started, on the monotonic clock.
    pub fn elapsed_nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn labelled(&self) -> usize {
        self.services.values().filter(|s| s.labelled).count()
    }

    /// A new service with seeded labels and tasks, created at `at` (Unix nanoseconds).
    fn add_service(&mut self, labelled: bool, at: i64, started: u64) -> String {
        let number = self.next_number;
        self.next_number += 1;
        let id = self.rng.swarm_id();
        let name = format!("sim-{number:05}");
        let mut labels = BTreeMap::new();
        labels.insert("sim.group".to_owned(), format!("g{}", number % 7));
        if labelled {
            let rng = &mut self.rng;
            let min = rng.between(1, 3);
            let p = |key: &str| format!("{LABEL_PREFIX}.{key}");
            labels.insert(p("enabled"), "true".to_owned());
            let metric = if rng.below(2) == 0 { "cpu" } else { "memory" };
            labels.insert(p("metric"), metric.to_owned());
            labels.insert(p("cpu.threshold"), rng.between(10, 95).to_string());
            labels.insert(p("memory.threshold"), rng.between(10, 95).to_string());
            labels.insert(p("min"), min.to_string());
            labels.insert(p("max"), (min + rng.between(1, 8)).to_string());
        } else if number % 3 == 0 {
            labels.insert(format!("{LABEL_PREFIX}.enabled"), "false".to_owned());
        }
        let memory_limit = [256u64, 512, 1024][self.rng.below(3) as usize] << 20;
        self.index += 1;
        let created_at = rfc3339(at);
        let mut service = SimService {
            number,
            id: id.clone(),
            name,
            labelled,
            labels,
            replicas: self.scenario.tasks_per_service,
            memory_limit,
            version: self.index,
            created_at: created_at.clone(),
            updated_at: created_at,
            tasks: Vec::new(),
            doc: String::new(),
            doc_with_status: String::new(),
        };
        let wanted = service.replicas;
        self.fit_tasks(&mut service, wanted, at, started);
        service.render();
        if labelled == self.churn_labelled {
            self.churnable.push(id.clone());
        }
        self.services.insert(id.clone(), service);
        id
    }

    /// Add or drop tasks (from the highest slot) until the service has `wanted` of them.
    fn fit_tasks(&mut self, service: &mut SimService, wanted: u64, at: i64, started: u64) {
        service
            .tasks
            .truncate(usize::try_from(wanted).unwrap_or(usize::MAX));
        while (service.tasks.len() as u64) < wanted {
            let slot = service.tasks.len() as u64 + 1;
            let node =
                &self.nodes[((service.number + slot - 1) % self.nodes.len() as u64) as usize];
            let rng = &mut self.rng;
            let mut task = SimTask {
                id: rng.swarm_id(),
                slot,
                node_id: node.id.clone(),
                container_id: rng.container_id(),
                cores: rng.between(1, 150) as f64 / 100.0,
                memory_used: rng.between(16, 200) << 20,
                cpu_at_start: rng.between(1, 1000) * 1_000_000,
                started,
                created_at: rfc3339(at),
                created_nanos: at,
                pid: rng.between(1000, 60_000),
                doc: String::new(),
            };
            task.doc = task_doc(service, &task, self.index).to_string();
            service.tasks.push(task);
        }
    }

    /// Record an event at the present time and hand it to live subscribers.
    fn emit(
        &mut self,
        typ: &'static str,
        action: &'static str,
        actor_id: &str,
        attributes: BTreeMap<String, String>,
    ) {
        // Strictly increasing times, so `since` = an event's time names exactly it and after.
        let time_nano = unix_nanos_now().max(self.last_time_nano + 1);
        self.last_time_nano = time_nano;
        let scope = if typ == "container" { "local" } else { "swarm" };
        let mut body = json!({
            "Type": typ,
            "Action": action,
            "Actor": {"ID": actor_id, "Attributes": attributes},
            "scope": scope,
            "time": time_nano.div_euclid(1_000_000_000),
            "timeNano": time_nano,
        });
        if typ == "container" {
            body["status"] = json!(action);
            body["id"] = json!(actor_id);
            body["from"] = json!(IMAGE);
        }
        let mut line = body.to_string();
        line.push('\n');
        let event = Arc::new(SimEvent {
            time_nano,
            typ,
            action,
            actor_id: actor_id.to_owned(),
            attributes,
            line: Bytes::from(line),
        });
        if self.history.len() == EVENT_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(event.clone());
        self.events_emitted += 1;
        // No subscriber is not an error: the event is in the history.
        let _ = self.live.send(event);
    }

    /// The history from `since` (inclusive) to `until` (inclusive), and a subscription to every
    /// later event: taken together, so no event falls between them.
    pub fn subscribe(
        &self,
        since: Option<i64>,
        until: Option<i64>,
    ) -> (Vec<Arc<SimEvent>>, broadcast::Receiver<Arc<SimEvent>>) {
        let past = match since {
            Some(since) => self
                .history
                .iter()
                .filter(|e| e.time_nano >= since && until.is_none_or(|u| e.time_nano <= u))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (past, self.live.subscribe())
    }

    /// The newest event, for a stream that must cut one in half.
    pub fn last_event(&self) -> Option<Arc<SimEvent>> {
        self.history.back().cloned()
    }

    /// One seeded change: create, update or remove a service, keeping their number near the
    /// scenario's. Every update changes a field the registry reports.
    pub fn churn(&mut self) -> ChurnStep {
        let roll = self.rng.below(4);
        let count = self.churnable.len();
        let create = count == 0
            || (count < self.churn_target && roll < 2)
            || (count == self.churn_target && roll == 0);
        let remove = !create
            && ((count > self.churn_target && roll < 2)
                || (count == self.churn_target && roll == 1));
        let now = unix_nanos_now();
        if create {
            let started = self.elapsed_nanos();
            let id = self.add_service(self.churn_labelled, now, started);
            let name = self.services.get(&id).map(|s| s.name.clone());
            self.emit("service", "create", &id, name_attribute(name));
            return ChurnStep::Created { id };
        }
        let pick = self.rng.below(count as u64) as usize;
        if remove {
            let id = self.churnable.swap_remove(pick);
            let name = self.services.remove(&id).map(|s| s.name);
            self.index += 1;
            self.emit("service", "remove", &id, name_attribute(name));
            return ChurnStep::Removed { id };
        }
        let id = self.churnable[pick].clone();
        let attributes = self.update(&id, now);
        self.emit("service", "update", &id, attributes);
        ChurnStep::Updated { id }
    }

    /// Change one thing of a service's spec; the event's attributes.
    fn update(&mut self, id: &str, now: i64) -> BTreeMap<String, String> {
        let Some(mut service) = self.services.remove(id) else {
            return BTreeMap::new();
        };
        let mut attributes = name_attribute(Some(service.name.clone()));
        let kind = if service.labelled {
            self.rng.below(4)
        } else {
            4
        };
        let p = |key: &str| format!("{LABEL_PREFIX}.{key}");
        let mut relabel = |labels: &mut BTreeMap<String, String>, key: String, low, high| {
            let old: u64 = labels.get(&key).and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut new = self.rng.between(low, high);
            if new == old {
                new = if new == high { low } else { new + 1 };
            }
            labels.insert(key, new.to_string());
        };
        match kind {
            0 => relabel(&mut service.labels, p("cpu.threshold"), 10, 95),
            1 => relabel(&mut service.labels, p("memory.threshold"), 10, 95),
            2 => {
                let min: u64 = service
                    .labels
                    .get(&p("min"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                relabel(&mut service.labels, p("max"), min + 1, min + 9);
            }
            3 => {
                let old = service.replicas;
                let high = self.scenario.tasks_per_service.max(1) + 2;
                let mut new = self.rng.between(0, high);
                if new == old {
                    new = if new == high { 0 } else { new + 1 };
                }
                service.replicas = new;
                let started = self.elapsed_nanos();
                self.index += 1;
                self.fit_tasks(&mut service, new, now, started);
                attributes.insert("replicas.old".to_owned(), old.to_string());
                attributes.insert("replicas.new".to_owned(), new.to_string());
            }
            _ => {
                let revision = service
                    .labels
                    .get("sim.revision")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                service
                    .labels
                    .insert("sim.revision".to_owned(), (revision + 1).to_string());
            }
        }
        self.index += 1;
        service.version = self.index;
        service.updated_at = rfc3339(now);
        service.render();
        self.services.insert(id.to_owned(), service);
        attributes
    }

    /// `GET /services`: the services the filters admit (id and name by prefix, label, mode).
    pub fn services_json(&self, filters: &Filters, status: bool) -> Result<String, FilterError> {
        known_keys(filters, &["id", "name", "label", "mode"])?;
        let mut out = String::from("[");
        for service in self.services.values() {
            let admitted = filters.admits("id", |v| service.id.starts_with(v))
                && filters.admits("name", |v| service.name.starts_with(v))
                && filters.admits("mode", |v| v == "replicated")
                && filters.admits_labels(|k| service.labels.get(k).map(String::as_str));
            if admitted {
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(if status {
                    &service.doc_with_status
                } else {
                    &service.doc
                });
            }
        }
        out.push(']');
        Ok(out)
    }

    /// `GET /services/{id}`: by full id, name, or unique id prefix, as dockerd looks it up.
    pub fn service_json(&self, key: &str) -> Option<String> {
        if let Some(s) = self.services.get(key) {
            return Some(s.doc.clone());
        }
        if let Some(s) = self.services.values().find(|s| s.name == key) {
            return Some(s.doc.clone());
        }
        let mut prefixed = self.services.values().filter(|s| s.id.starts_with(key));
        match (prefixed.next(), prefixed.next()) {
            (Some(s), None) if !key.is_empty() => Some(s.doc.clone()),
            _ => None,
        }
    }

    /// `GET /tasks`: filters service (id or name), node (id or hostname), desired-state, id
    /// (prefix), name, label. Every simulated task is running and meant to run.
    pub fn tasks_json(&self, filters: &Filters) -> Result<String, FilterError> {
        known_keys(
            filters,
            &["service", "node", "desired-state", "id", "name", "label"],
        )?;
        if !filters.admits("desired-state", |v| v == "running") || !filters.admits_labels(|_| None)
        {
            return Ok("[]".to_owned());
        }
        let hostname = |node_id: &str| {
            self.nodes
                .iter()
                .find(|n| n.id == node_id)
                .map(|n| n.hostname.as_str())
        };
        let mut out = String::from("[");
        // With a service filter, look those services up instead of scanning them all.
        let scan: Vec<&SimService> = match filters.values("service") {
            Some(wanted) => self
                .services
                .values()
                .filter(|s| wanted.iter().any(|w| *w == s.id || *w == s.name))
                .collect(),
            None => self.services.values().collect(),
        };
        for service in scan {
            for task in &service.tasks {
                let task_name = format!("{}.{}", service.name, task.slot);
                let admitted = filters.admits("node", |v| {
                    v == task.node_id || Some(v) == hostname(&task.node_id)
                }) && filters.admits("id", |v| task.id.starts_with(v))
                    && filters.admits("name", |v| v == task_name);
                if admitted {
                    if out.len() > 1 {
                        out.push(',');
                    }
                    out.push_str(&task.doc);
                }
            }
        }
        out.push(']');
        Ok(out)
    }

    /// The tasks whose containers run on this engine's node, with their services.
    fn local_tasks(&self) -> impl Iterator<Item = (&SimService, &SimTask)> {
        let local = self.local_node().id.as_str();
        self.services.values().flat_map(move |s| {
            s.tasks
                .iter()
                .filter(move |t| t.node_id == local)
                .map(move |t| (s, t))
        })
    }

    /// A container on this engine by full id or unique prefix.
    fn local_container(&self, key: &str) -> Option<(&SimService, &SimTask)> {
        if key.is_empty() {
            return None;
        }
        let mut found = self
            .local_tasks()
            .filter(|(_, t)| t.container_id.starts_with(key));
        match (found.next(), found.next()) {
            (Some(hit), None) => Some(hit),
            _ => None,
        }
    }

    /// `GET /containers/json`: this node's task containers (all running); filters label, status,
    /// id (prefix), name.
    pub fn containers_json(&self, filters: &Filters) -> Result<String, FilterError> {
        known_keys(filters, &["label", "status", "id", "name"])?;
        let items: Vec<Value> = self
            .local_tasks()
            .filter(|(s, t)| {
                let labels = container_labels(s, t);
                let name = container_name(s, t);
                filters.admits("status", |v| v == "running")
                    && filters.admits("id", |v| t.container_id.starts_with(v))
                    && filters.admits("name", |v| name.contains(v))
                    && filters.admits_labels(|k| labels.get(k).map(String::as_str))
            })
            .map(|(s, t)| container_summary(s, t))
            .collect();
        Ok(Value::Array(items).to_string())
    }

    /// `GET /containers/{id}/json`.
    pub fn container_inspect_json(&self, key: &str) -> Option<String> {
        let (s, t) = self.local_container(key)?;
        Some(container_inspect(s, t).to_string())
    }

    /// `GET /containers/{id}/stats`: the container's counters now. The container burns its
    /// cores steadily, so `docker stats` (and the registry) read `cores` × 100 % from any two
    /// readings. `previous` fills `precpu_stats` (streamed readings after the first).
    pub fn container_stats(&self, key: &str, previous: Option<&Value>) -> Option<(String, Value)> {
        let (s, t) = self.local_container(key)?;
        let elapsed = self.elapsed_nanos();
        let since_start = elapsed.saturating_sub(t.started) as f64;
        let cpu_total = t.cpu_at_start + (t.cores * since_start) as u64;
        // The host's CPU time: every CPU, since the simulation began (plus an arbitrary past).
        let system = ONLINE_CPUS * (elapsed + 3_600_000_000_000);
        let inactive_file = 4 << 20;
        let cpu_stats = json!({
            "cpu_usage": {
                "total_usage": cpu_total,
                "usage_in_kernelmode": cpu_total / 10,
                "usage_in_usermode": cpu_total - cpu_total / 10,
            },
            "system_cpu_usage": system,
            "online_cpus": ONLINE_CPUS,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        });
        let empty_cpu = json!({
            "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        });
        let now = unix_nanos_now();
        let body = json!({
            "read": rfc3339(now),
            "preread": if previous.is_some() { rfc3339(now - 1_000_000_000) } else { "0001-01-01T00:00:00Z".to_owned() },
            "pids_stats": {"current": 1},
            "num_procs": 0,
            "storage_stats": {},
            "cpu_stats": cpu_stats,
            "precpu_stats": previous.cloned().unwrap_or(empty_cpu),
            "memory_stats": {
                "usage": t.memory_used + inactive_file,
                "max_usage": t.memory_used + 2 * inactive_file,
                "stats": {
                    "inactive_file": inactive_file,
                    "total_inactive_file": inactive_file,
                    "rss": t.memory_used,
                    "total_rss": t.memory_used,
                    "cache": inactive_file,
                },
                "limit": s.memory_limit,
            },
            "name": format!("/{}", container_name(s, t)),
            "id": t.container_id,
        });
        Some((body.to_string(), cpu_stats))
    }
}

/// How many of `services` a share labels (rounded to the nearest, clamped to 0..=services).
pub fn labelled_count(services: usize, share: f64) -> usize {
    let share = if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((services as f64) * share).round() as usize
}

fn name_attribute(name: Option<String>) -> BTreeMap<String, String> {
    name.map(|n| BTreeMap::from([("name".to_owned(), n)]))
        .unwrap_or_default()
}

/// Reject filter keys an endpoint does not know, as dockerd does ("invalid filter 'x'").
fn known_keys(filters: &Filters, known: &[&str]) -> Result<(), FilterError> {
    match filters.keys().find(|k| !known.contains(k)) {
        Some(key) => Err(FilterError {
            text: key.to_owned(),
            reason: "not a filter of this endpoint".to_owned(),
        }),
        None => Ok(()),
    }
}

impl SimService {
    /// Render the documents once per change: lists of thousands of services then cost a copy.
    fn render(&mut self) {
        let mut doc = json!({
            "ID": self.id,
            "Version": {"Index": self.version},
            "CreatedAt": self.created_at,
            "UpdatedAt": self.updated_at,
            "Spec": {
                "Name": self.name,
                "Labels": self.labels,
                "TaskTemplate": task_template(self.memory_limit),
                "Mode": {"Replicated": {"Replicas": self.replicas}},
                "EndpointSpec": {"Mode": "vip"},
            },
            "Endpoint": {"Spec": {}},
        });
        self.doc = doc.to_string();
        doc["ServiceStatus"] = json!({
            "RunningTasks": self.tasks.len(),
            "DesiredTasks": self.replicas,
            "CompletedTasks": 0,
        });
        self.doc_with_status = doc.to_string();
    }
}

fn task_template(memory_limit: u64) -> Value {
    json!({
        "ContainerSpec": {
            "Image": IMAGE,
            "Args": ["sleep", "infinity"],
            "Init": false,
            "DNSConfig": {},
            "Isolation": "default",
        },
        "Resources": {"Limits": {"MemoryBytes": memory_limit}, "Reservations": {}},
        "Placement": {},
        "ForceUpdate": 0,
        "Runtime": "container",
    })
}

fn task_doc(service: &SimService, task: &SimTask, index: u64) -> Value {
    json!({
        "ID": task.id,
        "Version": {"Index": index},
        "CreatedAt": task.created_at,
        "UpdatedAt": task.created_at,
        "Labels": {},
        "Spec": task_template(service.memory_limit),
        "ServiceID": service.id,
        "Slot": task.slot,
        "NodeID": task.node_id,
        "Status": {
            "Timestamp": task.created_at,
            "State": "running",
            "Message": "started",
            "ContainerStatus": {"ContainerID": task.container_id, "PID": task.pid, "ExitCode": 0},
            "PortStatus": {},
        },
        "DesiredState": "running",
    })
}

fn container_name(service: &SimService, task: &SimTask) -> String {
    format!("{}.{}.{}", service.name, task.slot, task.id)
}

fn container_labels(service: &SimService, task: &SimTask) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NODE_ID_LABEL.to_owned(), task.node_id.clone()),
        (SERVICE_ID_LABEL.to_owned(), service.id.clone()),
        (SERVICE_NAME_LABEL.to_owned(), service.name.clone()),
        ("com.docker.swarm.task".to_owned(), String::new()),
        (TASK_ID_LABEL.to_owned(), task.id.clone()),
        (TASK_NAME_LABEL.to_owned(), container_name(service, task)),
    ])
}

fn container_summary(service: &SimService, task: &SimTask) -> Value {
    json!({
        "Id": task.container_id,
        "Names": [format!("/{}", container_name(service, task))],
        "Image": IMAGE,
        "ImageID": "sha256:5c6d3e0b1f0a4e6b8c1f2d3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c",
        "Command": "sleep infinity",
        "Created": task.created_nanos.div_euclid(1_000_000_000),
        "Ports": [],
        "Labels": container_labels(service, task),
        "State": "running",
        "Status": "Up",
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Networks": {}},
        "Mounts": [],
    })
}

fn container_inspect(service: &SimService, task: &SimTask) -> Value {
    json!({
        "Id": task.container_id,
        "Created": task.created_at,
        "Path": "sleep",
        "Args": ["infinity"],
        "State": {
            "Status": "running",
            "Running": true,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": task.pid,
            "ExitCode": 0,
            "Error": "",
            "StartedAt": task.created_at,
            "FinishedAt": "0001-01-01T00:00:00Z",
        },
        "Image": "sha256:5c6d3e0b1f0a4e6b8c1f2d3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c",
        "Name": format!("/{}", container_name(service, task)),
        "RestartCount": 0,
        "Driver": "overlay2",
        "Platform": "linux",
        "HostConfig": {
            "CgroupParent": "",
            "Memory": service.memory_limit,
            "NanoCpus": 0,
            "NetworkMode": "default",
        },
        "Config": {
            "Hostname": task.container_id.get(..12).unwrap_or_default(),
            "Image": IMAGE,
            "Labels": container_labels(service, task),
            "Cmd": ["sleep", "infinity"],
        },
    })
}
