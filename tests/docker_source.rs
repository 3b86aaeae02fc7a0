//! The Swarm source against the test bed's real Swarm: every change reaches the snapshot,
//! malformed labels are reported, an engine outage is survived without losing a change,
//! bursts coalesce, and metrics come from real container stats.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/swarm.rs"]
mod swarm;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::query_parameters::UpdateServiceOptions;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use pipeline::{ChangeKind, ServiceSpec, Update};
use swarm::*;
use swarm_registry::docker::engine::{
    EngineEvent, EngineIdentity, EventCursor, EventSubject, RunningTask, StatsReading,
};
use swarm_registry::docker::{BollardEngine, Engine, EngineError};
use tokio::sync::RwLock;

/// The outage test stops dockerd: it runs alone, the others share the engine.
static ENGINE: RwLock<()> = RwLock::const_new(());

/// Collect the routing keys of changes about `name` from a subscription, in order.
fn keys_for(changes: &[Arc<pipeline::Change>], name: &str) -> Vec<String> {
    changes
        .iter()
        .filter(|c| c.kind.service_name() == Some(name))
        .map(|c| c.routing_key())
        .collect()
}

/// Every change up to the registry's current revision. The driver stores a snapshot before
/// it sends that snapshot's changes, so each of them is on its way: wait for them (within a
/// generous deadline) instead of stopping at the first quiet moment.
async fn drain(
    registry: &pipeline::Registry,
    sub: &mut pipeline::Subscription,
    into: &mut Vec<Arc<pipeline::Change>>,
) {
    let target = registry.snapshot().revision;
    while sub.position() < target {
        let update = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("every change up to the current revision within the deadline");
        match update {
            Some(Update::Change(c)) => into.push(c),
            Some(Update::Reset { .. }) => {}
            None => panic!("the registry stopped before revision {target}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_lifecycle_reaches_the_snapshot_as_the_right_changes() {
    if !swarm_available("service_lifecycle") {
        return;
    }
    let _shared = ENGINE.read().await;
    let source = start_source(test_config()).await;
    let (_, mut sub) = source.registry.subscribe();
    let name = unique("life");
    let plain = unique("plain");
    let _plain = create_service(&plain, &[("team", "x")], 0, &["sleep", "3600"]);
    let svc = create_service(
        &name,
        &[("autoscaler.enabled", "true")],
        0,
        &["sleep", "3600"],
    );
    let limit = Duration::from_secs(10);
    let r = &source.registry;
    let snap = wait_for(r, limit, "the labelled service", |s| {
        s.services.contains_key(name.as_str())
    })
    .await;
    assert_eq!(snap.services[name.as_str()].entry.id, svc.id);

    docker(&[
        "service",
        "update",
        "--detach",
        "--label-add",
        "autoscaler.max=7",
        &name,
    ]);
    wait_for(r, limit, "the new label", |s| {
        s.services
            .get(name.as_str())
            .is_some_and(|e| e.entry.max_replicas == 7)
    })
    .await;
    docker(&[
        "service",
        "update",
        "--detach",
        "--replicas",
        "3",
        "--label-add",
        "autoscaler.max=9",
        &name,
    ]);
    wait_for(r, limit, "the new replica count", |s| {
        s.services
            .get(name.as_str())
            .is_some_and(|e| e.entry.current_replicas == 3 && e.entry.max_replicas == 9)
    })
    .await;
    docker(&[
        "service",
        "update",
        "--detach",
        "--label-add",
        "autoscaler.enabled=false",
        &name,
    ]);
    wait_for(r, limit, "removal by relabelling", |s| {
        !s.services.contains_key(name.as_str())
    })
    .await;
    docker(&[
        "service",
        "update",
        "--detach",
        "--label-add",
        "autoscaler.enabled=true",
        &name,
    ]);
    wait_for(r, limit, "re-registration", |s| {
        s.services.contains_key(name.as_str())
    })
    .await;
    docker(&["service", "rm", &name]);
    wait_for(r, limit, "removal", |s| {
        !s.ids.contains_key(svc.id.as_str())
    })
    .await;

    let mut changes = Vec::new();
    drain(r, &mut sub, &mut changes).await;
    let keys = keys_for(&changes, &name);
    let first = |k: &str| {
        keys.iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("no {k} in {keys:?}"))
    };
    assert_eq!(keys[0], "service.added", "{keys:?}");
    assert!(first("service.updated") > 0, "{keys:?}");
    assert_eq!(
        keys.last().map(String::as_str),
        Some("service.removed"),
        "{keys:?}"
    );
    assert_eq!(
        keys.iter().filter(|k| *k == "service.added").count(),
        2,
        "{keys:?}"
    );
    assert_eq!(
        keys.iter().filter(|k| *k == "service.removed").count(),
        2,
        "{keys:?}"
    );
    let updated_fields: Vec<&str> = changes
        .iter()
        .filter_map(|c| match &c.kind {
            ChangeKind::ServiceUpdated {
                service,
                changed_fields,
            } if service.entry.name == name => Some(changed_fields.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        updated_fields.contains(&"max_replicas"),
        "{updated_fields:?}"
    );
    assert!(
        updated_fields.contains(&"current_replicas"),
        "{updated_fields:?}"
    );
    assert!(keys_for(&changes, &plain).is_empty());
    assert!(!source
        .registry
        .snapshot()
        .services
        .contains_key(plain.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_labels_are_listed_with_defaults_and_errors() {
    if !swarm_available("malformed_labels") {
        return;
    }
    let _shared = ENGINE.read().await;
    let name = unique("bad");
    let _svc = create_service(
        &name,
        &[
            ("autoscaler.enabled", "true"),
            ("autoscaler.min", "abc"),
            ("autoscaler.max", "0"),
            ("autoscaler.cpu.threshold", "150"),
            ("autoscaler.metric", "gpu"),
        ],
        0,
        &["sleep", "3600"],
    );
    let source = start_source(test_config()).await;
    // Listed by the first full sync, not only by an event.
    let snap = wait_for(
        &source.registry,
        Duration::from_secs(10),
        "the service",
        |s| s.services.contains_key(name.as_str()),
    )
    .await;
    let entry = &snap.services[name.as_str()].entry;
    assert_eq!((entry.min_replicas, entry.max_replicas), (1, 2));
    assert_eq!(entry.thresholds.cpu, 70.0);
    assert_eq!(entry.metric, pipeline::ScalingMetric::Cpu);
    let mut labels: Vec<&str> = entry
        .config_errors
        .iter()
        .map(|e| e.label.as_str())
        .collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            "autoscaler.cpu.threshold",
            "autoscaler.max",
            "autoscaler.metric",
            "autoscaler.min"
        ]
    );
}

/// Restarts dockerd when dropped, so a failing test never leaves the test bed down.
struct DockerdGuard;

impl Drop for DockerdGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(dev_env())
            .arg("docker-start")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_outage_keeps_services_stale_and_loses_no_change() {
    if !swarm_available("engine_outage") {
        return;
    }
    let _alone = ENGINE.write().await;
    let kept = unique("kept");
    let doomed = unique("doomed");
    let born = unique("born");
    let kept_svc = create_service(
        &kept,
        &[("autoscaler.enabled", "true")],
        0,
        &["sleep", "3600"],
    );
    let doomed_svc = create_service(
        &doomed,
        &[("autoscaler.enabled", "true")],
        0,
        &["sleep", "3600"],
    );
    let source = start_source(test_config()).await;
    let r = &source.registry;
    wait_for(r, Duration::from_secs(10), "both services", |s| {
        s.services.contains_key(kept.as_str()) && s.services.contains_key(doomed.as_str())
    })
    .await;

    let guard = DockerdGuard;
    run_dev_env("docker-stop").await;
    let max_age = 60_000;
    let snap = wait_for(
        r,
        Duration::from_secs(10),
        "the outage to be noticed",
        |s| s.source.is_stale(pipeline::Timestamp::now(), max_age),
    )
    .await;
    assert!(
        snap.services.contains_key(kept.as_str()) && snap.services.contains_key(doomed.as_str())
    );
    let reason = match &snap.source.status {
        pipeline::SourceStatus::Unreachable { reason } => reason.clone(),
        other => panic!("expected unreachable, got {other:?}"),
    };
    assert!(
        reason.starts_with("cannot reach docker at unix:///var/run/docker.sock"),
        "{reason}"
    );
    assert!(snap.source.last_contact.is_some());
    // The source keeps trying; after more failed attempts the services are still there.
    let errors = source.counters.engine_errors.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while source.counters.engine_errors.load(Ordering::Relaxed) < errors + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the source stopped trying the engine"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snap = r.snapshot();
    assert!(snap.source.is_stale(pipeline::Timestamp::now(), max_age));
    assert!(
        snap.services.contains_key(kept.as_str()) && snap.services.contains_key(doomed.as_str())
    );

    run_dev_env("docker-start").await;
    // Started: nothing left for the guard to do (another start would block on the test bed's
    // lock right before the timed part).
    std::mem::forget(guard);
    // Right at restart: one service created, one removed.
    let born_svc = create_service(
        &born,
        &[("autoscaler.enabled", "true")],
        0,
        &["sleep", "3600"],
    );
    docker(&["service", "rm", &doomed]);
    // Found by the list the source makes on reconnecting (its polls wait while it
    // reconnects); the deadline is generous for a loaded machine, not a speed claim.
    let snap = wait_for(
        r,
        Duration::from_secs(20),
        "the changes made at restart",
        |s| s.services.contains_key(born.as_str()) && !s.services.contains_key(doomed.as_str()),
    )
    .await;
    assert!(snap.services.contains_key(kept.as_str()));
    assert_eq!(snap.services[born.as_str()].entry.id, born_svc.id);
    wait_for(r, Duration::from_secs(5), "fresh data", |s| {
        !s.source.is_stale(pipeline::Timestamp::now(), max_age)
    })
    .await;
    assert!(source.counters.event_reconnects.load(Ordering::Relaxed) >= 1);
    drop((kept_svc, doomed_svc));
}

/// The real engine, counting inspects and service change events per service.
struct CountingEngine {
    inner: BollardEngine,
    inspects: Mutex<HashMap<String, u64>>,
    service_events: Arc<Mutex<HashMap<String, u64>>>,
}

impl CountingEngine {
    fn new(inner: BollardEngine) -> Self {
        CountingEngine {
            inner,
            inspects: Mutex::new(HashMap::new()),
            service_events: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn inspects_of(&self, id: &str) -> u64 {
        self.inspects.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    fn service_events_of(&self, id: &str) -> u64 {
        self.service_events
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or(0)
    }
}

impl Engine for CountingEngine {
    fn address(&self) -> &str {
        self.inner.address()
    }
    fn identify(&self) -> BoxFuture<'_, Result<EngineIdentity, EngineError>> {
        self.inner.identify()
    }
    fn list_services(&self) -> BoxFuture<'_, Result<Vec<ServiceSpec>, EngineError>> {
        self.inner.list_services()
    }
    fn inspect_service<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ServiceSpec>, EngineError>> {
        *self
            .inspects
            .lock()
            .unwrap()
            .entry(id.to_owned())
            .or_default() += 1;
        self.inner.inspect_service(id)
    }
    fn events(
        &self,
        since: Option<EventCursor>,
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        let counts = self.service_events.clone();
        self.inner
            .events(since)
            .inspect(move |item| {
                if let Ok(EngineEvent {
                    subject: EventSubject::ServiceChanged { service_id },
                    ..
                }) = item
                {
                    *counts
                        .lock()
                        .unwrap()
                        .entry(service_id.clone())
                        .or_default() += 1;
                }
            })
            .boxed()
    }
    fn running_tasks<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RunningTask>, EngineError>> {
        self.inner.running_tasks(id)
    }
    fn container_stats<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<StatsReading, EngineError>> {
        self.inner.container_stats(id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rapid_updates_cost_few_inspects_and_end_right() {
    if !swarm_available("fifty_updates") {
        return;
    }
    let _shared = ENGINE.read().await;
    let name = unique("burst");
    let svc = create_service(
        &name,
        &[("autoscaler.enabled", "true")],
        0,
        &["sleep", "3600"],
    );
    let config = test_config();
    let inner = BollardEngine::connect(&config.docker_url, config.request_timeout).unwrap();
    let docker = inner.docker().clone();
    let engine = Arc::new(CountingEngine::new(inner));
    let source = start_source_with(Some(engine.clone()), config).await;
    wait_for(
        &source.registry,
        Duration::from_secs(10),
        "the service",
        |s| s.services.contains_key(name.as_str()),
    )
    .await;

    let docker = docker.negotiate_version().await.unwrap();
    for i in 1..=50u32 {
        let current = docker.inspect_service(&svc.id, None).await.unwrap();
        let mut spec = current.spec.unwrap();
        spec.labels
            .get_or_insert_with(Default::default)
            .insert("autoscaler.max".into(), (i + 1).to_string());
        let version = current.version.and_then(|v| v.index).unwrap() as i32;
        let options = UpdateServiceOptions {
            version,
            ..Default::default()
        };
        docker
            .update_service(&svc.id, spec, options, None)
            .await
            .unwrap();
    }
    wait_for(
        &source.registry,
        Duration::from_secs(10),
        "the last update",
        |s| {
            s.services
                .get(name.as_str())
                .is_some_and(|e| e.entry.max_replicas == 51)
        },
    )
    .await;
    // No timer holds an event back: each update's event is inspected as it arrives, or, if
    // an inspect of the service is in flight, folded into one trailing inspect. Never more
    // inspects than events.
    let inspects = engine.inspects_of(&svc.id);
    let events = engine.service_events_of(&svc.id);
    println!("50 rapid updates: {events} service events, {inspects} inspects");
    assert!(
        (1..=events).contains(&inspects) && events >= 50,
        "{inspects} inspects for {events} events of 50 updates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_of_fifty_tasks_costs_few_inspects() {
    if !swarm_available("rolling_update") {
        return;
    }
    let _shared = ENGINE.read().await;
    let name = unique("roll");
    let svc = create_service(
        &name,
        &[("autoscaler.enabled", "true")],
        50,
        &["sleep", "3600"],
    );
    let config = test_config();
    let inner = BollardEngine::connect(&config.docker_url, config.request_timeout).unwrap();
    let engine = Arc::new(CountingEngine::new(inner));
    let source = start_source_with(Some(engine.clone()), config).await;
    let r = &source.registry;
    let settled = |version: Option<u64>| {
        let name = name.clone();
        let source = &source;
        async move {
            // Refresh (a full list) until the manager's own count has caught up.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
            loop {
                source.control.refresh().await.unwrap();
                let snap = source.registry.snapshot();
                let entry = snap.services.get(name.as_str()).map(|e| e.entry.clone());
                if entry.as_ref().is_some_and(|e| {
                    e.running_tasks == Some(50) && version.is_none_or(|v| e.version == v)
                }) {
                    return snap;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never 50 running: {entry:?}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    settled(None).await;

    let (inspects, events, settles) = (
        engine.inspects_of(&svc.id),
        engine.service_events_of(&svc.id),
        source.counters.settle_inspects.load(Ordering::Relaxed),
    );
    let rolling_since = tokio::time::Instant::now();
    docker(&[
        "service",
        "update",
        "--detach",
        "--update-parallelism",
        "10",
        "--update-delay",
        "0s",
        "--env-add",
        "ROLLED=1",
        &name,
    ]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let state = docker(&[
            "service",
            "inspect",
            "--format",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
            &name,
        ]);
        if state == "completed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rolling update never completed ({state})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let version: u64 = docker(&[
        "service",
        "inspect",
        "--format",
        "{{.Version.Index}}",
        &name,
    ])
    .parse()
    .unwrap();
    let shown = r
        .snapshot()
        .services
        .get(name.as_str())
        .map(|e| (e.entry.version, e.entry.running_tasks));
    let snap = settled(Some(version)).await;
    let inspects = engine.inspects_of(&svc.id) - inspects;
    let events = engine.service_events_of(&svc.id) - events;
    // Besides those prompted by events: at most one settling inspect per settling time
    // while container steps stay unmatched by the manager's count.
    let settles = source.counters.settle_inspects.load(Ordering::Relaxed) - settles;
    println!(
        "rolling update of 50 tasks: {events} service events, {inspects} inspects ({settles} of them \
         settling), {} engine events in all; at completion the registry showed (version, running) \
         {shown:?} (engine: version {version})",
        source.counters.events.load(Ordering::Relaxed)
    );
    assert!(
        inspects <= events + settles,
        "{inspects} inspects for {events} service events and {settles} settling ones"
    );
    // The settling time is seconds: one settling inspect per second is already far more.
    let rolled_secs = rolling_since.elapsed().as_secs();
    assert!(
        settles <= rolled_secs + 1,
        "{settles} settling inspects in {rolled_secs} s"
    );
    assert_eq!(snap.services[name.as_str()].entry.desired_tasks, Some(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_tell_a_busy_task_from_an_idle_one() {
    if !swarm_available("metrics") {
        return;
    }
    let _shared = ENGINE.read().await;
    let busy = unique("busy");
    let idle = unique("idle");
    let labels = [("autoscaler.enabled", "true")];
    let _busy = create_service(&busy, &labels, 1, &["sh", "-c", "yes > /dev/null"]);
    let _idle = create_service(&idle, &labels, 1, &["sleep", "3600"]);
    let empty = unique("empty");
    let _empty = create_service(&empty, &labels, 0, &["sleep", "3600"]);
    let source = start_source(test_config()).await;
    wait_for(
        &source.registry,
        Duration::from_secs(30),
        "running tasks",
        |s| {
            [&busy, &idle].iter().all(|n| {
                s.services
                    .get(n.as_str())
                    .is_some_and(|e| e.entry.running_tasks == Some(1))
            })
        },
    )
    .await;
    // The registry counts a task running from its container's start event, before the
    // manager's task list (which sampling reads) says so, and a new task's first figures
    // come one node-sampler interval after its first reading: sample until both have them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let snap = loop {
        let revision = source.control.sample_metrics(&busy).await.unwrap();
        source.control.sample_metrics(&idle).await.unwrap();
        let snap = source.registry.snapshot();
        assert!(snap.revision >= revision);
        if [&busy, &idle]
            .iter()
            .all(|n| snap.metrics.contains_key(n.as_str()))
        {
            break snap;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no figures for {busy} and {idle}: {:?}",
            snap.metrics
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let b = &snap.metrics[busy.as_str()].metrics;
    let i = &snap.metrics[idle.as_str()].metrics;
    // Clearly apart even on a loaded 2-core machine, where `yes` may get well under a core.
    assert!(
        b.cpu_pct > i.cpu_pct + 10.0 && b.cpu_pct > 2.0 * i.cpu_pct,
        "busy {} vs idle {}",
        b.cpu_pct,
        i.cpu_pct
    );
    assert!(b.memory_bytes > 0.0 && i.memory_bytes > 0.0);
    assert_eq!((b.tasks_running, b.tasks_sampled), (1, 1));
    assert!(b.unsampled_tasks.is_empty());
    assert!(b.window_seconds >= 1);
    // No running task: no metrics at all, never zeros.
    source.control.sample_metrics(&empty).await.unwrap();
    assert!(source
        .registry
        .snapshot()
        .metrics
        .get(empty.as_str())
        .is_none());
    assert_eq!(
        source.control.sample_metrics("no-such-service").await,
        Err(swarm_registry::control::ControlError::UnknownService)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_is_negotiated_down_and_confirmed_a_manager() {
    if !swarm_available("identify") {
        return;
    }
    let _shared = ENGINE.read().await;
    let engine =
        BollardEngine::connect("unix:///var/run/docker.sock", Duration::from_secs(10)).unwrap();
    let identity = engine.identify().await.unwrap();
    let server = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert_eq!(
        identity.api_version, server,
        "speaks the engine's own API version"
    );
    let node = docker(&["info", "--format", "{{.Swarm.NodeID}}"]);
    assert_eq!(identity.node_id, node);
    // Requests work at the negotiated version.
    engine.list_services().await.unwrap();
}
