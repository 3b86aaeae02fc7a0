//! The one narrow interface between the Swarm source and a Docker engine.
//!
//! Everything the source needs from Docker is six calls. The reconnect, ordering, watchdog
//! and metrics logic is written against this trait only, so tests can drive it with an engine
//! that stalls, fails or lies on cue, which a real dockerd cannot be made to do reliably.

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use pipeline::ServiceSpec;
use tokio::time::Instant;

/// What the source learns when it (re)connects: enough to know it talks to a manager and to
/// tell the tasks it can sample (on this node) from those it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineIdentity {
    /// The Engine API version negotiated with the engine.
    pub api_version: String,
    /// The swarm node id of the engine we talk to.
    pub node_id: String,
}

/// A position in the engine's event history: the event's `timeNano`. Resuming from it replays
/// that event again (Docker's `since` is inclusive), which the fold absorbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor(pub i64);

impl EventCursor {
    /// The cursor of the present moment by the local clock, for the first subscription.
    pub fn now() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        EventCursor(nanos)
    }

    /// The form Docker's `since` parameter takes: seconds, a dot, nanoseconds.
    pub fn as_since(self) -> String {
        let secs = self.0.div_euclid(1_000_000_000);
        let nanos = self.0.rem_euclid(1_000_000_000);
        format!("{secs}.{nanos:09}")
    }
}

/// One event from the engine, reduced to what the source acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEvent {
    /// Where the event sits in the engine's history; `None` if the engine gave no time.
    pub cursor: Option<EventCursor>,
    /// What happened, to which service.
    pub subject: EventSubject,
}

/// What an event says happened. Service events carry no spec (only the service's name), so a
/// created or updated service must be inspected; a removal and a task container starting or
/// dying are complete facts in themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSubject {
    /// A service was created, updated, or changed in a way the source does not tell apart.
    ServiceChanged { service_id: String },
    /// A service was removed. Docker never reuses a service id, so it is gone for good.
    ServiceRemoved { service_id: String },
    /// A container of one of the service's tasks started on the engine we talk to.
    TaskContainerStarted { service_id: String },
    /// A container of one of the service's tasks stopped running on the engine we talk to.
    TaskContainerDied { service_id: String },
    /// Anything else: a container that belongs to no service, or an action the source does
    /// not act on (a task container being created or removed).
    Other,
}

impl EventSubject {
    /// The service the event is about, if any.
    pub fn service_id(&self) -> Option<&str> {
        match self {
            EventSubject::ServiceChanged { service_id }
            | EventSubject::ServiceRemoved { service_id }
            | EventSubject::TaskContainerStarted { service_id }
            | EventSubject::TaskContainerDied { service_id } => Some(service_id),
            EventSubject::Other => None,
        }
    }
}

/// A running task of a service, as the metrics collector needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningTask {
    pub task_id: String,
    pub node_id: String,
    /// `None` while the task has no container yet.
    pub container_id: Option<String>,
    /// The memory limit of the task's spec, in bytes, when it has one.
    pub memory_limit: Option<u64>,
}

/// One container stats reading, already reduced to the figures `docker stats` shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsReading {
    /// When the reading arrived (monotonic clock), to measure the window between two.
    pub taken_at: Instant,
    /// Total CPU time used by the container, in nanoseconds.
    pub cpu_total: u64,
    /// Total CPU time of the host, in nanoseconds (the denominator of `docker stats`).
    pub system_total: u64,
    /// CPUs online; CPU % is scaled by it.
    pub online_cpus: u32,
    /// Memory in use, minus inactive file pages (page cache), as `docker stats` shows it.
    pub memory_used: u64,
}

/// Why a request to the engine failed. Every variant names the engine's address, because
/// operators read these in /health and logs without any other context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The engine does not answer (down, wrong address, timeout, broken connection).
    #[error("cannot reach docker at {address}: {detail}")]
    Unreachable { address: String, detail: String },
    /// The engine answers but cannot serve swarm requests.
    #[error("docker engine at {address} is not a swarm manager")]
    NotManager { address: String },
    /// The engine answered a request with an error.
    #[error("docker at {address} refused {what}: {detail}")]
    Refused {
        address: String,
        what: String,
        detail: String,
    },
    /// The engine's answer could not be used.
    #[error("docker at {address} sent an unusable {what}: {detail}")]
    Malformed {
        address: String,
        what: String,
        detail: String,
    },
}

/// A Docker engine as the Swarm source sees it.
pub trait Engine: Send + Sync + 'static {
    /// The address requests go to, for messages.
    fn address(&self) -> &str;

    /// Negotiate the API version and check the engine is a swarm manager.
    fn identify(&self) -> BoxFuture<'_, Result<EngineIdentity, EngineError>>;

    /// Every service with its running and desired task counts.
    fn list_services(&self) -> BoxFuture<'_, Result<Vec<ServiceSpec>, EngineError>>;

    /// One service by id, with its task counts; `None` when it does not exist (any more).
    fn inspect_service<'a>(
        &'a self,
        service_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ServiceSpec>, EngineError>>;

    /// Service events and container events, from `since` (inclusive) or from now, live.
    fn events(
        &self,
        since: Option<EventCursor>,
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>>;

    /// The tasks of a service that are running now.
    fn running_tasks<'a>(
        &'a self,
        service_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RunningTask>, EngineError>>;

    /// One stats reading of a container on this engine.
    fn container_stats<'a>(
        &'a self,
        container_id: &'a str,
    ) -> BoxFuture<'a, Result<StatsReading, EngineError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_renders_as_docker_since() {
        assert_eq!(
            EventCursor(1_700_000_000_000_000_123).as_since(),
            "1700000000.000000123"
        );
        assert_eq!(EventCursor(5).as_since(), "0.000000005");
    }

    #[test]
    fn errors_name_the_engine() {
        let e = EngineError::NotManager {
            address: "unix:///x.sock".into(),
        };
        assert_eq!(
            e.to_string(),
            "docker engine at unix:///x.sock is not a swarm manager"
        );
        let e = EngineError::Unreachable {
            address: "tcp://h:2375".into(),
            detail: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach docker at tcp://h:2375: connection refused"
        );
    }
}
