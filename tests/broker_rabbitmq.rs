//! The publisher against the test bed's real RabbitMQ: a consumer built with the same client
//! crate reads the stream and checks what arrived.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use broker_support::*;
use pipeline::{clock_floor, Change, Input, Registry, RegistryConfig};
use std::sync::Arc;
use swarm_registry::broker::{
    floor_above, last_publishing_id, starting_floor, BrokerConfig, Outgoing, RabbitBroker,
    StreamBroker,
};
use swarm_registry::config::Vars;
use swarm_registry::telemetry::PublisherState;

const CONFIRM_LIMIT: Duration = Duration::from_secs(30);

/// Every change this registry's run emitted, in order.
fn run_changes(registry: &Registry) -> Vec<Arc<Change>> {
    let snapshot = registry.snapshot();
    snapshot.changes_since(snapshot.floor).unwrap()
}

async fn wait_confirmed(state: &PublisherState, registry: &Registry, limit: Duration) {
    let target = registry.snapshot().revision;
    assert!(
        eventually(limit, || state.last_confirmed.load(Ordering::Relaxed) >= target).await,
        "the broker did not confirm up to {target} within {limit:?} (confirmed {}, outbox {}, last error {:?})",
        state.last_confirmed.load(Ordering::Relaxed),
        state.outbox_len.load(Ordering::Relaxed),
        state.last_error.lock().unwrap()
    );
}

/// Read the stream until it holds a message with id `last` (or the time is up).
async fn read_through(config: &BrokerConfig, last: u64) -> Vec<Received> {
    let mut reader = StreamReader::open(&config.endpoint, &config.stream).await;
    let received = reader
        .read_until(Duration::from_secs(20), |r| {
            r.iter().any(|m| m.message_id == Some(last))
        })
        .await
        .to_vec();
    // Give a duplicate, if any were stored, the chance to show up.
    let received = reader
        .read_until(Duration::from_millis(500), |r| r.len() > received.len())
        .await
        .to_vec();
    reader.close().await;
    received
}

/// A run's first message: the resync under its floor, with the run's list at its start (empty).
fn assert_opens_run(message: &Received, floor: u64) {
    assert_eq!(
        message.message_id,
        Some(floor),
        "a run opens under its floor"
    );
    assert_eq!(message.routing_key(), "services.updated");
    assert_eq!(message.body["services"], serde_json::json!([]));
    assert_eq!(message.seq(), floor);
}

/// What one run published: its opening resync, then every change once, in order.
fn assert_run_published(received: &[Received], registry: &Registry) {
    assert!(!received.is_empty(), "nothing published");
    assert_opens_run(&received[0], registry.snapshot().floor);
    assert_matches_changes(&received[1..], &run_changes(registry));
}

fn assert_matches_changes(received: &[Received], changes: &[Arc<Change>]) {
    let ids: Vec<u64> = received.iter().map(|m| m.message_id.unwrap()).collect();
    let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
    assert_eq!(ids, seqs, "every change once, in order");
    for (message, change) in received.iter().zip(changes) {
        assert_eq!(message.raw_body, *change.json(), "body = the change's JSON");
        assert_eq!(message.seq(), change.seq);
        assert_eq!(
            message.subject.as_deref(),
            Some(change.routing_key().as_str())
        );
        assert_eq!(message.routing_key(), change.routing_key());
        assert_eq!(message.application_properties["event"], change.kind.event());
        assert_eq!(
            message.application_properties["revision"],
            change.revision.to_string()
        );
        assert_eq!(
            message
                .application_properties
                .get("service_name")
                .map(String::as_str),
            change.kind.service_name()
        );
        assert!(message
            .content_type
            .as_deref()
            .is_some_and(|c| c.contains("application/json")));
        assert!(message.has_creation_time);
    }
    assert!(received.windows(2).all(|w| w[0].offset < w[1].offset));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_remove_arrive_in_order_with_keys_bodies_and_ids() {
    let _shared = BROKER_LOCK.read().await;
    if !rabbitmq_available("create_update_remove_arrive_in_order_with_keys_bodies_and_ids") {
        return;
    }
    let config = test_config("t1");
    let _cleanup = StreamCleanup(config.endpoint.clone(), config.stream.clone());
    let registry = start_registry(clock_floor());
    let (state, shutdown, task) = spawn_publisher(&config, &registry);

    let name = unique("web");
    submit(&registry, Input::Upsert(labelled_spec("svc1", &name, 1, 1))).await;
    submit(&registry, Input::Upsert(labelled_spec("svc1", &name, 3, 2))).await;
    submit(
        &registry,
        Input::Remove {
            id: "svc1".to_owned(),
        },
    )
    .await;
    wait_confirmed(&state, &registry, CONFIRM_LIMIT).await;

    let changes = run_changes(&registry);
    let received = read_through(&config, changes.last().unwrap().seq).await;
    assert_run_published(&received, &registry);
    let about_service: Vec<&str> = received
        .iter()
        .filter(|m| m.application_properties.get("service_name") == Some(&name))
        .map(|m| m.routing_key())
        .collect();
    assert_eq!(
        about_service,
        ["service.added", "service.updated", "service.removed"]
    );
    let updated = received
        .iter()
        .find(|m| m.routing_key() == "service.updated")
        .unwrap();
    assert_eq!(updated.body["service"]["current_replicas"], 3);
    assert!(updated.body["changed_fields"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("current_replicas")));

    // The filter value is the routing key: a consumer filtering on the broker gets just that.
    let mut filtered =
        StreamReader::open_filtered(&config.endpoint, &config.stream, &["service.removed"]).await;
    let only = filtered
        .read_until(Duration::from_secs(10), |r| !r.is_empty())
        .await
        .to_vec();
    filtered.close().await;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].routing_key(), "service.removed");
    assert_eq!(only[0].body["service_name"], name.as_str());

    assert!(state.is_connected());
    assert_eq!(
        state.confirmed.load(Ordering::Relaxed),
        changes.len() as u64 + 1
    );
    assert_eq!(state.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(state.outbox_len.load(Ordering::Relaxed), 0);
    stop_publisher(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_continue_above_earlier_runs_and_nothing_is_stored_twice() {
    let _shared = BROKER_LOCK.read().await;
    if !rabbitmq_available("ids_continue_above_earlier_runs_and_nothing_is_stored_twice") {
        return;
    }
    let config = test_config("t2");
    let _cleanup = StreamCleanup(config.endpoint.clone(), config.stream.clone());
    assert_eq!(
        last_publishing_id(&config, Duration::from_secs(5))
            .await
            .unwrap(),
        None,
        "a producer that never published has no last id"
    );

    // First run.
    let first = start_registry(clock_floor());
    let (state, shutdown, task) = spawn_publisher(&config, &first);
    submit(&first, Input::Upsert(labelled_spec("a1", "alpha", 1, 1))).await;
    wait_confirmed(&state, &first, CONFIRM_LIMIT).await;
    shutdown.cancel();
    task.await.unwrap();
    let first_changes = run_changes(&first);
    let first_last = first_changes.last().unwrap().seq;

    // A restart: the binary asks the broker where the producer stopped and starts above it,
    // even if the clock says otherwise (here: as if the clock had gone back).
    let last = last_publishing_id(&config, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(last, Some(first_last));
    assert!(starting_floor(&config, Duration::from_secs(5)).await >= first_last);
    let second = start_registry(floor_above(0, last));
    let (state, shutdown, task) = spawn_publisher(&config, &second);
    submit(&second, Input::Upsert(labelled_spec("a1", "alpha", 1, 1))).await;
    submit(&second, Input::Upsert(labelled_spec("a1", "alpha", 2, 2))).await;
    wait_confirmed(&state, &second, CONFIRM_LIMIT).await;
    shutdown.cancel();
    task.await.unwrap();
    let second_changes = run_changes(&second);
    assert_eq!(
        second.snapshot().floor,
        first_last + 1,
        "the second run opens right above the first"
    );
    assert_eq!(second_changes[0].seq, first_last + 2);

    // Re-sending ids the stream already holds (as after a lost confirm) is confirmed by the
    // broker and stored once.
    let mut resender = RabbitBroker::new(config.clone());
    let connected = resender.connect().await.unwrap();
    assert_eq!(
        connected.last_publishing_id,
        Some(second_changes.last().unwrap().seq)
    );
    let again: Vec<Outgoing> = first_changes
        .iter()
        .chain(&second_changes)
        .map(|c| Outgoing::from_change(c))
        .collect();
    tokio::time::timeout(Duration::from_secs(10), resender.send_batch(again))
        .await
        .unwrap()
        .unwrap();
    resender.disconnect().await;

    let received = read_through(&config, second_changes.last().unwrap().seq).await;
    let (first_run, second_run) = received.split_at(first_changes.len() + 1);
    assert_run_published(first_run, &first);
    assert_run_published(second_run, &second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_and_stores_nothing_twice() {
    let _exclusive = BROKER_LOCK.write().await;
    if !rabbitmq_available("a_broker_outage_loses_nothing_and_stores_nothing_twice") {
        return;
    }
    let config = test_config("t3");
    let _cleanup = StreamCleanup(config.endpoint.clone(), config.stream.clone());
    let registry = start_registry(clock_floor());
    let (state, shutdown, task) = spawn_publisher(&config, &registry);
    submit(
        &registry,
        Input::Upsert(labelled_spec("o1", "orders", 1, 1)),
    )
    .await;
    wait_confirmed(&state, &registry, CONFIRM_LIMIT).await;

    let outage = BrokerOutage::begin();
    assert!(
        eventually(Duration::from_secs(15), || !state.is_connected()).await,
        "the publisher noticed the outage"
    );
    // About ten seconds of changes while the broker is away. The fold never waits for it.
    for step in 0..10u64 {
        let input = match step {
            4 => Input::Upsert(labelled_spec("o2", "billing", 1, 1)),
            7 => Input::Remove {
                id: "o2".to_owned(),
            },
            _ => Input::Upsert(labelled_spec("o1", "orders", 1 + step % 3, 2 + step)),
        };
        tokio::time::timeout(Duration::from_secs(2), registry.submit(input))
            .await
            .expect("the fold does not wait for the broker")
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(!state.is_connected());
    assert!(state.outbox_len.load(Ordering::Relaxed) > 0);
    outage.end();

    wait_confirmed(&state, &registry, Duration::from_secs(60)).await;
    let changes = run_changes(&registry);
    let received = read_through(&config, changes.last().unwrap().seq).await;
    assert_run_published(&received, &registry);
    assert!(state.reconnects.load(Ordering::Relaxed) >= 1);
    assert_eq!(state.dropped.load(Ordering::Relaxed), 0);
    assert!(state.last_error.lock().unwrap().is_some());
    stop_publisher(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_starts_without_the_broker_and_publishes_once_it_appears() {
    let _exclusive = BROKER_LOCK.write().await;
    if !rabbitmq_available("the_registry_starts_without_the_broker_and_publishes_once_it_appears") {
        return;
    }
    let config = test_config("t4");
    let _cleanup = StreamCleanup(config.endpoint.clone(), config.stream.clone());
    let outage = BrokerOutage::begin();

    // Start-up as the binary does it: the question is bounded, and its failure is not fatal.
    let asked = last_publishing_id(&config, Duration::from_secs(2)).await;
    assert!(asked.is_err(), "{asked:?}");
    let clock = clock_floor();
    let floor = starting_floor(&config, Duration::from_secs(2)).await;
    assert!(floor >= clock);
    let registry = start_registry(floor);
    let (state, shutdown, task) = spawn_publisher(&config, &registry);
    submit(
        &registry,
        Input::Upsert(labelled_spec("d1", "delayed", 2, 1)),
    )
    .await;
    submit(&registry, Input::Tick).await;

    // The registry answers reads; health says enabled but not connected, with the backlog.
    assert_eq!(
        registry.snapshot().services["delayed"]
            .entry
            .current_replicas,
        2
    );
    // The run's opening resync waits with the changes.
    let backlog = run_changes(&registry).len() as u64 + 1;
    assert!(
        eventually(Duration::from_secs(2), || {
            state.outbox_len.load(Ordering::Relaxed) == backlog
        })
        .await
    );
    assert!(state.enabled);
    assert!(!state.is_connected());
    assert!(state
        .last_error
        .lock()
        .unwrap()
        .as_deref()
        .is_some_and(|e| e.contains("connect")));

    outage.end();
    wait_confirmed(&state, &registry, Duration::from_secs(60)).await;
    assert!(state.is_connected());
    let changes = run_changes(&registry);
    let received = read_through(&config, changes.last().unwrap().seq).await;
    assert_run_published(&received, &registry);
    stop_publisher(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rabbitmq_url_is_a_clear_startup_error() {
    // Malformed: refused at start-up, naming the variable and the problem, never the password.
    for (url, problem) in [
        ("rabbitmq-stream//guest:hunter2@localhost", "not a URL"),
        ("http://guest:hunter2@localhost:5552/", "unsupported scheme"),
        (
            "rabbitmq-stream://guest:hunter2@localhost:port/",
            "invalid port",
        ),
    ] {
        let err = BrokerConfig::from_vars(&Vars::from_pairs([("RABBITMQ_URL", url)])).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("invalid RABBITMQ_URL="), "{text}");
        assert!(text.contains(problem), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    // Well-formed but wrong credentials: the start-up question fails clearly, and the
    // publisher keeps the registry running and reports why it is not connected. (RabbitMQ
    // answers a failed login only after about 3 s, hence the timeout.)
    let _shared = BROKER_LOCK.read().await;
    if !rabbitmq_available("a_bad_rabbitmq_url_is_a_clear_startup_error") {
        return;
    }
    let config = BrokerConfig::from_vars(&Vars::from_pairs([
        (
            "RABBITMQ_URL",
            "rabbitmq-stream://guest:hunter2@localhost:5552/",
        ),
        ("RABBITMQ_EXCHANGE", &unique("t5")),
        ("RABBITMQ_TIMEOUT_MS", "5000"),
    ]))
    .unwrap()
    .unwrap();
    let err = last_publishing_id(&config, Duration::from_secs(5))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("AuthenticationFailure"), "{text}");
    assert!(text.contains("guest@localhost:5552"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    let registry = start_registry(clock_floor());
    let (state, shutdown, task) = spawn_publisher(&config, &registry);
    submit(&registry, Input::Tick).await;
    assert!(
        eventually(Duration::from_secs(10), || {
            state
                .last_error
                .lock()
                .unwrap()
                .as_deref()
                .is_some_and(|e| e.contains("AuthenticationFailure"))
        })
        .await,
        "{:?}",
        state.last_error.lock().unwrap()
    );
    assert!(!state.is_connected());
    assert!(!task.is_finished());
    stop_publisher(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_other_arguments_is_reported_and_still_used() {
    let _shared = BROKER_LOCK.read().await;
    if !rabbitmq_available("a_stream_with_other_arguments_is_reported_and_still_used") {
        return;
    }
    let config = test_config("t6");
    let _cleanup = StreamCleanup(config.endpoint.clone(), config.stream.clone());
    let environment = rabbitmq_stream_client::Environment::builder()
        .host("localhost")
        .port(STREAM_PORT)
        .build()
        .await
        .unwrap();
    environment
        .stream_creator()
        .max_age(Duration::from_secs(60))
        .create(&config.stream)
        .await
        .unwrap();

    let registry = start_registry(clock_floor());
    let (state, shutdown, task) = spawn_publisher(&config, &registry);
    submit(
        &registry,
        Input::Upsert(labelled_spec("x1", "existing", 1, 1)),
    )
    .await;
    wait_confirmed(&state, &registry, CONFIRM_LIMIT).await;
    let error = state.last_error.lock().unwrap().clone().unwrap();
    assert!(error.contains("exists with other arguments"), "{error}");
    assert!(error.contains(&config.stream), "{error}");
    let changes = run_changes(&registry);
    let received = read_through(&config, changes.last().unwrap().seq).await;
    assert_run_published(&received, &registry);
    stop_publisher(&shutdown, task).await;
}

/// How a fault in the middle of a burst reaches the publisher.
#[derive(Debug, Clone, Copy)]
enum MidBurstFault {
    /// The broker is killed (SIGKILL), then started again.
    Crash,
    /// The broker, still running, closes every client connection.
    ConnectionsClosed,
}

/// A burst of changes with a fault while batches are in flight: every seq is in the stream
/// exactly once, in order. The batch in flight when the fault hits may or may not have been
/// stored; it is re-sent either way and the broker keeps one copy.
async fn a_fault_mid_burst_loses_nothing_and_stores_nothing_twice(fault: MidBurstFault) {
    // Two changes per upsert. The publisher, with batches of 5 and two round trips per batch,
    // takes seconds to catch up with the first part: the fault hits while it drains it.
    const BEFORE: u64 = 5_000;
    const AFTER: u64 = 1_000;
    let mut config = test_config("burst");
    // Small batches: many round trips, so a batch is nearly always awaiting its confirms; an
    // outbox that holds the whole burst, so nothing is shed into a resync.
    config.tuning.batch_size = 5;
    config.tuning.outbox_capacity = 100_000;
    let _cleanup = StreamCleanup(config.endpoint.clone(), config.stream.clone());
    // A change log that holds the whole burst, so the test can list every change.
    let (registry, driver) = Registry::new(RegistryConfig {
        floor: clock_floor(),
        log_capacity: 16_384,
        ..RegistryConfig::default()
    });
    tokio::spawn(driver.run());
    let (state, shutdown, task) = spawn_publisher(&config, &registry);
    let upsert = |n: u64| Input::Upsert(labelled_spec("b1", "burst", 1 + n % 4, n + 1));

    // The first half of the burst as fast as the fold goes: the publisher falls behind.
    for n in 0..BEFORE {
        submit(&registry, upsert(n)).await;
    }
    assert!(
        eventually(Duration::from_secs(30), || {
            let confirmed = state.confirmed.load(Ordering::Relaxed);
            confirmed >= 100 && state.published.load(Ordering::Relaxed) > confirmed
        })
        .await,
        "publishing under way"
    );
    let at_fault = state.confirmed.load(Ordering::Relaxed);
    let outage = tokio::task::spawn_blocking(move || match fault {
        MidBurstFault::Crash => Some(BrokerOutage::crash()),
        MidBurstFault::ConnectionsClosed => {
            close_broker_connections();
            None
        }
    })
    .await
    .unwrap();
    // The rest of the burst: the fold never waits for the broker.
    for n in BEFORE..BEFORE + AFTER {
        tokio::time::timeout(Duration::from_secs(2), registry.submit(upsert(n)))
            .await
            .expect("the fold does not wait for the broker")
            .unwrap();
    }
    let total = run_changes(&registry).len() as u64 + 1;
    assert!(
        at_fault < total / 2,
        "the fault hit mid-burst ({at_fault} of {total} confirmed)"
    );
    if let Some(outage) = outage {
        outage.end();
    }

    wait_confirmed(&state, &registry, Duration::from_secs(120)).await;
    assert!(
        state.reconnects.load(Ordering::Relaxed) >= 1,
        "the fault was felt"
    );
    assert!(
        state.failed.load(Ordering::Relaxed) > 0,
        "a batch was in flight when the connection went"
    );
    assert_eq!(state.dropped.load(Ordering::Relaxed), 0);
    let changes = run_changes(&registry);
    let received = read_through(&config, changes.last().unwrap().seq).await;
    assert_run_published(&received, &registry);
    stop_publisher(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_burst_loses_nothing_and_stores_nothing_twice() {
    let _exclusive = BROKER_LOCK.write().await;
    if !rabbitmq_available("a_broker_killed_mid_burst_loses_nothing_and_stores_nothing_twice") {
        return;
    }
    a_fault_mid_burst_loses_nothing_and_stores_nothing_twice(MidBurstFault::Crash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_broker_mid_burst_lose_nothing_and_store_nothing_twice() {
    let _exclusive = BROKER_LOCK.write().await;
    if !rabbitmq_available(
        "connections_closed_by_the_broker_mid_burst_lose_nothing_and_store_nothing_twice",
    ) {
        return;
    }
    a_fault_mid_burst_loses_nothing_and_stores_nothing_twice(MidBurstFault::ConnectionsClosed)
        .await;
}
