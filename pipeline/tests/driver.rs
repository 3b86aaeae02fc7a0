//! The driver and subscriptions: store-before-send, no gap, no duplicate, lag recovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use pipeline::{HistoryGone, Input, Registry, RegistryConfig, ServiceMode, ServiceSpec, Update};

fn spec(i: u64, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        id: format!("id{i}"),
        name: format!("svc{i}"),
        labels: BTreeMap::from([("autoscaler.enabled".to_owned(), "true".to_owned())]),
        mode: ServiceMode::Replicated(replicas),
        created_at: "2024-01-15T10:30:00Z".to_owned(),
        updated_at: "2024-01-15T10:30:00Z".to_owned(),
        version: replicas,
        running_tasks: None,
        desired_tasks: None,
    }
}

fn registry(log: usize, broadcast: usize) -> Registry {
    let (registry, driver) = Registry::new(RegistryConfig {
        log_capacity: log,
        broadcast_capacity: broadcast,
        floor: 500,
        ..RegistryConfig::default()
    });
    tokio::spawn(driver.run());
    registry
}

async fn next_change(sub: &mut pipeline::Subscription) -> std::sync::Arc<pipeline::Change> {
    match sub.next().await {
        Some(Update::Change(c)) => c,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// A waker that loads the registry's snapshot at the moment it is woken. A waiting receiver
/// (of the broadcast, of the revision watch) is woken from inside the driver's send, so the
/// revision it records is what the driver had stored by the time it sent: a reader that looks
/// only after receiving could not tell "stored, then sent" from "sent, then stored".
struct SnapshotAtWake {
    registry: Registry,
    /// The revision seen at each wake from outside a poll.
    seen: Mutex<Vec<u64>>,
    /// Set while the test itself polls: a wake then comes from the poll (tokio's
    /// cooperative budget), not from a send.
    polling: Mutex<bool>,
    /// The task to wake in turn.
    outer: Mutex<Option<Waker>>,
}

impl Wake for SnapshotAtWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !*self.polling.lock().unwrap() {
            let revision = self.registry.load().revision;
            self.seen.lock().unwrap().push(revision);
        }
        if let Some(outer) = self.outer.lock().unwrap().take() {
            outer.wake();
        }
    }
}

impl SnapshotAtWake {
    fn new(registry: &Registry) -> Arc<Self> {
        Arc::new(SnapshotAtWake {
            registry: registry.clone(),
            seen: Mutex::new(Vec::new()),
            polling: Mutex::new(false),
            outer: Mutex::new(None),
        })
    }

    /// Run `future` to completion with this waker; the revisions seen at its wakes, and its
    /// output.
    async fn run<F: Future>(self: &Arc<Self>, future: F) -> (Vec<u64>, F::Output) {
        self.seen.lock().unwrap().clear();
        let mut future = pin!(future);
        let waker = Waker::from(self.clone());
        let output = std::future::poll_fn(|cx| {
            *self.outer.lock().unwrap() = Some(cx.waker().clone());
            *self.polling.lock().unwrap() = true;
            let polled = future.as_mut().poll(&mut Context::from_waker(&waker));
            *self.polling.lock().unwrap() = false;
            polled
        })
        .await;
        (std::mem::take(&mut *self.seen.lock().unwrap()), output)
    }
}

/// Store before send, observed at the send itself: the subscriber waits (nothing is queued),
/// the input is folded, and the waker records the snapshot at the moment the first change
/// wakes it. Were the driver to send before storing, that snapshot would still be the
/// previous one and this fails every time, not only when a race is lost.
#[tokio::test(flavor = "current_thread")]
async fn a_change_is_stored_before_it_is_sent() {
    let registry = registry(1000, 1000);
    let (_, mut sub) = registry.subscribe();
    let probe = SnapshotAtWake::new(&registry);
    for i in 0..50 {
        // Queued now, folded only once this task waits: on a current-thread runtime the
        // driver runs when the subscriber below is parked.
        let submitter = tokio::spawn({
            let registry = registry.clone();
            async move {
                registry
                    .submit_with_changes(Input::Upsert(spec(i % 7, i + 1)))
                    .await
            }
        });
        let (seen, first) = probe.run(sub.next()).await;
        let Some(Update::Change(first)) = first else {
            panic!("expected a change, got {first:?}");
        };
        assert_eq!(seen.len(), 1, "woken once, by the driver's send: {seen:?}");
        assert!(
            seen[0] >= first.seq,
            "change {} was sent while the stored snapshot was still at {}",
            first.seq,
            seen[0]
        );
        let submitted = submitter.await.unwrap().unwrap();
        assert_eq!(submitted.changes[0], first);
        for change in &submitted.changes[1..] {
            assert_eq!(next_change(&mut sub).await, *change);
        }
    }
}

/// The same for the revision watch: it moves only once the snapshot is readable.
#[tokio::test(flavor = "current_thread")]
async fn the_revision_watch_is_signalled_after_the_store() {
    let registry = registry(1000, 1000);
    let mut revisions = registry.watch_revision();
    revisions.borrow_and_update();
    let probe = SnapshotAtWake::new(&registry);
    for i in 0..50 {
        let submitter = tokio::spawn({
            let registry = registry.clone();
            async move { registry.submit(Input::Upsert(spec(i % 7, i + 1))).await }
        });
        let (seen, changed) = probe.run(revisions.changed()).await;
        changed.unwrap();
        let signalled = *revisions.borrow_and_update();
        assert_eq!(
            seen.len(),
            1,
            "woken once, by the driver's signal: {seen:?}"
        );
        assert!(
            seen[0] >= signalled,
            "revision {signalled} was signalled while the stored snapshot was still at {}",
            seen[0]
        );
        assert_eq!(submitter.await.unwrap().unwrap(), signalled);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_change_is_always_readable_in_the_snapshot() {
    let registry = registry(1000, 1000);
    let (_, mut sub) = registry.subscribe();
    let writer = {
        let registry = registry.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                registry
                    .send(Input::Upsert(spec(i % 7, i + 1)))
                    .await
                    .unwrap();
            }
        })
    };
    // Each upsert changes the entry: one service.added/updated plus one services.updated;
    // the first input also reports the source as connected (one health.check).
    for expected in 501..=500 + 200 * 2 + 1 {
        let change = next_change(&mut sub).await;
        assert_eq!(change.seq, expected, "no gap, no duplicate");
        assert!(registry.load().revision >= change.seq, "stored before sent");
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn subscribing_while_changes_flow_has_no_gap_and_no_duplicate() {
    let registry = registry(10_000, 10_000);
    let writer = {
        let registry = registry.clone();
        tokio::spawn(async move {
            for i in 0..500 {
                registry
                    .submit(Input::Upsert(spec(i % 11, i + 1)))
                    .await
                    .unwrap();
            }
        })
    };
    tokio::task::yield_now().await;
    let (snapshot, mut sub) = registry.subscribe();
    writer.await.unwrap();
    let end = registry.snapshot().revision;
    let mut expected = snapshot.revision + 1;
    while expected <= end {
        let change = next_change(&mut sub).await;
        assert_eq!(change.seq, expected);
        expected += 1;
    }
}

#[tokio::test]
async fn a_lagging_subscriber_is_caught_up_from_the_log() {
    // The channel holds 4 changes; the log holds all of them.
    let registry = registry(10_000, 4);
    let (snapshot, mut sub) = registry.subscribe();
    for i in 0..100 {
        registry
            .submit(Input::Upsert(spec(i % 5, i + 1)))
            .await
            .unwrap();
    }
    let end = registry.snapshot().revision;
    let mut expected = snapshot.revision + 1;
    while expected <= end {
        assert_eq!(next_change(&mut sub).await.seq, expected);
        expected += 1;
    }
    assert_eq!(sub.resets(), 0);
}

#[tokio::test]
async fn a_subscriber_far_behind_takes_the_log_a_batch_at_a_time_without_gap() {
    // A subscription that stopped asking the log for the rest would wait for the broadcast
    // forever: fail instead of hanging.
    async fn within<T>(next: impl Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(10), next)
            .await
            .expect("the next change never came")
    }
    let registry = registry(10_000, 4);
    let (snapshot, mut sub) = registry.subscribe();
    let mut expected = snapshot.revision + 1;
    for round in 0..3u64 {
        // Far behind: 600 changes while it reads nothing.
        for i in 0..300 {
            registry
                .submit(Input::Upsert(spec(i % 7, round * 1000 + i + 1)))
                .await
                .unwrap();
        }
        // Read part of the way, with more changes arriving in between.
        for _ in 0..250 {
            assert_eq!(within(next_change(&mut sub)).await.seq, expected);
            expected += 1;
            assert!(sub.held() <= pipeline::CATCH_UP_BATCH, "{}", sub.held());
        }
    }
    let end = registry.snapshot().revision;
    while expected <= end {
        assert_eq!(within(next_change(&mut sub)).await.seq, expected);
        expected += 1;
        assert!(sub.held() <= pipeline::CATCH_UP_BATCH, "{}", sub.held());
    }
    assert_eq!(sub.resets(), 0);
    // And live again afterwards.
    registry
        .submit(Input::Upsert(spec(1, 9_999)))
        .await
        .unwrap();
    assert_eq!(within(next_change(&mut sub)).await.seq, end + 1);
}

#[tokio::test]
async fn a_subscriber_behind_the_log_gets_a_reset_then_live_changes() {
    let registry = registry(8, 4);
    let (_, mut sub) = registry.subscribe();
    for i in 0..50 {
        registry
            .submit(Input::Upsert(spec(i % 5, i + 1)))
            .await
            .unwrap();
    }
    match sub.next().await {
        Some(Update::Reset { snapshot, reason }) => {
            assert!(matches!(reason, HistoryGone::Evicted { .. }), "{reason:?}");
            assert_eq!(snapshot.services.len(), 5);
            assert_eq!(sub.position(), snapshot.revision);
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    assert_eq!(sub.resets(), 1);
    let before = registry.snapshot().revision;
    registry
        .submit(Input::Remove {
            id: "id1".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(next_change(&mut sub).await.seq, before + 1);
}

#[tokio::test]
async fn resuming_replays_exactly_the_missed_changes() {
    let registry = registry(1000, 1000);
    for i in 0..10 {
        registry.submit(Input::Upsert(spec(i, 1))).await.unwrap();
    }
    let held = registry.snapshot().revision;
    registry.submit(Input::Upsert(spec(3, 2))).await.unwrap();
    registry
        .submit(Input::Remove {
            id: "id4".to_owned(),
        })
        .await
        .unwrap();
    let mut sub = registry.subscribe_after(held);
    let mut got = Vec::new();
    for _ in 0..4 {
        let c = next_change(&mut sub).await;
        got.push((c.seq - held, c.routing_key()));
    }
    assert_eq!(
        got,
        [
            (1, "service.updated".to_owned()),
            (2, "services.updated".to_owned()),
            (3, "service.removed".to_owned()),
            (4, "services.updated".to_owned()),
        ]
    );
}

#[tokio::test]
async fn ids_from_an_earlier_run_or_the_future_get_a_reset() {
    let registry = registry(1000, 1000);
    registry.submit(Input::Upsert(spec(1, 1))).await.unwrap();
    let now = registry.snapshot().revision;
    for (asked, expect_earlier) in [(499, true), (now + 10, false)] {
        let mut sub = registry.subscribe_after(asked);
        match sub.next().await {
            Some(Update::Reset { snapshot, reason }) => {
                assert_eq!(snapshot.revision, now);
                if expect_earlier {
                    assert!(
                        matches!(reason, HistoryGone::EarlierRun { .. }),
                        "{reason:?}"
                    );
                } else {
                    assert!(matches!(reason, HistoryGone::Future { .. }), "{reason:?}");
                }
            }
            other => panic!("expected a reset for {asked}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_driver_stops_when_its_handles_are_gone() {
    let (registry, driver) = Registry::new(RegistryConfig::default());
    let (_, mut sub) = registry.subscribe();
    for input in [Input::Upsert(spec(1, 1)), Input::Tick] {
        registry.send(input).await.unwrap();
    }
    let task = tokio::spawn(driver.run());
    drop(registry);
    let last = task.await.unwrap();
    assert_eq!(last.services.len(), 1);
    let mut keys = Vec::new();
    while let Some(Update::Change(c)) = sub.next().await {
        keys.push(c.routing_key());
    }
    assert_eq!(
        keys,
        [
            "service.added",
            "health.check",
            "services.updated",
            "health.check"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revision_watch_moves_only_once_the_snapshot_is_readable() {
    let registry = registry(1000, 1000);
    let mut revisions = registry.watch_revision();
    assert_eq!(*revisions.borrow_and_update(), 500);
    let writer = {
        let registry = registry.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                registry
                    .send(Input::Upsert(spec(i % 5, i + 1)))
                    .await
                    .unwrap();
            }
        })
    };
    let last = 500 + 100 * 2 + 1;
    let mut seen = 500;
    while seen < last {
        revisions.changed().await.unwrap();
        let revision = *revisions.borrow_and_update();
        assert!(revision > seen, "the watch only rises");
        assert!(
            registry.load().revision >= revision,
            "stored before signalled"
        );
        seen = revision;
    }
    writer.await.unwrap();
    // An input that emits nothing leaves the watch alone.
    registry.submit(Input::Upsert(spec(4, 100))).await.unwrap();
    assert!(!revisions.has_changed().unwrap());
}

#[tokio::test]
async fn the_revision_watch_closes_when_the_driver_stops() {
    let (registry, driver) = Registry::new(RegistryConfig::default());
    let mut revisions = registry.watch_revision();
    let task = tokio::spawn(driver.run());
    drop(registry);
    task.await.unwrap();
    assert!(revisions.changed().await.is_err());
}

#[tokio::test]
async fn a_submitter_gets_exactly_its_transitions_changes() {
    let registry = registry(1000, 1000);
    let (_, mut sub) = registry.subscribe();
    for input in [
        Input::Upsert(spec(1, 1)),
        Input::Upsert(spec(1, 1)),
        Input::Upsert(spec(1, 2)),
        Input::Remove {
            id: "id1".to_owned(),
        },
    ] {
        let submitted = registry.submit_with_changes(input).await.unwrap();
        let mut broadcast = Vec::new();
        while broadcast.len() < submitted.changes.len() {
            broadcast.push(next_change(&mut sub).await);
        }
        assert_eq!(submitted.changes, broadcast);
        if let Some(last) = submitted.changes.last() {
            assert_eq!(last.seq, submitted.revision);
        }
        assert!(submitted
            .changes
            .iter()
            .all(|c| c.revision == submitted.revision));
        assert_eq!(registry.load().revision, submitted.revision);
    }
    // The repeated upsert changed nothing, so nothing else was broadcast.
    assert_eq!(sub.position(), registry.load().revision);
}
