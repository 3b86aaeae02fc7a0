//! The publishing loop against a broker double that fails on cue: confirms that never come,
//! batches stored halfway, refused or hanging connections, connections lost while idle. The
//! double deduplicates as RabbitMQ does (an id at or below the last stored is not stored), so
//! "exactly once" is checked on what it stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use pipeline::{
    services_after, Change, Input, Registry, RegistryConfig, ServiceMap, ServiceMode, ServiceSpec,
};
use swarm_registry::broker::{BrokerError, Connected, Outgoing, Publisher, StreamBroker, Tuning};
use swarm_registry::telemetry::PublisherState;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const FLOOR: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum SendFault {
    /// Store the batch, never confirm it.
    StoreNeverConfirm,
    /// Store the first half, then fail.
    StoreHalfThenFail,
    /// Store nothing, never answer.
    Hang,
}

#[derive(Default)]
struct Bed {
    stored: Vec<Outgoing>,
    duplicates_ignored: usize,
    down: bool,
    hang_connect: bool,
    /// Every connection attempt takes this long before it answers.
    connect_takes: Option<Duration>,
    connects: usize,
    send_faults: VecDeque<SendFault>,
    hang_all_sends: bool,
    /// Pretend another publisher stored this id under the same name.
    foreign_last_id: Option<u64>,
    connection: Option<watch::Sender<bool>>,
}

impl Bed {
    fn last_id(&self) -> Option<u64> {
        let ours = self.stored.last().map(|m| m.publishing_id);
        ours.max(self.foreign_last_id)
    }

    fn store(&mut self, messages: &[Outgoing]) {
        for message in messages {
            if self
                .last_id()
                .is_some_and(|last| message.publishing_id <= last)
            {
                self.duplicates_ignored += 1;
            } else {
                self.stored.push(message.clone());
            }
        }
    }
}

#[derive(Clone, Default)]
struct FakeBroker(Arc<Mutex<Bed>>);

impl FakeBroker {
    fn bed(&self) -> std::sync::MutexGuard<'_, Bed> {
        self.0.lock().unwrap()
    }

    fn stored_ids(&self) -> Vec<u64> {
        self.bed().stored.iter().map(|m| m.publishing_id).collect()
    }

    /// The connection drops under the publisher's feet.
    fn kill_connection(&self) {
        if let Some(connection) = self.bed().connection.take() {
            let _ = connection.send(true);
        }
    }
}

impl StreamBroker for FakeBroker {
    fn connect(&mut self) -> BoxFuture<'_, Result<Connected, BrokerError>> {
        let shared = self.0.clone();
        Box::pin(async move {
            let (hang, takes) = {
                let bed = shared.lock().unwrap();
                (bed.hang_connect, bed.connect_takes)
            };
            if hang {
                std::future::pending::<()>().await;
            }
            if let Some(takes) = takes {
                tokio::time::sleep(takes).await;
            }
            let mut bed = shared.lock().unwrap();
            if bed.down {
                return Err(BrokerError::Connect {
                    endpoint: "fake".to_owned(),
                    reason: "connection refused".to_owned(),
                });
            }
            bed.connects += 1;
            bed.connection = Some(watch::channel(false).0);
            Ok(Connected {
                last_publishing_id: bed.last_id(),
                notice: None,
            })
        })
    }

    fn send_batch(&mut self, batch: Vec<Outgoing>) -> BoxFuture<'static, Result<(), BrokerError>> {
        let shared = self.0.clone();
        Box::pin(async move {
            let fault = {
                let mut bed = shared.lock().unwrap();
                if bed.connection.is_none() {
                    return Err(BrokerError::NotConnected);
                }
                if bed.hang_all_sends {
                    Some(SendFault::Hang)
                } else {
                    bed.send_faults.pop_front()
                }
            };
            match fault {
                None => {
                    shared.lock().unwrap().store(&batch);
                    Ok(())
                }
                Some(SendFault::StoreNeverConfirm) => {
                    shared.lock().unwrap().store(&batch);
                    std::future::pending().await
                }
                Some(SendFault::StoreHalfThenFail) => {
                    shared.lock().unwrap().store(&batch[..batch.len() / 2]);
                    Err(BrokerError::Publish("stored halfway".to_owned()))
                }
                Some(SendFault::Hang) => std::future::pending().await,
            }
        })
    }

    fn lost(&self) -> BoxFuture<'static, ()> {
        let receiver = self.bed().connection.as_ref().map(|c| c.subscribe());
        Box::pin(async move {
            if let Some(mut receiver) = receiver {
                let _ = receiver.wait_for(|lost| *lost).await;
            }
        })
    }

    fn disconnect(&mut self) -> BoxFuture<'_, ()> {
        self.bed().connection = None;
        Box::pin(std::future::ready(()))
    }

    fn last_publishing_id(&self) -> BoxFuture<'static, Result<Option<u64>, BrokerError>> {
        let bed = self.bed();
        let answer = if bed.connection.is_some() {
            Ok(bed.last_id())
        } else {
            Err(BrokerError::NotConnected)
        };
        Box::pin(std::future::ready(answer))
    }
}

fn tuning() -> Tuning {
    Tuning {
        outbox_capacity: 10_000,
        batch_size: 3,
        timeout: Duration::from_millis(200),
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(50),
    }
}

fn spec(n: u32, version: u64) -> ServiceSpec {
    ServiceSpec {
        id: format!("id{n}"),
        name: format!("svc{n}"),
        labels: [("autoscaler.enabled".to_owned(), "true".to_owned())].into(),
        mode: ServiceMode::Replicated(1 + version % 4),
        created_at: "2024-01-15T10:30:00Z".to_owned(),
        updated_at: "2024-01-15T10:30:00Z".to_owned(),
        version,
        running_tasks: Some(1),
        desired_tasks: Some(1),
    }
}

fn registry_with(config: RegistryConfig) -> Registry {
    let (registry, driver) = Registry::new(config);
    tokio::spawn(driver.run());
    registry
}

fn registry() -> Registry {
    registry_with(RegistryConfig {
        floor: FLOOR,
        ..RegistryConfig::default()
    })
}

struct Running {
    state: Arc<PublisherState>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) -> Arc<PublisherState> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the publisher stops in bounded time")
            .unwrap();
        self.state
    }
}

fn start(broker: &FakeBroker, registry: &Registry, tuning: Tuning) -> Running {
    let state = Arc::new(PublisherState::enabled("fake"));
    let shutdown = CancellationToken::new();
    let publisher = Publisher::new(broker.clone(), registry, tuning, state.clone());
    let task = tokio::spawn(publisher.run(shutdown.clone()));
    Running {
        state,
        shutdown,
        task,
    }
}

/// Every change of the registry's run, in order.
fn all_changes(registry: &Registry) -> Vec<Arc<Change>> {
    let snapshot = registry.snapshot();
    snapshot.changes_since(snapshot.floor).unwrap()
}

fn seqs(changes: &[Arc<Change>]) -> Vec<u64> {
    changes.iter().map(|c| c.seq).collect()
}

/// What a run publishes: its opening resync under the floor, then every change.
fn run_ids(registry: &Registry) -> Vec<u64> {
    std::iter::once(registry.snapshot().floor)
        .chain(seqs(&all_changes(registry)))
        .collect()
}

async fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_all_stored(broker: &FakeBroker, registry: &Registry) {
    let last = registry.snapshot().revision;
    wait_for(Duration::from_secs(5), || {
        broker.stored_ids().last().is_some_and(|id| *id >= last)
    })
    .await;
}

async fn feed(registry: &Registry, inputs: impl IntoIterator<Item = Input>) {
    for input in inputs {
        tokio::time::timeout(Duration::from_secs(1), registry.submit(input))
            .await
            .expect("the fold never waits for the broker")
            .unwrap();
    }
}

fn some_inputs(services: u32) -> Vec<Input> {
    let mut inputs: Vec<Input> = (0..services).map(|n| Input::Upsert(spec(n, 1))).collect();
    inputs.extend((0..services).map(|n| Input::Upsert(spec(n, 2))));
    inputs.push(Input::Remove {
        id: "id0".to_owned(),
    });
    inputs.push(Input::Tick);
    inputs
}

#[tokio::test]
async fn every_change_is_stored_once_in_order() {
    let broker = FakeBroker::default();
    let registry = registry();
    let running = start(&broker, &registry, tuning());
    feed(&registry, some_inputs(4)).await;
    wait_all_stored(&broker, &registry).await;
    let state = running.stop().await;

    let changes = all_changes(&registry);
    assert_eq!(broker.stored_ids(), run_ids(&registry));
    let stored = broker.bed().stored.clone();
    assert_eq!(
        stored[0].event, "services.updated",
        "the run opens with a resync"
    );
    for (stored, change) in stored[1..].iter().zip(&changes) {
        assert_eq!(*stored, Outgoing::from_change(change));
    }
    let n = changes.len() as u64 + 1;
    assert_eq!(state.published.load(Ordering::Relaxed), n);
    assert_eq!(state.confirmed.load(Ordering::Relaxed), n);
    assert_eq!(state.failed.load(Ordering::Relaxed), 0);
    assert_eq!(
        state.last_confirmed.load(Ordering::Relaxed),
        *seqs(&changes).last().unwrap()
    );
    assert_eq!(state.outbox_len.load(Ordering::Relaxed), 0);
    assert_eq!(state.reconnects.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_confirm_that_never_arrives_is_resent_and_stored_once() {
    let broker = FakeBroker::default();
    broker
        .bed()
        .send_faults
        .extend([SendFault::StoreNeverConfirm, SendFault::StoreNeverConfirm]);
    let registry = registry();
    let running = start(&broker, &registry, tuning());
    feed(&registry, some_inputs(3)).await;
    wait_all_stored(&broker, &registry).await;
    wait_for(Duration::from_secs(5), || {
        running.state.outbox_len.load(Ordering::Relaxed) == 0
    })
    .await;
    let state = running.stop().await;

    assert_eq!(broker.stored_ids(), run_ids(&registry));
    assert!(
        broker.bed().duplicates_ignored > 0,
        "the re-sent batch was deduplicated"
    );
    assert!(state.failed.load(Ordering::Relaxed) > 0);
    assert!(state.reconnects.load(Ordering::Relaxed) >= 2);
    assert!(state.published.load(Ordering::Relaxed) > state.confirmed.load(Ordering::Relaxed));
    assert!(state
        .last_error
        .lock()
        .unwrap()
        .as_deref()
        .is_some_and(|e| e.contains("confirms")));
}

#[tokio::test]
async fn a_batch_stored_halfway_is_completed_without_duplicates() {
    let broker = FakeBroker::default();
    broker.bed().send_faults.extend([
        SendFault::StoreHalfThenFail,
        SendFault::StoreHalfThenFail,
        SendFault::StoreHalfThenFail,
    ]);
    let registry = registry();
    let running = start(&broker, &registry, tuning());
    feed(&registry, some_inputs(5)).await;
    wait_all_stored(&broker, &registry).await;
    running.stop().await;
    assert_eq!(broker.stored_ids(), run_ids(&registry));
}

#[tokio::test]
async fn the_fold_never_waits_for_an_unreachable_broker() {
    for hang in [false, true] {
        let broker = FakeBroker::default();
        broker.bed().down = !hang;
        broker.bed().hang_connect = hang;
        let registry = registry();
        let running = start(&broker, &registry, tuning());
        // `feed` bounds every submit: the registry keeps folding while nothing is published.
        feed(&registry, some_inputs(20)).await;
        let changes = all_changes(&registry);
        wait_for(Duration::from_secs(2), || {
            running.state.outbox_len.load(Ordering::Relaxed) == changes.len() as u64 + 1
        })
        .await;
        assert!(!running.state.is_connected());
        assert!(broker.stored_ids().is_empty());
        let error = running.state.last_error.lock().unwrap().clone().unwrap();
        assert!(
            error.contains(if hang {
                "connecting took longer"
            } else {
                "connection refused"
            }),
            "{error}"
        );

        broker.bed().down = false;
        broker.bed().hang_connect = false;
        wait_all_stored(&broker, &registry).await;
        let state = running.stop().await;
        assert_eq!(broker.stored_ids(), run_ids(&registry));
        assert_eq!(state.dropped.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test]
async fn overflow_drops_the_oldest_and_resynchronises_with_the_full_list() {
    let broker = FakeBroker::default();
    broker.bed().down = true;
    let registry = registry();
    let capacity = 5;
    let running = start(
        &broker,
        &registry,
        Tuning {
            outbox_capacity: capacity,
            ..tuning()
        },
    );
    feed(&registry, some_inputs(6)).await;
    let changes = all_changes(&registry);
    wait_for(Duration::from_secs(2), || {
        running.state.dropped.load(Ordering::Relaxed) == (changes.len() - capacity + 1) as u64
    })
    .await;
    assert_eq!(
        running.state.outbox_len.load(Ordering::Relaxed),
        capacity as u64
    );

    broker.bed().down = false;
    wait_all_stored(&broker, &registry).await;
    running.stop().await;

    let stored = broker.bed().stored.clone();
    assert_eq!(stored.len(), capacity);
    let newest = &changes[changes.len() - (capacity - 1)..];
    assert_eq!(
        stored[1..]
            .iter()
            .map(|m| m.publishing_id)
            .collect::<Vec<_>>(),
        seqs(newest)
    );
    // The resync stands for everything dropped: the full list as of the newest dropped change,
    // under that change's seq, so ids still rise.
    let resync = &stored[0];
    assert_eq!(resync.event, "services.updated");
    assert_eq!(resync.publishing_id, newest[0].seq - 1);
    let mut expected = ServiceMap::new();
    for change in changes.iter().filter(|c| c.seq <= resync.publishing_id) {
        expected = services_after(&expected, &change.kind);
    }
    let body: serde_json::Value = serde_json::from_str(&resync.body).unwrap();
    let listed: Vec<&str> = body["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, expected.keys().map(|k| &**k).collect::<Vec<_>>());
    assert_eq!(body["seq"], resync.publishing_id);
    assert_eq!(body["services_count"], expected.len());
}

#[tokio::test]
async fn a_connection_lost_while_idle_is_noticed_and_reopened() {
    let broker = FakeBroker::default();
    let registry = registry();
    let running = start(&broker, &registry, tuning());
    feed(&registry, [Input::Upsert(spec(1, 1))]).await;
    wait_all_stored(&broker, &registry).await;
    assert!(running.state.is_connected());

    broker.bed().down = true;
    broker.kill_connection();
    wait_for(Duration::from_secs(2), || !running.state.is_connected()).await;
    feed(&registry, [Input::Upsert(spec(1, 2))]).await;
    broker.bed().down = false;
    wait_all_stored(&broker, &registry).await;
    let state = running.stop().await;
    assert_eq!(broker.bed().connects, 2);
    assert_eq!(state.reconnects.load(Ordering::Relaxed), 1);
    assert_eq!(broker.stored_ids(), run_ids(&registry));
}

#[tokio::test]
async fn a_publisher_behind_the_change_log_starts_with_the_full_list() {
    let broker = FakeBroker::default();
    let registry = registry_with(RegistryConfig {
        floor: FLOOR,
        log_capacity: 4,
        ..RegistryConfig::default()
    });
    feed(&registry, some_inputs(5)).await;
    let snapshot = registry.snapshot();
    let running = start(&broker, &registry, tuning());
    wait_all_stored(&broker, &registry).await;
    let state = running.stop().await;

    let stored = broker.bed().stored.clone();
    assert_eq!(
        broker.stored_ids(),
        [FLOOR, snapshot.revision],
        "the run's opening resync, then the list as of now"
    );
    assert_eq!(stored[1].event, "services.updated");
    let body: serde_json::Value = serde_json::from_str(&stored[1].body).unwrap();
    assert_eq!(body["services_count"], snapshot.services.len());
    assert_eq!(
        state.dropped.load(Ordering::Relaxed),
        snapshot.revision - FLOOR
    );
}

#[tokio::test]
async fn shutdown_flushes_the_outbox_within_one_timeout() {
    // The broker comes back during a long reconnection delay; shutdown does not wait for the
    // delay but makes one bounded attempt, which publishes everything.
    let broker = FakeBroker::default();
    broker.bed().down = true;
    let registry = registry();
    let running = start(
        &broker,
        &registry,
        Tuning {
            reconnect_min: Duration::from_secs(30),
            reconnect_max: Duration::from_secs(30),
            ..tuning()
        },
    );
    feed(&registry, some_inputs(3)).await;
    wait_for(Duration::from_secs(2), || {
        running.state.outbox_len.load(Ordering::Relaxed) > 0
    })
    .await;
    broker.bed().down = false;
    running.stop().await;
    assert_eq!(broker.stored_ids(), run_ids(&registry));
}

#[tokio::test]
async fn shutdown_returns_in_bounded_time_when_the_broker_hangs() {
    let broker = FakeBroker::default();
    broker.bed().hang_all_sends = true;
    let registry = registry();
    let running = start(
        &broker,
        &registry,
        Tuning {
            timeout: Duration::from_secs(1),
            ..tuning()
        },
    );
    feed(&registry, some_inputs(2)).await;
    wait_for(Duration::from_secs(2), || {
        running.state.published.load(Ordering::Relaxed) > 0
    })
    .await;
    // `stop` fails the test unless the publisher returns within 5 s.
    let state = running.stop().await;
    assert!(broker.stored_ids().is_empty());
    assert!(state.outbox_len.load(Ordering::Relaxed) > 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_does_not_wait_for_a_hanging_connection_attempt() {
    let broker = FakeBroker::default();
    broker.bed().hang_connect = true;
    let registry = registry();
    let timeout = Duration::from_secs(4);
    let running = start(
        &broker,
        &registry,
        Tuning {
            timeout,
            ..tuning()
        },
    );
    feed(&registry, some_inputs(1)).await;
    // Halfway through the first connection attempt.
    tokio::time::sleep(timeout / 2).await;
    let asked = tokio::time::Instant::now();
    running.stop().await;
    // Only the flush's own attempt is waited for: one timeout, not what is left of the first
    // attempt on top of it.
    assert!(asked.elapsed() <= timeout, "{:?}", asked.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_broker_slower_to_connect_than_the_timeout_is_still_reached() {
    let broker = FakeBroker::default();
    let timeout = Duration::from_secs(5);
    // A booting or CPU-starved broker: every attempt needs more than the timeout.
    broker.bed().connect_takes = Some(timeout * 3);
    let registry = registry();
    let running = start(
        &broker,
        &registry,
        Tuning {
            timeout,
            ..tuning()
        },
    );
    feed(&registry, some_inputs(2)).await;
    let last = registry.snapshot().revision;
    let deadline = Instant::now() + Duration::from_secs(120);
    while broker.stored_ids().last().is_none_or(|id| *id < last) {
        assert!(
            Instant::now() < deadline,
            "never connected; last error: {:?}",
            running.state.last_error.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await;
    assert_eq!(broker.stored_ids(), run_ids(&registry));
    assert_eq!(broker.bed().connects, 1, "one attempt got through");
}

#[tokio::test]
async fn a_mark_above_the_run_at_connect_stops_publishing() {
    // Another publisher already stored ids above this run's under the same name: whatever this
    // run sends would be discarded, so it stops and says why.
    let broker = FakeBroker::default();
    broker.bed().foreign_last_id = Some(FLOOR + 1_000);
    let registry = registry();
    let running = start(&broker, &registry, tuning());
    feed(&registry, [Input::Tick]).await;
    wait_for(Duration::from_secs(2), || running.task.is_finished()).await;
    let state = running.stop().await;
    assert_eq!(state.another_writer(), Some(FLOOR + 1_000));
    assert!(!state.is_connected());
    let error = state.last_error.lock().unwrap().clone().unwrap();
    assert!(error.contains("another writer"), "{error}");
    assert!(error.contains("RABBITMQ_PRODUCER_NAME"), "{error}");
    assert_eq!(state.last_confirmed.load(Ordering::Relaxed), 0);
    assert!(broker.stored_ids().is_empty());
}

#[tokio::test]
async fn another_writer_raising_the_mark_mid_run_stops_publishing() {
    let broker = FakeBroker::default();
    let registry = registry();
    let running = start(&broker, &registry, tuning());
    feed(&registry, some_inputs(2)).await;
    wait_all_stored(&broker, &registry).await;
    let before = broker.stored_ids();

    // A second registry under the same name starts above this one and publishes.
    let foreign = registry.snapshot().revision + 1_000_000;
    broker.bed().foreign_last_id = Some(foreign);
    feed(&registry, some_inputs(2)).await;
    wait_for(Duration::from_secs(2), || running.task.is_finished()).await;
    let state = running.stop().await;

    assert_eq!(state.another_writer(), Some(foreign));
    assert!(!state.is_connected());
    assert_eq!(
        broker.stored_ids(),
        before,
        "nothing was sent after the mark moved"
    );
    assert_eq!(broker.bed().duplicates_ignored, 0);
    let error = state.last_error.lock().unwrap().clone().unwrap();
    assert!(error.contains(&foreign.to_string()), "{error}");
    assert!(state.outbox_len.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn the_publisher_ends_once_the_registry_stopped_and_all_is_published() {
    let broker = FakeBroker::default();
    let (registry, driver) = Registry::new(RegistryConfig {
        floor: FLOOR,
        ..RegistryConfig::default()
    });
    let state = Arc::new(PublisherState::enabled("fake"));
    let publisher = Publisher::new(broker.clone(), &registry, tuning(), state.clone());
    for input in some_inputs(3) {
        registry.send(input).await.unwrap();
    }
    let last = driver.run();
    // The driver stops once its queued inputs are folded and no handle is left.
    drop(registry);
    let (last, ()) = tokio::time::timeout(
        Duration::from_secs(5),
        futures::future::join(last, publisher.run(CancellationToken::new())),
    )
    .await
    .expect("the publisher returns by itself");
    let expected: Vec<u64> = (FLOOR..=last.revision).collect();
    assert_eq!(broker.stored_ids(), expected);
    assert_eq!(state.outbox_len.load(Ordering::Relaxed), 0);
}
