//! The outbox: changes taken from the registry and not yet confirmed by the broker.
//!
//! It is the publisher's whole memory, and pure: no clock, no IO. Its rules:
//!
//! - Order is the registry's: entries are kept by rising seq, batches are cut from the front,
//!   and a failed batch goes back to the front, so publishing ids only ever rise on the wire
//!   (the broker drops an id at or below the last it stored, which makes re-sending safe).
//! - It is bounded. When it overflows, the oldest unsent changes go, and in their place stands
//!   one *resync marker*: a `services.updated` carrying the full list of services as of the
//!   newest change it replaced, published under that change's seq. A consumer that missed the
//!   dropped changes is whole again once it reads the marker, and ids still rise.
//! - Changes in flight (sent, confirms awaited) are never dropped: they may already be stored.
//!
//! To build a marker without asking the registry, every entry remembers the service list just
//! after it. The maps are persistent, so that costs a pointer per entry, not a copy.

use std::collections::VecDeque;
use std::sync::Arc;

use pipeline::{services_after, Change, ChangeKind, ServiceMap, Timestamp};

use super::message::Outgoing;

#[derive(Debug, Clone)]
enum Entry {
    Change {
        change: Arc<Change>,
        services_after: ServiceMap,
    },
    /// Stands for dropped or skipped changes up to and including `seq`.
    Resync {
        seq: u64,
        at: Timestamp,
        services: ServiceMap,
    },
}

impl Entry {
    fn seq(&self) -> u64 {
        match self {
            Entry::Change { change, .. } => change.seq,
            Entry::Resync { seq, .. } => *seq,
        }
    }

    fn at(&self) -> Timestamp {
        match self {
            Entry::Change { change, .. } => change.at,
            Entry::Resync { at, .. } => *at,
        }
    }

    fn services_after(&self) -> &ServiceMap {
        match self {
            Entry::Change { services_after, .. } => services_after,
            Entry::Resync { services, .. } => services,
        }
    }

    fn outgoing(&self) -> Outgoing {
        match self {
            Entry::Change { change, .. } => Outgoing::from_change(change),
            Entry::Resync { seq, at, services } => {
                Outgoing::from_change(&resync_change(*seq, *at, services.clone()))
            }
        }
    }
}

/// The `services.updated` a resync publishes: the same body the fold would render for that
/// list, numbered with the seq it stands for. Its revision is that seq too, since the list is
/// exactly the state as of it.
pub fn resync_change(seq: u64, at: Timestamp, services: ServiceMap) -> Change {
    Change::new(seq, seq, at, ChangeKind::ServicesUpdated { services })
}

/// Limits of one batch. The broker refuses frames above its frame size (1 MiB by default),
/// so batches are cut by bytes as well as by count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    /// A single message larger than this can never be sent; it is set aside, not retried
    /// forever.
    pub max_message_bytes: usize,
}

impl BatchLimits {
    /// Limits for a connection whose frames may hold `frame_max` bytes.
    pub fn new(max_messages: usize, frame_max: usize) -> Self {
        // Room for the frame's own header and the per-message framing.
        let usable = frame_max.saturating_sub(4096).max(1);
        BatchLimits {
            max_messages: max_messages.max(1),
            max_bytes: usable,
            max_message_bytes: usable,
        }
    }
}

/// A message that cannot be published because it is larger than a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversized {
    pub publishing_id: u64,
    pub routing_key: String,
    pub bytes: usize,
}

/// What to send next.
#[derive(Debug, Default)]
pub struct Batch {
    pub messages: Vec<Outgoing>,
    /// Entries removed because they can never fit in a frame.
    pub oversized: Vec<Oversized>,
}

/// Changes waiting for the broker, in order, bounded.
#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    capacity: usize,
    in_flight: usize,
    /// The service list after the newest entry taken in.
    tail_services: ServiceMap,
    /// The seq of the newest change taken in (or the revision of the last reset).
    position: u64,
}

impl Outbox {
    /// An empty outbox for a registry at `position` whose services are `services`.
    pub fn new(capacity: usize, position: u64, services: ServiceMap) -> Self {
        Outbox {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            in_flight: 0,
            tail_services: services,
            position,
        }
    }

    /// The outbox of a run whose changes are numbered above `floor`: it opens with a resync
    /// marker under `floor` itself, holding the run's list as of its start (empty). It is the
    /// run's first message on the stream, so a consumer sees where a new run began (after a
    /// crash, changes the previous run never got confirmed are gone) and replaces its list;
    /// the run's own changes then describe every service again.
    pub fn starting_run(capacity: usize, floor: u64, at: Timestamp) -> Self {
        let mut outbox = Outbox::new(capacity, floor, ServiceMap::new());
        outbox.entries.push_back(Entry::Resync {
            seq: floor,
            at,
            services: ServiceMap::new(),
        });
        outbox
    }

    /// Take in the registry's next change. Returns how many changes were dropped to make room.
    /// A change at or below the position (a repeat) is ignored.
    pub fn push(&mut self, change: Arc<Change>) -> u64 {
        if change.seq <= self.position {
            return 0;
        }
        let services = services_after(&self.tail_services, &change.kind);
        self.position = change.seq;
        self.tail_services = services.clone();
        self.entries.push_back(Entry::Change {
            change,
            services_after: services,
        });
        self.shed()
    }

    /// The registry could not say what happened between the position and `revision` (the
    /// subscription was reset): queue a resync with the full list at `revision`. Returns how
    /// many changes were skipped or dropped.
    pub fn reset(&mut self, revision: u64, services: ServiceMap, at: Timestamp) -> u64 {
        if revision <= self.position {
            return 0;
        }
        let skipped = revision - self.position;
        self.position = revision;
        self.tail_services = services.clone();
        self.entries.push_back(Entry::Resync {
            seq: revision,
            at,
            services,
        });
        skipped + self.shed()
    }

    /// Drop the oldest unsent changes until the outbox fits its capacity.
    fn shed(&mut self) -> u64 {
        let mut dropped = 0;
        while self.entries.len() > self.capacity {
            let first_unsent = self.in_flight;
            let Some(entry) = self.entries.get(first_unsent) else {
                break;
            };
            match entry {
                Entry::Change { .. } => {
                    // The oldest unsent change becomes the marker that stands for it.
                    let marker = Entry::Resync {
                        seq: entry.seq(),
                        at: entry.at(),
                        services: entry.services_after().clone(),
                    };
                    self.entries[first_unsent] = marker;
                    dropped += 1;
                }
                Entry::Resync { .. } => {
                    // The marker absorbs the entry after it.
                    let Some(victim) = self.entries.remove(first_unsent + 1) else {
                        break;
                    };
                    if matches!(victim, Entry::Change { .. }) {
                        dropped += 1;
                    }
                    self.entries[first_unsent] = Entry::Resync {
                        seq: victim.seq(),
                        at: victim.at(),
                        services: victim.services_after().clone(),
                    };
                }
            }
        }
        dropped
    }

    /// Mark the next unsent entries as in flight and return them as messages.
    pub fn next_batch(&mut self, limits: BatchLimits) -> Batch {
        let mut batch = Batch::default();
        let mut bytes = 0;
        let mut index = self.in_flight;
        while index < self.entries.len() && batch.messages.len() < limits.max_messages {
            let message = self.entries[index].outgoing();
            let size = message.frame_bytes();
            if size > limits.max_message_bytes {
                self.entries.remove(index);
                batch.oversized.push(Oversized {
                    publishing_id: message.publishing_id,
                    routing_key: message.routing_key,
                    bytes: size,
                });
                continue;
            }
            if !batch.messages.is_empty() && bytes + size > limits.max_bytes {
                break;
            }
            bytes += size;
            batch.messages.push(message);
            index += 1;
        }
        self.in_flight = index;
        batch
    }

    /// The broker confirmed everything in flight. Returns how many entries that was and the
    /// highest publishing id among them.
    pub fn confirm_in_flight(&mut self) -> (usize, Option<u64>) {
        let count = self.in_flight;
        let last = count
            .checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .map(Entry::seq);
        self.entries.drain(..count);
        self.in_flight = 0;
        (count, last)
    }

    /// Sending failed: what was in flight is unsent again (to be re-sent, in order, after
    /// reconnecting). Returns how many entries that was, and how many changes were dropped
    /// because the outbox, now free to shed them, was over capacity.
    pub fn requeue(&mut self) -> (usize, u64) {
        let count = self.in_flight;
        self.in_flight = 0;
        (count, self.shed())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether something waits to be sent.
    pub fn has_unsent(&self) -> bool {
        self.entries.len() > self.in_flight
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use pipeline::{Folder, Input, ServiceMode, ServiceSpec, Snapshot};
    use proptest::prelude::*;

    fn spec(n: u8, version: u64) -> ServiceSpec {
        ServiceSpec {
            id: format!("id{n}"),
            name: format!("svc{n}"),
            labels: [("autoscaler.enabled".to_owned(), "true".to_owned())].into(),
            mode: ServiceMode::Replicated(1 + version % 3),
            created_at: "2024-01-15T10:30:00Z".into(),
            updated_at: "2024-01-15T10:30:00Z".into(),
            version,
            running_tasks: Some(1),
            desired_tasks: Some(1),
        }
    }

    /// Fold inputs into the changes a registry would emit, and the final snapshot.
    fn run_registry(inputs: &[Input]) -> (Vec<Arc<Change>>, Snapshot) {
        let folder = Folder::default();
        let mut snapshot = Snapshot::empty(1000, 64, Timestamp(0));
        let mut changes = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let t = folder.fold(&snapshot, input, Timestamp(i as i64));
            changes.extend(t.changes);
            snapshot = t.snapshot;
        }
        (changes, snapshot)
    }

    fn input_strategy() -> impl Strategy<Value = Input> {
        prop_oneof![
            (0u8..6, 1u64..50).prop_map(|(n, v)| Input::Upsert(spec(n, v))),
            (0u8..6).prop_map(|n| Input::Remove {
                id: format!("id{n}")
            }),
            Just(Input::Tick),
        ]
    }

    #[derive(Debug, Clone, Copy)]
    enum Step {
        Take(usize),
        Send,
        Confirm,
        Fail,
    }

    fn step_strategy() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1usize..8).prop_map(Step::Take),
            Just(Step::Send),
            Just(Step::Confirm),
            Just(Step::Fail),
        ]
    }

    /// A consumer of the stream: applies every message it receives, as a client would.
    #[derive(Default)]
    struct Consumer {
        ids: Vec<u64>,
        services: ServiceMap,
    }

    impl Consumer {
        fn receive(&mut self, outbox_messages: &[Outgoing], all: &[Arc<Change>]) {
            for message in outbox_messages {
                // The broker deduplicates: an id at or below the last stored is not stored.
                if self
                    .ids
                    .last()
                    .is_some_and(|last| message.publishing_id <= *last)
                {
                    continue;
                }
                self.ids.push(message.publishing_id);
                let kind = match all.iter().find(|c| c.seq == message.publishing_id) {
                    Some(c) if message.event == c.kind.event() => c.kind.clone(),
                    _ => {
                        // A resync: its body lists the services.
                        let body: serde_json::Value = serde_json::from_str(&message.body).unwrap();
                        assert_eq!(body["event"], "services.updated");
                        let names: Vec<String> = body["services"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|s| s["name"].as_str().unwrap().to_owned())
                            .collect();
                        // The list must be the registry's state as of the marker's seq.
                        let mut map = ServiceMap::new();
                        for c in all.iter().filter(|c| c.seq <= message.publishing_id) {
                            map = services_after(&map, &c.kind);
                        }
                        let listed: Vec<String> = map.keys().map(|k| k.to_string()).collect();
                        assert_eq!(listed, names, "resync lists the state as of its seq");
                        ChangeKind::ServicesUpdated { services: map }
                    }
                };
                self.services = services_after(&self.services, &kind);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the interleaving of intake, sends, confirms and failures, and however small
        /// the outbox: ids rise, a consumer ends with the registry's services, and when nothing
        /// was dropped it received every change exactly once.
        #[test]
        fn consumers_always_resynchronise(
            inputs in proptest::collection::vec(input_strategy(), 1..40),
            steps in proptest::collection::vec(step_strategy(), 0..60),
            capacity in 1usize..12,
        ) {
            let (changes, final_snapshot) = run_registry(&inputs);
            let mut outbox = Outbox::new(capacity, 1000, ServiceMap::new());
            let limits = BatchLimits::new(4, 1 << 20);
            let mut consumer = Consumer::default();
            let mut fed = 0;
            let mut dropped = 0;
            let mut in_flight: Vec<Outgoing> = Vec::new();
            for step in steps {
                match step {
                    Step::Take(n) => {
                        for change in changes.iter().skip(fed).take(n) {
                            dropped += outbox.push(change.clone());
                        }
                        fed = (fed + n).min(changes.len());
                    }
                    Step::Send if outbox.in_flight() == 0 => {
                        in_flight = outbox.next_batch(limits).messages;
                    }
                    Step::Send => {}
                    Step::Confirm => {
                        consumer.receive(&in_flight, &changes);
                        let (n, _) = outbox.confirm_in_flight();
                        prop_assert_eq!(n, in_flight.len());
                        in_flight.clear();
                    }
                    Step::Fail => {
                        // Part of a failed batch may have been stored before the failure.
                        consumer.receive(&in_flight[..in_flight.len() / 2], &changes);
                        dropped += outbox.requeue().1;
                        in_flight.clear();
                    }
                }
                prop_assert!(outbox.len() <= capacity.max(outbox.in_flight() + 1));
            }
            for change in changes.iter().skip(fed) {
                dropped += outbox.push(change.clone());
            }
            if outbox.in_flight() > 0 {
                consumer.receive(&in_flight, &changes);
                outbox.confirm_in_flight();
            }
            while outbox.has_unsent() {
                let batch = outbox.next_batch(limits);
                prop_assert!(batch.oversized.is_empty());
                consumer.receive(&batch.messages, &changes);
                outbox.confirm_in_flight();
            }
            prop_assert!(outbox.is_empty());
            prop_assert!(consumer.ids.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(&consumer.services, &final_snapshot.services);
            if dropped == 0 {
                let all: Vec<u64> = changes.iter().map(|c| c.seq).collect();
                prop_assert_eq!(&consumer.ids, &all);
            }
        }
    }

    fn changes_of(n: usize) -> Vec<Arc<Change>> {
        let inputs: Vec<Input> = (0..n).map(|i| Input::Upsert(spec(i as u8, 1))).collect();
        run_registry(&inputs).0
    }

    #[test]
    fn overflow_keeps_the_newest_and_one_marker_for_the_rest() {
        let changes = changes_of(5); // each upsert: added, (health on first), services.updated
        let mut outbox = Outbox::new(4, 1000, ServiceMap::new());
        let mut dropped = 0;
        for c in &changes {
            dropped += outbox.push(c.clone());
        }
        assert_eq!(outbox.len(), 4);
        assert_eq!(dropped as usize, changes.len() - 3);
        let batch = outbox.next_batch(BatchLimits::new(100, 1 << 20));
        let ids: Vec<u64> = batch.messages.iter().map(|m| m.publishing_id).collect();
        let newest: Vec<u64> = changes.iter().rev().take(3).rev().map(|c| c.seq).collect();
        assert_eq!(ids[1..], newest[..]);
        assert_eq!(ids[0], newest[0] - 1);
        assert_eq!(batch.messages[0].event, "services.updated");
        let body: serde_json::Value = serde_json::from_str(&batch.messages[0].body).unwrap();
        assert_eq!(body["seq"], ids[0]);
        assert_eq!(body["revision"], ids[0]);
    }

    #[test]
    fn in_flight_entries_are_never_dropped() {
        let changes = changes_of(4);
        let mut outbox = Outbox::new(2, 1000, ServiceMap::new());
        outbox.push(changes[0].clone());
        outbox.push(changes[1].clone());
        let sent = outbox.next_batch(BatchLimits::new(2, 1 << 20));
        assert_eq!(sent.messages.len(), 2);
        for c in &changes[2..] {
            outbox.push(c.clone());
        }
        // Both in-flight entries stay; everything unsent collapsed into one marker.
        assert_eq!(outbox.len(), 3);
        assert_eq!(outbox.in_flight(), 2);
        let (count, last) = outbox.confirm_in_flight();
        assert_eq!((count, last), (2, Some(changes[1].seq)));
        let rest = outbox.next_batch(BatchLimits::new(10, 1 << 20)).messages;
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].publishing_id, changes.last().unwrap().seq);
        assert_eq!(rest[0].event, "services.updated");
    }

    #[test]
    fn a_failed_batch_is_sent_again_in_order() {
        let changes = changes_of(2);
        let mut outbox = Outbox::new(100, 1000, ServiceMap::new());
        for c in &changes {
            outbox.push(c.clone());
        }
        let first: Vec<u64> = outbox
            .next_batch(BatchLimits::new(3, 1 << 20))
            .messages
            .iter()
            .map(|m| m.publishing_id)
            .collect();
        assert_eq!(outbox.requeue(), (3, 0));
        let again: Vec<u64> = outbox
            .next_batch(BatchLimits::new(3, 1 << 20))
            .messages
            .iter()
            .map(|m| m.publishing_id)
            .collect();
        assert_eq!(first, again);
    }

    #[test]
    fn batches_are_cut_by_bytes_and_oversized_messages_set_aside() {
        let changes = changes_of(3);
        let mut outbox = Outbox::new(100, 1000, ServiceMap::new());
        for c in &changes {
            outbox.push(c.clone());
        }
        let one = Outgoing::from_change(&changes[0]).frame_bytes();
        let limits = BatchLimits {
            max_messages: 100,
            max_bytes: one + 1,
            max_message_bytes: 1 << 20,
        };
        assert_eq!(outbox.next_batch(limits).messages.len(), 1);
        outbox.confirm_in_flight();
        let tiny = BatchLimits {
            max_messages: 100,
            max_bytes: 1 << 20,
            max_message_bytes: 10,
        };
        let before = outbox.len();
        let batch = outbox.next_batch(tiny);
        assert!(batch.messages.is_empty());
        assert_eq!(batch.oversized.len(), before);
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_run_opens_with_an_empty_resync_under_its_floor() {
        let mut outbox = Outbox::starting_run(10, 1000, Timestamp(5));
        assert_eq!(outbox.len(), 1);
        let changes = changes_of(2);
        for change in &changes {
            outbox.push(change.clone());
        }
        let batch = outbox.next_batch(BatchLimits::new(100, 1 << 20));
        let ids: Vec<u64> = batch.messages.iter().map(|m| m.publishing_id).collect();
        let expected: Vec<u64> = std::iter::once(1000)
            .chain(changes.iter().map(|c| c.seq))
            .collect();
        assert_eq!(ids, expected);
        let first = &batch.messages[0];
        assert_eq!(first.event, "services.updated");
        let body: serde_json::Value = serde_json::from_str(&first.body).unwrap();
        assert_eq!(body["services"], serde_json::json!([]));
        assert_eq!(body["seq"], 1000);
    }

    #[test]
    fn a_reset_queues_the_full_list_and_counts_what_was_skipped() {
        let changes = changes_of(3);
        let (_, snapshot) = run_registry(
            &(0..3)
                .map(|i| Input::Upsert(spec(i, 1)))
                .collect::<Vec<_>>(),
        );
        let mut outbox = Outbox::new(100, 1000, ServiceMap::new());
        outbox.push(changes[0].clone());
        let skipped = outbox.reset(snapshot.revision, snapshot.services.clone(), Timestamp(5));
        assert_eq!(skipped, snapshot.revision - changes[0].seq);
        // Changes the reset already covers are ignored if they arrive late.
        assert_eq!(outbox.push(changes[1].clone()), 0);
        let batch = outbox.next_batch(BatchLimits::new(10, 1 << 20)).messages;
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[1].publishing_id, snapshot.revision);
        let body: serde_json::Value = serde_json::from_str(&batch[1].body).unwrap();
        assert_eq!(body["services_count"], 3);
        assert_eq!(
            outbox.reset(snapshot.revision, ServiceMap::new(), Timestamp(6)),
            0
        );
    }
}
