//! The source's behaviour against a scripted engine under paused time: faults a real dockerd
//! cannot be made to produce on cue (a silently stalled event stream, an error at a chosen
//! moment), and timing policies checked without waiting for real clocks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use pipeline::{Registry, RegistryConfig, ServiceMode, ServiceSpec, SourceStatus, Timestamp};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

use super::engine::*;
use super::readings::{NodeReport, TaskLookup, TaskReading, STALE_INTERVALS};
use super::running::SETTLED_AFTER;
use super::{run_with_engine, SwarmConfig};
use crate::control::{ControlError, SourceControl};
use crate::telemetry::SourceCounters;

type Feed = mpsc::UnboundedSender<Result<EngineEvent, EngineError>>;

#[derive(Default)]
struct FakeState {
    up: bool,
    services: BTreeMap<String, ServiceSpec>,
    tasks: BTreeMap<String, Vec<RunningTask>>,
    /// By container: CPU nanoseconds used until `since`, and the busy fraction of one CPU
    /// from then on.
    load: BTreeMap<String, (f64, Instant, f64)>,
    /// Containers whose stats calls never answer.
    hanging: Vec<String>,
    feeds: VecDeque<mpsc::UnboundedReceiver<Result<EngineEvent, EngineError>>>,
    subscriptions: Vec<Option<EventCursor>>,
    lists: u64,
    inspects: u64,
    list_delay: Duration,
    /// While set, every inspect answers (what the engine had when it was issued) only when
    /// the test releases it, so answers can complete in any order.
    hold_inspects: bool,
    held: Vec<(String, oneshot::Sender<()>)>,
}

/// An engine whose every answer a test decides.
struct FakeEngine {
    state: Mutex<FakeState>,
    epoch: Instant,
}

const ADDRESS: &str = "unix:///fake.sock";

fn down() -> EngineError {
    EngineError::Unreachable {
        address: ADDRESS.into(),
        detail: "connection refused".into(),
    }
}

impl FakeEngine {
    fn new() -> Arc<Self> {
        Arc::new(FakeEngine {
            state: Mutex::new(FakeState {
                up: true,
                ..FakeState::default()
            }),
            epoch: Instant::now(),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Script the next event subscription; the returned sender feeds it.
    fn feed(&self) -> Feed {
        let (tx, rx) = mpsc::unbounded_channel();
        self.with(|s| s.feeds.push_back(rx));
        tx
    }

    /// From now on, `container` keeps `fraction` of one CPU busy.
    fn set_load(&self, container: &str, fraction: f64) {
        let now = Instant::now();
        self.with(|s| {
            let used = s.load.get(container).map_or(0.0, |(used, since, f)| {
                used + now.duration_since(*since).as_nanos() as f64 * f
            });
            s.load.insert(container.to_owned(), (used, now, fraction));
        });
    }

    fn put(&self, id: &str, name: &str, version: u64, labels: &[(&str, &str)]) {
        let spec = spec(id, name, version, labels);
        self.with(|s| s.services.insert(id.to_owned(), spec));
    }

    /// Let the held inspect at `index` answer; returns the service it was about.
    fn release(&self, index: usize) -> Option<String> {
        self.with(|s| {
            if s.held.is_empty() {
                return None;
            }
            let (id, gate) = s.held.remove(index % s.held.len());
            let _ = gate.send(());
            Some(id)
        })
    }

    fn held(&self) -> usize {
        self.with(|s| s.held.len())
    }
}

fn spec(id: &str, name: &str, version: u64, labels: &[(&str, &str)]) -> ServiceSpec {
    let mut all: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.insert("autoscaler.enabled".into(), "true".into());
    ServiceSpec {
        id: id.into(),
        name: name.into(),
        labels: all,
        mode: ServiceMode::Replicated(1),
        created_at: "2024-01-01T00:00:00Z".into(),
        updated_at: format!("v{version}"),
        version,
        running_tasks: Some(1),
        desired_tasks: Some(1),
    }
}

fn engine_event(cursor: i64, subject: EventSubject) -> Result<EngineEvent, EngineError> {
    Ok(EngineEvent {
        cursor: Some(EventCursor(cursor)),
        subject,
    })
}

/// A service created or updated.
fn event(cursor: i64, service: &str) -> Result<EngineEvent, EngineError> {
    engine_event(
        cursor,
        EventSubject::ServiceChanged {
            service_id: service.to_owned(),
        },
    )
}

fn removal(cursor: i64, service: &str) -> Result<EngineEvent, EngineError> {
    engine_event(
        cursor,
        EventSubject::ServiceRemoved {
            service_id: service.to_owned(),
        },
    )
}

impl Engine for FakeEngine {
    fn address(&self) -> &str {
        ADDRESS
    }

    fn identify(&self) -> BoxFuture<'_, Result<EngineIdentity, EngineError>> {
        let up = self.with(|s| s.up);
        async move {
            if up {
                Ok(EngineIdentity {
                    api_version: "1.41".into(),
                    node_id: "node-1".into(),
                })
            } else {
                Err(down())
            }
        }
        .boxed()
    }

    fn list_services(&self) -> BoxFuture<'_, Result<Vec<ServiceSpec>, EngineError>> {
        async move {
            let delay = self.with(|s| s.list_delay);
            tokio::time::sleep(delay).await;
            self.with(|s| {
                if !s.up {
                    return Err(down());
                }
                s.lists += 1;
                Ok(s.services.values().cloned().collect())
            })
        }
        .boxed()
    }

    fn inspect_service<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ServiceSpec>, EngineError>> {
        let (answer, gate) = self.with(|s| {
            if !s.up {
                return (Err(down()), None);
            }
            s.inspects += 1;
            let gate = s.hold_inspects.then(|| {
                let (tx, rx) = oneshot::channel();
                s.held.push((id.to_owned(), tx));
                rx
            });
            (Ok(s.services.get(id).cloned()), gate)
        });
        async move {
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            answer
        }
        .boxed()
    }

    fn events(
        &self,
        since: Option<EventCursor>,
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        self.with(|s| {
            s.subscriptions.push(since);
            match s.feeds.pop_front() {
                Some(rx) => UnboundedReceiverStream::new(rx).boxed(),
                None if !s.up => futures::stream::once(async { Err(down()) }).boxed(),
                None => futures::stream::pending().boxed(),
            }
        })
    }

    fn running_tasks<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RunningTask>, EngineError>> {
        let answer = self.with(|s| Ok(s.tasks.get(id).cloned().unwrap_or_default()));
        async move { answer }.boxed()
    }

    fn container_stats<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<StatsReading, EngineError>> {
        let now = Instant::now();
        let used = self.with(|s| {
            s.load.get(id).map(|(used, since, fraction)| {
                used + now.duration_since(*since).as_nanos() as f64 * fraction
            })
        });
        let elapsed = now.duration_since(self.epoch).as_nanos() as f64;
        let hangs = self.with(|s| s.hanging.iter().any(|c| c == id));
        async move {
            if hangs {
                std::future::pending::<()>().await;
            }
            let used = used.ok_or_else(|| EngineError::Refused {
                address: ADDRESS.into(),
                what: "a stats request".into(),
                detail: "404 no such container".into(),
            })?;
            // Two CPUs: the host accrues twice the wall time.
            Ok(StatsReading {
                taken_at: now,
                cpu_total: used as u64,
                system_total: (elapsed * 2.0) as u64,
                online_cpus: 2,
                memory_used: 1_000_000,
            })
        }
        .boxed()
    }

    fn local_node_id(&self) -> BoxFuture<'_, Result<String, EngineError>> {
        let up = self.with(|s| s.up);
        async move {
            if up {
                Ok("node-1".into())
            } else {
                Err(down())
            }
        }
        .boxed()
    }

    /// The scripted tasks placed on node-1 that have a container.
    fn task_containers(&self) -> BoxFuture<'_, Result<Vec<TaskContainer>, EngineError>> {
        let containers = self.with(|s| {
            s.tasks
                .iter()
                .flat_map(|(service, tasks)| {
                    tasks
                        .iter()
                        .filter(|t| t.node_id == "node-1")
                        .filter_map(|t| {
                            Some(TaskContainer {
                                container_id: t.container_id.clone()?,
                                task_id: t.task_id.clone(),
                                service_id: service.clone(),
                            })
                        })
                })
                .collect()
        });
        async move { Ok(containers) }.boxed()
    }

    fn container_cgroup<'a>(
        &'a self,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<ContainerCgroup, EngineError>> {
        async move { Ok(ContainerCgroup::default()) }.boxed()
    }
}

struct Harness {
    registry: Registry,
    control: SourceControl,
    counters: Arc<SourceCounters>,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn config() -> SwarmConfig {
    SwarmConfig {
        refresh_interval: Duration::from_secs(30),
        metrics_interval: Duration::from_secs(60),
        // The fake's containers have no cgroup: Docker's stats (the fake's) are the counters.
        cgroup_root: None,
        ..SwarmConfig::default()
    }
}

fn start(engine: &Arc<FakeEngine>, config: SwarmConfig) -> Harness {
    let (registry, driver) = Registry::new(RegistryConfig::default());
    tokio::spawn(driver.run());
    let (control, commands) = SourceControl::channel(16);
    let counters = Arc::new(SourceCounters::default());
    let shutdown = CancellationToken::new();
    tokio::spawn(run_with_engine(
        engine.clone(),
        config,
        registry.clone(),
        commands,
        counters.clone(),
        shutdown.clone(),
    ));
    Harness {
        registry,
        control,
        counters,
        shutdown,
    }
}

/// Let the source run for `d` of (paused, auto-advancing) time.
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

async fn synced(h: &Harness) {
    for _ in 0..200 {
        if h.registry.load().last_full_sync.is_some() {
            return;
        }
        run_for(Duration::from_millis(10)).await;
    }
    panic!("no first sync");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_is_found_by_the_poll_and_reopened() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    let _silent = engine.feed(); // a stream that never says anything
    let h = start(&engine, config());
    synced(&h).await;
    assert_eq!(engine.with(|s| s.subscriptions.len()), 1);
    // Past the second list that follows opening the stream.
    run_for(SETTLED_AFTER + Duration::from_millis(10)).await;

    // A change the stream never reports.
    engine.put("b", "beta", 1, &[]);
    run_for(Duration::from_secs(26)).await;
    assert!(!h.registry.load().services.contains_key("beta"));
    run_for(Duration::from_secs(1) + config().watchdog_grace + Duration::from_millis(50)).await;
    let snap = h.registry.snapshot();
    assert!(
        snap.services.contains_key("beta"),
        "the poll is authoritative"
    );
    assert_eq!(h.counters.event_stalls.load(Ordering::Relaxed), 1);
    assert_eq!(
        engine.with(|s| s.subscriptions.len()),
        2,
        "the stream was reopened"
    );
}

/// Polls at least as often as the watchdog's grace, each finding a new unannounced change: a
/// later poll must not push the verdict on an earlier one out again, or a stalled stream under
/// steady churn is never reopened.
#[tokio::test(start_paused = true)]
async fn steady_unannounced_churn_does_not_postpone_the_watchdog_forever() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    let _silent = engine.feed();
    let config = SwarmConfig {
        refresh_interval: Duration::from_secs(1),
        ..config()
    };
    assert!(config.refresh_interval <= config.watchdog_grace);
    let h = start(&engine, config);
    synced(&h).await;
    for version in 2..12 {
        engine.put("a", "alpha", version, &[]);
        run_for(Duration::from_millis(500)).await;
        engine.put(&format!("n{version}"), &format!("new{version}"), 1, &[]);
        run_for(Duration::from_millis(500)).await;
    }
    assert!(
        h.counters.event_stalls.load(Ordering::Relaxed) >= 1,
        "ten seconds of changes no event announced, and no stall found"
    );
    assert!(
        engine.with(|s| s.subscriptions.len()) >= 2,
        "the stream was reopened"
    );
}

#[tokio::test(start_paused = true)]
async fn announced_changes_are_not_stalls() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    let feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    engine.put("a", "alpha", 2, &[("autoscaler.max", "9")]);
    feed.send(event(10, "a")).unwrap();
    run_for(Duration::from_millis(10)).await;
    assert_eq!(h.registry.load().services["alpha"].entry.max_replicas, 9);
    run_for(Duration::from_secs(32)).await;
    assert_eq!(h.counters.event_stalls.load(Ordering::Relaxed), 0);
    assert_eq!(engine.with(|s| s.subscriptions.len()), 1);
    assert!(engine.with(|s| s.lists) >= 2, "the poll happened");
}

#[tokio::test(start_paused = true)]
async fn a_broken_stream_resumes_from_the_last_event_and_relists() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    let first = engine.feed();
    let _second = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    let since_first = engine.with(|s| s.subscriptions[0]);
    assert!(
        since_first.is_some(),
        "the first subscription starts from now"
    );
    first.send(event(1_000, "a")).unwrap();
    first.send(event(2_000, "a")).unwrap();
    // A change while the stream is broken, beyond what replay would cover.
    engine.put("b", "beta", 1, &[]);
    first.send(Err(down())).unwrap();
    run_for(config().reconnect_max + Duration::from_millis(100)).await;
    let subs = engine.with(|s| s.subscriptions.clone());
    assert_eq!(subs.len(), 2);
    assert_eq!(
        subs[1],
        Some(EventCursor(2_000)),
        "resumes from the last event seen"
    );
    assert!(
        h.registry.load().services.contains_key("beta"),
        "relisted after reconnecting"
    );
    assert_eq!(h.counters.event_reconnects.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn an_outage_keeps_services_stale_and_recovers() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    let feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    let contact = h.registry.load().source.last_contact;

    engine.with(|s| s.up = false);
    feed.send(Err(down())).unwrap();
    run_for(Duration::from_secs(5)).await;
    let snap = h.registry.snapshot();
    assert!(
        snap.services.contains_key("alpha"),
        "the last good services are kept"
    );
    assert_eq!(
        snap.source.status,
        SourceStatus::Unreachable {
            reason: "cannot reach docker at unix:///fake.sock: connection refused".into()
        }
    );
    assert_eq!(snap.source.last_contact, contact);
    assert!(snap.source.is_stale(Timestamp::now(), 60_000));
    // Retries are capped: several per second, not a tight loop, not a long silence.
    let errors = h.counters.engine_errors.load(Ordering::Relaxed);
    assert!((5..=40).contains(&errors), "{errors} failures in 5 s");
    assert_eq!(
        h.control.refresh().await,
        Err(ControlError::Engine(
            "cannot reach docker at unix:///fake.sock: connection refused".into()
        ))
    );

    engine.put("b", "beta", 1, &[]);
    engine.with(|s| s.up = true);
    run_for(config().reconnect_max + Duration::from_millis(100)).await;
    let snap = h.registry.snapshot();
    assert_eq!(snap.source.status, SourceStatus::Connected);
    assert!(snap.services.contains_key("beta"));
    assert!(!snap.source.is_stale(Timestamp::now(), 60_000));
}

#[tokio::test(start_paused = true)]
async fn events_during_an_inspect_cost_one_more_inspect_and_end_right() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    let feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    engine.with(|s| s.hold_inspects = true);
    for v in 2..=51u64 {
        engine.put("a", "alpha", v, &[("autoscaler.max", &v.to_string())]);
        feed.send(event(v as i64, "a")).unwrap();
        run_for(Duration::from_millis(5)).await;
    }
    // The first event's inspect is still in flight: the 49 others wait for it, not a timer.
    assert_eq!(engine.with(|s| s.inspects), 1);
    assert_eq!(engine.release(0).as_deref(), Some("a"));
    run_for(Duration::from_millis(1)).await;
    assert_eq!(h.registry.load().services["alpha"].entry.max_replicas, 2);
    assert_eq!(engine.with(|s| s.inspects), 2, "one trailing inspect");
    assert_eq!(engine.release(0).as_deref(), Some("a"));
    run_for(Duration::from_millis(1)).await;
    assert_eq!(h.registry.load().services["alpha"].entry.max_replicas, 51);
    assert_eq!(engine.with(|s| s.inspects), 2);
    assert_eq!(engine.held(), 0);
    assert_eq!(h.counters.events.load(Ordering::Relaxed), 50);

    // Quiet again: the next event is inspected at once.
    engine.with(|s| s.hold_inspects = false);
    engine.put("a", "alpha", 52, &[("autoscaler.max", "52")]);
    feed.send(event(52, "a")).unwrap();
    run_for(Duration::from_millis(1)).await;
    assert_eq!(h.registry.load().services["alpha"].entry.max_replicas, 52);
}

#[tokio::test(start_paused = true)]
async fn a_removed_service_is_dropped_on_its_event_without_an_inspect() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    let feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    engine.with(|s| s.services.remove("a"));
    feed.send(removal(5, "a")).unwrap();
    run_for(Duration::from_millis(1)).await;
    assert!(h.registry.load().services.is_empty());
    assert_eq!(engine.with(|s| s.inspects), 0);
}

#[tokio::test(start_paused = true)]
async fn a_service_found_gone_by_its_inspect_is_dropped() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    let feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    engine.with(|s| s.services.remove("a"));
    feed.send(event(5, "a")).unwrap();
    run_for(Duration::from_millis(1)).await;
    assert!(h.registry.load().services.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_change_never_overtakes_an_earlier_one_of_another_service() {
    // X updated, then Y created; Y's inspect answers first.
    let engine = FakeEngine::new();
    engine.put("x", "xray", 1, &[]);
    let feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    let (_, mut sub) = h.registry.subscribe();
    engine.with(|s| s.hold_inspects = true);
    engine.put("x", "xray", 2, &[("autoscaler.max", "5")]);
    feed.send(event(1, "x")).unwrap();
    run_for(Duration::from_millis(1)).await;
    engine.put("y", "yankee", 1, &[]);
    feed.send(event(2, "y")).unwrap();
    run_for(Duration::from_millis(1)).await;
    assert_eq!(engine.release(1).as_deref(), Some("y"));
    run_for(Duration::from_millis(1)).await;
    assert!(
        !h.registry.load().services.contains_key("yankee"),
        "y waits for x"
    );
    assert_eq!(engine.release(0).as_deref(), Some("x"));
    run_for(Duration::from_millis(1)).await;
    let keys: Vec<String> = service_changes(&mut sub)
        .await
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c.routing_key(),
                c.kind.service_name().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(keys, ["service.updated xray", "service.added yankee"]);
}

#[tokio::test(start_paused = true)]
async fn a_list_is_never_folded_over_an_inspect_issued_before_it() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    let feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    engine.with(|s| s.hold_inspects = true);
    engine.put("a", "alpha", 2, &[("autoscaler.max", "5")]);
    feed.send(event(1, "a")).unwrap();
    run_for(Duration::from_millis(1)).await;
    engine.put("a", "alpha", 3, &[("autoscaler.max", "7")]);
    // The list (answered at once, with version 3) waits for the inspect (version 2)...
    let control = h.control.clone();
    let refresh = tokio::spawn(async move { control.refresh().await });
    run_for(Duration::from_millis(5)).await;
    assert!(!refresh.is_finished());
    assert_eq!(h.registry.load().services["alpha"].entry.max_replicas, 2);
    engine.release(0);
    refresh.await.unwrap().unwrap();
    // ...and is folded after it, so the newer list is what remains.
    assert_eq!(h.registry.load().services["alpha"].entry.max_replicas, 7);
}

#[tokio::test(start_paused = true)]
async fn running_counts_follow_container_events_before_the_manager_does() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    engine.with(|s| s.services.get_mut("a").unwrap().running_tasks = Some(0));
    let feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    let running = || h.registry.load().services["alpha"].entry.running_tasks;
    assert_eq!(running(), Some(0));
    let started = |cursor| {
        engine_event(
            cursor,
            EventSubject::TaskContainerStarted {
                service_id: "a".into(),
            },
        )
    };
    feed.send(started(1)).unwrap();
    feed.send(started(2)).unwrap();
    run_for(Duration::from_millis(1)).await;
    // The manager still says 0.
    assert_eq!(running(), Some(2));
    assert_eq!(engine.with(|s| s.inspects), 0, "no inspect, no list");
    // A list while the manager lags does not undo it; once it counted them, no double count.
    h.control.refresh().await.unwrap();
    assert_eq!(running(), Some(2));
    engine.with(|s| s.services.get_mut("a").unwrap().running_tasks = Some(2));
    h.control.refresh().await.unwrap();
    assert_eq!(running(), Some(2));
    feed.send(engine_event(
        3,
        EventSubject::TaskContainerDied {
            service_id: "a".into(),
        },
    ))
    .unwrap();
    run_for(Duration::from_millis(1)).await;
    assert_eq!(running(), Some(1));
    // Containers of services never seen, or of other things, change nothing.
    feed.send(engine_event(
        4,
        EventSubject::TaskContainerStarted {
            service_id: "other".into(),
        },
    ))
    .unwrap();
    feed.send(engine_event(5, EventSubject::Other)).unwrap();
    run_for(Duration::from_millis(1)).await;
    assert_eq!(h.registry.load().services.len(), 1);
    assert_eq!(h.counters.events.load(Ordering::Relaxed), 5);
}

#[tokio::test(start_paused = true)]
async fn a_container_step_counted_twice_at_a_reconnect_is_settled_within_seconds() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    engine.with(|s| s.services.get_mut("a").unwrap().running_tasks = Some(0));
    let first = engine.feed();
    let second = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    let running = || h.registry.load().services["alpha"].entry.running_tasks;
    let started = |cursor| {
        engine_event(
            cursor,
            EventSubject::TaskContainerStarted {
                service_id: "a".into(),
            },
        )
    };
    // The stream breaks; meanwhile a container starts and the manager counts it.
    first.send(event(1_000, "a")).unwrap();
    run_for(Duration::from_millis(1)).await;
    first.send(Err(down())).unwrap();
    engine.with(|s| s.services.get_mut("a").unwrap().running_tasks = Some(1));
    run_for(config().reconnect_max + Duration::from_millis(100)).await;
    assert_eq!(running(), Some(1), "the reconnect's list");
    // Its start is replayed after that list: counted a second time, for now.
    second.send(started(2_000)).unwrap();
    run_for(Duration::from_millis(1)).await;
    assert_eq!(running(), Some(2));
    let settles = h.counters.settle_inspects.load(Ordering::Relaxed);
    run_for(SETTLED_AFTER + Duration::from_millis(10)).await;
    assert_eq!(running(), Some(1), "settled long before the next poll");
    assert_eq!(
        h.counters.settle_inspects.load(Ordering::Relaxed),
        settles + 1
    );
}

#[tokio::test(start_paused = true)]
async fn a_container_missed_while_the_stream_opens_is_counted_by_the_recount() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    // A container started just before the subscription: its event is not delivered, and
    // the manager has not counted it yet when the first list is made.
    engine.with(|s| s.services.get_mut("a").unwrap().running_tasks = Some(0));
    let _feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    let running = || h.registry.load().services["alpha"].entry.running_tasks;
    assert_eq!(running(), Some(0));
    engine.with(|s| s.services.get_mut("a").unwrap().running_tasks = Some(1));
    let lists = engine.with(|s| s.lists);
    run_for(SETTLED_AFTER + Duration::from_millis(10)).await;
    assert_eq!(running(), Some(1), "counted long before the next poll");
    assert_eq!(engine.with(|s| s.lists), lists + 1, "one list more");
    // No more than that one until the periodic poll.
    run_for(Duration::from_secs(20)).await;
    assert_eq!(engine.with(|s| s.lists), lists + 1);
}

/// The service changes a subscription has delivered so far.
async fn service_changes(sub: &mut pipeline::Subscription) -> Vec<Arc<pipeline::Change>> {
    let mut out = Vec::new();
    while let Ok(Some(update)) = tokio::time::timeout(Duration::from_millis(1), sub.next()).await {
        if let pipeline::Update::Change(c) = update {
            if c.kind.service_name().is_some() {
                out.push(c);
            }
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn concurrent_refreshes_share_lists() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    let _feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    engine.with(|s| s.list_delay = Duration::from_millis(100));
    let before = engine.with(|s| s.lists);
    let answers = futures::future::join_all((0..8).map(|_| h.control.refresh())).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let lists = engine.with(|s| s.lists) - before;
    assert!(
        (1..=2).contains(&lists),
        "{lists} lists for 8 concurrent refreshes"
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_average_local_tasks_and_say_what_was_skipped() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    engine.put("z", "zero", 1, &[]);
    engine.with(|s| {
        s.tasks.insert(
            "a".into(),
            vec![
                RunningTask {
                    task_id: "t1".into(),
                    node_id: "node-1".into(),
                    container_id: Some("c1".into()),
                    memory_limit: Some(4_000_000),
                },
                RunningTask {
                    task_id: "t2".into(),
                    node_id: "node-2".into(),
                    container_id: Some("c2".into()),
                    memory_limit: Some(4_000_000),
                },
            ],
        );
    });
    engine.set_load("c1", 0.5);
    let _feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    let interval = config().node_sample_interval;
    // The node sampler needs two readings of a container for its first figures.
    run_for(interval * 2 + Duration::from_millis(100)).await;
    let asked = Instant::now();
    let revision = h.control.sample_metrics("alpha").await.unwrap();
    assert!(
        asked.elapsed() < interval,
        "a forced sample reads the board"
    );
    let snap = h.registry.snapshot();
    assert!(snap.revision >= revision);
    let m = &snap.metrics["alpha"].metrics;
    assert_eq!(m.cpu_pct, 50.0);
    assert_eq!(m.memory_bytes, 1_000_000.0);
    assert_eq!(m.memory_pct, Some(25.0));
    assert_eq!(m.window_seconds, 1);
    assert_eq!((m.tasks_running, m.tasks_sampled), (2, 1));
    assert_eq!(m.unsampled_tasks.len(), 1);
    assert_eq!(m.unsampled_tasks[0].task_id, "t2");
    assert_eq!(m.unsampled_tasks[0].reason, "no agent on node node-2");
    assert!(
        snap.metrics.get("zero").is_none(),
        "no running task: no metrics"
    );

    // The figures follow the load from the next interval on.
    engine.set_load("c1", 1.0);
    run_for(interval * 2).await;
    h.control.sample_metrics("alpha").await.unwrap();
    let m = h.registry.snapshot().metrics["alpha"].metrics.clone();
    assert_eq!(m.cpu_pct, 100.0);

    // An agent on node-2 reports: both tasks count, until the agent falls silent.
    h.counters.nodes.record(
        NodeReport {
            node_id: "node-2".into(),
            interval_ms: 1000,
            readings: vec![TaskReading {
                task_id: "t2".into(),
                service_id: "a".into(),
                cpu_pct: 30.0,
                memory_bytes: 3_000_000,
                memory_limit: None,
                window_ms: 1000,
                via: "cgroup".into(),
            }],
            failures: vec![],
        },
        false,
    );
    h.control.sample_metrics("alpha").await.unwrap();
    let m = h.registry.snapshot().metrics["alpha"].metrics.clone();
    assert_eq!((m.tasks_running, m.tasks_sampled), (2, 2));
    assert_eq!(m.cpu_pct, 65.0);
    assert_eq!(m.memory_bytes, 2_000_000.0);
    run_for(interval * (STALE_INTERVALS + 1)).await;
    h.control.sample_metrics("alpha").await.unwrap();
    let m = h.registry.snapshot().metrics["alpha"].metrics.clone();
    assert_eq!((m.tasks_running, m.tasks_sampled), (2, 1));
    assert_eq!(m.unsampled_tasks[0].reason, "no agent on node node-2");
    assert_eq!(
        h.control.sample_metrics("nope").await,
        Err(ControlError::UnknownService)
    );

    // A removed service's metrics go with it, and so do its readings on the board.
    engine.with(|s| s.services.remove("a"));
    h.control.refresh().await.unwrap();
    assert!(h.registry.snapshot().metrics.get("alpha").is_none());
    run_for(config().metrics_interval).await;
    assert_eq!(
        h.counters.nodes.lookup("node-1", "t1"),
        TaskLookup::NotReported
    );
}

#[tokio::test]
async fn an_absent_daemon_is_a_status_not_a_crash() {
    let (registry, driver) = Registry::new(RegistryConfig::default());
    tokio::spawn(driver.run());
    let (_control, commands) = SourceControl::channel(4);
    let shutdown = CancellationToken::new();
    let config = SwarmConfig {
        docker_url: "unix:///nonexistent/docker.sock".into(),
        ..config()
    };
    let source = tokio::spawn(super::run(
        config,
        registry.clone(),
        commands,
        Arc::new(SourceCounters::default()),
        shutdown.clone(),
    ));
    let expected = SourceStatus::Unreachable {
        reason: "cannot reach docker at unix:///nonexistent/docker.sock: no socket at /nonexistent/docker.sock"
            .into(),
    };
    for _ in 0..100 {
        if registry.load().source.status == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(registry.load().source.status, expected);
    assert!(registry.load().services.is_empty());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), source)
        .await
        .expect("run returns on shutdown")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_container_that_never_answers_does_not_hold_up_a_forced_sample() {
    let engine = FakeEngine::new();
    engine.put("a", "alpha", 1, &[]);
    let task = |n: &str| RunningTask {
        task_id: format!("t-{n}"),
        node_id: "node-1".into(),
        container_id: Some(format!("c-{n}")),
        memory_limit: None,
    };
    engine.with(|s| {
        s.tasks.insert("a".into(), vec![task("ok"), task("stuck")]);
        s.hanging.push("c-stuck".into());
    });
    engine.set_load("c-ok", 0.1);
    let _feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    // Each step waits for the stuck container up to the stats timeout, never longer.
    run_for((config().node_sample_interval + config().stats_timeout) * 3).await;
    let asked = Instant::now();
    h.control.sample_metrics("alpha").await.unwrap();
    assert!(asked.elapsed() < config().node_sample_interval);
    let m = h.registry.snapshot().metrics["alpha"].metrics.clone();
    assert_eq!((m.tasks_running, m.tasks_sampled), (2, 1));
    assert_eq!(m.unsampled_tasks[0].task_id, "t-stuck");
    assert!(
        m.unsampled_tasks[0].reason.contains("no stats answer"),
        "{:?}",
        m.unsampled_tasks
    );
    assert!(h.counters.stats_failures.load(Ordering::Relaxed) >= 1);
}

/// One step of a scripted history for the ordering property.
#[derive(Debug, Clone)]
enum Scripted {
    /// Create service n (if it was never created) or update it (if it exists).
    Change(u8),
    /// Remove service n, if it exists.
    Remove(u8),
    /// Let one of the inspects in flight answer (picked by index).
    Answer(usize),
    /// A refresh command (a full list).
    Refresh,
}

fn scripted() -> impl proptest::strategy::Strategy<Value = Scripted> {
    use proptest::prelude::*;
    prop_oneof![
        5 => (0u8..5).prop_map(Scripted::Change),
        1 => (0u8..5).prop_map(Scripted::Remove),
        5 => any::<usize>().prop_map(Scripted::Answer),
        1 => Just(Scripted::Refresh),
    ]
}

/// Play `steps` against the source; returns, for every service change it emitted, the
/// number of the step whose state the change shows, and whether the final registry matches
/// the engine.
async fn play(steps: Vec<Scripted>) -> (Vec<u64>, Vec<String>, bool) {
    let engine = FakeEngine::new();
    let feed = engine.feed();
    let h = start(&engine, config());
    synced(&h).await;
    let (_, mut sub) = h.registry.subscribe();
    engine.with(|s| s.hold_inspects = true);
    let mut created = [false; 5];
    let mut removed_at: BTreeMap<String, u64> = BTreeMap::new();
    let mut refreshes = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        let n = i as u64 + 1; // the step's number, also its event's cursor and spec version
        match step {
            Scripted::Change(k) => {
                let id = format!("s{k}");
                let exists = engine.with(|s| s.services.contains_key(&id));
                if exists || !created[k as usize] {
                    created[k as usize] = true;
                    let max = n.to_string();
                    engine.put(&id, &format!("svc{k}"), n, &[("autoscaler.max", &max)]);
                    feed.send(event(n as i64, &id)).unwrap();
                }
            }
            Scripted::Remove(k) => {
                let id = format!("s{k}");
                if engine.with(|s| s.services.remove(&id)).is_some() {
                    removed_at.insert(id.clone(), n);
                    feed.send(removal(n as i64, &id)).unwrap();
                }
            }
            Scripted::Answer(index) => {
                engine.release(index);
            }
            Scripted::Refresh => {
                let control = h.control.clone();
                refreshes.push(tokio::spawn(async move { control.refresh().await }));
            }
        }
        // The source takes each event before the engine changes again, so an inspect shows
        // the state as of the event that asked for it (or later, for a trailing one).
        run_for(Duration::from_micros(100)).await;
    }
    while engine.held() > 0 {
        engine.release(0);
        run_for(Duration::from_micros(100)).await;
    }
    for refresh in refreshes {
        refresh.await.unwrap().unwrap();
    }
    let mut shown = Vec::new();
    let mut keys = Vec::new();
    for change in service_changes(&mut sub).await {
        keys.push(format!(
            "{} {}",
            change.routing_key(),
            change.kind.service_name().unwrap_or("")
        ));
        match &change.kind {
            pipeline::ChangeKind::ServiceAdded { service }
            | pipeline::ChangeKind::ServiceUpdated { service, .. } => {
                shown.push(service.entry.version)
            }
            pipeline::ChangeKind::ServiceRemoved { id, .. } => shown.push(removed_at[id]),
            _ => {}
        }
    }
    let snap = h.registry.snapshot();
    let expected: Vec<(String, u64)> = engine.with(|s| {
        s.services
            .values()
            .map(|spec| (spec.name.clone(), spec.version))
            .collect()
    });
    let actual: Vec<(String, u64)> = snap
        .services
        .iter()
        .map(|(name, record)| (name.to_string(), record.entry.version))
        .collect();
    (shown, keys, expected == actual)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever order the inspects answer in, and with lists in between: the changes come out
    /// in the order of the events (each shows a later step than the one before), and the
    /// registry ends equal to the engine.
    #[test]
    fn changes_come_out_in_event_order_whatever_order_inspects_answer_in(
        steps in proptest::collection::vec(scripted(), 1..60)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let (shown, keys, converged) = runtime.block_on(play(steps));
        proptest::prop_assert!(
            shown.windows(2).all(|w| w[0] < w[1]),
            "changes out of event order: steps {:?} for {:?}", shown, keys
        );
        proptest::prop_assert!(converged, "the registry differs from the engine");
    }
}
