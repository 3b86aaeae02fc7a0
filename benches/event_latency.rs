//! Event-to-snapshot latency of the Swarm source on the local swarm.
//!
//! Every create, update and remove of a labelled service is timed twice, side by side in one
//! process and on one clock: when Docker delivers the service event to a plain events
//! subscription beside the registry (Docker's own delivery), and when the registry's
//! subscription reports the change (`service.added`, `service.updated` carrying the new
//! label value, `service.removed`; the snapshot holding it is readable before the change is
//! broadcast). The registry's extra delay is the difference. Three patterns, each round:
//! - quiet: N services created one after another, then each updated, then each removed, so
//!   every operation meets a service that has been quiet for a while;
//! - back-to-back: N services, each created, updated as soon as the creation is visible in
//!   the registry, and removed as soon as the update is;
//! - burst: 200 services created at once (16 requests in flight), then all updated, then all
//!   removed.
//!
//! Run: `cargo bench --bench event_latency` (needs the test bed). `ROUNDS` (default 3) and
//! `SERVICES` (default 50, the quiet and back-to-back patterns' size) size it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/swarm.rs"]
mod swarm;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec,
};
use bollard::query_parameters::{EventsOptions, UpdateServiceOptions};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use pipeline::{ChangeKind, Registry, RegistryConfig, Update};
use swarm_registry::control::SourceControl;
use swarm_registry::docker::engine::{
    EngineEvent, EngineIdentity, EventCursor, RunningTask, StatsReading,
};
use swarm_registry::docker::{BollardEngine, Engine, EngineError, SwarmConfig};
use swarm_registry::telemetry::SourceCounters;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The burst's size in a real run (`cargo bench`). Under `cargo test` (no `--bench`
/// argument) the program makes a short smoke run instead.
const BURST: usize = 200;
const SMOKE: usize = 5;

/// What happened to a service, as both subscriptions key it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seen {
    Created(String),
    /// Updated, with the value of `autoscaler.max` (the registry's side shows which update).
    Updated(String, u64),
    Removed(String),
}

/// When each thing was seen, by Docker's subscription (every time) and by the registry's
/// (the first time).
#[derive(Default)]
struct Sightings {
    docker: Mutex<HashMap<Seen, Vec<Instant>>>,
    registry: Mutex<HashMap<Seen, Instant>>,
}

impl Sightings {
    /// Docker's first delivery of `what` after `sent`, and the registry's; waits for both.
    async fn both(&self, what: &Seen, sent: Instant) -> (Instant, Instant) {
        let limit = Instant::now() + Duration::from_secs(20);
        loop {
            let d = self
                .docker
                .lock()
                .unwrap()
                .get(what)
                .and_then(|all| all.iter().copied().find(|at| *at >= sent));
            let r = self.registry.lock().unwrap().get(what).copied();
            if let (Some(d), Some(r)) = (d, r) {
                return (d, r);
            }
            assert!(
                Instant::now() < limit,
                "never saw {what:?} (docker {d:?}, registry {r:?})"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
}

/// When the source's own event stream handed it each service's events, and when each of
/// its requests about services started and answered: where an operation's extra delay goes.
#[derive(Default)]
struct Timeline {
    /// By service id: every time the source's stream yielded an event about it.
    events: Mutex<HashMap<String, Vec<Instant>>>,
    /// Every inspect or filtered list: the ids it asked about, its start and its answer.
    requests: Mutex<Vec<(Vec<String>, Instant, Instant)>>,
}

impl Timeline {
    fn request(&self, ids: Vec<String>, started: Instant) {
        self.requests
            .lock()
            .unwrap()
            .push((ids, started, Instant::now()));
    }

    /// The source's first sighting of an event about `id` at or after `sent`, and the first
    /// request about `id` started at or after it (its start and answer).
    fn phases(&self, id: &str, sent: Instant) -> (Option<Instant>, Option<(Instant, Instant)>) {
        let seen = self
            .events
            .lock()
            .unwrap()
            .get(id)
            .and_then(|all| all.iter().copied().find(|at| *at >= sent));
        let request = seen.and_then(|seen| {
            self.requests
                .lock()
                .unwrap()
                .iter()
                .filter(|(ids, start, _)| *start >= seen && ids.iter().any(|i| i == id))
                .map(|(_, start, end)| (*start, *end))
                .min()
        });
        (seen, request)
    }
}

/// The real engine, with every service request and event timed into a [`Timeline`].
struct TimedEngine {
    inner: BollardEngine,
    timeline: Arc<Timeline>,
}

impl Engine for TimedEngine {
    fn address(&self) -> &str {
        self.inner.address()
    }

    fn identify(&self) -> BoxFuture<'_, Result<EngineIdentity, EngineError>> {
        self.inner.identify()
    }

    fn list_services(&self) -> BoxFuture<'_, Result<Vec<pipeline::ServiceSpec>, EngineError>> {
        self.inner.list_services()
    }

    fn inspect_service<'a>(
        &'a self,
        service_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<pipeline::ServiceSpec>, EngineError>> {
        async move {
            let started = Instant::now();
            let answer = self.inner.inspect_service(service_id).await;
            self.timeline.request(vec![service_id.to_owned()], started);
            answer
        }
        .boxed()
    }

    fn events(
        &self,
        since: Option<EventCursor>,
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        let timeline = self.timeline.clone();
        self.inner
            .events(since)
            .inspect(move |item| {
                if let Ok(event) = item {
                    if let Some(id) = event.subject.service_id() {
                        timeline
                            .events
                            .lock()
                            .unwrap()
                            .entry(id.to_owned())
                            .or_default()
                            .push(Instant::now());
                    }
                }
            })
            .boxed()
    }

    fn running_tasks<'a>(
        &'a self,
        service_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RunningTask>, EngineError>> {
        self.inner.running_tasks(service_id)
    }

    fn container_stats<'a>(
        &'a self,
        container_id: &'a str,
    ) -> BoxFuture<'a, Result<StatsReading, EngineError>> {
        self.inner.container_stats(container_id)
    }
}

fn spec(name: &str, run: &str, max: u64) -> ServiceSpec {
    ServiceSpec {
        name: Some(name.to_owned()),
        labels: Some(HashMap::from([
            ("autoscaler.enabled".to_owned(), "true".to_owned()),
            ("autoscaler.max".to_owned(), max.to_string()),
            ("swarm-registry.bench".to_owned(), run.to_owned()),
        ])),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(0) }),
            ..Default::default()
        }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some("local/busybox:1".to_owned()),
                command: Some(vec!["sleep".to_owned(), "3600".to_owned()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The run's docker client and what both subscriptions saw.
struct Bench {
    docker: Docker,
    run: String,
    sightings: Arc<Sightings>,
    counters: Arc<SourceCounters>,
    timeline: Arc<Timeline>,
}

/// The extra delays (ms) of one pattern, by operation, and the inspects it cost.
#[derive(Default)]
struct Figures {
    create: Vec<f64>,
    update: Vec<f64>,
    remove: Vec<f64>,
    operations: u64,
    inspects: u64,
    /// Requests about services (inspects).
    requests: u64,
    /// By operation (create, update): where each extra delay went ([`Bench::phases`]).
    phases: Vec<(&'static str, [f64; 4])>,
}

/// The names of [`Bench::phases`]' four parts.
const PHASES: [&str; 4] = [
    "stream (source's event after docker's)",
    "pickup (request start after event)",
    "request (engine answer time)",
    "apply (change after answer: queue wait + fold)",
];

fn extra_ms(docker_at: Instant, registry_at: Instant) -> f64 {
    if registry_at >= docker_at {
        registry_at.duration_since(docker_at).as_secs_f64() * 1000.0
    } else {
        -(docker_at.duration_since(registry_at).as_secs_f64() * 1000.0)
    }
}

impl Bench {
    async fn create(&self, name: &str) -> String {
        self.docker
            .create_service(spec(name, &self.run, 2), None)
            .await
            .expect("create")
            .id
            .expect("an id")
    }

    async fn update(&self, id: &str, name: &str, max: u64) {
        let current = self
            .docker
            .inspect_service(id, None)
            .await
            .expect("inspect");
        let version = current.version.and_then(|v| v.index).unwrap_or(0) as i32;
        let options = UpdateServiceOptions {
            version,
            ..Default::default()
        };
        self.docker
            .update_service(id, spec(name, &self.run, max), options, None)
            .await
            .expect("update");
    }

    async fn remove(&self, id: &str) {
        self.docker.delete_service(id).await.expect("remove");
    }

    /// The registry's extra delay (ms) for `what`, an operation sent at `sent`.
    async fn extra(&self, what: Seen, sent: Instant) -> f64 {
        let (d, r) = self.sightings.both(&what, sent).await;
        extra_ms(d, r)
    }

    /// Where the extra delay of `what` (about `id`, sent at `sent`) went: the source's stream
    /// delivering the event after Docker's delivery to the plain subscription, the loop
    /// starting the request, the engine answering, and the wait from the answer to the
    /// change (the queue holding it for earlier events, and the fold). `None` when the
    /// source answered from elsewhere (a list).
    fn phases(&self, what: &Seen, id: &str, sent: Instant) -> Option<[f64; 4]> {
        let docker_at = self
            .sightings
            .docker
            .lock()
            .unwrap()
            .get(what)
            .and_then(|all| all.iter().copied().find(|at| *at >= sent))?;
        let registry_at = self.sightings.registry.lock().unwrap().get(what).copied()?;
        let (seen, request) = self.timeline.phases(id, sent);
        let (start, end) = request?;
        let seen = seen?;
        Some([
            extra_ms(docker_at, seen),
            extra_ms(seen, start),
            extra_ms(start, end),
            extra_ms(end, registry_at),
        ])
    }

    fn inspects(&self) -> u64 {
        self.counters.inspects.load(Ordering::Relaxed)
    }

    fn requests(&self) -> u64 {
        self.timeline.requests.lock().unwrap().len() as u64
    }

    /// Every operation meets a service quiet since its previous one.
    async fn quiet(&self, round: usize, n: usize) -> Figures {
        let mut f = Figures::default();
        let (before, requests_before) = (self.inspects(), self.requests());
        let names: Vec<String> = (0..n)
            .map(|i| format!("bench-{}-q{round}-{i:03}", self.run))
            .collect();
        let mut ids = Vec::new();
        for name in &names {
            let sent = Instant::now();
            let id = self.create(name).await;
            f.create
                .push(self.extra(Seen::Created(id.clone()), sent).await);
            ids.push(id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (id, name) in ids.iter().zip(&names) {
            let sent = Instant::now();
            self.update(id, name, 3).await;
            f.update
                .push(self.extra(Seen::Updated(id.clone(), 3), sent).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for id in &ids {
            let sent = Instant::now();
            self.remove(id).await;
            f.remove
                .push(self.extra(Seen::Removed(id.clone()), sent).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f.operations = 3 * n as u64;
        f.inspects = self.inspects() - before;
        f.requests = self.requests() - requests_before;
        f
    }

    /// Create, update as soon as the creation is visible, remove as soon as the update is.
    async fn back_to_back(&self, round: usize, n: usize) -> Figures {
        let mut f = Figures::default();
        let (before, requests_before) = (self.inspects(), self.requests());
        for i in 0..n {
            let name = format!("bench-{}-b{round}-{i:03}", self.run);
            let sent = Instant::now();
            let id = self.create(&name).await;
            f.create
                .push(self.extra(Seen::Created(id.clone()), sent).await);
            let sent = Instant::now();
            self.update(&id, &name, 3).await;
            f.update
                .push(self.extra(Seen::Updated(id.clone(), 3), sent).await);
            let sent = Instant::now();
            self.remove(&id).await;
            f.remove
                .push(self.extra(Seen::Removed(id.clone()), sent).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f.operations = 3 * n as u64;
        f.inspects = self.inspects() - before;
        f.requests = self.requests() - requests_before;
        f
    }

    /// All services at once, 16 requests in flight, for each operation in turn.
    async fn burst(&self, round: usize, n: usize) -> Figures {
        let mut f = Figures::default();
        let (before, requests_before) = (self.inspects(), self.requests());
        let names: Vec<String> = (0..n)
            .map(|i| format!("bench-{}-u{round}-{i:03}", self.run))
            .collect();
        let sent = Instant::now();
        let ids: Vec<String> = futures::stream::iter(&names)
            .map(|name| self.create(name))
            .buffered(16)
            .collect()
            .await;
        for id in &ids {
            let what = Seen::Created(id.clone());
            f.create.push(self.extra(what.clone(), sent).await);
            if let Some(p) = self.phases(&what, id, sent) {
                f.phases.push(("create", p));
            }
        }
        let sent = Instant::now();
        futures::stream::iter(ids.iter().zip(&names))
            .for_each_concurrent(16, |(id, name)| self.update(id, name, 3))
            .await;
        for id in &ids {
            let what = Seen::Updated(id.clone(), 3);
            f.update.push(self.extra(what.clone(), sent).await);
            if let Some(p) = self.phases(&what, id, sent) {
                f.phases.push(("update", p));
            }
        }
        let sent = Instant::now();
        futures::stream::iter(&ids)
            .for_each_concurrent(16, |id| self.remove(id))
            .await;
        for id in &ids {
            f.remove
                .push(self.extra(Seen::Removed(id.clone()), sent).await);
        }
        f.operations = 3 * n as u64;
        f.inspects = self.inspects() - before;
        f.requests = self.requests() - requests_before;
        f
    }
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(pattern: &str, round: usize, f: &Figures) -> Vec<(String, f64, f64)> {
    let mut rows = Vec::new();
    for (op, values) in [
        ("create", &f.create),
        ("update", &f.update),
        ("remove", &f.remove),
    ] {
        let (p50, p99) = (percentile(values, 0.5), percentile(values, 0.99));
        println!(
            "round {round} {pattern:<13} {op:<7} n={:<4} extra p50 {p50:>7.3} ms  p99 {p99:>7.3} ms  max {:>7.3} ms",
            values.len(),
            percentile(values, 1.0)
        );
        rows.push((format!("{pattern} {op}"), p50, p99));
    }
    for op in ["create", "update"] {
        let of_op: Vec<[f64; 4]> = f
            .phases
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, p)| *p)
            .collect();
        if of_op.is_empty() {
            continue;
        }
        for (i, name) in PHASES.iter().enumerate() {
            let values: Vec<f64> = of_op.iter().map(|p| p[i]).collect();
            println!(
                "round {round} {pattern:<13} {op:<7}   {name:<48} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
                percentile(&values, 0.5),
                percentile(&values, 0.99),
                percentile(&values, 1.0)
            );
        }
    }
    println!(
        "round {round} {pattern:<13} services inspected {} in {} requests for {} operations ({:.2} requests per operation)",
        f.inspects,
        f.requests,
        f.operations,
        f.requests as f64 / f.operations as f64
    );
    rows
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rounds, services, burst) = if full {
        (env("ROUNDS", 3), env("SERVICES", 50), BURST)
    } else {
        (1, SMOKE, SMOKE * 2)
    };
    if !swarm::swarm_available("event_latency") {
        return;
    }
    let docker = Docker::connect_with_local_defaults()
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("docker engine");
    let run = format!("{:08x}", rand::random::<u32>());
    let sightings = Arc::new(Sightings::default());

    // Docker's own delivery: a plain subscription beside the registry.
    let mut events = docker.events(Some(EventsOptions {
        filters: Some(HashMap::from([(
            "type".to_owned(),
            vec!["service".to_owned()],
        )])),
        ..Default::default()
    }));
    let docker_side = sightings.clone();
    tokio::spawn(async move {
        while let Some(Ok(event)) = events.next().await {
            let at = Instant::now();
            let Some(id) = event.actor.and_then(|a| a.id) else {
                continue;
            };
            let seen = match event.action.as_deref() {
                Some("create") => Seen::Created(id),
                Some("remove") => Seen::Removed(id),
                // The event names no labels; every service of the run is updated once, to 3
                // (the first update event after the request is the one timed).
                Some("update") => Seen::Updated(id, 3),
                _ => continue,
            };
            docker_side
                .docker
                .lock()
                .unwrap()
                .entry(seen)
                .or_default()
                .push(at);
        }
    });

    let (registry, driver) = Registry::new(RegistryConfig::default());
    tokio::spawn(driver.run());
    let (_control, commands) = SourceControl::channel(4);
    let shutdown = CancellationToken::new();
    let counters = Arc::new(SourceCounters::default());
    let config = SwarmConfig::default();
    let timeline = Arc::new(Timeline::default());
    let engine = TimedEngine {
        inner: BollardEngine::connect(&config.docker_url, config.request_timeout)
            .expect("docker client"),
        timeline: timeline.clone(),
    };
    tokio::spawn(swarm_registry::docker::run_with_engine(
        Arc::new(engine),
        config,
        registry.clone(),
        commands,
        counters.clone(),
        shutdown.clone(),
    ));
    let limit = Instant::now() + Duration::from_secs(30);
    while registry.load().last_full_sync.is_none() {
        assert!(Instant::now() < limit, "the source never synced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The registry's delivery: the subscription reports a change after its snapshot is stored.
    let (_, mut sub) = registry.subscribe();
    let registry_side = sightings.clone();
    tokio::spawn(async move {
        while let Some(update) = sub.next().await {
            let at = Instant::now();
            let Update::Change(change) = update else {
                continue;
            };
            let seen = match &change.kind {
                ChangeKind::ServiceAdded { service } => Seen::Created(service.entry.id.clone()),
                ChangeKind::ServiceUpdated { service, .. } => {
                    Seen::Updated(service.entry.id.clone(), service.entry.max_replicas)
                }
                ChangeKind::ServiceRemoved { id, .. } => Seen::Removed(id.clone()),
                _ => continue,
            };
            registry_side
                .registry
                .lock()
                .unwrap()
                .entry(seen)
                .or_insert(at);
        }
    });

    let bench = Bench {
        docker: docker.clone(),
        run: run.clone(),
        sightings,
        counters: counters.clone(),
        timeline: timeline.clone(),
    };
    println!(
        "run {run}: {rounds} rounds; quiet and back-to-back over {services} services, burst over {burst}"
    );
    // Warm-up: both subscriptions are surely open after one full cycle.
    bench.back_to_back(0, 1).await;
    let lists_before = counters.full_lists.load(Ordering::Relaxed);
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    for round in 1..=rounds {
        rows.extend(report("quiet", round, &bench.quiet(round, services).await));
        rows.extend(report(
            "back-to-back",
            round,
            &bench.back_to_back(round, services).await,
        ));
        rows.extend(report("burst", round, &bench.burst(round, burst).await));
    }
    println!(
        "full lists during the run: {}",
        counters.full_lists.load(Ordering::Relaxed) - lists_before
    );

    println!("\nmedian over rounds of each round's figure (target: p50 <= 2 ms, p99 <= 10 ms)");
    let mut labels: Vec<&String> = Vec::new();
    for (label, _, _) in &rows {
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    let mut all_met = true;
    for label in labels {
        let p50s: Vec<f64> = rows.iter().filter(|r| &r.0 == label).map(|r| r.1).collect();
        let p99s: Vec<f64> = rows.iter().filter(|r| &r.0 == label).map(|r| r.2).collect();
        let (p50, p99) = (percentile(&p50s, 0.5), percentile(&p99s, 0.5));
        let met = p50 <= 2.0 && p99 <= 10.0;
        all_met &= met;
        println!(
            "{label:<22} p50 {p50:>7.3} ms  p99 {p99:>7.3} ms  {}",
            if met { "met" } else { "NOT met" }
        );
    }
    println!("target {}", if all_met { "met" } else { "NOT met" });
    shutdown.cancel();
}
