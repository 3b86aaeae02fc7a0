//! Turning the engine's events into few inspects, and their results into changes in the
//! order the engine reported the events.
//!
//! No event waits for a timer. An event that asks for a service to be looked at starts an
//! inspect at once, unless one is already in flight for that service: then the service is
//! dirty, and exactly one more inspect starts when the one in flight completes. However many
//! events a burst holds, a service costs at most one inspect per completed inspect.
//!
//! Inspects run concurrently and complete in any order, so their results are not applied as
//! they come: every event takes a place (a slot) in one queue, in arrival order, and results
//! are applied from the head of the queue only. A result that completes early waits for the
//! results of earlier events; one that completes late holds back the later ones. A dirty
//! service's one trailing inspect answers for all its events since the inspect in flight, so
//! its slot moves to the newest of them. A full list takes a slot too: it is applied after
//! every inspect issued before it (the fold trusts a list over anything it knows). It also
//! answers for every trailing inspect not started yet: those are not made, and their slots are
//! filled from the list's answer, so a dirty service's change still comes out in the place of
//! its event, not later in the list's.
//!
//! Pure state over plain data: tested without a runtime or an engine.

use std::collections::{HashMap, VecDeque};

/// A place in the apply order. Slots are numbered in the order they were taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u64);

/// An inspect to start now; its result fills `slot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectOrder {
    pub service_id: String,
    pub slot: Slot,
}

#[derive(Debug)]
enum SlotState<T> {
    /// An inspect or a list is still to answer for this place.
    Waiting,
    /// Ready to apply once every earlier slot is.
    Ready(T),
    /// Nothing to apply here (the trailing inspect moved on, or a request failed).
    Empty,
}

/// What is happening about one service.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    /// The slot the inspect in flight fills.
    in_flight: Slot,
    /// The slot of the trailing inspect, when events arrived while one was in flight.
    dirty: Option<Slot>,
}

/// The in-flight/dirty tracker and the ordered queue of things to apply (`T`: what the
/// caller applies: an input for the registry, a list with its requesters...).
#[derive(Debug)]
pub struct ApplyQueue<T> {
    /// The number of the slot at the front of `slots`.
    front: u64,
    slots: VecDeque<SlotState<T>>,
    services: HashMap<String, Tracked>,
    /// By list slot: the trailing inspects that list answers for (service, slot).
    bound: HashMap<Slot, Vec<(String, Slot)>>,
}

impl<T> Default for ApplyQueue<T> {
    fn default() -> Self {
        ApplyQueue {
            front: 0,
            slots: VecDeque::new(),
            services: HashMap::new(),
            bound: HashMap::new(),
        }
    }
}

impl<T> ApplyQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    fn take_slot(&mut self, state: SlotState<T>) -> Slot {
        let slot = Slot(self.front + self.slots.len() as u64);
        self.slots.push_back(state);
        slot
    }

    fn state_mut(&mut self, slot: Slot) -> Option<&mut SlotState<T>> {
        let index = slot.0.checked_sub(self.front)?;
        self.slots.get_mut(usize::try_from(index).ok()?)
    }

    fn clear_slot(&mut self, slot: Slot) {
        if let Some(state) = self.state_mut(slot) {
            *state = SlotState::Empty;
        }
    }

    /// An event says `service_id` changed. Returns the inspect to start now, or `None` when
    /// one is in flight (the service is then dirty, its trailing inspect placed after this
    /// event).
    pub fn changed(&mut self, service_id: &str) -> Option<InspectOrder> {
        if let Some(tracked) = self.services.get(service_id).copied() {
            if let Some(old) = tracked.dirty {
                self.clear_slot(old);
            }
            let slot = self.take_slot(SlotState::Waiting);
            if let Some(t) = self.services.get_mut(service_id) {
                t.dirty = Some(slot);
            }
            return None;
        }
        let slot = self.take_slot(SlotState::Waiting);
        self.services.insert(
            service_id.to_owned(),
            Tracked {
                in_flight: slot,
                dirty: None,
            },
        );
        Some(InspectOrder {
            service_id: service_id.to_owned(),
            slot,
        })
    }

    /// Something complete in itself (the event carried all of it): applied after everything
    /// that arrived before it.
    pub fn push(&mut self, item: T) {
        self.take_slot(SlotState::Ready(item));
    }

    /// An event says `service_id` is gone: `item` (its removal) is applied in the event's
    /// place, and a trailing inspect not started yet is dropped. The inspect in flight still
    /// applies in its earlier place.
    pub fn removed(&mut self, service_id: &str, item: T) {
        if let Some(tracked) = self.services.get_mut(service_id) {
            if let Some(old) = tracked.dirty.take() {
                self.clear_slot(old);
            }
        }
        self.push(item);
    }

    /// A full list is being issued: its answer goes into the returned slot. It answers for
    /// every trailing inspect not started yet: those slots wait for it
    /// ([`ApplyQueue::answer_bound`]) instead of an inspect.
    pub fn list_issued(&mut self) -> Slot {
        let dirty: Vec<(String, Slot)> = self
            .services
            .iter_mut()
            .filter_map(|(id, t)| t.dirty.take().map(|slot| (id.clone(), slot)))
            .collect();
        let slot = self.take_slot(SlotState::Waiting);
        if !dirty.is_empty() {
            self.bound.insert(slot, dirty);
        }
        slot
    }

    /// The list filling `list` answered: fill the slots of the trailing inspects it answers
    /// for, each with `item(service, slot)`. Call before [`ApplyQueue::list_completed`].
    pub fn answer_bound(&mut self, list: Slot, mut item: impl FnMut(&str, Slot) -> T) {
        for (service_id, slot) in self.bound.remove(&list).unwrap_or_default() {
            let answer = item(&service_id, slot);
            self.fill(slot, Some(answer));
        }
    }

    /// Forget every trailing inspect not started yet: a full list covers those services
    /// (one is being issued, or the engine failed and the reconnect's list follows).
    pub fn drop_trailing(&mut self) {
        let dirty: Vec<Slot> = self
            .services
            .values_mut()
            .filter_map(|t| t.dirty.take())
            .collect();
        for slot in dirty {
            self.clear_slot(slot);
        }
    }

    /// The list filling `slot` answered `item` (`None`: it failed, nothing to apply).
    /// Trailing inspects it was to answer for and did not are left empty: the list after
    /// the failure covers them.
    pub fn list_completed(&mut self, slot: Slot, item: Option<T>) {
        for (_, bound) in self.bound.remove(&slot).unwrap_or_default() {
            self.clear_slot(bound);
        }
        self.fill(slot, item);
    }

    /// The inspect of `service_id` filling `slot` answered `item` (`None`: it failed). If
    /// the service is dirty, returns its trailing inspect, to start now.
    pub fn inspected(
        &mut self,
        service_id: &str,
        slot: Slot,
        item: Option<T>,
    ) -> Option<InspectOrder> {
        self.fill(slot, item);
        self.inspect_done(service_id, slot)
    }

    fn fill(&mut self, slot: Slot, item: Option<T>) {
        if let Some(state @ SlotState::Waiting) = self.state_mut(slot) {
            *state = match item {
                Some(item) => SlotState::Ready(item),
                None => SlotState::Empty,
            };
        }
    }

    fn inspect_done(&mut self, service_id: &str, slot: Slot) -> Option<InspectOrder> {
        let tracked = self.services.get_mut(service_id)?;
        if tracked.in_flight != slot {
            return None;
        }
        match tracked.dirty.take() {
            Some(next) => {
                tracked.in_flight = next;
                Some(InspectOrder {
                    service_id: service_id.to_owned(),
                    slot: next,
                })
            }
            None => {
                self.services.remove(service_id);
                None
            }
        }
    }

    /// The next item to apply, when every earlier slot has been applied or is empty.
    pub fn pop(&mut self) -> Option<T> {
        loop {
            match self.slots.front()? {
                SlotState::Waiting => return None,
                SlotState::Empty => {
                    self.slots.pop_front();
                    self.front += 1;
                }
                SlotState::Ready(_) => {
                    self.front += 1;
                    return match self.slots.pop_front() {
                        Some(SlotState::Ready(item)) => Some(item),
                        _ => None,
                    };
                }
            }
        }
    }

    /// Whether an inspect of `service_id` is in flight or still to come.
    pub fn is_pending(&self, service_id: &str) -> bool {
        self.services.contains_key(service_id)
    }

    /// Inspects in flight.
    pub fn inspects_in_flight(&self) -> usize {
        self.services.len()
    }

    /// Slots not applied yet (waiting, ready behind a waiting one, or empty).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(q: &mut ApplyQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn an_event_for_a_quiet_service_is_inspected_at_once() {
        let mut q = ApplyQueue::new();
        let order = q.changed("a").unwrap();
        assert_eq!(order.service_id, "a");
        assert!(q.is_pending("a"));
        assert_eq!(q.pop(), None, "nothing to apply before the inspect answers");
        assert_eq!(q.inspected("a", order.slot, Some("a1")), None);
        assert_eq!(drain(&mut q), ["a1"]);
        assert!(!q.is_pending("a"));
        assert!(q.is_empty());
        assert!(
            q.changed("a").is_some(),
            "quiet again: the next event inspects at once"
        );
    }

    #[test]
    fn events_during_an_inspect_cost_one_more_inspect_when_it_completes() {
        let mut q = ApplyQueue::new();
        let first = q.changed("a").unwrap();
        for _ in 0..10 {
            assert_eq!(q.changed("a"), None);
        }
        assert_eq!(q.inspects_in_flight(), 1);
        let trailing = q.inspected("a", first.slot, Some("a1")).unwrap();
        assert_eq!(trailing.service_id, "a");
        assert_eq!(drain(&mut q), ["a1"]);
        assert_eq!(q.inspected("a", trailing.slot, Some("a2")), None);
        assert_eq!(drain(&mut q), ["a2"]);
        assert!(q.is_empty() && !q.is_pending("a"));
    }

    #[test]
    fn results_are_applied_in_event_order_whatever_order_they_complete_in() {
        // X updated, then Y created: Y's inspect answers first, but X's change comes out first.
        let mut q = ApplyQueue::new();
        let x = q.changed("x").unwrap();
        let y = q.changed("y").unwrap();
        q.inspected("y", y.slot, Some("y added"));
        assert_eq!(q.pop(), None, "y waits for x");
        q.inspected("x", x.slot, Some("x updated"));
        assert_eq!(drain(&mut q), ["x updated", "y added"]);
    }

    #[test]
    fn a_trailing_inspect_takes_the_place_of_its_newest_event() {
        // x, y, x: x's second change is reported after y's.
        let mut q = ApplyQueue::new();
        let x = q.changed("x").unwrap();
        let y = q.changed("y").unwrap();
        assert_eq!(q.changed("x"), None);
        let trailing = q.inspected("x", x.slot, Some("x1")).unwrap();
        q.inspected("x", trailing.slot, Some("x2"));
        assert_eq!(drain(&mut q), ["x1"], "x2 waits for y");
        q.inspected("y", y.slot, Some("y1"));
        assert_eq!(drain(&mut q), ["y1", "x2"]);
    }

    #[test]
    fn a_removal_applies_in_its_place_and_drops_the_trailing_inspect() {
        let mut q = ApplyQueue::new();
        let x = q.changed("x").unwrap();
        assert_eq!(q.changed("x"), None);
        q.removed("x", "x removed");
        assert_eq!(q.pop(), None, "the inspect in flight comes first");
        assert_eq!(
            q.inspected("x", x.slot, Some("x1")),
            None,
            "no trailing inspect"
        );
        assert_eq!(drain(&mut q), ["x1", "x removed"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_list_waits_for_earlier_inspects_and_answers_for_trailing_ones() {
        // x, x, y, list, z: the list answers x's trailing inspect in x's second place.
        let mut q = ApplyQueue::new();
        let x = q.changed("x").unwrap();
        assert_eq!(q.changed("x"), None);
        let y = q.changed("y").unwrap();
        let list = q.list_issued();
        let z = q.changed("z").unwrap();
        q.answer_bound(list, |id, _| if id == "x" { "x2 (list)" } else { "?" });
        q.list_completed(list, Some("list"));
        q.inspected("z", z.slot, Some("z1"));
        q.inspected("y", y.slot, Some("y1"));
        assert_eq!(
            q.pop(),
            None,
            "the list never overtakes an inspect issued before it"
        );
        assert_eq!(
            q.inspected("x", x.slot, Some("x1")),
            None,
            "the list covers x"
        );
        assert_eq!(drain(&mut q), ["x1", "x2 (list)", "y1", "list", "z1"]);
    }

    #[test]
    fn a_failed_list_leaves_its_trailing_places_empty() {
        let mut q = ApplyQueue::new();
        let x = q.changed("x").unwrap();
        assert_eq!(q.changed("x"), None);
        let list = q.list_issued();
        q.list_completed(list, Some("failed"));
        q.inspected("x", x.slot, Some("x1"));
        assert_eq!(drain(&mut q), ["x1", "failed"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_failed_request_leaves_an_empty_place() {
        let mut q = ApplyQueue::new();
        let x = q.changed("x").unwrap();
        q.push("status");
        assert_eq!(q.inspected("x", x.slot, None), None);
        assert_eq!(drain(&mut q), ["status"]);
        let list = q.list_issued();
        q.list_completed(list, None);
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }

    /// One step of a random history: an event for one of four services, or a completion of
    /// one of the inspects in flight (picked by index), or a list.
    #[derive(Debug, Clone)]
    enum Step {
        Changed(u8),
        Removed(u8),
        Complete(usize),
        List,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..4).prop_map(Step::Changed),
            1 => (0u8..4).prop_map(Step::Removed),
            4 => any::<usize>().prop_map(Step::Complete),
            1 => Just(Step::List),
        ]
    }

    proptest! {
        /// Whatever the order of completions: items come out in slot order (event order);
        /// at most one inspect per service is in flight; every event is answered by a
        /// result issued no earlier than it; and once everything completed, nothing is left.
        #[test]
        fn results_come_out_in_event_order(steps in proptest::collection::vec(step(), 1..80)) {
            // Items are (the event number the result answers for, the request's issue number).
            let mut q: ApplyQueue<(u64, u64)> = ApplyQueue::new();
            let mut in_flight: Vec<(Option<String>, Slot, u64)> = Vec::new();
            let mut clock = 0u64; // counts events and requests alike
            let mut last_event: HashMap<String, u64> = HashMap::new();
            let mut slot_event: HashMap<Slot, u64> = HashMap::new();
            let mut out = Vec::new();
            let start = |order: InspectOrder, clock: u64, in_flight: &mut Vec<_>| {
                in_flight.push((Some(order.service_id), order.slot, clock));
            };
            let run = |steps: &[Step], q: &mut ApplyQueue<(u64, u64)>, in_flight: &mut Vec<(Option<String>, Slot, u64)>, clock: &mut u64, last_event: &mut HashMap<String, u64>, slot_event: &mut HashMap<Slot, u64>, out: &mut Vec<(u64, u64)>| {
                for s in steps {
                    *clock += 1;
                    match s {
                        Step::Changed(n) => {
                            let id = format!("s{n}");
                            last_event.insert(id.clone(), *clock);
                            match q.changed(&id) {
                                Some(order) => {
                                    slot_event.insert(order.slot, *clock);
                                    start(order, *clock, in_flight);
                                }
                                None => {
                                    let dirty = q.services[&id].dirty.unwrap();
                                    slot_event.insert(dirty, *clock);
                                }
                            }
                        }
                        Step::Removed(n) => q.removed(&format!("s{n}"), (*clock, *clock)),
                        Step::List => {
                            let slot = q.list_issued();
                            slot_event.insert(slot, *clock);
                            in_flight.push((None, slot, *clock));
                        }
                        Step::Complete(i) => {
                            if in_flight.is_empty() {
                                continue;
                            }
                            let (service, slot, issued) = in_flight.remove(i % in_flight.len());
                            let item = (slot_event[&slot], issued);
                            let next = match service {
                                Some(id) => q.inspected(&id, slot, Some(item)),
                                None => {
                                    q.answer_bound(slot, |_, bound| (slot_event[&bound], issued));
                                    q.list_completed(slot, Some(item));
                                    None
                                }
                            };
                            if let Some(order) = next {
                                start(order, *clock, in_flight);
                            }
                        }
                    }
                    while let Some(item) = q.pop() {
                        out.push(item);
                    }
                    // At most one inspect per service in flight.
                    let mut ids: Vec<&String> = in_flight.iter().filter_map(|(s, _, _)| s.as_ref()).collect();
                    let n = ids.len();
                    ids.sort();
                    ids.dedup();
                    prop_assert_eq!(ids.len(), n);
                }
                Ok(())
            };
            run(&steps, &mut q, &mut in_flight, &mut clock, &mut last_event, &mut slot_event, &mut out)?;
            // Complete everything left, oldest first.
            while !in_flight.is_empty() {
                run(&[Step::Complete(0)], &mut q, &mut in_flight, &mut clock, &mut last_event, &mut slot_event, &mut out)?;
            }
            prop_assert!(q.is_empty(), "{} slots left", q.len());
            prop_assert_eq!(q.inspects_in_flight(), 0);
            // In event order.
            prop_assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "{:?}", out);
            // Every result was issued no earlier than the event it answers for.
            prop_assert!(out.iter().all(|(event, issued)| issued >= event), "{:?}", out);
            // Every service's newest event is answered by a result or covered by a later list
            // or removal (nothing is left unanswered).
            for (id, at) in &last_event {
                let _ = id;
                prop_assert!(out.iter().any(|(event, _)| event >= at), "event {} unanswered: {:?}", at, out);
            }
        }
    }
}
