//! The [`Engine`] of a real Docker daemon, through bollard.
//!
//! Conversions from Docker's documents to the domain are pure functions below the client, so
//! their handling of missing or odd fields is unit-tested without a daemon.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerStatsResponse, EventMessage, EventMessageTypeEnum, Service, Task, TaskState,
};
use bollard::query_parameters::{
    EventsOptions, ListServicesOptions, ListTasksOptions, StatsOptions,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use pipeline::{ServiceMode, ServiceSpec};
use tokio::time::Instant;

use super::engine::{
    Engine, EngineError, EngineEvent, EngineIdentity, EventCursor, EventSubject, RunningTask,
    StatsReading,
};
use super::stats::{memory_used, MemoryFigures};

/// The label Swarm puts on the containers of a service's tasks.
const SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";

/// A Docker engine reached through bollard.
#[derive(Clone)]
pub struct BollardEngine {
    docker: Docker,
    address: String,
    timeout: Duration,
}

impl BollardEngine {
    /// A client for `address` (unix://, tcp://, http://, https:// with DOCKER_CERT_PATH).
    /// Nothing is sent yet: the API version is negotiated by [`Engine::identify`].
    pub fn connect(address: &str, timeout: Duration) -> Result<Self, EngineError> {
        // Two rustls crypto providers are linked into this binary, so rustls cannot pick one
        // by itself and a TLS client would panic without a process default. An error only
        // means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let docker = Docker::connect_with_host(address)
            .map_err(|e| EngineError::Unreachable {
                address: address.to_owned(),
                detail: match e {
                    // The daemon removes its socket when it stops: the engine is simply down.
                    DockerError::SocketNotFoundError(path) => format!("no socket at {path}"),
                    other => format!("cannot set up a client: {}", chain(&other)),
                },
            })?
            .with_timeout(timeout.max(Duration::from_secs(1)));
        Ok(BollardEngine {
            docker,
            address: address.to_owned(),
            timeout,
        })
    }

    /// The client, for callers that need more of the API than the source (tests, benches).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn error(&self, what: &str, e: DockerError) -> EngineError {
        engine_error(&self.address, what, e)
    }

    /// Bound a whole request, body included (bollard's own timeout covers headers only).
    async fn bounded<T, F>(&self, what: &str, request: F) -> Result<T, EngineError>
    where
        F: std::future::Future<Output = Result<T, DockerError>>,
    {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result.map_err(|e| self.error(what, e)),
            Err(_) => Err(EngineError::Unreachable {
                address: self.address.clone(),
                detail: format!("no answer to {what} within {:?}", self.timeout),
            }),
        }
    }

    async fn services(&self, id: Option<&str>) -> Result<Vec<ServiceSpec>, EngineError> {
        let filters = id.map(|id| HashMap::from([("id".to_owned(), vec![id.to_owned()])]));
        let options = ListServicesOptions {
            filters,
            status: Some(true),
        };
        let services = self
            .bounded("the service list", self.docker.list_services(Some(options)))
            .await?;
        Ok(services
            .iter()
            .filter_map(|s| match service_spec(s) {
                Ok(spec) => Some(spec),
                Err(reason) => {
                    tracing::warn!(address = %self.address, "skipping a service: {reason}");
                    None
                }
            })
            .collect())
    }
}

impl Engine for BollardEngine {
    fn address(&self) -> &str {
        &self.address
    }

    fn identify(&self) -> BoxFuture<'_, Result<EngineIdentity, EngineError>> {
        async move {
            // Negotiation updates the version shared by every clone of the client.
            let docker = self
                .bounded(
                    "the version request",
                    self.docker.clone().negotiate_version(),
                )
                .await?;
            let info = self.bounded("the info request", docker.info()).await?;
            let swarm = info.swarm.unwrap_or_default();
            let active = swarm
                .local_node_state
                .is_some_and(|s| s.to_string() == "active");
            match (active, swarm.control_available, swarm.node_id) {
                (true, Some(true), Some(node_id)) if !node_id.is_empty() => Ok(EngineIdentity {
                    api_version: docker.client_version().to_string(),
                    node_id,
                }),
                _ => Err(EngineError::NotManager {
                    address: self.address.clone(),
                }),
            }
        }
        .boxed()
    }

    fn list_services(&self) -> BoxFuture<'_, Result<Vec<ServiceSpec>, EngineError>> {
        self.services(None).boxed()
    }

    fn inspect_service<'a>(
        &'a self,
        service_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ServiceSpec>, EngineError>> {
        // A list filtered by id, not GET /services/{id}: only lists report task counts. The
        // filter matches id prefixes, so pick the exact id.
        async move {
            let specs = self.services(Some(service_id)).await?;
            Ok(specs.into_iter().find(|s| s.id == service_id))
        }
        .boxed()
    }

    fn events(
        &self,
        since: Option<EventCursor>,
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        let filters = HashMap::from([
            (
                "type".to_owned(),
                vec!["service".to_owned(), "container".to_owned()],
            ),
            // Service create, update and remove; task containers starting and dying. Docker
            // matches actions across both types, so a container's create and remove pass too
            // (and are ignored).
            (
                "event".to_owned(),
                ["create", "update", "remove", "start", "die"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ]);
        let options = EventsOptions {
            since: since.map(EventCursor::as_since),
            until: None,
            filters: Some(filters),
        };
        let address = self.address.clone();
        self.docker
            .events(Some(options))
            .map(move |item| {
                item.map(|message| engine_event(&message))
                    .map_err(|e| engine_error(&address, "the event stream", e))
            })
            .boxed()
    }

    fn running_tasks<'a>(
        &'a self,
        service_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RunningTask>, EngineError>> {
        async move {
            let filters = HashMap::from([
                ("service".to_owned(), vec![service_id.to_owned()]),
                ("desired-state".to_owned(), vec!["running".to_owned()]),
            ]);
            let options = ListTasksOptions {
                filters: Some(filters),
            };
            let tasks = self
                .bounded("the task list", self.docker.list_tasks(Some(options)))
                .await?;
            Ok(tasks
                .iter()
                .filter(|t| t.service_id.as_deref() == Some(service_id))
                .filter_map(running_task)
                .collect())
        }
        .boxed()
    }

    fn container_stats<'a>(
        &'a self,
        container_id: &'a str,
    ) -> BoxFuture<'a, Result<StatsReading, EngineError>> {
        async move {
            let options = StatsOptions {
                stream: false,
                one_shot: true,
            };
            let mut stream = self.docker.stats(container_id, Some(options));
            let first = self.bounded("a stats request", async { stream.next().await.transpose() });
            match first.await? {
                Some(stats) => {
                    stats_reading(&stats, Instant::now()).map_err(|detail| EngineError::Malformed {
                        address: self.address.clone(),
                        what: "stats answer".to_owned(),
                        detail,
                    })
                }
                None => Err(EngineError::Malformed {
                    address: self.address.clone(),
                    what: "stats answer".to_owned(),
                    detail: "empty".to_owned(),
                }),
            }
        }
        .boxed()
    }
}

/// An error with its causes, which is where bollard and hyper put the useful part
/// ("connection refused", "No such file or directory").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Map a bollard error to what it means for the source.
pub fn engine_error(address: &str, what: &str, e: DockerError) -> EngineError {
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => {
            if message.contains("not a swarm manager") || message.contains("swarm mode") {
                EngineError::NotManager {
                    address: address.to_owned(),
                }
            } else {
                EngineError::Refused {
                    address: address.to_owned(),
                    what: what.to_owned(),
                    detail: format!("{status_code} {message}"),
                }
            }
        }
        DockerError::JsonDataError { .. }
        | DockerError::JsonSerdeError { .. }
        | DockerError::APIVersionParseError {}
        | DockerError::StrParseError { .. } => EngineError::Malformed {
            address: address.to_owned(),
            what: what.to_owned(),
            detail: chain(&e),
        },
        DockerError::RequestTimeoutError => EngineError::Unreachable {
            address: address.to_owned(),
            detail: format!("no answer to {what} in time"),
        },
        other => EngineError::Unreachable {
            address: address.to_owned(),
            detail: chain(&other),
        },
    }
}

/// A service document as the domain's spec. Fails only without an id or a name.
pub fn service_spec(service: &Service) -> Result<ServiceSpec, String> {
    let id = service
        .id
        .clone()
        .filter(|id| !id.is_empty())
        .ok_or("it has no id")?;
    let spec = service.spec.as_ref();
    let name = spec
        .and_then(|s| s.name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("service {id} has no name"))?;
    let labels: BTreeMap<String, String> = spec
        .and_then(|s| s.labels.as_ref())
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let mode = match spec.and_then(|s| s.mode.as_ref()) {
        Some(m) if m.global.is_some() || m.global_job.is_some() || m.replicated_job.is_some() => {
            // Jobs run to completion and have no replica count to scale.
            ServiceMode::Global
        }
        Some(m) => ServiceMode::Replicated(
            m.replicated
                .as_ref()
                .and_then(|r| r.replicas)
                .map_or(1, |n| u64::try_from(n).unwrap_or(0)),
        ),
        // Docker's default mode: one replica.
        None => ServiceMode::Replicated(1),
    };
    let status = service.service_status.as_ref();
    Ok(ServiceSpec {
        id,
        name,
        labels,
        mode,
        created_at: service.created_at.clone().unwrap_or_default(),
        updated_at: service.updated_at.clone().unwrap_or_default(),
        version: service.version.as_ref().and_then(|v| v.index).unwrap_or(0),
        running_tasks: status.and_then(|s| s.running_tasks),
        desired_tasks: status.and_then(|s| s.desired_tasks),
    })
}

/// An event reduced to its cursor and what it says happened to which service.
pub fn engine_event(message: &EventMessage) -> EngineEvent {
    let cursor = message
        .time_nano
        .filter(|t| *t > 0)
        .or_else(|| message.time.map(|t| t.saturating_mul(1_000_000_000)))
        .map(EventCursor);
    let actor = message.actor.as_ref();
    let action = message.action.as_deref().unwrap_or_default();
    let subject = match message.typ {
        Some(EventMessageTypeEnum::SERVICE) => {
            match actor.and_then(|a| a.id.clone()).filter(|id| !id.is_empty()) {
                Some(service_id) if action == "remove" => {
                    EventSubject::ServiceRemoved { service_id }
                }
                Some(service_id) => EventSubject::ServiceChanged { service_id },
                None => EventSubject::Other,
            }
        }
        Some(EventMessageTypeEnum::CONTAINER) => {
            let service_id = actor
                .and_then(|a| a.attributes.as_ref())
                .and_then(|attrs| attrs.get(SERVICE_ID_LABEL).cloned())
                .filter(|id| !id.is_empty());
            match (service_id, action) {
                (Some(service_id), "start") => EventSubject::TaskContainerStarted { service_id },
                (Some(service_id), "die") => EventSubject::TaskContainerDied { service_id },
                _ => EventSubject::Other,
            }
        }
        _ => EventSubject::Other,
    };
    EngineEvent { cursor, subject }
}

/// A task that is running now, or `None`.
pub fn running_task(task: &Task) -> Option<RunningTask> {
    let status = task.status.as_ref()?;
    if status.state != Some(TaskState::RUNNING) {
        return None;
    }
    Some(RunningTask {
        task_id: task.id.clone()?,
        node_id: task.node_id.clone().unwrap_or_default(),
        container_id: status
            .container_status
            .as_ref()
            .and_then(|c| c.container_id.clone())
            .filter(|c| !c.is_empty()),
        memory_limit: task
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.memory_bytes)
            .and_then(|b| u64::try_from(b).ok())
            .filter(|b| *b > 0),
    })
}

/// A stats answer as a reading. Fails when it lacks the CPU counters (the container stopped).
pub fn stats_reading(stats: &ContainerStatsResponse, at: Instant) -> Result<StatsReading, String> {
    let cpu = stats.cpu_stats.as_ref().ok_or("no cpu_stats")?;
    let usage = cpu.cpu_usage.as_ref();
    let cpu_total = usage
        .and_then(|u| u.total_usage)
        .ok_or("no cpu_usage.total_usage (is the container running?)")?;
    let system_total = cpu
        .system_cpu_usage
        .ok_or("no system_cpu_usage (is the container running?)")?;
    let online_cpus = cpu
        .online_cpus
        .filter(|n| *n > 0)
        .or_else(|| {
            usage
                .and_then(|u| u.percpu_usage.as_ref())
                .and_then(|p| u32::try_from(p.len()).ok())
        })
        .unwrap_or(1);
    let memory = stats.memory_stats.as_ref();
    let figures = MemoryFigures {
        usage: memory.and_then(|m| m.usage),
        stats: memory.and_then(|m| m.stats.clone()).unwrap_or_default(),
    };
    Ok(StatsReading {
        taken_at: at,
        cpu_total,
        system_total,
        online_cpus,
        memory_used: memory_used(&figures),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_service_document_becomes_a_spec() {
        let s = service(json!({
            "ID": "abc",
            "Version": {"Index": 42},
            "CreatedAt": "2024-01-15T10:30:00.123456789Z",
            "UpdatedAt": "2024-01-15T10:31:00Z",
            "Spec": {"Name": "web", "Labels": {"autoscaler.enabled": "true"},
                     "Mode": {"Replicated": {"Replicas": 3}}},
            "ServiceStatus": {"RunningTasks": 2, "DesiredTasks": 3}
        }));
        let spec = service_spec(&s).unwrap();
        assert_eq!(spec.id, "abc");
        assert_eq!(spec.name, "web");
        assert_eq!(spec.mode, ServiceMode::Replicated(3));
        assert_eq!(spec.version, 42);
        assert_eq!(spec.created_at, "2024-01-15T10:30:00.123456789Z");
        assert_eq!((spec.running_tasks, spec.desired_tasks), (Some(2), Some(3)));
        assert_eq!(spec.labels["autoscaler.enabled"], "true");
    }

    #[test]
    fn odd_service_documents_are_handled() {
        let global = service(json!({"ID": "g", "Spec": {"Name": "g", "Mode": {"Global": {}}}}));
        let spec = service_spec(&global).unwrap();
        assert_eq!(spec.mode, ServiceMode::Global);
        assert_eq!((spec.version, spec.running_tasks), (0, None));
        assert!(spec.labels.is_empty());
        let bare = service(json!({"ID": "b", "Spec": {"Name": "b"}}));
        assert_eq!(
            service_spec(&bare).unwrap().mode,
            ServiceMode::Replicated(1)
        );
        assert!(service_spec(&service(json!({"Spec": {"Name": "x"}}))).is_err());
        let err = service_spec(&service(json!({"ID": "i"}))).unwrap_err();
        assert!(err.contains("no name"), "{err}");
    }

    fn event_message(value: serde_json::Value) -> EventMessage {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn service_events_say_what_happened_to_which_service() {
        let ev = engine_event(&event_message(json!({
            "Type": "service", "Action": "update",
            "Actor": {"ID": "svc1", "Attributes": {"name": "web"}},
            "time": 1700000000, "timeNano": 1700000000123456789i64
        })));
        assert_eq!(
            ev.subject,
            EventSubject::ServiceChanged {
                service_id: "svc1".into()
            }
        );
        assert_eq!(ev.cursor, Some(EventCursor(1_700_000_000_123_456_789)));
        let created = engine_event(&event_message(json!({
            "Type": "service", "Action": "create", "Actor": {"ID": "svc1"}
        })));
        assert_eq!(created.subject.service_id(), Some("svc1"));
        assert!(matches!(
            created.subject,
            EventSubject::ServiceChanged { .. }
        ));
        let removed = engine_event(&event_message(json!({
            "Type": "service", "Action": "remove", "Actor": {"ID": "svc1"}
        })));
        assert_eq!(
            removed.subject,
            EventSubject::ServiceRemoved {
                service_id: "svc1".into()
            }
        );
        // No action at all: something changed, look at the service.
        let bare = engine_event(&event_message(
            json!({"Type": "service", "Actor": {"ID": "s"}}),
        ));
        assert!(matches!(bare.subject, EventSubject::ServiceChanged { .. }));
        let nameless = engine_event(&event_message(json!({
            "Type": "service", "Action": "update", "Actor": {"ID": ""}
        })));
        assert_eq!(nameless.subject, EventSubject::Other);
    }

    #[test]
    fn task_container_events_name_their_service() {
        let container = |action: &str| {
            engine_event(&event_message(json!({
                "Type": "container", "Action": action,
                "Actor": {"ID": "c1", "Attributes": {"com.docker.swarm.service.id": "svc2"}},
                "time": 1700000001
            })))
        };
        let died = container("die");
        assert_eq!(
            died.subject,
            EventSubject::TaskContainerDied {
                service_id: "svc2".into()
            }
        );
        assert_eq!(died.cursor, Some(EventCursor(1_700_000_001_000_000_000)));
        assert_eq!(
            container("start").subject,
            EventSubject::TaskContainerStarted {
                service_id: "svc2".into()
            }
        );
        assert_eq!(container("create").subject, EventSubject::Other);
        assert_eq!(container("remove").subject, EventSubject::Other);

        let plain = engine_event(&event_message(json!({
            "Type": "container", "Action": "start", "Actor": {"ID": "c2", "Attributes": {}}
        })));
        assert_eq!(
            plain,
            EngineEvent {
                cursor: None,
                subject: EventSubject::Other
            }
        );
        let network = engine_event(&event_message(json!({
            "Type": "network", "Action": "create", "Actor": {"ID": "n1"}
        })));
        assert_eq!(network.subject, EventSubject::Other);
    }

    #[test]
    fn only_running_tasks_count() {
        let task: Task = serde_json::from_value(json!({
            "ID": "t1", "ServiceID": "s", "NodeID": "n1",
            "Spec": {"Resources": {"Limits": {"MemoryBytes": 268435456}}},
            "Status": {"State": "running", "ContainerStatus": {"ContainerID": "c1"}},
            "DesiredState": "running"
        }))
        .unwrap();
        let t = running_task(&task).unwrap();
        assert_eq!(t.container_id.as_deref(), Some("c1"));
        assert_eq!(t.memory_limit, Some(268_435_456));
        assert_eq!(t.node_id, "n1");
        let starting: Task = serde_json::from_value(json!({
            "ID": "t2", "Status": {"State": "starting"}
        }))
        .unwrap();
        assert_eq!(running_task(&starting), None);
    }

    #[test]
    fn stats_answers_become_readings() {
        let s: ContainerStatsResponse = serde_json::from_value(json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 500, "percpu_usage": [1, 2, 3]},
                          "system_cpu_usage": 9000},
            "memory_stats": {"usage": 1000, "limit": 5000, "stats": {"inactive_file": 200}}
        }))
        .unwrap();
        let r = stats_reading(&s, Instant::now()).unwrap();
        assert_eq!(
            (r.cpu_total, r.system_total, r.online_cpus, r.memory_used),
            (500, 9000, 3, 800)
        );
        let stopped: ContainerStatsResponse =
            serde_json::from_value(json!({"cpu_stats": {}, "memory_stats": {}})).unwrap();
        assert!(stats_reading(&stopped, Instant::now()).is_err());
    }

    #[test]
    fn clients_are_built_without_contacting_the_engine() {
        let engine = BollardEngine::connect("tcp://127.0.0.1:1", Duration::from_secs(1)).unwrap();
        assert_eq!(engine.address(), "tcp://127.0.0.1:1");
        let err = BollardEngine::connect("unix:///nowhere.sock", Duration::from_secs(1))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "cannot reach docker at unix:///nowhere.sock: no socket at /nowhere.sock"
        );
        let err = BollardEngine::connect("ftp://x", Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("cannot reach docker at ftp://x: cannot set up a client"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_absent_engine_is_a_clear_error() {
        // Port 1 on loopback: nothing listens, the connection is refused.
        let engine = BollardEngine::connect("tcp://127.0.0.1:1", Duration::from_secs(2)).unwrap();
        let err = engine.identify().await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot reach docker at tcp://127.0.0.1:1: "),
            "{err}"
        );
        let err = engine.list_services().await.unwrap_err();
        assert!(matches!(err, EngineError::Unreachable { .. }), "{err}");
    }

    #[test]
    fn server_errors_are_classified() {
        let e = engine_error(
            "unix:///s",
            "the service list",
            DockerError::DockerResponseServerError {
                status_code: 503,
                message: "This node is not a swarm manager. Use \"docker swarm init\"".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "docker engine at unix:///s is not a swarm manager"
        );
        let e = engine_error(
            "unix:///s",
            "the service list",
            DockerError::RequestTimeoutError,
        );
        assert!(
            e.to_string()
                .starts_with("cannot reach docker at unix:///s: "),
            "{e}"
        );
    }
}
