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
use futures::StreamExt;
use pipeline::{ChangeKind, Registry, RegistryConfig, Update};
use swarm_registry::control::SourceControl;
use swarm_registry::docker::SwarmConfig;
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
}

/// The extra delays (ms) of one pattern, by operation, and the inspects it cost.
#[derive(Default)]
struct Figures {
    create: Vec<f64>,
    update: Vec<f64>,
    remove: Vec<f64>,
    operations: u64,
    inspects: u64,
}

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

    fn inspects(&self) -> u64 {
        self.counters.inspects.load(Ordering::Relaxed)
    }

    /// Every operation meets a service quiet since its previous one.
    async fn quiet(&self, round: usize, n: usize) -> Figures {
        let mut f = Figures::default();
        let before = self.inspects();
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
        f
    }

    /// Create, update as soon as the creation is visible, remove as soon as the update is.
    async fn back_to_back(&self, round: usize, n: usize) -> Figures {
        let mut f = Figures::default();
        let before = self.inspects();
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
        f
    }

    /// All services at once, 16 requests in flight, for each operation in turn.
    async fn burst(&self, round: usize, n: usize) -> Figures {
        let mut f = Figures::default();
        let before = self.inspects();
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
            f.create
                .push(self.extra(Seen::Created(id.clone()), sent).await);
        }
        let sent = Instant::now();
        futures::stream::iter(ids.iter().zip(&names))
            .for_each_concurrent(16, |(id, name)| self.update(id, name, 3))
            .await;
        for id in &ids {
            f.update
                .push(self.extra(Seen::Updated(id.clone(), 3), sent).await);
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
    println!(
        "round {round} {pattern:<13} inspects {} for {} operations ({:.2} per operation)",
        f.inspects,
        f.operations,
        f.inspects as f64 / f.operations as f64
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
    tokio::spawn(swarm_registry::docker::run(
        SwarmConfig::default(),
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
